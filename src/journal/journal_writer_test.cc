#include "journal/journal_writer.h"

#include <doctest/doctest.h>

#include <poll.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>

#include "store/journal_reader.h"
#include "store/journal_test_util.h"
#include "journal/segment_list.h"

namespace kvmcdp::journal {
using namespace testing;

namespace {
std::vector<uint8_t> pattern(size_t n, uint8_t seed) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; i++) v[i] = uint8_t(seed + i * 7);
  return v;
}

// Bytes zstd cannot shrink (xorshift), so their frames are as big as they.
std::vector<uint8_t> noise(size_t n, uint64_t seed) {
  std::vector<uint8_t> v(n);
  uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
  for (auto& b : v) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    b = uint8_t(x);
  }
  return v;
}

// While it lives, a file may not grow past 256 KiB (RLIMIT_FSIZE: the
// write fails with EFBIG; SIGXFSZ is ignored): a disk that fills up.
struct SmallFileLimit {
  rlimit old{};
  void (*old_handler)(int) = SIG_DFL;
  SmallFileLimit() {
    REQUIRE(getrlimit(RLIMIT_FSIZE, &old) == 0);
    old_handler = std::signal(SIGXFSZ, SIG_IGN);
    rlimit small = old;
    small.rlim_cur = 256 << 10;
    REQUIRE(setrlimit(RLIMIT_FSIZE, &small) == 0);
  }
  ~SmallFileLimit() {
    setrlimit(RLIMIT_FSIZE, &old);
    std::signal(SIGXFSZ, old_handler);
  }
};

// Every record the journal in `dir` holds, checked against pattern().
uint64_t count_pattern_records(const std::string& dir) {
  auto r = JournalReader::open(dir);
  REQUIRE(r);
  uint64_t next = 1;
  REQUIRE((*r)->for_each_record(1, [&](const RecordView& v) {
    CHECK(v.seq == next);
    CHECK(std::vector<uint8_t>(v.data, v.data + v.data_len) ==
          pattern(v.data_len, uint8_t(v.seq)));
    next++;
    return true;
  }));
  return next - 1;
}
}  // namespace

TEST_CASE("journal round trip across frames and segments") {
  TempDir d;
  WriterOptions o;
  o.stream_id = 42;
  o.frame_raw_bytes = 3000;
  o.segment_max_bytes = 4096;
  {
    auto w = JournalWriter::open(d.path, o);
    REQUIRE(w);
    CHECK(!(*w)->recovered());
    for (uint64_t s = 1; s <= 200; s++) {
      REQUIRE((*w)->append(write_rec(s, s * 512, pattern(500, uint8_t(s)))));
      if (s % 17 == 0) {
        auto c = (*w)->commit();
        REQUIRE(c);
        CHECK(*c == s);
      }
    }
    CHECK((*w)->last_durable_seq() == 187);
    REQUIRE((*w)->close());
    CHECK((*w)->last_durable_seq() == 200);
    CHECK((*w)->stats().records == 200);
    CHECK((*w)->stats().segments > 3);
  }
  auto r = JournalReader::open(d.path);
  REQUIRE(r);
  CHECK(!(*r)->damage());
  CHECK((*r)->stream_id() == 42);
  CHECK((*r)->first_seq() == 1);
  CHECK((*r)->last_seq() == 200);
  uint64_t next = 1;
  REQUIRE((*r)->for_each_record(1, [&](const RecordView& v) {
    CHECK(v.seq == next);
    CHECK(v.offset == next * 512);
    CHECK(std::vector<uint8_t>(v.data, v.data + v.data_len) == pattern(500, uint8_t(next)));
    next++;
    return true;
  }));
  CHECK(next == 201);
  auto fi = (*r)->frame_for_seq(100);
  REQUIRE(fi);
  CHECK((*r)->frames()[*fi].first_seq <= 100);
  CHECK((*r)->frames()[*fi].last_seq >= 100);
  CHECK(!(*r)->frame_for_seq(201));
  auto v = verify_journal(d.path);
  REQUIRE(v);
  CHECK(v->ok());
  CHECK(v->records == 200);
  CHECK(v->last_seq == 200);

  // Reopening continues the sequence in a new segment.
  auto w = JournalWriter::open(d.path, o);
  REQUIRE(w);
  CHECK((*w)->last_durable_seq() == 200);
  CHECK(!(*w)->append(write_rec(202, 0, pattern(1, 1))));  // not consecutive
  REQUIRE((*w)->append(plain_rec(203, RecordType::kGap, 201)));
  REQUIRE((*w)->append(write_rec(204, 0, pattern(1, 1))));
  CHECK(*(*w)->commit() == 204);
}

