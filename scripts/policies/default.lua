-- default: the built-in behaviour, spelled out in Lua. Loading this file changes nothing a
-- pool does (it only runs the same decisions in Lua instead of C, at the cost of a hook call);
-- it is here to copy as the starting point of a policy of your own:
--
--   cp scripts/policies/default.lua my_policy.lua     -- edit, then, on a live pool:
--   assert(pool:load_policy("my_policy.lua"))          -- nil, err (old policy kept) on a mistake
--
-- Delete the hooks you do not change: a hook left out keeps the built-in C default, which costs
-- nothing. The contract of each hook is in docs/policies.md.
--
-- Options: none (edit the constants below).
--
-- Example:
--   local pool = peerpool.new{ policy = "scripts/policies/default.lua" }
local least_loaded = require "peerpool.policies.least_loaded"

local M = {
  name = "default",
  description = "the built-in behaviour, in Lua",
}

local BACKOFF_BASE_MS = 100 -- the C engine's full-jitter backoff
local BACKOFF_CAP_MS = 30000

--- select_peer(peers, ctx): which peer serves an acquire that named no peer. `peers` are views
-- of the eligible candidates (at most 64): with ctx.dialing false, peers that have a usable
-- conn; with ctx.dialing true, peers that may be dialled (those not waiting out a backoff
-- first). ctx.key is the acquire's key (or nil). Return a view or its index.
--
-- The built-in choice is the first candidate: the pool starts its candidate window at the
-- peer least recently chosen (a rotating ring for serving, a cursor for dialling), so taking
-- the first is round robin.
function M.select_peer(peers, ctx) -- luacheck: no unused args
  return 1
end

--- select_conn(conns, ctx): which of a peer's usable conns serves the acquire. The built-in
-- choice: for exclusive conns (ctx.client_limit == 1) the one released last (the least idle);
-- for shared ones the fewest leases, then the longest idle (idle_ms: time since its lease
-- count last changed).
function M.select_conn(conns, ctx)
  if ctx.client_limit == 1 then
    local best = 1
    for i = 2, #conns do
      if conns[i].idle_ms <= conns[best].idle_ms then best = i end -- (listed oldest first)
    end
    return best
  end
  return least_loaded.select_conn(conns) -- shared conns: least_loaded implements this rule
end

--- backoff(attempt, err, peer): ms before the peer's next connect attempt after its attempt-th
-- consecutive failure (err: "ECONNREFUSED", "ETIMEDOUT", "timeout" for a handshake that ran
-- out of time, "handshake_failed", ...), or false to burn the peer. The built-in backoff:
-- full jitter, a random delay in [0, min(30 s, 100 ms * 2^attempt)]; it never burns.
function M.backoff(attempt, err, peer) -- luacheck: no unused args
  local ceiling = BACKOFF_BASE_MS
  for _ = 1, attempt do
    if ceiling >= BACKOFF_CAP_MS then break end
    ceiling = ceiling * 2
  end
  if ceiling > BACKOFF_CAP_MS then ceiling = BACKOFF_CAP_MS end
  return math.random(0, ceiling)
end

-- The built-in pool has no seed, handshake or ping: it dials only the peers it is given, a
-- conn is ready as soon as it connects, and idle conns are never checked. Templates:
--
-- function M.seed(ctx)           -- the pool wants ctx.wanted more addresses
--   for _, addr in ipairs(ctx:resolve("seed.example.org", 8333) or {}) do ctx:add(addr) end
-- end
--
-- function M.handshake(conn)     -- true: the conn is ready; false or an error: attempt failed
--   conn:send("HELLO\r\n")
--   return conn:receive("*l") == "WELCOME"
-- end
--
-- function M.ping(conn)          -- true: healthy; false or an error: the conn is closed
--   conn:send("PING\r\n")
--   return conn:receive("*l") == "+PONG"
-- end

return M
