-- The API fuzzer (issue 8): a seeded driver of random operations over the whole Lua API of
-- `peerpool`, against hostile loopback servers in this process, with an oracle that checks
-- during and after every round:
--   * every acquire ends exactly once (callback or coroutine), within its deadline, with a
--     well-formed answer; a callback never runs inside the call that registered it;
--   * the sockets the pool holds (the kernel's view: /proc/self/fd + /proc/net/tcp) never
--     exceed max_per_peer per peer nor max_total in all, and never outnumber the engine's
--     own count of a peer's conns;
--   * after pool:close() (or the pool's collection) and a few loop turns, no socket of the
--     pool is left and no other fd was leaked; at the end the loop settles;
--   * bad arguments raise clean errors that name the argument; valid calls never raise;
--     errors raised inside callbacks never escape (they are reported, and only the ones the
--     driver raised on purpose are);
--   * what echo servers send back arrives once, on a conn of the server it was sent to;
--   * host-name peers (issue 11) resolve through the fuzzer's own DNS server on 127.0.0.1
--     (every pool it makes has dns_servers: no query leaves loopback), and their sockets,
--     DNS ones included, are gone after close;
--   * a graceful close (close{ drain_ms }: mid-flight, from a callback, at a round's end, twice)
--     ends exactly once, with nil or "timeout" and why.
--
--   FUZZ_SEED=n FUZZ_SECONDS=s lua5.4 spec/fuzz/api_fuzz.lua     (from the source root, with
--   LUA_PATH/LUA_CPATH pointing at ./?.lua and the build's lua/?.so; spec/fuzz/run.sh does it)
--
-- Other knobs: FUZZ_TRACE=path (every op, line-buffered: survives a crash), FUZZ_VERBOSE=1
-- (ops on stderr), FUZZ_SKIP=name,name (turn off ops or checks by name, to look past a known
-- failure), FUZZ_SLOW=k (scale every time allowance; default 3 under ASan, x3 with
-- PEERPOOL_GC_STRESS=1), FUZZ_STALL_MS=ms (once, after 1 s, the sampler finds the process
-- stalled that long, as a descheduled process or one slow op would leave it: no oracle may
-- take that for the pool's fault; spec/fuzz/repro/one_stall_is_not_a_spinning_timer_phase.lua).
-- Exit codes: 0 ok, 3 an invariant failed (the report names the seed
-- and prints the last ops), anything else a crash (run.sh prints the trace's tail).
local uv = require "luv"
local peerpool = require "peerpool"
local hostile = require "spec.support.hostile_servers"
local procfs = require "spec.fuzz.procfs"
local dns_server = require "spec.support.dns_server"

local fmt, pack, unpack = string.format, table.pack, table.unpack
local getenv = os.getenv

local SEED = math.tointeger(tonumber(getenv "FUZZ_SEED" or (arg and arg[1]) or "1")) or 1
local SECONDS = tonumber(getenv "FUZZ_SECONDS" or (arg and arg[2]) or "5") or 5
local GC_STRESS = getenv "PEERPOOL_GC_STRESS" == "1"
local SANITIZED = (getenv "LD_PRELOAD" or ""):find("asan", 1, true) ~= nil
local SLOW = tonumber(getenv "FUZZ_SLOW" or "") or ((SANITIZED and 3 or 1) * (GC_STRESS and 3 or 1))
local VERBOSE = getenv "FUZZ_VERBOSE" == "1"
local STALL_MS = tonumber(getenv "FUZZ_STALL_MS" or "")
local SKIP = {}
for w in (getenv "FUZZ_SKIP" or ""):gmatch("[^,%s]+") do SKIP[w] = true end
local EXIT_ORACLE = 3

local F = { ops = 0, rounds = 0, tokens = {}, port_tokens = {}, token_n = 0, reports = {},
  intended = 0, hook_reports = 0, acq_n = 0, old = {}, kept_views = {}, kept_hook_conns = {},
  servers = {}, by_port = {}, server_ports = {}, ignore_ports = {}, op_counts = {} }
local R -- the current round
local may_close -- (defined with the ops)

-- ---- random numbers: xorshift64*, ours alone (hooks and policies may use math.random) -------

local S = SEED * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019
if S == 0 then S = 1 end
local function rand64()
  local x = S
  x = x ~ (x >> 12)
  x = x ~ (x << 25)
  x = x ~ (x >> 27)
  S = x
  return x * 0x2545F4914F6CDD1D
end
for _ = 1, 8 do rand64() end
local function rnd(n) return ((rand64() >> 11) % n) + 1 end -- 1..n
local function chance(p) return (rand64() >> 11) < p * 9007199254740992.0 end
local function pick(t) return t[rnd(t.n or #t)] end
local function L(...) return pack(...) end -- a list that may hold nils, for pick
-- weighted choice over { {weight, value}, ... }
local function wpick(t) -- entries { weight, value [, name] }
  local sum = 0
  for _, e in ipairs(t) do sum = sum + e[1] end
  local x = rnd(sum)
  for _, e in ipairs(t) do
    x = x - e[1]
    if x <= 0 then return e[2] end
  end
  return t[#t][2]
end

-- ---- trace, failure --------------------------------------------------------------------------

local RING = 400
local ring, ring_n = {}, 0
local trace_file
if getenv "FUZZ_TRACE" then
  trace_file = assert(io.open(getenv "FUZZ_TRACE", "w"))
  trace_file:setvbuf("line")
end
local T0 = uv.hrtime()
local function elapsed() return (uv.hrtime() - T0) // 1000000 end

local function trace(s)
  local line = fmt("%6d r%-3d %s", elapsed(), R and R.n or 0, s)
  ring_n = ring_n + 1
  ring[ring_n % RING] = line
  if trace_file then trace_file:write(line, "\n") end
  if VERBOSE then io.stderr:write(line, "\n") end
end

local function show(v, depth)
  local t = type(v)
  if t == "string" then
    local s = #v > 48 and (v:sub(1, 48)) or v
    s = fmt("%q", s):gsub("\\\n", "\\n"):gsub("[%c\128-\255]", function(c)
      return fmt("\\%d", c:byte())
    end)
    return #v > 48 and (s .. fmt("..(%d bytes)", #v)) or s
  elseif t == "table" then
    if (depth or 0) > 1 then return "{..}" end
    local parts, n = {}, 0
    for k, x in pairs(v) do
      n = n + 1
      if n > 6 then
        parts[#parts + 1] = "..."
        break
      end
      parts[#parts + 1] = tostring(k) .. "=" .. show(x, (depth or 0) + 1)
    end
    return "{" .. table.concat(parts, ",") .. "}"
  elseif t == "userdata" then
    local ok, s = pcall(tostring, v)
    return ok and (s:gsub(": 0x%x+$", ""):gsub(": %x+$", "")) or "<userdata>"
  elseif t == "number" then
    return math.type(v) == "float" and fmt("%.17g", v) or tostring(v)
  end
  return tostring(v)
end

local function show_results(r, from)
  local parts = {}
  for i = from or 2, r.n do parts[#parts + 1] = show(r[i]) end
  return table.concat(parts, ", ")
end

local failing = false
local function fail(msg)
  if failing then return end
  failing = true
  local head = fmt("FUZZ FAILURE (seed %d, round %d, op %d, %d ms): %s", SEED, R and R.n or 0,
    F.ops, elapsed(), msg)
  io.stderr:write("\n", head, "\nlast ops (oldest first):\n")
  for i = math.max(1, ring_n - 80), ring_n do io.stderr:write("  ", ring[i % RING], "\n") end
  io.stderr:write(head, "\n")
  io.stderr:write(fmt("replay: FUZZ_SEED=%d SECONDS=%s make fuzz   (or: sh spec/fuzz/run.sh " ..
    "BUILD_DIR %d %s)\n", SEED, tostring(SECONDS), SEED, tostring(SECONDS)))
  io.stderr:flush()
  if trace_file then
    trace_file:write("FAILURE: ", msg, "\n")
    trace_file:flush()
  end
  -- Inside a policy hook os.exit is refused (it raises): then the next op or the sampler ends
  -- the run (see exit_if_failed).
  os.exit(EXIT_ORACLE, false)
end

local function exit_if_failed()
  if failing then os.exit(EXIT_ORACLE, false) end
end

local function check(cond, msg, ...)
  if not cond then fail(fmt(msg, ...)) end
end

-- ---- loop helpers ----------------------------------------------------------------------------

-- Yield the running coroutine for ms; it must be resumed by our timer and nobody else.
-- The driver's own luv handles, so that an abrupt end can close them first (TOOLCHAIN.md,
-- luv trap 4: a handle closed just before lua_close crashes luv itself).
local handles = setmetatable({}, { __mode = "k" })

-- With FUZZ_SKIP=loop_clock (finding F13) sleepers are resumed from a check handle, after the
-- poll phase, instead of from their timers: in libuv 1.44's timer phase a callback that makes
-- the engine advance the loop's clock makes every short timer due again, and a round of actors
-- sleeping 0..6 ms never leaves that phase.
local sleepers, wake_check, wake_timer = {}, nil, nil
local function resume_sleepers()
  local now = uv.hrtime() / 1e6
  local due, soonest = {}, nil
  for i = #sleepers, 1, -1 do
    local e = sleepers[i]
    if e.at <= now then
      table.remove(sleepers, i)
      due[#due + 1] = e
    elseif not soonest or e.at < soonest then
      soonest = e.at
    end
  end
  table.sort(due, function(x, y) return x.seq < y.seq end)
  for _, e in ipairs(due) do
    if coroutine.status(e.co) == "suspended" then
      local ok, err = coroutine.resume(e.co, e.token)
      if not ok then fail("a coroutine resumed from sleep raised: " .. tostring(err)) end
    end
  end
  if #sleepers == 0 then
    wake_check:stop()
    wake_timer:stop()
  elseif soonest then
    wake_timer:start(math.max(0, math.ceil(soonest - uv.hrtime() / 1e6)), 0, function() end)
  end
end
local sleep_seq = 0
local function check_sleep(ms)
  local co = assert(coroutine.running())
  if not wake_check then
    wake_check, wake_timer = uv.new_check(), uv.new_timer()
    handles[wake_check], handles[wake_timer] = true, true
  end
  sleep_seq = sleep_seq + 1
  local e = { co = co, at = uv.hrtime() / 1e6 + ms, token = {}, seq = sleep_seq }
  sleepers[#sleepers + 1] = e
  wake_check:start(resume_sleepers)
  wake_timer:start(ms, 0, function() end) -- wakes the poll; the check resumes
  local got = coroutine.yield()
  if got ~= e.token then
    fail("a sleeping coroutine was resumed by someone else, with " .. show(got))
  end
end

-- Yield the running coroutine for ms (a luv timer); wake(co, token) then resumes it. Fails when
-- it is resumed with anything but its token (`who`: what sleeps, for the message).
local function timer_sleep(ms, wake, who)
  local co = assert(coroutine.running())
  local token = {}
  local t = uv.new_timer()
  handles[t] = true
  t:start(ms, 0, function()
    handles[t] = nil
    t:close()
    wake(co, token)
  end)
  local got = coroutine.yield()
  if got ~= token then
    fail("a sleeping " .. who .. " was resumed by someone else, with " .. show(got))
  end
end

local function wake_sleeper(co, token)
  if coroutine.status(co) ~= "suspended" then return end -- closed while it slept
  local ok, err = coroutine.resume(co, token)
  if not ok then fail("a coroutine resumed from sleep raised: " .. tostring(err)) end
end

local function sleep(ms)
  if SKIP.loop_clock then return check_sleep(ms) end
  timer_sleep(ms, wake_sleeper, "coroutine")
end

-- sleep() for hook coroutines. A luv callback that resumes a hook with coroutine.resume is what
-- docs/policies.md suggests, and what finding F11 is about (the binding never sees the hook
-- end); with FUZZ_SKIP=hook_foreign_resume the hook is resumed through peerpool._resume.
local function hook_sleep(ms)
  if not SKIP.hook_foreign_resume or not peerpool._resume then return sleep(ms) end
  timer_sleep(ms, peerpool._resume, "hook")
end

-- Let the loop go round n whole iterations (an idle handle resumes us once per iteration).
local function ticks(n)
  local co = assert(coroutine.running())
  for _ = 1, n or 5 do
    local token = {}
    local idle = uv.new_idle()
    handles[idle] = true
    idle:start(function()
      handles[idle] = nil
      idle:stop()
      idle:close()
      local ok, err = coroutine.resume(co, token)
      if not ok then fail("a coroutine resumed from ticks raised: " .. tostring(err)) end
    end)
    local got = coroutine.yield()
    if got ~= token then fail("a coroutine waiting for ticks was resumed with " .. show(got)) end
  end
end

-- The loop's own lateness: a 10 ms heartbeat. A deadline missed by more than the loop's
-- longest stall around it (plus a margin) is the pool's fault, not a busy machine's.
-- Times are real time (ms, from hrtime): the loop's cached time lags after a long callback,
-- and a deadline computed from it would blame the pool for the driver's own stalls.
local function clock() return uv.hrtime() / 1e6 end
local beats, beat_n = {}, 0
local last_beat_cpu
local function heartbeat()
  local now, cpu = clock(), os.clock() * 1000
  local prev = beat_n > 0 and beats[beat_n % 4096]
  beat_n = beat_n + 1
  beats[beat_n % 4096] = now
  -- A loop blocked this long is the pool's doing (hooks run under instruction budgets); the
  -- trace shows what ran last. (The fuzzer's own rounds never block the loop for long.) Unless
  -- the process hardly ran meanwhile: a machine loaded by others starves it, and that is no
  -- bug of ours (its CPU time then lags far behind the wall clock).
  local prev_cpu = last_beat_cpu
  last_beat_cpu = cpu
  if prev and now - prev > 1000 * SLOW and cpu - prev_cpu > 0.5 * (now - prev) and
      not SKIP.stall_check then
    fail(string.format("the loop was blocked for %.0f ms (%.0f ms of CPU)", now - prev,
      cpu - prev_cpu))
  end
end
-- The time the loop lost between `from` and `to`: every heartbeat gap's excess over its
-- 10 ms, summed (a starved process loses it in many small gaps, a long callback in one).
local function max_stall(from, to)
  local lost, prev = 0, nil
  for i = math.max(1, beat_n - 4095), beat_n do
    local t = beats[i % 4096]
    if prev and t >= from - 50 and prev <= to then lost = lost + math.max(0, t - prev - 12) end
    prev = t
  end
  -- and the gap since the last beat, if the loop is stalled right now
  if prev and to - prev > 12 then lost = lost + (to - prev - 12) end
  return lost
end
-- How late something that should have happened at `due` is, beyond what the loop's stalls
-- explain.
local function lateness(due)
  local now = clock()
  local late = now - due
  if late <= 0 then return 0 end
  return late - max_stall(due, now)
end
local MARGIN = 300 * SLOW

local function wait_until(pred, ms)
  local deadline = uv.now() + ms
  while not pred() do
    if uv.now() > deadline then return false end
    sleep(3)
  end
  return true
end

-- With FUZZ_SKIP=unanchored the driver keeps every coroutine it starts referenced (finding
-- F8: the binding resumes coroutines it no longer anchors).
local anchored = {}
local function spawn(name, fn, ...)
  local co
  co = peerpool.spawn(function(...)
    local ok, err = xpcall(fn, debug.traceback, ...)
    if co then anchored[co] = nil end
    if not ok then fail(name .. " raised: " .. tostring(err)) end
  end, ...)
  if SKIP.unanchored and coroutine.status(co) ~= "dead" then anchored[co] = true end
  return co
end

-- ---- expected errors -------------------------------------------------------------------------

local RELEASED = "attempt to use a released conn"
local CLOSED_POOL = "attempt to use a closed pool"
local IN_HOOK = "a policy hook cannot change its pool"
local HOOK_CONN_GONE = "attempt to use a conn the pool took back from its hook"
local NOT_CO = "must run inside a coroutine"
local INTENDED = "FUZZ_INTENDED"

-- Run f() protected. rule: nil (must not raise), { raise = {...} } (must raise one of these
-- substrings), { may = {...} } (may raise one of these). Returns ok, results or message.
local function call(desc, rule, f)
  F.ops = F.ops + 1
  local id = F.ops
  trace(fmt("[%d] %s", id, desc))
  local r = pack(pcall(f))
  if r[1] then
    if rule and rule.raise then
      fail(fmt("%s: expected an error (%s), got %s", desc, table.concat(rule.raise, " | "),
        show_results(r)))
    end
    trace(fmt("  [%d] -> %s", id, show_results(r)))
    return true, r
  end
  local msg = r[2]
  if rule and rule.any then
    trace(fmt("  [%d] -> raised %s", id, show(msg)))
    return false, msg
  end
  if type(msg) ~= "string" then fail(desc .. ": raised a non-string error " .. show(msg)) end
  local pats = rule and (rule.raise or rule.may)
  if not pats then fail(desc .. ": raised " .. msg) end
  for _, p in ipairs(pats) do
    if msg:find(p, 1, true) then
      trace(fmt("  [%d] -> raised %s", id, show((msg:gsub("^[^:]*:%d+: ", "")))))
      return false, msg
    end
  end
  fail(fmt("%s: raised an unexpected error: %s (expected %s)", desc, msg,
    table.concat(pats, " | ")))
end

local KNOWN_CODES = {}
for code in pairs(peerpool.errors) do KNOWN_CODES[code] = true end
local function valid_code(code)
  return type(code) == "string" and (KNOWN_CODES[code] or code:match("^E[A-Z0-9_]+$") ~= nil)
end

local STATES = { known = true, connecting = true, connected = true, ready = true,
  disconnected = true, failed = true, burned = true, ejected = true }

-- ---- echo tokens -----------------------------------------------------------------------------

local function new_token(port, pad)
  F.token_n = F.token_n + 1
  local tok = (pad or "") .. fmt("T%dn%dp%d", SEED, F.token_n, port)
  F.tokens[tok] = { port = port, got = false }
  local list = F.port_tokens[port]
  if not list then
    list = {}
    F.port_tokens[port] = list
  end
  list[#list + 1] = tok
  return tok
end

-- A line received from an echo-like server on a conn of `port`.
local function check_echo_line(port, line, srv)
  if SKIP.echo_check then return end
  local t = F.tokens[line]
  if t then
    check(t.port == port, "echo: token %s (sent to port %d) came back on a conn of port %d",
      line, t.port, port)
    check(not t.got, "echo: token %s came back twice", line)
    t.got = true
    return
  end
  if srv and srv.kind == "greeter" and line:match("^HELLO %d+$") then return end
  -- A fragment: the tail of a token whose head went to an earlier holder (allowed: a late
  -- reply); it must be the tail of a token sent to this port.
  for _, tok in ipairs(F.port_tokens[port] or {}) do
    if #line < #tok and tok:sub(-#line) == line then return end
  end
  if srv and srv.kind == "greeter" and ("HELLO 0000000000"):len() >= #line then return end
  fail(fmt("echo: a conn of port %d received %s, which nobody sent to that port", port, show(line)))
end

-- ---- round state -----------------------------------------------------------------------------

local function srv_of(addr)
  local port = type(addr) == "string" and tonumber(addr:match(":(%d+)$"))
  return port and F.by_port[port], port
end

local function new_acq(style, peer, opts)
  F.acq_n = F.acq_n + 1
  local deadline
  local t = opts and opts.timeout
  if t == nil then t = R.acquire_timeout end
  local loop_deadline
  if type(t) == "number" and t > 0 then deadline, loop_deadline = clock() + t, uv.now() + t end
  local acq = { id = F.acq_n, style = style, peer = peer, opts = opts, ends = 0,
    started = clock(), deadline = deadline, loop_deadline = loop_deadline, pending = true,
    round = R }
  R.acquires[acq.id] = acq
  return acq
end

local function acq_void(acq) -- the call raised: it never started
  acq.pending = false
  acq.void = true
end

local function canonical(addr)
  local ok, c = pcall(peerpool._canonical, addr)
  return ok and c or nil
end

local function is_notice(v)
  return type(v) == "userdata" and tostring(v):match("^peerpool%.notice ") ~= nil
end
local function is_conn(v)
  return type(v) == "userdata" and tostring(v):match("^peerpool%.conn ") ~= nil
end

-- An acquire ended with (conn) or (nil, code, detail); how = "co", "cb" or "immediate".
local function acq_end(acq, conn, code, detail, how)
  acq.ends = acq.ends + 1
  check(acq.ends == 1, "acquire #%d ended %d times (last %s %s)", acq.id, acq.ends, how,
    show(code))
  acq.pending = false
  acq.result = conn and "conn" or code
  local rr = acq.round
  local late = acq.deadline and lateness(acq.deadline)
  if late and not SKIP.deadline then
    check(late <= MARGIN, "acquire #%d (timeout %s) ended %.0f ms after its deadline (the loop's " ..
      "time the loop lost meanwhile: %.0f ms)", acq.id, show(acq.opts and acq.opts.timeout or
      rr.acquire_timeout), clock() - acq.deadline, max_stall(acq.deadline, clock()))
  end
  if conn ~= nil then
    check(is_conn(conn), "acquire #%d answered %s instead of a conn", acq.id, show(conn))
    check(code == nil, "acquire #%d answered a conn and %s", acq.id, show(code))
    local peer = conn.peer
    check(type(peer) == "string" and #peer > 0, "acquire #%d: conn.peer is %s", acq.id, show(peer))
    local want = type(acq.peer) == "table" and acq.peer.addr or acq.peer
    if type(want) == "string" then
      check(peer == canonical(want), "acquire #%d for %s got a conn of %s", acq.id, want, peer)
    end
    return
  end
  check(valid_code(code), "acquire #%d answered nil with code %s", acq.id, show(code))
  if code == "busy" then
    check(acq.opts and acq.opts.busy == "fail", "acquire #%d answered busy without busy='fail'",
      acq.id)
    check(how ~= "cb", "acquire #%d: a callback got busy (busy is an immediate answer)", acq.id)
    check(is_notice(detail), "acquire #%d: busy came with %s instead of a notice", acq.id,
      show(detail))
  else
    check(detail == nil or type(detail) == "string", "acquire #%d: %s came with detail %s",
      acq.id, code, show(detail))
  end
  if code == "closed" and not SKIP.closed_check then
    check(rr.closed_at ~= nil or rr ~= R, "acquire #%d answered closed on an open pool", acq.id)
  end
  if code == "timeout" and not SKIP.deadline and acq.deadline then
    check(uv.now() >= acq.loop_deadline - 1, "acquire #%d timed out %d ms before its deadline",
      acq.id, acq.loop_deadline - uv.now())
  end
end

-- ---- the policy generator --------------------------------------------------------------------

local function garbage(n)
  return pick(L(nil, false, true, 0, -1, n + 1, 1.5, 0 / 0, 1 / 0, -1 / 0, math.maxinteger,
    math.mininteger, "1", {}, print, coroutine.create(print), R.pool, F.kept_views[1]))
end

local function backoff_garbage()
  return pick(L(nil, true, -1, 0 / 0, 1 / 0, 1e300, "10", {}, 365 * 24 * 3600 * 1000 + 1, -0.0,
    math.maxinteger, 5.5, 0, print))
end

-- Inside a synchronous hook, changing the pool must raise the in-hook error.
local function mutate_in_hook(what, async)
  local pool = R and R.pool
  if not pool or R.closed_at then return end
  local c = R.conns[1]
  local fns = {
    acquire = function() return pool:acquire(nil, {}, function() end) end,
    close = function() return pool:close() end,
    add_peer = function() return pool:add_peer(F.servers[1].addr) end,
    release = c and c.conn and not c.released and function() return c.conn:release() end,
    connclose = c and c.conn and not c.released and function() return c.conn:close() end,
  }
  -- (an asynchronous hook may add peers: only the synchronous ones are refused that)
  local name = pick(async and { "acquire", "close", "release", "connclose" } or
    { "acquire", "close", "add_peer", "release", "connclose" })
  local f = fns[name]
  if not f then return end
  local ok, err = pcall(f)
  if not SKIP.in_hook_check then
    check(not ok and tostring(err):find(IN_HOOK, 1, true),
      "%s inside a %s hook: expected the in-hook error, got %s", name, what,
      ok and "success" or show(err))
  end
end

-- Read-only calls a synchronous hook may make.
local function read_in_hook()
  local pool = R and R.pool
  if not pool or R.closed_at then return end
  local which = rnd(4)
  if which == 1 then pool:stats()
  elseif which == 2 then pool:peers()
  elseif which == 3 then pool:metrics()
  else pool:peer(F.servers[1].addr) end
end

local SYNC_BEHAVIOURS = { { 30, "good" }, { 10, "view" }, { 8, "read" }, { 5, "keep" },
  { 6, "raise" }, { 3, "raise_odd" }, { 3, "loop" }, { 8, "garbage" }, { 3, "alloc" },
  { 5, "gc" }, { 3, "yield" }, { 6, "mutate" }, { 5, "readonly" }, { 2, "newpool" },
  { 2, "reload" } }

local function odd_error()
  return pick(L(nil, {}, 4242424242, setmetatable({}, { __tostring = function() return "odd error" end }),
    setmetatable({}, { __tostring = function() error("__tostring raises") end }),
    setmetatable({}, { __tostring = function() return {} end })))
end

local function sync_common(b, hook)
  if b == "raise" then error(INTENDED .. " hook " .. hook) end
  if b == "raise_odd" then error(odd_error()) end
  if b == "loop" then while true do end end
  if b == "alloc" then
    local t = {} -- luacheck: ignore (allocation is the point)
    for i = 1, 20000 do t[i] = { i } end
    local _ = string.rep("x", 1 << 20)
  end
  if b == "gc" then collectgarbage() end
  if b == "yield" then coroutine.yield("from a hook") end
  if b == "mutate" then mutate_in_hook(hook) end
  if b == "readonly" then read_in_hook() end
  if b == "newpool" then
    local p = peerpool.new { max_per_peer = 1, dns_servers = { F.dns.addr } }
    p:add_peer(F.servers[1].addr)
    if chance(0.5) then p:close() end
  end
  if b == "reload" and R.pool and not R.closed_at then
    -- swapping the policy from inside a hook: allowed (the swap takes effect next decision)
    R.pool:load_policy({})
  end
end

local function select_hook(hook)
  local b = wpick(SYNC_BEHAVIOURS)
  return function(cands, ctx)
    local n = #cands
    if not SKIP.view_check then
      check(type(ctx) == "table" and type(ctx.dialing) == "boolean",
        "%s: ctx is %s", hook, show(ctx))
      check(n >= 1 and n <= 64, "%s: %d candidates", hook, n)
    end
    sync_common(b, hook)
    if b == "view" then return cands[rnd(n)] end
    if b == "read" then
      for i = 1, n do
        local v = cands[i]
        local _ = { v.addr, v.state, v.leases, v.idle_ms, v.latency_ms, v.failures, v.conns,
          v.idle, v.waiters, v.last_seen, v.tags, v.source, v.nonexistent }
        if not SKIP.view_check then
          check(type(v.addr) == "string" and STATES[v.state], "%s: view %d reads addr %s state %s",
            hook, i, show(v.addr), show(v.state))
        end
      end
      return rnd(n) + 0.0
    end
    if b == "keep" then
      F.kept_views[#F.kept_views + 1] = cands[1]
      if #F.kept_views > 8 then table.remove(F.kept_views, 1) end
      return 1
    end
    if b == "garbage" then return garbage(n) end
    return rnd(n)
  end
end

local function backoff_hook()
  local b = wpick(SYNC_BEHAVIOURS)
  return function(attempt, err, peer)
    if not SKIP.view_check then
      check(math.type(attempt) == "integer" and attempt >= 1, "backoff: attempt %s", show(attempt))
      check(valid_code(err), "backoff: err %s", show(err))
      check(type(peer) == "table" and type(peer.addr) == "string", "backoff: peer %s", show(peer))
    end
    sync_common(b, "backoff")
    if b == "garbage" then return backoff_garbage() end
    if b == "good" and chance(0.05) then return false end -- burn
    return rnd(30) - 1
  end
end

local ASYNC_BEHAVIOURS = { { 30, "good" }, { 8, "true" }, { 5, "false" }, { 4, "garbage" },
  { 5, "raise" }, { 2, "raise_odd" }, { 2, "loop" }, { 6, "sleep" }, { 3, "stall" },
  { 3, "release" }, { 3, "keep" }, { 2, "close_pool" }, { 3, "acquire" }, { 3, "gc" },
  { 2, "bare_yield" }, { 3, "mutate" } }

local function conn_hook(hook)
  local b = wpick(ASYNC_BEHAVIOURS)
  local body
  local function run(conn)
    local entry = { conn = conn }
    if b == "keep" then
      F.kept_hook_conns[#F.kept_hook_conns + 1] = entry
      if #F.kept_hook_conns > 8 then table.remove(F.kept_hook_conns, 1) end
    end
    local res = pack(pcall(body, conn))
    entry.done = true -- once the hook has returned, its conn is the pool's again
    if not res[1] then error(res[2], 0) end
    return unpack(res, 2, res.n)
  end
  body = function(conn)
    local peer = conn.peer
    if not SKIP.view_check then
      check(type(peer) == "string", "%s: conn.peer is %s", hook, show(peer))
    end
    if b == "mutate" then mutate_in_hook(hook, true) end -- first slice: inside the engine call
    if b == "raise" then error(INTENDED .. " hook " .. hook) end
    if b == "raise_odd" then error(odd_error()) end
    if b == "loop" then while true do end end
    if b == "true" then return true end
    if b == "false" then return false end
    if b == "garbage" then return pick { 1, "yes", {}, 0 } end
    if b == "gc" then collectgarbage() end
    if b == "bare_yield" then coroutine.yield() end -- nobody resumes it: the timeout ends it
    if b == "release" then
      local ok, err = pcall(function() if chance(0.5) then conn:release() else conn:close() end end)
      if not SKIP.hook_conn_check then
        check(not ok and tostring(err):find("hook", 1, true),
          "%s: releasing the hook's conn gave %s", hook, ok and "success" or show(err))
      end
    end
    if b == "sleep" then hook_sleep(rnd(20)) end
    if b == "stall" then
      local ok, err = pcall(function() return conn:receive(pick { "*l", 100000, "*a" }) end)
      if not ok then check(false, "%s: receive in the hook raised %s", hook, show(err)) end
    end
    if b == "close_pool" then
      hook_sleep(rnd(5))
      if R.pool and may_close() and chance(0.5) then
        R.closed_at = uv.now()
        trace(hook .. " hook closes the pool")
        R.pool:close()
      end
      return true
    end
    if b == "acquire" then
      hook_sleep(1)
      if R.pool and not R.closed_at then
        local pool = R.pool
        local c = pool:acquire(nil, { timeout = 20, busy = pick { "wait", "fail" } })
        if c then c:release() end
      end
      return true
    end
    -- good: a round trip on echo-like servers
    local srv, port = srv_of(peer)
    if srv and (srv.kind == "echo" or srv.kind == "drip" or srv.kind == "greeter") then
      local tok = new_token(port)
      local n = conn:send(tok .. "\n")
      if not n then return false end
      while true do
        local line = conn:receive()
        if not line then return false end
        check_echo_line(port, line, srv)
        if line == tok then return true end
      end
    end
    return true
  end
  return run
end

local function seed_hook()
  local b = wpick(ASYNC_BEHAVIOURS)
  return function(ctx)
    if not SKIP.view_check then
      check(type(ctx) == "table" and math.type(ctx.wanted) == "integer",
        "seed: ctx.wanted is %s", show(ctx and ctx.wanted))
    end
    if b == "raise" then error(INTENDED .. " hook seed") end
    if b == "loop" then while true do end end
    if b == "gc" then collectgarbage() end
    if b == "sleep" then hook_sleep(rnd(10)) end
    if b == "bare_yield" then coroutine.yield() end
    if b == "mutate" then mutate_in_hook("seed", true) end
    for _ = 1, rnd(3) do
      local what = rnd(10)
      local ok, a, code = pcall(ctx.add, ctx, what <= 6 and pick(F.servers).addr or
        pick { "garbage", "", "127.0.0.1:0", "unix:", 12345 })
      if ok and a == nil then
        check(code == "invalid", "seed: ctx:add answered nil, %s", show(code))
      elseif not ok and not SKIP.seed_check then
        check(R.closed_at ~= nil and tostring(a):find(CLOSED_POOL, 1, true),
          "seed: ctx:add raised %s", show(a))
      end
    end
    if chance(0.2) then
      -- (numeric only: a DNS lookup opens sockets in the threadpool, which the socket count
      -- would see)
      local list, err = ctx:resolve(pick { "127.0.0.1", "127.0.0.1", "::1", "1.2.3" },
        pick(F.servers).port)
      check(list == nil and err ~= nil or type(list) == "table", "seed: resolve gave %s, %s",
        show(list), show(err))
    end
  end
end

local POLICY_FILES = {}

local function make_policy()
  local k = rnd(20)
  if k == 1 then return pick(POLICY_FILES) end -- a path, good or bad
  if k == 2 then
    return pick { "scripts/policies/round_robin.lua", "scripts/policies/least_loaded.lua",
      "scripts/policies/p2c_latency.lua", "scripts/policies/backoff_fixed.lua",
      "scripts/policies/consistent_hash.lua", "scripts/policies/default.lua" }
  end
  if k == 3 then
    return pick { { select_peer = 1 }, { selct_peer = function() end }, { name = 5 }, 42 }
  end
  local p = {}
  if chance(0.5) then p.select_peer = select_hook("select_peer") end
  if chance(0.4) then p.select_conn = select_hook("select_conn") end
  if chance(0.5) then p.backoff = backoff_hook() end
  if chance(0.3) then p.handshake = conn_hook("handshake") end
  if chance(0.3) then p.ping = conn_hook("ping") end
  if chance(0.3) then p.seed = seed_hook() end
  if chance(0.3) then p.name = "fuzz" .. rnd(9) end
  return p
end

local function write_policy_files()
  local dir = os.tmpname()
  os.remove(dir)
  assert(uv.fs_mkdir(dir, 448))
  F.tmpdir = dir
  local files = {
    good = "return { select_peer = function(p) return #p end, backoff = function() return 1 end }",
    syntax = "return { select_peer = function( end }",
    raises = "error('policy file raises')",
    number = "return 42",
    badkey = "return { selct_peer = function() end }",
  }
  for name, text in pairs(files) do
    local path = dir .. "/" .. name .. ".lua"
    local f = assert(io.open(path, "w"))
    f:write(text)
    f:close()
    POLICY_FILES[#POLICY_FILES + 1] = path
    POLICY_FILES[name] = path
  end
  POLICY_FILES[#POLICY_FILES + 1] = dir .. "/missing.lua"
  F.book_path = dir .. "/peers.book"
end

-- ---- options ---------------------------------------------------------------------------------

-- ---- host names ------------------------------------------------------------------------------

-- The fuzzer's host names, answered by its own DNS server on 127.0.0.1 (every pool it makes
-- has dns_servers = { that server }: no query leaves loopback). A peer is NAME:PORT with the
-- port of one of the hostile servers, which listen on 127.0.0.1 only.
local NAMES = {
  { "v4.fz.test", { a = { "127.0.0.1" }, ttl = 1 } },
  -- nothing listens on ::1: its dial is refused and Happy Eyeballs falls back to 127.0.0.1
  { "dual.fz.test", { a = { "127.0.0.1" }, aaaa = { "::1" }, ttl = 1 } },
  { "v6.fz.test", { aaaa = { "::1" }, ttl = 1 } },
  { "mapped.fz.test", { aaaa = { "::ffff:7f00:1" }, ttl = 60 } }, -- 127.0.0.1, v4-mapped
  { "nx.fz.test", { rcode = "NXDOMAIN" } },
  { "sick.fz.test", { rcode = "SERVFAIL" } },
  { "mute.fz.test", { silent = true } }, -- never answers: the resolver times out
  { "flip.fz.test" }, -- its answer changes every FLIP_MS (below)
}
-- flip.fz.test answers one address, then the other: with a short TTL (dns_ttl_max) the pool
-- re-resolves within a round and drains the conns to the address that left the answer.
local FLIP = { { a = { "127.0.0.1" }, ttl = 1 }, { aaaa = { "::ffff:7f00:1" }, ttl = 1 } }
local FLIP_MS = 25

local function start_dns()
  F.dns = dns_server.start()
  for _, e in ipairs(NAMES) do F.dns:set(e[1], e[2] or FLIP[1]) end
  local n = 1
  F.flip = uv.new_timer() -- (not random: the op sequence of a seed stays the same)
  F.flip:start(FLIP_MS, FLIP_MS, function()
    n = n % #FLIP + 1
    F.dns:set("flip.fz.test", FLIP[n])
  end)
  F.flip:unref()
end

local function stop_dns()
  if F.flip and not F.flip:is_closing() then F.flip:close() end
  if F.dns then F.dns:close() end
end

-- How many more sockets than conns a peer may hold while it dials: a name with several
-- addresses races them (Happy Eyeballs: one connect per address, the losers closed once one
-- wins), so each dialling conn may have one more socket per extra address for a moment.
local function race_extra(addr)
  local name = type(addr) == "string" and addr:match("^([%w.-]+%.fz%.test):%d+$")
  for _, e in ipairs(NAMES) do
    if e[1] == name and e[2] then return math.max(0, #(e[2].a or {}) + #(e[2].aaaa or {}) - 1) end
  end
  return 0
end

-- A peer named by a host name, for a server's port (sometimes spelled in capitals).
local function name_peer(srv)
  -- (flip.fz.test more often: its conns must live across a change of answer to be moved)
  local name = chance(0.3) and "flip.fz.test" or pick(NAMES)[1]
  if chance(0.2) then name = name:upper() end
  return name .. ":" .. srv.port
end

local function gen_options()
  local o = {}
  local function maybe(p, k, v) if chance(p) then o[k] = v end end
  maybe(0.7, "max_per_peer", rnd(4))
  -- (FUZZ_SKIP=hold_spin: never at max_total, finding F14)
  if not SKIP.hold_spin then maybe(0.6, "max_total", rnd(10)) end
  maybe(0.3, "client_limit", rnd(3))
  maybe(0.6, "connect_timeout", pick { 30, 100, 300, 1000 })
  maybe(0.6, "retries", rnd(3) - 1)
  -- (mostly short waits: an actor blocked for the whole round does nothing else)
  maybe(0.9, "acquire_timeout", pick { 0, 20, 50, 100, 100, 300, 1000 })
  maybe(0.4, "backlog", pick { 0, 1, 2, 5, 100 })
  maybe(0.4, "idle_timeout", pick { 0, 10, 50, 300 })
  maybe(0.3, "max_lifespan", pick { 0, 20, 100, 1000 })
  maybe(0.2, "lifespan_jitter", rnd(51) - 1)
  maybe(0.4, "handshake_timeout", pick { 20, 100, 500 })
  maybe(0.2, "max_address_age", pick { 0, 1000, 3600000 })
  maybe(0.3, "ping_after", pick { 0, 1, 10, 50 })
  maybe(0.2, "keepalive", pick { 0, 20, 100 })
  maybe(0.2, "target_peers", rnd(3))
  maybe(0.3, "maintenance_interval", pick { 5, 20, 100 })
  maybe(0.3, "seed_interval", pick { 0, 10, 100 })
  maybe(0.3, "eject_after", pick { 0, 1, 2, 5 })
  if not SKIP.min_idle then maybe(0.2, "min_idle", rnd(2) - 1) end -- (<= any max_per_peer)
  if chance(0.3) then
    o.eject_time = pick { 5, 50, 500 }
    o.eject_max = o.eject_time * rnd(4)
  end
  maybe(0.3, "keep_idle_bytes", pick { true, false, 0, 1 })
  maybe(0.9, "io_timeout", pick { 0, 5, 20, 30, 100, 100, 500 })
  maybe(0.2, "hook_budget", pick { 1000, 5000, 100000 })
  maybe(0.15, "hook_memory", pick { 65536, 1 << 20 })
  maybe(0.2, "max_receive", pick { 1, 16, 1000, 65536 })
  maybe(0.2, "max_send_queue", pick { 0, 1000, 65536 })
  if chance(0.3) then o.policy = make_policy() end
  if chance(0.15) then
    o.peers = {}
    for i = 1, rnd(3) do o.peers[i] = pick(F.servers).addr end
  end
  if chance(0.1) then
    o.address_book = F.book_path
    maybe(0.5, "address_book_interval", pick { 5, 50 })
  end
  -- host names: the loopback DNS server always (a list, or one string)
  o.dns_servers = chance(0.8) and { F.dns.addr } or F.dns.addr
  maybe(0.5, "dns_timeout", pick { 10, 50, 200 })
  if chance(0.5) then -- short TTLs: re-resolved within the round
    o.dns_ttl_min = pick { 1, 5, 20 }
    o.dns_ttl_max = o.dns_ttl_min + pick { 0, 20, 100 }
  end
  maybe(0.3, "happy_eyeballs_delay", pick { 10, 50, 250 })
  return o
end

-- An invalid variant of valid options and the substrings its error must carry.
local BAD_OPTIONS = {
  function(o) o.max_per_peer = pick { 0, -1, 1000001, 1.5, "4", true, 0 / 0, 1 / 0, 2 ^ 63 }
    return { "max_per_peer" } end,
  function(o) o.max_total = pick { 0, 10000001, {}, -1 / 0 } return { "max_total" } end,
  function(o) o.client_limit = pick { 0, 65537, "x" } return { "client_limit" } end,
  function(o) o.connect_timeout = pick { 0, -5, 1e300, "fast" } return { "connect_timeout" } end,
  function(o) o.retries = pick { -1, 101, 0.5 } return { "retries" } end,
  function(o) o.acquire_timeout = pick { -1, math.mininteger, {} } return { "acquire_timeout" } end,
  function(o) o.backlog = pick { -1, 10000001 } return { "backlog" } end,
  function(o) o.idle_timeout = pick { -1, print } return { "idle_timeout" } end,
  function(o) o.lifespan_jitter = pick { 51, -1 } return { "lifespan_jitter" } end,
  function(o) o.handshake_timeout = 0 return { "handshake_timeout" } end,
  function(o) o.target_peers = -1 return { "target_peers" } end,
  function(o) o.maintenance_interval = 0 return { "maintenance_interval" } end,
  function(o) o.eject_time, o.eject_max = 100, 50 return { "eject_max" } end,
  function(o) o.keep_idle_bytes = pick { 2, "yes" } return { "keep_idle_bytes" } end,
  function(o) o.io_timeout = pick { -1, "x", 0.5 } return { "io_timeout" } end,
  function(o) o.hook_budget = pick { 10, 1e9, "x" } return { "hook_budget" } end,
  function(o) o.hook_memory = pick { 1000, -1, "x" } return { "hook_memory" } end,
  function(o) o.max_receive = pick { 0, -1, 0.5 } return { "max_receive" } end,
  function(o) o.max_send_queue = pick { -1, {} } return { "max_send_queue" } end,
  function(o) o[pick { "max_peers", "polcy", "timeout" }] = 1 return { "unknown option" } end,
  function(o) o[1] = 5 return { "option names must be strings" } end,
  function(o) o.peers = pick { "127.0.0.1:1", 5 } return { "peers" } end,
  function(o) o.peers = { pick { "garbage", "", "127.0.0.1:0" } } return { "peers[1]" } end,
  function(o) o.peers = { pick { {}, true } } return { "peers[1]" }, "peers_option" end,
  function(o) o.address_book = pick { 5, {} } return { "address_book" } end,
  function(o) o.address_book, o.address_book_interval = F.book_path, pick { 0, 1.5, "x" }
    return { "address_book_interval" } end,
  function(o) o.policy = pick { { selct_peer = print }, { select_peer = 5 },
    POLICY_FILES.syntax, POLICY_FILES.raises, POLICY_FILES.number } return { "peerpool.new: policy" } end,
  function(o) o.policy = pick { 42, true } return { "peerpool.new: policy", "option 'policy'" },
    "policy_option" end,
  function(o) o.dns_servers = pick { 5, {}, { 5 }, { "ns.fz.test" }, "", "127.0.0.1:99999",
    { "127.0.0.1:1,127.0.0.1:2" } } return { "dns_servers" } end,
  function(o) o.dns_timeout = pick { 0, -1, 3600001, "x" } return { "dns_timeout" } end,
  function(o) o.dns_ttl_min, o.dns_ttl_max = 100, 50 return { "dns_ttl_max" } end,
  function(o) o.happy_eyeballs_delay = pick { 9, 10001 } return { "happy_eyeballs_delay" } end,
}

-- ---- the kernel's view -----------------------------------------------------------------------

local function snapshot()
  return procfs.snapshot(F.server_ports, R.baseline_inodes, F.ignore_ports, hostile.inodes)
end

local function peer_limit(port)
  -- several spellings of one server are one peer, except a v4-mapped IPv6 one: each peer
  -- has its own max_per_peer (and a name's racing sockets, race_extra)
  local n = 0
  for addr, p in pairs(R.peer_set) do
    if p.port == port then n = n + 1 + race_extra(addr) end
  end
  return math.max(1, n) * R.max_per_peer
end

-- Sockets over max_total that dials racing several addresses of a name may hold for a moment.
local function race_slack()
  local extra = 0
  for addr in pairs(R.peer_set) do extra = extra + race_extra(addr) * R.max_per_peer end
  return math.min(extra, R.max_total)
end

local function check_kernel(where)
  if SKIP.kernel or not R.pool then return end
  local snap = snapshot()
  local side = (R.side or R.framed) and R.side_port
  local total = snap.total - (side and (snap.per_port[side] or 0) or 0)
  if side then
    local max = (R.side and 1 or 0) + (R.framed and 1 or 0) -- (each has max_per_peer 1)
    check((snap.per_port[side] or 0) <= max, "%s: %d sockets to the side pools' peer (max %d)" ..
      "\n%s", where, snap.per_port[side] or 0, max, table.concat(snap.list, "\n"))
  end
  check(total <= R.max_total + race_slack(), "%s: the pool holds %d sockets, max_total is %d " ..
    "(%d more allowed for Happy Eyeballs races)\n%s", where, total, R.max_total, race_slack(),
    table.concat(snap.list, "\n"))
  local engine, detail = {}, {}
  if not R.closed_at then
    local ok, peers = pcall(R.pool.peers, R.pool)
    if ok then
      for _, p in ipairs(peers) do
        local port = tonumber(p.addr:match(":(%d+)$"))
        if port then
          engine[port] = (engine[port] or 0) + p.conns
          detail[port] = (detail[port] and detail[port] .. ", " or "") ..
            fmt("%s: %d conns (%d idle, %d leases, state %s)", p.addr, p.conns, p.idle, p.leases,
              p.state)
          -- every peer on a port has its own max_per_peer (spellings the pool took from the
          -- address book, a seed hook or a v4-mapped address are peers the driver may not
          -- have added itself)
          if not R.peer_set[p.addr] then R.peer_set[p.addr] = { port = port } end
        end
      end
    end
  end
  for port, n in pairs(snap.per_port) do
    if port ~= side then
      check(n <= peer_limit(port), "%s: %d sockets to port %d (%s), max_per_peer is %d; the " ..
        "engine counts %s conns of that peer (pool closed: %s): %s\n%s", where, n, port,
        F.by_port[port] and F.by_port[port].kind or "?", R.max_per_peer,
        tostring(engine[port]), tostring(R.closed_at ~= nil), tostring(detail[port]),
        table.concat(snap.list, "\n"))
      if not R.closed_at and not SKIP.kernel_engine and n > (engine[port] or 0) and
        not R.removed_ports[port] then -- (a removed peer's leased conns are in no view)
        -- A socket the engine does not count. Look again a little later: one still open then,
        -- with the engine still counting fewer, is a socket it lost track of.
        local first = fmt("%s: %d sockets to port %d but the engine counts %d conns of that " ..
          "peer (%s)\n%s", where, n, port, engine[port] or 0, tostring(detail[port]),
          table.concat(snap.list, "\n"))
        local rr = R
        rr.suspects = rr.suspects or {}
        if not rr.suspects[port] then
          rr.suspects[port] = true
          trace("suspect: " .. first:match("^[^\n]*"))
          local t = uv.new_timer()
          handles[t] = true
          t:start(300, 0, function()
            handles[t] = nil
            t:close()
            rr.suspects[port] = nil
            if rr ~= R or R.closed_at or not R.pool or R.removed_ports[port] then return end
            local again = snapshot()
            local ok, peers = pcall(R.pool.peers, R.pool)
            if not ok then return end
            local count = 0
            for _, pv in ipairs(peers) do
              if tonumber(pv.addr:match(":(%d+)$")) == port then count = count + pv.conns end
            end
            local k = again.per_port[port] or 0
            check(k <= count, "a socket the engine lost track of: %d sockets to port %d (%s), " ..
              "the engine counts %d conns 300 ms after it first counted fewer than the kernel " ..
              "(round options %s):\nfirst: %s\nnow:\n%s", k, port,
              F.by_port[port] and F.by_port[port].kind or "?", count, R.opts_text or "?", first,
              table.concat(again.list, "\n"))
          end)
        end
      end
    end
  end
end

-- ---- stats, metrics, peers -------------------------------------------------------------------

local function check_stats(s)
  if SKIP.stats_check then return end
  check(type(s) == "table", "stats() returned %s", show(s))
  for _, k in ipairs { "conns", "idle", "active", "connecting", "waiters", "peers", "acquires",
    "releases", "leaked_leases", "callback_errors" } do
    check(math.type(s[k]) == "integer" and s[k] >= 0, "stats().%s is %s", k, show(s[k]))
  end
  check(s.conns <= R.max_total, "stats().conns %d > max_total %d", s.conns, R.max_total)
  check(s.idle + s.active <= s.conns, "stats(): idle %d + active %d > conns %d", s.idle, s.active,
    s.conns)
  local by = 0
  for st, n in pairs(s.peers_by_state) do
    check(STATES[st], "stats().peers_by_state has %s", show(st))
    by = by + n
  end
  check(by == s.peers, "stats(): peers_by_state sums to %d, peers is %d", by, s.peers)
end

local function check_peer_view(v, where)
  if SKIP.stats_check then return end
  check(type(v) == "table" and type(v.addr) == "string" and STATES[v.state],
    "%s: peer view %s", where, show(v))
  for _, k in ipairs { "conns", "idle", "leases", "waiters", "failures", "last_seen", "attempts" } do
    check(math.type(v[k]) == "integer", "%s: peer view %s.%s is %s", where, v.addr, k, show(v[k]))
  end
  check(v.conns <= R.max_per_peer, "%s: peer %s has %d conns, max_per_peer %d", where, v.addr,
    v.conns, R.max_per_peer)
  check(v.idle <= v.conns, "%s: peer %s idle %d > conns %d", where, v.addr, v.idle, v.conns)
  -- (leases may outnumber open conns: a shared conn released as broken by one holder closes
  -- under its other leases)
end

local function check_metrics(text)
  if SKIP.metrics_check then return end
  check(type(text) == "string" and text:sub(-1) == "\n", "metrics() returned %s", show(text))
  for line in text:gmatch("[^\n]+") do
    local ok = line:match("^# HELP peerpool_[%w_]+ .+$") or line:match("^# TYPE peerpool_[%w_]+ %a+$")
      or line:match("^peerpool_[%w_]+ [-%d.e+naifNAIF]+$")
      or line:match('^peerpool_[%w_]+{[%a_][%w_]*=".-"[^}]*} [-%d.e+naifNAIF]+$')
    check(ok, "metrics(): malformed line %s", show(line))
  end
end

-- ---- conn records ----------------------------------------------------------------------------

local function adopt(conn, how)
  local srv, port = srv_of(conn.peer)
  local rec = { kind = "conn", conn = conn, peer = conn.peer, srv = srv, port = port, released = false,
    receiving = false, how = how, id = #R.conns + 1 }
  R.conns[#R.conns + 1] = rec
  return rec
end

local function live_conns()
  local out = {}
  for _, rec in ipairs(R.conns) do if not rec.released and not rec.dropped then out[#out + 1] = rec end end
  return out
end

local function any_conn()
  local c = {}
  for _, rec in ipairs(R.conns) do if not rec.dropped then c[#c + 1] = rec end end
  return #c > 0 and pick(c) or nil
end

local function mark_released(rec)
  rec.released = true
end

-- ---- notices ---------------------------------------------------------------------------------

local function new_notice(n)
  local rec = { kind = "notice", notice = n, waiting = false, cbs = {}, id = #R.notices + 1,
    round = R }
  R.notices[#R.notices + 1] = rec
  return rec
end

-- r: pcall's pack (r[1] is pcall's status)
local function notice_result_ok(r)
  if r[2] == true then return r.n == 2 end
  -- (removed: its peer was removed or drained meanwhile)
  return r[2] == nil and (r[3] == "timeout" or r[3] == "canceled" or r[3] == "closed" or
    r[3] == "removed")
end

-- ---- ops -------------------------------------------------------------------------------------

local function gen_peer_arg()
  local c = rnd(100)
  if c <= 30 then return nil end
  if c <= 35 and R.pool and not R.closed_at then
    -- a peer view names its peer too
    local ok, views = pcall(R.pool.peers, R.pool)
    if ok and #views > 0 then return pick(views) end
  end
  if c <= 85 then
    local p = pick(R.peer_list)
    return chance(0.2) and p.spelling or p.addr
  end
  if c <= 93 then return "127.0.0.1:" .. F.unused_port end
  return pick { "garbage", "", "[::1", "unix:/nonexistent/fuzz.sock", "127.0.0.1:0" }
end

local function gen_acquire_opts()
  if chance(0.2) then return nil end
  local o = {}
  if chance(0.4) then o.busy = chance(0.5) and "fail" or "wait" end
  if chance(0.6) then o.timeout = pick { 0, 1, 5, 20, 50, 100, 100, 300, 1000 } end
  if chance(0.3) then o.priority = rnd(8) - 1 end
  if chance(0.3) then o.key = pick { "", "k1", "user:42", string.rep("k", 300) } end
  return o
end

-- A pool closed plainly (or whose graceful close has ended) raises on every call; during a
-- graceful close (close{ drain_ms }, R.draining) its calls still work (acquires, add_peer,
-- notices answer closed).
local function pool_gone()
  return R.closed_at ~= nil and (not R.draining or R.drain_over == true)
end

local function pool_rule()
  if pool_gone() then return { raise = { CLOSED_POOL } } end
  return nil
end

-- pool:close(): at once; during a drain it ends the drain now.
local function plain_close(desc)
  R.closed_at = R.closed_at or uv.now()
  R.drain_over = true
  return call(desc .. " pool:close()", nil, function() return R.pool:close() end)
end

-- pool:close{ drain_ms } (issue 11): with a callback (always outside a coroutine), or waiting in
-- this coroutine. Its end is heard exactly once, with nil (every lease ended in time) or
-- "timeout" and why (leases were cut). A second one during the drain answers nil, "closed"
-- (or true once the pool has closed).
local function graceful_close(desc, can_wait)
  local rr, first = R, not R.draining
  R.closed_at = R.closed_at or uv.now()
  local ms = pick { 0, 5, 30, 100, 300 }
  local e = { desc = desc, calls = 0, never = not first }
  local with_cb = not can_wait or chance(0.5)
  local opts = { drain_ms = ms }
  local function ended(err, detail, how)
    e.calls = e.calls + 1
    rr.drain_over = true
    check(e.calls == 1, "%s: the graceful close ended %d times (last %s)", desc, e.calls, how)
    check(err == nil and detail == nil or err == "timeout" and type(detail) == "string" and
      detail:find("cut", 1, true), "%s: the graceful close ended (%s) with %s, %s", desc, how,
      show(err), show(detail))
  end
  if with_cb then
    opts.callback = function(err, detail)
      check(not e.never, "%s: the callback of a refused graceful close ran", desc)
      ended(err, detail, "callback")
    end
  end
  if first then
    R.draining = true
    R.drains[#R.drains + 1] = e
  end
  local ok, r = call(fmt("%s pool:close{drain_ms = %d%s}", desc, ms, with_cb and ", callback" or
    ""), nil, function() return R.pool:close(opts) end)
  if not ok then return end
  if not first then
    check(r[2] == true and rr.drain_over or r[2] == nil and r[3] == "closed" and
      type(r[4]) == "string", "%s: a second graceful close answered %s", desc, show_results(r))
  elseif with_cb then
    check(r[2] == true and r.n == 2, "%s: a graceful close with a callback answered %s", desc,
      show_results(r))
  elseif r[2] == true then
    ended(nil, nil, "returned")
  else
    check(r[2] == nil, "%s: a graceful close answered %s", desc, show_results(r))
    ended(r[3], r[4], "returned")
  end
end

-- A pool may be closed mid-flight in some rounds, late in the round (by an actor, an acquire
-- callback or a hook that yielded).
-- (not while the round's end has forgotten the pool: a callback that comes meanwhile, from the
-- pool the collector has not closed yet, has no pool to close)
function may_close()
  return R.pool ~= nil and R.may_close and not R.closed_at and uv.now() >= R.close_after and
    not SKIP.midflight_close
end

local function take_notice(n)
  if n and is_notice(n) then new_notice(n) end
end

-- A conn an actor just got: sometimes hold it, sometimes hand it back at once.
local function op_acquire_co(a)
  local pool = R.pool
  local peer, opts = gen_peer_arg(), gen_acquire_opts()
  local acq = new_acq("co", peer, opts)
  local ok, r = call(fmt("a%d acquire(%s, %s) #%d", a.id, show(peer), show(opts), acq.id),
    pool_rule(), function() return pool:acquire(peer, opts) end)
  if not ok then return acq_void(acq) end
  acq_end(acq, r[2], r[3], r[4], "co")
  if r[2] then
    local rec = adopt(r[2], "co")
    a.held[#a.held + 1] = rec
  elseif r[3] == "busy" then
    take_notice(r[4])
  end
end

local CB_BEHAVIOURS = { { 30, "keep" }, { 20, "release" }, { 8, "close" }, { 4, "raise" },
  { 3, "raise_odd" }, { 4, "gc" }, { 4, "receive" }, { 3, "acquire_sync" }, { 2, "drop" },
  { 2, "spawn" }, { 1, "close_pool" } }

-- An acquire in a coroutine of its own, which another actor may close (abandon) or resume
-- by hand (meddle) while it waits.
local function op_acquire_sub(a)
  local pool = R.pool
  local peer, opts = gen_peer_arg(), gen_acquire_opts()
  local acq = new_acq("co", peer, opts)
  local rec = { acq = acq }
  local co
  co = spawn("acquire sub", function()
    local ok, r = call(fmt("a%d.sub acquire(%s, %s) #%d", a.id, show(peer), show(opts), acq.id),
      pool_rule(), function() return pool:acquire(peer, opts) end)
    if co then R.subs[co] = nil end
    if not ok then return acq_void(acq) end
    if rec.meddled then
      acq.pending, acq.abandoned = false, true -- its answer went to whoever resumed it
      return
    end
    acq_end(acq, r[2], r[3], r[4], "co")
    if r[2] then
      local c = adopt(r[2], "co")
      if chance(0.5) then
        call("sub release", nil, function() return r[2]:release() end)
        mark_released(c)
      end
    end
  end)
  if coroutine.status(co) == "suspended" then R.subs[co] = rec end
end

-- A coroutine that holds a conn in a to-be-closed variable, waits in receive, and dies with an
-- error when the binding resumes it: the conn is closed by lua_resetthread inside the
-- binding's read callback.
local function op_dying_receiver(a)
  local live = live_conns()
  if #live == 0 then return end
  local rec = pick(live)
  if rec.receiving or rec.abandoned then return end
  rec.receiving = "dying"
  trace(fmt("a%d dying receiver on c%d", a.id, rec.id))
  F.ops = F.ops + 1
  local co = peerpool.spawn(function()
    local c <close> = rec.conn
    local ok, data, code = pcall(c.receive, c, pick { "*l", 1, "*a" })
    rec.receiving = false
    mark_released(rec) -- the <close> below ends the lease
    trace(fmt("dying receiver on c%d got %s %s %s", rec.id, tostring(ok), show(data), show(code)))
    F.intended = F.intended + 1
    error(INTENDED .. " dying receiver")
  end)
  if SKIP.unanchored then anchored[co] = true end -- (dropped at the end of the round)
end

-- One coroutine waiting inside the API, picked (in a seed-stable order) and taken out of
-- R.subs; nil when none still waits.
local function take_waiting_sub()
  local list = {}
  for co, rec in pairs(R.subs) do list[#list + 1] = { co, rec } end
  table.sort(list, function(x, y) return tostring(x[1]) < tostring(y[1]) end)
  if #list == 0 then return nil end
  local e = pick(list)
  local co, rec = e[1], e[2]
  R.subs[co] = nil
  if coroutine.status(co) ~= "suspended" then return nil end
  return co, rec
end

-- Resume by hand a coroutine that waits inside the API: the call returns what we pass; the
-- binding must cope when its own answer comes later.
local function op_meddle(a)
  if SKIP.meddle then return end
  local co, rec = take_waiting_sub()
  if not co then return end
  rec.meddled = true
  trace(fmt("a%d resumes a waiting coroutine by hand", a.id))
  F.ops = F.ops + 1
  if rec.kind == "conn" then rec.receiving = false end
  if rec.kind == "notice" then rec.waiting = false end
  local ok, err = coroutine.resume(co, "meddled", "junk")
  if not ok and not tostring(err):find(INTENDED, 1, true) then
    -- our own checks inside it may trip on the junk answer: that is the driver's doing
    trace("  the meddled coroutine raised " .. show(err))
  end
end

local function op_acquire_cb(a)
  local pool = R.pool
  local peer, opts = gen_peer_arg(), gen_acquire_opts()
  local acq = new_acq("cb", peer, opts)
  local inside, refused = true, false
  local behaviour = wpick(CB_BEHAVIOURS)
  local function cb(err, conn, detail)
    check(not inside, "acquire #%d: the callback ran inside pool:acquire", acq.id)
    check(not refused, "acquire #%d: the callback ran after an immediate refusal", acq.id)
    trace(fmt("cb #%d (%s, %s, %s) then %s", acq.id, show(err), show(conn), show(detail), behaviour))
    acq_end(acq, conn, err, detail, "cb")
    if not conn then
      if behaviour == "raise" then
        F.intended = F.intended + 1
        error(INTENDED .. " callback without conn")
      end
      return
    end
    local rec = adopt(conn, "cb")
    if behaviour == "release" then
      local ok, r = call(fmt("cb #%d release", acq.id), nil, function() return conn:release() end)
      if ok then check(r[2] == true, "release of a fresh conn returned %s", show(r[2])) end
      mark_released(rec)
    elseif behaviour == "close" then
      call(fmt("cb #%d close", acq.id), nil, function() return conn:close() end)
      mark_released(rec)
    elseif behaviour == "raise" or behaviour == "raise_odd" then
      rec.dropped, rec.conn = true, nil -- leased and unreachable once the callback is gone
      R.leaked = R.leaked + 1
      F.intended = F.intended + 1
      if behaviour == "raise" then error(INTENDED .. " callback") end
      error(odd_error())
    elseif behaviour == "drop" then
      rec.dropped, rec.conn = true, nil
      R.leaked = R.leaked + 1
    elseif behaviour == "gc" then
      collectgarbage()
    elseif behaviour == "receive" then
      -- not in a coroutine: data already here, an error, or a clean refusal
      call(fmt("cb #%d receive outside a coroutine", acq.id), { may = { NOT_CO } },
        function() return conn:receive(pick { "*l", 1, "*a" }) end)
      rec.dirty = true
    elseif behaviour == "acquire_sync" then
      call(fmt("cb #%d acquire without callback outside a coroutine", acq.id),
        { raise = { NOT_CO, CLOSED_POOL } }, function() return pool:acquire() end)
    elseif behaviour == "spawn" then
      spawn("cb spawn", function()
        sleep(rnd(5))
        if not rec.released and not rec.dropped then
          call("spawned release", nil, function() return conn:release() end)
          mark_released(rec)
        end
      end)
    elseif behaviour == "close_pool" and may_close() then
      if chance(0.5) then graceful_close(fmt("cb #%d", acq.id), false)
      else plain_close(fmt("cb #%d", acq.id)) end
    end
  end
  local ok, r = call(fmt("a%d acquire(%s, %s, cb) #%d", a.id, show(peer), show(opts), acq.id),
    pool_rule(), function() return pool:acquire(peer, opts, cb) end)
  inside = false
  if not ok then return acq_void(acq) end
  if r[2] == true then
    acq.expect_cb = true
    return
  end
  check(r[2] == nil, "acquire with a callback returned %s", show(r[2]))
  refused = true
  acq_end(acq, nil, r[3], r[4], "immediate")
  if r[3] == "busy" then take_notice(r[4]) end
end

local function pick_held(a)
  -- mostly the actor's own conns; sometimes anyone's, released ones included
  if #a.held > 0 and chance(0.8) then
    local rec = pick(a.held)
    if not rec.released and not rec.dropped then return rec end
  end
  local live = live_conns()
  if #live > 0 and chance(0.8) then return pick(live) end
  return any_conn()
end

local function conn_rule(rec, extra)
  if rec.released then return { raise = { RELEASED } } end
  return extra
end

local function payload(rec)
  local kind = rec.srv and rec.srv.kind
  if kind == "echo" or kind == "drip" or kind == "greeter" or kind == "closer" then
    -- only whole token lines (or nothing): every line that comes back must be known
    local x = rnd(20)
    if x == 1 then return "" end
    return new_token(rec.port, x == 2 and string.rep("y", 100000) or nil) .. "\n"
  end
  local n = rnd(10)
  if n <= 6 then return "x" .. rnd(1000) .. "\n" end
  if n <= 8 then return "" end
  if n == 9 then return string.rep("y", 256 * 1024) end
  return 12345 -- a number: coerced to a string
end

local function op_send(a)
  local rec = pick_held(a)
  if not rec then return end
  local data = payload(rec)
  -- sometimes with a callback: it runs once, later, with nil (written) or a code
  local cb, entry
  if chance(0.2) and not SKIP.send_callback then
    entry = { calls = 0, inside = true, rec = rec }
    R.send_cbs[#R.send_cbs + 1] = entry
    rec.pending_cbs = (rec.pending_cbs or 0) + 1
    cb = function(err)
      check(not entry.inside, "send's callback ran inside conn:send")
      entry.calls = entry.calls + 1
      rec.pending_cbs = rec.pending_cbs - 1
      check(entry.calls == 1, "send's callback ran %d times", entry.calls)
      check(err == nil or valid_code(err), "send's callback got %s", show(err))
      if chance(0.3) then -- (the conn may be unreachable by now: see op_send's drop)
        collectgarbage()
        collectgarbage()
      end
      if chance(0.05) then
        F.intended = F.intended + 1
        error(INTENDED .. " send callback")
      end
    end
  end
  local rule = conn_rule(rec)
  if not rec.released and rec.sending then
    rule = { may = { "a send is already waiting on this conn" } }
  end
  local waits = rule == nil and not rec.sending
  if waits then rec.sending = true end
  local ok, r = call(fmt("a%d send c%d(%s) %s%s", a.id, rec.id, show(rec.peer), show(data),
    cb and " with a callback" or ""), rule, function() return rec.conn:send(data, cb) end)
  if waits then rec.sending = false end
  if entry then
    entry.inside = false
    if not ok or r[2] == nil then -- refused: the callback never runs
      entry.never = true
      rec.pending_cbs = rec.pending_cbs - 1
    end
  end
  if not ok then return end
  local n = r[2]
  if n ~= nil then
    check(n == #tostring(data), "send of %d bytes answered %s", #tostring(data), show(n))
  else
    check(valid_code(r[3]), "send answered nil, %s", show(r[3]))
  end
  if cb and chance(0.3) and not rec.dropped and not SKIP.send_drop then
    -- forget the conn while its write (and callback) is still to come
    trace(fmt("a%d drops c%d after a send with a callback", a.id, rec.id))
    rec.dropped, rec.conn = true, nil
    if not rec.released then R.leaked = R.leaked + 1 end
    for i, h in ipairs(a.held) do if h == rec then table.remove(a.held, i) break end end
  end
end

local function receive_pattern()
  if chance(0.15) and not SKIP.receive_until then -- conn:receive_until(delim)
    return { until_ = pick { "\n", "\n", "p", "\r\n", "aab", "n1" } }
  end
  return pick(L(nil, "*l", "l", "*l", "*a", "a", 0, 1, 2, 7, 100, 4096, 1 << 20,
    (R.max_receive or 1 << 20) + 1))
end

local function do_receive(_, rec, pat, who)
  local rule = conn_rule(rec)
  if not rec.released and rec.receiving then
    rule = { raise = { "a receive is already waiting on this conn" } }
  elseif not rec.released and rec.meddled then
    rule = { may = { "a receive is already waiting on this conn" } } -- the binding still waits
  elseif not rec.released and rec.abandoned and SKIP.abandon_wait then
    -- finding F6: the closed waiter's reference lingers until data arrives
    rule = { may = { "a receive is already waiting on this conn" } }
  end
  local expect_end = R.io_timeout > 0 and clock() + R.io_timeout or nil
  rec.receiving = rule == nil and who or rec.receiving
  local ok, r = call(fmt("%s receive c%d(%s) %s", who, rec.id, show(rec.peer), show(pat)), rule,
    function()
      if type(pat) == "table" then return rec.conn:receive_until(pat.until_) end
      return rec.conn:receive(pat)
    end)
  if rule == nil and rec.receiving == who then rec.receiving = false end
  if not ok then return end
  if r[2] == "meddled" then
    -- resumed by hand: the binding's reference to this coroutine lingers until its answer
    rec.meddled = true
    return
  end
  if expect_end and not SKIP.deadline then
    local late = lateness(expect_end)
    check(late <= MARGIN, "receive on c%d ended %.0f ms after its io_timeout", rec.id,
      clock() - expect_end)
  end
  local data, code, partial = r[2], r[3], r[4]
  if data ~= nil then
    check(type(data) == "string", "receive answered %s", show(data))
    if type(pat) == "table" then
      check(not data:find(pat.until_, 1, true), "receive_until(%s) answered %s", show(pat.until_),
        show(data))
      check(#data <= R.max_receive, "receive_until answered %d bytes, over max_receive %d", #data,
        R.max_receive)
      local kind = rec.srv and rec.srv.kind
      if pat.until_ == "\n" and (kind == "echo" or kind == "drip") and not rec.fragmented then
        check_echo_line(rec.port, data, rec.srv)
      else
        rec.fragmented = true
      end
    elseif pat == nil or pat == "*l" or pat == "l" then
      check(not data:find("\n", 1, true), "receive('*l') answered a line with a newline: %s",
        show(data))
      local kind = rec.srv and rec.srv.kind
      if (kind == "echo" or kind == "drip" or kind == "greeter") and not rec.fragmented then
        check_echo_line(rec.port, data, rec.srv)
      end
    elseif type(pat) == "number" then
      check(#data == pat, "receive(%d) answered %d bytes", pat, #data)
      check(pat <= R.max_receive, "receive(%d) over max_receive %d answered data", pat,
        R.max_receive)
      rec.fragmented = true
    else
      rec.fragmented = true
    end
  else
    check(valid_code(code), "receive answered nil, %s", show(code))
    check(type(partial) == "string", "receive failed with partial %s", show(partial))
    if code == "too_long" and not (type(pat) == "number" and pat > R.max_receive) then
      mark_released(rec) -- the line outgrew max_receive: the lease ends, the conn is closed
    end
    if code == "timeout" and not SKIP.deadline and R.io_timeout > 0 then
      -- fine
      rec.dirty = true
    end
  end
end

local function op_receive(a)
  local rec = pick_held(a)
  if not rec then return end
  if chance(0.15) and not rec.released and not rec.receiving then
    -- in a coroutine of its own, which another actor may close while it waits
    local co
    co = spawn("receiver", function()
      do_receive(a, rec, receive_pattern(), fmt("a%d.sub", a.id))
      if co then R.subs[co] = nil end
    end)
    if coroutine.status(co) == "suspended" then R.subs[co] = rec end
    return
  end
  do_receive(a, rec, receive_pattern(), "a" .. a.id)
end

-- Close a coroutine that waits inside the API (receive or notice wait): abandoned.
local function op_abandon(a)
  if SKIP.abandon then return end
  local co, rec = take_waiting_sub()
  if not co then return end
  trace(fmt("a%d coroutine.close(a waiting %s)", a.id,
    rec.acq and "acquire" or rec.kind == "notice" and "notice:wait" or "receive"))
  F.ops = F.ops + 1
  local ok, err = coroutine.close(co)
  check(ok, "coroutine.close of a waiting coroutine failed: %s", show(err))
  if rec.acq then
    rec.acq.pending, rec.acq.abandoned = false, true -- the binding hands a late conn back
  elseif rec.kind == "conn" then
    rec.receiving = false
    rec.abandoned = true
  else
    rec.waiting = false
    rec.abandoned = true
  end
end

local function op_release(a, how)
  local rec = pick_held(a)
  if not rec then return end
  how = how or pick { "release", "release", "close", "scope", "scope_error" }
  local was = not rec.released
  if how == "scope" or how == "scope_error" then
    call(fmt("a%d <close> c%d %s", a.id, rec.id, how), { any = how == "scope_error" }, function()
      local c <close> = rec.conn
      if how == "scope_error" then error(INTENDED .. " scope") end
      return c
    end)
    mark_released(rec)
    return
  end
  local ok, r = call(fmt("a%d %s c%d(%s)", a.id, how, rec.id, show(rec.peer)), nil,
    function() return rec.conn[how](rec.conn) end)
  mark_released(rec)
  if ok and not SKIP.release_check then
    check(r[2] == was, "%s of a conn %s returned %s", how, was and "held" or "released", show(r[2]))
  end
end

local function op_drop(a)
  local rec = pick_held(a)
  if not rec or rec.dropped then return end
  -- (finding F12: a conn dropped with a send callback still to come)
  if SKIP.send_drop and (rec.pending_cbs or 0) > 0 then return end
  trace(fmt("a%d drops c%d (%s)", a.id, rec.id, rec.released and "released" or "leased: a leak"))
  rec.dropped, rec.conn = true, nil -- nothing of the driver's refers to it any more
  if not rec.released then R.leaked = R.leaked + 1 end
  for i, h in ipairs(a.held) do if h == rec then table.remove(a.held, i) break end end
  if chance(0.5) then collectgarbage() end
end

local function op_gc()
  trace("collectgarbage()")
  collectgarbage(pick { "collect", "step", "collect" })
end

local function op_notice(a)
  if #R.notices == 0 then return end
  local rec = pick(R.notices)
  local n = rec.notice
  local what = rnd(10)
  if what <= 4 then
    local ms = pick(L(nil, 0, 1, 10, 100))
    local rule = nil
    if rec.waiting or rec.meddled or (rec.abandoned and SKIP.abandon_wait) then
      rule = { may = { "a coroutine is already waiting on this notice" } }
    end
    local function body(who)
      local was_waiting = rec.waiting
      if not was_waiting then rec.waiting = who end
      local deadline = ms and ms > 0 and clock() + ms
      local ok, r = call(fmt("%s notice%d:wait(%s)", who, rec.id, show(ms)), rule,
        function() return n:wait(ms) end)
      if not was_waiting and rec.waiting == who then rec.waiting = false end
      if not ok then return end
      if r[2] == "meddled" then
        rec.meddled = true
        return
      end
      check(notice_result_ok(r), "notice:wait answered %s", show_results(r))
      if deadline and not SKIP.deadline then
        check(lateness(deadline) <= MARGIN, "notice:wait(%d) ended %.0f ms late", ms,
          clock() - deadline)
      end
      if r[2] == "closed" and not SKIP.closed_check then
        check(rec.round.closed_at or rec.round ~= R, "notice:wait answered closed on an open pool")
      end
      if rec.cancelled and r[2] == true and not SKIP.notice_check then
        fail(fmt("notice%d: wait answered true after cancel() returned true", rec.id))
      end
    end
    if chance(0.3) then
      local co
      co = spawn("notice waiter", function()
        body(fmt("a%d.sub", a.id))
        if co then R.subs[co] = nil end
      end)
      if coroutine.status(co) == "suspended" then R.subs[co] = rec end
    else
      body("a" .. a.id)
    end
  elseif what <= 7 then
    local id = #rec.cbs + 1
    local entry = { calls = 0 }
    rec.cbs[id] = entry
    local inside = true
    local ok = call(fmt("a%d notice%d:on_free(fn%d)", a.id, rec.id, id), nil, function()
      return n:on_free(function(code)
        check(not inside, "notice:on_free's fn ran inside on_free")
        entry.calls = entry.calls + 1
        trace(fmt("notice%d fn%d(%s)", rec.id, id, show(code)))
        check(entry.calls == 1, "notice%d: on_free fn%d ran %d times", rec.id, id, entry.calls)
        check(code == nil or code == "canceled" or code == "closed" or code == "removed",
          "notice:on_free fn got %s", show(code))
        if chance(0.1) then
          F.intended = F.intended + 1
          error(INTENDED .. " on_free")
        end
      end)
    end)
    inside = false
    if ok then rec.last_cb = entry end
  elseif what <= 9 then
    local ok, r = call(fmt("a%d notice%d:cancel()", a.id, rec.id), nil, function()
      return n:cancel()
    end)
    if ok then
      check(type(r[2]) == "boolean", "notice:cancel returned %s", show(r[2]))
      if r[2] then rec.cancelled = true end
    end
  else
    trace(fmt("a%d drops notice%d", a.id, rec.id))
    for i, x in ipairs(R.notices) do if x == rec then table.remove(R.notices, i) break end end
    rec.dropped = true
  end
end

local function op_with(a)
  local pool = R.pool
  local peer = chance(0.3) and nil or gen_peer_arg()
  local opts = gen_acquire_opts()
  local fate = pick { "ok", "ok", "raise", "raise_table", "sleep", "release_inside" }
  local captured
  local err_value = fate == "raise_table" and { INTENDED } or (INTENDED .. " with")
  local function fn(conn)
    captured = conn
    check(is_conn(conn), "with: fn got %s", show(conn))
    local srv, port = srv_of(conn.peer)
    if srv and srv.kind == "echo" then
      local tok = new_token(port)
      conn:send(tok .. "\n")
      local line = conn:receive()
      if line then check_echo_line(port, line, srv) end
    end
    if fate == "raise" or fate == "raise_table" then error(err_value, 0) end
    if fate == "sleep" then sleep(rnd(10)) end
    if fate == "release_inside" then conn:release() end
    return 1, nil, 3
  end
  local args = peer == nil and chance(0.5) and pack(fn, opts) or pack(peer, fn, opts)
  local rule = pool_rule() or ((fate == "raise" or fate == "raise_table") and { any = true }) or nil
  local ok, r = call(fmt("a%d with(%s, fn:%s, %s)", a.id, show(peer), fate, show(opts)), rule,
    function() return pool:with(unpack(args, 1, args.n)) end)
  if not ok then
    if rule and rule.any then
      if captured then
        check(r == err_value, "with: fn's error came back as %s", show(r))
      end
    end
  else
    if r[2] == nil then
      check(valid_code(r[3]) and not captured, "with answered nil, %s", show(r[3]))
      if r[3] == "busy" then take_notice(r[4]) end
    else
      check(r[2] == 1 and r[3] == nil and r[4] == 3 and r.n == 4,
        "with: fn's results came back as %s", show_results(r))
    end
  end
  if captured and not SKIP.with_check then
    local ok2, e = pcall(function() return captured:send("x") end)
    check(not ok2 and tostring(e):find(RELEASED, 1, true),
      "with: the conn is still usable after with returned (%s)", ok2 and "send worked" or show(e))
  end
end

local function op_stats()
  local pool = R.pool
  local which = rnd(7)
  if which == 1 then
    local ok, r = call("stats()", pool_rule(), function() return pool:stats() end)
    if ok then check_stats(r[2]) end
  elseif which == 2 then
    local labels = pick(L(nil, { pool = "fuzz" }, { a = 1, b = "x\"y\\z\n" }))
    local ok, r = call(fmt("metrics(%s)", show(labels)), pool_rule(),
      function() return pool:metrics(labels) end)
    if ok then check_metrics(r[2]) end
  elseif which == 3 then
    local ok, r = call("peers()", pool_rule(), function() return pool:peers() end)
    if ok then for _, v in ipairs(r[2]) do check_peer_view(v, "peers()") end end
  elseif which == 4 then
    local addr = pick(R.peer_list).spelling
    local ok, r = call(fmt("peer(%s)", show(addr)), pool_rule(), function() return pool:peer(addr) end)
    if ok and r[2] ~= nil then check_peer_view(r[2], "peer()") end
  elseif which == 5 then
    call("tostring(pool)", nil, function() return tostring(pool) end)
  elseif which == 6 then
    local ok, r = call("peerpool.pools()", nil, function() return peerpool.pools() end)
    if ok then
      local found = false
      for _, p in ipairs(r[2]) do if p == pool then found = true end end
      check(found == not pool_gone(), "peerpool.pools() %s the pool (closed: %s, draining: %s)",
        found and "lists" or "misses", tostring(R.closed_at ~= nil), tostring(R.draining))
    end
  else
    check_kernel("op")
  end
end

local function op_add_peer()
  local pool = R.pool
  local srv = pick(F.servers)
  -- (a name not under fz.test would still be asked of the fuzzer's own DNS server)
  local c = rnd(10)
  local addr = c <= 6 and srv.addr or c <= 8 and name_peer(srv) or pick { "garbage", "",
    "127.0.0.1", "127.0.0.1:99999", "[::1", "nx.fz.test:80", "bad..name:80", string.rep("9", 300),
    "unix:", "unix:/nonexistent/fuzz.sock", "./fuzz-relative.sock", "[::1]:" .. F.unused_port }
  local last_seen = pick(L(nil, nil, 0, os.time() * 1000, 1, math.maxinteger,
    (os.time() - 7200) * 1000, os.time()))
  local tags = pick(L(nil, nil, { zone = "a" }, {}, { weight = 3, tls = { server_name = "x y" } }))
  local rule = pool_rule()
  if not rule and last_seen and last_seen > 0 and last_seen < 100000000000 then
    rule = { raise = { "looks like seconds" } } -- a last_seen in seconds (os.time()) raises
  end
  local ok, r = call(fmt("add_peer(%s, %s, %s)", show(addr), show(last_seen), show(tags)),
    rule, function() return pool:add_peer(addr, last_seen, tags) end)
  if not ok then return end
  if r[2] then
    check(type(r[2]) == "string", "add_peer returned %s", show(r[2]))
    local port = tonumber(r[2]:match(":(%d+)$"))
    if port and F.by_port[port] and not R.peer_set[r[2]] then
      R.peer_set[r[2]] = { port = port }
      R.peer_list[#R.peer_list + 1] = { addr = r[2], spelling = addr }
    end
  else
    check((r[3] == "invalid" or R.closed_at and r[3] == "closed") and type(r[4]) == "string",
      "add_peer answered %s", show_results(r))
  end
end

local function state_handler(view, from, to)
  R.state_events = R.state_events + 1
  if not SKIP.state_check then
    check(type(view) == "table" and type(view.addr) == "string", "state event view %s", show(view))
    check(STATES[from] and STATES[to], "state event %s -> %s", show(from), show(to))
    check(from ~= to, "state event from %s to itself (%s)", from, view.addr)
  end
  local x = rnd(20)
  if x == 1 then
    F.intended = F.intended + 1
    error(INTENDED .. " state handler")
  elseif x == 2 then
    collectgarbage()
  elseif x == 3 and R.pool and not R.closed_at then
    check_stats(R.pool:stats())
  end
end

local function op_on()
  local pool = R.pool
  call("on('state', fn)", pool_rule(), function() return pool:on("state", state_handler) end)
end

local function op_load_policy()
  local pool = R.pool
  local p = make_policy()
  local rule = pool_rule()
  if rule and SKIP.closed_load_policy then rule = { may = rule.raise } end
  if not rule and type(p) ~= "string" and type(p) ~= "table" then
    rule = { raise = { "bad argument #1 to 'load_policy'" } }
  end
  local ok, r = call(fmt("load_policy(%s)", show(p)), rule,
    function() return pool:load_policy(p) end)
  if ok then
    check(r[2] == true or (r[2] == nil and type(r[3]) == "string"),
      "load_policy answered %s", show_results(r))
  end
end

-- Bad arguments: each must raise an error naming the argument (or return the error tuple
-- its contract gives), never crash.
local function op_bad_call(a)
  local pool = R.pool
  local rec = any_conn()
  local cases = {
    function() return "acquire(peer=number)", { "bad argument #1 to 'acquire'" },
      function() return pool:acquire(pick { 1, true, 2.5 }) end end,
    function() return "acquire(peer, opts=string)", { "bad argument #2 to 'acquire'" },
      function() return pool:acquire(nil, "x") end end,
    function() return "acquire(peer, opts, cb=number)", { "bad argument #3 to 'acquire'" },
      function() return pool:acquire(nil, {}, 5) end end,
    function() local v = pick { "waiT", 1, true, {} }
      return "acquire busy=" .. show(v), { "opts.busy" },
      function() return pool:acquire(nil, { busy = v }, function() end) end end,
    function() local v = pick { -1, "abc", 0 / 0, 1 / 0, -1 / 0, 1e300, true, {} }
      return "acquire timeout=" .. show(v), { "opts.timeout" },
      function() return pool:acquire(nil, { timeout = v }, function() end) end end,
    function() local v = pick { 8, -1, 1.5, "1", 2 ^ 53, math.mininteger }
      return "acquire priority=" .. show(v), { "opts.priority" },
      function() return pool:acquire(nil, { priority = v }, function() end) end end,
    function() local v = pick { 1, {}, true }
      return "acquire key=" .. show(v), { "opts.key" },
      function() return pool:acquire(nil, { key = v }, function() end) end end,
    function() local k = pick { "timout", "peer", 1, "addr" }
      return "acquire opts with unknown key " .. show(k), { "unknown option" },
      function() return pool:acquire(nil, { [k] = 1 }, function() end) end end,
    function() return "acquire(view with addr=5)", { "unknown option" },
      function() return pool:acquire({ addr = 5 }, function() end) end end,
    function() return "pool.acquire(wrong self)", { "bad argument #1 to 'acquire'" },
      function() local x = pick { 1, rec and rec.conn or 2 }
        return pool.acquire(x) end end,
    function() local v = pick { {}, true, print }
      return "add_peer(" .. show(v) .. ")", { "bad argument #1 to 'add_peer'" },
      function() return pool:add_peer(v) end end,
    function() local v = pick { 1.5, -1, "now", {}, os.time(), 1, 99999999999 }
      return "add_peer(addr, last_seen=" .. show(v) .. ")", { "bad argument #2 to 'add_peer'" },
      function() return pool:add_peer("127.0.0.1:1", v) end end,
    function() return "add_peer(addr, nil, tags=5)", { "bad argument #3 to 'add_peer'" },
      function() return pool:add_peer("127.0.0.1:1", nil, 5) end end,
    function() return "peer({})", { "bad argument #1 to 'peer'" },
      function() return pool:peer({}) end end,
    function() return "on('nope', fn)", { "bad argument #1 to 'on'" },
      function() return pool:on("nope", print) end end,
    function() return "on('state', 5)", { "bad argument #2 to 'on'" },
      function() return pool:on("state", 5) end end,
    function() return "metrics(5)", { "bad argument #1 to 'metrics'" },
      function() return pool:metrics(5) end end,
    not SKIP.metrics_labels and function() return "metrics({[1]=..})", { "bad argument #1 to 'metrics'", "label" },
      function() return pool:metrics({ "x", y = "z" }) end end,
    function() return "with(peer, 5)", { "bad argument #2 to 'with'" },
      function() return pool:with(nil, 5) end end,
    function() return "load_policy(5)", { "bad argument #1 to 'load_policy'" },
      function() return pool:load_policy(5) end end,
    function() return "peerpool.run(5)", { "bad argument #1 to 'run'" },
      function() return peerpool.run(5) end end,
    function() return "peerpool.spawn(5)", { "bad argument #1 to 'spawn'" },
      function() return peerpool.spawn(5) end end,
    function() return "peerpool.strerror({})", { "bad argument #1 to 'strerror'" },
      function() return peerpool.strerror({}) end end,
    function() return "peerpool.on_error(5)", { "bad argument #1 to 'on_error'" },
      function() return peerpool.on_error(5) end end,
    function() return "peerpool.new(5)", { "bad argument #1 to 'new'" },
      function() return peerpool.new(5) end end,
  }
  if rec then
    local extra = {
      function() return "send(" .. "{}" .. ")", { "bad argument #1 to 'send'", RELEASED },
        function() return rec.conn:send(pick(L({}, nil, true))) end end,
      function() local v = pick { -5, 1.5, "*x", {}, "*", math.mininteger }
        return "receive(" .. show(v) .. ")", { "bad argument #1 to 'receive'", RELEASED,
          "a receive is already waiting on this conn" },
        function() return rec.conn:receive(v) end end,
      function() return "conn.send(pool)", { "bad argument #1 to 'send'" },
        function() return rec.conn.send(pool, "x") end end,
      function() return "conn.release(5)", { "bad argument #1 to 'release'" },
        function() return rec.conn.release(5) end end,
    }
    for _, e in ipairs(extra) do cases[#cases + 1] = e end
  end
  if #R.notices > 0 then
    local n = pick(R.notices).notice
    cases[#cases + 1] = function()
      local v = pick { -1, "abc", 0 / 0, {} }
      return "notice:wait(" .. show(v) .. ")", { "ms" }, function() return n:wait(v) end
    end
    cases[#cases + 1] = function()
      return "notice:on_free(5)", { "bad argument #1 to 'on_free'" },
        function() return n:on_free(5) end
    end
  end
  local usable = {}
  for _, c in ipairs(cases) do if c then usable[#usable + 1] = c end end
  local desc, pats, f = pick(usable)()
  local rule = { raise = pats }
  if R.closed_at then rule.raise[#rule.raise + 1] = CLOSED_POOL end
  call(fmt("a%d bad: %s", a.id, desc), rule, f)
end

-- Calls that are valid but unusual, with the contract's answer.
local function op_odd_valid(a)
  local pool = R.pool
  local which = rnd(SKIP.private and 6 or 7)
  if which == 1 then
    local v = pick { "garbage", "", "127.0.0.1:0", "[::1", string.rep("1", 5000) }
    local ok, r = call(fmt("a%d add_peer(%s)", a.id, show(v)), pool_rule(),
      function() return pool:add_peer(v) end)
    if ok then check(r[2] == nil and (r[3] == "invalid" or R.closed_at and r[3] == "closed"),
      "add_peer(%s) answered %s", show(v), show_results(r)) end
  elseif which == 2 then
    local ok, r = call(fmt("a%d strerror", a.id), nil, function()
      return peerpool.strerror(pick { "busy", "ECONNREFUSED", "nope", "ok", "" })
    end)
    if ok then check(type(r[2]) == "string", "strerror answered %s", show(r[2])) end
  elseif which == 3 then
    local v = F.kept_views[#F.kept_views]
    if v then
      call(fmt("a%d read a kept view", a.id), { raise = { "valid only during the hook call" } },
        function() return v.addr end)
      call(fmt("a%d tostring(kept view)", a.id), nil, function() return tostring(v) end)
    end
  elseif which == 4 then
    local e = F.kept_hook_conns[#F.kept_hook_conns]
    if e then
      local pats = { HOOK_CONN_GONE, RELEASED }
      call(fmt("a%d use a kept hook conn (hook %s)", a.id, e.done and "returned" or "running"),
        e.done and { raise = pats } or { may = pats }, function() return e.conn:send("x") end)
    end
  elseif which == 7 then
    -- private methods, reachable from Lua: bad arguments raise cleanly, odd uses are harmless
    local e = F.kept_hook_conns[#F.kept_hook_conns]
    local cases = {
      function() return "pool:_add_peer({})", { raise = { "bad argument", CLOSED_POOL } },
        function() return pool:_add_peer({}, nil, nil, "x") end end,
      function() return "pool:_hook_error('nope')", { may = { CLOSED_POOL } },
        function() return pool:_hook_error("nope", "x") end end,
      function() return "pool:_every(0)", { raise = { "bad argument", CLOSED_POOL } },
        function() return pool:_every(0, print) end end,
      function() return "peerpool._canonical({})", { raise = { "bad argument" } },
        function() return peerpool._canonical({}) end end,
      function() return "peerpool._canonical(long)", nil,
        function() return peerpool._canonical(string.rep("9", 1000) .. ":1") end end,
    }
    if e and not e.done then
      cases[#cases + 1] = function()
        F.meddled_hooks = true -- the hook's later uses of its conn raise "released"
        return "kept hook conn:_done(" .. tostring(chance(0.5)) .. ") while its hook runs",
          nil, function() return e.conn:_done(chance(0.5)) end
      end
    end
    local desc, rule, f = pick(cases)()
    call(fmt("a%d %s", a.id, desc), rule, f)
  elseif which == 5 then
    local old = F.old[#F.old]
    if old then
      if old.pool then
        call(fmt("a%d old pool:stats()", a.id), { raise = { CLOSED_POOL } },
          function() return old.pool:stats() end)
        call(fmt("a%d old pool:close()", a.id), nil, function() return old.pool:close() end)
      end
      if old.conn then
        local ok, r = call(fmt("a%d old conn:send", a.id), { may = { RELEASED } },
          function() return old.conn:send("x\n") end)
        if ok then check(r[2] == nil and r[3] == "closed", "send on a conn of a closed pool " ..
          "answered %s", show_results(r)) end
        call(fmt("a%d old conn:release", a.id), nil, function() return old.conn:release() end)
      end
    end
  else
    -- nested run inside the running loop: returns at once with the coroutine
    local done = false
    local ok, r = call(fmt("a%d nested peerpool.run", a.id), nil, function()
      return peerpool.run(function() sleep(1) done = true end)
    end)
    if ok then check(type(r[2]) == "thread", "peerpool.run inside the loop returned %s",
      show(r[2])) end
    local _ = done
  end
end

local function op_side(a)
  local side = R.side
  if not side then return end
  local ok, r = call(fmt("a%d side acquire", a.id), R.side_closed and { raise = { CLOSED_POOL } },
    function() return side:acquire(nil, { timeout = 50 }) end)
  if ok and r[2] then
    if chance(0.5) then sleep(rnd(5)) end
    call("side release", nil, function() return r[2]:release() end)
  end
  if chance(0.05) and not R.side_closed then
    R.side_closed = true
    call("side close", nil, function() return side:close() end)
  end
end

-- pool:request on a framed pool (line framing, the side echo server): each call ends exactly
-- once, with its own token line back (never another call's reply, pipelined or not), or a code;
-- a caller resumed by hand or closed while it waits owes nothing, and its next request gets
-- its own reply (the per-wait proof of lwait.c; call records reused from a free list).
-- Start `co` (an op's coroutine that waits in the API) and, by `style`, resume it by hand
-- while it still waits ("meddle": the wait must answer what the resumer passed, and a late
-- answer must not reach its next wait) or close it ("close"). `what` names it in failures.
-- Returns "closed" when it closed the coroutine.
local function drive_waiter(co, style, what)
  F.ops = F.ops + 1
  local ok, err = coroutine.resume(co)
  check(ok, "%s raised %s", what, show(err))
  if coroutine.status(co) ~= "suspended" then return end
  if style == "meddle" then
    if chance(0.5) then sleep(rnd(3)) end
    if coroutine.status(co) == "suspended" then
      ok, err = coroutine.resume(co, "meddled", "junk")
      check(ok, "meddled %s raised %s", what, show(err))
    end
  elseif style == "close" then
    coroutine.close(co)
    return "closed"
  end
end

local function op_request(a)
  local fp = R.framed
  if not fp then return end
  R.req_n = R.req_n + 1
  local e = { id = R.req_n, calls = 0 }
  R.requests[#R.requests + 1] = e
  local style = wpick { { 6, "plain" }, { 1, "meddle" }, { 1, "close" }, { 1, "pcall" } }
  local function one(tag)
    local tok = fmt("R%dn%d%s\n", SEED, e.id, tag)
    local r
    if style == "pcall" then
      r = pack(pcall(fp.request, fp, nil, tok))
      check(r[1] or tostring(r[2]):find(CLOSED_POOL, 1, true), "request raised %s", show(r[2]))
      r = pack(select(2, unpack(r, 1, r.n)))
    else
      local ok, err = pcall(function() r = pack(fp:request(nil, tok)) end)
      check(ok or tostring(err):find(CLOSED_POOL, 1, true), "request raised %s", show(err))
      if not ok then r = pack(nil, "closed") end
    end
    if r[1] == "meddled" then return r end
    if r[1] ~= nil then
      check(r[1] == tok, "request r%d %s got the reply %s", e.id, show(tok), show(r[1]))
    else
      check(valid_code(r[2]), "request r%d answered nil, %s", e.id, show(r[2]))
    end
    return r
  end
  local co = coroutine.create(function()
    local r = one("a")
    e.calls = e.calls + 1
    check(e.calls == 1, "request r%d ended %d times", e.id, e.calls)
    if r[1] == "meddled" then one("b") end -- its next wait gets its own reply, not the first's
    e.done = true
  end)
  trace(fmt("a%d request r%d (%s)", a.id, e.id, style))
  if drive_waiter(co, style, fmt("request r%d", e.id)) == "closed" then e.done = true end
end

-- remove_peer / drain: a peer out of service. Its leased conns serve on after removal, out of
-- pool:peers(): the kernel check allows for them (a ghost entry per removal, see peer_limit).
local function op_remove_peer(a)
  if #R.peer_list == 0 or not chance(0.5) then return end
  local p = pick(R.peer_list)
  local drain = chance(0.4)
  local verb = drain and "drain" or "remove_peer"
  local rule = pool_rule()
  local ok, r = call(fmt("a%d %s(%s)", a.id, verb, show(p.addr)), rule,
    function() return R.pool[verb](R.pool, p.addr) end)
  if not ok or rule then return end
  if r[2] == true then
    local port = R.peer_set[p.addr] and R.peer_set[p.addr].port
    if not drain and port then
      R.removed_n = (R.removed_n or 0) + 1
      R.peer_set[p.addr .. "#removed" .. R.removed_n] = { port = port }
      R.removed_ports[port] = true
    end
  else
    check(r[2] == nil and (r[3] == "no_peer" or R.closed_at and r[3] == "closed") and
      type(r[4]) == "string", "%s of a peer answered %s", verb, show_results(r))
  end
end

local function op_close_pool(a)
  if R.draining and not R.drain_over and chance(0.3) then -- a second close during the drain
    if chance(0.5) then graceful_close(fmt("a%d during the drain:", a.id), true)
    else plain_close(fmt("a%d during the drain:", a.id)) end
    return
  end
  if not may_close() or not chance(0.3) then return end
  if chance(0.5) then graceful_close(fmt("a%d mid-flight:", a.id), true)
  else plain_close(fmt("a%d mid-flight:", a.id)) end
end

-- peerpool.sleep: each sleep lasts at least its ms and returns nothing; a sleeper resumed by
-- hand (meddle) gets what the program passed, and that sleep's timer never ends its next sleep
-- early (the per-wait proof of lwait.c); one closed while it sleeps is gone, timer and all.
local function op_sleep(a)
  local style = wpick { { 4, "plain" }, { 1, "meddle" }, { 1, "close" } }
  local ms = rnd(7) - 1
  local co = coroutine.create(function()
    local t0 = uv.hrtime()
    local r = pack(peerpool.sleep(ms))
    if r[1] == "meddled" then
      check(r.n == 2 and r[2] == "junk", "a%d meddled sleep returned %s", a.id, show_results(r))
      ms, t0 = rnd(6), uv.hrtime()
      r = pack(peerpool.sleep(ms))
    end
    local took = (uv.hrtime() - t0) / 1e6
    check(r.n == 0, "a%d sleep(%d) returned %s", a.id, ms, show_results(r))
    check(took >= ms, "a%d sleep(%d) ended after %.2f ms", a.id, ms, took)
  end)
  trace(fmt("a%d sleep(%d) (%s)", a.id, ms, style))
  drive_waiter(co, style, fmt("a%d sleep", a.id))
end

local ACTOR_OPS, OP_NAMES = {}, {}
do
  local ops = {
    { 22, op_acquire_co, "acquire_co" }, { 14, op_acquire_cb, "acquire_cb" },
    { 14, op_send, "send" }, { 14, op_receive, "receive" }, { 10, op_release, "release" },
    { 3, op_drop, "drop" }, { 3, op_gc, "gc" }, { 6, op_notice, "notice" }, { 5, op_with, "with" },
    { 6, op_stats, "stats" }, { 2, op_add_peer, "add_peer" }, { 1, op_on, "on" },
    { 2, op_load_policy, "load_policy" }, { 5, op_bad_call, "bad_call" },
    { 3, op_odd_valid, "odd_valid" }, { 2, op_abandon, "abandon" }, { 2, op_side, "side" },
    { 1, op_close_pool, "close_pool" }, { 4, op_acquire_sub, "acquire_sub" },
    { 2, op_dying_receiver, "dying_receiver" }, { 1, op_meddle, "meddle" },
    { 1, op_remove_peer, "remove_peer" }, { 4, op_request, "request" },
    { 2, op_sleep, "sleep" },
  }
  -- FUZZ_OPS=name,name: only these ops (to narrow a failure down); FUZZ_SKIP names work too
  local only
  if (getenv "FUZZ_OPS" or "") ~= "" then
    only = {}
    for w in getenv("FUZZ_OPS"):gmatch("[^,%s]+") do only[w] = true end
  end
  for _, e in ipairs(ops) do
    if (not only or only[e[3]]) and not SKIP[e[3]] then ACTOR_OPS[#ACTOR_OPS + 1] = e end
    OP_NAMES[e[2]] = e[3]
  end
end

local function actor(a)
  while not R.stopping do
    local op = wpick(ACTOR_OPS)
    F.op_counts[op] = (F.op_counts[op] or 0) + 1
    exit_if_failed()
    op(a)
    sleep(chance(0.5) and 0 or rnd(6))
  end
  -- hand back (or keep) what it holds
  for _, rec in ipairs(a.held) do
    if not rec.released and not rec.dropped and chance(0.5) then
      call(fmt("a%d release at the end", a.id), nil, function() return rec.conn:release() end)
      mark_released(rec)
    end
  end
  a.done = true
end

-- ---- rounds ----------------------------------------------------------------------------------

local function make_pool()
  -- sometimes a failed attempt first: it must raise naming the option, and leave nothing open
  if chance(0.3) then
    local o = gen_options()
    o.policy, o.address_book = nil, nil
    local pats, tag = pick(BAD_OPTIONS)(o)
    local before = #peerpool.pools()
    if not SKIP[tag] then call("peerpool.new(bad " .. show(o) .. ")", { raise = pats }, function() return peerpool.new(o) end)
    if not SKIP.new_leak then
      check(#peerpool.pools() == before, "a peerpool.new that raised left a pool open (%d -> %d)",
        before, #peerpool.pools())
    end
    end
  end
  while true do
    local o = gen_options()
    if getenv "FUZZ_OPTIONS" then
      -- FUZZ_OPTIONS='{ max_per_peer = 1 }': these options in every round (to narrow a
      -- failure down); "nil" removes a generated one
      local forced = assert(load("return " .. getenv "FUZZ_OPTIONS", "=FUZZ_OPTIONS", "t", {}))()
      if forced.only then o = {} end
      for k, v in pairs(forced) do if k ~= "only" then o[k] = v ~= "nil" and v or nil end end
      -- (but never the system's resolver: tests send traffic to loopback only)
      o.dns_servers = o.dns_servers or { F.dns.addr }
    end
    if o.address_book and chance(0.3) then
      local f = io.open(F.book_path, "w")
      f:write(pick { "garbage line\n", F.servers[1].addr ..
        (SKIP.book_seconds and " 1767225600000 runtime\n" or " 123 runtime\n"), "",
        "# peerpool address book v2\n" .. F.servers[2].addr .. " 1767225600000 static a=1,b.c=%41\n",
        "# peerpool address book v9\n" })
      f:close()
    end
    if SKIP.policy_option and type(o.policy) ~= "table" and type(o.policy) ~= "string" then
      o.policy = nil
    end
    local ok, r = call("peerpool.new(" .. show(o) .. ")",
      { may = { "peerpool.new: policy", "peerpool.new: option 'policy'" } },
      function() return peerpool.new(o) end)
    if ok then
      R.pool = r[2]
      R.opts = o
      R.max_per_peer = o.max_per_peer or 4
      R.max_total = o.max_total or 256
      R.client_limit = o.client_limit or 1
      R.acquire_timeout = o.acquire_timeout or 30000
      R.io_timeout = o.io_timeout or 30000
      R.max_receive = o.max_receive or 1024 * 1024
      for _, addr in ipairs(o.peers or {}) do
        if not R.peer_set[addr] then
          R.peer_set[addr] = { port = tonumber(addr:match(":(%d+)$")) }
          R.peer_list[#R.peer_list + 1] = { addr = addr, spelling = addr }
        end
      end
      return
    end
  end
end

local function add_peers()
  local n = rnd(#F.servers)
  local kinds -- FUZZ_KINDS=kind,kind: peers of these servers only
  if (getenv "FUZZ_KINDS" or "") ~= "" then
    kinds = {}
    for w in getenv("FUZZ_KINDS"):gmatch("[^,%s]+") do kinds[w] = true end
  end
  for _ = 1, n do
    local srv = pick(F.servers)
    if kinds then
      local list = {}
      for _, x in ipairs(F.servers) do if kinds[x.kind] then list[#list + 1] = x end end
      srv = pick(list)
    end
    local spelling = srv.addr
    local s = rnd(10)
    if s == 1 then spelling = "127.0.0.1:000" .. srv.port
    elseif s == 2 then spelling = "[::ffff:127.0.0.1]:" .. srv.port
    elseif s <= 4 then spelling = name_peer(srv) end
    local last_seen = pick(L(nil, nil, nil, 0, (os.time() - 4 * 3600) * 1000, math.maxinteger))
    local ok, r = call(fmt("add_peer(%s, %s)", show(spelling), show(last_seen)), nil,
      function() return R.pool:add_peer(spelling, last_seen, chance(0.3) and { kind = srv.kind } or nil) end)
    if ok and r[2] and not R.peer_set[r[2]] then
      R.peer_set[r[2]] = { port = srv.port }
      R.peer_list[#R.peer_list + 1] = { addr = r[2], spelling = spelling }
    end
  end
  if #R.peer_list == 0 then
    local addr = R.pool:add_peer(F.servers[1].addr)
    R.peer_set[addr] = { port = F.servers[1].port }
    R.peer_list[1] = { addr = addr, spelling = addr }
  end
end

local function pending_dump()
  local lines = {}
  for id, acq in pairs(R.acquires) do
    if acq.pending and not acq.void and not acq.abandoned then
      lines[#lines + 1] = fmt("acquire #%d (%s) of %s %s started %.0f ms ago", id, acq.style,
        show(acq.peer), show(acq.opts), clock() - acq.started)
    end
  end
  for _, a in ipairs(R.actors) do
    if not a.done then lines[#lines + 1] = fmt("actor a%d still running", a.id) end
  end
  for _, rec in ipairs(R.notices) do
    if rec.waiting then lines[#lines + 1] = fmt("notice%d: %s waits", rec.id, rec.waiting) end
    if rec.last_cb and rec.last_cb.calls == 0 then
      lines[#lines + 1] = fmt("notice%d: its on_free fn never ran", rec.id)
    end
  end
  for _, rec in ipairs(R.conns) do
    if rec.receiving then lines[#lines + 1] = fmt("c%d: %s waits in receive", rec.id, rec.receiving) end
    if rec.sending then lines[#lines + 1] = fmt("c%d: a send waits", rec.id) end
  end
  for i, e in ipairs(R.send_cbs) do
    if not e.never and e.calls == 0 then
      lines[#lines + 1] = fmt("send callback %d (c%d) never ran", i, e.rec.id)
    end
  end
  for _, e in ipairs(R.requests) do
    if not e.done then lines[#lines + 1] = fmt("request r%d never ended", e.id) end
  end
  for _, e in ipairs(R.drains) do
    if e.calls == 0 then lines[#lines + 1] = fmt("%s: the graceful close never ended", e.desc) end
  end
  table.sort(lines)
  return table.concat(lines, "\n  ")
end

local function settled()
  for _, acq in pairs(R.acquires) do
    if acq.pending and not acq.void and not acq.abandoned then return false end
  end
  for _, a in ipairs(R.actors) do if not a.done then return false end end
  for _, rec in ipairs(R.notices) do
    if rec.waiting then return false end
    if rec.last_cb and rec.last_cb.calls == 0 and not SKIP.on_free_check then return false end
  end
  for _, rec in ipairs(R.conns) do if rec.receiving or rec.sending then return false end end
  for _, e in ipairs(R.send_cbs) do
    if not e.never and e.calls == 0 and not SKIP.send_callback_check then return false end
  end
  for _, e in ipairs(R.requests) do if not e.done then return false end end
  for _, e in ipairs(R.drains) do if e.calls == 0 then return false end end
  return true
end

local function run_round(n, budget, live)
  local pools_before = #peerpool.pools()
  R = { n = n, acquires = {}, conns = {}, notices = {}, actors = {}, subs = {}, peer_set = {},
    removed_ports = {}, send_cbs = {}, requests = {}, req_n = 0, drains = {},
    peer_list = {}, leaked = 0, state_events = 0 }
  F.rounds = n
  R.baseline_inodes = procfs.snapshot(F.server_ports, {}, F.ignore_ports).inodes
  R.baseline_other = procfs.snapshot(F.server_ports, {}, F.ignore_ports).other
  make_pool()
  R.may_close = chance(0.25)
  R.chaos_reporter = chance(0.3)
  R.close_after = uv.now() + budget * 0.6
  local keys = {}
  for k, v in pairs(R.opts) do keys[#keys + 1] = k .. "=" .. (type(v) == "table" and show(v) or tostring(v)) end
  table.sort(keys)
  R.opts_text = "{" .. table.concat(keys, ",") .. "}"
  trace(fmt("round %d: %s, budget %d ms", n, R.opts_text, budget))
  add_peers()
  if chance(0.3) then call("on('state')", nil, function() return R.pool:on("state", state_handler) end) end
  if chance(0.3) then
    R.side = peerpool.new { max_per_peer = 1, dns_servers = { F.dns.addr } }
    R.side_port = F.side_srv.port
    R.side:add_peer(F.side_srv.addr)
  end
  if chance(0.4) and not SKIP.request then
    R.side_port = F.side_srv.port
    R.framed = peerpool.new { framing = "line", max_per_peer = 1, client_limit = rnd(8),
      dns_servers = { F.dns.addr },
      io_timeout = pick { 0, 50, 500, 2000 }, peers = { F.side_srv.addr } }
  end
  for i = 1, 2 + rnd(6) do
    local a = { id = i, held = {} }
    R.actors[i] = a
    spawn("actor " .. i, actor, a)
  end
  -- The sampler: a timer every 11 ms; with FUZZ_SKIP=loop_clock (finding F13) a check handle
  -- (at most every 11 ms) instead, so that no timer of the driver's is due in every pass.
  local sampler = SKIP.loop_clock and uv.new_check() or uv.new_timer()
  handles[sampler] = true
  local last_sample = 0
  local function sample()
    exit_if_failed()
    if STALL_MS and clock() - F.started_at > 1000 then
      trace(fmt("the process stalls for %d ms (FUZZ_STALL_MS)", STALL_MS))
      local t0 = clock()
      while clock() - t0 < STALL_MS do end
      STALL_MS = nil
    end
    -- timers keep firing, but does the loop get past its timer phase? (finding F13)
    -- A healthy loop fires the sampler at most twice between two check phases (uv.run("once")
    -- ends with a timer phase, and the next call starts with one).
    local now = clock()
    -- One long callback (a slow op, a descheduled process on a loaded machine) is one gap and
    -- one sample, not a timer phase that never ends: that takes timers firing again and again.
    if F.check_n ~= R.seen_check_n then
      R.seen_check_n, R.seen_check_at, R.samples_since_check = F.check_n, now, 0
    elseif R.seen_check_at then
      R.samples_since_check = R.samples_since_check + 1
      if now - R.seen_check_at > 300 * SLOW and R.samples_since_check >= 8 and
        not SKIP.phase_check then
        fail(fmt("the loop has not reached its check phase for %.0f ms while timers kept " ..
          "firing (%d samples; the timer phase never ends: deferred answers and I/O starve)",
          now - R.seen_check_at, R.samples_since_check))
      end
    end
    check_kernel("sampler")
    -- an acquire still waiting well past its deadline (while the loop kept turning)
    if not SKIP.deadline then
      for id, acq in pairs(R.acquires) do
        if acq.pending and acq.deadline and not acq.abandoned and not acq.void then
          local late = lateness(acq.deadline)
          check(late <= MARGIN, "acquire #%d (timeout %s) is still waiting %.0f ms after its " ..
            "deadline (time the loop lost meanwhile: %.0f ms)", id, show(acq.opts and
            acq.opts.timeout or R.acquire_timeout), clock() - acq.deadline,
            max_stall(acq.deadline, clock()))
        end
      end
    end
  end
  if SKIP.loop_clock then
    sampler:start(function()
      local now = clock()
      if now - last_sample < 11 then return end
      last_sample = now
      sample()
    end)
  else
    sampler:start(7, 11, sample)
  end
  sleep(budget)
  if live then
    -- the program ends here, with the pool, its conns, waits and hooks all live: lua_close
    -- must take them down cleanly (the sentinel closes the pools before luv's loop goes)
    trace("round end: abrupt (lua_close with everything live)")
    return
  end
  R.stopping = true
  if getenv "FUZZ_STATS" and not R.closed_at then -- (FUZZ_STATS: what the names did)
    local ok, st = pcall(R.pool.stats, R.pool)
    if ok then
      F.dns_stats = F.dns_stats or { queries = 0, failures = 0, moved = 0 }
      F.dns_stats.queries = F.dns_stats.queries + (st.dns_queries or 0)
      F.dns_stats.failures = F.dns_stats.failures + (st.dns_failures or 0)
      F.dns_stats.moved = F.dns_stats.moved + (st.closed and st.closed.dns or 0)
    end
  end
  -- end of the round: close the pool (or forget it and let the collector close it)
  local mode = pick { "close", "close", "close", "graceful", "forget", "drain" }
  trace("round end: " .. mode)
  if mode == "graceful" or mode == "forget" then
    wait_until(function()
      for _, a in ipairs(R.actors) do if not a.done then return false end end
      return true
    end, 500 * SLOW)
  end
  if mode == "forget" and not R.closed_at then
    local weak = setmetatable({ pool = R.pool }, { __mode = "v" })
    R.pool = nil
    for _, rec in ipairs(R.conns) do
      if not rec.released and not rec.dropped then R.leaked = R.leaked + 1 end
      rec.conn = nil
      rec.dropped = true
    end
    for _, rec in ipairs(R.notices) do rec.notice = nil end
    for _, a in ipairs(R.actors) do a.held = {} end
    collectgarbage()
    collectgarbage()
    ticks(3)
    collectgarbage()
    if weak.pool then
      trace("the forgotten pool is still alive (something waits on it): closing it")
      R.pool = weak.pool
    else
      R.closed_at = uv.now()
      trace("the forgotten pool was collected")
    end
  end
  if mode == "drain" and not R.closed_at then
    graceful_close("round end:", true) -- leases still held keep working for drain_ms
    if chance(0.3) then
      if chance(0.5) then graceful_close("round end, again:", true)
      else plain_close("round end, again:") end
    end
  end
  if not R.closed_at then
    plain_close("round end:")
    if chance(0.3) then call("pool:close() again", nil, function() return R.pool:close() end) end
  elseif R.draining and not R.drain_over and chance(0.3) then
    plain_close("round end, during the drain:")
  end
  if R.side and not R.side_closed then R.side:close() end
  if R.framed then R.framed:close() end
  if not wait_until(settled, 2500 * SLOW) then
    fail("after pool:close() these never ended:\n  " .. pending_dump())
  end
  sampler:stop()
  handles[sampler] = nil
  sampler:close()
  ticks(5)
  -- no socket of the pool left (allow a few turns for close callbacks)
  local snap
  local ok = wait_until(function()
    snap = snapshot()
    return snap.total == 0 and snap.udp == 0
  end, 500 * SLOW)
  if not SKIP.fd_check then
    check(ok, "after pool:close() the pool still holds %d sockets (%d of them UDP: DNS):\n%s",
      snap.total + snap.udp, snap.udp, table.concat(snap.list, "\n"))
    -- (a periodic address book save may still be finishing in the thread pool: allow it)
    wait_until(function()
      snap = snapshot()
      return snap.other <= R.baseline_other
    end, 2000 * SLOW)
    check(snap.other <= R.baseline_other, "after pool:close() %d non-socket fds are open, %d " ..
      "before the round:\n%s", snap.other, R.baseline_other, table.concat(snap.others or {}, "\n"))
  end
  collectgarbage() -- pools a hook made and forgot
  collectgarbage()
  check(#peerpool.pools() <= pools_before, "peerpool.pools() lists %d pools after the round, %d " ..
    "before", #peerpool.pools(), pools_before)
  F.ctl.drop_all()
  -- keep a few objects of the closed pool for stray ops in later rounds
  local old = { pool = R.pool }
  for _, rec in ipairs(R.conns) do if rec.conn and not rec.released then old.conn = rec.conn end end
  F.old[#F.old + 1] = old
  if #F.old > 3 then table.remove(F.old, 1) end
  R.pool = nil
  for co in pairs(anchored) do if coroutine.status(co) == "dead" then anchored[co] = nil end end
  collectgarbage()
  ticks(2)
end

-- ---- error reports ---------------------------------------------------------------------------

local HOOK_FAILURES = {
  INTENDED, "instruction budget exceeded", "attempt to yield", IN_HOOK, "failed: answered ",
  "not enough memory", "(error object is a ",
  "(error object is not a string)", "odd error", "4242424242", "__tostring", "table: 0x",
  "error in error handling", CLOSED_POOL, HOOK_CONN_GONE,
}

local function on_report(text)
  if text:find(INTENDED, 1, true) then
    F.hook_reports = F.hook_reports + 1
  elseif text:match("^peerpool: policy hook ") then
    -- only the failures the generated hooks cause on purpose (or meet on a closing pool)
    local known = false
    for _, p in ipairs(HOOK_FAILURES) do
      if text:find(p, 1, true) then known = true break end
    end
    if SKIP.hook_error_value and text:find("to '_hook_error'", 1, true) then known = true end
    if F.meddled_hooks and text:find(RELEASED, 1, true) then known = true end
    if not known and not SKIP.hook_reports then fail("unexpected hook failure: " .. text) end
    F.hook_reports = F.hook_reports + 1
  elseif text:match("^peerpool: address book ") or text:match("^peerpool: saving ") then
    F.hook_reports = F.hook_reports + 1
  elseif text:match("^peerpool: error in coroutine: .*attempt to yield") and
      text:find("from a hook", 1, true) then
    F.hook_reports = F.hook_reports + 1
  elseif text:match("^peerpool: error in c[a-z]+: ") and
      (text:find("odd error", 1, true) or text:find("4242424242", 1, true) or
        text:find("error in error handling", 1, true) or
        text:find("'__tostring' must return a string", 1, true) or
        text:find("__tostring raises", 1, true) or text:find("table: 0x", 1, true) or
        text:find("error object is not a string", 1, true) or
        text:match("^peerpool: error in c[a-z]+: stack traceback:")) then
    F.hook_reports = F.hook_reports + 1 -- odd error values raised on purpose
  else
    if not SKIP.reports then fail("unexpected error report: " .. text) end
  end
  trace("report: " .. (text:match("^[^\n]*") or text))
  -- User code in the reporter (a REPL prints; an application may do anything): it runs
  -- wherever the binding reports from, e.g. right after a synchronous hook failed, while the
  -- engine is still in the middle of its decision.
  if R and R.chaos_reporter and R.pool and not SKIP.chaos_reporter then
    local pool = R.pool
    local what = rnd(5)
    trace("reporter does " .. ({ "gc", "stats", "acquire", "close", "peers" })[what])
    local ok, err = pcall(function()
      if what == 1 then
        -- (not with FUZZ_SKIP=unanchored: F8's second form, a dead coroutine the reporter's
        -- collection frees before the binding resets it)
        if not SKIP.unanchored then collectgarbage() end
      elseif what == 2 then pool:stats()
      elseif what == 3 and not SKIP.reporter_mutate then
        pool:acquire(nil, { timeout = 10 }, function(_, c) if c then c:release() end end)
      elseif what == 4 and may_close() and not SKIP.reporter_mutate then -- (finding F10)
        pool:close() -- raises inside an engine call (then the pool stays open)
        R.closed_at = R.closed_at or uv.now()
        R.drain_over = true
      elseif what == 5 then pool:peers() end
    end)
    if not ok then
      check(tostring(err):find(CLOSED_POOL, 1, true) or tostring(err):find(IN_HOOK, 1, true),
        "a pool call from the error reporter raised %s", show(err))
    end
  end
end

-- ---- main ------------------------------------------------------------------------------------

local function main()
  peerpool.on_error(on_report)
  if getenv "FUZZ_GC" == "aggressive" then
    -- a collection cycle starts as soon as one ends: finalisers run at any allocation
    collectgarbage("incremental", 0, 400)
  end
  F.started_at = clock()
  F.heart = uv.new_timer()
  F.check_n = 0
  F.phase = uv.new_check() -- counts loop iterations that reach the check phase
  if SKIP.loop_clock then
    -- (finding F13: no repeating timer of ours; the loop's lost time is taken per iteration,
    -- with a timer only to wake the poll every 10 ms)
    local last = 0
    F.heart:start(10, 10, function() end)
    F.phase:start(function()
      F.check_n = F.check_n + 1
      local now = clock()
      if now - last >= 10 then
        last = now
        heartbeat()
      end
    end)
  else
    F.heart:start(10, 10, heartbeat)
    F.phase:start(function() F.check_n = F.check_n + 1 end)
  end
  F.heart:unref()
  F.phase:unref()
  if SKIP.sigpipe then
    -- look past the SIGPIPE finding: a handler of our own makes writes to a reset socket fail
    -- with EPIPE instead of killing the process (as the host program's SIG_IGN does)
    F.sigpipe = uv.new_signal()
    F.sigpipe:start("sigpipe", function() end)
    F.sigpipe:unref()
  end
  write_policy_files()
  -- servers: all kinds, two echo servers (misrouted data between them shows), and one more
  -- echo server for the side pool; in a helper process (see hostile_servers.lua)
  local kinds = { "refuse", "reset", "stall", "flood", "echo", "echo", "closer", "drip",
    "greeter", "blackhole", "echo" }
  local list
  F.ctl = hostile.remote(kinds, function(l) list = l end)
  check(wait_until(function() return list ~= nil end, 5000 * SLOW),
    "the hostile servers' helper did not start")
  for i, srv in ipairs(list) do
    if i < #list then F.servers[#F.servers + 1] = srv else F.side_srv = srv end
    F.by_port[srv.port] = srv
    F.server_ports[srv.port] = true
    trace(fmt("server %s %s%s", srv.kind, srv.addr, i == #list and " (side pool)" or ""))
  end
  do -- a port where nothing listens, for unknown peers
    local t = uv.new_tcp()
    t:bind("127.0.0.1", 0)
    F.unused_port = t:getsockname().port
    t:close()
  end
  start_dns()
  ticks(2)
  local start = uv.now()
  local n = 0
  while uv.now() - start < SECONDS * 1000 do
    n = n + 1
    run_round(n, rnd(700) + 200)
  end
  if chance(0.3) and not SKIP.abrupt then
    F.abrupt = true
    run_round(n + 1, rnd(300) + 50, true)
    return
  end
  F.ctl.close()
  stop_dns()
  F.heart:close()
  F.phase:close()
  if wake_check then
    wake_check:close()
    wake_timer:close()
  end
  if F.sigpipe then F.sigpipe:close() end
  F.old = {}
  F.kept_hook_conns = {}
  F.kept_views = {}
end

local ok, err = xpcall(peerpool.run, debug.traceback, main)
if not ok then fail("the driver raised: " .. tostring(err)) end
if F.abrupt then
  -- close the driver's own handles and let their closes finish (the pools stay live)
  for h in pairs(handles) do if not h:is_closing() then h:close() end end
  F.ctl.close()
  stop_dns()
  F.heart:close()
  F.phase:close()
  if F.sigpipe then F.sigpipe:close() end
  for _ = 1, 3 do uv.run("nowait") end
  io.stdout:write(fmt("fuzz.api seed %d: ok, %d rounds, %d ops, %d acquires, %d reports (%s%s), " ..
    "ending with everything live\n", SEED, F.rounds, F.ops, F.acq_n, F.hook_reports,
    SANITIZED and "asan" or "plain", GC_STRESS and ", gc stress" or ""))
  io.stdout:flush()
  if trace_file then trace_file:write("lua_close with everything live\n") end
  os.exit(0, true) -- lua_close; a crash from here on is the module's (or luv's)
end
collectgarbage()
collectgarbage()
-- the loop must settle: nothing of the pools is left on it
local settled_loop = false
for _ = 1, 400 do
  if not uv.loop_alive() then
    settled_loop = true
    break
  end
  uv.run("nowait")
  uv.sleep(5)
end
check(settled_loop or SKIP.loop_check, "the loop never settled after every pool was closed")
do -- the temporary files (policies, address books and the corrupt ones moved aside)
  local req = uv.fs_scandir(F.tmpdir)
  while req do
    local name = uv.fs_scandir_next(req)
    if not name then break end
    os.remove(F.tmpdir .. "/" .. name)
  end
  uv.fs_rmdir(F.tmpdir)
end
if getenv "FUZZ_STATS" then
  local names = {}
  for fn, n in pairs(F.op_counts) do names[#names + 1] = fmt("%s=%d", OP_NAMES[fn], n) end
  table.sort(names)
  io.stdout:write("ops: ", table.concat(names, " "), "\n")
  local q = {}
  for name, n in pairs(F.dns.queries) do q[#q + 1] = fmt("%s=%d", name, n) end
  table.sort(q)
  io.stdout:write("dns queries: ", table.concat(q, " "), "\n")
  local d = F.dns_stats or {}
  io.stdout:write(fmt("pools' dns stats (rounds not closed early): %d queries, %d failures, %d " ..
    "conns closed as their address left the answer\n", d.queries or 0, d.failures or 0,
    d.moved or 0))
end
io.stdout:write(fmt("fuzz.api seed %d: ok, %d rounds, %d ops, %d acquires, %d reports (%s%s)\n",
  SEED, F.rounds, F.ops, F.acq_n, F.hook_reports, SANITIZED and "asan" or "plain",
  GC_STRESS and ", gc stress" or ""))
if trace_file then trace_file:close() end
