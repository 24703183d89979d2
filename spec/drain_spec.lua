-- Warm conns (min_idle), taking peers out of service (remove_peer, drain) and closing a pool
-- gracefully (close{ drain_ms }).
local H = require "spec.support.helpers"
local peerpool = require "peerpool"

local test, pack, sleep, wait_until = H.test, H.pack, H.sleep, H.wait_until

-- Acquire with a callback; returns a function that gives the callback's arguments once called.
local function acquire_cb(pool, addr)
  local got
  assert.is_true(pool:acquire(addr, {}, function(...) got = pack(...) end))
  return function() return got end
end

-- One echo round trip on a conn.
local function ping(conn)
  assert(conn:send("PING\n"))
  return conn:receive("*l")
end

-- An echo server, a pool with it as its peer, and a lease held on it.
local function echo_held(env)
  local pool, srv = env:pool_with("echo")
  return srv, pool, assert(pool:acquire(srv.addr))
end

describe("peerpool.pool", function()
  describe("min_idle", function()
    it("keeps min_idle conns open and idle without any acquire", test(function(env)
      local pool, srv = env:pool_with("echo", { min_idle = 2 })
      wait_until(function() return pool:peer(srv.addr).idle == 2 end, 3000, "2 idle conns")
      sleep(50)
      local s = pool:stats()
      assert.equal(2, s.idle)
      assert.equal(0, s.acquires)
      assert.equal(2, s.warm_dials)
      assert.equal(2, srv.accepted)
      -- the first acquire pays no connect
      assert.equal("PING", pool:with(srv.addr, ping))
      assert.equal(0, pool:stats().acquired_dialed)
    end))

    it("dials them again after the server restarts", test(function(env)
      local srv = env:echo()
      local port = srv.port
      local pool = env:pool { min_idle = 2, maintenance_interval = 20, eject_after = 0,
        policy = { backoff = function() return 50 end } }
      pool:add_peer(srv.addr)
      wait_until(function() return pool:peer(srv.addr).idle == 2 end, 3000, "2 idle conns")
      srv:close() -- its conns close; the port refuses
      -- the port stays bound (never listening: refused) until the restart, so that no test
      -- running in parallel takes it meanwhile
      local hold = env:add(assert(require("spec.support.servers").listen(nil, { port = port })))
      wait_until(function() return pool:peer(srv.addr).idle == 0 end, 3000, "the conns to go")
      sleep(200)
      assert.equal(0, pool:peer(srv.addr).idle)
      hold:close()
      local again = assert(env:echo_on(port))
      wait_until(function() return pool:peer(srv.addr).idle == 2 end, 5000, "2 conns again")
      wait_until(function() return again.accepted == 2 end, 1000, "the restarted server's view")
    end))

    it("stays within max_per_peer and max_total", test(function(env)
      local a, b = env:echo(), env:echo()
      local pool = env:pool { min_idle = 3, max_per_peer = 3, max_total = 4 }
      pool:add_peer(a.addr)
      pool:add_peer(b.addr)
      wait_until(function() return pool:stats().idle == 4 end, 3000, "4 idle conns")
      sleep(100)
      assert.equal(4, pool:stats().conns)
      assert.is_true(pool:peer(a.addr).conns <= 3 and pool:peer(b.addr).conns <= 3)
      assert.equal(4, a.open + b.open)
    end))

    it("is kept by idle_timeout (HikariCP's minimumIdle)", test(function(env)
      local pool, srv = env:pool_with("echo", { min_idle = 1, idle_timeout = 50 })
      local conns = {}
      for i = 1, 3 do conns[i] = assert(pool:acquire(srv.addr)) end
      for i = 1, 3 do conns[i]:release() end
      -- while all three were lent, min_idle may have dialled a spare (3 or 4 conns, by timing)
      local n = pool:stats().conns
      assert.is_true(n == 3 or n == 4, n .. " conns")
      wait_until(function() return pool:stats().closed.idle == n - 1 end, 3000, "the idle closes")
      sleep(200)
      assert.equal(n - 1, pool:stats().closed.idle)
      assert.equal(1, pool:peer(srv.addr).idle)
    end))

    it("takes a per-peer value from add_peer's tag min_idle", test(function(env)
      local a, b = env:echo(), env:echo()
      local pool = env:pool()
      pool:add_peer(a.addr, nil, { min_idle = 2 })
      pool:add_peer(b.addr)
      wait_until(function() return pool:peer(a.addr).idle == 2 end, 3000, "2 idle conns")
      assert.equal(2, pool:peer(a.addr).min_idle)
      assert.equal(0, pool:peer(b.addr).min_idle)
      assert.equal(0, b.accepted)
      assert.has_error(function() pool:add_peer(b.addr, nil, { min_idle = 9 }) end,
        "pool:add_peer: tag 'min_idle' must be an integer in 0..4 (max_per_peer)")
    end))

    it("does not redial in a loop a server that hangs up on every conn", test(function(env)
      local pool, srv = env:pool_with("hangup", { min_idle = 2 })
      wait_until(function() return srv.accepted >= 2 end, 3000, "the first conns")
      sleep(500)
      -- each conn ends unused, so the next waits longer (before: a dial every tick, ~1000)
      assert.is_true(srv.accepted < 50, srv.accepted .. " conns in 500 ms")
      -- a lease shows the peer serves: an echo server on the port is warmed at once again
      local port = srv.port
      srv:close()
      local echo = assert(env:echo_on(port))
      assert.equal("PING", pool:with(srv.addr, ping))
      wait_until(function() return pool:peer(srv.addr).idle >= 2 end, 3000, "2 idle conns")
      assert.is_true(echo.accepted <= 3) -- (2 warm, 1 dialled by the acquire if none was idle)
    end))

    it("does not redial in a loop when the process is out of fds", function()
      local ok, status, _, err = H.child([[
        local uv = require "luv"
        local peerpool = require "peerpool"
        local srv = require("spec.support.servers").echo()
        local pool = peerpool.new { min_idle = 100, max_per_peer = 100, max_total = 200 }
        pool:add_peer(srv.addr)
        local t = uv.new_timer()
        t:start(500, 0, function()
          io.stderr:write(pool:stats().connect_attempts, "\n")
          pool:close()
          srv:close()
          t:close()
        end)
        uv.run()
      ]], "ulimit -n 64;")
      assert.is_true(ok, tostring(status) .. " " .. err)
      -- each dial fails at once (EMFILE), with no backoff of its own (before: ~50,000)
      local attempts = tonumber(err:match("^(%d+)\n"))
      assert.is_true(attempts and attempts < 1000, err .. " connect attempts in 500 ms")
    end)

    it("is checked against max_per_peer", function()
      assert.has_error(function() peerpool.new { min_idle = 5 } end,
        "peerpool.new: option min_idle must be an integer in 0..max_per_peer")
    end)
  end)

  describe(":remove_peer()", function()
    it("answers waiters 'removed'; leased conns serve on and close at release",
      test(function(env)
        local pool, srv = env:pool_with("echo", { max_per_peer = 1 })
        local held = assert(pool:acquire(srv.addr))
        local waiter = acquire_cb(pool, srv.addr)
        assert.is_true(pool:remove_peer(srv.addr))
        wait_until(waiter, 1000, "the waiter's answer")
        assert.equal("removed", waiter()[1])
        assert.matches("was removed from the pool", waiter()[3])
        assert.is_nil(pool:peer(srv.addr))
        assert.same({}, pool:peers())
        assert.equal("no_peer", select(2, pool:acquire(srv.addr)))
        assert.equal("PING", ping(held)) -- still serves its holder
        held:release()
        H.wait_closed(srv, 1000)
        local s = pool:stats()
        assert.equal(1, s.closed.removed)
        assert.equal(1, s.peers_removed)
        assert.equal(0, s.peers)
      end))

    it("closes idle conns at once", test(function(env)
      local pool, srv = env:pool_with("echo")
      pool:with(srv.addr, ping)
      assert.equal(1, pool:stats().idle)
      assert.is_true(pool:remove_peer(srv.addr))
      assert.equal(0, pool:stats().conns)
      H.wait_closed(srv, 1000)
    end))

    it("answers an unknown peer with no_peer", test(function(env)
      local pool = env:pool()
      local r = pack(pool:remove_peer("127.0.0.1:1"))
      assert.same({ n = 3, nil, "no_peer", "unknown peer 127.0.0.1:1" }, r)
      assert.same({ n = 3, nil, "no_peer", "unknown peer 127.0.0.1:1" },
        pack(pool:drain("127.0.0.1:1")))
    end))

    it("takes the peer out of the address book", test(function(env)
      local path = os.tmpname()
      local pool = env:pool { address_book = path }
      pool:add_peer("127.0.0.1:7001")
      pool:add_peer("127.0.0.1:7002")
      assert.is_true(pool:remove_peer("127.0.0.1:7001"))
      wait_until(function()
        local info = peerpool._book.info(pool)
        return info.saves >= 1 and not info.saving
      end, 2000, "the save")
      local text = assert(io.open(path)):read("a")
      os.remove(path)
      assert.not_matches("7001", text)
      assert.matches("127.0.0.1:7002", text)
    end))
  end)

  describe(":drain()", function()
    it("takes no new lease and closes conns as their leases end", test(function(env)
      local srv, pool, held = echo_held(env)
      pool:with(srv.addr, ping) -- a second conn, idle now
      assert.equal(2, srv.accepted)
      assert.is_true(pool:drain(srv.addr))
      local r = pack(pool:acquire(srv.addr))
      assert.equal("removed", r[2])
      assert.matches("is draining", r[3])
      local view = pool:peer(srv.addr)
      assert.is_true(view.draining)
      assert.equal(1, view.conns) -- the idle one closed at once
      assert.equal("PING", ping(held))
      held:release()
      assert.equal(0, pool:peer(srv.addr).conns) -- drained, still known
      assert.equal(2, pool:stats().closed.drained)
      -- add_peer ends the drain
      pool:add_peer(srv.addr)
      assert.is_false(pool:peer(srv.addr).draining)
      assert.equal("PING", pool:with(srv.addr, ping))
    end))
  end)

  describe(":close{ drain_ms }", function()
    it("lets a lease that finishes in time finish, then closes", test(function(env)
      local srv, pool, held = echo_held(env)
      local during, reply
      peerpool.run(function()
        sleep(50)
        during = pack(pool:acquire(srv.addr))
        reply = ping(held)
        held:release()
      end)
      assert.is_true(pool:close { drain_ms = 3000 }) -- waits in this coroutine
      assert.equal("PING", reply)
      assert.equal("closed", during[2])
      assert.has_error(function() pool:stats() end, "attempt to use a closed pool")
      H.wait_closed(srv, 1000)
    end))

    it("cuts a lease that does not finish; its later release is harmless", test(function(env)
      local pool, srv = env:pool_with("echo")
      local slow = assert(pool:acquire(srv.addr))
      local r = pack(pool:close { drain_ms = 50 })
      assert.same({ n = 3, nil, "timeout",
        "1 lease still held after 50 ms was cut (their conns closed)" }, r)
      H.wait_closed(srv, 1000)
      slow:release()
    end))

    it("calls back instead of waiting when given a callback", test(function(env)
      local _, pool, held = echo_held(env)
      local got
      assert.is_true(pool:close { drain_ms = 3000, callback = function(...) got = pack(...) end })
      sleep(20)
      assert.is_nil(got)
      held:release()
      wait_until(function() return got end, 1000, "the callback")
      assert.same({ n = 2 }, got)
    end))

    it("keeps io_timeout for the receives and requests of leases still held", test(function(env)
      -- (the drain used to stop the io_timeout timers: a silent peer held them until drain_ms)
      local pool, srv = env:static_pool("line", { io_timeout = 100 })
      local framed = env:pool { peers = { srv.addr }, io_timeout = 100, framing = "line" }
      assert.equal("+PONG\r\n", framed:request(nil, "PING\r\n")) -- a conn to pipeline on
      local conn = assert(pool:acquire(srv.addr))
      local received, requested
      peerpool.run(function() received = pack(conn:receive()) end)
      peerpool.run(function() requested = pack(framed:request(nil, "SILENT\r\n")) end)
      local closed = {}
      for _, p in ipairs { pool, framed } do
        assert.is_true(p:close { drain_ms = 5000, callback = function() closed[p] = true end })
      end
      wait_until(function() return received and requested end, 8000, "both to end")
      assert.equal("timeout", received[2])
      assert.equal("timeout", requested[2])
      assert.is_nil(closed[pool])
      conn:release()
      wait_until(function() return closed[pool] and closed[framed] end, 3000, "the closes")
    end))

    it("leaves plain close() immediate", test(function(env)
      local srv, pool, held = echo_held(env)
      pool:close()
      H.wait_closed(srv, 1000)
      held:release()
    end))

    it("refuses bad options, naming them", test(function(env)
      local pool = env:pool()
      assert.has_error(function() pool:close { drain_ms = -1 } end,
        "bad argument #1 to 'close' (drain_ms must be an integer number of ms >= 0, got number)")
      assert.has_error(function() pool:close { drain = 5 } end,
        "bad argument #1 to 'close' (unknown option 'drain'; options: drain_ms, callback)")
    end))
  end)
end)
