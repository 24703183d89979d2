-- Finding F14 (fuzz seed 5 with FUZZ_OPTIONS={max_total=6, retries=1, connect_timeout=30, ...}:
-- the process spun at 100% CPU for minutes; gdb: hold_timer_cb -> pp__hold_timer_arm over and
-- over inside libuv's timer phase). With an acquire for any peer waiting (or a notice armed)
-- and a peer whose backoff has ended but which cannot be dialled (the pool is at max_total),
-- pp__hold_timer_arm arms the hold timer for that peer's hold_until, which is already past:
-- 0 ms. libuv 1.44 runs a timer that is due again within the same timer phase, so the loop
-- never leaves that phase: 100% CPU, no I/O, no check phase (deferred answers), until the
-- waiter goes (its deadline, via the deadline timer that also runs in that phase) -- never,
-- with timeout = 0. Here the loop spins for the second the waiter waits; expected: it sleeps.
-- This is also how F13's late answers arise in the fuzzer (several answers arriving together
-- once the last any-peer waiter timed out).
--   LUA_CPATH='build/lua/?.so;;' lua5.4 spec/fuzz/repro/hold_timer_spins.lua
local uv = require "luv"
local peerpool = require "peerpool"

local echo, clients = uv.new_tcp(), {}
echo:bind("127.0.0.1", 0)
echo:listen(8, function() local c = uv.new_tcp(); echo:accept(c); clients[#clients + 1] = c end)
local refused = uv.new_tcp()
refused:bind("127.0.0.1", 0) -- bound, never listening
local a = "127.0.0.1:" .. echo:getsockname().port
local b = "127.0.0.1:" .. refused:getsockname().port
local pool = peerpool.new { peers = { a, b }, max_total = 1, retries = 0 }

local checks = 0
local check = uv.new_check()
check:start(function() checks = checks + 1 end) -- loop iterations that reach the check phase

local function sleep(ms)
  local co, t = coroutine.running(), uv.new_timer()
  t:start(ms, 0, function() t:close(); coroutine.resume(co) end)
  coroutine.yield()
end

local bad
peerpool.run(function()
  print("dial b:", pool:acquire(b, { timeout = 1000 })) -- refused: b backs off (< 200 ms)
  local held = assert(pool:acquire(a))                  -- the pool is at max_total now
  sleep(300)                                             -- b's backoff is over
  local cpu0, checks0, t0 = os.clock(), checks, uv.hrtime()
  local releaser = uv.new_timer()
  releaser:start(1000, 0, function() releaser:close(); held:release() end)
  local conn = pool:acquire(nil, { timeout = 0 })       -- any peer, no deadline: waits a second
  local cpu, wall = os.clock() - cpu0, (uv.hrtime() - t0) / 1e9
  print(string.format("%s: waited %.2f s, CPU %.2f s, check phases %d", cpu < 0.5 * wall and
    "ok" or "BUG", wall, cpu, checks - checks0))
  if conn then conn:release() end
  bad = cpu >= 0.5 * wall
end)
check:close()
pool:close()
echo:close()
refused:close()
for _, c in ipairs(clients) do c:close() end
uv.run()
os.exit(bad and 1 or 0)
