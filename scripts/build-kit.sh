#!/bin/bash
# Build the test guest kit: a Debian cloud kernel plus a busybox initramfs
# whose /init runs a script handed to it on a virtio disk and powers off.
#
#   scripts/build-kit.sh OUTDIR
#
# Writes OUTDIR/vmlinuz, OUTDIR/initramfs.img and OUTDIR/kit.json. Run as
# root (the initramfs holds a /dev/console node, and missing tools are
# installed with apt-get; the caller has run `apt-get update`).
#
# Everything comes from Debian packages so CI can rebuild the kit on any
# fresh machine of the project: the kernel is whatever
# linux-image-cloud-amd64 depends on today (the cloud flavour is small and
# has virtio in it), busybox-static provides the whole userland. Running it
# again rebuilds the same files; each is renamed into place only when done,
# so an interrupted run never leaves a kit that half works.
set -euo pipefail

KIT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/kit
readonly KIT_DIR
readonly METAPACKAGE=linux-image-cloud-amd64
# Module name and the config symbol that decides whether the kernel has it
# built in (=y, nothing to ship), as a module (=m, ship it and its
# dependencies) or not at all (the kit cannot work).
readonly WANTED_MODULES=(
    "virtio_pci CONFIG_VIRTIO_PCI"
    "virtio_blk CONFIG_VIRTIO_BLK"
    "ext4 CONFIG_EXT4_FS"
)

die() { echo "build-kit: error: $*" >&2; exit 1; }
say() { echo "build-kit: $*"; }

# Install a Debian package unless the command it provides is already there.
need() {
    local cmd=$1 pkg=$2
    command -v "$cmd" >/dev/null 2>&1 && return 0
    say "installing $pkg (for $cmd)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$pkg" >/dev/null
}

# The linux-image-* package the metapackage points at right now.
resolve_kernel_package() {
    local pkg
    pkg=$(apt-cache depends "$METAPACKAGE" 2>/dev/null |
        awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')
    [[ -n $pkg ]] || die "cannot resolve the dependency of $METAPACKAGE (has apt-get update run?)"
    echo "$pkg"
}

# Echo "y", "m" or "n" for a config symbol.
config_value() {
    local config=$1 sym=$2 line
    line=$(grep -E "^${sym}=" "$config" || true)
    [[ -n $line ]] && echo "${line#*=}" || echo n
}

# Copy one module into the initramfs uncompressed: busybox insmod does not
# read .ko.xz / .ko.zst, and the initramfs is gzipped as a whole anyway.
copy_module() {
    local src=$1 dst_dir=$2 name
    name=$(basename "$src")
    case $src in
        *.ko) cp "$src" "$dst_dir/$name" ;;
        *.ko.xz) need xz xz-utils; xz -dc "$src" >"$dst_dir/${name%.xz}" ;;
        *.ko.zst) need zstd zstd; zstd -qdc "$src" >"$dst_dir/${name%.zst}" ;;
        *.ko.gz) gzip -dc "$src" >"$dst_dir/${name%.gz}" ;;
        *) die "unknown module file type: $src" ;;
    esac
}

