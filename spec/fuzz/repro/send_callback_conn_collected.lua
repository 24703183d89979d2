-- Finding F12 (fuzz seeds 33, 36, 37, 39, 40, 54, ... under ASan: heap-use-after-free in
-- on_written, lsend.c:83): conn:send(data, callback) on a conn the program then drops. When the
-- write completes, on_written keeps `c` (the conn object's struct) in a local, calls the
-- callback, and afterwards reads c->send_co_ref. If the callback (or, with
-- PEERPOOL_GC_STRESS=1, the collection at its entry plus one more) collects the conn object,
-- that read is on freed memory. The conn's __gc detaches its queued writes (w->c = NULL), but
-- this write was already unlinked before the callback ran.
-- Expected: no use after free (re-read w->c / keep the conn anchored across the callback).
--   ASan: LD_PRELOAD=$(gcc -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0 \
--     LUA_CPATH='build-sanitize/lua/?.so;;' lua5.4 spec/fuzz/repro/send_callback_conn_collected.lua
local peerpool = require "peerpool"

local addr, close_server = require "spec.fuzz.holding_server"()
local pool = peerpool.new { peers = { addr } }

peerpool.run(function()
  local conn = assert(pool:acquire(addr))
  conn:send("x", function(err)
    print("written:", err)
    collectgarbage() -- finalises the dropped conn (a leaked lease)...
    collectgarbage() -- ...and frees it; on_written reads it after this returns
  end)
end) -- the conn object is unreachable from here on; its write completes on the next turn

require "spec.fuzz.repro_ending"(50, pool, close_server)
