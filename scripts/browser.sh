#!/usr/bin/env bash
# Headless Chromium for the dashboard's browser test (tests/e2e/test_dashboard_browser.py):
# Debian's chromium package, installed with apt-get when /usr/bin/chromium is missing (needs
# root; lib.sh's apt_install). Idempotent; prints how long the install took. Browser downloads
# (`playwright install`) are not used: the test drives this Chromium through Python
# playwright's bundled driver.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
if [ ! -x "$CHROMIUM" ]; then
  apt_install chromium
  [ -x "$CHROMIUM" ] || die "apt-get installed chromium but $CHROMIUM does not exist"
fi
log "chromium: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
