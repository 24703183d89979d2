-- Finding F7 (fuzz seed 5: "unexpected hook failure"): an asynchronous hook (handshake, ping,
-- seed) that raises an error value that is not a string or a number -- a table, with or
-- without __tostring -- is reported as "bad argument #2 to '_hook_error' (string expected,
-- got table)": peerpool.lua's _run_hook passes the raw error value to pool:_hook_error, whose
-- luaL_optstring raises. The hook's own error is lost from the report. (The synchronous hooks
-- report "(error object is not a string)".) Expected: the report carries tostring(err) (or
-- says the error object is not a string), never an internal argument error.
-- If the hook raises so after it has waited (a resume from a luv callback), that internal
-- error goes to whoever resumed the hook's coroutine instead, and conn:_done is never called.
--   LUA_CPATH='build/lua/?.so;;' lua5.4 spec/fuzz/repro/hook_error_object.lua
local uv = require "luv"
local peerpool = require "peerpool"

local addr, close_server = require "spec.fuzz.holding_server"()
local report = ""
peerpool.on_error(function(text) report = report .. text .. "\n" end)
local pool = peerpool.new { peers = { addr }, retries = 0, policy = {
  handshake = function() error(setmetatable({}, { __tostring = function() return "my error" end })) end,
} }
peerpool.run(function()
  pool:acquire(addr, { timeout = 500 })
  -- was: peerpool: policy hook handshake (table) failed: peerpool.lua:260: bad argument #2
  --      to '_hook_error' (string expected, got table); using the default
end)
pool:close()
close_server()
uv.run()
local good = report:find("policy hook handshake", 1, true) and not report:find("_hook_error", 1, true)
print((good and "ok: " or "BUG: ") .. (report:match("^[^\n]*") or "(no report)"))
os.exit(good and 0 or 1)
