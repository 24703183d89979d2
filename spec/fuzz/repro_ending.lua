-- How a reproducer whose finding shows up later on the loop ends: after `ms`, it closes its pool
-- and the holding server (spec/fuzz/holding_server.lua), runs the loop until nothing is left on
-- it, and says "ok: done" (reached only when the finding did not crash the process).
local uv = require "luv"

return function(ms, pool, close_server)
  local t = uv.new_timer()
  t:start(ms, 0, function()
    t:close()
    pool:close()
    close_server()
  end)
  uv.run()
  print("ok: done")
end
