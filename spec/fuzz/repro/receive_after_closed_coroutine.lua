-- Finding F6 (fuzz seed 30 with FUZZ_SKIP=sigpipe,...): after coroutine.close() of a
-- coroutine that waits in conn:receive(), the conn's next receive raises "calling 'receive' on
-- bad self (a receive is already waiting on this conn)" until data arrives: the closed
-- coroutine's registry reference (co_ref) is only dropped by the next read or the release.
-- Expected: the next receive waits normally (here: nil, "timeout" after io_timeout).
--   LUA_CPATH='build/lua/?.so;;' lua5.4 spec/fuzz/repro/receive_after_closed_coroutine.lua
local uv = require "luv"
local peerpool = require "peerpool"

local srv, client = uv.new_tcp(), uv.new_tcp()
srv:bind("127.0.0.1", 0)
srv:listen(8, function() srv:accept(client) end) -- accepts, never writes
local addr = "127.0.0.1:" .. srv:getsockname().port
local pool = peerpool.new { peers = { addr }, io_timeout = 100 }

peerpool.run(function()
  local conn = assert(pool:acquire(addr))
  local reader = peerpool.spawn(function() return conn:receive() end) -- waits
  assert(coroutine.close(reader))
  local ok, a, b = pcall(conn.receive, conn) -- BUG: raises "a receive is already waiting"
  print(ok and "ok: receive answered " .. tostring(a) .. ", " .. tostring(b) or "BUG: " .. a)
  conn:release()
end)
pool:close()
srv:close()
client:close()
uv.run()
