#!/usr/bin/env bash
# Headless Chromium for the dashboard's browser test (tests/e2e/test_dashboard_browser.py):
# Debian's chromium package, installed with apt-get when /usr/bin/chromium is missing (needs
# root). Idempotent; prints how long the install took. Browser downloads (`playwright install`)
# are not used: the test drives this Chromium through Python playwright's bundled driver.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
if [ -x "$CHROMIUM" ]; then
  log "chromium present: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
  exit 0
fi
command -v apt-get >/dev/null || die "$CHROMIUM is missing and apt-get is not available: install Chromium by hand (or set CHROMIUM=/path/to/chromium)"
sudo=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || die "$CHROMIUM is missing; installing it needs root (apt-get install chromium)"
  sudo="sudo -n"
fi
log "installing Debian's chromium (apt-get)"
started=$SECONDS
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q >/dev/null || die "apt-get update failed"
$sudo apt-get install -y -q --no-install-recommends chromium >/dev/null \
  || die "apt-get install chromium failed"
[ -x "$CHROMIUM" ] || die "apt-get installed chromium but $CHROMIUM does not exist"
log "chromium installed in $((SECONDS - started)) s: $("$CHROMIUM" --version 2>/dev/null || true)"
