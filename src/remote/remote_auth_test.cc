#include "remote/remote_auth.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>

#include <doctest/doctest.h>

namespace kvmcdp::remote {

TEST_CASE("remote auth: the proof is HMAC-SHA256 over NUL-joined parts") {
  // Expected value computed independently with the openssl CLI:
  //   printf 'what do ya want for nothing?\0\0\0' | openssl dgst -sha256 -hmac Jefe
  CHECK(auth_proof("Jefe", "what do ya want for nothing?", "", "", "") ==
        "7a803adff937a153a11b281f2bd95f05d7e602b537edad57f99ee4a6ed67c7f3");
}

TEST_CASE("remote auth: every input changes the proof") {
  std::string base = auth_proof("00112233445566778899aabbccddeeff", "kvmcdp-client", "vm1",
                                "aa", "bb");
  CHECK(base == auth_proof("00112233445566778899aabbccddeeff", "kvmcdp-client", "vm1", "aa",
                           "bb"));
  CHECK(base != auth_proof("00112233445566778899aabbccddeeff", "kvmcdp-server", "vm1", "aa",
                           "bb"));
  CHECK(base != auth_proof("00112233445566778899aabbccddeefe", "kvmcdp-client", "vm1", "aa",
                           "bb"));
  CHECK(base != auth_proof("00112233445566778899aabbccddeeff", "kvmcdp-client", "vm2", "aa",
                           "bb"));
  CHECK(base != auth_proof("00112233445566778899aabbccddeeff", "kvmcdp-client", "vm1", "ab",
                           "bb"));
  CHECK(base != auth_proof("00112233445566778899aabbccddeeff", "kvmcdp-client", "vm1", "aa",
                           "ba"));
  // The NUL separators keep parts from sliding into each other.
  CHECK(auth_proof("k", "r", "ab", "c", "d") != auth_proof("k", "r", "a", "bc", "d"));
  CHECK(proofs_equal(base, base));
  CHECK_FALSE(proofs_equal(base, base.substr(1)));
}

TEST_CASE("remote auth: secret files") {
  char dir[] = "/tmp/kvmcdp-secret-XXXXXX";
  REQUIRE(mkdtemp(dir));
  std::string path = std::string(dir) + "/s";
  std::ofstream(path) << random_hex(32) << "\n";
  chmod(path.c_str(), 0644);
  auto open = read_secret_file(path);
  REQUIRE_FALSE(open);
  CHECK(open.status().message().find("chmod 600") != std::string::npos);
  chmod(path.c_str(), 0600);
  auto ok = read_secret_file(path);
  REQUIRE(ok);
  CHECK(ok->size() == 64);
  std::ofstream(path) << "short\n";
  CHECK_FALSE(read_secret_file(path));
  CHECK(read_secret_file(std::string(dir) + "/none").status().kind() == ErrorKind::kNotFound);
  unlink(path.c_str());
  rmdir(dir);
  CHECK(random_hex(16).size() == 32);
  CHECK(random_hex(16) != random_hex(16));
}

}  // namespace kvmcdp::remote
