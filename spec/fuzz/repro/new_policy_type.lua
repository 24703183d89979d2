-- Finding F5 (fuzz op "peerpool.new(bad ...)" with policy = 42, seed 21): a policy option that
-- is neither a path nor a table raises "bad argument #1 to 'load_policy' (path or table
-- expected, got number)" -- a method the caller did not call, not the option -- and, as with
-- F3, the pool made before the check stays open until collected.
-- Expected: "peerpool.new: option 'policy' must be a path or a table", no pool left open.
--   LUA_CPATH='build/lua/?.so;;' lua5.4 spec/fuzz/repro/new_policy_type.lua
local peerpool = require "peerpool"
local ok, err = pcall(peerpool.new, { policy = 42 })
local open = #peerpool.pools() -- was 1: the half-made pool
local good = not ok and tostring(err):find("option 'policy'", 1, true) and open == 0
print((good and "ok: " or "BUG: ") .. tostring(err) .. "; open pools: " .. open)
os.exit(good and 0 or 1)
