# shellcheck shell=bash
# A real libvirt daemon for a test, started and stopped by the test itself
# (CI has no systemd): libvirtd in session mode as the unprivileged user
# nobody, every directory of its own under DIR (XDG_*), so nothing of the
# machine's libvirt configuration is read or written.  Its domains are TCG
# (type='qemu') and run as nobody too.
#
#   lv_start DIR        starts it; sets LV_URI (qemu+unix:///session?socket=...)
#   lv_virsh ARGS...    virsh against it
#   lv_stop             destroys and undefines its domains, stops it
# Source from bash after tests/lib/guest.sh; files a domain uses must be
# readable (its disks writable) by nobody.

LV_PID=
LV_DIR=
LV_URI=

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
