#include "tree/tree_model.h"

#include <algorithm>
#include <filesystem>
#include <set>

#include <fmt/format.h>

#include "base/fsutil.h"
#include "base/json_field.h"

namespace kvmcdp {

using json = nlohmann::json;

TreeNode* Tree::find(const std::string& name) {
  for (auto& n : nodes)
    if (n.name == name) return &n;
  return nullptr;
}

const TreeNode* Tree::find(const std::string& name) const {
  for (const auto& n : nodes)
    if (n.name == name) return &n;
  return nullptr;
}

std::vector<const TreeNode*> Tree::children(const std::string& name) const {
  std::vector<const TreeNode*> out;
  for (const auto& n : nodes)
    if (n.parent == name && !name.empty()) out.push_back(&n);
  return out;
}

const TreeNode* Tree::root() const {
  for (const auto& n : nodes)
    if (n.parent.empty()) return &n;
  return nullptr;
}

std::string Tree::path_of(const TreeNode& n) const {
  if (!n.file.empty() && n.file[0] == '/') return n.file;
  return dir + "/" + n.file;
}

bool Tree::in_active_chain(const std::string& name) const {
  const TreeNode* n = find(active);
  for (size_t guard = 0; n && guard <= nodes.size(); ++guard) {
    if (n->name == name) return true;
    n = n->parent.empty() ? nullptr : find(n->parent);
  }
  return false;
}

std::string Tree::take_file_name() { return node_file_name(next_id++); }

namespace {
constexpr const char* kIntentNames[] = {"create", "merge", "remove", "revert"};
constexpr const char kNodeFileSuffix[] = ".qcow2";
}  // namespace

const char* intent_name(IntentOp op) { return kIntentNames[static_cast<int>(op)]; }

std::optional<IntentOp> intent_from_name(const std::string& name) {
  for (int i = 0; i < 4; ++i)
    if (name == kIntentNames[i]) return static_cast<IntentOp>(i);
  return std::nullopt;
}

std::string node_file_name(uint32_t id) { return fmt::format("n{:04}{}", id, kNodeFileSuffix); }

bool is_node_file_name(const std::string& file) {
  std::string_view f = file, suffix = kNodeFileSuffix;
  if (f.size() < 1 + 4 + suffix.size() || f[0] != 'n' || !f.ends_with(suffix)) return false;
  std::string_view digits = f.substr(1, f.size() - 1 - suffix.size());
  return std::all_of(digits.begin(), digits.end(), [](char ch) { return ch >= '0' && ch <= '9'; });
}

std::string active_node_name(const std::string& node_file) {
  return "@" + std::filesystem::path(node_file).stem().string();
}

std::string overlay_qemu_node_name(const std::string& node_file) {
  return "kvmcdp-" + std::filesystem::path(node_file).stem().string();
}

std::string tree_json_path(const std::string& dir) { return dir + "/tree.json"; }

std::string tree_to_json(const Tree& t) {
  json nodes = json::array();
  for (const auto& n : t.nodes) {
    json j = {{"name", n.name},       {"file", n.file},
              {"format", n.format},   {"parent", n.parent.empty() ? json(nullptr) : json(n.parent)},
              {"created", n.created}, {"state", n.state == NodeState::kLive ? "live" : "deleted"}};
    j["point"] = n.point ? json(*n.point) : json(nullptr);
    if (n.point_time_ns) j["point_time_ns"] = *n.point_time_ns;
    nodes.push_back(j);
  }
  json root = {{"version", kTreeVersion}, {"active", t.active},
               {"active_qemu_node", t.active_qemu_node}, {"next_id", t.next_id},
               {"nodes", nodes}};
  root["intent"] = t.intent ? json{{"op", intent_name(t.intent->op)}, {"args", t.intent->args}}
                            : json(nullptr);
  return root.dump(2) + "\n";
}

Result<Tree> tree_from_json(const std::string& text, const std::string& dir) {
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    return {ErrorKind::kDamaged, fmt::format("{}: not JSON", tree_json_path(dir))};
  try {
    int version = json_field::integer_as<int>(j.at("version"), "version");
    if (version != kTreeVersion)
      return {ErrorKind::kDamaged, fmt::format("{}: unknown version {} (this kvmcdp knows {})",
                                               tree_json_path(dir), version, kTreeVersion)};
    Tree t;
    t.dir = dir;
    t.active = j.at("active").get<std::string>();
    t.active_qemu_node = j.value("active_qemu_node", "");
    t.next_id = json_field::integer_as<uint32_t>(j.at("next_id"), "next_id");
    for (const auto& jn : j.at("nodes")) {
      TreeNode n;
      n.name = jn.at("name").get<std::string>();
      n.file = jn.at("file").get<std::string>();
      n.format = jn.at("format").get<std::string>();
      n.parent = jn.at("parent").is_null() ? "" : jn.at("parent").get<std::string>();
      n.created = json_field::integer_as<int64_t>(jn.at("created"), "created");
      std::string state = jn.at("state").get<std::string>();
      if (state != "live" && state != "deleted")
        return {ErrorKind::kDamaged, fmt::format("node {}: unknown state '{}'", n.name, state)};
      n.state = state == "live" ? NodeState::kLive : NodeState::kDeleted;
      if (jn.contains("point") && !jn["point"].is_null())
        n.point = json_field::integer_as<uint64_t>(jn["point"], "point");
      if (jn.contains("point_time_ns") && !jn["point_time_ns"].is_null())
        n.point_time_ns = json_field::integer_as<uint64_t>(jn["point_time_ns"], "point_time_ns");
      t.nodes.push_back(std::move(n));
    }
    if (j.contains("intent") && !j["intent"].is_null()) {
      std::string op = j["intent"].at("op").get<std::string>();
      auto known = intent_from_name(op);
      if (!known) return {ErrorKind::kDamaged, fmt::format("unknown intent '{}'", op)};
      t.intent = TreeIntent{*known, j["intent"].at("args")};
    }
    if (auto st = validate_tree(t); !st) return st;
    return t;
  } catch (const std::exception& e) {  // json::exception, or integer_as's out_of_range
    return {ErrorKind::kDamaged, fmt::format("{}: {}", tree_json_path(dir), e.what())};
  }
}

Status validate_tree(const Tree& t) {
  auto bad = [&](const std::string& why) {
    return Status(ErrorKind::kDamaged, fmt::format("{}: {}", tree_json_path(t.dir), why));
  };
  std::set<std::string> names, files;
  size_t roots = 0;
  for (const auto& n : t.nodes) {
    if (!names.insert(n.name).second) return bad("duplicate node name " + n.name);
    if (!files.insert(n.file).second) return bad("two nodes share file " + n.file);
    if (n.parent.empty()) ++roots;
    else if (!t.find(n.parent)) return bad(fmt::format("node {} has unknown parent {}", n.name, n.parent));
  }
  if (t.nodes.empty()) return Status::ok();
  if (roots != 1) return bad(fmt::format("{} roots (a tree has exactly one)", roots));
  for (const auto& n : t.nodes) {  // every node reaches the root
    const TreeNode* p = &n;
    size_t steps = 0;
    while (p && !p->parent.empty() && steps++ <= t.nodes.size()) p = t.find(p->parent);
    if (steps > t.nodes.size()) return bad("cycle through node " + n.name);
  }
  const TreeNode* a = t.find(t.active);
  if (!a) return bad("active node '" + t.active + "' does not exist");
  if (!t.children(a->name).empty()) return bad("active node " + a->name + " has children");
  return Status::ok();
}

Status validate_snapshot_name(const std::string& name) {
  if (name.empty() || name.size() > 128)
    return {ErrorKind::kUsage, "a snapshot name has 1 to 128 bytes"};
  if (name[0] == '@' || name[0] == '-')
    return {ErrorKind::kUsage, "a snapshot name cannot start with '@' or '-'"};
  for (unsigned char c : name)
    if (c < 0x21 || c == 0x7f || c == '/')
      return {ErrorKind::kUsage, "a snapshot name has no spaces, '/' or control characters"};
  return Status::ok();
}

Result<Tree> load_tree(const std::string& dir) {
  auto bytes = fsutil::read_file(tree_json_path(dir));
  if (!bytes) {
    if (!std::filesystem::exists(tree_json_path(dir)))
      return {ErrorKind::kNotFound, fmt::format("no snapshot tree in {}", dir)};
    return bytes.status();
  }
  return tree_from_json(std::string(bytes->begin(), bytes->end()), dir);
}

Status save_tree(const Tree& t) {
  if (auto st = validate_tree(t); !st) return st;
  return fsutil::replace_file_atomic(tree_json_path(t.dir), tree_to_json(t));
}

std::string relative_backing(const std::string& child_path, const std::string& parent_path) {
  namespace fs = std::filesystem;
  fs::path child_dir = fs::path(child_path).parent_path();
  fs::path rel = fs::path(parent_path).lexically_relative(child_dir);
  if (rel.empty()) return parent_path;
  return rel.string();
}

std::string built_tree_dir(const std::string& store_dir) { return store_dir + "/tree"; }
std::string built_node_name(uint64_t seq) { return fmt::format("seq-{}", seq); }

}  // namespace kvmcdp
