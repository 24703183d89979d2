-- peerpool.notice: the detail of a "busy" answer. wait([ms]), on_free(fn), cancel(),
-- __tostring.
local uv = require "luv"
local H = require "spec.support.helpers"
local peerpool = require "peerpool"

local test, pack, wait_until = H.test, H.pack, H.wait_until
local CLOSED = "pool or connection is closed"

-- A pool at capacity for one peer: the conn that holds it, and the notice of a busy answer.
local function busy(env)
  local pool, srv, held = env:full_pool()
  local res = pack(pool:acquire(srv.addr, { busy = "fail" }))
  assert.equal("busy", res[2])
  return res[3], held, pool, srv
end

-- A notice that has fired: the capacity it waited for freed, and a wait saw it.
local function fired(env)
  local notice, held = busy(env)
  held:release()
  assert.is_true(notice:wait())
  return notice
end

-- Run fn in a coroutine of its own after `ms`.
local function later(ms, fn)
  peerpool.run(function()
    H.sleep(ms)
    fn()
  end)
end

-- Give notice an on_free fn (on_free returns the notice), then end_it(): fn must be called on
-- a later tick, never inside end_it, with the arguments `want` (packed).
local function on_free_gets(notice, end_it, want)
  local got
  assert.equal(notice, notice:on_free(function(...) got = pack(...) end))
  end_it()
  assert.is_nil(got)
  wait_until(function() return got end)
  assert.same(want, got)
end

