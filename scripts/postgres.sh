#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the store tests: Debian's `postgresql` (installed when
# missing), a cluster made by initdb in a temporary directory, on loopback at a free port,
# trusting local connections. Nothing outside that directory is touched, and nothing here
# uses a PostgreSQL this script did not start.
#
#   eval "$(scripts/postgres.sh start)"       # sets TETHER_TEST_PG_URL and TETHER_TEST_PG_DIR
#   scripts/postgres.sh stop "$TETHER_TEST_PG_DIR"
#
# The tests create a database of their own each (CREATE DATABASE t_<random>) and drop it.
set -euo pipefail

say() { echo "postgres.sh: $*" >&2; }

# The newest server binaries Debian installed (/usr/lib/postgresql/<major>/bin).
find_pgbin() {
  local best="" dir
  for dir in /usr/lib/postgresql/*/bin; do
    [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ] || continue
    if [ -z "$best" ] || [ "$(basename "$(dirname "$dir")")" -gt "$(basename "$(dirname "$best")")" ]; then
      best="$dir"
    fi
  done
  printf '%s' "$best"
}

# Runs a command as the cluster's owner: initdb and postgres refuse to run as root.
as_owner() {
  local owner="$1"; shift
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u "$owner" -- "$@"
  else
    "$@"
  fi
}

start() {
  local pgbin
  pgbin="$(find_pgbin)"
  if [ -z "$pgbin" ]; then
    say "installing postgresql (apt)"
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo apt-get update >&2
    # Without an init system the package's service is not started (invoke-rc.d says so).
    $sudo env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y --no-install-recommends postgresql >&2
    pgbin="$(find_pgbin)"
  fi
  [ -n "$pgbin" ] || { say "no initdb under /usr/lib/postgresql/*/bin after install"; exit 1; }

  local owner
  owner="$(id -un)"
  if [ "$(id -u)" -eq 0 ]; then
    if id postgres >/dev/null 2>&1; then owner=postgres; else owner=nobody; fi
  fi
  local dir
  dir="$(mktemp -d "${TMPDIR:-/tmp}/tether-pg.XXXXXX")"
  chmod 0755 "$dir"
  mkdir -m 0700 "$dir/data"
  chown "$owner" "$dir/data"
  mkdir -m 0700 "$dir/sock" "$dir/log"
  chown "$owner" "$dir/sock" "$dir/log"
  as_owner "$owner" "$pgbin/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 --no-locale \
    --no-sync >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; rm -rf "$dir"; exit 1; }
  printf 'PGBIN=%q\nOWNER=%q\n' "$pgbin" "$owner" >"$dir/env"

  # A free port: ask the kernel for one, then retry a few times if another process takes
  # it before the server binds.
  local port="" tries=0
  while :; do
    tries=$((tries + 1))
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null ||
      echo $((20000 + RANDOM % 20000)))"
    # Durability off: the cluster is thrown away; many connections: tests run in parallel.
    if as_owner "$owner" "$pgbin/pg_ctl" start -w -t 60 -D "$dir/data" -l "$dir/log/server.log" \
      -o "-p $port -k $dir/sock -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=400" \
      >&2; then
      break
    fi
    # Only a port taken meanwhile is worth another try.
    if [ "$tries" -ge 5 ] || ! grep -q 'could not bind\|already in use' "$dir/log/server.log" 2>/dev/null; then
      tail -n 30 "$dir/log/server.log" >&2 || true
      rm -rf "$dir"
      say "the server did not start"
      exit 1
    fi
  done
  echo "$port" >"$dir/port"
  say "PostgreSQL $("$pgbin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port (data in $dir)"
  printf 'export TETHER_TEST_PG_URL=%q\nexport TETHER_TEST_PG_DIR=%q\n' \
    "postgres://postgres@127.0.0.1:$port/postgres" "$dir"
}

stop() {
  local dir="${1:-${TETHER_TEST_PG_DIR:-}}"
  [ -n "$dir" ] || { say "stop: which cluster? (scripts/postgres.sh stop DIR)"; exit 2; }
  [ -f "$dir/env" ] || { say "stop: $dir is not a cluster this script started"; exit 2; }
  local PGBIN OWNER
  # shellcheck disable=SC1091
  . "$dir/env"
  if [ -f "$dir/data/postmaster.pid" ]; then
    as_owner "$OWNER" "$PGBIN/pg_ctl" stop -w -t 30 -m fast -D "$dir/data" >&2 ||
      as_owner "$OWNER" "$PGBIN/pg_ctl" stop -m immediate -D "$dir/data" >&2 || true
  fi
  rm -rf "$dir"
}

case "${1:-start}" in
  start) start ;;
  stop) shift; stop "$@" ;;
  *) say "usage: $0 [start | stop DIR]"; exit 2 ;;
esac
