#!/usr/bin/env bash
# The patent's delete rules online, on the kit guest (TCG) that never stops
# writing and reading back its own data: after each delete the MD5 of every
# remaining frozen node's full image (its chain, converted by qemu-img) is
# unchanged; the deferred node (rule 3) is removed physically once it is
# down to one child; at the end qemu-img check passes on every file, the
# guest saw no I/O error and its own check passed.
# Needs KVMCDP, KVMCDP_QEMU_PREFIX, KVMCDP_KIT (see tests/lib/guest.sh).
set -euo pipefail
# shellcheck source=SCRIPTDIR/../lib/guest.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/guest.sh"
: "${KVMCDP:?set KVMCDP to the kvmcdp binary}"
export KVMCDP_QEMU_IMG=$KVMCDP_QEMU_PREFIX/bin/qemu-img
QEMU_IO=$KVMCDP_QEMU_PREFIX/bin/qemu-io

kit_init
T=$KIT_TMPDIR
tree=$T/tree
tool=$T/tool.qmp
K() { "$KVMCDP" "$@"; }
file_of() { # the image file of node $1
    local f
    f=$(jq -r --arg n "$1" '.nodes[] | select(.name==$n) | .file' "$tree/tree.json")
    [[ $f == /* ]] && echo "$f" || echo "$tree/$f"
}
node_md5() {
    "$KVMCDP_QEMU_IMG" convert -U -O raw "$(file_of "$1")" "$T/node.raw"
    md5sum "$T/node.raw" | cut -d' ' -f1
}
# "name md5" of every node but the active one, which the guest writes into.
frozen_md5() {
    local n
    for n in $(jq -r '.active as $a | .nodes[] | select(.name != $a) | .name' "$tree/tree.json" | sort); do
        echo "$n $(node_md5 "$n")"
    done
}
without() { grep -v "^$2 " <<<"$1" || true; }
delete() { # delete NODE: the command's output in $T/last.out
    K snapshot delete --tree "$tree" --qmp "$tool" "$1" >"$T/last.out" 2>&1 ||
        { cat "$T/last.out"; kit_fail "snapshot delete $1"; }
    cat "$T/last.out"
}
expect_out() { grep -q "$1" "$T/last.out" || kit_fail "expected '$1' in: $(cat "$T/last.out")"; }

# Offline: s1 (base.qcow2) <- s2 <- @n0002, then revert to s1: the VM runs
# on a new branch @n0003, so s1 has two children.
"$KVMCDP_QEMU_IMG" create -q -f qcow2 "$T/base.qcow2" 64M
"$QEMU_IO" -f qcow2 -c "write -P 1 0 8M" "$T/base.qcow2" >/dev/null
K snapshot create s1 --tree "$tree" --base "$T/base.qcow2" >/dev/null
"$QEMU_IO" -f qcow2 -c "write -P 2 4M 8M" "$(file_of "$(jq -r .active "$tree/tree.json")")" >/dev/null
K snapshot create s2 --tree "$tree" >/dev/null
"$QEMU_IO" -f qcow2 -c "write -P 3 6M 4M" "$(file_of "$(jq -r .active "$tree/tree.json")")" >/dev/null
K snapshot revert --tree "$tree" s1 >/dev/null
active=$(file_of "$(jq -r .active "$tree/tree.json")")

kit_checking_writer_script >"$T/guest.sh"
kit_make_stoppable_script_disk "$T/guest.sh" "$T/script.img"
kit_run_guest --script "$T/script.img" -- \
    -qmp "unix:$tool,server=on,wait=off" \
    -blockdev "driver=file,filename=$active,node-name=d0-file" \
    -blockdev "driver=qcow2,file=d0-file,node-name=d0" \
    -device "virtio-blk-pci,drive=d0,id=vd0,serial=kvmcdp-data"
for _ in $(seq 1200); do grep -q GUEST-PROGRESS "$KIT_CONSOLE_LOG" && break; sleep 0.1; done
grep -q GUEST-PROGRESS "$KIT_CONSOLE_LOG" || { kit_dump_console; kit_fail "guest did not start writing"; }

# Online snapshot: the branch the guest writes becomes b1.
K snapshot create b1 --tree "$tree" --qmp "$tool" --drive d0 | tee "$T/last.out"
expect_out "paused"

# Rule 3: s1 has two children (s2 and b1): logically deleted only.
before=$(frozen_md5)
delete s1
expect_out "logically deleted"
[[ $(jq -r '.nodes[] | select(.name=="s1") | .state' "$tree/tree.json") == deleted ]] || kit_fail "s1 state"
[[ $(frozen_md5) == "$before" ]] || kit_fail "rule 3 changed a node's data"

# Rule 1: the old branch's leaf goes, file and all.
leaf=$(jq -r '.nodes[] | select(.parent=="s2") | .name' "$tree/tree.json")
leaf_file=$(file_of "$leaf")
delete "$leaf"
expect_out "no child"
[[ ! -e $leaf_file ]] || kit_fail "rule 1 left $leaf_file"
[[ $(frozen_md5) == "$(without "$before" "$leaf")" ]] || kit_fail "rule 1 changed a node's data"

# s2 is a leaf now; deleting it leaves the deferred s1 with one child, b1,
# which is in the running chain: s1 is streamed into b1 and disappears.
before=$(frozen_md5)
delete s2
expect_out "logically deleted and has 1 child"
expect_out "streamed s1 into b1"
[[ -z $(jq -r '.nodes[] | select(.name=="s1") | .name' "$tree/tree.json") ]] || kit_fail "s1 still in the tree"
[[ $(frozen_md5) == "$(without "$(without "$before" s2)" s1)" ]] || kit_fail "the deferred merge changed b1"
[[ -e $T/base.qcow2 ]] || kit_fail "the imported root file was removed"

# Rule 2 on the running chain: b2 on top of b1, then b1 (one child) goes.
# No --drive: the top is now the node the first create added (the tree knows it).
K snapshot create b2 --tree "$tree" --qmp "$tool" >/dev/null
before=$(frozen_md5)
b1_file=$(file_of b1)
delete b1
expect_out "streamed b1 into b2"
[[ ! -e $b1_file ]] || kit_fail "rule 2 left $b1_file"
[[ $(frozen_md5) == "$(without "$before" b1)" ]] || kit_fail "rule 2 changed b2"

# The guest stops; every file checks, the guest saw no error.
kit_tell_guest_stop "$T/script.img"
kit_wait_poweroff 600 || { kit_dump_console; kit_fail "guest did not finish"; }
kit_script_output | grep GUEST-CHECK
[[ $(kit_script_rc) == 0 ]] || { kit_dump_console; kit_fail "the guest's own check failed"; }
if grep -qiE 'I/O error|blk_update_request|Buffer I/O' "$KIT_CONSOLE_LOG"; then
    kit_dump_console
    kit_fail "the guest saw I/O errors"
fi
for n in $(jq -r '.nodes[].name' "$tree/tree.json"); do
    "$KVMCDP_QEMU_IMG" check -q "$(file_of "$n")" || kit_fail "qemu-img check $n"
done
K snapshot check --tree "$tree" >/dev/null || kit_fail "snapshot check: $(K snapshot check --tree "$tree")"
[[ $(jq '.nodes | length' "$tree/tree.json") == 2 ]] || kit_fail "want b2 and the active disk left"
echo "snapshot delete rules online on a running guest: ok"
