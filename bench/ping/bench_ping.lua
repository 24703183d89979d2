-- bench_ping.lua — runs the PING benchmark's client kinds against two running redis-servers,
-- side by side, and reports: a table on stdout, the section of docs/bench.md between
-- <!-- bench:ping --> and <!-- /bench:ping --> (the rest of the file is left alone), and a
-- gnuplot PNG. bench/ping/run.sh starts the servers (and stops them, whatever happens) and
-- calls this; run that, not this.
--
--   lua5.4 bench/ping/bench_ping.lua --build DIR --peers HOST:PORT,HOST:PORT
--       [--requests N] [--connect-requests N] [--runs K] [--clients C] [--out FILE] [--png FILE]
--
-- Kinds, each a separate process (see the header of each client for what one request is):
--   redis_benchmark  redis-benchmark -t ping_inline -c C -n N --csv against the first server
--   lua              bench/ping/ping.lua          (peerpool, Lua API)
--   c                DIR/bench/ping/ping_c        (peerpool, C API)
--   generic_pool     bench/ping/ping_generic_pool.js (Node, generic-pool; needs npm install)
--   connect          DIR/bench/ping/ping_connect  (a new TCP connection per request, C/libuv)
-- First one short check run of every kind (not counted), then K rounds; each round runs every
-- kind once, in turn, so that a change in the machine's load touches all kinds alike. Each
-- figure is the median of the K runs.
local uv = require "luv"
-- The bench drivers' shared helpers (bench/bench_lib.lua), one directory up.
package.path = arg[0]:match("^(.-)[^/]*$") .. "../?.lua;" .. package.path
local B = require "bench_lib"

local opt = {
  build = "build", peers = nil, requests = 200000, ["connect-requests"] = 8000, runs = 5,
  clients = 32, out = nil, png = nil, warmup = 20,
}
do
  local i = 1
  while i <= #arg do
    local name = arg[i]:match("^%-%-([%w-]+)$")
    local v = arg[i + 1]
    if not name or opt[name] == nil and name ~= "peers" and name ~= "out" and name ~= "png"
        or v == nil then
      io.stderr:write("usage: lua5.4 bench_ping.lua --build DIR --peers HOST:PORT,HOST:PORT ",
        "[--requests N] [--connect-requests N] [--runs K] [--clients C] [--warmup W] ",
        "[--out FILE] [--png FILE]\n")
      os.exit(2)
    end
    if type(opt[name]) == "number" then
      opt[name] = math.tointeger(tonumber(v))
      if not opt[name] or opt[name] < 1 then
        io.stderr:write("bench_ping: bad --", name, "\n"); os.exit(2)
      end
    else
      opt[name] = v
    end
    i = i + 2
  end
end
if not opt.peers then io.stderr:write("bench_ping: --peers is required\n"); os.exit(2) end
if opt.runs > 25 then io.stderr:write("bench_ping: --runs is at most 25\n"); os.exit(2) end

