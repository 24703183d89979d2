-- The address book (option address_book; bindings/book.lua, bindings/lbook.c): every address
-- the pool accepts round-trips with its last_seen, source and tags; bad lines are skipped one
-- by one with one report; saves never follow a planted symlink, run off the loop and coalesce;
-- and every way a pool ends (close, <close>, collection, the end of the script) saves it.
local uv = require "luv"
local H = require "spec.support.helpers"
local P = require "spec.support.policy_helpers"
local peerpool = require "peerpool"

local test, wait_until = P.test, H.wait_until
local book = peerpool._book

-- A fresh directory under /tmp, removed with everything in it after the test.
local function tmpdir(env)
  local dir = os.tmpname()
  os.remove(dir)
  assert(uv.fs_mkdir(dir, 448)) -- 0700
  env.tmpfiles[#env.tmpfiles + 1] = dir
  local cleanup = env.cleanup
  env.cleanup = function(self)
    cleanup(self)
    os.execute("rm -rf '" .. dir .. "'")
  end
  return dir
end

local function ls(dir)
  local names = {}
  for name in uv.fs_scandir_next, assert(uv.fs_scandir(dir)) do names[#names + 1] = name end
  table.sort(names)
  return names
end

-- Route the binding's error reports into a list for the length of fn(reports).
local function with_reports(fn)
  local reports = {}
  peerpool.on_error(function(msg) reports[#reports + 1] = msg end)
  local ok, err = pcall(fn, reports)
  peerpool.on_error(nil)
  if not ok then error(err, 0) end
  return reports
end

-- What the book keeps of each peer, sorted by address.
local function kept(pool)
  local out = {}
  for _, v in ipairs(pool:peers()) do
    out[#out + 1] = { addr = v.addr, last_seen = v.last_seen, source = v.source, tags = v.tags }
  end
  table.sort(out, function(a, b) return a.addr < b.addr end)
  return out
end

-- A book file of `lines` (the v2 header first unless `header` says otherwise).
local function write_book(path, lines, header)
  P.write(path, (header or "# peerpool address book v2") .. "\n" .. table.concat(lines, "\n")
    .. "\n")
end

describe("peerpool address book", function()
  describe("round trip", function()
    -- Every kind of address add_peer accepts, spelled as a user would.
    local ADDRS = {
      "127.0.0.1:7001", "[::1]:7002", "[2001:db8::1]:7003",
      "/tmp/peerpool-abs.sock", "./dot-relative.sock",
      "unix:/tmp/peerpool with spaces.sock", "unix:/tmp/peerpool\nnewline.sock",
      "unix:/tmp/peerpool\r\tcontrol.sock", "unix:/tmp/100%.sock", "unix:/tmp/%41%zz.sock",
      "unix:/tmp/caf\xc3\xa9-\xe2\x98\x83.sock", "unix:/tmp/\xff\xfe-not-utf8.sock",
      "unix:relative.sock", "unix:dir/relative with space.sock", "unix:#hash.sock",
      "unix:unix:prefix-in-the-path", "unix:1.2.3.4:05", "unix:[::1]x",
      "unix:/" .. ("p"):rep(106), "unix:" .. ("r"):rep(105), -- (107 bytes with its "./")
    }

    it("brings back every address with its last_seen and source", test(function(env)
      local path = env:tmppath()
      local first = env:pool { address_book = path, peers = { "127.0.0.9:1" } }
      for i, addr in ipairs(ADDRS) do
        assert(first:add_peer(addr, 1700000000000 + i), addr)
      end
      assert(first:_add_peer("127.0.0.10:1", 1700000000100, nil, "seed"))
      assert(first:_add_peer("127.0.0.11:1", 1700000000101, nil, "my source, 100% odd"))
      local before = kept(first)
      assert.equal(#ADDRS + 3, #before)
      first:close()
      local reports = with_reports(function()
        local again = env:pool { address_book = path }
        assert.same(before, kept(again))
      end)
      assert.same({}, reports)
    end))

    it("brings back tags: nested tables, numbers, booleans, strings that look like either",
      test(function(env)
        local path = env:tmppath()
        local tags = {
          zone = "eu-west", weight = 3, share = 0.25, whole = 2.0, big = 2 ^ 60, neg = -7,
          primary = true, backup = false, three = "3", yes = "true", hex = "0x10", empty = "",
          odd = "a,b=c.d %e f\ng\xc3\xa9", ["key with, = and ."] = "v", [7] = "seven",
          ["12"] = "a string key", inf = math.huge, ninf = -math.huge,
          tls = { server_name = "db1.internal", alpn = { "h2", "http/1.1" }, verify = true },
        }
        local first = env:pool { address_book = path }
        first:add_peer("127.0.0.1:7001", 1700000000000, tags)
        first:add_peer("unix:relative.sock", 1700000000001, { role = "replica" })
        first:close()
        local again = env:pool { address_book = path }
        assert.same(tags, again:peer("127.0.0.1:7001").tags)
        assert.equal("float", math.type(again:peer("127.0.0.1:7001").tags.whole))
        assert.same({ role = "replica" }, again:peer("unix:relative.sock").tags)
      end))

    it("says once which tag entries it cannot keep, and keeps the rest", test(function(env)
      local path = env:tmppath()
      local reports = with_reports(function()
        local pool = env:pool { address_book = path }
        pool:add_peer("127.0.0.1:7001", 1700000000000,
          { ok = 1, fn = print, nan = 0 / 0, [{}] = 1, [1.5] = 2, nul = "a\0b" })
        book.close(pool)
        book.close(pool) -- (once more: nothing more is said or written)
      end)
      assert.equal(1, #reports)
      assert.matches("5 tag entries could not be kept", reports[1], 1, true)
      local again = env:pool { address_book = path }
      assert.same({ ok = 1 }, again:peer("127.0.0.1:7001").tags)
    end))

    it("writes format v3: a header, then one line per peer, fields apart by one space",
      test(function(env)
        local path = env:tmppath()
        local pool = env:pool { address_book = path }
        pool:_add_peer("127.0.0.1:7001", 1700000000000, nil, "static")
        pool:add_peer("unix:run/my app.sock", 1700000000001, { zone = "eu" })
        pool:add_peer("/tmp/100%.sock", 1700000000002)
        pool:close()
        assert.equal("# peerpool address book v3\n" ..
          "127.0.0.1:7001 1700000000000 static -\n" ..
          "./run/my%20app.sock 1700000000001 runtime - zone=eu\n" ..
          "/tmp/100%25.sock 1700000000002 runtime -\n", P.read(path))
      end))

    it("reads the v1 format (addr last_seen [source], no escapes)", test(function(env)
      local path = env:tmpname()
      write_book(path, {
        "127.0.0.1:7001 1700000000000 static",
        "127.0.0.1:7002   1700000000001",
        "/tmp/v1.sock\t1700000000002 seed",
      }, "# peerpool address book: addr last_seen_ms source")
      local pool = env:pool { address_book = path }
      assert.same({
        { addr = "/tmp/v1.sock", last_seen = 1700000000002, source = "seed" },
        { addr = "127.0.0.1:7001", last_seen = 1700000000000, source = "static" },
        { addr = "127.0.0.1:7002", last_seen = 1700000000001, source = "book" },
      }, kept(pool))
      pool:close()
      assert.matches("^# peerpool address book v3\n", P.read(path)) -- rewritten as v3
    end))

    it("remembers burned peers and failure history across a restart", test(function(env)
      local path = env:tmppath()
      local refused = env:refused()
      local pool = env:pool { address_book = path, peers = { refused.addr }, retries = 0 }
      assert(pool:load_policy { backoff = function() return false end })
      assert.equal("burned", select(2, pool:acquire(refused.addr)))
      pool:add_peer("127.0.0.1:7001")
      pool:close()
      local text = P.read(path)
      assert.matches(refused.addr .. " %d+ static b,f=1,lf=%d+\n", text)
      assert.matches("127.0.0.1:7001 %d+ runtime %-\n", text)
      -- the pool of the next run: the burned peer is still burned, never dialled
      local again = env:pool { address_book = path }
      assert.equal("burned", again:peer(refused.addr).state)
      assert.equal(1, again:peer(refused.addr).failures)
      assert.equal("burned", select(2, again:acquire(refused.addr)))
      -- re-adding it is what unburns a peer
      again:add_peer(refused.addr)
      assert.not_equal("burned", again:peer(refused.addr).state)
    end))

    it("skips a line whose last_seen is in seconds, and loads the rest", test(function(env)
      local path = env:tmpname()
      write_book(path, { "127.0.0.1:7001 123 static zone=eu",
        "127.0.0.1:7002 1700000000000 static" })
      local reports = with_reports(function()
        local pool = env:pool { address_book = path }
        assert.is_nil(pool:peer("127.0.0.1:7001"))
        assert.is_truthy(pool:peer("127.0.0.1:7002"))
      end)
      assert.matches("line 2: last_seen looks like seconds", reports[1], 1, true)
    end))

    it("reads the v2 format (no history field)", test(function(env)
      local path = env:tmpname()
      write_book(path, { "127.0.0.1:7001 1700000000000 static zone=eu" })
      local pool = env:pool { address_book = path }
      assert.same({ zone = "eu" }, pool:peer("127.0.0.1:7001").tags)
      assert.equal("static", pool:peer("127.0.0.1:7001").source)
    end))

    it("brings back unix:127.0.0.1:6379 as a unix socket, beside the TCP peer 127.0.0.1:6379",
      test(function(env)
        local path = env:tmppath()
        local first = env:pool { address_book = path }
        local unix = assert(first:add_peer("unix:127.0.0.1:6379", 1700000000000))
        assert(first:add_peer("127.0.0.1:6379", 1700000000001))
        assert.not_equal("127.0.0.1:6379", unix)
        first:close()
        local again = env:pool { address_book = path }
        assert.same({
          { addr = unix, last_seen = 1700000000000, source = "runtime" },
          { addr = "127.0.0.1:6379", last_seen = 1700000000001, source = "runtime" },
        }, kept(again))
        assert.equal(unix, peerpool._canonical("unix:127.0.0.1:6379"))
      end))
  end)

  describe("bad lines", function()
    -- One bad line between two good ones: the good ones load, one report names the line.
    local CASES = {
      { "127.0.0.1:7009 17000\0000000000 static", "NUL byte in the line" },
      { "127.0.0.1:7009 -1700000000000 static", "last_seen is not a non-negative integer" },
      { "127.0.0.1:7009 1.7e12 static", "last_seen is not a non-negative integer" },
      { "127.0.0.1:7009 9999999999999 static", "last_seen is in the future" },
      { "127.0.0.1:7009 9007199254740993 static", "last_seen is over 2^53" },
      { "127.0.0.1:7009 99999999999999999999999 static", "last_seen is not a Unix time in ms" },
      { "127.0.0.1:7009 0 static", "last_seen is 0" },
      { "127.0.0.1:7009 1700000000000 static a=1 more", "unknown field after the tags" },
      { "127.0.0.1:7009 1700000000000", "missing source" },
      { "127.0.0.1:7009  1700000000000 static", "missing last_seen" },
      { "127.0.0.1:7009 1700000000000 static ", "empty tags field" },
      { "nonsense 1700000000000 static", select(2, peerpool._canonical("nonsense")) },
      { "unix:/tmp/a%0.sock 1700000000000 static", "bad %-escape in the address" },
      { "unix:/tmp/a%00.sock 1700000000000 static", "bad %-escape in the address" },
      { "127.0.0.1:7009 1700000000000 static zone", "tag without '='" },
      { "127.0.0.1:7009 1700000000000 static a=1,a.b=2", "tag key is both a value and a table" },
      { "unix:" .. ("x"):rep(108) .. " 1700000000000 static",
        select(2, peerpool._canonical("unix:" .. ("x"):rep(108))) },
    }
    for _, case in ipairs(CASES) do
      it("skips a line with " .. case[2], test(function(env)
        local path = env:tmpname()
        write_book(path, { "127.0.0.1:7001 1700000000000 static", case[1],
          "127.0.0.1:7002 1700000000000 static" })
        local reports = with_reports(function()
          local pool = env:pool { address_book = path }
          assert.same({ "127.0.0.1:7001", "127.0.0.1:7002" },
            { kept(pool)[1].addr, kept(pool)[2] and kept(pool)[2].addr })
          assert.equal(2, #pool:peers())
        end)
        assert.same({ "peerpool: address book " .. path .. ": skipped 1 bad line of 4 (line 3: " ..
          case[2] .. ")" }, reports)
      end))
    end

    it("sums a million bad lines up in one report", test(function(env)
      local path = env:tmpname()
      local f = assert(io.open(path, "w"))
      f:write("# peerpool address book v2\n127.0.0.1:7001 1700000000000 static\n")
      f:write(("x\n"):rep(1000000))
      f:write("127.0.0.1:7002 1700000000000 static") -- (no newline at the end)
      f:close()
      local reports = with_reports(function()
        local pool = env:pool { address_book = path }
        assert.equal(2, #pool:peers())
      end)
      assert.equal(1, #reports)
      assert.equal("peerpool: address book " .. path .. ": skipped 1000000 bad lines of 1000003 " ..
        "(line 3: missing last_seen; line 4: missing last_seen; line 5: missing last_seen; " ..
        "line 6: missing last_seen; line 7: missing last_seen; ...)", reports[1])
    end))

    it("skips a line too long to keep, across read blocks", test(function(env)
      local path = env:tmpname()
      write_book(path, { "127.0.0.1:7001 1700000000000 static",
        "127.0.0.1:7009 1700000000000 static a=" .. ("v"):rep(3 << 20),
        "127.0.0.1:7002 1700000000000 static" })
      local reports = with_reports(function()
        local pool = env:pool { address_book = path }
        assert.equal(2, #pool:peers())
        assert.is_table(pool:peer("127.0.0.1:7002"))
      end)
      assert.same({ "peerpool: address book " .. path .. ": skipped 1 bad line of 4 (line 3: " ..
        "line too long)" }, reports)
    end))

    it("moves a book of a newer format aside and starts without it", test(function(env)
      local path = env:tmpname()
      write_book(path, { "127.0.0.1:7001 1700000000000 static -" }, "# peerpool address book v4")
      local reports = with_reports(function()
        local pool = env:pool { address_book = path }
        assert.equal(0, #pool:peers())
      end)
      assert.equal(1, #reports)
      local aside = reports[1]:match("not loaded, moved to (%S+)$")
      assert.truthy(aside, reports[1])
      assert.matches("127.0.0.1:7001", P.read(aside), 1, true)
      assert.is_false(P.exists(path))
    end))
  end)

  describe("saving", function()
    it("never follows a symlink planted in the book's directory", test(function(env)
      local dir = tmpdir(env)
      local path = dir .. "/peers.book"
      local targets = {}
      for i, name in ipairs { "peers.book.tmp", ".peers.book.tmp", "peers.book~",
        "peers.book.new", "peers.book.tmp-XXXXXX", "peers.book.tmp-000000" } do
        local target = dir .. "/target-" .. i
        P.write(target, "precious " .. name)
        assert(uv.fs_symlink(target, dir .. "/" .. name))
        targets[target] = "precious " .. name
      end
      local pool = env:pool { address_book = path, address_book_interval = 10 }
      pool:add_peer("127.0.0.1:7001")
      wait_until(function() return P.exists(path) end, 3000, "a periodic save")
      H.sleep(50) -- (a few more)
      pool:close()
      for target, text in pairs(targets) do assert.equal(text, P.read(target)) end
      local st = assert(uv.fs_lstat(path))
      assert.equal("file", st.type)
      assert.equal(384, st.mode & 511) -- 0600
      assert.matches("127.0.0.1:7001", P.read(path), 1, true)
    end))

    it("replaces a symlink at the book's own path instead of writing through it",
      test(function(env)
        local dir = tmpdir(env)
        local path, target = dir .. "/peers.book", dir .. "/elsewhere"
        P.write(target, "precious")
        assert(uv.fs_symlink(target, path))
        local reports = with_reports(function()
          local pool = env:pool { address_book = path }
          pool:add_peer("127.0.0.1:7001")
          pool:close()
        end)
        assert.same({ "peerpool: address book " .. path .. ": skipped 1 bad line of 1 (line 1: " ..
          "missing last_seen)" }, reports)
        assert.equal("precious", P.read(target))
        assert.equal("file", uv.fs_lstat(path).type)
      end))

    it("leaves no temporary file behind", test(function(env)
      local dir = tmpdir(env)
      local pool = env:pool { address_book = dir .. "/b" }
      pool:add_peer("127.0.0.1:7001")
      local done
      book.save(pool, function(err) done = err or true end)
      wait_until(function() return done end, 3000, "the save")
      assert.is_true(done)
      pool:close()
      assert.same({ "b" }, ls(dir))
    end))

    it("writes off the loop: the call returns before the book changes", test(function(env)
      local path = env:tmppath()
      local pool = env:pool { address_book = path }
      pool:add_peer("127.0.0.1:7001")
      local done
      book.save(pool, function(err) done = err or true end)
      assert.is_nil(done)
      assert.is_true(book.info(pool).saving)
      assert.is_false(P.exists(path))
      wait_until(function() return done end, 3000, "the save")
      assert.is_true(done)
      assert.matches("127.0.0.1:7001", P.read(path), 1, true)
      assert.is_false(book.info(pool).saving)
    end))

    it("coalesces the saves asked for while one runs into one more", test(function(env)
      local path = env:tmppath()
      local pool = env:pool { address_book = path }
      local saves = book.info(pool).saves
      local order = {}
      pool:add_peer("127.0.0.1:7001")
      book.save(pool, function(err) order[#order + 1] = { 1, err, P.read(path) } end)
      pool:add_peer("127.0.0.1:7002")
      book.save(pool, function(err) order[#order + 1] = { 2, err, P.read(path) } end)
      book.save(pool, function(err) order[#order + 1] = { 3, err } end)
      wait_until(function() return #order == 3 end, 3000, "three callbacks")
      assert.equal(saves + 2, book.info(pool).saves)
      assert.same({ 1, 2, 3 }, { order[1][1], order[2][1], order[3][1] })
      assert.is_nil(order[1][2] or order[2][2] or order[3][2])
      assert.not_matches("127.0.0.1:7002", order[1][3], 1, true)
      assert.matches("127.0.0.1:7002", order[2][3], 1, true)
    end))

    it("says once that it cannot save, not at every try", test(function(env)
      local path = "/nonexistent-peerpool-dir/peers.book"
      local reports = with_reports(function()
        local pool = env:pool { address_book = path, address_book_interval = 5 }
        wait_until(function() return book.info(pool).last_error end, 3000, "a failed save")
        H.sleep(50)
        pool:close()
      end)
      assert.equal(1, #reports)
      assert.matches("^peerpool: address book " .. path:gsub("%-", "%%-") ..
        ": cannot save it: ENOENT", reports[1])
    end))
  end)

  describe("closing", function()
    it("saves at pool:close(), and a second close is harmless", test(function(env)
      local path = env:tmppath()
      local pool = env:pool { address_book = path }
      pool:add_peer("127.0.0.1:7001", 1700000000000)
      pool:close()
      pool:close()
      book.close(pool)
      assert.equal("# peerpool address book v3\n127.0.0.1:7001 1700000000000 runtime -\n",
        P.read(path))
    end))

    it("saves when a <close> variable goes out of scope", test(function(env)
      local path = env:tmppath()
      do
        local pool <close> = peerpool.new { address_book = path }
        pool:add_peer("127.0.0.1:7001")
      end
      assert.matches("127.0.0.1:7001", P.read(path), 1, true)
    end))

    it("lets the final save win over a save still running", test(function(env)
      local dir = tmpdir(env)
      local path = dir .. "/b"
      local pool = env:pool { address_book = path }
      pool:add_peer("127.0.0.1:7001")
      local result
      book.save(pool, function(err) result = err or "saved" end)
      pool:add_peer("127.0.0.1:7002")
      pool:close()
      local final = P.read(path)
      assert.matches("127.0.0.1:7002", final, 1, true)
      wait_until(function() return result end, 3000, "the running save to end")
      assert.equal("closed", result)
      assert.equal(final, P.read(path))
      assert.same({ "b" }, ls(dir))
    end))

    it("keeps book.close where a pool's C finaliser can call it", test(function(env)
      local close = debug.getregistry()["peerpool.book.close"]
      assert.equal(book.close, close)
      local path = env:tmppath()
      local pool = env:pool { address_book = path }
      pool:add_peer("127.0.0.1:7001", 1700000000000)
      close(pool)
      assert.equal("# peerpool address book v3\n127.0.0.1:7001 1700000000000 runtime -\n",
        P.read(path))
      pool:add_peer("127.0.0.1:7002")
      pool:close() -- (the book is closed already: no second save)
      assert.not_matches("127.0.0.1:7002", P.read(path), 1, true)
    end))

    it("saves a pool that is collected, with its sources and tags", function()
      local path = os.tmpname()
      local status, out, err = P.child(string.format([[
        local peerpool = require "peerpool"
        local pool = peerpool.new { address_book = %q, address_book_interval = 3600000 }
        pool:add_peer("127.0.0.1:7001", 1700000000000, { zone = "a" })
        pool = nil
        collectgarbage()
        collectgarbage()
        io.write(io.open(%q):read("a"))
        require("luv").run()
      ]], path, path))
      os.remove(path)
      assert.equal(0, status, err)
      assert.equal("# peerpool address book v3\n127.0.0.1:7001 1700000000000 runtime - zone=a\n",
        out)
    end)

    it("saves the pools of a script that ends without closing them", function()
      local path = os.tmpname()
      local status, _, err = P.child(string.format([[
        local peerpool = require "peerpool"
        POOL = peerpool.new { address_book = %q }
        POOL:add_peer("127.0.0.1:7001", 1700000000000)
        local other = peerpool.new { address_book = %q .. "2" }
        other:add_peer("unix:run/x.sock", 1700000000001)
        peerpool.book_saved = peerpool._book.save(POOL) -- (one still running at the end)
      ]], path, path))
      local text, text2 = P.read(path), P.read(path .. "2")
      os.remove(path)
      os.remove(path .. "2")
      assert.equal(0, status, err)
      assert.equal("", err)
      assert.equal("# peerpool address book v3\n127.0.0.1:7001 1700000000000 runtime -\n", text)
      assert.equal("# peerpool address book v3\n./run/x.sock 1700000000001 runtime -\n", text2)
    end)

    it("lets a script that closes its pool exit cleanly without running the loop again",
      function()
        local status, out, err = P.child([[
          local peerpool = require "peerpool"
          local path = os.tmpname()
          local pool = peerpool.new { address_book = path }
          pool:add_peer("127.0.0.1:7001")
          pool:close()
          os.remove(path)
          print("closed")
        ]])
        assert.matches("closed", out, 1, true)
        assert.equal(0, status, "exit status " .. tostring(status) .. "\n" .. err)
      end)
  end)
end)
