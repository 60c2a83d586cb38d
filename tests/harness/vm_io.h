// Driving a paused test VM's disk the way a guest would: HMP's qemu-io on
// the virtio-blk device goes through the device's BlockBackend, hence
// through the cdp filter when one is attached.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "harness/qemu_process.h"

namespace kvmcdp::test {

// A paused VM (-S, no guest) with `disk` (raw) as virtio-blk device vd0 on
// node disk0; guest discards reach the disk.
std::unique_ptr<QemuProcess> start_vm(const TempDir& dir, const std::string& disk);
// The same without discard, with a second QMP monitor at `monitor` (for a
// kvmcdp command while protect holds the tool socket).
std::unique_ptr<QemuProcess> start_vm_with_monitor(const TempDir& dir, const std::string& disk,
                                                   const std::string& monitor);

// A small tmpfs (root needed), unmounted however the test ends.
struct SmallFs {
  std::string path;
  SmallFs(const std::string& where, const std::string& size);
  void grow(const std::string& size);
  ~SmallFs();
};

// Runs one qemu-io command on vd0; fails the test on an error.
void qemu_io(QemuProcess& vm, const std::string& cmd);

// The cdp filter's last assigned seq (exactly one filter expected).
uint64_t filter_seq(QemuProcess& vm);

// Waits until kvmcdp acknowledged everything the filter assigned.
void wait_acked(QemuProcess& vm);

// Restores `seq` from `store` into a file in `dir` (restore --seq) and
// checks that it has `md5`.
void check_restore(const TempDir& dir, const std::string& store, uint64_t seq,
                   const std::string& md5);
// Now, as ISO 8601 UTC with nanoseconds (what `restore --at` takes).
std::string iso_now();

}  // namespace kvmcdp::test
