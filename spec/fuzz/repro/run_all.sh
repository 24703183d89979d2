#!/bin/sh
# Run every reproducer of spec/fuzz/repro/ (not ctest cases): sh spec/fuzz/repro/run_all.sh
# [BUILD_DIR] [SAN_BUILD_DIR], from the source root. Each prints "ok: ..." and exits 0 once
# its finding is fixed; "BUG: ...", a non-zero exit, a crash or an ASan report while it is not.
# The memory-safety ones run against the sanitizer build (ASan preloaded).
build=${1:-build}
san=${2:-build-sanitize}
asan="$(gcc -print-file-name=libasan.so 2>/dev/null)"
cd "$(dirname "$0")/../../.." || exit 1
fails=0
for f in spec/fuzz/repro/*.lua; do
  case "$(basename "$f")" in
    resumed_coroutine_unanchored.lua|dead_coroutine_collected_by_reporter.lua|\
    reporter_closes_pool_in_hook.lua|send_callback_conn_collected.lua)
      out=$(LD_PRELOAD="$asan" ASAN_OPTIONS=detect_leaks=0 LUA_CPATH="$san/lua/?.so;;" \
            timeout 30 lua5.4 "$f" 2>&1); rc=$? ;;
    *) out=$(LUA_CPATH="$build/lua/?.so;;" timeout 30 lua5.4 "$f" 2>&1); rc=$? ;;
  esac
  line=$(printf '%s\n' "$out" | grep -m1 -E 'ERROR: AddressSanitizer: [a-z-]+|^BUG|^ok' )
  if [ $rc -eq 0 ] && printf '%s' "$line" | grep -q '^ok'; then status=fixed; else status=OPEN; fails=$((fails + 1)); fi
  printf '%-45s %-5s (exit %d) %s\n' "$(basename "$f")" "$status" $rc "$(printf '%s' "$line" | cut -c1-90)"
done
exit $fails
