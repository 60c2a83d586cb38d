// kvmcdp merge NODE: the patent's rule 2 on demand -- merge a node into its
// only child, which then backs onto the node's parent.
#include <memory>
#include <string>

#include "cli/cli.h"

namespace kvmcdp {

Status run_snapshot_merge(const std::string& tree, const std::string& name,
                          const std::string& qmp, bool wait);

CommandRunner setup_merge_command(CLI::App* app) {
  struct Options {
    std::string tree, qmp, name;
    bool wait = false;
  };
  auto o = std::make_shared<Options>();
  app->add_option("--tree", o->tree, "the snapshot tree's directory")->required();
  app->add_option("--qmp", o->qmp, "QMP socket of the running VM (omit when it is not running)");
  app->add_flag("--wait", o->wait, "wait for the tree lock instead of failing with exit 5");
  app->add_option("node", o->name,
                  "the snapshot to merge into the one snapshot or disk made on top of it")
      ->required();
  return [o]() -> Status { return run_snapshot_merge(o->tree, o->name, o->qmp, o->wait); };
}

}  // namespace kvmcdp
