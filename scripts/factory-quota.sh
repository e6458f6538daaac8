#!/usr/bin/env bash
# A factory's stations on one account quota (provision.shared_quota), measured: STATIONS
# station processes (`station loadtest --devices N`, distinct station ids, one PostgreSQL
# ledger from scripts/postgres.sh, fsync on) against one standalone `station emulate` whose
# account quotas are RegisterThing TPS and CreateCertificateFromCsr CERT_TPS ([emulator.quotas]),
# each station configured with that quota (provision.*_tps).
#
#   bash scripts/factory-quota.sh accept    # shared_quota on and off, interleaved, RUNS times each
#   bash scripts/factory-quota.sh ceiling   # the highest shared-quota rate the database sustains
#   bash scripts/factory-quota.sh bucket    # the grant statement alone under pgbench
#   bash scripts/factory-quota.sh kill      # kill -9 one of three stations mid-run (shared quota)
#
# accept: DEVICES per station (default 400: two minutes at 10/s together); prints per run the
# devices/s of the stations together (all devices over the wall time from the first start to
# the last end), failed devices, throttles and calls (from each station's summary.json:
# throttled, and the calls that got an answer), and with the shared quota the database's
# round trips for tokens (quota_buckets.grants) and the throttles it saw; then the medians.
#
# ceiling: the emulator without quotas, the stations at provision.*_tps = each of RATES in
# turn (the shared bucket is then the only limit): devices/s together against the rate, token
# round trips per second, and the PostgreSQL server's CPU seconds per second of the run (the
# postmaster and its backends, from /proc). STEP_S seconds' worth of devices a step.
# SHARED="true false" runs each step without the shared quota too (interleaved): when both
# top out alike, the stations, not the shared bucket, are the limit.
#
# bucket: the grant statement of ledger/postgres/quota.rs alone, on one row, from CLIENTS
# (default "1 3 16") pgbench connections for BUCKET_S (10) seconds each: grants/s the row
# sustains, and the server's CPU seconds per second. With synchronous_commit off, as the
# station's quota connection sets it.
#
# kill: three stations (line-1…line-3, shared quota on, DEVICES each, default 600: none ends
# before the run does) against the emulator and quotas of `accept`; KILL_AT (40) seconds after
# they start, line-3 gets SIGKILL; line-1 and line-2 run on for AFTER (40) seconds and are then
# stopped with SIGINT (a load test writes its report on Ctrl-C). From the ledger (the
# `registered` events' at_ms, a load test's last state), per run: the devices/s of the three
# together in [kill-30 s, kill) and of the two survivors together in [kill+5 s, stop) (the
# first seconds excluded: the dead station counts in the others' share until it has taken no
# tokens for a second), and each survivor's; the survivors' together in [kill, kill+5 s) too;
# their failed devices (summary.json and the ledger's `failed` rows); throttles (the
# survivors' summary.json, and every throttle the emulator sent, from its debug log); the
# quota_takers rows that took register_thing tokens in the second before the survivors were
# stopped (expected: line-1,line-2) and how long before the kill line-3's last grant was (its
# row stays, its time no longer moves); line-3's unfinished devices; the shared rate and
# throttles in quota_buckets at the end (expected: TPS and 0). Then the medians over RUNS
# (default 3) runs.
#
# Release build (a measurement). Each run has a database of its own (fresh quota rows) and an
# emulator with an empty registry.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
mode=${1:-accept}
[[ $mode == accept || $mode == ceiling || $mode == bucket || $mode == kill ]] || { echo "usage: $0 accept|ceiling|bucket|kill" >&2; exit 2; }

if [[ -z ${STATION_TEST_POSTGRES:-} ]]; then
    exec bash scripts/postgres.sh bash "$0" "$@"
fi

stations=${STATIONS:-3}
runs=${RUNS:-$([[ $mode == kill ]] && echo 3 || echo 2)}
tps=${TPS:-10}
cert_tps=${CERT_TPS:-15}
devices=${DEVICES:-$([[ $mode == kill ]] && echo 600 || echo 400)}
kill_at=${KILL_AT:-40}
after=${AFTER:-40}
sessions=${SESSIONS:-16}
rates=${RATES:-"50 100 200 400"}
step_s=${STEP_S:-20}

