#!/usr/bin/env bash
# Interop referee: provisions against `station emulate` with the official AWS IoT Device SDK
# for Python (tests/interop/provision.py) and exits with its status.
#
#   scripts/interop.sh                      # every case
#   scripts/interop.sh --case mqtt3-csr -v  # arguments go to provision.py (see its --help)
#
# Steps: a virtualenv in target/interop-venv (rebuilt only when tests/interop/requirements.txt
# or the interpreter changes), `cargo build --locked`, the emulator on a free port with its
# state in a temporary directory, then the referee. The emulator is always stopped.
# Logs of the last run: target/interop/emulator.log (station -vv) and target/interop/sdk.log
# (awscrt, Debug). Environment: PYTHON (default python3), INTEROP_START_TIMEOUT (seconds to
# wait for the emulator to report its address, default 60).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

python=${PYTHON:-python3}
target_dir=${CARGO_TARGET_DIR:-target}
venv=$root/target/interop-venv
requirements=tests/interop/requirements.txt
logs=$root/target/interop
start_timeout=${INTEROP_START_TIMEOUT:-60}

say() { printf 'interop.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 2; }
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

# --- 1. virtualenv ---------------------------------------------------------------------------
ensure_venv "$python" "$venv" "$requirements"

# --- 2. the station binary -------------------------------------------------------------------
cargo build --locked --bin station
station=$target_dir/debug/station
[[ -x $station ]] || die "no $station after cargo build"

# --- 3. the emulator -------------------------------------------------------------------------
mkdir -p "$logs"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/fleet-interop.XXXXXX")
emu_pid=
emu_fd=

# Reads the emulator's stdout until EOF (it has exited) or until $1 seconds have passed.
emulator_exited_within() {
    local deadline=$((SECONDS + $1)) line rc
    while ((SECONDS < deadline)); do
        IFS= read -r -t "$((deadline - SECONDS))" -u "$emu_fd" line && continue
        rc=$?
        ((rc > 128)) && return 1 # timed out
        return 0                 # EOF
    done
    return 1
}

stop_emulator() {
    [[ -n $emu_pid ]] || return 0
    if kill -TERM "$emu_pid" 2>/dev/null && ! emulator_exited_within 10; then
        say "emulator (pid $emu_pid) still running 10 s after SIGTERM; killing it"
        kill -KILL "$emu_pid" 2>/dev/null || true
    fi
    emu_pid=
}

cleanup() {
    local status=$?
    stop_emulator
    rm -rf "$tmp"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

emulator_log_tail() {
    say "last lines of $logs/emulator.log:"
    tail -n "${1:-60}" "$logs/emulator.log" | sed 's/^/    /' >&2 || true
}

# TOML literal strings: no escapes are interpreted.
[[ $tmp$root != *"'"* ]] || die "paths with a single quote are not supported: $tmp, $root"
cat >"$tmp/emulator.toml" <<EOF
[emulator]
listen = "127.0.0.1:0"
state_dir = '$tmp/state'
templates = '$root/fixtures/templates'
EOF

# The emulator's stdout comes back on a pipe that is read line by line as it is written.
exec {emu_fd}< <(exec "$station" -vv emulate --config "$tmp/emulator.toml" 2>"$logs/emulator.log")
emu_pid=$!

addr= ca= claim_cert= claim_key=
deadline=$((SECONDS + start_timeout))
while [[ -z $addr || -z $ca || -z $claim_cert || -z $claim_key ]]; do
    remaining=$((deadline - SECONDS))
    if ((remaining <= 0)); then
        emulator_log_tail
        die "the emulator did not print its address and identity paths within ${start_timeout} s"
    fi
    rc=0
    IFS= read -r -t "$remaining" -u "$emu_fd" line || rc=$?
    if ((rc > 128)); then
        continue # timed out: the deadline check above reports it
    elif ((rc != 0)); then
        emu_pid= # EOF on its stdout: it has exited
        emulator_log_tail
        die "the emulator exited before printing its address and identity paths"
    fi
    case $line in
        "listening on "*) addr=${line#listening on } ;;
        "ca: "*) ca=${line#ca: } ;;
        "claim certificate: "*) claim_cert=${line#claim certificate: } ;;
        "claim key: "*) claim_key=${line#claim key: } ;;
        *) say "emulator: $line" ;;
    esac
done
port=${addr##*:}
[[ $port =~ ^[0-9]+$ ]] || die "cannot read a port from 'listening on $addr'"
# The server certificate's SANs are localhost and 127.0.0.1; the SDK verifies the host name.
say "emulator (pid $emu_pid) on $addr; state in $tmp/state"

# --- 4. the referee --------------------------------------------------------------------------
status=0
rm -f "$logs/sdk.log" # awscrt appends
"$venv/bin/python" tests/interop/provision.py \
    --endpoint localhost --port "$port" \
    --ca-file "$ca" --cert "$claim_cert" --key "$claim_key" \
    --sdk-log "$logs/sdk.log" "$@" || status=$?

stop_emulator
if ((status != 0)); then
    emulator_log_tail 80
    say "failed (status $status); full logs: $logs/emulator.log, $logs/sdk.log"
fi
exit "$status"
