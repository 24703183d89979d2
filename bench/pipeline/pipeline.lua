-- One client of the pipelining benchmark: PING through the Lua API against the redis-servers
-- in --addrs, from --clients coroutines, --requests in all (alternating between the servers).
--   --mode framed    framing = "resp", client_limit = 16, max_per_peer = 1 (2 shared conns)
--   --mode conn      the framed pool through conns: acquire, send, receive, release
--   --mode unshared  today's pool: client_limit = 1, max_per_peer = 16, send + receive("*l")
-- Prints one line: "requests seconds cpu_seconds" (the process's CPU: user + system).
local uv = require "luv"
local peerpool = require "peerpool"

local opt = { mode = "framed", clients = 32, requests = 200000 }
for i = 1, #arg, 2 do opt[arg[i]:gsub("^%-%-", "")] = arg[i + 1] end
local addrs = {}
for a in opt.addrs:gmatch("[^,]+") do addrs[#addrs + 1] = a end
local clients, total = tonumber(opt.clients), tonumber(opt.requests)
local framed = opt.mode ~= "unshared"
local by_conn = opt.mode == "conn"
local pool = peerpool.new(framed and { framing = "resp", client_limit = 16, max_per_peer = 1 }
  or { client_limit = 1, max_per_peer = 16 })
for _, a in ipairs(addrs) do pool:add_peer(a) end

local PING = "*1\r\n$4\r\nPING\r\n"
local per = total // clients
local done, failed = 0, 0
local t0, c0
local function client(i)
  for k = 1, per do
    local addr = addrs[(i + k) % #addrs + 1]
    local reply
    if by_conn then
      local conn = pool:acquire(addr)
      if conn then
        conn:send(PING)
        reply = conn:receive()
        conn:release()
      end
    elseif framed then
      reply = pool:request(addr, PING)
    else
      local conn = pool:acquire(addr)
      if conn then
        conn:send(PING)
        reply = conn:receive("*l")
        conn:release()
      end
    end
    if not reply then failed = failed + 1 end
    done = done + 1
  end
end

peerpool.run(function()
  -- warm up: every conn open before the clock starts
  for _ = 1, 2 do
    for _, a in ipairs(addrs) do
      local conn = assert(pool:acquire(a))
      conn:release()
    end
  end
  t0, c0 = uv.hrtime(), os.clock()
  for i = 1, clients do peerpool._spawn(client, i) end
end)
while done < per * clients do uv.run("once") end
local secs, cpu = (uv.hrtime() - t0) / 1e9, os.clock() - c0
pool:close()
uv.run("nowait")
if failed > 0 then io.stderr:write("pipeline.lua: ", failed, " requests failed\n") end
io.write(string.format("%d %.4f %.4f\n", done, secs, cpu))
