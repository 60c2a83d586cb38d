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
: "${KVMCDP:?set KVMCDP to the kvmcdp binary}"
export KVMCDP_QEMU_IMG=$KVMCDP_QEMU_PREFIX/bin/qemu-img
command -v libvirtd >/dev/null && command -v virsh >/dev/null ||
    kit_fail "libvirtd and virsh are needed (scripts/setup.sh installs them)"

json_field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
qmp() { "$KVMCDP" qmp --domain kt --connect "$LV_URI" "$1"; }

protect_pid=
# On every exit: libvirt's QEMU is no child of ours (no parent-death
# signal takes it along), so the domain must be destroyed whatever failed.
stop_all() {
    if [[ -n $protect_pid ]]; then
        kill -KILL "$protect_pid" 2>/dev/null || true
        wait "$protect_pid" 2>/dev/null || true
    fi
    protect_pid=
    lv_stop
    kit_cleanup
}

kit_init
trap stop_all EXIT
chmod 755 "$KIT_TMPDIR"
lv=$KIT_TMPDIR/lv
lv_start "$lv"
disk=$lv/disk.raw
store=$KIT_TMPDIR/store
truncate -s 64M "$disk"
cat >"$KIT_TMPDIR/guest.sh" <<'GUEST'
i=0
while [ $i -lt 100 ]; do
    dd if=/dev/urandom of="$DATA_DEV" bs=4k seek=$((RANDOM % 16000)) count=$((RANDOM % 64 + 1)) conv=notrunc 2>/dev/null
    [ $((i % 3)) -eq 0 ] && sync
    [ $((i % 5)) -eq 0 ] && dd if=/dev/zero of="$DATA_DEV" bs=64k seek=$((RANDOM % 1000)) count=4 conv=notrunc,fsync 2>/dev/null
    i=$((i + 1))
    sleep 0.1
done
sync
echo GUEST-DONE
GUEST
kit_make_script_disk "$KIT_TMPDIR/guest.sh" "$lv/script.img"
chown nobody:nogroup "$disk" "$lv/script.img"
cat >"$lv/kt.xml" <<EOF
<domain type='qemu'>
  <name>kt</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$KVMCDP_KIT/vmlinuz</kernel>
    <initrd>$KVMCDP_KIT/initramfs.img</initrd>
    <cmdline>$KIT_CMDLINE</cmdline>
  </os>
  <features><acpi/></features>
  <on_reboot>destroy</on_reboot>
  <devices>
    <emulator>$KVMCDP_QEMU_PREFIX/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw' cache='none'/>
      <source file='$disk'/>
      <target dev='vda' bus='virtio'/>
      <serial>$KIT_DATA_SERIAL</serial>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='$lv/script.img'/>
      <target dev='vdb' bus='virtio'/>
      <serial>$KIT_SCRIPT_SERIAL</serial>
      <readonly/>
    </disk>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
    <serial type='file'>
      <source path='$lv/console.log'/>
      <target port='0'/>
    </serial>
  </devices>
</domain>
EOF
lv_virsh define "$lv/kt.xml" >/dev/null

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
    : >"$lv/console.log" 2>/dev/null || true
    lv_virsh start --paused kt >/dev/null
    "$KVMCDP" protect --domain kt --connect "$LV_URI" --drive vda --store "$store" \
        >"$KIT_TMPDIR/protect-$1.log" 2>&1 &
    protect_pid=$!
    for _ in $(seq 600); do
        grep -q -e "base copy complete" -e "resync done" "$KIT_TMPDIR/protect-$1.log" && break
        kill -0 "$protect_pid" 2>/dev/null || { cat "$KIT_TMPDIR/protect-$1.log"; kit_fail "protect exited"; }
        sleep 0.1
    done
    # The first run takes the base copy; the second continues the stream
    # and compares the disk with the journal first.
    grep -q -e "base copy complete" -e "resync done" "$KIT_TMPDIR/protect-$1.log" ||
        { cat "$KIT_TMPDIR/protect-$1.log" >&2; kit_fail "protect did not start capturing"; }
    lv_virsh resume kt >/dev/null
    local n=0
    while [[ $n -lt 6 ]]; do
        sleep 0.$((RANDOM % 5 + 3))
        grep -q GUEST-DONE "$lv/console.log" && break
        moment
        n=$((n + 1))
        if [[ $1 == 1 && $n == 3 ]]; then
            mark_seq=$("$KVMCDP" mark --store "$store" before-reboot) || kit_fail "mark failed"
        fi
    done
    for _ in $(seq 1200); do grep -q GUEST-DONE "$lv/console.log" && break; sleep 0.1; done
    grep -q GUEST-DONE "$lv/console.log" || { cat "$lv/console.log" >&2; kit_fail "guest did not finish"; }
    for _ in $(seq 300); do
        [[ $(lv_virsh domstate kt) == "shut off" ]] && break
        sleep 0.1
    done
    [[ $(lv_virsh domstate kt) == "shut off" ]] || kit_fail "the guest did not power off"
    wait "$protect_pid" || { cat "$KIT_TMPDIR/protect-$1.log"; kit_fail "protect ($1) did not end with 0 at the guest's power-off"; }
    protect_pid=
    # After the power-off: the disk as it was left.
    seqs+=("$("$KVMCDP" status --store "$store" --json | json_field '["durable_seq"]')")
    md5s+=("$(md5sum "$disk" | cut -d' ' -f1)")
}

run 1
run 2
[[ ${#seqs[@]} -ge 8 ]] || kit_fail "only ${#seqs[@]} moments recorded"

"$KVMCDP" journal verify --store "$store" >/dev/null || kit_fail "journal verify failed"
out=$KIT_TMPDIR/restored.raw
for i in "${!seqs[@]}"; do
    "$KVMCDP" restore --quiet --force --store "$store" --seq "${seqs[$i]}" -o "$out" >/dev/null ||
        kit_fail "restore --seq ${seqs[$i]} failed"
    [[ $(md5sum "$out" | cut -d' ' -f1) == "${md5s[$i]}" ]] ||
        kit_fail "seq ${seqs[$i]}: restored MD5 differs from the disk's"
done
# The mark restores to the disk at its seq.
"$KVMCDP" restore --quiet --force --store "$store" --mark before-reboot -o "$out" >/dev/null ||
    kit_fail "restore --mark failed"
"$KVMCDP" restore --quiet --force --store "$store" --seq "$mark_seq" -o "$KIT_TMPDIR/at-mark.raw" >/dev/null
cmp -s "$out" "$KIT_TMPDIR/at-mark.raw" || kit_fail "restore --mark differs from --seq $mark_seq"
echo "libvirt: ${#seqs[@]} moments over two boots, last seq ${seqs[-1]}: every restore matches"
stop_all
