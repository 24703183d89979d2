-- p2p: a complete policy for a peer-to-peer node that keeps 8 peers ready, in the manner of a
-- Bitcoin node (see the Bitcoin peer-pool design this project started from):
--
--   * addresses come from DNS seeds (seed_dns, A/AAAA through the loop's resolver, port 8333),
--     and from `fixed_seeds` (seed_static) when DNS gives nothing; the pool asks for them when
--     its target_peers maintenance runs out of candidates. There are none by default (a
--     default must never send traffic anywhere real): name your network's, or start from an
--     address book or pool:add_peer;
--   * a new conn must complete a handshake: we send "VERSION <version>\r\n" and the peer must
--     answer a line starting with "VERACK" (a line-based stand-in for Bitcoin's version/verack
--     exchange: replace handshake() for a real network);
--   * a failed connect backs off exponentially (full jitter); `burn_after` consecutive failures,
--     or one failed handshake (the peer speaks something else), burn the address; burned
--     addresses are kept out of later seeding, so DNS cannot bring them back;
--   * peers to dial are picked at random among the candidates (address diversity); acquires
--     are served by the least loaded ready peer;
--   * P2P peers talk unprompted: keep_idle_bytes keeps what arrives on an idle conn for its
--     next holder instead of treating it as a stale reply.
--
-- target_peers, keep_idle_bytes and the rest are pool options, not policy: take them from
-- `.pool_options` (a fresh table each time), which for the defaults is
--   { target_peers = 8, max_per_peer = 1, keep_idle_bytes = true, retries = 0,
--     connect_timeout = 5000, handshake_timeout = 5000, max_address_age = 3 h,
--     idle_timeout = 0, max_lifespan = 0, eject_after = 3, maintenance_interval = 1000,
--     seed_interval = 10000 }
-- (retries = 0: a failed dial is not retried on the spot; the next maintenance tick dials
-- another candidate; idle_timeout/max_lifespan = 0: peers are kept as long as they work.)
--
-- Options (p2p.new{...}):
--   dns_seeds = {}                       DNS seed names (none by default)
--   port = 8333                          their port
--   fixed_seeds = {}                     addresses used when DNS gives none
--   target_peers = 8                     ready peers to keep (goes into pool_options)
--   burn_after = 3                       consecutive failures that burn an address
--   burn_on = { "handshake_failed" }     error codes that burn at once
--   backoff_base_ms = 1000, backoff_cap_ms = 60000
--   version = "peerpool/0.1"             sent in the VERSION line
--   expect = "VERACK"                    the answer that completes the handshake
--   random = math.random                 function(n) -> 1..n, for the choice of peers to dial
--
-- Example:
--   local p2p = require "peerpool.policies.p2p".new{ dns_seeds = { "seed.mynet.example" } }
--   local opts = p2p.pool_options
--   opts.policy, opts.address_book = p2p, "peers.book"
--   local pool = peerpool.new(opts)
--   uv.run()   -- the maintenance tick seeds, dials and handshakes until 8 peers are ready
local options = require "peerpool.policies.options"
local seed_dns = require "peerpool.policies.seed_dns"
local seed_static = require "peerpool.policies.seed_static"
local backoff_exponential = require "peerpool.policies.backoff_exponential"
local least_loaded = require "peerpool.policies.least_loaded"

local DEFAULTS = {
  dns_seeds = { {}, "strings" },
  port = { 8333, "port" },
  fixed_seeds = { {}, "strings" },
  target_peers = { 8, "positive_integer" },
  burn_after = { 3, "count_or_false" },
  burn_on = { { "handshake_failed" }, "strings" },
  backoff_base_ms = { 1000, "positive_number" },
  backoff_cap_ms = { 60000, "positive_number" },
  version = { "peerpool/0.1", "string" },
  expect = { "VERACK", "string" },
  random = { false, "function_or_false" },
}

local function build(M, opts)
  local o = options.check("policy.p2p", opts, DEFAULTS)
  if o.backoff_cap_ms < o.backoff_base_ms then
    error("policy.p2p.backoff_cap_ms must be >= backoff_base_ms", 0)
  end
  local dns = seed_dns.new { names = o.dns_seeds, port = o.port }
  local fixed = seed_static.new { addrs = o.fixed_seeds }
  local backoff = backoff_exponential.new { base_ms = o.backoff_base_ms,
    cap_ms = o.backoff_cap_ms, burn_after = o.burn_after, burn_on = o.burn_on }
  local random = o.random or math.random
  local hello = "VERSION " .. o.version .. "\r\n"
  local expect = o.expect

  local burned = {} -- addresses this policy burned: seeding skips them

  function M.select_peer(peers, ctx)
    if ctx.dialing then return random(#peers) end
    return least_loaded.select_peer(peers, ctx)
  end

  function M.backoff(attempt, err, peer)
    local ms = backoff.backoff(attempt, err, peer)
    if ms == false and peer then burned[peer.addr] = true end
    return ms
  end

  function M.seed(ctx)
    -- ctx:add, minus the addresses we burned (adding one would bring it back).
    local filtered = setmetatable({
      add = function(_, addr, last_seen)
        if burned[addr] then return nil, "burned", "burned by the p2p policy" end
        return ctx:add(addr, last_seen)
      end,
    }, { __index = ctx })
    local before = ctx.added
    local ok, err = pcall(dns.seed, filtered)
    if ctx.added == before and #o.fixed_seeds > 0 then
      fixed.seed(filtered)
    elseif not ok then
      error(err, 0)
    end
  end

  function M.handshake(conn)
    if not conn:send(hello) then return false end
    local line = conn:receive("*l")
    return line ~= nil and line:sub(1, #expect) == expect
  end

  local function pool_options()
    return { target_peers = o.target_peers, max_per_peer = 1, keep_idle_bytes = true,
      retries = 0, connect_timeout = 5000, handshake_timeout = 5000,
      max_address_age = 3 * 3600 * 1000, idle_timeout = 0, max_lifespan = 0, eject_after = 3,
      maintenance_interval = 1000, seed_interval = 10000 }
  end

  return o, { burned = burned }, { pool_options = pool_options }
end

return options.policy("p2p",
  "P2P node: DNS seeds, VERSION/VERACK handshake, burn failed addresses", build)
