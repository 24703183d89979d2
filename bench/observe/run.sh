#!/bin/sh
# What observability costs: the PING clients with it off and on (obs_cost.lua), against the
# PING benchmark's two redis-servers (bench/ping/run.sh starts and stops them). Rewrites the
# `observe` section of docs/bench.md and docs/bench-observe.png. About 3 minutes on 2 CPUs.
# usage: sh bench/observe/run.sh [BUILD_DIR [obs_cost.lua options: --runs 7 --requests 100000]]
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
. "$ROOT/bench/lib.sh"
if [ $# -gt 0 ]; then shift; fi
PP_PING_DRIVER=$ROOT/bench/observe/obs_cost.lua exec sh "$ROOT/bench/ping/run.sh" "$BUILD" \
  --out "$ROOT/docs/bench.md" --png "$ROOT/docs/bench-observe.png" "$@"
