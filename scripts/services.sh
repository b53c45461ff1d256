#!/usr/bin/env bash
# Start, stop or describe the local Kafka broker and PostgreSQL cluster together.
#   scripts/services.sh start|stop|status|env|reset
# "env" prints the export lines (KAFKA_BOOTSTRAP, DATABASE_URL) that tests and workers read:
#   eval "$(scripts/services.sh env)"
# Their data (topics, changelogs, tables) survives stop and start, on the same ports when free.
# "reset" stops them and deletes their data and the worker state of scripts/run-local.sh: the
# next start begins with a new, empty Kafka cluster and database.
set -euo pipefail
here="$(dirname "$0")"
source "$here/lib.sh"
case "${1:-}" in
  start) "$here/kafka.sh" start >/dev/null; "$here/postgres.sh" start >/dev/null; cat "$ENV_FILE" ;;
  stop) "$here/kafka.sh" stop; "$here/postgres.sh" stop ;;
  status) "$here/kafka.sh" status || true; "$here/postgres.sh" status || true ;;
  env) cat "$ENV_FILE" ;;
  reset)
    "$here/kafka.sh" reset; "$here/postgres.sh" reset
    rm -rf "$SCRATCH/worker-data" "$SCRATCH/worker.log" "$ENV_FILE"
    log "clean slate in $SCRATCH: the next start creates a new Kafka cluster and database"
    ;;
  *) echo "usage: $0 start|stop|status|env|reset" >&2; exit 2 ;;
esac
