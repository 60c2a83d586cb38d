#!/usr/bin/env bash
# libvirt's own disk operations on a protected drive: a real libvirtd
# (tests/lib/libvirt.sh) runs the kit guest on a qcow2 disk while `kvmcdp
# protect --domain` captures and the guest writes.  Then, one after the
# other, libvirt's operations on that disk, each with the outcome that
# man kvmcdp(1) (section "libvirt") documents:
#   - snapshot-create-as with memory, save and migrate: refused, since the
#     filter blocks migration (each would carry the VM to a QEMU without
#     the filter);
#   - snapshot-create-as --disk-only: done; the filter goes on above the
#     new overlay and capture goes on;
#   - blockcommit --active --pivot and blockcopy --pivot: refused by QEMU
#     (the disk's node is no longer a root: the filter is above it);
#   - protect stopped, an internal snapshot with memory made (the block
#     went with the filter), protect started again (the stream continues);
#   - loadvm of that snapshot (the HMP command through libvirt): refused
#     by the filter, so the disk does not change below it (QEMU leaves the
#     VM paused after a failed load; the test resumes it);
#   - snapshot-revert: libvirt starts a new QEMU with -loadvm, which
#     refuses while kvmcdp's persistent bitmap is on the disk: the domain
#     ends, and protect with it, with 0, the journal closed.
# After each step the test suspends the domain and records the filter's
# seq and the MD5 of the disk as the guest sees it (its chain, flattened);
# every such moment must restore exactly: no capture is silently lost.
#
# Needs KVMCDP, KVMCDP_QEMU_PREFIX, KVMCDP_KIT (see tests/lib/guest.sh),
# libvirtd and virsh.
set -euo pipefail
# shellcheck source=SCRIPTDIR/../lib/guest.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/guest.sh"
# shellcheck source=SCRIPTDIR/../lib/libvirt.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/libvirt.sh"

qmp() { "$KVMCDP" qmp --domain ko --connect "$LV_URI" "$1"; }

lv_test_init
lv=$LV_DIR
disk=$lv/disk.qcow2
store=$KIT_TMPDIR/store
"$KVMCDP_QEMU_IMG" create -q -f qcow2 "$disk" 64M
cat >"$KIT_TMPDIR/guest.sh" <<'GUEST'
echo GUEST-WRITING
i=0
while [ $i -lt 20000 ]; do
    dd if=/dev/urandom of="$DATA_DEV" bs=4k seek=$((RANDOM % 16000)) count=$((RANDOM % 16 + 1)) oflag=direct conv=notrunc 2>/dev/null
    i=$((i + 1))
    sleep 0.02
done
sync
echo GUEST-DONE
GUEST
kit_make_script_disk "$KIT_TMPDIR/guest.sh" "$lv/script.img"
chown nobody:nogroup "$disk" "$lv/script.img"
lv_kit_domain ko "$disk" qcow2 "$lv/script.img"
console=$lv/ko.console
lv_virsh start --paused ko >/dev/null
kit_protect_start --domain ko --connect "$LV_URI" --drive vda --store "$store"
kit_protect_wait "base copy complete"
lv_virsh resume ko >/dev/null
for _ in $(seq 300); do grep -q GUEST-WRITING "$console" && break; sleep 0.1; done
grep -q GUEST-WRITING "$console" || kit_fail "the guest did not start writing"

# The file the guest writes into now (libvirt's view).
current_source() { lv_virsh domblklist ko --details | awk '$3 == "vda" {print $4}'; }

