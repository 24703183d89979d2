-- The kernel's view of this process's sockets, for the fuzzer's invariants: which fds are
-- open (/proc/self/fd) and, for TCP sockets, their ports (/proc/net/tcp, tcp6); UDP sockets
-- (a pool's DNS queries, /proc/net/udp, udp6) are told apart. Linux only.
--
-- /proc/net/tcp lists every socket of the network namespace, TIME_WAIT ones included: after a
-- few test runs it has tens of thousands of lines and takes tens of ms to produce. So it is
-- read only when one of our fds is a socket not seen before, and what it says about a socket
-- is kept for as long as the socket (inode) lives: a socket's ports never change, and one
-- that was reset and left the table still counts toward the peer it was connected to.
-- (spec/fuzz/run.sh runs the fuzzer in a network namespace of its own when it can: then the
-- table holds the fuzzer's sockets only.)
local uv = require "luv"

local M = {}

-- { [fd] = link target } for every open fd (the scan's own fd may or may not be listed).
function M.fds()
  local out = {}
  local req = assert(uv.fs_scandir("/proc/self/fd"))
  while true do
    local name = uv.fs_scandir_next(req)
    if not name then break end
    local target = uv.fs_readlink("/proc/self/fd/" .. name)
    if target then out[tonumber(name)] = target end
  end
  return out
end

local STATES = {
  ["01"] = "ESTABLISHED", ["02"] = "SYN_SENT", ["03"] = "SYN_RECV", ["04"] = "FIN_WAIT1",
  ["05"] = "FIN_WAIT2", ["06"] = "TIME_WAIT", ["07"] = "CLOSE", ["08"] = "CLOSE_WAIT",
  ["09"] = "LAST_ACK", ["0A"] = "LISTEN", ["0B"] = "CLOSING",
}

local LINE = "^%s*%d+:%s+%x+:(%x+)%s+%x+:(%x+)%s+(%x+)%s+%S+%s+%S+%s+%S+%s+%d+%s+%d+%s+(%d+)"

-- The inode (a string) and { lport =, rport =, state = } of one line of /proc/net/tcp; nil for
-- a line that describes no socket (the header).
local function parse(line)
  local lport, rport, st, inode = line:match(LINE)
  if not inode then return nil end
  return inode, { lport = tonumber(lport, 16), rport = tonumber(rport, 16),
    state = STATES[st] or st }
end

-- { [inode string] = { lport =, rport =, state = [, udp = true] } } for the TCP and UDP
-- sockets of the namespace. With `want` (a set of inodes), only those are parsed (a plain
-- search per inode).
function M.tcp(want)
  local out = {}
  for _, path in ipairs { "/proc/net/tcp", "/proc/net/tcp6", "/proc/net/udp", "/proc/net/udp6" } do
    local udp = path:find("udp", 1, true) ~= nil
    local f = io.open(path, "r")
    if f then
      local text = f:read("a")
      f:close()
      if want then
        for inode in pairs(want) do
          local at = text:find(" " .. inode .. " ", 1, true)
          if at then
            local lo = math.max(1, at - 300) -- a line is under 200 bytes
            local from = lo + ((text:sub(lo, at):match(".*\n()") or 1) - 1)
            local line = text:sub(from, text:find("\n", at, true) or #text)
            local ino, entry = parse(line)
            if ino == inode then
              entry.udp = udp or nil
              out[inode] = entry
            end
          end
        end
      else
        for line in text:gmatch("[^\n]+") do
          local inode, entry = parse(line)
          if inode and inode ~= "0" then
            entry.udp = udp or nil
            out[inode] = entry
          end
        end
      end
    end
  end
  return out
end

-- { [inode string] = path or "" } for the unix sockets of the namespace.
function M.unix()
  local out = {}
  local f = io.open("/proc/net/unix", "r")
  if not f then return out end
  local text = f:read("a")
  f:close()
  for line in text:gmatch("[^\n]+") do
    local inode, path = line:match("^%x+:%s+%x+%s+%x+%s+%x+%s+%x+%s+%x+%s+(%d+)%s*(.*)$")
    if inode then out[inode] = path end
  end
  return out
end

-- inode -> { lport, rport, state } as first seen; inode -> time of the last miss
local known, missed = {}, {}

-- A snapshot of the sockets a pool may own. `servers` is { [port] = true } (the fuzzer's
-- listening ports: sockets whose local port is one of them are a server's side), `baseline` a
-- set of socket inodes that are not the pool's (taken before the pool existed),
-- `ignore_ports` local ports and `ignore_inodes` inodes of the fuzzer's own sockets. Returns
--   { total = pool sockets but UDP ones, udp = the pool's UDP sockets (its DNS queries),
--     per_port = { [server port] = n }, other = non-socket fds,
--     list = { "fd -> socket:[inode] lport->rport STATE", ... }, inodes = set }
function M.snapshot(servers, baseline, ignore_ports, ignore_inodes)
  local fds = M.fds()
  local now = uv.hrtime() / 1e6
  local want, live = nil, {}
  for _, target in pairs(fds) do
    local inode = target:match("^socket:%[(%d+)%]$")
    if inode then
      live[inode] = true
      if not known[inode] and not baseline[inode] and now - (missed[inode] or -1e9) > 100 then
        want = want or {}
        want[inode] = true
      end
    end
  end
  if want then
    for inode, t in pairs(M.tcp(want)) do
      if t.rport ~= 0 or t.state == "LISTEN" or t.udp then known[inode] = t end
    end
    for inode in pairs(want) do if not known[inode] then missed[inode] = now end end
  end
  for inode in pairs(known) do if not live[inode] then known[inode] = nil end end
  for inode in pairs(missed) do if not live[inode] then missed[inode] = nil end end
  local snap = { total = 0, udp = 0, per_port = {}, other = 0, list = {}, inodes = {} }
  for fd, target in pairs(fds) do
    local inode = target:match("^socket:%[(%d+)%]$")
    -- (one socket under two fds counts once: a Happy Eyeballs winner is handed to its conn as
    -- a dup, and both fds are open for a moment)
    if inode and not snap.inodes[inode] then
      snap.inodes[inode] = true
      local t = known[inode]
      local server_side = t and (servers[t.lport] or (ignore_ports and ignore_ports[t.lport]))
      if not baseline[inode] and not server_side and not (ignore_inodes and ignore_inodes[inode]) then
        if t and t.udp then snap.udp = snap.udp + 1 else snap.total = snap.total + 1 end
        if t and servers[t.rport] then snap.per_port[t.rport] = (snap.per_port[t.rport] or 0) + 1 end
        snap.list[#snap.list + 1] = string.format("fd %d -> %s %s", fd, target,
          t and string.format("%s %d->%d (%s when first seen)", t.udp and "udp" or "tcp",
            t.lport, t.rport, t.state) or
          "(not a TCP socket, or not in /proc/net/tcp)")
      end
    elseif not target:match("^/proc/") then
      snap.other = snap.other + 1
      snap.others = snap.others or {}
      snap.others[#snap.others + 1] = string.format("fd %d -> %s", fd, target)
    end
  end
  table.sort(snap.list)
  return snap
end

-- Resident set size in kB.
function M.rss_kb()
  local f = io.open("/proc/self/status", "r")
  if not f then return 0 end
  local text = f:read("a")
  f:close()
  return tonumber(text:match("VmRSS:%s*(%d+)")) or 0
end

return M
