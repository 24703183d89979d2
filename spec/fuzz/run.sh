#!/bin/sh
# Run the API fuzzer for one seed: sh spec/fuzz/run.sh BUILD_DIR SEED [SECONDS]
# From the source root (ctest runs it there). Every op goes to a trace file; when the run
# crashes (a signal, an ASan report) the trace's tail is printed with the seed, so the run
# can be replayed with FUZZ_SEED=SEED. An invariant failure prints its own report (exit 3).
# With a sanitizer build (PP_SANITIZE=ON) the sanitizer runtimes are preloaded unless
# LD_PRELOAD is set already. FUZZ_KEEP_TRACE=1 keeps the trace of a failed run.
build=${1:?build dir}
seed=${2:?seed}
seconds=${3:-${FUZZ_SECONDS:-5}}
case "$build" in /*) ;; *) build="$(pwd)/$build" ;; esac
if [ -z "$LD_PRELOAD" ] && grep -q '^PP_SANITIZE:BOOL=ON' "$build/CMakeCache.txt" 2>/dev/null; then
  cc=$(sed -n 's/^CMAKE_C_COMPILER:[A-Z]*=//p' "$build/CMakeCache.txt")
  LD_PRELOAD="$(${cc:-cc} -print-file-name=libasan.so):$(${cc:-cc} -print-file-name=libubsan.so)"
  export LD_PRELOAD
  export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0}"
fi
trace=$(mktemp "${TMPDIR:-/tmp}/peerpool-fuzz-$seed.XXXXXX")
# A network namespace of its own when we may make one (root, or unprivileged user namespaces):
# then /proc/net/tcp lists the fuzzer's sockets only, instead of every TIME_WAIT socket other
# tests left behind (tens of thousands, tens of ms to read). FUZZ_NETNS=0 turns it off.
netns=""
if [ "${FUZZ_NETNS:-1}" != 0 ] && command -v unshare >/dev/null && command -v ip >/dev/null; then
  if unshare -n sh -c 'ip link set lo up' 2>/dev/null; then netns="unshare -n"
  elif unshare -rn sh -c 'ip link set lo up' 2>/dev/null; then netns="unshare -rn"; fi
fi
export LUA_PATH="./?.lua;./scripts/?.lua;;" LUA_CPATH="$build/lua/?.so;;"
export FUZZ_SEED=$seed FUZZ_SECONDS=$seconds FUZZ_TRACE=$trace
# A run that outlives its time by far hangs (the loop spinning, or waiting for ever).
limit=$((seconds * 6 + 60))
if [ -n "$netns" ]; then
  timeout -k 5 $limit $netns sh -c 'ip link set lo up && exec lua5.4 spec/fuzz/api_fuzz.lua'
else
  timeout -k 5 $limit lua5.4 spec/fuzz/api_fuzz.lua
fi
rc=$?
if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
  echo "fuzz.api seed $seed HUNG: still running after $limit s (killed)" >&2
fi
if [ $rc -ne 0 ] && [ $rc -ne 3 ]; then
  echo "fuzz.api seed $seed CRASHED or HUNG (exit $rc); the last ops before it (oldest first):" >&2
  tail -n 60 "$trace" | sed 's/^/  /' >&2
  echo "replay: FUZZ_SEED=$seed SECONDS=$seconds make fuzz   (or: sh spec/fuzz/run.sh $build $seed $seconds)" >&2
fi
if [ $rc -eq 0 ] || [ -z "$FUZZ_KEEP_TRACE" ]; then rm -f "$trace"; else echo "trace: $trace" >&2; fi
exit $rc
