#!/bin/sh
# `make run`: the demo. $1 is the build dir; further arguments go to the demo.
set -e
build=$1
shift
exec "$build/pp_demo" "$@"
