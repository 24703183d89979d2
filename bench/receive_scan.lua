-- receive("*l") cost when a long line arrives in many reads, and many short lines sit in one
-- buffer: with a scan of only new bytes and an offset buffer both are linear.
--   LUA_CPATH="build/lua/?.so;;" lua5.4 bench/receive_scan.lua
local uv = require "luv"
local peerpool = require "peerpool"

local LINE = 900 * 1024 -- bytes of one long line (under the default max_receive)
local SHORT = 100000    -- short lines in one burst

-- The specs' loopback server scaffolding (run from the repository root, as above).
local servers = require "spec.support.servers"

local srv = servers.listen(function(s, c)
  servers.read(s, c, function(data)
    if data:find("LONG", 1, true) then
      -- the long line in 1 KiB writes: many reads on the other side
      for i = 1, LINE // 1024 do s:write(c, string.rep("x", i == LINE // 1024 and 1023 or 1024)) end
      s:write(c, "\n")
    elseif data:find("MANY", 1, true) then
      s:write(c, string.rep("line\n", SHORT))
    end
  end)
end, { srv = servers.new_server(nil, { received = false }) }) -- (what it reads is not kept)
local addr = srv.addr
local pool = peerpool.new { peers = { addr } }

peerpool.run(function()
  local conn = assert(pool:acquire(addr))
  local t0 = os.clock()
  conn:send("LONG\n")
  assert(#conn:receive() == LINE - 1)
  local long_ms = (os.clock() - t0) * 1000
  t0 = os.clock()
  conn:send("MANY\n")
  for _ = 1, SHORT do assert(conn:receive() == "line") end
  local many_ms = (os.clock() - t0) * 1000
  conn:release()
  print(("| case | CPU ms |\n|---|---|\n| one %d KiB line in 1 KiB reads | %.1f |\n" ..
    "| %d short lines from one burst | %.1f |"):format(LINE // 1024, long_ms, SHORT, many_ms))
end)
pool:close()
srv:close()
uv.run()
