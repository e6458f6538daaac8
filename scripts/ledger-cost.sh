#!/usr/bin/env bash
# The PostgreSQL ledger's cost against SQLite's, per device: `station loadtest --devices N
# --sessions 16 --headless` (release build, embedded emulator) with the ledger in its report
# folder (SQLite, the default) and with station.ledger pointed at a throw-away PostgreSQL
# server (scripts/postgres.sh, fsync on), interleaved RUNS times, printing each run's
# devices/s and CPU seconds (user + sys of the station process, which includes the embedded
# emulator) and the median of each.
#
#   bash scripts/ledger-cost.sh                 # 2000 devices, 3 runs each
#   DEVICES=500 RUNS=5 bash scripts/ledger-cost.sh
#
# The server's own CPU is not in the station's figure; it is printed apart (the postgres
# processes' CPU seconds from /proc, summed over the run).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
target_dir=${CARGO_TARGET_DIR:-target}
devices=${DEVICES:-2000}
runs=${RUNS:-3}

if [[ -z ${STATION_TEST_POSTGRES:-} ]]; then
    exec bash scripts/postgres.sh bash "$0" "$@"
fi

cargo build --release --locked --quiet --bin station
[[ $target_dir == /* ]] || target_dir=$root/$target_dir
station=$target_dir/release/station
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

config() { # $1: name, $2: ledger line
    sed -e "s|^ledger = .*|$2|" \
        -e "s|^report_dir = .*|report_dir = \"$work/reports\"|" \
        -e "s|^state_dir = .*|state_dir = \"$work/emulator\"|" \
        -e "s|^templates = .*|templates = \"$root/fixtures/templates\"|" \
        station.toml >"$work/$1.toml"
}
config sqlite "ledger = \"$work/ledger.db\""
url=${STATION_TEST_POSTGRES//&/\\&}
config postgres "ledger = \"$url\"\nledger_key = \"$work/pg.key\""

# CPU seconds (user + sys) of the server: the postmaster with its ended children (the
# connections' backends), and its children alive now.
host=${STATION_TEST_POSTGRES#*host=}
host=${host%%&*}
postmaster=$(head -n1 "$host/data/postmaster.pid")
server_cpu() {
    local tck total=0 pid f
    tck=$(getconf CLK_TCK)
    read -r -a f <"/proc/$postmaster/stat"
    total=$((f[13] + f[14] + f[15] + f[16]))
    for pid in $(pgrep -P "$postmaster" || true); do
        read -r -a f <"/proc/$pid/stat" 2>/dev/null || continue
        total=$((total + f[13] + f[14]))
    done
    echo "scale=2; $total / $tck" | bc
}

printf '%-9s %4s %10s %8s %10s\n' ledger run devices/s cpu_s server_cpu_s
declare -A rates cpus
for ((i = 1; i <= runs; i++)); do
    for mode in sqlite postgres; do
        before=$(server_cpu)
        TIMEFORMAT='%U %S'
        { t=$( { time "$station" loadtest --config "$work/$mode.toml" --devices "$devices" \
            --sessions 16 --headless --report-dir "$work/r-$mode-$i" >"$work/$mode-$i.log" 2>&1; } 2>&1 ); } \
            || { cat "$work/$mode-$i.log" >&2; exit 1; }
        after=$(server_cpu)
        cpu=$(echo "$t" | awk '{print $1 + $2}')
        rate=$(sed -n 's/.*"throughput_per_s": *\([0-9.]*\).*/\1/p' "$work/r-$mode-$i/summary.json" | head -n1)
        server=-
        [[ $mode == sqlite ]] || server=$(echo "$after - $before" | bc)
        printf '%-9s %4d %10.1f %8.2f %10s\n' "$mode" "$i" "$rate" "$cpu" "$server"
        rates[$mode]+="$rate "
        cpus[$mode]+="$cpu "
    done
done
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for mode in sqlite postgres; do
    printf 'median %-9s %10s devices/s %8s cpu_s (%s devices)\n' "$mode" \
        "$(echo "${rates[$mode]}" | median)" "$(echo "${cpus[$mode]}" | median)" "$devices"
done
