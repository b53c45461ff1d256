# Shared helpers for the service scripts. Source it; do not run it.
# Scratch state lives outside the work tree (PostgreSQL refuses to run as root and cannot
# traverse a 0700 temporary clone), one folder per clone so several clones never collide.

PROJECT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCRATCH="${ANALYTICS_SCRATCH:-/tmp/realtime-analytics-$(printf '%s' "$PROJECT_ROOT" | md5sum | cut -c1-8)}"
CACHE_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/realtime-analytics"
ENV_FILE="$SCRATCH/services.env"
mkdir -p "$SCRATCH" "$CACHE_DIR"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# free_port PREFERRED: PREFERRED when nothing listens there, else a free port the kernel picks.
# SO_REUSEADDR as the servers set it: connections of an earlier run in TIME_WAIT on the port do
# not stop a restarted Kafka or PostgreSQL from listening there again.
free_port() {
  python3 - "$1" <<'PY'
import socket, sys
def free(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return None
        return s.getsockname()[1]
print(free(int(sys.argv[1])) or free(0))
PY
}

# port_for FILE DEFAULT: the port to try first: the one recorded in FILE by an earlier start
# (a service keeps its address across stop and start), else DEFAULT.
port_for() { if [ -s "$1" ]; then cat "$1"; else echo "$2"; fi; }

# port_open PORT: true when something accepts TCP connections on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# pid_alive PIDFILE: true when the process named in PIDFILE runs.
pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# set_env NAME VALUE: record an address in the shared env file that tests and the worker read.
set_env() {
  touch "$ENV_FILE"
  grep -v "^export $1=" "$ENV_FILE" > "$ENV_FILE.tmp" || true
  printf 'export %s=%q\n' "$1" "$2" >> "$ENV_FILE.tmp"
  mv "$ENV_FILE.tmp" "$ENV_FILE"
}

# apt_install PACKAGE: Debian's PACKAGE with apt-get (no recommends), as root or through sudo;
# apt's output goes to $SCRATCH/apt-PACKAGE.log, shown on failure; logs how long it took. A
# service the package ships is neither started (policy-rc.d, unless the machine has its own
# policy) nor left enabled at boot: the tests start what they need themselves.
apt_install() {
  local package="$1" sudo="" policy=/usr/sbin/policy-rc.d own_policy=0 status=0
  local apt_log="$SCRATCH/apt-$1.log" started=$SECONDS
  command -v apt-get >/dev/null || die "$package is missing and apt-get is not available: install it by hand"
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || die "$package is missing; installing it needs root (apt-get install $package)"
    sudo="sudo -n"
  fi
  log "installing Debian's $package (apt-get)"
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null && $sudo chmod 755 "$policy"
    own_policy=1
  fi
  # through env: sudo does not pass the caller's environment on
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q >"$apt_log" 2>&1 || status=$?
  if [ "$status" = 0 ]; then
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      "$package" >>"$apt_log" 2>&1 || status=$?
  fi
  if [ "$own_policy" = 1 ]; then $sudo rm -f "$policy"; fi
  if [ "$status" = 0 ] && [ -d /run/systemd/system ]; then
    $sudo systemctl disable --now "$package.service" >>"$apt_log" 2>&1 || true
  fi
  [ "$status" = 0 ] || { tail -n 20 "$apt_log" >&2; die "apt-get install $package failed (exit $status; log $apt_log)"; }
  log "$package installed in $((SECONDS - started)) s"
}
