// kvmcdp snapshot {create,list,tree,check,delete,revert,repair}: the
// snapshot tree of one drive (man/kvmcdp-tree.5).  Changing commands take
// the tree lock and first finish or roll back an interrupted operation.
#include <sys/stat.h>

#include <cstdio>
#include <filesystem>
#include <ctime>
#include <functional>
#include <memory>
#include <string>

#include <fmt/format.h>

#include "cli/cli.h"
#include "cli/qemu_options.h"
#include "qemu/libvirt_monitor.h"
#include "qemu/qemu_drive.h"
#include "store/time_parse.h"
#include "build/journal_fold.h"
#include "tree/snapshot_ops.h"
#include "tree/tree_lock.h"
#include "tree/tree_model.h"

namespace kvmcdp {
namespace {

using json = nlohmann::json;

struct Options {
  std::string tree;
  std::string qmp;
  std::string domain;       // --domain: the VM is a libvirt domain
  std::string libvirt_uri;  // --connect
  std::string drive;
  std::string base;
  std::string name;
  bool wait = false;
  bool json_out = false;
  bool all = false;
};

void print_log(const OpLog& log) {
  for (const auto& line : log) std::printf("%s\n", line.c_str());
}

// What a changing command works on: the lock, the VM (if any) and the tree
// with no interrupted operation left.
struct TreeWork {
  TreeLock lock;
  std::unique_ptr<QmpClient> qmp;
  Tree tree;
};

Result<TreeWork> open_tree_work(const Options& o, bool create_dir) {
  if (create_dir) ::mkdir(o.tree.c_str(), 0755);
  auto lock = TreeLock::acquire(o.tree, o.wait);
  if (!lock) return lock.status();
  std::unique_ptr<QmpClient> qmp;
  if (!o.qmp.empty() || !o.domain.empty()) {
    auto c = QmpClient::connect(QemuTarget{o.qmp, o.domain, o.libvirt_uri});
    if (!c) return c.status();
    qmp = std::move(*c);
  }
  auto tree = load_tree(o.tree);
  if (!tree && !(create_dir && tree.status().kind() == ErrorKind::kNotFound)) return tree.status();
  Tree t = tree ? std::move(*tree) : Tree{};
  if (tree && t.intent) {
    OpLog log;
    Status st = repair_tree(t, qmp.get(), &log);
    print_log(log);
    if (!st) return st;
  }
  return TreeWork{std::move(*lock), std::move(qmp), std::move(t)};
}

std::string when(int64_t t) { return format_time_human(uint64_t(t) * 1000000000ull); }

json node_json(const Tree& t, const TreeNode& n) {
  json j = {{"name", n.name},
            {"file", n.file},
            {"format", n.format},
            {"parent", n.parent.empty() ? json(nullptr) : json(n.parent)},
            {"created", n.created},
            {"state", n.state == NodeState::kLive ? "live" : "deleted"},
            {"children", t.children(n.name).size()},
            {"active", n.name == t.active},
            {"in_active_chain", t.in_active_chain(n.name)}};
  j["point"] = n.point ? json(*n.point) : json(nullptr);
  return j;
}

std::string markers(const Tree& t, const TreeNode& n) {
  std::string m;
  // A store's tree (kvmcdp build) has no VM: its "active" node is merely the
  // newest built point, and nothing writes into it or reads through it.
  const TreeNode* top = t.find(t.active);
  bool built = top && top->point;
  if (n.name == t.active) m += built ? " (newest)" : " (current disk: new writes go here)";
  else if (!built && t.in_active_chain(n.name))
    m += " (in use: the current disk reads through it)";
  if (n.state == NodeState::kDeleted) m += " [deleted]";
  return m;
}

Status run_list(const Options& o, bool as_tree) {
  auto loaded = load_tree(o.tree);
  if (!loaded) return loaded.status();
  const Tree& t = *loaded;
  if (o.json_out) {
    json arr = json::array();
    for (const auto& n : t.nodes)
      if (o.all || n.state == NodeState::kLive) arr.push_back(node_json(t, n));
    std::printf("%s\n", arr.dump(2).c_str());
    return Status::ok();
  }
  if (t.intent)
    std::printf("note: an interrupted %s will be finished by the next change (or snapshot repair)\n",
                intent_name(t.intent->op));
  if (!as_tree) {
    std::printf("%-20s %-20s %-26s %-12s %s\n", "NAME", "PARENT", "CREATED", "FILE", "");
    for (const auto& n : t.nodes)
      if (o.all || n.state == NodeState::kLive)
        std::printf("%-20s %-20s %-26s %-12s%s\n", n.name.c_str(),
                    n.parent.empty() ? "-" : n.parent.c_str(), when(n.created).c_str(),
                    n.file.c_str(), markers(t, n).c_str());
    return Status::ok();
  }
  // ASCII tree.  Without --all a logically deleted node is skipped and its
  // children hang from its nearest shown ancestor.
  std::function<std::vector<const TreeNode*>(const std::string&)> shown =
      [&](const std::string& name) {
        std::vector<const TreeNode*> out;
        for (const TreeNode* c : t.children(name)) {
          if (o.all || c->state == NodeState::kLive) out.push_back(c);
          else for (const TreeNode* g : shown(c->name)) out.push_back(g);
        }
        return out;
      };
  std::function<void(const TreeNode*, const std::string&, bool, bool)> draw =
      [&](const TreeNode* n, const std::string& prefix, bool last, bool top) {
        std::printf("%s%s%s%s\n", prefix.c_str(), top ? "" : (last ? "`-- " : "|-- "),
                    n->name.c_str(), markers(t, *n).c_str());
        auto kids = shown(n->name);
        std::string next = top ? "" : prefix + (last ? "    " : "|   ");
        for (size_t i = 0; i < kids.size(); ++i) draw(kids[i], next, i + 1 == kids.size(), false);
      };
  const TreeNode* root = t.root();
  if (!root) return Status::ok();
  if (o.all || root->state == NodeState::kLive) {
    draw(root, "", true, true);
  } else {
    for (const TreeNode* c : shown(root->name)) draw(c, "", true, true);
  }
  return Status::ok();
}

Status run_check(const Options& o) {
  auto loaded = load_tree(o.tree);
  if (!loaded) return loaded.status();
  auto problems = check_tree(*loaded);
  for (const auto& p : problems) std::printf("%s\n", p.c_str());
  if (!problems.empty())
    return {ErrorKind::kDamaged, fmt::format("snapshot tree {}: {} problem{}", o.tree,
                                             problems.size(), problems.size() == 1 ? "" : "s")};
  std::printf("snapshot tree %s: %zu nodes, metadata matches the images\n", o.tree.c_str(),
              loaded->nodes.size());
  return Status::ok();
}

std::string absolute_file(const std::string& p) {
  return std::filesystem::absolute(p).lexically_normal().string();
}

// A libvirt domain's definition must name the file its disk now writes
// into, or its next start would boot the disk as it was before.
Status repoint_domain(const Options& o, const std::string& old_file, const std::string& new_file,
                      OpLog* log) {
  if (o.domain.empty() || old_file == new_file) return Status::ok();
  Status st = libvirt_repoint_disk(o.libvirt_uri, o.domain, old_file, new_file, "qcow2");
  if (!st)
    return {st.kind(), fmt::format("the snapshot is made, but {}: point the domain's disk at {} "
                                   "before it starts again (virsh edit {})",
                                   st.message(), new_file, o.domain)};
  log->push_back(fmt::format("libvirt domain {}: its disk is now {} (also at its next start)",
                             o.domain, new_file));
  return Status::ok();
}

Status run_create(const Options& o) {
  if ((!o.qmp.empty() || !o.domain.empty()) && !o.base.empty())
    return {ErrorKind::kUsage, "--base is for a VM that is not running (without --qmp/--domain)"};
  auto s = open_tree_work(o, true);
  if (!s) return s.status();
  CreateRequest req{o.name, s->qmp.get(), o.drive, o.base};
  if (!o.domain.empty() && !o.drive.empty()) {
    // A libvirt user names the disk (vda); the tree starts from its image.
    auto node = resolve_image_node(*s->qmp, o.drive);
    if (!node) return node.status();
    req.drive = *node;
  }
  OpLog log;
  auto r = snapshot_create(o.tree, req, &log);
  if (r && !o.domain.empty()) {
    // The file the domain's definition names: the new active node's parent.
    auto t = load_tree(o.tree);
    const TreeNode* top = t ? t->find(t->active) : nullptr;
    const TreeNode* parent = top ? t->find(top->parent) : nullptr;
    if (parent) {
      Status st = repoint_domain(o, absolute_file(t->path_of(*parent)),
                                 absolute_file(r->active_file), &log);
      if (!st) {
        print_log(log);
        return st;
      }
    }
  }
  print_log(log);
  if (!r) return r.status();
  if (r->pause_ms >= 0) std::printf("I/O paused for %.3f ms\n", r->pause_ms);
  return Status::ok();
}

using TreeOp = std::function<Status(TreeWork&, OpLog*)>;
Status run_changing(const Options& o, const TreeOp& op) {
  auto s = open_tree_work(o, false);
  if (!s) return s.status();
  OpLog log;
  Status st = op(*s, &log);
  print_log(log);
  return st;
}

void add_tree_option(CLI::App* sub, Options* o) {
  sub->add_option("--tree", o->tree, "the directory holding the snapshots")->required();
}
void add_vm_options(CLI::App* sub, Options* o, bool with_drive) {
  add_qemu_target_options(sub, &o->qmp, &o->domain, &o->libvirt_uri,
                          "QMP socket of the running VM (omit when it is not running)",
                          "instead of --qmp: the running VM is this libvirt domain (its "
                          "definition follows the snapshot)");
  if (with_drive)
    sub->add_option("--drive", o->drive,
                    "the VM's disk: its drive id, device id or node name (as for protect; needed for the first snapshot)");
  sub->add_flag("--wait", o->wait, "wait for the tree lock instead of failing with exit 5");
}

}  // namespace

// Shared with cmd_merge.cc.
Status run_snapshot_merge(const std::string& tree, const std::string& name,
                          const std::string& qmp, bool wait) {
  Options o;
  o.tree = tree;
  o.qmp = qmp;
  o.wait = wait;
  return run_changing(o, [&](TreeWork& s, OpLog* log) {
    return snapshot_merge(s.tree, name, s.qmp.get(), log);
  });
}

CommandRunner setup_snapshot_command(CLI::App* app) {
  auto o = std::make_shared<Options>();
  app->require_subcommand(1);
  auto* create = app->add_subcommand("create", "Snapshot the disk (online with --qmp)");
  add_tree_option(create, o.get());
  add_vm_options(create, o.get(), true);
  create->add_option("--base", o->base, "first snapshot offline: the image the tree starts from");
  create->add_option("name", o->name, "the snapshot's name")->required();

  auto* list = app->add_subcommand("list", "List the snapshots");
  auto* tree = app->add_subcommand("tree", "Draw the snapshots as a tree");
  for (auto* sub : {list, tree}) {
    add_tree_option(sub, o.get());
    sub->add_flag("--json", o->json_out, "print JSON");
    sub->add_flag("--all", o->all, "also show deleted snapshots that still back others");
  }
  auto* check = app->add_subcommand("check", "Check the snapshot list against the qcow2 files");
  add_tree_option(check, o.get());

  auto* del = app->add_subcommand("delete", "Delete a snapshot; the others keep their data");
  auto* revert = app->add_subcommand("revert", "Make a new writable disk on a snapshot (VM stopped)");
  auto* repair = app->add_subcommand("repair", "Finish or undo an interrupted snapshot change");
  for (auto* sub : {del, revert, repair}) add_tree_option(sub, o.get());
  add_vm_options(del, o.get(), false);
  add_vm_options(repair, o.get(), false);
  revert->add_flag("--wait", o->wait, "wait for the tree lock instead of failing with exit 5");
  add_qemu_target_options(revert, nullptr, &o->domain, &o->libvirt_uri, "",
                          "the stopped VM is this libvirt domain: its definition is pointed "
                          "at the new disk");
  del->add_option("name", o->name, "the snapshot to delete")->required();
  revert->add_option("name", o->name, "the snapshot to go back to")->required();

  return [=]() -> Status {
    if (create->parsed()) return run_create(*o);
    if (list->parsed()) return run_list(*o, false);
    if (tree->parsed()) return run_list(*o, true);
    if (check->parsed()) return run_check(*o);
    if (del->parsed())
      return run_changing(*o, [&](TreeWork& s, OpLog* log) {
        return snapshot_delete(s.tree, o->name, s.qmp.get(), log);
      });
    if (revert->parsed()) {
      // The domain is stopped: only its definition changes, through
      // libvirt (no QEMU to talk to).
      Options offline = *o;
      offline.domain.clear();
      return run_changing(offline, [&](TreeWork& s, OpLog* log) {
        const TreeNode* before = s.tree.find(s.tree.active);
        std::string old_file = before ? absolute_file(s.tree.path_of(*before)) : "";
        if (Status st = snapshot_revert(s.tree, o->name, log); !st) return st;
        const TreeNode* now = s.tree.find(s.tree.active);
        return now ? repoint_domain(*o, old_file, absolute_file(s.tree.path_of(*now)), log)
                   : Status::ok();
      });
    }
    if (repair->parsed())
      return run_changing(*o, [&](TreeWork&, OpLog* log) {
        // A tree kept in a store (STORE/tree, kvmcdp build) also guards
        // the store's journal fold.
        std::error_code ec;
        std::string store = std::filesystem::canonical(o->tree, ec).parent_path().string();
        if (!ec && std::filesystem::exists(fold_intent_path(store), ec))
          if (auto st = repair_fold(store, log); !st) return st;
        log->push_back("snapshot tree " + o->tree + ": consistent");
        return Status::ok();
      });
    return {ErrorKind::kUsage, "snapshot: which subcommand?"};
  };
}

}  // namespace kvmcdp
