// Writes the seed corpus of every fuzz target (tests/fuzz/corpus/<target>/)
// from real artefacts: a journal written by JournalWriter, manifests and
// trees from their serialisers, protocol messages from their encoders.
// Run by hand after a format change: make_fuzz_corpus tests/fuzz/corpus
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "base/fsutil.h"
#include "fuzz_util.h"
#include "journal/journal_writer.h"
#include "store/manifest.h"
#include "journal/segment_list.h"
#include "tree/tree_model.h"
#include "capture/wire_io.h"
#include "kvmcdp/nbd_format.h"

using namespace kvmcdp;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

std::string out_root;

void seed(const std::string& target, const std::string& name, const std::vector<uint8_t>& b) {
  std::string dir = out_root + "/" + target;
  fs::create_directories(dir);
  fuzz::write_file(dir + "/" + name, b.data(), b.size());
}
void seed(const std::string& target, const std::string& name, const std::string& s) {
  seed(target, name, std::vector<uint8_t>(s.begin(), s.end()));
}

std::vector<uint8_t> read_all(const std::string& path) {
  auto b = fsutil::read_file(path);
  if (!b) {
    std::fprintf(stderr, "cannot read %s\n", path.c_str());
    std::exit(1);
  }
  return std::vector<uint8_t>(b->begin(), b->end());
}

void put_u32(std::vector<uint8_t>* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out->push_back(uint8_t(v >> (8 * i)));
}
void append(std::vector<uint8_t>* out, const std::vector<uint8_t>& b) {
  out->insert(out->end(), b.begin(), b.end());
}

Record rec(uint64_t seq, RecordType type, uint64_t off, uint64_t len, std::vector<uint8_t> data,
           uint16_t flags = 0) {
  Record r;
  r.seq = seq;
  r.time_ns = 1795000000000000000ull + seq * 1000;
  r.type = type;
  r.flags = flags;
  r.offset = off;
  r.length = len;
  r.data = std::move(data);
  return r;
}

Manifest sample_manifest() {
  Manifest m;
  m.stream_id = 0x00c0ffee00c0ffeeull;
  m.disk_size = 1 << 20;
  m.created_time_ns = 1795000000000000000ull;
  m.node_name = "drive0";
  return m;
}

// A journal of every record type over two segments (the first sealed,
// with its index).  Returns the store directory.
std::string make_journal() {
  std::string store = fuzz::scratch_root() + "/journal-store";
  fs::remove_all(store);
  fs::create_directories(store);
  journal::WriterOptions o;
  o.stream_id = sample_manifest().stream_id;
  o.frame_raw_bytes = 3000;
  o.segment_max_bytes = 9000;
  o.compress_threads = 1;
  auto w = journal::JournalWriter::open(store, o);
  if (!w) std::exit(1);
  uint64_t seq = 1;
  for (int i = 0; i < 12; ++i) {
    std::vector<uint8_t> d(1024);
    for (size_t k = 0; k < d.size(); ++k) d[k] = uint8_t(k * 7 + i);
    (void)(*w)->append(rec(seq++, RecordType::kWrite, 4096u * i, d.size(), d));
    if (i == 3) (void)(*w)->append(rec(seq++, RecordType::kWriteZeroes, 0, 8192, {}, 1));
    if (i == 5) (void)(*w)->append(rec(seq++, RecordType::kDiscard, 65536, 4096, {}));
    if (i == 6) (void)(*w)->append(rec(seq++, RecordType::kFlush, 0, 0, {}));
    if (i == 7) (void)(*w)->append(rec(seq++, RecordType::kMark, 0, 0, {'b', 'o', 'o', 't'}));
    if (i == 8) {
      (void)(*w)->append(rec(seq + 2, RecordType::kGap, seq, 0, {}));
      seq += 3;
    }
    if (i == 9) (void)(*w)->append(rec(seq++, RecordType::kResyncDone, 0, 0, {}));
    (void)(*w)->commit();
  }
  (void)(*w)->close();
  if (Status s = write_manifest(store, sample_manifest()); !s) std::exit(1);
  return store;
}

