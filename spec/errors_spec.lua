-- Every error code reachable from Lua, in both styles: `nil, code, detail` from a coroutine,
-- `callback(code, nil, detail)` later, or the tuple returned at once when the call itself fails
-- (the callback then never runs). Plus errors raised inside callbacks: reported with a
-- traceback, counted, never fatal.
local uv = require "luv"
local H = require "spec.support.helpers"
local peerpool = require "peerpool"

local test, pack, wait_until = H.test, H.pack, H.wait_until
local CLOSED = "pool or connection is closed"

-- Acquire with a callback; returns the immediate answer and a getter for the callback's.
local function acquire_cb(pool, addr, opts)
  local got
  local now = pack(pool:acquire(addr, opts or {}, function(...) got = pack(...) end))
  return now, function() return got end
end

describe("peerpool errors", function()
  describe("busy", function()
    it("comes with a notice, at once, in both styles", test(function(env)
      local pool, srv, held = env:full_pool()
      local res = pack(pool:acquire(srv.addr, { busy = "fail" }))
      assert.same({ n = 3, nil, "busy", res[3] }, res)
      assert.matches("^peerpool%.notice ", tostring(res[3]))
      local now, later = acquire_cb(pool, srv.addr, { busy = "fail" })
      assert.same({ n = 3, nil, "busy", now[3] }, now)
      assert.matches("^peerpool%.notice ", tostring(now[3]))
      H.ticks()
      assert.is_nil(later())
      assert.equal(2, pool:stats().busy)
      held:release()
    end))
  end)

  describe("timeout", function()
    it("ends an acquire at its deadline, in both styles", test(function(env)
      local pool, srv, held = env:full_pool()
      local now, later = acquire_cb(pool, srv.addr, { timeout = 30 })
      assert.same({ n = 1, true }, now)
      local why = "^timed out after %d+ ms waiting for " .. srv.addr:gsub("%p", "%%%0") ..
        ": 1/1 conns in use, %d waiters? ahead$"
      local got = pack(pool:acquire(srv.addr, { timeout = 30 }))
      assert.same({ nil, "timeout" }, { got[1], got[2] })
      assert.matches(why, got[3])
      wait_until(later)
      got = later()
      assert.same({ "timeout" }, { got[1], got[2] })
      assert.matches(why, got[3])
      assert.equal(2, pool:stats().timed_out)
      held:release()
    end))

    it("ends a receive after io_timeout", test(function(env)
      local srv = env:slow(2000)
      local pool = env:pool_on(srv, { io_timeout = 30 })
      local conn = pool:acquire(srv.addr)
      conn:send("hello\r\n")
      assert.same({ n = 3, nil, "timeout", "" }, pack(conn:receive()))
      conn:close()
    end))

    it("ends a notice's wait", test(function(env)
      local pool, srv, held = env:full_pool()
      local _, _, notice = pool:acquire(srv.addr, { busy = "fail" })
      assert.same({ n = 3, nil, "timeout", "capacity did not free in time" }, pack(notice:wait(20)))
      held:release()
    end))
  end)

  describe("exhausted", function()
    local FULL = "the wait queue is full (backlog)"
    it("answers at once when the wait queue is full, in both styles", test(function(env)
      local pool, srv, held = env:full_pool({ backlog = 1 })
      local waiting = acquire_cb(pool, srv.addr)
      assert.same({ n = 1, true }, waiting)
      assert.same({ n = 3, nil, "exhausted", FULL }, pack(pool:acquire(srv.addr)))
      local now, later = acquire_cb(pool, srv.addr)
      assert.same({ n = 3, nil, "exhausted", FULL }, now)
      H.ticks()
      assert.is_nil(later())
      assert.equal(2, pool:stats().exhausted)
      held:release()
    end))

    it("answers at once with backlog = 0", test(function(env)
      local pool, srv, held = env:full_pool({ backlog = 0 })
      assert.same({ n = 3, nil, "exhausted", FULL }, pack(pool:acquire(srv.addr)))
      held:release()
    end))
  end)

  describe("cannot_connect", function()
    it("names ECONNREFUSED for a port where nothing listens, in both styles", test(function(env)
      local srv = env:refused()
      -- a fixed backoff: the default's full jitter may draw a hold of 0 ms, and then the
      -- message rightly names no backoff
      local fixed = { backoff = function() return 300 end }
      local pool = env:pool_on(srv, { retries = 0, policy = fixed })
      local got = pack(pool:acquire(srv.addr))
      assert.same({ nil, "cannot_connect" }, { got[1], got[2] })
      assert.matches("^cannot connect to " .. srv.addr .. ": backing off for 0%.[123] s more " ..
        "after 1 consecutive failure %(last ECONNREFUSED%)$", got[3])
      local v = pool:peer(srv.addr)
      assert.equal("failed", v.state)
      assert.equal("ECONNREFUSED", v.last_error)
      assert.is_true(v.failures >= 1)
      -- after the peer's retry time, the callback style answers the same
      H.wait_until(function() return (pool:peer(srv.addr).retry_in_ms or 0) == 0 end, 5000)
      local now, later = acquire_cb(pool, srv.addr)
      assert.same({ n = 1, true }, now)
      wait_until(later, 5000)
      got = later()
      assert.same({ "cannot_connect" }, { got[1], got[2] })
      assert.matches("(last ECONNREFUSED)", got[3], 1, true)
      local s = pool:stats()
      assert.equal(2, s.cannot_connect)
      assert.equal(2, s.connects_failed)
    end))

    it("names ETIMEDOUT when connects outlast connect_timeout", test(function(env)
      local pool, srv = env:pool_with("blackhole", { retries = 0, connect_timeout = 100 })
      local t0 = uv.now()
      local got = pack(pool:acquire(srv.addr))
      assert.same({ nil, "cannot_connect" }, { got[1], got[2] })
      assert.matches("(last ETIMEDOUT)", got[3], 1, true)
      local waited = uv.now() - t0
      assert.is_true(waited >= 90 and waited < 3000, "waited " .. waited .. " ms")
    end))
  end)

  describe("closed", function()
    it("ends what waits when the pool closes, in both styles", test(function(env)
      local pool, srv, held = env:full_pool()
      local in_co
      peerpool.run(function() in_co = pack(pool:acquire(srv.addr)) end)
      local _, later = acquire_cb(pool, srv.addr)
      local _, _, notice = pool:acquire(srv.addr, { busy = "fail" })
      local on_free
      notice:on_free(function(...) on_free = pack(...) end)
      pool:close()
      wait_until(function() return in_co and later() and on_free end)
      assert.same({ n = 3, nil, "closed", CLOSED }, in_co)
      assert.same({ n = 3, "closed", nil, CLOSED }, later())
      assert.same({ n = 1, "closed" }, on_free)
      assert.same({ n = 3, nil, "closed", CLOSED }, pack(notice:wait()))
      assert.same({ n = 3, nil, "closed", CLOSED }, pack(held:send("PING\r\n")))
      assert.same({ n = 3, nil, "closed", "" }, pack(held:receive()))
      held:release()
    end))
  end)

  describe("no_peer", function()
    it("answers for an address never added, in both styles", test(function(env)
      local pool = env:pool()
      local detail = "unknown peer 127.0.0.1:1 (add it with pool:add_peer)"
      assert.same({ n = 3, nil, "no_peer", detail }, pack(pool:acquire("127.0.0.1:1")))
      local now, later = acquire_cb(pool, "127.0.0.1:1")
      assert.same({ n = 3, nil, "no_peer", detail }, now)
      H.ticks()
      assert.is_nil(later())
    end))

    it("answers when the pool knows no peer at all", test(function(env)
      local pool = env:pool()
      assert.same({ n = 3, nil, "no_peer",
        "no peer can serve: the pool knows no peer" },
        pack(pool:acquire()))
    end))

    it("answers for an address older than max_address_age", test(function(env)
      local srv = env:line()
      local pool = env:pool { max_address_age = 60000 }
      local old = os.time() * 1000 - 3600 * 1000
      pool:add_peer(srv.addr, old)
      assert.same({ n = 3, nil, "no_peer",
        srv.addr .. " is not dialled: its address is older than max_address_age" },
        pack(pool:acquire(srv.addr)))
      assert.equal("no_peer", select(2, pool:acquire()))
      assert.equal(0, srv.accepted)
      -- seen again: dialled
      pool:add_peer(srv.addr)
      local conn = pool:acquire(srv.addr)
      assert.is_truthy(conn)
      conn:release()
    end))
  end)

  describe("burned", function()
    -- A backoff policy that answers false burns the peer (pool:load_policy / new{policy=}).
    local burn = { backoff = function() return false end }
    local function burned(addr)
      return addr .. " is burned: its backoff policy gave up; it is not dialled unless re-added " ..
        "(last ECONNREFUSED)"
    end

    it("answers when the backoff policy burns the peer, in both styles", test(function(env)
      local pool, srv = env:pool_with("refused", { policy = burn, retries = 3 })
      assert.same({ n = 3, nil, "burned", burned(srv.addr) }, pack(pool:acquire(srv.addr)))
      assert.equal("burned", pool:peer(srv.addr).state)
      assert.equal(1, pool:peer(srv.addr).attempts)
      -- a burned peer is refused at once
      assert.same({ n = 3, nil, "burned", burned(srv.addr) }, pack(pool:acquire(srv.addr)))
      local now, later = acquire_cb(pool, srv.addr)
      assert.same({ n = 3, nil, "burned", burned(srv.addr) }, now)
      H.ticks()
      assert.is_nil(later())
      assert.equal(1, pool:stats().peers_by_state.burned)
      -- with no other peer, an acquire for any peer finds none
      assert.equal("no_peer", select(2, pool:acquire()))
    end))

    it("ends a callback acquire that was dialling", test(function(env)
      local pool, srv = env:pool_with("refused", { policy = burn })
      local now, later = acquire_cb(pool, srv.addr)
      assert.same({ n = 1, true }, now)
      wait_until(later)
      assert.same({ n = 3, "burned", nil, burned(srv.addr) }, later())
    end))

    it("is lifted by adding the address again", test(function(env)
      local pool, srv = env:pool_with("refused", { policy = burn })
      pool:acquire(srv.addr)
      assert.equal("burned", pool:peer(srv.addr).state)
      pool:add_peer(srv.addr)
      assert.not_equal("burned", pool:peer(srv.addr).state)
    end))
  end)

  describe("libuv names", function()
    it("come back from I/O on a conn the remote reset", test(function(env)
      local pool, srv = env:pool_with("line")
      local conn = pool:acquire(srv.addr)
      conn:send("RESET\r\n")
      assert.same({ n = 3, nil, "ECONNRESET", "" }, pack(conn:receive()))
      assert.same({ n = 3, nil, "ECONNRESET", "connection reset by peer" },
        pack(conn:send("PING\r\n")))
      conn:release()
      assert.equal("ECONNRESET", pool:peer(srv.addr).last_error)
    end))
  end)

  describe("invalid", function()
    it("answers a malformed address", test(function(env)
      assert.same({ n = 3, nil, "invalid",
        "host must be an IPv4 address or a host name (letters, digits, '-', '_', dots)" },
        pack(env:pool():add_peer("bad..name:80")))
    end))
  end)

  describe("canceled", function()
    it("ends a cancelled notice", test(function(env)
      local pool, srv, held = env:full_pool()
      local _, _, notice = pool:acquire(srv.addr, { busy = "fail" })
      notice:cancel()
      assert.same({ n = 3, nil, "canceled", "operation canceled" }, pack(notice:wait()))
      held:release()
    end))
  end)

  describe("in callbacks and coroutines", function()
    it("are counted and the pool keeps serving", test(function(env)
      local pool, srv = env:pool_with("line")
      -- a plain coroutine, resumed by the pool when its acquire completes
      local co = coroutine.create(function()
        local conn = pool:acquire(srv.addr)
        conn:release()
        error("coroutine fails")
      end)
      assert.is_true(coroutine.resume(co))
      wait_until(function() return pool:stats().callback_errors == 1 end)
      pool:acquire(srv.addr, function(_, conn)
        conn:release()
        error({ "not a string" })
      end)
      wait_until(function() return pool:stats().callback_errors == 2 end)
      local conn = pool:acquire(srv.addr)
      conn:send("PING\r\n")
      assert.equal("+PONG", conn:receive())
      conn:release()
    end))

    it("leave the failed coroutine dead", test(function(env)
      local pool, srv = env:pool_with("line")
      local co = coroutine.create(function()
        pool:acquire(srv.addr):release()
        error("coroutine fails")
      end)
      assert.is_true(coroutine.resume(co))
      wait_until(function() return pool:stats().callback_errors == 1 end)
      assert.equal("dead", coroutine.status(co))
      assert.same({ false, "cannot resume dead coroutine" }, { coroutine.resume(co) })
    end))

    it("are reported on stderr with a traceback and never exit the process", function()
      local ok, status, out, err = H.child([[
        local peerpool = require "peerpool"
        local servers = require "spec.support.servers"
        local srv = servers.line()
        local pool = peerpool.new { max_per_peer = 1 }
        pool:add_peer(srv.addr)
        pool:on("state", function() error("state callback fails") end)
        local n = peerpool.run(function()
          local done = 0
          pool:acquire(srv.addr, function(_, conn)
            done = done + 1
            conn:release()
            error("acquire callback fails")
          end)
          local co = coroutine.create(function()
            pool:acquire(srv.addr):release()
            done = done + 1
            error("coroutine fails")
          end)
          coroutine.resume(co)
          local held = pool:acquire(srv.addr)
          local _, _, notice = pool:acquire(srv.addr, { busy = "fail" })
          notice:on_free(function() done = done + 1; error("on_free fails") end)
          held:release()
          while done < 3 do
            local t = require("luv").new_timer()
            local me = coroutine.running()
            t:start(5, 0, function() t:close(); coroutine.resume(me) end)
            coroutine.yield()
          end
          return pool:stats().callback_errors
        end)
        pool:close(); srv:close()
        local uv = require "luv"
        for _ = 1, 100 do if not uv.loop_alive() then break end uv.run("nowait") end
        io.write(n, "\n")
      ]])
      assert.is_true(ok, "exit status " .. tostring(status) .. ": " .. err)
      assert.is_true(tonumber(out) >= 4, out)
      assert.matches("peerpool: error in callback: [^\n]*acquire callback fails\nstack traceback:",
        err)
      assert.matches("peerpool: error in callback: [^\n]*state callback fails\nstack traceback:",
        err)
      assert.matches("peerpool: error in callback: [^\n]*on_free fails\nstack traceback:", err)
      assert.matches("peerpool: error in coroutine: [^\n]*coroutine fails\nstack traceback:", err)
    end)
  end)
end)
