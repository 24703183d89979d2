-- Real redis-servers for the specs that talk to one (examples_spec, pipeline_spec): each on
-- 127.0.0.1, waited for until its log says it is ready, and killed after the test that started it.
--
--   after_each(redis.kill_started)   kill the servers the test started
--   redis.start([port [, args]])   address, pid and port of a new redis-server, ready (on a
--                            free port, another one if a parallel test took it first, unless
--                            `port` is given; args(port) its flags instead of plain ones); nil
--                            when redis-server is not installed
--   redis.MISSING            what a test says when it is pending for want of redis-server
--   redis.echo_cmd(s), redis.bulk(s)   the RESP of the command ECHO s, and of its reply
local free_port = require "spec.support.helpers".free_port

local redis = {}

redis.MISSING = "redis-server is not installed (make test installs it)"

-- busted keeps one finally per test, so one list of the servers the running test started.
local started = {}

function redis.kill_started()
  for _, pid in ipairs(started) do os.execute("kill -9 " .. pid .. " 2>/dev/null") end
  started = {}
end

local function plain_args(port)
  return ("--port %d --bind 127.0.0.1 --save '' --appendonly no --daemonize no"):format(port)
end

-- The server's log says whether it is ready or could not listen (a test running in parallel
-- took the port between free_port() and the server's bind).
local function wait_ready(log)
  local text
  for _ = 1, 400 do -- 20 s: generous for a process starting on a loaded machine
    local f = io.open(log)
    text = f and f:read("a") or ""
    if f then f:close() end
    if text:find("Ready to accept connections", 1, true) then return true, text end
    if text:find("Failed listening on port", 1, true) then break end
    os.execute("sleep 0.05")
  end
  return false, text
end

function redis.start(port, args)
  local exe = io.popen("command -v redis-server"):read("l")
  if not exe then return nil end
  args = args or plain_args
  for attempt = 1, 3 do
    local p = port or free_port()
    local log = os.tmpname()
    local pid = io.popen(("exec %s %s >%s 2>&1 & echo $!"):format(exe, args(p), log)):read("l")
    started[#started + 1] = pid
    local ready, text = wait_ready(log)
    os.remove(log)
    if ready then return "127.0.0.1:" .. p, pid, p end
    os.execute("kill -9 " .. pid .. " 2>/dev/null")
    assert(not port and attempt < 3, "redis-server did not start on port " .. p .. ":\n" .. text)
  end
end

function redis.echo_cmd(s) return ("*2\r\n$4\r\nECHO\r\n$%d\r\n%s\r\n"):format(#s, s) end

function redis.bulk(s) return ("$%d\r\n%s\r\n"):format(#s, s) end

return redis
