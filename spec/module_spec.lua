-- The module table: require, version, errors, strerror, new (every option, checked), pools, run.
local uv = require "luv"
local H = require "spec.support.helpers"

describe("peerpool", function()
  local peerpool = require "peerpool"

  -- Tests that drive the loop themselves leave it with nothing to do (luv crashes at exit on a
  -- handle still closing).
  after_each(function() assert(H.drain(), "the loop still has work after the test") end)

  it("loads on luv's loop and says its version", function()
    assert.is_string(peerpool.version)
    assert.matches("^%d+%.%d+%.%d+", peerpool.version)
    assert.is_function(peerpool.new)
  end)

  it("is the same table when required again", function()
    assert.equal(peerpool, require "peerpool")
  end)

  describe(".errors", function()
    it("lists the stable error codes", function()
      for _, code in ipairs { "busy", "timeout", "exhausted", "cannot_connect", "closed",
        "no_peer", "burned" } do
        assert.equal(code, peerpool.errors[code])
      end
    end)

    it("maps every code to itself, in snake_case", function()
      local n = 0
      for k, v in pairs(peerpool.errors) do
        assert.equal(k, v)
        assert.matches("^[a-z][a-z_]*$", k)
        n = n + 1
      end
      assert.is_true(n >= 7)
    end)
  end)

  describe("SIGPIPE", function()
    -- A write to a peer that hung up raises SIGPIPE; by default it ends the process. The child
    -- sends itself one, as the kernel would, after require "peerpool".
    local SELF_PIPE = [[
      local uv = require "luv"
      local peerpool = require "peerpool"
      local pid = io.open("/proc/self/stat"):read("n")
      os.execute("kill -PIPE " .. pid)
      for _ = 1, 20 do
        uv.run("nowait")
        if HANDLED or not SIG then break end
        os.execute("sleep 0.01")
      end
      if SIG then SIG:close(); uv.run() end
      io.write(HANDLED and "handler ran\n" or "", "survived ", peerpool.version, "\n")
    ]]

    it("does not end a plain lua5.4 program (ignored, as luv programs expect)", function()
      local ok, status, out, err = H.child(SELF_PIPE)
      assert.is_true(ok, "exit status " .. tostring(status) .. " (141: killed by SIGPIPE)\n" .. err)
      assert.matches("survived", out, 1, true)
    end)

    it("leaves a SIGPIPE handler the program set itself", function()
      local ok, status, out, err = H.child([[
        local uv = require "luv"
        SIG = uv.new_signal()
        SIG:start("sigpipe", function() HANDLED = true end)
      ]] .. SELF_PIPE)
      assert.is_true(ok, "exit status " .. tostring(status) .. "\n" .. err)
      assert.matches("handler ran", out, 1, true)
    end)
  end)

  describe(".strerror()", function()
    it("describes each of our codes", function()
      assert.equal("peer is at capacity", peerpool.strerror("busy"))
      assert.equal("timed out", peerpool.strerror("timeout"))
      assert.equal("wait queue is full", peerpool.strerror("exhausted"))
      assert.equal("cannot connect to peer", peerpool.strerror("cannot_connect"))
      assert.equal("pool or connection is closed", peerpool.strerror("closed"))
      assert.equal("no eligible peer", peerpool.strerror("no_peer"))
      assert.equal("peer is burned", peerpool.strerror("burned"))
      for code in pairs(peerpool.errors) do
        assert.is_string(peerpool.strerror(code))
        assert.not_equal(code, peerpool.strerror(code))
      end
    end)

    it("describes libuv's names with libuv's messages", function()
      -- The codes of socket errors are libuv's names; strerror describes them too (DESIGN:
      -- pp_strerror describes either kind).
      assert.equal("connection refused", peerpool.strerror("ECONNREFUSED"))
      assert.equal("connection reset by peer", peerpool.strerror("ECONNRESET"))
    end)

    it("says when it does not know a code", function()
      assert.equal("unknown error code 'no_such_code'", peerpool.strerror("no_such_code"))
    end)

    it("raises naming the argument when the code is not a string", function()
      assert.error_matches(function() peerpool.strerror() end,
        "bad argument #1 to 'strerror' (string expected, got no value)", nil, true)
      assert.error_matches(function() peerpool.strerror({}) end,
        "bad argument #1 to 'strerror' (string expected, got table)", nil, true)
    end)
  end)

  describe(".new()", function()
    it("makes a pool with the defaults, without options or with an empty table", function()
      local a, b = peerpool.new(), peerpool.new {}
      assert.matches("^peerpool%.pool %(0 peers, 0 conns, 0 waiters%): ", tostring(a))
      assert.same(0, b:stats().conns)
      a:close()
      b:close()
    end)

    it("takes every engine option and io_timeout", function()
      local pool = peerpool.new {
        max_per_peer = 2, max_total = 10, client_limit = 3, connect_timeout = 1000, retries = 0,
        acquire_timeout = 0, backlog = 5, idle_timeout = 0, max_lifespan = 0, lifespan_jitter = 0,
        handshake_timeout = 100, max_address_age = 0, ping_after = 0, keepalive = 0,
        target_peers = 0, maintenance_interval = 1000, seed_interval = 0, eject_after = 0,
        eject_time = 1000, eject_max = 1000, keep_idle_bytes = 1, hook_budget = 1000,
        io_timeout = 0,
      }
      assert.matches("^peerpool%.pool ", tostring(pool))
      pool:close()
    end)

    it("takes integral floats", function()
      peerpool.new({ max_per_peer = 2.0, io_timeout = 5.0 }):close()
    end)

    it("raises naming an unknown option", function()
      assert.has_error(function() peerpool.new { max_peers = 1 } end,
        "peerpool.new: unknown option 'max_peers'")
      assert.has_error(function() peerpool.new { polcy = "x.lua" } end,
        "peerpool.new: unknown option 'polcy'")
    end)

    it("raises at the caller's line, naming the option", function()
      local line = debug.getinfo(1, "l").currentline + 1
      local ok, err = pcall(peerpool.new, { policy = 5 })
      assert.is_false(ok)
      assert.equal("peerpool.new: option 'policy' must be a path or a table of hooks (got number)",
        err)
      local function make()
        local pool = peerpool.new { max_total = "lots" } -- line + 5
        return pool
      end
      ok, err = pcall(make)
      assert.is_false(ok)
      assert.matches("^spec/module_spec.lua:" .. (line + 5) .. ": peerpool.new: option 'max_total'",
        (err:gsub("^.*/spec/", "spec/")))
    end)

    it("raises naming a peers entry that is not an address, and leaves no pool open", function()
      local before = #peerpool.pools()
      assert.has_error(function() peerpool.new { peers = { "127.0.0.1:1", {} } } end,
        "peerpool.new: peers[2] must be an address (string), got table")
      assert.has_error(function() peerpool.new { policy = 42 } end,
        "peerpool.new: option 'policy' must be a path or a table of hooks (got number)")
      assert.equal(before, #peerpool.pools())
    end)

    it("raises naming an option of the wrong type", function()
      assert.has_error(function() peerpool.new { max_per_peer = "4" } end,
        "peerpool.new: option 'max_per_peer' must be an integer (got string)")
      assert.has_error(function() peerpool.new { connect_timeout = true } end,
        "peerpool.new: option 'connect_timeout' must be an integer (got boolean)")
      assert.has_error(function() peerpool.new { io_timeout = {} } end,
        "peerpool.new: option 'io_timeout' must be an integer (got table)")
      assert.has_error(function() peerpool.new { retries = 1.5 } end,
        "peerpool.new: option 'retries' must be an integer (got number)")
    end)

    it("raises naming an option out of range", function()
      local cases = {
        { { max_per_peer = 0 }, "option max_per_peer must be an integer in 1..1000000" },
        { { max_total = 0 }, "option max_total must be an integer in 1..10000000" },
        { { client_limit = 0 }, "option client_limit must be an integer in 1..65536" },
        { { connect_timeout = 0 }, "option connect_timeout must be a positive number of ms" },
        { { retries = 101 }, "option retries must be an integer in 0..100" },
        { { acquire_timeout = -1 }, "option acquire_timeout must be a number of ms >= 0" },
        { { backlog = -1 }, "option backlog must be an integer in 0..10000000" },
        { { idle_timeout = -1 }, "option idle_timeout must be a number of ms >= 0" },
        { { max_lifespan = -1 }, "option max_lifespan must be a number of ms >= 0" },
        { { lifespan_jitter = 51 }, "option lifespan_jitter must be a percentage in 0..50" },
        { { handshake_timeout = 0 }, "option handshake_timeout must be a positive number of ms" },
        { { max_address_age = -1 }, "option max_address_age must be a number of ms >= 0" },
        { { ping_after = -1 }, "option ping_after must be a number of ms >= 0" },
        { { keepalive = -1 }, "option keepalive must be a number of ms >= 0" },
        { { target_peers = -1 }, "option target_peers must be an integer in 0..1000000" },
        { { maintenance_interval = 0 },
          "option maintenance_interval must be a positive number of ms" },
        { { seed_interval = -1 }, "option seed_interval must be a number of ms >= 0" },
        { { eject_after = -1 }, "option eject_after must be an integer >= 0" },
        { { eject_time = 0 }, "option eject_time must be a positive number of ms" },
        { { eject_time = 2000, eject_max = 1000 },
          "option eject_max must be a number of ms >= eject_time" },
        { { keep_idle_bytes = 2 }, "option keep_idle_bytes must be 0 or 1" },
        { { hook_budget = 10 }, "option 'hook_budget' must be an integer in 1000..100000000" },
        { { io_timeout = -1 }, "option 'io_timeout' must be an integer in 0..31536000000 (ms)" },
        { { hook_memory = 1 }, "option 'hook_memory' must be an integer in 65536..1099511627776" },
        { { max_receive = 0 }, "option 'max_receive' must be an integer in 1..1099511627776" },
        { { max_total = 2 ^ 63 }, "option 'max_total' must be an integer (got number)" },
        { { max_per_peer = 2 ^ 40 }, "option 'max_per_peer' is out of range" },
      }
      for _, case in ipairs(cases) do
        assert.error_matches(function() peerpool.new(case[1]) end, "peerpool.new: " .. case[2],
          nil, true)
      end
    end)

    it("takes keep_idle_bytes as a boolean", function()
      peerpool.new({ keep_idle_bytes = true }):close()
      peerpool.new({ keep_idle_bytes = false }):close()
    end)

    it("adds the peers of opts.peers", function()
      local pool = peerpool.new { peers = { "127.0.0.1:7001", "[0:0::1]:7002" } }
      local addrs = {}
      for _, v in ipairs(pool:peers()) do addrs[#addrs + 1] = v.addr end
      assert.same({ "127.0.0.1:7001", "[::1]:7002" }, addrs)
      pool:close()
      assert.error_matches(function() peerpool.new { peers = { "bad..name:1" } } end,
        "peerpool.new: peers[1]: host must be an IPv4 address or a host name", nil, true)
      assert.error_matches(function() peerpool.new { peers = "127.0.0.1:1" } end,
        "peerpool.new: option 'peers' must be a list of addresses", nil, true)
    end)

    it("raises when the options are not a table", function()
      assert.error_matches(function() peerpool.new("fast") end,
        "bad argument #1 to 'new' (table of options expected, got string)", nil, true)
      assert.has_error(function() peerpool.new { [1] = 4 } end,
        "peerpool.new: option names must be strings")
    end)
  end)

  describe(".pools()", function()
    it("lists the open pools and forgets closed ones", function()
      local before = #peerpool.pools()
      local a, b = peerpool.new(), peerpool.new()
      local listed = {}
      for _, p in ipairs(peerpool.pools()) do listed[p] = true end
      assert.is_true(listed[a])
      assert.is_true(listed[b])
      assert.equal(before + 2, #peerpool.pools())
      a:close()
      assert.equal(before + 1, #peerpool.pools())
      for _, p in ipairs(peerpool.pools()) do assert.not_equal(a, p) end
      b:close()
      assert.equal(before, #peerpool.pools())
    end)
  end)

  describe(".run()", function()
    it("runs fn in a coroutine with its arguments and returns its results", function()
      local res = H.pack(peerpool.run(function(x, y)
        assert.is_true(coroutine.isyieldable())
        return x + y, "two", nil
      end, 1, 2))
      assert.same({ n = 3, 3, "two", nil }, res)
    end)

    it("passes nil arguments and results through", function()
      assert.same({ n = 3, 2, nil, nil }, H.pack(peerpool.run(function(...)
        return select("#", ...), ...
      end, nil, nil)))
    end)

    it("drives the loop until fn has finished", function()
      local fired = false
      local res = peerpool.run(function()
        H.sleep(20)
        fired = true
        return "slept"
      end)
      assert.equal("slept", res)
      assert.is_true(fired)
      assert.is_true(H.drain())
    end)

    it("raises fn's error again, with fn's message", function()
      local ok, err = pcall(peerpool.run, function() error("boom") end)
      assert.is_false(ok)
      assert.matches("boom", err)
      ok, err = pcall(peerpool.run, function()
        H.sleep(1)
        error({ code = 42 })
      end)
      assert.is_false(ok)
      assert.same({ code = 42 }, err)
      assert.is_true(H.drain())
    end)

    it("raises when fn waits for something nothing can end", function()
      assert.error_matches(function() peerpool.run(function() coroutine.yield() end) end,
        "the loop ran out of work before fn finished", nil, true)
    end)

    it("from inside the running loop starts fn and returns at once", function()
      local order = {}
      peerpool.run(function()
        H.sleep(1) -- now resumed from uv.run
        local co = peerpool.run(function()
          order[#order + 1] = "inner starts"
          H.sleep(10)
          order[#order + 1] = "inner ends"
        end)
        order[#order + 1] = "outer goes on"
        assert.equal("thread", type(co))
        H.wait_until(function() return #order == 3 end)
      end)
      assert.same({ "inner starts", "outer goes on", "inner ends" }, order)
    end)

    it("from inside the running loop reports fn's error instead of raising it", function()
      local went_on = false
      peerpool.run(function()
        H.sleep(1)
        peerpool.run(function() error("inner fails (expected in this test)") end)
        went_on = true
      end)
      assert.is_true(went_on)
    end)

    it("raises naming the argument when fn is not a function", function()
      assert.error_matches(function() peerpool.run("nope") end,
        "bad argument #1 to 'run' (function expected, got string)", nil, true)
    end)

    it("shares luv's loop with the program's own handles", function()
      local ticks = 0
      peerpool.run(function()
        local t = uv.new_timer()
        t:start(1, 1, function()
          ticks = ticks + 1
          if ticks == 3 then t:close() end
        end)
        H.wait_until(function() return ticks == 3 end)
      end)
      assert.equal(3, ticks)
    end)
  end)

  describe(".spawn()", function()
    it("starts fn in a coroutine on the loop and returns at once", function()
      local steps = {}
      local co = peerpool.spawn(function(x)
        steps[#steps + 1] = x
        local t = uv.new_timer()
        local me = coroutine.running()
        t:start(10, 0, function() t:close(); coroutine.resume(me) end)
        coroutine.yield()
        steps[#steps + 1] = "after"
      end, "first")
      assert.equal("thread", type(co))
      assert.same({ "first" }, steps) -- ran up to its first wait, inside spawn
      uv.run()
      assert.same({ "first", "after" }, steps)
    end)

    it("names a wrong argument", function()
      assert.has_error(function() peerpool.spawn(42) end)
    end)
  end)

  describe(".on_error()", function()
    it("receives errors raised in callbacks instead of stderr, and can be unset", function()
      local seen = {}
      peerpool.on_error(function(text) seen[#seen + 1] = text end)
      finally(function() peerpool.on_error(nil) end)
      peerpool.spawn(function() error("boom in a coroutine") end)
      assert.equal(1, #seen)
      assert.matches("peerpool: error in coroutine: .*boom in a coroutine", seen[1])
      peerpool.on_error(nil)
      assert.has_error(function() peerpool.on_error(42) end)
    end)
  end)
end)
