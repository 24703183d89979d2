-- TLS from Lua against servers nobody here wrote: `redis-server --tls-port` and
-- `openssl s_server` on 127.0.0.1, with certificates made by spec/c/tls_certs.sh (a test CA, a
-- good server certificate, one for the wrong name, an expired one, one by an unknown CA, a
-- client certificate). Every server is killed when its test ends.
local uv = require "luv"
local H = require "spec.support.helpers"
local redis = require "spec.support.redis"

local test, pack = H.test, H.pack

local function have(cmd)
  return os.execute("command -v " .. cmd .. " >/dev/null 2>&1") == true
end

local free_port = H.free_port

local function read_file(path)
  local f = io.open(path)
  if not f then return "" end
  local s = f:read("a")
  f:close()
  return s
end

describe("TLS", function()
  local dir -- certificates and server logs
  local ok_env = have("openssl") and have("redis-server")

  setup(function()
    if not ok_env then return end
    dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. dir))
    assert(os.execute("sh spec/c/tls_certs.sh " .. dir) == true, "tls_certs.sh failed")
  end)

  teardown(function()
    if dir then os.execute("rm -rf " .. dir) end
  end)

  -- Servers started by the running test (process groups), killed after each test.
  local started = {}
  after_each(function()
    for _, pid in ipairs(started) do os.execute("kill -9 -" .. pid .. " 2>/dev/null") end
    started = {}
  end)

  -- Start `cmd` (a shell command) in its own process group with its output in dir/<log>;
  -- wait (yielding) until the log shows `ready` (true) or `failed` (false). Returns that and
  -- the log's path.
  local function spawn(log, cmd, ready, failed)
    local path = dir .. "/" .. log
    local pid = io.popen(string.format("setsid sh -c %q >%s 2>&1 & echo $!", cmd, path)):read("l")
    started[#started + 1] = pid
    local up
    H.wait_until(function()
      local text = read_file(path)
      if text:find(ready, 1, true) then up = true end
      if failed and text:find(failed, 1, true) then up = false end
      return up ~= nil
    end, 20000, log .. " to show " .. ready) -- generous: a process starting on a loaded machine
    return up, path
  end

  -- redis-server with TLS only on a free port; "127.0.0.1:port". The port was free a moment
  -- ago: a test running in parallel may take it first, then another one is tried.
  local function redis_tls(auth_clients)
    for attempt = 1, 3 do
      local port = free_port()
      local up, log = spawn("redis-" .. port .. ".log", string.format(
        "exec redis-server --port 0 --tls-port %d --bind 127.0.0.1 " ..
        "--tls-cert-file %s/server.pem --tls-key-file %s/server.key " ..
        "--tls-ca-cert-file %s/ca.pem --tls-auth-clients %s " ..
        "--save '' --appendonly no --dir %s", port, dir, dir, dir, auth_clients or "no", dir),
        "Ready to accept connections", "Failed listening on port")
      if up then return "127.0.0.1:" .. port end
      assert(attempt < 3, "redis-server did not start:\n" .. read_file(log))
    end
  end

  -- openssl s_server with `cert` (and more arguments) on a port it binds itself (0: no race
  -- with other tests for a port); "127.0.0.1:port" and its log's path. Its console is a
  -- `sleep` that never writes (s_server stops at the end of its input).
  local servers_started = 0
  local function s_server(cert, more)
    servers_started = servers_started + 1
    local _, log = spawn("s_server-" .. servers_started .. ".log", string.format(
      "sleep 600 | exec openssl s_server -accept 127.0.0.1:0 -cert %s/%s -key %s/server.key %s",
      dir, cert, dir, more or ""), "ACCEPT")
    local port
    H.wait_until(function()
      port = read_file(log):match("ACCEPT 127%.0%.0%.1:(%d+)\n")
      return port
    end, 20000, "s_server's port")
    return "127.0.0.1:" .. port, log
  end

  local function tls_opts(extra)
    local t = { ca_file = dir .. "/ca.pem" }
    for k, v in pairs(extra or {}) do t[k] = v end
    return t
  end

  local function ping(conn)
    assert(conn:send("PING\r\n"))
    return conn:receive("*l")
  end

  local function skip_unless_env()
    if not ok_env then pending("needs openssl and redis-server (make test installs them)") end
    return not ok_env
  end

  it("pools PING over TLS and resumes the session on the next conn", test(function(env)
    if skip_unless_env() then return end
    local addr = redis_tls()
    local pool = env:pool { tls = tls_opts() }
    assert(pool:add_peer(addr))
    local a = assert(pool:acquire(addr))
    assert.equal("+PONG", ping(a)) -- the session tickets came before the reply
    assert.is_nil(a:alpn())
    local b = assert(pool:acquire(addr)) -- a is held: a new conn, which resumes
    assert.equal("+PONG", ping(b))
    local s = pool:stats()
    assert.same({ 1, 1, 0 }, { s.tls_full, s.tls_resumed, s.tls_failed })
    a:release()
    b:release()
    for _ = 1, 20 do -- the same two conns carry on
      local c = assert(pool:acquire(addr))
      assert.equal("+PONG", ping(c))
      c:release()
    end
    assert.equal(2, pool:stats().connects_ok)
  end))

  it("pipelines framed requests from many leases over one TLS conn", test(function(env)
    if skip_unless_env() then return end
    local addr = redis_tls()
    local pool = env:pool { tls = tls_opts(), framing = "resp", client_limit = 16,
      max_per_peer = 1 }
    assert(pool:add_peer(addr))
    local big = ("0123456789abcdef"):rep(2048) -- replies over several TLS records
    local bad = 0
    H.in_parallel(16, function(i)
      for k = 1, 30 do
        local s = ("%d:%d:%s"):format(i, k, k % 10 == 0 and big or "")
        if pool:request(addr, redis.echo_cmd(s)) ~= redis.bulk(s) then bad = bad + 1 end
      end
    end, 20000)
    assert.equal(0, bad)
    assert.equal(1, pool:stats().connects_ok)
    assert.equal(0, H.troubled(pool))
  end))

  it("sends and receives megabytes through the layer, with send backpressure",
    test(function(env)
      if skip_unless_env() then return end
      local addr = redis_tls()
      local pool = env:pool { tls = tls_opts(), io_timeout = 5000, max_send_queue = 64 * 1024,
        max_receive = 16 * 1024 * 1024 }
      pool:add_peer(addr)
      local c = assert(pool:acquire(addr))
      local value = string.rep("v", 8 * 1024 * 1024)
      local t0 = uv.hrtime()
      local cmd = "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$" .. #value .. "\r\n" .. value .. "\r\n"
      assert.equal(#cmd, c:send(cmd))
      assert.equal("+OK", c:receive())
      assert.is_true((uv.hrtime() - t0) / 1e6 < 3000, "the send waited for io_timeout")
      assert(c:send("*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"))
      assert.equal("$" .. #value, c:receive())
      local got = c:receive(#value)
      assert.is_true(got == value, "the value came back changed")
      assert.equal("", c:receive())
      c:release()
    end))

  it("shows the protocol chosen by ALPN on the conn", test(function(env)
    if skip_unless_env() then return end
    local addr = s_server("server.pem", "-alpn redis,h2")
    local pool = env:pool { tls = tls_opts { alpn = { "h2" } } }
    pool:add_peer(addr)
    local c = assert(pool:acquire(addr))
    assert.equal("h2", c:alpn())
    c:release()
  end))

  -- Each failure answers `tls` with the reason as detail, at once (not at the deadline), and
  -- counts as a failed handshake.
  local function refused(env, addr, opts, pattern, dns_servers)
    local pool = env:pool { tls = opts, acquire_timeout = 5000, dns_servers = dns_servers }
    pool:add_peer(addr)
    local t0 = uv.hrtime()
    local got = pack(pool:acquire(addr))
    local ms = (uv.hrtime() - t0) / 1e6
    assert.same({ nil, "tls" }, { got[1], got[2] })
    assert.matches(pattern, got[3])
    assert.is_true(ms < 2000, "answered after " .. ms .. " ms")
    assert.equal(1, pool:stats().tls_failed)
    return got[3]
  end

  it("answers tls for a certificate by an unknown CA", test(function(env)
    if skip_unless_env() then return end
    local why = refused(env, s_server("unknown.pem"), tls_opts(), "unknown CA: ")
    assert.matches("TLS with 127%.0%.0%.1:%d+", why)
  end))

  it("answers tls for the wrong name; a peer's own server_name fixes it", test(function(env)
    if skip_unless_env() then return end
    local addr = s_server("wrong.pem")
    refused(env, addr, tls_opts(), "name mismatch: ")
    local pool = env:pool { tls = tls_opts() }
    assert(pool:add_peer(addr, nil, { tls = { server_name = "wrong.example" } }))
    local c = assert(pool:acquire(addr))
    c:release()
    assert.equal(1, pool:stats().tls_full)
  end))

  it("verifies a host-name peer against its name, not the address it resolved to",
    test(function(env)
      if skip_unless_env() then return end
      local dns = env:add(require("spec.support.dns_server").start())
      dns:set("wrong.example", { a = { "127.0.0.1" }, ttl = 30 })
      dns:set("other.pp.test", { a = { "127.0.0.1" }, ttl = 30 })
      -- wrong.pem is for DNS:wrong.example only: the name passes where the address would not
      local port = s_server("wrong.pem"):match(":(%d+)$")
      local pool = env:pool { tls = tls_opts(), dns_servers = { dns.addr } }
      local addr = assert(pool:add_peer("wrong.example:" .. port))
      local c = assert(pool:acquire(addr))
      assert.equal("127.0.0.1:" .. port, c:address())
      c:release()
      -- server.pem carries IP:127.0.0.1, but a name peer is checked against its name
      port = s_server("server.pem"):match(":(%d+)$")
      local why = refused(env, "other.pp.test:" .. port, tls_opts(), "name mismatch: ",
        { dns.addr })
      assert.matches("other.pp.test", why, 1, true)
    end))

  it("answers tls (protocol) when the versions do not meet", test(function(env)
    if skip_unless_env() then return end
    refused(env, s_server("server.pem", "-tls1_2"), tls_opts { min_version = "1.3" },
      "protocol: ")
  end))

  it("answers tls for an expired certificate", test(function(env)
    if skip_unless_env() then return end
    refused(env, s_server("expired.pem"), tls_opts(), "expired: ")
  end))

  it("answers tls when the server requires a client certificate, and passes with one",
    test(function(env)
      if skip_unless_env() then return end
      -- TLS 1.2: the server refuses within the handshake
      local addr = s_server("server.pem", "-tls1_2 -Verify 1 -CAfile " .. dir .. "/ca.pem")
      refused(env, addr, tls_opts(), "asked for a client certificate and none is configured")
      -- redis (TLS 1.3) with the client certificate given for the peer
      local raddr = redis_tls("yes")
      local pool = env:pool { tls = tls_opts() }
      pool:add_peer(raddr, nil, {
        tls = { cert_file = dir .. "/client.pem", key_file = dir .. "/client.key" } })
      local c = assert(pool:acquire(raddr))
      assert.equal("+PONG", ping(c))
      c:release()
    end))

  it("sends close_notify when a conn closes", test(function(env)
    if skip_unless_env() then return end
    local addr, log = s_server("server.pem", "-msg -naccept 1")
    local pool = env:pool { tls = tls_opts() }
    pool:add_peer(addr)
    local c = assert(pool:acquire(addr))
    H.wait_until(function() return select(2, read_file(log):gsub("NewSessionTicket", "")) >= 2 end,
      3000, "the session tickets")
    H.sleep(50) -- read them, so that the close is a FIN, not a reset
    c:close()
    H.wait_until(function() return read_file(log):find("DONE", 1, true) end, 3000, "DONE")
    assert.matches("close_notify", read_file(log))
  end))

  it("names the field of a bad option", function()
    local peerpool = require "peerpool"
    local function err(opts)
      local ok, e = pcall(peerpool.new, opts)
      assert.is_false(ok)
      return e
    end
    assert.matches("peerpool.new: option 'tls.ca_file' must be a string %(got number%)",
      err { tls = { ca_file = 5 } })
    assert.matches("peerpool.new: option 'tls.ca_file' could not be loaded",
      err { tls = { ca_file = "/nonexistent/ca.pem" } })
    assert.matches("peerpool.new: option 'tls.min_version' must be \"1.2\" or \"1.3\"",
      err { tls = { min_version = "1.1" } })
    assert.matches("peerpool.new: option 'tls.verify' must be a boolean",
      err { tls = { verify = 1 } })
    assert.matches("peerpool.new: option 'tls.alpn%[2%]' must be a string",
      err { tls = { alpn = { "h2", 3 } } })
    assert.matches("peerpool.new: option 'tls.sni' is unknown", err { tls = { sni = "x" } })
    assert.matches("peerpool.new: option 'tls' must be a table", err { tls = true })
    local pool = peerpool.new()
    local ok, e = pcall(pool.add_peer, pool, "127.0.0.1:1", nil, { tls = { cert_file = "/nope" } })
    assert.is_false(ok)
    assert.matches("pool:add_peer: tag 'tls.cert_file' could not be loaded", e)
    pool:close()
  end)

  it("fails closed: a peer whose TLS options were refused gets no conn at all",
    test(function(env)
      local srv = env:echo()
      local pool = env:pool()
      assert.is_false(pcall(pool.add_peer, pool, srv.addr, nil, { tls = { key_file = "/k" } }))
      local got = pack(pool:acquire(srv.addr))
      assert.same({ nil, "tls" }, { got[1], got[2] })
      assert.matches("options were refused", got[3])
    end))
end)