void segment_seeds(const std::string& store) {
  auto seg1 = read_all(journal::segment_path(store, 1));
  auto idx1 = read_all(journal::index_path(store, 1));
  std::vector<uint8_t> seg2;
  if (fs::exists(journal::segment_path(store, 2))) seg2 = read_all(journal::segment_path(store, 2));
  std::vector<uint8_t> b;
  put_u32(&b, uint32_t(seg1.size()));
  append(&b, seg1);
  put_u32(&b, uint32_t(idx1.size()));
  append(&b, idx1);
  append(&b, seg2);
  seed("segment", "two_segments", b);
  b.clear();
  put_u32(&b, uint32_t(seg1.size()));
  append(&b, seg1);
  seed("segment", "one_segment_no_index", b);
}

// What a client sends after its login: the manifest, the journal's
// segments (the first sealed with its index) and a base copy.
std::vector<uint8_t> client_stream(const std::string& store, bool with_base) {
  using remote::MsgType;
  std::vector<uint8_t> out;
  fuzz::append_msg(&out, MsgType::kManifest, 0, 0, manifest_to_json(sample_manifest()));
  for (uint64_t n = 1; n <= 2; ++n) {
    if (!fs::exists(journal::segment_path(store, n))) break;
    auto seg = read_all(journal::segment_path(store, n));
    for (size_t at = 0; at < seg.size(); at += 6000) {
      size_t len = std::min<size_t>(6000, seg.size() - at);
      fuzz::append_msg(&out, MsgType::kSegmentData, n, at,
                       std::string_view(reinterpret_cast<const char*>(seg.data() + at), len));
    }
    if (fs::exists(journal::index_path(store, n))) {
      auto idx = read_all(journal::index_path(store, n));
      fuzz::append_msg(&out, MsgType::kSegmentSeal, n, seg.size(),
                       std::string_view(reinterpret_cast<const char*>(idx.data()), idx.size()));
    }
  }
  if (with_base) {
    std::string data(4096, 'x');
    fuzz::append_msg(&out, MsgType::kBaseData, 0, 0, data);
    fuzz::append_msg(&out, MsgType::kBaseData, 8192, 0, data);
    fuzz::append_msg(&out, MsgType::kBaseDone, sample_manifest().disk_size, 3,
                     json{{"time_ns", 1795000000000000000ull}}.dump());
  }
  return out;
}

void serve_seeds(const std::string& store) {
  using remote::MsgType;
  auto login = fuzz::login_messages();
  auto with_login = [&](const std::vector<uint8_t>& rest) {
    std::vector<uint8_t> b = login;
    append(&b, rest);
    return b;
  };
  auto full = client_stream(store, true);
  seed("serve_postlogin", "ship_all", full);
  seed("serve_postlogin", "ship_journal", client_stream(store, false));
  seed("serve_postlogin", "probe", std::vector<uint8_t>{});
  std::vector<uint8_t> m;
  fuzz::append_msg(&m, MsgType::kManifest, 0, 0, manifest_to_json(sample_manifest()));
  fuzz::append_msg(&m, MsgType::kBaseDone, sample_manifest().disk_size, 0,
                   json{{"time_ns", 1}}.dump());
  seed("serve_postlogin", "empty_base", m);

  seed("serve_prelogin", "ship_all", with_login(full));
  seed("serve_prelogin", "login_only", login);
  std::vector<uint8_t> h;
  fuzz::append_msg(&h, MsgType::kHello, remote::kVersion, 0,
                   json{{"store", "vm1"}, {"nonce", "00"}}.dump());
  seed("serve_prelogin", "hello_only", h);
  fuzz::append_msg(&h, MsgType::kAuth, 0, 0, json{{"proof", "00"}}.dump());
  seed("serve_prelogin", "wrong_proof", h);
}

