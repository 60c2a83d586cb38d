// kvmcdp journal verify | dump: check every byte of a store's journal, or
// print its records for debugging.
#include <cstdio>
#include <memory>
#include <string>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "store/base_checksums.h"
#include "cli/cli.h"
#include "store/journal_reader.h"
#include "store/manifest.h"
#include "store/point.h"
#include "store/store_readers.h"
#include "store/time_parse.h"
#include "store/verify_record.h"
#include "base/wall_clock.h"

namespace kvmcdp {
namespace {

Status damaged(const journal::VerifyReport& report) {
  std::string what = report.damage ? report.damage->to_string()
                                   : fmt::format("{} index problem(s)", report.index_problems.size());
  return {ErrorKind::kDamaged, fmt::format("journal damaged: {}", what)};
}

Status run_verify(const std::string& store, bool as_json) {
  // Not while a fold deletes segments: they would look missing.
  auto readers = StoreReaders::shared(store);
  if (!readers) return readers.status();
  uint64_t started = now_ns();
  // The manifest first: its checksum, and the base against its disk_size.
  auto manifest = read_manifest(store);
  if (!manifest) return manifest.status();
  if (auto s = check_manifest_against_store(store, *manifest); !s) return s;
  auto report = journal::verify_journal(store);
  if (!report) return report.status();
  // Every block of the base against its checksums.
  auto base = check_base(store, *manifest);
  if (!base) return base.status();
  const bool ok = report->ok() && base->problem.empty();
  auto result = [&]() -> Status {
    if (!report->ok()) return damaged(*report);
    if (!base->problem.empty()) return {ErrorKind::kDamaged, base->problem};
    return Status::ok();
  };
  // Kept for points, status and restore: damage inside a sealed segment
  // is found only by reading everything.
  auto kept = save_verify_record(store, *report, started);
  if (!kept)
    std::fprintf(stderr, "kvmcdp: warning: the result is not kept in %s: %s\n",
                 verify_record_path(store).c_str(), kept.status().message().c_str());
  else if (!*kept)
    std::fprintf(stderr, "kvmcdp: note: the journal changed while it was read; the result "
                 "is not kept\n");
  if (as_json) {
    // One object whether or not the journal is damaged, for monitoring;
    // the exit code still says which.
    nlohmann::json j = {{"ok", ok},
                        {"segments", report->segments},
                        {"frames", report->frames},
                        {"records", report->records},
                        {"first_seq", report->first_seq},
                        {"last_seq", report->last_seq},
                        {"damage", report->damage ? nlohmann::json(report->damage->to_string())
                                                  : nlohmann::json(nullptr)},
                        {"index_problems", report->index_problems},
                        {"manifest_checksum", manifest->has_checksum},
                        {"unreachable_segments", report->unreachable_segments}};
    j["base"] = {{"checksummed", base->checked},
                 {"blocks", base->blocks},
                 {"bad_blocks", base->bad_blocks},
                 {"first_bad_offset", base->problem.empty() ? nlohmann::json(nullptr)
                                                            : nlohmann::json(base->first_bad_offset)},
                 {"damage", base->problem.empty() ? nlohmann::json(nullptr)
                                                  : nlohmann::json(base->problem)}};
    std::printf("%s\n", j.dump(2).c_str());
    return result();
  }
  std::printf("segments: %llu, frames: %llu, records: %llu, seq %llu..%llu\n",
              static_cast<unsigned long long>(report->segments),
              static_cast<unsigned long long>(report->frames),
              static_cast<unsigned long long>(report->records),
              static_cast<unsigned long long>(report->first_seq),
              static_cast<unsigned long long>(report->last_seq));
  for (const auto& p : report->index_problems) std::printf("index: %s\n", p.c_str());
  if (!manifest->has_checksum)
    std::printf("manifest: no checksum (written by an older kvmcdp; the next change adds one)\n");
  for (uint64_t n : report->unreachable_segments)
    std::printf("unreachable: segment %012llu (after the damage)\n",
                static_cast<unsigned long long>(n));
  if (!base->checked && base->problem.empty() && manifest->base_complete &&
      !is_spool(*manifest))
    std::printf("base: not checksummed (store predates checksums)\n");
  else if (base->checked && base->problem.empty())
    std::printf("base: %llu blocks checked\n", static_cast<unsigned long long>(base->blocks));
  if (ok) {
    std::printf("ok\n");
    return Status::ok();
  }
  return result();
}

Status run_dump(const std::string& store, uint64_t from, uint64_t limit, bool as_json) {
  auto readers = StoreReaders::shared(store);
  if (!readers) return readers.status();
  auto reader = journal::JournalReader::open(store);
  if (!reader) return reader.status();
  uint64_t shown = 0;
  Status s = (*reader)->for_each_record(from, [&](const journal::RecordView& r) {
    std::string name(wire::type_name(r.type));
    std::string text;
    if (r.type == RecordType::kMark) text.assign(reinterpret_cast<const char*>(r.data), r.data_len);
    if (as_json) {
      nlohmann::json j = {{"seq", r.seq},       {"time", format_time_ns(r.time_ns)},
                          {"type", name},       {"flags", r.flags},
                          {"offset", r.offset}, {"length", r.length}};
      if (!text.empty()) j["name"] = text;
      std::printf("%s\n", j.dump().c_str());
    } else {
      std::printf("%llu %s %-12s offset=%llu length=%llu flags=%#x%s%s\n",
                  static_cast<unsigned long long>(r.seq), format_time_human(r.time_ns).c_str(),
                  name.c_str(), static_cast<unsigned long long>(r.offset),
                  static_cast<unsigned long long>(r.length), r.flags, text.empty() ? "" : " name=",
                  text.c_str());
    }
    return ++shown < limit;
  });
  if (!s) return s;
  if ((*reader)->damage())
    std::fprintf(stderr, "kvmcdp: journal ends at damage: %s\n",
                 (*reader)->damage()->to_string().c_str());
  return Status::ok();
}

}  // namespace

CommandRunner setup_journal_command(CLI::App* app) {
  app->require_subcommand(1);
  auto store = std::make_shared<std::string>();
  auto from = std::make_shared<uint64_t>(0);
  auto limit = std::make_shared<uint64_t>(UINT64_MAX);
  auto as_json = std::make_shared<bool>(false);
  auto* verify = app->add_subcommand("verify", "Check every byte of the journal and the base copy (exit 4: damaged)");
  verify->add_option("--store", *store, "the store")->required();
  verify->add_flag("--json", *as_json, "print the result as one JSON object");
  auto* dump = app->add_subcommand("dump", "Print the journal's records");
  dump->add_option("--store", *store, "the store")->required();
  dump->add_option("--from", *from, "the sequence number of the first record to print");
  dump->add_option("--limit", *limit, "print at most this many records");
  dump->add_flag("--json", *as_json, "one JSON object per line");
  return [=]() {
    if (verify->parsed()) return run_verify(*store, *as_json);
    return run_dump(*store, *from, *limit, *as_json);
  };
}

}  // namespace kvmcdp
