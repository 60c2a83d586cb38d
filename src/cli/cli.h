// The command line: one table of subcommands (cli.cc), one place where a
// failed Status becomes "kvmcdp: error: ..." and an exit code.
#pragma once

#include <functional>
#include <string>

#include <CLI/CLI.hpp>

#include "base/status.h"

namespace kvmcdp {

// A subcommand adds its options to `app` and returns the function that runs
// it once the command line is parsed.
using CommandRunner = std::function<Status()>;
using CommandSetup = std::function<CommandRunner(CLI::App* app)>;

struct Command {
  const char* name;
  const char* help;
  CommandSetup setup;
};

// Exit codes scripts may rely on (man/kvmcdp.1, EXIT STATUS).
int exit_code_for(ErrorKind kind);

// The closest subcommand name to `word`, or "" if none is close.
std::string suggest_command(const std::string& word);

int run_cli(int argc, char** argv);

// One per subcommand file (cmd_*.cc).
CommandRunner setup_qmp_command(CLI::App* app);
CommandRunner setup_protect_command(CLI::App* app);
CommandRunner setup_status_command(CLI::App* app);
CommandRunner setup_points_command(CLI::App* app);
CommandRunner setup_mark_command(CLI::App* app);
CommandRunner setup_restore_command(CLI::App* app);
CommandRunner setup_export_command(CLI::App* app);
CommandRunner setup_mount_command(CLI::App* app);
CommandRunner setup_umount_command(CLI::App* app);
CommandRunner setup_recover_command(CLI::App* app);
CommandRunner setup_journal_command(CLI::App* app);
CommandRunner setup_snapshot_command(CLI::App* app);
CommandRunner setup_merge_command(CLI::App* app);
CommandRunner setup_build_command(CLI::App* app);
CommandRunner setup_prune_command(CLI::App* app);
CommandRunner setup_serve_command(CLI::App* app);

}  // namespace kvmcdp
