// Configuration files for the long-running commands (protect and serve, as
// systemd runs them): one KEY=VALUE a line, KEY one of the command's long
// options without the leading "--".  man/kvmcdp.conf.5 is the format.
#pragma once

#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "base/status.h"

namespace kvmcdp {

struct ConfigSetting {
  std::string key;
  std::string value;
  int line = 0;
};

// The settings in `text`, in file order.  `keys` are the names a setting
// may have; `flags` those of them that take true or false.  `file` and the
// line number start every error (kUsage), so that one line says where to
// look.
Result<std::vector<ConfigSetting>> parse_config(const std::string& text, const std::string& file,
                                                const std::vector<std::string>& keys,
                                                const std::vector<std::string>& flags);

// Adds `--config FILE` to the subcommand `app`; call it after every other
// option exists.  The file's settings fill the options the command line
// left unset, before CLI11 checks required options, needs and excludes, so
// a config file and a command line are checked alike.  Errors are
// CLI::ConfigError (exit 2).
void add_config_option(CLI::App* app);

}  // namespace kvmcdp
