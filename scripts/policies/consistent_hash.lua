-- consistent_hash: keyed acquires (`pool:acquire(nil, { key = "user:42" })`) go to the peer
-- that owns the key on a hash ring over all live peers of the pool — whichever conns happen to
-- be idle — and adding or losing a peer moves only about 1/N of the keys.
--
-- The ring is kept by the peer_event hook: the pool reports every peer that joins ("added",
-- also for each live peer when the policy is loaded) or leaves ("burned", or "removed": removed
-- or draining), so the route hook answers with a binary search, O(log n) per acquire, with
-- 10,000 peers as with 3. Each address owns `vnodes` points on a 32-bit ring (FNV-1a of the
-- address, spread with a murmur3 finaliser); a key belongs to the owner of the first point at
-- or after the key's hash.
--
-- What a key does while its owner is down (ejected, backing off, aged out) is an explicit
-- choice, `on_down`:
--   "fail"  the acquire goes to the owner and fails fast with the owner's cause (`ejected`,
--           `cannot_connect`): a shard's keys never land on another shard (data stores).
--   "next"  the acquire goes to the next peer on the ring that can serve (pool:check): keys
--           stay spread while a peer is down, and come back when it recovers (caches).
-- Acquires without a key use round robin (peerpool.policies.round_robin).
--
-- Options (consistent_hash.new{...}):
--   vnodes = 64        points per address
--   on_down = "fail"   "fail" or "next"
--
-- Example:
--   local ch = require "peerpool.policies.consistent_hash".new{ on_down = "fail" }
--   pool:load_policy(ch)
--   local conn = pool:acquire(nil, { key = session_id })
--   ch.owner(key)   -- the address that owns `key` on the ring, whatever its state
local options = require "peerpool.policies.options"
local round_robin = require "peerpool.policies.round_robin"
local peerpool = require "peerpool"

local DEFAULTS = {
  vnodes = { 64, "positive_integer" },
  on_down = { "fail", "string" },
}

local function build(M, opts)
  local o = options.check("policy.select", opts, DEFAULTS)
  if o.on_down ~= "fail" and o.on_down ~= "next" then
    error('policy.select.on_down must be "fail" or "next"', 0)
  end
  if o.vnodes > 4096 then error("policy.select.vnodes must be at most 4096", 0) end
  local ring = peerpool.ring(o.vnodes) -- in C: 8 bytes a point, sorted once per change
  local rr = round_robin.new()
  local skip_down = o.on_down == "next"

  function M.peer_event(addr, event)
    if event == "added" then ring:add(addr) else ring:remove(addr) end -- burned, removed
  end

  function M.route(key, pool)
    if skip_down then return ring:owner(key, function(addr) return pool:check(addr) end) end
    return ring:owner(key)
  end

  function M.select_peer(peers, ctx) return rr.select_peer(peers, ctx) end

  --- ch.owner(key): the address that owns `key` on the ring (nil while the ring is empty).
  local function owner_of(key) return ring:owner(key) end

  return o, { owner = owner_of, hash = ring.hash, ring = ring }
end

return options.policy("consistent_hash", function(o)
  return "keys to their owner on a hash ring over the live peers (on_down = " .. o.on_down ..
    "); round robin without a key"
end, build)
