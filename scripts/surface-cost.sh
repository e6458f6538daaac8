#!/usr/bin/env bash
# What the operator surfaces cost: the station's CPU time (user + system, from GNU time) on the
# same `station loadtest` against a standalone emulator (its own process, so its CPU is not
# counted), in four modes, interleaved round by round so machine noise hits all alike:
#
#   headless            the progress line (today's default off a terminal)
#   metrics             headless, with /metrics scraped every second
#   headless-tty        headless in a 200×60 tmux pane: the baseline of the dashboard modes (a
#                       terminal and its tmux server on the same 2 cores cost the station CPU
#                       whatever it draws)
#   dashboard           the ratatui dashboard in a 200×60 tmux pane
#   dashboard+metrics   both
#
#   scripts/surface-cost.sh                  # 5,000 devices, 3 rounds
#   DEVICES=2000 ROUNDS=5 scripts/surface-cost.sh
#   MODES="headless metrics" PROFILE=dev scripts/surface-cost.sh   # a subset, debug build
#
# Prints every run, then per mode the median CPU seconds, the median wall time, the extra
# process CPU over headless as a share of one core for the run's duration (noisy: whole runs
# differ by several percent), and the CPU of the surface threads themselves (`dashboard`,
# `metrics-http`, sampled from /proc) as a share of one core (direct). Builds the release binary.
# Needs tmux (installed with apt-get when missing) and python3 (the scraper).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
devices=${DEVICES:-5000}
rounds=${ROUNDS:-3}
modes=${MODES:-"headless metrics headless-tty dashboard dashboard+metrics"}
target_dir=${CARGO_TARGET_DIR:-target}
[[ $target_dir == /* ]] || target_dir=$root/$target_dir

say() { printf 'surface-cost.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 2; }
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

need_command tmux tmux
[[ -x /usr/bin/time ]] || die "GNU time (/usr/bin/time) is needed: apt-get install time"

profile=${PROFILE:-release}
cargo build --profile "$profile" --locked --quiet --bin station
station=$target_dir/$([[ $profile == dev ]] && echo debug || echo "$profile")/station

# Off a terminal the station is headless anyway; say so explicitly where the flag exists.
headless=()
"$station" loadtest --help | grep -q -- '--headless' && headless=(--headless)

work=$(mktemp -d)
emu_pid=
tmux_socket="surface-cost-$$"
cleanup() {
    [[ -n $emu_pid ]] && kill "$emu_pid" 2>/dev/null && wait "$emu_pid" 2>/dev/null
    tmux -L "$tmux_socket" kill-server 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# Waits (bounded) until FILE has a line matching the sed expression; prints the match.
await_line() {
    local file=$1 expr=$2 pid=$3 what=$4 found=
    for ((i = 0; i < 1200; i++)); do
        found=$(sed -n "$expr" "$file" 2>/dev/null | head -n1)
        [[ -n $found ]] && { printf '%s' "$found"; return; }
        kill -0 "$pid" 2>/dev/null || { cat "$file" >&2; die "$what exited"; }
        sleep 0.1
    done
    die "no $what within 120 s"
}

# One emulator per run, with fresh state: every run sees the same empty registry.
start_emulator() {
    local dir=$1
    mkdir -p "$dir"
    cat >"$dir/emu.toml" <<EOF
[emulator]
listen = "127.0.0.1:0"
state_dir = "$dir/emulator"
templates = "$root/fixtures/templates"
EOF
    "$station" emulate --config "$dir/emu.toml" >"$dir/emu.out" 2>"$dir/emu.err" &
    emu_pid=$!
    local addr
    addr=$(await_line "$dir/emu.out" 's/.*listening on \([0-9.]*:[0-9]*\).*/\1/p' "$emu_pid" "emulator address")
    cat >"$dir/station.toml" <<EOF
[station]
id = "cost"
ledger = "$dir/ledger.db"
report_dir = "$dir/reports"
[endpoint]
endpoint = "localhost"
port = ${addr##*:}
claim_cert = "$dir/emulator/claim-cert.pem"
claim_key = "$dir/emulator/claim-key.pem"
root_ca = "$dir/emulator/ca.pem"
[parameters]
ThingName = "{serial}"
SerialNumber = "{serial}"
DeviceLocation = "Seattle"
EOF
}

stop_emulator() {
    kill "$emu_pid" 2>/dev/null && wait "$emu_pid" 2>/dev/null || true
    emu_pid=
}

# Scrapes http://ADDR/metrics every second while PID lives.
scraper() {
    local errfile=$1 pid=$2 addr
    addr=$(await_line "$errfile" 's|^metrics: http://\(.*\)/metrics$|\1|p' "$pid" "metrics address")
    python3 - "$addr" "$pid" <<'EOF'
import os, sys, time, urllib.request
addr, pid = sys.argv[1], int(sys.argv[2])
n = 0
while True:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        break
    t = time.monotonic()
    try:
        urllib.request.urlopen(f"http://{addr}/metrics", timeout=5).read()
        n += 1
    except OSError:
        pass
    time.sleep(max(0.0, 1.0 - (time.monotonic() - t)))
print(n, file=sys.stderr)
EOF
}

# Samples the CPU time of the station's surface threads (`dashboard`, `metrics-http`: the
# drawing and the scrape rendering happen there) until PID exits; writes their last readings
# in ms ("dashboard metrics") to FILE. A direct measure, free of the whole process's run-to-run
# noise.
thread_sampler() {
    local pid=$1 file=$2 d=0 m=0 t comm stat rest ticks hz
    hz=$(getconf CLK_TCK)
    local -a f
    while kill -0 "$pid" 2>/dev/null; do
        for t in /proc/"$pid"/task/*; do
            comm=$(cat "$t/comm" 2>/dev/null) || continue
            case $comm in dashboard | metrics-http) ;; *) continue ;; esac
            stat=$(cat "$t/stat" 2>/dev/null) || continue
            rest=${stat##*) }
            read -r -a f <<<"$rest"
            # utime and stime: fields 14 and 15 of stat, 12th and 13th after the name.
            ticks=$((f[11] + f[12]))
            if [[ $comm == dashboard ]]; then d=$ticks; else m=$ticks; fi
        done
        sleep 0.2 # the sampling interval, not a synchronization
    done
    echo "$((d * 1000 / hz)) $((m * 1000 / hz))" >"$file"
}

# The pid of the station started with config $1 (bounded wait).
station_pid() {
    local pattern pid=
    # The command line as a regular expression: a run's folder may hold a `+`.
    pattern=$(printf '%s' "$station loadtest --config $1" | sed 's/[][\\.*^$+?(){}|]/\\&/g')
    for ((i = 0; i < 600; i++)); do
        pid=$(pgrep -f "^$pattern" | head -n1 || true)
        [[ -n $pid ]] && break
        sleep 0.1
    done
    [[ -n $pid ]] || die "the station did not start"
    printf '%s' "$pid"
}

# Runs one load test in MODE; prints "cpu_s wall_s dashboard_ms metrics_ms".
one_run() {
    local mode=$1 dir=$2
    start_emulator "$dir"
    local args=(loadtest --config "$dir/station.toml" --devices "$devices" --report-dir "$dir/report")
    [[ $mode == *metrics* ]] && args+=(--metrics-addr 127.0.0.1:0)
    local timing=$dir/time.txt
    if [[ $mode == dashboard* || $mode == headless-tty ]]; then
        local scraper_pid=
        [[ $mode == headless-tty ]] && args+=("${headless[@]}")
        # A terminal of its own: the dashboard is on because stdout is a tty.
        printf '#!/usr/bin/env bash\n/usr/bin/time -f "%%U %%S %%e" -o %q %q' "$timing" "$station" >"$dir/cmd.sh"
        printf ' %q' "${args[@]}" >>"$dir/cmd.sh"
        printf ' 2>%q\necho $? >%q\ntmux -L %q wait-for -S done\n' "$dir/err.txt" "$dir/rc" "$tmux_socket" >>"$dir/cmd.sh"
        chmod +x "$dir/cmd.sh"
        tmux -L "$tmux_socket" new-session -d -x 200 -y 60 "$dir/cmd.sh"
        local pid sampler_pid
        pid=$(station_pid "$dir/station.toml")
        thread_sampler "$pid" "$dir/threads" &
        sampler_pid=$!
        if [[ $mode == *metrics* ]]; then
            scraper "$dir/err.txt" "$pid" 2>"$dir/scrapes" &
            scraper_pid=$!
        fi
        tmux -L "$tmux_socket" wait-for done
        # Our helpers only: a bare `wait` would wait for the emulator too, which never ends.
        wait "$sampler_pid"
        [[ -z $scraper_pid ]] || wait "$scraper_pid"
    else
        /usr/bin/time -f "%U %S %e" -o "$timing" "$station" "${args[@]}" "${headless[@]}" \
            >"$dir/out.txt" 2>"$dir/err.txt" &
        local time_pid=$! pid sampler_pid
        pid=$(station_pid "$dir/station.toml")
        thread_sampler "$pid" "$dir/threads" &
        sampler_pid=$!
        if [[ $mode == *metrics* ]]; then
            scraper "$dir/err.txt" "$pid" 2>"$dir/scrapes"
        fi
        local rc=0
        wait "$time_pid" || rc=$?
        wait "$sampler_pid"
        echo "$rc" >"$dir/rc"
    fi
    stop_emulator
    [[ $(<"$dir/rc") == 0 ]] || { tail -n 20 "$dir/err.txt" >&2; die "$mode: the load test exited with $(<"$dir/rc")"; }
    local user sys wall dash_ms metrics_ms
    read -r user sys wall <"$timing"
    read -r dash_ms metrics_ms <"$dir/threads"
    printf '%.2f %.2f %d %d\n' "$(echo "$user + $sys" | bc -l)" "$wall" "$dash_ms" "$metrics_ms"
}

declare -A cpu wall share
for ((r = 1; r <= rounds; r++)); do
    for mode in $modes; do
        dir=$work/$r-$mode
        read -r c w dms mms < <(one_run "$mode" "$dir")
        scrapes=$( [[ -f $dir/scrapes ]] && tail -n1 "$dir/scrapes" || echo -)
        sh=$(echo "($dms + $mms) / 1000 / $w * 100" | bc -l)
        printf 'round %d %-18s cpu %6.2f s  wall %6.2f s  scrapes %-3s  dashboard thread %4d ms  metrics thread %4d ms  (%.2f %% of one core)\n' \
            "$r" "$mode" "$c" "$w" "$scrapes" "$dms" "$mms" "$sh"
        cpu[$mode]+="$c "
        wall[$mode]+="$w "
        share[$mode]+="$sh "
        rm -rf "$dir"
    done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
echo
echo "$devices devices, $rounds rounds, medians:"
for mode in $modes; do
    c=$(echo "${cpu[$mode]}" | median)
    w=$(echo "${wall[$mode]}" | median)
    t=$(echo "${share[$mode]}" | median)
    # The dashboard modes against headless in the same kind of terminal, the others against
    # headless without one.
    base=headless
    [[ $mode == dashboard* && -n ${cpu[headless-tty]:-} ]] && base=headless-tty
    base_cpu=$(echo "${cpu[$base]:-}" | median)
    if [[ -n $base_cpu && $mode != "$base" && $mode != headless ]]; then
        extra=$(echo "($c - $base_cpu) / $w * 100" | bc -l)
        printf '%-18s cpu %6.2f s  wall %6.2f s  process CPU over %s: %+.2f %% of one core; surface threads: %.2f %% of one core\n' "$mode" "$c" "$w" "$base" "$extra" "$t"
    else
        printf '%-18s cpu %6.2f s  wall %6.2f s\n' "$mode" "$c" "$w"
    fi
done
