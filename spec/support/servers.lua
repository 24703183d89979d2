-- Real TCP servers on 127.0.0.1 for the specs, on luv's loop (the pool's loop). Every server
-- binds port 0 and tells its address in `srv.addr`; `srv:close()` closes the listener, every
-- accepted conn and every timer the server started, so a test leaves nothing on the loop.
--
--   servers.echo()       writes back every byte it reads
--   servers.echo_on(p)   the same on port p of 127.0.0.1 (to restart a server)
--   servers.line()       a line protocol (see LINE COMMANDS below)
--   servers.refused()    a port where nothing listens (bound, not listening: ECONNREFUSED)
--   servers.closer()     answers "par" to the first bytes of a conn and closes it (mid-use)
--   servers.slow(ms)     answers each line with "+SLOW\r\n" after `ms`
--   servers.ordered()    answers like line() (PING, ECHO, SLEEP), always in request order
--   servers.blackhole()  a listener whose accept queue is full: connects hang (connect_timeout)
--   servers.echo6()      the echo server on [::1] (nil, why when IPv6 is not available)
--   servers.unix_echo()  the echo server on a unix socket (addr "unix:/tmp/...")
--
-- Each server counts `accepted` conns, `open` conns, and keeps `lines` (line and slow servers)
-- and `received` (all bytes, concatenated). `srv:drop_all()` closes every accepted conn from
-- the server's side (a remote close).
local uv = require "luv"

local M = {}

-- The server object every spec server is (policy_servers.lua and hostile_servers.lua build theirs
-- on it too): the counters, the accepted conns, the timers and extra handles it closes.
local Server = {}
Server.__index = Server
M.Server = Server

-- A fresh server of `class` (Server, or a table whose __index leads to it) with `fields` added.
function M.new_server(class, fields)
  local srv = setmetatable({ accepted = 0, open = 0, lines = {}, received = "", clients = {},
    timers = {}, extra = {}, closed = false }, class or Server)
  for k, v in pairs(fields or {}) do srv[k] = v end
  return srv
end

-- Close a handle once, whatever its state.
local function close_handle(h)
  if h and not h:is_closing() then h:close() end
end
M.close_handle = close_handle

function Server:timer(ms, fn)
  local t = uv.new_timer()
  self.timers[t] = true
  t:start(ms, 0, function()
    self.timers[t] = nil
    close_handle(t)
    fn()
  end)
  return t
end

-- Call fn() every `ms` until it returns false (or the server closes).
function Server:every(ms, fn)
  local t = uv.new_timer()
  self.timers[t] = true
  t:start(ms, ms, function()
    if fn() == false then
      self.timers[t] = nil
      close_handle(t)
    end
  end)
  return t
end

function Server:drop(client)
  if self.clients[client] then
    self.clients[client] = nil
    self.open = self.open - 1
  end
  close_handle(client)
end

-- Reset `client` (RST: the other side sees ECONNRESET).
function Server:reset(client)
  if self.clients[client] then
    self.clients[client] = nil
    self.open = self.open - 1
    client:close_reset()
  end
end

function Server:drop_all()
  for client in pairs(self.clients) do self:drop(client) end
end

function Server:close()
  if self.closed then return end
  self.closed = true
  self:drop_all()
  for t in pairs(self.timers) do close_handle(t) end
  self.timers = {}
  for _, h in ipairs(self.extra) do close_handle(h) end
  close_handle(self.tcp)
  if self.path then os.remove(self.path) end
end

-- Write to `client` if it is still open; returns whether it did.
function Server:write(client, data, cb)
  if self.clients[client] and not client:is_closing() then
    client:write(data, cb)
    return true
  end
  return false
end

