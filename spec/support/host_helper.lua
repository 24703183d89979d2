-- Helpers for the specs of the `peerpool` host program (host_spec, repl_spec): find the built
-- program, run it as a child process on luv's loop, talk to its REPL socket, and drive it on a
-- pseudo-terminal (bin/pp_ptydrive).
--
--   T.run(fn [, ms])        run fn() in a coroutine on the loop; fail after ms (20000); every
--                           process, socket and timer the test made is closed at the end
--   T.spawn(args, opts)     a child process (opts.env: extra environment; opts.cwd); returns
--                           a proc: proc.out, proc.err (growing), proc:write(s),
--                           proc:close_stdin(), proc:wait([ms]) -> exit code, signal,
--                           proc:expect(pattern [, ms]) waits until proc.out matches (plain
--                           text, escape sequences and \r removed) after the last expect
--   T.connect(path [, opts]) a REPL socket client: c:hello(mode), c:eval(line [, ms]) ->
--                           output, error output (framed sessions), c:send(s), c.raw (all bytes),
--                           c.closed (the host ended it); opts.read = false: never reads
--   T.fd_count(pid), T.rss_kb(pid)   a process's open fds and resident memory (KiB)
--   T.sleep(ms), T.wait_until(pred [, ms, what]), T.tmpdir()
--   T.readline              the program was built with readline
local uv = require "luv"

local T = {}

-- A client writing to a session the host has closed gets EPIPE rather than killing busted.
local sigpipe = uv.new_signal()
sigpipe:start("sigpipe", function() end)
sigpipe:unref()

-- ---- where things are -----------------------------------------------------------------

local function exists(path)
  return uv.fs_stat(path) ~= nil
end

-- The build dir: the one whose lua/peerpool.so is on package.cpath (ctest passes it).
local function find_bin_dir()
  local env = os.getenv("PEERPOOL_BIN_DIR")
  if env then return env end
  for template in package.cpath:gmatch("[^;]+") do
    local dir = template:match("^(.*)/lua/%?%.so$")
    if dir and exists(dir .. "/lua/peerpool.so") and exists(dir .. "/bin/peerpool") then
      return dir .. "/bin"
    end
  end
  if exists("build/bin/peerpool") then return uv.cwd() .. "/build/bin" end
  error("cannot find the built peerpool program (set PEERPOOL_BIN_DIR)")
end

T.bin_dir = find_bin_dir()
T.peerpool = T.bin_dir .. "/peerpool"
T.ptydrive = exists(T.bin_dir .. "/pp_ptydrive") and (T.bin_dir .. "/pp_ptydrive") or nil
T.root = uv.cwd() -- ctest runs the specs from the source dir
-- Built with readline (line editing, history, completion) or plain line input?
do
  local f = assert(io.popen("'" .. T.peerpool .. "' --version"))
  T.readline = f:read("a"):find("readline", 1, true) ~= nil
  f:close()
end

-- ---- the test's resources ------------------------------------------------------------------

local owned = {} -- handles and processes to close when the test ends

