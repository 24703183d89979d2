-- A coroutine waiting inside the API that the program resumes itself (its own scheduler, a
-- luv callback, a stray coroutine.resume): the call returns what the program passed, and the
-- answer that arrives later must go to nobody — never into whatever the coroutine waits for
-- next. (The fuzzer's "meddle" op; before the per-wait ids, the late answer resumed the
-- coroutine inside its next wait: one call's reply handed to another.)
local H = require "spec.support.helpers"

-- Start fn in a coroutine of its own; returns the coroutine (suspended once fn waits).
local function start(fn)
  local co = coroutine.create(fn)
  assert(coroutine.resume(co))
  return co
end

-- A line server and a pool lending one conn to it, that conn held: the next acquire waits.
local function one_held(env)
  local pool, srv = env:static_pool("line", { max_per_peer = 1 })
  return srv, pool, assert(pool:acquire(srv.addr))
end

-- one_held(), and the notice of a busy = "fail" acquire behind the held conn.
local function busy_notice(env)
  local srv, pool, held = one_held(env)
  local busy = H.pack(pool:acquire(srv.addr, { busy = "fail" }))
  assert.equal("busy", busy[2])
  return pool, held, busy[3]
end

describe("a coroutine the program resumes while it waits in the API", function()
  it("acquire: returns what the program passed; the late grant goes back to the pool",
    H.test(function(env)
      local srv, pool, held = one_held(env)
      local got, next_wait
      local co = start(function()
        got = H.pack(pool:acquire(srv.addr, { timeout = 5000 }))
        -- it waits again, elsewhere: a sleep of the program's own
        next_wait = H.pack(coroutine.yield("sleeping"))
      end)
      assert.equal("suspended", coroutine.status(co))
      assert(coroutine.resume(co, "by", "hand"))
      assert.same({ "by", "hand", n = 2 }, got)
      held:release() -- the waiting acquire is granted now: nobody may take it
      H.ticks(5)
      assert.is_nil(next_wait) -- the grant did not resume it in its sleep
      local st = pool:stats()
      assert.equal(0, st.active)
      assert.equal(1, st.idle)
      assert(coroutine.resume(co, "woken"))
      assert.same({ "woken", n = 1 }, next_wait)
      local again = assert(pool:acquire(srv.addr, { timeout = 1000 })) -- the conn is lendable
      again:release()
    end))

  it("acquire: a late answer never lands in the coroutine's next acquire", H.test(function(env)
    local srv, hole = env:line(), env:blackhole()
    local pool = env:pool { peers = { srv.addr, hole.addr }, max_per_peer = 1 }
    local held = assert(pool:acquire(srv.addr))
    local second
    local co = start(function()
      pool:acquire(srv.addr, { timeout = 5000 }) -- resumed by hand below
      second = H.pack(pool:acquire(hole.addr, { timeout = 200 })) -- connects hang: times out
    end)
    assert(coroutine.resume(co, "meddled")) -- now in its second acquire
    held:release()                          -- the first acquire's grant: nobody takes it
    H.wait_until(function() return second ~= nil end, 3000, "the second acquire")
    assert.is_nil(second[1]) -- not the first acquire's conn, delivered to the wrong call
    assert.equal("timeout", second[2])
    H.ticks(5)
    assert.equal(0, pool:stats().active)
  end))

  it("receive: the reply stays buffered for the next receive, not the coroutine's next wait",
    H.test(function(env)
      local srv = env:slow(50) -- answers each line with +SLOW after 50 ms
      local pool = env:pool { peers = { srv.addr } }
      local conn = assert(pool:acquire(srv.addr))
      local first, slept
      local co = start(function()
        conn:send("A\r\n")
        first = H.pack(conn:receive("*l"))
        slept = H.pack(coroutine.yield())
      end)
      assert(coroutine.resume(co, "junk"))
      assert.same({ "junk", n = 1 }, first)
      H.sleep(150) -- the reply arrives while the coroutine sleeps
      assert.is_nil(slept)
      assert.equal("+SLOW", conn:receive("*l")) -- the reply waited for the next receive
      conn:release()
      assert(coroutine.resume(co))
    end))

  it("receive: a hand-resumed receive ending leaves the other receives' deadlines in place",
    H.test(function(env)
      local slow, line = env:slow(50), env:line()
      local pool = env:pool { peers = { slow.addr, line.addr }, io_timeout = 300 }
      local a, b = assert(pool:acquire(slow.addr)), assert(pool:acquire(line.addr))
      local co = start(function()
        a:send("A\r\n")
        a:receive("*l") -- listed for its io_timeout; resumed by hand below
        coroutine.yield()
      end)
      assert(coroutine.resume(co, "meddled"))
      local got
      start(function() got = H.pack(b:receive("*l")) end) -- nothing comes: times out
      -- A's reply arrives for nobody: its receive leaves the timed list (once, however many
      -- paths end it), and B's deadline must still fire.
      H.wait_until(function() return got ~= nil end, 3000, "b's receive to time out")
      assert.same({ nil, "timeout", "", n = 3 }, got)
      a:release()
      b:release()
      assert(coroutine.resume(co))
    end))

  it("receive: a new receive on the conn is allowed once the old waiter left", H.test(function(env)
    local pool, srv = env:static_pool("line")
    local conn = assert(pool:acquire(srv.addr))
    local co = start(function() conn:receive("*l") end)
    assert(coroutine.resume(co, "gone")) -- the coroutine ends; its receive owes nothing
    conn:send("ECHO hi\r\n")
    assert.equal("hi", conn:receive("*l"))
    conn:release()
  end))

  it("notice:wait: the late firing does not resume the coroutine elsewhere", H.test(function(env)
    local _, held, notice = busy_notice(env)
    local waited, slept
    local co = start(function()
      waited = H.pack(notice:wait(5000))
      slept = H.pack(coroutine.yield())
    end)
    assert(coroutine.resume(co, "early"))
    assert.same({ "early", n = 1 }, waited)
    held:release() -- capacity frees: the notice fires with nobody waiting in it
    H.ticks(5)
    assert.is_nil(slept)
    assert(coroutine.resume(co))
    assert.same({ n = 0 }, slept)
  end))

  it("send: a wait for the send queue to drain, resumed by hand, owes nothing", H.test(function(env)
    local srv = env:deaf() -- accepts, never reads: the send queue fills
    local pool = env:pool { peers = { srv.addr }, max_send_queue = 1024, io_timeout = 300 }
    local conn = assert(pool:acquire(srv.addr))
    local sent, slept
    local big = string.rep("x", 1 << 22)
    local co = start(function()
      sent = H.pack(conn:send(big))
      slept = H.pack(coroutine.yield())
    end)
    if coroutine.status(co) ~= "suspended" then return end -- the kernel took it all
    assert(coroutine.resume(co, "hand"))
    assert.same({ "hand", n = 1 }, sent)
    H.sleep(500) -- the io_timeout passes: its answer goes to nobody
    assert.is_nil(slept)
    conn:close()
    assert(coroutine.resume(co))
    assert.same({ n = 0 }, slept)
    assert.equal(0, pool:stats().active)
  end))
  it("receive: the same coroutine's next receive on the conn gets the reply", H.test(function(env)
    local srv = env:slow(50)
    local pool = env:pool { peers = { srv.addr } }
    local conn = assert(pool:acquire(srv.addr))
    local got
    local co = start(function()
      conn:send("A\r\n")
      local first = conn:receive("*l") -- resumed by hand
      got = { first, conn:receive("*l") } -- waits again in the same API on the same conn
    end)
    assert(coroutine.resume(co, "hand"))
    H.wait_until(function() return got ~= nil end, 3000, "the second receive")
    assert.same({ "hand", "+SLOW" }, got)
    conn:release()
  end))

  it("notice:wait: a second wait on the same notice gets the firing", H.test(function(env)
    local _, held, notice = busy_notice(env)
    local got
    local w = coroutine.wrap(function()
      local first = notice:wait(5000) -- resumed by hand (through coroutine.wrap)
      got = { first, notice:wait(5000) }
    end)
    w()
    w("hand")
    assert.is_nil(got)
    held:release()
    H.wait_until(function() return got ~= nil end, 3000, "the second wait")
    assert.same({ "hand", true }, got)
  end))

  it("a hook resumed by the program inside conn:receive: its next receive gets the reply",
    H.test(function(env)
      local srv = env:slow(50)
      local hook_co
      local pool = env:pool { peers = { srv.addr }, handshake_timeout = 3000, policy = {
        handshake = function(conn)
          hook_co = coroutine.running()
          conn:send("HELLO\r\n")
          local first = conn:receive("*l") -- the program resumes it by hand
          return first == "meddled" and conn:receive("*l") == "+SLOW"
        end,
      } }
      -- on the first turn of the loop after the hook waits in its receive (not after a fixed
      -- 10 ms: the connect may take longer on a loaded machine, and then there is no hook yet)
      local idle = require("luv").new_idle()
      idle:start(function()
        if not hook_co then return end
        idle:close()
        assert(coroutine.resume(hook_co, "meddled"))
      end)
      local conn, code, detail = pool:acquire(srv.addr, { timeout = 3000 })
      assert(conn, tostring(code) .. " " .. tostring(detail))
      conn:release()
    end))

  it("close{drain_ms}: the end of the drain does not resume it elsewhere", H.test(function(env)
    local pool, srv = env:static_pool("line")
    local held = assert(pool:acquire(srv.addr))
    local closed, slept
    local co = start(function()
      closed = H.pack(pool:close { drain_ms = 2000 })
      slept = H.pack(coroutine.yield())
    end)
    assert(coroutine.resume(co, "early"))
    assert.same({ "early", n = 1 }, closed)
    held:release() -- the drain ends: nobody waits for its answer any more
    H.wait_until(function() return pool:_closed() end, 3000, "the close")
    collectgarbage()
    H.ticks(5)
    assert.is_nil(slept)
    assert(coroutine.resume(co))
    assert.same({ n = 0 }, slept)
  end))
end)
