-- redis_drain.lua — a service client that takes a backend out of service and then shuts down
-- gracefully, without failing a request.
--
-- Two redis-servers ("blue" and "green") serve one pool. min_idle keeps 2 conns open and idle
-- to each before the first request, so no request pays a connect. Four workers send PING
-- through any backend. Then blue is drained (it takes no new lease; its conns close as their
-- leases end, while green serves on) and, once it holds no conn, removed. Finally the program
-- stops its workers and closes the pool with close{ drain_ms = 2000 }: requests in flight
-- finish, then every conn closes.
--
--   redis-server --port 6379 --save '' --appendonly no &
--   redis-server --port 6380 --save '' --appendonly no &
--   LUA_CPATH="build/lua/?.so;;" lua5.4 scripts/examples/redis_drain.lua 127.0.0.1:6379 \
--     127.0.0.1:6380
--
-- It exits with 0 when every request got its +PONG, 1 otherwise.
local uv = require "luv"
local peerpool = require "peerpool"
local sleep = peerpool.sleep

-- Wait (in a coroutine) until pred() holds, looking every 10 ms: false if it still does not
-- after ms.
local function wait_for(pred, ms)
  for _ = 1, ms // 10 do
    if pred() then return true end
    sleep(10)
  end
  return pred()
end

local blue, green = arg[1] or "127.0.0.1:6379", arg[2] or "127.0.0.1:6380"
local WORKERS = 4

local pool = peerpool.new {
  peers = { blue, green }, -- a bad address raises here, naming it
  min_idle = 2,            -- per backend, open and idle before any request
  max_per_peer = 4,
  connect_timeout = 2000,
  acquire_timeout = 3000,
  io_timeout = 2000,
}

local stopping = false
local counts = { ok = 0, failed = 0, by_peer = {} }

-- One worker: PING through any backend until the program stops.
local function worker()
  while not stopping do
    local conn, err, why = pool:acquire()
    if not conn then
      counts.failed = counts.failed + 1
      io.stderr:write("acquire: ", err, " (", tostring(why), ")\n")
      sleep(10)
    else
      local peer = conn.peer
      local sent, serr = conn:send("PING\r\n")
      local reply = sent and conn:receive("*l")
      if reply == "+PONG" then
        counts.ok = counts.ok + 1
        counts.by_peer[peer] = (counts.by_peer[peer] or 0) + 1
        conn:release()
      else
        counts.failed = counts.failed + 1
        io.stderr:write("PING: ", tostring(serr or reply), "\n")
        conn:close()
      end
      sleep(1)
    end
  end
end

peerpool.run(function()
  local warm = wait_for(function() return pool:stats().idle == 4 end, 3000)
  print(("warm before the first request: %d idle conns (%s)"):format(pool:stats().idle,
    warm and "min_idle 2 per backend" or "NOT WARM"))
  for _ = 1, WORKERS do peerpool.run(worker) end
  sleep(300)

  -- A deploy takes blue out: no new leases; its conns close as their requests end.
  local t0 = uv.now()
  assert(pool:drain(blue))
  local drained = wait_for(function() return pool:peer(blue).conns == 0 end, 3000)
  print(("blue drained in %d ms: %s"):format(uv.now() - t0, drained and "0 conns" or "NOT DRAINED"))
  local served_by_blue = counts.by_peer[blue] or 0
  assert(pool:remove_peer(blue))
  print("blue removed: peers now " .. #pool:peers())
  sleep(300)
  print(("blue served %d requests before its drain, %d after"):format(served_by_blue,
    (counts.by_peer[blue] or 0) - served_by_blue))

  -- Shut down: workers stop taking new requests; those in flight finish within 2 s.
  stopping = true
  local s = pool:stats()
  local closed, err, why = pool:close { drain_ms = 2000 }
  print(("closed gracefully: %s%s"):format(tostring(closed), closed and "" or
    (" (" .. tostring(err) .. ": " .. tostring(why) .. ")")))
  print(("requests: %d ok, %d failed; warm dials %d, acquires that waited for a connect %d")
    :format(counts.ok, counts.failed, s.warm_dials, s.acquired_dialed))
end)
os.exit(counts.failed == 0 and counts.ok > 0 and 0 or 1)
