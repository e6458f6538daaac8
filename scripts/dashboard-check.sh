#!/usr/bin/env bash
# Dashboard check: drives the real `station` binary's terminal dashboard in tmux, as an
# operator would, and fails when it does not behave.
#
#   scripts/dashboard-check.sh             # debug build (cargo build --locked --bin station)
#   scripts/dashboard-check.sh --release   # release build
#   STATION_BIN=path/to/station scripts/dashboard-check.sh
#
# Run 1 (`station run`, virtual line, config and state in a temporary directory, never the
# repository's state/): the screen shows the provisioned count rising; `p` pauses feeding (the
# count stops rising), `p` resumes (it rises again); `q` lets the devices in flight finish and
# exits 0 with summary.json and station.log in the report folder; the terminal is restored
# (alternate screen left, cursor shown, the tty back in canonical mode with echo).
# Run 2: `q` and at once `q` again stops at once: exit 130, terminal restored. Run 3: SIGTERM
# likewise.
# Every wait polls the screen (tmux capture-pane) with a bound; no sleep is a synchronization.
# Environment: DASHBOARD_TIMEOUT (seconds for each wait, default 60), KEEP=1 keeps the
# temporary directory. Needs tmux (installed with apt-get when missing and run as root).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

timeout=${DASHBOARD_TIMEOUT:-60}
target_dir=${CARGO_TARGET_DIR:-target}

