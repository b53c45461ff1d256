#!/usr/bin/env bash
# The whole test suite on a fresh machine: install, start Kafka and PostgreSQL, lint, type-check,
# run every test, stop the services it started. Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$PROJECT_ROOT"
scripts/bootstrap.sh
# The suite's Kafka and PostgreSQL: this clone's, when `scripts/services.sh start` runs them;
# else a pair of the suite's own, in a scratch folder of its own that starts empty (services
# now keep their data across stop and start, and test topics would pile up run after run),
# stopped at the end. The data of scripts/run-local.sh is never touched.
started_here=0
if ! scripts/kafka.sh status >/dev/null 2>&1 || ! scripts/postgres.sh status >/dev/null 2>&1; then
  started_here=1
  export ANALYTICS_SCRATCH="$SCRATCH-tests"
  scripts/services.sh reset 2>/dev/null
fi
# the trap first: a PostgreSQL that fails to start must not leave the Kafka started before it
[ "$started_here" = 1 ] && trap 'scripts/services.sh stop' EXIT
scripts/services.sh start >/dev/null
eval "$(scripts/services.sh env)"
log "Kafka at $KAFKA_BOOTSTRAP, PostgreSQL at $DATABASE_URL"
log "ruff"; .venv/bin/ruff format --check . && .venv/bin/ruff check .
log "mypy"; .venv/bin/mypy .
# headless Chromium for tests/e2e/test_dashboard_browser.py; without it that test fails and says why
scripts/browser.sh || log "warning: no Chromium: the dashboard browser test will fail"
scripts/prometheus.sh || log "warning: no Prometheus: the dashboard PromQL test will fail"
# two processes by default, a test file each at a time (PYTEST_WORKERS=0: one process)
log "pytest"
.venv/bin/python -m pytest -p no:cacheprovider -n "${PYTEST_WORKERS:-2}" --dist loadfile "$@"
