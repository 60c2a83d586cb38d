# shellcheck shell=bash
# Test helpers that boot the kit guest (scripts/build-kit.sh) under QEMU.
# Source from bash; the caller is expected to `set -euo pipefail`.
#
# Environment:
#   KVMCDP_QEMU_PREFIX  QEMU install prefix: bin/qemu-system-x86_64 and
#                       bin/qemu-img are used (a QEMU build tree also works).
#   KVMCDP_KIT          directory holding vmlinuz and initramfs.img.
#   KVMCDP_QEMU_DATADIR optional firmware directory passed as -L, for a QEMU
#                       that cannot find its own (a build tree, a scratch
#                       unpack of a distribution package).
#
# Typical use:
#   kit_init                                   # checks env, temp dir, trap
#   kit_make_script_disk my.sh "$KIT_TMPDIR/script.img"
#   kit_run_guest --script "$KIT_TMPDIR/script.img" --data disk.img
#   kit_wait_poweroff 120 || kit_fail "guest did not power off"
#   rc=$(kit_script_rc)
#
# kit_run_guest starts QEMU as a child of the calling shell, so call it
# directly, never inside $(...): a subshell's child could not be waited for
# or reaped by the cleanup. kit_init installs a trap that kills and reaps
# QEMU on any exit of the test, including failures and Ctrl-C, and QEMU is
# started with a parent-death signal so even a SIGKILLed test takes it along.

KIT_TMPDIR=
KIT_QEMU_BINDIR=
KIT_QEMU_PID=
KIT_QEMU_STATUS=
KIT_SCRIPT_RC=
KIT_CONSOLE_LOG=
KIT_QMP_SOCK=
KIT_CMDLINE="console=ttyS0 quiet panic=-1"
# Node and device names that QMP commands in tests address.
KIT_DATA_NODE=kit-data
KIT_DATA_FILE_NODE=kit-data-file
KIT_DATA_DEVICE=kit-data-dev
KIT_SCRIPT_NODE=kit-script
KIT_SCRIPT_SERIAL=kvmcdp-script
KIT_DATA_SERIAL=kvmcdp-data

kit_fail() {
    echo "FAIL: $*" >&2
    exit 1
}

# Fail loudly, never skip: a kit test that silently passes without a guest
# hides a broken CI setup.
kit_require_env() {
    [[ -n ${KVMCDP_QEMU_PREFIX:-} ]] ||
        kit_fail "KVMCDP_QEMU_PREFIX is not set (QEMU install prefix with bin/qemu-system-x86_64)"
    [[ -n ${KVMCDP_KIT:-} ]] ||
        kit_fail "KVMCDP_KIT is not set (directory built by scripts/build-kit.sh)"
    KIT_QEMU_BINDIR=$(kit_qemu_bindir) ||
        kit_fail "no executable qemu-system-x86_64 in $KVMCDP_QEMU_PREFIX/bin (nor in $KVMCDP_QEMU_PREFIX)"
    local f
    for f in vmlinuz initramfs.img; do
        [[ -r $KVMCDP_KIT/$f ]] ||
            kit_fail "no $KVMCDP_KIT/$f (run scripts/build-kit.sh $KVMCDP_KIT)"
    done
}

# An install prefix has the binaries in bin/; a QEMU build tree, which a
# developer may point at while working on the patch, has them at its top.
kit_qemu_bindir() {
    local d
    for d in "$KVMCDP_QEMU_PREFIX/bin" "$KVMCDP_QEMU_PREFIX"; do
        [[ -x $d/qemu-system-x86_64 ]] && { echo "$d"; return 0; }
    done
    return 1
}

# The qemu-img next to the QEMU under test, e.g. to make a qcow2 data disk.
kit_qemu_img() {
    "$KIT_QEMU_BINDIR/qemu-img" "$@"
}

kit_init() {
    kit_require_env
    KIT_TMPDIR=$(mktemp -d "${TMPDIR:-/tmp}/kvmcdp-guest.XXXXXX")
    KIT_CONSOLE_LOG=$KIT_TMPDIR/console.log
    KIT_QMP_SOCK=$KIT_TMPDIR/qmp.sock
    trap kit_cleanup EXIT
    # Turning signals into exits makes the EXIT trap do the cleanup.
    trap 'exit 130' INT
    trap 'exit 143' TERM
    trap 'exit 129' HUP
}

