-- consistent_hash: select_peer maps an acquire's key (`pool:acquire(nil, { key = "user:42" })`,
-- seen by the hook as ctx.key) to a peer on a hash ring, so one key keeps going to one peer
-- while that peer is a candidate, and adding or losing a peer moves only about 1/N of the keys.
-- Each candidate address owns `vnodes` points on a 32-bit ring (FNV-1a of the address, spread
-- with a murmur3 finaliser); a key goes to the owner of the first point at or after the key's
-- hash that belongs to one of this call's candidates. Without a key it falls back to round
-- robin (peerpool.policies.round_robin).
--
-- What "candidate" means matters: a select hook only chooses among eligible peers (those with
-- a usable conn, or those that may be dialled, see docs/policies.md), so a key whose peer is
-- busy goes to the next peer on the ring. For strict affinity name the peer:
--   pool:acquire(ch.owner(key, addrs), opts)
-- where `ch.owner(key, addrs)` answers which of `addrs` the ring maps `key` to.
--
-- The ring remembers the points of every address it has seen (up to `max_addrs`; then it
-- starts over) and adds at most `max_new` new addresses per call, so one call stays well
-- inside the hook's instruction budget; a pool that hands over many new peers at once
-- settles within a few acquires.
--
-- Options (consistent_hash.new{...}):
--   vnodes = 64        points per address
--   max_new = 16       addresses added to the ring per hook call
--   max_addrs = 4096   addresses remembered before the ring is rebuilt
--
-- Example:
--   local ch = require "peerpool.policies.consistent_hash".new{ vnodes = 128 }
--   pool:load_policy(ch)
--   local conn = pool:acquire(nil, { key = session_id })
local options = require "peerpool.policies.options"
local round_robin = require "peerpool.policies.round_robin"

local byte = string.byte

local DEFAULTS = {
  vnodes = { 64, "positive_integer" },
  max_new = { 16, "positive_integer" },
  max_addrs = { 4096, "positive_integer" },
}

-- FNV-1a, 32 bits.
local function fnv(s)
  local h = 2166136261
  for i = 1, #s do h = ((h ~ byte(s, i)) * 16777619) & 0xffffffff end
  return h
end

-- murmur3's 32-bit finaliser: spreads nearby values over the ring.
local function mix(h)
  h = h ~ (h >> 16)
  h = (h * 0x85ebca6b) & 0xffffffff
  h = h ~ (h >> 13)
  h = (h * 0xc2b2ae35) & 0xffffffff
  return h ~ (h >> 16)
end

local function new(opts)
  local o = options.check("policy.select", opts, DEFAULTS)
  local M = {
    name = "consistent_hash",
    description = "a hash ring on ctx.key (virtual nodes); round robin without a key",
  }
  local vnodes, max_new, max_addrs = o.vnodes, o.max_new, o.max_addrs
  local rr = round_robin.new()
  local points, owner, known, naddrs, sorted = {}, {}, {}, 0, true

  local function reset()
    points, owner, known, naddrs, sorted = {}, {}, {}, 0, true
  end

  local function add(addr)
    if naddrs >= max_addrs then reset() end
    local base = fnv(addr)
    for i = 1, vnodes do
      local pt = mix((base + i * 0x9e3779b9) & 0xffffffff)
      if owner[pt] == nil then
        owner[pt] = addr
        points[#points + 1] = pt
      end
    end
    known[addr] = true
    naddrs = naddrs + 1
    sorted = false
  end

  -- The owner of the first point at or after hash `h` whose owner is in `cand` (addr -> value).
  local function lookup(h, cand)
    if not sorted then
      table.sort(points)
      sorted = true
    end
    local n = #points
    local lo, hi = 1, n + 1
    while lo < hi do
      local mid = (lo + hi) // 2
      if points[mid] < h then lo = mid + 1 else hi = mid end
    end
    for step = 0, n - 1 do
      local addr = owner[points[(lo - 1 + step) % n + 1]]
      local v = cand[addr]
      if v then return v, addr end
    end
    return nil
  end

  function M.select_peer(peers, ctx)
    local key = ctx.key
    if key == nil then return rr.select_peer(peers, ctx) end
    local cand, added = {}, 0
    for i = 1, #peers do
      local addr = peers[i].addr
      if not known[addr] and added < max_new then
        add(addr)
        added = added + 1
      end
      if known[addr] then cand[addr] = i end
    end
    local i = lookup(mix(fnv(key)), cand)
    if i == nil then return rr.select_peer(peers, ctx) end
    return i
  end

  --- ch.owner(key, addrs): which address of the list `addrs` the ring maps `key` to.
  local function owner_of(key, addrs)
    local cand = {}
    for _, addr in ipairs(addrs) do
      if not known[addr] then add(addr) end
      cand[addr] = addr
    end
    if next(cand) == nil then return nil end
    return (lookup(mix(fnv(key)), cand))
  end

  local function hash(s) return mix(fnv(s)) end
  return options.instance(M, new, o, { owner = owner_of, hash = hash })
end

return new()
