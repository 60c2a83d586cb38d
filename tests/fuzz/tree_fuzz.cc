// A snapshot tree's tree.json (tree_model.cc): parse, check, navigate,
// and what parses must serialise and parse back to the same tree.
#include <cstdlib>
#include <string>

#include "tree/tree_model.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvmcdp;
  std::string text(reinterpret_cast<const char*>(data), size);
  auto t = tree_from_json(text, "/nonexistent/tree");
  if (!t) return 0;
  if (validate_tree(*t)) {
    for (const auto& n : t->nodes) {
      (void)t->children(n.name);
      (void)t->in_active_chain(n.name);
      (void)t->path_of(n);
    }
    (void)t->root();
  }
  auto again = tree_from_json(tree_to_json(*t), "/nonexistent/tree");
  if (!again || again->nodes.size() != t->nodes.size() || again->active != t->active)
    std::abort();
  return 0;
}
