# Built-in user verification for the client suites (sourced after
# tests/vm/guest-lib.sh and tests/vm/guest-creds.sh): a test user with a
# password, a private system bus with fidoseal's bus policy, and the real
# fidoseal-agent run as that user with tests/agent/scripted-pinentry, the
# way tests/vm/guest-agent sets them up. Runs as root INSIDE the test VM.
#
# The sourcing script sets UV_USER, UV_PASSWORD, AGENT (the fidoseal-agent
# binary) and may set UV_USER_HOME and UV_USER_SHELL; it calls
# uv_make_user, uv_start_bus, uv_setup_pinentry, then uv_start_agent once
# the daemon runs with [prompt] mode = "agent" and [device] user = UV_USER.
# uv_collect (call it from the suite's fail and at the end) brings the
# agent's and the pinentry's logs home and stops the agent and the bus.

ALOG="$RESULTS/fidoseal-agent.log"
# The pinentry runs as the test user: its script and log live in the
# guest's /tmp (the results folder is root's) and are copied home at the end.
PDIR="/tmp/fidoseal-$SUITE-pinentry"
PLOG="$PDIR/pinentry.log"
PSCRIPT="$PDIR/script"
BUSDIR="$WORK/bus"
APID=""
BUS_PID=""
AGENT_STARTS=0
PMARK=0

# quiet_grep ARGS...: grep -q that reads all its input (after a pipe,
# grep -q exits at the first match and pipefail then sees the writer's
# SIGPIPE as a failure).
quiet_grep() { grep "$@" >/dev/null; }

uv_collect() {
    cp "$PLOG" "$RESULTS/pinentry.log" 2>/dev/null || true
    if [ -n "$APID" ] && kill -0 "$APID" 2>/dev/null; then kill -TERM "$APID" 2>/dev/null || true; fi
    if [ -n "$BUS_PID" ] && kill -0 "$BUS_PID" 2>/dev/null; then kill -TERM "$BUS_PID" 2>/dev/null || true; fi
    APID=""
    BUS_PID=""
}

# script ACTION...: what the pinentry answers next, in order (PINs and
# passwords are not logged: "pin ..." shows as "pin *").
script() {
    printf '%s\n' "$@" >"$PSCRIPT"
    log "    (pinentry script: $(printf '%s\n' "$@" | sed 's/^pin .*/pin */' | tr '\n' ' '))"
}
# script_used: every scripted action was consumed, and no more were asked
# (an unscripted dialog gets "cancel" and would have failed the request).
script_used() {
    [ ! -s "$PSCRIPT" ] || fail "pinentry actions left unused: $(sed 's/^pin .*/pin */' "$PSCRIPT" | tr '\n' ' ')"
}
plog_mark() { PMARK="$(wc -l <"$PLOG")"; }
plog_new() { tail -n +"$(( PMARK + 1 ))" "$PLOG"; }
# wait_alog PATTERN [COUNT]: the agent logged PATTERN (grep -F) COUNT times.
wait_alog() {
    local t=0
    while [ "$(grep -cF -- "$1" "$ALOG" || true)" -lt "${2:-1}" ]; do
        [ "$t" -lt 150 ] || fail "the agent never logged '$1' (${2:-1} times)"
        sleep 0.2; t=$(( t + 1 ))
    done
}

# opt_is NAME true|false WHY: after fido2-token -I, getInfo's option NAME
# ("uv" listed when true, "nouv" when false, nothing when absent).
opt_is() {
    local got=false
    if sed -n 's/^options: //p' "$WORK/last.out" | tr ',' '\n' | tr -d ' ' | quiet_grep -x "$1"; then got=true; fi
    [ "$got" = "$2" ] || fail "getInfo option $1 is $got, expected $2 ($3)"
    log "    (getInfo: $1 $got: $3)"
}
# uv_make_user: UV_USER with UV_PASSWORD (PAM checks it for the agent's
# "password" method), a shell and a home (sshd logs in as this user).
uv_make_user() {
    local hash uid home="${UV_USER_HOME:-/nonexistent}" shell="${UV_USER_SHELL:-/usr/sbin/nologin}"
    hash="$(openssl passwd -6 -stdin <<<"$UV_PASSWORD")"
    if [ "$(findmnt -rn -T /etc/shadow -o TARGET)" = /etc/shadow ]; then
        # virtme-ng bind-mounts a file over /etc/shadow: useradd and chpasswd,
        # which replace it by a rename, fail there. Append instead.
        uid=1500
        while getent passwd "$uid" >/dev/null || getent group "$uid" >/dev/null; do uid=$(( uid + 1 )); done
        printf '%s:x:%s:%s::%s:%s\n' "$UV_USER" "$uid" "$uid" "$home" "$shell" >>/etc/passwd
        printf '%s:x:%s:\n' "$UV_USER" "$uid" >>/etc/group
        printf '%s:%s:19000:0:99999:7:::\n' "$UV_USER" "$hash" >>/etc/shadow
        log "    (/etc/shadow is a bind mount here: $UV_USER appended to passwd, group and shadow)"
    else
        must useradd --user-group --no-create-home --home-dir "$home" --shell "$shell" "$UV_USER"
        must_stdin "$UV_USER:$hash\n" chpasswd -e
    fi
    if [ "$home" != /nonexistent ]; then
        mkdir -p "$home"
        chown "$UV_USER:" "$home"
        chmod 0755 "$home"
    fi
    must id "$UV_USER"
    must install -m 0644 "$REPO/packaging/pam.d/fidoseal" /etc/pam.d/fidoseal
}

