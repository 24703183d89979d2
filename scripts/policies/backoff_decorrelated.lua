-- backoff_decorrelated: "decorrelated jitter" backoff. Each peer's delay grows from the last
-- delay it was given, not from the attempt count:
--
--   first failure:  delay = random in [base_ms, 3 * base_ms]
--   then:           delay = min(cap_ms, random in [base_ms, 3 * previous delay])
--
-- so delays stay spread out while still growing roughly exponentially (AWS Architecture Blog,
-- "Exponential Backoff And Jitter"). The previous delay is remembered per peer address; a
-- peer's first failure after a success starts over. `burn_after` and `burn_on` burn a peer as
-- in backoff_exponential.
--
-- Options (backoff_decorrelated.new{...}):
--   base_ms = 100        the smallest delay
--   cap_ms = 30000       the largest delay
--   burn_after = false   a positive integer: burn at this many consecutive failures
--   burn_on = {}         error codes that burn at once
--
-- Example:
--   pool:load_policy(require "peerpool.policies.backoff_decorrelated".new{ base_ms = 50 })
local options = require "peerpool.policies.options"

-- Its own options; cap_ms, burn_after and burn_on come with options.backoff.
local DEFAULTS = {
  base_ms = { 100, "positive_number" },
}

local MAX_REMEMBERED = 4096 -- peers whose last delay is kept; then the memory starts over

local function build(M, opts)
  local o, burns = options.backoff(opts, DEFAULTS)
  local base, cap = math.floor(o.base_ms), math.floor(o.cap_ms)
  local last, remembered = {}, 0

  function M.backoff(attempt, err, peer)
    local addr = peer and peer.addr or "?"
    if burns(attempt, err) then
      if last[addr] then last[addr], remembered = nil, remembered - 1 end
      return false
    end
    local prev = attempt > 1 and last[addr] or base
    local hi = math.min(cap, prev * 3)
    local delay = hi > base and math.random(base, hi) or hi
    if last[addr] == nil then
      if remembered >= MAX_REMEMBERED then last, remembered = {}, 0 end
      remembered = remembered + 1
    end
    last[addr] = delay
    return delay
  end

  return o
end

return options.policy("backoff_decorrelated", "decorrelated jitter backoff", build)
