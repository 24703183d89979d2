#!/bin/sh
# One ctest case fuzz.NAME: sh fuzz/run.sh BINARY NAME OUT_DIR SEED_CORPUS [libFuzzer options]
# Starts from the committed seed corpus only (OUT_DIR/found-NAME is emptied first), so that the
# same binary makes the same run every time; new inputs go to OUT_DIR/found-NAME and a crash
# to OUT_DIR/NAME-crash-<sha1> (or -leak-, -timeout-, -oom-), never into the source tree.
set -u
bin=$1 name=$2 out=$3 seeds=$4
shift 4
found="$out/found-$name"
rm -rf "$found"
mkdir -p "$found"
# The same run every time: a fixed seed and number of runs, no re-reading of the corpus dir on
# a timer (-reload=0), and no address-space randomisation (setarch -R), since the fuzzer
# learns from the values compared, pointers among them.
norand=
setarch -R true 2>/dev/null && norand="setarch -R"
$norand "$bin" -seed=1 -reload=0 -print_final_stats=1 -artifact_prefix="$out/$name-" "$@" \
  "$found" "$seeds"
rc=$?
if [ $rc -ne 0 ]; then
  saved=$(ls -t "$out/$name"-crash-* "$out/$name"-leak-* "$out/$name"-timeout-* \
    "$out/$name"-oom-* 2>/dev/null | head -1)
  echo "fuzz.$name FAILED (exit $rc). Replay the input it saved:" >&2
  echo "  $bin ${saved:-$out/$name-crash-<sha1>}" >&2
  echo "Once fixed: a test of it in the normal suite, and the input in fuzz/corpus/$name/." >&2
fi
exit $rc
