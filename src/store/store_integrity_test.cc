// What restore refuses to do with a store, on stores written here: write
// its image into the store (over the base, into journal/, over the store
// folder), with or without --force; replay a journal whose first, middle
// or last segments were deleted.
#include <doctest/doctest.h>
#include <unistd.h>

#include <filesystem>
#include <functional>
#include <map>
#include <random>
#include <string>

#include <nlohmann/json.hpp>

#include "cli/cli_test_util.h"
#include "store/journal_test_util.h"
#include "journal/journal_writer.h"
#include "store/manifest.h"
#include "restore/output_target.h"
#include "store/protect_state.h"
#include "journal/segment_list.h"
#include "journal/segment_name.h"

namespace kvmcdp {
using namespace journal;
using namespace journal::testing;
using cli_testing::cli;

namespace {

// A store of 4096 bytes with 20 writes after the base.
void make_store(const std::string& store) {
  std::filesystem::create_directory(store);
  write_bytes(store + "/base.raw", std::vector<uint8_t>(4096, 0x11));
  auto w = JournalWriter::open(store, WriterOptions{});
  REQUIRE(w);
  for (uint64_t s = 1; s <= 20; s++) REQUIRE((*w)->append(write_rec(s, s * 8, {1, 2})));
  REQUIRE((*w)->commit());
  write_store_manifest(store, 4096, 1);
}

// Every file under `dir` with its bytes: the store before and after.
std::map<std::string, std::vector<uint8_t>> snapshot_of(const std::string& dir) {
  std::map<std::string, std::vector<uint8_t>> m;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir))
    m[e.path().string()] = e.is_regular_file() ? read_bytes(e.path().string())
                                               : std::vector<uint8_t>{};
  return m;
}

void remove_segment(const std::string& store, uint64_t n) {
  std::filesystem::remove(segment_path(store, n));
  std::filesystem::remove(index_path(store, n));
}

// The first seq segment n holds.
uint64_t first_seq_of(const std::string& store, uint64_t n) {
  auto sf = load_segment(store, n);
  REQUIRE(sf);
  REQUIRE_FALSE(sf->frames.empty());
  return sf->frames.front().first_seq;
}

nlohmann::json points_json(const std::string& store, const std::string& scratch) {
  auto run = cli({"points", "--store", store, "--json"}, scratch);
  REQUIRE_MESSAGE(run.code == 0, run.err);
  return nlohmann::json::parse(run.out);
}

void check_one_error_line(const cli_testing::CliRun& run) {
  CHECK_MESSAGE(run.err.rfind("kvmcdp: error: ", 0) == 0, run.err);
  CHECK(run.err.find('\n') == run.err.size() - 1);
}

}  // namespace

TEST_CASE("journal: deleted first, middle or last segments are damage, not a shorter journal") {
  TempDir d;
  const std::string out = d.path + "/out.raw";
  SUBCASE("the first segment") {
    const std::string store = d.path + "/store";
    make_segmented_store(store);
    auto segs = list_segments(store);
    REQUIRE(segs);
    REQUIRE(segs->size() >= 4);
    remove_segment(store, segs->front());
    auto verify = cli({"journal", "verify", "--store", store}, d.path);
    CHECK(verify.code == 4);
    CHECK_MESSAGE(verify.err.find("earlier segments are missing") != std::string::npos,
                  verify.err);
    check_one_error_line(verify);
    // Nothing is recoverable: every point needs the records from seq 1.
    auto points = cli({"points", "--store", store}, d.path);
    CHECK(points.code == 0);
    CHECK_MESSAGE(points.out.find("recoverable: seq") == std::string::npos, points.out);
    CHECK_MESSAGE(points.out.find("damage: ") != std::string::npos, points.out);
    CHECK_MESSAGE(points.out.find("earlier segments are missing") != std::string::npos, points.out);
    for (std::vector<std::string> point :
         {std::vector<std::string>{"--latest"}, {"--seq", "10"}, {"--seq", "3"},
          {"--seq", "150"}}) {
      CAPTURE(point[0]);
      std::vector<std::string> args = {"restore", "--quiet", "--store", store, "-o", out};
      args.insert(args.end(), point.begin(), point.end());
      auto run = cli(args, d.path);
      CHECK(run.code == 6);
      check_one_error_line(run);
      CHECK_FALSE(std::filesystem::exists(out));
    }
  }
  SUBCASE("a middle segment") {
    const std::string store = d.path + "/store";
    make_segmented_store(store);
    auto segs = list_segments(store);
    REQUIRE(segs);
    const uint64_t middle = (*segs)[segs->size() / 2];
    const uint64_t hole = first_seq_of(store, middle);
    remove_segment(store, middle);
    auto verify = cli({"journal", "verify", "--store", store}, d.path);
    CHECK(verify.code == 4);
    CHECK_MESSAGE(verify.err.find(segment_file_name(middle + 1)) != std::string::npos, verify.err);
    check_one_error_line(verify);
    auto j = points_json(store, d.path);
    REQUIRE(j["recoverable"].size() == 1);
    CHECK(j["recoverable"][0]["last_seq"].get<uint64_t>() == hole - 1);
    auto past = cli({"restore", "--quiet", "--store", store, "--seq", std::to_string(hole + 1),
                     "-o", out},
                    d.path);
    CHECK(past.code == 6);
    check_one_error_line(past);
    auto latest = cli({"restore", "--quiet", "--store", store, "--latest", "-o", out}, d.path);
    CHECK(latest.code == 0);
    CHECK(latest.out == std::to_string(hole - 1) + "\n");
  }
  SUBCASE("the last segment, with protect.json naming the last durable seq") {
    const std::string store = d.path + "/store";
    make_segmented_store(store);
    ProtectState st;
    st.stream_id = 5;  // write_store_manifest's and the writer's
    st.durable_seq = 200;
    st.store = store;
    REQUIRE(write_protect_state(store, st));
    auto segs = list_segments(store);
    REQUIRE(segs);
    const uint64_t last = segs->back();
    const uint64_t end = first_seq_of(store, last) - 1;
    // Intact, it verifies.
    CHECK(cli({"journal", "verify", "--store", store}, d.path).code == 0);
    remove_segment(store, last);
    auto verify = cli({"journal", "verify", "--store", store}, d.path);
    CHECK(verify.code == 4);
    CHECK_MESSAGE(verify.err.find("last segments are missing") != std::string::npos, verify.err);
    check_one_error_line(verify);
    auto j = points_json(store, d.path);
    CHECK(!j["damage"].is_null());
    REQUIRE(j["recoverable"].size() == 1);
    CHECK(j["recoverable"][0]["last_seq"].get<uint64_t>() == end);
    // --latest is not the latest any more: refused, the last held point named.
    auto latest = cli({"restore", "--quiet", "--store", store, "--latest", "-o", out}, d.path);
    CHECK(latest.code == 6);
    CHECK_MESSAGE(latest.err.find("--seq " + std::to_string(end)) != std::string::npos,
                  latest.err);
    check_one_error_line(latest);
    CHECK_FALSE(std::filesystem::exists(out));
    CHECK(cli({"restore", "--quiet", "--store", store, "--seq", "200", "-o", out}, d.path).code ==
          6);
    CHECK_FALSE(std::filesystem::exists(out));
  }
}

