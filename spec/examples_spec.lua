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

  describe("redis_ping.lua", function()
    it("pings a real redis-server through the pool and prints the pool's stats", function()
      local exe = io.popen("command -v redis-server"):read("l")
      if not exe then
        pending("redis-server is not installed (make test installs it)")
        return
      end
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
      local cmd = string.format(
        "LUA_CPATH='%s/?.so;;' timeout 20 lua5.4 scripts/examples/redis_ping.lua 127.0.0.1:%d 2>&1",
        module_dir(), port)
      local p = io.popen(cmd)
      local out = p:read("a")
      local ok, how, code = p:close()
      assert.is_true(ok, "exit " .. tostring(how) .. " " .. tostring(code) .. ":\n" .. out)
      assert.matches("PONG", out)
      assert.matches("acquires", out)
    end)
  end)
end)
