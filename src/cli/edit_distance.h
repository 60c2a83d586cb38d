// How far apart two words are, for "did you mean" hints (subcommands,
// config keys).
#pragma once

#include <cstddef>
#include <string>

namespace kvmcdp {

// Levenshtein distance: insertions, deletions and substitutions.
size_t edit_distance(const std::string& a, const std::string& b);

}  // namespace kvmcdp
