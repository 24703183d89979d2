-- backoff_fixed: the same delay after every failure, plus an optional random jitter:
--
--   delay = min(cap_ms, base_ms + random in [0, jitter_ms])
--
-- For peers that are either up or down (a local service that restarts) where growing delays
-- only slow recovery. `burn_after` and `burn_on` burn a peer as in backoff_exponential.
--
-- Options (backoff_fixed.new{...}):
--   base_ms = 1000       the delay
--   jitter_ms = 0        up to this much is added at random
--   cap_ms = 30000       the delay never passes this
--   burn_after = false   a positive integer: burn at this many consecutive failures
--   burn_on = {}         error codes that burn at once
--
-- Example:
--   pool:load_policy(require "peerpool.policies.backoff_fixed".new{ base_ms = 500,
--     jitter_ms = 100, burn_after = 20 })
local options = require "peerpool.policies.options"

-- Its own options; cap_ms, burn_after and burn_on come with options.backoff.
local DEFAULTS = {
  base_ms = { 1000, "positive_number" },
  jitter_ms = { 0, "number" },
}

local function build(M, opts)
  local o, burns = options.backoff(opts, DEFAULTS)
  local base, jitter, cap = math.floor(o.base_ms), math.floor(o.jitter_ms), math.floor(o.cap_ms)

  function M.backoff(attempt, err)
    if burns(attempt, err) then return false end
    local delay = base
    if jitter > 0 then delay = delay + math.random(0, jitter) end
    return math.min(cap, delay)
  end

  return o
end

return options.policy("backoff_fixed", "a fixed delay with optional jitter", build)
