-- Real redis-servers for the specs that talk to one (examples_spec, pipeline_spec): each on
-- 127.0.0.1, waited for until it answers PING, and killed after the test that started it.
--
--   after_each(redis.kill_started)   kill the servers the test started
--   redis.start([port])      address, pid and port of a new redis-server (on a free port unless
--                            `port` is given); nil when redis-server is not installed
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

function redis.start(port)
  local exe = io.popen("command -v redis-server"):read("l")
  if not exe then return nil end
  port = port or free_port()
  local pid = io.popen(string.format(
    "exec %s --port %d --bind 127.0.0.1 --save '' --appendonly no --daemonize no " ..
    ">/dev/null 2>&1 & echo $!", exe, port)):read("l")
  started[#started + 1] = pid
  -- wait until it answers (redis-cli comes with redis-server on Debian)
  for _ = 1, 100 do
    local r = io.popen(string.format("redis-cli -p %d ping 2>/dev/null", port)):read("a")
    if r:match("PONG") then break end
    os.execute("sleep 0.05")
  end
  return "127.0.0.1:" .. port, pid, port
end

-- The TLS example starts its own server (other flags) and has it killed with the rest.
function redis.kill_later(pid)
  started[#started + 1] = pid
end

function redis.echo_cmd(s) return ("*2\r\n$4\r\nECHO\r\n$%d\r\n%s\r\n"):format(#s, s) end

function redis.bulk(s) return ("$%d\r\n%s\r\n"):format(#s, s) end

return redis
