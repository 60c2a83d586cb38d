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
//     ...,                               // other keys are kept as they are
//     "crc32c": "1a2b3c4d"               // over the rest (manifest_checksum)
//   }
//
// The checksum makes a hand-edited or damaged manifest (a wrong disk_size
// restores a wrong-sized image) an error rather than the truth.  A manifest
// written before it existed has none and is still read (has_checksum).
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "base/status.h"

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
  bool has_checksum = true;  // false: read from a manifest without crc32c
};

std::string manifest_path(const std::string& store_dir);
// kNotFound if there is no manifest; kDamaged if it does not parse or a
// field has the wrong type; kFailure for an unknown format_version.
Result<Manifest> read_manifest(const std::string& store_dir);
Status write_manifest(const std::string& store_dir, const Manifest& m);
std::string manifest_to_json(const Manifest& m);
// kDamaged (a checksum mismatch) for a manifest edited since written.
Result<Manifest> manifest_from_json(const std::string& text,
                                    const std::string& what);

// The crc32c of a manifest object without its crc32c key: over its compact
// dump, whose keys nlohmann::json keeps sorted, so the same content always
// has the same checksum however the file was indented.
uint32_t manifest_checksum(nlohmann::json j);

// kDamaged unless the store agrees with its manifest: a complete base of
// exactly disk_size bytes (a missing base is left to whoever reads it).
Status check_manifest_against_store(const std::string& store_dir, const Manifest& m);

}  // namespace kvmcdp
