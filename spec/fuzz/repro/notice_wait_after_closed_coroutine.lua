-- Finding F6b (fuzz seed 26, after F6 was fixed for receive): after coroutine.close() of a
-- coroutine that waits in notice:wait(), the notice's next wait raises "calling 'wait' on bad
-- self (a coroutine is already waiting on this notice)": the closed coroutine's reference
-- (co_ref) lingers until the notice fires. Expected: the next wait waits normally (here:
-- nil, "timeout" after 10 ms), as conn:receive now does (F6).
--   LUA_CPATH='build/lua/?.so;;' lua5.4 spec/fuzz/repro/notice_wait_after_closed_coroutine.lua
local uv = require "luv"
local peerpool = require "peerpool"

local addr, close_server = require "spec.fuzz.holding_server"()
local pool = peerpool.new { peers = { addr }, max_per_peer = 1 }

peerpool.run(function()
  local conn = assert(pool:acquire(addr))
  local _, code, notice = pool:acquire(addr, { busy = "fail" })
  assert(code == "busy")
  local waiter = peerpool.spawn(function() return notice:wait() end) -- waits
  assert(coroutine.close(waiter))
  local ok, a, b = pcall(notice.wait, notice, 10) -- BUG: raises "already waiting"
  print(ok and "ok: wait answered " .. tostring(a) .. ", " .. tostring(b) or "BUG: " .. a)
  conn:release()
end)
pool:close()
close_server()
uv.run()
