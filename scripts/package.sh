#!/usr/bin/env bash
# Builds the two Debian packages a host installs, into OUTDIR (default
# build/packages):
#   kvmcdp_<version>_amd64.deb       the binary, man pages and systemd units
#                                    under /usr (CPack, from CMakeLists.txt);
#   kvmcdp-qemu_<version>_amd64.deb  the patched QEMU 10.0 that
#                                    scripts/setup.sh builds with the feature
#                                    set of Debian's qemu-system-x86, under
#                                    /opt/kvmcdp/qemu-<upstream version>/,
#                                    beside the distribution's QEMU, never
#                                    over it.
# Run scripts/setup.sh first (it builds both).  Then, on a host:
#   apt install ./kvmcdp_*.deb ./kvmcdp-qemu_*.deb
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
build_dir=${KVMCDP_BUILD_DIR:-$here/build}
out=${1:-$build_dir/packages}

log() { printf 'package: %s\n' "$*"; }
die() { printf 'package: error: %s\n' "$*" >&2; exit 1; }

if [ -z "${KVMCDP_QEMU_PREFIX_10_0:-}" ]; then
  [ -f "$build_dir/env.sh" ] || die "no $build_dir/env.sh: run scripts/setup.sh first"
  # shellcheck source=/dev/null
  source "$build_dir/env.sh"
fi
qemu_tree=${KVMCDP_QEMU_PREFIX_10_0:-}
[ -n "$qemu_tree" ] && [ -f "$qemu_tree/.package" ] ||
  die "the production QEMU (10.0) is missing in ${qemu_tree:-build/env.sh}: run scripts/setup.sh"
mkdir -p "$out"
out=$(cd "$out" && pwd)

# kvmcdp: CPack stages `cmake --install` under /usr, so the units name
# /usr/bin/kvmcdp.
log "kvmcdp (CPack)"
cmake --build "$build_dir" --target kvmcdp >/dev/null
(cd "$build_dir" && cpack -G DEB -B "$out/cpack" >"$out/cpack.log" 2>&1) ||
  die "cpack failed: $out/cpack.log"
mv "$out"/cpack/kvmcdp_*.deb "$out/"
rm -rf "$out/cpack" "$out/cpack.log"

# kvmcdp-qemu: the installed tree as setup.sh staged it.  .package holds
# what setup knew when it built it: the Debian source version, the install
# directory and the patch series' key.
# shellcheck source=/dev/null
source "$qemu_tree/.package"  # QEMU_SOURCE_VERSION QEMU_INSTALL_DIR QEMU_KEY
version="${QEMU_SOURCE_VERSION#*:}+kvmcdp.${QEMU_KEY:0:8}"
log "kvmcdp-qemu $version"
stage=$(mktemp -d "$out/stage.XXXXXX")
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/root$(dirname "$QEMU_INSTALL_DIR")" "$stage/root/DEBIAN" \
  "$stage/root/usr/share/doc/kvmcdp-qemu"
cp -a "$qemu_tree" "$stage/root$QEMU_INSTALL_DIR"
rm -f "$stage/root$QEMU_INSTALL_DIR/.package" "$stage/root$QEMU_INSTALL_DIR/.complete"
# The guest agent runs inside guests (Debian's qemu-guest-agent), and the
# desktop entry and icons serve a GUI this build has not: none of them here.
rm -rf "$stage/root$QEMU_INSTALL_DIR/bin/qemu-ga" "$stage/root$QEMU_INSTALL_DIR/var" \
  "$stage/root$QEMU_INSTALL_DIR/share/applications" "$stage/root$QEMU_INSTALL_DIR/share/icons"
mv "$stage/root$QEMU_INSTALL_DIR/share/doc/kvmcdp-qemu/copyright" \
  "$stage/root/usr/share/doc/kvmcdp-qemu/copyright"
rmdir "$stage/root$QEMU_INSTALL_DIR/share/doc/kvmcdp-qemu" "$stage/root$QEMU_INSTALL_DIR/share/doc" 2>/dev/null || true

# Library dependencies as Debian computes them for its own packages.
mapfile -t elves < <(find "$stage/root$QEMU_INSTALL_DIR" -type f -perm -u+x \
  -exec sh -c 'head -c4 "$1" | grep -q ELF' _ {} \; -print)
mkdir -p "$stage/src/debian"
printf 'Source: kvmcdp-qemu\n\nPackage: kvmcdp-qemu\nArchitecture: any\n' \
  >"$stage/src/debian/control"
shlibs=$(cd "$stage/src" && dpkg-shlibdeps -O "${elves[@]}" 2>/dev/null |
  sed -n 's/^shlibs:Depends=//p')
[ -n "$shlibs" ] || die "dpkg-shlibdeps found no library dependencies"
# The firmware comes from Debian's packages, as for Debian's own QEMU: the
# build's --firmwarepath names their directories.
depends="$shlibs, seabios, ipxe-qemu, qemu-system-data"

size=$(du -sk "$stage/root" | cut -f1)
cat >"$stage/root/DEBIAN/control" <<EOF
Package: kvmcdp-qemu
Version: $version
Architecture: $(dpkg --print-architecture)
Maintainer: kvmcdp maintainers <maintainers@users.noreply.r-seed-4975769c.example>
Installed-Size: $size
Depends: $depends
Recommends: kvmcdp
Section: otherosfs
Priority: optional
Description: QEMU ${QEMU_SOURCE_VERSION#*:} with kvmcdp's cdp filter
 Debian's QEMU ${QEMU_SOURCE_VERSION#*:} for x86_64 with the cdp I/O filter
 that kvmcdp captures writes through, built with the feature set of
 Debian's qemu-system-x86 (KVM, seccomp, VNC, SPICE, io_uring, virtio and
 vhost, the network block drivers).  It installs under
 $QEMU_INSTALL_DIR and leaves the distribution's QEMU alone: point a
 domain's <emulator> at $QEMU_INSTALL_DIR/bin/qemu-system-x86_64.
EOF
(cd "$stage/root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' |
  xargs -0 md5sum >DEBIAN/md5sums)
dpkg-deb --root-owner-group -Zgzip --build "$stage/root" \
  "$out/kvmcdp-qemu_${version}_$(dpkg --print-architecture).deb" >/dev/null
log "built in $out:"
ls -1 "$out"/*.deb | sed 's/^/  /'
