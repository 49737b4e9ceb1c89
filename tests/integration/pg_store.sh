#!/usr/bin/env bash
# Runs the store unit tests (tests/unit/test_store.c) against a real PostgreSQL: starts a
# throwaway PostgreSQL 15 cluster in a temporary directory, listening on a unix socket only (no
# TCP port, so nothing clashes with another server on the machine), exports EVS_TEST_PG_DSN,
# runs the test binary, and stops and removes the cluster on the way out, whatever happens.
#
#   usage: tests/integration/pg_store.sh path/to/test_store (or another store test: test_appendq)
#
# Exits with the test binary's status. Exits 0 with "skipped: ..." only when the PostgreSQL
# server binaries are absent (apt-get install postgresql-15). PostgreSQL refuses to run as root,
# so as root the server runs as the 'postgres' user (the Debian package creates it).
# EVS_PG_BINDIR overrides where initdb and pg_ctl are looked for.
set -euo pipefail

test_bin=${1:?usage: $0 path/to/test_store}
pg_bindir=${EVS_PG_BINDIR:-/usr/lib/postgresql/15/bin}

if [[ ! -x $pg_bindir/initdb || ! -x $pg_bindir/pg_ctl || ! -x $pg_bindir/postgres ]]; then
  echo "skipped: PostgreSQL server binaries not found in $pg_bindir (apt-get install postgresql-15)"
  exit 0
fi
if [[ ! -x $test_bin ]]; then
  echo "error: $test_bin is not an executable test binary" >&2
  exit 2
fi
test_bin=$(realpath "$test_bin")

as_pg=()
if [[ $(id -u) == 0 ]]; then
  if ! id postgres >/dev/null 2>&1; then
    echo "error: running as root and there is no 'postgres' user to run the server as" >&2
    exit 2
  fi
  as_pg=(runuser -u postgres --)
fi

# Always under /tmp, not $TMPDIR: a unix socket path must stay under about 107 bytes.
tmp=$(mktemp -d /tmp/evs-pg.XXXXXX)
started=0
test_pid=
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
  local rc=$?
  if [[ -n $test_pid ]]; then
    kill "$test_pid" 2>/dev/null || true
    wait "$test_pid" 2>/dev/null || true
  fi
  if [[ $started == 1 ]]; then
    "${as_pg[@]}" "$pg_bindir/pg_ctl" -D "$tmp/data" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  if [[ $rc != 0 && -f $tmp/server.log ]]; then
    echo "--- PostgreSQL server log (last 40 lines) ---" >&2
    tail -n 40 "$tmp/server.log" >&2 || true
  fi
  cd /
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$tmp/sock"
if [[ ${#as_pg[@]} -gt 0 ]]; then
  chown -R postgres: "$tmp"
fi
cd "$tmp" # the server user must be able to enter the working directory

# fsync off: the cluster is thrown away, and the tests measure nothing about durability.
"${as_pg[@]}" "$pg_bindir/initdb" -D "$tmp/data" -U evs -A trust -E UTF8 --locale=C \
  --no-sync >"$tmp/initdb.log" 2>&1 || { cat "$tmp/initdb.log" >&2; exit 1; }
started=1
"${as_pg[@]}" "$pg_bindir/pg_ctl" -D "$tmp/data" -l "$tmp/server.log" -w -t 60 start \
  -o "-c listen_addresses='' -c unix_socket_directories='$tmp/sock' -c port=5432 -c fsync=off" \
  >/dev/null

export EVS_TEST_PG_DSN="host=$tmp/sock port=5432 user=evs dbname=postgres"
echo "PostgreSQL $("$pg_bindir/postgres" --version | awk '{print $3}') on $tmp/sock"
# In the background with `wait`, so that a signal to this script is handled at once (bash
# defers traps until a foreground child exits) and cleanup can stop the tests.
"$test_bin" &
test_pid=$!
rc=0
wait "$test_pid" || rc=$?
test_pid=
exit "$rc"
