-- Finding F1 (fuzz seeds 1, 2, 3, 8, ... with the closer server: the process dies with exit
-- 141, no report): a send on a conn whose peer has just closed it kills a plain lua5.4
-- process with SIGPIPE. Nothing in the module ignores SIGPIPE (the host program does, in
-- bindings/host/main.c; libuv's writes do not use MSG_NOSIGNAL), so any script run by lua5.4,
-- or any program that embeds the module, dies silently when a peer closes at the wrong time.
-- Here: the peer answers part of a request and closes; receive() hands the part to Lua from
-- the same read that has not yet seen the end of the stream; the first send makes the
-- peer's kernel answer RST, the second one raises SIGPIPE. Expected: the second send answers
-- nil, "EPIPE" (or "closed") and the script goes on.
--   LUA_CPATH='build/lua/?.so;;' lua5.4 spec/fuzz/repro/sigpipe_send_after_eof.lua; echo $?
local uv = require "luv"
local peerpool = require "peerpool"

local srv = uv.new_tcp()
srv:bind("127.0.0.1", 0)
srv:listen(8, function()
  local c = uv.new_tcp()
  srv:accept(c)
  c:read_start(function(_, data) -- a partial answer, then close
    if data then c:write(data:sub(1, 5)); c:close() end
  end)
end)
local addr = "127.0.0.1:" .. srv:getsockname().port
local pool = peerpool.new { peers = { addr } }

peerpool.run(function()
  local conn = assert(pool:acquire(addr))
  conn:send("hello\n")
  print("receive:", conn:receive(5)) -- "hello"; the peer has closed meanwhile
  print("send 1:", conn:send("x"))  -- 1: the peer's kernel answers RST
  print("send 2:", conn:send("y"))  -- SIGPIPE: the process ends here (exit 141)
  conn:close()
end)
pool:close()
srv:close()
uv.run()
print("ok: no SIGPIPE")
