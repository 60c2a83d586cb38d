// `kvmcdp serve` after a valid login: every input is prefixed with the
// test store's HELLO and AUTH, so the fuzzer spends its time on the
// manifest, segment, seal and base messages of a client that holds the
// secret (a stolen secret must not crash the server either).
#include "serve_session.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::vector<uint8_t> login = kvmcdp::fuzz::login_messages();
  std::vector<uint8_t> in = login;
  in.insert(in.end(), data, data + size);
  kvmcdp::fuzz::serve_bytes(in);
  return 0;
}