TEST_CASE("stream id mismatch is refused") {
  TempDir d;
  {
    WriterOptions o;
    o.stream_id = 1;
    auto w = JournalWriter::open(d.path, o);
    REQUIRE((*w)->append(write_rec(1, 0, {1})));
    REQUIRE((*w)->commit());
  }
  WriterOptions o;
  o.stream_id = 2;
  CHECK(!JournalWriter::open(d.path, o));
}

TEST_CASE("many frames in flight: every commit is durable up to what was appended") {
  // Tiny frames, so each commit collects many frames from the compression
  // thread; after each commit a fresh reader must see exactly the records
  // appended so far, written and in order.
  TempDir d;
  WriterOptions o;
  o.frame_raw_bytes = 600;
  o.frames_in_flight = 2;
  o.segment_max_bytes = 64 << 10;
  auto w = JournalWriter::open(d.path, o);
  REQUIRE(w);
  uint64_t seq = 0;
  for (uint64_t batch : {1u, 7u, 150u, 2u, 400u}) {
    for (uint64_t k = 0; k < batch; k++) {
      seq++;
      auto data = pattern(100 + seq % 900, uint8_t(seq));
      // Both append paths: the owning one and the view the receiver uses.
      if (seq % 2) {
        REQUIRE((*w)->append(write_rec(seq, seq * 4096, std::move(data))));
      } else {
        Record r = write_rec(seq, seq * 4096, std::move(data));
        REQUIRE((*w)->append(view_of(r)));
      }
    }
    auto c = (*w)->commit();
    REQUIRE(c);
    CHECK(*c == seq);
    CHECK(count_pattern_records(d.path) == seq);
  }
  CHECK((*w)->stats().segments > 1);
  REQUIRE((*w)->close());
  auto v = verify_journal(d.path);
  REQUIRE(v);
  CHECK(v->ok());
  CHECK(v->records == seq);
}

TEST_CASE("view append refuses what the owning append refuses") {
  TempDir d;
  auto w = JournalWriter::open(d.path, {});
  REQUIRE(w);
  REQUIRE((*w)->append(write_rec(1, 0, pattern(10, 1))));
  Record bad = write_rec(2, 0, pattern(10, 2));
  RecordView v = view_of(bad);
  v.data_len = 9;  // a write whose data is shorter than its length
  CHECK(!(*w)->append(v));
  v = view_of(bad);
  v.seq = 3;  // not consecutive
  CHECK(!(*w)->append(v));
  REQUIRE((*w)->append(view_of(bad)));
  CHECK(*(*w)->commit() == 2);
}

TEST_CASE("a failed write with frames in flight: commit and every later call fail") {
  // The segment may not grow past 256 KiB (RLIMIT_FSIZE: the write fails
  // with EFBIG), and 2 MiB of incompressible records are in flight.
  TempDir d;
  WriterOptions o;
  o.frame_raw_bytes = 64 << 10;
  o.frames_in_flight = 2;
  uint64_t durable = 0;
  {
    auto w = JournalWriter::open(d.path, o);
    REQUIRE(w);
    for (uint64_t s = 1; s <= 2; s++) REQUIRE((*w)->append(write_rec(s, 0, noise(4096, s))));
    durable = *(*w)->commit();
    REQUIRE(durable == 2);
    auto c = [&] {
      SmallFileLimit limit;
      for (uint64_t s = 3; s <= 34; s++)
        REQUIRE((*w)->append(write_rec(s, 0, noise(64 << 10, s))));
      return (*w)->commit();
    }();
    REQUIRE(!c);
    CHECK(c.status().kind() == ErrorKind::kFailure);
    CHECK((*w)->last_durable_seq() == durable);
    // The writer refuses further work with the same error.
    auto again = (*w)->append(write_rec(35, 0, noise(10, 35)));
    CHECK(!again);
    CHECK(again.message() == c.status().message());
    CHECK(!(*w)->commit());
    CHECK(!(*w)->close());
  }
  // Reopening recovers what is whole; nothing before the failure is lost.
  auto w = JournalWriter::open(d.path, o);
  REQUIRE(w);
  CHECK((*w)->last_durable_seq() >= durable);
  CHECK((*w)->last_durable_seq() < 34);
  auto v = verify_journal(d.path);
  REQUIRE(v);
  CHECK(v->ok());
}

