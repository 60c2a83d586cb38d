# shellcheck shell=bash
# A real libvirt daemon for a test, started and stopped by the test itself
# (CI has no systemd): libvirtd in session mode as the unprivileged user
# nobody, every directory of its own under DIR (XDG_*), so nothing of the
# machine's libvirt configuration is read or written.  Its domains are TCG
# (type='qemu') and run as nobody too.
#
#   lv_test_init        checks KVMCDP, libvirtd and virsh, sets
#                       KVMCDP_QEMU_IMG to the QEMU under test's, then
#                       kit_init, then lv_start in $KIT_TMPDIR/lv, and an
#                       exit trap that stops protect, the domains and the
#                       daemon (libvirt's QEMU is no child of the test: no
#                       parent-death signal takes it along)
#   lv_start DIR        starts it; sets LV_URI (qemu+unix:///session?socket=...)
#   lv_virsh ARGS...    virsh against it
#   lv_kit_domain NAME DISK FORMAT SCRIPT_IMG
#                       defines a TCG domain that boots the kit guest on
#                       the QEMU under test: DISK (vda, the data disk),
#                       SCRIPT_IMG (vdb), its console in $LV_DIR/NAME.console
#   lv_stop             destroys and undefines its domains, stops it
# Source from bash after tests/lib/guest.sh; files a domain uses must be
# readable (its disks writable) by nobody.

LV_PID=
LV_DIR=
LV_URI=

lv_test_init() {
    : "${KVMCDP:?set KVMCDP to the kvmcdp binary}"
    export KVMCDP_QEMU_IMG=$KVMCDP_QEMU_PREFIX/bin/qemu-img
    command -v libvirtd >/dev/null && command -v virsh >/dev/null ||
        kit_fail "libvirtd and virsh are needed (scripts/setup.sh installs them)"
    kit_init
    trap 'kit_protect_kill; lv_stop; kit_cleanup' EXIT
    chmod 755 "$KIT_TMPDIR"
    lv_start "$KIT_TMPDIR/lv"
}

lv_start() {
    LV_DIR=$1
    mkdir -p "$LV_DIR/run"
    chown -R nobody:nogroup "$LV_DIR"
    chmod 700 "$LV_DIR/run"
    local launcher=()
    if setpriv --help 2>/dev/null | grep -q -- --pdeathsig; then
        launcher=(--pdeathsig KILL)
    fi
    setpriv "${launcher[@]}" --reuid=nobody --regid=nogroup --clear-groups \
        env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$LV_DIR" \
        XDG_RUNTIME_DIR="$LV_DIR/run" XDG_CONFIG_HOME="$LV_DIR/config" \
        XDG_CACHE_HOME="$LV_DIR/cache" XDG_DATA_HOME="$LV_DIR/data" \
        XDG_STATE_HOME="$LV_DIR/state" \
        libvirtd >"$LV_DIR/libvirtd.log" 2>&1 &
    LV_PID=$!
    LV_URI="qemu+unix:///session?socket=$LV_DIR/run/libvirt/libvirt-sock"
    local _
    for _ in $(seq 100); do
        [[ -S $LV_DIR/run/libvirt/libvirt-sock ]] && lv_virsh list --all >/dev/null 2>&1 && return 0
        kill -0 "$LV_PID" 2>/dev/null || break
        sleep 0.1
    done
    cat "$LV_DIR/libvirtd.log" >&2
    kit_fail "libvirtd did not start"
}

# json_field EXPR: EXPR (e.g. '["seq"]') of the JSON on stdin.
json_field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }

lv_virsh() {
    virsh -q -c "$LV_URI" "$@"
}

lv_stop() {
    [[ -n $LV_PID ]] || return 0
    local d
    for d in $(lv_virsh list --all --name 2>/dev/null); do
        lv_virsh destroy "$d" >/dev/null 2>&1 || true
        lv_virsh undefine "$d" >/dev/null 2>&1 || true
    done
    kill -TERM "$LV_PID" 2>/dev/null || true
    local _
    for _ in $(seq 50); do kill -0 "$LV_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$LV_PID" 2>/dev/null || true
    wait "$LV_PID" 2>/dev/null || true
    LV_PID=
}

lv_kit_domain() {
    local name=$1 disk=$2 format=$3 script=$4
    cat >"$LV_DIR/$name.xml" <<EOF
<domain type='qemu'>
  <name>$name</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$KVMCDP_KIT/vmlinuz</kernel>
    <initrd>$KVMCDP_KIT/initramfs.img</initrd>
    <cmdline>$KIT_CMDLINE</cmdline>
  </os>
  <features><acpi/></features>
  <on_reboot>destroy</on_reboot>
  <devices>
    <emulator>$KVMCDP_QEMU_PREFIX/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='$format' cache='none'/>
      <source file='$disk'/>
      <target dev='vda' bus='virtio'/>
      <serial>$KIT_DATA_SERIAL</serial>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='$script'/>
      <target dev='vdb' bus='virtio'/>
      <serial>$KIT_SCRIPT_SERIAL</serial>
      <readonly/>
    </disk>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
    <serial type='file'>
      <source path='$LV_DIR/$name.console'/>
      <target port='0'/>
    </serial>
  </devices>
</domain>
EOF
    lv_virsh define "$LV_DIR/$name.xml" >/dev/null
}

# lv_writer_domain NAME DISK: a 64 MiB raw DISK and domain NAME of the kit
# guest writing it for ~10 s (random 4 KiB blocks, some synced, some zero
# 64 KiB runs with fsync), then "GUEST-DONE" on its console and power-off.
lv_writer_domain() {
    local name=$1 disk=$2
    truncate -s 64M "$disk"
    cat >"$KIT_TMPDIR/guest.sh" <<'GUEST'
i=0
while [ $i -lt 100 ]; do
    dd if=/dev/urandom of="$DATA_DEV" bs=4k seek=$((RANDOM % 16000)) count=$((RANDOM % 64 + 1)) conv=notrunc 2>/dev/null
    [ $((i % 3)) -eq 0 ] && sync
    [ $((i % 5)) -eq 0 ] && dd if=/dev/zero of="$DATA_DEV" bs=64k seek=$((RANDOM % 1000)) count=4 conv=notrunc,fsync 2>/dev/null
    i=$((i + 1))
    sleep 0.1
done
sync
echo GUEST-DONE
GUEST
    kit_make_script_disk "$KIT_TMPDIR/guest.sh" "$LV_DIR/$name-script.img"
    chown nobody:nogroup "$disk" "$LV_DIR/$name-script.img"
    lv_kit_domain "$name" "$disk" raw "$LV_DIR/$name-script.img"
}

# lv_wait_poweroff NAME: the writer said GUEST-DONE and the domain is shut off.
lv_wait_poweroff() {
    local name=$1 console=$LV_DIR/$1.console _
    for _ in $(seq 1200); do grep -q GUEST-DONE "$console" && break; sleep 0.1; done
    grep -q GUEST-DONE "$console" || { cat "$console" >&2; kit_fail "guest did not finish"; }
    for _ in $(seq 300); do
        [[ $(lv_virsh domstate "$name") == "shut off" ]] && break
        sleep 0.1
    done
    [[ $(lv_virsh domstate "$name") == "shut off" ]] || kit_fail "the guest did not power off"
}
