// Operations on a snapshot tree, following the patent's rules (see
// man/kvmcdp-tree.5).  Each multi-step operation records an intent in
// tree.json before its first step; repair_tree() finishes or rolls it back.
// The caller holds the tree lock.
#pragma once

#include <string>
#include <vector>

#include "qemu/qmp_client.h"
#include "base/status.h"
#include "tree/tree_model.h"

namespace kvmcdp {

// Messages for the user ("merged s1 into s2", ...), in order.
using OpLog = std::vector<std::string>;

struct CreateRequest {
  std::string name;
  QmpClient* qmp = nullptr;  // null: offline (the VM is not running)
  std::string drive;         // the running disk: drive id, qdev id or node name
  std::string base;          // offline, first snapshot: the image to start from
};
struct CreateReport {
  std::string active_file;  // the file the VM now writes into
  double pause_ms = -1;     // I/O pause around the switch (online only)
};

// Creates the tree in `dir` if needed (from the running drive, or `base`).
Result<CreateReport> snapshot_create(const std::string& dir, const CreateRequest& req, OpLog* log);
// Rules 1-3; then physically removes every logically deleted node that is
// down to one child or none.
Status snapshot_delete(Tree& tree, const std::string& name, QmpClient* qmp, OpLog* log);
// Rule 2 on demand: `name` must have exactly one child.
Status snapshot_merge(Tree& tree, const std::string& name, QmpClient* qmp, OpLog* log);
// A new writable overlay on `name` becomes the active node (VM stopped).
Status snapshot_revert(Tree& tree, const std::string& name, OpLog* log);
// Finishes or rolls back tree.intent, if any.
Status repair_tree(Tree& tree, QmpClient* qmp, OpLog* log);
// Compares the metadata with the image headers; one line per difference.
std::vector<std::string> check_tree(const Tree& tree);

}  // namespace kvmcdp