namespace {
// Waits for the writer's commit event and takes it.
Result<uint64_t> wait_commit_event(JournalWriter& w) {
  pollfd p{w.commit_event_fd(), POLLIN, 0};
  REQUIRE(p.fd >= 0);
  REQUIRE(poll(&p, 1, 30000) == 1);
  return w.take_commit_event();
}
}  // namespace

TEST_CASE("commit_async: appends go on while a sync runs, each event is durable up to its ask") {
  // Small frames and segments, so syncs overlap frames in flight and
  // segment rotations.  After each event, a fresh reader must see at least
  // every record appended before the ask that the event answers.
  TempDir d;
  WriterOptions o;
  o.frame_raw_bytes = 900;
  o.frames_in_flight = 2;
  o.segment_max_bytes = 16 << 10;
  auto w = JournalWriter::open(d.path, o);
  REQUIRE(w);
  CHECK((*w)->commit_event_fd() == -1);
  uint64_t seq = 0, asked_at = 0, answered = 0;
  bool pending = false;
  for (int round = 0; round < 60; round++) {
    for (int k = 0; k < 1 + round % 9; k++) {
      seq++;
      REQUIRE((*w)->append(write_rec(seq, seq * 4096, pattern(100 + seq % 700, uint8_t(seq)))));
    }
    if (!pending) {
      REQUIRE((*w)->commit_async());
      asked_at = seq;
      pending = true;
    }
    pollfd p{(*w)->commit_event_fd(), POLLIN, 0};
    if (poll(&p, 1, round % 3 ? 0 : 30000) == 1) {
      auto durable = (*w)->take_commit_event();
      REQUIRE(durable);
      CHECK(*durable >= asked_at);
      CHECK(*durable <= seq);
      CHECK(*durable >= answered);
      answered = *durable;
      CHECK((*w)->last_durable_seq() == *durable);
      CHECK(count_pattern_records(d.path) >= *durable);
      pending = false;
    }
  }
  if (pending) CHECK(*wait_commit_event(**w) >= asked_at);
  // An ask with nothing new still gets its event.
  REQUIRE((*w)->commit_async());
  auto again = wait_commit_event(**w);
  REQUIRE(again);
  // The synchronous commit covers the rest, then close seals.
  CHECK(*(*w)->commit() == seq);
  CHECK((*w)->stats().segments > 2);
  REQUIRE((*w)->close());
  CHECK(count_pattern_records(d.path) == seq);
  auto v = verify_journal(d.path);
  REQUIRE(v);
  CHECK(v->ok());
}

TEST_CASE("commit_async: a failed write is the event's error, and stops the writer") {
  TempDir d;
  WriterOptions o;
  o.frame_raw_bytes = 64 << 10;
  o.frames_in_flight = 2;
  auto w = JournalWriter::open(d.path, o);
  REQUIRE(w);
  REQUIRE((*w)->append(write_rec(1, 0, noise(4096, 1))));
  REQUIRE((*w)->commit_async());
  auto first = wait_commit_event(**w);
  REQUIRE(first);
  CHECK(*first == 1);
  auto failed = [&] {
    SmallFileLimit limit;
    for (uint64_t s = 2; s <= 20; s++) REQUIRE((*w)->append(write_rec(s, 0, noise(64 << 10, s))));
    REQUIRE((*w)->commit_async());
    return wait_commit_event(**w);
  }();
  REQUIRE(!failed);
  CHECK(failed.status().kind() == ErrorKind::kFailure);
  CHECK((*w)->last_durable_seq() < 20);
  CHECK(!(*w)->append(write_rec(21, 0, noise(10, 21))));
  CHECK(!(*w)->commit());
}