TEST_CASE("journal: a folded journal starts after folded_seq, and that is no hole") {
  TempDir d;
  const std::string store = d.path + "/store";
  make_segmented_store(store);
  auto segs = list_segments(store);
  REQUIRE(segs);
  // What a fold leaves: the first segments gone, the manifest saying the
  // base holds everything up to the seq before the next one.
  const uint64_t next = first_seq_of(store, (*segs)[2]);
  remove_segment(store, (*segs)[0]);
  remove_segment(store, (*segs)[1]);
  auto m = read_manifest(store);
  REQUIRE(m);
  m->folded_seq = next - 1;
  m->base_complete_seq = next - 1;
  REQUIRE(write_manifest(store, *m));
  CHECK(cli({"journal", "verify", "--store", store}, d.path).code == 0);
  auto j = points_json(store, d.path);
  REQUIRE(j["recoverable"].size() == 1);
  CHECK(j["recoverable"][0]["first_seq"].get<uint64_t>() == next - 1);
  CHECK(j["recoverable"][0]["last_seq"].get<uint64_t>() == 200);
  // One more segment gone past the fold is a hole again.
  remove_segment(store, (*segs)[2]);
  CHECK(cli({"journal", "verify", "--store", store}, d.path).code == 4);
  j = points_json(store, d.path);
  REQUIRE(j["recoverable"].size() == 1);  // the folded base alone
  CHECK(j["recoverable"][0]["last_seq"].get<uint64_t>() == next - 1);
}

namespace {

// manifest.json as a person with an editor would change it: one value
// replaced in the text, the rest (the checksum too) left alone.
void edit_manifest(const std::string& store, const std::function<void(nlohmann::json&)>& edit) {
  auto bytes = read_bytes(manifest_path(store));
  auto j = nlohmann::json::parse(std::string(bytes.begin(), bytes.end()));
  edit(j);
  std::string text = j.dump(2) + "\n";
  write_bytes(manifest_path(store), std::vector<uint8_t>(text.begin(), text.end()));
}

}  // namespace

