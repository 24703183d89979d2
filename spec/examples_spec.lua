-- The examples in scripts/examples/ run as documented, against real servers.
describe("scripts/examples", function()
  local uv = require "luv"

  -- The directory of the peerpool module busted was pointed at (--cpath).
  local function module_dir()
    local so = assert(package.searchpath("peerpool", package.cpath), "peerpool.so not found")
    return so:match("^(.*)/[^/]+$")
  end

  local function free_port()
    local t = uv.new_tcp()
    t:bind("127.0.0.1", 0)
    local port = t:getsockname().port
    t:close()
    uv.run("nowait") -- finish the close: luv crashes at exit on a handle still closing
    return port
  end

  -- Start a redis-server on a free loopback port (killed when the test ends); its address, or
  -- nil when redis-server is not installed.
  local function redis()
    local exe = io.popen("command -v redis-server"):read("l")
    if not exe then return nil end
    local port = free_port()
    local server = io.popen(string.format(
      "exec %s --port %d --bind 127.0.0.1 --save '' --appendonly no --daemonize no " ..
      ">/dev/null 2>&1 & echo $!", exe, port)):read("l")
    finally(function() os.execute("kill " .. server .. " 2>/dev/null") end)
    -- wait until it answers (redis-cli comes with redis-server on Debian)
    for _ = 1, 100 do
      local r = io.popen(string.format("redis-cli -p %d ping 2>/dev/null", port)):read("a")
      if r:match("PONG") then break end
      os.execute("sleep 0.05")
    end
    return "127.0.0.1:" .. port
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

  describe("redis_workers.lua", function()
    it("runs ten workers with Lua hooks over three real redis-servers, every GET right",
      function()
        local addrs = { redis(), redis(), redis() }
        if not addrs[1] then
          return pending("redis-server is not installed (make test installs it)")
        end
        local out = run("redis_workers.lua", addrs, "ROUNDS=100")
        for w = 1, 10 do assert.matches("worker " .. w .. ": 127", out, 1, true) end
        for _, addr in ipairs(addrs) do assert.matches(addr .. "=", out, 1, true) end
        assert.matches("pool: 1000 acquires, %d+ conns opened, %d+ handshakes, 0 hook errors, " ..
          "0 failures", out)
      end)
  end)
end)
