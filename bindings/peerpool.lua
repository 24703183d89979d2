-- The Lua half of the peerpool module, compiled into peerpool.so and run by luaopen_peerpool:
-- what is clearer in Lua than in C (pool:with, peerpool.run).
-- (the conn and notice metatables are not needed here; book.lua's chunk and lbook.c's
-- functions make the address book; metrics.lua's chunk makes pool:metrics, peerpool.metrics
-- and peerpool.serve_metrics; policy.lua's chunk makes pool:load_policy and the seed context)
local M, pool_mt, _, _, uv, book_chunk, book_c, metrics_chunk, policy_chunk = ...
local pool_methods = pool_mt.__index

local pack, unpack = table.pack, table.unpack

-- Methods written here check their self the way luaL_checkudata does in the C ones.
-- `open`: the pool must not be closed (as for the C methods). `level`: the caller to blame, as
-- error's (3 unless called through a C function: pool:request).
local function check_pool(self, fname, open, level)
  level = level or 3
  if getmetatable(self) ~= pool_mt then
    local got = type(self) == "userdata" and tostring(self):match("^[%w._]+") or type(self)
    error(string.format("bad argument #1 to '%s' (peerpool.pool expected, got %s)", fname, got),
      level)
  end
  if open and self:_closed() then error("attempt to use a closed pool", level) end
end

-- Argument `n` of `fname` must be of type `want` (or nil, when `optional`); else raise at the
-- caller of `fname`, naming the argument as luaL_checktype does (`level` as check_pool's).
local function check_arg(v, n, fname, want, optional, level)
  if type(v) == want or (optional and v == nil) then return end
  local expected = want == "table" and "table of options" or want
  error(string.format("bad argument #%d to '%s' (%s expected, got %s)", n, fname, expected,
    type(v)), level or 3)
end

--- pool:with(peer, fn [, opts]): acquire a conn of `peer` (nil: any peer), call fn(conn), and
-- end the lease whatever happens: released when fn returns, closed (the protocol state is
-- unknown; the peer is not blamed for the program's error) when fn raises — released on a
-- framed pool — and the error is raised again. Returns what
-- fn returns, or nil, code, detail when the acquire fails.
function pool_methods:with(peer, fn, opts)
  check_pool(self, "with", true)
  if type(peer) == "function" then peer, fn, opts = nil, peer, fn end
  check_arg(fn, 2, "with", "function")
  check_arg(opts, 3, "with", "table", true)
  local conn, err, detail = self:acquire(peer, opts)
  if not conn then return nil, err, detail end
  local res = pack(pcall(fn, conn))
  if res[1] then
    conn:release()
    return unpack(res, 2, res.n)
  end
  -- (on a framed pool the conn is shared and each reply finds its own request: the program's
  -- error left no protocol state behind, and closing would fail the other leases' requests)
  if self:_framed() then conn:release() else conn:close() end
  error(res[2], 0)
end

-- Whether acquire answered a conn: a program that resumed the caller by hand passed anything.
local function is_conn(v)
  local mt = type(v) == "userdata" and getmetatable(v)
  return type(mt) == "table" and mt.__name == "peerpool.conn"
end

-- One request on a lease of its own: acquire, send, receive the reply, release. Resumed by hand
-- while it waits for a conn, it returns what the resumer passed (as the fast path does).
local function request(self, peer, data, opts)
  local got = pack(self:acquire(peer, opts))
  if not is_conn(got[1]) then return unpack(got, 1, got.n) end
  local conn = got[1]
  local n, err, detail = conn:send(data)
  if not n then
    conn:release()
    return nil, err, detail
  end
  local reply
  reply, err, detail = conn:receive()
  conn:release()
  if reply == nil then return nil, err, detail end
  return reply
end

--- pool:request(peer, data [, opts] [, callback]): acquire a conn of `peer` (nil: any peer),
-- send `data` and return its whole reply, releasing the lease whatever happens; on a shared
-- conn the request pipelines with the others. Needs a pool with `framing`. In a coroutine it
-- returns the reply, or nil, code, detail; with a callback it returns true at once and calls
-- callback(err, reply, detail) later (err nil on success). `opts` are acquire's.
-- pool:request is a C function (lrequest.c): a coroutine's request without opts or callback
-- takes its fast path, in one C call; any other calls this general one, which also names bad
-- arguments -- blaming level 4, the caller of pool:request (3 is the C function).
pool_methods.request = pool_methods._request_method(function(self, peer, data, opts, cb)
  check_pool(self, "request", true, 4)
  -- (checked here, not left to acquire: that would blame this file, naming acquire's argument)
  if peer ~= nil and type(peer) ~= "string" and not (type(peer) == "table" and
      type(peer.addr) == "string") then
    error(string.format("bad argument #1 to 'request' (peer address (string), peer view or nil " ..
      "expected, got %s)", type(peer)), 3)
  end
  if type(opts) == "function" and cb == nil then opts, cb = nil, opts end
  check_arg(data, 2, "request", "string", false, 4)
  check_arg(opts, 3, "request", "table", true, 4)
  check_arg(cb, 4, "request", "function", true, 4)
  if not self:_framed() then
    error("pool:request() needs a pool with framing (peerpool.new{ framing = \"resp\" })", 3)
  end
  if cb then
    M._spawn(function()
      local r, e, d = request(self, peer, data, opts)
      cb(e, r, d)
    end)
    return true
  end
  if not coroutine.isyieldable() then
    error("pool:request() without a callback must run inside a coroutine (peerpool.run(fn))", 3)
  end
  return request(self, peer, data, opts)
end)
pool_methods._request_method = nil

--- peerpool.run(fn, ...): run fn(...) in a new coroutine on luv's loop. When the loop is not
-- running yet, drive it until fn has finished, then return fn's results (an error in fn is
-- raised here, with its traceback). From inside a running loop it returns at once; errors are
-- then reported on stderr.
function M.run(fn, ...)
  check_arg(fn, 1, "run", "function")
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

-- ---- policies (policy.lua): pool:load_policy, the policy library's searcher, seed contexts

policy_chunk(M, pool_methods, uv, check_pool)

-- ---- the address book (book.lua) --------------------------------------------------------

local book = book_chunk(M, uv, book_c)

-- ---- metrics (metrics.lua) -----------------------------------------------------------------

local metrics = metrics_chunk(M, pool_mt, uv, check_pool, book_c.emit)

local c_close = pool_methods.close
--- pool:close([{ drain_ms = N, callback = fn }]): also saves the address book, if the pool has
-- one. With drain_ms, a graceful close (lpool.c's close_drain).
function pool_methods:close(opts)
  check_pool(self, "close")
  book.close(self)
  return c_close(self, opts)
end

local c_remove_peer = pool_methods.remove_peer
--- pool:remove_peer(addr): also saves the address book soon (off the loop), so that the file
-- forgets the peer without waiting for the next periodic save.
function pool_methods:remove_peer(addr)
  check_pool(self, "remove_peer", true)
  local ok, err, why = c_remove_peer(self, addr)
  if ok then book.save(self) end
  return ok, err, why
end
pool_mt.__close = function(self) return pool_methods.close(self) end

local LUA_OPTIONS = {
  policy = true, address_book = true, address_book_interval = true, peers = true, name = true,
}

local c_new = M.new
--- peerpool.new(opts): the engine's options, plus policy (path or table), peers (a list of
-- addresses, source "static"), address_book (a path), address_book_interval (ms, 60000) and
-- name (the pool's `pool` label in peerpool.metrics()).
function M.new(opts)
  check_arg(opts, 1, "new", "table", true)
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
  if opts.address_book ~= nil and (type(opts.address_book) ~= "string" or opts.address_book == "")
  then
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
  if opts.name ~= nil then
    local why = metrics.check_name(opts.name)
    if why then error("peerpool.new: " .. why, 2) end
  end
  local made, pool = pcall(c_new, engine_opts)
  if not made then error(pool, 2) end -- at the caller's line, not ours
  metrics.created(pool, opts)
  if opts.policy ~= nil then
    local ok, _, err = pool:load_policy(opts.policy)
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
