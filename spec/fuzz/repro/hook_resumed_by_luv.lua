-- Finding F11 (fuzz seed 98 after the binding's hook rework: "a coroutine resumed from sleep
-- raised: ... attempt to use a conn the pool took back from its hook"): a handshake, ping or
-- seed hook that waits with luv (docs/policies.md: "a policy that needs I/O ... does it with
-- luv's asynchronous functions in a seed, handshake or ping hook, which may wait") and is
-- resumed by its luv callback with coroutine.resume -- the usual way -- ends unseen by the
-- binding: the hook's coroutine is only wrapped up (answer read, conn handed back, error
-- reported) when the binding itself resumes it (lpp_resume -> lpp_hook_run_end). So the
-- answer `true` below is lost, the handshake runs into handshake_timeout and the acquire fails;
-- an error raised after such a resume goes to the luv callback's coroutine.resume instead of
-- the hook report. (peerpool.lua's own ctx:resolve resumes through the private M._resume.)
-- Expected: the acquire gets a conn (the hook answered true after 10 ms).
--   LUA_CPATH='build/lua/?.so;;' lua5.4 spec/fuzz/repro/hook_resumed_by_luv.lua
local uv = require "luv"
local peerpool = require "peerpool"

local addr, close_server = require "spec.fuzz.holding_server"()
local pool = peerpool.new { peers = { addr }, retries = 0, handshake_timeout = 300, policy = {
  handshake = function()
    local co, t = coroutine.running(), uv.new_timer()
    t:start(10, 0, function()
      t:close()
      print("luv resumes the hook:", coroutine.resume(co)) -- true  true: the answer lands here
    end)
    coroutine.yield() -- wait 10 ms, the luv way
    return true
  end,
} }
peerpool.run(function()
  local conn, code, detail = pool:acquire(addr, { timeout = 1000 })
  print(conn and "ok: got a conn" or ("BUG: " .. tostring(code) .. ": " .. tostring(detail)))
  if conn then conn:release() end
end)
pool:close()
close_server()
uv.run()
