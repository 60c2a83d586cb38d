// The fold, step by step:
//
//  1. The intent, <store>/fold.json: the point, both base files and the
//     segments to delete.
//  2. The new base, base-F.raw: restore_nearest(F) (the nearest built node
//     plus the journal after it), written under a temp name and renamed,
//     and its block checksums, base-F.raw.crc.
//  3. The commit: the manifest names the new base, base_complete_seq and
//     folded_seq become F.
//  4. The segments, oldest first (.seg, then its .idx).
//  5. The old base.
//  6. The intent goes.
//
// A kill before step 3 leaves the store as it was plus files nothing names:
// repair deletes the new base.  A kill after it leaves a store readers
// already see folded: repair deletes what step 4-5 did not get to.
#include "build/journal_fold.h"
#include "base/crash_point.h"

#include "store/store_readers.h"

#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "store/base_checksums.h"
#include "base/fsutil.h"
#include "store/journal_ranges.h"
#include "store/manifest.h"
#include "store/point.h"
#include "store/protect_state.h"
#include "restore/restore_delta.h"
#include "journal/segment_list.h"
#include "qemu/snapshot_qemu.h"
#include "store/store_readers.h"

namespace kvmcdp {
namespace {

using json = nlohmann::json;

uint64_t file_bytes(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 ? uint64_t(st.st_size) : 0;
}

uint64_t segment_bytes(const std::string& store, uint64_t n) {
  return file_bytes(journal::segment_path(store, n)) + file_bytes(journal::index_path(store, n));
}

// A name the intent may hand to unlink: a plain file in the store.
bool plain_name(const std::string& f) {
  return !f.empty() && f.find('/') == std::string::npos && f != "." && f != "..";
}

Status unlink_if_present(const std::string& path) {
  if (::unlink(path.c_str()) != 0 && errno != ENOENT)
    return {ErrorKind::kFailure, fsutil::errno_message("unlink", path)};
  return Status::ok();
}

// Steps 4-6, shared with repair: the manifest already names the new base.
Status finish_fold(const std::string& store, const Manifest& m, const FoldPlan& p, OpLog* log) {
  // Restores that opened the store before the switch may still read
  // these files: wait for them (store_readers.h).
  bool waited = false;
  auto readers = StoreReaders::exclusive(store, &waited);
  if (!readers) return readers.status();
  if (waited) log->push_back("waited for the store's readers (restore, build) to finish");
  bool first = true;
  for (uint64_t n : p.segments) {
    if (auto s = unlink_if_present(journal::segment_path(store, n)); !s) return s;
    if (auto s = unlink_if_present(journal::index_path(store, n)); !s) return s;
    if (first) crash_point("fold", 4);
    first = false;
  }
  if (auto s = fsutil::fsync_dir(journal::journal_dir(store)); !s) return s;
  // Never the base the manifest names, whatever the intent says.
  if (plain_name(p.old_base) && p.old_base != m.base_image) {
    if (auto s = unlink_if_present(store + "/" + p.old_base); !s) return s;
    if (auto s = unlink_if_present(base_checksums_path(store, p.old_base)); !s) return s;
    if (auto s = fsutil::fsync_dir(store); !s) return s;
  }
  crash_point("fold", 5);
  if (auto s = unlink_if_present(fold_intent_path(store)); !s) return s;
  if (auto s = fsutil::fsync_dir(store); !s) return s;
  log->push_back(fmt::format("merged the journal through seq {} into a new base copy {}: "
                             "removed {} segment{} ({} bytes) and {}; "
                             "the first recoverable point is seq {}",
                             p.seq, p.new_base, p.segments.size(),
                             p.segments.size() == 1 ? "" : "s", p.segment_bytes, p.old_base,
                             p.seq));
  return Status::ok();
}

Status roll_back(const std::string& store, const FoldPlan& p, OpLog* log) {
  if (plain_name(p.new_base)) {
    if (auto s = unlink_if_present(store + "/" + p.new_base + ".kvmcdp-partial"); !s) return s;
    if (auto s = unlink_if_present(store + "/" + p.new_base); !s) return s;
    if (auto s = unlink_if_present(base_checksums_path(store, p.new_base)); !s) return s;
  }
  if (auto s = unlink_if_present(fold_intent_path(store)); !s) return s;
  if (auto s = fsutil::fsync_dir(store); !s) return s;
  log->push_back(
      fmt::format("rolled back merging the journal through seq {} into a new base copy", p.seq));
  return Status::ok();
}

json plan_to_json(const FoldPlan& p) {
  return {{"seq", p.seq},           {"time_ns", p.time_ns},   {"old_base", p.old_base},
          {"new_base", p.new_base}, {"segments", p.segments}, {"segment_bytes", p.segment_bytes}};
}

Result<FoldPlan> plan_from_json(const std::string& text, const std::string& what) {
  auto j = json::parse(text, nullptr, false);
  FoldPlan p;
  try {
    p.seq = j.at("seq").get<uint64_t>();
    p.time_ns = j.at("time_ns").get<uint64_t>();
    p.old_base = j.at("old_base").get<std::string>();
    p.new_base = j.at("new_base").get<std::string>();
    p.segments = j.at("segments").get<std::vector<uint64_t>>();
    p.segment_bytes = j.value("segment_bytes", uint64_t{0});
  } catch (const std::exception& e) {
    return Status(ErrorKind::kDamaged, what + ": " + e.what());
  }
  if (!plain_name(p.old_base) || !plain_name(p.new_base))
    return Status(ErrorKind::kDamaged, what + ": base files must be plain names in the store");
  return p;
}

}  // namespace

std::string fold_intent_path(const std::string& store_dir) { return store_dir + "/fold.json"; }

Result<FoldPlan> plan_fold(const std::string& store, uint64_t seq, uint64_t time_ns) {
  auto view = open_store_view(store);
  if (!view) return view.status();
  if (auto s = journal::check_recoverable(view->ranges, seq); !s) return s;
  FoldPlan p;
  p.seq = seq;
  p.time_ns = time_ns;
  p.old_base = view->manifest.base_image;
  p.new_base = fmt::format("base-{}.raw", seq);
  const auto& segs = view->reader->segments();
  p.journal_segments = segs.size();
  for (uint64_t n : segs) p.journal_bytes += segment_bytes(store, n);
  if (seq <= view->manifest.base_complete_seq || p.new_base == p.old_base) return p;
  // With `protect --remote`, a segment the backup server may not hold yet
  // stays: it is the only copy the shipper can send.  protect.json's
  // figure lags the server's, so it is a safe bound.
  uint64_t shipped = UINT64_MAX;
  if (auto st = read_protect_state(store); st && !st->remote_url.empty())
    shipped = st->remote_durable_seq;
  // A prefix of sealed segments; the last one may be open in a protect.
  for (size_t i = 0; i + 1 < segs.size(); ++i) {
    auto sf = journal::load_segment(store, segs[i]);
    if (!sf) return sf.status();
    if (!sf->from_index || sf->damage || sf->frames.empty() || sf->frames.back().last_seq > seq ||
        sf->frames.back().last_seq > shipped)
      break;
    p.segments.push_back(segs[i]);
    p.segment_bytes += segment_bytes(store, segs[i]);
  }
  return p;
}

Status fold_journal(const std::string& store, const FoldPlan& p, OpLog* log) {
  if (p.empty()) return Status::ok();
  // Step 1: the intent.
  if (auto s = fsutil::replace_file_atomic(fold_intent_path(store), plan_to_json(p).dump(2) + "\n");
      !s)
    return s;
  crash_point("fold", 1);

  // Step 2: the disk as of F, as a new file.
  auto restored = restore_nearest(store, p.seq, store + "/" + p.new_base);
  if (!restored) {
    OpLog ignored;
    roll_back(store, p, &ignored);
    return restored.status();
  }
  crash_point("fold", 2);

  // Step 3: the commit.
  auto m = read_manifest(store);
  if (!m) return m.status();
  m->base_image = p.new_base;
  m->base_complete_seq = p.seq;
  m->base_complete_time_ns = p.time_ns;
  m->folded_seq = p.seq;
  if (auto s = write_base_checksums(store, *m); !s) {
    OpLog ignored;
    roll_back(store, p, &ignored);
    return s;
  }
  if (auto s = write_manifest(store, *m); !s) return s;
  crash_point("fold", 3);

  // Steps 4-6.
  return finish_fold(store, *m, p, log);
}

Status repair_fold(const std::string& store, OpLog* log) {
  std::string path = fold_intent_path(store);
  auto text = fsutil::read_file(path);
  if (!text) return text.status().kind() == ErrorKind::kNotFound ? Status::ok() : text.status();
  auto p = plan_from_json(std::string(text->begin(), text->end()), path);
  if (!p) return p.status();
  auto m = read_manifest(store);
  if (!m) return m.status();
  OpLog done;
  Status s = m->base_image == p->new_base ? finish_fold(store, *m, *p, &done)
                                          : roll_back(store, *p, &done);
  for (const auto& line : done) log->push_back("repair: " + line);
  return s;
}

}  // namespace kvmcdp
