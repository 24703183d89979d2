-- The script the REPL specs run in the host program: a ticking timer, an echo server on
-- loopback and a pool with that server as its peer. Globals for the REPL: ticks, pool, peer.
-- With arg[1] == "loud", it prints a line every 300 ms.
-- luacheck: globals ticks pool peer
local uv = require "luv"
local peerpool = require "peerpool"

ticks = 0
local timer = uv.new_timer()
timer:start(20, 20, function() ticks = ticks + 1 end)

if arg[1] == "loud" then
  local n = 0
  local loud = uv.new_timer()
  loud:start(300, 300, function()
    n = n + 1
    print("background line " .. n)
  end)
end

local server = uv.new_tcp()
assert(server:bind("127.0.0.1", 0))
assert(server:listen(16, function(err)
  if err then return end
  local c = uv.new_tcp()
  server:accept(c)
  c:read_start(function(_, data)
    if data then c:write(data) elseif not c:is_closing() then c:close() end
  end)
end))

pool = peerpool.new { max_per_peer = 1 }
peer = assert(pool:add_peer("127.0.0.1:" .. server:getsockname().port))
print("fixture ready " .. peer)
