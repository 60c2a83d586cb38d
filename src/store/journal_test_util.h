// Helpers shared by the journal unit tests: temp stores and records.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include <doctest/doctest.h>

#include "journal/journal_writer.h"
#include "store/manifest.h"
#include "journal/record.h"

namespace kvmcdp::journal::testing {

struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/kvmcdp-journal-test-XXXXXX";
    path = ::mkdtemp(tmpl);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
};

inline Record write_rec(uint64_t seq, uint64_t off, std::vector<uint8_t> data,
                        uint64_t t = 0) {
  Record r;
  r.seq = seq;
  r.time_ns = t ? t : 1000 + seq * 10;
  r.type = RecordType::kWrite;
  r.offset = off;
  r.length = data.size();
  r.data = std::move(data);
  return r;
}

inline Record plain_rec(uint64_t seq, RecordType type, uint64_t off = 0,
                        uint64_t len = 0, uint64_t t = 0) {
  Record r;
  r.seq = seq;
  r.time_ns = t ? t : 1000 + seq * 10;
  r.type = type;
  r.offset = off;
  r.length = len;
  return r;
}

inline std::vector<uint8_t> read_bytes(const std::string& p) {
  std::vector<uint8_t> b;
  if (FILE* f = std::fopen(p.c_str(), "rb")) {
    int c;
    while ((c = std::fgetc(f)) != EOF) b.push_back(uint8_t(c));
    std::fclose(f);
  }
  return b;
}

inline void write_bytes(const std::string& p, const std::vector<uint8_t>& b) {
  FILE* f = std::fopen(p.c_str(), "wb");
  if (!b.empty()) std::fwrite(b.data(), 1, b.size(), f);
  std::fclose(f);
}

// A complete manifest for a test store of `size` bytes whose base copy
// completed at `base_seq`.
inline void write_store_manifest(const std::string& store, uint64_t size, uint64_t base_seq) {
  Manifest m;
  m.stream_id = 5;
  m.disk_size = size;
  m.base_complete = true;
  m.base_complete_seq = base_seq;
  m.base_complete_time_ns = 1000 + base_seq * 10;
  REQUIRE(write_manifest(store, m));
}

// The writer options of make_segmented_store, to append to its store.
inline WriterOptions segmented_store_options() {
  WriterOptions o;
  o.frame_raw_bytes = 20000;
  o.segment_max_bytes = 60000;
  o.stream_id = 5;  // write_store_manifest's
  return o;
}

// A store of 200000 bytes with 200 writes of 4000 random bytes in
// segments of about 60 KB (several sealed, indexed ones), its base
// complete at seq 3.
inline void make_segmented_store(const std::string& store) {
  std::filesystem::create_directory(store);
  const uint64_t size = 200000;
  write_bytes(store + "/base.raw", std::vector<uint8_t>(size, 0x11));
  std::mt19937_64 rng(77);
  auto w = JournalWriter::open(store, segmented_store_options());
  REQUIRE(w);
  for (uint64_t s = 1; s <= 200; s++) {
    Record r = write_rec(s, rng() % (size - 5000), std::vector<uint8_t>(4000));
    for (auto& b : r.data) b = uint8_t(rng());
    REQUIRE((*w)->append(std::move(r)));
  }
  REQUIRE((*w)->commit());
  write_store_manifest(store, size, 3);
}

}  // namespace kvmcdp::journal::testing
