#!/usr/bin/env bash
# Metrics check: scrapes `/metrics` of a real `station run` (virtual line, embedded emulator,
# everything in a temporary directory) while the line works, and validates every scrape with
# Prometheus's own `promtool check metrics` (exposition format and naming conventions).
#
#   scripts/metrics-check.sh            # 1000 boards
#   BOARDS=3000 scripts/metrics-check.sh
#
# promtool comes from Debian's `prometheus` package, installed by this script when missing
# (apt-get; as root, or with sudo). Fails when promtool finds a problem, when a scrape fails,
# when fewer than three scrapes were taken while devices were in flight, or when the run fails.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
target_dir=${CARGO_TARGET_DIR:-target}
boards=${BOARDS:-1000}
start_timeout=${METRICS_START_TIMEOUT:-120}

say() { printf 'metrics-check.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 2; }
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

# --- 1. promtool -----------------------------------------------------------------------------
need_command promtool prometheus
say "$(promtool --version 2>&1 | head -n1)"

# --- 2. the station --------------------------------------------------------------------------
cargo build --locked --quiet --bin station
station=$root/$target_dir/debug/station
[[ -x $station ]] || die "no station binary at $station"

work=$(mktemp -d)
pid=
cleanup() {
    [[ -n $pid ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

# The checked-in configuration, with every path in the temporary directory.
sed -e "s|^ledger = .*|ledger = \"$work/ledger.db\"|" \
    -e "s|^report_dir = .*|report_dir = \"$work/reports\"|" \
    -e "s|^flash_dir = .*|flash_dir = \"$work/boards\"|" \
    -e "s|^state_dir = .*|state_dir = \"$work/emulator\"|" \
    -e "s|^templates = .*|templates = \"$root/fixtures/templates\"|" \
    station.toml >"$work/station.toml"

"$station" run --config "$work/station.toml" --boards "$boards" \
    --metrics-addr 127.0.0.1:0 >"$work/stdout.log" 2>"$work/stderr.log" &
pid=$!

# --- 3. the address it bound -----------------------------------------------------------------
addr=
for ((i = 0; i < start_timeout * 10; i++)); do
    addr=$(sed -n 's|^metrics: http://\(.*\)/metrics$|\1|p' "$work/stderr.log" | head -n1)
    [[ -n $addr ]] && break
    kill -0 "$pid" 2>/dev/null || { cat "$work/stderr.log" >&2; die "the station exited before serving metrics"; }
    sleep 0.1
done
[[ -n $addr ]] || die "the station printed no metrics address within ${start_timeout} s"
say "scraping http://$addr/metrics"

# --- 4. scrape and check until the run ends --------------------------------------------------
scrape() {
    python3 - "$addr" <<'EOF'
import sys, urllib.request
with urllib.request.urlopen(f"http://{sys.argv[1]}/metrics", timeout=10) as r:
    assert r.status == 200, r.status
    sys.stdout.write(r.read().decode())
EOF
}
checked=0
busy=0
while kill -0 "$pid" 2>/dev/null; do
    scrape >"$work/scrape.new" 2>"$work/scrape.err" || {
        # The run may have ended between the liveness test and the scrape.
        kill -0 "$pid" 2>/dev/null || break
        cat "$work/scrape.err" >&2
        die "a scrape failed while the station ran"
    }
    # Only a whole scrape counts (the last one is checked again below).
    mv "$work/scrape.new" "$work/scrape.txt"
    if ! promtool check metrics <"$work/scrape.txt" >"$work/promtool.log" 2>&1; then
        cat "$work/promtool.log" >&2
        cp "$work/scrape.txt" "$root/$target_dir/metrics-check-failed.txt"
        die "promtool rejected a scrape (kept in $target_dir/metrics-check-failed.txt)"
    fi
    checked=$((checked + 1))
    in_flight=$(sed -n 's/^fleet_station_devices_in_flight \([0-9.e+]*\)$/\1/p' "$work/scrape.txt")
    provisioned=$(sed -n 's/^fleet_station_devices_total{outcome="provisioned"} \([0-9.e+]*\)$/\1/p' "$work/scrape.txt")
    if [[ ${in_flight:-0} != 0 && ${provisioned:-0} != 0 ]]; then
        busy=$((busy + 1))
    fi
    sleep 0.2 # the scrape interval, not a synchronization
done
status=0
wait "$pid" || status=$?
pid=
[[ $status -eq 0 ]] || { tail -n 30 "$work/stderr.log" >&2; die "station run exited with $status"; }
say "$checked scrapes passed promtool check metrics ($busy while devices were in flight and provisioned)"
[[ $busy -ge 3 ]] || die "only $busy scrapes were taken while the line worked; expected at least 3 (BOARDS=$boards too few?)"
grep -q '^fleet_station_stage_duration_seconds_bucket' "$work/scrape.txt" \
    || die "the last whole scrape has no stage histograms"
grep -q '^fleet_station_info{station="station-1",version="' "$work/scrape.txt" \
    || die "the last whole scrape does not name the station (fleet_station_info)"
say "ok"
