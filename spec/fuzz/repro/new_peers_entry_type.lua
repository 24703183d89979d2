-- Finding F3 (fuzz op "peerpool.new(bad ...)" with peers = { {} }, seeds 1, 5): a non-string
-- entry in the `peers` option raises "bad argument #1 to '_add_peer' (string expected, got
-- table)" -- an internal method, not the option -- and the half-made pool stays open: it is
-- listed by peerpool.pools() (and holds its timers) until the collector finds it.
-- Expected: "peerpool.new: peers[1] must be an address (string)", and no pool left open.
--   LUA_CPATH='build/lua/?.so;;' lua5.4 spec/fuzz/repro/new_peers_entry_type.lua
local peerpool = require "peerpool"
print(pcall(peerpool.new, { peers = { {} } }))
print("open pools after the failed new:", #peerpool.pools()) -- 1 (expected 0)
