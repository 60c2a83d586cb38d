#include "qemu/snapshot_qemu.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>

#include <fmt/format.h>

#include "qemu/subprocess.h"

namespace kvmcdp {

using json = nlohmann::json;

Result<ImageInfo> image_info(const std::string& path, bool shared) {
  std::vector<std::string> argv = {qemu_img_binary(), "info", "--output=json"};
  if (shared) argv.push_back("-U");
  argv.push_back(path);
  auto out = run_capture(argv);
  if (!out) return out.status();
  json j = json::parse(*out, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    return {ErrorKind::kFailure, "qemu-img info printed something that is not JSON"};
  ImageInfo info;
  info.format = j.value("format", "");
  info.virtual_size = j.value("virtual-size", uint64_t{0});
  info.backing = j.value("backing-filename", "");
  info.backing_format = j.value("backing-filename-format", "");
  info.full_backing = j.value("full-backing-filename", "");
  return info;
}

bool image_in_use(const std::string& path) {
  auto r = image_info(path, false);
  if (r) return false;
  // "Failed to get shared "write" lock" / "Is another process using the image?"
  const std::string& m = r.status().message();
  return m.find("lock") != std::string::npos || m.find("another process") != std::string::npos;
}

Status create_overlay(const std::string& path, const std::string& backing,
                      const std::string& backing_format, uint64_t size,
                      const std::string& options) {
  std::vector<std::string> argv = {qemu_img_binary(), "create", "-q", "-f", "qcow2", "-u", "-b",
                                   backing, "-F", backing_format};
  if (!options.empty()) argv.insert(argv.end(), {"-o", options});
  argv.insert(argv.end(), {path, std::to_string(size)});
  return run_process(argv);
}

Status rebase_safe(const std::string& path, const std::string& new_backing,
                   const std::string& new_format) {
  std::vector<std::string> argv = {qemu_img_binary(), "rebase", "-q", "-f", "qcow2", "-b",
                                   new_backing};
  if (!new_backing.empty()) {
    argv.push_back("-F");
    argv.push_back(new_format);
  }
  argv.push_back(path);
  return run_process(argv);
}

namespace {

// Node name -> the file name of its "file" child, from the block graph.
Result<std::map<std::string, std::string>> file_child_names(QmpClient& qmp,
                                                            const json& nodes) {
  QmpReply g = qmp.execute("x-debug-query-block-graph");
  if (!g.ok()) return Status(ErrorKind::kQemu, "x-debug-query-block-graph: " + g.message);
  std::map<int64_t, std::string> name_of;  // graph id -> node name
  for (const auto& n : g.value.value("nodes", json::array()))
    name_of[n.value("id", int64_t{-1})] = n.value("name", "");
  std::map<std::string, std::string> file_of;  // node name -> its file name
  for (const auto& n : nodes) file_of[n.value("node-name", "")] = n.value("file", "");
  std::map<std::string, std::string> out;
  for (const auto& e : g.value.value("edges", json::array())) {
    if (e.value("name", "") != "file") continue;
    auto parent = name_of.find(e.value("parent", int64_t{-1}));
    auto child = name_of.find(e.value("child", int64_t{-1}));
    if (parent == name_of.end() || child == name_of.end()) continue;
    auto f = file_of.find(child->second);
    if (f != file_of.end() && f->second.rfind("json:", 0) != 0) out[parent->second] = f->second;
  }
  return out;
}

}  // namespace

Result<std::vector<QemuNode>> qemu_format_nodes(QmpClient& qmp) {
  QmpReply r = qmp.execute("query-named-block-nodes", {{"flat", true}});
  if (!r.ok()) return Status(ErrorKind::kQemu, "query-named-block-nodes: " + r.message);
  std::vector<QemuNode> out;
  std::optional<std::map<std::string, std::string>> file_children;
  for (const auto& n : r.value) {
    QemuNode q;
    q.node_name = n.value("node-name", "");
    q.driver = n.value("drv", "");
    q.filename = n.value("file", "");
    // A node whose options differ from its header (an overlay added with
    // "backing": null) is named by its options: json:{...,"file":{...}}.
    if (q.filename.rfind("json:", 0) == 0) {
      json spec = json::parse(q.filename.substr(5), nullptr, false);
      if (spec.is_object() && spec.contains("file") && spec["file"].is_object()) {
        q.filename = spec["file"].value("filename", q.filename);
      } else {
        // QEMU cuts a name at PATH_MAX: a chain of some 30 overlays is
        // longer.  Its file child (a protocol node) still has a plain name.
        if (!file_children) {
          auto c = file_child_names(qmp, r.value);
          if (!c) return c.status();
          file_children = std::move(*c);
        }
        if (auto it = file_children->find(q.node_name); it != file_children->end())
          q.filename = it->second;
      }
    }
    if (n.contains("image")) q.virtual_size = n["image"].value("virtual-size", uint64_t{0});
    out.push_back(q);
  }
  return out;
}

Result<json> file_cache_options(QmpClient& qmp, const std::string& format_node) {
  QmpReply g = qmp.execute("x-debug-query-block-graph");
  if (!g.ok()) return Status(ErrorKind::kQemu, "x-debug-query-block-graph: " + g.message);
  std::map<int64_t, std::string> name_of;  // graph id -> node name
  for (const auto& n : g.value.value("nodes", json::array()))
    name_of[n.value("id", int64_t{-1})] = n.value("name", "");
  std::string file_node;
  for (const auto& e : g.value.value("edges", json::array())) {
    if (e.value("name", "") != "file") continue;
    auto parent = name_of.find(e.value("parent", int64_t{-1}));
    auto child = name_of.find(e.value("child", int64_t{-1}));
    if (parent == name_of.end() || child == name_of.end()) continue;
    if (parent->second == format_node) file_node = child->second;
  }
  json out = json::object();
  if (file_node.empty()) return out;
  QmpReply r = qmp.execute("query-named-block-nodes", {{"flat", true}});
  if (!r.ok()) return Status(ErrorKind::kQemu, "query-named-block-nodes: " + r.message);
  for (const auto& n : r.value) {
    if (n.value("node-name", "") != file_node || !n.contains("cache")) continue;
    const json& c = n["cache"];
    out["direct"] = c.value("direct", false);
    out["no-flush"] = c.value("no-flush", false);
  }
  return out;
}

std::optional<QemuNode> find_node_by_name(const std::vector<QemuNode>& nodes,
                                          const std::string& node_name) {
  for (const auto& n : nodes)
    if (n.node_name == node_name) return n;
  return std::nullopt;
}

std::optional<QemuNode> find_node_by_file(const std::vector<QemuNode>& nodes,
                                          const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::path want = fs::weakly_canonical(path, ec);
  // Protocol nodes ("file") carry the same name; the format node is the one
  // whose image the tree means.
  for (const auto& n : nodes) {
    if (n.driver == "file" || n.driver == "host_device" || n.filename.empty()) continue;
    if (fs::weakly_canonical(n.filename, ec) == want) return n;
  }
  return std::nullopt;
}

Status stream_and_wait(QmpClient& qmp, const std::string& job_id, const std::string& device,
                       const std::string& base_node, const std::string& backing_file) {
  json args = {{"job-id", job_id}, {"device", device}};
  if (!base_node.empty()) {
    args["base-node"] = base_node;
    args["backing-file"] = backing_file;
  }
  QmpReply r = qmp.execute("block-stream", args);
  if (!r.ok()) return {ErrorKind::kQemu, "block-stream: " + r.message};
  auto end = wait_block_job(qmp, job_id, "block-stream", std::chrono::minutes(60));
  if (!end) return {ErrorKind::kQemu, "block-stream: no completion event within an hour"};
  return *end;
}

std::optional<Status> block_job_end(const json& event, const std::string& job_id,
                                    const std::string& what) {
  if (!event.is_object()) return std::nullopt;
  std::string name = event.value("event", "");
  if (name != "BLOCK_JOB_COMPLETED" && name != "BLOCK_JOB_CANCELLED") return std::nullopt;
  auto data = event.find("data");
  if (data == event.end() || !data->is_object()) return std::nullopt;
  auto device = data->find("device");
  if (device == data->end() || !device->is_string() || *device != job_id) return std::nullopt;
  if (name == "BLOCK_JOB_CANCELLED") return Status(ErrorKind::kQemu, what + " was cancelled");
  if (auto error = data->find("error"); error != data->end())
    return Status(ErrorKind::kQemu, what + " failed: " +
                                        (error->is_string() ? error->get<std::string>()
                                                            : error->dump()));
  return Status::ok();
}

std::optional<Status> wait_block_job(QmpClient& qmp, const std::string& job_id,
                                     const std::string& what, Millis timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    auto left = std::chrono::duration_cast<Millis>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return std::nullopt;
    auto ev = qmp.next_event(left);
    if (!ev) return std::nullopt;
    if (auto end = block_job_end(*ev, job_id, what)) return end;
  }
}

}  // namespace kvmcdp
