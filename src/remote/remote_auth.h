// The per-store secret of tcp:// remotes: how it is stored, and the
// challenge-response that proves each side holds it without sending it
// (include/kvmcdp/remote_format.h).
#pragma once

#include <string>

#include "base/status.h"

namespace kvmcdp::remote {

// `n` random bytes from the kernel, as lowercase hex.
std::string random_hex(size_t n);

// Reads a secret file: one line of at least 32 hex digits (128 bits).
// Refused if the file is readable by group or others, as ssh does with
// private keys: a secret that leaked is no secret.
Result<std::string> read_secret_file(const std::string& path);

// HMAC-SHA256 over role, store and both nonces, as hex.  `role` is
// "kvmcdp-client" or "kvmcdp-server".
std::string auth_proof(const std::string& secret, const std::string& role,
                       const std::string& store, const std::string& client_nonce,
                       const std::string& server_nonce);

// Equal in time independent of where they differ.
bool proofs_equal(const std::string& a, const std::string& b);

}  // namespace kvmcdp::remote