seqs=() md5s=()
record() {  # record SEQ: the disk as the guest sees it is that seq's
    seqs+=("$1")
    "$KVMCDP_QEMU_IMG" convert -U -O raw "$(current_source)" "$KIT_TMPDIR/flat.raw"
    md5s+=("$(md5sum "$KIT_TMPDIR/flat.raw" | cut -d' ' -f1)")
}
moment() {
    lv_virsh suspend ko >/dev/null
    record "$(qmp '{"execute":"query-cdp"}' | json_field '[0]["seq"]')"
    lv_virsh resume ko >/dev/null
}
protect_runs() {
    kill -0 "$KIT_PROTECT_PID" 2>/dev/null ||
        { cat "$KIT_TMPDIR/protect.log" >&2; kit_fail "protect ended after: $1"; }
}
# op done|refused PATTERN VIRSH-ARGS...: runs a virsh command while the
# guest writes; it must succeed (done) or fail (refused) with PATTERN in
# its output (virsh -q prints nothing on success), the guest and protect must go on, and a moment follows.
op() {
    local want=$1 pattern=$2 rc=0
    shift 2
    sleep 1
    lv_virsh "$@" >"$KIT_TMPDIR/op.log" 2>&1 || rc=$?
    if [[ $want == done && $rc -ne 0 ]] || [[ $want == refused && $rc -eq 0 ]] ||
       { [[ -n $pattern ]] && ! grep -q -- "$pattern" "$KIT_TMPDIR/op.log"; }; then
        cat "$KIT_TMPDIR/op.log" >&2
        kit_fail "virsh $1: expected $want with '$pattern', got exit $rc"
    fi
    echo "virsh $1: $want ($(head -c 160 "$KIT_TMPDIR/op.log" | tr '\n' ' '))"
    sleep 1
    local state
    state=$(lv_virsh domstate ko)
    # A failed loadvm leaves the VM stopped (QEMU's HMP loadvm does).
    if [[ $state == paused && $1 == qemu-monitor-command ]]; then
        lv_virsh resume ko >/dev/null
        state=$(lv_virsh domstate ko)
    fi
    [[ $state == running ]] || kit_fail "the domain is $state after virsh $1"
    protect_runs "$1"
    moment
}

moment
op refused "captures this disk's writes" snapshot-create-as ko full1 --atomic
op refused "captures this disk's writes" save ko "$lv/saved.state"
op refused "captures this disk's writes" migrate --live --p2p ko "$LV_URI"
op done "" snapshot-create-as ko ext1 --disk-only --atomic --no-metadata \
    --diskspec "vda,file=$lv/ext1.qcow2" --diskspec vdb,snapshot=no
[[ $(current_source) == "$lv/ext1.qcow2" ]] || kit_fail "the disk is $(current_source), not ext1.qcow2"
op refused "Need a root block node" blockcommit ko vda --active --pivot --wait
op refused "Need a root block node" blockcopy ko vda "$lv/copy.qcow2" --wait --pivot \
    --transient-job --format qcow2

# Without the filter (protect stopped) the internal snapshot can be made;
# the next protect continues the stream, and the filter refuses to load it.
kill -TERM "$KIT_PROTECT_PID"
kit_protect_end
lv_virsh snapshot-create-as ko full1 --atomic >/dev/null || kit_fail "snapshot-create-as full1 without protect"
kit_protect_start --domain ko --connect "$LV_URI" --drive vda --store "$store"
kit_protect_wait "the filter resends"
moment
# HMP errors come back as the command's output, not as its exit status.
op done "cannot load snapshot 'full1' below the cdp filter" \
    qemu-monitor-command ko --hmp "loadvm full1"

# libvirt reverts a running snapshot by starting a new QEMU with -loadvm,
# which refuses: the domain ends, and protect with it (0, as at a
# power-off); the disk is as the journal's last point has it.
sleep 1
rc=0
lv_virsh snapshot-revert ko full1 --running >"$KIT_TMPDIR/op.log" 2>&1 || rc=$?
[[ $rc -ne 0 ]] && grep -q "Device has active dirty bitmaps" "$KIT_TMPDIR/op.log" ||
    { cat "$KIT_TMPDIR/op.log" >&2; kit_fail "virsh snapshot-revert: exit $rc"; }
echo "virsh snapshot-revert: refused ($(head -c 160 "$KIT_TMPDIR/op.log" | tr '\n' ' '))"
for _ in $(seq 100); do [[ $(lv_virsh domstate ko) == "shut off" ]] && break; sleep 0.1; done
[[ $(lv_virsh domstate ko) == "shut off" ]] || kit_fail "after the revert the domain is $(lv_virsh domstate ko)"
kit_protect_end
grep -q "the VM shut down" "$KIT_TMPDIR/protect.log" ||
    { cat "$KIT_TMPDIR/protect.log" >&2; kit_fail "protect did not say the VM ended"; }
record "$("$KVMCDP" status --store "$store" --json | json_field '["durable_seq"]')"

kit_check_restores "$store"
echo "libvirt operations: ${#seqs[@]} moments restore exactly"