# Kill protect and QEMU if they still run, reap them, remove the temp
# dir. Safe to call more than once.
kit_cleanup() {
    kit_protect_kill
    if [[ -n $KIT_QEMU_PID ]]; then
        if kill -0 "$KIT_QEMU_PID" 2>/dev/null; then
            kill -TERM "$KIT_QEMU_PID" 2>/dev/null || true
            local i
            for ((i = 0; i < 20; i++)); do
                kill -0 "$KIT_QEMU_PID" 2>/dev/null || break
                sleep 0.1
            done
            kill -KILL "$KIT_QEMU_PID" 2>/dev/null || true
        fi
        wait "$KIT_QEMU_PID" 2>/dev/null || true
        KIT_QEMU_PID=
    fi
    if [[ -n $KIT_TMPDIR && -z ${KIT_KEEP_TMPDIR:-} ]]; then
        rm -rf "$KIT_TMPDIR"
    fi
}

# One `kvmcdp protect` in the background of a kit test ($KVMCDP):
#   kit_protect_start ARGS...    starts `kvmcdp protect ARGS`, its output
#                                appended to $KIT_TMPDIR/protect.log
#   kit_protect_wait TEXT [N]    until that log has TEXT N times (default
#                                1); fails, showing the log, if protect
#                                exits first or in 60 s
#   kit_protect_end              waits for it to exit by itself (in 30 s);
#                                fails, showing the log, if it does not
#                                exit 0
#   kit_protect_kill             SIGKILL (after SIGCONT), as a crash
# The cleanup kills it too.
KIT_PROTECT_PID=
kit_protect_start() {
    [[ -z $KIT_PROTECT_PID ]] || kit_fail "kit_protect_start: protect already runs"
    "$KVMCDP" protect "$@" >>"$KIT_TMPDIR/protect.log" 2>&1 &
    KIT_PROTECT_PID=$!
}
kit_protect_wait() {
    local i
    for ((i = 0; i < 1200; i++)); do
        [[ $(grep -c "$1" "$KIT_TMPDIR/protect.log" 2>/dev/null) -ge ${2:-1} ]] && return 0
        kill -0 "$KIT_PROTECT_PID" 2>/dev/null || break
        sleep 0.05
    done
    cat "$KIT_TMPDIR/protect.log" >&2
    kit_fail "protect never said: $1"
}
kit_protect_end() {
    local i rc=0
    for ((i = 0; i < 300; i++)); do kill -0 "$KIT_PROTECT_PID" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$KIT_PROTECT_PID" 2>/dev/null && { cat "$KIT_TMPDIR/protect.log" >&2; kit_fail "protect did not end"; }
    wait "$KIT_PROTECT_PID" || rc=$?
    KIT_PROTECT_PID=
    [[ $rc -eq 0 ]] || { cat "$KIT_TMPDIR/protect.log" >&2; kit_fail "protect exited $rc"; }
}
kit_protect_kill() {
    [[ -n ${KIT_PROTECT_PID:-} ]] || return 0
    kill -CONT "$KIT_PROTECT_PID" 2>/dev/null || true
    kill -KILL "$KIT_PROTECT_PID" 2>/dev/null || true
    wait "$KIT_PROTECT_PID" 2>/dev/null || true
    KIT_PROTECT_PID=
}

# kit_check_restores STORE: every moment the test recorded, in the arrays
# seqs (the filter's seq) and md5s (the disk's MD5 then), restores from
# STORE by --seq to exactly that MD5; the journal verifies.
kit_check_restores() {
    local store=$1 out=$KIT_TMPDIR/restored.raw i
    "$KVMCDP" journal verify --store "$store" >/dev/null || kit_fail "journal verify failed"
    for i in "${!seqs[@]}"; do
        "$KVMCDP" restore --quiet --force --store "$store" --seq "${seqs[$i]}" -o "$out" >/dev/null ||
            kit_fail "restore --seq ${seqs[$i]} failed"
        [[ $(md5sum "$out" | cut -d' ' -f1) == "${md5s[$i]}" ]] ||
            kit_fail "seq ${seqs[$i]}: restored MD5 differs from the disk's"
    done
}

