#include "qemu/libvirt_domain.h"

#include <doctest/doctest.h>

namespace kvmcdp {

TEST_CASE("disk_source_in_xml: the disk of that target, its own source, entities decoded") {
  const std::string xml =
      "<domain><devices>"
      "<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
      "<source file='/vm/a&amp;b.raw'/><target dev='vdb' bus='virtio'/></disk>"
      "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
      "<source file='/vm/top.qcow2' index='2'/>"
      "<backingStore type='file' index='3'><source file='/vm/base.raw'/></backingStore>"
      "<target dev='vda' bus='virtio'/></disk>"
      "<disk type='network' device='disk'><source protocol='nbd'/>"
      "<target dev='vdc' bus='virtio'/></disk>"
      "</devices></domain>";
  CHECK(disk_source_in_xml(xml, "vda") == "/vm/top.qcow2");
  CHECK(disk_source_in_xml(xml, "vdb") == "/vm/a&b.raw");
  CHECK_FALSE(disk_source_in_xml(xml, "vdc"));  // not a file
  CHECK_FALSE(disk_source_in_xml(xml, "vd"));   // no prefix match
  CHECK_FALSE(disk_source_in_xml(xml, "sda"));
  CHECK(disk_format_in_xml(xml, "vda") == "qcow2");
  CHECK(disk_format_in_xml(xml, "vdb") == "raw");
}

}  // namespace kvmcdp
