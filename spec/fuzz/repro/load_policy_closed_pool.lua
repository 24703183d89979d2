-- Finding F4 (fuzz op "load_policy" after a mid-flight close, seed 2): on a closed pool,
-- pool:load_policy(t) with a policy that fails validation answers nil, "<validation message>"
-- instead of raising "attempt to use a closed pool" (peerpool.lua's check_pool looks at the
-- metatable only; the closed check comes later, in _set_policy, so only a valid policy
-- raises). Every other method raises on a closed pool (docs/lua.md, Conventions).
--   LUA_CPATH='build/lua/?.so;;' lua5.4 spec/fuzz/repro/load_policy_closed_pool.lua
local peerpool = require "peerpool"
local pool = peerpool.new()
pool:close()
local ok, a, b = pcall(pool.load_policy, pool, { name = 5 }) -- was: true, nil, "policy.name ..."
local good = not ok and tostring(a):find("closed pool", 1, true)
print((good and "ok: raised " or "BUG: answered ") .. tostring(a) .. " " .. tostring(b))
os.exit(good and 0 or 1)
