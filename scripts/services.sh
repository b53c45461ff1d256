#!/usr/bin/env bash
# Start, stop or describe the local Kafka broker and PostgreSQL cluster together.
#   scripts/services.sh start|stop|status|env
# "env" prints the export lines (KAFKA_BOOTSTRAP, DATABASE_URL) that tests and workers read:
#   eval "$(scripts/services.sh env)"
set -euo pipefail
here="$(dirname "$0")"
source "$here/lib.sh"
case "${1:-}" in
  start) "$here/kafka.sh" start >/dev/null; "$here/postgres.sh" start >/dev/null; cat "$ENV_FILE" ;;
  stop) "$here/kafka.sh" stop; "$here/postgres.sh" stop ;;
  status) "$here/kafka.sh" status || true; "$here/postgres.sh" status || true ;;
  env) cat "$ENV_FILE" ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
