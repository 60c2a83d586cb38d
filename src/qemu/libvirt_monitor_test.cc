#include "qemu/libvirt_monitor.h"

#include <doctest/doctest.h>

namespace kvmcdp {
namespace {

// As `virsh dumpxml` of a running domain prints it (trimmed).
const char* kDomain = R"(<domain type='qemu' id='1'>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw' cache='none'/>
      <source file='/var/lib/vm/a.raw' index='2'/>
      <target dev='vda' bus='virtio'/>
      <alias name='virtio-disk0'/>
    </disk>
    <disk type='file' device='disk'>
      <source file='/var/lib/vm/b.qcow2' index='1'/>
      <target dev='vdaa' bus='virtio'/>
      <alias name='ua-data'/>
    </disk>
    <disk type='file' device='cdrom'>
      <target dev='sda' bus='sata'/>
    </disk>
    <controller type='usb' index='0' model='none'>
      <alias name='usb'/>
    </controller>
  </devices>
</domain>)";

TEST_CASE("libvirt: a disk's target names its alias, exactly") {
  CHECK(disk_alias_in_xml(kDomain, "vda") == "virtio-disk0");
  CHECK(disk_alias_in_xml(kDomain, "vdaa") == "ua-data");  // not a prefix match of vda
  CHECK_FALSE(disk_alias_in_xml(kDomain, "vdb").has_value());
  CHECK_FALSE(disk_alias_in_xml(kDomain, "sda").has_value());  // no alias: not running
  CHECK_FALSE(disk_alias_in_xml(kDomain, "usb").has_value());  // not a disk
  CHECK_FALSE(disk_alias_in_xml("<domain><disk ", "vda").has_value());
}

TEST_CASE("libvirt: a snapshot repoints exactly the disk on the old file") {
  const std::string xml = R"(<domain type='qemu'>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw' cache='none'/>
      <source file='/vm/base.raw'/>
      <backingStore type='file'>
        <format type='raw'/>
        <source file='/vm/older.raw'/>
        <backingStore/>
      </backingStore>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='/vm/base.raw.other'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
  </devices>
</domain>)";
  auto out = repoint_disk_in_xml(xml, "/vm/base.raw", "/vm/tree/s1.qcow2", "qcow2");
  REQUIRE(out.has_value());
  CHECK(out->find("<source file='/vm/tree/s1.qcow2'/>") != std::string::npos);
  CHECK(out->find("<driver name='qemu' type='qcow2' cache='none'/>") != std::string::npos);
  CHECK(out->find("backingStore") == std::string::npos);
  CHECK(out->find("/vm/older.raw") == std::string::npos);
  // The other disk, whose file merely starts with the same path, is untouched.
  CHECK(out->find("<driver name='qemu' type='raw'/>\n      <source file='/vm/base.raw.other'/>") !=
        std::string::npos);
  CHECK_FALSE(repoint_disk_in_xml(xml, "/vm/none.raw", "/x", "qcow2").has_value());
  // Paths are matched as libvirt escapes them.
  auto q = repoint_disk_in_xml("<disk type='file'><source file='/a&apos;b'/></disk>", "/a'b",
                               "/c&d", "qcow2");
  REQUIRE(q.has_value());
  CHECK(*q == "<disk type='file'><source file='/c&amp;d'/></disk>");
}

}  // namespace
}  // namespace kvmcdp
