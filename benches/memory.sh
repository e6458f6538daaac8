#!/usr/bin/env bash
# Peak memory against device count (issue 11): `station loadtest --devices N` with the embedded
# emulator, from a fresh state (its own temp dir) for each N in MEMORY_DEVICES, RUNS times
# each, peak RSS of the whole process from `/usr/bin/time -v`; prints each run and the median
# per N. The goal: under 150 MB at 100,000 devices and the same as at 10,000.
#
#   bash benches/memory.sh        # MEMORY_DEVICES="10000 100000" MEMORY_SESSIONS=256 RUNS=3
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '%s\n' "$*" >&2; }
die() { say "memory: $*"; exit 1; }

MEMORY_DEVICES=${MEMORY_DEVICES:-10000 100000}
MEMORY_SESSIONS=${MEMORY_SESSIONS:-256}
RUNS=${RUNS:-3}
[ -x /usr/bin/time ] || die "/usr/bin/time is missing (Debian package 'time')"

cargo build --release --locked --bin station >&2 || die "the release build failed"
BIN=$PWD/target/release/station
ROOT=$(mktemp -d)
trap 'rm -rf "$ROOT"' EXIT

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

echo "memory: machine $(nproc) cores, load average at start $(cut -d' ' -f1-3 /proc/loadavg)"
for n in $MEMORY_DEVICES; do
    rss=()
    for i in $(seq 1 "$RUNS"); do
        d=$(mktemp -d "$ROOT/run.XXXX")
        cp station.toml "$d/" && cp -r fixtures "$d/"
        (cd "$d" && /usr/bin/time -v "$BIN" loadtest --config station.toml --devices "$n" \
            --sessions "$MEMORY_SESSIONS" --headless >out.txt 2>err.txt) ||
            die "run of $n devices failed: $(tail -3 "$d/err.txt")"
        kb=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$d/err.txt")
        rate=$(grep -o 'throughput: [0-9.]*' "$d/out.txt" | awk '{print $2}')
        echo "$n devices, run $i: peak RSS $((kb / 1024)) MB ($kb kB), $rate devices/s"
        rss+=("$kb")
        rm -rf "$d"
    done
    med=$(printf '%s\n' "${rss[@]}" | median)
    echo "$n devices: median peak RSS $((${med%.*} / 1024)) MB over $RUNS runs"
done
echo "load average at end $(cut -d' ' -f1-3 /proc/loadavg)"
