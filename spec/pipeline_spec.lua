-- Shared conns that pipeline: framing = "line" / "resp" / "length" / function(buf),
-- conn:receive() returning the lease's next whole reply, pool:request, timeouts that break the
-- pipeline, the Lua framer's containment; and pipelining correctness against real
-- redis-servers (PIPE_REQUESTS requests per coroutine, 2000 by default).
local H = require "spec.support.helpers"
local redis = require "spec.support.redis"
local peerpool = require "peerpool"

local test, pack, wait_until, in_parallel = H.test, H.pack, H.wait_until, H.in_parallel

-- A server (`srv`, an ordered one unless given) and a pool of line-framed conns on it, one
-- conn per peer shared by up to `limit` leases; `extra` options added.
local function shared_line(env, limit, extra, srv)
  local opts = { framing = "line", client_limit = limit, max_per_peer = 1 }
  for k, v in pairs(extra or {}) do opts[k] = v end
  srv = srv or env:ordered()
  return srv, env:pool_on(srv, opts)
end

-- shared_line(env, 4) with a first lease of its conn: srv, pool, the lease.
local function shared_lease(env)
  local srv, pool = shared_line(env, 4)
  return srv, pool, assert(pool:acquire(srv.addr))
end

describe("pipelining", function()
  describe("framing option", function()
    it("names the field when it is wrong", function()
      for opt, msg in pairs {
        [42] = "option 'framing' must be",
        ["xml"] = "option 'framing' must be",
        [{ kind = "length", size = 3 }] = "framing.length_size",
        [{ kind = "length", offset = -1 }] = "framing.offset",
        [{}] = "framing.kind",
      } do
        local ok, err = pcall(peerpool.new, { framing = opt })
        assert.is_false(ok)
        assert.matches(msg, err, 1, true)
      end
    end)
  end)

  describe("conn:receive()", function()
    it("returns each lease's own replies while leases share one conn", test(function(env)
      local srv, pool = shared_line(env, 8, nil, env:echo())
      local bad = 0
      in_parallel(8, function(i)
        local conn = assert(pool:acquire(srv.addr))
        for k = 1, 100 do
          -- two requests out before reading either
          assert(conn:send(("c%d-%d-a\n"):format(i, k)))
          assert(conn:send(("c%d-%d-b\n"):format(i, k)))
          if conn:receive() ~= ("c%d-%d-a\n"):format(i, k) then bad = bad + 1 end
          if conn:receive() ~= ("c%d-%d-b\n"):format(i, k) then bad = bad + 1 end
        end
        conn:release()
      end)
      assert.equal(0, bad)
      assert.equal(1, pool:stats().conns)
      assert.equal(0, H.troubled(pool))
    end))

    it("refuses patterns and answers bad_state with nothing sent", test(function(env)
      local pool, srv = env:pool_with("echo", { framing = "line" })
      local conn = assert(pool:acquire(srv.addr))
      assert.has_error(function() conn:receive("*l") end)
      local r = pack(conn:receive())
      assert.same({ nil, "bad_state", "nothing sent on this conn awaits a reply" },
        { r[1], r[2], r[3] })
      assert.has_error(function() conn:send("x\n", function() end) end)
      conn:release()
    end))

    it("a timeout breaks the shared conn; the requests behind it fail", test(function(env)
      local srv = env:slow(400)
      local pool = env:pool_on(srv, { framing = "line", client_limit = 4, io_timeout = 100 })
      local results = {}
      in_parallel(3, function(i)
        local conn = assert(pool:acquire(srv.addr))
        assert(conn:send("PING\n"))
        local r, code = conn:receive()
        results[i] = r or code
        conn:release()
      end)
      table.sort(results)
      -- the first to time out breaks the conn; the others lose their replies
      assert.equal("timeout", results[#results])
      for i = 1, #results do
        assert.is_true(results[i] == "timeout" or results[i] == "pipeline_broken", results[i])
      end
      local st = pool:stats()
      assert.equal(1, st.closed.discarded)
      assert.equal(0, pool:peer(srv.addr).failures)
    end))

    it("a reply for a released lease does not dirty the conn", test(function(env)
      local pool, srv = env:pool_with("echo", { framing = "line", client_limit = 2 })
      local conn = assert(pool:acquire(srv.addr))
      conn:send("never read\n")
      conn:release()
      assert.equal("again\n", pool:request(srv.addr, "again\n"))
      assert.equal(1, pool:stats().conns)
    end))
  end)

  describe("pool:request()", function()
    it("answers in a coroutine and with a callback", test(function(env)
      local pool, srv = env:pool_with("echo", { framing = "line", client_limit = 4 })
      assert.equal("hi\n", pool:request(srv.addr, "hi\n"))
      local got
      assert.is_true(pool:request(srv.addr, "cb\n", function(err, reply) got = { err, reply } end))
      wait_until(function() return got end, 2000, "the callback")
      assert.same({ nil, "cb\n" }, got)
    end))

    it("anchors a waiting caller until its answer, and not after", test(function(env)
      local pool, srv = env:pool_with("echo", { framing = "line", client_limit = 4 })
      local weak = setmetatable({}, { __mode = "v" })
      local got
      weak[1] = peerpool._spawn(function() got = pool:request(srv.addr, "hi\n") end)
      collectgarbage("collect")
      assert.is_not_nil(weak[1], "the waiting caller was collected")
      wait_until(function() return got end, 2000, "the reply")
      assert.equal("hi\n", got)
      collectgarbage("collect")
      assert.is_nil(weak[1], "the answered caller is still anchored")
    end))

    it("times out (io_timeout), breaking the shared conn for the requests behind",
      test(function(env)
        local srv, pool = shared_line(env, 4, { io_timeout = 100 }, env:slow(400))
        local codes = {}
        in_parallel(6, function(i) -- 4 get a conn at once, 2 wait for one
          local r, code = pool:request(srv.addr, "PING\n")
          codes[i] = r or code
        end)
        local timeouts = 0
        for i = 1, 6 do
          assert.is_true(codes[i] == "timeout" or codes[i] == "pipeline_broken" or
            codes[i] == "+SLOW\r\n", codes[i])
          if codes[i] == "timeout" then timeouts = timeouts + 1 end
        end
        assert.is_true(timeouts >= 1)
        assert.equal(0, pool:peer(srv.addr).failures)
      end))

    it("waits for a conn at client_limit and answers each caller its own reply",
      test(function(env)
        local srv, pool = shared_line(env, 2)
        local got = {}
        in_parallel(10, function(i) got[i] = pool:request(srv.addr, ("ECHO r%d\n"):format(i)) end)
        for i = 1, 10 do assert.equal(("r%d\r\n"):format(i), got[i]) end
        local st = pool:stats()
        assert.equal(1, st.conns)
        assert.is_true(st.acquired_waited >= 1, "no request waited for a conn")
        assert.equal(st.acquires, st.releases)
      end))

    it("a hand-resumed caller is owed nothing; the conn serves on", test(function(env)
      local srv, pool = shared_line(env, 4)
      local first, second
      local co = coroutine.create(function()
        first = pool:request(srv.addr, "SLEEP 30\n") -- resumed by hand with "fake"
        second = pool:request(srv.addr, "ECHO mine\n")
      end)
      assert(coroutine.resume(co))
      assert(coroutine.resume(co, "fake"))
      wait_until(function() return second end, 2000, "the second request")
      assert.same({ "fake", "mine\r\n" }, { first, second })
      wait_until(function() return pool:stats().active == 0 end, 2000, "the first lease to end")
      assert.equal(1, pool:stats().conns)
    end))

    it("a hand-resumed caller's pool collected meanwhile: the late answers touch nothing freed",
      test(function(env)
        -- (the answers came back through the freed pool userdata: a use after free that the
        -- sanitizer build reports; the release build may read stale memory unnoticed)
        local srv = env:ordered()
        local co = {}
        local function start(pool, i, data) -- one waits on the conn, one for a conn
          co[i] = coroutine.create(function() return pool:request(srv.addr, data) end)
          assert(coroutine.resume(co[i]))
        end
        local function pool_of_two_callers() -- (no reference to the pool is left)
          local pool = peerpool.new { peers = { srv.addr }, framing = "line", client_limit = 1,
            max_per_peer = 1 }
          assert.equal("+PONG\r\n", pool:request(srv.addr, "PING\n")) -- a conn, lent at once
          start(pool, 1, "SLEEP 50\n")
          start(pool, 2, "ECHO two\n")
        end
        pool_of_two_callers()
        for i = 1, 2 do
          assert.equal("suspended", coroutine.status(co[i]))
          assert.same({ true, "by hand" }, { coroutine.resume(co[i], "by hand") })
        end
        collectgarbage()
        collectgarbage() -- the pool closes: the call waiting for a conn hears closed, later
        H.sleep(100) -- the sleeping request's answer (or failure) comes in meanwhile
        wait_until(function() return srv.open == 0 end, 2000, "the conn to close")
      end))

    it("a caller with opts, resumed by hand while it waits for a conn, gets what was passed",
      test(function(env)
        -- (the general path took the resumer's values for a conn: 'attempt to call a nil
        -- value (method 'send')' in peerpool.lua)
        local srv, pool = shared_line(env, 1)
        local held = assert(pool:acquire(srv.addr))
        local got, second
        local co = coroutine.create(function()
          got = pack(pool:request(srv.addr, "ECHO lost\n", { timeout = 2000 }))
          second = pack(pool:request(srv.addr, "ECHO mine\n", { timeout = 2000 }))
        end)
        assert(coroutine.resume(co))
        assert(coroutine.resume(co, "by", "hand"))
        assert.same(pack("by", "hand"), got)
        held:release()
        wait_until(function() return second end, 2000, "the second request")
        assert.same(pack("mine\r\n"), second)
      end))

    it("answers closed to the callers waiting when the pool closes", test(function(env)
      local srv, pool = shared_line(env, 1)
      local codes = {}
      for i = 1, 3 do -- one holds the conn, two wait for it
        peerpool._spawn(function() codes[i] = select(2, pool:request(srv.addr, "SLEEP 200\n")) end)
      end
      H.ticks(3)
      pool:close()
      wait_until(function() return codes[1] and codes[2] and codes[3] end, 2000, "the answers")
      assert.same({ "closed", "closed", "closed" }, codes)
    end))

    it("raises on a pool without framing and names bad arguments", test(function(env)
      local pool = env:pool()
      assert.has_error(function() pool:request(nil, "x") end,
        "pool:request() needs a pool with framing (peerpool.new{ framing = \"resp\" })")
      local framed = env:pool { framing = "resp" }
      assert.has_error(function() framed:request(nil, 42) end,
        "bad argument #2 to 'request' (string expected, got number)")
      -- a bad peer: blamed on this line, as request's argument #1 (not on peerpool.lua's call
      -- of acquire, as acquire's)
      for _, bad in ipairs { 42, true, {} } do
        local ok, err = pcall(function() return framed:request(bad, "x") end)
        assert.is_false(ok)
        assert.matches("pipeline_spec%.lua:%d+: bad argument #1 to 'request' %(peer " ..
          "address %(string%), peer view or nil expected, got " .. type(bad) .. "%)$", err)
      end
    end))
  end)

  describe("framing = function(buf)", function()
    it("frames replies split and coalesced", test(function(env)
      local pool, srv = env:pool_with("echo", { client_limit = 4, framing = function(buf)
        local i = buf:find(";", 1, true)
        return i
      end })
      local got = {}
      in_parallel(4, function(i)
        got[i] = pool:request(srv.addr, ("one-%d;"):format(i))
      end)
      for i = 1, 4 do assert.equal(("one-%d;"):format(i), got[i]) end
      assert.is_true(pool:stats().hooks.framing.calls >= 4)
    end))

    for what, fn in pairs {
      raises = function() error("framer bug") end,
      ["answers a string"] = function() return "3" end,
      ["answers past the buffer"] = function(buf) return #buf + 1 end,
      ["answers 0"] = function() return 0 end,
      ["runs forever"] = function() while true do end end,
    } do
      it("is contained when it " .. what, test(function(env)
        local pool, srv = env:pool_with("echo", { framing = fn, hook_budget = 10000 })
        local r = pack(pool:request(srv.addr, "x;"))
        assert.same({ n = 3, nil, "bad_reply" }, { n = 3, r[1], r[2] })
        assert.equal(1, pool:stats().hooks.framing.errors)
        -- the pool goes on serving (a new conn)
        assert.equal(1, pool:stats().closed.broken + pool:stats().closed.remote)
      end))
    end
  end)
end)

-- ---- adversarial: replies never reach the wrong lease ---------------------------------------

describe("pipelining, adversarial", function()
  it("a reply nobody asked for closes the conn (no stall behind kept bytes)", test(function(env)
    local pool, srv = env:pool_with("ordered",
      { framing = "line", client_limit = 4, io_timeout = 2000 })
    local conn = assert(pool:acquire(srv.addr))
    -- one request, two replies: "a" now, "+WOKE" 30 ms later with no request waiting
    assert(conn:send("ECHO a\nSLEEP 30\n"))
    assert.equal("a\r\n", conn:receive())
    wait_until(function() return pool:stats().closed.remote == 1 end, 2000,
      "the conn to close on the reply nobody asked for")
    local r = pack(conn:send("ECHO b\n"))
    assert.same({ nil, "bad_reply" }, { r[1], r[2] })
    conn:release()
    assert.equal("c\r\n", pool:request(srv.addr, "ECHO c\n"))
  end))

  it("a lease released while its receive waits elsewhere leaves the shared conn to the others",
    test(function(env)
      local srv, pool, a = shared_lease(env)
      local b = assert(pool:acquire(srv.addr))
      assert(a:send("SLEEP 100\n"))
      assert(b:send("SLEEP 50\n"))
      local b_got
      peerpool._spawn(function() b_got = pack(b:receive()) end)
      H.ticks(2)
      b:release() -- from another coroutine, while b's receive waits
      assert.equal("+WOKE\r\n", a:receive()) -- a's reply, on the conn b's release left alone
      assert.equal("closed", b_got[2])
      a:release()
      assert.equal(1, pool:stats().conns)
      assert.equal(0, H.troubled(pool))
    end))

  it("a lease collected with requests in flight leaves the shared conn to the others",
    test(function(env)
      local srv, pool, a = shared_lease(env)
      do
        local b = assert(pool:acquire(srv.addr))
        assert(b:send("SLEEP 20\n"))
      end
      assert(a:send("SLEEP 60\n"))
      collectgarbage()
      collectgarbage()
      assert.equal("+WOKE\r\n", a:receive())
      a:release()
      assert.equal(1, pool:stats().leaked_leases)
      assert.equal(0, pool:stats().closed.discarded)
    end))

  it("an error inside pool:with leaves the shared conn to the others", test(function(env)
    local srv, pool, a = shared_lease(env)
    assert(a:send("SLEEP 50\n"))
    local ok, err = pcall(pool.with, pool, srv.addr, function(conn)
      assert(conn:send("ECHO x\n"))
      error("the program's bug")
    end)
    assert.is_false(ok)
    assert.matches("the program's bug", err)
    assert.equal("+WOKE\r\n", a:receive())
    a:release()
    assert.equal(0, pool:stats().closed.discarded)
  end))

  it("a hand-resumed receive gets its own reply on its next receive", test(function(env)
    local srv, pool, a = shared_lease(env)
    local b = assert(pool:acquire(srv.addr))
    local got = {}
    local co = coroutine.create(function()
      assert(a:send("SLEEP 30\n"))
      got[1] = a:receive() -- resumed by hand below with "fake"
      got[2] = a:receive() -- its own reply
    end)
    assert(coroutine.resume(co))
    assert(coroutine.resume(co, "fake"))
    assert.equal("b\r\n", pool:request(srv.addr, "ECHO b\n"))
    assert(b:send("ECHO bb\n"))
    assert.equal("bb\r\n", b:receive())
    wait_until(function() return got[2] end, 2000, "the second receive")
    assert.same({ "fake", "+WOKE\r\n" }, got)
    a:release()
    b:release()
  end))

  for what, fn in pairs {
    yields = function() coroutine.yield() end,
    ["runs the collector"] = function(buf)
      collectgarbage()
      return buf:find("\n", 1, true)
    end,
  } do
    it("a framer that " .. what .. " is contained", test(function(env)
      local pool, srv = env:pool_with("echo", { framing = fn, hook_budget = 10000 })
      local r = pack(pool:request(srv.addr, "x\n"))
      if what == "yields" then
        assert.equal("bad_reply", r[2])
        assert.equal(1, pool:stats().hooks.framing.errors)
      else
        assert.equal("x\n", r[1])
      end
    end))
  end

  it("a reply over max_reply closes the conn; the pool carries on", test(function(env)
    local pool, srv = env:pool_with("ordered", { framing = { kind = "line", max_reply = 100 } })
    local r = pack(pool:request(srv.addr, "ECHO " .. ("y"):rep(200) .. "\n"))
    assert.same({ nil, "too_long" }, { r[1], r[2] })
    assert.equal("ok\r\n", pool:request(srv.addr, "ECHO ok\n"))
    assert.equal(0, pool:peer(srv.addr).failures)
  end))

  describe("hooks on framed shared conns", function()
    it("a handshake hook's request and reply go through the queue", test(function(env)
      local srv, pool = shared_line(env, 8)
      local said
      assert(pool:load_policy { handshake = function(conn)
        assert(conn:send("ECHO hello\n"))
        said = conn:receive()
        return said == "hello\r\n"
      end })
      local got = {}
      in_parallel(8, function(i) got[i] = pool:request(srv.addr, "ECHO " .. i .. "\n") end)
      for i = 1, 8 do assert.equal(i .. "\r\n", got[i]) end
      assert.equal("hello\r\n", said)
      assert.equal(1, pool:stats().connects_ok)
    end))

    it("a handshake hook that sends and returns leaves its reply to nobody", test(function(env)
      local srv, pool = shared_line(env, 8)
      assert(pool:load_policy { handshake = function(conn)
        assert(conn:send("SLEEP 30\n"))
        return true
      end })
      assert.equal("mine\r\n", pool:request(srv.addr, "ECHO mine\n"))
      assert.equal("again\r\n", pool:request(srv.addr, "ECHO again\n"))
      assert.equal(1, pool:stats().connects_ok)
    end))

    it("a ping hook checks an idle framed conn through the queue", test(function(env)
      local srv, pool = shared_line(env, 8, { ping_after = 20 })
      local pongs = 0
      assert(pool:load_policy { ping = function(conn)
        assert(conn:send("PING\n"))
        local ok = conn:receive() == "+PONG\r\n"
        if ok then pongs = pongs + 1 end
        return ok
      end })
      assert.equal("1\r\n", pool:request(srv.addr, "ECHO 1\n"))
      H.sleep(40)
      local got = {}
      in_parallel(4, function(i) got[i] = pool:request(srv.addr, "ECHO " .. i .. "\n") end)
      for i = 1, 4 do assert.equal(i .. "\r\n", got[i]) end
      assert.equal(1, pool:stats().pings)
      assert.equal(1, pongs)
      assert.equal(1, pool:stats().connects_ok)
    end))

    it("a failed ping closes the framed conn; requests go to a new one", test(function(env)
      local pool, srv = env:pool_with("ordered",
        { framing = "line", max_per_peer = 1, ping_after = 20 })
      assert(pool:load_policy { ping = function(conn)
        assert(conn:send("PING\n"))
        conn:receive()
        return false
      end })
      assert.equal("1\r\n", pool:request(srv.addr, "ECHO 1\n"))
      H.sleep(40)
      assert.equal("2\r\n", pool:request(srv.addr, "ECHO 2\n"))
      assert.equal(1, pool:stats().pings_failed)
      assert.equal(2, pool:stats().connects_ok)
    end))
  end)
end)

-- ---- against real redis-servers ------------------------------------------------------------

local echo_cmd, bulk = redis.echo_cmd, redis.bulk

describe("pipelining against redis-server", function()
  after_each(redis.kill_started)

  it("matches every reply to its own request (32 coroutines, 2 shared conns)", test(function(env)
    local addr = redis.start()
    if not addr then return pending(redis.MISSING) end
    -- (under GC stress every entry into Lua runs a full collection: fewer requests there)
    local per = tonumber(os.getenv("PIPE_REQUESTS"))
      or (os.getenv("PEERPOOL_GC_STRESS") == "1" and 50 or 2000)
    local pool = env:pool { framing = "resp", client_limit = 16, max_per_peer = 2 }
    pool:add_peer(addr)
    local mismatched, failed, done = 0, 0, 0
    local big = string.rep("0123456789abcdef", 4096) -- 64 KiB
    in_parallel(32, function(i)
      for k = 1, per do
        local id = ("%d:%d:"):format(i, k)
        -- mostly small, one in 50 up to 64 KiB
        if k % 50 == 0 then id = id .. big:sub(1, math.random(1, #big - #id)) end
        local reply = pool:request(addr, echo_cmd(id))
        if reply == nil then
          failed = failed + 1
        elseif reply ~= bulk(id) then
          mismatched = mismatched + 1
        end
        done = done + 1
      end
    end, 120000)
    assert.equal(32 * per, done)
    assert.equal(0, failed)
    assert.equal(0, mismatched)
    assert.equal(2, pool:stats().conns)
    assert.equal(0, H.troubled(pool))
  end))

  it("a conn killed mid-pipeline fails exactly its requests in flight, once each",
    test(function(env)
      local addr, _, port = redis.start()
      if not addr then return pending(redis.MISSING) end
      local pool = env:pool { framing = "resp", client_limit = 16, max_per_peer = 1 }
      pool:add_peer(addr)
      -- the conn's id, asked on the conn itself
      local conn = assert(pool:acquire(addr))
      conn:send("*2\r\n$6\r\nCLIENT\r\n$2\r\nID\r\n")
      local id = assert(conn:receive()):match("^:(%d+)")
      conn:release()
      local answers, ok, failed, codes = 0, 0, 0, {}
      local killed = false
      in_parallel(16, function()
        for _ = 1, os.getenv("PEERPOOL_GC_STRESS") == "1" and 60 or 200 do
          -- requests that take a while, so that some are in flight when the kill lands
          local reply, err = pool:request(addr, echo_cmd("in flight"))
          answers = answers + 1
          if reply then ok = ok + 1 else failed = failed + 1; codes[err] = true end
          if answers == 400 and not killed then
            killed = true
            os.execute(("redis-cli -p %d CLIENT KILL ID %s >/dev/null"):format(port, id))
          end
        end
      end, 60000)
      local per = os.getenv("PEERPOOL_GC_STRESS") == "1" and 60 or 200
      assert.equal(16 * per, answers) -- every request answered exactly once
      assert.is_true(failed >= 1, "no request was in flight when the conn died")
      assert.is_true(failed <= 16, "more failures than requests in flight: " .. failed)
      for code in pairs(codes) do
        assert.is_true(code == "closed" or code == "ECONNRESET", code)
      end
      assert.equal(1, pool:stats().closed.remote + pool:stats().closed.broken)
    end))
end)
