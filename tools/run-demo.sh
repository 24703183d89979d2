#!/bin/sh
# `make run`: the demo (scripts/demo.lua) through the host program. $1 is the build dir;
# further arguments: the host's REPL options (--repl, -i, --repl-socket PATH) go to the host,
# the rest (seconds, workers) to the demo. E.g. `make run ARGS="--repl"`, `make run ARGS=5`.
set -e
build=$1
shift
here=$(dirname "$0")
host_opts=""
demo_args=""
while [ $# -gt 0 ]; do
  case "$1" in
    --repl|-i) host_opts="$host_opts $1" ;;
    --repl-socket) host_opts="$host_opts $1 $2"; shift ;;
    --repl-socket=*) host_opts="$host_opts $1" ;;
    *) demo_args="$demo_args $1" ;;
  esac
  shift
done
# shellcheck disable=SC2086
# The demo ends by drawing its run (gnuplot) into this PNG and says where it is.
PP_DEMO_PNG=${PP_DEMO_PNG:-$(cd "$build" && pwd)/demo.png}
export PP_DEMO_PNG
exec "$build/bin/peerpool" $host_opts "$here/../scripts/demo.lua" $demo_args
