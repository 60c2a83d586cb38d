#include "store/manifest.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstdio>

#include <fmt/format.h>

#include "base/crc32c.h"
#include "base/fsutil.h"
#include "base/json_field.h"

namespace kvmcdp {

std::string manifest_path(const std::string& store_dir) {
  return store_dir + "/manifest.json";
}

static const char* const kOwnKeys[] = {
    "format_version", "stream_id", "disk_size", "base_image", "base_complete",
    "base_complete_seq", "base_complete_time_ns", "created_time_ns", "node_name", "folded_seq"};

std::string manifest_to_json(const Manifest& m) {
  nlohmann::json j = m.extra.is_object() ? m.extra : nlohmann::json::object();
  char id[17];
  std::snprintf(id, sizeof id, "%016llx", static_cast<unsigned long long>(m.stream_id));
  j["format_version"] = kManifestVersion;
  j["stream_id"] = id;
  j["disk_size"] = m.disk_size;
  j["base_image"] = m.base_image;
  j["base_complete"] = m.base_complete;
  j["base_complete_seq"] = m.base_complete_seq;
  j["base_complete_time_ns"] = m.base_complete_time_ns;
  j["created_time_ns"] = m.created_time_ns;
  j["node_name"] = m.node_name;
  if (m.folded_seq) j["folded_seq"] = m.folded_seq;  // old manifests stay as they were
  j["crc32c"] = fmt::format("{:08x}", manifest_checksum(j));
  return j.dump(2) + "\n";
}

uint32_t manifest_checksum(nlohmann::json j) {
  j.erase("crc32c");
  std::string canon = j.dump();
  return crc32c(canon.data(), canon.size());
}

Status check_manifest_against_store(const std::string& store_dir, const Manifest& m) {
  if (!m.base_complete) return Status::ok();
  std::string base = store_dir + "/" + m.base_image;
  struct stat st;
  if (::stat(base.c_str(), &st) != 0) {
    if (errno == ENOENT) return Status::ok();
    return Status(ErrorKind::kFailure, fsutil::errno_message("stat", base));
  }
  if (S_ISREG(st.st_mode) && uint64_t(st.st_size) != m.disk_size)
    return Status(ErrorKind::kDamaged,
                  fmt::format("{}: disk_size is {} bytes but the base {} holds {}: the manifest "
                              "or the base was changed",
                              manifest_path(store_dir), m.disk_size, base,
                              uint64_t(st.st_size)));
  return Status::ok();
}

Result<Manifest> manifest_from_json(const std::string& text,
                                    const std::string& what) {
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    return Status(ErrorKind::kDamaged, what + ": not a JSON object");
  auto ver = j.find("format_version");
  if (ver == j.end() || !ver->is_number_integer())
    return Status(ErrorKind::kDamaged, what + ": no format_version");
  if (ver->get<int64_t>() != kManifestVersion)
    return Status(ErrorKind::kFailure,
                  what + ": unknown manifest format_version " + ver->dump() +
                      " (this kvmcdp reads " + std::to_string(kManifestVersion) + ")");
  Manifest m;
  if (auto c = j.find("crc32c"); c != j.end()) {
    unsigned long long want = 0;
    std::string hex = c->is_string() ? c->get<std::string>() : std::string();
    size_t used = 0;
    try {
      want = std::stoull(hex, &used, 16);
    } catch (const std::exception&) {
      used = 0;
    }
    if (hex.size() != 8 || used != 8)
      return Status(ErrorKind::kDamaged, what + ": crc32c is not 8 hex digits");
    if (uint32_t(want) != manifest_checksum(j))
      return Status(ErrorKind::kDamaged,
                    what + ": checksum mismatch: it was edited or damaged since kvmcdp wrote it");
    j.erase("crc32c");
  } else {
    m.has_checksum = false;
  }
  try {
    std::string id = j.at("stream_id").get<std::string>();
    size_t used = 0;
    m.stream_id = std::stoull(id, &used, 16);
    if (used != id.size()) throw std::invalid_argument("stream_id");
    auto u64 = [&](const char* key) {
      auto it = j.find(key);
      return it == j.end() ? uint64_t{0} : json_field::integer_as<uint64_t>(*it, key);
    };
    m.disk_size = json_field::integer_as<uint64_t>(j.at("disk_size"), "disk_size");
    m.base_image = j.at("base_image").get<std::string>();
    m.base_complete = j.value("base_complete", false);
    m.base_complete_seq = u64("base_complete_seq");
    m.base_complete_time_ns = u64("base_complete_time_ns");
    m.created_time_ns = u64("created_time_ns");
    m.node_name = j.value("node_name", std::string());
    m.folded_seq = u64("folded_seq");
  } catch (const std::exception& e) {
    return Status(ErrorKind::kDamaged, what + ": bad field: " + e.what());
  }
  if (m.base_image.empty() || m.base_image[0] == '/' ||
      m.base_image.find("..") != std::string::npos)
    return Status(ErrorKind::kDamaged,
                  what + ": base_image must be a path inside the store");
  for (const char* k : kOwnKeys) j.erase(k);
  m.extra = std::move(j);
  return m;
}

Result<Manifest> read_manifest(const std::string& store_dir) {
  std::string path = manifest_path(store_dir);
  auto bytes = fsutil::read_file(path);
  if (!bytes) return bytes.status();
  return manifest_from_json(std::string(bytes->begin(), bytes->end()), path);
}

Status write_manifest(const std::string& store_dir, const Manifest& m) {
  return fsutil::replace_file_atomic(manifest_path(store_dir), manifest_to_json(m));
}

}  // namespace kvmcdp
