#!/bin/sh
# The TLS handshake benchmark: client CPU per conn with a full vs a resumed handshake, beside
# plain TCP and a request on a warm TLS conn, against a redis-server with TLS, for EC P-256 and
# RSA-2048 server certificates. Rewrites the section of docs/bench.md between
# <!-- bench:tls-handshake --> and <!-- /bench:tls-handshake -->.
# usage: sh bench/tls/run.sh [BUILD_DIR [N]]   (BUILD_DIR defaults to build; N conns per kind)
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
. "$ROOT/bench/lib.sh"
N=${2:-2000}
BIN=$BUILD/bench/tls_handshake
[ -x "$BIN" ] || { echo "bench/tls: $BIN not found; build first" >&2; exit 1; }
for cmd in openssl redis-server; do
  command -v $cmd >/dev/null || { echo "bench/tls: needs $cmd (make deps)" >&2; exit 1; }
done

bench_tmp tlsbench
tmp=$BENCH_TMP

free_port() {
  "$BIN" --free-port
}

load() { cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown; }
load_start=$(load)
results=$tmp/results
: >"$results"
for key in ec rsa; do
  mkdir -p "$tmp/$key"
  PP_TLS_KEY=$key sh "$ROOT/spec/c/tls_certs.sh" "$tmp/$key"
  tls_port=$(free_port)
  plain_port=$(free_port)
  # The server gets a CPU of its own where there is one, so the client's figures are its own.
  timeout 600 redis-server --port "$plain_port" --tls-port "$tls_port" --bind 127.0.0.1 \
    --tls-cert-file "$tmp/$key/server.pem" --tls-key-file "$tmp/$key/server.key" \
    --tls-ca-cert-file "$tmp/$key/ca.pem" --tls-auth-clients no --save "" --appendonly no \
    --dir "$tmp" --logfile "$tmp/redis-$key.log" &
  BENCH_PIDS=$!
  i=0
  until grep -q "Ready to accept connections" "$tmp/redis-$key.log" 2>/dev/null; do
    i=$((i + 1))
    [ $i -le 200 ] || { cat "$tmp/redis-$key.log" >&2; exit 1; }
    sleep 0.05
  done
  "$BIN" --port "$tls_port" --plain-port "$plain_port" --ca "$tmp/$key/ca.pem" --n "$N" |
    sed "s/^RESULT /RESULT key=$key /" | tee -a "$results"
  kill "$BENCH_PIDS"
  wait "$BENCH_PIDS" 2>/dev/null || true
  BENCH_PIDS=""
done

commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo none)
section=$tmp/section.md
{
  echo "<!-- bench:tls-handshake -->"
  echo "## TLS handshake cost (the TLS layer, client side)"
  echo
  echo "Written by \`sh bench/tls/run.sh build\`; do not edit by hand, the next run replaces"
  echo "this section."
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); engine commit: $commit"
  echo "- machine: $(nproc) CPUs online; $(uname -sr); $(openssl version | cut -d' ' -f1-2)"
  echo "- load average (1, 5, 15 min) at start: $load_start; at end: $(load)"
  echo "- server: redis-server $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/') on 127.0.0.1, TLS 1.3"
  echo
  echo "Each conn, one after another on one libuv loop: TCP connect, TLS handshake, one"
  echo "PING/+PONG (which also reads the session tickets), close_notify, close. **full**: no"
  echo "session offered; **resumed**: each conn resumes a ticket of the previous one; **tcp**: the"
  echo "same without TLS; **warm**: PING/+PONG on one TLS conn kept open (what a pooled request"
  echo "costs). CPU is the client process's user + system time (getrusage) per conn (per request"
  echo "for warm), over $N of each after 50 to warm up (the kernel samples the user/system split"
  echo "by its tick; their sum is exact); latency is from connect to close. The server runs on"
  echo "the same machine."
  echo
  echo "| server key | kind | client CPU µs | user µs | sys µs | p50 µs | p99 µs | resumed |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|"
  sed -n 's/^RESULT key=\([^ ]*\) kind=\([^ ]*\) n=\([^ ]*\) cpu_us=\([^ ]*\) user_us=\([^ ]*\) sys_us=\([^ ]*\) p50_us=\([^ ]*\) p99_us=\([^ ]*\) resumed=\([^ ]*\)$/| \1 | \2 | \4 | \5 | \6 | \7 | \8 | \9 of \3 |/p' "$results" |
    sed 's/^| ec |/| EC P-256 |/; s/^| rsa |/| RSA-2048 |/'
  echo "<!-- /bench:tls-handshake -->"
} >"$section"

doc=$ROOT/docs/bench.md
if grep -q '<!-- bench:tls-handshake -->' "$doc"; then
  awk -v f="$section" '
    /<!-- bench:tls-handshake -->/ { while ((getline l < f) > 0) print l; skip = 1; next }
    /<!-- \/bench:tls-handshake -->/ { skip = 0; next }
    !skip { print }' "$doc" >"$tmp/doc" && cat "$tmp/doc" >"$doc"
else
  { echo; cat "$section"; } >>"$doc"
fi
echo "bench/tls: wrote the tls-handshake section of docs/bench.md"
