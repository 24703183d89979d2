-- A tiny DNS server for the specs: UDP on 127.0.0.1 (port 0: `srv.addr` says which), on luv's
-- loop, answering A and AAAA questions from a table the test changes at will. Point a pool at
-- it with `dns_servers = { srv.addr }`.
--
--   local srv = dns_server.start()
--   srv:set("db.pp.test", { a = { "127.0.0.1" }, aaaa = { "::1" }, ttl = 1 })
--   srv:set("gone.pp.test", { rcode = "NXDOMAIN" })     -- or "SERVFAIL", "REFUSED"
--   srv:set("mute.pp.test", { silent = true })          -- never answers
--   srv.queries["db.pp.test"]   -- questions asked for the name (A and AAAA count apart)
--   srv:close()
--
-- A name it has no entry for answers NXDOMAIN. Names are matched case-insensitively.
local uv = require "luv"

local M = {}

local Server = {}
Server.__index = Server

local RCODES = { NOERROR = 0, SERVFAIL = 2, NXDOMAIN = 3, REFUSED = 5 }
local TYPE_A, TYPE_AAAA = 1, 28

local function u16(s, i) return s:byte(i) * 256 + s:byte(i + 1) end

-- The question: qname (lowercase, dotted), qtype, the offset after the question (or nil).
local function parse_question(msg)
  if #msg < 12 or u16(msg, 5) ~= 1 then return nil end
  local labels, i = {}, 13
  while true do
    local len = msg:byte(i)
    if len == nil or len >= 64 then return nil end
    if len == 0 then break end
    labels[#labels + 1] = msg:sub(i + 1, i + len)
    i = i + 1 + len
  end
  if #msg < i + 4 then return nil end
  return table.concat(labels, "."):lower(), u16(msg, i + 1), i + 5
end

local function ipv4_bytes(ip)
  local a, b, c, d = ip:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  return string.char(tonumber(a), tonumber(b), tonumber(c), tonumber(d))
end

local function ipv6_bytes(ip)
  local head, tail = ip:match("^(.-)::(.*)$")
  local function groups(s)
    local out = {}
    for g in s:gmatch("[^:]+") do out[#out + 1] = tonumber(g, 16) end
    return out
  end
  local g
  if head then
    local h, t = groups(head), groups(tail)
    g = h
    for _ = 1, 8 - #h - #t do g[#g + 1] = 0 end
    for _, v in ipairs(t) do g[#g + 1] = v end
  else
    g = groups(ip)
  end
  local out = {}
  for k = 1, 8 do out[k] = string.pack(">I2", g[k]) end
  return table.concat(out)
end

local function answer(msg, qtype, qend, entry)
  local id, qflags = msg:sub(1, 2), u16(msg, 3)
  local rcode = RCODES[entry and entry.rcode or (entry and "NOERROR" or "NXDOMAIN")]
  local records = {}
  if rcode == 0 then
    local list = qtype == TYPE_A and entry.a or qtype == TYPE_AAAA and entry.aaaa or {}
    for _, ip in ipairs(list or {}) do
      local rdata = qtype == TYPE_A and ipv4_bytes(ip) or ipv6_bytes(ip)
      records[#records + 1] = string.pack(">I2I2I2I4s2", 0xC00C, qtype, 1, entry.ttl or 60, rdata)
    end
  end
  -- QR, the query's opcode and RD, AA, RA, rcode.
  local flags = 0x8000 | (qflags & 0x7900) | 0x0400 | 0x0080 | rcode
  return id .. string.pack(">I2I2I2I2I2", flags, 1, #records, 0, 0) .. msg:sub(13, qend - 1) ..
    table.concat(records)
end

function M.start()
  local srv = setmetatable({ entries = {}, queries = {}, total = 0, closed = false }, Server)
  local udp = uv.new_udp()
  assert(udp:bind("127.0.0.1", 0))
  srv.udp = udp
  srv.port = udp:getsockname().port
  srv.addr = "127.0.0.1:" .. srv.port
  assert(udp:recv_start(function(err, data, from)
    if err or not data or not from or srv.closed then return end
    local name, qtype, qend = parse_question(data)
    if not name then return end
    srv.total = srv.total + 1
    srv.queries[name] = (srv.queries[name] or 0) + 1
    local entry = srv.entries[name]
    if entry and entry.silent then return end
    udp:send(answer(data, qtype, qend, entry), from.ip, from.port)
  end))
  return srv
end

-- Set (or, with nil, remove) the answer for `name`.
function Server:set(name, entry)
  self.entries[name:lower()] = entry
end

function Server:close()
  if self.closed then return end
  self.closed = true
  if not self.udp:is_closing() then self.udp:close() end
end

return M