# Capture by active mirror (`protect --capture mirror`: an unpatched
# QEMU's blockdev-mirror, copy-mode=write-blocking, sends every guest write
# to kvmcdp's NBD server).  Its tests run on every QEMU line: on 7.2
# against Debian's stock QEMU, which has no cdp filter, with the default
# `--capture auto`; on the other lines against the patched QEMU, which has
# it, with an explicit `--capture mirror`.
#   kit_mirror_qemu               before kit_init: picks the QEMU
#                                 (KVMCDP_QEMU_PREFIX, KVMCDP_QEMU_IMG) and
#                                 protect's capture options (KIT_CAPTURE_ARGS)
#   kit_mirror_check_qemu SOCK    once QEMU answers on SOCK: the stock QEMU
#                                 has no filter, the patched one has it
#   kit_protect_says_mirror N     protect.log says `capture: active mirror`
#                                 N times and never `capture: the cdp filter`
# Without KVMCDP_QEMU_LINE (run by hand) the QEMU of KVMCDP_QEMU_PREFIX is
# used with `--capture mirror`, filter or not.
KIT_CAPTURE_ARGS=()
KIT_MIRROR_QEMU=
kit_mirror_qemu() {
    if [[ ${KVMCDP_QEMU_LINE:-} == 7.2 ]]; then
        [[ -x /usr/bin/qemu-system-x86_64 && -x /usr/bin/qemu-img ]] ||
            kit_fail "no /usr/bin/qemu-system-x86_64 or qemu-img: scripts/setup.sh installs Debian's qemu-system-x86"
        export KVMCDP_QEMU_PREFIX=/usr KVMCDP_QEMU_IMG=/usr/bin/qemu-img
        unset KVMCDP_QEMU_DATADIR
        KIT_CAPTURE_ARGS=()
        KIT_MIRROR_QEMU="stock QEMU, --capture auto"
    else
        [[ -n ${KVMCDP_QEMU_PREFIX:-} ]] ||
            kit_fail "KVMCDP_QEMU_PREFIX is not set (QEMU install prefix with bin/qemu-system-x86_64)"
        export KVMCDP_QEMU_IMG=$KVMCDP_QEMU_PREFIX/bin/qemu-img
        # shellcheck disable=SC2034  # read by the test
        KIT_CAPTURE_ARGS=(--capture mirror)
        KIT_MIRROR_QEMU="patched QEMU${KVMCDP_QEMU_LINE:+ $KVMCDP_QEMU_LINE}, --capture mirror"
    fi
}
kit_mirror_check_qemu() {
    local sock=$1 schema version
    schema=$("$KVMCDP" qmp --qmp "$sock" '{"execute":"query-qmp-schema"}') ||
        kit_fail "query-qmp-schema failed on $sock"
    version=$("$KVMCDP" qmp --qmp "$sock" '{"execute":"query-version"}' |
        jq -r '.qemu | "\(.major).\(.minor).\(.micro)"') || kit_fail "query-version failed on $sock"
    if [[ ${KVMCDP_QEMU_LINE:-} == 7.2 ]]; then
        ! grep -q '"cdp-attach"' <<<"$schema" ||
            kit_fail "/usr/bin/qemu-system-x86_64 ($version) has the cdp filter: it is not Debian's stock QEMU"
    elif [[ -n ${KVMCDP_QEMU_LINE:-} ]]; then
        grep -q '"cdp-attach"' <<<"$schema" ||
            kit_fail "the QEMU of line $KVMCDP_QEMU_LINE ($version) has no cdp filter"
    fi
    KIT_MIRROR_QEMU+=" (QEMU $version)"
}
kit_protect_says_mirror() {
    local n
    n=$(grep -c '^kvmcdp: capture: active mirror' "$KIT_TMPDIR/protect.log" || true)
    if [[ $n -ne $1 ]] || grep -q 'capture: the cdp filter' "$KIT_TMPDIR/protect.log"; then
        cat "$KIT_TMPDIR/protect.log" >&2
        kit_fail "protect said 'capture: active mirror' $n times, not $1 (or chose the filter)"
    fi
}

