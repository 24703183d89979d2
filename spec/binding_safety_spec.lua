-- Lifetimes across the Lua/engine boundary: objects collected while the engine still owes
-- them a call, and Lua code that runs inside an engine decision. Under the sanitizer build
-- these are use-after-free checks; in any build they must end cleanly.
local uv = require "luv"
local peerpool = require "peerpool"

local function echo_server()
  local s = uv.new_tcp()
  s:bind("127.0.0.1", 0)
  s:listen(64, function()
    local c = uv.new_tcp()
    s:accept(c)
    c:read_start(function(_, data)
      if data then c:write(data) elseif not c:is_closing() then c:close() end
    end)
  end)
  return s, "127.0.0.1:" .. s:getsockname().port
end

local function refused()
  local s = uv.new_tcp()
  s:bind("127.0.0.1", 0)
  return s, "127.0.0.1:" .. s:getsockname().port
end

local function turn(n)
  for _ = 1, n or 10 do uv.run("nowait") end
end

local function close_all(...)
  for _, h in ipairs { ... } do if not h:is_closing() then h:close() end end
  turn()
end

describe("peerpool lifetimes", function()
  it("survives a reading conn collected after its pool closed under it", function()
    local srv, addr = echo_server()
    local pool = peerpool.new { peers = { addr } }
    peerpool.run(function()
      local conn = assert(pool:acquire(addr))
      conn:send("x\n")
      assert.equal("x", conn:receive("*l")) -- the conn object is now the engine's reader
      pool:close()                            -- detaches the lease; a final read call is owed
    end)
    collectgarbage()
    collectgarbage()                          -- the conn object is gone before that call
    turn()
    close_all(srv)
  end)

  it("puts off closing a pool its own hook collected, and closes it after", function()
    local dead, addr = refused()
    local ran = 0
    local holder = {} -- luacheck: ignore (only the pool's last reference; the hook drops it)
    holder.pool = peerpool.new { peers = { addr }, retries = 0, target_peers = 1,
      maintenance_interval = 10, policy = {
        backoff = function()
          ran = ran + 1
          holder.pool = nil -- the last reference goes, and the hook runs the collector
          collectgarbage()
          collectgarbage()
          return 50
        end } }
    local deadline = uv.now() + 2000
    while ran == 0 and uv.now() < deadline do uv.run("once") end
    assert.is_true(ran >= 1)
    turn(20)
    assert.same({}, peerpool.pools())
    close_all(dead)
  end)

  it("contains a seed hook that closes its own pool", function()
    local pool
    pool = peerpool.new { policy = { seed = function() pool:close() end } }
    local got
    assert.is_true(pool:acquire(nil, { timeout = 200 }, function(err) got = err end))
    local deadline = uv.now() + 2000
    while got == nil and uv.now() < deadline do uv.run("once") end
    assert.equal("timeout", got)
    local st = pool:stats()
    assert.equal(1, st.hooks.seed.errors)
    pool:close()
    turn()
  end)

  it("does not resume a receive from a finaliser at exit", function()
    local srv, addr = echo_server()
    local so = assert(package.searchpath("peerpool", package.cpath))
    local script = string.format([[
      package.cpath = %q .. ";" .. package.cpath
      local uv = require "luv"
      local peerpool = require "peerpool"
      local pool = peerpool.new { peers = { %q }, io_timeout = 0 }
      peerpool.spawn(function()
        local c = assert(pool:acquire(%q))
        c:receive("*l") -- waits forever
        print("resumed after exit")
      end)
      local t = uv.new_timer()
      t:start(50, 0, function() os.exit(0, true) end)
      uv.run()
    ]], so:gsub("peerpool%.so$", "?.so"), addr, addr)
    local path = os.tmpname()
    local fh = assert(io.open(path, "w"))
    fh:write(script)
    fh:close()
    local f = io.popen("lua5.4 " .. path .. " 2>&1")
    local out = f:read("a")
    local ok = f:close()
    os.remove(path)
    assert.is_true(ok, out)
    assert.not_matches("resumed after exit", out)
    close_all(srv)
  end)
end)
