#include "remote/remote_auth.h"

#include <sys/random.h>
#include <sys/stat.h>

#include <cstdio>
#include <vector>

#include <fmt/format.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "base/fsutil.h"

namespace kvmcdp::remote {

namespace {
std::string to_hex(const unsigned char* p, size_t n) {
  std::string s;
  s.reserve(n * 2);
  for (size_t i = 0; i < n; ++i) s += fmt::format("{:02x}", p[i]);
  return s;
}
}  // namespace

std::string random_hex(size_t n) {
#ifdef KVMCDP_FUZZ_FIXED_NONCE
  // Fuzz builds only (CMake KVMCDP_FUZZ): fixed nonces let a seed carry a
  // valid login proof, so the fuzzer reaches what follows the login.
  return std::string(n * 2, 'f');
#endif
  std::vector<unsigned char> b(n);
  size_t done = 0;
  while (done < n) {
    ssize_t got = getrandom(b.data() + done, n - done, 0);
    if (got > 0) done += static_cast<size_t>(got);
  }
  return to_hex(b.data(), n);
}

Result<std::string> read_secret_file(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0)
    return Status(ErrorKind::kNotFound, fsutil::errno_message("secret file", path));
  if (st.st_mode & 077)
    return Status(ErrorKind::kFailure,
                  fmt::format("secret file {} is readable by others; chmod 600 it", path));
  auto bytes = fsutil::read_file(path);
  if (!bytes) return bytes.status();
  std::string s(bytes->begin(), bytes->end());
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  if (s.size() < 32 || s.find_first_not_of("0123456789abcdefABCDEF") != std::string::npos)
    return Status(ErrorKind::kFailure,
                  fmt::format("secret file {} must hold one line of at least 32 hex digits", path));
  return s;
}

std::string auth_proof(const std::string& secret, const std::string& role,
                       const std::string& store, const std::string& client_nonce,
                       const std::string& server_nonce) {
  std::string msg = role;
  for (const std::string* part : {&store, &client_nonce, &server_nonce}) {
    msg.push_back('\0');
    msg += *part;
  }
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
       reinterpret_cast<const unsigned char*>(msg.data()), msg.size(), mac, &len);
  return to_hex(mac, len);
}

bool proofs_equal(const std::string& a, const std::string& b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

}  // namespace kvmcdp::remote
