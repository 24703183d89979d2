#!/bin/sh
# Exit 0 when clang can link a libFuzzer target with ASan and UBSan (what `make fuzz-c` needs:
# Debian's clang and libclang-rt-14-dev); otherwise say what is missing and exit 1.
if ! command -v clang >/dev/null 2>&1; then
  echo "no clang (apt-get install clang libclang-rt-14-dev)"
  exit 1
fi
dir=$(mktemp -d "${TMPDIR:-/tmp}/peerpool-libfuzzer.XXXXXX") || exit 1
trap 'rm -rf "$dir"' EXIT
cat >"$dir/t.c" <<'C'
#include <stddef.h>
#include <stdint.h>
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) { return 0; }
C
if ! clang -fsanitize=fuzzer,address,undefined "$dir/t.c" -o "$dir/t" >"$dir/log" 2>&1; then
  echo "clang cannot link -fsanitize=fuzzer (apt-get install libclang-rt-14-dev): $(head -1 "$dir/log")"
  exit 1
fi