describe("peerpool.notice", function()
  describe(":wait()", function()
    it("waits again once the coroutine that was waiting has been closed", test(function(env)
      local notice, held = busy(env)
      local waiter = peerpool.spawn(function() return notice:wait() end)
      assert(coroutine.close(waiter))
      assert.same({ n = 3, nil, "timeout", "capacity did not free in time" }, pack(notice:wait(10)))
      held:release()
    end))

    it("returns true once capacity frees", test(function(env)
      local notice, held, pool, srv = busy(env)
      later(20, function() held:release() end)
      assert.same({ n = 1, true }, pack(notice:wait()))
      local conn = pool:acquire(srv.addr, { busy = "fail" })
      assert.is_truthy(conn)
      conn:release()
    end))

    it("returns true once a conn closing opens a slot", test(function(env)
      local notice, held = busy(env)
      later(20, function() held:close() end)
      assert.same({ n = 1, true }, pack(notice:wait(2000)))
    end))

    it("returns at once, even outside a coroutine, once it has fired", test(function(env)
      local notice = fired(env)
      local res
      local t = uv.new_timer()
      t:start(0, 0, function() -- the main thread: no coroutine
        t:close()
        res = pack(notice:wait(), notice:wait(10))
      end)
      wait_until(function() return res end)
      assert.same({ n = 2, true, true }, res)
    end))

    it("answers nil, 'timeout' after ms", test(function(env)
      local notice, held = busy(env)
      local t0 = uv.now()
      assert.same({ n = 3, nil, "timeout", "capacity did not free in time" }, pack(notice:wait(40)))
      local waited = uv.now() - t0
      assert.is_true(waited >= 35 and waited < 3000, "waited " .. waited .. " ms")
      -- still armed: a later wait sees capacity free
      later(10, function() held:release() end)
      assert.is_true(notice:wait(2000))
    end))

    it("answers nil, 'canceled' when the notice is cancelled", test(function(env)
      local notice, held = busy(env)
      later(10, function() assert.is_true(notice:cancel()) end)
      assert.same({ n = 3, nil, "canceled", "operation canceled" }, pack(notice:wait(2000)))
      assert.same({ n = 3, nil, "canceled", "operation canceled" }, pack(notice:wait()))
      held:release()
    end))

    it("answers nil, 'closed' when the pool closes", test(function(env)
      local notice, held, pool = busy(env)
      later(10, function() pool:close() end)
      assert.same({ n = 3, nil, "closed", CLOSED }, pack(notice:wait(2000)))
      held:release()
    end))

    it("raises outside a coroutine when it would have to wait", test(function(env)
      local notice, held = busy(env)
      local res
      local t = uv.new_timer()
      t:start(0, 0, function()
        t:close()
        res = pack(pcall(function() notice:wait() end))
      end)
      wait_until(function() return res end)
      assert.is_false(res[1])
      assert.matches("notice:wait() must run inside a coroutine (or use notice:on_free(fn))",
        res[2], nil, true)
      held:release()
    end))

    it("raises when a coroutine already waits on it", test(function(env)
      local notice, held = busy(env)
      local first
      peerpool.run(function() first = pack(notice:wait()) end)
      assert.error_matches(function() notice:wait() end,
        "a coroutine is already waiting on this notice", nil, true)
      held:release()
      wait_until(function() return first end)
      assert.same({ n = 1, true }, first)
    end))

    it("raises naming a bad ms", test(function(env)
      local notice, held = busy(env)
      assert.error_matches(function() notice:wait(-1) end,
        "notice:wait(ms): ms must be a number of ms >= 0", nil, true)
      assert.error_matches(function() notice:wait("soon") end,
        "notice:wait(ms): ms must be a number of ms >= 0", nil, true)
      held:release()
    end))
  end)

  describe(":on_free()", function()
    it("calls fn(nil) when capacity frees, on a later tick, and returns the notice",
      test(function(env)
        local notice, held = busy(env)
        on_free_gets(notice, function() held:release() end, pack(nil))
      end))

    it("calls fn('canceled') on cancel", test(function(env)
      local notice, held = busy(env)
      on_free_gets(notice, function() assert.is_true(notice:cancel()) end, pack("canceled"))
      held:release()
    end))

    it("calls fn('closed') when the pool closes", test(function(env)
      local notice, held, pool = busy(env)
      on_free_gets(notice, function() pool:close() end, pack("closed"))
      held:release()
    end))

    it("calls fn later when the notice has already fired", test(function(env)
      local notice = fired(env)
      on_free_gets(notice, function() end, pack(nil))
    end))

    it("tells both a waiting coroutine and fn", test(function(env)
      local notice, held = busy(env)
      local by_fn, by_wait
      notice:on_free(function(err) by_fn = { err } end)
      peerpool.run(function() by_wait = pack(notice:wait()) end)
      held:release()
      wait_until(function() return by_fn and by_wait end)
      assert.same({}, by_fn)
      assert.same({ n = 1, true }, by_wait)
    end))

    it("replaces an earlier fn", test(function(env)
      local notice, held = busy(env)
      local calls = {}
      notice:on_free(function() calls[#calls + 1] = "first" end)
      notice:on_free(function() calls[#calls + 1] = "second" end)
      held:release()
      wait_until(function() return #calls > 0 end)
      H.ticks()
      assert.same({ "second" }, calls)
    end))

    it("counts an error raised by fn", test(function(env)
      local notice, held, pool = busy(env)
      local called = false
      notice:on_free(function()
        called = true
        error("on_free fails")
      end)
      held:release()
      wait_until(function() return called end)
      assert.equal(1, pool:stats().callback_errors)
    end))

    it("raises naming fn when it is not a function", test(function(env)
      local notice, held = busy(env)
      assert.error_matches(function() notice:on_free() end,
        "bad argument #1 to 'on_free' (function expected, got no value)", nil, true)
      assert.error_matches(function() notice:on_free("fn") end,
        "bad argument #1 to 'on_free' (function expected, got string)", nil, true)
      held:release()
    end))
  end)

  describe(":cancel()", function()
    it("returns true for an armed notice and false after", test(function(env)
      local notice, held = busy(env)
      assert.same({ n = 1, true }, pack(notice:cancel()))
      assert.same({ n = 1, false }, pack(notice:cancel()))
      H.ticks()
      assert.same({ n = 1, false }, pack(notice:cancel()))
      held:release()
    end))

    it("returns false once the notice has fired", test(function(env)
      local notice = fired(env)
      assert.is_false(notice:cancel())
      assert.is_true(notice:wait())
    end))
  end)

  describe("methods", function()
    it("raise naming the notice when called on something else", test(function(env)
      local notice, held, pool = busy(env)
      for _, name in ipairs { "wait", "on_free", "cancel" } do
        local method = notice[name]
        assert.error_matches(function() method(pool, function() end) end,
          "peerpool.notice expected, got peerpool.pool", nil, true, name)
      end
      held:release()
    end))
  end)

  describe("__tostring", function()
    it("names the notice and its state", test(function(env)
      local notice, held = busy(env)
      assert.matches("^peerpool%.notice %(armed%): 0x%x+$", tostring(notice))
      held:release()
      notice:wait()
      assert.matches("^peerpool%.notice %(fired%): 0x%x+$", tostring(notice))
      local other, held2 = busy(env)
      other:cancel()
      other:wait()
      assert.matches("^peerpool%.notice %(canceled%): 0x%x+$", tostring(other))
      held2:release()
    end))
  end)
end)
