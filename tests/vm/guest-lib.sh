# Shared helpers for the guest test suites (sourced, not run). Runs as root
# INSIDE the test VM. The sourcing script sets, before sourcing:
#   RESULTS   folder for verdict, transcript.txt, fidoseald.log (rwdir)
#   DAEMON    the fidoseald binary
#   SUITE     a short name (used for the work and state folders)
# and gets: logging (log, step, run, must, must_fail_with, run_stdin, ...),
# daemon control (start_daemon with a fresh state directory, stop_daemon,
# replug_daemon via SIGUSR1), finish/fail writing the verdict.
# Globals set: DPID (daemon pid), DEV (its /dev/hidrawN).

VERDICT="$RESULTS/verdict"
TRANSCRIPT="$RESULTS/transcript.txt"
DLOG="$RESULTS/fidoseald.log"
CONFIG="/tmp/fidoseal-$SUITE.toml"
STATE="/tmp/fidoseal-$SUITE-state"
WORK="/tmp/fidoseal-$SUITE-work"
NODE_WAIT=${NODE_WAIT:-30}      # seconds; software emulation is slow
STOP_WAIT=${STOP_WAIT:-20}

mkdir -p "$RESULTS"
rm -f "$VERDICT"
: >"$TRANSCRIPT"
rm -rf "$WORK"
mkdir -p "$WORK"
DPID=""
DEV=""
SECONDS=0

log() { printf '%s\n' "$*" | tee -a "$TRANSCRIPT"; }
step() { log ""; log "=== [${SECONDS}s] $*"; }

finish() {
    printf '%s\n' "$1" >"$VERDICT"
    log ""
    log "VERDICT: $1 (guest time ${SECONDS}s)"
    sync
}

stop_daemon_quietly() {
    if [ -n "$DPID" ] && kill -0 "$DPID" 2>/dev/null; then
        kill -TERM "$DPID" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$DPID" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$DPID" 2>/dev/null || true
    fi
}

fail() {
    trap - ERR EXIT
    printf '%s\n' "$*" >>"$WORK/failed"
    log "FAILED: $*"
    # the work files (tool inputs and outputs; test PINs only) for debugging
    cp -r "$WORK" "$RESULTS/work" 2>/dev/null || true
    stop_daemon_quietly
    finish "FAIL: $*"
    exit 1
}
trap 'fail "unexpected error (status $?) at line $LINENO: $BASH_COMMAND"' ERR
trap 'fail "guest script exited without a verdict"' EXIT

# run CMD...: record the command and its output (stdin: /dev/null).
run() {
    log "\$ $*"
    local rc=0
    "$@" >"$WORK/last.out" 2>&1 </dev/null || rc=$?
    sed 's/^/    /' "$WORK/last.out" | tee -a "$TRANSCRIPT"
    [ "$rc" -eq 0 ] || log "    (exit status $rc)"
    return "$rc"
}
# run_stdin TEXT CMD...: as run, with TEXT (printf %b) on stdin; the text is
# not logged (it holds PINs), only its line count.
run_stdin() {
    local text="$1"; shift
    printf '%b' "$text" >"$WORK/stdin"
    log "\$ $* <<< ($(wc -l <"$WORK/stdin") line(s) on stdin)"
    local rc=0
    "$@" >"$WORK/last.out" 2>&1 <"$WORK/stdin" || rc=$?
    # the tools' PIN prompts (stderr, no newline: nothing is echoed)
    sed -i -E 's/^(Enter [^:]*PIN[^:]*: ?)+//' "$WORK/last.out"
    sed 's/^/    /' "$WORK/last.out" | tee -a "$TRANSCRIPT"
    [ "$rc" -eq 0 ] || log "    (exit status $rc)"
    return "$rc"
}
must() { run "$@" || fail "command failed: $*"; }
must_stdin() { local t="$1"; shift; run_stdin "$t" "$@" || fail "command failed: $*"; }
# must_fail_with PATTERN CMD...: CMD must exit non-zero and print PATTERN.
must_fail_with() {
    local pattern="$1"; shift
    if run "$@"; then fail "expected a failure: $*"; fi
    grep -q -- "$pattern" "$WORK/last.out" || fail "failed without '$pattern': $*"
    log "    (failed as expected: $pattern)"
}
must_fail_stdin_with() {
    local pattern="$1" text="$2"; shift 2
    if run_stdin "$text" "$@"; then fail "expected a failure: $*"; fi
    grep -q -- "$pattern" "$WORK/last.out" || fail "failed without '$pattern': $*"
    log "    (failed as expected: $pattern)"
}
# last_has PATTERN [what]: the last command's output matches PATTERN (grep -E)
last_has() { grep -Eq -- "$1" "$WORK/last.out" || fail "${2:-output} lacks /$1/"; }
last_lacks() { if grep -Eq -- "$1" "$WORK/last.out"; then fail "${2:-output} has /$1/"; fi; }
# fido2 tools without a controlling tty: PINs come from stdin.
fido() { setsid -w "$@"; }
show() { log "--- $1${2:+ ($2)}:"; sed 's/^/    /' "$1" | tee -a "$TRANSCRIPT"; }
b64rand() { head -c "$1" /dev/urandom | base64 -w0; }
line() { sed -n "${1}p" "$2"; }

find_node() {
    local u
    for u in /sys/class/hidraw/hidraw*/device/uevent; do
        [ -e "$u" ] || continue
        if grep -qi '^HID_NAME=.*fidoseal' "$u"; then
            basename "$(dirname "$(dirname "$u")")"
            return 0
        fi
    done
    return 1
}