# kit_disk_md5 IMAGE raw|qcow2: the MD5 of the guest's disk as the guest
# sees it; the VM is stopped (QEMU flushed its qcow2 metadata at `stop`,
# and -U reads the image while QEMU has it open).
kit_disk_md5() {
    if [[ $2 == raw ]]; then
        md5sum "$1" | cut -d' ' -f1
    else
        "$KVMCDP_QEMU_IMG" convert -U -f "$2" -O raw "$1" "$KIT_TMPDIR/flat.raw" ||
            kit_fail "qemu-img convert of $1 failed"
        md5sum "$KIT_TMPDIR/flat.raw" | cut -d' ' -f1
        rm -f "$KIT_TMPDIR/flat.raw"
    fi
}

# kit_moment SOCK IMAGE raw|qcow2: one test moment taken by time, for
# captures without a seq in QEMU: stops the VM (which drains every write
# in flight), appends the wall time (UTC, ns) to the array times and the
# disk's MD5 to md5s, and lets the VM go on.
kit_moment() {
    "$KVMCDP" qmp --qmp "$1" '{"execute":"stop"}' >/dev/null || kit_fail "QMP stop failed"
    times+=("$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)")
    md5s+=("$(kit_disk_md5 "$2" "$3")")
    "$KVMCDP" qmp --qmp "$1" '{"execute":"cont"}' >/dev/null || kit_fail "QMP cont failed"
}

# kit_check_restores_at STORE [LABEL [--last-is-latest]]: every moment in
# the arrays times and md5s restores from STORE by --at to exactly that
# MD5; the journal verifies.  --last-is-latest: nothing was written after
# the last moment, so restore --latest gives it too.
# shellcheck disable=SC2154  # times and md5s are the caller's
kit_check_restores_at() {
    local store=$1 label=${2:+$2: } out=$KIT_TMPDIR/restored.raw i
    "$KVMCDP" journal verify --store "$store" >/dev/null || kit_fail "${label}journal verify failed"
    for i in "${!times[@]}"; do
        "$KVMCDP" restore --quiet --force --store "$store" --at "${times[$i]}" -o "$out" >/dev/null ||
            kit_fail "${label}restore --at ${times[$i]} failed"
        [[ $(md5sum "$out" | cut -d' ' -f1) == "${md5s[$i]}" ]] ||
            kit_fail "${label}moment $i (${times[$i]}): restored MD5 differs from the disk's"
    done
    [[ ${3:-} == --last-is-latest ]] || return 0
    # Nothing was written after the last moment: it is the latest point.
    "$KVMCDP" restore --quiet --force --store "$store" --latest -o "$out" >/dev/null ||
        kit_fail "${label}restore --latest failed"
    [[ $(md5sum "$out" | cut -d' ' -f1) == "${md5s[-1]}" ]] ||
        kit_fail "${label}restore --latest differs from the disk at the last moment"
}

# kit_make_script_disk SCRIPT_FILE OUT_IMG
# A raw image of the script padded with NUL bytes to a 4 KiB multiple (at
# least one padding byte), which the guest's init strips before running it.
kit_make_script_disk() {
    local script=$1 out=$2 size
    [[ -r $script ]] || kit_fail "no script $script"
    if LC_ALL=C grep -q -P '\x00' "$script" 2>/dev/null; then
        kit_fail "script $script contains NUL bytes"
    fi
    size=$(stat -c %s "$script")
    cp "$script" "$out"
    truncate -s $(((size / 4096 + 1) * 4096)) "$out"
}

# Guests that run until the host says stop poll block 256 of their script
# disk (direct reads) for the word STOP:
#   [ $((i % 10)) -eq 0 ] && dd if="$SCRIPT_DEV" bs=4k skip=256 count=1 iflag=direct 2>/dev/null | grep -q STOP && break
# kit_make_stoppable_script_disk SCRIPT_FILE OUT_IMG: a script disk with
# room for that block; kit_tell_guest_stop OUT_IMG writes the word.
kit_make_stoppable_script_disk() {
    kit_make_script_disk "$1" "$2"
    truncate -s 2M "$2"
}
kit_tell_guest_stop() {
    printf STOP | dd of="$1" bs=4k seek=256 conv=notrunc status=none
}