main() {
    [[ $# -eq 1 ]] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
    [[ $(id -u) -eq 0 ]] || die "must run as root"
    local outdir=$1
    mkdir -p "$outdir"
    outdir=$(cd "$outdir" && pwd)

    need cpio cpio
    need depmod kmod
    need gzip gzip
    dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' || {
        say "installing busybox-static"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q busybox-static >/dev/null
    }
    [[ -x /bin/busybox ]] || die "/bin/busybox missing after installing busybox-static"

    # Global, not local: the EXIT trap runs after main has returned.
    work=$(mktemp -d /var/tmp/kvmcdp-kit-build.XXXXXX)
    trap 'rm -rf "$work"' EXIT

    # 1. Fetch and unpack exactly the kernel package the metapackage names.
    local kpkg
    kpkg=$(resolve_kernel_package)
    say "kernel package: $kpkg"
    mkdir -p "$work/deb" "$work/kernel"
    # apt drops privileges to _apt for downloads; let it write here.
    chmod 755 "$work"
    chown _apt "$work/deb" 2>/dev/null || true
    (cd "$work/deb" && apt-get download -q "$kpkg" >/dev/null)
    local deb
    deb=$(ls "$work"/deb/*.deb)
    dpkg-deb -x "$deb" "$work/kernel"
    local kpkg_version
    kpkg_version=$(dpkg-deb -f "$deb" Version)

    local vmlinuz config kver
    vmlinuz=$(ls "$work"/kernel/boot/vmlinuz-*)
    config=$(ls "$work"/kernel/boot/config-*)
    kver=${vmlinuz##*/vmlinuz-}
    [[ -d $work/kernel/lib/modules/$kver ]] || die "no modules for $kver in $kpkg"

    # 2. Pick the modules: only what the config builds as =m, plus its
    # dependencies in load order from modules.dep. Debian generates
    # modules.dep at install time, so make it for the unpacked tree.
    depmod -b "$work/kernel" "$kver"
    local stage=$work/initramfs
    local moddir=$stage/lib/modules
    mkdir -p "$moddir"
    local entry mod sym val load_order=() builtin=()
    for entry in "${WANTED_MODULES[@]}"; do
        read -r mod sym <<<"$entry"
        val=$(config_value "$config" "$sym")
        case $val in
            y) builtin+=("$mod") ;;
            m)
                local line path name
                while read -r line; do
                    # "insmod /path/x.ko [params]" or "builtin x"
                    [[ $line == insmod\ * ]] || continue
                    path=$(awk '{print $2}' <<<"$line")
                    name=$(basename "$path"); name=${name%%.ko*}
                    [[ " ${load_order[*]-} " == *" $name "* ]] && continue
                    copy_module "$path" "$moddir"
                    load_order+=("$name")
                done < <(modprobe -d "$work/kernel" -S "$kver" --show-depends "$mod")
                ;;
            *) die "$kver lacks $sym ($mod); the kit cannot use this kernel" ;;
        esac
    done
    printf '%s\n' "${load_order[@]}" >"$moddir/load-order"

    # 3. Lay out the initramfs: busybox with one link per applet, the init,
    # and a console node so the kernel can give init a stdout before
    # devtmpfs is mounted.
    mkdir -p "$stage"/{bin,dev,mnt,proc,sys,tmp,root}
    cp /bin/busybox "$stage/bin/busybox"
    local applet
    for applet in $(/bin/busybox --list); do
        [[ $applet == busybox ]] || ln -sf busybox "$stage/bin/$applet"
    done
    ln -s bin "$stage/sbin"
    install -m 0755 "$KIT_DIR/init" "$stage/init"
    mknod -m 600 "$stage/dev/console" c 5 1
    mknod -m 666 "$stage/dev/null" c 1 3

    # Fixed owners and times make the archive depend on its inputs only.
    find "$stage" -exec touch -h -d @0 {} +
    (cd "$stage" && find . -mindepth 1 | LC_ALL=C sort |
        cpio -o -H newc -R 0:0 --reproducible --quiet) | gzip -9n >"$work/initramfs.img"

    # 4. Rename the files into place, kit.json last: it is the sign that
    # the kit is complete.
    cp "$vmlinuz" "$outdir/.vmlinuz.tmp" && mv -f "$outdir/.vmlinuz.tmp" "$outdir/vmlinuz"
    cp "$work/initramfs.img" "$outdir/.initramfs.img.tmp"
    mv -f "$outdir/.initramfs.img.tmp" "$outdir/initramfs.img"

    local bbver
    bbver=$(dpkg-query -W -f='${Version}' busybox-static)
    json_list() { local s="" x; for x in "$@"; do s+="${s:+, }\"$x\""; done; echo "[$s]"; }
    cat >"$outdir/.kit.json.tmp" <<EOF
{
  "kernel_package": "$kpkg",
  "kernel_package_version": "$kpkg_version",
  "kernel_version": "$kver",
  "busybox_static_version": "$bbver",
  "vmlinuz": "vmlinuz",
  "vmlinuz_sha256": "$(sha256sum "$outdir/vmlinuz" | cut -d' ' -f1)",
  "initramfs": "initramfs.img",
  "initramfs_sha256": "$(sha256sum "$outdir/initramfs.img" | cut -d' ' -f1)",
  "modules": $(json_list "${load_order[@]}"),
  "builtin": $(json_list "${builtin[@]}"),
  "cmdline": "console=ttyS0 quiet panic=-1",
  "script_serial": "kvmcdp-script",
  "data_serial": "kvmcdp-data"
}
EOF
    mv -f "$outdir/.kit.json.tmp" "$outdir/kit.json"

    say "kernel $kver from $kpkg $kpkg_version"
    say "modules (load order): ${load_order[*]:-none}"
    say "built in: ${builtin[*]:-none}"
    ls -l "$outdir/vmlinuz" "$outdir/initramfs.img" "$outdir/kit.json"
}

main "$@"
