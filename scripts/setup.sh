#!/usr/bin/env bash
# Sets up everything kvmcdp needs on a Debian 12 machine, idempotently:
#   1. Debian packages (toolchain, libraries, QEMU's build dependencies);
#   2. the patched QEMUs, one per line in qemu-patch/<line>/ (7.2, 10.0):
#      Debian's source package + that series, built into
#      /var/cache/kvmcdp/qemu-<key>, where <key> hashes the source version,
#      the patches and the configure flags, so a re-run with unchanged
#      patches reuses it;
#   3. the test guest kit (kernel + busybox initramfs), cached the same way;
#   4. kvmcdp itself (CMake, Release unless BUILD_TYPE says otherwise).
# It ends by writing build/env.sh, which exports where everything is.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cache=${KVMCDP_CACHE:-/var/cache/kvmcdp}
build_dir=${KVMCDP_BUILD_DIR:-$here/build}
build_type=${BUILD_TYPE:-Release}
jobs=$(nproc)

log() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (it installs Debian packages)"
mkdir -p "$cache"

packages=(
  # kvmcdp
  build-essential cmake ninja-build pkg-config nlohmann-json3-dev
  libcli11-dev libfmt-dev libzstd-dev zstd doctest-dev libnbd-dev libssl-dev
  libgnutls28-dev libvirt-dev
  # tests and tools
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients  # --domain tests
  qemu-utils busybox-static fio cpio kmod mandoc xz-utils openssh-server
  openssh-client seabios qemu-system-data dpkg-dev python3 man-db strace
  systemd  # systemd-analyze verify (no running systemd needed)
  qemu-system-x86  # Debian's own QEMU: tests of a QEMU without the filter
  fdisk e2fsprogs util-linux mount  # kvmcdp mount tests: sfdisk, mkfs.ext4, debugfs, losetup
  libnbd-bin  # kvmcdp export tests: nbdcopy and nbdfuse as clients
  clang libclang-rt-14-dev  # fuzz targets (tests/fuzz): libFuzzer, sanitizers
  # QEMU's build dependencies (minimal configuration below)
  meson libglib2.0-dev libpixman-1-dev libfdt-dev libslirp-dev flex bison
  libaio-dev python3-venv bzip2
  # ... and of the production QEMU (10.0, packaged as kvmcdp-qemu): the
  # libraries behind the features of Debian's qemu-system-x86, and the
  # firmware packages its --firmwarepath names
  libseccomp-dev liburing-dev libcap-ng-dev libattr1-dev libcurl4-gnutls-dev
  libiscsi-dev libnfs-dev libssh-dev libsasl2-dev libnuma-dev libudev-dev
  libusb-1.0-0-dev libusbredirparser-dev libspice-server-dev libfuse3-dev
  libbpf-dev libcapstone-dev libpmem-dev librbd-dev libglusterfs-dev
  libjpeg-dev libpng-dev nettle-dev ipxe-qemu
)

# Adds deb-src next to every deb entry (deb822 and one-line formats), since
# Debian's QEMU source package is what we patch.
ensure_deb_src() {
  local changed=0 f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -e "$f" ] || continue
    if grep -q '^Types: deb$' "$f"; then
      sed -i 's/^Types: deb$/Types: deb deb-src/' "$f"
      changed=1
    fi
  done
  f=/etc/apt/sources.list
  if [ -s "$f" ] && ! grep -q '^deb-src ' "$f" && grep -q '^deb ' "$f"; then
    grep '^deb ' "$f" | sed 's/^deb /deb-src /' >>"$f"
    changed=1
  fi
  echo $changed
}

