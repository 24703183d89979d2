-- Idle acquire + release through the Lua API with N pooled conns (the Lua twin of bench_idle.c):
-- the pool holds N connected conns to bench_server (a child process holding the far ends), all
-- idle, and a coroutine times `local c = pool:acquire(peer); c:release()` (named peer) and
-- `pool:acquire()` (any peer). Prints one line per size and path: median ns/op of --runs runs
-- of --ops ops, min-max, and the ratio to the smallest size.
-- usage: lua5.4 bench/lua_idle.lua [--build build] [--sizes 10,1000,16000] [--ops 200000]
--        [--runs 5]   (needs ulimit -n above the largest size)
local opt = { build = "build", sizes = "10,1000,16000", ops = "200000", runs = "5" }
for i = 1, #arg, 2 do opt[arg[i]:gsub("^%-%-", "")] = arg[i + 1] end
package.cpath = opt.build .. "/lua/?.so;" .. package.cpath
local uv = require "luv"
local peerpool = require "peerpool"

-- bench_server: its port on stdout; it stops when its stdin (our pipe) closes.
local stdin, stdout = uv.new_pipe(), uv.new_pipe()
local server = assert(uv.spawn(opt.build .. "/bench/bench_server", {
  args = { "--lifetime", "900" }, stdio = { stdin, stdout, 2 } }, function() end))
local port
stdout:read_start(function(_, data) port = port or (data and tonumber(data:match("%d+"))) end)
while not port do uv.run("once") end
stdout:read_stop()
local addr = "127.0.0.1:" .. port

local function median(t)
  table.sort(t)
  return t[(#t + 1) // 2]
end

local ops, runs = tonumber(opt.ops), tonumber(opt.runs)
local results = {}
for size in opt.sizes:gmatch("%d+") do
  local n = tonumber(size)
  local pool = peerpool.new { max_per_peer = n, max_total = n, client_limit = 1,
    idle_timeout = 0, acquire_timeout = 60000 }
  pool:add_peer(addr)
  local held = {}
  for _ = 1, n do
    assert(pool:acquire(addr, nil, function(err, conn)
      assert(not err, err)
      held[#held + 1] = conn
    end))
  end
  while #held < n do uv.run("once") end
  for _, c in ipairs(held) do c:release() end
  held = nil
  collectgarbage()
  for _, path in ipairs { "named", "any" } do
    local t = {}
    for _ = 1, runs do
      local ns
      peerpool.run(function()
        local peer = path == "named" and addr or nil
        for _ = 1, 1000 do pool:acquire(peer):release() end -- warm
        local t0 = uv.hrtime()
        for _ = 1, ops do pool:acquire(peer):release() end
        ns = (uv.hrtime() - t0) / ops
      end)
      t[#t + 1] = ns
    end
    local lo, hi = math.min(table.unpack(t)), math.max(table.unpack(t))
    local med = median(t)
    results[path] = results[path] or med
    print(("lua %-5s %6d conns  %7.1f ns/op  (%0.1f - %0.1f)  %.2fx"):format(path, n, med, lo, hi,
      med / results[path]))
  end
  pool:close()
  uv.run("nowait")
end
stdin:close()
uv.process_kill(server, "sigterm")
uv.run("nowait")
