#!/bin/sh
# ctest case install.c_library: the C library as a program outside this tree sees it.
#   1. `cmake --install BUILD --prefix TMP`: libpeerpool.so.0 (with its SONAME) and .a,
#      peerpool.h, peerpool.pc, the CMake package;
#   2. libpeerpool.so exports exactly the public pp_ functions of libpeerpool.a (no pp__);
#   3. examples/hello.c built with `pkg-config --cflags --libs peerpool` and, through
#      examples/install/CMakeLists.txt, with find_package(peerpool) (shared and static);
#   4. each hello run against pp_echo on 127.0.0.1 prints "got hello"; the shared ones load
#      the installed libpeerpool.so.0 (LD_LIBRARY_PATH for the pkg-config build, the RPATH
#      CMake records for the find_package build), the static one no libpeerpool at all.
# Usage: check.sh BUILD_DIR SOURCE_DIR CMAKE CC [CFLAGS]   (CFLAGS also go to the link)
set -eu
build=$1
src=$2
cmake=$3
cc=$4
flags=${5:-}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/pp-install.XXXXXX")
echo_pid=""
cleanup() {
  if [ -n "$echo_pid" ]; then
    kill "$echo_pid" 2>/dev/null || true
    wait "$echo_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 1' INT TERM
fail() {
  echo "install.c_library: $*" >&2
  exit 1
}

prefix=$tmp/prefix
"$cmake" --install "$build" --prefix "$prefix" >"$tmp/install.log" ||
  { cat "$tmp/install.log" >&2; fail "cmake --install failed"; }

# 1. The files, found through the installed peerpool.pc.
pc=$(find "$prefix" -name peerpool.pc -path '*/pkgconfig/*')
[ -n "$pc" ] || fail "no peerpool.pc under $prefix"
PKG_CONFIG_PATH=$(dirname "$pc")
export PKG_CONFIG_PATH
[ "$(pkg-config --variable=prefix peerpool)" = "$prefix" ] ||
  fail "peerpool.pc names prefix $(pkg-config --variable=prefix peerpool), not $prefix"
libdir=$(pkg-config --variable=libdir peerpool)
includedir=$(pkg-config --variable=includedir peerpool)
for f in "$includedir/peerpool.h" "$libdir/libpeerpool.a" "$libdir/libpeerpool.so" \
         "$libdir/cmake/peerpool/peerpoolConfig.cmake" \
         "$libdir/cmake/peerpool/peerpoolConfigVersion.cmake"; do
  [ -f "$f" ] || fail "not installed: $f"
done
if [ ! -L "$libdir/libpeerpool.so" ] || [ ! -L "$libdir/libpeerpool.so.0" ]; then
  fail "libpeerpool.so and libpeerpool.so.0 should be links to the versioned file"
fi
real=$(readlink -f "$libdir/libpeerpool.so")
case "$real" in */libpeerpool.so.0.*.*) ;; *) fail "libpeerpool.so resolves to $real" ;; esac
soname=$(readelf -d "$real" | sed -n 's/.*Library soname: \[\(.*\)\].*/\1/p')
[ "$soname" = libpeerpool.so.0 ] || fail "SONAME is '$soname', not libpeerpool.so.0"

# 2. Exported symbols: the public API and nothing else.
nm -D --defined-only "$real" | awk '{print $NF}' | sort >"$tmp/exported"
nm -g --defined-only "$libdir/libpeerpool.a" | awk 'NF == 3 {print $3}' |
  grep '^pp_[^_]' | sort >"$tmp/public"
leaked=$(grep -v '^pp_[a-z]' "$tmp/exported" | tr '\n' ' ' || true)
[ -z "$leaked" ] || fail "libpeerpool.so exports non-API symbols: $leaked"
missing=$(comm -13 "$tmp/exported" "$tmp/public" | tr '\n' ' ')
[ -z "$missing" ] || fail "libpeerpool.so does not export: $missing"
grep -qx pp_pool_new "$tmp/exported" || fail "libpeerpool.so exports no pp_pool_new"

# The echo peer hello talks to.
"$build/pp_echo" 0 60 >"$tmp/echo.addr" &
echo_pid=$!
i=0
while [ ! -s "$tmp/echo.addr" ]; do
  i=$((i + 1))
  [ $i -le 100 ] || fail "pp_echo did not start"
  kill -0 "$echo_pid" 2>/dev/null || fail "pp_echo exited"
  sleep 0.05
done
addr=$(head -n 1 "$tmp/echo.addr")

# run NAME BINARY [ENV...]: hello must print "got hello" and exit 0.
run() {
  name=$1
  bin=$2
  shift 2
  status=0
  env "$@" "$bin" "$addr" >"$tmp/$name.out" 2>&1 || status=$?
  [ $status -eq 0 ] || { cat "$tmp/$name.out" >&2; fail "$name exited with status $status"; }
  grep -qx "got hello" "$tmp/$name.out" ||
    { cat "$tmp/$name.out" >&2; fail "$name did not print 'got hello'"; }
}
# loads NAME BINARY [ENV...]: the binary loads the installed libpeerpool.so.0.
loads() {
  name=$1
  bin=$2
  shift 2
  got=$(env "$@" ldd "$bin" | sed -n 's/^[[:space:]]*libpeerpool\.so\.0 => \([^ ]*\).*/\1/p')
  if [ -z "$got" ] || [ "$(readlink -f "$got")" != "$real" ]; then
    fail "$name loads libpeerpool.so.0 from '$got', not $libdir"
  fi
}

# 3–4a. pkg-config.
# shellcheck disable=SC2046,SC2086
"$cc" $flags -o "$tmp/hello_pc" "$src/examples/hello.c" $(pkg-config --cflags --libs peerpool) ||
  fail "the pkg-config build failed"
loads hello_pc "$tmp/hello_pc" LD_LIBRARY_PATH="$libdir"
run hello_pc "$tmp/hello_pc" LD_LIBRARY_PATH="$libdir"

# 3–4b. find_package(peerpool), shared and static; no LD_LIBRARY_PATH.
if ! "$cmake" -S "$src/examples/install" -B "$tmp/cmake" -DCMAKE_PREFIX_PATH="$prefix" \
       -DCMAKE_C_COMPILER="$cc" -DCMAKE_C_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="$flags" \
       -DCMAKE_BUILD_TYPE=Debug >"$tmp/cmake.log" 2>&1 ||
   ! "$cmake" --build "$tmp/cmake" >>"$tmp/cmake.log" 2>&1; then
  cat "$tmp/cmake.log" >&2
  fail "the find_package build failed"
fi
found=$(sed -n 's/^peerpool_DIR:PATH=//p' "$tmp/cmake/CMakeCache.txt")
[ "$found" = "$libdir/cmake/peerpool" ] || fail "find_package found peerpool in '$found'"
loads hello_shared "$tmp/cmake/hello_shared" -u LD_LIBRARY_PATH
run hello_shared "$tmp/cmake/hello_shared" -u LD_LIBRARY_PATH
if ldd "$tmp/cmake/hello_static" | grep -q libpeerpool; then
  fail "hello_static loads a libpeerpool"
fi
run hello_static "$tmp/cmake/hello_static" -u LD_LIBRARY_PATH
echo "install.c_library: ok ($(wc -l <"$tmp/exported") symbols exported; hello ran 3 times)"