say() { printf 'dashboard-check.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 2; }
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

# --- tools and binary ------------------------------------------------------------------------
need_command tmux tmux
if [[ -n ${STATION_BIN:-} ]]; then
    bin=$STATION_BIN
elif [[ ${1:-} == --release ]]; then
    cargo build --locked --release --bin station
    bin=$target_dir/release/station
else
    cargo build --locked --bin station
    bin=$target_dir/debug/station
fi
bin=$(realpath "$bin")
[[ -x $bin ]] || die "no station binary at $bin"

# --- a station with all its state in a temporary directory -----------------------------------
work=$(mktemp -d)
runs=0
socket=dashboard-check-$$-$runs
cleanup() {
    tmux -L "$socket" kill-server 2>/dev/null || true
    if [[ ${KEEP:-} == 1 ]]; then say "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
cat >"$work/station.toml" <<EOF
[station]
id = "dashboard-check"
ledger = "$work/ledger.db"
report_dir = "$work/reports"

[endpoint]
endpoint = "embedded"

[provision]
template_name = "FleetTemplate"
sessions = 4

[parameters]
ThingName = "{serial}"
SerialNumber = "{serial}"
DeviceLocation = "Seattle"

[jigs]
mode = "virtual"
count = 4
boards = 5000
baud = 115200
flash_dir = "$work/boards"

[emulator]
listen = "127.0.0.1:0"
state_dir = "$work/emulator"
templates = "$root/fixtures/templates"
EOF

# --- the terminal --------------------------------------------------------------------------
pane=check
screen() { tmux -L "$socket" capture-pane -p -t "$pane"; }
# The dashboard's "provisioned N" (empty when not on screen).
count() { screen | sed -n 's/^provisioned \([0-9][0-9]*\).*/\1/p' | head -n 1; }
fail() {
    say "FAILED: $*"
    say "screen:"
    screen >&2 || true
    for log in "$work"/reports/*/station.log; do
        [[ -f $log ]] && { say "tail of $log:"; tail -n 20 "$log" >&2; }
    done
    exit 1
}
# wait_until WHAT COMMAND...: polls COMMAND every 0.2 s for at most $timeout seconds.
wait_until() {
    local what=$1 deadline=$((SECONDS + timeout))
    shift
    until "$@"; do
        ((SECONDS < deadline)) || fail "$what: not within ${timeout} s"
        sleep 0.2
    done
}
on_screen() { screen | grep -qF -- "$1"; }
count_above() { local n; n=$(count); [[ -n $n && $n -gt $1 ]]; }
exited() { [[ -s $work/exit ]]; }

# start_station: `station run` in a fresh 80×24 terminal; after it exits, the shell
# records its exit code and the tty's modes, then waits to be killed.
start_station() {
    rm -f "$work/exit" "$work/stty" "$work/pid"
    # A tmux server of its own per run: a new one on a socket whose server is still going
    # away could fail.
    tmux -L "$socket" kill-server 2>/dev/null || true
    runs=$((runs + 1))
    socket=dashboard-check-$$-$runs
    # The inner bash writes its pid and becomes the station (exec), in the foreground.
    tmux -L "$socket" -f /dev/null new-session -d -s "$pane" -x 80 -y 24 \
        "cd '$work' && bash -c 'echo \$\$ >pid; exec \"\$0\" run --config station.toml' '$bin'; echo \$? >'$work/exit.tmp'; stty -a >'$work/stty'; mv '$work/exit.tmp' '$work/exit'; exec sleep 86400"
}

# The terminal is ours again: normal screen, cursor shown, canonical mode with echo.
check_restored() {
    local alt cursor
    alt=$(tmux -L "$socket" display -p -t "$pane" '#{alternate_on}')
    cursor=$(tmux -L "$socket" display -p -t "$pane" '#{cursor_flag}')
    [[ $alt == 0 ]] || fail "the alternate screen is still on after exit"
    [[ $cursor == 1 ]] || fail "the cursor is still hidden after exit"
    grep -qE '(^| )icanon( |$)' "$work/stty" && grep -qE '(^| )echo( |$)' "$work/stty" \
        || fail "the tty is still in raw mode after exit: $(tr '\n' ' ' <"$work/stty")"
    on_screen "report: " || fail "the report lines are not on the normal screen after exit"
}

# --- run 1: count rises, p pauses, p resumes, q drains and exits 0 ----------------------------
start_station
wait_until "the dashboard shows the provisioned count" count_above 0
first=$(count)
wait_until "the provisioned count rises" count_above "$first"
say "running: provisioned $(count)"

tmux -L "$socket" send-keys -t "$pane" p
wait_until "p shows PAUSED" on_screen "PAUSED"
# The devices in flight finish, then the count must hold: 10 polls in a row (2 s) without a
# change. A line that kept feeding (about 15 boards a second here) never holds that long.
stable=0 last=$(count) deadline=$((SECONDS + timeout))
while ((stable < 10)); do
    ((SECONDS < deadline)) || fail "the provisioned count kept rising while paused"
    sleep 0.2
    now=$(count)
    if [[ $now == "$last" ]]; then stable=$((stable + 1)); else stable=0 last=$now; fi
done
paused=$last
on_screen "in flight 0" || fail "devices still in flight while paused and the count held"
say "paused: provisioned $paused holds"

tmux -L "$socket" send-keys -t "$pane" p
wait_until "p again shows RUNNING" on_screen "RUNNING"
wait_until "the provisioned count rises after resuming" count_above "$paused"
say "resumed: provisioned $(count)"

tmux -L "$socket" send-keys -t "$pane" q
wait_until "q makes the station exit" exited
code=$(<"$work/exit")
[[ $code == 0 ]] || fail "q (drain) exited $code, expected 0"
summary=$(ls "$work"/reports/*/summary.json 2>/dev/null | head -n 1)
[[ -n $summary ]] || fail "no summary.json in $work/reports"
grep -qF '"failed": 0' "$summary" || grep -qF '"failed":0' "$summary" \
    || fail "summary.json reports failed devices: $summary"
[[ -s $(dirname "$summary")/station.log ]] || fail "no station.log beside $summary"
grep -qF 'Feed(Stop)' "$(dirname "$summary")/station.log" \
    || fail "station.log does not record the operator's q"
check_restored
on_screen "stopped feeding by the operator (q)" || fail "the drain is not reported after exit"
say "q: exit 0, report in $(dirname "$summary"), terminal restored"

# --- run 2: q q stops at once (exit 130) ------------------------------------------------------
start_station
wait_until "the dashboard shows the provisioned count (run 2)" count_above 0
# Both keys at once: the second reaches the pipeline before the boards in flight (a jig write
# takes ~170 ms) could finish draining, so the stop is the immediate one.
tmux -L "$socket" send-keys -t "$pane" q q
wait_until "q q makes the station exit" exited
code=$(<"$work/exit")
[[ $code == 130 ]] || fail "q q exited $code, expected 130"
check_restored
say "q q: exit 130, terminal restored"

# --- run 3: SIGTERM while the dashboard runs (exit 130) ---------------------------------------
start_station
wait_until "the dashboard shows the provisioned count (run 3)" count_above 0
kill -TERM "$(<"$work/pid")"
wait_until "SIGTERM makes the station exit" exited
code=$(<"$work/exit")
[[ $code == 130 ]] || fail "SIGTERM exited $code, expected 130"
check_restored
say "SIGTERM: exit 130, terminal restored"
say "ok"