# kit_checking_writer_script: prints a guest script that writes a random
# 64 KiB block, reads it back with direct I/O and compares, until told to
# stop; it prints GUEST-PROGRESS every 50 blocks and finally
# "GUEST-CHECK iterations=N bad=M", and fails if any block was bad.
kit_checking_writer_script() {
    cat <<'GUEST'
bad=0
i=0
while [ $i -lt 20000 ]; do
    [ $((i % 10)) -eq 0 ] && dd if="$SCRIPT_DEV" bs=4k skip=256 count=1 iflag=direct 2>/dev/null | grep -q STOP && break
    dd if=/dev/urandom of=/tmp/blk bs=64k count=1 2>/dev/null
    off=$((RANDOM % 1000))
    dd if=/tmp/blk of="$DATA_DEV" bs=64k seek=$off count=1 oflag=direct conv=notrunc 2>/dev/null || bad=$((bad + 1))
    dd if="$DATA_DEV" of=/tmp/back bs=64k skip=$off count=1 iflag=direct 2>/dev/null || bad=$((bad + 1))
    cmp -s /tmp/blk /tmp/back || bad=$((bad + 1))
    i=$((i + 1))
    [ $((i % 50)) -eq 0 ] && echo "GUEST-PROGRESS $i"
done
echo "GUEST-CHECK iterations=$i bad=$bad"
[ $bad -eq 0 ]
GUEST
}

# kit_run_guest [--script IMG] [--data IMG] [--data-format raw|qcow2]
#               [--data-node NAME] [--mem MIB] [-- EXTRA_QEMU_ARGS...]
# Starts QEMU in the background; sets KIT_QEMU_PID. The data disk is a
# virtio-blk-pci device (id $KIT_DATA_DEVICE, serial kvmcdp-data) on a
# format node named $KIT_DATA_NODE over a file node $KIT_DATA_FILE_NODE.
# QMP listens on $KIT_QMP_SOCK; the console goes to $KIT_CONSOLE_LOG.
kit_run_guest() {
    local script_img="" data_img="" data_fmt=raw mem=256
    while [[ $# -gt 0 ]]; do
        case $1 in
            --script) script_img=$2; shift 2 ;;
            --data) data_img=$2; shift 2 ;;
            --data-format) data_fmt=$2; shift 2 ;;
            --data-node) KIT_DATA_NODE=$2; shift 2 ;;
            --mem) mem=$2; shift 2 ;;
            --) shift; break ;;
            *) kit_fail "kit_run_guest: unknown option $1" ;;
        esac
    done
    [[ -n $KIT_TMPDIR ]] || kit_fail "kit_run_guest: call kit_init first"
    [[ -z $KIT_QEMU_PID ]] || kit_fail "kit_run_guest: a guest is already running"

    local args=(
        -accel tcg -m "$mem" -nodefaults -display none -no-reboot
        -kernel "$KVMCDP_KIT/vmlinuz" -initrd "$KVMCDP_KIT/initramfs.img"
        -append "$KIT_CMDLINE"
        -serial "file:$KIT_CONSOLE_LOG"
        -qmp "unix:$KIT_QMP_SOCK,server=on,wait=off"
    )
    [[ -n ${KVMCDP_QEMU_DATADIR:-} ]] && args+=(-L "$KVMCDP_QEMU_DATADIR")
    # The data disk goes first so that, without other disks, it is vda.
    if [[ -n $data_img ]]; then
        args+=(
            -blockdev "driver=file,filename=$data_img,node-name=$KIT_DATA_FILE_NODE"
            -blockdev "driver=$data_fmt,file=$KIT_DATA_FILE_NODE,node-name=$KIT_DATA_NODE"
            -device "virtio-blk-pci,drive=$KIT_DATA_NODE,id=$KIT_DATA_DEVICE,serial=$KIT_DATA_SERIAL"
        )
    fi
    if [[ -n $script_img ]]; then
        args+=(
            -blockdev "driver=file,filename=$script_img,node-name=$KIT_SCRIPT_NODE-file,read-only=on"
            -blockdev "driver=raw,file=$KIT_SCRIPT_NODE-file,node-name=$KIT_SCRIPT_NODE,read-only=on"
            -device "virtio-blk-pci,drive=$KIT_SCRIPT_NODE,id=$KIT_SCRIPT_NODE-dev,serial=$KIT_SCRIPT_SERIAL"
        )
    fi
    args+=("$@")

    : >"$KIT_CONSOLE_LOG"
    local launcher=()
    # Parent-death signal: QEMU dies with the test even if the test is
    # SIGKILLed and no trap runs.
    if setpriv --help 2>/dev/null | grep -q -- --pdeathsig; then
        launcher=(setpriv --pdeathsig KILL --)
    fi
    echo "$KIT_QEMU_BINDIR/qemu-system-x86_64 ${args[*]}" >"$KIT_TMPDIR/qemu.cmdline"
    "${launcher[@]}" "$KIT_QEMU_BINDIR/qemu-system-x86_64" "${args[@]}" \
        </dev/null >"$KIT_TMPDIR/qemu.out" 2>&1 &
    KIT_QEMU_PID=$!
    KIT_QEMU_STATUS=
}

