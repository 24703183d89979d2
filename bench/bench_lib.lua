-- bench_lib.lua: what the Lua bench drivers (ping/bench_ping.lua, observe/obs_cost.lua) do
-- alike. A driver finds it one directory up from itself:
--
--   package.path = arg[0]:match("^(.-)[^/]*$") .. "../?.lua;" .. package.path
--   local B = require "bench_lib"
--
--   B.q(s)              s quoted for sh
--   B.capture(cmd)      what cmd (run by sh) writes on stdout, and whether it exited with 0
--   B.first_line(cmd)   the first line cmd writes on stdout (its stderr is dropped), without
--                       trailing white space; "" when it writes nothing
--   B.read_file(path)   the file's bytes, or nil when it cannot be read
--   B.median(v)         the median of a list of numbers (v itself is left as it is)
--   B.loadavg()         the load averages "1m 5m 15m" of /proc/loadavg, or nil
local B = {}

function B.q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

function B.capture(cmd)
  local p = assert(io.popen(cmd, "r"))
  local out = p:read("a")
  local ok = p:close()
  return out, ok
end

function B.first_line(cmd)
  local out = B.capture(cmd .. " 2>/dev/null")
  return (out:match("[^\n]*") or ""):gsub("%s+$", "")
end

function B.read_file(path)
  local f <close> = io.open(path, "rb")
  return f and f:read("a")
end

function B.loadavg()
  return ((B.read_file("/proc/loadavg") or ""):match("^(%S+ %S+ %S+)"))
end

function B.median(v)
  local s = table.move(v, 1, #v, 1, {})
  table.sort(s)
  local n = #s
  return n % 2 == 1 and s[(n + 1) // 2] or (s[n // 2] + s[n // 2 + 1]) / 2
end

return B
