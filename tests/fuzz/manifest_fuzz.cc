// A store's manifest.json (manifest.cc), and the server's first look at a
// client's manifest (json_field.cc): parse, and what parses must write
// back and read again as the same manifest.
#include <cstdlib>
#include <string>

#include "base/json_field.h"
#include "store/manifest.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvmcdp;
  std::string text(reinterpret_cast<const char*>(data), size);
  (void)json_field::parse_object(text, "manifest");
  auto m = manifest_from_json(text, "fuzz");
  if (!m) return 0;
  auto again = manifest_from_json(manifest_to_json(*m), "fuzz again");
  if (!again || again->stream_id != m->stream_id || again->disk_size != m->disk_size ||
      again->base_image != m->base_image || again->folded_seq != m->folded_seq ||
      again->extra != m->extra)
    std::abort();
  return 0;
}
