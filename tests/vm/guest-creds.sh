# Credential helpers for the guest suites tpm, policy and agent (sourced after
# tests/vm/guest-lib.sh, whose log/run/must/fail, WORK and DEV they use).
# Runs as root INSIDE the test VM. Every credential NAME leaves files in
# $WORK: NAME.in (fido2-cred input), NAME.cred (fido2-cred -M output),
# NAME.verified, NAME.id (credential id, base64), NAME.pem (public key),
# NAME.uid (user id, base64).

# cred_in NAME RP USER: writes NAME.in (cdh, rp, user name, user id) and NAME.uid.
cred_in() {
    local uid; uid="$(b64rand 32)"
    printf '%s\n' "$(b64rand 32)" "$2" "$3" "$uid" >"$WORK/$1.in"
    printf '%s\n' "$uid" >"$WORK/$1.uid"
}

# make_cred NAME RP USER [fido2-cred -M options...]: makes and verifies a
# credential (es256); NAME.flags gets the authenticator data flags.
make_cred() {
    local name="$1" rp="$2" user="$3"; shift 3
    cred_in "$name" "$rp" "$user"
    must fido fido2-cred -M -q "$@" -i "$WORK/$name.in" -o "$WORK/$name.cred" "$DEV" es256
    [ "$(line 2 "$WORK/$name.cred")" = "$rp" ] || fail "$name: rp id changed"
    local flags; flags="$(ad_flags "$(line 4 "$WORK/$name.cred")")"
    echo "$flags" >"$WORK/$name.flags"
    [ $(( flags & 0x41 )) -eq $(( 0x41 )) ] || fail "$name: flags $(hexflags "$flags") lack UP and AT"
    must fido2-cred -V -i "$WORK/$name.cred" -o "$WORK/$name.verified" es256
    line 1 "$WORK/$name.verified" >"$WORK/$name.id"
    tail -n +2 "$WORK/$name.verified" >"$WORK/$name.pem"
    [ "$(cat "$WORK/$name.id")" = "$(line 5 "$WORK/$name.cred")" ] || fail "$name: verified id differs"
    grep -q 'BEGIN PUBLIC KEY' "$WORK/$name.pem" || fail "$name: no public key from fido2-cred -V"
    log "    ($name: $rp/$user, credential id $(b64len "$(cat "$WORK/$name.id")") bytes, flags $(hexflags "$flags"), attestation verified)"
}

# assert_plain NAME RP CRED [fido2-assert -G options...]: a sign-in with
# CRED in the allow list, verified with CRED's key (user presence checked);
# NAME.count and NAME.flags get the counter and flags.
assert_plain() {
    local name="$1" rp="$2" cred="$3"; shift 3
    printf '%s\n' "$(b64rand 32)" "$rp" "$(cat "$WORK/$cred.id")" >"$WORK/$name.in"
    must fido fido2-assert -G "$@" -i "$WORK/$name.in" -o "$WORK/$name.out" "$DEV"
    [ "$(wc -l <"$WORK/$name.out")" -eq 4 ] || fail "$name: expected 4 output lines"
    must fido2-assert -V -p -i "$WORK/$name.out" "$WORK/$cred.pem" es256
    sign_count "$(line 3 "$WORK/$name.out")" >"$WORK/$name.count"
    ad_flags "$(line 3 "$WORK/$name.out")" >"$WORK/$name.flags"
    log "    ($name: verified with $cred's public key, flags $(hexflags "$(cat "$WORK/$name.flags")"), sign count $(cat "$WORK/$name.count"))"
}

# assert_rk NAME RP CRED...: fido2-assert -G -r; expects exactly one
# assertion per CRED (matched by user id), each verified with its key.
assert_rk() {
    local name="$1" rp="$2"; shift 2
    printf '%s\n' "$(b64rand 32)" "$rp" >"$WORK/$name.in"
    must fido fido2-assert -G -r -i "$WORK/$name.in" -o "$WORK/$name.out" "$DEV"
    local lines count i c uid found seen=""
    lines="$(wc -l <"$WORK/$name.out")"
    count=$(( lines / 5 ))
    [ $(( lines % 5 )) -eq 0 ] && [ "$count" -eq $# ] ||
        fail "$name: expected $# assertion(s) for $rp, got $lines lines"
    for i in $(seq 0 $(( count - 1 ))); do
        sed -n "$(( i * 5 + 1 )),$(( i * 5 + 4 ))p" "$WORK/$name.out" >"$WORK/$name.$i"
        uid="$(line $(( i * 5 + 5 )) "$WORK/$name.out")"
        found=""
        for c in "$@"; do
            if [ "$(cat "$WORK/$c.uid")" = "$uid" ]; then found="$c"; fi
        done
        [ -n "$found" ] || fail "$name: assertion $i has an unknown user id $uid"
        case " $seen " in *" $found "*) fail "$name: $found asserted twice" ;; esac
        seen="$seen $found"
        must fido2-assert -V -p -i "$WORK/$name.$i" "$WORK/$found.pem" es256
    done
    log "    ($name: $count assertion(s) for $rp:$seen, each verified with its own key)"
}

# hid_device NODE: the sysfs HID device behind /dev/hidrawN (changes on
# every re-creation, even when the hidraw number is reused).
hid_device() { readlink -f "/sys/class/hidraw/${1#/dev/}/device"; }

# start_daemon_with CONFIG_TEXT: like guest-lib's start_daemon, with our
# own configuration and without emptying the state directory.
start_daemon_with() {
    [ -x "$DAEMON" ] || fail "daemon binary $DAEMON missing"
    printf '%s\n' "$1" >"$CONFIG"
    show "$CONFIG" "fidoseald configuration"
    launch_daemon
}

# wait_log PATTERN [SECONDS] [FILE]: FILE (default the daemon log) gets a
# line matching PATTERN (grep -E) within SECONDS (default 20).
wait_log() {
    local t=0 limit=$(( ${2:-20} * 5 ))
    until grep -Eq -- "$1" "${3:-$DLOG}"; do
        [ "$t" -lt "$limit" ] || fail "no line /$1/ in ${3:-$DLOG} within ${2:-20}s"
        sleep 0.2; t=$(( t + 1 ))
    done
    log "    (logged after $(( t / 5 )).$(( t % 5 * 2 ))s: $(grep -E -- "$1" "${3:-$DLOG}" | tail -n1 | cut -c1-400))"
}
