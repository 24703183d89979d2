-- example.lua: what the example programs (scripts/demo.lua, scripts/examples/*.lua) share. It is
-- not part of the peerpool module (which does not install it); an example finds it next to
-- itself, wherever it is run from:
--
--   package.path = arg[0]:match("^(.-)[^/]*$") .. "lib/?.lua;" .. package.path
--   local example = require "example"
--
--   example.sleep(ms)            yield the running coroutine for ms (a luv timer resumes it)
--   example.wait_for(pred, ms)   yield until pred() holds, checking every 10 ms; false if it
--                                still does not after ms
local uv = require "luv"

local M = {}

function M.sleep(ms)
  local co = assert(coroutine.running(), "example.sleep must run in a coroutine")
  local t = uv.new_timer()
  t:start(ms, 0, function()
    t:close()
    assert(coroutine.resume(co))
  end)
  coroutine.yield()
end

function M.wait_for(pred, ms)
  for _ = 1, ms // 10 do
    if pred() then return true end
    M.sleep(10)
  end
  return pred()
end

return M
