// <store>/manifest.json: what a store is a copy of.  Small, rewritten
// whole and atomically (temp, fsync, rename, fsync dir).  A version this
// kvmcdp does not know is an error, never a guess.
//
//   {
//     "format_version": 1,
//     "stream_id": "00c0ffee00c0ffee",   // 16 hex digits: jq-safe
//     "disk_size": 1073741824,
//     "base_image": "base.raw",          // relative to the store
//     "base_complete": true,
//     "base_complete_seq": 1234,         // base + records <= this = disk
//     "base_complete_time_ns": 1795000000000000000,
//     "created_time_ns": 1794999999000000000,
//     "node_name": "drive0",
//     "folded_seq": 5678,                // only after kvmcdp prune folded
//                                        // the journal: base_image is the
//                                        // disk exactly as of this seq
//     ...                                // other keys are kept as they are
//   }
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "status.h"

namespace kvmcdp {

inline constexpr int kManifestVersion = 1;

struct Manifest {
  uint64_t stream_id = 0;
  uint64_t disk_size = 0;
  std::string base_image = "base.raw";
  bool base_complete = false;
  uint64_t base_complete_seq = 0;
  uint64_t base_complete_time_ns = 0;
  uint64_t created_time_ns = 0;
  std::string node_name;
  // 0: never folded.  Otherwise base_image is the disk exactly as of this
  // seq, so records <= it are already in the base and readers skip them
  // (records of it may remain in a segment that straddles it).  A kvmcdp
  // that does not know the key still restores correctly: replaying those
  // records over the folded base rewrites bytes with the values they have.
  uint64_t folded_seq = 0;
  nlohmann::json extra = nlohmann::json::object();  // keys we do not own
};

std::string manifest_path(const std::string& store_dir);
// kNotFound if there is no manifest; kDamaged if it does not parse or a
// field has the wrong type; kFailure for an unknown format_version.
Result<Manifest> read_manifest(const std::string& store_dir);
Status write_manifest(const std::string& store_dir, const Manifest& m);
std::string manifest_to_json(const Manifest& m);
Result<Manifest> manifest_from_json(const std::string& text,
                                    const std::string& what);

}  // namespace kvmcdp
