-- Protocol servers for the policy specs, on 127.0.0.1 and luv's loop, with the same contract as
-- spec/support/servers.lua (srv.addr, srv.port, srv.accepted, srv.open, srv:drop_all(),
-- srv:close() closes everything it opened), so env:add(srv) closes them after each test.
--
--   S.node{ answer = "VERACK", chatter_ms = nil }
--       a toy P2P node: answers a line "VERSION <v>" with answer .. "\r\n" (and records
--       srv.versions), then, with chatter_ms, sends "INV <n>\r\n" every chatter_ms on that conn
--       (unprompted traffic, like a P2P peer announcing things); "PING" → "PONG"; "WHO" →
--       "CONN <n>" (n: the conn's accept number, 1 for the first); "SILENT" → nothing.
--   S.redis{ password = nil, username = nil, mute = false }
--       a fake Redis speaking RESP (arrays of bulk strings) and inline commands: AUTH, SELECT,
--       CLIENT SETNAME, PING, ECHO; srv.commands records every command (a string like
--       "AUTH secret"); srv.mute = true stops all replies (a hung server).
--   S.many(n, make)    n servers from make(); returns the list.
local servers = require "spec.support.servers"

local S = {}

-- Listen on 127.0.0.1, port 0 (servers.listen); on_data(srv, client, state) for every chunk
-- read, with the conn's unread bytes in state.buf and its accept number in state.id.
local function listen(on_data)
  return servers.listen(function(srv, client)
    local state = { buf = "", id = srv.accepted }
    servers.read(srv, client, function(data)
      state.buf = state.buf .. data
      on_data(srv, client, state)
    end)
  end, { srv = servers.new_server(nil, { received = false }) })
end

-- Take complete lines (without \r\n) off state.buf.
local function lines(state)
  return function()
    local line, rest = state.buf:match("^(.-)\r?\n(.*)$")
    if not line then return nil end
    state.buf = rest
    return line
  end
end

function S.node(opts)
  opts = opts or {}
  local answer = opts.answer or "VERACK"
  local srv
  srv = listen(function(_, client, state)
    for line in lines(state) do
      local v = line:match("^VERSION%s*(.*)$")
      if v then
        srv.versions[#srv.versions + 1] = v
        srv:write(client, answer .. "\r\n")
        if opts.chatter_ms and not state.chatting then
          state.chatting = true
          local n = 0
          srv:every(opts.chatter_ms, function()
            if not srv.clients[client] then return false end
            n = n + 1
            srv:write(client, "INV " .. n .. "\r\n")
          end)
        end
      elseif line == "PING" then
        srv:write(client, "PONG\r\n")
      elseif line == "WHO" then
        srv:write(client, "CONN " .. state.id .. "\r\n")
      elseif line == "SILENT" then -- luacheck: ignore 542
      else
        srv:write(client, "-ERR unknown\r\n")
      end
    end
  end)
  srv.versions = {}
  return srv
end

-- One RESP array of bulk strings, or an inline command, off state.buf; nil if incomplete.
local function take_command(state)
  local buf = state.buf
  if buf:sub(1, 1) ~= "*" then
    local line, rest = buf:match("^(.-)\r?\n(.*)$")
    if not line then return nil end
    state.buf = rest
    local args = {}
    for w in line:gmatch("%S+") do args[#args + 1] = w end
    return args
  end
  local n, pos = buf:match("^%*(%d+)\r\n()")
  if not n then return nil end
  local args = {}
  for i = 1, tonumber(n) do
    local len, p = buf:match("^%$(%d+)\r\n()", pos)
    if not len then return nil end
    len = tonumber(len)
    if #buf < p + len + 1 then return nil end
    args[i] = buf:sub(p, p + len - 1)
    pos = p + len + 2
  end
  state.buf = buf:sub(pos)
  return args
end

function S.redis(opts)
  opts = opts or {}
  local srv
  srv = listen(function(_, client, state)
    while true do
      local args = take_command(state)
      if not args then return end
      srv.commands[#srv.commands + 1] = table.concat(args, " ")
      local cmd = (args[1] or ""):upper()
      local reply
      if cmd == "AUTH" then
        local user, pass = args[2], args[3]
        if pass == nil then user, pass = "default", args[2] end
        if opts.password == nil then
          reply = "-ERR AUTH <password> called without any password configured"
        elseif pass == opts.password and user == (opts.username or "default") then
          state.authed = true
          reply = "+OK"
        else
          reply = "-WRONGPASS invalid username-password pair or user is disabled."
        end
      elseif opts.password and not state.authed then
        reply = "-NOAUTH Authentication required."
      elseif cmd == "SELECT" then
        reply = "+OK"
        state.db = tonumber(args[2])
      elseif cmd == "CLIENT" and (args[2] or ""):upper() == "SETNAME" then
        reply = "+OK"
      elseif cmd == "PING" then
        reply = "+PONG"
      elseif cmd == "ECHO" then
        reply = "$" .. #(args[2] or "") .. "\r\n" .. (args[2] or "")
      else
        reply = "-ERR unknown command '" .. cmd .. "'"
      end
      if not srv.mute then srv:write(client, reply .. "\r\n") end
    end
  end)
  srv.commands = {}
  srv.mute = false
  return srv
end

function S.many(n, make)
  local list = {}
  for i = 1, n do list[i] = make() end
  return list
end

return S
