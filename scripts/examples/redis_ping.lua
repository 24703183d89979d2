-- redis_ping.lua — pooled PING against one redis-server: a small, complete peerpool program.
--
-- Five workers share a pool of at most three connections to one redis-server. Each worker
-- sends PING a few times (acquire -> send -> receive -> release), so some workers wait in the
-- pool's queue for a conn another worker gives back; the last one prints pool:stats() and
-- closes the pool.
--
-- Run it from the repository root after a build (cmake -S . -B build && cmake --build build):
--
--   redis-server --port 6379 --save '' --appendonly no &      # a server to talk to
--   LUA_CPATH="build/lua/?.so;;" lua5.4 scripts/examples/redis_ping.lua 127.0.0.1:6379
--
-- LUA_CPATH tells `require "peerpool"` where the module is (build/lua/peerpool.so); with the
-- module installed by `luarocks --lua-version=5.4 make`, plain `lua5.4 redis_ping.lua` works.
-- The address defaults to 127.0.0.1:6379. Debian's lua-luv package provides `luv`.
local uv = require "luv"
local peerpool = require "peerpool"

local addr = arg[1] or "127.0.0.1:6379"
local WORKERS, PINGS = 5, 3

local pool = peerpool.new {
  max_per_peer = 3,      -- at most 3 conns to the server...
  client_limit = 1,      -- ...each lent to one worker at a time
  connect_timeout = 2000,
  retries = 1,
  acquire_timeout = 5000, -- a worker waits at most 5 s for a conn
  io_timeout = 2000,      -- and at most 2 s for a reply
}
local ok, err, detail = pool:add_peer(addr)
if not ok then
  io.stderr:write(("bad address %s: %s (%s)\n"):format(addr, err, detail))
  os.exit(2)
end

-- PING once on a leased conn. Returns the reply line, or nil and why.
local function ping(conn)
  local sent, serr = conn:send("PING\r\n")
  if not sent then return nil, serr end
  return conn:receive("*l") -- one line, without the \r\n: "+PONG"
end

local running, failed = WORKERS, false

local function worker(id)
  for n = 1, PINGS do
    local conn, aerr, adetail = pool:acquire(addr) -- waits (yields) until a conn is free
    if not conn then
      print(("worker %d: acquire failed: %s (%s)"):format(id, aerr, adetail))
      failed = true
      break
    end
    local reply, rerr = ping(conn)
    if reply then
      print(("worker %d, ping %d: %s from %s"):format(id, n, reply, conn.peer))
      conn:release() -- back to the pool, clean
    else
      print(("worker %d, ping %d: failed: %s"):format(id, n, rerr))
      conn:close()   -- the protocol state is unknown: let the pool drop this conn
      failed = true
    end
  end
  running = running - 1
  if running == 0 then
    -- The last worker reports and closes the pool; uv.run() below then has nothing left to
    -- do and returns.
    local s = pool:stats()
    print(("pool: %d conns (%d idle), %d acquires: %d at once, %d after a dial, %d after a wait")
      :format(s.conns, s.idle, s.acquires, s.acquired_immediate, s.acquired_dialed,
        s.acquired_waited))
    print(("      %d releases, %d connect attempts, %d bytes out, %d bytes in"):format(
      s.releases, s.connect_attempts, s.bytes_out, s.bytes_in))
    pool:close()
  end
end

-- Each worker is a coroutine on luv's loop: it runs until its first wait, and the pool resumes
-- it when the conn (or the reply) is there.
for id = 1, WORKERS do
  coroutine.wrap(worker)(id)
end
uv.run()
os.exit(failed and 1 or 0)
