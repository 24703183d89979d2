-- round_robin: select_peer takes the candidate peers in turn, in address order, whatever order
-- the pool hands them over in. It keeps two cursors (the last address chosen): one for acquires
-- served by an open conn, one for choosing a peer to dial. select_conn is left to the built-in
-- default (fewest leases, then longest idle).
--
-- Cost: one pass over the candidates (at most 64) per acquire that has a choice to make.
-- The module table itself is an instance with the default options; its cursors are shared by
-- every pool that loads it. `.new()` makes an instance of its own.
--
-- Options: none.
--
-- Example:
--   local pool = peerpool.new{ policy = "scripts/policies/round_robin.lua" }
--   pool:load_policy(require "peerpool.policies.round_robin".new())
--   -- in a policy of your own:
--   local rr = require "peerpool.policies.round_robin".new()
--   return { select_peer = rr.select_peer, backoff = ... }
local options = require "peerpool.policies.options"

local DEFAULTS = {}

local function build(M, opts)
  local o = options.check("policy.select", opts, DEFAULTS)
  local last = { [false] = nil, [true] = nil } -- ctx.dialing -> last address chosen

  -- The candidate with the smallest address after `after` (wrapping to the smallest).
  local function next_after(peers, after)
    local best, best_addr, low, low_addr
    for i = 1, #peers do
      local addr = peers[i].addr
      if after and addr > after and (best_addr == nil or addr < best_addr) then
        best, best_addr = i, addr
      end
      if low_addr == nil or addr < low_addr then low, low_addr = i, addr end
    end
    if best then return best, best_addr end
    return low, low_addr
  end

  function M.select_peer(peers, ctx)
    local dialing = ctx.dialing == true
    local i, addr = next_after(peers, last[dialing])
    last[dialing] = addr
    return i
  end

  return o, { next_after = next_after }
end

return options.policy("round_robin", "peers in turn, in address order", build)
