-- The `make run` demo: a pool in front of local peers, under load, for about 15 seconds.
--
--   peerpool scripts/demo.lua [seconds] [workers]          (make run, make run ARGS=5)
--   peerpool --repl scripts/demo.lua [seconds]             (make run ARGS=--repl)
--
-- Everything runs in this process, on luv's loop: six echo-style peers on 127.0.0.1 (a line
-- in, the same line back) — four healthy, one slow (answers after 20..80 ms), one that flaps
-- (refuses connections and drops the ones it has for 2 s out of every 5) — one pool over
-- them, and workers that each loop on acquire, send a line, read the answer, release. Every
-- second a status line; at the end a summary, then everything is closed and the program
-- exits 0. It needs no terminal.
--
-- With a REPL (--repl, --repl-socket) the workers run until the REPL ends (or for [seconds]
-- if given, after which the pool and the peers stay up to be looked at); the status lines are
-- left to `watch(pool)` when the REPL is on the terminal. Globals for the REPL: `pool`,
-- `peers` (address -> kind), `demo` (demo.status(), demo.summary(), demo.stop()).
-- luacheck: globals pool peers demo
local uv = require "luv"
local peerpool = require "peerpool"
local sleep = peerpool.sleep
local has_host, host = pcall(require, "peerpool.host")
local repl = has_host and host.repl
local quiet = has_host and host.terminal -- the prompt owns the terminal

local seconds = tonumber(arg and arg[1])
if seconds == nil then seconds = repl and math.huge or 15 end
local WORKERS = math.floor(tonumber(arg and arg[2]) or 24)
local fmt = string.format

local function out(...)
  print(...)
  io.stdout:flush()
end

-- ---- the peers --------------------------------------------------------------------------

local function listen_on(port, on_conn)
  local server = uv.new_tcp()
  local ok, err = server:bind("127.0.0.1", port)
  if not ok then
    server:close()
    return nil, err
  end
  ok, err = server:listen(128, function(e)
    if e then return end
    local c = uv.new_tcp()
    if server:accept(c) then on_conn(c) else c:close() end
  end)
  if not ok then
    server:close()
    return nil, err
  end
  return server, server:getsockname().port
end

-- An echo-style peer: every line gets the same line back, after delay() ms (0: at once).
local function new_peer(kind, delay)
  local p = { kind = kind, clients = {}, up = true, served = 0 }
  local function on_conn(c)
    p.clients[c] = true
    local buf = ""
    c:read_start(function(err, data)
      if err or not data then
        p.clients[c] = nil
        if not c:is_closing() then c:close() end
        return
      end
      buf = buf .. data
      while true do
        local nl = buf:find("\n", 1, true)
        if not nl then break end
        local line = buf:sub(1, nl)
        buf = buf:sub(nl + 1)
        p.served = p.served + 1
        local ms = delay and delay() or 0
        if ms <= 0 then
          c:write(line)
        else
          local t = uv.new_timer()
          t:start(ms, 0, function()
            t:close()
            if not c:is_closing() then c:write(line) end
          end)
        end
      end
    end)
  end
  function p.start()
    local server, port = listen_on(p.port or 0, on_conn)
    if not server then return nil, port end
    p.server, p.port, p.up = server, port, true
    p.addr = "127.0.0.1:" .. port
    return true
  end
  -- Down: the port refuses connections, and the conns it had are dropped.
  function p.stop()
    p.up = false
    if p.server and not p.server:is_closing() then p.server:close() end
    p.server = nil
    for c in pairs(p.clients) do
      if not c:is_closing() then c:close() end
    end
    p.clients = {}
  end
  assert(p.start())
  return p
end

