// `kvmcdp serve` as a stranger meets it: the input is all a client sends
// from the first byte (HELLO, AUTH, and on past a login the seeds carry).
#include "serve_session.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  kvmcdp::fuzz::serve_bytes(std::vector<uint8_t>(data, data + size));
  return 0;
}
