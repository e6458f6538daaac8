#!/usr/bin/env bash
# Runs a command with a throw-away PostgreSQL server, for the PostgreSQL ledger's tests:
#
#   scripts/postgres.sh cargo test          # what .ci/run runs (with STATION_REQUIRE_POSTGRES=1)
#   scripts/postgres.sh cargo test ledger:: # just the ledger's tests
#
# It finds the server's programs (initdb, pg_ctl: /usr/lib/postgresql/<version>/bin, or on
# PATH), installing Debian's `postgresql` package when they are missing (as root, or with
# sudo); makes a cluster in a new temporary directory, owned by an unprivileged user when run
# as root (PostgreSQL refuses to run as root: the user `station-pg` is created for it); starts
# it listening only on a Unix socket in that directory (no TCP port, so it collides with
# nothing); creates the database `station_test`; exports
# STATION_TEST_POSTGRES=postgres://postgres@/station_test?host=<dir>&port=<port>; runs the
# command; and stops the cluster and deletes the directory when the command ends, whatever
# way it ends. The command's exit status is the script's.
#
# The cluster is a test server: trust authentication on its private socket, nothing else.
# PG_FSYNC=off turns fsync off (faster tests; never for the figures of the README).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'postgres.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 2; }

[[ $# -gt 0 ]] || die "usage: scripts/postgres.sh COMMAND [ARG...]"

# --- 1. the server's programs ------------------------------------------------------------------
find_bin() {
    local d
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        [[ -x $d/initdb && -x $d/pg_ctl ]] && { printf '%s\n' "$d"; return 0; }
    done
    if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
        dirname "$(readlink -f "$(command -v initdb)")"
        return 0
    fi
    return 1
}
if ! bin=$(find_bin); then
    sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    command -v apt-get >/dev/null || die "PostgreSQL's initdb and pg_ctl are missing, and there is no apt-get to install them"
    say "installing PostgreSQL (Debian package postgresql)"
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q postgresql >/dev/null 2>&1 || {
        "${sudo[@]}" apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q postgresql >/dev/null
    }
    bin=$(find_bin) || die "initdb and pg_ctl are still missing after installing postgresql"
fi
say "server programs: $bin ($("$bin/pg_ctl" --version))"

# --- 2. a cluster in a temporary directory, as an unprivileged user ----------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/station-pg.XXXXXX")
as_owner=()
if [[ $(id -u) -eq 0 ]]; then
    owner=station-pg
    id -u "$owner" >/dev/null 2>&1 \
        || useradd --system --no-create-home --shell /usr/sbin/nologin "$owner"
    chown "$owner" "$work"
    as_owner=(runuser -u "$owner" --)
fi
chmod 0755 "$work"
started=
cleanup() {
    if [[ -n $started ]]; then
        "${as_owner[@]}" "$bin/pg_ctl" -D "$work/data" -m fast -w stop >/dev/null 2>&1 \
            || "${as_owner[@]}" "$bin/pg_ctl" -D "$work/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"${as_owner[@]}" "$bin/initdb" -D "$work/data" -U postgres --auth=trust -E UTF8 \
    --no-instructions >"$work/initdb.log" 2>&1 || { cat "$work/initdb.log" >&2; die "initdb failed"; }
port=5432
"${as_owner[@]}" "$bin/pg_ctl" -D "$work/data" -l "$work/server.log" -w -t 60 \
    -o "-c listen_addresses='' -c unix_socket_directories='$work' -p $port -c max_connections=300 -c fsync=${PG_FSYNC:-on}" \
    start >/dev/null || { cat "$work/server.log" >&2; die "the server did not start"; }
started=1
"$bin/psql" -X -q -h "$work" -p "$port" -U postgres -d postgres \
    -c "CREATE DATABASE station_test" >/dev/null || die "cannot create the test database"

export STATION_TEST_POSTGRES="postgres://postgres@/station_test?host=$work&port=$port"
say "STATION_TEST_POSTGRES=$STATION_TEST_POSTGRES"

# --- 3. the command ----------------------------------------------------------------------------
set +e
"$@"
status=$?
set -e
exit "$status"
