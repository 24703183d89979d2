-- Finding F8 (fuzz seeds 33, 36 under ASan: heap-use-after-free / double free inside
-- lua_resume, called from lpp_resume <- on_acquired / finish_receive): the binding drops its
-- registry reference to a waiting coroutine (co_ref) *before* it resumes it. While it runs,
-- nothing anchors that coroutine. If it resumes another coroutine that runs the collector
-- (coroutine.wrap, peerpool.spawn, a luv callback...), the first one -- "normal", not running
-- -- is not marked and is freed under the nested resume; returning into it is a use after
-- free. (Lua marks the running thread and the main thread only.) Same for finish_receive,
-- notice delivery and the io timeout path. Expected: keep the coroutine anchored until
-- lua_resume returns (e.g. leave it on the resumer's stack, or unref after the resume).
--   ASan: LD_PRELOAD=$(gcc -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0 \
--         LUA_CPATH='build-sanitize/lua/?.so;;' lua5.4 spec/fuzz/repro/resumed_coroutine_unanchored.lua
--   plain build: usually a segfault or "double free or corruption", sometimes silent.
local uv = require "luv"
local peerpool = require "peerpool"

local addr, close_server = require "spec.fuzz.holding_server"()
local pool = peerpool.new { peers = { addr } }

peerpool.spawn(function()          -- nothing but the binding refers to this coroutine
  local conn = pool:acquire(addr)   -- resumed by on_acquired after it dropped its reference
  coroutine.wrap(function()         -- while this one runs, the first is "normal" and unanchored
    collectgarbage()
    collectgarbage()
  end)()
  print("ok: survived")             -- back in the (then freed) coroutine
  conn:release()
  pool:close()
  close_server()
end)
uv.run()
