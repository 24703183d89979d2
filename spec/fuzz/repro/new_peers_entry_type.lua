-- Finding F3 (fuzz op "peerpool.new(bad ...)" with peers = { {} }, seeds 1, 5): a non-string
-- entry in the `peers` option raises "bad argument #1 to '_add_peer' (string expected, got
-- table)" -- an internal method, not the option -- and the half-made pool stays open: it is
-- listed by peerpool.pools() (and holds its timers) until the collector finds it.
-- Expected: "peerpool.new: peers[1] must be an address (string)", and no pool left open.
--   LUA_CPATH='build/lua/?.so;;' lua5.4 spec/fuzz/repro/new_peers_entry_type.lua
local peerpool = require "peerpool"
local ok, err = pcall(peerpool.new, { peers = { {} } })
local open = #peerpool.pools() -- was 1: the half-made pool
local good = not ok and tostring(err):find("peers[1]", 1, true) and open == 0
print((good and "ok: " or "BUG: ") .. tostring(err) .. "; open pools: " .. open)
os.exit(good and 0 or 1)
