-- Finding F15 (a 60-seed campaign on a loaded machine, 9 seeds: "the loop has not reached its
-- check phase for 307..909 ms while timers kept firing"): the fuzzer's F13 oracle blamed the
-- pool for one long gap. Its sampler (a timer every 11 ms) saw no check phase since its last
-- sample 300 ms ago -- but it had run once in that time, not again and again: the process was
-- descheduled (load 10 on 2 cores), or one op blocked (add_peer with tls loads the system CA
-- store: 60..300 ms). A timer phase that never ends (F13) makes the sampler fire many times
-- without a check phase; one stall makes it fire once. Here the fuzzer runs 3 s with a 450 ms
-- stall injected just before one sample (FUZZ_STALL_MS); expected: no failure.
--   LUA_CPATH='build/lua/?.so;;' lua5.4 spec/fuzz/repro/one_stall_is_not_a_spinning_timer_phase.lua
-- (from the source root)
local cmd = "FUZZ_SEED=1 FUZZ_SECONDS=3 FUZZ_STALL_MS=450 LUA_PATH='./?.lua;./scripts/?.lua;;' " ..
  "lua5.4 spec/fuzz/api_fuzz.lua 2>&1"
local p = assert(io.popen(cmd))
local out = p:read("a")
local ok, _, code = p:close()
local failure = out:match("FUZZ FAILURE[^\n]*")
if ok then
  print("ok: the fuzzer ran 3 s with a 450 ms stall and reported nothing")
else
  print("BUG: " .. (failure or ("the fuzzer exited with " .. tostring(code) .. "\n" .. out:sub(-2000))))
  os.exit(1)
end
