# shellcheck shell=sh
# Sourced by the bench run scripts (bench/run.sh, bench/*/run.sh) for what they do alike.
# Every one of them takes the build dir as its first argument:
#   . "$ROOT/bench/lib.sh"      sets BUILD: the script's $1 (default build), made absolute
#   bench_abs DIR               DIR as an absolute path (a relative one is taken from here)
#   bench_commit ROOT PATH...   export PP_BENCH_COMMIT, the commit the figures belong to, with
#                               "+ uncommitted PATH changes" when PATH differs from it; a value
#                               already exported (bench/run.sh's, for its steps) is kept
#   bench_free_port             a loopback port free a moment ago (bind port 0, read it, let it
#                               go: another program may take it first; callers try again)
#   bench_tmp NAME              make the directory $BENCH_TMP; at exit, and on INT or TERM, kill
#                               and reap the processes listed in $BENCH_PIDS, then remove it

bench_abs() {
  case $1 in /*) echo "$1" ;; *) echo "$(pwd)/$1" ;; esac
}
# shellcheck disable=SC2034 # used by the script that sources this file
BUILD=$(bench_abs "${1:-build}")

bench_commit() {
  [ -z "${PP_BENCH_COMMIT:-}" ] || return 0
  bench_root=$1
  shift
  if command -v git >/dev/null 2>&1 && git -C "$bench_root" rev-parse --verify -q HEAD >/dev/null
  then
    PP_BENCH_COMMIT=$(git -C "$bench_root" rev-parse --short HEAD)
    if [ -n "$(git -C "$bench_root" status --porcelain -- "$@" 2>/dev/null)" ]; then
      PP_BENCH_COMMIT="$PP_BENCH_COMMIT + uncommitted $(echo "$@" | tr ' ' /) changes"
    fi
  else
    PP_BENCH_COMMIT="none (no commit yet)"
  fi
  export PP_BENCH_COMMIT
}

bench_free_port() {
  lua5.4 -e 'local uv = require "luv"
    local t = uv.new_tcp(); assert(t:bind("127.0.0.1", 0)); io.write(t:getsockname().port)
    t:close(); uv.run("nowait")'
}

BENCH_PIDS=""
bench_cleanup() {
  for pid in $BENCH_PIDS; do kill "$pid" 2>/dev/null || true; done
  for pid in $BENCH_PIDS; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$BENCH_TMP"
}

bench_tmp() {
  BENCH_TMP=$(mktemp -d "${TMPDIR:-/tmp}/pp-$1.XXXXXX")
  trap bench_cleanup EXIT
  trap 'exit 1' INT TERM
}