void client_seeds() {
  using remote::MsgType;
  auto login = fuzz::server_login_messages();
  seed("remote_client", "welcome", login);
  std::vector<uint8_t> b = login;
  fuzz::append_msg(&b, MsgType::kAck, 7, 1795000000000000000ull, "");
  fuzz::append_msg(&b, MsgType::kBaseAck, 0, 0, "");
  fuzz::append_msg(&b, MsgType::kError, 0, 0, "the disk is full\n");
  seed("remote_client", "acks_then_error", b);
  std::vector<uint8_t> e;
  fuzz::append_msg(&e, MsgType::kError, 0, 0, "authentication failed");
  seed("remote_client", "refused", e);
  std::vector<uint8_t> n;
  fuzz::append_msg(&n, MsgType::kChallenge, 0, 0, json{{"auth", "none"}}.dump());
  seed("remote_client", "no_auth", n);
}

void wire_seeds() {
  using wire::MsgType;
  std::vector<uint8_t> out;
  auto msg = [&](MsgType t, uint64_t seq, uint64_t off, uint64_t len, std::string payload,
                 uint16_t flags = 0, uint32_t aux = 0) {
    wire::MsgHeader h{};
    h.magic = wire::kMagic;
    h.type = static_cast<uint16_t>(t);
    h.flags = flags;
    h.seq = seq;
    h.time_ns = 1795000000000000000ull + seq;
    h.offset = off;
    h.length = len;
    h.payload_len = static_cast<uint32_t>(payload.size());
    h.aux = aux;
    uint8_t head[wire::kHeaderSize];
    wire::encode_header(h, head);
    out.insert(out.end(), head, head + wire::kHeaderSize);
    out.insert(out.end(), payload.begin(), payload.end());
  };
  msg(MsgType::kHello, 0, 0x00c0ffee00c0ffeeull, 1 << 20, "drive0", 0, wire::kVersion);
  seed("wire", "hello", out);
  msg(MsgType::kWrite, 1, 0, 512, std::string(512, 'a'), wire::kFlagFua);
  msg(MsgType::kWriteZeroes, 2, 4096, 8192, "", wire::kFlagUnmap);
  msg(MsgType::kDiscard, 3, 65536, 4096, "");
  msg(MsgType::kFlush, 4, 0, 0, "");
  msg(MsgType::kMark, 5, 0, 0, "before-upgrade");
  msg(MsgType::kGap, 9, 6, 0, "");
  msg(MsgType::kWrite, 10, 512, 1024, std::string(1024, 'b'), wire::kFlagResync);
  msg(MsgType::kResyncDone, 11, 0, 0, "");
  msg(MsgType::kWrite, 3, 0, 4, "old!");  // a resend: skipped
  seed("wire", "every_type", out);
}

void qmp_seeds() {
  std::string greeting =
      R"({"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}})"
      "\n";
  std::string caps = "{\"return\": {}, \"id\": 1}\n";
  seed("qmp", "greeting_only", greeting);
  seed("qmp", "handshake", greeting + caps);
  seed("qmp", "query_cdp",
       greeting + caps +
           R"({"timestamp": {"seconds": 1, "microseconds": 2}, "event": "CDP_CONNECTED", "data": {"id": "drive0"}})"
           "\n"
           R"({"return": [{"id": "drive0", "connected": true, "seq": 42}], "id": 2})"
           "\n"
           R"({"event": "BLOCK_JOB_COMPLETED", "data": {"device": "j"}})"
           "\n");
  seed("qmp", "command_error",
       greeting + caps +
           R"({"error": {"class": "DeviceNotFound", "desc": "no such drive"}, "id": 2})"
           "\n");
}

