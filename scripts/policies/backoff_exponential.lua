-- backoff_exponential: exponential backoff with full jitter. After a peer's attempt-th
-- consecutive failure (a failed connect or handshake; attempt is 1 after the first) the next
-- attempt waits a random time in
--
--   [0, min(cap_ms, base_ms * 2^attempt)] ms
--
-- which spreads retries of many clients apart (see "Exponential Backoff And Jitter", AWS
-- Architecture Blog). With the default options this is the built-in backoff. `burn_after`
-- failures in a row burn the peer (never dialled again unless re-added); `burn_on` lists error
-- codes that burn it at once (e.g. "handshake_failed": the peer speaks another protocol).
--
-- Options (backoff_exponential.new{...}):
--   base_ms = 100        the first ceiling is 2 * base_ms
--   cap_ms = 30000       the ceiling never passes this
--   burn_after = false   a positive integer: burn at this many consecutive failures
--   burn_on = {}         error codes ("handshake_failed", "ECONNREFUSED", "timeout", ...) that
--                        burn at once
--
-- Example:
--   pool:load_policy(require "peerpool.policies.backoff_exponential".new{
--     base_ms = 250, cap_ms = 60000, burn_after = 8 })
local options = require "peerpool.policies.options"

-- Its own options; cap_ms, burn_after and burn_on come with options.backoff.
local DEFAULTS = {
  base_ms = { 100, "positive_number" },
}

local function build(M, opts)
  local o, burns = options.backoff(opts, DEFAULTS)
  local base, cap = o.base_ms, o.cap_ms

  --- The ceiling of the delay after `attempt` failures.
  local function ceiling(attempt)
    local c = base
    for _ = 1, attempt do
      c = c * 2
      if c >= cap then return cap end
    end
    return c
  end

  function M.backoff(attempt, err)
    if burns(attempt, err) then return false end
    return math.random(0, math.floor(ceiling(attempt)))
  end

  return o, { ceiling = ceiling }
end

return options.policy("backoff_exponential", "exponential backoff with full jitter", build)
