-- redis: a complete policy for a pool of Redis connections (one pool per Redis server or per
-- group of replicas). Every new conn runs a handshake that pipelines, in one round trip,
--
--   AUTH [username] password   (if `password` is set)
--   SELECT db                  (if `db` is not 0)
--   CLIENT SETNAME name        (if `client_name` is set)
--   PING
--
-- and expects +OK for each and +PONG last; anything else fails the attempt (error
-- "handshake_failed"). The ping hook sends PING and expects +PONG; the pool runs it on a conn
-- that idled longer than `ping_after` before lending it, and on conns idle for `keepalive` ms.
-- Selection is least loaded; backoff is exponential with full jitter, and a refused AUTH
-- (wrong password) burns the server at once unless `burn_auth` is false, so a misconfigured
-- client stops hammering it (other handshake failures, like -LOADING, only back off).
--
-- Commands are sent in RESP (arrays of bulk strings), which any Redis accepts. For the
-- program's own requests, `.command(...)` encodes one and `.reply(conn)` reads one reply.
--
-- Options (redis.new{...}):
--   password = false      AUTH password
--   username = false      ACL user (Redis 6+), with password
--   db = 0                SELECT this database
--   client_name = false   CLIENT SETNAME
--   burn_auth = true      burn a server that refuses the password
--   backoff = {}          options of backoff_exponential (base_ms, cap_ms, burn_after, burn_on)
--   ping_after = 30000    pool option: ping a conn idle this long before lending it
--   keepalive = 60000     pool option: ping idle conns this often
--
-- The pool options to use with it are in `.pool_options` (a fresh table each time):
--   { max_per_peer = 16, client_limit = 1, connect_timeout = 2000, handshake_timeout = 2000,
--     retries = 2, ping_after = 30000, keepalive = 60000, idle_timeout = 300000 }
--
-- Example:
--   local redis = require "peerpool.policies.redis".new{ password = os.getenv "REDIS_PASS" }
--   local opts = redis.pool_options
--   opts.policy, opts.peers = redis, { "127.0.0.1:6379" }
--   local pool = peerpool.new(opts)
--   peerpool.run(function()
--     local conn = assert(pool:acquire())
--     conn:send(redis.command("GET", "greeting"))
--     print(redis.reply(conn))                         -- hello
--     conn:release()
--   end)
local options = require "peerpool.policies.options"
local least_loaded = require "peerpool.policies.least_loaded"
local backoff_exponential = require "peerpool.policies.backoff_exponential"

local DEFAULTS = {
  password = { false, "string_or_false" },
  username = { false, "string_or_false" },
  db = { 0, "integer" },
  client_name = { false, "string_or_false" },
  burn_auth = { true, "boolean" },
  backoff = { {}, "table" },
  ping_after = { 30000, "integer" },
  keepalive = { 60000, "integer" },
}

