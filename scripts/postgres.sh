#!/usr/bin/env bash
# A scratch PostgreSQL 15 cluster on a free 127.0.0.1 port, created with initdb.
#   scripts/postgres.sh start|stop|status|logs|reset
# start is idempotent. It prints DATABASE_URL=postgresql://analytics@127.0.0.1:PORT/analytics.
# The cluster's data survives stop and start (initdb runs only when there is none), and it
# listens on its recorded port again when that is free (POSTGRES_PORT, else 5432, the first
# time). reset stops it and deletes its data.
# PostgreSQL refuses to run as root, so as root the cluster runs as the "postgres" system user.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

DIR="$SCRATCH/postgres"
DATA="$DIR/data"
LOG_FILE="$DIR/postgres.log"
PORT_FILE="$DIR/port"

find_bin() {
  local candidate
  for candidate in /usr/lib/postgresql/15/bin /usr/lib/postgresql/*/bin; do
    [ -x "$candidate/initdb" ] && { echo "$candidate"; return 0; }
  done
  command -v initdb >/dev/null && { dirname "$(command -v initdb)"; return 0; }
  return 1
}

BIN="$(find_bin || true)"
if [ -z "$BIN" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing PostgreSQL 15 server binaries with apt-get"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >/dev/null
    BIN="$(find_bin)" || die "PostgreSQL server binaries not found after install"
  else
    die "PostgreSQL server binaries (initdb) not found; install postgresql-15"
  fi
fi

as_owner() {
  # from /, which the postgres user can always enter (a clone may sit in a 0700 folder)
  if [ "$(id -u)" = 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}

url() { echo "postgresql://analytics@127.0.0.1:$1/analytics"; }

start() {
  mkdir -p "$DIR"
  [ "$(id -u)" = 0 ] && chown postgres:postgres "$DIR" && chmod 755 "$SCRATCH"
  # as root the server runs as "postgres", which must be able to enter every folder above it
  as_owner test -x "$DIR" || die "the postgres user cannot enter $DIR: a folder above it is \
private (mode 0700, e.g. a mktemp -d folder); set ANALYTICS_SCRATCH to a folder others may \
enter (the default is under /tmp), or chmod o+x the folders on its path"
  if [ -f "$PORT_FILE" ] && as_owner "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
    echo "DATABASE_URL=$(url "$(cat "$PORT_FILE")")"; set_env DATABASE_URL "$(url "$(cat "$PORT_FILE")")"
    return 0
  fi
  local port started
  port="$(free_port "${POSTGRES_PORT:-$(port_for "$PORT_FILE" 5432)}")"
  started=$(date +%s%N)
  if [ ! -f "$DATA/PG_VERSION" ]; then
    as_owner "$BIN/initdb" -D "$DATA" -U analytics --auth=trust --encoding=UTF8 --locale=C.UTF-8 \
      >"$DIR/initdb.log" 2>&1 || { cat "$DIR/initdb.log" >&2; die "initdb failed"; }
  fi
  : > "$LOG_FILE"; [ "$(id -u)" = 0 ] && chown postgres "$LOG_FILE"
  as_owner "$BIN/pg_ctl" -D "$DATA" -l "$LOG_FILE" -w -t 60 start \
    -o "-p $port -c listen_addresses=127.0.0.1 -k $DIR -c fsync=off -c synchronous_commit=off -c max_connections=200" \
    >/dev/null || { cat "$LOG_FILE" >&2; die "PostgreSQL did not start (log: $LOG_FILE)"; }
  echo "$port" > "$PORT_FILE"
  "$BIN/psql" -h 127.0.0.1 -p "$port" -U analytics -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = 'analytics'" | grep -q 1 \
    || "$BIN/createdb" -h 127.0.0.1 -p "$port" -U analytics analytics
  log "PostgreSQL $("$BIN/postgres" --version | awk '{print $3}') ready on 127.0.0.1:$port in $(( ($(date +%s%N) - started) / 1000000 )) ms; log $LOG_FILE"
  set_env DATABASE_URL "$(url "$port")"
  echo "DATABASE_URL=$(url "$port")"
}

stop() {
  if [ -f "$DATA/PG_VERSION" ] && as_owner "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
    as_owner "$BIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null
    log "PostgreSQL stopped"
  fi
}

reset() {
  stop
  rm -rf "$DIR"
  log "PostgreSQL data deleted ($DIR): the next start runs initdb"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if as_owner "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then echo "running on 127.0.0.1:$(cat "$PORT_FILE")"; else echo stopped; exit 1; fi ;;
  logs) cat "$LOG_FILE" ;;
  reset) reset ;;
  *) echo "usage: $0 start|stop|status|logs|reset" >&2; exit 2 ;;
esac
