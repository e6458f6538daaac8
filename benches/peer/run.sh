#!/usr/bin/env bash
# Peer comparison: the official AWS IoT Device SDK for Python, provisioning the way its
# fleet-provisioning sample does (benches/peer/sdk_flow.py: one MQTT connection per device,
# CreateCertificateFromCsr -> RegisterThing), against a standalone `station emulate`; then
# `station loadtest` against the *same* emulator process. Prints both rates and the ratio.
#
#   benches/peer/run.sh
#
# Environment: PEER_SDK_DEVICES (default 200), PEER_SDK_CONCURRENCY (devices the SDK runs at
# a time, each on its own connection; default 1, as one sample process provisions one device),
# PEER_STATION_DEVICES (default 2000), PEER_STATION_SESSIONS (default 16), PYTHON (default
# python3, >= 3.11), CARGO_TARGET_DIR. The Python side is installed here, into
# target/peer-venv, from the pinned benches/peer/requirements.txt (wheels only; rebuilt when
# that file or the interpreter changes). The station is built with `cargo build --release`.
# Logs: target/peer/emulator.log, target/peer/loadtest.log.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

python=${PYTHON:-python3}
target_dir=${CARGO_TARGET_DIR:-target}
venv=$root/target/peer-venv
requirements=benches/peer/requirements.txt
logs=$root/target/peer
sdk_devices=${PEER_SDK_DEVICES:-200}
sdk_concurrency=${PEER_SDK_CONCURRENCY:-1}
station_devices=${PEER_STATION_DEVICES:-2000}
station_sessions=${PEER_STATION_SESSIONS:-16}

say() { printf 'peer: %s\n' "$*" >&2; }
die() { say "$*"; exit 2; }
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

# --- 1. virtualenv ---------------------------------------------------------------------------
ensure_venv "$python" "$venv" "$requirements"

# --- 2. the station binary (release: this is a performance figure) ----------------------------
cargo build --release --locked --bin station
station=$target_dir/release/station
[[ -x $station ]] || die "no $station after cargo build"

# --- 3. the emulator, alone in its own process ------------------------------------------------
mkdir -p "$logs"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/fleet-peer.XXXXXX")
emu_pid=
cleanup() {
    local status=$?
    if [[ -n $emu_pid ]]; then
        kill -TERM "$emu_pid" 2>/dev/null || true
        wait "$emu_pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

[[ $tmp$root != *"'"* ]] || die "paths with a single quote are not supported: $tmp, $root"
cat >"$tmp/emulator.toml" <<TOML
[emulator]
listen = "127.0.0.1:0"
state_dir = '$tmp/emulator'
templates = '$root/fixtures/templates'
TOML

mkfifo "$tmp/emu.out"
"$station" emulate --config "$tmp/emulator.toml" >"$tmp/emu.out" 2>"$logs/emulator.log" &
emu_pid=$!
exec {emu_fd}<"$tmp/emu.out"
addr= ca= claim_cert= claim_key=
deadline=$((SECONDS + 60))
while [[ -z $addr || -z $ca || -z $claim_cert || -z $claim_key ]]; do
    ((SECONDS < deadline)) || die "the emulator did not print its address within 60 s (see $logs/emulator.log)"
    IFS= read -r -t 5 -u "$emu_fd" line || {
        kill -0 "$emu_pid" 2>/dev/null || die "the emulator exited (see $logs/emulator.log)"
        continue
    }
    case $line in
        "listening on "*) addr=${line#listening on } ;;
        "ca: "*) ca=${line#ca: } ;;
        "claim certificate: "*) claim_cert=${line#claim certificate: } ;;
        "claim key: "*) claim_key=${line#claim key: } ;;
    esac
done
# Keep draining its stdout so the emulator never blocks on a full pipe.
cat <&"$emu_fd" >/dev/null &
port=${addr##*:}
[[ $port =~ ^[0-9]+$ ]] || die "cannot read a port from 'listening on $addr'"
say "emulator (pid $emu_pid) on $addr; state in $tmp/emulator"

# --- 4. the SDK, as its sample does it ---------------------------------------------------------
say "SDK: $sdk_devices devices, $sdk_concurrency at a time"
sdk_line=$("$venv/bin/python" benches/peer/sdk_flow.py --endpoint localhost --port "$port" \
    --ca-file "$ca" --cert "$claim_cert" --key "$claim_key" \
    --devices "$sdk_devices" --concurrency "$sdk_concurrency" | tail -n 1)
[[ $sdk_line == "sdk: "* ]] || die "sdk_flow.py printed no result line"
sdk_rate=${sdk_line##*rate_per_s=}

# --- 5. the station against the same emulator process ------------------------------------------
cat >"$tmp/station.toml" <<TOML
[station]
id = "peer-station"
ledger = '$tmp/station/ledger.db'
report_dir = '$tmp/reports'

[parameters]
ThingName = "{serial}"
SerialNumber = "{serial}"
DeviceLocation = "Seattle"
TOML
say "station: loadtest --devices $station_devices --sessions $station_sessions"
"$station" loadtest --config "$tmp/station.toml" --devices "$station_devices" \
    --sessions "$station_sessions" --report-dir "$tmp/report" \
    --endpoint localhost --port "$port" --cert "$claim_cert" --key "$claim_key" \
    --ca-file "$ca" --template-name FleetTemplate >"$logs/loadtest.log" 2>&1 \
    || { tail -n 20 "$logs/loadtest.log" >&2; die "station loadtest failed (see $logs/loadtest.log)"; }
read -r provisioned station_rate < <("$venv/bin/python" -c '
import json, sys
s = json.load(open(sys.argv[1]))
print(s["devices"]["provisioned"], s["throughput_per_s"])' "$tmp/report/summary.json")
[[ $provisioned == "$station_devices" ]] \
    || die "station loadtest provisioned $provisioned of $station_devices devices (see $logs/loadtest.log)"

# --- 6. the figures ----------------------------------------------------------------------------
echo "peer comparison, one \`station emulate\` process (pid $emu_pid), $(nproc) cores"
echo "  awsiotsdk 1.31.0, sample flow:  $sdk_devices devices, $sdk_concurrency at a time   ${sdk_rate} devices/s"
echo "  station loadtest:               $station_devices devices, $station_sessions sessions   ${station_rate} devices/s"
"$venv/bin/python" -c 'import sys; print(f"  station / SDK:                  {float(sys.argv[1]) / float(sys.argv[2]):.1f}x")' \
    "$station_rate" "$sdk_rate"
