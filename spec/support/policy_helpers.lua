-- Helpers for the policy specs, on top of spec/support/helpers.lua (H.test and its env):
--
--   P.test(fn)            H.test(fn), plus env:tmpname() files (env:tmppath(): a path with no
--                         file yet) removed after the test and
--                         env:node(opts) / env:redis(opts) / env:many(n, kind) servers
--   P.spy(fn)             a wrapper of fn, and the list where it records every call's
--                         arguments and results ({ args = pack(...), res = pack(...) })
--   P.write(path, text)   write a file
--   P.read(path)          a file's text, or nil
--   P.child(code, secs)   run `code` in a fresh lua5.4 with the module's paths under
--                         `timeout secs` (default 10); returns status (the exit code, 124 on
--                         timeout, 128+n on signal n), stdout, stderr
--   P.hook_stats(pool, name)   calls, errors of one hook
--   P.addrs_of(servers)   the servers' addresses, in order
--   P.warm(pool, addrs)   acquire each address once and release: each peer gets an idle conn
--   P.warm_pool(env, n, opts, kind)   n servers (env:many(n, kind)) and a pool (opts, with
--                         them as its peers) with a conn made to each; returns pool, servers
--   P.who(conn)           the accept number of the conn at the node or line server
--                         ("WHO" -> "CONN n")
local H = require "spec.support.helpers"
local servers = require "spec.support.servers"
local S = require "spec.support.policy_servers"

local P = {}

function P.write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

function P.read(path)
  local f = io.open(path, "r")
  if not f then return nil end
  local text = f:read("a")
  f:close()
  return text
end

function P.exists(path)
  local f = io.open(path, "r")
  if f then f:close() end
  return f ~= nil
end

local function env_tmpname(env)
  local path = os.tmpname()
  env.tmpfiles[#env.tmpfiles + 1] = path
  return path
end

local function env_tmppath(env)
  local path = env_tmpname(env)
  os.remove(path)
  return path
end

local function env_node(env, opts) return env:add(S.node(opts)) end
local function env_redis(env, opts) return env:add(S.redis(opts)) end

-- n servers of servers.lua's `kind` ("line", "echo", ...).
local function env_many(env, n, kind)
  local list = {}
  for i = 1, n do list[i] = env:add(servers[kind or "line"]()) end
  return list
end

-- Remove a temporary file and whatever was moved aside or left beside it.
local function remove_tmp(path)
  os.remove(path)
  os.remove(path .. ".tmp")
  local p = io.popen("ls " .. path .. ".* 2>/dev/null")
  if p then
    for f in p:lines() do os.remove(f) end
    p:close()
  end
end

function P.test(fn)
  return H.test(function(env)
    env.tmpfiles = {}
    env.tmpname, env.tmppath = env_tmpname, env_tmppath
    env.node, env.redis, env.many = env_node, env_redis, env_many
    local ok, err = xpcall(fn, function(e)
      if type(e) == "string" then return debug.traceback(e, 2) end
      return e
    end, env)
    env:cleanup()
    for _, path in ipairs(env.tmpfiles) do remove_tmp(path) end
    if not ok then error(err, 0) end
  end)
end

function P.spy(fn)
  local calls = {}
  return function(...)
    local res = table.pack(fn(...))
    calls[#calls + 1] = { args = table.pack(...), res = res }
    return table.unpack(res, 1, res.n)
  end, calls
end

function P.child(code, secs)
  local prelude = string.format("package.path = %q; package.cpath = %q; ", package.path,
    package.cpath)
  local script = os.tmpname()
  P.write(script, prelude .. code)
  local errfile = os.tmpname()
  local p = assert(io.popen(string.format("timeout -s KILL %d lua5.4 %s 2>%s; echo \"rc=$?\"",
    secs or 10, script, errfile)))
  local out = p:read("a")
  p:close()
  local err = P.read(errfile) or ""
  os.remove(script)
  os.remove(errfile)
  local status = tonumber(out:match("rc=(%d+)%s*$"))
  out = out:gsub("rc=%d+%s*$", "")
  return status, out, err
end

function P.hook_stats(pool, name)
  local h = pool:stats().hooks[name]
  return h.calls, h.errors
end

function P.addrs_of(list)
  local out = {}
  for i, srv in ipairs(list) do out[i] = srv.addr end
  return out
end

function P.warm(pool, addrs)
  for _, addr in ipairs(addrs) do
    local conn = assert(pool:acquire(addr))
    conn:release()
  end
end

function P.warm_pool(env, n, opts, kind)
  local srvs = env:many(n, kind)
  opts = opts or {}
  opts.peers = P.addrs_of(srvs)
  local pool = env:pool(opts)
  P.warm(pool, opts.peers)
  return pool, srvs
end

function P.who(conn)
  assert(conn:send("WHO\r\n"))
  return tonumber(assert(conn:receive("*l")):match("^CONN (%d+)$"))
end

return P