# uv_start_bus: a private system bus (Debian's system.conf with fidoseal's
# policy); exports DBUS_SYSTEM_BUS_ADDRESS.
uv_start_bus() {
    rm -rf "$BUSDIR"
    mkdir -p "$BUSDIR"
    chmod 0755 "$BUSDIR"
    sed -e "s|<listen>unix:path=/run/dbus/system_bus_socket</listen>|<listen>unix:path=$BUSDIR/system_bus_socket</listen>|" \
        -e '/<pidfile>/d' -e '/<fork\/>/d' -e '/<syslog\/>/d' \
        -e 's|<includedir>system.d</includedir>|<includedir>/usr/share/dbus-1/system.d</includedir>|' \
        -e "s|</busconfig>|  <include>$REPO/dbus/org.fidoseal.Fidoseal1.conf</include>\n</busconfig>|" \
        /usr/share/dbus-1/system.conf >"$BUSDIR/system.conf"
    grep -q "<listen>unix:path=$BUSDIR/system_bus_socket</listen>" "$BUSDIR/system.conf" || fail "could not set the bus address"
    grep -q "Fidoseal1.conf</include>" "$BUSDIR/system.conf" || fail "could not include fidoseal's bus policy"
    log "\$ dbus-daemon --config-file=$BUSDIR/system.conf --nofork --print-address=3 &"
    dbus-daemon --config-file="$BUSDIR/system.conf" --nofork --print-address=3 3>"$BUSDIR/address" \
        </dev/null >"$BUSDIR/bus.log" 2>&1 &
    BUS_PID=$!
    local t=0
    until [ -s "$BUSDIR/address" ]; do
        kill -0 "$BUS_PID" 2>/dev/null || { cat "$BUSDIR/bus.log" >&2; fail "dbus-daemon exited"; }
        [ "$t" -lt 100 ] || fail "dbus-daemon printed no address"
        sleep 0.2; t=$(( t + 1 ))
    done
    export DBUS_SYSTEM_BUS_ADDRESS="unix:path=$BUSDIR/system_bus_socket"
    log "    (bus pid $BUS_PID at $DBUS_SYSTEM_BUS_ADDRESS)"
}

uv_setup_pinentry() {
    rm -rf "$PDIR"
    mkdir -p "$PDIR"
    printf '#!/bin/sh\nexec /usr/bin/python3 %s/tests/agent/scripted-pinentry "$@"\n' "$REPO" >"$PDIR/pinentry"
    chmod 0755 "$PDIR/pinentry"
    : >"$PLOG"
    : >"$PSCRIPT"
    chown -R "$UV_USER:" "$PDIR"
}

# uv_start_agent: fidoseal-agent as UV_USER; waits until the daemon logged
# its registration.
uv_start_agent() {
    [ -x "$AGENT" ] || fail "agent binary $AGENT missing (run-e2e builds it for the client suites)"
    : >"$PSCRIPT"
    AGENT_STARTS=$(( AGENT_STARTS + 1 ))
    log "\$ setpriv --reuid=$UV_USER --regid=$UV_USER --init-groups env -i ... $AGENT >>$ALOG 2>&1 &"
    printf '\n===== start %s (guest %ss) =====\n' "$(date -u +%FT%TZ)" "$SECONDS" >>"$ALOG"
    setpriv --reuid="$UV_USER" --regid="$UV_USER" --init-groups \
        env -i PATH=/usr/bin:/bin HOME=/nonexistent DBUS_SYSTEM_BUS_ADDRESS="$DBUS_SYSTEM_BUS_ADDRESS" \
        FIDOSEAL_PINENTRY="$PDIR/pinentry" FIDOSEAL_PINENTRY_SCRIPT="$PSCRIPT" FIDOSEAL_PINENTRY_LOG="$PLOG" \
        RUST_LOG=debug "$AGENT" </dev/null >>"$ALOG" 2>&1 &
    APID=$!
    wait_alog "registered with fidoseald" "$AGENT_STARTS"
    local t=0
    until [ "$(grep -c 'decision="registered"' "$DLOG" || true)" -ge "$AGENT_STARTS" ]; do
        [ "$t" -lt 100 ] || fail "the daemon did not log the registration"
        sleep 0.2; t=$(( t + 1 ))
    done
    log "    (agent pid $APID registered)"
}

# uv_stop_agent: SIGTERM, the agent unregisters and exits 0.
uv_stop_agent() {
    [ -n "$APID" ] || return 0
    kill -TERM "$APID"
    local t=0 rc=0
    while kill -0 "$APID" 2>/dev/null; do
        [ "$t" -lt 50 ] || fail "the agent did not exit within 10s of SIGTERM"
        sleep 0.2; t=$(( t + 1 ))
    done
    wait "$APID" || rc=$?
    APID=""
    [ "$rc" -eq 0 ] || fail "the agent exited with status $rc after SIGTERM"
    log "    (agent stopped)"
}

# uv_agent_config: the daemon configuration for built-in UV by the agent
# (the password only: no PIN is offered, the user's password is checked
# by PAM). $1: the keystore section's lines.
uv_agent_config() {
    printf 'state_dir = "%s"\n%s\n[prompt]\nmode = "agent"\ntimeout = 60\nuv_methods = ["password"]\n[device]\nuser = "%s"\n' \
        "$STATE" "$1" "$UV_USER"
}

# uv_no_secret_in_logs: neither the password nor PIN (the arguments) is in
# the daemon's, the agent's or the pinentry's log.
uv_no_secret_in_logs() {
    local f s
    for f in "$DLOG" "$ALOG" "$PLOG"; do
        [ -e "$f" ] || continue
        for s in "$@"; do
            if grep -qF -- "$s" "$f"; then fail "a secret is in $f"; fi
        done
    done
    log "    (no PIN or password in the daemon's, the agent's or the pinentry's log)"
}
