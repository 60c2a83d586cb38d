#!/usr/bin/env bash
# fstrim in a protected guest: the kit guest makes an ext2 file system on
# its data disk, writes files, deletes most of them and runs fstrim (the
# file system discards its free blocks), writes again and powers off.
# Capture stays exact: the disk restores to its MD5 at the end, and the
# discards reached the journal.
#
# Needs KVMCDP, KVMCDP_QEMU_PREFIX, KVMCDP_KIT (see tests/lib/guest.sh).
set -euo pipefail
# shellcheck source=SCRIPTDIR/../lib/guest.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/guest.sh"
: "${KVMCDP:?set KVMCDP to the kvmcdp binary}"
export KVMCDP_QEMU_IMG=$KVMCDP_QEMU_PREFIX/bin/qemu-img

kit_init
disk=$KIT_TMPDIR/disk.raw
store=$KIT_TMPDIR/store
tool_sock=$KIT_TMPDIR/tool.qmp
"$KVMCDP_QEMU_IMG" create -q -f raw "$disk" 64M

cat >"$KIT_TMPDIR/guest.sh" <<'GUEST'
set -e
mke2fs -q -b 4096 "$DATA_DEV"
mkdir -p /mnt/d
mount -t ext2 "$DATA_DEV" /mnt/d
i=0
while [ $i -lt 20 ]; do
    dd if=/dev/urandom of=/mnt/d/f$i bs=64k count=16 2>/dev/null
    i=$((i + 1))
done
sync
i=0
while [ $i -lt 16 ]; do rm /mnt/d/f$i; i=$((i + 1)); done
sync
fstrim -v /mnt/d
dd if=/dev/urandom of=/mnt/d/after bs=64k count=8 2>/dev/null
umount /mnt/d
echo FSTRIM-DONE
GUEST
kit_make_script_disk "$KIT_TMPDIR/guest.sh" "$KIT_TMPDIR/script.img"
kit_run_guest --script "$KIT_TMPDIR/script.img" -- -S \
    -qmp "unix:$tool_sock,server=on,wait=off" \
    -blockdev "driver=file,filename=$disk,node-name=d0-file,discard=unmap" \
    -blockdev "driver=raw,file=d0-file,node-name=d0,discard=unmap" \
    -device "virtio-blk-pci,drive=d0,id=vd0,serial=kvmcdp-data"
for _ in $(seq 100); do [[ -S $tool_sock ]] && break; sleep 0.1; done

kit_protect_start --qmp "$tool_sock" --drive vd0 --store "$store"
kit_protect_wait "base copy complete"
"$KVMCDP" qmp --qmp "$tool_sock" '{"execute":"cont"}' >/dev/null
kit_wait_poweroff 300 || { kit_dump_console; kit_fail "guest did not power off"; }
kit_console | grep -q FSTRIM-DONE || { kit_dump_console; kit_fail "the guest's script failed"; }
trimmed=$(kit_console | grep -o '[0-9]* bytes trimmed\|trimmed [0-9]* bytes\|([0-9]* bytes)' | head -1 || true)
echo "fstrim: guest says: ${trimmed:-?}"
# The VM is gone: protect ends by itself.
kit_protect_end
"$KVMCDP" journal verify --store "$store" >/dev/null || kit_fail "journal verify failed"
"$KVMCDP" journal dump --json --store "$store" >"$KIT_TMPDIR/dump.json" || kit_fail "journal dump failed"
echo "fstrim: records by type: $(jq -r .type "$KIT_TMPDIR/dump.json" | sort | uniq -c | tr '\n' ' ')"
discards=$(jq -r 'select(.type == "discard") | .length' "$KIT_TMPDIR/dump.json" | wc -l)
[[ $discards -gt 0 ]] || kit_fail "no discard reached the journal (fstrim did not trim?)"
"$KVMCDP" restore --quiet --force --store "$store" --latest -o "$KIT_TMPDIR/restored.raw" >/dev/null ||
    kit_fail "restore --latest failed"
[[ $(md5sum <"$KIT_TMPDIR/restored.raw") == $(md5sum <"$disk") ]] ||
    kit_fail "the restored disk differs from the guest's after fstrim"
echo "fstrim: $discards discard records; the restore matches"
