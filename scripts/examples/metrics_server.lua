-- metrics_server.lua — a pool whose metrics a Prometheus server can scrape.
--
-- A worker PINGs one or more redis-servers through a pool every 50 ms while
-- peerpool.serve_metrics answers GET /metrics on the same loop (the pool's families, and the
-- busiest 10 peers' own series). Nothing blocks: the scrape, the worker and the pool share one
-- uv.run().
--
-- Run it from the repository root after a build:
--
--   redis-server --port 6379 --save '' --appendonly no &
--   LUA_CPATH="build/lua/?.so;;" lua5.4 scripts/examples/metrics_server.lua 127.0.0.1:6379
--   curl -s http://127.0.0.1:9145/metrics                 # what Prometheus would read
--
-- Then point Prometheus at it (prometheus.yml):
--
--   scrape_configs:
--     - job_name: peerpool
--       static_configs: [{ targets: ["127.0.0.1:9145"] }]
--
-- Environment: PORT (default 9145; 0 picks a free one), SECONDS (stop after that many seconds
-- instead of at Ctrl-C; before it stops it scrapes itself once and prints a few lines of what
-- it read). The host program does the same for any script: peerpool --metrics 127.0.0.1:9145.
local uv = require "luv"
local peerpool = require "peerpool"
local sleep = peerpool.sleep

local peers = { ... }
if #peers == 0 then peers = { "127.0.0.1:6379" } end
local port = math.tointeger(tonumber(os.getenv("PORT") or "9145"))
local seconds = tonumber(os.getenv("SECONDS") or "")

-- `name` is the pool's `pool` label in the exposition.
local pool = peerpool.new { name = "redis", peers = peers, max_per_peer = 2,
  acquire_timeout = 1000, io_timeout = 1000 }
local metrics, err, detail = peerpool.serve_metrics("127.0.0.1", port, { per_peer = 10 })
if not metrics then
  io.stderr:write(("cannot serve metrics: %s (%s)\n"):format(err, detail))
  os.exit(1)
end
print("metrics on " .. metrics.url)

local running = true

-- The traffic: one PING at a time, round robin over the peers.
peerpool.spawn(function()
  local i = 0
  while running do
    i = i + 1
    local conn = pool:acquire(peers[i % #peers + 1])
    if conn then
      conn:send("PING\r\n")
      if conn:receive() then conn:release() else conn:close() end
    end
    sleep(50)
  end
end)

-- Read our own /metrics as a scraper would (HTTP/1.0: the endpoint closes when it is done).
local function scrape(done)
  local tcp, text = uv.new_tcp(), ""
  tcp:connect("127.0.0.1", metrics.port, function(cerr)
    if cerr then return done(nil, cerr) end
    tcp:write("GET /metrics HTTP/1.0\r\n\r\n")
    tcp:read_start(function(rerr, data)
      if data then
        text = text .. data
        return
      end
      tcp:close()
      done(text, rerr)
    end)
  end)
end

local function stop()
  running = false
  metrics:close()
  pool:close()
end

if seconds then
  local t = uv.new_timer()
  t:start(math.floor(seconds * 1000), 0, function()
    t:close()
    scrape(function(text, serr)
      if not text then
        print("scrape failed: " .. tostring(serr))
      else
        print(("scraped %d bytes: %s"):format(#text, text:match("^[^\r\n]*")))
        for line in text:gmatch("[^\n]+") do
          if line:match("^peerpool_acquires_total") or line:match("^peerpool_peer_state") or
            line:match("^peerpool_connections{") then
            print(line)
          end
        end
      end
      stop()
    end)
  end)
else
  local sigint = uv.new_signal()
  sigint:start("sigint", function()
    sigint:close()
    stop()
  end)
end

uv.run()
