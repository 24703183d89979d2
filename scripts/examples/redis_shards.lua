-- redis_shards.lua — shard keys over several redis-servers with consistent hashing, and live
-- through one of them going away and coming back.
--
-- Every key has one owner on a hash ring over the pool's peers (the consistent_hash policy's
-- route hook). Twenty workers write and read keys for DURATION ms; each SET goes to the key's
-- owner, and so does the GET that checks it. While a shard is down its keys fail fast
-- (`ejected` or `cannot_connect`, with the cause) instead of landing on another shard; the
-- other shards' keys never fail. When the shard is back, its keys are served again.
--
--   redis-server --port 7001 --save '' --appendonly no &   (and 7002, 7003)
--   LUA_CPATH="build/lua/?.so;;" lua5.4 scripts/examples/redis_shards.lua \
--     127.0.0.1:7001 127.0.0.1:7002 127.0.0.1:7003
--
-- Environment: DURATION (ms, default 3000). The last line sums it up:
--   requests=N ok=N wrong_shard=0 bad_reads=0 failed=N (codes) by_shard=addr=N(last ...),...
local uv = require "luv"
local peerpool = require "peerpool"
local redis = require "peerpool.policies.redis"
local consistent_hash = require "peerpool.policies.consistent_hash"

local addrs = #arg > 0 and arg or { "127.0.0.1:6379" }
local DURATION = tonumber(os.getenv("DURATION") or "3000")
local WORKERS = 20

-- RESP, the Redis protocol: the redis policy module's encoder and reply reader.
local command, reply = redis.command, redis.reply

local ring = consistent_hash.new { on_down = "fail" } -- a shard's keys stay on that shard
local pool = peerpool.new {
  max_per_peer = 4,
  connect_timeout = 500,
  retries = 0,
  acquire_timeout = 2000,
  io_timeout = 1000,
  eject_after = 2,
  eject_time = 500,
  policy = ring,
}
for _, addr in ipairs(addrs) do assert(pool:add_peer(addr)) end

local counts = { requests = 0, ok = 0, wrong_shard = 0, bad_reads = 0, failed = 0 }
local codes, by_shard, last_ok = {}, {}, {}
local stop_at = uv.now() + DURATION

-- SET then GET one key on its owner; true, or nil and the error code.
local function round(key, value)
  local conn, code = pool:acquire(nil, { key = key })
  if not conn then return nil, code end
  if conn.peer ~= ring.owner(key) then counts.wrong_shard = counts.wrong_shard + 1 end
  conn:send(command("SET", key, value) .. command("GET", key))
  local set, serr = reply(conn)
  local got, gerr = reply(conn)
  if set ~= "OK" or got == nil then
    conn:close() -- the shard went away mid-request: not lent again
    return nil, serr or gerr or "bad reply"
  end
  if got ~= value then counts.bad_reads = counts.bad_reads + 1 end
  by_shard[conn.peer] = (by_shard[conn.peer] or 0) + 1
  last_ok[conn.peer] = uv.now()
  conn:release()
  return true
end

local running = WORKERS
for w = 1, WORKERS do
  peerpool.spawn(function()
    local timer, co = uv.new_timer(), coroutine.running()
    local n = 0
    while uv.now() < stop_at do
      n = n + 1
      counts.requests = counts.requests + 1
      local ok, code = round(("user:%d:%d"):format(w, n % 50), ("v%d.%d"):format(w, n))
      if ok then
        counts.ok = counts.ok + 1
      else
        counts.failed = counts.failed + 1
        codes[code] = (codes[code] or 0) + 1
        timer:start(20, 0, function() coroutine.resume(co) end) -- a short pause after a failure
        coroutine.yield()
      end
    end
    timer:close()
    running = running - 1
    if running == 0 then
      local c, s = {}, {}
      for k, v in pairs(codes) do c[#c + 1] = k .. ":" .. v end
      for k, v in pairs(by_shard) do
        s[#s + 1] = ("%s=%d(last %d ms before the end)"):format(k, v, uv.now() - last_ok[k])
      end
      table.sort(c)
      table.sort(s)
      print(("requests=%d ok=%d wrong_shard=%d bad_reads=%d failed=%d (%s) by_shard=%s"):format(
        counts.requests, counts.ok, counts.wrong_shard, counts.bad_reads, counts.failed,
        table.concat(c, ","), table.concat(s, ",")))
      pool:close()
    end
  end)
end
uv.run()
os.exit(counts.wrong_shard == 0 and counts.bad_reads == 0 and counts.ok > 0 and 0 or 1)
