-- redis_tls.lua — pooled PING against a redis-server over TLS, with session resumption.
--
-- A first PING dials one TLS conn (a full handshake; redis sends session tickets with it). Then
-- four workers share a pool of at most two TLS conns: the second conn resumes the first one's
-- session (an abbreviated handshake), and every PING after that rides a warm conn. At the end
-- the pool's TLS counters are printed.
--
--   # a CA and a server certificate (spec/c/tls_certs.sh makes them with openssl):
--   mkdir -p /tmp/certs && sh spec/c/tls_certs.sh /tmp/certs
--   redis-server --port 0 --tls-port 6380 --tls-cert-file /tmp/certs/server.pem \
--     --tls-key-file /tmp/certs/server.key --tls-ca-cert-file /tmp/certs/ca.pem \
--     --tls-auth-clients no --save '' --appendonly no &
--   LUA_CPATH="build/lua/?.so;;" lua5.4 scripts/examples/redis_tls.lua 127.0.0.1:6380 \
--     /tmp/certs/ca.pem
--
-- The certificate must carry the peer's name: here 127.0.0.1 (an IP entry); for a host name
-- peer it is the name, or tls.server_name when the certificate names something else.
local uv = require "luv"
local peerpool = require "peerpool"

local addr = arg[1] or "127.0.0.1:6380"
local ca_file = arg[2] or "ca.pem"
local WORKERS, PINGS = 4, 5

local pool = peerpool.new {
  max_per_peer = 2,
  connect_timeout = 2000,
  handshake_timeout = 2000, -- the TLS handshake counts against it
  acquire_timeout = 5000,
  io_timeout = 2000,
  tls = {
    ca_file = ca_file,      -- trust this CA (default: the system's store)
    verify = true,          -- the default: chain and name are checked
    min_version = "1.2",
  },
}
assert(pool:add_peer(addr))

local running, failed = WORKERS, false

local function worker(id)
  for n = 1, PINGS do
    local conn, err, detail = pool:acquire(addr)
    if not conn then
      -- e.g. tls: "TLS with 127.0.0.1:6380 failed: unknown CA: unable to get local issuer ..."
      print(("worker %d: acquire failed: %s (%s)"):format(id, err, detail))
      failed = true
      break
    end
    local reply, rerr = nil, nil
    if conn:send("PING\r\n") then reply, rerr = conn:receive("*l") end
    if reply then
      print(("worker %d, ping %d: %s"):format(id, n, reply))
      conn:release()
    else
      print(("worker %d, ping %d: failed: %s"):format(id, n, rerr))
      conn:close()
      failed = true
    end
  end
  running = running - 1
  if running == 0 then
    local s = pool:stats()
    print(("tls: %d full handshakes, %d resumed, %d failed; %d PINGs on %d conns"):format(
      s.tls_full, s.tls_resumed, s.tls_failed, WORKERS * PINGS, s.connects_ok))
    pool:close()
  end
end

coroutine.wrap(function()
  local conn, err, detail = pool:acquire(addr)
  if not conn then
    print(("acquire failed: %s (%s)"):format(err, detail))
    os.exit(1)
  end
  assert(conn:send("PING\r\n"))
  print("first: " .. assert(conn:receive("*l")))
  conn:release()
  for id = 1, WORKERS do
    coroutine.wrap(worker)(id)
  end
end)()
uv.run()
os.exit(failed and 1 or 0)