void json_seeds() {
  Manifest m = sample_manifest();
  seed("manifest", "new", manifest_to_json(m));
  m.base_complete = true;
  m.base_complete_seq = 1234;
  m.base_complete_time_ns = 1795000000000000001ull;
  m.folded_seq = 99;
  m.extra["spool"] = true;
  m.extra["future"] = {{"a", {1, 2, 3}}, {"b", nullptr}};
  seed("manifest", "folded_with_extra", manifest_to_json(m));
  json old = json::parse(manifest_to_json(sample_manifest()));
  old.erase("crc32c");
  seed("manifest", "no_checksum", old.dump(2));

  Tree t;
  t.dir = "/t";
  t.nodes = {{"s1", "/vm/base.qcow2", "raw", "", 10, NodeState::kLive, std::nullopt, std::nullopt},
             {"s2", "n0001.qcow2", "qcow2", "s1", 20, NodeState::kDeleted, 42, 1795000000000000000ull},
             {"@n0002", "n0002.qcow2", "qcow2", "s2", 30, NodeState::kLive, std::nullopt, std::nullopt},
             {"@n0003", "n0003.qcow2", "qcow2", "s2", 30, NodeState::kLive, std::nullopt, std::nullopt}};
  t.active = "@n0003";
  t.active_qemu_node = "cdp-n0003";
  t.next_id = 4;
  seed("tree", "four_nodes", tree_to_json(t));
  t.intent = TreeIntent{IntentOp::kMerge, {{"node", "s2"}, {"into", "@n0003"}}};
  seed("tree", "merge_intent", tree_to_json(t));
  Tree one;
  one.dir = "/t";
  one.nodes = {{"@n0001", "n0001.qcow2", "qcow2", "", 1, NodeState::kLive, std::nullopt, std::nullopt}};
  one.active = "@n0001";
  one.next_id = 2;
  seed("tree", "root_only", tree_to_json(one));
}

}  // namespace

// NBD (include/kvmcdp/nbd_format.h), big-endian, as QEMU's client sends
// it: the handshake's flags and NBD_OPT_GO, then requests.
void be(std::vector<uint8_t>* out, uint64_t v, int bytes) {
  for (int i = bytes - 1; i >= 0; --i) out->push_back(uint8_t(v >> (8 * i)));
}
void nbd_seeds() {
  std::vector<uint8_t> go;
  be(&go, nbd::kFixedNewstyle | nbd::kNoZeroes, 4);
  // An option the server refuses (structured replies), then GO asking
  // for the block size.
  be(&go, nbd::kIHaveOpt, 8);
  be(&go, 8, 4);
  be(&go, 0, 4);
  be(&go, nbd::kIHaveOpt, 8);
  be(&go, nbd::kOptGo, 4);
  be(&go, 8, 4);
  be(&go, 0, 4);
  be(&go, 1, 2);
  be(&go, nbd::kInfoBlockSize, 2);
  seed("nbd", "handshake", go);
  auto request = [](std::vector<uint8_t>* out, uint16_t type, uint16_t flags, uint64_t off,
                    uint32_t len, bool data) {
    be(out, nbd::kRequestMagic, 4);
    be(out, flags, 2);
    be(out, type, 2);
    be(out, 0x1000 + out->size(), 8);
    be(out, off, 8);
    be(out, len, 4);
    if (data) out->insert(out->end(), len, 0x5a);
  };
  std::vector<uint8_t> all = go;
  request(&all, nbd::kCmdWrite, 0, 4096, 4096, true);
  request(&all, nbd::kCmdWrite, nbd::kCmdFlagFua, 0, 512, true);
  request(&all, nbd::kCmdWriteZeroes, 0, 65536, 65536, false);
  request(&all, nbd::kCmdWriteZeroes, nbd::kCmdFlagNoHole, 8192, 4096, false);
  request(&all, nbd::kCmdTrim, 0, 131072, 65536, false);
  request(&all, nbd::kCmdFlush, 0, 0, 0, false);
  request(&all, nbd::kCmdRead, 0, 0, 4096, false);
  request(&all, nbd::kCmdWrite, 0, (1u << 20) - 512, 4096, true);  // past the end
  request(&all, nbd::kCmdDisc, 0, 0, 0, false);
  seed("nbd", "requests", all);
  std::vector<uint8_t> old;
  be(&old, nbd::kFixedNewstyle, 4);
  be(&old, nbd::kIHaveOpt, 8);
  be(&old, nbd::kOptExportName, 4);
  be(&old, 0, 4);
  request(&old, nbd::kCmdWrite, 0, 0, 1024, true);
  seed("nbd", "export-name", old);
}

