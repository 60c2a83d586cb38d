// Folding on a synthetic store (no QEMU: with no tree the new base comes
// from the full restore): which segments go, the manifest switch, restores
// after the fold against a naive replay, and repair of a fold stopped
// before and after its commit.
#include "build/journal_fold.h"

#include <doctest/doctest.h>

#include <filesystem>
#include <random>
#include <chrono>
#include <thread>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "base/fsutil.h"
#include "store/journal_ranges.h"
#include "store/journal_reader.h"
#include "store/journal_test_util.h"
#include "journal/journal_writer.h"
#include "store/manifest.h"
#include "store/point.h"
#include "store/protect_state.h"
#include "restore/restore_engine.h"
#include "journal/segment_list.h"

namespace kvmcdp {
using namespace journal;
using namespace journal::testing;
namespace fs = std::filesystem;

namespace {

constexpr uint64_t kSize = 200000;

// 300 random writes (some zeroes) over a random base, in small segments;
// images[s] is the disk after record s (images[0]: the base).
struct Store {
  TempDir d;
  std::vector<std::vector<uint8_t>> images;
};

void make_store(Store& st) {
  std::mt19937_64 rng(77);
  std::vector<uint8_t> img(kSize);
  for (auto& b : img) b = uint8_t(rng());
  write_bytes(st.d.path + "/base.raw", img);
  st.images.push_back(img);
  WriterOptions o;
  o.frame_raw_bytes = 8000;
  o.segment_max_bytes = 30000;
  auto w = JournalWriter::open(st.d.path, o);
  REQUIRE(w);
  for (uint64_t s = 1; s <= 300; s++) {
    uint64_t off = rng() % kSize, len = std::min<uint64_t>(1 + rng() % 3000, kSize - off);
    Record r = rng() % 5 ? write_rec(s, off, std::vector<uint8_t>(len))
                         : plain_rec(s, RecordType::kWriteZeroes, off, len);
    for (auto& b : r.data) b = uint8_t(rng() | 1);
    for (uint64_t i = 0; i < len; i++) img[off + i] = r.data.empty() ? 0 : r.data[i];
    st.images.push_back(img);
    REQUIRE((*w)->append(std::move(r)));
    if (s % 7 == 0) REQUIRE((*w)->commit());
  }
  REQUIRE((*w)->close());
  Manifest m;
  m.stream_id = 5;
  m.disk_size = kSize;
  m.base_complete = true;
  m.base_complete_seq = 0;
  m.base_complete_time_ns = 1000;
  REQUIRE(write_manifest(st.d.path, m));
}

void check_restores(Store& st, uint64_t from) {
  for (uint64_t seq : {from, from + 1, (from + 300) / 2, uint64_t{299}, uint64_t{300}}) {
    CAPTURE(seq);
    std::string out = st.d.path + "/out.raw";
    auto r = restore(st.d.path, seq, out);
    REQUIRE_MESSAGE(r, r.status().message());
    CHECK(read_bytes(out) == st.images[seq]);
  }
}

uint64_t time_of(uint64_t seq) { return 1000 + seq * 10; }

}  // namespace

TEST_CASE("fold: whole sealed segments before the point go, restores after it stay exact") {
  Store st;
  make_store(st);
  auto segs_before = list_segments(st.d.path);
  REQUIRE(segs_before->size() >= 5);
  const uint64_t fold_at = 150;

  auto plan = plan_fold(st.d.path, fold_at, time_of(fold_at));
  REQUIRE_MESSAGE(plan, plan.status().message());
  REQUIRE(!plan->empty());
  CHECK(plan->segments.front() == segs_before->front());
  CHECK(plan->segments.size() < segs_before->size());
  for (uint64_t n : plan->segments) {
    auto sf = load_segment(st.d.path, n);
    CHECK(sf->frames.back().last_seq <= fold_at);
  }
  // The first segment kept straddles the point or starts right after it.
  auto next = load_segment(st.d.path, (*segs_before)[plan->segments.size()]);
  CHECK(next->frames.back().last_seq > fold_at);

  OpLog log;
  REQUIRE(fold_journal(st.d.path, *plan, &log));
  CHECK(log.size() == 1);
  auto segs_after = list_segments(st.d.path);
  CHECK(segs_after->size() == segs_before->size() - plan->segments.size());
  CHECK(!fs::exists(st.d.path + "/base.raw"));
  CHECK(!fs::exists(fold_intent_path(st.d.path)));
  auto m = read_manifest(st.d.path);
  CHECK(m->base_image == "base-150.raw");
  CHECK(m->folded_seq == fold_at);
  CHECK(m->base_complete_seq == fold_at);
  CHECK(read_bytes(st.d.path + "/base-150.raw") == st.images[fold_at]);

  // Readers: the first recoverable point is the fold point; before it, refused.
  auto reader = JournalReader::open(st.d.path);
  auto ranges = recoverable_ranges(**reader, m->base_complete_seq, m->base_complete_time_ns);
  REQUIRE(ranges->size() == 1);
  CHECK(ranges->front().first_seq == fold_at);
  CHECK(ranges->front().last_seq == 300);
  check_restores(st, fold_at);
  auto refused = restore(st.d.path, fold_at - 1, st.d.path + "/old.raw");
  CHECK(refused.status().kind() == ErrorKind::kNotRecoverable);
  auto v = verify_journal(st.d.path);
  CHECK(v->ok());

  // Folding again at a later point: the previous folded base goes too.
  auto again = plan_fold(st.d.path, 280, time_of(280));
  REQUIRE(again);
  REQUIRE(!again->empty());
  REQUIRE(fold_journal(st.d.path, *again, &log));
  CHECK(!fs::exists(st.d.path + "/base-150.raw"));
  check_restores(st, 280);
  // At or before the base: nothing to do.
  CHECK(plan_fold(st.d.path, 280, time_of(280))->empty());
}

TEST_CASE("fold: waits for readers that opened the store before it, then deletes") {
  // A restore that opened the store before the fold's commit reads the old
  // base and the folded segments: they must stay until it is done.
  Store st;
  make_store(st);
  auto plan = plan_fold(st.d.path, 150, time_of(150));
  REQUIRE(plan);
  REQUIRE(!plan->empty());
  auto view = open_store_view(st.d.path);
  REQUIRE(view);
  OpLog log;
  Status folded = Status(ErrorKind::kFailure, "not run");
  std::thread fold([&] { folded = fold_journal(st.d.path, *plan, &log); });
  // The commit (manifest switch) does not wait; the deletions do.
  for (int i = 0; i < 3000 && read_manifest(st.d.path)->base_image != "base-150.raw"; i++)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  REQUIRE(read_manifest(st.d.path)->base_image == "base-150.raw");
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  for (uint64_t n : plan->segments) CHECK(fs::exists(segment_path(st.d.path, n)));
  CHECK(fs::exists(st.d.path + "/base.raw"));
  // The reader that was open before still reads every record from seq 1.
  uint64_t seen = 0;
  REQUIRE(view->reader->for_each_record(1, [&](const RecordView&) { return ++seen, true; }));
  CHECK(seen == 300);
  view = Status(ErrorKind::kFailure, "closed");  // lets go of the store
  fold.join();
  REQUIRE_MESSAGE(folded, folded.message());
  CHECK(log.front() == "waited for the store's readers (restore, build) to finish");
  for (uint64_t n : plan->segments) CHECK(!fs::exists(segment_path(st.d.path, n)));
  CHECK(!fs::exists(st.d.path + "/base.raw"));
  check_restores(st, 150);
}

TEST_CASE("fold: the last segment is never folded, even when the point is its last record") {
  Store st;
  make_store(st);
  auto segs = list_segments(st.d.path);
  auto plan = plan_fold(st.d.path, 300, time_of(300));
  REQUIRE(plan);
  CHECK(plan->segments.size() == segs->size() - 1);
}

TEST_CASE("fold: segments a backup server may not hold yet are kept") {
  Store st;
  make_store(st);
  // protect --remote last said the server holds up to seq 60.
  ProtectState ps;
  ps.pid = 1;
  ps.remote_url = "tcp://vault:7419/vm1";
  ps.remote_durable_seq = 60;
  REQUIRE(write_protect_state(st.d.path, ps));
  auto plan = plan_fold(st.d.path, 250, time_of(250));
  REQUIRE(plan);
  REQUIRE_FALSE(plan->segments.empty());
  for (uint64_t n : plan->segments) CHECK(load_segment(st.d.path, n)->frames.back().last_seq <= 60);
  // The next segment held records past 60: it was the first one kept.
  auto segs = list_segments(st.d.path);
  auto next = load_segment(st.d.path, (*segs)[plan->segments.size()]);
  CHECK(next->frames.back().last_seq > 60);
  // Without a remote, the fold goes up to the point.
  ps.remote_url.clear();
  REQUIRE(write_protect_state(st.d.path, ps));
  CHECK(plan_fold(st.d.path, 250, time_of(250))->segments.size() > plan->segments.size());
}

TEST_CASE("fold repair: rolled back before the manifest switch, finished after it") {
  Store st;
  make_store(st);
  auto plan = plan_fold(st.d.path, 120, time_of(120));
  REQUIRE(plan);
  REQUIRE(!plan->empty());
  auto segs = list_segments(st.d.path);
  std::string intent = fmt::format(
      R"({{"seq":120,"time_ns":{},"old_base":"base.raw","new_base":"base-120.raw","segments":[{}]}})",
      time_of(120), fmt::join(plan->segments, ","));

  // Killed after writing the new base, before the commit: rolled back.
  fsutil::replace_file_atomic(fold_intent_path(st.d.path), intent);
  write_bytes(st.d.path + "/base-120.raw", st.images[120]);
  OpLog log;
  REQUIRE(repair_fold(st.d.path, &log));
  CHECK(log.size() == 1);
  CHECK(log[0].find("rolled back") != std::string::npos);
  CHECK(!fs::exists(st.d.path + "/base-120.raw"));
  CHECK(!fs::exists(fold_intent_path(st.d.path)));
  CHECK(list_segments(st.d.path)->size() == segs->size());
  check_restores(st, 1);

  // Killed after the commit and one segment: the rest goes.
  fsutil::replace_file_atomic(fold_intent_path(st.d.path), intent);
  write_bytes(st.d.path + "/base-120.raw", st.images[120]);
  auto m = read_manifest(st.d.path);
  m->base_image = "base-120.raw";
  m->base_complete_seq = m->folded_seq = 120;
  m->base_complete_time_ns = time_of(120);
  REQUIRE(write_manifest(st.d.path, *m));
  fs::remove(segment_path(st.d.path, plan->segments[0]));
  check_restores(st, 120);  // readers are consistent before any repair
  log.clear();
  REQUIRE(repair_fold(st.d.path, &log));
  CHECK(log.size() == 1);
  CHECK(log[0].find("merged the journal through seq 120") != std::string::npos);
  CHECK(list_segments(st.d.path)->size() == segs->size() - plan->segments.size());
  CHECK(!fs::exists(index_path(st.d.path, plan->segments[0])));
  CHECK(!fs::exists(st.d.path + "/base.raw"));
  CHECK(!fs::exists(fold_intent_path(st.d.path)));
  check_restores(st, 120);

  // No intent: nothing to do.
  log.clear();
  CHECK(repair_fold(st.d.path, &log));
  CHECK(log.empty());
}

}  // namespace kvmcdp
