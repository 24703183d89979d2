-- Host names from Lua: add_peer("name:port") resolved by the pool (c-ares on luv's loop)
-- against a DNS server on loopback (spec/support/dns_server.lua), dialled over real loopback
-- servers; Happy Eyeballs; the `dns` error; hostile DNS servers keep everything bounded.
local uv = require "luv"
local H = require "spec.support.helpers"
local dns_server = require "spec.support.dns_server"
local peerpool = require "peerpool"

local test, pack, wait_until = H.test, H.pack, H.wait_until

-- A DNS server for the test (closed with it), and a pool that asks it only.
local function setup(env, opts)
  local dns = env:add(dns_server.start())
  opts = opts or {}
  opts.dns_servers = { dns.addr }
  opts.dns_timeout = opts.dns_timeout or 100
  return dns, env:pool(opts)
end

-- A TCP echo server on `host`:`port` (port 0: any), closed with the test.
local function echo_on(env, host, port)
  local tcp = uv.new_tcp()
  local srv = { clients = {}, accepted = 0 }
  function srv.close()
    for c in pairs(srv.clients) do if not c:is_closing() then c:close() end end
    if not tcp:is_closing() then tcp:close() end
  end
  local ok, err = tcp:bind(host, port or 0)
  if not ok then
    tcp:close()
    return nil, err
  end
  srv.port = tcp:getsockname().port
  assert(tcp:listen(64, function()
    local c = uv.new_tcp()
    tcp:accept(c)
    srv.accepted = srv.accepted + 1
    srv.clients[c] = true
    c:read_start(function(e, data)
      if e or not data then
        srv.clients[c] = nil
        if not c:is_closing() then c:close() end
      else
        c:write(data)
      end
    end)
  end))
  return env:add(srv)
end

describe("host names", function()
  it("resolves a name on the loop and keeps it as the peer's address", test(function(env)
    local srv = env:echo()
    local dns, pool = setup(env)
    dns:set("db.pp.test", { a = { "127.0.0.1" }, ttl = 30 })
    local addr = assert(pool:add_peer("DB.pp.test:" .. srv.port))
    assert.equal("db.pp.test:" .. srv.port, addr)
    local conn = assert(pool:acquire(addr, { timeout = 5000 }))
    assert.equal("127.0.0.1:" .. srv.port, conn:address())
    assert.equal(addr, conn.peer)
    conn:send("hi\n")
    assert.equal("hi", conn:receive("*l"))
    local view = pool:peer(addr)
    assert.equal(addr, view.addr)
    assert.same({ { addr = "127.0.0.1:" .. srv.port, conns = 1, current = true } }, view.resolved)
    assert.is_nil(view.dns_error)
    conn:release()
    assert.equal(1, pool:stats().dns_queries)
    local logged = false
    for _, e in ipairs(pool:explain(addr)) do
      if e.kind == "dns" and e.text:find("db.pp.test resolved to 1 address", 1, true) then
        logged = true
      end
    end
    assert.is_true(logged)
    -- numeric peers have no `resolved`
    pool:add_peer("127.0.0.1:9")
    assert.is_nil(pool:peer("127.0.0.1:9").resolved)
  end))

  it("answers dns with the resolver's reason, promptly", test(function(env)
    local dns, pool = setup(env, { acquire_timeout = 30000, retries = 3 })
    dns:set("gone.pp.test", { rcode = "NXDOMAIN" })
    dns:set("mute.pp.test", { silent = true })
    pool:add_peer("gone.pp.test:7")
    pool:add_peer("mute.pp.test:7")
    local t0 = uv.now()
    local res = pack(pool:acquire("gone.pp.test:7"))
    assert.same({ nil, "dns" }, { res[1], res[2] })
    assert.matches("gone.pp.test: NXDOMAIN", res[3], 1, true)
    assert.is_true(uv.now() - t0 < 10000)
    assert.equal(peerpool.errors.dns, "dns")
    assert.equal("gone.pp.test: NXDOMAIN", pool:peer("gone.pp.test:7").dns_error)
    assert.equal("dns", pool:peer("gone.pp.test:7").last_error)
    res = pack(pool:acquire("mute.pp.test:7"))
    assert.equal("dns", res[2])
    assert.matches("mute.pp.test: timeout", res[3], 1, true)
    assert.is_true(pool:stats().dns_failures >= 2)
    assert.equal(0, pool:stats().waiters)
  end))

  it("dials no unspecified, multicast or broadcast address an answer names", test(function(env)
    local srv = env:echo() -- 0.0.0.0 would reach it: on Linux it connects to this host
    local dns, pool = setup(env)
    dns:set("zero.pp.test", { a = { "0.0.0.0", "255.255.255.255", "224.0.0.1" },
      aaaa = { "::", "ff02::1", "::ffff:0:0" } })
    local zero = pool:add_peer("zero.pp.test:" .. srv.port)
    local res = pack(pool:acquire(zero, { timeout = 5000 }))
    assert.same({ nil, "dns" }, { res[1], res[2] })
    assert.matches("zero.pp.test: no usable address (only unspecified, multicast or broadcast " ..
      "ones)", res[3], 1, true)
    assert.equal(0, srv.accepted)
    -- mixed with a unicast address: that one only
    dns:set("some.pp.test", { a = { "0.0.0.0", "127.0.0.1" }, aaaa = { "::" } })
    local some = pool:add_peer("some.pp.test:" .. srv.port)
    local conn = assert(pool:acquire(some, { timeout = 5000 }))
    assert.equal("127.0.0.1:" .. srv.port, conn:address())
    conn:release()
    local resolved = pool:peer(some).resolved
    assert.equal(1, #resolved)
    assert.equal("127.0.0.1:" .. srv.port, resolved[1].addr)
  end))

  it("races the addresses (Happy Eyeballs): a hanging one does not hold the dial up",
    test(function(env)
      local hole = env:blackhole() -- 127.0.0.1:port, connects hang
      local srv = echo_on(env, "127.0.0.2", hole.port)
      if not srv then
        print("cannot bind 127.0.0.2 here: nothing to check")
        return
      end
      local dns, pool = setup(env, { connect_timeout = 8000, happy_eyeballs_delay = 50 })
      dns:set("race.pp.test", { a = { "127.0.0.1", "127.0.0.2" }, ttl = 30 })
      local addr = pool:add_peer("race.pp.test:" .. hole.port)
      local t0 = uv.now()
      local conn = assert(pool:acquire(addr, { timeout = 20000 }))
      -- well before connect_timeout: the second attempt started while the first hung
      assert.is_true(uv.now() - t0 < 6000)
      assert.equal("127.0.0.2:" .. hole.port, conn:address())
      assert.equal(0, pool:stats().connects_failed)
      conn:release()
    end))

  for _, family in ipairs { "ipv4", "ipv6" } do
    it("dials localhost:PORT with the server on " .. family .. " only", test(function(env)
      local srv, why
      if family == "ipv6" then srv, why = env:echo6() else srv = env:echo() end
      if not srv then
        print("no IPv6 loopback here (" .. tostring(why) .. "): skipping the ::1 case")
        return
      end
      local pool = env:pool { dns_servers = { "127.0.0.1:1" } } -- localhost needs no server
      local addr = pool:add_peer("localhost:" .. srv.port)
      local conn = assert(pool:acquire(addr, { timeout = 5000 }))
      assert.equal(family == "ipv6" and "[::1]:" .. srv.port or "127.0.0.1:" .. srv.port,
        conn:address())
      conn:release()
    end))
  end

  it("moves conns off an address that left the answer, keeps the others", test(function(env)
    local a = env:echo()
    local b = echo_on(env, "127.0.0.2", a.port)
    if not b then
      print("cannot bind 127.0.0.2 here: nothing to check")
      return
    end
    local dns, pool = setup(env, { dns_ttl_min = 20, dns_ttl_max = 50, max_per_peer = 4 })
    dns:set("move.pp.test", { a = { "127.0.0.1" }, ttl = 1 })
    local addr = pool:add_peer("move.pp.test:" .. a.port)
    local held = assert(pool:acquire(addr))
    local idle = assert(pool:acquire(addr))
    idle:release()
    dns:set("move.pp.test", { a = { "127.0.0.2" }, ttl = 1 })
    wait_until(function() return pool:stats().closed.dns == 1 end, 3000, "the idle conn to close")
    assert.equal(1, pool:stats().conns) -- the leased conn stays until released
    local view = pool:peer(addr)
    assert.same({ addr = "127.0.0.2:" .. a.port, conns = 0, current = true }, view.resolved[1])
    assert.same({ addr = "127.0.0.1:" .. a.port, conns = 1, current = false }, view.resolved[2])
    held:send("x\n")
    assert.equal("x", held:receive("*l"))
    held:release()
    assert.equal(2, pool:stats().closed.dns)
    local conn = assert(pool:acquire(addr))
    assert.equal("127.0.0.2:" .. a.port, conn:address())
    conn:release()
  end))

  it("stays bounded against a hostile DNS server", test(function(env)
    local srvs = { env:echo() }
    local port = srvs[1].port
    for i = 2, 3 do
      srvs[i] = echo_on(env, "127.0.0." .. i, port)
      if not srvs[i] then
        print("cannot bind 127.0.0." .. i .. " here: nothing to check")
        return
      end
    end
    local dns, pool = setup(env, { dns_ttl_min = 10, dns_ttl_max = 30, max_per_peer = 3,
      happy_eyeballs_delay = 10 })
    -- 64 addresses, of which only the first few listen
    local many = {}
    for i = 1, 64 do many[i] = (i <= 3 and "127.0.0." or "127.0.1.") .. i end
    dns:set("many.pp.test", { a = many, ttl = 0 })
    dns:set("mute.pp.test", { silent = true })
    local addr = pool:add_peer("many.pp.test:" .. port)
    pool:add_peer("mute.pp.test:" .. port)
    -- answers changing all the time, under load, for a second
    local flips, stop = 0, false
    local flipper = uv.new_timer()
    flipper:start(20, 20, function()
      flips = flips + 1
      local k = flips % 3 + 1
      dns:set("many.pp.test", { a = { "127.0.0." .. k }, ttl = 0 })
    end)
    local done, results = 0, {}
    for w = 1, 6 do
      peerpool.spawn(function()
        while not stop do
          local c, err = pool:acquire(w == 6 and "mute.pp.test:" .. port or addr,
            { timeout = 2000 })
          if c then
            c:send("p\n")
            c:receive("*l")
            c:release()
          else
            results[err] = (results[err] or 0) + 1
            H.sleep(5)
          end
          assert.is_true(pool:stats().conns <= 2 * 3)
        end
        done = done + 1
      end)
    end
    H.sleep(1000)
    stop = true
    wait_until(function() return done == 6 end, 5000, "the workers")
    flipper:close()
    local s = pool:stats()
    assert.is_true(s.conns <= 3)
    assert.is_true(s.closed.dns > 0, "answers changed: conns moved")
    assert.is_true(#pool:peer(addr).resolved <= 2 * 16)
    assert.is_true(#pool:explain() <= 256)
    assert.is_true((results.dns or 0) > 0) -- the silent name
    assert.equal(0, s.waiters)
    assert.is_true(s.dns_queries > 10)
  end))

  it("checks its options, naming them", test(function()
    assert.error_matches(function() peerpool.new { dns_servers = 5 } end,
      "option 'dns_servers' must be a list", nil, true)
    assert.error_matches(function() peerpool.new { dns_servers = { "nope" } } end,
      "dns_servers must list servers", nil, true)
    assert.error_matches(function() peerpool.new { dns_servers = { 1 } } end,
      "option 'dns_servers[1]' must be a string", nil, true)
    assert.error_matches(function() peerpool.new { dns_ttl_min = 10, dns_ttl_max = 5 } end,
      "dns_ttl_max must be a number of ms >= dns_ttl_min", nil, true)
    assert.error_matches(function() peerpool.new { happy_eyeballs_delay = 1 } end,
      "happy_eyeballs_delay", nil, true)
    local pool = peerpool.new { dns_servers = "127.0.0.1:53", happy_eyeballs_delay = 300 }
    pool:close()
  end))
end)
