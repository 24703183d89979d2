#!/bin/sh
# Install what the PING benchmark needs, when it is missing, so that a fresh machine can run it:
#   - Debian packages: redis-server, redis-tools (redis-benchmark, redis-cli), gnuplot-nox,
#     strace, and nodejs / npm when node / npm are missing. Installed with apt-get when
#     running as root (or through sudo); otherwise the missing ones are named and it fails.
#   - generic-pool (the version pinned in bench/ping/package.json), by `npm install` in
#     bench/ping, unless it is there already. npm failing is not fatal: the bench then reports
#     the Node row as not run, and says why.
# usage: sh bench/ping/setup.sh       (bench/ping/run.sh runs it first)
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)

missing=""
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
{ command -v redis-benchmark >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; } ||
  missing="$missing redis-tools"
command -v gnuplot >/dev/null 2>&1 || missing="$missing gnuplot-nox"
command -v node >/dev/null 2>&1 || missing="$missing nodejs"
command -v strace >/dev/null 2>&1 || missing="$missing strace" # syscalls per request

apt_install() {
  if [ "$(id -u)" = 0 ]; then SUDO=""
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"
  else
    echo "bench/ping/setup.sh: need root to install:$*" >&2
    echo "  run: apt-get install -y --no-install-recommends$*" >&2
    return 1
  fi
  echo "bench/ping/setup.sh: installing Debian packages:$*" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q >&2
  # shellcheck disable=SC2086
  $SUDO apt-get install -y -q --no-install-recommends "$@" >&2
}

if [ -n "$missing" ]; then
  # shellcheck disable=SC2086
  apt_install $missing
fi
# Debian's nodejs comes without npm; some other node packages bring their own.
if command -v node >/dev/null 2>&1 && ! command -v npm >/dev/null 2>&1; then
  apt_install npm || echo "bench/ping/setup.sh: no npm: the generic-pool row will not run" >&2
fi

if [ ! -f "$HERE/node_modules/generic-pool/package.json" ]; then
  if command -v npm >/dev/null 2>&1; then
    echo "bench/ping/setup.sh: npm install (generic-pool) in bench/ping" >&2
    (cd "$HERE" && timeout 180 npm install --no-audit --no-fund --loglevel=error >&2) ||
      echo "bench/ping/setup.sh: npm install failed: the generic-pool row will not run" >&2
  fi
fi
exit 0
