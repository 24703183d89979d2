-- The Lua half of the peerpool module, compiled into peerpool.so and run by luaopen_peerpool:
-- what is clearer in Lua than in C (pool:with, peerpool.run, pool:metrics).
local M, pool_mt, conn_mt, notice_mt, uv = ...
local pool_methods = pool_mt.__index

local pack, unpack = table.pack, table.unpack

--- pool:with(peer, fn [, opts]): acquire a conn of `peer` (nil: any peer), call fn(conn), and
-- end the lease whatever happens: released when fn returns, closed (released as broken, since
-- the protocol state is unknown) when fn raises, and the error is raised again. Returns what
-- fn returns, or nil, code, detail when the acquire fails.
function pool_methods:with(peer, fn, opts)
  if type(peer) == "function" then peer, fn, opts = nil, peer, fn end
  if type(fn) ~= "function" then
    error("bad argument #2 to 'with' (function expected, got " .. type(fn) .. ")", 2)
  end
  local conn, err, detail = self:acquire(peer, opts)
  if not conn then return nil, err, detail end
  local res = pack(pcall(fn, conn))
  if res[1] then
    conn:release()
    return unpack(res, 2, res.n)
  end
  conn:close()
  error(res[2], 0)
end

--- peerpool.run(fn, ...): run fn(...) in a new coroutine on luv's loop. When the loop is not
-- running yet, drive it until fn has finished, then return fn's results (an error in fn is
-- raised here, with its traceback). From inside a running loop it returns at once; errors are
-- then reported on stderr.
function M.run(fn, ...)
  if type(fn) ~= "function" then
    error("bad argument #1 to 'run' (function expected, got " .. type(fn) .. ")", 2)
  end
  if M._loop_running() then return M._spawn(fn, ...) end
  local done, ok, res = false, nil, nil
  local co = M._spawn(function(...)
    res = pack(xpcall(fn, debug.traceback, ...))
    ok, done = res[1], true
  end, ...)
  while not done and coroutine.status(co) ~= "dead" do
    if not uv.run("once") and not done then
      error("peerpool.run: the loop ran out of work before fn finished (a wait that nothing " ..
        "can end?)", 2)
    end
  end
  if not done then error("peerpool.run: the coroutine died", 2) end
  if not ok then error(res[2], 0) end
  return unpack(res, 2, res.n)
end

-- Prometheus text: one family per stats counter and gauge.
local gauges = {
  { "conns", "Conns open or connecting." },
  { "idle", "Conns open with no lease." },
  { "active", "Conns with at least one lease." },
  { "connecting", "Conns connecting, handshaking or waiting out a backoff." },
  { "waiters", "Acquires waiting." },
  { "peers", "Peers known to the pool." },
  { "connect_latency_ms_avg", "Mean time of successful connects, ms." },
  { "connect_latency_ms_max", "Longest successful connect, ms." },
}
local counters = {
  { "acquires", "Acquires accepted." },
  { "acquired_immediate", "Acquires granted an idle conn at once." },
  { "acquired_dialed", "Acquires granted the conn dialled for them." },
  { "acquired_waited", "Acquires granted after queueing behind capacity." },
  { "timed_out", "Acquires that reached their deadline." },
  { "busy", "Acquires answered busy." },
  { "exhausted", "Acquires refused because the wait queue was full." },
  { "canceled", "Acquires cancelled." },
  { "cannot_connect", "Acquires that ran out of connect attempts." },
  { "releases", "Leases released." },
  { "released_broken", "Leases released as broken." },
  { "connect_attempts", "Connect attempts." },
  { "connects_ok", "Successful connects." },
  { "connects_failed", "Failed connect attempts." },
  { "bytes_in", "Bytes read." },
  { "bytes_out", "Bytes written." },
  { "msgs_in", "Read deliveries." },
  { "msgs_out", "Writes completed." },
  { "pings", "Health pings started." },
  { "pings_failed", "Health pings that failed." },
  { "policy_errors", "Policy answers the engine had to ignore." },
  { "leaked_leases", "Conns collected while still leased." },
  { "callback_errors", "Errors raised by Lua callbacks and coroutines." },
}

local function label_text(labels, extra)
  local parts = {}
  if labels then
    local keys = {}
    for k in pairs(labels) do keys[#keys + 1] = k end
    table.sort(keys)
    for _, k in ipairs(keys) do
      parts[#parts + 1] = string.format('%s="%s"', k, tostring(labels[k]):gsub('[\\"\n]', "\\%0"))
    end
  end
  if extra then parts[#parts + 1] = extra end
  if #parts == 0 then return "" end
  return "{" .. table.concat(parts, ",") .. "}"
end

--- pool:metrics([labels]): the pool's stats as Prometheus text exposition; `labels` (a table of
-- name = value) is added to every sample, e.g. { pool = "redis" }.
function pool_methods:metrics(labels)
  if labels ~= nil and type(labels) ~= "table" then
    error("bad argument #1 to 'metrics' (table of labels expected, got " .. type(labels) .. ")", 2)
  end
  local s = self:stats()
  local out = {}
  local function family(name, kind, help, samples)
    out[#out + 1] = "# HELP peerpool_" .. name .. " " .. help
    out[#out + 1] = "# TYPE peerpool_" .. name .. " " .. kind
    for _, sample in ipairs(samples) do
      out[#out + 1] = "peerpool_" .. name .. label_text(labels, sample[1]) .. " " .. sample[2]
    end
  end
  for _, g in ipairs(gauges) do family(g[1], "gauge", g[2], { { nil, s[g[1]] } }) end
  for _, c in ipairs(counters) do family(c[1] .. "_total", "counter", c[2], { { nil, s[c[1]] } }) end
  local function by(tbl, label)
    local keys, samples = {}, {}
    for k in pairs(tbl) do keys[#keys + 1] = k end
    table.sort(keys)
    for _, k in ipairs(keys) do samples[#samples + 1] = { label .. '="' .. k .. '"', tbl[k] } end
    return samples
  end
  family("peers_by_state", "gauge", "Peers in each state.", by(s.peers_by_state, "state"))
  family("conns_closed_total", "counter", "Conns closed, by reason.", by(s.closed, "reason"))
  return table.concat(out, "\n") .. "\n"
end

return M
