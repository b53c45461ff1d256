#!/usr/bin/env bash
# The main job on local defaults: Kafka, PostgreSQL, one worker, sample traffic.
#   scripts/run-local.sh            (Ctrl-C stops the worker and the generator)
# Environment: RATE (events/s, default 50), USERS (default 200), WEB_PORT (default 6066),
# DURATION (seconds of traffic, default 3600).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$PROJECT_ROOT"
scripts/bootstrap.sh
scripts/services.sh start >/dev/null
source "$ENV_FILE"
export ANALYTICS__SOURCES__HTTP__LISTEN_ADDR="127.0.0.1:${WEB_PORT:-6066}"
url="http://127.0.0.1:${WEB_PORT:-6066}"
worker_log="$SCRATCH/worker.log"
# the worker's RocksDB state belongs to one Kafka cluster: scripts/kafka.sh formats a new one at
# every start, and state ahead of its changelogs stops Faust (ConsistencyError)
cluster_id="$(sed -n 's/^cluster.id=//p' "$SCRATCH/kafka/data/meta.properties" 2>/dev/null || true)"
data_dir="$SCRATCH/worker-data/${cluster_id:-external}"
find "$SCRATCH/worker-data" -mindepth 1 -maxdepth 1 ! -name "${cluster_id:-external}" \
  -exec rm -rf {} + 2>/dev/null || true

.venv/bin/faust -A app --datadir "$data_dir" worker -l info >"$worker_log" 2>&1 &
worker=$!
generator=""
cleanup() {
  [ -n "$generator" ] && kill "$generator" 2>/dev/null || true
  kill "$worker" 2>/dev/null || true
  wait 2>/dev/null || true
  log "stopped the worker and the generator; Kafka and PostgreSQL keep running (scripts/services.sh stop)"
}
trap cleanup EXIT INT TERM

log "worker starting (log: $worker_log)"
deadline=$((SECONDS + 120))
until curl -sf "$url/health" 2>/dev/null | grep -q '"user_events_partitions":\[0'; do
  if ! kill -0 "$worker" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
    tail -n 60 "$worker_log" >&2; die "the worker did not become ready"
  fi
  sleep 1
done
cat >&2 <<INFO

  Pipeline running.  Kafka $KAFKA_BOOTSTRAP   PostgreSQL $DATABASE_URL
  Live dashboard:    $url/dashboard   (open it in a browser)
  Ingest:            curl -X POST $url/ingest -d '{"user_id":"u1","action":"page_view","page":"/home"}'
  Health:            curl $url/health
  Enriched events:   .venv/bin/faust -A app tail user-behavior-enriched --follow
  Live KPIs:         .venv/bin/faust -A app tail live-kpis --follow
  Closed sessions:   .venv/bin/faust -A app tail session-metrics --follow
  Worker log:        $worker_log

INFO
.venv/bin/analytics-generate --target http --url "$url" --rate "${RATE:-50}" \
  --users "${USERS:-200}" --duration "${DURATION:-3600}" &
generator=$!
wait "$generator"
