// Keeping the result of a full journal read.  The result vouches for the
// segments it read as they were then, so it is tied to each segment's
// size and mtime: a sealed segment never changes, so an unchanged one
// still holds the same good frames (or the same damage); the open
// segment grows, which leaves what was read of it as it was, unless the
// damage lay there, where it may have been a frame being written.  Any
// other change (a segment rewritten, missing, or a new journal) drops the
// whole result rather than guess which part still holds.
#include "store/verify_record.h"

#include <sys/stat.h>

#include <algorithm>

#include <nlohmann/json.hpp>

#include "base/fsutil.h"
#include "journal/segment_list.h"

namespace kvmcdp {
namespace {

using nlohmann::json;

struct Stamp {
  bool exists = false;
  uint64_t size = 0, mtime_ns = 0;
};

Stamp stamp(const std::string& store_dir, uint64_t segment) {
  struct stat st;
  if (::stat(journal::segment_path(store_dir, segment).c_str(), &st) != 0) return {};
  return {true, uint64_t(st.st_size),
          uint64_t(st.st_mtim.tv_sec) * 1000000000ull + uint64_t(st.st_mtim.tv_nsec)};
}

}  // namespace

std::string verify_record_path(const std::string& store_dir) {
  return store_dir + "/verify.json";
}

Result<bool> save_verify_record(const std::string& store_dir,
                                const journal::VerifyReport& report, uint64_t time_ns) {
  json segs = json::array();
  for (size_t i = 0; i < report.scanned.size(); i++) {
    const auto& s = report.scanned[i];
    Stamp now = stamp(store_dir, s.segment);
    bool last = i + 1 == report.scanned.size();
    bool open_and_good = last && !report.damage;
    if (!now.exists || (now.size != s.size && !open_and_good)) return false;
    segs.push_back({{"number", s.segment}, {"size", s.size}, {"mtime_ns", now.mtime_ns}});
  }
  json j = {{"verified_ns", time_ns},
            {"verified_seq", report.last_seq},
            {"segments", segs},
            {"damage", nullptr}};
  if (report.damage && !report.scanned.empty())
    j["damage"] = {{"segment", report.scanned.back().segment},
                   {"offset", report.damage->offset},
                   {"text", report.damage->to_string()}};
  if (Status s = fsutil::replace_file_atomic(verify_record_path(store_dir), j.dump(1) + "\n"); !s)
    return s;
  return true;
}

std::optional<VerifyRecord> load_verify_record(const std::string& store_dir) {
  auto bytes = fsutil::read_file(verify_record_path(store_dir));
  if (!bytes) return std::nullopt;
  json j = json::parse(bytes->begin(), bytes->end(), nullptr, false);
  if (j.is_discarded() || !j.is_object()) return std::nullopt;
  VerifyRecord r;
  try {
    r.time_ns = j.at("verified_ns").get<uint64_t>();
    r.verified_seq = j.at("verified_seq").get<uint64_t>();
    for (const auto& s : j.at("segments"))
      r.segments.push_back({s.at("number").get<uint64_t>(), s.at("size").get<uint64_t>(),
                            s.at("mtime_ns").get<uint64_t>()});
    if (!j.at("damage").is_null())
      r.damage = VerifyRecord::DamageAt{j["damage"].at("segment").get<uint64_t>(),
                                        j["damage"].at("offset").get<uint64_t>(),
                                        j["damage"].at("text").get<std::string>()};
  } catch (const json::exception&) {
    return std::nullopt;
  }
  if (r.segments.empty()) return std::nullopt;
  auto present = journal::list_segments(store_dir);
  if (!present || present->empty()) return std::nullopt;
  const uint64_t lowest = present->front();
  for (size_t i = 0; i < r.segments.size(); i++) {
    const auto& s = r.segments[i];
    Stamp now = stamp(store_dir, s.number);
    if (!now.exists) {
      // Folded into the base by prune: it no longer matters, unless it
      // held the damage, whose position is then unknown.
      if (s.number < lowest && !(r.damage && r.damage->segment == s.number)) continue;
      return std::nullopt;
    }
    bool may_grow = i + 1 == r.segments.size() && !r.damage;
    if (may_grow ? now.size < s.size : (now.size != s.size || now.mtime_ns != s.mtime_ns))
      return std::nullopt;
  }
  return r;
}

}  // namespace kvmcdp
