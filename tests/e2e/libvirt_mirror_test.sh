#!/usr/bin/env bash
# Mirror capture of a libvirt-managed VM on Debian's stock QEMU: a real
# libvirt daemon (tests/lib/libvirt.sh) runs the kit guest in a TCG domain
# whose <emulator> is /usr/bin/qemu-system-x86_64 (no cdp filter), as a
# distribution's libvirt host does.  `kvmcdp protect --domain` chooses the
# active mirror by itself and drives it through libvirt (getfd and the
# job's QMP commands pass libvirt's monitor) while the guest writes; at
# moments the test suspends the domain and records the time and the
# disk's MD5, and `kvmcdp mark` names one.  The guest powers off (protect
# ends with 0), the domain starts again (a new QEMU: the raw disk's bitmap
# is gone, so the disk is resent and compared with the journal) and is
# protected again into the same store.  Every moment of both runs, and
# the mark, must restore to exactly its MD5.
#
# Needs KVMCDP, KVMCDP_KIT (see tests/lib/guest.sh), libvirtd, virsh and
# Debian's qemu-system-x86 (/usr/bin/qemu-system-x86_64).
set -euo pipefail
# shellcheck source=SCRIPTDIR/../lib/guest.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/guest.sh"
# shellcheck source=SCRIPTDIR/../lib/libvirt.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/libvirt.sh"

# The stock QEMU for the guest and the domain's <emulator>.
KVMCDP_QEMU_LINE=7.2 kit_mirror_qemu
lv_test_init
lv=$LV_DIR
disk=$lv/disk.raw
store=$KIT_TMPDIR/store
lv_writer_domain kt "$disk"
console=$lv/kt.console

times=() md5s=()
moment() {
    lv_virsh suspend kt >/dev/null
    times+=("$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)")
    md5s+=("$(md5sum "$disk" | cut -d' ' -f1)")
    lv_virsh resume kt >/dev/null
}

run() {
    : >"$console" 2>/dev/null || true
    : >"$KIT_TMPDIR/protect.log"
    lv_virsh start --paused kt >/dev/null
    kit_protect_start --domain kt --connect "$LV_URI" --drive vda --store "$store"
    if [[ $1 == 1 ]]; then kit_protect_wait "base copy complete"; else kit_protect_wait "resync done"; fi
    grep -q "^kvmcdp: capture: active mirror (this QEMU has no cdp filter)" "$KIT_TMPDIR/protect.log" ||
        kit_fail "protect did not choose the mirror: $(cat "$KIT_TMPDIR/protect.log")"
    lv_virsh resume kt >/dev/null
    local n=0
    while [[ $n -lt 5 ]]; do
        sleep 0.$((RANDOM % 5 + 3))
        grep -q GUEST-DONE "$console" && break
        moment
        n=$((n + 1))
        if [[ $1 == 1 && $n == 3 ]]; then
            # A mark of the suspended VM: the disk then is its point.
            lv_virsh suspend kt >/dev/null
            "$KVMCDP" mark --store "$store" before-reboot >/dev/null || kit_fail "mark failed"
            mark_md5=$(md5sum "$disk" | cut -d' ' -f1)
            lv_virsh resume kt >/dev/null
        fi
    done
    lv_wait_poweroff kt
    kit_protect_end   # with 0 at the guest's power-off
    grep -q "the VM shut down" "$KIT_TMPDIR/protect.log" ||
        kit_fail "protect did not say the VM shut down: $(cat "$KIT_TMPDIR/protect.log")"
}

mark_md5=
run 1
run 2
[[ ${#times[@]} -ge 6 ]] || kit_fail "only ${#times[@]} moments recorded"
grep -q "comparing the disk with the journal's latest image" "$KIT_TMPDIR/protect.log" ||
    kit_fail "the second run did not compare the resent disk: $(cat "$KIT_TMPDIR/protect.log")"
kit_check_restores_at "$store"
[[ -n $mark_md5 ]] || kit_fail "no mark was made"
"$KVMCDP" restore --quiet --force --store "$store" --mark before-reboot -o "$KIT_TMPDIR/m.raw" >/dev/null ||
    kit_fail "restore --mark failed"
[[ $(md5sum "$KIT_TMPDIR/m.raw" | cut -d' ' -f1) == "$mark_md5" ]] ||
    kit_fail "the mark restores to another disk than the suspended VM's"
echo "libvirt, stock QEMU, mirror capture: ${#times[@]} moments over two boots: every restore matches"