-- Bind `srv` (opts.kind: nil = 127.0.0.1, "ipv6" = [::1], "unix"; opts.port: a given TCP port
-- rather than a fresh one) and set srv.tcp, srv.addr and srv.port (TCP) or srv.path (unix).
-- Returns srv, or nil, why when the address cannot be bound.
function M.bind(srv, opts)
  local kind = opts and opts.kind
  local tcp
  if kind == "unix" then
    local path = os.tmpname()
    os.remove(path)
    tcp = uv.new_pipe(false)
    assert(tcp:bind(path))
    srv.path = path
    srv.addr = "unix:" .. path
  else
    tcp = uv.new_tcp()
    local host = kind == "ipv6" and "::1" or "127.0.0.1"
    local ok, err = tcp:bind(host, opts and opts.port or 0)
    if not ok then
      tcp:close()
      return nil, err
    end
    srv.port = tcp:getsockname().port
    srv.addr = kind == "ipv6" and ("[::1]:" .. srv.port) or ("127.0.0.1:" .. srv.port)
  end
  srv.tcp = tcp
  return srv
end

-- Bind (M.bind) and listen with `on_conn(srv, client)` for every accepted conn; on_conn nil:
-- bound, never listening. opts: kind, port, backlog, srv (a server from M.new_server to use).
function M.listen(on_conn, opts)
  opts = opts or {}
  local srv, err = M.bind(opts.srv or M.new_server(), opts)
  if not srv then return nil, err end
  if on_conn == nil then return srv end
  local tcp = srv.tcp
  assert(tcp:listen(opts.backlog or 128, function(lerr)
    if lerr or srv.closed then return end
    local client = opts.kind == "unix" and uv.new_pipe(false) or uv.new_tcp()
    if not tcp:accept(client) then
      close_handle(client)
      return
    end
    srv.accepted = srv.accepted + 1
    srv.open = srv.open + 1
    srv.clients[client] = true
    on_conn(srv, client)
  end))
  return srv
end
local listen = M.listen

-- Read from `client`; `on_data(data)` (if given) for each chunk, kept in srv.received too
-- unless that is false; the server drops the conn at EOF/error.
function M.read(srv, client, on_data)
  client:read_start(function(err, data)
    if err or data == nil then
      srv:drop(client)
      return
    end
    if srv.received then srv.received = srv.received .. data end
    if on_data then on_data(data) end
  end)
end
local read = M.read

