-- Hostile TCP servers on 127.0.0.1 for the API fuzzer (spec/fuzz/), on luv's loop in the
-- fuzzer's own process. Every server binds port 0 and tells `srv.addr` / `srv.port`;
-- `srv:drop_all()` closes every conn it accepted (from its side), `srv:close()` closes it all.
--
--   refuse     bound, never listening: connects fail with ECONNREFUSED
--   blackhole  listening with a full accept queue: connects hang until connect_timeout
--   reset      accepts, then resets the conn (RST) at once
--   stall      accepts and then never reads or writes (the client's writes pile up)
--   flood      accepts and writes FLOOD_BYTES of "x" without a newline, then goes quiet
--   echo       writes back every byte it reads (lines in, the same lines out)
--   closer     echoes the first half of what it reads, then closes the conn (mid-reply)
--   drip       echoes what it reads one byte at a time, a byte every 1 ms
--   greeter    writes "HELLO <n>\r\n" as soon as it accepts (unsolicited), then echoes
--
-- Each server counts `accepted` conns and `open` conns (accepted, not yet closed from either
-- side as far as the server has seen).
--
-- The fuzzer runs them in a helper process (M.remote): then every socket of the fuzzer's own
-- process is a pool's, and a SIGPIPE that hits the fuzzer is the pool's doing, not an echo
-- server's writing to a conn the pool just dropped.
--   lua5.4 spec/support/hostile_servers.lua serve KIND...   prints "KIND PORT" lines, then
--   "READY"; reads "DROP" (drop every accepted conn) and "QUIT" (or EOF) on stdin.
local uv = require "luv"

local M = {}

M.FLOOD_BYTES = 4 * 1024 * 1024

-- Socket inodes of the servers' own conns (accepted, and the blackhole's fillers), so that a
-- count of the process's sockets can leave them out even once they are unhashed (reset).
M.inodes = {}

local function remember(handle)
  local fd = handle:fileno()
  local target = fd and uv.fs_readlink("/proc/self/fd/" .. fd)
  local inode = target and target:match("^socket:%[(%d+)%]$")
  if inode then M.inodes[inode] = true end
end

