// What the fuzz targets share: scratch directories on tmpfs (every input
// of the file-reading targets writes files, and the disk must not be the
// bottleneck), the test store of the server targets, and the remote
// protocol's message encoding for the seeds and the login prefix.
#pragma once

#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "remote/remote_auth.h"
#include "remote/remote_io.h"

namespace kvmcdp::fuzz {

// The store every server target serves, and its secret.
inline constexpr const char* kStoreName = "vm1";
inline constexpr const char* kSecret = "00112233445566778899aabbccddeeff";

// A directory under /dev/shm (tmpfs) when there is one, removed at exit.
inline const std::string& scratch_root() {
  static const std::string root = [] {
    std::string base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    std::string tmpl = base + "/kvmcdp-fuzz-XXXXXX";
    if (!mkdtemp(tmpl.data())) std::abort();
    static std::string keep = tmpl;
    std::atexit([] { std::filesystem::remove_all(keep); });
    return tmpl;
  }();
  return root;
}

inline void write_file(const std::string& path, const void* p, size_t n, mode_t mode = 0644) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) std::abort();
  if (n && std::fwrite(p, 1, n, f) != n) std::abort();
  std::fclose(f);
  chmod(path.c_str(), mode);
}

// <root>/stores/vm1 with its secret and nothing else: what a server has
// before a client first ships.
inline std::string fresh_store_root() {
  std::string root = scratch_root() + "/stores";
  std::string store = root + "/" + kStoreName;
  std::filesystem::remove_all(store);
  std::filesystem::create_directories(store);
  chmod(store.c_str(), 0700);
  std::string secret = std::string(kSecret) + "\n";
  write_file(store + "/secret", secret.data(), secret.size(), 0600);
  return root;
}

inline void append_msg(std::vector<uint8_t>* out, remote::MsgType t, uint64_t a, uint64_t b,
                       std::string_view payload) {
  remote::MsgHeader h;
  h.type = static_cast<uint16_t>(t);
  h.payload_len = static_cast<uint32_t>(payload.size());
  h.a = a;
  h.b = b;
  uint8_t head[remote::kHeaderSize];
  remote::encode_header(h, head);
  out->insert(out->end(), head, head + remote::kHeaderSize);
  out->insert(out->end(), payload.begin(), payload.end());
}

// A client's HELLO and AUTH for the test store, valid in the fuzz build
// (whose nonces are fixed: remote_auth.cc).
inline std::vector<uint8_t> login_messages() {
  std::string nonce = remote::random_hex(16);
  std::vector<uint8_t> out;
  nlohmann::json hello = {{"store", kStoreName}, {"nonce", nonce}};
  append_msg(&out, remote::MsgType::kHello, remote::kVersion, 0, hello.dump());
  nlohmann::json auth = {
      {"proof", remote::auth_proof(kSecret, "kvmcdp-client", kStoreName, nonce, nonce)}};
  append_msg(&out, remote::MsgType::kAuth, 0, 0, auth.dump());
  return out;
}

// A server's CHALLENGE and WELCOME (of an empty store) for the same login.
inline std::vector<uint8_t> server_login_messages() {
  std::string nonce = remote::random_hex(16);
  std::vector<uint8_t> out;
  nlohmann::json challenge = {{"auth", "secret"}, {"nonce", nonce}};
  append_msg(&out, remote::MsgType::kChallenge, 0, 0, challenge.dump());
  nlohmann::json welcome = {
      {"proof", remote::auth_proof(kSecret, "kvmcdp-server", kStoreName, nonce, nonce)},
      {"state",
       {{"segment", 0},
        {"size", 0},
        {"sealed", false},
        {"last_seq", 0},
        {"last_ns", 0},
        {"stream_id", ""},
        {"base_complete", false}}}};
  append_msg(&out, remote::MsgType::kWelcome, 0, 0, welcome.dump());
  return out;
}

// Writes all of `n` bytes to a blocking socket, then ends that direction.
inline void send_all_and_shut(int fd, const uint8_t* p, size_t n) {
  size_t done = 0;
  while (done < n) {
    ssize_t w = send(fd, p + done, n - done, MSG_NOSIGNAL);
    if (w <= 0) break;  // the other side closed early: fine
    done += static_cast<size_t>(w);
  }
  shutdown(fd, SHUT_WR);
}

// Reads and drops until EOF, so the other side never blocks on us.
inline void drain(int fd) {
  char buf[65536];
  while (recv(fd, buf, sizeof buf, 0) > 0) {
  }
}

}  // namespace kvmcdp::fuzz
