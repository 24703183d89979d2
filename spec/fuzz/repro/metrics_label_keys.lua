-- Finding F2 (fuzz op "bad: metrics({[1]=..})", seeds 1, 5): pool:metrics(labels) with a
-- label table that has a non-string key raises "attempt to compare string with number" from
-- inside peerpool.lua's table.sort: an error that names neither the argument nor the key.
-- (Label names are not checked either: { ["bad name"] = 1 } gives invalid Prometheus text.)
-- Expected: "bad argument #1 to 'metrics' (label names must be strings ...)".
--   LUA_CPATH='build/lua/?.so;;' lua5.4 spec/fuzz/repro/metrics_label_keys.lua
local peerpool = require "peerpool"
local pool = peerpool.new()
local ok, err = pcall(pool.metrics, pool, { "x", y = "z" })
print(ok, err) -- false   peerpool.lua:...: attempt to compare string with number
local text = pool:metrics({ ["bad name"] = 1 })
print(text:match("[^\n]*bad name[^\n]*")) -- peerpool_conns{bad name="1"} 0
pool:close()
