#!/usr/bin/env bash
# Latency at half the peak rate (issue 11): finds the peak of `station loadtest` (fixed count,
# embedded emulator, fresh state each run; the median of PEAK_RUNS runs), then offers half of it
# open loop (`--rate`, latency from each device's scheduled start) HALF_RUNS times and prints
# each run's CreateCertificateFromCsr, RegisterThing and end-to-end p99 from steps.csv, and
# their medians. Every run starts from its own temp dir; nothing is kept.
#
#   bash benches/half-peak.sh            # PEAK_DEVICES=5000 PEAK_SESSIONS=16 PEAK_RUNS=3
#                                        # HALF_DURATION=30s HALF_RUNS=3
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '%s\n' "$*" >&2; }
die() { say "half-peak: $*"; exit 1; }

PEAK_DEVICES=${PEAK_DEVICES:-5000}
PEAK_SESSIONS=${PEAK_SESSIONS:-16}
PEAK_RUNS=${PEAK_RUNS:-3}
HALF_DURATION=${HALF_DURATION:-30s}
HALF_RUNS=${HALF_RUNS:-3}

cargo build --release --locked --bin station >&2 || die "the release build failed"
BIN=$PWD/target/release/station
ROOT=$(mktemp -d)
trap 'rm -rf "$ROOT"' EXIT

# A fresh copy of the checked-in configuration and fixtures for one run.
fresh() {
    local d
    d=$(mktemp -d "$ROOT/run.XXXX")
    cp station.toml "$d/" && cp -r fixtures "$d/"
    echo "$d"
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

echo "half-peak: machine $(nproc) cores, load average at start $(cut -d' ' -f1-3 /proc/loadavg)"
peaks=()
for i in $(seq 1 "$PEAK_RUNS"); do
    d=$(fresh)
    (cd "$d" && "$BIN" loadtest --config station.toml --devices "$PEAK_DEVICES" \
        --sessions "$PEAK_SESSIONS" --headless >out.txt 2>err.txt) || die "peak run $i failed: $(tail -3 "$d/err.txt")"
    rate=$(grep -o 'throughput: [0-9.]*' "$d/out.txt" | awk '{print $2}')
    [ -n "$rate" ] || die "peak run $i printed no throughput"
    echo "peak run $i: loadtest --devices $PEAK_DEVICES --sessions $PEAK_SESSIONS: $rate devices/s"
    peaks+=("$rate")
done
peak=$(printf '%s\n' "${peaks[@]}" | median)
half=$(awk -v p="$peak" 'BEGIN {printf "%.0f", p / 2}')
echo "peak (median of $PEAK_RUNS): $peak devices/s; offering half: $half devices/s for $HALF_DURATION"

creates=() registers=() e2es=()
for i in $(seq 1 "$HALF_RUNS"); do
    d=$(fresh)
    (cd "$d" && "$BIN" loadtest --config station.toml --rate "$half" --duration "$HALF_DURATION" \
        --sessions "$PEAK_SESSIONS" --headless >out.txt 2>err.txt) || die "half-peak run $i failed: $(tail -3 "$d/err.txt")"
    csv=$(ls "$d"/reports/*/steps.csv)
    # Columns by name from the header, so a new column does not shift them.
    read -r achieved create register e2e < <(awk -F, '
        NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
        { print $col["achieved_per_s"], $col["create_p99_ms"], $col["register_p99_ms"], $col["e2e_p99_ms"] }' "$csv" | tail -1)
    echo "half-peak run $i: achieved $achieved/s, p99 create $create ms, register $register ms, end-to-end $e2e ms"
    creates+=("$create") registers+=("$register") e2es+=("$e2e")
done
echo "summary: at $half devices/s (half of $peak), medians of $HALF_RUNS runs:" \
    "p99 create $(printf '%s\n' "${creates[@]}" | median) ms," \
    "register $(printf '%s\n' "${registers[@]}" | median) ms," \
    "end-to-end $(printf '%s\n' "${e2es[@]}" | median) ms"
echo "load average at end $(cut -d' ' -f1-3 /proc/loadavg)"
