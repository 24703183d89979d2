-- p2c_latency: power of two choices on latency. select_peer draws two different candidates at
-- random and takes the one that costs less, where
--
--   cost = latency * (1 + load_weight * (leases + waiters))
--   latency = the peer's latency_ms (an EWMA of its connect times), or `unknown_ms` for a peer
--             with no measurement yet (latency_ms == 0, which also means "under 1 ms")
--
-- Two random choices avoid both the herd behaviour of always taking the best peer and the cost
-- of scanning every candidate; the load term keeps a fast peer from being buried. select_conn
-- is left to the built-in default (latency is a peer's, not a conn's).
--
-- Options (p2c_latency.new{...}):
--   unknown_ms = 0       latency assumed for a peer not measured yet (0: try it early)
--   load_weight = 1      how much each lease or queued acquire adds to the cost (0: latency
--                        only)
--   random = math.random a function(n) -> an integer in 1..n (tests pass their own)
--
-- Example:
--   pool:load_policy(require "peerpool.policies.p2c_latency".new{ unknown_ms = 50 })
local options = require "peerpool.policies.options"

local DEFAULTS = {
  unknown_ms = { 0, "number" },
  load_weight = { 1, "number" },
  random = { false, "function_or_false" },
}

local function build(M, opts)
  local o = options.check("policy.select", opts, DEFAULTS)
  local unknown, weight = o.unknown_ms, o.load_weight
  local random = o.random or math.random

  local function cost(p)
    local lat = p.latency_ms
    if lat == 0 then lat = unknown end
    if weight == 0 then return lat end
    return lat * (1 + weight * (p.leases + p.waiters))
  end

  function M.select_peer(peers)
    local n = #peers
    if n < 2 then return 1 end
    local i = random(n)
    local j = random(n - 1)
    if j >= i then j = j + 1 end
    if cost(peers[j]) < cost(peers[i]) then return j end
    return i
  end

  return o, { cost = cost }
end

return options.policy("p2c_latency", "power of two choices on latency_ms (EWMA) and load", build)
