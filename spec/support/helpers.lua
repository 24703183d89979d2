-- Spec helpers: run each test in a coroutine on luv's loop (peerpool.run), with an environment
-- that owns the test's pools and servers and closes them at the end, a watchdog, coroutine
-- sleeps, and child Lua processes.
--
--   it("...", H.test(function(env) ... end))
--
-- env:pool(opts)         peerpool.new(opts), closed at the end of the test
-- env:pool_on(srv, opts) env:pool(opts) with srv.addr added as its peer
-- env:pool_with(kind, opts)   a new server env:<kind>() ("line", "echo", ...) and
--                        env:pool_on(it, opts): pool, srv
-- env:static_pool(kind, opts)   the same with the server listed in opts.peers (a static peer)
-- env:full_pool(opts)    a line server and a pool on it (opts, max_per_peer = 1) whose one conn
--                        is held, so the peer is at capacity: pool, srv, held
-- env:echo() / env:line() / env:refused() / env:closer() / env:hangup() / env:slow(ms) /
-- env:blackhole() /
-- env:deaf()
--                        servers (spec/support/servers.lua), closed at the end of the test
-- H.sleep(ms)            yield the running coroutine for ms
-- H.wait_until(pred, ms) yield until pred() is true; fails the test after ms
-- H.in_parallel(n, fn, ms)   run fn(i) in n coroutines of their own (peerpool.spawn) and wait
--                        until all have returned; fails after ms (10000)
-- H.wait_closed(srv, ms) H.wait_until(ms) the server has no conn open: it saw every close
-- H.pack(...)            table.pack
-- H.troubled(pool)      how many conns the pool closed for trouble: broken, discarded (state
--                        unknown) or closed by the remote
-- H.pick(t, like)        the fields of t that `like` has, for assert.same(like, H.pick(t, like))
--                        on part of a table (stats, views)
-- H.child(code [, sh])   run `code` in a fresh lua5.4 process with the module's paths (after
--                        the shell commands `sh`, e.g. "ulimit -n 64;");
--                        returns ok, exit code, stdout, stderr
-- H.free_port()          a port on 127.0.0.1 nobody listens on (for a server the test starts)
-- H.promtool(text)       `promtool check metrics` on text: ok, its output; nil when promtool is
--                        not installed
local uv = require "luv"
local peerpool = require "peerpool"
local servers = require "spec.support.servers"

local H = {}

-- Generous: a test that starts a redis-server or sends thousands of requests took over 10 s
-- under ASan, GC stress and a loaded machine (ctest -j6 on 2 cores).
H.WATCHDOG_MS = 30000
H.pack = table.pack

function H.troubled(pool)
  local closed = pool:stats().closed
  return closed.broken + closed.discarded + closed.remote
end

function H.pick(t, like)
  local out = {}
  for k in pairs(like) do out[k] = t[k] end
  return out
end

-- Yield the running coroutine until the luv handle that start(resume) starts calls resume().
local function yield_to(start)
  local co = assert(coroutine.running())
  start(function()
    local ok, err = coroutine.resume(co)
    if not ok then io.stderr:write("spec coroutine error: ", tostring(err), "\n") end
  end)
  coroutine.yield()
end

-- Yield the running coroutine for `ms` (a luv timer resumes it). Counted from now, not from
-- the loop's cached time, which lags behind after slow work in this callback (a loaded machine,
-- a full collection at every call under GC stress): a test that sleeps 30 ms past a 20 ms
-- deadline must not wake before it.
function H.sleep(ms)
  local t = uv.new_timer()
  local lag = math.max(0, math.ceil(uv.hrtime() / 1e6 - uv.now()))
  yield_to(function(resume)
    t:start(ms + lag, 0, function()
      t:close()
      resume()
    end)
  end)
end

-- Yield until pred() is true, checking every 2 ms; fail after `ms` (default 3000).
function H.wait_until(pred, ms, what)
  local deadline = uv.now() + (ms or 3000)
  while not pred() do
    if uv.now() > deadline then
      error("gave up waiting" .. (what and (" for " .. what) or "") .. " after " .. (ms or 3000) ..
        " ms", 2)
    end
    H.sleep(2)
  end
end

function H.wait_closed(srv, ms)
  H.wait_until(function() return srv.open == 0 end, ms, "the server to see every conn closed")
end

function H.in_parallel(n, fn, ms)
  local done = 0
  for i = 1, n do
    peerpool.spawn(function()
      fn(i)
      done = done + 1
    end)
  end
  H.wait_until(function() return done == n end, ms or 10000, "the coroutines to finish")
end