local function own(x)
  owned[#owned + 1] = x
  return x
end

local function close_all()
  for i = #owned, 1, -1 do
    local x = owned[i]
    if x.cleanup then
      pcall(x.cleanup, x)
    elseif not x:is_closing() then
      x:close()
    end
  end
  owned = {}
end

function T.sleep(ms)
  local co = assert(coroutine.running())
  local t = uv.new_timer()
  -- from now, not from the loop's cached time (as H.sleep: it lags after slow work)
  local lag = math.max(0, math.ceil(uv.hrtime() / 1e6 - uv.now()))
  t:start(ms + lag, 0, function()
    t:close()
    assert(coroutine.resume(co))
  end)
  coroutine.yield()
end

function T.wait_until(pred, ms, what)
  ms = ms or 10000
  local deadline = uv.now() + ms
  while not pred() do
    if uv.now() > deadline then
      error("gave up waiting" .. (what and (" for " .. what) or "") .. " after " .. ms .. " ms", 2)
    end
    T.sleep(5)
  end
end

--- Run fn in a coroutine on the loop until it ends; raise its error; fail after ms.
function T.run(fn, ms)
  ms = ms or 20000
  local done, ok, err = false, nil, nil
  local co = coroutine.create(function()
    ok, err = xpcall(fn, debug.traceback)
    done = true
  end)
  local watchdog = uv.new_timer()
  local timed_out = false
  watchdog:start(ms, 0, function() timed_out = true end)
  local rok, rerr = coroutine.resume(co)
  if not rok then
    done, ok, err = true, false, rerr
  end
  while not done and not timed_out do
    uv.run("once")
  end
  watchdog:close()
  close_all()
  for _ = 1, 200 do
    if not uv.loop_alive() then break end
    uv.run("nowait")
  end
  if timed_out and not done then error("the test did not finish within " .. ms .. " ms", 0) end
  if not ok then error(err, 0) end
end

--- The whole content of a file (fails the test when it cannot be read).
function T.read_file(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

--- The number of file descriptors process pid has open.
function T.fd_count(pid)
  local n = 0
  local req = assert(uv.fs_scandir("/proc/" .. pid .. "/fd"))
  while uv.fs_scandir_next(req) do n = n + 1 end
  return n
end

--- The resident set size of process pid, in KiB.
function T.rss_kb(pid)
  return tonumber(T.read_file("/proc/" .. pid .. "/status"):match("VmRSS:%s*(%d+)"))
end

local tmp_count = 0
--- A fresh directory under /tmp (short: unix socket paths are limited to 107 bytes).
function T.tmpdir()
  tmp_count = tmp_count + 1
  local dir = assert(uv.fs_mkdtemp("/tmp/pp-host-XXXXXX"))
  own({
    cleanup = function()
      local req = uv.fs_scandir(dir)
      while req do
        local name = uv.fs_scandir_next(req)
        if not name then break end
        uv.fs_unlink(dir .. "/" .. name)
      end
      uv.fs_rmdir(dir)
    end,
  })
  return dir
end

-- ---- processes ------------------------------------------------------------------------------

--- Remove terminal escape sequences and carriage returns: what a user reads.
function T.plain(s)
  s = s:gsub("\27%[[%d;?]*[%a@]", ""):gsub("\27[%(%)][%w]", ""):gsub("\27[=>]", "")
  return (s:gsub("\r", ""))
end

local PASS_ENV = { "PATH", "HOME", "LANG", "LC_ALL", "LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS",
  "LSAN_OPTIONS", "LUA_PATH", "LUA_CPATH", "LUA_PATH_5_4", "LUA_CPATH_5_4" }

local Proc = {}
Proc.__index = Proc

function T.spawn(args, opts)
  opts = opts or {}
  local env, set = {}, {}
  for k, v in pairs(opts.env or {}) do
    if v ~= false then env[#env + 1] = k .. "=" .. v end
    set[k] = true
  end
  for _, k in ipairs(PASS_ENV) do
    local v = os.getenv(k)
    if v and not set[k] then env[#env + 1] = k .. "=" .. v end
  end
  local p = setmetatable({ out = "", err = "", mark = 1, exited = false }, Proc)
  p.stdin, p.stdout, p.stderr = uv.new_pipe(false), uv.new_pipe(false), uv.new_pipe(false)
  local cmd = args[1]
  local argv = { table.unpack(args, 2) }
  local handle, perr = uv.spawn(cmd, {
    args = argv, env = env, cwd = opts.cwd or T.root,
    stdio = { p.stdin, p.stdout, p.stderr },
  }, function(code, signal)
    p.exited, p.code, p.signal = true, code, signal
  end)
  if not handle then
    p.stdin:close()
    p.stdout:close()
    p.stderr:close()
    error("cannot run " .. cmd .. ": " .. tostring(perr), 2)
  end
  p.handle = handle
  p.pid = handle:get_pid()
  p.stdout:read_start(function(_, data)
    if data then p.out = p.out .. data else p.stdout:read_stop(); p.out_closed = true end
  end)
  p.stderr:read_start(function(_, data)
    if data then p.err = p.err .. data else p.stderr:read_stop(); p.err_closed = true end
  end)
  own(p)
  return p
end

function Proc:write(s)
  self.stdin:write(s)
end

function Proc:close_stdin()
  if not self.stdin:is_closing() then self.stdin:shutdown(function() self.stdin:close() end) end
end

--- Wait for the process to end and its output to be read; returns code, signal.
function Proc:wait(ms)
  T.wait_until(function() return self.exited and self.out_closed and self.err_closed end,
    ms or 15000, "the process to exit (stdout so far: " .. self.out:sub(-400) .. ")")
  return self.code, self.signal
end

function Proc:kill(sig)
  if not self.exited and not self.handle:is_closing() then self.handle:kill(sig or "sigterm") end
end

--- Wait until the plain text of stdout after the previous expect matches `pattern` (a Lua
-- pattern); returns the captures (or the whole match) and moves the mark past the match.
function Proc:expect(pattern, ms)
  local result
  local ok = pcall(T.wait_until, function()
    local text = T.plain(self.out)
    local s, e = text:find(pattern, self.mark)
    if not s then return false end
    result = { text:match(pattern, self.mark) }
    self.mark = e + 1
    return true
  end, ms or 10000)
  if not ok then
    error(string.format("gave up waiting for output matching %q after %d ms; output after " ..
      "the mark: %q", pattern, ms or 10000, T.plain(self.out):sub(self.mark)), 2)
  end
  return table.unpack(result)
end

function Proc:cleanup()
  if not self.exited then pcall(self.handle.kill, self.handle, "sigkill") end
  for _, h in ipairs { self.stdin, self.stdout, self.stderr, self.handle } do
    if not h:is_closing() then h:close() end
  end
end

-- ---- REPL socket clients --------------------------------------------------------------------

local Client = {}
Client.__index = Client

--- Connect to a REPL socket; the client collects frames (after c:hello) or plain bytes, unless
-- opts.read is false (a client that never reads what the host sends).
function T.connect(path, opts)
  local c = setmetatable({ raw = "", buf = "", frames = {}, closed = false }, Client)
  c.pipe = uv.new_pipe(false)
  local connected, cerr = false, nil
  c.pipe:connect(path, function(err)
    cerr = err
    connected = true
  end)
  T.wait_until(function() return connected end, 5000, "the connection")
  if cerr then
    c.pipe:close()
    error("cannot connect to " .. path .. ": " .. cerr, 2)
  end
  own(c)
  if opts and opts.read == false then return c end
  c.pipe:read_start(function(_, data)
    if not data then
      c.closed = true
      return
    end
    c.raw = c.raw .. data
    c.buf = c.buf .. data
    while true do
      local start = c.buf:find("\1", 1, true)
      if not start then break end
      local kind, len, body = c.buf:match("^\1(%a)(%d+):()", start)
      if not kind then break end
      len = tonumber(len)
      if #c.buf < body + len - 1 then break end
      c.frames[#c.frames + 1] = { kind = kind, text = c.buf:sub(body, body + len - 1) }
      c.buf = c.buf:sub(body + len)
    end
  end)
  return c
end

function Client:send(s)
  self.pipe:write(s)
end

--- Speak frames from now on ("tty": prompts and watch keys, as `peerpool attach` on a
-- terminal; "pipe": results only). Waits for the first prompt in tty mode.
function Client:hello(mode)
  mode = mode or "tty"
  self:send("\1hello 1 " .. mode .. "\n")
  if mode == "tty" then self:wait_prompt() end
end

--- Wait for a non-empty prompt frame after frame number `from`; returns its index.
function Client:wait_prompt(from, ms)
  local at
  T.wait_until(function()
    for i = (from or 0) + 1, #self.frames do
      if self.frames[i].kind == "p" and self.frames[i].text ~= "" then
        at = i
        return true
      end
    end
    return false
  end, ms or 10000, "a prompt")
  return at
end

--- Send a line and wait until the session shows its prompt again. Returns the output, the
-- error output and the prompt.
function Client:eval(line, ms)
  local from = #self.frames
  self:send(line .. "\n")
  local at = self:wait_prompt(from, ms)
  local out, err = {}, {}
  for i = from + 1, at do
    local f = self.frames[i]
    if f.kind == "o" then out[#out + 1] = f.text end
    if f.kind == "e" then err[#err + 1] = f.text end
  end
  return table.concat(out), table.concat(err), self.frames[at].text
end

function Client:close()
  if not self.pipe:is_closing() then self.pipe:close() end
end
Client.cleanup = Client.close

-- ---- the host with a REPL socket ------------------------------------------------------------

--- Start `peerpool --repl-socket <dir>/repl.sock spec/support/host_fixture.lua` (with extra
-- arguments before the script, and extra environment); returns the process, the socket path
-- and the directory once the fixture is up.
function T.host_with_socket(extra_args, env)
  local dir = T.tmpdir()
  local path = dir .. "/repl.sock"
  local args = { T.peerpool, "--repl-socket", path }
  for _, a in ipairs(extra_args or {}) do args[#args + 1] = a end
  args[#args + 1] = "spec/support/host_fixture.lua"
  local p = T.spawn(args, { env = env })
  p:expect("fixture ready", 15000)
  T.wait_until(function() return exists(path) end, 5000, "the socket")
  return p, path, dir
end

return T