install_packages() {
  local missing=() p
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' ||
      missing+=("$p")
  done
  local src_changed
  src_changed=$(ensure_deb_src)
  if [ ${#missing[@]} -gt 0 ] || [ "$src_changed" = 1 ] ||
     ! apt-cache showsrc qemu >/dev/null 2>&1 ||
     [ -z "$(apt-cache showsrc qemu 2>/dev/null)" ]; then
    log "apt-get update"
    apt-get update -q >/dev/null
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      "${missing[@]}" >/dev/null
  fi
}

# The test QEMU (7.2): only what the tests use, for a short build.
qemu_configure_flags=(
  --target-list=x86_64-softmmu --enable-tools --disable-docs --disable-user
  --disable-werror --without-default-features --enable-kvm --enable-linux-aio
  --enable-zstd --enable-fdt=system --disable-install-blobs
  --with-git-submodules=ignore --disable-debug-info
)
# The production QEMU (10.0, the kvmcdp-qemu package; the tests run it
# too): QEMU's default features plus, explicitly (configure fails if one is
# missing), those Debian's qemu-system-x86 and qemu-block-extra enable for
# amd64 (debian/control's configure options), so libvirt's defaults, such
# as its seccomp sandbox, work unchanged.  Left out: the display and audio
# back-ends of qemu-system-gui (a server has VNC and SPICE), smartcard
# (libcacard) and blkio (no libblkio in Debian 12).  It is relocatable and
# installed under /opt/kvmcdp/qemu-<version>; the firmware comes from
# Debian's seabios, ipxe-qemu and qemu-system-data, as for Debian's QEMU.
production_line=10.0
production_flags=(
  --target-list=x86_64-softmmu --enable-tools --disable-docs --disable-user
  --disable-werror --disable-install-blobs --disable-download
  --disable-containers --disable-xkbcommon --disable-debug-info
  --disable-guest-agent
  --firmwarepath=/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu
  --enable-kvm --enable-tcg --enable-seccomp --enable-linux-aio
  --enable-linux-io-uring --enable-zstd --enable-fdt=system --enable-slirp
  --enable-pixman --enable-vnc --enable-vnc-jpeg --enable-png
  --enable-vnc-sasl --enable-spice --enable-cap-ng --enable-attr
  --enable-virtfs --enable-numa --enable-libudev --enable-gnutls
  --enable-nettle --enable-vhost-net --enable-vhost-user --enable-vhost-kernel
  --enable-vhost-vdpa --enable-libusb --enable-usb-redir --enable-curl
  --enable-libiscsi --enable-libnfs --enable-libssh --enable-rbd
  --enable-glusterfs --enable-fuse --enable-bpf --enable-capstone
  --enable-libpmem
  --disable-gtk --disable-sdl --disable-opengl --disable-vte --disable-curses
  --disable-brlapi --disable-smartcard --disable-virglrenderer
  --audio-drv-list=
)
# line_flags LINE: the configure flags for LINE, in QEMU_FLAGS (10.0 has
# no --with-git-submodules: its +ds tarball has no submodules to ignore).
line_flags() {
  if [ "$1" = "$production_line" ]; then
    QEMU_FLAGS=("${production_flags[@]}")
    return
  fi
  QEMU_FLAGS=()
  local f
  for f in "${qemu_configure_flags[@]}"; do
    [ "$1" != 7.2 ] && [ "$f" = --with-git-submodules=ignore ] && continue
    QEMU_FLAGS+=("$f")
  done
}
qemu_targets=(qemu-system-x86_64 storage-daemon/qemu-storage-daemon qemu-img
  qemu-io qemu-nbd)

# The QEMU lines the cdp filter is ported to, each a patch series for
# Debian's source package of that line in qemu-patch/<line>/:
#   7.2   Debian 12's own qemu (the deb-src entries of the machine's apt);
#   10.0  Debian 13's qemu, from a private apt configuration (the machine's
#         own is never changed), configured with meson 1.7 from
#         bookworm-backports (Debian's +ds tarball has no meson of its own).
# The first is the default (KVMCDP_QEMU_PREFIX); tests run against both.
qemu_lines=(7.2 10.0)
apt_private=$cache/apt-private

patch_files() {
  grep -v -e '^[[:space:]]*#' -e '^[[:space:]]*$' "$here/qemu-patch/$1/series" || true
}

qemu_key() {
  local line=$1 version=$2
  {
    echo "$version"
    line_flags "$line"
    echo "${QEMU_FLAGS[*]}"
    cat "$here/qemu-patch/$line/series"
    local p
    for p in $(patch_files "$line"); do cat "$here/qemu-patch/$line/$p"; done
  } | sha256sum | cut -c1-16
}

# private_apt CMD ARGS...: apt-get/apt-cache with trixie's sources and
# bookworm-backports in a sources list of our own.
private_apt() {
  local cmd=$1
  shift
  "$cmd" -o Dir::Etc::SourceList="$apt_private/sources.list" \
    -o Dir::Etc::SourceParts=/dev/null -o Dir::State::Lists="$apt_private/lists" \
    -o Dir::Cache="$apt_private/cache" "$@"
}

private_apt_update() {
  mkdir -p "$apt_private/lists/partial" "$apt_private/cache/archives/partial"
  cat >"$apt_private/sources.list" <<'LIST'
deb-src http://deb.debian.org/debian trixie main
deb http://deb.debian.org/debian trixie main
deb http://deb.debian.org/debian bookworm-backports main
LIST
  log "apt-get update (private list: trixie, bookworm-backports)" >&2
  private_apt apt-get update -q >"$apt_private/update.log" 2>&1 ||
    die "apt-get update of the private list failed: $apt_private/update.log"
}

# source_version LINE: the Debian source version of qemu for LINE.
source_version() {
  local v=""
  case $1 in
    7.2) v=$(apt-cache showsrc qemu 2>/dev/null | awk '/^Version:/ && !v {v=$2} END {print v}') ;;
    *)
      [ -s "$apt_private/sources.list" ] && ls "$apt_private"/lists/*Sources* >/dev/null 2>&1 ||
        private_apt_update
      v=$(private_apt apt-cache showsrc qemu 2>/dev/null |
        awk -v l="$1" '/^Version:/ { x=$2; sub(/^[0-9]+:/, "", x); if (index(x, l) == 1 && substr(x, length(l) + 1, 1) ~ /[.+~-]/ && !v) v=$2 } END {print v}')
      ;;
  esac
  [ -n "$v" ] || die "no source package for qemu $1 (deb-src missing?)"
  case ${v#*:} in "$1"[.+~-]*) ;; *) die "qemu source $v is not of the $1 line" ;; esac
  echo "$v"
}

# fetch_source LINE VERSION DIR: the source package's files into DIR.
fetch_source() {
  local line=$1 version=$2 dir=$3
  ls "$dir"/*.dsc >/dev/null 2>&1 && return
  mkdir -p "$dir"
  if [ "$line" = 7.2 ]; then
    (cd "$dir" && apt-get source -q --download-only "qemu=$version" >"$dir/fetch.log" 2>&1)
  else
    (cd "$dir" && private_apt apt-get source -q --download-only "qemu=$version" >"$dir/fetch.log" 2>&1)
  fi || die "apt-get source qemu=$version failed: $dir/fetch.log"
}

# meson_for LINE: sets MESON_PYTHONPATH to a meson new enough for LINE
# (empty: Debian 12's own).  QEMU 10.0 needs meson >= 1.5.
meson_for() {
  MESON_PYTHONPATH=""
  [ "$1" = 7.2 ] && return
  local dir=$cache/meson-bpo
  if [ ! -e "$dir/.complete" ]; then
    rm -rf "$dir"
    mkdir -p "$dir/debs"
    [ -s "$apt_private/sources.list" ] || private_apt_update
    (cd "$dir/debs" && private_apt apt-get download -q meson/bookworm-backports \
      python3-pycotap >"$dir/fetch.log" 2>&1) ||
      die "meson from bookworm-backports could not be fetched: $dir/fetch.log"
    local d
    for d in "$dir"/debs/*.deb; do dpkg-deb -x "$d" "$dir/root"; done
    touch "$dir/.complete"
  fi
  MESON_PYTHONPATH=$dir/root/usr/lib/python3/dist-packages
}

# build_qemu LINE: builds the patched QEMU of LINE unless a complete build
# for its key exists, and sets QEMU_PREFIX.
build_qemu() {
  local line=$1 version src_dir prefix work
  version=$(source_version "$line")
  prefix="$cache/qemu-$(qemu_key "$line" "$version")"
  if [ -e "$prefix/.complete" ]; then
    log "QEMU $version (patched) cached in $prefix"
    QEMU_PREFIX=$prefix
    return
  fi
  log "building QEMU $version with $(patch_files "$line" | wc -l) patch(es) into $prefix"
  src_dir="$cache/src/${version#*:}"
  fetch_source "$line" "$version" "$src_dir"
  meson_for "$line"
  work="$prefix.build"
  rm -rf "$work" "$prefix"
  mkdir -p "$work"
  dpkg-source -q -x "$src_dir"/qemu_*.dsc "$work/src" >"$work/extract.log" 2>&1 ||
    die "dpkg-source -x failed: $work/extract.log"
  # Debian's +ds tarball drops the prebuilt EDK2 firmware, which QEMU's
  # build unpacks whenever bzip2 is present: empty archives stand in (the
  # tests boot with SeaBIOS).
  local f
  [ "$line" = 7.2 ] ||
  for f in $(sed -n "s/^ *'\(edk2-[a-z0-9_-]*\.fd\)',$/\1/p" "$work/src/pc-bios/meson.build"); do
    [ -e "$work/src/pc-bios/$f.bz2" ] || bzip2 -c </dev/null >"$work/src/pc-bios/$f.bz2"
  done
  local p
  for p in $(patch_files "$line"); do
    log "applying $line/$p"
    # QEMU's own style checker, as upstream runs it on every submission.
    (cd "$work/src" && perl scripts/checkpatch.pl -q "$here/qemu-patch/$line/$p") ||
      die "checkpatch.pl finds problems in $line/$p"
    patch -d "$work/src" -p1 --quiet --forward <"$here/qemu-patch/$line/$p" ||
      die "patch $line/$p does not apply"
  done
  mkdir -p "$work/build"
  line_flags "$line"
  local upstream=${version#*:}
  upstream=${upstream%%[+~-]*}
  local install_dir=$prefix
  [ "$line" = "$production_line" ] && install_dir=/opt/kvmcdp/qemu-$upstream
  # 10.0 runs the meson that meson_for unpacked, through the system's
  # python; 7.2's configure refuses --python without its bundled meson.
  local python=()
  [ -n "$MESON_PYTHONPATH" ] && python=(--python=/usr/bin/python3)
  (cd "$work/build" && export PYTHONPATH=$MESON_PYTHONPATH &&
    ../src/configure --prefix="$install_dir" "${python[@]}" \
      --with-pkgversion="kvmcdp $version" "${QEMU_FLAGS[@]}" >configure.log 2>&1) ||
    die "QEMU configure failed: $work/build/configure.log"
  local targets=("${qemu_targets[@]}")
  # The production build installs everything QEMU installs (helpers too),
  # and builds only that: not QEMU's own test programs, a third of "all".
  [ "$line" = "$production_line" ] && mapfile -t targets < <(cd "$work/build" &&
    python3 -c 'import json, os; b = os.getcwd() + "/"
print("\n".join(k[len(b):] for k in json.load(open("meson-info/intro-installed.json")) if k.startswith(b)))')
  [ ${#targets[@]} -gt 0 ] || die "QEMU's build lists nothing to install: $work/build/meson-info"
  local started=$SECONDS
  PYTHONPATH=$MESON_PYTHONPATH ninja -C "$work/build" -j"$jobs" "${targets[@]}" \
    >"$work/build.log" 2>&1 || die "QEMU build failed: $work/build.log"
  log "QEMU $line built in $((SECONDS - started)) s"
  # The patch must build without warnings (Debian's own sources may have
  # some; those are shown, not fatal).
  if grep -E 'warning:' "$work/build.log" >"$work/warnings.log"; then
    log "QEMU build warnings:"
    head -20 "$work/warnings.log"
    ! grep -q 'cdp' "$work/warnings.log" || die "the cdp patch builds with warnings"
  fi
  if [ "$line" = "$production_line" ]; then
    # Staged as it will be installed; relocatable, so it runs from the
    # cache as well (the tests) as from /opt (the package).
    PYTHONPATH=$MESON_PYTHONPATH meson install -C "$work/build" --no-rebuild \
      --destdir "$work/stage" >"$work/install.log" 2>&1 ||
      die "QEMU install failed: $work/install.log"
    mv "$work/stage$install_dir" "$prefix"
    rm -rf "$prefix/include"
    mkdir -p "$prefix/share/doc/kvmcdp-qemu"
    cp "$work/src/debian/copyright" "$prefix/share/doc/kvmcdp-qemu/copyright"
    printf 'QEMU_SOURCE_VERSION=%q\nQEMU_INSTALL_DIR=%q\nQEMU_KEY=%q\n' \
      "$version" "$install_dir" "${prefix##*/qemu-}" >"$prefix/.package"
  else
    mkdir -p "$prefix/bin" "$prefix/share/qemu"
    local t
    for t in "${qemu_targets[@]}"; do cp "$work/build/$t" "$prefix/bin/"; done
    # Firmware: Debian's source carries no prebuilt blobs; the BIOS and the
    # option ROMs (-kernel needs linuxboot_dma.bin) come from Debian's
    # seabios and qemu-system-data packages, as for Debian's own QEMU.
    cp -L /usr/share/qemu/*.bin /usr/share/seabios/*.bin "$prefix/share/qemu/" 2>/dev/null || true
    cp -rL /usr/share/qemu/keymaps "$prefix/share/qemu/" 2>/dev/null || true
  fi
  echo "$version" >"$prefix/.complete"
  rm -rf "$work"
  QEMU_PREFIX=$prefix
}

build_kit() {
  local kver key dir
  kver=$(apt-cache depends linux-image-cloud-amd64 |
    awk '/Depends: linux-image-[0-9]/ && !v {v=$2} END {print v}')
  [ -n "$kver" ] || die "cannot resolve linux-image-cloud-amd64"
  key=$({ echo "$kver"; cat "$here/scripts/build-kit.sh" "$here"/scripts/kit/*; } |
    sha256sum | cut -c1-16)
  dir="$cache/kit-$key"
  if [ -e "$dir/.complete" ]; then
    log "guest kit ($kver) cached in $dir"
  else
    log "building guest kit ($kver) into $dir"
    rm -rf "$dir"
    bash "$here/scripts/build-kit.sh" "$dir" >"$cache/kit-build.log" 2>&1 ||
      die "guest kit build failed: $cache/kit-build.log"
    touch "$dir/.complete"
  fi
  KIT_DIR=$dir
}

build_kvmcdp() {
  log "building kvmcdp ($build_type) in $build_dir"
  cmake -S "$here" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE="$build_type" >/dev/null
  ninja -C "$build_dir" >/dev/null || { ninja -C "$build_dir"; die "kvmcdp build failed"; }
}

install_packages
declare -A qemu_prefixes
for line in "${qemu_lines[@]}"; do
  build_qemu "$line"
  qemu_prefixes[$line]=$QEMU_PREFIX
done
QEMU_PREFIX=${qemu_prefixes[${qemu_lines[0]}]}
build_kit
build_kvmcdp

cat >"$build_dir/env.sh" <<EOF
export KVMCDP_QEMU_PREFIX=$QEMU_PREFIX
$(for line in "${qemu_lines[@]}"; do
  echo "export KVMCDP_QEMU_PREFIX_${line//./_}=${qemu_prefixes[$line]}"
done)
export KVMCDP_KIT=$KIT_DIR
export KVMCDP=$build_dir/kvmcdp
export KVMCDP_QEMU_IMG=$QEMU_PREFIX/bin/qemu-img
EOF
for line in "${qemu_lines[@]}"; do log "patched QEMU $line: ${qemu_prefixes[$line]}/bin"; done
log "guest kit:    $KIT_DIR"
log "kvmcdp:       $build_dir/kvmcdp"
log "environment:  source $build_dir/env.sh"
