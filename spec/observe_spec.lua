-- Observability: histograms (stats().histograms, pool:histogram), events (pool:on / pool:off),
-- leak detection (leak_threshold) and pool:explain([peer]), against real sockets.
local H = require "spec.support.helpers"
local peerpool = require "peerpool"

local test, wait_until = H.test, H.wait_until

local function line_pool(env, opts)
  local pool, srv = env:pool_with("line", opts)
  return pool, srv
end

describe("histograms", function()
  it("count one acquire wait per granted acquire, one hold per release", test(function(env)
    local pool, srv = line_pool(env, { max_per_peer = 2 })
    local n = 25
    for i = 1, n do
      local conn = assert(pool:acquire(srv.addr))
      if i % 5 == 0 then H.sleep(3) end
      conn:release()
    end
    local s = pool:stats()
    assert.equal(n, s.acquires)
    local w = s.histograms.acquire_wait
    assert.equal(s.acquires, w.count)
    assert.equal(n, w.buckets[#w.buckets]) -- cumulative: the last finite bucket holds all
    assert.equal(#w.le, #w.buckets)
    assert.equal(s.releases, s.histograms.hold.count)
    assert.equal(s.connects_ok, s.histograms.connect.count)
    assert.equal(0, s.histograms.handshake.count)
    local h = pool:histogram("acquire_wait")
    assert.equal(n, h.count)
    assert.is_true(h.p50 <= h.p90 and h.p90 <= h.p99, "quantiles in order")
    assert.is_true(h.sum >= 0 and h.sum < 5)
    local c = pool:histogram("connect")
    assert.is_true(c.p50 > 0 and c.p50 < 5, "connect p50 " .. tostring(c.p50))
    assert.is_nil(pool:histogram("tls").p50) -- empty: no quantiles
    -- bucket bounds: powers of two of a microsecond, in seconds
    assert.equal(1e-6, h.le[1])
    assert.equal(1024e-6, h.le[11])
    assert.equal(27, #h.le)
    assert.has_error(function() pool:histogram("nope") end)
  end))

  it("count acquires that waited behind capacity, with their wait", test(function(env)
    local pool, srv = line_pool(env, { max_per_peer = 1 })
    local held = assert(pool:acquire(srv.addr))
    local got
    peerpool.run(function()
      local c = assert(pool:acquire(srv.addr))
      got = true
      c:release()
    end)
    H.sleep(30)
    held:release()
    wait_until(function() return got end)
    local h = pool:histogram("acquire_wait")
    assert.equal(pool:stats().acquires, h.count)
    assert.equal(2, h.count)
    assert.is_true(h.sum >= 0.02, "waited sum " .. h.sum)
    assert.is_true(h.p99 >= 0.016, "p99 " .. h.p99)
  end))

  it("time each answered request on a framed pool, send to reply", test(function(env)
    local srv = env:ordered()
    local pool = env:pool { framing = "line", client_limit = 4, max_per_peer = 1,
      io_timeout = 5000 }
    pool:add_peer(srv.addr)
    assert.equal(0, pool:histogram("request").count)
    for _ = 1, 3 do assert.equal("+WOKE\r\n", pool:request(srv.addr, "SLEEP 20\n")) end
    local conn = assert(pool:acquire(srv.addr)) -- through a conn too
    assert(conn:send("ECHO x\n"))
    assert.equal("x\r\n", conn:receive())
    conn:release()
    local h = pool:histogram("request")
    assert.equal(4, h.count)
    -- the server's 20 ms timer counts in whole ms of its loop's cached clock: a sleep may end
    -- up to 1 ms early, as seen from here (once: a sum of 0.059935)
    assert.is_true(h.sum >= 0.057, "three 20 ms sleeps, sum " .. h.sum)
    assert.is_true(h.p99 >= 0.016, "p99 " .. h.p99)
    assert.equal(4, pool:stats().histograms.request.count)
    local text = pool:metrics()
    assert.truthy(text:find("# TYPE peerpool_request_duration_seconds histogram", 1, true))
    assert.truthy(text:find("peerpool_request_duration_seconds_count 4\n", 1, true))
    -- a failed request is not observed
    local slow = env:slow(400)
    local p2 = env:pool { framing = "line", io_timeout = 50 }
    p2:add_peer(slow.addr)
    assert.is_nil((p2:request(slow.addr, "x\n")))
    assert.equal(0, p2:histogram("request").count)
  end))

  it("appear in pool:metrics() as Prometheus histograms", test(function(env)
    local pool, srv = line_pool(env, {})
    for _ = 1, 3 do assert(pool:acquire(srv.addr)):release() end
    local text = pool:metrics()
    assert.truthy(text:find("# TYPE peerpool_acquire_wait_seconds histogram", 1, true))
    assert.truthy(text:find('peerpool_acquire_wait_seconds_bucket{le="0.000001"} ', 1, true))
    assert.truthy(text:find('peerpool_acquire_wait_seconds_bucket{le="+Inf"} 3\n', 1, true))
    assert.truthy(text:find("peerpool_acquire_wait_seconds_count 3\n", 1, true))
    assert.truthy(text:find('peerpool_connect_duration_seconds_count{phase="tcp"} 1\n', 1, true))
    assert.truthy(text:find("peerpool_lease_hold_seconds_count 3\n", 1, true))
    local ok, out = H.promtool(text)
    if ok ~= nil then
      assert.is_true(ok, out)
      assert.equal("", out)
    end
  end))
end)

describe("pool:on / pool:off", function()
  it("delivers conn_open and conn_close (with reason) on a later tick", test(function(env)
    local pool, srv = line_pool(env, {})
    local seen = {}
    pool:on("conn_open", function(ev) seen[#seen + 1] = ev end)
    pool:on("conn_close", function(ev) seen[#seen + 1] = ev end)
    local conn = assert(pool:acquire(srv.addr))
    wait_until(function() return #seen >= 1 end)
    local open = seen[1]
    assert.equal("conn_open", open.event)
    assert.equal(srv.addr, open.addr)
    assert.equal(srv.addr, open.peer.addr)
    assert.is_true(open.conn >= 1)
    assert.is_true(open.connect_ms >= 0)
    local n = #seen
    conn:close() -- not reusable
    assert.equal(n, #seen) -- not inside the call
    wait_until(function() return #seen > n end)
    local close = seen[#seen]
    assert.equal("conn_close", close.event)
    assert.equal(open.conn, close.conn)
    assert.equal("discarded", close.reason)
    assert.is_true(close.age_ms >= 0)
  end))

  it("delivers eject with its fields, and explain names the peer and the reason",
    test(function(env)
      local a, b = env:line(), env:line()
      local pool = env:pool { eject_after = 2, eject_time = 5000 }
      pool:add_peer(a.addr)
      pool:add_peer(b.addr)
      local ejected
      pool:on("eject", function(ev) ejected = ev end)
      for _ = 1, 2 do
        local c = assert(pool:acquire(a.addr))
        c:close("broken")
      end
      wait_until(function() return ejected end)
      assert.equal(a.addr, ejected.addr)
      assert.equal(2, ejected.failures)
      assert.equal(5000, ejected.cooldown_ms)
      assert.equal("broken", ejected.error)
      local list = pool:explain(a.addr)
      local found
      for _, e in ipairs(list) do
        assert.equal(a.addr, e.peer)
        assert.is_number(e.at_ms)
        if e.kind == "eject" then found = e end
      end
      assert.truthy(found, "an eject entry")
      assert.truthy(found.text:find(a.addr .. " ejected for 5000 ms: 2 consecutive failures", 1,
        true), found.text)
      assert.truthy(found.text:find("failures in use", 1, true), found.text)
      -- the other peer's entries are not in a's list; all of them are in the pool's
      for _, e in ipairs(pool:explain(b.addr)) do assert.equal(b.addr, e.peer) end
      assert.is_true(#pool:explain() >= #list)
      assert.same({}, pool:explain("127.0.0.1:1"))
    end))

  it("delivers acquire_timeout with how long it waited and behind what", test(function(env)
    local pool, srv = line_pool(env, { max_per_peer = 1 })
    local ev
    pool:on("acquire_timeout", function(e) ev = e end)
    local held = assert(pool:acquire(srv.addr))
    local c, code = pool:acquire(srv.addr, { timeout = 30 })
    assert.is_nil(c)
    assert.equal("timeout", code)
    wait_until(function() return ev end)
    assert.equal(srv.addr, ev.addr)
    assert.is_true(ev.waited_ms >= 20)
    assert.equal(1, ev.conns)
    assert.equal(1, ev.max_conns)
    assert.equal(0, ev.waiters_ahead)
    held:release()
    local waits = 0
    for _, e in ipairs(pool:explain(srv.addr)) do
      if e.kind == "wait" then waits = waits + 1 end
    end
    assert.is_true(waits >= 1)
  end))

  it("delivers burn", test(function(env)
    local srv = env:refused()
    local pool = env:pool { retries = 0, connect_timeout = 500 }
    pool:load_policy { backoff = function() return false end }
    pool:add_peer(srv.addr)
    local ev
    pool:on("burn", function(e) ev = e end)
    assert.is_nil(pool:acquire(srv.addr))
    wait_until(function() return ev end)
    assert.equal(srv.addr, ev.addr)
    assert.equal("burn", ev.event)
    assert.is_true(ev.failures >= 1)
  end))

  it("off really stops delivery, and only for that function", test(function(env)
    local pool, srv = line_pool(env, {})
    local a, b = 0, 0
    local fa = function() a = a + 1 end
    local fb = function() b = b + 1 end
    pool:on("conn_open", fa)
    pool:on("conn_open", fb)
    pool:on("state", fa)
    assert.is_true(pool:off("conn_open", fa))
    assert.is_false(pool:off("conn_open", fa)) -- no longer subscribed
    assert.is_true(pool:off("state", fa))
    local conn = assert(pool:acquire(srv.addr))
    wait_until(function() return b == 1 end)
    H.sleep(20)
    assert.equal(0, a)
    assert.equal(1, b)
    conn:release()
    -- a handler that unsubscribes itself during delivery
    local c = 0
    local fc
    fc = function() c = c + 1; pool:off("conn_close", fc) end
    pool:on("conn_close", fc)
    assert(pool:acquire(srv.addr)):close()
    local c2 = assert(pool:acquire(srv.addr))
    c2:close()
    H.sleep(30)
    assert.equal(1, c)
    assert.has_error(function() pool:on("nope", fa) end)
    assert.has_error(function() pool:off("nope", fa) end)
  end))
end)

describe("leak_threshold", function()
  local function hold_the_lease_too_long(pool, addr, ms)
    local conn = assert(pool:acquire(addr))
    H.sleep(ms)
    conn:release()
    return "done"
  end

  it("reports a lease held too long once, with the acquiring traceback, and its release",
    test(function(env)
      local logs = {}
      peerpool.on_error(function(text) logs[#logs + 1] = text end)
      finally(function() peerpool.on_error(nil) end)
      local pool, srv = line_pool(env, { leak_threshold = 40 })
      local evs = {}
      pool:on("leak", function(ev) evs[#evs + 1] = ev end)
      assert.equal("done", hold_the_lease_too_long(pool, srv.addr, 200))
      wait_until(function() return #evs == 2 end)
      H.sleep(20)
      peerpool.on_error(nil)
      assert.equal(2, #evs) -- once, then the unleak
      local leak, unleak = evs[1], evs[2]
      assert.is_false(leak.unleaked)
      assert.equal(srv.addr, leak.addr)
      assert.is_true(leak.held_ms > 40)
      assert.is_true(leak.conn >= 1)
      assert.truthy(leak.traceback:find("hold_the_lease_too_long", 1, true), leak.traceback)
      assert.is_true(unleak.unleaked)
      assert.equal(leak.leak_id, unleak.leak_id)
      assert.equal(leak.conn, unleak.conn)
      assert.is_true(unleak.held_ms >= 150)
      assert.truthy(unleak.traceback:find("hold_the_lease_too_long", 1, true))
      -- the log lines: the leak with its traceback, then the unleak
      local leak_line, unleak_line
      for _, l in ipairs(logs) do
        if l:find("^peerpool: leak:") then leak_line = l end
        if l:find("^peerpool: unleaked:") then unleak_line = l end
      end
      assert.truthy(leak_line, table.concat(logs, "\n"))
      assert.truthy(leak_line:find(srv.addr, 1, true))
      assert.truthy(leak_line:find("hold_the_lease_too_long", 1, true), leak_line)
      assert.truthy(unleak_line)
      assert.truthy(unleak_line:find("released after", 1, true))
    end))

  -- Two call sites, and a lease kept by the caller after the acquiring function returned: each
  -- report names the function that acquired, at its line (the stack of the acquire, not where
  -- the holder is when the report comes).
  local function acquire_here(pool, addr) return assert(pool:acquire(addr)) end
  local function acquire_there(pool, addr)
    local conn = assert(pool:acquire(addr))
    return conn
  end

  it("keeps each acquire's own stack, per call site, after the acquiring function returned",
    test(function(env)
      peerpool.on_error(function() end)
      finally(function() peerpool.on_error(nil) end)
      local pool, srv = line_pool(env, { leak_threshold = 30, max_per_peer = 4 })
      local evs = {}
      pool:on("leak", function(ev) if not ev.unleaked then evs[#evs + 1] = ev end end)
      -- many acquires from the same site first: they share one noted stack
      for _ = 1, 50 do acquire_here(pool, srv.addr):release() end
      local a = acquire_here(pool, srv.addr)
      wait_until(function() return #evs == 1 end)
      a:release()
      local b = acquire_there(pool, srv.addr)
      wait_until(function() return #evs == 2 end)
      b:release()
      local ta, tb = evs[1].traceback, evs[2].traceback
      assert.matches("^acquired\nstack traceback:\n", ta)
      assert.truthy(ta:find("in upvalue 'acquire_here'", 1, true), ta)
      assert.falsy(ta:find("acquire_there", 1, true), ta)
      assert.truthy(tb:find("in upvalue 'acquire_there'", 1, true), tb)
      assert.falsy(tb:find("acquire_here", 1, true), tb)
      -- file:line of the acquire itself
      local line = debug.getinfo(acquire_there, "S").linedefined + 1
      local site = "observe_spec.lua:" .. line .. ": in upvalue 'acquire_there'"
      assert.truthy(tb:find(site, 1, true), tb)
    end))

  it("notes an acquire's stack without allocating once that stack has been seen", test(function(env)
    -- (luaL_traceback at every acquire made a string of a few hundred bytes, and cost ~30 us)
    local function per_acquire_bytes(pool, addr)
      for _ = 1, 10 do acquire_here(pool, addr):release() end
      collectgarbage("collect")
      collectgarbage("stop")
      local before = collectgarbage("count")
      for _ = 1, 2000 do acquire_here(pool, addr):release() end
      local after = collectgarbage("count")
      collectgarbage("restart")
      return (after - before) * 1024 / 2000
    end
    local plain, srv = line_pool(env, {})
    local watched = env:pool { leak_threshold = 60000 }
    watched:add_peer(srv.addr)
    local base = per_acquire_bytes(plain, srv.addr)
    local with = per_acquire_bytes(watched, srv.addr)
    assert.is_true(with - base < 16, string.format(
      "leak_threshold adds %.0f bytes per acquire (%.0f without, %.0f with)",
      with - base, base, with))
  end))

  it("is off by default and with 0: no traceback is kept", test(function(env)
    local pool, srv = line_pool(env, { leak_threshold = 0 })
    local evs = 0
    pool:on("leak", function() evs = evs + 1 end)
    local conn = assert(pool:acquire(srv.addr))
    H.sleep(50)
    conn:release()
    H.sleep(20)
    assert.equal(0, evs)
    assert.has_error(function() peerpool.new { leak_threshold = -1 } end)
  end))
end)

describe("the REPL", function()
  local T = require "spec.support.host_helper"

  it("explain() prints the decisions one per line, watch the busiest peers' lines", function()
    T.run(function()
      local dir = T.tmpdir()
      local path = dir .. "/app.lua"
      local f = assert(io.open(path, "w"))
      f:write([[
        local peerpool = require "peerpool"
        local uv = require "luv"
        local srv = uv.new_tcp()
        srv:bind("127.0.0.1", 0)
        srv:listen(8, function() local c = uv.new_tcp(); srv:accept(c) end)
        addr = "127.0.0.1:" .. srv:getsockname().port
        pool = peerpool.new { max_per_peer = 2, eject_after = 2, eject_time = 5000 }
        pool:add_peer(addr)
        pool:add_peer("127.0.0.1:1")
        peerpool.run(function()
          for _ = 1, 2 do pool:acquire(addr):close("broken") end
        end)
        local t = uv.new_timer()
        t:start(1500, 0, function() t:close(); srv:close(); pool:close() end)
      ]])
      f:close()
      local p = T.spawn { T.peerpool, "--repl", path }
      p:write("sleep(100)\nexplain(addr)\n" ..
        "held = pool:acquire('127.0.0.1:1', { timeout = 50 })\nwatch(pool)\n")
      p:close_stdin()
      assert.equal(0, (p:wait()))
      local out = p.out
      local stamp = "%d%d:%d%d:%d%d%.%d%d%d "
      assert.truthy(out:find(stamp .. "eject +127%.0%.0%.1:%d+ ejected for 5000 ms: " ..
        "2 consecutive failures"), out)
      assert.truthy(out:find(stamp .. "conn_close conn #1 to 127%.0%.0%.1:%d+ closed: broken"), out)
      -- the refused peer failed and the other is ejected: watch lists both under its line
      assert.truthy(out:find("\n  127%.0%.0%.1:1 failed: conns %d+ %(idle 0%), leases 0, " ..
        "waiters 0, failures %d+, last error ECONNREFUSED"), out)
      assert.truthy(out:find("\n  127%.0%.0%.1:%d+ ejected: conns 0 %(idle 0%), leases 0, " ..
        "waiters 0, failures 2, last error broken"), out)
    end)
  end)
end)
