#include "qemu/qemu_drive.h"

#include <map>
#include <set>

#include <fmt/format.h>

namespace kvmcdp {

Result<std::string> resolve_drive(QmpClient& qmp, const std::string& given) {
  // A libvirt user names a disk by its <target dev> (vda): QEMU knows it
  // by its alias, the device id.
  std::string name = qmp.libvirt_disk_alias(given).value_or(given);
  QmpReply block = qmp.execute("query-block");
  if (!block.ok()) return block.status();
  for (const auto& b : block.value) {
    if (!b.contains("inserted")) continue;
    if (b.value("device", "") == name || b.value("qdev", "") == name ||
        (!b.value("qdev", "").empty() &&
         b.value("qdev", "").find("/" + name + "/") != std::string::npos))
      return b["inserted"].value("node-name", "");
  }
  QmpReply nodes = qmp.execute("query-named-block-nodes", {{"flat", true}});
  if (!nodes.ok()) return nodes.status();
  for (const auto& n : nodes.value)
    if (n.value("node-name", "") == name) return name;
  return Result<std::string>(ErrorKind::kNotFound,
                             fmt::format("QEMU has no drive or block node named '{}'", given));
}

Result<std::string> resolve_image_node(QmpClient& qmp, const std::string& name) {
  auto top = resolve_drive(qmp, name);
  if (!top) return top;
  QmpReply nodes = qmp.execute("query-named-block-nodes", {{"flat", true}});
  if (!nodes.ok()) return nodes.status();
  std::map<std::string, std::string> driver;
  for (const auto& n : nodes.value) driver[n.value("node-name", "")] = n.value("drv", "");
  // Drivers that pass I/O through to one child; an image's format node is
  // anything else.  The graph's edges name a filter's child.
  static const std::set<std::string> filters = {"cdp", "throttle", "copy-on-read", "compress",
                                                "blkreplay", "preallocate"};
  if (!filters.count(driver[*top])) return top;
  QmpReply g = qmp.execute("x-debug-query-block-graph");
  if (!g.ok()) return g.status();
  std::map<int64_t, std::string> name_of;
  for (const auto& n : g.value.value("nodes", nlohmann::json::array()))
    name_of[n.value("id", int64_t{-1})] = n.value("name", "");
  std::string cur = *top;
  for (int depth = 0; filters.count(driver[cur]) && depth < 16; ++depth) {
    std::string next;
    for (const auto& e : g.value.value("edges", nlohmann::json::array())) {
      auto parent = name_of.find(e.value("parent", int64_t{-1}));
      auto child = name_of.find(e.value("child", int64_t{-1}));
      if (parent != name_of.end() && parent->second == cur && child != name_of.end() &&
          (e.value("name", "") == "file" || e.value("name", "") == "child"))
        next = child->second;
    }
    if (next.empty()) break;
    cur = next;
  }
  if (filters.count(driver[cur]))
    return Result<std::string>(ErrorKind::kQemu,
                               fmt::format("no image below the filter node {} of '{}'", cur, name));
  return cur;
}

Result<std::vector<CdpInfo>> list_cdp(QmpClient& qmp) {
  QmpReply r = qmp.execute("query-cdp");
  if (!r.ok()) {
    if (r.error_class == "CommandNotFound")
      return Status(ErrorKind::kQemu,
                    "this QEMU has no cdp filter (query-cdp unknown): run the VM on a QEMU "
                    "with kvmcdp's filter, such as the kvmcdp-qemu package's "
                    "/opt/kvmcdp/qemu-VERSION/bin/qemu-system-x86_64");
    return r.status();
  }
  std::vector<CdpInfo> out;
  for (const auto& f : r.value) {
    CdpInfo info;
    info.node_name = f.value("node-name", "");
    info.child = f.value("child", "");
    info.connected = f.value("connected", false);
    info.seq = f.value("seq", uint64_t{0});
    info.acked_seq = f.value("acked-seq", uint64_t{0});
    info.queued_bytes = f.value("queued-bytes", uint64_t{0});
    info.gap = f.value("gap", false);
    info.dirty_bytes = f.value("dirty-bytes", uint64_t{0});
    info.stream_id = f.value("stream-id", uint64_t{0});
    out.push_back(std::move(info));
  }
  return out;
}

Result<bool> has_stream_bitmap(QmpClient& qmp, const std::string& node, uint64_t stream_id) {
  QmpReply r = qmp.execute("query-named-block-nodes", {{"flat", true}});
  if (!r.ok()) return r.status();
  const std::string name = fmt::format("cdp-{:016x}", stream_id);
  auto is = [](const nlohmann::json& o, const char* key, const std::string& want) {
    auto it = o.find(key);
    return it != o.end() && it->is_string() && it->get<std::string>() == want;
  };
  auto flag = [](const nlohmann::json& o, const char* key) {
    auto it = o.find(key);
    return it != o.end() && it->is_boolean() && it->get<bool>();
  };
  if (!r.value.is_array()) return false;
  for (const auto& n : r.value) {
    if (!n.is_object() || !is(n, "node-name", node)) continue;
    auto bitmaps = n.find("dirty-bitmaps");
    if (bitmaps == n.end() || !bitmaps->is_array()) return false;
    for (const auto& b : *bitmaps)
      if (b.is_object() && is(b, "name", name))
        return !flag(b, "inconsistent") && !flag(b, "busy");
    return false;
  }
  return false;
}

Result<std::optional<CdpInfo>> query_cdp(QmpClient& qmp, const std::string& filter_node) {
  auto all = list_cdp(qmp);
  if (!all) return all.status();
  for (auto& f : *all)
    if (f.node_name == filter_node) return std::optional<CdpInfo>(std::move(f));
  return std::optional<CdpInfo>();
}

}  // namespace kvmcdp
