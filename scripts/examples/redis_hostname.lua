-- redis_hostname.lua — a Redis client that names its server by host name.
--
-- The pool resolves the name itself, on the loop (A and AAAA, with c-ares: nothing blocks),
-- re-resolves it when the answer's TTL runs out, and dials its addresses Happy-Eyeballs style
-- (IPv6 first, the next address 250 ms later or as soon as one fails). The peer keeps the name
-- as its address; pool:peer(addr).resolved and conn:address() show where the conns go.
--
-- Run it from the repository root after a build:
--
--   redis-server --port 6379 --save '' --appendonly no &
--   LUA_CPATH="build/lua/?.so;;" lua5.4 scripts/examples/redis_hostname.lua localhost:6379
--   LUA_CPATH="build/lua/?.so;;" lua5.4 scripts/examples/redis_hostname.lua \
--       redis.internal:6379 10.0.0.2:53        # a name, asked of a DNS server of your choice
--
-- Without a DNS server argument the system's resolver settings (/etc/resolv.conf, /etc/hosts)
-- apply; "localhost" always means ::1 and 127.0.0.1.
local peerpool = require "peerpool"

local addr, dns_server = arg[1] or "localhost:6379", arg[2]

local pool = peerpool.new {
  max_per_peer = 2,
  connect_timeout = 2000,
  acquire_timeout = 5000,
  io_timeout = 2000,
  dns_servers = dns_server and { dns_server } or nil,
}
local peer, err, detail = pool:add_peer(addr)
if not peer then
  io.stderr:write(("bad address %s: %s (%s)\n"):format(addr, err, detail))
  os.exit(2)
end

local failed = false
peerpool.run(function()
  for n = 1, 3 do
    local conn, aerr, adetail = pool:acquire(peer)
    if not conn then
      -- a name that does not resolve answers "dns" with the resolver's reason
      print(("acquire failed: %s (%s)"):format(aerr, adetail))
      failed = true
      break
    end
    conn:send("PING\r\n")
    local reply, rerr = conn:receive("*l")
    print(("ping %d: %s via %s (%s)"):format(n, tostring(reply or rerr), conn.peer,
      conn:address()))
    if reply then conn:release() else conn:close() end
  end
  for _, r in ipairs(pool:peer(peer).resolved or {}) do
    print(("%s resolves to %s: %d conns%s"):format(peer, r.addr, r.conns,
      r.current and "" or " (no longer in the answer)"))
  end
  local s = pool:stats()
  print(("dns: %d queries, %d failed"):format(s.dns_queries, s.dns_failures))
  pool:close()
end)
os.exit(failed and 1 or 0)
