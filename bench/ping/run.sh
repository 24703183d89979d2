#!/bin/sh
# The PING benchmark: start two redis-servers on free loopback ports, run every client kind
# against them (bench/ping/bench_ping.lua), write the table and the plot into docs/, and stop
# the servers whatever happens (an EXIT trap; each server also runs under `timeout`, so even a
# killed bench leaves nothing running for long).
#
# usage: sh bench/ping/run.sh [BUILD_DIR [bench_ping.lua options]]
#   BUILD_DIR defaults to build (relative to the current directory); options such as
#   --runs 5, --requests 300000, --connect-requests 8000, --clients 32 go to bench_ping.lua.
#   The figures go to docs/bench.md (between <!-- bench:ping --> and <!-- /bench:ping -->) and
#   docs/bench-ping.png, unless --out / --png say otherwise. About a minute on 2 CPUs.
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
. "$ROOT/bench/lib.sh"
HERE=$ROOT/bench/ping
if [ $# -gt 0 ]; then shift; fi

for f in "$BUILD/bench/ping/ping_c" "$BUILD/bench/ping/ping_connect" \
  "$BUILD/bench/ping/ping_rusage" "$BUILD/lua/peerpool.so"; do
  if [ ! -f "$f" ]; then
    echo "bench/ping: $f not found; build first (make build, or cmake --build $BUILD)" >&2
    exit 1
  fi
done

sh "$HERE/setup.sh"

bench_commit "$ROOT" engine bindings

TMP=$(mktemp -d "${TMPDIR:-/tmp}/pp-bench-ping.XXXXXX")
PIDS=""
RUN_PID=""
cleanup() {
  status=$?
  trap - EXIT INT TERM HUP
  # A run cut short: stop it first (`timeout` passes the signal on to lua5.4). A client it
  # was running fails as soon as its servers are gone, or ends at its own 60 s alarm.
  if [ -n "$RUN_PID" ]; then kill "$RUN_PID" 2>/dev/null || true; fi
  # The servers are not this shell's children (they were started in a subshell): poll.
  for pid in $PIDS; do kill "$pid" 2>/dev/null || true; done
  for pid in $PIDS; do
    i=0
    while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    kill -9 "$pid" 2>/dev/null || true
  done
  if [ "$status" != 0 ] && [ -f "$TMP/clients.log" ]; then
    echo "bench/ping: the clients' stderr (last lines):" >&2
    tail -n 20 "$TMP/clients.log" >&2
  fi
  rm -rf "$TMP"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# start_server: start one redis-server; prints its port. Never on any address but 127.0.0.1.
start_server() {
  for attempt in 1 2 3 4 5; do
    port=$(bench_free_port)
    timeout 600 redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
      --daemonize no --dir "$TMP" --logfile "$TMP/redis-$port.log" </dev/null >/dev/null 2>&1 &
    pid=$!
    i=0
    while [ $i -lt 50 ]; do
      if [ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" = PONG ]; then
        echo "$pid $port"
        return 0
      fi
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
      i=$((i + 1))
    done
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    echo "bench/ping: redis-server on port $port did not start (attempt $attempt)" >&2
  done
  return 1
}

# PP_PING_DRIVER: another driver for the same two servers (bench/observe/run.sh sets it); it
# gets --build and --peers and the options given here, and writes where its own defaults say.
if [ -n "${PP_PING_DRIVER:-}" ]; then
  DRIVER=$PP_PING_DRIVER
  set -- --build "$BUILD" "$@"
else
  DRIVER=$HERE/bench_ping.lua
  set -- --build "$BUILD" --out "$ROOT/docs/bench.md" --png "$ROOT/docs/bench-ping.png" "$@"
fi
r1=$(start_server) || { echo "bench/ping: cannot start redis-server" >&2; exit 1; }
PIDS="$PIDS ${r1% *}"
r2=$(start_server) || { echo "bench/ping: cannot start redis-server" >&2; exit 1; }
PIDS="$PIDS ${r2% *}"
PEERS="127.0.0.1:${r1#* },127.0.0.1:${r2#* }"
echo "bench/ping: redis-servers on $PEERS (pids$PIDS)" >&2

mkdir -p "$ROOT/docs"
export PP_PING_LOG="$TMP/clients.log"
# In the background and waited for, so that a signal to this shell is handled at once (the
# trap stops the run and the servers) rather than after the run.
timeout 900 lua5.4 "$DRIVER" --peers "$PEERS" "$@" &
RUN_PID=$!
wait "$RUN_PID"
