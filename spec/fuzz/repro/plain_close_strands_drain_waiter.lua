-- Finding F19 (fuzz seed 26 of a SEEDS=1-40 SECONDS=8 campaign, once the fuzzer drove
-- close{ drain_ms }: "a2 mid-flight: the graceful close never ended / actor a2 still running"):
-- a coroutine waits in pool:close{ drain_ms = N } (no callback) while a lease is held; then the
-- plain pool:close(), which "ends the drain now" (docs/lua.md), forgets the pool's Lua side
-- before the engine's close callback runs, so that callback finds no pool to resume the waiter
-- from: the waiting close never returns, and its coroutine stays anchored for good.
-- Expected: it returns once the pool has closed (the held lease was cut: nil, "timeout", why).
--   LUA_CPATH='build/lua/?.so;;' lua5.4 spec/fuzz/repro/plain_close_strands_drain_waiter.lua
local uv = require "luv"
local peerpool = require "peerpool"

local addr, close_server = require "spec.fuzz.holding_server"()
local pool = peerpool.new { peers = { addr } }

local function sleep(ms)
  local co, t = coroutine.running(), uv.new_timer()
  t:start(ms, 0, function()
    t:close()
    assert(coroutine.resume(co))
  end)
  coroutine.yield()
end

local result
peerpool.run(function()
  local held = assert(pool:acquire(addr))
  -- (peerpool.run inside the loop returns at once: the waiter runs alongside)
  peerpool.run(function() result = table.pack(pool:close { drain_ms = 5000 }) end)
  sleep(20)
  pool:close() -- ends the drain now
  for _ = 1, 100 do
    if result then break end
    sleep(10)
  end
  held:release() -- harmless: the lease was cut
  close_server()
end)
uv.run() -- (the closes finish: luv crashes at exit on handles closed and never run again)
if not result then
  print("BUG: close{ drain_ms } still waits 1 s after a plain close() ended the drain")
  os.exit(1)
end
print(("ok: close{ drain_ms } returned %s, %s, %s after a plain close()"):format(
  tostring(result[1]), tostring(result[2]), tostring(result[3])))
