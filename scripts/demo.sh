#!/usr/bin/env bash
# The main job on a built-in default: set everything up, boot the kit guest
# under the patched QEMU with `kvmcdp protect` capturing its disk, let the
# guest write, then restore the disk as it was at an earlier second and
# show that its MD5 equals the MD5 the disk had at that second.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bash "$here/scripts/setup.sh"
# shellcheck source=/dev/null
source "$here/build/env.sh"
# shellcheck source=../tests/lib/guest.sh
source "$here/tests/lib/guest.sh"
export KVMCDP_QEMU_IMG=$KVMCDP_QEMU_PREFIX/bin/qemu-img

kit_init
protect_pid=
trap '[[ -n $protect_pid ]] && kill "$protect_pid" 2>/dev/null; kit_cleanup' EXIT
disk=$KIT_TMPDIR/disk.qcow2
store=$KIT_TMPDIR/store
tool=$KIT_TMPDIR/tool.qmp
qmp() { "$KVMCDP" qmp --qmp "$tool" "$1"; }
"$KVMCDP_QEMU_IMG" create -q -f qcow2 "$disk" 64M

# The guest writes 4 MiB in phase 1, waits, then overwrites it in phase 2.
cat >"$KIT_TMPDIR/guest.sh" <<'GUEST'
dd if=/dev/urandom of="$DATA_DEV" bs=1M count=4 conv=fsync 2>/dev/null
echo PHASE-1-DONE
sleep 3
dd if=/dev/urandom of="$DATA_DEV" bs=1M count=4 conv=fsync 2>/dev/null
echo PHASE-2-DONE
sleep 30
GUEST
kit_make_script_disk "$KIT_TMPDIR/guest.sh" "$KIT_TMPDIR/script.img"
kit_run_guest --script "$KIT_TMPDIR/script.img" -- -S \
    -qmp "unix:$tool,server=on,wait=off" \
    -blockdev "driver=file,filename=$disk,node-name=d0-file" \
    -blockdev "driver=qcow2,file=d0-file,node-name=d0" \
    -device "virtio-blk-pci,drive=d0,id=vd0,serial=kvmcdp-data"
for _ in $(seq 100); do [[ -S $tool ]] && break; sleep 0.1; done

echo "demo: kvmcdp protect --drive vd0 --store $store"
"$KVMCDP" protect --qmp "$tool" --drive vd0 --store "$store" &
protect_pid=$!
until "$KVMCDP" points --store "$store" --json 2>/dev/null | grep -q '"base_complete": true'; do
    kill -0 "$protect_pid" || { echo "demo: protect failed" >&2; exit 1; }
    sleep 0.2
done
qmp '{"execute":"cont"}' >/dev/null
echo "demo: guest booting (TCG) and writing..."
until grep -q PHASE-1-DONE "$KIT_CONSOLE_LOG"; do sleep 0.2; done

# The moment to come back to: the disk's MD5 while the VM is stopped.
qmp '{"execute":"stop"}' >/dev/null
moment=$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)
"$KVMCDP_QEMU_IMG" convert -U -O raw "$disk" "$KIT_TMPDIR/then.raw"
before=$(md5sum <"$KIT_TMPDIR/then.raw" | cut -d' ' -f1)
qmp '{"execute":"cont"}' >/dev/null
echo "demo: at $moment the disk's MD5 was $before"

until grep -q PHASE-2-DONE "$KIT_CONSOLE_LOG"; do sleep 0.2; done
"$KVMCDP" mark --store "$store" after-phase-2 >/dev/null
sleep 1
kill -TERM "$protect_pid"; wait "$protect_pid"; protect_pid=
echo
"$KVMCDP" status --store "$store"
echo
"$KVMCDP" points --store "$store"
echo
echo "demo: kvmcdp restore --at $moment"
"$KVMCDP" restore --store "$store" --at "$moment" -o "$KIT_TMPDIR/restored.raw" >/dev/null
after=$(md5sum <"$KIT_TMPDIR/restored.raw" | cut -d' ' -f1)
now=$("$KVMCDP_QEMU_IMG" convert -U -O raw "$disk" "$KIT_TMPDIR/now.raw" && md5sum <"$KIT_TMPDIR/now.raw" | cut -d' ' -f1)
echo "demo: MD5 of the disk at $moment:   $before"
echo "demo: MD5 of the disk restored to it: $after"
echo "demo: MD5 of the disk now (changed):  $now"
[[ $before == "$after" && $before != "$now" ]] || { echo "demo: MISMATCH" >&2; exit 1; }
echo "demo: MD5 before = MD5 after"
