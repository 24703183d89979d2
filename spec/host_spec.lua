-- The `peerpool` host program: running scripts on luv's loop, its options, and the demo behind
-- `make run`.
local uv = require "luv"
local T = require "spec.support.host_helper"
local R = require "spec.support.host_run"

describe("peerpool (host program)", function()
  it("runs a script with luv and peerpool, arg set as lua5.4 sets it", R.test(function()
    local path = R.script(T.tmpdir(), "args.lua", [[
      local uv = require "luv"
      local peerpool = require "peerpool"
      print(type(uv.run), peerpool.version, select("#", ...), ...)
      print(arg[-2] ~= nil, arg[-1], arg[0]:match("[^/]+$"), arg[1], arg[2], #arg)
    ]])
    local out, err = R.exits(0, { "-e", "x = 1", path, "a", "b c" })
    local version = out:match("^function\t(%S+)\t")
    assert.is_string(version)
    assert.equal("function\t" .. version .. "\t2\ta\tb c\n" ..
      "true\tx = 1\targs.lua\ta\tb c\t2\n", out)
    assert.equal("", err)
  end))

  -- Scripts given with -e that run on the loop, print `out` and end with exit 0.
  for _, case in ipairs {
    { name = "runs the loop until nothing is left, then exits 0",
      out = "main chunk done\nticks\t5\n", code = [[
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
      ]] },
    { name = "stops when the script stops the loop", out = "stopping\n", code = [[
        local uv = require "luv"
        local t = uv.new_timer()
        t:start(10, 10, function() print("stopping"); uv.stop() end)
      ]] },
    { name = "runs the loop again when the script itself runs it after uv.stop()",
      out = "first run\nwalk sees\ttimer\nsecond run\n", code = [[
        local uv = require "luv"
        local t = uv.new_timer()
        t:start(10, 0, function() print("first run"); uv.stop() end)
        uv.run()
        uv.walk(function(h) print("walk sees", (h:get_type())) end)
        t:start(10, 0, function() print("second run"); t:close() end)
        uv.run()
      ]] },
  } do
    it(case.name, R.test(function()
      assert.same({ case.out, "" }, { R.exits(0, { "-e", case.code }) })
    end))
  end

  it("runs no callback after the script stops the loop, then closes its pools", R.test(function()
    local dir = T.tmpdir()
    -- t stops the loop and then keeps it busy until t is due again; u is due in the same
    -- pass as t. Neither may run once uv.stop() was called. The pool is closed on the way
    -- out through pool:close(), which writes its address book.
    local path = R.script(dir, "stop.lua", [[
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
    assert.same({ "stopping\n", "" }, { R.exits(0, { path, dir .. "/book" }) })
    assert.matches("\n127%.0%.0%.1:1 %d+ static %-\n", T.read_file(dir .. "/book"))
  end))

  it("walks only luv's handles (uv.walk), with a pool and its conns open", R.test(function()
    local path = R.script(T.tmpdir(), "walk.lua", [[
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
    assert.same({ "walk\ttcp\nwalk\ttcp\nwalk\ttimer\n", "" }, { R.exits(0, { path }) })
  end))

  -- Scripts with a pool that has an address book, which keep the program up for a minute.
  local KEPT_BY_TIMER = [[
    local uv = require "luv"
    local peerpool = require "peerpool"
    pool = peerpool.new { address_book = arg[1], peers = { "127.0.0.1:1", "127.0.0.1:2" } }
    local keep = uv.new_timer()
    keep:start(60000, 0, function() print("not reached") end)
    print("ready")
  ]]
  local KEPT_BY_RUN = [[
    local uv = require "luv"
    local peerpool = require "peerpool"
    pool = peerpool.new { address_book = arg[1], peers = { "127.0.0.1:1", "127.0.0.1:2" } }
    peerpool.run(function()
      local co = coroutine.running()
      local t = uv.new_timer()
      t:start(60000, 0, function() coroutine.resume(co) end)
      print("ready")
      coroutine.yield()
    end)
    print("not reached")
  ]]
  local function book_has_both(path)
    local book = T.read_file(path)
    assert.matches("\n127%.0%.0%.1:1 %d+ static %-\n", book)
    assert.matches("\n127%.0%.0%.1:2 %d+ static %-\n", book)
  end

  for _, case in ipairs {
    { sig = "sigterm", code = 143, script = KEPT_BY_TIMER, what = "" },
    { sig = "sigint", code = 130, script = KEPT_BY_TIMER, what = "" },
    { sig = "sigterm", code = 143, script = KEPT_BY_RUN,
      what = " while peerpool.run drives the loop from the main chunk" },
  } do
    it("closes its pools (their address books saved) and exits " .. case.code .. " on " ..
      case.sig .. case.what, R.test(function()
        local dir = T.tmpdir()
        local p = T.spawn { T.peerpool, R.script(dir, "app.lua", case.script), dir .. "/book" }
        p:expect("ready")
        p:kill(case.sig)
        assert.same({ case.code, 0 }, { p:wait() })
        assert.equal("ready\n", p.out)
        assert.equal("", p.err)
        book_has_both(dir .. "/book")
      end))
  end

  it("closes cleanly on SIGTERM while serving a REPL socket (the socket removed)", R.test(function()
    local dir = T.tmpdir()
    local sock = dir .. "/repl.sock"
    local p = T.spawn { T.peerpool, "--repl-socket", sock, R.script(dir, "app.lua", KEPT_BY_TIMER),
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
  end))

  it("prints the traceback of a script error and exits non-zero", R.test(function()
    local dir = T.tmpdir()
    local path = R.script(dir, "fails.lua",
      "local function inner() error('broken script') end\ninner()\n")
    local _, err = R.exits(1, { path })
    assert.matches("fails%.lua:1: broken script\nstack traceback:\n", err)
    assert.matches("in local 'inner'", err)
    assert.matches("cannot open .*missing%.lua", select(2, R.exits(1, { dir .. "/missing.lua" })))
  end))

  -- A script whose timer callback raises, while another timer keeps the loop going.
  local RAISES = [[
    local uv = require "luv"
    local t = uv.new_timer()
    t:start(10, 0, function() t:close(); error("in a callback") end)
    local later = uv.new_timer()
    later:start(200, 0, function() later:close(); print("still running") end)
  ]]

  it("exits non-zero when a luv callback raises (without a REPL)", R.test(function()
    local out, err = R.exits(1, { "-e", RAISES })
    assert.matches("error in a callback: .*in a callback\nstack traceback:", err)
    assert.equal("", out)
  end))

  it("keeps going when a luv callback raises while a REPL is served", R.test(function()
    local out, err = R.exits(0, { "--repl-socket", T.tmpdir() .. "/s", "-e", RAISES })
    assert.matches("in a callback", err)
    assert.equal("still running\n", out)
  end))

  it("reads the script from stdin", R.test(function()
    assert.equal("true\n", (R.exits(0, { "-" },
      { stdin = "print(require('peerpool').version ~= nil)\n" })))
  end))

  it("--repl with lines piped in: no prompts, results, exit 1 if a line failed", R.test(function()
    assert.equal("42\nafter\nf\n", (R.exits(0, { "--repl", "-e", "answer = 42" },
      { stdin = "answer\nsleep(50); return 'after'\nfunction f()\nreturn 'f' end\nf()\n" })))
    local out, err = R.exits(1, { "--repl" }, { stdin = "error('nope')\n1 + 1\n" })
    assert.equal("2\n", out)
    assert.matches("nope", err)
  end))

  it("says how to use it (--help, --version, a bad option)", R.test(function()
    local help = R.exits(0, { "--help" })
    assert.matches("usage: peerpool %[options%] %[script%.lua %[args%.%.%.%]%]", help)
    assert.matches("%-%-repl%-socket PATH", help)
    assert.matches("attach PATH", help)
    assert.matches("^peerpool %d+%.%d+%.%d+ %(host program%), Lua 5%.4%.%d+, " ..
      "libuv %d+%.%d+%.%d+, ", (R.exits(0, { "--version" })))
    assert.matches("unknown option %-%-frobnicate", select(2, R.exits(2, { "--frobnicate" })))
  end))

  it("finds the module beside it, whatever LUA_CPATH says", R.test(function()
    assert.matches("/lua/peerpool%.so\n$", (R.exits(0,
      { "-e", "print(package.searchpath('peerpool', package.cpath))" },
      { env = { LUA_CPATH_5_4 = "/nonexistent/?.so;;" } })))
  end))

  it("gives require 'peerpool.host' to scripts", R.test(function()
    assert.equal("false\tfalse\ttrue\t{ a = 2, b = 1 }\n", (R.exits(0, { "-e", [[
      local host = require "peerpool.host"
      print(host.repl, host.terminal, host.socket == nil, host.pretty({ b = 1, a = 2 }))
    ]] })))
    assert.equal("true\ts\n", (R.exits(0, { "--repl-socket", T.tmpdir() .. "/s", "-e",
      "local host = require 'peerpool.host'; print(host.repl, host.socket:match('[^/]+$'))" })))
  end))
end)

describe("scripts/demo.lua (make run)", function()
  -- Run the demo for 3 s with 8 workers, its plot going to png_path ("none": no plot); it must
  -- end with exit 0 and nothing on stderr. Returns its output.
  local function demo(png_path)
    local out, err = R.exits(0, { "scripts/demo.lua", "3", "8" },
      { env = { PP_DEMO_PNG = png_path }, ms = 30000 })
    assert.equal("", err)
    return out
  end

  it("runs to its end without a terminal: a status line per second, a summary, exit 0",
    R.test(function()
      local out = demo("none")
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
    end, 40000))

  it("ends by drawing its run into a PNG (gnuplot) and saying where it is", function()
    if os.execute("command -v gnuplot >/dev/null 2>&1") ~= true then
      pending("gnuplot is not installed (Debian gnuplot-nox)")
      return
    end
    T.run(function()
      local path = T.tmpdir() .. "/run.png"
      assert.matches("\ndemo: a plot of this run %(requests/s, p50/p99 latency, conns by " ..
        "state%): " .. path:gsub("%p", "%%%0") .. "\n$", demo(path))
      local png = T.read_file(path)
      assert.equal("\137PNG\r\n\26\n", png:sub(1, 8))
      assert.is_true(#png > 10000, "a PNG of " .. #png .. " bytes")
    end, 40000)
  end)
end)
