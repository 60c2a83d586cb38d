#!/usr/bin/env bash
# The snapshot tree with the VM stopped: create, list, tree, check, the three
# delete rules (MD5 of every remaining node's full image unchanged,
# qemu-img check clean), the deferred merge, revert, merge, the lock's busy
# code, and kill -9 at every step of a merge followed by repair.
set -euo pipefail
: "${KVMCDP:?set KVMCDP to the kvmcdp binary}"
fail() { echo "FAIL: $*" >&2; exit 1; }

if [ -n "${KVMCDP_QEMU_PREFIX:-}" ] && [ -x "$KVMCDP_QEMU_PREFIX/bin/qemu-img" ]; then
  QEMU_IMG=$KVMCDP_QEMU_PREFIX/bin/qemu-img
else
  QEMU_IMG=$(command -v qemu-img) || fail "no qemu-img"
fi
QEMU_IO=$(dirname "$QEMU_IMG")/qemu-io
export KVMCDP_QEMU_IMG=$QEMU_IMG
T=$(mktemp -d /tmp/kvmcdp-snap-XXXXXX)
trap 'rm -rf "$T"' EXIT
K() { "$KVMCDP" "$@"; }
write() { "$QEMU_IO" -f qcow2 -c "write -P $2 $3 $4" "$1" >/dev/null; }
# MD5 of the full image a node presents (its whole chain, as raw).
node_md5() {
  local f; f=$(jq -r --arg n "$1" '.nodes[] | select(.name==$n) | .file' "$T/t/tree.json")
  [[ $f == /* ]] || f=$T/t/$f
  "$QEMU_IMG" convert -U -O raw "$f" "$T/out.raw"
  md5sum "$T/out.raw" | cut -d' ' -f1
}
all_md5() { for n in $(jq -r '.nodes[].name' "$T/t/tree.json" | sort); do echo "$n $(node_md5 "$n")"; done; }
check_files() {
  for f in "$T"/t/n*.qcow2; do "$QEMU_IMG" check -q "$f" || fail "qemu-img check $f"; done
  K snapshot check --tree "$T/t" >/dev/null || fail "snapshot check: $(K snapshot check --tree "$T/t")"
}
expect_rc() { local want=$1; shift; set +e; "$@" >"$T/last.out" 2>&1; local rc=$?; set -e
  [ "$rc" -eq "$want" ] || fail "$* exited $rc, want $want: $(cat "$T/last.out")"; }

# base <- s1 <- s2 <- @active, with data in every layer.
"$QEMU_IMG" create -q -f qcow2 "$T/base.qcow2" 8M
write "$T/base.qcow2" 1 0 2M
K snapshot create s1 --tree "$T/t" --base "$T/base.qcow2" >/dev/null
active() { echo "$T/t/$(jq -r '.active as $a | .nodes[] | select(.name==$a) | .file' "$T/t/tree.json")"; }
write "$(active)" 2 1M 2M
K snapshot create s2 --tree "$T/t" >/dev/null
write "$(active)" 3 2M 2M
K snapshot create s3 --tree "$T/t" >/dev/null
write "$(active)" 4 3M 1M
check_files
K snapshot tree --tree "$T/t" | grep -q '^s1 ' || fail "tree root"
[ "$(K snapshot list --tree "$T/t" --json | jq length)" -eq 4 ] || fail "list --json"
# Each line says what the node is to the disk, in words true without a VM.
listed=$(K snapshot list --tree "$T/t")
grep -E '^@' <<<"$listed" | grep -qF '(current disk: new writes go here)' || fail "list: $listed"
grep -E '^s1 ' <<<"$listed" | grep -qF '(in use: the current disk reads through it)' ||
  fail "list: $listed"

# The active disk cannot be deleted; an unknown name is "not found".
expect_rc 1 K snapshot delete --tree "$T/t" "$(jq -r .active "$T/t/tree.json")"
grep -q "writes into" "$T/last.out" || fail "no clear error: $(cat "$T/last.out")"
expect_rc 7 K snapshot delete --tree "$T/t" nosuch

# Branch from s2: s2 now has two children.
K snapshot revert --tree "$T/t" s2 >/dev/null
write "$(active)" 5 5M 1M
K snapshot create b1 --tree "$T/t" >/dev/null
before=$(all_md5)

# Rule 3: s2 has two children -> logically deleted only.
K snapshot delete --tree "$T/t" s2 | grep -q "logically deleted" || fail "rule 3"
[ "$(jq -r '.nodes[] | select(.name=="s2") | .state' "$T/t/tree.json")" = deleted ] || fail "s2 state"
K snapshot tree --tree "$T/t" | grep -q 's2' && fail "tree shows a deleted node without --all"
K snapshot tree --tree "$T/t" --all | grep -q 's2 .*\[deleted\]' || fail "tree --all"
[ "$(all_md5)" = "$before" ] || fail "rule 3 changed data"

# Rule 1: the old branch's leaf (no child) -> file removed; then s3 is a
# leaf too.  Deleting s3's subtree leaves s2 with one child -> merged.
old_leaf=$(jq -r '.nodes[] | select(.parent=="s3") | .name' "$T/t/tree.json")
old_file=$(jq -r --arg n "$old_leaf" '.nodes[] | select(.name==$n) | .file' "$T/t/tree.json")
K snapshot delete --tree "$T/t" "$old_leaf" | grep -q "no child" || fail "rule 1"
[ ! -e "$T/t/$old_file" ] || fail "rule 1 left the file"
before=$(all_md5)
s2_file=$(jq -r '.nodes[] | select(.name=="s2") | .file' "$T/t/tree.json")
out=$(K snapshot delete --tree "$T/t" s3)
grep -q "logically deleted and has 1 child" <<<"$out" || fail "deferred merge: $out"
[ ! -e "$T/t/$s2_file" ] || fail "deferred node's file still there"
jq -e '.nodes[] | select(.name=="s2")' "$T/t/tree.json" >/dev/null && fail "s2 still in metadata"
after=$(all_md5)
[ "$(grep -v '^s3 ' <<<"$before" | grep -v '^s2 ')" = "$after" ] || fail "rule 1/deferred changed data: $before / $after"
check_files

# Rule 2 explicitly: merge b1 into its only child (the active disk).
before=$(all_md5)
K merge --tree "$T/t" b1 | grep -q "merged b1 into" || fail "merge"
[ "$(grep -v '^b1 ' <<<"$before")" = "$(all_md5)" ] || fail "merge changed data"
check_files

# The root (outside the tree dir) merged into its only child: the child
# becomes standalone, the user's base file stays.
before=$(all_md5)
K snapshot delete --tree "$T/t" s1 | grep -q "now the root" || fail "root merge"
[ -e "$T/base.qcow2" ] || fail "imported root file removed"
[ "$(grep -v '^s1 ' <<<"$before")" = "$(all_md5)" ] || fail "root merge changed data"
check_files

# The lock: busy without --wait (exit 5), queued with it.
flock "$T/t/lock" sleep 2 &
sleep 0.3
expect_rc 5 K snapshot repair --tree "$T/t"
K snapshot repair --tree "$T/t" --wait >/dev/null || fail "--wait"
wait

# kill -9 after every step of a merge, then repair: consistent, data intact.
for step in 1 2 3 4; do
  K snapshot create "k$step" --tree "$T/t" >/dev/null
  write "$(active)" "$((10 + step))" "$((step))M" 512K
  before=$(all_md5)
  expect_rc 9 env KVMCDP_CRASH_AT_STEP="merge:$step" "$KVMCDP" snapshot delete --tree "$T/t" "k$step"
  jq -e '.intent != null' "$T/t/tree.json" >/dev/null || fail "no intent after crash at $step"
  K snapshot repair --tree "$T/t" | grep -q "repair:" || fail "repair at $step"
  jq -e '.intent == null' "$T/t/tree.json" >/dev/null || fail "intent left at $step"
  check_files
  after=$(all_md5)
  [ "$(grep -v "^k$step " <<<"$before")" = "$(grep -v "^k$step " <<<"$after")" ] || fail "crash at $step changed data"
  # Finished or rolled back: delete again to end clean.
  if jq -e --arg n "k$step" '.nodes[] | select(.name==$n)' "$T/t/tree.json" >/dev/null; then
    K snapshot delete --tree "$T/t" "k$step" >/dev/null
  fi
  check_files
done

# kill -9 at every step of create, then the next command repairs.
for step in 1 2 3; do
  expect_rc 9 env KVMCDP_CRASH_AT_STEP="create:$step" "$KVMCDP" snapshot create "c$step" --tree "$T/t"
  K snapshot list --tree "$T/t" >/dev/null
  K snapshot repair --tree "$T/t" >/dev/null
  jq -e '.intent == null' "$T/t/tree.json" >/dev/null || fail "create intent left at $step"
  check_files
done
echo "snapshot offline: ok"
