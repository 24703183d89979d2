-- The Lua half of the peerpool module, compiled into peerpool.so and run by luaopen_peerpool:
-- what is clearer in Lua than in C (pool:with, peerpool.run, pool:metrics).
-- (the conn and notice metatables are not needed here; book.lua's chunk and lbook.c's
-- functions make the address book)
local M, pool_mt, _, _, uv, book_chunk, book_c = ...
local pool_methods = pool_mt.__index

local pack, unpack = table.pack, table.unpack

-- Methods written here check their self the way luaL_checkudata does in the C ones.
-- `open`: the pool must not be closed (as for the C methods).
local function check_pool(self, fname, open)
  if getmetatable(self) ~= pool_mt then
    local got = type(self) == "userdata" and tostring(self):match("^[%w._]+") or type(self)
    error(string.format("bad argument #1 to '%s' (peerpool.pool expected, got %s)", fname, got), 3)
  end
  if open and self:_closed() then error("attempt to use a closed pool", 3) end
end

--- pool:with(peer, fn [, opts]): acquire a conn of `peer` (nil: any peer), call fn(conn), and
-- end the lease whatever happens: released when fn returns, closed (released as broken, since
-- the protocol state is unknown) when fn raises, and the error is raised again. Returns what
-- fn returns, or nil, code, detail when the acquire fails.
function pool_methods:with(peer, fn, opts)
  check_pool(self, "with", true)
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
  { "ejections", "Peers ejected for a cool-down after consecutive failures." },
  { "seeds", "Seed hook calls." },
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
      local escapes = { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n" }
      local v = tostring(labels[k]):gsub('[\\"\n]', escapes)
      parts[#parts + 1] = string.format('%s="%s"', k, v)
    end
  end
  if extra then parts[#parts + 1] = extra end
  if #parts == 0 then return "" end
  return "{" .. table.concat(parts, ",") .. "}"
end

--- pool:metrics([labels]): the pool's stats as Prometheus text exposition; `labels` (a table of
-- name = value) is added to every sample, e.g. { pool = "redis" }.
function pool_methods:metrics(labels)
  check_pool(self, "metrics", true)
  if labels ~= nil and type(labels) ~= "table" then
    error("bad argument #1 to 'metrics' (table of labels expected, got " .. type(labels) .. ")", 2)
  end
  for k in pairs(labels or {}) do
    if type(k) ~= "string" or not k:match("^[%a_][%w_]*$") or k:match("^__") then
      error("bad argument #1 to 'metrics' (label name " .. string.format("%q", tostring(k)) ..
        " is not a Prometheus label name: [a-zA-Z_][a-zA-Z0-9_]*, not starting with __)", 2)
    end
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
  for _, c in ipairs(counters) do
    family(c[1] .. "_total", "counter", c[2], { { nil, s[c[1]] } })
  end
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

-- ---- policies ------------------------------------------------------------------------------

local HOOKS = {
  select_peer = true, select_conn = true, backoff = true, seed = true, handshake = true,
  ping = true,
}
local POLICY_INFO = { name = "string", description = "string" }

-- `require "peerpool.policies.NAME"` finds the policy library: installed with the rock, or
-- in the source tree the module was built from (scripts/policies/NAME.lua).
if M._scripts_dir then
  local dir = M._scripts_dir
  table.insert(package.searchers, function(name)
    local rest = name:match("^peerpool%.policies%.([%w_]+)$")
    if not rest then return nil end
    local path = dir .. "/policies/" .. rest .. ".lua"
    local chunk, err = loadfile(path)
    if not chunk then
      return "\n\tno file '" .. path .. "'" .. (err and (" (" .. err .. ")") or "")
    end
    return chunk, path
  end)
end

-- A policy from a path (a Lua script returning a table) or a table; nil, message if unusable.
local function policy_from(source)
  local tbl, name = source, "table"
  if type(source) == "string" then
    name = source
    local chunk, err = loadfile(source, "t")
    if not chunk then return nil, "policy " .. err end
    local ok, res = pcall(chunk)
    if not ok then return nil, "policy " .. source .. ": " .. tostring(res) end
    tbl = res
  end
  if type(tbl) ~= "table" then
    return nil, "policy " .. name .. " must return a table of hooks (got " .. type(tbl) .. ")"
  end
  for k, v in pairs(tbl) do
    if HOOKS[k] then
      if type(v) ~= "function" then
        return nil, "policy." .. tostring(k) .. " must be a function (got " .. type(v) .. ")"
      end
    elseif POLICY_INFO[k] then
      if type(v) ~= POLICY_INFO[k] then
        return nil, "policy." .. k .. " must be a " .. POLICY_INFO[k]
      end
    else
      return nil, "policy." .. tostring(k) .. " is not a hook (hooks: backoff, handshake, ping, " ..
        "seed, select_conn, select_peer)"
    end
  end
  return tbl, name
end

--- pool:load_policy(path_or_table): swap the whole policy at once; conns are untouched.
-- Returns true, or nil and a message (the previous policy stays active).
function pool_methods:load_policy(source)
  check_pool(self, "load_policy", true)
  if type(source) ~= "string" and type(source) ~= "table" then
    error("bad argument #1 to 'load_policy' (path or table expected, got " .. type(source) .. ")",
      2)
  end
  local tbl, name = policy_from(source)
  if not tbl then return nil, name end
  if tbl.name and tbl.name ~= name then name = tbl.name .. " (" .. name .. ")" end
  return self:_set_policy(tbl, name)
end

-- The seed hook's context: ctx.wanted, ctx:add(addr [, last_seen]), ctx:resolve(host, port).
-- The hook runs in a coroutine the binding started; the resolver resumes it through
-- M._resume, which charges the hook's budget and ends its call when it returns.
M._set_seed_ctx(function(pool, wanted)
  local ctx = { wanted = wanted, added = 0 }
  function ctx.add(_, addr, last_seen)
    local ok, err, why = pool:_add_peer(addr, last_seen, nil, "seed")
    if ok then ctx.added = ctx.added + 1 end
    return ok, err, why
  end
  function ctx.resolve(_, host, port)
    local co = coroutine.running()
    local out, failure
    local req = uv.getaddrinfo(host, tostring(port), { socktype = "stream" }, function(err, res)
      if err then failure = err
      else
        out = {}
        for _, a in ipairs(res or {}) do
          out[#out + 1] = a.family == "inet6" and ("[" .. a.addr .. "]:" .. a.port)
            or (a.addr .. ":" .. a.port)
        end
      end
      M._resume(co)
    end)
    if not req then return nil, "resolve failed" end
    coroutine.yield()
    if failure then return nil, failure end
    return out
  end
  return ctx
end)

-- ---- the address book (book.lua) --------------------------------------------------------

local book = book_chunk(M, uv, book_c)

local c_close = pool_methods.close
--- pool:close(): also saves the address book, if the pool has one.
function pool_methods:close()
  check_pool(self, "close")
  book.close(self)
  return c_close(self)
end
pool_mt.__close = function(self) return pool_methods.close(self) end

local LUA_OPTIONS = {
  policy = true, address_book = true, address_book_interval = true, peers = true,
}

local c_new = M.new
--- peerpool.new(opts): the engine's options, plus policy (path or table), peers (a list of
-- addresses, source "static"), address_book (a path) and address_book_interval (ms, 60000).
function M.new(opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("bad argument #1 to 'new' (table of options expected, got " .. type(opts) .. ")", 2)
  end
  opts = opts or {}
  local engine_opts = {}
  for k, v in pairs(opts) do
    if not LUA_OPTIONS[k] then engine_opts[k] = v end
  end
  if opts.peers ~= nil and type(opts.peers) ~= "table" then
    error("peerpool.new: option 'peers' must be a list of addresses", 2)
  end
  for i, addr in ipairs(opts.peers or {}) do
    if type(addr) ~= "string" then
      error("peerpool.new: peers[" .. i .. "] must be an address (string), got " .. type(addr), 2)
    end
  end
  if opts.address_book ~= nil and type(opts.address_book) ~= "string" then
    error("peerpool.new: option 'address_book' must be a path", 2)
  end
  local interval = opts.address_book_interval or 60000
  if math.type(interval) ~= "integer" or interval < 1 then
    error("peerpool.new: option 'address_book_interval' must be a positive integer (ms)", 2)
  end
  if opts.policy ~= nil and type(opts.policy) ~= "string" and type(opts.policy) ~= "table" then
    error("peerpool.new: option 'policy' must be a path or a table of hooks (got " ..
      type(opts.policy) .. ")", 2)
  end
  local made, pool = pcall(c_new, engine_opts)
  if not made then error(pool, 2) end -- at the caller's line, not ours
  if opts.policy ~= nil then
    local ok, err = pool:load_policy(opts.policy)
    if not ok then
      c_close(pool)
      error("peerpool.new: " .. err, 2)
    end
  end
  for i, addr in ipairs(opts.peers or {}) do
    local ok, _, why = pool:_add_peer(addr, nil, nil, "static")
    if not ok then
      c_close(pool)
      error("peerpool.new: peers[" .. i .. "]: " .. tostring(why), 2)
    end
  end
  if opts.address_book then book.open(pool, opts.address_book, interval) end
  return pool
end

return M