# kit_wait_poweroff TIMEOUT_SECONDS
# Returns 0 once QEMU has exited (its exit status in KIT_QEMU_STATUS), 1 if
# it still runs at the timeout (it is left running; the cleanup kills it).
kit_wait_poweroff() {
    local timeout=$1 deadline
    [[ -n $KIT_QEMU_PID ]] || kit_fail "kit_wait_poweroff: no guest running"
    deadline=$((SECONDS + timeout))
    while kill -0 "$KIT_QEMU_PID" 2>/dev/null; do
        ((SECONDS < deadline)) || return 1
        sleep 0.1
    done
    KIT_QEMU_STATUS=0
    wait "$KIT_QEMU_PID" || KIT_QEMU_STATUS=$?
    KIT_QEMU_PID=
    return 0
}

# The console log without the serial line's carriage returns.
kit_console() {
    tr -d '\r' <"$KIT_CONSOLE_LOG"
}

# Print the script's exit code from the console log; return 1 if the
# script never finished (no end marker).
kit_script_rc() {
    local rc
    rc=$(kit_console | sed -n 's/^KVMCDP-SCRIPT-END rc=\([0-9]*\)$/\1/p' | tail -n 1)
    [[ -n $rc ]] || return 1
    echo "$rc"
}

# Print what the script wrote to the console, between the markers.
kit_script_output() {
    kit_console | awk '/^KVMCDP-SCRIPT-END rc=/ { on = 0 } on { print } /^KVMCDP-SCRIPT-BEGIN$/ { on = 1 }'
}

# Show the console and QEMU's own output on stderr, for failure reports.
kit_dump_console() {
    {
        echo "---- guest console ($KIT_CONSOLE_LOG) ----"
        kit_console 2>/dev/null || true
        echo "---- qemu output ----"
        cat "$KIT_TMPDIR/qemu.out" 2>/dev/null || true
        echo "---- qemu command line ----"
        cat "$KIT_TMPDIR/qemu.cmdline" 2>/dev/null || true
        echo "----"
    } >&2
}

# kit_boot_script SCRIPT_FILE TIMEOUT [kit_run_guest options...]
# The common case in one call: run the script, wait for power-off, fail
# with the console shown if the guest hangs or the script never ends.
# Leaves the script's rc in KIT_SCRIPT_RC.
kit_boot_script() {
    local script=$1 timeout=$2
    shift 2
    kit_make_script_disk "$script" "$KIT_TMPDIR/script.img"
    kit_run_guest --script "$KIT_TMPDIR/script.img" "$@"
    if ! kit_wait_poweroff "$timeout"; then
        kit_dump_console
        kit_fail "guest did not power off within ${timeout}s"
    fi
    # shellcheck disable=SC2034  # read by the test after this returns
    if ! KIT_SCRIPT_RC=$(kit_script_rc); then
        kit_dump_console
        kit_fail "guest script did not finish (QEMU exit status $KIT_QEMU_STATUS)"
    fi
}
