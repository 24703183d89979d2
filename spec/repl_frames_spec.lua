-- The line protocol of the host's REPL socket (bindings/host/repl_frames.lua), alone: the
-- checks fuzz/fuzz_repl_frames.c makes, with fixed seeds so that every build runs them.
local F = dofile("bindings/host/repl_frames.lua")

local function split(data, max_line, chunks)
  local s = F.splitter(max_line or 1024)
  local out = {}
  if chunks then
    local at = 1
    for _, n in ipairs(chunks) do
      s:feed(data:sub(at, at + n - 1), out)
      at = at + n
    end
    s:feed(data:sub(at), out)
  else
    s:feed(data, out)
  end
  return s:finish(out), s
end

describe("repl_frames", function()
  describe("splitter", function()
    it("splits lines, drops a \\r before the \\n, and keeps a last line without one", function()
      assert.same({ { "line", "1 + 1" }, { "line", "" }, { "line", "x\r" }, { "line", "last" } },
        (split("1 + 1\r\n\nx\r\r\nlast")))
    end)

    it("reads a hello on the first line only", function()
      assert.same({ { "hello", "tty", 1 }, { "control", "hello", "1 pipe" } },
        (split("\1hello 1 tty\n\1hello 1 pipe\n")))
      assert.same({ { "line", "1" }, { "control", "hello", "1 tty" } },
        (split("1\n\1hello 1 tty\n")))
    end)

    it("reads control lines and ignores those that do not parse", function()
      assert.same({ { "control", "complete", "pool:st" }, { "control", "key", "" },
          { "control", "interrupt", "" }, { "line", "ok" } },
        (split("\1complete pool:st\n\1key\n\1interrupt\n\1\n\1 42\nok\n")))
    end)

    it("takes a line of max_line bytes and ends at one byte more, whole or in chunks", function()
      assert.same({ { "line", "12345" } }, (split("12345\n", 5)))
      assert.same({ { "line", "12345" } }, (split("12345\n", 5, { 1, 1, 1, 1, 1 })))
      assert.same({ { "line", "1234" }, { "too_long" } }, (split("1234\n123456\nmore\n", 5)))
      -- the partial line already over max_line: no need to wait for its end
      local events, s = split("1234\n123456", 5, { 5, 3, 2 })
      assert.same({ { "line", "1234" }, { "too_long" } }, events)
      assert.equal(0, s:pending())
      assert.same({}, s:feed("\nmore\n")) -- reported once; the rest is ignored
    end)

    it("holds a line dripped a byte at a time in few pieces", function()
      local s = F.splitter(1 << 20)
      for _ = 1, 100000 do s:feed("x") end
      assert.equal(100000, s:pending())
      assert.is_true(#s.pieces <= 17, #s.pieces .. " pieces")
      assert.same({ { "line", ("x"):rep(100000) } }, s:feed("\n"))
    end)

    it("gives the same events however the bytes are chunked (fixed seeds)", function()
      local alphabet = { "\n", "\r", "\1", "\1hello 1 tty", "\1hello 1 pipe", "\1key",
        "\1complete ", "\1interrupt", "return 1", " ", "x", "function f()", "\0", "\255" }
      for seed = 1, 200 do
        math.randomseed(seed)
        local parts = {}
        for i = 1, math.random(0, 60) do parts[i] = alphabet[math.random(#alphabet)] end
        local data = table.concat(parts)
        local max_line = ({ 1, 3, 8, 40, 1 << 20 })[math.random(5)]
        local whole = split(data, max_line)
        for _ = 1, 5 do
          local chunks = {}
          for i = 1, math.random(0, 30) do chunks[i] = math.random(1, 9) end
          local chunked, s = split(data, max_line, chunks)
          assert.same(whole, chunked, ("seed %d, max_line %d, chunks %s, data %q"):format(
            seed, max_line, table.concat(chunks, ","), data))
          assert.equal(0, s:pending())
        end
        for i, ev in ipairs(whole) do
          if ev[1] == "line" then
            assert.is_nil(ev[2]:find("\n", 1, true))
            assert.is_true(#ev[2] <= max_line)
          end
          if ev[1] == "too_long" then assert.equal(#whole, i) end
        end
      end
    end)
  end)

  describe("frame", function()
    it("is \\1, the kind, the payload's length, a colon and the payload", function()
      assert.equal("\1o3:a\nb", F.frame("o", "a\nb"))
      assert.equal("\1p0:", F.frame("p", ""))
    end)
  end)
end)
