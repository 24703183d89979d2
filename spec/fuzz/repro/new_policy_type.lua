-- Finding F5 (fuzz op "peerpool.new(bad ...)" with policy = 42, seed 21): a policy option that
-- is neither a path nor a table raises "bad argument #1 to 'load_policy' (path or table
-- expected, got number)" -- a method the caller did not call, not the option -- and, as with
-- F3, the pool made before the check stays open until collected.
-- Expected: "peerpool.new: option 'policy' must be a path or a table", no pool left open.
--   LUA_CPATH='build/lua/?.so;;' lua5.4 spec/fuzz/repro/new_policy_type.lua
local peerpool = require "peerpool"
print(pcall(peerpool.new, { policy = 42 }))
print("open pools after the failed new:", #peerpool.pools()) -- 1 (expected 0)
