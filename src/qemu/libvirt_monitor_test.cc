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

}  // namespace
}  // namespace kvmcdp
