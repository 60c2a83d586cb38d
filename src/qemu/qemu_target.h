// Where a command finds the QEMU it talks to: a QMP unix socket that the
// user owns (--qmp), or a libvirt domain whose monitor libvirt owns
// (--domain NAME [--connect URI]), reached through libvirt's API.
#pragma once

#include <string>

namespace kvmcdp {

struct QemuTarget {
  std::string socket;  // --qmp
  std::string domain;  // --domain
  std::string uri;     // --connect; empty: libvirt's default URI

  bool is_libvirt() const { return !domain.empty(); }
};

}  // namespace kvmcdp