-- The server object, listen and blackhole of servers.lua, loaded by path: this file also runs
-- on its own as the helper process (M.remote), where spec.support is not on the module path.
local base = dofile(debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") .. "servers.lua")
local close_handle = base.close_handle

-- A hostile server also keeps the drip queue of each conn (handlers.drip).
local Server = setmetatable({}, { __index = base.Server })
Server.__index = Server

function Server:drop(client)
  local t = self.drips[client]
  if t then
    self.drips[client] = nil
    close_handle(t.timer)
  end
  base.Server.drop(self, client)
end

-- Big floods and echoes: not kept in srv.received.
local function new_server(kind)
  return base.new_server(Server, { kind = kind, drips = {}, greeted = 0, received = false })
end

local read = base.read

local function listen(kind, on_conn)
  return base.listen(function(srv, client)
    remember(client)
    on_conn(srv, client)
  end, { srv = new_server(kind) })
end

local handlers = {}

function handlers.reset(srv, client)
  srv:reset(client)
end

function handlers.stall() end -- never reads, never writes; dropped by drop_all/close

function handlers.flood(srv, client)
  local chunk = string.rep("x", 64 * 1024)
  local sent = 0
  local function more()
    if sent >= M.FLOOD_BYTES then return end
    sent = sent + #chunk
    srv:write(client, chunk, function(err) if not err then more() end end)
  end
  more()
  read(srv, client) -- only to see the client go
end

function handlers.echo(srv, client)
  read(srv, client, function(data) srv:write(client, data) end)
end

function handlers.closer(srv, client)
  read(srv, client, function(data)
    srv:write(client, data:sub(1, math.max(1, #data // 2)))
    srv:drop(client)
  end)
end

function handlers.drip(srv, client)
  local q = { data = "", timer = uv.new_timer() }
  srv.drips[client] = q
  q.timer:start(1, 1, function()
    if #q.data == 0 then return end
    local byte = q.data:sub(1, 1)
    q.data = q.data:sub(2)
    srv:write(client, byte)
  end)
  read(srv, client, function(data) q.data = q.data .. data end)
end

function handlers.greeter(srv, client)
  srv.greeted = srv.greeted + 1
  srv:write(client, "HELLO " .. srv.greeted .. "\r\n")
  read(srv, client, function(data) srv:write(client, data) end)
end

-- servers.lua's blackhole; the fillers' local ports are in srv.filler_ports (their sockets are
-- the fuzzer's, not a pool's).
local function blackhole(on_ready)
  local srv = new_server("blackhole")
  srv.filler_ports = {}
  return base.blackhole(on_ready, function(c)
    srv.filler_ports[c:getsockname().port] = true
    remember(c)
  end, srv)
end

M.KINDS = { "refuse", "blackhole", "reset", "stall", "flood", "echo", "closer", "drip",
  "greeter" }

-- One server of `kind`. A blackhole is usable once `on_ready` has run.
function M.start(kind, on_ready)
  if kind == "refuse" then
    local srv = assert(base.bind(new_server(kind)))
    if on_ready then on_ready(srv) end
    return srv
  elseif kind == "blackhole" then
    return blackhole(on_ready or function() end)
  end
  local h = assert(handlers[kind], "unknown server kind " .. tostring(kind))
  local srv = listen(kind, h)
  if on_ready then on_ready(srv) end
  return srv
end

-- The servers in a helper process. `on_ready(list)` gets { kind =, port =, addr = } per
-- server once all listen. Returns a controller: ctl:drop_all(), ctl:close().
function M.remote(kinds, on_ready)
  local script = debug.getinfo(1, "S").source:match("^@(.*)$")
  local stdin, stdout = uv.new_pipe(false), uv.new_pipe(false)
  local env = {}
  for k, v in pairs(uv.os_environ()) do
    if k ~= "LD_PRELOAD" and k ~= "PEERPOOL_GC_STRESS" then env[#env + 1] = k .. "=" .. v end
  end
  local args = { script, "serve" }
  for _, k in ipairs(kinds) do args[#args + 1] = k end
  local ctl = { list = {} }
  local proc = uv.spawn("lua5.4", { args = args, stdio = { stdin, stdout, 2 }, env = env },
    function() ctl.exited = true end)
  assert(proc, "could not start the hostile servers' helper")
  ctl.proc = proc
  local buf = ""
  stdout:read_start(function(err, data)
    if err or not data then return end
    buf = buf .. data
    while true do
      local line, rest = buf:match("^([^\n]*)\n(.*)$")
      if not line then break end
      buf = rest
      local kind, port = line:match("^(%a+) (%d+)$")
      if kind then
        port = tonumber(port)
        ctl.list[#ctl.list + 1] = { kind = kind, port = port, addr = "127.0.0.1:" .. port }
      elseif line == "READY" then
        on_ready(ctl.list)
      end
    end
  end)
  function ctl.drop_all() if not stdin:is_closing() then stdin:write("DROP\n") end end
  function ctl.close()
    if not stdin:is_closing() then
      stdin:write("QUIT\n")
      stdin:close()
    end
    if not stdout:is_closing() then stdout:close() end
    if not proc:is_closing() then proc:close() end
  end
  return ctl
end

local function serve(kinds)
  -- writes to a conn the other side dropped must fail with EPIPE, not end the helper
  local sig = uv.new_signal()
  sig:start("sigpipe", function() end)
  sig:unref()
  local servers, pending = {}, #kinds
  local function ready()
    pending = pending - 1
    if pending > 0 then return end
    for _, srv in ipairs(servers) do io.stdout:write(srv.kind, " ", srv.port, "\n") end
    io.stdout:write("READY\n")
    io.stdout:flush()
  end
  for _, kind in ipairs(kinds) do servers[#servers + 1] = M.start(kind, ready) end
  local stdin = uv.new_pipe(false)
  stdin:open(0)
  local buf = ""
  local function quit()
    for _, srv in ipairs(servers) do srv:close() end
    if not stdin:is_closing() then stdin:close() end
    sig:close()
  end
  stdin:read_start(function(err, data)
    if err or not data then return quit() end
    buf = buf .. data
    while true do
      local line, rest = buf:match("^([^\n]*)\n(.*)$")
      if not line then break end
      buf = rest
      if line == "DROP" then
        for _, srv in ipairs(servers) do srv:drop_all() end
      elseif line == "QUIT" then
        return quit()
      end
    end
  end)
  uv.run()
end

if arg and arg[0] and arg[0]:match("hostile_servers%.lua$") and arg[1] == "serve" then
  serve({ table.unpack(arg, 2) })
else
  return M
end
