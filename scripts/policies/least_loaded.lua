-- least_loaded: select_peer picks the peer with the least work on it; select_conn the conn
-- with the fewest leases (the longest idle among equals).
--
--   serving from open conns: fewest leases + queued acquires (`waiters`), then most idle
--     conns, then fewest consecutive failures;
--   choosing a peer to dial (ctx.dialing): fewest conns, then fewest failures, then lowest
--     latency_ms (a peer never connected counts as 0 ms).
-- Ties go to the earliest candidate: the pool's candidate window starts at the peer least
-- recently chosen, so equals take turns.
--
-- Options (least_loaded.new{...}):
--   count_waiters = true   count acquires queued for a peer as load
--   conns = true           also choose among a peer's conns (select_conn); false leaves that
--                          to the built-in default (the same rule, in C)
--
-- Example:
--   pool:load_policy(require "peerpool.policies.least_loaded".new{ conns = false })
local options = require "peerpool.policies.options"

local DEFAULTS = {
  count_waiters = { true, "boolean" },
  conns = { true, "boolean" },
}

local function build(M, opts)
  local o = options.check("policy.select", opts, DEFAULTS)
  local count_waiters = o.count_waiters

  -- Lexicographic "a is better than b" on up to three keys (lower is better).
  local function better(a1, a2, a3, b1, b2, b3)
    if a1 ~= b1 then return a1 < b1 end
    if a2 ~= b2 then return a2 < b2 end
    return a3 < b3
  end

  function M.select_peer(peers, ctx)
    local best, k1, k2, k3 = 1, nil, nil, nil
    local dialing = ctx.dialing
    for i = 1, #peers do
      local p = peers[i]
      local a1, a2, a3
      if dialing then
        a1, a2, a3 = p.conns, p.failures, p.latency_ms
      else
        a1 = p.leases
        if count_waiters then a1 = a1 + p.waiters end
        a2, a3 = -p.idle, p.failures
      end
      if k1 == nil or better(a1, a2, a3, k1, k2, k3) then best, k1, k2, k3 = i, a1, a2, a3 end
    end
    return best
  end

  if o.conns then
    function M.select_conn(conns)
      local best, leases, idle = 1, nil, nil
      for i = 1, #conns do
        local c = conns[i]
        local l, ms = c.leases, c.idle_ms
        if leases == nil or l < leases or (l == leases and ms > idle) then
          best, leases, idle = i, l, ms
        end
      end
      return best
    end
  end

  return o
end

return options.policy("least_loaded", "fewest leases (serving) or fewest conns (dialling)", build)
