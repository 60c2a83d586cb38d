#!/usr/bin/env bash
# Snapshots of a libvirt-managed VM while it runs and is protected: a real
# libvirtd (tests/lib/libvirt.sh) runs the kit guest; `kvmcdp protect
# --domain` captures while `kvmcdp snapshot create --domain` makes two
# snapshots and `snapshot delete --domain` merges the first away, all with
# the guest writing.  The guest's last write lands after the snapshots.
# Then the guest powers off and the domain starts again: its definition
# must name the snapshot tree's current disk, so the guest must find its
# last write (on the old file it would not), and the journal's latest
# point must equal that disk.
#
# Needs KVMCDP, KVMCDP_QEMU_PREFIX, KVMCDP_KIT (see tests/lib/guest.sh),
# libvirtd and virsh.
set -euo pipefail
# shellcheck source=SCRIPTDIR/../lib/guest.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/guest.sh"
# shellcheck source=SCRIPTDIR/../lib/libvirt.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/libvirt.sh"

lv_test_init
lv=$LV_DIR
disk=$lv/disk.qcow2
tree=$lv/tree
store=$KIT_TMPDIR/store
"$KVMCDP_QEMU_IMG" create -q -f qcow2 "$disk" 64M
mkdir -p "$tree"
# Boot 1 writes until told to stop, then its last block (LAST-WRITE at
# block 200); boot 2 only reports whether that block is there.
cat >"$KIT_TMPDIR/guest.sh" <<'GUEST'
if dd if="$DATA_DEV" bs=4k skip=200 count=1 iflag=direct 2>/dev/null | grep -q LAST-WRITE; then
    echo GUEST-SEES-LAST-WRITE
    exit 0
fi
echo GUEST-WRITING
i=0
while [ $i -lt 3000 ]; do
    [ $((i % 10)) -eq 0 ] && dd if="$SCRIPT_DEV" bs=4k skip=256 count=1 iflag=direct 2>/dev/null | grep -q STOP && break
    dd if=/dev/urandom of="$DATA_DEV" bs=4k seek=$((RANDOM % 16000)) count=$((RANDOM % 16 + 1)) oflag=direct conv=notrunc 2>/dev/null
    i=$((i + 1))
    sleep 0.05
done
printf LAST-WRITE | dd of="$DATA_DEV" bs=4k seek=200 conv=notrunc,fsync 2>/dev/null
sync
echo GUEST-DONE
GUEST
kit_make_stoppable_script_disk "$KIT_TMPDIR/guest.sh" "$lv/script.img"
chown nobody:nogroup "$disk" "$lv/script.img" "$tree"
lv_kit_domain ks "$disk" qcow2 "$lv/script.img"
console=$lv/ks.console
lv_virsh start --paused ks >/dev/null
kit_protect_start --domain ks --connect "$LV_URI" --drive vda --store "$store"
kit_protect_wait "base copy complete"
lv_virsh resume ks >/dev/null
for _ in $(seq 300); do grep -q GUEST-WRITING "$console" && break; sleep 0.1; done
grep -q GUEST-WRITING "$console" || kit_fail "the guest did not start writing"

snap() { "$KVMCDP" snapshot "$@" --tree "$tree" --domain ks --connect "$LV_URI"; }
sleep 1
snap create s1 --drive vda >"$KIT_TMPDIR/snap.log" || { cat "$KIT_TMPDIR/snap.log"; kit_fail "snapshot create s1"; }
sleep 1
snap create s2 >>"$KIT_TMPDIR/snap.log" || { cat "$KIT_TMPDIR/snap.log"; kit_fail "snapshot create s2"; }
sleep 1
snap delete s1 >>"$KIT_TMPDIR/snap.log" || { cat "$KIT_TMPDIR/snap.log"; kit_fail "snapshot delete s1"; }
sleep 1
kit_tell_guest_stop "$lv/script.img"
for _ in $(seq 600); do grep -q GUEST-DONE "$console" && break; sleep 0.1; done
grep -q GUEST-DONE "$console" || { cat "$console" >&2; kit_fail "guest did not finish"; }
for _ in $(seq 300); do [[ $(lv_virsh domstate ks) == "shut off" ]] && break; sleep 0.1; done
[[ $(lv_virsh domstate ks) == "shut off" ]] || kit_fail "the guest did not power off"
kit_protect_end   # with 0 at the guest's power-off

# The definition names the tree's current disk.
active=$("$KVMCDP" snapshot list --tree "$tree" --json |
    python3 -c 'import json,sys; print([n["file"] for n in json.load(sys.stdin) if n["active"]][0])')
[[ $active == /* ]] || active=$tree/$active
lv_virsh dumpxml --inactive ks | grep -q "<source file='$active'/>" ||
    { lv_virsh dumpxml --inactive ks >&2; kit_fail "the domain's definition does not name $active"; }

# The journal's latest point is that disk, flattened.
"$KVMCDP_QEMU_IMG" convert -O raw "$active" "$KIT_TMPDIR/flat.raw"
"$KVMCDP" restore --quiet --store "$store" --latest -o "$KIT_TMPDIR/latest.raw" >/dev/null
cmp -s "$KIT_TMPDIR/flat.raw" "$KIT_TMPDIR/latest.raw" ||
    kit_fail "the journal's latest point differs from the disk after the snapshots"

# A new start boots the current disk: the guest finds its last write.
: >"$console"
lv_virsh start ks >/dev/null
for _ in $(seq 300); do
    [[ $(lv_virsh domstate ks) == "shut off" ]] && break
    sleep 0.1
done
grep -q GUEST-SEES-LAST-WRITE "$console" ||
    { cat "$console" >&2; kit_fail "after the restart the guest does not see its last write"; }
echo "libvirt snapshots: create, create, delete while protected; the restart boots $active"
