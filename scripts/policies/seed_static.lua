-- seed_static: a seed hook that adds a fixed list of addresses whenever the pool asks for
-- more (target_peers maintenance ran out of candidates, or an acquire for any peer found
-- none). Adding an address the pool knows refreshes its last_seen; it also brings a burned
-- address back (re-adding is the way out of burned), so keep addresses you want burned for
-- good out of the list, or filter them (see p2p.lua).
--
-- An invalid address raises (after the others are added), so the mistake is logged and counted
-- in stats().hooks.seed; an address refused for another reason (a filtering ctx, as in p2p.lua)
-- is skipped.
--
-- Options (seed_static.new{...}):
--   addrs = {}           the addresses: "1.2.3.4:8333", "[::1]:6379", "/run/app.sock"
--
-- Unlike `peers = {...}` in peerpool.new (added once, at start), these are added again each
-- time the pool asks, with a fresh last_seen.
--
-- Example:
--   pool:load_policy(require "peerpool.policies.seed_static".new{
--     addrs = { "10.0.0.1:8333", "10.0.0.2:8333" } })
local options = require "peerpool.policies.options"

local DEFAULTS = {
  addrs = { {}, "strings" },
}

local function build(M, opts)
  local o = options.check("policy.seed", opts, DEFAULTS)
  local addrs = table.move(o.addrs, 1, #o.addrs, 1, {})

  function M.seed(ctx)
    local bad
    for _, addr in ipairs(addrs) do
      local ok, err, why = ctx:add(addr)
      if not ok and err == "invalid" and not bad then bad = addr .. ": " .. tostring(why) end
    end
    if bad then error("seed_static: bad address " .. bad, 0) end
  end

  return o
end

return options.policy("seed_static", "a fixed list of addresses", build)