local HERE = arg[0]:match("^(.*)/[^/]*$") or "."
local BUILD = opt.build
local C = opt.clients
local peers = {}
for p in opt.peers:gmatch("[^,]+") do peers[#peers + 1] = p end
local first_host, first_port = peers[1]:match("^(.*):(%d+)$")

local function log(...) io.stderr:write("bench_ping: ", string.format(...), "\n") end
local function die(...)
  log(...)
  os.exit(1)
end

local q, capture, first_line, read_file = B.q, B.capture, B.first_line, B.read_file

local function exists(path) return read_file(path) ~= nil end

-- ---------------------------------------------------------------------------------------------
-- The client kinds.
local RUSAGE = BUILD .. "/bench/ping/ping_rusage"
for _, f in ipairs { RUSAGE, BUILD .. "/bench/ping/ping_c", BUILD .. "/bench/ping/ping_connect",
  BUILD .. "/lua/peerpool.so" } do
  if not exists(f) then die("%s not found; build first (cmake --build %s)", f, BUILD) end
end
local client_args = function(n, warmup)
  return string.format("--peers %s --clients %d --requests %d --warmup %d", q(opt.peers), C, n,
    warmup or opt.warmup)
end

local node_skip
if first_line("command -v node") == "" then
  node_skip = "node is not installed"
elseif not exists(HERE .. "/node_modules/generic-pool/package.json") then
  node_skip = "generic-pool is not installed (bench/ping/setup.sh runs npm install)"
end

local kinds = {
  {
    id = "redis_benchmark", name = "redis-benchmark", plot = "redis-\\nbenchmark",
    what = string.format("`redis-benchmark -t ping_inline -c %d -n N --csv` (C, hiredis, " ..
      "persistent conns, one event loop) against the first server", C),
    requests = opt.requests,
    cmd = function(n)
      return string.format("redis-benchmark -h %s -p %s -t ping_inline -c %d -n %d --csv",
        q(first_host), first_port, C, n)
    end,
  },
  {
    id = "lua", name = "peerpool, Lua API", plot = "peerpool\\nLua API",
    what = "`bench/ping/ping.lua`: " .. C .. " coroutines on luv's loop, " ..
      "`pool:acquire()` (no peer named) → `conn:send(\"PING\\r\\n\")` → " ..
      "`conn:receive(\"*l\")` → `conn:release()`",
    requests = opt.requests,
    cmd = function(n)
      return string.format("env LUA_CPATH=%s lua5.4 %s %s", q(BUILD .. "/lua/?.so;;"),
        q(HERE .. "/ping.lua"), client_args(n))
    end,
  },
  {
    id = "c", name = "peerpool, C API", plot = "peerpool\\nC API",
    what = "`bench/ping/ping_c.c`: " .. C .. " clients on one uv loop, `pp_try_acquire` " ..
      "(any peer; `pp_acquire` only when it says `PP_EAGAIN`) → `pp_conn_read_start` + " ..
      "`pp_conn_write` → `+PONG` → `pp_release`, the next request started in the read callback",
    requests = opt.requests,
    cmd = function(n)
      return string.format("%s %s", q(BUILD .. "/bench/ping/ping_c"), client_args(n))
    end,
  },
  {
    id = "generic_pool", name = "Node generic-pool", plot = "Node\\ngeneric-pool",
    what = "`bench/ping/ping_generic_pool.js`: " .. C .. " async clients, one generic-pool " ..
      "(max " .. C .. ") of `net` sockets to the peers in turn: `await pool.acquire()` → " ..
      "write `PING` → await the `+PONG` line → `pool.release()`",
    requests = opt.requests, skip = node_skip,
    cmd = function(n)
      return string.format("node %s %s", q(HERE .. "/ping_generic_pool.js"), client_args(n))
    end,
  },
  {
    id = "connect", name = "connect per request (C)", plot = "connect per\\nrequest (C)",
    what = "`bench/ping/ping_connect.c`: no pool; " .. C .. " clients on plain libuv, each " ..
      "request a new TCP connection (peers in turn): connect → `PING` → `+PONG` → close",
    requests = opt["connect-requests"], warmup = 2,
    cmd = function(n)
      return string.format("%s %s", q(BUILD .. "/bench/ping/ping_connect"),
        client_args(n, 2))
    end,
  },
}

-- Run one kind once; return a table of figures, or raise with what went wrong.
local function run_kind(k, n)
  local cmd = string.format("%s --timeout 60 %s 2>>%s", q(RUSAGE), k.cmd(n),
    q(os.getenv("PP_PING_LOG") or "/dev/null"))
  local out, ok = capture(cmd)
  local r = {}
  local ru = out:match("RUSAGE ([^\n]*)")
  if not ok or not ru then
    error(string.format("%s failed (exit status not 0); its output:\n%s", k.id, out), 0)
  end
  for key, v in ru:gmatch("(%S+)=(%S+)") do r["proc_" .. key] = tonumber(v) end
  if k.id == "redis_benchmark" then
    -- "PING_INLINE","rps","avg","min","p50","p95","p99","max" (ms)
    local rps, p50, p99 = out:match(
      '"PING_INLINE","([^"]*)","[%d.]+","[%d.]+","([%d.]+)","[%d.]+","([%d.]+)","[%d.]+"')
    if not rps then error("redis-benchmark: no CSV result in its output:\n" .. out, 0) end
    r.requests = n
    -- (a run too short for its clock says "inf": then the whole process's wall time)
    r.rps = tonumber(rps) or n / r.proc_wall_s
    r.p50_us, r.p99_us = tonumber(p50) * 1e3, tonumber(p99) * 1e3
    -- Whole process: it has no warm-up to leave out, and its start (one CONFIG GET and C
    -- connects) is measured separately (start_cost below).
    r.cpu_us = (r.proc_cpu_user_s + r.proc_cpu_sys_s) * 1e6 / n
    r.user_us, r.sys_us = r.proc_cpu_user_s * 1e6 / n, r.proc_cpu_sys_s * 1e6 / n
    r.proc_cpu_us = r.cpu_us
  else
    local line = out:match("RESULT ([^\n]*)")
    if not line then error(k.id .. ": no RESULT line in its output:\n" .. out, 0) end
    local f = {}
    for key, v in line:gmatch("(%S+)=(%S+)") do f[key] = tonumber(v) or v end
    r.requests = f.requests
    r.rps = f.requests / f.wall_s
    r.p50_us, r.p99_us = f.p50_us, f.p99_us
    r.cpu_us = (f.cpu_user_s + f.cpu_sys_s) * 1e6 / f.requests
    r.user_us, r.sys_us = f.cpu_user_s * 1e6 / f.requests, f.cpu_sys_s * 1e6 / f.requests
    local all = f.requests + C * (k.warmup or opt.warmup)
    r.proc_cpu_us = (r.proc_cpu_user_s + r.proc_cpu_sys_s) * 1e6 / all
  end
  return r
end

-- ---------------------------------------------------------------------------------------------
-- Machine facts, for the report.
local function read_first(path, key)
  local s = read_file(path) or ""
  for line in s:gmatch("[^\n]+") do
    if key == "" then return line end
    local v = line:match("^" .. key .. "%s*:%s*(.-)%s*$")
    if v then return v end
  end
  return "unknown"
end
local loadavg = B.loadavg
local cache = read_file(BUILD .. "/CMakeCache.txt") or ""
local function cache_var(name) return cache:match("\n" .. name .. ":[%w]+=([^\n]*)") or "" end
local cc = cache_var("CMAKE_C_COMPILER")
local gp_pkg = read_file(HERE .. "/node_modules/generic-pool/package.json") or ""
local m = {
  date = os.date("!%Y-%m-%d %H:%M UTC"),
  commit = os.getenv("PP_BENCH_COMMIT") or "unknown",
  cpu = read_first("/proc/cpuinfo", "model name"),
  ncpu = first_line("getconf _NPROCESSORS_ONLN"),
  kernel = first_line("uname -srm"),
  load = loadavg(),
  build_type = cache_var("CMAKE_BUILD_TYPE"),
  cc = cc ~= "" and first_line(q(cc) .. " --version") or "unknown",
  libuv = uv.version_string(),
  lua = first_line("lua5.4 -v"):match("^(Lua %S+)") or _VERSION,
  redis = first_line("redis-server --version"):match("v=(%S+)") or "unknown",
  node = node_skip and "-" or first_line("node --version"),
  generic_pool = gp_pkg:match('"version"%s*:%s*"([^"]+)"') or "-",
}

-- ---------------------------------------------------------------------------------------------
-- Running.
local t_start = uv.hrtime()
log("peers %s; %d clients; %d requests per run (connect per request: %d); %d runs",
  opt.peers, C, opt.requests, opt["connect-requests"], opt.runs)

-- A short check run of every kind, not counted: it warms the servers and the page cache and
-- finds a broken client before the long runs.
for _, k in ipairs(kinds) do
  if not k.skip then
    local ok, err = pcall(run_kind, k, C * 50)
    if not ok then die("check run: %s", err) end
  end
end
-- redis-benchmark's fixed cost (start, CONFIG GET, C connects, exit), as one request per conn.
local start_cost = run_kind(kinds[1], C)
start_cost = (start_cost.proc_cpu_user_s + start_cost.proc_cpu_sys_s) * 1e6

local runs = {}
for _, k in ipairs(kinds) do runs[k.id] = {} end
for round = 1, opt.runs do
  for _, k in ipairs(kinds) do
    if not k.skip then
      local ok, r = pcall(run_kind, k, k.requests)
      if not ok then die("round %d: %s", round, r) end
      table.insert(runs[k.id], r)
      log("round %d %-16s %9.0f req/s  %6.2f µs CPU/req (whole process %6.2f)  p50 %7.1f µs" ..
        "  p99 %7.1f µs", round, k.id, r.rps, r.cpu_us, r.proc_cpu_us, r.p50_us, r.p99_us)
    end
  end
end
-- Syscalls per request: one more run of each kind under `strace -f -c` (not timed: strace
-- slows every syscall down). It explains the CPU figures: on loopback the kernel side of a
-- request (both ends of the TCP exchange run in the sender's syscalls) is most of the cost.
local STRACE_N = math.min(opt.requests, 16000)
local STRACE_CONNECT_N = math.min(opt["connect-requests"], 3200)
local have_strace = first_line("command -v strace") ~= ""
local sys_groups = {
  read = "read", recvfrom = "read", recvmsg = "read", readv = "read",
  write = "write", sendto = "write", sendmsg = "write", writev = "write",
  epoll_ctl = "epoll_ctl",
  epoll_wait = "epoll_wait", epoll_pwait = "epoll_wait", epoll_pwait2 = "epoll_wait",
}
local function count_syscalls(k)
  local n = k.id == "connect" and STRACE_CONNECT_N or STRACE_N
  local tmp = os.tmpname()
  local cmd = string.format("timeout 120 strace -f -c -o %s %s >/dev/null 2>>%s", q(tmp),
    k.cmd(n), q(os.getenv("PP_PING_LOG") or "/dev/null"))
  local _, ok = capture(cmd)
  local s = read_file(tmp)
  os.remove(tmp)
  if not ok or not s then
    log("strace run of %s failed; no syscall counts for it", k.id)
    return nil
  end
  local all = k.id == "redis_benchmark" and n or n + C * (k.warmup or opt.warmup)
  local c = { read = 0, write = 0, epoll_ctl = 0, epoll_wait = 0, other = 0, total = 0,
    requests = all }
  for line in s:gmatch("[^\n]+") do
    local f = {}
    for word in line:gmatch("%S+") do f[#f + 1] = word end
    if (#f == 5 or #f == 6) and tonumber(f[1]) and tonumber(f[4]) and f[#f] ~= "total" then
      local group = sys_groups[f[#f]] or "other"
      c[group] = c[group] + tonumber(f[4])
      c.total = c.total + tonumber(f[4])
    end
  end
  for key, v in pairs(c) do if key ~= "requests" then c[key] = v / all end end
  return c
end
local syscalls = {}
if have_strace then
  for _, k in ipairs(kinds) do
    if not k.skip then syscalls[k.id] = count_syscalls(k) end
  end
else
  log("strace is not installed: no syscall counts")
end

m.load_end = loadavg()
local elapsed = (uv.hrtime() - t_start) / 1e9

-- Medians, and min/max of the CPU figure.
local median = B.median
local res = {}
for _, k in ipairs(kinds) do
  local list = runs[k.id]
  if #list > 0 then
    local s = {}
    for _, field in ipairs { "rps", "cpu_us", "user_us", "sys_us", "p50_us", "p99_us",
      "proc_cpu_us" } do
      local v = {}
      for i, r in ipairs(list) do v[i] = r[field] end
      s[field] = median(v)
      s[field .. "_min"], s[field .. "_max"] = v[1], v[#v]
    end
    s.requests = list[1].requests
    res[k.id] = s
  end
end

-- ---------------------------------------------------------------------------------------------
-- Targets (issue 3): Lua API CPU per request <= 1.2x redis-benchmark's, C API <= 1.05x, both
-- below generic-pool's.
local rb = res.redis_benchmark.cpu_us
local targets = {}
local function target(what, kind, measured, limit, limit_text, ok)
  targets[#targets + 1] = { what = what, kind = kind, measured = measured, limit = limit,
    limit_text = limit_text, ok = ok }
end
local name_of = {}
for _, k in ipairs(kinds) do name_of[k.id] = k.name end
for _, t in ipairs { { "lua", 1.2 }, { "c", 1.05 } } do
  local id, factor = t[1], t[2]
  local v = res[id].cpu_us
  target(string.format("%s: CPU/request ≤ %.2f× redis-benchmark's", name_of[id], factor),
    id, string.format("%.2f µs (%.2f×)", v, v / rb), factor * rb,
    string.format("≤ %.2f µs", factor * rb), v <= factor * rb)
end
for _, id in ipairs { "lua", "c" } do
  local v = res[id].cpu_us
  if res.generic_pool then
    local g = res.generic_pool.cpu_us
    target(string.format("%s: CPU/request below generic-pool's", name_of[id]), id,
      string.format("%.2f µs (%.2f× generic-pool's)", v, v / g), g,
      string.format("< %.2f µs", g), v < g)
  else
    target(string.format("%s: CPU/request below generic-pool's", name_of[id]), id,
      string.format("%.2f µs", v), nil, "generic-pool not measured: " .. node_skip, nil)
  end
end
local missed, unmeasured = 0, 0
for _, t in ipairs(targets) do
  if t.ok == false then missed = missed + 1 elseif t.ok == nil then unmeasured = unmeasured + 1 end
end
local function verdict(t) return t.ok == nil and "not measured" or t.ok and "yes" or "**no**" end

-- ---------------------------------------------------------------------------------------------
-- The table on stdout.
print(string.format("\nPING through a pool: %d clients, 2 redis-servers, median of %d runs " ..
  "(%.0f s in all)\n", C, opt.runs, elapsed))
print(string.format("%-26s %9s %9s %8s %8s %11s %9s %9s %9s", "client", "requests", "req/s",
  "CPU µs", "× r-b", "user+sys", "p50 µs", "p99 µs", "proc µs"))
for _, k in ipairs(kinds) do
  local s = res[k.id]
  if s then
    print(string.format("%-26s %9d %9.0f %8.2f %8.2f %5.2f+%5.2f %9.1f %9.1f %9.2f", k.name,
      s.requests, s.rps, s.cpu_us, s.cpu_us / rb, s.user_us, s.sys_us, s.p50_us, s.p99_us,
      s.proc_cpu_us))
  else
    print(string.format("%-26s not run: %s", k.name, k.skip))
  end
end
print()
if next(syscalls) then
  print(string.format("%-26s %8s %8s %8s %8s %8s %8s", "syscalls per request", "total",
    "read", "write", "ep_ctl", "ep_wait", "other"))
  for _, k in ipairs(kinds) do
    local c = syscalls[k.id]
    if c then
      print(string.format("%-26s %8.2f %8.2f %8.2f %8.2f %8.2f %8.2f", k.name, c.total, c.read,
        c.write, c.epoll_ctl, c.epoll_wait, c.other))
    end
  end
  print()
end
for _, t in ipairs(targets) do
  print(string.format("%-58s %-34s %s", t.what, t.measured,
    t.ok == nil and "NOT MEASURED" or t.ok and "met" or "MISSED"))
end

-- ---------------------------------------------------------------------------------------------
-- The plot: CPU per request and requests/s per client kind.
local function plot(png)
  local tmp = os.tmpname()
  local f = assert(io.open(tmp, "w"))
  f:write("# idx label cpu cpu_min cpu_max rps rps_min rps_max\n")
  local i = 0
  for _, k in ipairs(kinds) do
    local s = res[k.id]
    if s then
      f:write(string.format('%d "%s" %.3f %.3f %.3f %.1f %.1f %.1f\n', i, k.plot, s.cpu_us,
        s.cpu_us_min, s.cpu_us_max, s.rps, s.rps_min, s.rps_max))
      i = i + 1
    end
  end
  f:close()
  local title = string.format("PING through a pool: %d clients, 2 redis-servers, median of %d " ..
    "runs (%s, %s CPUs; %s)", C, opt.runs, m.cpu, m.ncpu, m.date)
  local cmd = string.format("gnuplot -e %s %s 2>&1", q(string.format(
    "datafile='%s'; outfile='%s'; rb=%.4f; plottitle='%s'", tmp, png, rb,
    title:gsub("'", ""))), q(HERE .. "/plot.gp"))
  local out, ok = capture(cmd)
  os.remove(tmp)
  if not ok then log("gnuplot failed: %s", out) return false end
  return true
end

-- ---------------------------------------------------------------------------------------------
-- The docs section.
local MARK_BEGIN, MARK_END = "<!-- bench:ping -->", "<!-- /bench:ping -->"

local function section(png_name)
  local o = {}
  local function w(...) o[#o + 1] = string.format(...) end
  w("%s\n", MARK_BEGIN)
  w("## PING through a pool: two redis-servers, %d clients\n\n", C)
  w("Written by `bench/ping/run.sh` (`make bench`, or `sh bench/run.sh build`, or\n" ..
    "`sh bench/ping/run.sh build` for this section alone); do not edit by hand, the next run\n" ..
    "replaces this section.\n\n")
  w("- date: %s; engine commit: %s\n", m.date, m.commit)
  w("- machine: %s, %s CPUs online; %s\n", m.cpu, m.ncpu, m.kernel)
  w("- load average (1, 5, 15 min) at start: %s; at end: %s\n", m.load, m.load_end)
  w("- build: %s, %s, libuv %s; %s with luv; redis-server %s; Node %s, generic-pool %s\n",
    m.build_type ~= "" and m.build_type or "unknown", m.cc, m.libuv, m.lua, m.redis, m.node,
    m.generic_pool)
  w("- the whole run took %.0f s\n\n", elapsed)
  w("The workload: two redis-servers (`--save '' --appendonly no`) started by the bench on\n" ..
    "free loopback ports, and %d concurrent clients, each doing acquire → `PING\\r\\n` →\n" ..
    "read `+PONG\\r\\n` → release, over and over. Every client kind runs as its own process,\n" ..
    "one at a time, on the same two servers. The servers share the machine's %s CPUs with\n" ..
    "the client, so requests/s and latencies depend on how the scheduler places three busy\n" ..
    "processes; the client's own CPU time per request is the robust figure.\n\n", C, m.ncpu)
  w("Client kinds:\n\n")
  for _, k in ipairs(kinds) do w("- **%s**: %s\n", k.name, k.what) end
  w("\nThe pooled clients use one pool with both servers as peers, `max_per_peer = %d`,\n" ..
    "`max_total = %d`, `client_limit = 1`: after the warm-up every acquire finds an idle\n" ..
    "conn. They first do %d untimed requests per client (the pool dials its %d conns then),\n" ..
    "then %d timed requests in all (%d per client); the connect-per-request client does %d\n" ..
    "(it leaves a socket in TIME_WAIT per request, so it is kept small). Inside each client,\n" ..
    "CPU time is `getrusage(RUSAGE_SELF)` (user + sys, all threads) and wall time is\n" ..
    "monotonic, both around the timed phase only; latency is per request, from just before\n" ..
    "the acquire (or connect) to the complete `+PONG` line. redis-benchmark cannot be\n" ..
    "measured from inside: its CPU time is its whole process's (`wait4` in\n" ..
    "`bench/ping/ping_rusage`), and its latency (its own, from sending the command to the\n" ..
    "reply, no acquire) and requests/s are from its `--csv` output. Its fixed cost (start,\n" ..
    "one `CONFIG GET`, %d connects, exit) was %.0f µs of CPU in all, %.3f µs per request\n" ..
    "of a run here: negligible.\n\n",
    (C + #peers - 1) // #peers, C, opt.warmup, C, opt.requests, opt.requests // C,
    opt["connect-requests"], C, start_cost, start_cost / opt.requests)
  w("redis-benchmark runs as one process with %d conns to one server rather than two\n" ..
    "processes with %d conns each to both: that is the shape of every other client here\n" ..
    "(one process, one event loop, %d requests in flight), and its CPU time per request is\n" ..
    "about the same either way (checked once when the bench was written: 10.5 µs with two\n" ..
    "processes, 10.7 µs with one).\n\n", C, C // 2, C)
  w("Each figure is the median of %d runs; the runs were interleaved (every kind once per\n" ..
    "round), after one short check run of each kind that is not counted.\n\n", opt.runs)
  w("| client | requests | req/s | CPU µs/request | × redis-benchmark | user + sys µs | " ..
    "CPU µs min – max | p50 µs | p99 µs | whole process µs/request |\n")
  w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
  for _, k in ipairs(kinds) do
    local s = res[k.id]
    if s then
      w("| %s | %d | %.0f | %.2f | %.2f | %.2f + %.2f | %.2f – %.2f | %.1f | %.1f | %.2f |\n",
        k.name, s.requests, s.rps, s.cpu_us, s.cpu_us / rb, s.user_us, s.sys_us, s.cpu_us_min,
        s.cpu_us_max, s.p50_us, s.p99_us, s.proc_cpu_us)
    else
      w("| %s | not run: %s | | | | | | | | |\n", k.name, k.skip)
    end
  end
  w("\n\"whole process\" is the process's whole CPU time (start, warm-up, timed phase,\n" ..
    "exit; `bench/ping/ping_rusage`) over every request it made: a cross-check of the\n" ..
    "in-process figure that also shows what starting the runtime costs.\n\n")
  w("Requests/s and latencies are less comparable than the CPU column: redis-benchmark's\n" ..
    "latency runs from its write to the reply (there is no acquire) and its one server has a\n" ..
    "CPU to itself while it runs, where the other clients' two servers share one. Three busy\n" ..
    "processes on %s CPUs are what the pooled clients' millisecond p99 mostly shows (see\n" ..
    "`bench/README.md`).\n\n", m.ncpu)
  if next(syscalls) then
    w("Syscalls per request, from one more run of each kind under `strace -f -c` (%d\n" ..
      "requests; %d for connect per request; not timed, whole process, so start-up is in\n" ..
      "\"other\"). On loopback most of a request's CPU time is kernel time spent in these\n" ..
      "calls (the receiving end's TCP work runs in the sender's `write`), so they explain\n" ..
      "most of the differences in the CPU column. redis-benchmark's event loop adds and\n" ..
      "removes write interest around each command (the `epoll_ctl` column); peerpool's one\n" ..
      "`epoll_ctl` per request is libuv 1.44 re-registering the fd after a `uv_write` that\n" ..
      "completed at once, which Node avoids with `uv_try_write`:\n\n", STRACE_N,
      STRACE_CONNECT_N)
    w("| client | all | read | write | epoll_ctl | epoll_wait | other |\n")
    w("|---|---:|---:|---:|---:|---:|---:|\n")
    for _, k in ipairs(kinds) do
      local c = syscalls[k.id]
      if c then
        w("| %s | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f |\n", k.name, c.total, c.read,
          c.write, c.epoll_ctl, c.epoll_wait, c.other)
      end
    end
    w("\n")
  end
  w("Targets (issue 3), on the CPU time per request:\n\n")
  w("| target | measured | limit | met? |\n|---|---|---:|---|\n")
  for _, t in ipairs(targets) do
    w("| %s | %s | %s | %s |\n", t.what, t.measured, t.limit_text, verdict(t))
  end
  w("\n%s\n", missed > 0 and "Some targets are missed: see the **no** rows." or
    unmeasured > 0 and "No measured target is missed; some could not be measured." or
    "Every target is met.")
  w("\nredis-benchmark is not the floor of this workload, though: its extra `epoll_ctl`\n" ..
    "calls (above) cost more than a pool does. Against peerpool's own C API client, the\n" ..
    "Lua API costs %.2f× the CPU time per request (%.2f µs more, %.2f of it user time).\n",
    res.lua.cpu_us / res.c.cpu_us, res.lua.cpu_us - res.c.cpu_us,
    res.lua.user_us - res.c.user_us)
  if png_name then
    w("\n![CPU time per request and requests/s per client kind](%s)\n", png_name)
  end
  w("%s\n", MARK_END)
  return table.concat(o)
end

local function write_doc(path, png_name)
  local old = read_file(path)
  local new
  local sec = section(png_name)
  if not old then
    new = "# Benchmarks\n\nFigures measured on a real machine by the programs in `bench/`. " ..
      "Each section is\nrewritten by the benchmark named in it.\n\n" .. sec
  else
    local b = old:find(MARK_BEGIN, 1, true)
    local e = b and old:find(MARK_END, b, true)
    if b and e then
      e = e + #MARK_END
      if old:sub(e, e) == "\n" then e = e + 1 end
      new = old:sub(1, b - 1) .. sec .. old:sub(e)
    else
      new = old .. (old:sub(-1) == "\n" and "" or "\n") .. (#old > 0 and "\n" or "") .. sec
    end
  end
  local tmp = path .. ".tmp" .. tostring(uv.os_getpid())
  local f = assert(io.open(tmp, "w"))
  f:write(new)
  f:close()
  assert(os.rename(tmp, path))
end

local png_ok = false
if opt.png then
  png_ok = plot(opt.png)
  if png_ok then print("\nwrote " .. opt.png) end
end
if opt.out then
  local png_name
  if png_ok then
    -- The image link is relative to the markdown file.
    local dir = opt.out:match("^(.*)/[^/]*$") or "."
    png_name = opt.png:sub(1, #dir + 1) == dir .. "/" and opt.png:sub(#dir + 2) or opt.png
  end
  write_doc(opt.out, png_name)
  print("wrote " .. opt.out)
end
os.exit(0, true)
