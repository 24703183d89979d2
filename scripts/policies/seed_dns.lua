-- seed_dns: a seed hook that resolves DNS seed names (A and AAAA records, through the loop's
-- resolver with ctx:resolve, so the loop never blocks) and adds every address found, with the
-- port given. This is how a Bitcoin node finds its first peers ("seed.bitcoin.sipa.be" and
-- friends, port 8333). A name may carry its own port ("seed.example.org:18333").
--
-- Names are tried in order; a name that fails to resolve is skipped. If no name gave any
-- address, the hook raises (so the failure is logged and counted in stats().hooks.seed).
--
-- Options (seed_dns.new{...}):
--   names = {}           the names to resolve
--   port = false         the port for names without one (required if any name lacks one)
--   ipv6 = true          false: keep IPv4 addresses only
--   limit = false        a positive integer: add at most this many addresses per call
--
-- Example:
--   pool:load_policy(require "peerpool.policies.seed_dns".new{
--     names = { "seed.bitcoin.sipa.be", "dnsseed.bluematt.me" }, port = 8333 })
local options = require "peerpool.policies.options"

local DEFAULTS = {
  names = { {}, "strings" },
  port = { false, "port_or_false" },
  ipv6 = { true, "boolean" },
  limit = { false, "count_or_false" },
}

local function build(M, opts)
  local o = options.check("policy.seed", opts, DEFAULTS)
  local names = {}
  for i, name in ipairs(o.names) do
    local host, port = name:match("^%[(.+)%]:(%d+)$") -- [v6]:port
    if not host then host, port = name:match("^([^:]+):(%d+)$") end -- name:port
    port = port and math.tointeger(tonumber(port))
    if not host then host, port = name, o.port end
    if port and (port < 1 or port > 65535) then port = nil end
    if not port then
      error(string.format("policy.seed.port must be a port number (1..65535) (names[%d] %q " ..
        "has no port of its own)", i, name), 0)
    end
    names[i] = { host, port }
  end
  local ipv6, limit = o.ipv6, o.limit

  function M.seed(ctx)
    local added, failures = 0, {}
    for _, entry in ipairs(names) do
      local list, err = ctx:resolve(entry[1], entry[2])
      if not list then
        failures[#failures + 1] = entry[1] .. " (" .. tostring(err) .. ")"
      else
        for _, addr in ipairs(list) do
          if limit and added >= limit then return end
          if ipv6 or addr:sub(1, 1) ~= "[" then
            if ctx:add(addr) then added = added + 1 end
          end
        end
      end
    end
    if added == 0 and #failures > 0 then
      error("seed_dns: no address from " .. table.concat(failures, ", "), 0)
    end
  end

  return o
end

return options.policy("seed_dns", "addresses from DNS seed names", build)
