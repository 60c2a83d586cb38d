#!/usr/bin/env bash
# Sets up everything kvmcdp needs on a Debian 12 machine, idempotently:
#   1. Debian packages (toolchain, libraries, QEMU's build dependencies);
#   2. the patched QEMU: Debian's own source package + qemu-patch/series,
#      built into /var/cache/kvmcdp/qemu-<key>, where <key> hashes the
#      source version, the patches and the configure flags, so a re-run with
#      unchanged patches reuses it;
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
  libgnutls28-dev
  # tests and tools
  qemu-utils busybox-static fio cpio kmod mandoc xz-utils openssh-server
  openssh-client seabios qemu-system-data dpkg-dev python3 man-db strace
  systemd  # systemd-analyze verify (no running systemd needed)
  clang libclang-rt-14-dev  # fuzz targets (tests/fuzz): libFuzzer, sanitizers
  # QEMU's build dependencies (minimal configuration below)
  meson libglib2.0-dev libpixman-1-dev libfdt-dev libslirp-dev flex bison
  libaio-dev
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

qemu_configure_flags=(
  --target-list=x86_64-softmmu --enable-tools --disable-docs --disable-user
  --disable-werror --without-default-features --enable-kvm --enable-linux-aio
  --enable-zstd --enable-fdt=system --disable-install-blobs
  --with-git-submodules=ignore
)
qemu_targets=(qemu-system-x86_64 storage-daemon/qemu-storage-daemon qemu-img
  qemu-io qemu-nbd)

patch_files() {
  grep -v -e '^[[:space:]]*#' -e '^[[:space:]]*$' "$here/qemu-patch/series" || true
}

qemu_key() {
  local version=$1
  {
    echo "$version"
    echo "${qemu_configure_flags[*]}"
    cat "$here/qemu-patch/series"
    local p
    for p in $(patch_files); do cat "$here/qemu-patch/$p"; done
  } | sha256sum | cut -c1-16
}

# Builds the patched QEMU unless a complete build for this key exists.
build_qemu() {
  local version src_dir prefix work
  version=$(apt-cache showsrc qemu | awk '/^Version:/ && !v {v=$2} END {print v}')
  [ -n "$version" ] || die "no source package for qemu (deb-src missing?)"
  prefix="$cache/qemu-$(qemu_key "$version")"
  if [ -e "$prefix/.complete" ]; then
    log "QEMU $version (patched) cached in $prefix"
    QEMU_PREFIX=$prefix
    return
  fi
  log "building QEMU $version with $(patch_files | wc -l) patch(es) into $prefix"
  src_dir="$cache/src/${version#*:}"
  mkdir -p "$src_dir"
  if ! ls "$src_dir"/*.dsc >/dev/null 2>&1; then
    (cd "$src_dir" && apt-get source -q --download-only "qemu=$version" >/dev/null 2>&1) ||
      die "apt-get source qemu=$version failed"
  fi
  work="$prefix.build"
  rm -rf "$work" "$prefix"
  mkdir -p "$work"
  dpkg-source -q -x "$src_dir"/qemu_*.dsc "$work/src" >"$work/extract.log" 2>&1 ||
    die "dpkg-source -x failed: $work/extract.log"
  local p
  for p in $(patch_files); do
    log "applying $p"
    # QEMU's own style checker, as upstream runs it on every submission.
    (cd "$work/src" && perl scripts/checkpatch.pl -q "$here/qemu-patch/$p") ||
      die "checkpatch.pl finds problems in $p"
    patch -d "$work/src" -p1 --quiet --forward <"$here/qemu-patch/$p" ||
      die "patch $p does not apply"
  done
  mkdir -p "$work/build"
  (cd "$work/build" &&
    ../src/configure --prefix="$prefix" "${qemu_configure_flags[@]}" >configure.log 2>&1) ||
    die "QEMU configure failed: $work/build/configure.log"
  ninja -C "$work/build" -j"$jobs" "${qemu_targets[@]}" >"$work/build.log" 2>&1 ||
    die "QEMU build failed: $work/build.log"
  # The patch must build without warnings (Debian's own sources may have
  # some; those are shown, not fatal).
  if grep -E 'warning:' "$work/build.log" >"$work/warnings.log"; then
    log "QEMU build warnings:"
    head -20 "$work/warnings.log"
    ! grep -q 'cdp' "$work/warnings.log" || die "the cdp patch builds with warnings"
  fi
  mkdir -p "$prefix/bin" "$prefix/share/qemu"
  local t
  for t in "${qemu_targets[@]}"; do cp "$work/build/$t" "$prefix/bin/"; done
  # Firmware: Debian's source carries no prebuilt blobs; the BIOS and the
  # option ROMs (-kernel needs linuxboot_dma.bin) come from Debian's
  # seabios and qemu-system-data packages, as for Debian's own QEMU.
  cp -L /usr/share/qemu/*.bin /usr/share/seabios/*.bin "$prefix/share/qemu/" 2>/dev/null || true
  cp -rL /usr/share/qemu/keymaps "$prefix/share/qemu/" 2>/dev/null || true
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
build_qemu
build_kit
build_kvmcdp

cat >"$build_dir/env.sh" <<EOF
export KVMCDP_QEMU_PREFIX=$QEMU_PREFIX
export KVMCDP_KIT=$KIT_DIR
export KVMCDP=$build_dir/kvmcdp
export KVMCDP_QEMU_IMG=$QEMU_PREFIX/bin/qemu-img
EOF
log "patched QEMU: $QEMU_PREFIX/bin"
log "guest kit:    $KIT_DIR"
log "kvmcdp:       $build_dir/kvmcdp"
log "environment:  source $build_dir/env.sh"