-- Let the loop go round `n` (5) whole iterations, so that callbacks deferred to a later tick
-- (the engine's run in the check phase) have run. An idle handle resumes us once per
-- iteration; a 0 ms timer would not do (libuv runs timers started by a timer callback in the
-- same pass).
function H.ticks(n)
  for _ = 1, n or 5 do
    local idle = uv.new_idle()
    yield_to(function(resume)
      idle:start(function()
        idle:stop()
        idle:close()
        resume()
      end)
    end)
  end
end

local Env = {}
Env.__index = Env

function Env:pool(opts)
  local pool = peerpool.new(opts)
  self.pools[#self.pools + 1] = pool
  return pool
end

function Env:pool_on(srv, opts)
  local pool = self:pool(opts)
  pool:add_peer(srv.addr)
  return pool
end

function Env:pool_with(kind, opts)
  local srv = self[kind](self)
  return self:pool_on(srv, opts), srv
end

function Env:static_pool(kind, opts)
  local srv = self[kind](self)
  opts = opts or {}
  opts.peers = { srv.addr }
  return self:pool(opts), srv
end

function Env:full_pool(opts)
  opts = opts or {}
  opts.max_per_peer = 1
  local pool, srv = self:pool_with("line", opts)
  return pool, srv, assert(pool:acquire(srv.addr))
end

function Env:add(srv)
  self.servers[#self.servers + 1] = srv
  return srv
end

for _, name in ipairs { "echo", "echo_on", "line", "refused", "closer", "hangup", "slow",
  "unix_echo", "deaf", "ordered" } do
  Env[name] = function(self, ...) return self:add(servers[name](...)) end
end

-- The echo server on [::1], or nil, why when the machine has no IPv6 loopback.
function Env:echo6()
  local srv, err = servers.echo6()
  if not srv then return nil, err end
  return self:add(srv)
end

-- A blackhole, once its queue is full (must run in the test's coroutine).
function Env:blackhole()
  local ready
  local srv = self:add(servers.blackhole(function(s) ready = s end))
  H.wait_until(function() return ready end, 2000, "the blackhole's queue to fill")
  return srv
end

function Env:cleanup()
  if self.watchdog and not self.watchdog:is_closing() then self.watchdog:close() end
  for _, pool in ipairs(self.pools) do pool:close() end
  for _, srv in ipairs(self.servers) do srv:close() end
end

-- Turn the loop until it has nothing left to do (close callbacks run, file requests on
-- libuv's thread pool come back); false if it does not settle within about 2 s.
function H.drain()
  for i = 1, 2000 do
    if not uv.loop_alive() then return true end
    uv.run("nowait")
    if i > 50 then uv.sleep(1) end -- a request on the thread pool needs time, not turns
  end
  return not uv.loop_alive()
end

local function add_traceback(e)
  if type(e) == "string" then return debug.traceback(e, 2) end
  return e
end

-- peerpool.run adds a traceback to the one the test's error already carries: keep the first.
local function one_traceback(err)
  if type(err) ~= "string" then return err end
  local first = err:find("\nstack traceback:", 1, true)
  local second = first and err:find("\nstack traceback:", first + 1, true)
  return second and err:sub(1, second - 1) or err
end

-- Wrap a test body: fn(env) runs in a coroutine through peerpool.run; whatever happens, the
-- test's pools and servers are closed and the loop must settle with nothing left on it.
function H.test(fn)
  return function()
    local env = setmetatable({ pools = {}, servers = {} }, Env)
    assert(H.drain(), "the loop was busy before the test started")
    local ok, err = pcall(peerpool.run, function()
      env.watchdog = uv.new_timer()
      env.watchdog:start(H.WATCHDOG_MS, 0, function()
        env.timed_out = true
        env:cleanup()
      end)
      env.watchdog:unref()
      local ok2, err2 = xpcall(fn, add_traceback, env)
      env:cleanup()
      if not ok2 then error(err2, 0) end
    end)
    env:cleanup()
    local settled = H.drain()
    if env.timed_out then
      error("the test did not finish within " .. H.WATCHDOG_MS .. " ms (the watchdog closed " ..
        "its pools and servers)" .. (ok and "" or (": " .. tostring(err))), 0)
    end
    if not ok then error(one_traceback(err), 0) end
    assert(settled, "the loop still has work after the test closed its pools and servers")
  end
end

-- Run `code` with `lua5.4 -e` in a new process that sees the same module paths (and, in the
-- sanitizer build, inherits LD_PRELOAD). Returns ok (exited with 0), the exit code, stdout,
-- stderr.
function H.child(code, shell_prefix)
  local prelude = string.format("package.path = %q; package.cpath = %q; ", package.path,
    package.cpath)
  local quoted = "'" .. (prelude .. code):gsub("'", "'\\''") .. "'"
  local errfile = os.tmpname()
  local p = assert(io.popen(string.format("%s lua5.4 -e %s 2>%s", shell_prefix or "", quoted,
    errfile)))
  local out = p:read("a")
  local ok, _, status = p:close()
  local ef = assert(io.open(errfile))
  local err = ef:read("a")
  ef:close()
  os.remove(errfile)
  return ok == true, status, out, err
end

-- A port of 127.0.0.1 that was free a moment ago: bound, read and closed again.
function H.free_port()
  local t = uv.new_tcp()
  t:bind("127.0.0.1", 0)
  local port = t:getsockname().port
  t:close()
  uv.run("nowait") -- finish the close: luv crashes at exit on a handle still closing
  return port
end

H.PROMTOOL = io.popen("command -v promtool"):read("l")

-- `promtool check metrics < text`: ok, its output; nil when promtool is not installed.
function H.promtool(text)
  if not H.PROMTOOL then return nil end
  local path = os.tmpname()
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
  local p = io.popen(string.format("'%s' check metrics < '%s' 2>&1", H.PROMTOOL, path))
  local out = p:read("a")
  local ok = p:close()
  os.remove(path)
  return ok == true, out
end

return H
