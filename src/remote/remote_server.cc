// The server's half of include/kvmcdp/remote_format.h.  Durability
// follows the client's own receiver: everything that arrived is written,
// and when the connection has nothing more right now (or 8 MiB are
// pending) one fdatasync covers it and one ACK reports it.
#include "remote/remote_server.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <memory>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "store/base_checksums.h"
#include "base/fsutil.h"
#include "base/json_field.h"
#include "journal/journal_mirror.h"
#include "store/manifest.h"
#include "remote/remote_auth.h"
#include "remote/remote_url.h"
#include "remote/serve_state.h"
#include "store/store_lock.h"
#include "base/wall_clock.h"

namespace kvmcdp {

using nlohmann::json;
using remote::Conn;
using remote::Message;
using remote::MsgType;

namespace {

constexpr int kHandshakeMs = 30000;
constexpr uint64_t kSyncBytes = 8u << 20;

// What a client may send before it has proven it holds the store's
// secret: the hello and the proof are a few dozen bytes, so anything
// large is refused on its header, before it costs memory.
constexpr uint32_t kPreAuthPayload = 4096;
// A manifest is a few hundred bytes; this leaves room for extra keys.
constexpr uint32_t kMaxManifest = 1u << 20;

struct ClientConn {
  Conn& conn;
  const ServeConfig& cfg;
  std::string store;   // directory
  std::string name;    // as the client named it, for logs
  std::optional<StoreLock> lock;
  Manifest manifest;
  bool have_manifest = false;
  std::unique_ptr<journal::JournalMirror> mirror;
  fsutil::Fd base_fd;
  uint64_t unsynced = 0;
  uint64_t acked = 0;
  ServeState state;       // <store>/serve.json, for `kvmcdp status` here
  uint64_t published_ns = 0;
};

// Tells `kvmcdp status` on this machine who ships into the store and how
// far it is durable: at most once a second while data flows, at once when
// the connection starts or ends.  Only advisory, so a failure to write it
// does not end the connection.
void publish(ClientConn& s, bool now) {
  uint64_t t = now_ns();
  if (!now && t - s.published_ns < 1000000000ull) return;
  s.state.updated_ns = t;
  s.state.durable_seq = s.mirror->durable_seq();
  s.state.durable_time_ns = s.mirror->durable_ns();
  if (Status st = write_serve_state(s.store, s.state); !st && s.cfg.warn)
    s.cfg.warn(st.message());
  s.published_ns = t;
}

Status refuse(ClientConn& s, Status why) {
  s.conn.send(MsgType::kError, 0, 0, why.message());
  return why;
}

// HELLO, CHALLENGE, AUTH, then the store is locked: WELCOME.
Status handshake(ClientConn& s) {
  auto hello = s.conn.expect(MsgType::kHello, kHandshakeMs);
  if (!hello) return hello.status();
  if (hello->h.a != remote::kVersion)
    return refuse(s, {ErrorKind::kFailure, fmt::format("protocol version {} is not {}",
                                                        hello->h.a, remote::kVersion)});
  auto hj = json_field::parse_object(hello->text(), "hello");
  if (!hj) return refuse(s, hj.status());
  auto name = json_field::get_string(*hj, "store", "hello");
  if (!name) return refuse(s, name.status());
  auto nonce = json_field::get_string(*hj, "nonce", "hello");
  if (!nonce) return refuse(s, nonce.status());
  s.name = *name;
  std::string client_nonce = *nonce;

  bool use_secret = s.cfg.fixed_store.empty();
  std::string secret;
  bool known = true;
  if (use_secret) {
    // An unknown store and a wrong secret look the same to the client, so
    // it cannot probe which stores exist.
    known = valid_store_name(s.name);
    if (known) {
      s.store = s.cfg.store_root + "/" + s.name;
      auto sec = remote::read_secret_file(s.store + "/secret");
      if (sec) secret = *sec;
      else known = false;
    }
    if (!known) secret = remote::random_hex(32);
  } else {
    s.store = s.cfg.fixed_store;
  }
  std::string server_nonce = remote::random_hex(16);
  json challenge = {{"auth", use_secret ? "secret" : "none"}, {"nonce", server_nonce}};
  if (Status st = s.conn.send(MsgType::kChallenge, 0, 0, challenge.dump()); !st) return st;
  auto auth = s.conn.expect(MsgType::kAuth, kHandshakeMs);
  if (!auth) return auth.status();
  auto aj = json_field::parse_object(auth->text(), "auth");
  if (!aj) return refuse(s, aj.status());
  auto proof_field = json_field::get_string(*aj, "proof", "auth");
  if (!proof_field) return refuse(s, proof_field.status());
  const std::string& proof = *proof_field;
  if (use_secret &&
      (!known || !remote::proofs_equal(proof, remote::auth_proof(secret, "kvmcdp-client", s.name,
                                                                 client_nonce, server_nonce))))
    return refuse(s, {ErrorKind::kFailure, "authentication failed (unknown store or wrong secret)"});
  // Logged in: whole frames may follow, each in one message.
  s.conn.set_max_payload(remote::kMaxPayload);
  if (s.cfg.authenticated) s.cfg.authenticated();

  if (mkdir(s.store.c_str(), 0700) != 0 && errno != EEXIST)
    return refuse(s, {ErrorKind::kFailure, fsutil::errno_message("mkdir", s.store)});
  // Only an authenticated client gets here, so it may take its store over
  // from a stale connection of its own.
  auto lock = StoreLock::acquire(s.store);
  for (int i = 0; !lock && lock.status().kind() == ErrorKind::kBusy && s.cfg.evict && i < 100;
       ++i) {
    if (i == 0) s.cfg.evict(s.store);
    usleep(100000);
    lock = StoreLock::acquire(s.store);
  }
  if (!lock) return refuse(s, lock.status());
  s.lock = std::move(*lock);
  if (s.cfg.claimed) s.cfg.claimed(s.store);
  auto m = read_manifest(s.store);
  if (m) {
    s.manifest = *m;
    s.have_manifest = true;
  } else if (m.status().kind() != ErrorKind::kNotFound) {
    return refuse(s, m.status());
  }
  auto mirror = journal::JournalMirror::open(s.store, s.have_manifest ? s.manifest.stream_id : 0);
  if (!mirror) return refuse(s, mirror.status());
  s.mirror = std::move(*mirror);
  const auto& pos = s.mirror->position();
  json welcome = {{"proof", use_secret ? remote::auth_proof(secret, "kvmcdp-server", s.name,
                                                           client_nonce, server_nonce)
                                       : ""},
                  {"state",
                   {{"segment", pos.segment},
                    {"size", pos.size},
                    {"sealed", pos.sealed},
                    {"last_seq", pos.last_seq},
                    {"last_ns", pos.last_ns},
                    {"stream_id", s.have_manifest ? fmt::format("{:016x}", s.manifest.stream_id)
                                                  : ""},
                    {"base_complete", s.have_manifest && s.manifest.base_complete}}}};
  s.acked = pos.last_seq;
  s.state = ServeState{getpid(), s.cfg.peer, true, now_ns()};
  publish(s, true);
  return s.conn.send(MsgType::kWelcome, 0, 0, welcome.dump());
}

// The client's manifest: adopted by a new store, checked against an old.
Status take_manifest(ClientConn& s) {
  auto msg = s.conn.expect(MsgType::kManifest, kHandshakeMs);
  if (!msg) return msg.status();
  if (msg->h.payload_len > kMaxManifest)
    return refuse(s, {ErrorKind::kFailure, "the client's manifest is too large"});
  // Also bounds its nesting: the manifest's unknown keys are kept and
  // written back.
  if (auto j = json_field::parse_object(msg->text(), "manifest"); !j) return refuse(s, j.status());
  auto theirs = manifest_from_json(std::string(msg->text()), "the client's manifest");
  if (!theirs) return refuse(s, theirs.status());
  if (s.have_manifest) {
    if (theirs->stream_id != s.manifest.stream_id)
      return refuse(s, {ErrorKind::kFailure,
                        fmt::format("this store holds stream {:016x}, the client ships {:016x}",
                                    s.manifest.stream_id, theirs->stream_id)});
    return Status::ok();
  }
  Manifest m = *theirs;
  // The base copy is the server's own business: it is complete when the
  // client has shipped all of it (BASE_DONE), not when the client's is.
  m.base_complete = false;
  m.base_complete_seq = 0;
  m.base_complete_time_ns = 0;
  m.base_image = "base.raw";
  m.extra.erase("spool");
  m.extra.erase("base_checksums");  // the server checksums the base it receives  // the client's trims its journal; this store keeps all of it
  if (Status st = write_manifest(s.store, m); !st) return refuse(s, st);
  s.manifest = m;
  s.have_manifest = true;
  return Status::ok();
}

Status base_data(ClientConn& s, const Message& m) {
  std::string path = s.store + "/" + s.manifest.base_image + ".partial";
  if (!s.base_fd.valid()) {
    // Each connection ships the base from its start.
    s.base_fd = fsutil::Fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (!s.base_fd.valid())
      return Status(ErrorKind::kFailure, fsutil::errno_message("create", path));
  }
  if (m.h.a + m.h.payload_len > s.manifest.disk_size)
    return Status(ErrorKind::kDamaged, "base data beyond the disk's size");
  return fsutil::pwrite_all(s.base_fd.get(), m.payload, m.h.payload_len, m.h.a, path);
}

Status base_done(ClientConn& s, const Message& m) {
  // Checked before anything is renamed: a bad message changes nothing.
  auto j = json_field::parse_object(m.text(), "base done");
  if (!j) return j.status();
  auto time_ns = json_field::get_u64(*j, "time_ns", "base done");
  if (!time_ns) return time_ns.status();
  std::string final_path = s.store + "/" + s.manifest.base_image;
  std::string path = final_path + ".partial";
  if (!s.base_fd.valid()) {
    // An all-zero disk has no data to ship.
    s.base_fd = fsutil::Fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (!s.base_fd.valid())
      return Status(ErrorKind::kFailure, fsutil::errno_message("create", path));
  }
  if (m.h.a != s.manifest.disk_size)
    return Status(ErrorKind::kDamaged, "the base copy's size is not the disk's");
  if (ftruncate(s.base_fd.get(), static_cast<off_t>(m.h.a)) != 0 || fsync(s.base_fd.get()) != 0)
    return Status(ErrorKind::kFailure, fsutil::errno_message("fsync", path));
  s.base_fd = fsutil::Fd();
  if (rename(path.c_str(), final_path.c_str()) != 0)
    return Status(ErrorKind::kFailure, fsutil::errno_message("rename", path));
  if (Status st = fsutil::fsync_dir(s.store); !st) return st;
  if (Status st = write_base_checksums(s.store, s.manifest); !st) return st;
  s.manifest.base_complete = true;
  s.manifest.base_complete_seq = m.h.b;
  s.manifest.base_complete_time_ns = *time_ns;
  if (Status st = write_manifest(s.store, s.manifest); !st) return st;
  return s.conn.send(MsgType::kBaseAck);
}

Status sync_and_ack(ClientConn& s) {
  if (Status st = s.mirror->sync(); !st) return st;
  s.unsynced = 0;
  if (s.mirror->durable_seq() == s.acked) return Status::ok();
  s.acked = s.mirror->durable_seq();
  publish(s, false);
  return s.conn.send(MsgType::kAck, s.acked, s.mirror->durable_ns());
}

Status handle(ClientConn& s, const Message& m) {
  switch (static_cast<MsgType>(m.h.type)) {
    case MsgType::kSegmentData:
      s.unsynced += m.h.payload_len;
      s.state.bytes += m.h.payload_len;
      return s.mirror->append(m.h.a, m.h.b, m.payload, m.h.payload_len);
    case MsgType::kSegmentSeal:
      return s.mirror->seal(m.h.a, m.h.b, m.payload, m.h.payload_len);
    case MsgType::kBaseData:
      return base_data(s, m);
    case MsgType::kBaseDone:
      return base_done(s, m);
    default:
      return Status(ErrorKind::kFailure,
                    fmt::format("message type {} is not allowed here", m.h.type));
  }
}

// After the handshake: the manifest, then segments and the base copy
// until the client goes.
Status receive_stream(ClientConn& s) {
  Conn& conn = s.conn;
  if (Status st = take_manifest(s); !st) {
    // protect's first connection only asks whether the server takes the
    // store, and closes before any manifest: not an error.
    if (st.cause() == Cause::kPeerClosed) return Status::ok();
    return st;
  }
  for (;;) {
    Message m;
    // Before a long wait, what the last throttled publish skipped goes out:
    // an idle client must not leave status an old durable seq.
    if (!s.unsynced && s.state.durable_seq != s.mirror->durable_seq()) publish(s, true);
    // Wait long when everything is acked: an idle VM sends nothing.
    auto got = conn.receive(&m, s.unsynced ? 0 : 3600000);
    if (!got) {
      // The client went away: make what it sent durable all the same.
      s.mirror->sync();
      if (got.status().cause() == Cause::kPeerClosed) return Status::ok();
      return got.status();
    }
    if (*got) {
      if (Status st = handle(s, m); !st) return refuse(s, st);
      if (s.unsynced < kSyncBytes) continue;
    }
    // Nothing more right now, or a big batch: one fdatasync for all of it.
    if (Status st = sync_and_ack(s); !st) return refuse(s, st);
  }
}

}  // namespace

Status serve_connection(Conn& conn, const ServeConfig& cfg) {
  ClientConn s{conn, cfg};
  conn.set_max_payload(kPreAuthPayload);
  if (Status st = handshake(s); !st) return st;
  Status why = receive_stream(s);
  // The store is still locked: the last word on this connection is ours.
  s.state.connected = false;
  s.state.ended = why ? "the client disconnected" : why.message();
  publish(s, true);
  return why;
}

}  // namespace kvmcdp
