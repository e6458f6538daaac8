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
# it on a Unix socket in that directory, and with TLS on a free TCP port of 127.0.0.1 (its
# certificate from a CA made for the run with openssl); creates the database `station_test`;
# exports STATION_TEST_POSTGRES=postgres://postgres@/station_test?host=<dir>&port=<port> and
# STATION_TEST_POSTGRES_TLS=postgres://postgres@localhost:<port>/station_test?sslmode=require&sslrootcert=<dir>/tls/ca.pem;
# runs the command; and stops the cluster and deletes the directory when the command ends,
# whatever way it ends. The command's exit status is the script's.
#
# The cluster is a test server: trust authentication, on its private socket and on loopback.
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
# TLS: a CA and a server certificate for localhost, made for this run.
command -v openssl >/dev/null || die "openssl is missing (Debian package openssl)"
tls=$work/tls
mkdir "$tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=station-pg test CA" -keyout "$tls/ca.key" -out "$tls/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=localhost" -keyout "$tls/server.key" -out "$tls/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$tls/ext"
openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" -CAcreateserial \
    -days 2 -extfile "$tls/ext" -out "$tls/server.pem" 2>/dev/null
chmod 0600 "$tls/server.key"
[[ ${#as_owner[@]} -eq 0 ]] || chown -R "$owner" "$tls"

# The port (TCP on loopback, and the name of the Unix socket): a free one, found by trying (the
# server refuses to start on a taken one).
for _ in 1 2 3 4 5 6 7 8; do
    port=$((20000 + RANDOM % 40000))
    if "${as_owner[@]}" "$bin/pg_ctl" -D "$work/data" -l "$work/server.log" -w -t 60 \
        -o "-c listen_addresses='127.0.0.1' -c unix_socket_directories='$work' -p $port -c max_connections=300 -c fsync=${PG_FSYNC:-on} -c ssl=on -c ssl_cert_file='$tls/server.pem' -c ssl_key_file='$tls/server.key'" \
        start >/dev/null 2>&1; then
        started=1
        break
    fi
done
[[ -n $started ]] || { cat "$work/server.log" >&2; die "the server did not start"; }
"$bin/psql" -X -q -h "$work" -p "$port" -U postgres -d postgres \
    -c "CREATE DATABASE station_test" >/dev/null || die "cannot create the test database"

export STATION_TEST_POSTGRES="postgres://postgres@/station_test?host=$work&port=$port"
export STATION_TEST_POSTGRES_TLS="postgres://postgres@localhost:$port/station_test?sslmode=require&sslrootcert=$tls/ca.pem"
say "STATION_TEST_POSTGRES=$STATION_TEST_POSTGRES"
say "STATION_TEST_POSTGRES_TLS=$STATION_TEST_POSTGRES_TLS"

# --- 3. the command ----------------------------------------------------------------------------
set +e
"$@"
status=$?
set -e
exit "$status"
