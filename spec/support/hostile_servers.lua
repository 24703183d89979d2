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

local Server = {}
Server.__index = Server

local function close_handle(h)
  if h and not h:is_closing() then h:close() end
end

function Server:drop(client)
  if self.clients[client] then
    self.clients[client] = nil
    self.open = self.open - 1
  end
  local t = self.drips[client]
  if t then
    self.drips[client] = nil
    close_handle(t.timer)
  end
  close_handle(client)
end

function Server:drop_all()
  for client in pairs(self.clients) do self:drop(client) end
end

function Server:close()
  if self.closed then return end
  self.closed = true
  self:drop_all()
  for _, h in ipairs(self.extra) do close_handle(h) end
  close_handle(self.tcp)
end

function Server:write(client, data, cb)
  if self.clients[client] and not client:is_closing() then
    client:write(data, cb)
    return true
  end
  return false
end

-- Read until EOF/error (then drop); on_data(data) for every chunk.
local function read(srv, client, on_data)
  client:read_start(function(err, data)
    if err or data == nil then
      srv:drop(client)
      return
    end
    if on_data then on_data(data) end
  end)
end

local function new_server(kind)
  return setmetatable({ kind = kind, accepted = 0, open = 0, clients = {}, drips = {},
    extra = {}, closed = false, greeted = 0 }, Server)
end

local function bind(srv)
  local tcp = uv.new_tcp()
  assert(tcp:bind("127.0.0.1", 0))
  srv.tcp = tcp
  srv.port = tcp:getsockname().port
  srv.addr = "127.0.0.1:" .. srv.port
end

local function listen(kind, on_conn)
  local srv = new_server(kind)
  bind(srv)
  assert(srv.tcp:listen(128, function(err)
    if err or srv.closed then return end
    local client = uv.new_tcp()
    if not srv.tcp:accept(client) then
      close_handle(client)
      return
    end
    remember(client)
    srv.accepted = srv.accepted + 1
    srv.open = srv.open + 1
    srv.clients[client] = true
    on_conn(srv, client)
  end))
  return srv
end

local handlers = {}

function handlers.reset(srv, client)
  srv.clients[client] = nil
  srv.open = srv.open - 1
  client:close_reset()
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

-- A listener with backlog 0 that never accepts, its queue filled by two conns of its own: a
-- further connect gets no SYN-ACK. `on_ready(srv)` runs once the queue is full; the fillers'
-- local ports are in srv.filler_ports (their sockets are the fuzzer's, not a pool's).
local function blackhole(on_ready)
  local srv = new_server("blackhole")
  bind(srv)
  srv.filler_ports = {}
  assert(srv.tcp:listen(0, function() end))
  local function filler(n)
    local c = uv.new_tcp()
    srv.extra[#srv.extra + 1] = c
    c:connect("127.0.0.1", srv.port, function(err)
      if err or srv.closed then return end
      srv.filler_ports[c:getsockname().port] = true
      remember(c)
      local t = uv.new_timer()
      srv.extra[#srv.extra + 1] = t
      t:start(20, 0, function()
        close_handle(t)
        if n == 1 then filler(2) else on_ready(srv) end
      end)
    end)
  end
  filler(1)
  return srv
end

M.KINDS = { "refuse", "blackhole", "reset", "stall", "flood", "echo", "closer", "drip",
  "greeter" }

-- One server of `kind`. A blackhole is usable once `on_ready` has run.
function M.start(kind, on_ready)
  if kind == "refuse" then
    local srv = new_server(kind)
    bind(srv)
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