# wait_node [OLD_SYSFS_DEVICE]: sets DEV to the fidoseal hidraw node whose
# sysfs HID device differs from OLD (when given).
wait_node() {
    local old="${1:-}" t=0 n="" d=""
    while [ "$t" -lt $(( NODE_WAIT * 5 )) ]; do
        if [ -n "$DPID" ] && ! kill -0 "$DPID" 2>/dev/null; then
            local rc=0
            wait "$DPID" || rc=$?
            DPID=""
            fail "daemon exited (status $rc) while waiting for its hidraw node"
        fi
        if n="$(find_node)" && [ -c "/dev/$n" ]; then
            d="$(readlink -f "/sys/class/hidraw/$n/device")"
            [ -z "$old" ] || [ "$d" != "$old" ] && break
        fi
        n=""; sleep 0.2; t=$(( t + 1 ))
    done
    [ -n "$n" ] || fail "no (new) hidraw node named *fidoseal* within ${NODE_WAIT}s"
    DEV="/dev/$n"
    log "    hidraw node $DEV after $(( t / 5 )).$(( t % 5 * 2 ))s"
}

# start_daemon: always from an empty state directory.
start_daemon() {
    [ -x "$DAEMON" ] || fail "daemon binary $DAEMON missing"
    rm -rf "$STATE"
    cat >"$CONFIG" <<EOF
state_dir = "$STATE"
[keystore]
backend = "software"
[prompt]
mode = "always-approve"
EOF
    launch_daemon "   (state_dir $STATE, empty)"
}

# launch_daemon [NOTE]: starts $DAEMON on $CONFIG in the background, logging
# to $DLOG; sets DPID and waits for its hidraw node (DEV).
launch_daemon() {
    log "\$ RUST_LOG=debug $DAEMON --config $CONFIG >>$DLOG 2>&1 &${1:-}"
    printf '\n===== start %s (guest %ss) =====\n' "$(date -u +%FT%TZ)" "$SECONDS" >>"$DLOG"
    RUST_LOG=debug NO_COLOR=1 "$DAEMON" --config "$CONFIG" </dev/null >>"$DLOG" 2>&1 &
    DPID=$!
    log "    daemon pid $DPID"
    wait_node
}

# replug_daemon: SIGUSR1 (the daemon destroys and re-creates its device and
# power-cycles the authenticator); waits for the new node.
replug_daemon() {
    local old
    old="$(readlink -f "/sys/class/hidraw/${DEV#/dev/}/device")"
    log "\$ kill -USR1 $DPID   (re-plug)"
    kill -USR1 "$DPID"
    local t=0
    while [ -e "$old" ] && [ "$t" -lt $(( STOP_WAIT * 10 )) ]; do sleep 0.1; t=$(( t + 1 )); done
    [ ! -e "$old" ] || fail "old HID device still present ${STOP_WAIT}s after SIGUSR1"
    wait_node "$old"
}

stop_daemon() {
    local rc=0 t=0
    log "\$ kill -TERM $DPID"
    kill -TERM "$DPID"
    while kill -0 "$DPID" 2>/dev/null && [ "$t" -lt $(( STOP_WAIT * 5 )) ]; do sleep 0.2; t=$(( t + 1 )); done
    if kill -0 "$DPID" 2>/dev/null; then fail "daemon did not exit within ${STOP_WAIT}s of SIGTERM"; fi
    wait "$DPID" || rc=$?
    DPID=""
    log "    daemon exited with status $rc"
    [ "$rc" -eq 0 ] || fail "daemon exit status $rc after SIGTERM (expected 0)"
    DEV=""
}

check_daemon_log() {
    if grep -n 'panicked at' "$DLOG" | tee -a "$TRANSCRIPT" | grep -q .; then
        fail "the daemon log shows a panic"
    fi
    log "    (no panic in $DLOG)"
}

# ------------------------------------------------ authenticator data
# authdata_hex B64: the raw authenticator data, in hex, from the tools'
# base64 of its CBOR byte string.
authdata_hex() {
    local hex h
    hex="$(printf '%s' "$1" | base64 -d | od -An -v -tx1 | tr -d ' \n')"
    h=$(( 0x${hex:0:2} ))
    if [ "$h" -ge $(( 0x40 )) ] && [ "$h" -le $(( 0x57 )) ]; then hex="${hex:2}"
    elif [ "$h" -eq $(( 0x58 )) ]; then hex="${hex:4}"
    elif [ "$h" -eq $(( 0x59 )) ]; then hex="${hex:6}"
    else echo "authenticator data is not a CBOR byte string (first byte $h)" >&2; return 1; fi
    printf '%s' "$hex"
}
# ad_flags B64: the flags byte (decimal); UP 0x01, UV 0x04, AT 0x40, ED 0x80.
ad_flags() { local a; a="$(authdata_hex "$1")"; echo $(( 0x${a:64:2} )); }
# sign_count B64: the signature counter (decimal).
sign_count() { local a; a="$(authdata_hex "$1")"; echo $(( 0x${a:66:8} )); }
# b64len B64: decoded length in bytes.
b64len() { printf '%s' "$1" | base64 -d | wc -c; }
# hexflags N: "0x05 (UP UV)"
hexflags() {
    local f="$1" names=""
    [ $(( f & 0x01 )) -eq 0 ] || names="$names UP"
    [ $(( f & 0x04 )) -eq 0 ] || names="$names UV"
    [ $(( f & 0x40 )) -eq 0 ] || names="$names AT"
    [ $(( f & 0x80 )) -eq 0 ] || names="$names ED"
    printf '0x%02x (%s)' "$f" "${names# }"
}

guest_setup() {
    step "Guest environment ($SUITE)"
    must modprobe -a uhid hid-generic
    for t in "$@"; do
        command -v "$t" >/dev/null || fail "$t not found in the guest"
    done
}
