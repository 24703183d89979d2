-- Finding F2 (fuzz op "bad: metrics({[1]=..})", seeds 1, 5): pool:metrics(labels) with a
-- label table that has a non-string key raises "attempt to compare string with number" from
-- inside peerpool.lua's table.sort: an error that names neither the argument nor the key.
-- (Label names are not checked either: { ["bad name"] = 1 } gives invalid Prometheus text.)
-- Expected: "bad argument #1 to 'metrics' (label names must be strings ...)".
--   LUA_CPATH='build/lua/?.so;;' lua5.4 spec/fuzz/repro/metrics_label_keys.lua
local peerpool = require "peerpool"
local pool = peerpool.new()
local ok1, err1 = pcall(pool.metrics, pool, { "x", y = "z" }) -- was: attempt to compare ...
local ok2, err2 = pcall(pool.metrics, pool, { ["bad name"] = 1 }) -- was: invalid text
pool:close()
local good = not ok1 and tostring(err1):find("metrics", 1, true) and not ok2
print((good and "ok: " or "BUG: ") .. tostring(err1) .. " / " .. tostring(ok2 and "accepted" or err2))
os.exit(good and 0 or 1)
