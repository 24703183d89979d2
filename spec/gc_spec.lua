-- Garbage collection and the end of Lua: collected pools close themselves, a conn collected
-- while leased is closed and counted, what waits on the loop stays alive, and
-- lua_close / os.exit(true, true) / re-requiring luv never crash (child lua5.4 processes).
local H = require "spec.support.helpers"
local peerpool = require "peerpool"

local test, pack, wait_until = H.test, H.pack, H.wait_until

local function full_gc()
  collectgarbage()
  collectgarbage()
end

-- Open a pool on `srv` with one idle conn, and forget it.
local function forgotten_pool(srv)
  local pool = peerpool.new()
  pool:add_peer(srv.addr)
  pool:acquire(srv.addr):release()
end

-- Collect: the pools made since there were `before` (#peerpool.pools()) are gone, and srv saw
-- their conns closed.
local function collected(before, srv)
  full_gc()
  assert.equal(before, #peerpool.pools())
  H.wait_closed(srv)
end

-- Collect while something waits for the capacity `held` holds, then release it and wait until
-- done() is true: what waited must have survived the collection.
local function collect_then_free(held, done)
  full_gc()
  held:release()
  wait_until(done)
end

-- Lease a conn of `pool` and forget it.
local function forgotten_conn(pool, addr)
  pool:acquire(addr)
end

-- Child processes share this prelude: a line server, a pool on it with an idle conn, a leased
-- conn with a receive waiting, a pending acquire and an armed busy notice, all live.
local LIVE = [[
local uv = require "luv"
local peerpool = require "peerpool"
local servers = require "spec.support.servers"
local srv = servers.line()
local pool = peerpool.new { max_per_peer = 2 }
pool:add_peer(srv.addr)
local other = peerpool.new()
other:add_peer(srv.addr)
local closed = peerpool.new()
closed:close()
KEEP = { srv, pool, other }
peerpool.run(function()
  local idle = assert(pool:acquire(srv.addr))
  local leased = assert(pool:acquire(srv.addr))
  idle:release()
  local busy = assert(pool:acquire(srv.addr))
  local _, code, notice = pool:acquire(srv.addr, { busy = "fail" })
  assert(code == "busy", code)
  notice:on_free(function() end)
  KEEP[#KEEP + 1] = { leased, busy, notice, assert(other:acquire(srv.addr)) }
  leased:send("SILENT\r\n")
  peerpool.run(function() leased:receive() end)          -- waits
  peerpool.run(function() pool:acquire(srv.addr) end)    -- waits
  pool:acquire(srv.addr, function() end)                 -- waits
end)
io.write("live\n")
]]

describe("peerpool (garbage collection)", function()
  describe("a pool", function()
    it("closes itself when collected", test(function(env)
      local srv = env:line()
      local before = #peerpool.pools()
      forgotten_pool(srv)
      assert.equal(before + 1, #peerpool.pools())
      wait_until(function() return srv.open == 1 end)
      collected(before, srv)
    end))

    it("stays open while a conn it lent is alive, and goes with it", test(function(env)
      local srv = env:line()
      local before = #peerpool.pools()
      local conn = (function()
        local pool = peerpool.new()
        pool:add_peer(srv.addr)
        return pool:acquire(srv.addr)
      end)()
      full_gc()
      assert.equal(before + 1, #peerpool.pools())
      conn:send("PING\r\n")
      assert.equal("+PONG", conn:receive())
      conn:release()
      conn = nil -- luacheck: ignore 311
      collected(before, srv)
    end))

    it("stays open while an acquire callback is pending", test(function(env)
      local srv = env:line()
      local got
      ;(function()
        local pool = peerpool.new()
        pool:add_peer(srv.addr)
        pool:acquire(srv.addr, function(err, conn) got = { err, conn } end)
      end)()
      full_gc()
      wait_until(function() return got end)
      assert.is_nil(got[1])
      got[2]:send("PING\r\n")
      assert.equal("+PONG", got[2]:receive())
      got[2]:release()
      got = nil
      full_gc()
      H.wait_closed(srv)
    end))
  end)

  describe("a conn", function()
    it("collected while leased is closed, counted as leaked, and not blamed on its peer",
      test(function(env)
      local pool, srv = env:pool_with("line")
      forgotten_conn(pool, srv.addr)
      assert.equal(1, pool:stats().active)
      full_gc()
      local leaked = { leaked_leases = 1, released_broken = 0, active = 0 }
      assert.same(leaked, H.pick(pool:stats(), leaked))
      assert.equal(0, pool:peer(srv.addr).failures)
      H.wait_closed(srv)
    end))

    it("collected after release counts nothing", test(function(env)
      local pool, srv = env:pool_with("line")
      pool:acquire(srv.addr):release()
      full_gc()
      local nothing = { leaked_leases = 0, released_broken = 0, idle = 1 }
      assert.same(nothing, H.pick(pool:stats(), nothing))
    end))

    it("collected while leased after its pool closed counts a leak and nothing breaks",
      test(function(env)
        local pool, srv = env:pool_with("line")
        forgotten_conn(pool, srv.addr)
        pool:close()
        full_gc()
        H.wait_closed(srv)
      end))

    it("waiting in receive is not collected", test(function(env)
      local pool, srv = env:pool_with("line")
      local got
      peerpool.run(function()
        local conn = pool:acquire(srv.addr)
        conn:send("SLEEP 30\r\n")
        got = pack(conn:receive())
        conn:release()
      end)
      full_gc()
      wait_until(function() return got end)
      assert.same({ n = 1, "+WOKE" }, got)
      assert.equal(0, pool:stats().leaked_leases)
    end))
  end)

  describe("a pending acquire", function()
    it("in a coroutine nothing references still gets its conn", test(function(env)
      local pool, srv, held = env:full_pool()
      local got
      peerpool.run(function()
        local conn = pool:acquire(srv.addr)
        got = tostring(conn)
        conn:release()
      end)
      collect_then_free(held, function() return got end)
      assert.matches("^peerpool%.conn ", got)
    end))

    it("with a callback nothing references still calls back", test(function(env)
      local pool, srv, held = env:full_pool()
      local got
      pool:acquire(srv.addr, function(err, conn)
        got = { err, conn }
        conn:release()
      end)
      collect_then_free(held, function() return got end)
      assert.is_nil(got[1])
    end))
  end)

  describe("a coroutine waiting in the binding", function()
    -- The first program a user writes: hooks that allocate (here: collect), 3 peers, 10
    -- coroutines doing acquire -> send -> receive -> release. A coroutine started by spawn is
    -- held by nobody while it waits; it must stay alive while the binding resumes it.
    it("survives collections inside policy hooks while it is resumed", function()
      local ok, status, out, err = H.child([[
        local uv = require "luv"
        local peerpool = require "peerpool"
        local servers = require "spec.support.servers"
        local srvs = { servers.line(), servers.line(), servers.line() }
        local pool = peerpool.new { max_per_peer = 2, policy = {
          select_peer = function(peers) collectgarbage() return #peers end,
          handshake = function(conn)
            collectgarbage()
            conn:send("PING\r\n")
            return conn:receive() == "+PONG"
          end,
        } }
        for _, s in ipairs(srvs) do pool:add_peer(s.addr) end
        local done = 0
        for w = 1, 10 do
          peerpool.spawn(function()
            for i = 1, 30 do
              local conn = assert(pool:acquire())
              conn:send("ECHO " .. w .. "-" .. i .. "\r\n")
              local line = assert(conn:receive())
              assert(line == w .. "-" .. i, line)
              conn:release()
            end
            done = done + 1
          end)
          collectgarbage()
        end
        while done < 10 and uv.run("once") do end
        io.write("done ", done, "\n")
        pool:close()
        for _, s in ipairs(srvs) do s:close() end
        uv.run()
      ]])
      assert.equal("done 10\n", out, err)
      assert.is_true(ok, "exit status " .. tostring(status) .. "\n" .. err)
    end)

    it("waiting in notice:wait survives a collection before it is resumed", test(function(env)
      local pool, srv, held = env:full_pool()
      local got
      peerpool.spawn(function()
        local _, code, notice = pool:acquire(srv.addr, { busy = "fail" })
        assert(code == "busy")
        got = pack(notice:wait(2000))
      end)
      collect_then_free(held, function() return got end)
      assert.same({ n = 1, true }, got)
    end))
  end)

  describe("a queued acquire's key", function()
    it("is still the caller's key when the waiter is served after a collection",
      test(function(env)
        local a, b = env:line(), env:line()
        local keys = {}
        local pool = env:pool { max_total = 1, policy = {
          select_peer = function(_, ctx) keys[#keys + 1] = ctx.key return 1 end } }
        pool:add_peer(a.addr)
        pool:add_peer(b.addr)
        local held = assert(pool:acquire(a.addr))
        local served
        -- a long key (not interned), referenced by nobody but the binding once queued
        pool:acquire(nil, { key = table.concat { "key-", string.rep("k", 60) } },
          function(err, conn)
            served = err or conn
            if conn then conn:release() end
          end)
        full_gc()
        string.rep("garbage", 1000) -- reuse freed memory
        full_gc()
        held:close() -- capacity frees: the waiter dials a peer chosen with its key
        wait_until(function() return served end)
        assert.equal(table.concat { "key-", string.rep("k", 60) }, keys[#keys])
      end))
  end)

  describe("a notice", function()
    it("armed and forgotten still calls its on_free fn", test(function(env)
      local pool, srv, held = env:full_pool()
      local got
      ;(function()
        local _, _, notice = pool:acquire(srv.addr, { busy = "fail" })
        notice:on_free(function(err) got = { err } end)
      end)()
      collect_then_free(held, function() return got end)
      assert.same({}, got)
    end))

    it("forgotten after it fired goes quietly", test(function(env)
      local pool, srv, held = env:full_pool()
      ;(function()
        local _, _, notice = pool:acquire(srv.addr, { busy = "fail" })
        notice:wait(1) -- times out: arms a timer of its own
      end)()
      held:release()
      H.ticks()
      full_gc()
      H.ticks()
      assert.equal(0, pool:stats().callback_errors)
    end))
  end)

  -- Run `code` in a child lua5.4 (H.child): it must print `out`, nothing on stderr, and exit
  -- with `status` (0 unless given).
  local function child_ends(code, out, status)
    local _, got_status, got_out, err = H.child(code)
    assert.same({ status or 0, out, "" }, { got_status, got_out, err })
  end

  describe("lua_close", function()
    for _, case in ipairs {
      { "at the end of a script with live pools, conns and waits exits cleanly", LIVE, "live\n" },
      { "by os.exit(true, true) with live pools, conns and waits exits cleanly",
        LIVE .. "os.exit(true, true)\n", "live\n" },
      { "by os.exit(false, true) exits with status 1 and nothing else",
        LIVE .. "os.exit(false, true)\n", "live\n", 1 },
      { "after the program closed everything exits cleanly", LIVE .. [[
        for _, p in ipairs(peerpool.pools()) do p:close() end
        srv:close()
        for _ = 1, 100 do if not uv.loop_alive() then break end uv.run("nowait") end
        io.write(#peerpool.pools(), "\n")
        os.exit(true, true)
      ]], "live\n0\n" },
    } do
      it(case[1], function() child_ends(case[2], case[3], case[4]) end)
    end
  end)

  describe("luv", function()
    -- Nothing but the modules may hold the first luv table here (the servers module is
    -- required afterwards), as when busted clears package.loaded between files.
    local function reloaded(also_peerpool)
      return string.format([[
        local uv = require "luv"
        local peerpool = require "peerpool"
        local first = peerpool.new()
        package.loaded.luv = nil
        %s
        uv = nil
        collectgarbage(); collectgarbage()
        local uv2 = require "luv"
        local pp2 = require "peerpool"
        collectgarbage(); collectgarbage()
        local servers = require "spec.support.servers"
        local srv = servers.line()
        local p = pp2.new()
        p:add_peer(srv.addr)
        local t = uv2.new_timer()
        t:start(5, 0, function() t:close() end)
        local line = pp2.run(function()
          local c = assert(p:acquire(srv.addr))
          c:send("PING\r\n")
          local l = c:receive()
          c:release()
          return l
        end)
        collectgarbage(); collectgarbage()
        io.write(line, " ", #pp2.pools(), "\n")
        first:close()
        os.exit(true, true)
      ]], also_peerpool and "package.loaded.peerpool = nil; peerpool = nil" or "")
    end

    it("required again after clearing package.loaded keeps the pools' loop", function()
      child_ends(reloaded(false), "+PONG 2\n")
    end)

    it("and peerpool required again after clearing package.loaded keep working", function()
      child_ends(reloaded(true), "+PONG 2\n")
    end)
  end)
end)
