#!/usr/bin/env bash
# What a sysadmin types to set up a service, without a VM: serve
# --secret-out writes the secret 0600 under umask 022 and never replaces a
# file; a config file with a wrong key stops protect and serve with exit 2
# and one line naming the line; serve runs from a good config file.
set -euo pipefail
: "${KVMCDP:?set KVMCDP to the kvmcdp binary}"
fail() { echo "FAIL: $*" >&2; exit 1; }

tmp=$(mktemp -d)
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
root=$tmp/root
mkdir -m 700 "$root"

# --secret-out under the usual umask: mode 600, the server's secret, nothing printed.
set +e
out=$(umask 022; "$KVMCDP" serve --store-root "$root" --new-store vm1 --secret-out "$tmp/vm1.secret" 2>&1)
rc=$?
set -e
[ "$rc" -eq 0 ] || fail "serve --secret-out exit $rc: $out"
[ -z "$out" ] || fail "serve --secret-out printed: $out"
[ "$(stat -c %a "$tmp/vm1.secret")" = 600 ] || fail "secret file mode $(stat -c %a "$tmp/vm1.secret")"
grep -qxE '[0-9a-f]{64}' "$tmp/vm1.secret" || fail "secret file content: $(cat "$tmp/vm1.secret")"
cmp -s "$tmp/vm1.secret" "$root/vm1/secret" || fail "the secret file differs from the store's"

# An existing file is refused (exit 8), left as it was, and no store is made.
echo "keep me" >"$tmp/taken"
set +e
err=$("$KVMCDP" serve --store-root "$root" --new-store vm2 --secret-out "$tmp/taken" 2>&1 >/dev/null)
rc=$?
set -e
[ "$rc" -eq 8 ] || fail "existing --secret-out: exit $rc, want 8 ($err)"
[ "$(wc -l <<<"$err")" -eq 1 ] && [[ $err == "kvmcdp: error: $tmp/taken exists already"* ]] ||
  fail "existing --secret-out: $err"
[ "$(cat "$tmp/taken")" = "keep me" ] || fail "existing --secret-out was modified"
[ ! -e "$root/vm2" ] || fail "a refused --secret-out left store vm2 behind"

# A misspelt key: exit 2, one line with the file and the line.
printf '# vm1\nqmp=/run/vm1.qmp\ndrive=virtio-disk0\nstroe=/var/lib/kvmcdp/vm1\n' >"$tmp/vm1.conf"
set +e
err=$("$KVMCDP" protect --config "$tmp/vm1.conf" 2>&1 >/dev/null)
rc=$?
set -e
[ "$rc" -eq 2 ] || fail "protect with a bad key: exit $rc, want 2 ($err)"
[ "$err" = "kvmcdp: error: $tmp/vm1.conf line 4: unknown setting 'stroe'; did you mean 'store'?" ] ||
  fail "protect with a bad key: $err"

printf 'listen=127.0.0.1:0\nstore-root=%s\nstore-root=/srv\n' "$root" >"$tmp/serve.conf"
set +e
err=$("$KVMCDP" serve --config "$tmp/serve.conf" 2>&1 >/dev/null)
rc=$?
set -e
[ "$rc" -eq 2 ] || fail "serve with a repeated key: exit $rc, want 2 ($err)"
[ "$err" = "kvmcdp: error: $tmp/serve.conf line 3: store-root is set again (first on line 2)" ] ||
  fail "serve with a repeated key: $err"

# A good one: serve runs from it until SIGTERM.
printf 'listen = 127.0.0.1:0\nstore-root = "%s"\n' "$root" >"$tmp/serve.conf"
"$KVMCDP" serve --config "$tmp/serve.conf" 2>"$tmp/serve.log" &
server_pid=$!
for _ in $(seq 200); do
  grep -q "serving stores under $root on 127.0.0.1:" "$tmp/serve.log" && break
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.1
done
grep -q "serving stores under $root on 127.0.0.1:" "$tmp/serve.log" ||
  fail "serve --config did not start: $(cat "$tmp/serve.log")"
kill -TERM "$server_pid"
set +e
wait "$server_pid"
rc=$?
set -e
server_pid=
[ "$rc" -eq 0 ] || fail "serve --config after SIGTERM: exit $rc"
echo "config cli: ok"
