-- obs_cost.lua — what observability costs the PING benchmark's client: CPU per request with
-- everything observable off vs on, side by side in one run (issue 13's target: at most +3 %).
--
--   sh bench/observe/run.sh [BUILD]          (starts two redis-servers; make bench runs it)
--   lua5.4 bench/observe/obs_cost.lua --build DIR --peers HOST:PORT,HOST:PORT
--       [--runs 7] [--requests 100000] [--clients 32] [--warmup 20]
--       [--out docs/bench.md] [--png docs/bench-observe.png] [--callgrind 0]
--
-- Client kinds are the PING benchmark's (bench/ping/ping_c.c, bench/ping/ping.lua); each runs
-- in three settings:
--   off         the engine built with histograms and the explain ring compiled out
--               (PP_NO_OBSERVE: BUILD/bench/ping/ping_c_noobs, BUILD/bench/observe-off/
--               peerpool.so), no event handler, no leak_threshold, nothing read
--   on          the normal build (histograms and explain always on), a handler on every event,
--               and every second what a scrape reads (Lua: pool:metrics() and pool:explain();
--               C: stats, every histogram's p50 and p99, the explain ring)
--   on + leak   "on" with leak_threshold = 10000 (the Lua binding notes each acquire's stack)
-- Every round runs all six (kind, setting) pairs, in a rotating order; the figure compared is
-- the client's own CPU time (getrusage, user + sys) per request over its timed phase. The
-- ratio on/off is taken per round (the two runs were close in time), then its median and
-- range over the rounds are reported.
local uv = require "luv"
-- The bench drivers' shared helpers (bench/bench_lib.lua), one directory up.
package.path = arg[0]:match("^(.-)[^/]*$") .. "../?.lua;" .. package.path
local B = require "bench_lib"

local opt = { build = nil, peers = nil, runs = 7, requests = 100000, clients = 32, warmup = 20,
  out = "docs/bench.md", png = "docs/bench-observe.png", callgrind = 1 }
do
  local i = 1
  while i <= #arg do
    local name = arg[i]:match("^%-%-([%w-]+)$")
    if not name or opt[name] == nil and name ~= "build" and name ~= "peers" or not arg[i + 1] then
      io.stderr:write("usage: lua5.4 obs_cost.lua --build DIR --peers HOST:PORT,... [--runs N] ",
        "[--requests N] [--clients C] [--warmup W] [--out FILE] [--png FILE]\n")
      os.exit(2)
    end
    local v = arg[i + 1]
    opt[name] = (name == "build" or name == "peers" or name == "out" or name == "png") and v
      or math.tointeger(tonumber(v))
    if opt[name] == nil then io.stderr:write("obs_cost: bad --", name, "\n"); os.exit(2) end
    i = i + 2
  end
end
if not opt.build or not opt.peers then
  io.stderr:write("obs_cost: --build and --peers are required\n")
  os.exit(2)
end
local BUILD, C = opt.build, opt.clients
local HERE = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
local PING = HERE .. "/../ping"
local LOG = os.getenv("PP_PING_LOG") or "/dev/null"

local function log(fmt, ...) io.stderr:write("obs_cost: ", fmt:format(...), "\n") end
local function die(fmt, ...) log(fmt, ...); os.exit(1) end
local q, read_file, first_line, median = B.q, B.read_file, B.first_line, B.median
-- A client's output with its stderr, for the error message of a failed run.
local function capture(cmd) return B.capture(cmd .. " 2>&1") end

for _, f in ipairs { BUILD .. "/bench/ping/ping_c", BUILD .. "/bench/ping/ping_c_noobs",
  BUILD .. "/lua/peerpool.so", BUILD .. "/bench/observe-off/peerpool.so" } do
  if not read_file(f) then die("%s not found; build first (make build)", f) end
end

local function client_args(n)
  return string.format("--peers %s --clients %d --requests %d --warmup %d", q(opt.peers), C, n,
    opt.warmup)
end
local settings = {
  { id = "off", name = "off", env = "" },
  { id = "on", name = "on", env = "PP_PING_OBSERVE=1" },
  { id = "leak", name = "on + leak_threshold", env = "PP_PING_OBSERVE=1 PP_PING_LEAK=10000" },
}
local kinds = {
  { id = "c", name = "C API",
    cmd = function(s, n, wrap)
      local bin = s.id == "off" and "ping_c_noobs" or "ping_c"
      return string.format("env %s %s %s %s", s.env, wrap or "", q(BUILD .. "/bench/ping/" .. bin),
        client_args(n))
    end },
  { id = "lua", name = "Lua API",
    cmd = function(s, n, wrap)
      local dir = s.id == "off" and BUILD .. "/bench/observe-off" or BUILD .. "/lua"
      return string.format("env %s LUA_CPATH=%s %s lua5.4 %s %s", s.env, q(dir .. "/?.so;;"),
        wrap or "", q(PING .. "/ping.lua"), client_args(n))
    end },
}

local function run(k, s, n)
  local out, ok = capture(string.format("timeout 120 %s 2>>%s", k.cmd(s, n), q(LOG)))
  local line = out:match("RESULT ([^\n]*)")
  if not ok or not line then error(string.format("%s/%s failed:\n%s", k.id, s.id, out), 0) end
  local f = {}
  for key, v in line:gmatch("(%S+)=(%S+)") do f[key] = tonumber(v) or v end
  return { cpu_us = (f.cpu_user_s + f.cpu_sys_s) * 1e6 / f.requests,
    user_us = f.cpu_user_s * 1e6 / f.requests, rps = f.requests / f.wall_s }
end

local loadavg = B.loadavg
local m = {
  date = os.date("!%Y-%m-%d %H:%M UTC"),
  commit = os.getenv("PP_BENCH_COMMIT") or first_line("git -C " .. q(HERE) ..
    " rev-parse --short HEAD"),
  cpu = (read_file("/proc/cpuinfo") or ""):match("model name%s*:%s*([^\n]*)") or "unknown",
  ncpu = first_line("getconf _NPROCESSORS_ONLN"),
  kernel = first_line("uname -srm"),
  load = loadavg(),
}

-- One short check run of each pair (not counted): finds a broken client early, warms up.
local pairs_list = {}
for _, k in ipairs(kinds) do
  for _, s in ipairs(settings) do pairs_list[#pairs_list + 1] = { k = k, s = s } end
end
for _, p in ipairs(pairs_list) do
  local ok, err = pcall(run, p.k, p.s, C * 100)
  if not ok then die("check run: %s", err) end
end

local t0 = uv.hrtime()
local runs = {}
for _, p in ipairs(pairs_list) do runs[p.k.id .. "/" .. p.s.id] = {} end
for round = 1, opt.runs do
  for i = 0, #pairs_list - 1 do
    local p = pairs_list[(i + round - 1) % #pairs_list + 1] -- rotate the order every round
    local ok, r = pcall(run, p.k, p.s, opt.requests)
    if not ok then die("round %d: %s", round, r) end
    runs[p.k.id .. "/" .. p.s.id][round] = r
    log("round %d %-4s %-5s %6.2f µs CPU/request (user %5.2f)  %8.0f req/s", round, p.k.id,
      p.s.id, r.cpu_us, r.user_us, r.rps)
  end
end
-- Instructions per request in user space, under valgrind's callgrind (exact, whatever the
-- machine's load): the slope between a run of N1 and one of N2 requests, so start-up and
-- warm-up cancel out. Skipped when valgrind is missing (--callgrind 0 skips it too).
local CG1, CG2 = 4 * C * 50, 4 * C * 150 -- 6400 and 19200 requests with 32 clients
local cg = {}
local function callgrind_total(k, s, n)
  local tmp = os.tmpname()
  local out, ok = capture(string.format(
    "{ timeout 300 %s >/dev/null; }",
    k.cmd(s, n, "PP_PING_SCRAPE_MS=0 valgrind --tool=callgrind --callgrind-out-file=" .. q(tmp))))
  os.remove(tmp)
  local total = out:match("Collected : (%d+)")
  if not ok or not total then
    error(string.format("callgrind %s/%s failed:\n%s", k.id, s.id, out), 0)
  end
  return tonumber(total)
end
if opt.callgrind ~= 0 and first_line("command -v valgrind") ~= "" then
  for _, p in ipairs(pairs_list) do
    local a = callgrind_total(p.k, p.s, CG1)
    local b = callgrind_total(p.k, p.s, CG2)
    cg[p.k.id .. "/" .. p.s.id] = (b - a) / (CG2 - CG1)
    log("callgrind %-4s %-5s %8.0f instructions/request", p.k.id, p.s.id,
      cg[p.k.id .. "/" .. p.s.id])
  end
end
local elapsed = (uv.hrtime() - t0) / 1e9
m.load_end = loadavg()

local function range(v)
  local lo, hi = math.huge, -math.huge
  for _, x in ipairs(v) do lo, hi = math.min(lo, x), math.max(hi, x) end
  return lo, hi
end
local function field(list, name)
  local v = {}
  for i, r in ipairs(list) do v[i] = r[name] end
  return v
end

-- Per pair: median CPU, range; per (kind, setting != off): per-round ratios to off.
local rows = {}
for _, k in ipairs(kinds) do
  local off = runs[k.id .. "/off"]
  for _, s in ipairs(settings) do
    local list = runs[k.id .. "/" .. s.id]
    local cpu, user = field(list, "cpu_us"), field(list, "user_us")
    local row = { k = k, s = s, cpu = median(cpu), user = median(user),
      rps = median(field(list, "rps")) }
    row.cpu_lo, row.cpu_hi = range(cpu)
    if s.id ~= "off" then
      local ratios, uratios = {}, {}
      for i, r in ipairs(list) do
        ratios[i] = r.cpu_us / off[i].cpu_us
        uratios[i] = r.user_us / off[i].user_us
      end
      row.ratio, row.ratio_lo, row.ratio_hi = median(ratios), range(ratios)
      row.user_ratio = median(uratios)
    end
    row.instr = cg[k.id .. "/" .. s.id]
    local off_instr = cg[k.id .. "/off"]
    if row.instr and off_instr and s.id ~= "off" then
      row.instr_delta = row.instr - off_instr
      -- The CPU change the extra instructions make: their share of the user-space work times
      -- user time's share of the CPU (the kernel's work, most of it, is the same off and on).
      local off_row = rows[#rows - (s.id == "on" and 0 or 1)]
      row.estimate = 1 + row.instr_delta / off_instr * off_row.user / off_row.cpu
    end
    rows[#rows + 1] = row
  end
end

local function pct(r) return string.format("%+.1f %%", (r - 1) * 100) end
local lines = {}
local function w(fmt, ...)
  lines[#lines + 1] = select("#", ...) > 0 and fmt:format(...) or fmt
end
w("<!-- bench:observe -->")
w("## What observability costs: PING with it off and on")
w("")
w("Written by `bench/observe/obs_cost.lua` (`sh bench/observe/run.sh build`, also run by")
w("`make bench`); do not edit by hand, the next run replaces this section.")
w("")
w("- date: %s; engine commit: %s", m.date, m.commit)
w("- machine: %s, %s CPUs online; %s", m.cpu, m.ncpu, m.kernel)
w("- load average (1, 5, 15 min) at start: %s; at end: %s", m.load, m.load_end)
w("- %d rounds of %d timed requests per run took %.0f s", opt.runs, opt.requests, elapsed)
w("")
w("The PING benchmark's C and Lua clients (`bench/ping/ping_c.c`, `bench/ping/ping.lua`: %d", C)
w("clients, one pool over two redis-servers, every acquire finds an idle conn), each in three")
w("settings:")
w("")
w("- **off**: the engine built with the histogram updates and the explain ring compiled out")
w("  (`PP_NO_OBSERVE`: `ping_c_noobs`, `bench/observe-off/peerpool.so`), no event handler, no")
w("  `leak_threshold`, nothing read")
w("- **on**: the normal build (histograms and explain are always on), a handler on every")
w("  event, and once a second what a scrape reads (Lua: `pool:metrics()` and `pool:explain()`;")
w("  C: `pp_pool_stats`, every histogram's p50 and p99, `pp_pool_explain`)")
w("- **on + leak_threshold**: \"on\" with `leak_threshold = 10000` (the Lua binding notes the")
w("  stack of every acquire; the C engine only checks held leases every second)")
w("")
w("Every round runs all six in a rotating order. CPU is the client's own `getrusage` (user + sys)")
w("over its timed phase, per request; most of it is the kernel's TCP work. The ratio to **off**")
w("is taken per round, then its median and range (min – max) over the rounds.")
w("")
w("| client | setting | CPU µs/request (median) | min – max | user µs/request | req/s | " ..
  "vs off (median) | vs off, min – max | user time vs off |")
w("|---|---|---:|---:|---:|---:|---:|---:|---:|")
for _, r in ipairs(rows) do
  w("| %s | %s | %.2f | %.2f – %.2f | %.2f | %.0f | %s | %s | %s |", r.k.name, r.s.name, r.cpu,
    r.cpu_lo, r.cpu_hi, r.user, r.rps, r.ratio and pct(r.ratio) or "—",
    r.ratio and (pct(r.ratio_lo) .. " – " .. pct(r.ratio_hi)) or "—",
    r.user_ratio and pct(r.user_ratio) or "—")
end
if next(cg) then
  w("")
  w("User-space instructions per request, counted by callgrind (`valgrind --tool=callgrind`: the")
  w("slope between runs of %d and %d requests, so start-up cancels out; exact, whatever the",
    CG1, CG2)
  w("load; the kernel's share of the CPU above is not in it). Under callgrind a run is some 50")
  w("times slower, so a scrape every second would weigh 50 times more per request than it does:")
  w("these runs leave the scrape out (`PP_PING_SCRAPE_MS=0`); `pool:metrics()` itself costs a")
  w("few hundred µs per scrape (docs/metrics.md), a few ns per request at one scrape a second.")
  w("")
  w("| client | setting | instructions/request | vs off |")
  w("|---|---|---:|---:|")
  for _, r in ipairs(rows) do
    if r.instr then
      w("| %s | %s | %.0f | %s |", r.k.name, r.s.name, r.instr,
        r.instr_delta and string.format("%+.0f", r.instr_delta) or "—")
    end
  end
end
w("")
w("Target (issue 13): with metrics and histograms on, client CPU per request rises by at most 3 %.")
w("")
if next(cg) then
  w("The CPU-time ratios above carry the machine's noise (their min – max); the instruction")
  w("counts do not. The estimate is the extra instructions' share of the client's user-space")
  w("work times user time's share of its CPU (the kernel's work is the same off and on); the")
  w("target is judged on it.")
  w("")
end
w("| client | setting | CPU vs off, measured (median of rounds) | CPU vs off, estimated " ..
  "from instructions | met? |")
w("|---|---|---:|---:|---|")
for _, r in ipairs(rows) do
  if r.s.id ~= "off" then
    local judged = r.estimate or r.ratio
    w("| %s | %s | %s | %s | %s |", r.k.name, r.s.name, pct(r.ratio),
      r.estimate and pct(r.estimate) or "—",
      r.s.id == "leak" and "(not in the target)" or judged <= 1.03 and "yes" or "**no**")
  end
end
w("")
if opt.png ~= "" then
  w("![client CPU per request, observability off and on](%s)", opt.png:match("[^/]+$"))
  w("")
end
w("<!-- /bench:observe -->")
local section = table.concat(lines, "\n")
print(section)

if opt.out ~= "" then
  local doc = read_file(opt.out) or "# Benchmarks\n"
  local a = doc:find("<!-- bench:observe -->", 1, true)
  local b = doc:find("<!-- /bench:observe -->", 1, true)
  if a and b then
    doc = doc:sub(1, a - 1) .. section .. doc:sub(b + #"<!-- /bench:observe -->")
  else
    doc = doc:gsub("\n*$", "\n\n") .. section .. "\n"
  end
  local f = assert(io.open(opt.out, "w"))
  f:write(doc)
  f:close()
  log("wrote %s", opt.out)
end

-- The plot: grouped bars (one group per client, one bar per setting), min – max as error bars,
-- the change against "off" written over each bar.
if opt.png ~= "" then
  if first_line("command -v gnuplot") == "" then
    log("gnuplot is not installed (Debian gnuplot-nox): no %s", opt.png)
  else
    local data = {}
    for i, k in ipairs(kinds) do
      local cells = { tostring(i - 1), '"' .. k.name .. '"' }
      for _, s in ipairs(settings) do
        for _, r in ipairs(rows) do
          if r.k == k and r.s == s then
            cells[#cells + 1] = string.format("%.3f %.3f %.3f \"%s\"", r.cpu, r.cpu_lo, r.cpu_hi,
              r.ratio and pct(r.ratio) or "")
          end
        end
      end
      for _, s in ipairs(settings) do
        for _, r in ipairs(rows) do
          if r.k == k and r.s == s then cells[#cells + 1] = string.format("%.0f", r.instr or 0) end
        end
      end
      for _, s in ipairs(settings) do
        for _, r in ipairs(rows) do
          if r.k == k and r.s == s and s.id ~= "off" then
            cells[#cells + 1] = r.instr_delta and string.format('"%+.0f"', r.instr_delta) or '""'
          end
        end
      end
      data[#data + 1] = table.concat(cells, " ")
    end
    -- luacheck: push no max line length
    local script = string.format([[
set terminal pngcairo size 1400,600 font "DejaVu Sans,11" enhanced
set output '%s'
set encoding utf8
set multiplot layout 1,2 title "What observability costs the PING client (bench/ping: 32 clients, 2 redis-servers), off vs on\n{/*0.85 %s, %s CPUs, load average %s at the start; %s}" font ",13"
$data << EOD
%s
EOD
bw = 0.25
set xrange [-0.6:%d.6]
set grid ytics lc rgb "#dddddd"
set key top left box opaque noenhanced
set border 3
set xtics nomirror scale 0
set ytics nomirror
set style fill solid 0.8 border -1
set errorbars lc rgb "#222222"
set offsets 0, 0, graph 0.25, 0
set xlabel "client"
set yrange [0:*]

set title "client CPU per request (getrusage, user + sys)\n{/*0.85 median of %d rounds, bars: min – max; label: vs off, median of per-round ratios}"
set ylabel "µs of CPU per request"
plot $data using ($1-bw):3:4:5:(bw) with boxerrorbars lc rgb "#9c9c9c" title "off (histograms, explain compiled out; no events)", \
     $data using ($1):7:8:9:(bw):xtic(2) with boxerrorbars lc rgb "#4e79a7" title "on (histograms, explain, events, a scrape every second)", \
     $data using ($1+bw):11:12:13:(bw) with boxerrorbars lc rgb "#f28e2b" title "on + leak_threshold = 10000", \
     $data using ($1):9:10 with labels offset 0,0.8 font ",10" notitle, \
     $data using ($1+bw):13:14 with labels offset 0,0.8 font ",10" notitle

set title "user-space instructions per request (callgrind; exact, load-independent)\n{/*0.85 label: vs off; the kernel's TCP work is not in it}"
set ylabel "instructions per request"
set format y "%%.0f"
plot $data using ($1-bw):15:(bw) with boxes lc rgb "#9c9c9c" title "off", \
     $data using ($1):16:(bw):xtic(2) with boxes lc rgb "#4e79a7" title "on", \
     $data using ($1+bw):17:(bw) with boxes lc rgb "#f28e2b" title "on + leak_threshold", \
     $data using ($1):16:18 with labels offset 0,0.8 font ",10" notitle, \
     $data using ($1+bw):17:19 with labels offset 0,0.8 font ",10" notitle
unset multiplot
]], opt.png, m.cpu, m.ncpu, m.load, m.date, table.concat(data, "\n"), #kinds - 1, opt.runs)
    -- luacheck: pop
    local gf = assert(io.popen("gnuplot 2>&1", "w"))
    gf:write(script)
    if gf:close() then log("wrote %s", opt.png) else log("gnuplot failed: no %s", opt.png) end
  end
end
