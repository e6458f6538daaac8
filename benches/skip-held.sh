#!/usr/bin/env bash
# Time a board spends on its jig at 115200 baud when its firmware already holds the root CA
# (the station asks for digests and leaves it out: jigs.skip_held) against a blank board:
# `station run` of SKIP_BOARDS virtual boards (default 40) on SKIP_JIGS jigs (default 4),
# fresh state each run, SKIP_RUNS runs of each (default 3, interleaved); prints each run's
# jigs.write_ms_per_board and payload bytes a board from summary.json, then the medians and
# the saving. DRIVER (default fleet-jig) is the virtual line's jig driver: fleet-jig (our
# protocol: HASH, PUTs, COMMIT), nrf91-at (emulated nRF91 modems: AT%CMNG=1 digests, one
# AT%CMNG=0 line per item; their root CA held under the line's security tag) or zephyr-cred
# (emulated Zephyr boards: cred list digests, cred buf load + cred add per item; their
# firmware registers the root CA under the line's security tag).
#
#   bash benches/skip-held.sh [DRIVER]
#
# Uses the release build (`cargo build --release`); CARGO_TARGET_DIR is honoured.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
boards=${SKIP_BOARDS:-40}
jigs=${SKIP_JIGS:-4}
runs=${SKIP_RUNS:-3}
baud=${SKIP_BAUD:-115200}
driver=${1:-fleet-jig}
cargo build --release --locked --bin station >&2
station=${CARGO_TARGET_DIR:-target}/release/station
case $station in /*) ;; *) station=$root/$station ;; esac

one() { # $1 = true|false (boards hold the root CA); prints "ms_per_board bytes_per_board skipped_per_board"
    local dir
    dir=$(mktemp -d)
    cp -r fixtures "$dir/"
    sed -e "s/^boards_hold_root_ca = .*/boards_hold_root_ca = $1/" station.toml > "$dir/station.toml"
    grep -q "^boards_hold_root_ca = $1" "$dir/station.toml"
    (cd "$dir" && "$station" run --config station.toml --boards "$boards" --jigs "$jigs" \
        --baud "$baud" --driver "$driver" --headless --report-dir report > run.log 2>&1) ||
        { tail -20 "$dir/run.log" >&2; exit 1; }
    python3 - "$dir/report/summary.json" "$boards" <<'PY'
import json, sys
s = json.load(open(sys.argv[1])); n = int(sys.argv[2]); j = s["jigs"]
assert s["devices"]["provisioned"] == n, s["devices"]
print(f'{j["write_ms_per_board"]:.1f} {j["bytes_written"] / n:.0f} {j["bytes_skipped"] / n:.0f}')
PY
    rm -rf "$dir"
}

declare -a blank held
for r in $(seq 1 "$runs"); do
    b=$(one false); h=$(one true)
    echo "run $r: blank board: $b   root CA on board: $h   (ms a board, bytes sent a board, bytes skipped a board)"
    blank+=("${b%% *}"); held+=("${h%% *}")
done
python3 - "${blank[*]}" "${held[*]}" "$baud" "$boards" "$jigs" "$driver" <<'PY'
import statistics, sys
b = [float(x) for x in sys.argv[1].split()]; h = [float(x) for x in sys.argv[2].split()]
mb, mh = statistics.median(b), statistics.median(h)
driver = "" if sys.argv[6] == "fleet-jig" else f", driver {sys.argv[6]}"
print(f"median at {sys.argv[3]} baud ({sys.argv[4]} boards on {sys.argv[5]} jigs{driver}): blank board {mb:.1f} ms, root CA on board {mh:.1f} ms: {100 * (1 - mh / mb):.1f} % less")
PY
