-- Finding F10 (fuzz seed 30: segfault, the trace ends with "report: ... policy hook select_conn
-- ... failed: answered number ..." then "reporter does close"): the function given to
-- peerpool.on_error runs, for a failed synchronous hook (select_peer, select_conn, backoff),
-- while the engine is still in the middle of the decision that called the hook -- but after
-- lpp_leave_engine_call, so the "a policy hook cannot change its pool" guard is off. A
-- reporter that closes the pool (or acquires, releases...) changes the pool under the
-- engine's feet: here pool:close() frees the conn the engine is about to lend.
-- Expected: the report is delivered once the engine call is over (deferred), or the guard
-- stays on while it runs.
--   ASan: LD_PRELOAD=$(gcc -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0 \
--     LUA_CPATH='build-sanitize/lua/?.so;;' lua5.4 spec/fuzz/repro/reporter_closes_pool_in_hook.lua
local uv = require "luv"
local peerpool = require "peerpool"

local addr, close_server = require "spec.fuzz.holding_server"()
local pool = peerpool.new { peers = { addr }, max_per_peer = 2 }

peerpool.run(function()
  local a, b = assert(pool:acquire(addr)), assert(pool:acquire(addr))
  a:release()
  b:release() -- two idle conns: the next acquire asks select_conn
  assert(pool:load_policy { select_conn = function() return 99 end }) -- nonsense: reported
  peerpool.on_error(function(text)
    print("reported: " .. text:match("^[^\n]*"))
    pool:close() -- inside the engine's decision
  end)
  print("acquire:", pcall(pool.acquire, pool, addr))
end)
close_server()
uv.run()
print("ok: done")
