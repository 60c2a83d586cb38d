#!/usr/bin/env bash
# Installing: `cmake --install` and scripts/install.sh put the binary, every
# man page and the systemd units where a host looks for them, the units
# naming the installed binary and nothing else; systemd-analyze (when
# present) accepts the installed units.
set -euo pipefail
: "${KVMCDP:?set KVMCDP to the kvmcdp binary}"
: "${KVMCDP_SOURCE_DIR:?set KVMCDP_SOURCE_DIR}"
fail() { echo "FAIL: $*" >&2; exit 1; }

build=$(cd "$(dirname "$KVMCDP")" && pwd)
[ -f "$build/CMakeCache.txt" ] || fail "$build (where \$KVMCDP is) is not a CMake build directory"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# check_tree ROOT PREFIX: the files under ROOT, with PREFIX in the units.
check_tree() {
  local root=$1 prefix=$2 page sec installed unit
  "$root$prefix/bin/kvmcdp" --version | grep -qE '^kvmcdp [0-9]+\.[0-9]+\.[0-9]+$' ||
    fail "$root$prefix/bin/kvmcdp --version"
  for page in "$KVMCDP_SOURCE_DIR"/man/*.[0-9]; do
    sec=${page##*.}
    installed=$root$prefix/share/man/man$sec/$(basename "$page")
    cmp -s "$page" "$installed" || fail "$(basename "$page") not installed as $installed"
    [ -n "$(man -l "$installed" 2>/dev/null)" ] || fail "man -l $installed renders nothing"
  done
  for unit in kvmcdp-protect@.service kvmcdp-serve.service; do
    installed=$root$prefix/lib/systemd/system/$unit
    [ -f "$installed" ] || fail "$unit not installed in $root$prefix/lib/systemd/system"
    ! grep -n '@[A-Z_]*@' "$installed" || fail "$unit keeps a template placeholder"
  done
  grep -qx "ExecStart=$prefix/bin/kvmcdp protect --config /etc/kvmcdp/%i.conf" \
    "$root$prefix/lib/systemd/system/kvmcdp-protect@.service" ||
    fail "protect unit: $(grep ExecStart= "$root$prefix/lib/systemd/system/kvmcdp-protect@.service")"
  grep -qx "ExecStart=$prefix/bin/kvmcdp serve --config /etc/kvmcdp/serve.conf" \
    "$root$prefix/lib/systemd/system/kvmcdp-serve.service" ||
    fail "serve unit: $(grep ExecStart= "$root$prefix/lib/systemd/system/kvmcdp-serve.service")"
}

# 1. cmake --install with a prefix: the units name that prefix's binary.
prefix=$tmp/usr
cmake --install "$build" --prefix "$prefix" >/dev/null
check_tree "" "$prefix"
found=$(MANPATH=$prefix/share/man man -w kvmcdp.conf) || fail "man kvmcdp.conf: not found"
[ "$found" = "$prefix/share/man/man5/kvmcdp.conf.5" ] || fail "man -w kvmcdp.conf: $found"

if command -v systemd-analyze >/dev/null; then
  # An instance of the template, as systemctl would load it; MANPATH lets
  # verify find the units' Documentation= pages.
  mkdir "$tmp/units"
  ln -s "$prefix/lib/systemd/system/kvmcdp-protect@.service" "$tmp/units/kvmcdp-protect@vm1.service"
  ln -s "$prefix/lib/systemd/system/kvmcdp-serve.service" "$tmp/units/kvmcdp-serve.service"
  out=$(cd "$tmp/units" && MANPATH=$prefix/share/man \
        systemd-analyze verify kvmcdp-protect@vm1.service kvmcdp-serve.service 2>&1) ||
    fail "systemd-analyze verify: $out"
  [ -z "$out" ] || fail "systemd-analyze verify complains: $out"
else
  echo "install: systemd-analyze is missing (Debian package systemd): units not verified"
fi

# 2. scripts/install.sh with DESTDIR: staged files, the paths PREFIX's.
opt_before=no
[ -e /opt/kvmcdp ] && opt_before=yes
PREFIX=/opt/kvmcdp DESTDIR=$tmp/stage BUILD_DIR=$build bash "$KVMCDP_SOURCE_DIR/scripts/install.sh" \
  >"$tmp/install.log" 2>&1 || fail "scripts/install.sh: $(cat "$tmp/install.log")"
check_tree "$tmp/stage" /opt/kvmcdp
[ "$opt_before" = yes ] || [ ! -e /opt/kvmcdp ] || fail "install.sh wrote /opt/kvmcdp despite DESTDIR"
echo "install: ok"
