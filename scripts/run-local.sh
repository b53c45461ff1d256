#!/usr/bin/env bash
# The main job on local defaults: Kafka, PostgreSQL, one worker, sample traffic.
#   scripts/run-local.sh            (Ctrl-C stops the worker and the generator)
# Environment: RATE (events/s, default 50), USERS (default 200), WEB_PORT (default 6066),
# DURATION (seconds of traffic, default 3600; the worker keeps running after it until Ctrl-C).
# Kafka and PostgreSQL keep running, and keep their data, after Ctrl-C and after
# `scripts/services.sh stop`; `scripts/services.sh reset` deletes it. Exit status: 0 when the
# worker stopped cleanly on Ctrl-C (SIGINT) or SIGTERM, else the failure's.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$PROJECT_ROOT"
scripts/bootstrap.sh
scripts/services.sh start >/dev/null
source "$ENV_FILE"
export ANALYTICS__SOURCES__HTTP__LISTEN_ADDR="127.0.0.1:${WEB_PORT:-6066}"
url="http://127.0.0.1:${WEB_PORT:-6066}"
worker_log="$SCRATCH/worker.log"
# The worker's RocksDB state belongs to one Kafka cluster (state ahead of its changelogs stops
# Faust with a ConsistencyError): one folder per cluster id, and the folders of other clusters
# (before a `scripts/kafka.sh reset`) are deleted. The app creates the folder's parents.
cluster_id="$(sed -n 's/^cluster.id=//p' "$SCRATCH/kafka/data/meta.properties" 2>/dev/null || true)"
data_dir="$SCRATCH/worker-data/${cluster_id:-external}"
find "$SCRATCH/worker-data" -mindepth 1 -maxdepth 1 ! -name "${cluster_id:-external}" \
  -exec rm -rf {} + 2>/dev/null || true

worker=""
worker_status=""
generator=""
stopping=0
on_signal() { stopping=1; }
# wait_worker: wait for the worker to exit (or for a signal) and record its exit status
wait_worker() {
  local code=0
  wait "$worker" || code=$?
  if ! kill -0 "$worker" 2>/dev/null; then worker_status=$code; fi
}
# stop the generator, then the worker (SIGTERM: Faust's clean shutdown; SIGKILL after 60 s)
cleanup() {
  local status=$? deadline=$((SECONDS + 60))
  trap '' INT TERM  # a second Ctrl-C does not cut the shutdown short
  trap - EXIT
  [ -n "$generator" ] && { kill "$generator" 2>/dev/null; wait "$generator" 2>/dev/null; } || true
  if [ -n "$worker" ] && [ -z "$worker_status" ]; then
    kill "$worker" 2>/dev/null || true
    while kill -0 "$worker" 2>/dev/null; do  # bash reaps it as soon as it exits
      if [ $SECONDS -ge $deadline ]; then
        log "the worker did not stop within 60 s: killing it"; kill -9 "$worker" 2>/dev/null || true
      fi
      sleep 0.2
    done
    wait_worker
  fi
  if [ "${worker_status:-0}" != 0 ]; then
    log "the worker exited with status $worker_status (log: $worker_log)"
    status=$worker_status
  elif [ "$stopping" = 1 ]; then
    status=0
  fi
  log "stopped the worker and the generator; Kafka and PostgreSQL keep running (scripts/services.sh stop)"
  exit "$status"
}
trap on_signal INT TERM
trap cleanup EXIT

.venv/bin/faust -A app --datadir "$data_dir" worker -l info >"$worker_log" 2>&1 &
worker=$!
log "worker starting (log: $worker_log)"
deadline=$((SECONDS + 120))
until curl -sf "$url/health" 2>/dev/null | grep -q '"user_events_partitions":\[0'; do
  [ "$stopping" = 1 ] && exit 0
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
  Worker log:        $worker_log   (its "analytics worker ready" line names the metrics port)

INFO
# sample traffic that walks the shipped checkout funnel and sees an A/B test, so the
# dashboard's funnel and A/B panels have something to show
.venv/bin/analytics-generate --target http --url "$url" --rate "${RATE:-50}" \
  --users "${USERS:-200}" --duration "${DURATION:-3600}" \
  --checkout-action --experiment checkout_button &
generator=$!
traffic_status=0
wait "$generator" || traffic_status=$?
generator=""
if [ "$stopping" = 0 ]; then
  if [ "$traffic_status" = 0 ]; then
    log "sample traffic finished; the worker keeps running (Ctrl-C stops it)"
  else
    log "the traffic generator exited with status $traffic_status; the worker keeps running (Ctrl-C stops it)"
  fi
  wait_worker
fi
[ "$stopping" = 1 ] || die "the worker stopped by itself (log: $worker_log)"
