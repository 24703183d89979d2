-- Finding F13 (fuzz, after the merge of d528954: acquires answered hundreds of ms after their
-- deadline, or only at pool:close(), with the loop turning; gdb showed the answers queued on
-- the pool's defer list with its check handle active): the engine calls uv_update_time() from
-- inside callbacks (pp__now on every enqueue, the binding's lpp_now in receive/send). libuv
-- 1.44's timer phase runs every timer due by loop->time, re-reading loop->time as it goes
-- (uv__run_timers): once a callback advances the clock, a repeating timer that is behind --
-- or any timer started with 0 ms -- is due again in the same pass. So a luv timer whose
-- callback calls into the pool keeps the loop in its timer phase: no I/O, no check phase, and
-- the deferred answers (acquire callbacks and resumes, notices, reads) wait until it stops.
-- Here a 2 ms timer doing 3 ms of work plus an acquire runs 150 times back to back and the
-- waiting acquire's 50 ms timeout is answered after ~450 ms; without the acquire in the timer
-- ("control") the loop interleaves and the answer comes at ~60 ms.
-- Expected: ~60 ms in both runs (never advance the loop's clock inside a callback; use a
-- private clock for deadlines).
--   LUA_CPATH='build/lua/?.so;;' lua5.4 spec/fuzz/repro/timers_phase_starves_answers.lua
--   LUA_CPATH='build/lua/?.so;;' lua5.4 spec/fuzz/repro/timers_phase_starves_answers.lua control
local uv = require "luv"
local peerpool = require "peerpool"
local addr, close_server = require "spec.fuzz.holding_server"()
local pool = peerpool.new { peers = { addr }, max_per_peer = 1, backlog = 10000 }
local with_engine_call = arg[1] ~= "control"
local late
local function spin(ms) local t = uv.hrtime() + ms * 1e6; while uv.hrtime() < t do end end
peerpool.run(function()
  local held = assert(pool:acquire(addr))
  -- a busy luv timer: every 2 ms, 3 ms of work, and (unless "control") a call that makes the
  -- engine update the loop's clock (an acquire that waits: enqueue -> pp__now)
  local ticks, t = 0, uv.new_timer()
  t:start(2, 2, function()
    ticks = ticks + 1
    if ticks >= 150 then t:stop() end
    spin(3)
    if with_engine_call then pool:acquire(addr, { timeout = 1 }, function() end) end
  end)
  local t0 = uv.hrtime()
  local _, code = pool:acquire(addr, { timeout = 50 })
  local ms = (uv.hrtime() - t0) / 1e6
  print(string.format("%s%s: acquire(timeout=50) answered %s after %.0f ms (the busy timer ran %d " ..
    "times)", ms < 150 and "ok: " or "BUG: ", with_engine_call and "with engine calls" or "control",
    tostring(code), ms, ticks))
  late = ms >= 150
  t:close()
  held:release()
end)
pool:close()
close_server()
uv.run()
os.exit(late and 1 or 0)
