#!/usr/bin/env bash
# A libvirt-managed VM: a real libvirt daemon (started by the test, see
# tests/lib/libvirt.sh) runs the kit guest in a TCG domain whose
# <emulator> is the patched QEMU.  `kvmcdp protect --domain --connect
# --drive vda` drives that QEMU through libvirt while the guest writes;
# at moments the test suspends the domain and records the disk's MD5 and
# the filter's seq (`kvmcdp qmp --domain`), and `kvmcdp mark` names one.
# The guest powers off (protect ends with 0), the domain is started again
# and protected again into the same store, and the guest writes once more.
# Every moment of both runs, and the mark, must restore to exactly its MD5.
#
# Needs KVMCDP, KVMCDP_QEMU_PREFIX, KVMCDP_KIT (see tests/lib/guest.sh),
# libvirtd and virsh.
set -euo pipefail
# shellcheck source=SCRIPTDIR/../lib/guest.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/guest.sh"
# shellcheck source=SCRIPTDIR/../lib/libvirt.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/libvirt.sh"

qmp() { "$KVMCDP" qmp --domain kt --connect "$LV_URI" "$1"; }

lv_test_init
lv=$LV_DIR
disk=$lv/disk.raw
store=$KIT_TMPDIR/store
lv_writer_domain kt "$disk"
console=$lv/kt.console

seqs=() md5s=()
moment() {
    lv_virsh suspend kt >/dev/null
    seqs+=("$(qmp '{"execute":"query-cdp"}' | json_field '[0]["seq"]')")
    md5s+=("$(md5sum "$disk" | cut -d' ' -f1)")
    lv_virsh resume kt >/dev/null
}

# run N: boots the domain paused, protects it, takes moments while the
# guest writes; protect ends with 0 when the guest powers off.
run() {
    : >"$console" 2>/dev/null || true
    : >"$KIT_TMPDIR/protect.log"
    lv_virsh start --paused kt >/dev/null
    kit_protect_start --domain kt --connect "$LV_URI" --drive vda --store "$store"
    # The first run takes the base copy; the second continues the stream
    # and compares the disk with the journal first.
    if [[ $1 == 1 ]]; then kit_protect_wait "base copy complete"; else kit_protect_wait "resync done"; fi
    lv_virsh resume kt >/dev/null
    local n=0
    while [[ $n -lt 6 ]]; do
        sleep 0.$((RANDOM % 5 + 3))
        grep -q GUEST-DONE "$console" && break
        moment
        n=$((n + 1))
        if [[ $1 == 1 && $n == 3 ]]; then
            mark_seq=$("$KVMCDP" mark --store "$store" before-reboot) || kit_fail "mark failed"
        fi
    done
    lv_wait_poweroff kt
    kit_protect_end   # with 0 at the guest's power-off
    # After the power-off: the disk as it was left.
    seqs+=("$("$KVMCDP" status --store "$store" --json | json_field '["durable_seq"]')")
    md5s+=("$(md5sum "$disk" | cut -d' ' -f1)")
}

run 1
# libvirt's defaults stay on: an emulator built with seccomp (the
# production QEMU) runs in libvirt's sandbox, and capture works there.
if ldd "$KVMCDP_QEMU_PREFIX/bin/qemu-system-x86_64" | grep -q libseccomp; then
    grep -q -- '-sandbox on' "$lv/cache/libvirt/qemu/log/kt.log" ||
        kit_fail "libvirt did not run the domain with its seccomp sandbox"
fi
run 2
[[ ${#seqs[@]} -ge 8 ]] || kit_fail "only ${#seqs[@]} moments recorded"

kit_check_restores "$store"
out=$KIT_TMPDIR/restored.raw
# The mark restores to the disk at its seq.
"$KVMCDP" restore --quiet --force --store "$store" --mark before-reboot -o "$out" >/dev/null ||
    kit_fail "restore --mark failed"
"$KVMCDP" restore --quiet --force --store "$store" --seq "$mark_seq" -o "$KIT_TMPDIR/at-mark.raw" >/dev/null
cmp -s "$out" "$KIT_TMPDIR/at-mark.raw" || kit_fail "restore --mark differs from --seq $mark_seq"
echo "libvirt: ${#seqs[@]} moments over two boots, last seq ${seqs[-1]}: every restore matches"
