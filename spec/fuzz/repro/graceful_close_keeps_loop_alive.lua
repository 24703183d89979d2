-- Finding F20 (fuzz seeds 2 and 71 of SEEDS=1-80 SECONDS=8 campaigns, rounds that ended with
-- close{ drain_ms, callback }: "the loop never settled after every pool was closed"): a
-- graceful close that ends (drain_done) forgot the pool's Lua side without dropping its timers,
-- as the plain close() does. The deadline timer of receives and requests stayed armed for a
-- receive the drain had already ended, so the loop stayed alive up to io_timeout (30 s by
-- default) after the pool had closed -- a program's exit waited that long -- and the pool's
-- framing reference stayed in the registry for good.
-- Expected: once the close callback has run, nothing of the pool keeps the loop alive.
--   LUA_CPATH='build/lua/?.so;;' lua5.4 spec/fuzz/repro/graceful_close_keeps_loop_alive.lua
local uv = require "luv"
local peerpool = require "peerpool"

local addr, close_server = require "spec.fuzz.holding_server"()
local pool = peerpool.new { peers = { addr }, io_timeout = 10000 }
local received, closed
peerpool.run(function()
  local conn = assert(pool:acquire(addr))
  -- a receive waits (the server never writes), under its io_timeout deadline
  peerpool.run(function() received = table.pack(conn:receive("*l")) end)
  assert(pool:close { drain_ms = 50, callback = function()
    closed = true
    close_server()
  end })
end)
while not closed do uv.run("once") end
local alive = true
for _ = 1, 100 do -- (a second, against the 10 s io_timeout)
  if not uv.loop_alive() then
    alive = false
    break
  end
  uv.run("nowait")
  uv.sleep(10)
end
if alive then
  print("BUG: the loop is still alive 1 s after the graceful close ended (receive: " ..
    tostring(received and received[2]) .. ")")
  os.exit(1)
end
print("ok: the loop settled once the graceful close ended (receive: " ..
  tostring(received and received[2]) .. ")")
