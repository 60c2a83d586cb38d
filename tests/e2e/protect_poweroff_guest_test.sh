#!/usr/bin/env bash
# A guest that powers itself off under `kvmcdp protect`: QEMU exits, and
# protect must close the journal and exit 0 saying the VM shut down (not
# fail, which would make a Restart=on-failure service loop), status must
# say so and `status --check` exit 9, and the journal's last point must
# be the disk as the guest left it.
# Needs KVMCDP, KVMCDP_QEMU_PREFIX, KVMCDP_KIT (see tests/lib/guest.sh).
set -euo pipefail
# shellcheck source=SCRIPTDIR/../lib/guest.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/guest.sh"
: "${KVMCDP:?set KVMCDP to the kvmcdp binary}"

kit_init
protect_pid=
trap '[[ -n $protect_pid ]] && kill -KILL "$protect_pid" 2>/dev/null; kit_cleanup' EXIT
disk=$KIT_TMPDIR/disk.raw
tool=$KIT_TMPDIR/tool.qmp
store=$KIT_TMPDIR/store
truncate -s 64M "$disk"

# Writes for a while, then ends: the kit guest powers off after its script.
cat >"$KIT_TMPDIR/guest.sh" <<'GUEST'
i=0
while [ $i -lt 60 ]; do
    dd if=/dev/urandom of="$DATA_DEV" bs=4k seek=$((RANDOM % 16000)) count=$((RANDOM % 64 + 1)) conv=notrunc 2>/dev/null
    [ $((i % 4)) -eq 0 ] && sync
    i=$((i + 1))
    sleep 0.05
done
sync
echo GUEST-DONE
GUEST
kit_make_script_disk "$KIT_TMPDIR/guest.sh" "$KIT_TMPDIR/script.img"
# Paused until the filter and the base copy are in place.
kit_run_guest --script "$KIT_TMPDIR/script.img" -- -S \
    -qmp "unix:$tool,server=on,wait=off" \
    -blockdev "driver=file,filename=$disk,node-name=d0-file" \
    -blockdev "driver=raw,file=d0-file,node-name=d0" \
    -device "virtio-blk-pci,drive=d0,id=vd0,serial=kvmcdp-data"
for _ in $(seq 100); do [[ -S $tool ]] && break; sleep 0.1; done

"$KVMCDP" protect --qmp "$tool" --drive vd0 --store "$store" >"$KIT_TMPDIR/protect.log" 2>&1 &
protect_pid=$!
for _ in $(seq 600); do
    grep -q "base copy complete" "$KIT_TMPDIR/protect.log" && break
    kill -0 "$protect_pid" 2>/dev/null || { cat "$KIT_TMPDIR/protect.log"; kit_fail "protect exited"; }
    sleep 0.1
done
"$KVMCDP" status --check --store "$store" >/dev/null || kit_fail "status --check: not protected while protect runs"
"$KVMCDP" qmp --qmp "$tool" '{"execute":"cont"}' >/dev/null

kit_wait_poweroff 600 || { kit_dump_console; kit_fail "guest did not power off"; }
grep -q GUEST-DONE "$KIT_CONSOLE_LOG" || { kit_dump_console; kit_fail "guest script did not finish"; }
rc=0
wait "$protect_pid" || rc=$?
protect_pid=
cat "$KIT_TMPDIR/protect.log"
[[ $rc == 0 ]] || kit_fail "protect exited $rc when the VM shut down"
grep -q "the VM shut down" "$KIT_TMPDIR/protect.log" || kit_fail "protect did not say the VM shut down"
if grep -q "error" "$KIT_TMPDIR/protect.log"; then kit_fail "protect printed an error"; fi

rc=0
"$KVMCDP" status --check --store "$store" >"$KIT_TMPDIR/status.txt" 2>&1 || rc=$?
cat "$KIT_TMPDIR/status.txt"
[[ $rc == 9 ]] || kit_fail "status --check exited $rc after the shutdown, not 9"
grep -q "protected:   no (the VM shut down at " "$KIT_TMPDIR/status.txt" ||
    kit_fail "status does not say the VM shut down"

"$KVMCDP" journal verify --store "$store" >/dev/null || kit_fail "journal verify failed"
"$KVMCDP" restore --quiet --store "$store" --latest -o "$KIT_TMPDIR/restored.raw" >/dev/null ||
    kit_fail "restore --latest failed"
[[ $(md5sum <"$KIT_TMPDIR/restored.raw") == $(md5sum <"$disk") ]] ||
    kit_fail "the last point differs from the disk the guest left"
echo "guest poweroff under protect: exit 0, status --check 9, last point exact"