-- Split `data` into lines (the buffer is per conn); call `on_line(line)` without \r\n.
local function line_reader(srv, client, on_line)
  local buf = ""
  read(srv, client, function(data)
    buf = buf .. data
    while true do
      local line, rest = buf:match("^(.-)\r?\n(.*)$")
      if not line then break end
      buf = rest
      srv.lines[#srv.lines + 1] = line
      on_line(line)
    end
  end)
end

local function echo(srv, client)
  read(srv, client, function(data) srv:write(client, data) end)
end

function M.echo() return listen(echo) end
-- The echo server on a given port of 127.0.0.1 (a server closed there comes back: a restart);
-- nil, why if the port cannot be bound.
function M.echo_on(port) return listen(echo, { port = port }) end
function M.echo6() return listen(echo, { kind = "ipv6" }) end
function M.unix_echo() return listen(echo, { kind = "unix" }) end

-- LINE COMMANDS (one per line, answered on the same conn):
--   PING          +PONG\r\n
--   ECHO <text>   <text>\r\n
--   TWO           one\r\ntwo\r\n (two lines in one write)
--   LF            bare\n (a line ended by \n alone)
--   SPLIT         hel, then lo\r\n 30 ms later (a line in two writes)
--   BYTES <n>     n bytes "x"
--   PARTIAL       par (no end of line; the conn stays open)
--   HALF          par, then the server closes the conn (closed mid-use)
--   QUIT          bye\r\n, then the server closes the conn
--   RESET         the server resets the conn (RST: ECONNRESET)
--   SLEEP <ms>    +WOKE\r\n after ms
--   SILENT        nothing
function M.line()
  return listen(function(srv, client)
    line_reader(srv, client, function(line)
      local cmd, arg = line:match("^(%S+)%s?(.*)$")
      if cmd == "PING" then
        srv:write(client, "+PONG\r\n")
      elseif cmd == "ECHO" then
        srv:write(client, arg .. "\r\n")
      elseif cmd == "TWO" then
        srv:write(client, "one\r\ntwo\r\n")
      elseif cmd == "LF" then
        srv:write(client, "bare\n")
      elseif cmd == "SPLIT" then
        srv:write(client, "hel")
        srv:timer(30, function() srv:write(client, "lo\r\n") end)
      elseif cmd == "BYTES" then
        srv:write(client, string.rep("x", tonumber(arg)))
      elseif cmd == "PARTIAL" then
        srv:write(client, "par")
      elseif cmd == "HALF" then
        srv:write(client, "par")
        srv:drop(client)
      elseif cmd == "QUIT" then
        srv:write(client, "bye\r\n")
        srv:drop(client)
      elseif cmd == "RESET" then
        srv:reset(client)
      elseif cmd == "SLEEP" then
        srv:timer(tonumber(arg), function() srv:write(client, "+WOKE\r\n") end)
      elseif cmd == "SILENT" then -- luacheck: ignore 542
      else
        srv:write(client, "-ERR unknown command\r\n")
      end
    end)
  end)
end

-- Like line()'s PING, ECHO <text> and SLEEP <ms>, but every answer waits for the ones before
-- it, as a server that pipelines must: a SLEEP holds back the answers to the lines after it.
function M.ordered()
  return listen(function(srv, client)
    local queue, busy = {}, false
    local function pump()
      if busy or #queue == 0 then return end
      local item = table.remove(queue, 1)
      if item.ms == 0 then
        srv:write(client, item.text)
        return pump()
      end
      busy = true
      srv:timer(item.ms, function()
        busy = false
        srv:write(client, item.text)
        pump()
      end)
    end
    line_reader(srv, client, function(line)
      local cmd, arg = line:match("^(%S+)%s?(.*)$")
      if cmd == "PING" then
        queue[#queue + 1] = { ms = 0, text = "+PONG\r\n" }
      elseif cmd == "ECHO" then
        queue[#queue + 1] = { ms = 0, text = arg .. "\r\n" }
      elseif cmd == "SLEEP" then
        queue[#queue + 1] = { ms = tonumber(arg), text = "+WOKE\r\n" }
      else
        queue[#queue + 1] = { ms = 0, text = "-ERR unknown command\r\n" }
      end
      pump()
    end)
  end)
end

-- Accepts and never reads nor writes: what a peer that stopped reading looks like.
function M.deaf()
  return listen(function() end)
end

function M.refused()
  return listen(nil)
end

function M.closer()
  return listen(function(srv, client)
    read(srv, client, function()
      srv:write(client, "par")
      srv:drop(client)
    end)
  end)
end

-- Accepts and hangs up at once, before a byte is read or written.
function M.hangup()
  return listen(function(srv, client) srv:drop(client) end)
end

function M.slow(ms)
  return listen(function(srv, client)
    line_reader(srv, client, function()
      srv:timer(ms, function() srv:write(client, "+SLOW\r\n") end)
    end)
  end)
end

-- A listener with backlog 0 that never accepts, filled by two conns of its own (libuv takes
-- the first off the kernel's queue, the second fills it): a further connect gets no SYN-ACK, so
-- it hangs until the dialler's timeout (the kernel retries the SYN after a second).
-- `callback(srv)` runs once the queue is full; `on_filler(conn)`, if given, for each filler
-- once it connected; `srv` (from M.new_server) is the server to use, if given.
function M.blackhole(callback, on_filler, srv)
  srv = assert(M.bind(srv or M.new_server()))
  assert(srv.tcp:listen(0, function() end)) -- never accepts
  local function filler(n)
    local c = uv.new_tcp()
    srv.extra[#srv.extra + 1] = c
    c:connect("127.0.0.1", srv.port, function(err)
      if err or srv.closed then return end
      if on_filler then on_filler(c) end
      -- Give libuv a moment to take the first one off the queue before the next.
      srv:timer(20, function()
        if n == 1 then filler(2) else callback(srv) end
      end)
    end)
  end
  filler(1)
  return srv
end

return M
