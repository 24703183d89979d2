-- ping.lua — the PING workload through peerpool's Lua API, on luv's loop.
--
--   lua5.4 bench/ping/ping.lua [--peers HOST:PORT,...] [--clients C] [--requests N] [--warmup W]
--
-- (with build/lua/?.so on package.cpath: LUA_CPATH="build/lua/?.so;;"). One pool with every peer
-- of --peers, max_per_peer = ceil(C / peers), max_total = C, client_limit 1. C coroutines run at
-- once on luv's loop, each doing, per request:
--
--   local conn = pool:acquire()            -- no peer named: the pool's default selection picks
--   conn:send("PING\r\n")
--   local line = conn:receive("*l")        -- "+PONG"
--   conn:release()
--
-- First --warmup requests per coroutine (untimed: the pool dials its conns then), then
-- --requests / C each, timed. Latency runs from just before pool:acquire() to the moment
-- receive returned the line. Any error ends the program with a message. Prints the RESULT
-- line described in common.h: CPU time from uv.getrusage() around the timed phase.
local uv = require "luv"
local peerpool = require "peerpool"

local args = { peers = "127.0.0.1:6379", clients = 32, requests = 100000, warmup = 20 }
do
  local i = 1
  while i <= #arg do
    local k, v = arg[i], arg[i + 1]
    local name = k:match("^%-%-(%w+)$")
    if not name or args[name] == nil or v == nil then
      io.stderr:write("usage: lua5.4 ping.lua [--peers HOST:PORT,...] [--clients C] ",
        "[--requests N] [--warmup W]\n")
      os.exit(2)
    end
    args[name] = name == "peers" and v or math.tointeger(tonumber(v))
    if args[name] == nil then io.stderr:write("ping.lua: bad ", k, "\n"); os.exit(2) end
    i = i + 2
  end
end
local C = args.clients
local per_client = args.requests // C
local peers = {}
for p in args.peers:gmatch("[^,]+") do peers[#peers + 1] = p end

local function die(msg)
  io.stderr:write("ping_lua: ", tostring(msg), "\n")
  os.exit(1, false) -- at once: a coroutine's error must not leave the loop running
end

-- Nothing here may outlive the bench: an unref'd timer ends a hung run.
local watchdog = uv.new_timer()
watchdog:start(60000, 0, function() die("took too long (60 s); giving up") end)
watchdog:unref()

-- TLS (bench/tls/ping_tls.lua): PP_PING_TLS_CA names the CA of a redis --tls-port peer;
-- PP_PING_RECYCLE=1 closes every conn after its request (connect per request, through the pool:
-- each new conn a TLS handshake, resumed when it can be).
local tls_ca = os.getenv("PP_PING_TLS_CA")
local recycle = os.getenv("PP_PING_RECYCLE") == "1"
-- The cost of observability (bench/observe/): PP_PING_OBSERVE=1 subscribes a handler to every
-- pool event and, every second (PP_PING_SCRAPE_MS; 0: never), renders pool:metrics() (what a
-- scrape costs the loop) and reads pool:explain(); PP_PING_LEAK=ms sets leak_threshold (each
-- acquire then notes its stack).
local observe = os.getenv("PP_PING_OBSERVE") == "1"
local leak_ms = tonumber(os.getenv("PP_PING_LEAK") or "")
local pool = peerpool.new {
  max_per_peer = (C + #peers - 1) // #peers,
  max_total = C,
  client_limit = 1,
  tls = tls_ca and { ca_file = tls_ca } or nil,
  leak_threshold = leak_ms,
}
for _, p in ipairs(peers) do
  local ok, err, detail = pool:add_peer(p)
  if not ok then die("add_peer " .. p .. ": " .. tostring(err) .. " " .. tostring(detail)) end
end

local scrape
if observe then
  local seen = 0
  local function count() seen = seen + 1 end
  for _, ev in ipairs { "state", "conn_open", "conn_close", "eject", "burn", "leak",
    "acquire_timeout" } do
    pool:on(ev, count)
  end
  local every = tonumber(os.getenv("PP_PING_SCRAPE_MS") or "") or 1000 -- 0: no scrape
  scrape = uv.new_timer()
  if every > 0 then scrape:start(every, every, function()
    assert(#pool:metrics() > 0)
    pool:explain()
  end) end
  scrape:unref()
end

local hrtime = uv.hrtime
local lat, nlat = {}, 0

-- One client: n requests; latencies recorded when `timed`.
local function client(n, timed)
  for _ = 1, n do
    local t0 = hrtime()
    local conn, err, detail = pool:acquire()
    if not conn then die("acquire: " .. tostring(err) .. " " .. tostring(detail)) end
    conn:send("PING\r\n")
    local line, rerr = conn:receive("*l")
    if line ~= "+PONG" then die("receive: " .. tostring(line or rerr)) end
    if timed then
      nlat = nlat + 1
      lat[nlat] = hrtime() - t0
    end
    if recycle then conn:close() else conn:release() end
  end
end

-- Run C clients of n requests each at once; return when all are done.
local function phase(n, timed)
  local left = C
  for _ = 1, C do
    coroutine.wrap(function()
      local ok, err = xpcall(client, debug.traceback, n, timed)
      if not ok then die(err) end
      left = left - 1
      if left == 0 then uv.stop() end
    end)()
  end
  if left > 0 then uv.run() end
end

local function cpu()
  local r = uv.getrusage()
  return r.utime.sec + r.utime.usec / 1e6, r.stime.sec + r.stime.usec / 1e6
end

if args.warmup > 0 then phase(args.warmup, false) end
local st0 = pool:stats()
local u0, s0 = cpu()
local w0 = hrtime()
phase(per_client, true)
local w1 = hrtime()
local u1, s1 = cpu()

local function quantile(sorted, q)
  local rank = math.ceil(q * #sorted)
  if rank < 1 then rank = 1 end
  return sorted[rank]
end
table.sort(lat)
local st = pool:stats()
io.stderr:write(string.format(
  "ping_lua: pool: %d conns; acquires %d (immediate %d, dialed %d, waited %d); connects %d\n",
  st.conns, st.acquires, st.acquired_immediate, st.acquired_dialed, st.acquired_waited,
  st.connects_ok))
io.write(string.format(
  "RESULT kind=lua requests=%d wall_s=%.6f cpu_user_s=%.6f cpu_sys_s=%.6f p50_us=%.2f " ..
  "p99_us=%.2f errors=0\n", nlat, (w1 - w0) / 1e9, u1 - u0, s1 - s0,
  quantile(lat, 0.50) / 1e3, quantile(lat, 0.99) / 1e3))
io.write(string.format("TLS full=%d resumed=%d failed=%d\n", st.tls_full - st0.tls_full,
  st.tls_resumed - st0.tls_resumed, st.tls_failed - st0.tls_failed))
io.stdout:flush()
pool:close()
watchdog:close()
if scrape then scrape:close() end
-- Let the loop run the close callbacks: luv 1.44 crashes at lua_close on a handle that was
-- closed but whose close callback has not run yet (plain luv, without peerpool, too).
uv.run("nowait")
os.exit(0, true)
