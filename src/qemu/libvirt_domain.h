// A libvirt domain that is not running, as `recover --domain` needs it:
// the file its disk reads, and starting it.  (A running domain's QEMU is
// reached through libvirt_monitor.h.)
#pragma once

#include <optional>
#include <string>

#include "base/status.h"

namespace kvmcdp {

// The <disk ...> ... </disk> element (without its end tag) whose
// <target dev='...'/> is `target`, in a domain XML as libvirt writes it.
std::optional<std::string> disk_element_in_xml(const std::string& xml, const std::string& target);

// The <source file='...'/> of the <disk> whose <target dev='...'/> is
// `target`, in a domain XML as libvirt writes it (entities decoded).
std::optional<std::string> disk_source_in_xml(const std::string& xml, const std::string& target);

// The file the disk `target` of the defined, shut-off domain reads, and
// its format (status kBusy if the domain runs, kNotFound without such a
// disk).
struct DomainDisk {
  std::string file, format;
};
// The <driver type='...'/> of that disk ("raw" if it names none).
std::string disk_format_in_xml(const std::string& xml, const std::string& target);
Result<DomainDisk> libvirt_stopped_disk_source(const std::string& uri, const std::string& domain,
                                                const std::string& target);

// Starts the defined domain.
Status libvirt_start_domain(const std::string& uri, const std::string& domain);

}  // namespace kvmcdp
