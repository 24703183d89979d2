-- Finding F8, second form (fuzz seed 48 under ASan: heap-use-after-free in lua_resetthread,
-- freed by lua_gc called from the peerpool.on_error function): a coroutine the binding resumes
-- (acquire answer, receive data, notice) and that then raises is reported through lpp_report
-- *before* lpp_resume calls lua_resetthread on it. The binding already dropped its reference
-- to the coroutine; if the reporter (peerpool.on_error's function: user code, e.g. a REPL)
-- runs the collector, the dead coroutine is freed and lua_resetthread works on freed memory.
--   ASan: LD_PRELOAD=$(gcc -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0 \
--     LUA_CPATH='build-sanitize/lua/?.so;;' lua5.4 spec/fuzz/repro/dead_coroutine_collected_by_reporter.lua
local peerpool = require "peerpool"

local addr, close_server = require "spec.fuzz.holding_server"()
local pool = peerpool.new { peers = { addr } }

peerpool.on_error(function(text)
  print("reported: " .. text:match("^[^\n]*"))
  collectgarbage() -- the failed coroutine is unreferenced by now: freed here
  collectgarbage()
end)
peerpool.spawn(function()
  local conn = pool:acquire(addr) -- resumed by on_acquired, which dropped its reference first
  conn:release()
  error("boom")                   -- lpp_resume: report (runs the reporter), then resetthread
end)

require "spec.fuzz.repro_ending"(100, pool, close_server)
