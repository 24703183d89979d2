-- The `peerpool` host program: running scripts on luv's loop, its options, and the demo behind
-- `make run`.
local uv = require "luv"
local T = require "spec.support.host_helper"

local function script(dir, name, code)
  local path = dir .. "/" .. name
  local f = assert(io.open(path, "w"))
  f:write(code)
  f:close()
  return path
end

describe("peerpool (host program)", function()
  it("runs a script with luv and peerpool, arg set as lua5.4 sets it", function()
    T.run(function()
      local dir = T.tmpdir()
      local path = script(dir, "args.lua", [[
        local uv = require "luv"
        local peerpool = require "peerpool"
        print(type(uv.run), peerpool.version, select("#", ...), ...)
        print(arg[-2] ~= nil, arg[-1], arg[0]:match("[^/]+$"), arg[1], arg[2], #arg)
      ]])
      local p = T.spawn { T.peerpool, "-e", "x = 1", path, "a", "b c" }
      assert.equal(0, (p:wait()))
      local version = p.out:match("^function\t(%S+)\t")
      assert.is_string(version)
      assert.equal("function\t" .. version .. "\t2\ta\tb c\n" ..
        "true\tx = 1\targs.lua\ta\tb c\t2\n", p.out)
      assert.equal("", p.err)
    end)
  end)

  it("runs the loop until nothing is left, then exits 0", function()
    T.run(function()
      local dir = T.tmpdir()
      local path = script(dir, "loop.lua", [[
        local uv = require "luv"
        local peerpool = require "peerpool"
        local pool = peerpool.new{}
        local n = 0
        local t = uv.new_timer()
        t:start(10, 10, function()
          n = n + 1
          if n == 5 then t:close(); pool:close(); print("ticks", n) end
        end)
        print("main chunk done")
      ]])
      local p = T.spawn { T.peerpool, path }
      assert.equal(0, (p:wait()))
      assert.equal("main chunk done\nticks\t5\n", p.out)
    end)
  end)

  it("stops when the script stops the loop", function()
    T.run(function()
      local p = T.spawn { T.peerpool, "-e", [[
        local uv = require "luv"
        local t = uv.new_timer()
        t:start(10, 10, function() print("stopping"); uv.stop() end)
      ]] }
      assert.equal(0, (p:wait()))
      assert.equal("stopping\n", p.out)
    end)
  end)

  it("runs no callback after the script stops the loop, then closes its pools", function()
    T.run(function()
      local dir = T.tmpdir()
      -- t stops the loop and then keeps it busy until t is due again; u is due in the same
      -- pass as t. Neither may run once uv.stop() was called. The pool is closed on the way
      -- out through pool:close(), which writes its address book.
      local path = script(dir, "stop.lua", [[
        local uv = require "luv"
        local peerpool = require "peerpool"
        pool = peerpool.new { address_book = arg[1], peers = { "127.0.0.1:1" } } -- a global: kept
        local t = uv.new_timer()
        t:start(10, 1, function()
          print("stopping")
          uv.stop()
          local t0 = uv.hrtime()
          while uv.hrtime() - t0 < 5e6 do end
        end)
        local u = uv.new_timer()
        u:start(10, 0, function() print("same pass") end)
      ]])
      local p = T.spawn { T.peerpool, path, dir .. "/book" }
      assert.equal(0, (p:wait()))
      assert.equal("stopping\n", p.out)
      assert.equal("", p.err)
      assert.matches("\n127%.0%.0%.1:1 %d+ static %-\n", T.read_file(dir .. "/book"))
    end)
  end)

  it("runs the loop again when the script itself runs it after uv.stop()", function()
    T.run(function()
      local p = T.spawn { T.peerpool, "-e", [[
        local uv = require "luv"
        local t = uv.new_timer()
        t:start(10, 0, function() print("first run"); uv.stop() end)
        uv.run()
        uv.walk(function(h) print("walk sees", (h:get_type())) end)
        t:start(10, 0, function() print("second run"); t:close() end)
        uv.run()
      ]] }
      assert.equal(0, (p:wait()))
      assert.equal("first run\nwalk sees\ttimer\nsecond run\n", p.out)
    end)
  end)

  it("walks only luv's handles (uv.walk), with a pool and its conns open", function()
    T.run(function()
      local dir = T.tmpdir()
      local path = script(dir, "walk.lua", [[
        local uv = require "luv"
        local peerpool = require "peerpool"
        local server = uv.new_tcp()
        assert(server:bind("127.0.0.1", 0))
        server:listen(8, function()
          local c = uv.new_tcp()
          server:accept(c)
        end)
        local pool = peerpool.new {}
        local peer = pool:add_peer("127.0.0.1:" .. server:getsockname().port)
        peerpool.run(function() assert(pool:acquire(peer)) end)
        local t = uv.new_timer()
        t:start(60000, 0, function() end)
        uv.walk(function(h) print("walk", (h:get_type())) end)
        uv.walk(function(h) if not h:is_closing() then h:close() end end)
        pool:close()
      ]])
      local p = T.spawn { T.peerpool, path }
      assert.equal(0, (p:wait()))
      assert.equal("walk\ttcp\nwalk\ttcp\nwalk\ttimer\n", p.out)
      assert.equal("", p.err)
    end)
  end)

  -- A pool with an address book and a timer that would keep the program up for a minute.
  local SIGNALLED = [[
    local uv = require "luv"
    local peerpool = require "peerpool"
    pool = peerpool.new { address_book = arg[1], peers = { "127.0.0.1:1", "127.0.0.1:2" } }
    local keep = uv.new_timer()
    keep:start(60000, 0, function() print("not reached") end)
    print("ready")
  ]]
  local function book_has_both(path)
    local book = T.read_file(path)
    assert.matches("\n127%.0%.0%.1:1 %d+ static %-\n", book)
    assert.matches("\n127%.0%.0%.1:2 %d+ static %-\n", book)
  end

  for _, case in ipairs { { "sigterm", 143 }, { "sigint", 130 } } do
    local sig, code = case[1], case[2]
    it("closes its pools (their address books saved) and exits " .. code .. " on " .. sig,
      function()
        T.run(function()
          local dir = T.tmpdir()
          local p = T.spawn { T.peerpool, script(dir, "app.lua", SIGNALLED), dir .. "/book" }
          p:expect("ready")
          p:kill(sig)
          assert.same({ code, 0 }, { p:wait() })
          assert.equal("ready\n", p.out)
          assert.equal("", p.err)
          book_has_both(dir .. "/book")
        end)
      end)
  end

  it("closes cleanly on SIGTERM while serving a REPL socket (the socket removed)", function()
    T.run(function()
      local dir = T.tmpdir()
      local sock = dir .. "/repl.sock"
      local p = T.spawn { T.peerpool, "--repl-socket", sock, script(dir, "app.lua", SIGNALLED),
        dir .. "/book" }
      p:expect("ready")
      local c = T.connect(sock)
      c:hello("tty")
      p:kill("sigterm")
      assert.same({ 143, 0 }, { p:wait() })
      assert.equal("", p.err)
      book_has_both(dir .. "/book")
      assert.is_nil(uv.fs_lstat(sock))
      T.wait_until(function() return c.closed end, 5000, "the session to end")
      assert.equal("b", c.frames[#c.frames].kind)
    end)
  end)

  it("closes cleanly on SIGTERM while peerpool.run drives the loop from the main chunk",
    function()
      T.run(function()
        local dir = T.tmpdir()
        local path = script(dir, "run.lua", [[
          local uv = require "luv"
          local peerpool = require "peerpool"
          pool = peerpool.new { address_book = arg[1], peers = { "127.0.0.1:1" } }
          peerpool.run(function()
            local co = coroutine.running()
            local t = uv.new_timer()
            t:start(60000, 0, function() coroutine.resume(co) end)
            print("ready")
            coroutine.yield()
          end)
          print("not reached")
        ]])
        local p = T.spawn { T.peerpool, path, dir .. "/book" }
        p:expect("ready")
        p:kill("sigterm")
        assert.same({ 143, 0 }, { p:wait() })
        assert.equal("ready\n", p.out)
        assert.equal("", p.err)
        assert.matches("\n127%.0%.0%.1:1 %d+ static %-\n", T.read_file(dir .. "/book"))
      end)
    end)

  it("prints the traceback of a script error and exits non-zero", function()
    T.run(function()
      local dir = T.tmpdir()
      local path = script(dir, "fails.lua",
        "local function inner() error('broken script') end\ninner()\n")
      local p = T.spawn { T.peerpool, path }
      assert.equal(1, (p:wait()))
      assert.matches("fails%.lua:1: broken script\nstack traceback:\n", p.err)
      assert.matches("in local 'inner'", p.err)
      local q = T.spawn { T.peerpool, dir .. "/missing.lua" }
      assert.equal(1, (q:wait()))
      assert.matches("cannot open .*missing%.lua", q.err)
    end)
  end)

  it("exits non-zero when a luv callback raises (without a REPL)", function()
    T.run(function()
      local p = T.spawn { T.peerpool, "-e", [[
        local uv = require "luv"
        local t = uv.new_timer()
        t:start(10, 0, function() t:close(); error("in a callback") end)
        local keep = uv.new_timer()
        keep:start(60000, 0, function() end)
      ]] }
      assert.equal(1, (p:wait()))
      assert.matches("error in a callback: .*in a callback\nstack traceback:", p.err)
    end)
  end)

  it("keeps going when a luv callback raises while a REPL is served", function()
    T.run(function()
      local dir = T.tmpdir()
      local p = T.spawn { T.peerpool, "--repl-socket", dir .. "/s", "-e", [[
        local uv = require "luv"
        local t = uv.new_timer()
        t:start(10, 0, function() t:close(); error("in a callback") end)
        local later = uv.new_timer()
        later:start(200, 0, function() later:close(); print("still running") end)
      ]] }
      assert.equal(0, (p:wait()))
      assert.matches("in a callback", p.err)
      assert.equal("still running\n", p.out)
    end)
  end)

  it("reads the script from stdin", function()
    T.run(function()
      local p = T.spawn { T.peerpool, "-" }
      p:write("print(require('peerpool').version ~= nil)\n")
      p:close_stdin()
      assert.equal(0, (p:wait()))
      assert.equal("true\n", p.out)
    end)
  end)

  it("--repl with lines piped in: no prompts, results, exit 1 if a line failed", function()
    T.run(function()
      local p = T.spawn { T.peerpool, "--repl", "-e", "answer = 42" }
      p:write("answer\nsleep(50); return 'after'\nfunction f()\nreturn 'f' end\nf()\n")
      p:close_stdin()
      assert.equal(0, (p:wait()))
      assert.equal("42\nafter\nf\n", p.out)
      local q = T.spawn { T.peerpool, "--repl" }
      q:write("error('nope')\n1 + 1\n")
      q:close_stdin()
      assert.equal(1, (q:wait()))
      assert.equal("2\n", q.out)
      assert.matches("nope", q.err)
    end)
  end)

  it("says how to use it (--help, --version, a bad option)", function()
    T.run(function()
      local h = T.spawn { T.peerpool, "--help" }
      assert.equal(0, (h:wait()))
      assert.matches("usage: peerpool %[options%] %[script%.lua %[args%.%.%.%]%]", h.out)
      assert.matches("%-%-repl%-socket PATH", h.out)
      assert.matches("attach PATH", h.out)
      local v = T.spawn { T.peerpool, "--version" }
      assert.equal(0, (v:wait()))
      assert.matches("^peerpool %d+%.%d+%.%d+ %(host program%), Lua 5%.4%.%d+, " ..
        "libuv %d+%.%d+%.%d+, ", v.out)
      local bad = T.spawn { T.peerpool, "--frobnicate" }
      assert.equal(2, (bad:wait()))
      assert.matches("unknown option %-%-frobnicate", bad.err)
    end)
  end)

  it("finds the module beside it, whatever LUA_CPATH says", function()
    T.run(function()
      local code = "print(package.searchpath('peerpool', package.cpath))"
      local p = T.spawn({ T.peerpool, "-e", code },
        { env = { LUA_CPATH_5_4 = "/nonexistent/?.so;;" } })
      assert.equal(0, (p:wait()))
      assert.matches("/lua/peerpool%.so\n$", p.out)
    end)
  end)

  it("gives require 'peerpool.host' to scripts", function()
    T.run(function()
      local dir = T.tmpdir()
      local p = T.spawn { T.peerpool, "-e", [[
        local host = require "peerpool.host"
        print(host.repl, host.terminal, host.socket == nil, host.pretty({ b = 1, a = 2 }))
      ]] }
      assert.equal(0, (p:wait()))
      assert.equal("false\tfalse\ttrue\t{ a = 2, b = 1 }\n", p.out)
      local q = T.spawn { T.peerpool, "--repl-socket", dir .. "/s", "-e",
        "local host = require 'peerpool.host'; print(host.repl, host.socket:match('[^/]+$'))" }
      assert.equal(0, (q:wait()))
      assert.equal("true\ts\n", q.out)
    end)
  end)
end)

describe("scripts/demo.lua (make run)", function()
  it("runs to its end without a terminal: a status line per second, a summary, exit 0", function()
    T.run(function()
      local p = T.spawn({ T.peerpool, "scripts/demo.lua", "3", "8" },
        { env = { PP_DEMO_PNG = "none" } })
      local code = p:wait(30000)
      assert.equal("", p.err)
      assert.equal(0, code)
      local out = p.out
      assert.matches("^demo: 6 peers on 127%.0%.0%.1 %(4 healthy, 1 slow, 1 flappy%), " ..
        "8 workers, 3 s\n", out)
      local status = 0
      for line in out:gmatch("[^\n]+") do
        if line:match("^%s+%d+s%s+%d+ req/s  p50 +[%d.]+ ms  p99 +[%d.]+ ms | " ..
            "conns +%d+ %(%d+ idle, %d+ active%) | peers .* | waiters %d+ | errors ") then
          status = status + 1
        end
      end
      assert.is_true(status >= 2, "status lines: " .. status .. "\n" .. out)
      assert.matches("\nsummary\n", out)
      assert.matches("\n  127%.0%.0%.1:%d+ +flappy ", out)
      local requests = tonumber(out:match("\n  requests +(%d+) in "))
      assert.is_true(requests > 100, "requests: " .. tostring(requests))
      assert.matches("\n  latency +p50 [%d.]+ ms, p90 [%d.]+ ms, p99 [%d.]+ ms", out)
      assert.matches("\n  errors +", out)
      assert.not_matches("a plot of this run", out)
    end, 40000)
  end)

  it("ends by drawing its run into a PNG (gnuplot) and saying where it is", function()
    if os.execute("command -v gnuplot >/dev/null 2>&1") ~= true then
      pending("gnuplot is not installed (Debian gnuplot-nox)")
      return
    end
    T.run(function()
      local path = T.tmpdir() .. "/run.png"
      local p = T.spawn({ T.peerpool, "scripts/demo.lua", "3", "8" },
        { env = { PP_DEMO_PNG = path } })
      local code = p:wait(30000)
      assert.equal("", p.err)
      assert.equal(0, code)
      assert.matches("\ndemo: a plot of this run %(requests/s, p50/p99 latency, conns by " ..
        "state%): " .. path:gsub("%p", "%%%0") .. "\n$", p.out)
      local f = assert(io.open(path, "rb"))
      local png = f:read("a")
      f:close()
      assert.equal("\137PNG\r\n\26\n", png:sub(1, 8))
      assert.is_true(#png > 10000, "a PNG of " .. #png .. " bytes")
    end, 40000)
  end)
end)
