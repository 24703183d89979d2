-- peerpool.pool: add_peer, acquire (coroutine and callback styles), with, stats, peers, peer,
-- on, close, __close, __tostring, and the options that shape a pool's behaviour (metrics:
-- metrics_spec.lua).
local H = require "spec.support.helpers"
local peerpool = require "peerpool"

local test, pack, sleep, wait_until = H.test, H.pack, H.sleep, H.wait_until
local CLOSED = "pool or connection is closed"

-- A pool with one line server added as a peer.
local function pool_with_server(env, opts)
  local srv = env:line()
  local pool = env:pool(opts)
  assert.equal(srv.addr, pool:add_peer(srv.addr))
  return pool, srv
end

-- Acquire with a callback; returns a function that gives the callback's arguments once called.
local function acquire_cb(pool, ...)
  local got
  local args = pack(...)
  args[args.n + 1] = function(...) got = pack(...) end
  assert.is_true(pool:acquire(table.unpack(args, 1, args.n + 1)))
  return function() return got end
end

describe("peerpool.pool", function()
  describe(":add_peer()", function()
    it("returns the canonical address", test(function(env)
      local pool = env:pool()
      assert.equal("127.0.0.1:7001", pool:add_peer("127.0.0.1:7001"))
      assert.equal("[::1]:5", pool:add_peer("[0:0::1]:5"))
      assert.equal("/tmp/peerpool.sock", pool:add_peer("unix:/tmp/peerpool.sock"))
      assert.equal("./peerpool.sock", pool:add_peer("./peerpool.sock"))
    end))

    it("makes one peer of every spelling of an address", test(function(env)
      local pool = env:pool()
      pool:add_peer("[::1]:5")
      pool:add_peer("[0:0::1]:5")
      pool:add_peer("[::1]:5")
      pool:add_peer("/tmp/peerpool.sock")
      pool:add_peer("unix:/tmp/peerpool.sock")
      assert.equal(2, #pool:peers())
      assert.equal(2, pool:stats().peers)
    end))

    it("answers nil, 'invalid', why for a malformed address", test(function(env)
      local pool = env:pool()
      assert.same({ n = 3, nil, "invalid",
        "host must be an IPv4 address or a host name (letters, digits, '-', '_', dots)" },
        pack(pool:add_peer("bad..name:80")))
      assert.same({ n = 3, nil, "invalid",
        "address must be host:port, [ipv6]:port or a unix socket path" },
        pack(pool:add_peer("127.0.0.1")))
      assert.same({ n = 3, nil, "invalid", "port must be an integer in 1..65535" },
        pack(pool:add_peer("127.0.0.1:99999")))
      assert.same({ n = 3, nil, "invalid", "port must be an integer in 1..65535" },
        pack(pool:add_peer("127.0.0.1:0")))
      assert.same({ n = 3, nil, "invalid", "address must be a non-empty string" },
        pack(pool:add_peer("")))
      assert.same({ n = 3, nil, "invalid", "IPv6 addresses must be written [addr]:port" },
        pack(pool:add_peer("::1:5")))
      assert.same({ n = 3, nil, "invalid", "IPv6 address must be followed by :port" },
        pack(pool:add_peer("[::1]")))
      assert.equal(0, #pool:peers())
    end))

    it("keeps last_seen (Unix ms); none means now", test(function(env)
      local pool = env:pool()
      pool:add_peer("127.0.0.1:7001", 1700000000000)
      assert.equal(1700000000000, pool:peer("127.0.0.1:7001").last_seen)
      pool:add_peer("127.0.0.1:7002")
      local now = os.time() * 1000
      assert.is_true(math.abs(pool:peer("127.0.0.1:7002").last_seen - now) < 5000)
    end))

    it("keeps the newer last_seen when an address is added again", test(function(env)
      local pool = env:pool()
      pool:add_peer("127.0.0.1:7001", 1700000000000)
      pool:add_peer("127.0.0.1:7001", 1600000000000)
      assert.equal(1700000000000, pool:peer("127.0.0.1:7001").last_seen)
      pool:add_peer("127.0.0.1:7001", 1750000000000)
      assert.equal(1750000000000, pool:peer("127.0.0.1:7001").last_seen)
    end))

    it("raises naming a bad argument", test(function(env)
      local pool = env:pool()
      assert.error_matches(function() pool:add_peer() end,
        "bad argument #1 to 'add_peer' (string expected, got no value)", nil, true)
      assert.error_matches(function() pool:add_peer({}) end,
        "bad argument #1 to 'add_peer' (string expected, got table)", nil, true)
      assert.error_matches(function() pool:add_peer("127.0.0.1:7001", 1.5) end,
        "bad argument #2 to 'add_peer' (last_seen must be Unix time in ms (integer))", nil, true)
      assert.error_matches(function() pool:add_peer("127.0.0.1:7001", "yesterday") end,
        "bad argument #2 to 'add_peer' (last_seen must be Unix time in ms (integer))", nil, true)
      assert.error_matches(function() pool:add_peer("127.0.0.1:7001", -1) end,
        "bad argument #2 to 'add_peer' (last_seen must be Unix time in ms >= 0)", nil, true)
      assert.error_matches(function() pool.add_peer({}, "127.0.0.1:1") end,
        "peerpool.pool expected", nil, true)
      -- os.time() is seconds: read as ms it is 1970, and the peer would be stale forever
      assert.error_matches(function() pool:add_peer("127.0.0.1:7001", os.time()) end,
        "bad argument #2 to 'add_peer' (last_seen must be Unix time in ms (" .. os.time() ..
        " looks like seconds: use os.time() * 1000))", nil, true)
      assert.equal(0, #pool:peers())
    end))
  end)

  describe(":acquire()", function()
    it("in a coroutine dials the peer and returns a leased conn", test(function(env)
      local pool, srv = pool_with_server(env)
      local conn = pool:acquire(srv.addr)
      local addr = srv.addr:gsub("%.", "%%.")
      assert.matches("^peerpool%.conn %(" .. addr .. ", leased%)", tostring(conn))
      assert.equal(srv.addr, conn.peer)
      local s = pool:stats()
      assert.equal(1, s.acquires)
      assert.equal(1, s.acquired_dialed)
      assert.equal(1, s.connects_ok)
      assert.equal(1, s.active)
      assert.is_true(conn:release())
    end))

    it("lends an idle conn again without dialling", test(function(env)
      local pool, srv = pool_with_server(env)
      pool:acquire(srv.addr):release()
      local conn = pool:acquire(srv.addr)
      assert.is_truthy(conn)
      local s = pool:stats()
      assert.equal(1, s.connects_ok)
      assert.equal(1, s.acquired_immediate)
      assert.equal(1, srv.accepted)
      conn:release()
    end))

    it("without a peer picks one of the known peers", test(function(env)
      local pool, srv = pool_with_server(env)
      local conn = pool:acquire()
      assert.equal(srv.addr, conn.peer)
      conn:release()
      conn = pool:acquire(nil, { timeout = 1000 })
      assert.equal(srv.addr, conn.peer)
      conn:release()
      conn = pool:acquire({ timeout = 1000 })
      assert.equal(srv.addr, conn.peer)
      conn:release()
    end))

    it("without a peer spreads acquires over ready peers", test(function(env)
      local pool, a = pool_with_server(env)
      local b = env:line()
      pool:add_peer(b.addr)
      local held = {}
      for i = 1, 4 do held[i] = assert(pool:acquire()) end
      local seen = {}
      for _, c in ipairs(held) do seen[c.peer] = (seen[c.peer] or 0) + 1 end
      assert.is_truthy(seen[a.addr])
      assert.is_truthy(seen[b.addr])
      for _, c in ipairs(held) do c:release() end
    end))

    it("with a callback returns true at once, calls back later with nil, conn", test(function(env)
      local pool, srv = pool_with_server(env)
      local inside = true
      local got
      assert.same({ n = 1, true }, pack(pool:acquire(srv.addr, {}, function(...)
        got = pack(...)
        got.inside = inside
      end)))
      inside = false
      wait_until(function() return got end)
      assert.is_false(got.inside)
      assert.equal(3, got.n)
      assert.is_nil(got[1])
      assert.matches("^peerpool%.conn ", tostring(got[2]))
      assert.is_nil(got[3])
      got[2]:release()
      -- an idle conn is also handed over on a later tick, never inside the call
      inside = true
      got = nil
      pool:acquire(srv.addr, function(...)
        got = pack(...)
        got.inside = inside
      end)
      inside = false
      assert.is_nil(got)
      wait_until(function() return got end)
      assert.is_false(got.inside)
      got[2]:release()
    end))

    it("takes the callback after the peer, the options or alone", test(function(env)
      local pool, srv = pool_with_server(env)
      for _, args in ipairs {
        pack(srv.addr), pack(srv.addr, {}), pack(srv.addr, nil), pack({}), pack(), pack(nil),
        pack(nil, nil), pack(nil, { timeout = 1000 }),
      } do
        local got = acquire_cb(pool, table.unpack(args, 1, args.n))
        wait_until(got)
        assert.is_nil(got()[1])
        assert.equal(srv.addr, got()[2].peer)
        got()[2]:release()
      end
    end))

    it("raises outside a coroutine without a callback", function()
      local pool = peerpool.new()
      pool:add_peer("127.0.0.1:7001")
      assert.error_matches(function() pool:acquire("127.0.0.1:7001") end,
        "pool:acquire() without a callback must run inside a coroutine", nil, true)
      pool:close()
    end)

    it("answers nil, 'no_peer', msg for an address never added", test(function(env)
      local pool = env:pool()
      assert.same({ n = 3, nil, "no_peer", "unknown peer 127.0.0.1:1 (add it with pool:add_peer)" },
        pack(pool:acquire("127.0.0.1:1")))
      -- with a callback the answer is returned and the callback never runs
      local called = false
      assert.same({ n = 3, nil, "no_peer", "unknown peer 127.0.0.1:1 (add it with pool:add_peer)" },
        pack(pool:acquire("127.0.0.1:1", function() called = true end)))
      H.ticks()
      assert.is_false(called)
    end))

    it("answers busy at once with a notice when busy = 'fail'", test(function(env)
      local pool, srv = pool_with_server(env, { max_per_peer = 1 })
      local held = pool:acquire(srv.addr)
      local res = pack(pool:acquire(srv.addr, { busy = "fail" }))
      assert.same({ n = 3, nil, "busy", res[3] }, res)
      assert.matches("^peerpool%.notice %(armed%)", tostring(res[3]))
      assert.equal(1, pool:stats().busy)
      held:release()
      assert.is_true(res[3]:wait(1000))
    end))

    it("waits for a release when busy = 'wait' (the default)", test(function(env)
      local pool, srv = pool_with_server(env, { max_per_peer = 1 })
      local held = pool:acquire(srv.addr)
      local got
      peerpool.run(function() got = pack(pool:acquire(srv.addr, { busy = "wait" })) end)
      H.ticks()
      assert.is_nil(got)
      assert.equal(1, pool:stats().waiters)
      assert.equal(1, pool:peer(srv.addr).waiters)
      held:release()
      wait_until(function() return got end)
      assert.equal(1, got.n)
      assert.equal(1, pool:stats().acquired_waited)
      assert.equal(1, srv.accepted)
      got[1]:release()
    end))

    it("answers EMFILE at once when the process is out of fds, and recovers", function()
      local ok, status, out, err = H.child([[
        local peerpool = require "peerpool"
        local servers = require "spec.support.servers"
        local uv = require "luv"
        local srv = servers.line()
        local pool = peerpool.new { max_per_peer = 4, eject_after = 1 }
        pool:add_peer(srv.addr)
        peerpool.run(function()
          local held = assert(pool:acquire(srv.addr))
          local files = {}
          local f
          repeat f = io.open("/dev/null"); files[#files + 1] = f until not f
          local t0 = uv.hrtime()
          local conn, code, detail = pool:acquire(srv.addr, { timeout = 3000 })
          local ms = (uv.hrtime() - t0) / 1e6
          io.write(tostring(conn), "|", code, "|", detail, "|", pool:peer(srv.addr).failures,
            "|", ms < 1000 and "prompt" or ms, "\n")
          for _, f in ipairs(files) do f:close() end
          local again = assert(pool:acquire(srv.addr))
          again:send("PING\r\n")
          io.write(again:receive(), "\n")
          again:release()
          held:release()
        end)
        pool:close(); srv:close(); uv.run()
      ]], "ulimit -n 256;")
      assert.is_true(ok, "exit status " .. tostring(status) .. "\n" .. err)
      assert.equal("nil|EMFILE|too many open files (EMFILE): this process is short of a " ..
        "resource, not the peer's fault|0|prompt\n+PONG\n", out)
    end)

    it("measures opts.timeout from the call, even after a long callback", test(function(env)
      local uv = require "luv"
      local pool, srv = pool_with_server(env, { max_per_peer = 1 })
      local held = pool:acquire(srv.addr)
      -- 600 ms of wall clock (not of CPU time, which a starved process takes seconds to use)
      local t0 = uv.hrtime()
      while uv.hrtime() - t0 < 600e6 do end -- 600 ms of work since the loop last read its clock
      local start = uv.hrtime()
      local got = pack(pool:acquire(srv.addr, { timeout = 500 }))
      local waited = (uv.hrtime() - start) / 1e6
      assert.equal("timeout", got[2])
      assert.is_true(waited >= 450, "timed out after " .. waited .. " ms, not 500")
      held:release()
    end))

    it("answers nil, 'timeout' at opts.timeout", test(function(env)
      local pool, srv = pool_with_server(env, { max_per_peer = 1 })
      local held = pool:acquire(srv.addr)
      local t0 = require("luv").now()
      local got = pack(pool:acquire(srv.addr, { timeout = 50 }))
      assert.same({ nil, "timeout" }, { got[1], got[2] })
      assert.matches("^timed out after %d+ ms waiting for " .. srv.addr:gsub("%p", "%%%0") ..
        ": 1/1 conns in use, 0 waiters ahead$", got[3])
      local waited = require("luv").now() - t0
      assert.is_true(waited >= 45 and waited < 3000, "waited " .. waited .. " ms")
      assert.equal(1, pool:stats().timed_out)
      assert.equal(0, pool:stats().waiters)
      held:release()
    end))

    it("serves waiters by priority, FIFO within a level", test(function(env)
      local pool, srv = pool_with_server(env, { max_per_peer = 1 })
      local held = pool:acquire(srv.addr)
      local order = {}
      for _, w in ipairs { { "a", 0 }, { "b", 7 }, { "c", 3 }, { "d", 7 }, { "e", 0 } } do
        pool:acquire(srv.addr, { priority = w[2] }, function(err, conn)
          order[#order + 1] = err or w[1]
          if conn then conn:release() end
        end)
      end
      held:release()
      wait_until(function() return #order == 5 end)
      assert.same({ "b", "d", "c", "a", "e" }, order)
    end))

    it("waits without a deadline with opts.timeout = 0", test(function(env)
      local pool, srv = pool_with_server(env, { max_per_peer = 1, acquire_timeout = 20 })
      local held = pool:acquire(srv.addr)
      local got
      peerpool.run(function() got = pack(pool:acquire(srv.addr, { timeout = 0 })) end)
      sleep(80)
      assert.is_nil(got)
      held:release()
      wait_until(function() return got end)
      assert.equal(1, got.n)
      got[1]:release()
    end))

    it("gives back the conn granted to a coroutine closed while it waited", test(function(env)
      local pool, srv = pool_with_server(env, { max_per_peer = 1 })
      local held = pool:acquire(srv.addr)
      local co = coroutine.create(function() pool:acquire(srv.addr) end)
      assert.is_true(coroutine.resume(co))
      assert.is_true(coroutine.close(co))
      held:release()
      H.ticks()
      local s = pool:stats()
      assert.equal(0, s.active)
      assert.equal(1, s.idle)
      assert.equal(0, s.callback_errors)
      local conn = pool:acquire(srv.addr, { busy = "fail" })
      assert.is_truthy(conn)
      conn:release()
    end))

    it("takes a peer view (from peers(), peer() or an event) for its peer", test(function(env)
      local a, b = env:line(), env:line()
      local pool = env:pool()
      pool:add_peer(a.addr)
      pool:add_peer(b.addr)
      for _, view in ipairs(pool:peers()) do
        local conn = assert(pool:acquire(view))
        assert.equal(view.addr, conn.peer)
        conn:release()
      end
      local conn = assert(pool:acquire(pool:peer(b.addr), { timeout = 100 }))
      assert.equal(b.addr, conn.peer)
      conn:release()
    end))

    it("takes a key for the selection", test(function(env)
      local pool, srv = pool_with_server(env)
      local conn = pool:acquire(nil, { key = "user:42" })
      assert.equal(srv.addr, conn.peer)
      conn:release()
    end))

    it("ends a pending acquire with 'closed' when the pool closes", test(function(env)
      local pool, srv = pool_with_server(env, { max_per_peer = 1 })
      local held = pool:acquire(srv.addr)
      local in_co
      peerpool.run(function() in_co = pack(pool:acquire(srv.addr)) end)
      local by_cb = acquire_cb(pool, srv.addr)
      H.ticks()
      pool:close()
      wait_until(function() return in_co and by_cb() end)
      assert.same({ n = 3, nil, "closed", CLOSED }, in_co)
      assert.same({ n = 3, "closed", nil, CLOSED }, by_cb())
      assert.is_true(held:release())
    end))

    it("counts an error raised by its callback, and the pool keeps serving", test(function(env)
      local pool, srv = pool_with_server(env)
      local conn
      pool:acquire(srv.addr, function(_, c)
        conn = c
        error("callback fails")
      end)
      wait_until(function() return pool:stats().callback_errors == 1 end)
      conn:release()
      local again = pool:acquire(srv.addr)
      assert.is_truthy(again)
      again:release()
    end))

    it("raises naming a bad argument", test(function(env)
      local pool = env:pool()
      pool:add_peer("127.0.0.1:7001")
      local cases = {
        { function() pool:acquire(42) end, "bad argument #1 to 'acquire' (peer address " ..
          "(string), peer view or nil expected, got number)" },
        { function() pool:acquire(true) end, "bad argument #1 to 'acquire' (peer address " ..
          "(string), peer view or nil expected, got boolean)" },
        { function() pool:acquire("127.0.0.1:7001", { bsy = "fail" }) end,
          "bad argument #2 to 'acquire' (unknown option 'bsy'; options: busy, timeout, " ..
          "priority, key)" },
        { function() pool:acquire(nil, { [1] = "fail" }) end,
          "bad argument #2 to 'acquire' (unknown option 'number'" },
        { function() pool:acquire("127.0.0.1:7001", "fast") end,
          "bad argument #2 to 'acquire' (table of options expected, got string)" },
        { function() pool:acquire("127.0.0.1:7001", {}, "cb") end,
          "bad argument #3 to 'acquire' (function expected, got string)" },
        { function() pool:acquire("127.0.0.1:7001", { busy = "maybe" }) end,
          'opts.busy must be "wait" or "fail"' },
        { function() pool:acquire("127.0.0.1:7001", { busy = 1 }) end,
          'opts.busy must be "wait" or "fail"' },
        { function() pool:acquire("127.0.0.1:7001", { timeout = -1 }) end,
          "opts.timeout must be a number of ms >= 0" },
        { function() pool:acquire("127.0.0.1:7001", { timeout = "soon" }) end,
          "opts.timeout must be a number of ms >= 0" },
        { function() pool:acquire("127.0.0.1:7001", { priority = 8 }) end,
          "opts.priority must be an integer in 0..7" },
        { function() pool:acquire("127.0.0.1:7001", { priority = -1 }) end,
          "opts.priority must be an integer in 0..7" },
        { function() pool:acquire("127.0.0.1:7001", { priority = 1.5 }) end,
          "opts.priority must be an integer in 0..7" },
        { function() pool:acquire("127.0.0.1:7001", { key = 42 }) end,
          "opts.key must be a string" },
      }
      for _, case in ipairs(cases) do
        assert.error_matches(case[1], case[2], nil, true)
      end
      assert.equal(0, pool:stats().acquires)
    end))
  end)

  describe(":with()", function()
    it("calls fn with a conn, releases it and returns fn's results", test(function(env)
      local pool, srv = pool_with_server(env)
      local res = pack(pool:with(srv.addr, function(conn)
        assert.matches("^peerpool%.conn ", tostring(conn))
        conn:send("PING\r\n")
        return conn:receive(), 2, nil
      end))
      assert.same({ n = 3, "+PONG", 2, nil }, res)
      local s = pool:stats()
      assert.equal(1, s.releases)
      assert.equal(0, s.released_broken)
      assert.equal(1, s.idle)
    end))

    it("closes the conn when fn raises, and raises the same error", test(function(env)
      local pool, srv = pool_with_server(env)
      local seen
      local err = { reason = "protocol" }
      local ok, e = pcall(pool.with, pool, srv.addr, function(conn)
        seen = conn
        error(err)
      end)
      assert.is_false(ok)
      assert.equal(err, e)
      ok, e = pcall(pool.with, pool, srv.addr, function() error("boom") end)
      assert.is_false(ok)
      assert.matches("boom", e)
      local s = pool:stats()
      assert.equal(2, s.closed.discarded) -- closed, the peer not blamed for the program's error
      assert.equal(0, pool:peer(srv.addr).failures)
      assert.equal(0, s.conns - s.connecting)
      assert.error_matches(function() seen:send("x") end, "attempt to use a released conn", nil,
        true)
    end))

    it("answers nil, code, detail when the acquire fails", test(function(env)
      local pool, srv = pool_with_server(env, { max_per_peer = 1 })
      local called = false
      assert.same({ n = 3, nil, "no_peer", "unknown peer 127.0.0.1:1 (add it with pool:add_peer)" },
        pack(pool:with("127.0.0.1:1", function() called = true end)))
      local held = pool:acquire(srv.addr)
      local res = pack(pool:with(srv.addr, function() called = true end, { busy = "fail" }))
      assert.same({ n = 3, nil, "busy", res[3] }, res)
      assert.matches("^peerpool%.notice ", tostring(res[3]))
      assert.is_false(called)
      held:release()
    end))

    it("takes fn without a peer, with or without options", test(function(env)
      local pool, srv = pool_with_server(env)
      assert.equal(srv.addr, pool:with(function(conn) return conn.peer end))
      assert.equal(srv.addr, pool:with(function(conn) return conn.peer end, { timeout = 1000 }))
      assert.equal(srv.addr, pool:with(nil, function(conn) return conn.peer end))
    end))

    it("does not mind fn releasing the conn itself", test(function(env)
      local pool, srv = pool_with_server(env)
      assert.equal("done", pool:with(srv.addr, function(conn)
        conn:release()
        return "done"
      end))
      assert.equal(1, pool:stats().releases)
    end))

    it("raises naming fn when it is not a function", test(function(env)
      local pool = env:pool()
      assert.error_matches(function() pool:with("127.0.0.1:1") end,
        "bad argument #2 to 'with' (function expected, got nil)", nil, true)
      assert.error_matches(function() pool:with("127.0.0.1:1", "fn") end,
        "bad argument #2 to 'with' (function expected, got string)", nil, true)
    end))
  end)

  describe(":stats()", function()
    it("is a plain table of gauges and counters", test(function(env)
      local pool = env:pool()
      local s = pool:stats()
      for _, k in ipairs { "conns", "idle", "active", "connecting", "waiters", "peers",
        "acquires", "acquired_immediate", "acquired_dialed", "acquired_waited", "timed_out",
        "busy", "exhausted", "canceled", "cannot_connect", "releases", "released_broken",
        "connect_attempts", "connects_ok", "connects_failed", "bytes_in", "bytes_out",
        "msgs_in", "msgs_out", "pings", "pings_failed", "policy_errors", "leaked_leases",
        "callback_errors" } do
        assert.equal(0, s[k], k)
        assert.is_true(math.type(s[k]) == "integer", k)
      end
      assert.equal(0, s.connect_latency_ms_avg)
      assert.equal(0, s.connect_latency_ms_max)
      for _, state in ipairs { "known", "connecting", "connected", "ready", "disconnected",
        "failed", "burned" } do
        assert.equal(0, s.peers_by_state[state], state)
      end
      for _, reason in ipairs { "idle", "lifespan", "broken", "remote", "ping", "evicted",
        "closed" } do
        assert.equal(0, s.closed[reason], reason)
      end
      assert.is_nil(getmetatable(s))
    end))

    it("counts acquires, releases, conns and bytes", test(function(env)
      local pool, srv = pool_with_server(env)
      local conn = pool:acquire(srv.addr)
      local s = pool:stats()
      local wanted = { peers = 1, conns = 1, active = 1, idle = 0 }
      assert.same(wanted, H.pick(s, wanted))
      assert.equal(1, s.peers_by_state.ready)
      assert.is_true(s.connect_latency_ms_max >= s.connect_latency_ms_avg)
      conn:send("PING\r\n")
      assert.equal("+PONG", conn:receive())
      conn:release()
      s = pool:stats()
      wanted = { acquires = 1, releases = 1, active = 0, idle = 1, bytes_out = 6, bytes_in = 7,
        msgs_out = 1 }
      assert.same(wanted, H.pick(s, wanted))
      assert.is_true(s.msgs_in >= 1)
    end))
  end)

  describe(":peers()", function()
    it("lists peer views in the order the peers were added", test(function(env)
      local pool = env:pool()
      pool:add_peer("127.0.0.1:7002", 1700000000000)
      pool:add_peer("127.0.0.1:7001")
      local peers = pool:peers()
      assert.equal(2, #peers)
      assert.equal("127.0.0.1:7002", peers[1].addr)
      assert.equal("127.0.0.1:7001", peers[2].addr)
      local v = peers[1]
      assert.equal("known", v.state)
      assert.equal(1700000000000, v.last_seen)
      for _, k in ipairs { "conns", "idle", "leases", "waiters", "failures", "last_success",
        "attempts", "bytes_in", "bytes_out", "msgs_in", "msgs_out" } do
        assert.equal(0, v[k], k)
      end
      assert.equal(0, v.latency_ms)
      assert.is_nil(v.last_error)
      assert.is_nil(v.retry_in_ms)
    end))

    it("is empty for a pool without peers", test(function(env)
      assert.same({}, env:pool():peers())
    end))
  end)

  describe(":peer()", function()
    it("gives the view of a peer, by any spelling", test(function(env)
      local pool = env:pool()
      pool:add_peer("[::1]:5")
      assert.equal("[::1]:5", pool:peer("[0:0::1]:5").addr)
      assert.equal("known", pool:peer("[::1]:5").state)
    end))

    it("follows the peer's conns, leases and traffic", test(function(env)
      local pool, srv = pool_with_server(env)
      local conn = pool:acquire(srv.addr)
      local v = pool:peer(srv.addr)
      assert.equal("ready", v.state)
      assert.equal(1, v.conns)
      assert.equal(1, v.leases)
      assert.equal(0, v.idle)
      assert.equal(1, v.attempts)
      assert.is_true(v.last_success > 0)
      assert.is_true(v.latency_ms >= 0)
      conn:send("PING\r\n")
      conn:receive()
      conn:release()
      v = pool:peer(srv.addr)
      assert.equal(1, v.idle)
      assert.equal(0, v.leases)
      assert.equal(6, v.bytes_out)
      assert.equal(7, v.bytes_in)
    end))

    it("is nil for an unknown or malformed address", test(function(env)
      local pool = env:pool()
      assert.is_nil(pool:peer("127.0.0.1:1"))
      assert.is_nil(pool:peer("nonsense"))
    end))

    it("raises naming the address when it is not a string", test(function(env)
      local pool = env:pool()
      assert.error_matches(function() pool:peer() end,
        "bad argument #1 to 'peer' (string expected, got no value)", nil, true)
    end))
  end)

  describe(":on()", function()
    it("reports every peer state transition with the peer's view", test(function(env)
      local pool, srv = pool_with_server(env)
      local events = {}
      pool:on("state", function(peer, from, to)
        events[#events + 1] = { peer.addr, from, to, type(peer.conns), peer.source }
      end)
      local conn = pool:acquire(srv.addr)
      wait_until(function() return #events >= 2 end)
      assert.same({
        { srv.addr, "known", "connecting", "number", "runtime" },
        { srv.addr, "connecting", "ready", "number", "runtime" },
      }, events)
      conn:release()
    end))

    it("reports on a later tick, never inside the call that caused it", test(function(env)
      local pool, srv = pool_with_server(env)
      local n = 0
      pool:on("state", function() n = n + 1 end)
      local got = acquire_cb(pool, srv.addr)
      assert.equal(0, n)
      wait_until(got)
      got()[2]:release()
    end))

    it("calls every callback, in the order they were added", test(function(env)
      local pool, srv = pool_with_server(env)
      local calls = {}
      pool:on("state", function(_, _, to) calls[#calls + 1] = "first " .. to end)
      pool:on("state", function(_, _, to) calls[#calls + 1] = "second " .. to end)
      pool:acquire(srv.addr):release()
      wait_until(function() return #calls >= 4 end)
      assert.same({ "first connecting", "second connecting", "first ready", "second ready" },
        calls)
    end))

    it("counts an error in a callback and still calls the others", test(function(env)
      local pool, srv = pool_with_server(env)
      local calls = 0
      pool:on("state", function() error("state callback fails") end)
      pool:on("state", function() calls = calls + 1 end)
      pool:acquire(srv.addr):release()
      wait_until(function() return calls >= 2 end)
      assert.equal(2, pool:stats().callback_errors)
    end))

    it("may close the pool from a callback", test(function(env)
      local pool, srv = pool_with_server(env)
      local calls = 0
      pool:on("state", function()
        calls = calls + 1
        pool:close()
      end)
      local res
      peerpool.run(function() res = pack(pool:acquire(srv.addr)) end)
      wait_until(function() return res end)
      H.ticks(10)
      assert.equal(1, calls)
      assert.matches("^peerpool%.pool %(closed%)", tostring(pool))
    end))

    it("raises naming a bad event or callback", test(function(env)
      local pool = env:pool()
      assert.error_matches(function() pool:on("change", function() end) end,
        "bad argument #1 to 'on' (event must be \"state\", \"conn_open\", \"conn_close\", " ..
        "\"eject\", \"burn\", \"leak\" or \"acquire_timeout\")", nil, true)
      assert.error_matches(function() pool:on("state") end,
        "bad argument #2 to 'on' (function expected, got no value)", nil, true)
      assert.error_matches(function() pool:on() end,
        "bad argument #1 to 'on' (string expected, got no value)", nil, true)
    end))
  end)

  describe(":close()", function()
    it("is safe to call twice", test(function(env)
      local pool = env:pool()
      pool:close()
      pool:close()
      assert.matches("^peerpool%.pool %(closed%): ", tostring(pool))
    end))

    it("makes every other method raise", test(function(env)
      local pool = env:pool()
      pool:close()
      for name, call in pairs {
        add_peer = function() pool:add_peer("127.0.0.1:1") end,
        acquire = function() pool:acquire("127.0.0.1:1") end,
        acquire_cb = function() pool:acquire("127.0.0.1:1", function() end) end,
        with = function() pool:with("127.0.0.1:1", function() end) end,
        stats = function() pool:stats() end,
        peers = function() pool:peers() end,
        peer = function() pool:peer("127.0.0.1:1") end,
        metrics = function() pool:metrics() end,
        on = function() pool:on("state", function() end) end,
      } do
        assert.error_matches(call, "attempt to use a closed pool", nil, true, name)
      end
    end))

    it("closes the pool's conns", test(function(env)
      local pool, srv = pool_with_server(env)
      local a, b = pool:acquire(srv.addr), pool:acquire(srv.addr)
      a:release()
      wait_until(function() return srv.open == 2 end)
      pool:close()
      H.wait_closed(srv)
      -- a conn still leased is detached: I/O answers closed, release is harmless
      assert.same({ n = 3, nil, "closed", CLOSED }, pack(b:send("PING\r\n")))
      assert.same({ n = 3, nil, "closed", "" }, pack(b:receive()))
      assert.is_true(b:release())
      assert.is_false(b:release())
    end))

    it("may be called from an acquire callback", test(function(env)
      local pool, srv = pool_with_server(env)
      local got
      pool:acquire(srv.addr, function(err, conn)
        pool:close()
        got = pack(err, conn, conn:send("PING\r\n"))
      end)
      wait_until(function() return got end)
      assert.is_nil(got[1])
      assert.is_nil(got[3]) -- the conn was detached by close
      assert.is_true(got[2]:release())
    end))

    it("is what __close does", test(function(env)
      local srv = env:line()
      local kept
      do
        local pool <close> = peerpool.new()
        pool:add_peer(srv.addr)
        pool:acquire(srv.addr):release()
        kept = pool
      end
      assert.matches("^peerpool%.pool %(closed%)", tostring(kept))
      H.wait_closed(srv)
    end))
  end)

  describe("methods", function()
    it("raise naming the pool when called on something else", test(function(env)
      local pool = env:pool()
      for _, name in ipairs { "add_peer", "acquire", "stats", "peers", "peer", "on", "close" } do
        local method = pool[name]
        assert.error_matches(function() method(42, "127.0.0.1:1") end,
          "peerpool.pool expected, got number", nil, true, name)
        assert.error_matches(function() method({}, "127.0.0.1:1") end,
          "peerpool.pool expected, got table", nil, true, name)
      end
    end))
  end)

  describe("__tostring", function()
    it("names the object and counts peers, conns and waiters", test(function(env)
      local pool, srv = pool_with_server(env)
      local conn = pool:acquire(srv.addr)
      assert.matches("^peerpool%.pool %(1 peers, 1 conns, 0 waiters%): 0x%x+$", tostring(pool))
      conn:release()
    end))
  end)

  describe("options", function()
    it("max_per_peer caps the conns of one peer", test(function(env)
      local pool, srv = pool_with_server(env, { max_per_peer = 2 })
      local got = {}
      for i = 1, 3 do got[i] = acquire_cb(pool, srv.addr) end
      wait_until(function() return got[1]() and got[2]() end)
      H.ticks()
      assert.is_nil(got[3]())
      assert.equal(2, pool:stats().conns)
      assert.equal(1, pool:stats().waiters)
      got[1]()[2]:release()
      wait_until(got[3])
      assert.equal(2, srv.accepted)
      got[2]()[2]:release()
      got[3]()[2]:release()
    end))

    it("max_total caps the conns of every peer together", test(function(env)
      local pool, a = pool_with_server(env, { max_total = 1 })
      local b = env:line()
      pool:add_peer(b.addr)
      local held = pool:acquire(a.addr)
      local res = pack(pool:acquire(b.addr, { busy = "fail" }))
      assert.same({ n = 3, nil, "busy", res[3] }, res)
      held:release()
      -- an idle conn of another peer is evicted for it
      local conn = pool:acquire(b.addr, { timeout = 2000 })
      assert.equal(b.addr, conn.peer)
      assert.equal(1, pool:stats().conns)
      conn:release()
    end))

    it("client_limit lets leases share a conn", test(function(env)
      local pool, srv = pool_with_server(env, { client_limit = 2, max_per_peer = 1 })
      local a, b = pool:acquire(srv.addr), pool:acquire(srv.addr, { busy = "fail" })
      assert.is_truthy(b)
      assert.equal(1, pool:stats().conns)
      assert.equal(2, pool:peer(srv.addr).leases)
      a:release()
      b:release()
    end))

    it("idle_timeout closes idle conns", test(function(env)
      local pool, srv = pool_with_server(env, { idle_timeout = 30 })
      pool:acquire(srv.addr):release()
      wait_until(function() return pool:stats().closed.idle == 1 end, 2000)
      assert.equal(0, pool:stats().conns)
      assert.equal("disconnected", pool:peer(srv.addr).state)
      H.wait_closed(srv)
    end))

    it("max_lifespan closes a conn when its lease ends after it", test(function(env)
      local pool, srv = pool_with_server(env, { max_lifespan = 30, lifespan_jitter = 0 })
      local conn = pool:acquire(srv.addr)
      sleep(60)
      conn:release()
      wait_until(function() return pool:stats().closed.lifespan == 1 end, 2000)
      pool:acquire(srv.addr):release()
      assert.equal(2, pool:stats().connects_ok)
    end))

    it("acquire_timeout is the default deadline of an acquire", test(function(env)
      local pool, srv = pool_with_server(env, { max_per_peer = 1, acquire_timeout = 30 })
      local held = pool:acquire(srv.addr)
      local got = pack(pool:acquire(srv.addr))
      assert.same({ nil, "timeout" }, { got[1], got[2] })
      -- the default deadline: 30 ms (later on a loaded machine, never sooner)
      local waited = tonumber(got[3]:match("^timed out after (%d+) ms waiting"))
      assert.is_true(waited >= 30 and waited < 3000, got[3])
      held:release()
    end))

    it("retries more connect attempts before cannot_connect", test(function(env)
      local refused = env:refused()
      local pool = env:pool { retries = 2 }
      pool:add_peer(refused.addr)
      local res = pack(pool:acquire(refused.addr))
      assert.equal("cannot_connect", res[2])
      assert.equal(3, pool:stats().connect_attempts)
      assert.equal(3, pool:peer(refused.addr).attempts)
    end))
  end)
end)