target_dir=${CARGO_TARGET_DIR:-target}
[[ $target_dir == /* ]] || target_dir=$root/$target_dir
if [[ -n ${STATION_BIN:-} ]]; then
    station=$STATION_BIN # (a smoke run of the script with another build)
else
    [[ $mode == bucket ]] || cargo build --release --locked --quiet --bin station
    station=$target_dir/release/station
fi
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

host=${STATION_TEST_POSTGRES#*host=}
host=${host%%&*}
port=${STATION_TEST_POSTGRES##*port=}
port=${port%%&*}
psql_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r | head -n1)/psql
[[ -x $psql_bin ]] || psql_bin=psql
sql() { "$psql_bin" -X -q -A -t -h "$host" -p "$port" -U postgres -d "$1" -c "$2"; }
postmaster=$(head -n1 "$host/data/postmaster.pid")
server_cpu() { # CPU seconds of the server: the postmaster, its ended children, the live ones
    local total f pid
    read -r -a f <"/proc/$postmaster/stat"
    total=$((f[13] + f[14] + f[15] + f[16]))
    for pid in $(pgrep -P "$postmaster" || true); do
        { read -r -a f <"/proc/$pid/stat"; } 2>/dev/null || continue
        total=$((total + f[13] + f[14]))
    done
    echo "scale=2; $total / $(getconf CLK_TCK)" | bc
}

await_line() { # FILE SED-EXPR PID WHAT: the first match in FILE, waiting for it
    local file=$1 expr=$2 pid=$3 what=$4 found=
    for ((i = 0; i < 1200; i++)); do
        found=$(sed -n "$expr" "$file" 2>/dev/null | head -n1)
        [[ -n $found ]] && { printf '%s' "$found"; return; }
        kill -0 "$pid" 2>/dev/null || { cat "$file" >&2; echo "$what exited" >&2; exit 1; }
        sleep 0.1
    done
    echo "no $what within 120 s" >&2
    exit 1
}

# An emulator with fresh state: $1 dir, $2 its [emulator.quotas] lines.
start_emulator() {
    local dir=$1
    mkdir -p "$dir"
    printf '[emulator]\nlisten = "127.0.0.1:0"\nstate_dir = "%s"\ntemplates = "%s"\n[emulator.quotas]\n%s\n' \
        "$dir/emulator" "$root/fixtures/templates" "$2" >"$dir/emu.toml"
    "$station" emulate --config "$dir/emu.toml" >"$dir/emu.out" 2>"$dir/emu.err" &
    emu_pid=$!
    pids+=("$emu_pid")
    emu_addr=$(await_line "$dir/emu.out" 's/.*listening on \([0-9.]*:[0-9]*\).*/\1/p' "$emu_pid" "emulator address")
}

stop_emulator() {
    kill "$emu_pid" 2>/dev/null && wait "$emu_pid" 2>/dev/null || true
}

# A fresh database $2 and the configurations $1/line-1.toml … line-STATIONS.toml on it:
# $3 shared_quota (true|false), $4 register tps, $5 cert tps. Sets url.
write_configs() {
    local dir=$1 db=$2 shared=$3 rt=$4 ct=$5 k
    sql postgres "CREATE DATABASE $db"
    url="postgres://postgres@/$db?host=$host&port=$port"
    for ((k = 1; k <= stations; k++)); do
        cat >"$dir/line-$k.toml" <<EOF
[station]
id = "line-$k"
ledger = "$url"
ledger_key = "$dir/line-$k.key"
report_dir = "$dir/reports"
[endpoint]
endpoint = "localhost"
port = ${emu_addr##*:}
claim_cert = "$dir/emulator/claim-cert.pem"
claim_key = "$dir/emulator/claim-key.pem"
root_ca = "$dir/emulator/ca.pem"
[provision]
sessions = $sessions
register_thing_tps = $rt
create_certificate_tps = $ct
shared_quota = $shared
[parameters]
ThingName = "{serial}"
SerialNumber = "{serial}"
DeviceLocation = "Seattle"
EOF
    done
}

# Starts every station's load test of $2 devices (configurations in $1; report folders
# $1/r-K, logs $1/line-K.log). Their pids in lpids (line-K is lpids[K-1]).
start_loadtests() {
    local dir=$1 n=$2 k
    lpids=()
    for ((k = 1; k <= stations; k++)); do
        "$station" loadtest --config "$dir/line-$k.toml" --devices "$n" --headless \
            --report-dir "$dir/r-$k" >"$dir/line-$k.log" 2>&1 &
        lpids+=($!)
        pids+=($!)
    done
}

# One run: $1 dir, $2 database, $3 shared_quota (true|false), $4 register tps, $5 cert tps,
# $6 devices per station. Prints "devices/s failed throttled calls wall_s grants server_cpu_s".
run() {
    local dir=$1 db=$2 shared=$3 rt=$4 ct=$5 n=$6 k cpu0 cpu1 t0 t1
    write_configs "$dir" "$db" "$shared" "$rt" "$ct"
    cpu0=$(server_cpu)
    t0=$(date +%s.%N)
    start_loadtests "$dir" "$n"
    local failed_start=0
    for p in "${lpids[@]}"; do wait "$p" || failed_start=1; done
    t1=$(date +%s.%N)
    cpu1=$(server_cpu)
    if ((failed_start)); then
        for ((k = 1; k <= stations; k++)); do tail -n 20 "$dir/line-$k.log" >&2; done
    fi
    python3 - "$dir" "$stations" "$t0" "$t1" <<'PY' >"$dir/figures"
import json, sys
d, n, t0, t1 = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
prov = failed = throttled = calls = 0
for k in range(1, n + 1):
    s = json.load(open(f"{d}/r-{k}/summary.json"))
    prov += s["devices"]["provisioned"]
    failed += s["devices"]["failed"]
    throttled += s["throttled"]
    calls += sum(s["stages"].get(a, {}).get("count", 0) for a in ("create_certificate", "create_keys", "register_thing"))
calls += throttled
print(f"{prov / (t1 - t0):.2f} {failed} {throttled} {calls} {t1 - t0:.1f}")
PY
    local grants
    grants=$(sql "$db" "SELECT coalesce(sum(grants), 0) || ' ' || coalesce(sum(throttles), 0) FROM quota_buckets" 2>/dev/null || echo "0 0")
    echo "$(cat "$dir/figures") $grants $(echo "$cpu1 - $cpu0" | bc)"
}

median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

now_ms() { date +%s%3N; }
sleep_until_ms() { local d=$(($1 - $(now_ms))); ((d <= 0)) || sleep "$(echo "scale=3; $d / 1000" | bc)"; }

# One kill run: $1 dir, $2 database. The shared quota on, the last station (line-STATIONS)
# killed KILL_AT s after the start, the others stopped AFTER s later. Writes to $1/kill-figures
# "before/s first5/s after/s each_after failed throttled dead_unfinished emu_throttled takers
# dead_last_grant_s db_rate db_throttles" (each_after: the survivors' devices/s, comma-joined).
kill_run() {
    local dir=$1 db=$2 t0 kill_ms stop_ms dead dead_pid k status p
    write_configs "$dir" "$db" true "$tps" "$cert_tps"
    t0=$(now_ms)
    start_loadtests "$dir" "$devices"
    dead=line-$stations
    dead_pid=${lpids[stations - 1]}
    sleep_until_ms $((t0 + kill_at * 1000))
    for p in "${lpids[@]}"; do
        kill -0 "$p" 2>/dev/null || { cat "$dir"/line-*.log >&2; echo "a station ended before the kill: raise DEVICES" >&2; exit 1; }
    done
    kill -9 "$dead_pid"
    kill_ms=$(now_ms)
    wait "$dead_pid" 2>/dev/null || true
    sleep_until_ms $((kill_ms + after * 1000))
    # Who took register_thing tokens in the last second, while the survivors still run.
    local takers dead_last
    takers=$(sql "$db" "SELECT coalesce(string_agg(station, ',' ORDER BY station), '-') FROM quota_takers
                        WHERE api = 'register_thing' AND at > extract(epoch FROM clock_timestamp()) - 1")
    dead_last=$(sql "$db" "SELECT coalesce(round((at - $kill_ms / 1000.0)::numeric, 2)::text, '-') FROM quota_takers
                           WHERE api = 'register_thing' AND station = '$dead'")
    stop_ms=$(now_ms)
    for ((k = 0; k < stations - 1; k++)); do
        kill -0 "${lpids[k]}" 2>/dev/null || { cat "$dir/line-$((k + 1)).log" >&2; echo "line-$((k + 1)) ended before it was stopped: raise DEVICES" >&2; exit 1; }
        kill -INT "${lpids[k]}"
    done
    for ((k = 0; k < stations - 1; k++)); do
        status=0
        wait "${lpids[k]}" || status=$?
        # 130: stopped by Ctrl-C, as asked.
        ((status == 0 || status == 130)) || { tail -n 20 "$dir/line-$((k + 1)).log" >&2; echo "line-$((k + 1)) exited $status" >&2; }
    done
    local counts
    counts=$(sql "$db" "WITH r AS (SELECT d.station, e.at_ms FROM events e JOIN devices d ON d.id = e.device_id
                                   WHERE e.state = 'registered')
        SELECT (SELECT count(*) FROM r WHERE at_ms >= $kill_ms - 30000 AND at_ms < $kill_ms)
            || ' ' || (SELECT count(*) FROM r WHERE station <> '$dead' AND at_ms >= $kill_ms AND at_ms < $kill_ms + 5000)
            || ' ' || (SELECT count(*) FROM r WHERE station <> '$dead' AND at_ms >= $kill_ms + 5000 AND at_ms < $stop_ms)
            || ' ' || (SELECT coalesce(string_agg(n::text, ',' ORDER BY station), '-') FROM
                         (SELECT station, count(*) AS n FROM r WHERE station <> '$dead'
                          AND at_ms >= $kill_ms + 5000 AND at_ms < $stop_ms GROUP BY station) s)
            || ' ' || (SELECT count(*) FROM devices WHERE state = 'failed')
            || ' ' || (SELECT count(*) FROM devices WHERE station = '$dead'
                       AND state NOT IN ('registered', 'verified', 'failed', 'interrupted'))
            || ' ' || (SELECT rate FROM quota_buckets WHERE api = 'register_thing')
            || ' ' || (SELECT sum(throttles) FROM quota_buckets)")
    local before_n first_n after_n each failed unfinished db_rate db_thr
    read -r before_n first_n after_n each failed unfinished db_rate db_thr <<<"$counts"
    python3 - "$dir" "$stations" "$before_n" "$first_n" "$after_n" "$each" $((stop_ms - kill_ms - 5000)) "$failed" <<'PY' >"$dir/kill-figures.1"
import json, sys
d, n, before, first, after, each, after_ms, failed = sys.argv[1:9]
n, after_s = int(n), int(after_ms) / 1000
throttled = summary_failed = 0
for k in range(1, n):
    s = json.load(open(f"{d}/r-{k}/summary.json"))
    throttled += s["throttled"]
    summary_failed += s["devices"]["failed"]
each = ",".join(f"{int(x) / after_s:.2f}" for x in each.split(",")) if each != "-" else "-"
print(f"{int(before) / 30:.2f} {int(first) / 5:.2f} {int(after) / after_s:.2f} {each} {max(int(failed), summary_failed)} {throttled}")
PY
    stop_emulator
    local emu_thr
    emu_thr=$(grep -c 'Throttled' "$dir/emu.err" || true)
    echo "$(cat "$dir/kill-figures.1") $unfinished $emu_thr $takers $dead_last $db_rate $db_thr" >"$dir/kill-figures"
}

if [[ $mode == bucket ]]; then
    sql postgres "CREATE DATABASE bucket"
    sql bucket "$(cat src/ledger/postgres/migrations/0004.sql)"
    sql bucket "INSERT INTO quota_buckets (api, quota, rate, increase, floor, tat, last_increase, set_by)
                VALUES ('register_thing', 1000, 1000, 50, 0.5, 0, extract(epoch FROM clock_timestamp()), 'bench')"
    # The statement as quota.rs sends it, its parameters written in.
    sed -n '/^const GRANT: &str = "$/,/";$/p' src/ledger/postgres/quota.rs | sed '1d; $s/";$//' \
        | sed "s/\\\$1/'register_thing'/; s/\\\$2/0.1/; s/\\\$3/'bench'/" >"$work/grant.sql"
    printf ';\n' >>"$work/grant.sql"
    grep -q "RETURNING g.k" "$work/grant.sql" || { cat "$work/grant.sql" >&2; exit 1; }
    pgbench=$(dirname "$psql_bin")/pgbench
    printf '%7s %3s %10s %14s\n' clients run grants/s server_cpu/s
    for ((i = 1; i <= runs; i++)); do
        for c in ${CLIENTS:-1 3 16}; do
            cpu0=$(server_cpu)
            out=$(PGOPTIONS="-c synchronous_commit=off" "$pgbench" -n -h "$host" -p "$port" -U postgres -c "$c" -j "$c" -T "${BUCKET_S:-10}" -M prepared -f "$work/grant.sql" bucket 2>&1)
            cpu1=$(server_cpu)
            g=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out" | head -n1)
            printf '%7s %3d %10s %14.2f\n' "$c" "$i" "$g" "$(echo "($cpu1 - $cpu0) / ${BUCKET_S:-10}" | bc -l)"
        done
    done
elif [[ $mode == kill ]]; then
    ((stations >= 2)) || { echo "kill: STATIONS must be at least 2" >&2; exit 2; }
    printf '%3s %9s %9s %8s %11s %6s %9s %10s %7s %13s %15s %7s %12s\n' run before/s first5/s after/s each_after failed throttled dead_unfin emu_thr takers dead_last_grant db_rate db_throttles
    before_all='' first_all='' after_all='' failed_all='' thr_all='' emu_all=''
    for ((i = 1; i <= runs; i++)); do
        dir=$work/kill-$i
        RUST_LOG=fleet_emulator::api=debug start_emulator "$dir" "register_thing = $tps
create_certificate_from_csr = $cert_tps"
        kill_run "$dir" "k_$i"
        read -r before first after_rate each failed throttled unfinished emu_thr takers dead_last db_rate db_thr <"$dir/kill-figures"
        printf '%3d %9s %9s %8s %11s %6s %9s %10s %7s %13s %15s %7s %12s\n' "$i" "$before" "$first" "$after_rate" "$each" "$failed" "$throttled" "$unfinished" "$emu_thr" "$takers" "$dead_last" "$db_rate" "$db_thr"
        before_all+="$before " first_all+="$first " after_all+="$after_rate " failed_all+="$failed " thr_all+="$throttled " emu_all+="$emu_thr "
    done
    printf 'median: %s devices/s with %d stations in [kill-30 s, kill), %s with %d in [kill, kill+5 s), %s in [kill+5 s, kill+%d s); failed %s, throttled %s (survivors), %s (emulator); RegisterThing %s TPS, %d devices each, kill at %d s\n' \
        "$(echo "$before_all" | median)" "$stations" "$(echo "$first_all" | median)" "$((stations - 1))" "$(echo "$after_all" | median)" "$after" \
        "$(echo "$failed_all" | median)" "$(echo "$thr_all" | median)" "$(echo "$emu_all" | median)" "$tps" "$devices" "$kill_at"
elif [[ $mode == accept ]]; then
    printf '%-7s %3s %9s %6s %9s %6s %7s %7s %9s %10s\n' shared run devices/s failed throttled calls thr% wall_s db_grants db_throttles
    declare -A rate_of thr_of
    for ((i = 1; i <= runs; i++)); do
        for shared in true false; do
            dir=$work/$shared-$i
            start_emulator "$dir" "register_thing = $tps
create_certificate_from_csr = $cert_tps"
            read -r rate failed throttled calls wall grants db_thr _cpu \
                < <(run "$dir" "q_${shared}_$i" "$shared" "$tps" "$cert_tps" "$devices")
            stop_emulator
            pct=$(echo "scale=2; 100 * $throttled / $calls" | bc)
            printf '%-7s %3d %9s %6s %9s %6s %7s %7s %9s %10s\n' "$shared" "$i" "$rate" "$failed" "$throttled" "$calls" "$pct" "$wall" "$grants" "$db_thr"
            rate_of[$shared]+="$rate "
            thr_of[$shared]+="$pct "
        done
    done
    for shared in true false; do
        printf 'median shared_quota=%-5s %s devices/s, %s %% of calls throttled (%d stations, %d devices each, RegisterThing %s TPS)\n' \
            "$shared" "$(echo "${rate_of[$shared]}" | median)" "$(echo "${thr_of[$shared]}" | median)" "$stations" "$devices" "$tps"
    done
else
    printf '%7s %8s %3s %9s %6s %9s %7s %9s %12s %14s\n' shared rate/s run devices/s failed throttled wall_s grants/s tokens/grant server_cpu/s
    for ((i = 1; i <= runs; i++)); do
        for r in $rates; do
            for shared in ${SHARED:-true}; do
                dir=$work/ceiling-$shared-$r-$i
                n=$(((r * step_s + stations - 1) / stations))
                start_emulator "$dir" "profile = \"unlimited\""
                read -r rate failed throttled calls wall grants _thr cpu \
                    < <(run "$dir" "c_${shared}_${r}_$i" "$shared" "$r" "$r" "$n")
                stop_emulator
                tokens=$(sql "c_${shared}_${r}_$i" "SELECT coalesce(sum(tokens), 0) FROM quota_buckets" 2>/dev/null || echo 0)
                printf '%7s %8s %3d %9s %6s %9s %7s %9.1f %12.1f %14.3f\n' "$shared" "$r" "$i" "$rate" "$failed" "$throttled" "$wall" \
                    "$(echo "$grants / $wall" | bc -l)" "$(echo "$tokens / ($grants + ($grants == 0))" | bc -l)" "$(echo "$cpu / $wall" | bc -l)"
            done
        done
    done
fi

