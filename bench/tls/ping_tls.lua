-- The TLS PING benchmark: "with vs without pooling" over TLS, against one
-- `redis-server --tls-port` on 127.0.0.1 (certificates from spec/c/tls_certs.sh, EC P-256).
--
--   lua5.4 bench/tls/ping_tls.lua [--build build] [--runs 3] [--requests 100000]
--     [--connect-requests 4000] [--clients 32] [--out docs/bench.md] [--png docs/bench-tls.png]
--
-- Client kinds (each its own process, one at a time, under bench/ping/ping_rusage):
--   redis-benchmark --tls          redis-benchmark -t ping_inline -c C -n N --csv --tls --cacert
--   peerpool, Lua API              bench/ping/ping.lua with PP_PING_TLS_CA (pooled)
--   peerpool, C API                bench/ping/ping_c with PP_PING_TLS_CA (pooled)
--   connect per request, TLS (C)   ping_c with PP_PING_RECYCLE=1: every conn closed after its
--                                  request, so every request dials and handshakes (resumed
--                                  from the pool's per-peer session cache when it can)
--   connect per request, TLS (Lua) the same through ping.lua
-- The table goes between <!-- bench:tls-ping --> and <!-- /bench:tls-ping --> in --out.
local opt = {
  build = "build", runs = 3, requests = 100000, ["connect-requests"] = 4000, clients = 32,
  out = "docs/bench.md", png = "docs/bench-tls.png",
}
do
  local i = 1
  while i <= #arg do
    local k = arg[i]:match("^%-%-(.+)$")
    if not k or opt[k] == nil or arg[i + 1] == nil then
      io.stderr:write("ping_tls.lua: bad argument ", arg[i], "\n")
      os.exit(2)
    end
    opt[k] = type(opt[k]) == "number" and assert(math.tointeger(tonumber(arg[i + 1]))) or arg[i + 1]
    i = i + 2
  end
end
local C = opt.clients

local function sh(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("a")
  local ok = p:close()
  return out, ok
end
local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local uv = require "luv"
local function free_port()
  local t = uv.new_tcp()
  assert(t:bind("127.0.0.1", 0))
  local port = t:getsockname().port
  t:close()
  uv.run("nowait")
  return port
end

local dir = sh("mktemp -d ${TMPDIR:-/tmp}/pp-bench-tls.XXXXXX"):gsub("%s+$", "")
assert(select(2, sh("sh spec/c/tls_certs.sh " .. q(dir))), "tls_certs.sh failed")
local port = free_port()
local pgid = sh(string.format(
  "setsid sh -c %s >/dev/null 2>&1 & echo $!",
  q(string.format("exec timeout 900 redis-server --port 0 --tls-port %d --bind 127.0.0.1 " ..
    "--tls-cert-file %s/server.pem --tls-key-file %s/server.key --tls-ca-cert-file %s/ca.pem " ..
    "--tls-auth-clients no --save '' --appendonly no --dir %s --logfile %s/redis.log",
    port, dir, dir, dir, dir, dir)))):gsub("%s+$", "")
local function cleanup()
  os.execute("kill -9 -" .. pgid .. " 2>/dev/null")
  os.execute("rm -rf " .. q(dir))
end
for _ = 1, 100 do
  local f = io.open(dir .. "/redis.log")
  local t = f and f:read("a") or ""
  if f then f:close() end
  if t:find("Ready to accept connections", 1, true) then break end
  os.execute("sleep 0.05")
end
local peer = "127.0.0.1:" .. port
local ca = dir .. "/ca.pem"
local RUSAGE = opt.build .. "/bench/ping/ping_rusage"
local lua_env = string.format("LUA_CPATH=%s ", q(opt.build .. "/lua/?.so;;"))

local kinds = {
  { id = "rb", name = "redis-benchmark --tls", n = opt.requests, cmd = function(n)
    return string.format("redis-benchmark -h 127.0.0.1 -p %d --tls --cacert %s " ..
      "-t ping_inline -c %d -n %d --csv", port, q(ca), C, n)
  end },
  { id = "lua", name = "peerpool, Lua API (pooled)", n = opt.requests, cmd = function(n)
    return string.format("env %sPP_PING_TLS_CA=%s lua5.4 bench/ping/ping.lua --peers %s " ..
      "--clients %d --requests %d", lua_env, q(ca), peer, C, n)
  end },
  { id = "c", name = "peerpool, C API (pooled)", n = opt.requests, cmd = function(n)
    return string.format("env PP_PING_TLS_CA=%s %s/bench/ping/ping_c --peers %s --clients %d " ..
      "--requests %d", q(ca), opt.build, peer, C, n)
  end },
  { id = "cpr_c", name = "connect per request, TLS (C)", n = opt["connect-requests"],
    cmd = function(n)
      return string.format("env PP_PING_TLS_CA=%s PP_PING_RECYCLE=1 %s/bench/ping/ping_c " ..
        "--peers %s --clients %d --requests %d", q(ca), opt.build, peer, C, n)
    end },
  { id = "cpr_lua", name = "connect per request, TLS (Lua)", n = opt["connect-requests"],
    cmd = function(n)
      return string.format("env %sPP_PING_TLS_CA=%s PP_PING_RECYCLE=1 lua5.4 " ..
        "bench/ping/ping.lua --peers %s --clients %d --requests %d", lua_env, q(ca), peer, C, n)
    end },
}

local function run(k)
  local out, ok = sh(string.format("%s --timeout 120 %s 2>/dev/null", RUSAGE, k.cmd(k.n)))
  local r = {}
  local ru = out:match("RUSAGE ([^\n]*)")
  if not ok or not ru then error(k.id .. " failed:\n" .. out, 0) end
  for key, v in ru:gmatch("(%S+)=(%S+)") do r["proc_" .. key] = tonumber(v) end
  if k.id == "rb" then
    local rps, p50, p99 = out:match(
      '"PING_INLINE","([^"]*)","[%d.]+","[%d.]+","([%d.]+)","[%d.]+","([%d.]+)","[%d.]+"')
    if not rps then error("redis-benchmark: no CSV result:\n" .. out, 0) end
    r.requests, r.rps = k.n, tonumber(rps) or k.n / r.proc_wall_s
    r.p50, r.p99 = tonumber(p50) * 1e3, tonumber(p99) * 1e3
    r.cpu = (r.proc_cpu_user_s + r.proc_cpu_sys_s) * 1e6 / k.n
  else
    local line = out:match("RESULT ([^\n]*)")
    if not line then error(k.id .. ": no RESULT line:\n" .. out, 0) end
    local f = {}
    for key, v in line:gmatch("(%S+)=(%S+)") do f[key] = tonumber(v) or v end
    r.requests, r.rps = f.requests, f.requests / f.wall_s
    r.p50, r.p99 = f.p50_us, f.p99_us
    r.cpu = (f.cpu_user_s + f.cpu_sys_s) * 1e6 / f.requests
    local full, resumed = out:match("TLS full=(%d+) resumed=(%d+)")
    r.full, r.resumed = tonumber(full), tonumber(resumed)
  end
  return r
end

local results = {}
local started = os.time()
local okrun, err = pcall(function()
  for _, k in ipairs(kinds) do run({ id = k.id, n = math.max(C, k.n // 10), cmd = k.cmd }) end
  for round = 1, opt.runs do
    for _, k in ipairs(kinds) do
      results[k.id] = results[k.id] or {}
      local r = run(k)
      results[k.id][round] = r
      io.stderr:write(string.format("round %d %-32s %8.2f us/req cpu  p50 %.0f p99 %.0f\n",
        round, k.name, r.cpu, r.p50, r.p99))
    end
  end
end)
local load = sh("cat /proc/loadavg"):match("^(%S+ %S+ %S+)")
cleanup()
if not okrun then
  io.stderr:write("ping_tls.lua: ", tostring(err), "\n")
  os.exit(1)
end

local function median(list, f)
  local v = {}
  for _, r in ipairs(list) do v[#v + 1] = r[f] end
  table.sort(v)
  return v[(#v + 1) // 2]
end

local rows, base = {}, nil
for _, k in ipairs(kinds) do
  local list = results[k.id]
  local row = { name = k.name, requests = list[1].requests, rps = median(list, "rps"),
    cpu = median(list, "cpu"), p50 = median(list, "p50"), p99 = median(list, "p99") }
  if list[1].full then
    local full, resumed = 0, 0
    for _, r in ipairs(list) do full, resumed = full + r.full, resumed + r.resumed end
    row.hs = string.format("%d / %d", full, resumed)
    row.share = full + resumed > 0 and string.format("%.1f%%", 100 * resumed / (full + resumed))
      or "-"
  else
    row.hs, row.share = "(its own)", "-"
  end
  if k.id == "rb" then base = row.cpu end
  rows[#rows + 1] = row
end

local commit = sh("git rev-parse --short HEAD 2>/dev/null"):gsub("%s+$", "")
local cpu_model = sh("grep -m1 'model name' /proc/cpuinfo"):match(":%s*(.-)%s*$") or "?"
local ncpu = sh("nproc"):gsub("%s+$", "")
local redis_v = sh("redis-server --version"):match("v=(%S+)") or "?"
local ssl_v = sh("openssl version"):gsub("%s+$", "")
local lines = {}
local function w(fmt, ...) lines[#lines + 1] = string.format(fmt, ...) end
w("## PING over TLS: pooled vs connect per request (redis-server --tls-port)")
w("")
w("Written by `bench/tls/ping_tls.lua` (`lua5.4 bench/tls/ping_tls.lua --build build`); do")
w("not edit by hand, the next run replaces this section.")
w("")
w("- date: %s; commit: %s", os.date("!%Y-%m-%d %H:%M UTC"), commit)
w("- machine: %s, %s CPUs online; load average at the end: %s", cpu_model, ncpu, load)
w("- redis-server %s with `--tls-port` (TLS only, EC P-256 certificate by a test CA, no client",
  redis_v)
w("  certificates), %s; the run took %d s", ssl_v, os.time() - started)
w("")
w("The workload is the plain PING bench's (above), over TLS to one redis-server: %d", C)
w("concurrent clients, each request acquire → `PING` → `+PONG` → release. Pooled clients")
w("dial their %d conns in an untimed warm-up, then every timed request rides a warm TLS", C)
w("conn. The connect-per-request rows run the same C and Lua clients with every conn closed")
w("after its request (`pp_release(lease, PP_ENOREUSE)`, `conn:close()`): each request dials a")
w("new TCP conn and handshakes, resuming a session from the pool's per-peer cache when it can")
w("(TLS 1.3 tickets: redis sends two per handshake, each used once). CPU µs/request is the")
w("client's own (`getrusage`, timed phase; redis-benchmark: its whole process, `wait4`);")
w("latency is from the acquire (redis-benchmark: from sending) to the reply. Median of %d",
  opt.runs)
w("runs, interleaved. Handshakes are those of the timed phase, summed over the runs.")
w("")
w("| client | requests | req/s | CPU µs/request | × redis-benchmark | p50 µs | p99 µs | " ..
  "TLS handshakes full / resumed | resumed |")
w("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for _, r in ipairs(rows) do
  w("| %s | %d | %.0f | %.2f | %.2f | %.0f | %.0f | %s | %s |", r.name, r.requests, r.rps, r.cpu,
    r.cpu / base, r.p50, r.p99, r.hs, r.share)
end
w("")
if os.execute("command -v gnuplot >/dev/null 2>&1") == true and opt.png ~= "" then
  w("![client CPU per request, PING over TLS](%s)", opt.png:match("[^/]+$"))
  w("")
end
local text = table.concat(lines, "\n") .. "\n"
io.write(text)

-- Into --out, between the markers (appended the first time).
local f = io.open(opt.out)
local doc = f and f:read("a") or ""
if f then f:close() end
local block = "<!-- bench:tls-ping -->\n" .. text .. "<!-- /bench:tls-ping -->\n"
local a = doc:find("<!-- bench:tls-ping -->", 1, true)
local b = select(2, doc:find("<!-- /bench:tls-ping -->\n", 1, true))
if a and b then
  doc = doc:sub(1, a - 1) .. block .. doc:sub(b + 1)
else
  doc = doc .. "\n" .. block
end
f = assert(io.open(opt.out, "w"))
f:write(doc)
f:close()

-- A bar chart of CPU per request (gnuplot, if installed).
if os.execute("command -v gnuplot >/dev/null 2>&1") == true and opt.png ~= "" then
  local data = os.tmpname()
  local df = assert(io.open(data, "w"))
  for i, r in ipairs(rows) do
    local label = r.name:gsub(" %(", "\\n("):gsub(", ", ",\\n")
    df:write(string.format("%d \"%s\" %.3f\n", i - 1, label, r.cpu))
  end
  df:close()
  local gp = string.format([[
set terminal pngcairo size 900,500 font ",10"
set bmargin 6
set output %q
set title "PING over TLS: client CPU per request (µs, log scale; median of %d runs)"
set style fill solid 0.8
set boxwidth 0.6
set logscale y
set yrange [1:*]
set ylabel "client CPU µs per request"
set grid ytics
unset key
plot %q using 1:3:xtic(2) with boxes lc rgb "#3070b0", \
  '' using 1:3:(sprintf("%%.1f", $3)) with labels offset 0,0.8
]], opt.png, opt.runs, data)
  local gf = assert(io.popen("gnuplot", "w"))
  gf:write(gp)
  gf:close()
  os.remove(data)
end
