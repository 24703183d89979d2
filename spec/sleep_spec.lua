-- peerpool.sleep(ms): the running coroutine waits at least ms, then the loop resumes it. A
-- program that resumes it by hand meanwhile is not woken again later, inside its next wait;
-- the sleep's timer goes when the sleep ends, however it ends (nothing keeps the loop alive).
local uv = require "luv"
local H = require "spec.support.helpers"
local P = require "spec.support.policy_helpers"
local peerpool = require "peerpool"

local function ms_since(t0) return (uv.hrtime() - t0) / 1e6 end

-- Run the loop until nothing is left on it (the test's own sleeps included), at most `turns`
-- turns: whether the loop is still alive then.
local function loop_alive_after(turns)
  for _ = 1, turns do
    if not uv.run("nowait") and not uv.loop_alive() then return false end
  end
  return uv.loop_alive()
end

describe("peerpool.sleep", function()
  it("waits at least ms, counted from now, and returns nothing", H.test(function()
    for _, ms in ipairs { 30, 0.5, 1 } do
      local t0 = uv.hrtime()
      local got = H.pack(peerpool.sleep(ms))
      local took = ms_since(t0)
      assert.equal(0, got.n)
      assert.is_true(took >= ms, ("sleep(%s) took %.2f ms"):format(ms, took))
      assert.is_true(took < ms + 5000, "sane upper bound")
    end
  end))

  it("counts from now, not from the loop's cached time, after slow work", H.test(function()
    local busy = uv.hrtime()
    while ms_since(busy) < 50 do end -- the loop's clock lags 50 ms behind now
    local t0 = uv.hrtime()
    peerpool.sleep(40)
    assert.is_true(ms_since(t0) >= 40)
  end))

  it("sleep(0) yields: the coroutine goes on at a later turn of the loop", H.test(function()
    local done = false
    local co = peerpool.spawn(function()
      peerpool.sleep(0)
      done = true
    end)
    assert.is_false(done)
    assert.equal("suspended", coroutine.status(co))
    H.wait_until(function() return done end, 5000)
  end))

  it("names argument #1 for a bad ms", H.test(function()
    for _, bad in ipairs { -1, 0 / 0, 1e300, math.huge, -math.huge, "10", true, {} } do
      local ok, err = pcall(peerpool.sleep, bad)
      assert.is_false(ok, tostring(bad))
      assert.matches("bad argument #1 to 'peerpool.sleep'", err, 1, true)
    end
    local ok, err = pcall(peerpool.sleep)
    assert.is_false(ok)
    assert.matches("bad argument #1 to 'peerpool.sleep' (number (ms) expected, got no value)",
      err, 1, true)
  end))

  it("outside a coroutine: says to use peerpool.run", function()
    local ok, err = pcall(peerpool.sleep, 1)
    assert.is_false(ok)
    assert.matches("must run inside a coroutine", err, 1, true)
    assert.matches("peerpool.run", err, 1, true)
    -- nothing was left on the loop
    assert.is_false(loop_alive_after(10))
  end)

  it("resumed by hand: returns what the program passed, and its timer never wakes the " ..
    "coroutine's next wait", H.test(function()
      local got, first, second
      local co = peerpool.spawn(function()
        got = H.pack(peerpool.sleep(30))
        local t0 = uv.hrtime()
        peerpool.sleep(300) -- the first sleep's 30 ms must not end this one
        first = ms_since(t0)
        second = H.pack(coroutine.yield()) -- nor a wait of the program's own
      end)
      assert(coroutine.resume(co, "by", "hand"))
      assert.same({ "by", "hand", n = 2 }, got)
      H.wait_until(function() return first ~= nil end, 5000)
      assert.is_true(first >= 300, ("the second sleep lasted %.1f ms"):format(first))
      H.sleep(100) -- long past both timers
      assert.is_nil(second)
      assert.equal("suspended", coroutine.status(co))
      assert(coroutine.resume(co, "woken"))
      assert.same({ "woken", n = 1 }, second)
    end))

  it("a hand resume frees the sleep's timer at once (it keeps the loop alive no longer)",
    function()
      local co = coroutine.create(function() peerpool.sleep(3600 * 1000) end)
      assert(coroutine.resume(co))
      assert.is_true(uv.loop_alive())
      assert(coroutine.resume(co))
      assert.equal("dead", coroutine.status(co))
      assert.is_false(loop_alive_after(10))
    end)

  it("a sleeping coroutine nothing references still wakes; once closed, its timer goes",
    function()
      local woke = false
      peerpool.spawn(function()
        peerpool.sleep(20)
        woke = true
      end)
      collectgarbage()
      collectgarbage()
      peerpool.run(function() H.wait_until(function() return woke end, 5000) end)
      assert.is_true(woke)
      -- closed while it sleeps (nothing resumes it): collected, its timer freed
      local co = coroutine.create(function() peerpool.sleep(3600 * 1000) end)
      assert(coroutine.resume(co))
      assert(coroutine.close(co))
      co = nil -- luacheck: ignore 311
      collectgarbage()
      collectgarbage()
      assert.is_false(loop_alive_after(10))
    end)

  it("many concurrent sleepers each wait at least their ms", H.test(function()
    local n, late = 2000, {}
    H.in_parallel(n, function(i)
      local ms = i % 50
      local t0 = uv.hrtime()
      peerpool.sleep(ms)
      if ms_since(t0) < ms then late[#late + 1] = i end
    end, 20000)
    assert.same({}, late)
  end))

  it("an async hook (handshake) may sleep; a sync hook (select_peer) may not",
    P.test(function(env)
      local a, b = env:node(), env:node()
      local pool = env:pool { peers = { a.addr, b.addr } } -- two: select_peer has a choice
      local slept, refused
      assert.is_true(pool:load_policy {
        handshake = function(conn)
          local t0 = uv.hrtime()
          peerpool.sleep(20)
          slept = ms_since(t0)
          conn:send("VERSION spec\r\n")
          return conn:receive("*l") == "VERACK"
        end,
        select_peer = function()
          local ok, err = pcall(peerpool.sleep, 1)
          refused = not ok and err
          return 1
        end,
      })
      local c = assert(pool:acquire(nil, { timeout = 5000 }))
      c:release()
      assert.is_true(slept >= 20)
      assert.matches("must run inside a coroutine", refused, 1, true)
    end))

  it("a seed hook that sleeps past the pool's close: ctx:add answers closed, nothing reported",
    P.test(function(env)
      local srv = env:node()
      local pool = env:pool { target_peers = 1 }
      local added, errs = nil, {}
      peerpool.on_error(function(text) errs[#errs + 1] = text end)
      assert(pool:load_policy { seed = function(ctx)
        peerpool.sleep(50)
        added = H.pack(pcall(ctx.add, ctx, srv.addr))
      end })
      H.wait_until(function() return pool:stats().hooks.seed.calls == 1 end, 5000, "the seed")
      pool:close()
      H.wait_until(function() return added end, 5000, "the seed hook's wake")
      H.sleep(20)
      peerpool.on_error(nil)
      assert.is_true(added[1], tostring(added[2])) -- (raised 'attempt to use a closed pool')
      assert.equal("closed", added[3])
      assert.same({}, errs)
    end))

  it("a handshake that sleeps past handshake_timeout: the dial fails, the late wake harms " ..
    "nothing", P.test(function(env)
      local srv = env:node()
      local pool = env:pool { peers = { srv.addr }, retries = 0, handshake_timeout = 50 }
      local woke, errs = false, {}
      peerpool.on_error(function(text) errs[#errs + 1] = text end)
      assert(pool:load_policy {
        handshake = function()
          peerpool.sleep(200)
          woke = true
          return true
        end,
        backoff = function() return 1 end,
      })
      assert.equal("cannot_connect", select(2, pool:acquire(srv.addr)))
      H.wait_until(function() return woke end, 5000)
      H.sleep(20)
      peerpool.on_error(nil)
      assert.same({}, errs)
      assert.equal(1, pool:stats().hooks.handshake.calls)
    end))
end)

describe("the example programs", function()
  it("need no file beside them (peerpool.sleep): one runs from a string, as if copied", function()
    local f = assert(io.open("scripts/examples/metrics_server.lua"))
    local code = f:read("a")
    f:close()
    local ok, status, out, err = H.child(code, "SECONDS=1 PORT=0")
    assert.is_true(ok, ("exit %s: %s"):format(status, err))
    assert.matches("peerpool_acquires_total", out, 1, true)
  end)
end)
