#!/usr/bin/env bash
# Builds kvmcdp and installs it on this host: the binary, the man pages
# (kvmcdp(1), kvmcdp.conf(5) and the format pages) and the systemd units.
#
#   PREFIX     install prefix (default /usr/local); the units name
#              PREFIX/bin/kvmcdp
#   DESTDIR    stage the files under this directory instead (packaging);
#              the paths inside them stay PREFIX's
#   BUILD_DIR  the CMake build directory (default build/, which
#              scripts/setup.sh also uses)
#
# Further arguments go to CMake's configure step, e.g.
#   -DKVMCDP_SYSTEMD_UNIT_DIR=/etc/systemd/system  -DKVMCDP_CONFIG_DIR=/etc/kvmcdp
# It needs the build dependencies (scripts/setup.sh installs them).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
prefix=${PREFIX:-/usr/local}
build_dir=${BUILD_DIR:-$here/build}

log() { printf 'install: %s\n' "$*"; }

configure=(cmake -S "$here" -B "$build_dir")
if [ ! -f "$build_dir/CMakeCache.txt" ]; then
  configure+=(-DCMAKE_BUILD_TYPE=Release)
  command -v ninja >/dev/null && configure+=(-G Ninja)
fi
"${configure[@]}" "$@" >/dev/null
log "building kvmcdp in $build_dir"
cmake --build "$build_dir" --target kvmcdp >/dev/null
log "installing into ${DESTDIR:-}$prefix"
cmake --install "$build_dir" --prefix "$prefix" >/dev/null
if [ -z "${DESTDIR:-}" ]; then
  # systemd reads new unit files only when told to.
  [ -d /run/systemd/system ] && systemctl daemon-reload
  log "done; next: write /etc/kvmcdp/NAME.conf (man kvmcdp.conf), then" \
    "systemctl enable --now kvmcdp-protect@NAME"
fi