local servers = {}
for i = 1, 4 do servers[#servers + 1] = new_peer("healthy " .. i) end
servers[#servers + 1] = new_peer("slow", function() return math.random(20, 80) end)
local flappy = new_peer("flappy")
servers[#servers + 1] = flappy

-- The flappy peer: up 3 s, down 2 s, again and again.
local flap_timer = uv.new_timer()
local flap_phase = 0
flap_timer:start(1000, 1000, function()
  flap_phase = flap_phase + 1
  if flappy.up and flap_phase >= 3 then
    flappy.stop()
    flap_phase = 0
  elseif not flappy.up and flap_phase >= 2 then
    flap_phase = 0
    if not flappy.start() then flap_phase = 1 end -- the port is not free yet: next second
  end
end)

peers = {} -- a global, for the REPL
for _, s in ipairs(servers) do peers[s.addr] = s.kind end

-- ---- the pool ---------------------------------------------------------------------------

-- The policy: least-loaded selection (the slow peer holds its conns longer, so it gets less
-- work) and exponential backoff for the flappy peer, from the library in scripts/policies/.
-- HOOK: this is the place to try another policy, e.g. peerpool.policies.p2c_latency, or to
-- load one on the live pool from the REPL: pool:load_policy("scripts/policies/round_robin.lua").
local function demo_policy()
  local ok1, select = pcall(require, "peerpool.policies.least_loaded")
  local ok2, backoff = pcall(require, "peerpool.policies.backoff_exponential")
  if not (ok1 and ok2) then return nil end
  backoff = backoff.new { base_ms = 100, cap_ms = 2000 }
  return {
    name = "demo",
    description = "least_loaded selection, exponential backoff (100 ms .. 2 s)",
    select_peer = select.select_peer,
    select_conn = select.select_conn,
    backoff = backoff.backoff,
  }
end

local options = {
  max_per_peer = 4,
  max_total = 24,
  connect_timeout = 500,
  retries = 1,
  acquire_timeout = 1000,
  io_timeout = 1000,
  idle_timeout = 10000,
}
local policy = demo_policy()
local ok_pool, made = false, nil
if policy then
  local with = {}
  for k, v in pairs(options) do with[k] = v end
  with.policy = policy
  with.target_peers = 4 -- keep 4 peers ready: the maintenance tick dials when fewer are
  ok_pool, made = pcall(peerpool.new, with)
  if not ok_pool then
    out("demo: policy or target_peers refused (" .. tostring(made) .. "); a plain pool")
  end
end
if not ok_pool then made = peerpool.new(options) end
pool = made -- a global, for the REPL
for _, s in ipairs(servers) do assert(pool:add_peer(s.addr)) end

-- ---- the workers ------------------------------------------------------------------------

local running = true
local total, errors, by_peer = 0, {}, {}
local second = { n = 0, lat = {} }  -- this second's requests and latencies (ms)
local all_lat, all_n = {}, 0         -- a reservoir of every latency, for the summary
local RESERVOIR = 100000

local function count_error(code)
  code = code or "unknown"
  errors[code] = (errors[code] or 0) + 1
  second.errors = (second.errors or 0) + 1
end

local function record(ms, addr)
  total = total + 1
  by_peer[addr] = (by_peer[addr] or 0) + 1
  second.n = second.n + 1
  local lat = second.lat
  if #lat < 20000 then lat[#lat + 1] = ms end
  all_n = all_n + 1
  if #all_lat < RESERVOIR then
    all_lat[#all_lat + 1] = ms
  else
    local j = math.random(all_n)
    if j <= RESERVOIR then all_lat[j] = ms end
  end
end

local workers_left = 0
local function worker(id)
  workers_left = workers_left + 1
  local n = 0
  while running do
    n = n + 1
    local started = uv.hrtime()
    local conn, err = pool:acquire(nil, { timeout = 1000 })
    if not conn then
      count_error(err)
      sleep(20) -- every peer busy or down: do not spin
    else
      local msg = fmt("req %d %d", id, n)
      local sent, serr = conn:send(msg .. "\n")
      local line, rerr = nil, serr
      if sent then line, rerr = conn:receive("*l") end
      if line == msg then
        record((uv.hrtime() - started) / 1e6, conn.peer)
        conn:release()
      else
        count_error(line and "bad_reply" or rerr)
        conn:close() -- the conn's state is unknown: never lend it again
      end
    end
  end
  workers_left = workers_left - 1
end

-- ---- reporting --------------------------------------------------------------------------

local function percentile(sorted, p)
  if #sorted == 0 then return 0 end
  local i = math.max(1, math.ceil(p / 100 * #sorted))
  return sorted[i]
end

local function states(by_state)
  local names = {}
  for k, v in pairs(by_state) do
    if v > 0 then names[#names + 1] = k end
  end
  table.sort(names)
  for i, k in ipairs(names) do names[i] = k .. "=" .. by_state[k] end
  return table.concat(names, " ")
end

local function error_text()
  local names = {}
  for k in pairs(errors) do names[#names + 1] = k end
  table.sort(names)
  for i, k in ipairs(names) do names[i] = k .. "=" .. errors[k] end
  return #names > 0 and table.concat(names, " ") or "none"
end

local started_at = uv.now()
local timeline = {} -- one row per second of the run, for the plot (plot.lua)
local function status(keep)
  local lat = second.lat
  table.sort(lat)
  local s = pool:stats()
  local line = fmt("%3ds %6d req/s  p50 %5.2f ms  p99 %6.2f ms | " ..
    "conns %2d (%d idle, %d active) | peers %s | waiters %d | errors %s",
    (uv.now() - started_at) // 1000, second.n, percentile(lat, 50), percentile(lat, 99), s.conns,
    s.idle, s.active, states(s.peers_by_state), s.waiters, error_text())
  if keep then
    timeline[#timeline + 1] = { t = (uv.now() - started_at) / 1000, rps = second.n,
      p50 = percentile(lat, 50), p99 = percentile(lat, 99), idle = s.idle, active = s.active,
      connecting = s.connecting, other = math.max(0, s.conns - s.idle - s.active - s.connecting),
      ready = s.peers_by_state.ready or 0, errors = second.errors or 0, flappy_up = flappy.up }
  end
  second = { n = 0, lat = {} }
  return line
end

local function summary()
  local elapsed = (uv.now() - started_at) / 1000
  table.sort(all_lat)
  local s = pool:stats()
  local views = {}
  for _, v in ipairs(pool:peers()) do views[v.addr] = v end
  local rows = { { "peer", "kind", "state", "requests", "conns", "failures", "last error" } }
  for _, srv in ipairs(servers) do
    local v = views[srv.addr] or {}
    rows[#rows + 1] = { srv.addr, srv.kind, v.state or "-", tostring(by_peer[srv.addr] or 0),
      tostring(v.conns or 0), tostring(v.failures or 0), v.last_error or "-" }
  end
  local widths = {}
  for _, r in ipairs(rows) do
    for i, cell in ipairs(r) do widths[i] = math.max(widths[i] or 0, #cell) end
  end
  local lines = { "", "summary" }
  for ri, r in ipairs(rows) do
    local cells = {}
    for i, cell in ipairs(r) do
      local align = (i >= 4 and i <= 6) and "" or "-" -- counts to the right
      cells[i] = fmt("%" .. align .. widths[i] .. "s", cell)
    end
    lines[#lines + 1] = ("  " .. table.concat(cells, "  ")):gsub("%s+$", "")
    if ri == 1 then
      local rule = {}
      for i = 1, #r do rule[i] = string.rep("-", widths[i]) end
      lines[#lines + 1] = "  " .. table.concat(rule, "  ")
    end
  end
  lines[#lines + 1] = ""
  lines[#lines + 1] = fmt("  requests   %d in %.1f s (%.0f/s), %d workers, policy %s",
    total, elapsed, total / math.max(elapsed, 0.001), WORKERS,
    ok_pool and policy.name or "built-in")
  lines[#lines + 1] = fmt("  latency    p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, max %.2f ms",
    percentile(all_lat, 50), percentile(all_lat, 90), percentile(all_lat, 99),
    all_lat[#all_lat] or 0)
  lines[#lines + 1] = fmt("  acquires   %d (%d immediate, %d after dialling, %d after waiting), " ..
    "%d timed out",
    s.acquires, s.acquired_immediate, s.acquired_dialed, s.acquired_waited, s.timed_out)
  lines[#lines + 1] = fmt("  connects   %d ok, %d failed; conns closed as broken %d",
    s.connects_ok, s.connects_failed, s.released_broken)
  lines[#lines + 1] = "  errors     " .. error_text()
  return table.concat(lines, "\n")
end

-- ---- the picture of the run ------------------------------------------------------------

-- A PNG of the run (requests/s, p50/p99 latency, conns by state, per second) drawn by gnuplot
-- (Debian gnuplot-nox), written to $PP_DEMO_PNG (make run: BUILD/demo.png; "none": no plot)
-- or the temp dir.
local function plot_run()
  local path = os.getenv("PP_DEMO_PNG")
  if #timeline < 2 or path == "none" then return end
  if path == nil or path == "" then
    path = (os.getenv("TMPDIR") or "/tmp") .. "/peerpool-demo-" .. uv.os_getpid() .. ".png"
  end
  local rows, rmax, lmax = {}, 1, 0.01
  for _, r in ipairs(timeline) do
    rmax = math.max(rmax, r.rps, r.errors)
    lmax = math.max(lmax, r.p99)
    rows[#rows + 1] = fmt("%.1f %d %.3f %.3f %d %d %d %d %d %d %d", r.t, r.rps,
      math.max(r.p50, 0.001), math.max(r.p99, 0.001), r.idle, r.active, r.connecting, r.other,
      r.ready, r.errors, r.flappy_up and 1 or 0)
  end
  -- luacheck: push no max line length
  local script = fmt([[
set terminal pngcairo size 1100,1000 font "DejaVu Sans,11" enhanced
set output '%s'
set encoding utf8
set multiplot layout 3,1 title "peerpool demo: %d workers, 6 peers (4 healthy, 1 slow, 1 flappy), one pool of at most %d conns\n{/*0.85 each point is one second; shaded: the flappy peer is down}" font ",13"
$run << EOD
%s
EOD
set xrange [0:%g]
set grid lc rgb "#dddddd"
set border 3
set xtics nomirror
set ytics nomirror
set key outside right top
set lmargin 12
set rmargin 30
set style fill transparent solid 0.12 noborder
down(up, top) = up > 0.5 ? NaN : top
set boxwidth 1 absolute

set title "Throughput"
set ylabel "requests/s"
set yrange [0:%g]
set xlabel ""
plot $run using 1:(down($11, %g)) with boxes lc rgb "#e15759" fs transparent solid 0.10 noborder title "flappy peer down", \
     $run using 1:2 with linespoints pt 7 ps 0.5 lw 2 lc rgb "#4e79a7" title "requests/s", \
     $run using 1:10 with linespoints pt 7 ps 0.5 lw 1.5 lc rgb "#e15759" title "errors/s"

set title "Latency (acquire to reply, per request)"
set ylabel "ms (log scale)"
set logscale y
set yrange [*:%g]
plot $run using 1:(down($11, %g)) with boxes lc rgb "#e15759" fs transparent solid 0.10 noborder title "flappy peer down", \
     $run using 1:3 with linespoints pt 7 ps 0.5 lw 2 lc rgb "#59a14f" title "p50", \
     $run using 1:4 with linespoints pt 7 ps 0.5 lw 2 lc rgb "#f28e2b" title "p99"
unset logscale y

set title "Connections by state (stacked), and peers ready"
set ylabel "connections"
set y2tics nomirror
set yrange [0:*]
set y2range [0:7]
set xlabel "time since start (s)"
set style fill solid 0.75 noborder
plot $run using 1:($5+$6+$7+$8) with filledcurves x1 lc rgb "#bab0ac" title "other (pinging)", \
     $run using 1:($5+$6+$7) with filledcurves x1 lc rgb "#f28e2b" title "connecting", \
     $run using 1:($5+$6) with filledcurves x1 lc rgb "#4e79a7" title "active (leased)", \
     $run using 1:5 with filledcurves x1 lc rgb "#a0cbe8" title "idle", \
     $run using 1:9 axes x1y2 with steps lw 2 lc rgb "#222222" title "peers ready (right axis)"
unset multiplot
]], path, WORKERS, options.max_total, table.concat(rows, "\n"), timeline[#timeline].t + 0.5,
    rmax * 1.1, rmax * 1.1, lmax * 1.5, lmax * 1.5)
  -- luacheck: pop
  local ok_pipe, gp = pcall(io.popen, "gnuplot 2>&1", "w")
  if not ok_pipe or not gp then
    out("demo: no plot (gnuplot could not be started: install Debian's gnuplot-nox)")
    return
  end
  gp:write(script)
  local ok = gp:close()
  if ok then
    out("demo: a plot of this run (requests/s, p50/p99 latency, conns by state): " .. path)
  else
    out("demo: no plot (gnuplot failed or is missing: install Debian's gnuplot-nox)")
  end
end

-- ---- run --------------------------------------------------------------------------------

local tick = uv.new_timer()
local finished = false
local function finish()
  if finished then return end
  finished = true
  running = false
  tick:stop()
  -- Let every worker finish its request, then report and take everything down.
  local waiter = uv.new_timer()
  waiter:start(10, 10, function()
    if workers_left > 0 then return end
    waiter:close()
    out(summary())
    plot_run()
    if repl then
      out("(the workers stopped; the pool and the peers stay up for the REPL)")
      return
    end
    pool:close()
    for _, srv in ipairs(servers) do srv.stop() end
    flap_timer:close()
    tick:close()
  end)
end

demo = { status = status, summary = summary, stop = finish } -- a global, for the REPL

out(fmt("demo: %d peers on 127.0.0.1 (4 healthy, 1 slow, 1 flappy), %d workers, %s", #servers,
  WORKERS, seconds == math.huge and "until the REPL ends" or fmt("%g s", seconds)))
if quiet then
  out("demo: globals pool, peers, demo; watch(pool) shows a status line per second, " ..
    "demo.stop() stops the workers")
end
tick:start(1000, 1000, function()
  local line = status(true)
  if not quiet then out(line) end
  if (uv.now() - started_at) >= seconds * 1000 then finish() end
end)
-- Each worker is a coroutine on the loop (peerpool.run would drive the loop until the first one
-- ended, since the loop is not running yet while this chunk runs).
for id = 1, WORKERS do
  local co = coroutine.create(worker)
  local ok, err = coroutine.resume(co, id)
  if not ok then error(debug.traceback(co, err)) end
end