// kvmcdp export's server: structured replies and base:allocation first,
// then every command, some out of range.
void export_seeds() {
  auto option = [](std::vector<uint8_t>* out, uint32_t opt, const std::vector<uint8_t>& data) {
    be(out, nbd::kIHaveOpt, 8);
    be(out, opt, 4);
    be(out, data.size(), 4);
    out->insert(out->end(), data.begin(), data.end());
  };
  std::vector<uint8_t> hs;
  be(&hs, nbd::kFixedNewstyle | nbd::kNoZeroes, 4);
  option(&hs, nbd::kOptStructuredReply, {});
  std::vector<uint8_t> meta;
  be(&meta, 0, 4);  // export name ""
  be(&meta, 1, 4);  // one query
  std::string q = nbd::kBaseAllocation;
  be(&meta, q.size(), 4);
  meta.insert(meta.end(), q.begin(), q.end());
  option(&hs, nbd::kOptListMetaContext, meta);
  option(&hs, nbd::kOptSetMetaContext, meta);
  std::vector<uint8_t> go;
  be(&go, 0, 4);
  be(&go, 1, 2);
  be(&go, nbd::kInfoBlockSize, 2);
  option(&hs, nbd::kOptGo, go);
  seed("export", "handshake", hs);
  auto request = [](std::vector<uint8_t>* out, uint16_t type, uint16_t flags, uint64_t off,
                    uint32_t len, bool data) {
    be(out, nbd::kRequestMagic, 4);
    be(out, flags, 2);
    be(out, type, 2);
    be(out, 0x2000 + out->size(), 8);
    be(out, off, 8);
    be(out, len, 4);
    if (data) out->insert(out->end(), len, 0x3c);
  };
  std::vector<uint8_t> all = hs;
  request(&all, nbd::kCmdRead, 0, 0, 65536, false);
  request(&all, nbd::kCmdBlockStatus, 0, 0, 1u << 20, false);
  request(&all, nbd::kCmdBlockStatus, nbd::kCmdFlagReqOne, 4096, 1u << 19, false);
  request(&all, nbd::kCmdWrite, 0, 4096, 4096, true);
  request(&all, nbd::kCmdWriteZeroes, 0, 1u << 19, 65536, false);
  request(&all, nbd::kCmdTrim, 0, 8192, 4096, false);
  request(&all, nbd::kCmdFlush, 0, 0, 0, false);
  request(&all, nbd::kCmdRead, 0, 0, 1u << 20, false);
  request(&all, nbd::kCmdRead, 0, (1u << 20) - 512, 4096, false);  // past the end
  request(&all, nbd::kCmdDisc, 0, 0, 0, false);
  seed("export", "requests", all);
  std::vector<uint8_t> simple;
  be(&simple, nbd::kFixedNewstyle, 4);
  option(&simple, nbd::kOptExportName, {});
  request(&simple, nbd::kCmdRead, 0, 512, 1024, false);
  request(&simple, nbd::kCmdWrite, 0, 0, 1024, true);
  request(&simple, nbd::kCmdBlockStatus, 0, 0, 4096, false);
  seed("export", "simple-replies", simple);
}

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_fuzz_corpus OUTDIR\n");
    return 2;
  }
  out_root = argv[1];
  std::string store = make_journal();
  segment_seeds(store);
  serve_seeds(store);
  client_seeds();
  wire_seeds();
  qmp_seeds();
  json_seeds();
  nbd_seeds();
  export_seeds();
  return 0;
}
