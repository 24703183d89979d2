#!/bin/sh
# A fuzzing campaign (make fuzz): sh spec/fuzz/campaign.sh BUILD_DIR SEEDS SECONDS JOBS
#   SEEDS: "1-200" (a range) or "50" (seeds 1..50); SECONDS per seed; JOBS runs at once.
#   FUZZ_SEED=n: replay that seed alone, its trace kept (FUZZ_VERBOSE=1 prints every op).
# Prints one line per failing seed (its first report line) and a summary; exits 1 if any
# seed failed. Logs of failed seeds stay in $FUZZ_LOGS (default /tmp/peerpool-fuzz-logs).
build=${1:?build dir}
seeds=${2:-1-40}
seconds=${3:-20}
jobs=${4:-2}
here=$(dirname "$0")
if [ -n "$FUZZ_SEED" ]; then
  FUZZ_KEEP_TRACE=1 exec sh "$here/run.sh" "$build" "$FUZZ_SEED" "$seconds"
fi
case "$seeds" in
  *-*) first=${seeds%-*}; last=${seeds#*-} ;;
  *) first=1; last=$seeds ;;
esac
logs=${FUZZ_LOGS:-/tmp/peerpool-fuzz-logs}
mkdir -p "$logs"
rm -f "$logs"/seed-*.log "$logs"/failed
echo "fuzz.api: seeds $first..$last, $seconds s each, $jobs at a time (logs: $logs)"
export here build seconds logs
seq "$first" "$last" | xargs -P "$jobs" -I{} sh -c '
  if sh "$here/run.sh" "$build" {} "$seconds" > "$logs/seed-{}.log" 2>&1; then
    rm -f "$logs/seed-{}.log"
  else
    line=$(grep -m1 -E "^FUZZ FAILURE|HUNG|CRASHED|ERROR: AddressSanitizer|runtime error" "$logs/seed-{}.log")
    echo "seed {}: ${line:-failed (see $logs/seed-{}.log)}" | tee -a "$logs/failed"
  fi'
n=$(cat "$logs/failed" 2>/dev/null | wc -l)
echo "fuzz.api: $n of $((last - first + 1)) seeds failed"
[ "$n" -eq 0 ]
