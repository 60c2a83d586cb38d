// Parses the command line with CLI11, runs the chosen subcommand and maps
// its Status to an exit code.  Nothing below this file prints errors or
// exits: a layer returns a Status and this file decides what it means for
// the shell.
#include "cli/cli.h"

#include <algorithm>
#include <cstdio>
#include <vector>

#include <fmt/format.h>

#include "cli/edit_distance.h"
#include "version.h"

namespace kvmcdp {
namespace {

const std::vector<Command>& commands() {
  static const std::vector<Command> table = {
      {"protect", "Capture a running VM's disk into a store until stopped",
       setup_protect_command},
      {"status", "Show whether a drive is protected, how far behind it is and what can be restored",
       setup_status_command},
      {"points", "List the times a store can restore, its marks and its gaps",
       setup_points_command},
      {"mark", "Name this moment of a protected drive, to restore it by that name",
       setup_mark_command},
      {"restore", "Write the disk image as of a point in time", setup_restore_command},
      {"export", "Serve a point in time as an NBD export, without writing an image",
       setup_export_command},
      {"mount", "Mount the file system of a point in time read-only, to copy files from it",
       setup_mount_command},
      {"umount", "Unmount what kvmcdp mount mounted", setup_umount_command},
      {"recover", "Run a VM on a point in time at once, while its disk is copied into a new image",
       setup_recover_command},
      {"journal", "Check a store's journal for damage, or print its records",
       setup_journal_command},
      {"snapshot", "Create, list, delete and go back to snapshots of a VM's disk (qcow2 files)",
       setup_snapshot_command},
      {"merge", "Merge a snapshot into the one snapshot or disk made on top of it",
       setup_merge_command},
      {"build", "Prepare restore points as qcow2 images, so that restores near them are fast",
       setup_build_command},
      {"prune", "Delete restore points a retention policy does not keep (never one in use), and the older journal",
       setup_prune_command},
      {"serve", "Run a backup server that receives protected drives' journals",
       setup_serve_command},
      {"qmp", "Send one QMP command to a QEMU and print its reply",
       setup_qmp_command},
  };
  return table;
}

void print_error(const std::string& message) {
  std::fprintf(stderr, "kvmcdp: error: %s\n", message.c_str());
}

}  // namespace

int exit_code_for(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kFailure: return 1;
    case ErrorKind::kUsage: return 2;
    case ErrorKind::kQemu: return 3;
    case ErrorKind::kDamaged: return 4;
    case ErrorKind::kBusy: return 5;
    case ErrorKind::kNotRecoverable: return 6;
    case ErrorKind::kNotFound: return 7;
    case ErrorKind::kExists: return 8;
    case ErrorKind::kNotProtected: return 9;
  }
  return 1;
}

std::string suggest_command(const std::string& word) {
  std::string best;
  size_t best_distance = 3;  // farther than this is no suggestion
  for (const auto& c : commands()) {
    size_t d = edit_distance(word, c.name);
    if (std::string(c.name).rfind(word, 0) == 0 && !word.empty()) d = 1;
    if (d < best_distance) {
      best_distance = d;
      best = c.name;
    }
  }
  return best;
}

int run_cli(int argc, char** argv) {
  CLI::App app{"kvmcdp: agentless continuous data protection for KVM/QEMU disks"};
  app.name("kvmcdp");
  app.set_version_flag("--version", "kvmcdp " KVMCDP_VERSION);
  app.require_subcommand(1);
  app.fallthrough(false);

  std::vector<std::pair<CLI::App*, CommandRunner>> runners;
  for (const auto& c : commands()) {
    CLI::App* sub = app.add_subcommand(c.name, c.help);
    runners.emplace_back(sub, c.setup(sub));
  }

  // CLI11 would call an unknown word a stray argument; say what it is.
  if (argc > 1 && argv[1][0] != '-') {
    std::string word = argv[1];
    bool known = std::any_of(commands().begin(), commands().end(),
                             [&](const Command& c) { return word == c.name; });
    if (!known) {
      std::string hint = suggest_command(word);
      print_error(hint.empty()
                      ? fmt::format("unknown subcommand '{}' (see kvmcdp --help)", word)
                      : fmt::format("unknown subcommand '{}'; did you mean '{}'?", word, hint));
      return exit_code_for(ErrorKind::kUsage);
    }
  }

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    print_error(e.what());
    return exit_code_for(ErrorKind::kUsage);
  }

  for (auto& [sub, run] : runners) {
    if (!sub->parsed()) continue;
    Status status = run();
    if (status) return 0;
    print_error(status.message());
    return exit_code_for(status.kind());
  }
  return exit_code_for(ErrorKind::kUsage);
}

}  // namespace kvmcdp
