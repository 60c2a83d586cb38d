// The snapshot tree of one drive: nodes are image files (qcow2 overlays
// whose backing file is the parent node; the root may be any format), kept
// in <tree-dir>/tree.json.  The on-disk layout is in man/kvmcdp-tree.5.
//
// This header is the model only: parse, serialise, navigate.  Nothing here
// touches an image or QEMU; snapshot_ops.cc does that.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/status.h"

namespace kvmcdp {

constexpr int kTreeVersion = 1;

enum class NodeState { kLive, kDeleted };  // kDeleted: logically deleted (rule 3)

struct TreeNode {
  std::string name;    // unique in the tree; "@..." for an unnamed active disk
  std::string file;    // relative to the tree dir, or absolute (imported root)
  std::string format;  // "qcow2" for every node but possibly the root
  std::string parent;  // "" for the root
  int64_t created = 0;  // unix seconds
  NodeState state = NodeState::kLive;
  std::optional<uint64_t> point;  // journal sequence number, if any
  std::optional<uint64_t> point_time_ns;  // that record's time (kvmcdp build)
};

// A multi-step operation in progress (see man/kvmcdp-tree.5, INTENT).
// tree.json names it by the strings of intent_name().
enum class IntentOp { kCreate, kMerge, kRemove, kRevert };
const char* intent_name(IntentOp op);
std::optional<IntentOp> intent_from_name(const std::string& name);

struct TreeIntent {
  IntentOp op;
  nlohmann::json args;
};

// The files the tree makes for its nodes are "n" and an id of at least
// four digits: n0001.qcow2, ..., n9999.qcow2, n10000.qcow2.
std::string node_file_name(uint32_t id);
bool is_node_file_name(const std::string& file);
// The node name of an unnamed active node ("@n0001") and the QEMU
// node-name of its overlay when added online ("kvmcdp-n0001").
std::string active_node_name(const std::string& node_file);
std::string overlay_qemu_node_name(const std::string& node_file);

struct Tree {
  std::string dir;  // not serialised
  std::vector<TreeNode> nodes;
  std::string active;         // node the VM writes into (or will, at next start)
  std::string active_qemu_node;  // its QEMU node-name when created online
  uint32_t next_id = 1;
  std::optional<TreeIntent> intent;

  TreeNode* find(const std::string& name);
  const TreeNode* find(const std::string& name) const;
  std::vector<const TreeNode*> children(const std::string& name) const;
  const TreeNode* root() const;
  // Absolute path of a node's file.
  std::string path_of(const TreeNode& n) const;
  // True if `name` is the active node or one of its ancestors: the running
  // VM reads through it.
  bool in_active_chain(const std::string& name) const;
  // A fresh node file name (node_file_name(next_id++)).
  std::string take_file_name();
};

std::string tree_json_path(const std::string& dir);
Result<Tree> load_tree(const std::string& dir);  // kNotFound if absent
Status save_tree(const Tree& tree);                  // atomic replace
std::string tree_to_json(const Tree& tree);
Result<Tree> tree_from_json(const std::string& text, const std::string& dir);
// Structural checks: one root, parents exist, no cycles, active is a leaf.
Status validate_tree(const Tree& tree);
Status validate_snapshot_name(const std::string& name);

// The backing-file string a child in `child_dir` writes for `parent_path`:
// relative when both are in the same tree, so the tree can be moved.
std::string relative_backing(const std::string& child_path, const std::string& parent_path);

// The tree kvmcdp build keeps inside a store (man/kvmcdp-tree.5): its
// directory and the name of the node built for a seq.
std::string built_tree_dir(const std::string& store_dir);  // DIR/tree
std::string built_node_name(uint64_t seq);                   // "seq-N"

}  // namespace kvmcdp
