-- The examples in scripts/examples/ run as documented, against real servers.
describe("scripts/examples", function()

  -- The directory of the peerpool module busted was pointed at (--cpath).
  local function module_dir()
    local so = assert(package.searchpath("peerpool", package.cpath), "peerpool.so not found")
    return so:match("^(.*)/[^/]+$")
  end

  local free_port = require "spec.support.helpers".free_port

  -- redis-servers started by the running test: busted keeps one finally per test, so one
  -- list, killed after each test.
  local started = {}
  after_each(function()
    for _, pid in ipairs(started) do os.execute("kill -9 " .. pid .. " 2>/dev/null") end
    started = {}
  end)

  -- Start `redis-server <args(port)>` on `port`, or on a free port (tried again on another
  -- when a test running in parallel took it first), killed when the test ends; waits until its
  -- log says it is ready. Returns the port and the pid.
  local function start_redis(exe, args, port)
    for attempt = 1, 3 do
      local p = port or free_port()
      local log = os.tmpname()
      local pid = io.popen(string.format("exec %s %s >%s 2>&1 & echo $!", exe, args(p), log))
        :read("l")
      started[#started + 1] = pid
      local text
      for _ = 1, 100 do
        local f = io.open(log)
        text = f and f:read("a") or ""
        if f then f:close() end
        if text:find("Ready to accept connections", 1, true) or
          text:find("Failed listening on port", 1, true) then break end
        os.execute("sleep 0.05")
      end
      os.remove(log)
      if text:find("Ready to accept connections", 1, true) then return p, pid end
      assert(not port and attempt < 3, "redis-server did not start on port " .. p .. ":\n" .. text)
    end
  end

  -- Start a redis-server on a free loopback port (or `port`), killed when the test ends; its
  -- address, pid and port, or nil when redis-server is not installed.
  local function redis(port)
    local exe = io.popen("command -v redis-server"):read("l")
    if not exe then return nil end
    local server
    port, server = start_redis(exe, function(p)
      return string.format("--port %d --bind 127.0.0.1 --save '' --appendonly no --daemonize no", p)
    end, port)
    return "127.0.0.1:" .. port, server, port
  end

  -- Run an example with lua5.4 (20 s at most); its output and whether it exited with 0.
  local function run(script, args, env)
    local cmd = string.format(
      "%s LUA_CPATH='%s/?.so;;' timeout 20 lua5.4 scripts/examples/%s %s 2>&1",
      env or "", module_dir(), script, table.concat(args, " "))
    local p = io.popen(cmd)
    local out = p:read("a")
    local ok, how, code = p:close()
    assert.is_true(ok, "exit " .. tostring(how) .. " " .. tostring(code) .. ":\n" .. out)
    return out
  end

  describe("redis_ping.lua", function()
    it("pings a real redis-server through the pool and prints the pool's stats", function()
      local addr = redis()
      if not addr then return pending("redis-server is not installed (make test installs it)") end
      local out = run("redis_ping.lua", { addr })
      assert.matches("PONG", out)
      assert.matches("acquires", out)
    end)
  end)

  describe("redis_hostname.lua", function()
    it("PINGs a real redis-server named localhost:PORT and shows the address it resolved to",
      function()
        local addr = redis()
        if not addr then return pending("redis-server is not installed (make test installs it)") end
        local port = addr:match(":(%d+)$")
        local out = run("redis_hostname.lua", { "localhost:" .. port })
        local name = "localhost:" .. port
        assert.matches("ping 3: %+PONG via " .. name .. " %(127%.0%.0%.1:" .. port .. "%)", out)
        assert.matches(name .. " resolves to 127%.0%.0%.1:" .. port .. ": 1 conns", out)
        assert.matches(name .. " resolves to %[::1%]:" .. port .. ": 0 conns", out)
      end)
  end)

  describe("redis_drain.lua", function()
    it("warms conns, drains and removes a backend, and closes gracefully without a failure",
      function()
        local blue = redis()
        if not blue then return pending("redis-server is not installed (make test installs it)") end
        local green = redis()
        local out = run("redis_drain.lua", { blue, green })
        assert.matches("warm before the first request: 4 idle conns %(min_idle 2 per backend%)",
          out)
        assert.matches("blue drained in %d+ ms: 0 conns", out)
        assert.matches("blue removed: peers now 1", out)
        assert.matches("blue served %d+ requests before its drain, 0 after", out)
        assert.matches("closed gracefully: true", out)
        local ok, failed = out:match("requests: (%d+) ok, (%d+) failed")
        assert.is_true(tonumber(ok) > 0, out)
        assert.equal("0", failed, out)
      end)
  end)

  describe("redis_shards.lua", function()
    it("keeps every key on its shard while one of three redis-servers dies and comes back",
      function()
        local a = redis()
        if not a then return pending("redis-server is not installed (make test installs it)") end
        local b, b_pid, b_port = redis()
        local c = redis()
        local out = os.tmpname()
        local done = os.tmpname()
        os.execute(string.format(
          "(DURATION=4000 LUA_CPATH='%s/?.so;;' timeout 20 lua5.4 " ..
          "scripts/examples/redis_shards.lua" ..
          " %s %s %s > %s 2>&1; echo $? > %s) &", module_dir(), a, b, c, out, done))
        os.execute("sleep 1")
        os.execute("kill -9 " .. b_pid) -- the shard dies mid-run
        os.execute("sleep 0.7")
        redis(b_port) -- and comes back on the same port
        local status
        for _ = 1, 200 do
          local f = io.open(done)
          status = f and f:read("n")
          if f then f:close() end
          if status then break end
          os.execute("sleep 0.1")
        end
        local f = assert(io.open(out))
        local text = f:read("a")
        f:close()
        os.remove(out)
        os.remove(done)
        assert.equal(0, status, text)
        assert.matches("wrong_shard=0 bad_reads=0", text, 1, true)
        local failed = tonumber(text:match("failed=(%d+)"))
        assert.is_true(failed > 0, "nothing failed while a shard was down?\n" .. text)
        -- the other shards never failed: every failure names the dead shard's causes
        for code in (text:match("%((.-)%)") or ""):gmatch("([%w_]+):%d+") do
          assert.is_truthy(({ ejected = 1, cannot_connect = 1, closed = 1, ECONNRESET = 1,
            EPIPE = 1, ECONNREFUSED = 1, timeout = 1 })[code], code .. " in\n" .. text)
        end
        -- the shard that came back serves again well before the end
        local since = tonumber(text:match(b:gsub("%p", "%%%0") .. "=%d+%(last (%d+) ms"))
        assert.is_true(since and since < 1500, "the restarted shard never served again\n" .. text)
      end)
  end)

  describe("redis_workers.lua", function()
    it("runs ten workers with Lua hooks over three real redis-servers, every GET right",
      function()
        local addrs = { (redis()), (redis()), (redis()) }
        if not addrs[1] then
          return pending("redis-server is not installed (make test installs it)")
        end
        local out = run("redis_workers.lua", addrs, "ROUNDS=100")
        for w = 1, 10 do assert.matches("worker " .. w .. ": 127", out, 1, true) end
        assert.matches("pool: 1000 acquires, %d+ conns opened, %d+ handshakes, 0 hook errors, " ..
          "0 failures", out)
      end)
  end)

  describe("metrics_server.lua", function()
    it("serves its pool's metrics while it PINGs a real redis-server, and reads them back",
      function()
        local addr = redis()
        if not addr then return pending("redis-server is not installed (make test installs it)") end
        local out = run("metrics_server.lua", { addr }, "PORT=0 SECONDS=1")
        assert.matches("metrics on http://127%.0%.0%.1:%d+/metrics", out)
        assert.matches("scraped %d+ bytes: HTTP/1%.1 200 OK", out)
        local acquires = tonumber(out:match('\npeerpool_acquires_total{pool="redis"} (%d+)\n'))
        assert.is_true(acquires and acquires >= 5, out)
        assert.matches('peerpool_peer_state{pool="redis",peer="' .. addr .. '",state="ready"} 1',
          out, 1, true)
      end)
  end)

  describe("redis_tls.lua", function()
    it("PINGs a redis-server over TLS through the pool; the second conn resumes the session",
      function()
        local exe = io.popen("command -v redis-server"):read("l")
        if not exe or os.execute("command -v openssl >/dev/null") ~= true then
          return pending("needs redis-server and openssl (make test installs them)")
        end
        local dir = os.tmpname()
        os.remove(dir)
        assert(os.execute("mkdir -p " .. dir .. " && sh spec/c/tls_certs.sh " .. dir) == true)
        local port = start_redis(exe, function(p)
          return string.format(
            "--port 0 --tls-port %d --bind 127.0.0.1 --tls-cert-file %s/server.pem " ..
            "--tls-key-file %s/server.key --tls-ca-cert-file %s/ca.pem --tls-auth-clients no " ..
            "--save '' --appendonly no --dir %s", p, dir, dir, dir, dir)
        end)
        local ok, out = pcall(run, "redis_tls.lua", { "127.0.0.1:" .. port, dir .. "/ca.pem" })
        os.execute("rm -rf " .. dir)
        assert(ok, out)
        assert.matches("worker 4, ping 5: %+PONG", out)
        assert.matches("tls: 1 full handshakes, 1 resumed, 0 failed; 20 PINGs on 2 conns", out)
      end)
  end)
end)
