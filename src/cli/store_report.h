// What points and status both print about a store: its recoverable
// ranges, the gaps between them, and what the last journal verify found.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "store/store_view.h"

namespace kvmcdp {

nlohmann::json ranges_json(const StoreView& v);
// The stretches between recoverable ranges, and a damaged tail: where
// restore is refused.
nlohmann::json gaps_json(const StoreView& v);
// What the last journal verify found, while it still describes the journal.
nlohmann::json verified_json(const StoreView& v);
std::string verified_line(const StoreView& v);

}  // namespace kvmcdp