TEST_CASE("manifest: a changed disk_size is damage, found by verify and refused by restore") {
  TempDir d;
  const std::string store = d.path + "/store", out = d.path + "/out.raw";
  make_store(store);
  CHECK(cli({"journal", "verify", "--store", store}, d.path).code == 0);
  SUBCASE("with its checksum") {
    edit_manifest(store, [](nlohmann::json& j) { j["disk_size"] = 8192; });
    auto verify = cli({"journal", "verify", "--store", store}, d.path);
    CHECK(verify.code == 4);
    CHECK_MESSAGE(verify.err.find("checksum mismatch") != std::string::npos, verify.err);
    check_one_error_line(verify);
    auto run = cli({"restore", "--quiet", "--store", store, "--latest", "-o", out}, d.path);
    CHECK(run.code == 4);
    check_one_error_line(run);
    CHECK_FALSE(std::filesystem::exists(out));
  }
  SUBCASE("in an old manifest without a checksum") {
    edit_manifest(store, [](nlohmann::json& j) { j.erase("crc32c"); });
    // Unchanged otherwise, it is read, and verify says it has no checksum.
    auto ok = cli({"journal", "verify", "--store", store}, d.path);
    CHECK_MESSAGE(ok.code == 0, ok.err);
    CHECK_MESSAGE(ok.out.find("manifest: no checksum") != std::string::npos, ok.out);
    CHECK(cli({"restore", "--quiet", "--store", store, "--latest", "-o", out}, d.path).code == 0);
    std::filesystem::remove(out);
    for (uint64_t size : {8192u, 2048u}) {
      CAPTURE(size);
      edit_manifest(store, [&](nlohmann::json& j) { j["disk_size"] = size; });
      auto verify = cli({"journal", "verify", "--store", store}, d.path);
      CHECK(verify.code == 4);
      CHECK_MESSAGE(verify.err.find("disk_size is " + std::to_string(size)) != std::string::npos,
                    verify.err);
      check_one_error_line(verify);
      auto run = cli({"restore", "--quiet", "--store", store, "--latest", "-o", out}, d.path);
      CHECK(run.code == 4);
      check_one_error_line(run);
      CHECK_FALSE(std::filesystem::exists(out));
    }
  }
}

TEST_CASE("journal: a record past the disk's end is damage") {
  TempDir d;
  const std::string store = d.path + "/store", out = d.path + "/out.raw";
  std::filesystem::create_directory(store);
  write_bytes(store + "/base.raw", std::vector<uint8_t>(4096, 0x11));
  {
    auto w = JournalWriter::open(store, WriterOptions{});
    REQUIRE(w);
    REQUIRE((*w)->append(write_rec(1, 8, {1, 2})));
    REQUIRE((*w)->append(write_rec(2, 4090, std::vector<uint8_t>(16, 7))));
    REQUIRE((*w)->commit());
  }
  write_store_manifest(store, 4096, 1);
  auto verify = cli({"journal", "verify", "--store", store}, d.path);
  CHECK(verify.code == 4);
  CHECK_MESSAGE(verify.err.find("past the disk's end") != std::string::npos, verify.err);
  check_one_error_line(verify);
  auto run = cli({"restore", "--quiet", "--store", store, "--seq", "2", "-o", out}, d.path);
  CHECK(run.code == 6);
  check_one_error_line(run);
  CHECK_FALSE(std::filesystem::exists(out));
}

TEST_CASE("restore: an output inside a store is refused, even with --force") {
  TempDir d;
  const std::string store = d.path + "/store", other = d.path + "/other";
  make_store(store);
  make_store(other);
  std::filesystem::create_symlink(store + "/base.raw", d.path + "/link-to-base");
  std::filesystem::create_directory(d.path + "/elsewhere");
  const auto before = snapshot_of(d.path + "/store");
  const auto other_before = snapshot_of(other);
  for (const std::string& out :
       {store + "/base.raw", store + "/journal/new.raw", store + "/new.raw", store,
        store + "/journal/" + std::filesystem::directory_iterator(store + "/journal")->path()
                                  .filename().string(),
        d.path + "/elsewhere/../store/base.raw", d.path + "/link-to-base",
        other + "/base.raw", other + "/journal/x.raw"}) {
    for (bool force : {false, true}) {
      CAPTURE(out);
      CAPTURE(force);
      std::vector<std::string> args = {"restore", "--quiet", "--store", store, "--latest", "-o",
                                       out};
      if (force) args.push_back("--force");
      auto run = cli(args, d.path);
      CHECK(run.code == 2);
      CHECK_MESSAGE(run.err.rfind("kvmcdp: error: " + out, 0) == 0, run.err);
      CHECK_MESSAGE(run.err.find("the store") != std::string::npos, run.err);
      CHECK_MESSAGE(run.err.find("write the image elsewhere") != std::string::npos, run.err);
      CHECK(run.err.find('\n') == run.err.size() - 1);
      CHECK(run.out.empty());
    }
  }
  CHECK(snapshot_of(store) == before);
  CHECK(snapshot_of(other) == other_before);
  // Beside the store is fine.
  auto ok = cli({"restore", "--quiet", "--store", store, "--latest", "-o",
                 d.path + "/elsewhere/out.raw"},
                d.path);
  CHECK_MESSAGE(ok.code == 0, ok.err);
}

TEST_CASE("output outside store: a folder that merely holds a store is not one") {
  TempDir d;
  make_store(d.path + "/store");
  CHECK(check_output_outside_store(d.path + "/out.raw", d.path + "/store"));
  CHECK(check_output_outside_store("-", d.path + "/store"));
  auto s = check_output_outside_store(d.path + "/store/journal/../x", d.path + "/store");
  CHECK_FALSE(s);
  CHECK(s.kind() == ErrorKind::kUsage);
}

}  // namespace kvmcdp
