#!/bin/sh
# Install the Debian packages peerpool needs, if any is missing. Runs as root (or via sudo);
# otherwise says what to install and stops.
set -e
# redis-server: the specs run the Redis policy and example against a real one (and the TLS
# tests against its --tls-port). libssl-dev: the engine's TLS (OpenSSL 3); openssl: the TLS
# tests make their CA and certificates with it and run `openssl s_server`.
# prometheus: promtool checks the metrics exposition, and a spec lets a real server scrape it.
# libc-ares-dev: the engine resolves host names with c-ares on the loop (no blocking, no worker
# threads), with TTLs.
# gnuplot-nox: `make run` ends by drawing the demo's run into a PNG, and `make bench` plots its
# tables into docs/ (no X: the pngcairo terminal only).
# Not installed here, as `make test` does not need them: clang and libclang-rt-14-dev, for the
# libFuzzer targets of `make fuzz-c` (tools/have-libfuzzer.sh checks for them; .ci/run skips
# those targets without them).
# clang-format (14): `make lint` checks the C formatting against .clang-format.
# strace: tests send traffic to loopback only; ctest fuzz.api.loopback_only (and
# spec/support/off_loopback.sh, for any command) watch every connect and send for one that
# leaves it, e.g. a host name asked of the system's resolver.
PKGS="build-essential cmake pkg-config libuv1-dev lua5.4 liblua5.4-dev lua-luv lua-luv-dev
lua-busted luarocks lua-check libreadline-dev redis-server prometheus libssl-dev openssl
libc-ares-dev gnuplot-nox clang-format strace"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "peerpool: installing missing Debian packages:$missing"
if [ "$(id -u)" = 0 ]; then SUDO=""
elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"
else
  echo "peerpool: need root to install:$missing" >&2
  echo "  run: apt-get install -y --no-install-recommends$missing" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# shellcheck disable=SC2086
$SUDO apt-get install -y -q --no-install-recommends $missing
