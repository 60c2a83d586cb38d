// The steps the snapshot tree's operations share, and each operation's
// repair, for snapshot_ops.cc (repair and check), snapshot_create.cc
// (create, revert) and snapshot_merge.cc (delete, merge).  Not an
// interface for other code: snapshot_ops.h is.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "qemu/qmp_client.h"
#include "tree/snapshot_ops.h"
#include "base/status.h"
#include "tree/tree_model.h"

namespace kvmcdp::snapshot_steps {

int64_t now_seconds();
bool same_file(const std::string& a, const std::string& b);
// Imported roots (absolute paths) belong to the user: never unlinked.
bool owned_by_tree(const std::string& file);
// Unlinks <tree dir>/file if the tree owns it (gone already is fine) and
// makes that durable with a directory fsync.
Status unlink_owned(const Tree& t, const std::string& file);
// Drops node `name`: metadata first (with the intent to unlink), then its
// file.  Kills are injected at `op`:step and `op`:step+1.
Status drop_node(Tree& t, const std::string& name, const char* op, int step);
// True if the image of `c` backs onto `parent`'s image ("" : onto nothing).
bool header_backs_onto(const Tree& t, const TreeNode& c, const std::string& parent);
// The overlay `file` (a node file, backing onto `parent`) becomes the
// node the VM writes into; `qemu_node` is its QEMU node-name if it was
// added to the running VM, else "".
void add_active_overlay(Tree& t, const std::string& file, const std::string& parent,
                        const std::string& qemu_node);

// Each finishes or rolls back its operation's intent (its `args`).
Status repair_create(Tree& t, const nlohmann::json& args, QmpClient* qmp, OpLog* log);
Status repair_revert(Tree& t, const nlohmann::json& args, OpLog* log);
Status repair_merge(Tree& t, const nlohmann::json& args, QmpClient* qmp, OpLog* log);
Status repair_remove(Tree& t, const nlohmann::json& args, OpLog* log);

}  // namespace kvmcdp::snapshot_steps
