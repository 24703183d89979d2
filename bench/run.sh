#!/bin/sh
# Run the benchmarks from a build dir and record the figures in docs/bench.md.
# usage: sh bench/run.sh [BUILD_DIR [bench_idle options]]   (BUILD_DIR defaults to build,
# relative to the current directory; the options are listed at the top of bench_idle.c)
# Steps: bench_idle (C API idle acquire + release), then the PING benchmark against two
# redis-servers (bench/ping/run.sh, which installs what it needs; it also writes
# docs/bench-ping.png), then the cost of Lua policy hooks on the acquire path
# (bench/hook_overhead.lua), then the TLS handshake cost (bench/tls/run.sh), then PING over TLS,
# pooled vs connect per request (bench/tls/ping_tls.lua), then what observability costs the
# PING clients, off vs on (bench/observe/run.sh). PP_BENCH=idle, ping, hooks, tls, tls-ping or
# observe runs only that step.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/bench/lib.sh"
BIN=$BUILD/bench/bench_idle
if [ ! -x "$BIN" ]; then
  echo "bench: $BIN not found; build first (make build, or cmake --build $BUILD)" >&2
  exit 1
fi
# The bench holds 16,000 sockets (and its server as many): ask for the hard limit of open
# files; both programs raise their soft limit themselves as well.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
# Which engine the figures belong to, for the report (every step's).
bench_commit "$ROOT" engine
mkdir -p "$ROOT/docs"
if [ $# -gt 0 ]; then shift; fi  # the rest goes to bench_idle
STEPS=${PP_BENCH:-idle,ping,hooks,tls,tls-ping,observe}
failed=""
case ",$STEPS," in *,idle,*)
  "$BIN" --out "$ROOT/docs/bench.md" "$@" || failed="$failed bench_idle"
  lua5.4 "$ROOT/bench/plot_md.lua" "$ROOT/docs/bench.md" "Idle acquire + release (C API)" \
    "$ROOT/docs/bench-idle.png" lines 1,2 3 4 "ns per acquire + release (median)" \
    "Idle acquire + release through the C API, by pool size" || failed="$failed idle-plot" ;;
esac
case ",$STEPS," in *,ping,*)
  sh "$ROOT/bench/ping/run.sh" "$BUILD" || failed="$failed ping" ;;
esac
case ",$STEPS," in *,hooks,*)
  LUA_CPATH="$BUILD/lua/?.so;;" lua5.4 "$ROOT/bench/hook_overhead.lua" --out "$ROOT/docs/bench.md" \
    || failed="$failed hooks"
  lua5.4 "$ROOT/bench/plot_md.lua" "$ROOT/docs/bench.md" "Lua policy hooks on the acquire path" \
    "$ROOT/docs/bench-hooks.png" bars 1 2 "ns per acquire + release (median)" \
    "Lua policy hooks on the acquire path" || failed="$failed hooks-plot" ;;
esac
case ",$STEPS," in *,tls,*)
  sh "$ROOT/bench/tls/run.sh" "$BUILD" || failed="$failed tls" ;;
esac
case ",$STEPS," in *,tls-ping,*)
  (cd "$ROOT" && lua5.4 bench/tls/ping_tls.lua --build "$BUILD" --out "$ROOT/docs/bench.md") \
    || failed="$failed tls-ping" ;;
esac
case ",$STEPS," in *,observe,*)
  sh "$ROOT/bench/observe/run.sh" "$BUILD" || failed="$failed observe" ;;
esac
if [ -n "$failed" ]; then
  echo "bench: failed:$failed" >&2
  exit 1
fi