TEST_CASE("incompressible records go into stored frames and read back exactly") {
  // 1 MiB frames of noise: stored (raw zstd blocks, written gathered from
  // the frame buffer) rather than compressed; the journal is about as big
  // as the data, and a reader gets every byte back.
  TempDir d;
  WriterOptions o;
  o.segment_max_bytes = 3 << 20;  // rotations between stored frames too
  uint64_t seq = 0;
  {
    auto w = JournalWriter::open(d.path, o);
    REQUIRE(w);
    for (; seq < 160; seq++)
      REQUIRE((*w)->append(write_rec(seq + 1, seq * 65536, noise(65536, seq + 1))));
    REQUIRE((*w)->close());
    auto st = (*w)->stats();
    CHECK(st.compressed_bytes >= st.raw_bytes);
    CHECK(st.compressed_bytes < st.raw_bytes + st.raw_bytes / 100);
  }
  auto r = JournalReader::open(d.path);
  REQUIRE(r);
  uint64_t next = 1;
  REQUIRE((*r)->for_each_record(1, [&](const RecordView& v) {
    CHECK(v.seq == next);
    CHECK(std::vector<uint8_t>(v.data, v.data + v.data_len) == noise(65536, next));
    next++;
    return true;
  }));
  CHECK(next == seq + 1);
  auto v = verify_journal(d.path);
  REQUIRE(v);
  CHECK(v->ok());
}

TEST_CASE("compression threads run at the nice value asked for") {
  // /proc/self/task/*/stat, field 19: each thread's nice value.
  auto threads_at = [](int nice) {
    int n = 0;
    for (const auto& t : std::filesystem::directory_iterator("/proc/self/task")) {
      std::ifstream f(t.path() / "stat");
      std::string stat((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
      std::istringstream rest(stat.substr(stat.rfind(')') + 2));
      std::string field;
      for (int i = 3; i <= 19 && rest >> field; i++) {
      }
      if (field == std::to_string(nice)) n++;
    }
    return n;
  };
  TempDir d;
  WriterOptions o;
  o.compress_threads = 3;
  o.compress_nice = 7;
  int before = threads_at(7);
  auto w = JournalWriter::open(d.path, o);
  REQUIRE(w);
  REQUIRE((*w)->append(write_rec(1, 0, pattern(100, 1))));
  REQUIRE((*w)->commit());
  // Each thread sets its own priority when it starts: give them time.
  for (int i = 0; i < 1000 && threads_at(7) - before < 3; i++) usleep(10000);
  CHECK(threads_at(7) - before == 3);
  // This one is untouched: still at the nice value the test runs at (0,
  // or whatever `nice ctest` gave it).
  errno = 0;
  int own = getpriority(PRIO_PROCESS, 0);
  REQUIRE(errno == 0);
  CHECK(threads_at(own) >= 1);
}

}  // namespace kvmcdp::journal

namespace kvmcdp::journal {

TEST_CASE("the written event: fires when a frame reaches the segment file, before any fdatasync") {
  TempDir d;
  WriterOptions o;
  o.frame_raw_bytes = 64 << 10;  // two 40 KiB records fill a frame
  uint64_t reopened_at = 0;
  {
    auto w = JournalWriter::open(d.path, o);
    REQUIRE(w);
    int fd = (*w)->written_event_fd();
    REQUIRE(fd >= 0);
    pollfd p{fd, POLLIN, 0};
    CHECK(poll(&p, 1, 0) == 0);
    CHECK((*w)->last_written_seq() == 0);
    // A full frame goes to the compression threads, which write it: the
    // event comes without a commit.
    REQUIRE((*w)->append(write_rec(1, 0, pattern(40 << 10, 1))));
    REQUIRE((*w)->append(write_rec(2, 1 << 20, pattern(40 << 10, 2))));
    REQUIRE((*w)->append(write_rec(3, 2 << 20, pattern(40 << 10, 3))));
    REQUIRE(poll(&p, 1, 20000) == 1);  // a hang detector, not a speed check
    uint64_t written = (*w)->take_written_event();
    CHECK(written >= 1);
    CHECK(written < 3);  // the third record is still in the open frame
    CHECK((*w)->last_durable_seq() == 0);
    CHECK(poll(&p, 1, 0) == 0);  // taken
    REQUIRE((*w)->commit());
    CHECK((*w)->take_written_event() == 3);
    reopened_at = 3;
  }
  // What was written is what a new writer starts from.
  auto w = JournalWriter::open(d.path, o);
  REQUIRE(w);
  CHECK((*w)->last_written_seq() == reopened_at);
}

}  // namespace kvmcdp::journal
