-- The reproducers' peer: a TCP listener on 127.0.0.1 that accepts every conn and holds it
-- (never reads, never writes). Returns its address and a function that closes it all.
local uv = require "luv"

return function()
  local srv, clients = uv.new_tcp(), {}
  srv:bind("127.0.0.1", 0)
  srv:listen(8, function()
    local c = uv.new_tcp()
    srv:accept(c)
    clients[#clients + 1] = c
  end)
  local function close()
    srv:close()
    for _, c in ipairs(clients) do c:close() end
  end
  return "127.0.0.1:" .. srv:getsockname().port, close
end
