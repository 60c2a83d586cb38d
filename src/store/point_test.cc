// What points and --mark/--seq call recoverable, on stores written here:
// duplicate mark names, and damage that only `journal verify` finds.
#include "store/point.h"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <unistd.h>

#include <filesystem>
#include <optional>
#include <random>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli/cli_test_util.h"
#include "store/journal_test_util.h"
#include "journal/journal_writer.h"
#include "store/manifest.h"
#include "restore/restore_engine.h"
#include "journal/segment_list.h"
#include "store/verify_record.h"

namespace kvmcdp {
using namespace journal;
using namespace journal::testing;
using cli_testing::cli;

namespace {

void write_base(const std::string& store, uint64_t size) {
  write_bytes(store + "/base.raw", std::vector<uint8_t>(size, 0x11));
}

Record mark_rec(uint64_t seq, const std::string& name) {
  Record r = plain_rec(seq, RecordType::kMark);
  r.data.assign(name.begin(), name.end());
  return r;
}

}  // namespace

TEST_CASE("points: restore says which instant --at was read as (TZ=Europe/Berlin)") {
  std::optional<std::string> old_tz;
  if (const char* z = std::getenv("TZ")) old_tz = z;
  setenv("TZ", "Europe/Berlin", 1);
  tzset();
  TempDir d;
  std::string store = d.path + "/store";
  std::filesystem::create_directory(store);
  write_base(store, 4096);
  const uint64_t t0 = 1795636200ull * 1000000000ull;  // 2026-11-25T19:50:00Z
  {
    auto w = JournalWriter::open(store, WriterOptions{});
    REQUIRE(w);
    for (uint64_t s = 1; s <= 300; s++)
      REQUIRE((*w)->append(write_rec(s, s * 8, {1, 2}, t0 + s * 1000000000ull)));
    REQUIRE((*w)->commit());
  }
  write_store_manifest(store, 4096, 1);
  auto run = cli({"restore", "--store", store, "--at", "2026-11-25 20:52:10", "-o",
                  d.path + "/out.raw"},
                 d.path);
  CHECK_MESSAGE(run.code == 0, run.err);
  CHECK(run.out == "130\n");
  CHECK_MESSAGE(run.err.find("kvmcdp: --at 2026-11-25 20:52:10 means 2026-11-25 20:52:10 +01:00 "
                             "(19:52:10 UTC)\n") != std::string::npos,
                run.err);
  // Not one clear instant: refused with one line, exit 2, nothing written.
  std::filesystem::remove(d.path + "/out.raw");
  for (const char* t : {"next week", "2026-10-25 02:30"}) {
    CAPTURE(t);
    auto bad = cli({"restore", "--store", store, "--at", t, "-o", d.path + "/out.raw"}, d.path);
    CHECK(bad.code == 2);
    CHECK(bad.err.rfind("kvmcdp: error: ", 0) == 0);
    CHECK(bad.err.find('\n') == bad.err.size() - 1);
    CHECK_FALSE(std::filesystem::exists(d.path + "/out.raw"));
  }
  // Human output is local time with its offset; JSON stays UTC.
  auto text = cli({"points", "--store", store}, d.path);
  CHECK_MESSAGE(text.out.find("recoverable: seq 1..300  2026-11-25 20:50:01 +01:00 .. "
                              "2026-11-25 20:55:00 +01:00") != std::string::npos,
                text.out);
  auto js = nlohmann::json::parse(cli({"points", "--store", store, "--json"}, d.path).out);
  CHECK(js["recoverable"][0]["last_time"] == "2026-11-25T19:55:00.000Z");
  if (old_tz) setenv("TZ", old_tz->c_str(), 1);
  else unsetenv("TZ");
  tzset();
}

TEST_CASE("points: --mark refuses a name that several marks share") {
  TempDir d;
  std::string store = d.path + "/store";
  std::filesystem::create_directory(store);
  write_base(store, 4096);
  {
    auto w = JournalWriter::open(store, WriterOptions{});
    REQUIRE(w);
    for (uint64_t s = 1; s <= 12; s++) {
      if (s == 5 || s == 8) REQUIRE((*w)->append(mark_rec(s, "before-upgrade")));
      else if (s == 10) REQUIRE((*w)->append(mark_rec(s, "once")));
      else REQUIRE((*w)->append(write_rec(s, s * 8, {1, 2})));
    }
    REQUIRE((*w)->commit());
  }
  write_store_manifest(store, 4096, 1);
  auto view = open_store_view(store);
  REQUIRE(view);
  PointSpec dup;
  dup.mark = "before-upgrade";
  auto r = resolve_point(*view, dup, 1000000);
  REQUIRE_FALSE(r);
  CHECK(r.status().kind() == ErrorKind::kUsage);
  const std::string& m = r.status().message();
  CHECK_MESSAGE(m.find("seq 5") != std::string::npos, m);
  CHECK_MESSAGE(m.find("seq 8") != std::string::npos, m);
  CHECK_MESSAGE(m.find("--seq") != std::string::npos, m);
  CHECK_MESSAGE(m.find("--at") != std::string::npos, m);
  CHECK(m.find('\n') == std::string::npos);
  PointSpec once;
  once.mark = "once";
  CHECK(*resolve_point(*view, once, 1000000) == 10);
  PointSpec none;
  none.mark = "never";
  CHECK(resolve_point(*view, none, 1000000).status().kind() == ErrorKind::kNotFound);
  // The command line says the same, exit 2.
  CHECK(cli({"restore", "--quiet", "--store", store, "--mark", "before-upgrade", "-o",
             d.path + "/out.raw"},
            d.path)
            .code == 2);
  CHECK_FALSE(std::filesystem::exists(d.path + "/out.raw"));
}

TEST_CASE("points: damage that journal verify found ends what is recoverable") {
  TempDir d;
  std::string store = d.path + "/store";
  make_segmented_store(store);
  // A bad byte in the payload of a frame in a sealed (indexed) middle
  // segment: opening the journal does not read it.
  auto segs = list_segments(store);
  REQUIRE(segs);
  REQUIRE(segs->size() >= 4);
  const uint64_t middle = (*segs)[segs->size() / 2];
  uint64_t bad_first_seq = 0;
  {
    auto r = JournalReader::open(store);
    REQUIRE(r);
    for (const auto& f : (*r)->frames())
      if (f.segment == middle) {
        bad_first_seq = f.first_seq;
        std::string path = segment_path(store, middle);
        auto bytes = read_bytes(path);
        bytes.at(f.offset + kFrameHeaderSize + 10) ^= 0x40;
        write_bytes(path, bytes);
        break;
      }
  }
  REQUIRE(bad_first_seq > 3);
  {
    auto view = open_store_view(store);
    REQUIRE(view);
    REQUIRE_FALSE(view->reader->damage());  // only a full read finds it
  }

  CHECK(cli({"journal", "verify", "--store", store}, d.path).code == 4);
  REQUIRE(std::filesystem::exists(verify_record_path(store)));

  // Everything points calls recoverable ends before the damaged frame, in
  // the text and in the JSON, and every one of those points restores.
  auto view = open_store_view(store);
  REQUIRE(view);
  REQUIRE(view->verified);
  REQUIRE(view->verified->damage);
  CHECK(view->verified->verified_seq == bad_first_seq - 1);
  REQUIRE_FALSE(view->ranges.empty());
  CHECK(view->ranges.back().last_seq == bad_first_seq - 1);
  auto json_run = cli({"points", "--store", store, "--json"}, d.path);
  REQUIRE(json_run.code == 0);
  auto j = nlohmann::json::parse(json_run.out);
  REQUIRE(j["recoverable"].size() >= 1);
  std::vector<uint64_t> listed;
  for (const auto& r : j["recoverable"]) {
    CHECK(r["last_seq"].get<uint64_t>() < bad_first_seq);
    listed.push_back(r["first_seq"].get<uint64_t>());
    listed.push_back(r["last_seq"].get<uint64_t>());
  }
  CHECK(!j["verified"]["damage"].is_null());
  auto text_run = cli({"points", "--store", store}, d.path);
  REQUIRE(text_run.code == 0);
  CHECK_MESSAGE(text_run.out.find(fmt::format("recoverable: seq 3..{} ", bad_first_seq - 1)) !=
                    std::string::npos,
                text_run.out);
  CHECK_MESSAGE(text_run.out.find(fmt::format("verified: up to seq {} at ", bad_first_seq - 1)) !=
                    std::string::npos,
                text_run.out);
  for (uint64_t seq : listed) {
    CAPTURE(seq);
    auto run = cli({"restore", "--quiet", "--force", "--store", store, "--seq", std::to_string(seq), "-o",
                    d.path + "/out.raw"},
                   d.path);
    CHECK(run.code == 0);
  }
  CHECK(cli({"restore", "--quiet", "--force", "--store", store, "--latest", "-o", d.path + "/out.raw"},
            d.path)
            .code == 0);
  // Past the damage: refused before anything is read, exit 6.
  CHECK(cli({"restore", "--quiet", "--force", "--store", store, "--seq", std::to_string(bad_first_seq),
             "-o", d.path + "/out.raw"},
            d.path)
            .code == 6);

  // The journal grows: the kept result still holds for what it read.
  {
    auto w = JournalWriter::open(store, segmented_store_options());
    REQUIRE(w);
    REQUIRE((*w)->append(write_rec(201, 0, {9, 9})));
    REQUIRE((*w)->commit());
  }
  {
    auto grown = open_store_view(store);
    REQUIRE(grown);
    REQUIRE(grown->verified);
    CHECK(grown->ranges.back().last_seq == bad_first_seq - 1);
  }
  // The damaged segment is put right (rewritten): the result no longer
  // describes it and is not used until verify runs again.
  {
    std::string path = segment_path(store, middle);
    auto r = JournalReader::open(store);
    REQUIRE(r);
    auto bytes = read_bytes(path);
    for (const auto& f : (*r)->frames())
      if (f.segment == middle) {
        bytes.at(f.offset + kFrameHeaderSize + 10) ^= 0x40;
        break;
      }
    write_bytes(path, bytes);
    // Same size, so only the mtime tells, even on a coarse clock.
    std::filesystem::last_write_time(
        path, std::filesystem::last_write_time(path) + std::chrono::seconds(2));
  }
  {
    auto fixed = open_store_view(store);
    REQUIRE(fixed);
    CHECK_FALSE(fixed->verified);
    CHECK(fixed->ranges.back().last_seq == 201);
  }
  CHECK(cli({"journal", "verify", "--store", store}, d.path).code == 0);
  auto clean = open_store_view(store);
  REQUIRE(clean);
  REQUIRE(clean->verified);
  CHECK_FALSE(clean->verified->damage);
  CHECK(clean->verified->verified_seq == 201);
}

}  // namespace kvmcdp
