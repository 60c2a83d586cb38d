// StoreView: a store opened for reading, once per command.  It holds the
// readers' lock (store_readers.h) for as long as it lives, the manifest
// checked against the store, the journal reader, the recoverable ranges
// (cut at any damage the last journal verify recorded), and that verify
// record.  Every read command (points, restore, build, prune, verify)
// works from one view instead of reopening the store.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "base/status.h"
#include "store/journal_ranges.h"
#include "store/journal_reader.h"
#include "store/manifest.h"
#include "store/store_readers.h"
#include "store/verify_record.h"

namespace kvmcdp {

struct StoreView {
  std::optional<StoreReaders> readers;  // held while the view lives (store_readers.h)
  std::string store_dir;
  Manifest manifest;
  std::unique_ptr<journal::JournalReader> reader;
  std::vector<journal::RecoverableRange> ranges;  // cut at damage verify found
  std::optional<VerifyRecord> verified;          // the last journal verify, if it still holds
};

Result<StoreView> open_store_view(const std::string& store_dir);

}  // namespace kvmcdp