--- redis.command(...): the RESP encoding of one command, e.g. command("SET", "k", "v").
local function command(...)
  local n = select("#", ...)
  local parts = { "*" .. n .. "\r\n" }
  for i = 1, n do
    local arg = tostring((select(i, ...)))
    parts[#parts + 1] = "$" .. #arg .. "\r\n" .. arg .. "\r\n"
  end
  return table.concat(parts)
end

--- redis.reply(conn): read one reply: a status (+OK) or an integer (:1) gives its text ("OK",
-- "1"), a bulk string its bytes, an array a table of its elements (read the same way), the nil
-- bulk or array ($-1, *-1) false; an error reply gives nil, "redis: " .. its text (in an array:
-- the first error, once the whole array was read). A failed read gives nil and the read's
-- error; a reply that is not RESP (a bad length, an unknown type, arrays nested over 32 deep)
-- nil, "bad_reply" and the line -- the conn is then out of step: close it.
local MAX_DEPTH = 32

local function bad_reply(line)
  return nil, "bad_reply", "redis: not a RESP reply: " .. line:sub(1, 64)
end

local function reply_at(conn, depth)
  local line, err = conn:receive("*l")
  if not line then return nil, err end
  local kind, rest = line:sub(1, 1), line:sub(2)
  if kind == "+" or kind == ":" then return rest end
  if kind == "-" then return nil, "redis: " .. rest end
  if kind ~= "$" and kind ~= "*" then return bad_reply(line) end
  local n = rest:match("^%-?%d+$") and math.tointeger(tonumber(rest))
  if not n or n < -1 then return bad_reply(line) end
  if n == -1 then return false end
  if kind == "$" then
    local data, derr = conn:receive(n + 2)
    if not data then return nil, derr end
    return data:sub(1, n)
  end
  if depth >= MAX_DEPTH then return bad_reply(line) end
  local t, first_error = {}, nil
  for i = 1, n do
    local v, e, detail = reply_at(conn, depth + 1)
    if v == nil and not (type(e) == "string" and e:sub(1, 7) == "redis: ") then
      return nil, e, detail -- a failed read or a bad reply: the rest cannot be read
    end
    if v == nil then first_error = first_error or e end
    t[i] = v == nil and false or v
  end
  if first_error then return nil, first_error end
  return t
end

local function reply(conn) return reply_at(conn, 0) end

local function build(M, opts)
  local o = options.check("policy.redis", opts, DEFAULTS)
  if o.username and not o.password then
    error("policy.redis.password must be set with username", 0)
  end
  local backoff_opts = o.backoff
  local ok, backoff = pcall(backoff_exponential.new, backoff_opts)
  if not ok then error((tostring(backoff):gsub("policy%.backoff", "policy.redis.backoff")), 0) end
  local burn_auth = o.burn_auth
  local auth_failed = {} -- peer address -> true: its last handshake failed on AUTH

  -- The handshake: every command and the reply each one must get, in one write.
  local script, expect = {}, {}
  if o.password then
    if o.username then
      script[#script + 1] = command("AUTH", o.username, o.password)
    else
      script[#script + 1] = command("AUTH", o.password)
    end
    expect[#expect + 1] = "+OK"
  end
  if o.db ~= 0 then
    script[#script + 1] = command("SELECT", o.db)
    expect[#expect + 1] = "+OK"
  end
  if o.client_name then
    script[#script + 1] = command("CLIENT", "SETNAME", o.client_name)
    expect[#expect + 1] = "+OK"
  end
  script[#script + 1] = command("PING")
  expect[#expect + 1] = "+PONG"
  script = table.concat(script)
  local PING = command("PING")

  M.select_peer = least_loaded.select_peer
  M.select_conn = least_loaded.select_conn
  -- A server that refuses our password is burned at once (retrying cannot help); any other
  -- failure (refused connect, -LOADING while Redis starts, ...) backs off.
  function M.backoff(attempt, err, peer)
    local addr = peer and peer.addr
    if addr and auth_failed[addr] then
      auth_failed[addr] = nil
      if burn_auth and err == "handshake_failed" then return false end
    end
    return backoff.backoff(attempt, err, peer)
  end

  function M.handshake(conn)
    if not conn:send(script) then return false end
    for i, want in ipairs(expect) do
      local line = conn:receive("*l")
      if line ~= want then
        if i == 1 and o.password then auth_failed[conn.peer] = true end
        return false
      end
    end
    return true
  end

  function M.ping(conn)
    if not conn:send(PING) then return false end
    return conn:receive("*l") == "+PONG"
  end

  local function pool_options()
    return { max_per_peer = 16, client_limit = 1, connect_timeout = 2000,
      handshake_timeout = 2000, retries = 2, ping_after = o.ping_after, keepalive = o.keepalive,
      idle_timeout = 300000 }
  end

  return o, { command = command, reply = reply }, { pool_options = pool_options }
end

return options.policy("redis", "Redis: AUTH/SELECT/PING handshake, PING health checks", build)
