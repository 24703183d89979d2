-- The examples in scripts/examples/ run as documented, against real servers.
describe("scripts/examples", function()

  -- The directory of the peerpool module busted was pointed at (--cpath).
  local function module_dir()
    local so = assert(package.searchpath("peerpool", package.cpath), "peerpool.so not found")
    return so:match("^(.*)/[^/]+$")
  end

  local redis = require "spec.support.redis"
  after_each(redis.kill_started)

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

  -- A test that needs n redis-servers: body(servers) runs once they answer, each server
  -- { addr =, pid =, port = }; pending when redis-server is not installed.
  local function it_with_redis(name, n, body)
    it(name, function()
      local servers = {}
      for i = 1, n do
        local addr, pid, port = redis.start()
        if not addr then return pending(redis.MISSING) end
        servers[i] = { addr = addr, pid = pid, port = port }
      end
      body(servers)
    end)
  end

  -- it_with_redis that runs the example `script` on the servers' addresses (with `env`) and
  -- hands its output and the addresses to check(out, addrs).
  local function it_on_redis(name, n, script, env, check)
    it_with_redis(name, n, function(servers)
      local addrs = {}
      for i, s in ipairs(servers) do addrs[i] = s.addr end
      check(run(script, addrs, env), addrs)
    end)
  end

  describe("redis_ping.lua", function()
    it_on_redis("pings a real redis-server through the pool and prints the pool's stats", 1,
      "redis_ping.lua", nil, function(out)
        assert.matches("PONG", out)
        assert.matches("acquires", out)
      end)
  end)

  describe("redis_hostname.lua", function()
    it_with_redis("PINGs a real redis-server named localhost:PORT and shows the address it " ..
      "resolved to", 1, function(servers)
        local port = servers[1].port
        local out = run("redis_hostname.lua", { "localhost:" .. port })
        local name = "localhost:" .. port
        assert.matches("ping 3: %+PONG via " .. name .. " %(127%.0%.0%.1:" .. port .. "%)", out)
        assert.matches(name .. " resolves to 127%.0%.0%.1:" .. port .. ": 1 conns", out)
        assert.matches(name .. " resolves to %[::1%]:" .. port .. ": 0 conns", out)
      end)
  end)

  describe("redis_drain.lua", function()
    it_on_redis("warms conns, drains and removes a backend, and closes gracefully without a " ..
      "failure", 2, "redis_drain.lua", nil, function(out)
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
    it_with_redis("keeps every key on its shard while one of three redis-servers dies and " ..
      "comes back", 3, function(servers)
        local a, b, c = servers[1].addr, servers[2].addr, servers[3].addr
        local b_pid, b_port = servers[2].pid, servers[2].port
        local out = os.tmpname()
        local done = os.tmpname()
        os.execute(string.format(
          "(DURATION=4000 LUA_CPATH='%s/?.so;;' timeout 20 lua5.4 " ..
          "scripts/examples/redis_shards.lua" ..
          " %s %s %s > %s 2>&1; echo $? > %s) &", module_dir(), a, b, c, out, done))
        os.execute("sleep 1")
        os.execute("kill -9 " .. b_pid) -- the shard dies mid-run
        os.execute("sleep 0.7")
        redis.start(b_port) -- and comes back on the same port
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
    it_on_redis("runs ten workers with Lua hooks over three real redis-servers, every GET right",
      3, "redis_workers.lua", "ROUNDS=100", function(out)
        for w = 1, 10 do assert.matches("worker " .. w .. ": 127", out, 1, true) end
        assert.matches("pool: 1000 acquires, %d+ conns opened, %d+ handshakes, 0 hook errors, " ..
          "0 failures", out)
      end)
  end)

  describe("metrics_server.lua", function()
    it_on_redis("serves its pool's metrics while it PINGs a real redis-server, and reads them " ..
      "back", 1, "metrics_server.lua", "PORT=0 SECONDS=1", function(out, addrs)
        local addr = addrs[1]
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
        local _, _, port = redis.start(nil, function(p)
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
