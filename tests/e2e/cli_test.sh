#!/usr/bin/env bash
# The command line's contract: help lists the subcommands, a typo gets a
# suggestion and exit code 2, the man pages are well-formed.
set -euo pipefail
: "${KVMCDP:?set KVMCDP to the kvmcdp binary}"
: "${KVMCDP_SOURCE_DIR:?set KVMCDP_SOURCE_DIR}"
fail() { echo "FAIL: $*" >&2; exit 1; }

help=$("$KVMCDP" --help)
for sub in $(sed -n 's/^\.It Cm \([a-z-]*\).*/\1/p' "$KVMCDP_SOURCE_DIR/man/kvmcdp.1" | sort -u); do
  grep -qE "^  $sub( |$)" <<<"$help" || fail "--help does not list '$sub' (documented in man/kvmcdp.1)"
done
grep -q '^  qmp ' <<<"$help" || fail "--help lacks qmp"

"$KVMCDP" --version | grep -qE '^kvmcdp [0-9]+\.[0-9]+\.[0-9]+$' || fail "--version"

set +e
err=$("$KVMCDP" qpm 2>&1 >/dev/null); rc=$?
set -e
[ "$rc" -eq 2 ] || fail "unknown subcommand exit code $rc, want 2"
[ "$err" = "kvmcdp: error: unknown subcommand 'qpm'; did you mean 'qmp'?" ] || fail "got: $err"

set +e
err=$("$KVMCDP" qmp 2>&1 >/dev/null); rc=$?
set -e
[ "$rc" -eq 2 ] || fail "missing option exit code $rc, want 2"
[[ $err == "kvmcdp: error: "* ]] || fail "usage error not prefixed: $err"

set +e
err=$("$KVMCDP" qmp --qmp /nonexistent.sock '{"execute":"query-status"}' 2>&1 >/dev/null); rc=$?
set -e
[ "$rc" -eq 3 ] || fail "QEMU unreachable exit code $rc, want 3"
[ "$(wc -l <<<"$err")" -eq 1 ] || fail "want one error line, got: $err"

# --qmp or --domain, never both; --connect only with --domain; an
# unreachable libvirt is one error line and exit code 3.
for args in "--connect qemu:///system" "--qmp /x.sock --domain vm1" ""; do
  set +e
  # shellcheck disable=SC2086  # the words of $args are separate options
  err=$("$KVMCDP" qmp $args '{"execute":"query-status"}' 2>&1 >/dev/null); rc=$?
  set -e
  [ "$rc" -eq 2 ] || fail "qmp $args: exit code $rc, want 2 ($err)"
  [[ $err == "kvmcdp: error: "* ]] || fail "qmp $args: usage error not prefixed: $err"
done
set +e
err=$("$KVMCDP" qmp --domain vm1 --connect 'qemu+unix:///session?socket=/nonexistent/sock' \
  '{"execute":"query-status"}' 2>&1 >/dev/null); rc=$?
set -e
[ "$rc" -eq 3 ] || fail "libvirt unreachable: exit code $rc, want 3 ($err)"
[ "$(wc -l <<<"$err")" -eq 1 ] || fail "libvirt unreachable: want one error line, got: $err"

for page in "$KVMCDP_SOURCE_DIR"/man/*.[0-9]; do
  out=$(mandoc -Tlint -W warning "$page" 2>&1) || fail "mandoc lint $page: $out"
  man -l "$page" >/dev/null 2>&1 || fail "man -l $page"
done
echo "cli: ok"
