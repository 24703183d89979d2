-- The address book's costs: how long a periodic save of a big pool stalls the loop, and the
-- time and memory a big book takes to load. Each part runs in a process of its own (so peak
-- memory is its own), against the module at --cpath (default ./build/lua/?.so):
--
--   lua5.4 bench/book.lua [--peers 200000] [--lines 1000000] [--cpath DIR/?.so]
--   lua5.4 bench/book.lua save N | load N | floor N      (one part)
--
-- save: a pool of N peers with an address book saved every second; a 1 ms timer measures
--   the longest gap between loop iterations while the save runs (the stall), and how long
--   the save takes from start to the renamed file.
-- load: peerpool.new on a book of N lines: wall time, and peak RSS over the process's before.
-- floor: the same N peers added with pool:_add_peer from a Lua table (what the pool itself
--   costs, whatever the book does).
-- It uses only the public options, so it runs against older builds too (for before/after).
local args = { peers = 200000, lines = 1000000, cpath = "./build/lua/?.so" }
local mode, n
do
  local i = 1
  while arg[i] do
    local a = arg[i]
    if a:sub(1, 2) == "--" then
      args[a:sub(3)] = arg[i + 1]
      i = i + 2
    else
      mode, n = a, tonumber(arg[i + 1])
      i = i + 2
    end
  end
end
package.cpath = args.cpath .. ";" .. package.cpath

local uv = require "luv"

local function addr(i)
  return string.format("10.%d.%d.%d:%d", (i >> 16) & 255, (i >> 8) & 255, i & 255,
    1000 + i % 5000)
end

local function status(field)
  local f = assert(io.open("/proc/self/status"))
  local text = f:read("a")
  f:close()
  return tonumber(text:match(field .. ":%s*(%d+)")) -- kB
end

local function tmp()
  local path = os.tmpname()
  os.remove(path)
  return path
end

local parts = {}

function parts.save(count)
  local peerpool = require "peerpool"
  local path = tmp()
  local pool = peerpool.new { address_book = path, address_book_interval = 1000,
    max_address_age = 0 }
  for i = 1, count do pool:add_peer(addr(i), 1700000000000 + i) end
  collectgarbage()
  -- Watch the loop: a 1 ms timer notes the longest gap between its runs; the save is done
  -- when the book file appears (renamed into place). Four saves, the first one discarded.
  local gaps, last, max_gap, started = {}, uv.hrtime(), 0, nil
  local watch = uv.new_timer()
  watch:start(1, 1, function()
    local now = uv.hrtime()
    max_gap = math.max(max_gap, now - last)
    last = now
    local st = uv.fs_stat(path)
    if st and (not started or st.mtime.nsec ~= started.nsec or st.mtime.sec ~= started.sec) then
      gaps[#gaps + 1] = max_gap / 1e6
      started, max_gap = st.mtime, 0
      if #gaps == 4 then
        watch:stop()
        watch:close()
      end
    end
  end)
  uv.run()
  table.remove(gaps, 1)
  table.sort(gaps)
  pool:close()
  os.remove(path)
  print(string.format("save %d peers: longest loop stall %.1f ms (median of %d saves)", count,
    gaps[2], #gaps))
  uv.run()
end

function parts.load(count)
  local path = tmp()
  local f = assert(io.open(path, "w"))
  f:write("# peerpool address book v2\n")
  for i = 1, count do f:write(addr(i), " ", 1700000000000 + i, " seed\n") end
  f:close()
  local peerpool = require "peerpool"
  collectgarbage()
  local rss0 = status("VmRSS")
  local t0 = uv.hrtime()
  local pool = peerpool.new { address_book = path, address_book_interval = 3600000,
    max_address_age = 0 }
  local ms = (uv.hrtime() - t0) / 1e6
  local peers = pool:stats().peers
  print(string.format("load %d lines: %.0f ms, %d peers, peak RSS %.0f MB (+%.0f MB)", count, ms,
    peers, status("VmHWM") / 1024, (status("VmHWM") - rss0) / 1024))
  os.remove(path)
  os.exit(0, false) -- (skip the final save and the teardown: not what is measured)
end

function parts.floor(count)
  local peerpool = require "peerpool"
  local list = {}
  for i = 1, count do list[i] = addr(i) end
  collectgarbage()
  local rss0 = status("VmRSS")
  local t0 = uv.hrtime()
  local pool = peerpool.new { max_address_age = 0 }
  for i = 1, count do pool:_add_peer(list[i], 1700000000000 + i, nil, "seed") end
  local ms = (uv.hrtime() - t0) / 1e6
  print(string.format("floor: %d x pool:_add_peer: %.0f ms, peak RSS %.0f MB (+%.0f MB)", count,
    ms, status("VmHWM") / 1024, (status("VmHWM") - rss0) / 1024))
  os.exit(0, false)
end

if mode then
  assert(parts[mode], "unknown part " .. mode)(assert(n, "a count after the part"))
  return
end

for _, part in ipairs { { "save", args.peers }, { "load", args.lines }, { "floor", args.lines } } do
  local cmd = string.format("lua5.4 %q %s %d --cpath %q", arg[0], part[1], part[2], args.cpath)
  assert(os.execute(cmd))
end
