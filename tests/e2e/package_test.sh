#!/usr/bin/env bash
# QEMU lines: 10.0
# The packages a host installs: scripts/package.sh builds kvmcdp_*.deb and
# kvmcdp-qemu_*.deb, `apt-get install ./kvmcdp_*.deb ./kvmcdp-qemu_*.deb`
# (the README's command) installs them on this machine, and then:
#   - kvmcdp-qemu puts nothing outside /opt/kvmcdp/qemu-<version>/ (and its
#     doc directory), so the distribution's QEMU is left alone;
#   - its QEMU has what libvirt's defaults use: the seccomp sandbox,
#     io_uring, VNC;
#   - the libvirt test (tests/e2e/libvirt_guest_test.sh) passes with the
#     installed /usr/bin/kvmcdp and the installed emulator as <emulator>
#     (libvirt runs it with its seccomp sandbox on; that test checks it).
# Both packages are purged when the test ends, however it ends.  It refuses
# to run where either is installed already: it would remove them.
#
# Needs root, KVMCDP (in its CMake build directory), KVMCDP_QEMU_PREFIX (the
# 10.0 line: the production QEMU), KVMCDP_SOURCE_DIR.
set -euo pipefail
: "${KVMCDP:?set KVMCDP to the kvmcdp binary}"
: "${KVMCDP_QEMU_PREFIX:?set KVMCDP_QEMU_PREFIX}"
: "${KVMCDP_SOURCE_DIR:?set KVMCDP_SOURCE_DIR}"
fail() { echo "FAIL: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || fail "installing packages needs root"
for p in kvmcdp kvmcdp-qemu; do
  if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q installed; then
    fail "$p is installed on this machine already; this test installs and purges it"
  fi
done

tmp=$(mktemp -d)
installed=0
cleanup() {
  if [ "$installed" = 1 ]; then
    dpkg --purge kvmcdp kvmcdp-qemu >"$tmp/purge.log" 2>&1 ||
      { cat "$tmp/purge.log" >&2; echo "FAIL: dpkg --purge" >&2; }
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
chmod 755 "$tmp"

# 1. Build both.
KVMCDP_BUILD_DIR=$(dirname "$KVMCDP") bash "$KVMCDP_SOURCE_DIR/scripts/package.sh" "$tmp/debs" \
  >"$tmp/package.log" 2>&1 || { cat "$tmp/package.log" >&2; fail "scripts/package.sh"; }
debs=("$tmp"/debs/kvmcdp_*.deb "$tmp"/debs/kvmcdp-qemu_*.deb)
for d in "${debs[@]}"; do [ -f "$d" ] || fail "no $d"; done
dpkg-deb -f "$tmp"/debs/kvmcdp_*.deb Depends | grep -q 'libvirt0' ||
  fail "kvmcdp's Depends lacks its libraries: $(dpkg-deb -f "$tmp"/debs/kvmcdp_*.deb Depends)"
for lib in libseccomp2 liburing2 libspice-server1 librbd1; do
  dpkg-deb -f "$tmp"/debs/kvmcdp-qemu_*.deb Depends | grep -q "$lib" ||
    fail "kvmcdp-qemu's Depends lacks $lib"
done

# 2. Install them as the README says.
installed=1
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
  "${debs[@]}" >"$tmp/apt.log" 2>&1 || { cat "$tmp/apt.log" >&2; fail "apt-get install"; }

# 3. kvmcdp-qemu stays in its own directory.
qemu_dir=$(dpkg -L kvmcdp-qemu | grep -m1 -E '^/opt/kvmcdp/qemu-[0-9][0-9.]*$') ||
  fail "kvmcdp-qemu has no /opt/kvmcdp/qemu-<version>"
outside=$(dpkg -L kvmcdp-qemu | grep -v -e "^$qemu_dir" -e '^/usr/share/doc/kvmcdp-qemu' \
  -e '^/opt/kvmcdp$' -e '^/opt$' -e '^/usr/share/doc$' -e '^/usr/share$' -e '^/usr$' -e '^/\.$' || true)
[ -z "$outside" ] || fail "kvmcdp-qemu installs outside $qemu_dir: $outside"
emulator=$qemu_dir/bin/qemu-system-x86_64
[ -x "$emulator" ] || fail "no $emulator"
[ "$(command -v kvmcdp)" = /usr/bin/kvmcdp ] || fail "kvmcdp is not /usr/bin/kvmcdp"
kvmcdp --version | grep -qE '^kvmcdp [0-9]+\.' || fail "kvmcdp --version"
man -w kvmcdp >/dev/null 2>&1 || fail "man kvmcdp: not found"
grep -qx 'ExecStart=/usr/bin/kvmcdp protect --config /etc/kvmcdp/%i.conf' \
  /usr/lib/systemd/system/kvmcdp-protect@.service || fail "the protect unit does not name /usr/bin/kvmcdp"
"$emulator" --version | grep -q 'kvmcdp' || fail "$emulator --version: $("$emulator" --version | head -1)"

# 4. What libvirt's defaults and a host use: the sandbox as libvirt sets it,
# an io_uring file node, a VNC server, the cdp filter, all in one QEMU.
qmp_out=$(printf '%s\n' '{"execute":"qmp_capabilities"}' \
  '{"execute":"query-qmp-schema"}' '{"execute":"query-vnc"}' '{"execute":"quit"}' |
  timeout 60 "$emulator" -machine none -nodefaults -display none -accel tcg \
    -sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny \
    -blockdev "driver=file,filename=$tmp/debs/$(basename "${debs[0]}"),node-name=f,aio=io_uring,read-only=on" \
    -vnc 127.0.0.1:0,to=99 -qmp stdio 2>"$tmp/qemu.err") ||
  { cat "$tmp/qemu.err" >&2; fail "the installed QEMU did not run with -sandbox, io_uring and VNC"; }
grep -q '"cdp-attach"' <<<"$qmp_out" || fail "the installed QEMU has no cdp-attach"
grep -q '"enabled": true' <<<"$qmp_out" || fail "VNC is not enabled: $qmp_out"

# 5. The libvirt test, on what was installed.
KVMCDP=/usr/bin/kvmcdp KVMCDP_QEMU_PREFIX=$qemu_dir \
  bash "$KVMCDP_SOURCE_DIR/tests/e2e/libvirt_guest_test.sh" ||
  fail "the libvirt test failed on the installed packages"
echo "package: both packages install; protect --domain works with $emulator"
