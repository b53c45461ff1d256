#!/usr/bin/env bash
# Prometheus for the dashboard's PromQL test (tests/integration/test_prometheus_dashboard.py):
# Debian's prometheus package, installed with apt-get when no prometheus binary is found (needs
# root; lib.sh's apt_install). Only the binary is used: the test starts its own server on
# 127.0.0.1, a free port and a temporary data folder; the package's service (0.0.0.0:9090) is
# neither started nor enabled. Idempotent; prints how long the install took.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
PROMETHEUS="${PROMETHEUS:-$(command -v prometheus || echo /usr/bin/prometheus)}"
if [ ! -x "$PROMETHEUS" ]; then
  apt_install prometheus
  PROMETHEUS="$(command -v prometheus || echo /usr/bin/prometheus)"
  [ -x "$PROMETHEUS" ] || die "apt-get installed prometheus but $PROMETHEUS does not exist"
fi
log "prometheus: $("$PROMETHEUS" --version 2>/dev/null | head -n 1 || echo "$PROMETHEUS")"
