#!/usr/bin/env bash
# The PostgreSQL ledger's cost against SQLite's, per device: `station loadtest --devices N
# --sessions 16 --headless` (release build, embedded emulator) with the ledger in its report
# folder (SQLite, the default) and with station.ledger pointed at a throw-away PostgreSQL
# server (scripts/postgres.sh, fsync on), interleaved RUNS times, printing each run's
# devices/s, end-to-end latency (p50, p99 of summary.json) and CPU seconds (user + sys of the
# station process, which includes the embedded emulator) and the median of each.
#
#   bash scripts/ledger-cost.sh                 # 2000 devices, 3 runs each
#   DEVICES=500 RUNS=5 bash scripts/ledger-cost.sh
#
# The cost of the serial leases: with BASELINE=REV (a commit before them, e.g. the one this
# branch started from) or BASELINE_STATION=PATH (a release `station` binary built from one), a
# third ledger, `pg-base`, runs that station against the same server, interleaved with the
# others. Each PostgreSQL ledger has a schema of its own (the older station refuses a newer
# schema). BASELINE=REV builds REV's source (git archive) under $CARGO_TARGET_DIR/baseline.
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

base_station=${BASELINE_STATION:-}
if [[ -n ${BASELINE:-} && -z $base_station ]]; then
    rev=$(git rev-parse --short "$BASELINE")
    src=$target_dir/baseline/src-$rev
    if [[ ! -f $src/Cargo.toml ]]; then
        mkdir -p "$src"
        git archive "$rev" | tar -x -C "$src"
    fi
    (cd "$src" && CARGO_TARGET_DIR=$target_dir/baseline cargo build --release --locked --quiet --bin station)
    base_station=$target_dir/baseline/release/station
fi
modes=(sqlite postgres)
[[ -z $base_station ]] || modes+=(pg-base)

config() { # $1: name, $2: ledger line
    sed -e "s|^ledger = .*|$2|" \
        -e "s|^report_dir = .*|report_dir = \"$work/reports\"|" \
        -e "s|^state_dir = .*|state_dir = \"$work/emulator\"|" \
        -e "s|^templates = .*|templates = \"$root/fixtures/templates\"|" \
        station.toml >"$work/$1.toml"
}
# A schema of each PostgreSQL ledger's own.
pg_url() { # $1: schema
    psql -q -v ON_ERROR_STOP=1 "$STATION_TEST_POSTGRES" -c "CREATE SCHEMA $1" >/dev/null
    local sep='?'
    [[ $STATION_TEST_POSTGRES != *'?'* ]] || sep='&'
    printf '%s' "$STATION_TEST_POSTGRES${sep}options=-c%20search_path%3D$1" | sed 's/&/\\&/g'
}
config sqlite "ledger = \"$work/ledger.db\""
config postgres "ledger = \"$(pg_url cost_lease)\"\nledger_key = \"$work/pg.key\""
# The baseline's station.toml has no station.lease_s: drop the key.
config pg-base "ledger = \"$(pg_url cost_base)\"\nledger_key = \"$work/pg-base.key\""
sed -i '/^lease_s = /d' "$work/pg-base.toml"

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

printf '%-9s %4s %10s %8s %8s %8s %10s\n' ledger run devices/s p50_ms p99_ms cpu_s server_cpu_s
declare -A rates cpus p50s p99s servers
for ((i = 1; i <= runs; i++)); do
    for mode in "${modes[@]}"; do
        bin=$station
        [[ $mode != pg-base ]] || bin=$base_station
        before=$(server_cpu)
        TIMEFORMAT='%U %S'
        { t=$( { time "$bin" loadtest --config "$work/$mode.toml" --devices "$devices" \
            --sessions 16 --headless --report-dir "$work/r-$mode-$i" >"$work/$mode-$i.log" 2>&1; } 2>&1 ); } \
            || { cat "$work/$mode-$i.log" >&2; exit 1; }
        after=$(server_cpu)
        cpu=$(echo "$t" | awk '{print $1 + $2}')
        summary=$work/r-$mode-$i/summary.json
        rate=$(jq -r '.throughput_per_s' "$summary")
        p50=$(jq -r '.stages.end_to_end.p50_ms' "$summary")
        p99=$(jq -r '.stages.end_to_end.p99_ms' "$summary")
        server=-
        [[ $mode == sqlite ]] || server=$(echo "$after - $before" | bc)
        printf '%-9s %4d %10.1f %8.1f %8.1f %8.2f %10s\n' "$mode" "$i" "$rate" "$p50" "$p99" "$cpu" "$server"
        rates[$mode]+="$rate "
        cpus[$mode]+="$cpu "
        p50s[$mode]+="$p50 "
        p99s[$mode]+="$p99 "
        servers[$mode]+="$server "
    done
done
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for mode in "${modes[@]}"; do
    printf 'median %-9s %10s devices/s  p50 %s ms  p99 %s ms  %s cpu_s  %s server_cpu_s (%s devices)\n' \
        "$mode" "$(echo "${rates[$mode]}" | median)" "$(echo "${p50s[$mode]}" | median)" \
        "$(echo "${p99s[$mode]}" | median)" "$(echo "${cpus[$mode]}" | median)" \
        "$(echo "${servers[$mode]}" | median)" "$devices"
done
