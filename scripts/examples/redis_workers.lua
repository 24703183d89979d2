-- redis_workers.lua — ten workers sharing a pool over several redis-servers, with a policy
-- written in Lua: the program a new user writes first.
--
-- A handshake hook names each conn (CLIENT SETNAME) before the pool lends it; a selection
-- hook sends each acquire to the peer with the fewest leases. Ten coroutines each run
-- acquire -> SET -> GET -> release in a loop and check that every GET answers what their SET
-- wrote. At the end it prints one line per worker and the pool's counters.
--
--   redis-server --port 7001 --save '' --appendonly no &   (and 7002, 7003)
--   LUA_CPATH="build/lua/?.so;;" lua5.4 scripts/examples/redis_workers.lua \
--     127.0.0.1:7001 127.0.0.1:7002 127.0.0.1:7003
--
-- Options: ROUNDS=n in the environment sets the requests per worker (default 200).
local uv = require "luv"
local peerpool = require "peerpool"
local redis = require "peerpool.policies.redis"

local addrs = #arg > 0 and arg or { "127.0.0.1:6379" }
local WORKERS, ROUNDS = 10, tonumber(os.getenv("ROUNDS") or "200")

-- RESP, the Redis protocol: the redis policy module's encoder and reply reader.
local command, reply = redis.command, redis.reply

local named = 0
local pool = peerpool.new {
  peers = addrs, -- a bad address raises here, naming it
  max_per_peer = 2,
  acquire_timeout = 5000,
  io_timeout = 2000,
  policy = {
    name = "redis workers",
    -- Runs on every new conn before it is lent; false fails the conn.
    handshake = function(conn)
      named = named + 1
      conn:send(command("CLIENT", "SETNAME", "worker-conn-" .. named))
      return reply(conn) == "OK"
    end,
    -- Which peer serves an acquire that named none: the one with the fewest leases.
    select_peer = function(peers)
      local best = 1
      for i, p in ipairs(peers) do
        if p.leases < peers[best].leases then best = i end
      end
      return best
    end,
  },
}

local done, failures = 0, 0

local function worker(id)
  local served = {}
  for n = 1, ROUNDS do
    local conn, aerr, adetail = pool:acquire()
    if not conn then
      print(("worker %d: acquire failed: %s (%s)"):format(id, aerr, adetail))
      failures = failures + 1
      break
    end
    -- Each key lives on the peer that wrote it: SET and GET on the same conn.
    local key, value = ("w%d:%d"):format(id, n), ("v%d"):format(n * id)
    conn:send(command("SET", key, value) .. command("GET", key))
    local set, serr = reply(conn)
    local got, gerr = reply(conn)
    if set == "OK" and got == value then
      served[conn.peer] = (served[conn.peer] or 0) + 1
      conn:release()
    else
      print(("worker %d: %s / %s"):format(id, tostring(set or serr), tostring(got or gerr)))
      failures = failures + 1
      conn:close() -- the protocol state is unknown: the pool drops this conn
    end
  end
  local spread = {}
  for peer, count in pairs(served) do spread[#spread + 1] = peer .. "=" .. count end
  table.sort(spread)
  print(("worker %d: %s"):format(id, table.concat(spread, " ")))
  done = done + 1
  if done == WORKERS then
    local s = pool:stats()
    print(("pool: %d acquires, %d conns opened, %d handshakes, %d hook errors, %d failures")
      :format(s.acquires, s.connects_ok, s.hooks.handshake.calls,
        s.hooks.handshake.errors + s.hooks.select_peer.errors, failures))
    pool:close()
  end
end

for id = 1, WORKERS do peerpool.spawn(worker, id) end
uv.run()
os.exit(failures == 0 and done == WORKERS and 0 or 1)
