// --qmp SOCKET | --domain NAME [--connect URI]: how a command reaches the
// QEMU of a VM (qemu/qemu_target.h), the same flags for every command.
#pragma once

#include <string>

#include <CLI/CLI.hpp>

namespace kvmcdp {

// Adds --qmp (unless `qmp_help` is empty), --domain and --connect, which
// needs --domain and excludes --qmp.
void add_qemu_target_options(CLI::App* app, std::string* socket, std::string* domain,
                             std::string* uri, const std::string& qmp_help,
                             const std::string& domain_help);

}  // namespace kvmcdp
