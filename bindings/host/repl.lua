-- The REPL of the `peerpool` host program, compiled into the program (bindings/host/main.c
-- runs this chunk with the host's C functions and luv). One REPL core serves every session: the
-- terminal (--repl) and each client of the unix socket (--repl-socket). A session evaluates
-- lines the way lua5.4 does (an expression is printed without `return`; an unfinished chunk
-- asks for more), but each chunk runs in a coroutine of its own on luv's loop, so a line that
-- yields (pool:acquire, conn:receive, sleep) lets the loop run and shows its results when it
-- ends. Nothing a session does can raise into the host: every chunk runs under xpcall and every
-- I/O callback is guarded.
local H, uv, protocol = ... -- protocol: repl_frames.lua

local M = {}
local pack, concat, sort = table.pack, table.concat, table.sort
local fmt = string.format

-- ---- pretty printer -------------------------------------------------------------------------

local keywords = {}
for w in ([[and break do else elseif end false for function goto if in local nil not or
  repeat return then true until while]]):gmatch("%a+") do keywords[w] = true end

local function is_identifier(s)
  return type(s) == "string" and s:match("^[%a_][%w_]*$") ~= nil and not keywords[s]
end

local escapes = { ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t", ['"'] = '\\"', ["\\"] = "\\\\" }
local function quote(s, max)
  local cut = ""
  if max and #s > max then
    cut = fmt("...(%d bytes)", #s)
    s = s:sub(1, max)
  end
  return '"' .. s:gsub('[%c"\\]', function(c)
    return escapes[c] or fmt("\\%d", c:byte())
  end) .. '"' .. cut
end

-- Keys in a stable order: numbers ascending, then strings, then booleans, then the rest by
-- their tostring.
local type_rank = { number = 1, string = 2, boolean = 3 }
local function key_less(a, b)
  local ta, tb = type(a), type(b)
  local ra, rb = type_rank[ta] or 4, type_rank[tb] or 4
  if ra ~= rb then return ra < rb end
  if ta == "number" or ta == "string" then return a < b end
  if ta == "boolean" then return (a and 1 or 0) < (b and 1 or 0) end
  return tostring(a) < tostring(b)
end

local function safe_tostring(v)
  local ok, s = pcall(tostring, v)
  if ok and type(s) == "string" then return s end
  return "<" .. type(v) .. ">"
end

--- pretty(v [, opts]): a readable rendering of any value. Tables are shown with sorted keys,
-- nested and indented, on one line when they fit in opts.width (80); a table already on the
-- path being printed is shown as <cycle: table: 0x...>; beyond opts.depth (4) levels a table is
-- shown as {...N}; at most opts.items (100) entries per table and opts.total (2000) in all;
-- strings inside tables are quoted and cut at opts.string (200) bytes. A table with a
-- __tostring metamethod is shown by it.
local function pretty(v, opts)
  opts = opts or {}
  local max_depth = opts.depth or 4
  local width = opts.width or 80
  local max_items = opts.items or 100
  local max_string = opts.string or 200
  local budget = opts.total or 2000
  local on_path = {}

  local function render(x, depth, indent)
    local t = type(x)
    if t == "string" then return quote(x, max_string) end
    if t ~= "table" then return safe_tostring(x) end
    local mt = getmetatable(x)
    if type(mt) == "table" and rawget(mt, "__tostring") then return safe_tostring(x) end
    if on_path[x] then return "<cycle: " .. safe_tostring(x):gsub("^table: ", "table: ") .. ">" end
    local keys, n = {}, 0
    for k in next, x do
      n = n + 1
      keys[n] = k
    end
    if n == 0 then return "{}" end
    if depth >= max_depth then return fmt("{...%d}", n) end
    sort(keys, key_less)
    on_path[x] = true
    local parts = {}
    local seq = 1 -- the array part, 1..k with no holes, is shown without keys
    for i = 1, n do
      if i > max_items or budget <= 0 then
        parts[#parts + 1] = fmt("...(%d more)", n - i + 1)
        break
      end
      budget = budget - 1
      local k = keys[i]
      local val = render(rawget(x, k), depth + 1, indent .. "  ")
      if k == seq then
        parts[#parts + 1] = val
        seq = seq + 1
      elseif is_identifier(k) then
        parts[#parts + 1] = k .. " = " .. val
      else
        local ks = type(k) == "string" and quote(k, max_string)
          or (type(k) == "table" and not on_path[k]) and safe_tostring(k)
          or render(k, max_depth, "")
        parts[#parts + 1] = "[" .. ks .. "] = " .. val
      end
    end
    on_path[x] = nil
    local one = "{ " .. concat(parts, ", ") .. " }"
    if #one + #indent <= width and not one:find("\n", 1, true) then return one end
    local inner = indent .. "  "
    return "{\n" .. inner .. concat(parts, ",\n" .. inner) .. "\n" .. indent .. "}"
  end

  return render(v, 0, "")
end
M.pretty = pretty

-- How a result is shown at the prompt: strings as they are (like lua5.4), the rest pretty.
local function show(v)
  if type(v) == "string" then return v end
  return pretty(v)
end

-- ---- the environment lines run in -------------------------------------------------------------

-- Lines read and write the script's globals; the REPL helpers are seen only where no global of
-- that name exists, so they never shadow or pollute the script's names.
local helpers = {}
local env = setmetatable({}, {
  __index = function(_, k)
    local v = _G[k]
    if v == nil then v = helpers[k] end
    return v
  end,
  __newindex = function(_, k, v) _G[k] = v end,
})
M.env = env

-- ---- limits -------------------------------------------------------------------------------

--- Bounds on what a REPL socket client can make the program hold (docs/repl.md). A script can
-- change them through require("peerpool.host").repl_limits; each is read when it is applied.
local limits = {
  sessions = 16,            -- socket sessions open at once; one more is refused with a message
  line_bytes = 1024 * 1024, -- a line, and an unfinished multi-line chunk (any session)
  line_ms = 30000,          -- a line must arrive whole within this long of its first byte
  queued_bytes = 1024 * 1024, -- lines waiting behind a running line: beyond, reading pauses
  output_bytes = 1024 * 1024, -- output waiting for the client: beyond, it is dropped (marked)
  stall_ms = 60000,         -- output waiting this long with none of it read: the session ends
}
M.limits = limits

-- ---- sessions -------------------------------------------------------------------------------

local Session = {}
Session.__index = Session
local sessions = {}                              -- open sessions
local by_co = setmetatable({}, { __mode = "k" }) -- a line's coroutine -> its session
local current                                    -- the session whose line runs synchronously
local next_id = 0

--- The session of the line running now (nil outside REPL lines).
local function running_session()
  local co = coroutine.running()
  return by_co[co] or current
end
M.running_session = running_session

-- io: write(text, is_error), prompt(p or nil), watch(on), close(), history(chunk) (optional).
function Session.new(io, interactive, name)
  next_id = next_id + 1
  local s = setmetatable({
    id = next_id, io = io, interactive = interactive, name = name or ("session " .. next_id),
    -- lines waiting for the running one: queue[qhead..qtail], queued bytes (newlines too)
    queue = {}, qhead = 1, qtail = 0, queued = 0,
    errors = 0, detached = setmetatable({}, { __mode = "k" }),
  }, Session)
  sessions[s] = true
  return s
end

function Session:out(text, is_error)
  if self.closed then return end
  if text:sub(-1) ~= "\n" then text = text .. "\n" end
  local ok = pcall(self.io.write, text, is_error)
  if not ok then self:close() end
end

function Session:start()
  if self.interactive then
    self:out(fmt("peerpool %s REPL on the loop (%s) - help() lists the helpers; %s", M.version,
      self.name, self.name == "terminal" and "Ctrl-D quits" or "Ctrl-D ends the session"))
  end
  self:pump()
end

function Session:show_prompt()
  if not self.interactive or self.closed then return end
  pcall(self.io.prompt, self.buffer and ">> " or "> ")
end

-- Trim a traceback to the frames of the user's code: drop the REPL's own frames (from the
-- xpcall that ran the chunk down), and drop it entirely when only the chunk itself is left.
local function trim_traceback(tb)
  local msg, rest = tb:match("^(.-)\nstack traceback:\n(.*)$")
  if not msg then return tb end
  local frames, useful = {}, false
  for line in rest:gmatch("[^\n]+") do
    if line:find("in function 'xpcall'", 1, true) then break end
    -- the REPL's own frames (its environment's metamethods, the block hook) are noise
    if not line:find("[C]: in function 'error'", 1, true) and not line:match("^%s*peerpool/repl:")
    then
      frames[#frames + 1] = line
      if not line:match("^%s*repl:%d+: in main chunk$") then useful = true end
    end
  end
  if not useful then return msg end
  return msg .. "\nstack traceback:\n" .. concat(frames, "\n")
end

local function handler(e)
  if type(e) ~= "string" then
    local mt = getmetatable(e)
    if mt and mt.__tostring then
      e = safe_tostring(e)
    else
      e = "(error object is a " .. type(e) .. " value) " .. pretty(e)
    end
  end
  return debug.traceback(e, 2)
end

function Session:report(results, prefix)
  prefix = prefix or ""
  if results[1] then
    if results.n > 1 then
      local parts = {}
      for i = 2, results.n do
        local ok, s = pcall(show, results[i])
        parts[#parts + 1] = ok and s or ("<cannot show: " .. tostring(s) .. ">")
      end
      self:out(prefix .. concat(parts, "\t"))
    end
  else
    self.errors = self.errors + 1
    self:out(prefix .. trim_traceback(tostring(results[2])), true)
  end
end

-- A line's coroutine has ended: show its results; if the session was waiting for it, go on
-- with the lines that queued up meanwhile.
function Session:finish(co, results)
  by_co[co] = nil
  if self.sync == co then -- it ended without yielding: run() shows the prompt
    self:report(results)
    return
  end
  if self.busy == co then
    self.busy = nil
    self:report(results)
    self:pump()
  elseif self.detached[co] then
    self.detached[co] = nil
    self:report(results, "[background line] ")
  end
end

-- A line that keeps the loop from turning for this long without yielding is stopped: the
-- program's traffic must not wait on a runaway loop typed at a prompt. The loop's clock
-- (uv.now) stands still while a callback runs, so its distance to the real clock is how long
-- the loop has been held.
M.block_limit_ms = 10000
local function block_hook()
  if uv.hrtime() / 1e6 - uv.now() > M.block_limit_ms then
    error(fmt("line stopped: it held the loop for more than %d ms without yielding " ..
      "(a long loop can yield now and then with sleep(0))", M.block_limit_ms), 0)
  end
end

function Session:run(fn)
  local co
  co = coroutine.create(function()
    local r = pack(xpcall(fn, handler))
    self:finish(co, r)
  end)
  debug.sethook(co, block_hook, "", 100000)
  by_co[co] = self
  local prev_current, prev_sync = current, self.sync
  current, self.sync = self, co
  local ok, err = coroutine.resume(co)
  current, self.sync = prev_current, prev_sync
  if not ok then
    self:out("peerpool: REPL internal error: " .. tostring(err), true)
  elseif coroutine.status(co) == "suspended" then
    self.busy = co -- it yielded: the prompt comes back when it ends
  end
end

-- Compile a chunk like lua5.4 does: first as an expression to print, then as statements.
-- Returns the function, or "incomplete", or nil and the error.
local function compile(src)
  local f = load("return " .. src, "=repl", "t", env)
  if f then return f end
  local err
  f, err = load(src, "=repl", "t", env)
  if f then return f end
  if err:sub(-5) == "<eof>" then return "incomplete" end
  return nil, err
end

function Session:line(line)
  local src
  if self.buffer then
    src = self.buffer .. "\n" .. line
  else
    src = line:gsub("^%s*=", "return ", 1)
    if src:match("^%s*$") then return end
  end
  local fn, err = compile(src)
  if fn == "incomplete" then
    if #src > limits.line_bytes then
      self.buffer = nil
      self.errors = self.errors + 1
      self:out(fmt("unfinished chunk over %d bytes: dropped", limits.line_bytes), true)
      return
    end
    self.buffer = src
    return
  end
  self.buffer = nil
  if self.io.history then pcall(self.io.history, src) end
  if not fn then
    self.errors = self.errors + 1
    self:out(err, true)
    return
  end
  self:run(fn)
end

-- Run queued lines until one yields; then show the prompt, or end the session at EOF.
function Session:pump()
  while not self.busy and not self.closed and self.qhead <= self.qtail do
    local line = self.queue[self.qhead]
    self.queue[self.qhead], self.qhead = nil, self.qhead + 1
    self.queued = self.queued - #line - 1
    self:line(line)
  end
  if self.closed then return end
  if self.io.drained then self.io.drained() end
  if self.busy then
    if self.interactive then pcall(self.io.prompt, nil) end
    return
  end
  if self.input_ended then
    if self.buffer then
      self.errors = self.errors + 1
      self:out("unfinished chunk at the end of input:\n" .. self.buffer, true)
      self.buffer = nil
    end
    self:close()
    return
  end
  self:show_prompt()
end

--- A line of input. While a watch runs, a line ends it (plain terminals and sockets send
-- whole lines); while a line runs, input queues up behind it.
function Session:feed(line)
  if self.closed then return end
  if self.watch_stop then
    self.watch_stop()
    return
  end
  self.qtail = self.qtail + 1
  self.queue[self.qtail] = line
  self.queued = self.queued + #line + 1
  if not self.busy then self:pump() end
end

function Session:key()
  if self.watch_stop then self.watch_stop() end
end

--- Ctrl-C: end a watch; else stop waiting for a running line (it goes on in the background
-- and its results are shown when it ends); else drop an unfinished chunk.
function Session:interrupt()
  if self.closed then return end
  self.queue, self.qhead, self.qtail, self.queued = {}, 1, 0, 0
  if self.watch_stop then
    self.watch_stop()
    return
  end
  if self.busy then
    self.detached[self.busy] = true
    self.busy = nil
    self:out("(interrupted: the line goes on in the background; its results will be shown " ..
      "when it ends)")
  end
  self.buffer = nil
  self:pump()
end

function Session:eof()
  if self.closed then return end
  self.input_ended = true
  if self.watch_stop then self.watch_stop() end
  if not self.busy then self:pump() end
end

function Session:close()
  if self.closed then return end
  self.closed = true
  sessions[self] = nil
  if self.watch_stop then self.watch_stop() end
  pcall(self.io.close, self)
end

-- ---- print --------------------------------------------------------------------------------

local function default_write(text) H.write(text, false) end

--- print() while a REPL runs: a REPL line prints to its own session (nowhere once that has
-- ended: a client that left must not flood the program's output); everything else goes to
-- standard output without garbling the terminal's prompt.
local function repl_print(...)
  local s = running_session()
  if s and s.closed then return end
  local n = select("#", ...)
  local parts = {}
  for i = 1, n do parts[i] = tostring((select(i, ...))) end
  local text = concat(parts, "\t") .. "\n"
  if s then s:out(text) else default_write(text) end
end
M.print = repl_print

-- ---- helpers ------------------------------------------------------------------------------

local function peerpool_module()
  local ok, pp = pcall(require, "peerpool")
  if not ok then error("the peerpool module cannot be loaded: " .. tostring(pp), 3) end
  return pp
end

helpers.pretty = pretty

--- pools(): the live pools.
function helpers.pools() return peerpool_module().pools() end

--- sleep(ms): wait without blocking the loop (inside a REPL line or any coroutine); sleep(0)
-- lets the loop go round once. peerpool.sleep, which a hand resume of the line cannot confuse.
function helpers.sleep(ms)
  ms = tonumber(ms)
  if not ms or ms < 0 then error("sleep(ms): ms must be a number >= 0", 2) end
  local _, main = coroutine.running()
  if main or not coroutine.isyieldable() then error("sleep() must run in a coroutine", 2) end
  peerpool_module().sleep(ms)
end

local function nonzero_states(by_state)
  local names = {}
  for k, v in pairs(by_state or {}) do
    if v ~= 0 then names[#names + 1] = k end
  end
  sort(names)
  for i, k in ipairs(names) do names[i] = k .. "=" .. by_state[k] end
  return #names > 0 and concat(names, " ") or "none"
end

--- status(pool [, prev, ms]): the one-line status watch() prints; rates need the previous
-- stats and the interval.
local function status_line(pool, prev, ms)
  local s = pool:stats()
  local function rate(k)
    if not prev or not s[k] or not prev[k] then return "-" end
    return fmt("%.0f", (s[k] - prev[k]) * 1000 / ms)
  end
  local line = fmt("%s conns %d (idle %d, active %d, connecting %d) waiters %d | peers %s | " ..
    "acquires/s %s, timeouts %d, cannot_connect %d, busy %d", os.date("%H:%M:%S"), s.conns, s.idle,
    s.active, s.connecting, s.waiters, nonzero_states(s.peers_by_state), rate("acquires"),
    s.timed_out or 0, s.cannot_connect or 0, s.busy or 0)
  return line, s
end
helpers.status = function(pool) return (status_line(pool)) end

local WATCH_PEERS, WATCH_PEERS_SCAN = 5, 2000

--- The per-peer lines under a watch line: the peers that hold leases, have waiters or are
-- held (ejected, failed), busiest first, at most WATCH_PEERS of them; none for a pool of more
-- than WATCH_PEERS_SCAN peers (listing them would stall the loop).
local function peer_lines(pool, stats)
  if (stats.peers or 0) > WATCH_PEERS_SCAN then return {} end
  local ok, peers = pcall(pool.peers, pool)
  if not ok or type(peers) ~= "table" then return {} end
  local busy = {}
  for _, v in ipairs(peers) do
    local held = v.state == "ejected" or v.state == "failed"
    if (v.leases or 0) > 0 or (v.waiters or 0) > 0 or held then busy[#busy + 1] = v end
  end
  sort(busy, function(a, b)
    local x, y = (a.leases or 0) + (a.waiters or 0), (b.leases or 0) + (b.waiters or 0)
    if x ~= y then return x > y end
    return tostring(a.addr) < tostring(b.addr)
  end)
  local lines = {}
  for i = 1, math.min(#busy, WATCH_PEERS) do
    local v = busy[i]
    lines[i] = fmt("  %s %s: conns %d (idle %d), leases %d, waiters %d, failures %d%s", v.addr,
      v.state, v.conns or 0, v.idle or 0, v.leases or 0, v.waiters or 0, v.failures or 0,
      v.last_error and v.last_error ~= 0 and (", last error " .. tostring(v.last_error)) or "")
  end
  if #busy > WATCH_PEERS then lines[#lines + 1] = fmt("  ... and %d more", #busy - WATCH_PEERS) end
  return lines
end

-- The one live pool, for a helper whose pool was left out; else raise at the helper's caller,
-- with the helper's usage.
local function the_pool(usage)
  local list = peerpool_module().pools()
  if #list ~= 1 then error(fmt("%s: name the pool (%d are open; see pools())", usage, #list), 3) end
  return list[1]
end

--- explain([pool] [, peer] [, n]): the pool's last n (20) decisions with their reasons, oldest
-- first, one per line: "HH:MM:SS.mmm kind text" (pool:explain gives the tables).
-- With one live pool, the pool may be left out.
function helpers.explain(pool, peer, n)
  if pool == nil or type(pool) == "string" or type(pool) == "number" then
    peer, n = pool, peer
    pool = the_pool("explain(pool [, peer] [, n])")
  end
  if type(peer) == "number" then peer, n = nil, peer end
  n = n == nil and 20 or tonumber(n)
  local list = pool:explain(peer)
  local sec, usec = uv.gettimeofday()
  local now_loop, now_wall = uv.now(), sec + usec / 1e6
  local lines = {}
  for i = math.max(1, #list - n + 1), #list do
    local e = list[i]
    local wall = now_wall - (now_loop - e.at_ms) / 1000
    lines[#lines + 1] = fmt("%s.%03d %-10s %s", os.date("%H:%M:%S", math.floor(wall)),
      math.floor(wall * 1000) % 1000, e.kind, e.text)
  end
  if #lines == 0 then
    lines[1] = "(no decisions recorded" .. (peer and " for " .. tostring(peer) or "") .. ")"
  end
  print(concat(lines, "\n"))
end

--- watch(pool [, ms]): print a status line every ms (1000) until a key is pressed or the
-- session ends. With one live pool, the pool may be left out.
function helpers.watch(pool, ms)
  local s = by_co[coroutine.running()]
  if not s then error("watch() runs at the REPL prompt", 2) end
  if pool == nil then pool = the_pool("watch(pool [, ms])") end
  if type(pool) ~= "userdata" and type(pool) ~= "table" then
    error("bad argument #1 to 'watch' (pool expected, got " .. type(pool) .. ")", 2)
  end
  ms = ms == nil and 1000 or tonumber(ms)
  if not ms or ms < 10 then
    error("bad argument #2 to 'watch' (interval in ms >= 10 expected)", 2)
  end
  local prev
  local function show_line() -- false once the pool cannot be read (closed)
    local ok, text, stats = pcall(status_line, pool, prev, ms)
    if not ok then
      s:out("watch ends: " .. tostring(text):gsub("^peerpool/repl:%d+: ", ""))
      return false
    end
    prev = stats
    s:out(text)
    for _, line in ipairs(peer_lines(pool, stats)) do s:out(line) end
    return true
  end
  if s.input_ended then -- nobody is left to press a key: one line is all
    show_line()
    return
  end
  s:out(fmt("watching %s every %d ms; %s", safe_tostring(pool), ms,
    s.io.keys and "press any key to stop" or "press Enter to stop"))
  if not show_line() then return end
  local co = coroutine.running()
  local timer = uv.new_timer()
  local stopped
  local function stop()
    if stopped then return end
    stopped = true
    s.watch_stop = nil
    pcall(s.io.watch, false)
    timer:close()
    local ok, err = coroutine.resume(co)
    if not ok then default_write("watch: " .. tostring(err) .. "\n") end
  end
  timer:start(math.floor(ms), math.floor(ms), function()
    if not show_line() then stop() end
  end)
  s.watch_stop = stop
  pcall(s.io.watch, true)
  coroutine.yield()
end

--- exit([code]): end this session (at the terminal: the host exits with code).
function helpers.exit(code)
  local s = running_session()
  if not s then error("exit() runs at the REPL prompt (os.exit ends the program)", 2) end
  s.exit_code = tonumber(code) or 0
  s:close()
end

function helpers.help()
  return [[
helpers (where no global of the same name exists):
  pools()              the live pools
  watch(pool [, ms])   a status line every ms (1000), with the busiest peers' lines under it,
                       until a key is pressed
  status(pool)         one status line
  explain([pool] [, peer] [, n])  the pool's last n (20) decisions and why (pool:explain)
  sleep(ms)            wait without blocking the loop
  pretty(v [, opts])   the string the REPL shows for a value (opts: depth, width, items)
  exit([code])         end this session (at the terminal: quit the program)
lines: an expression prints its values; `=expr` too; an unfinished chunk continues on the next
line (>>); a line that yields (pool:acquire(peer), conn:receive(), sleep(ms)) runs in its own
coroutine while the loop goes on, and its results are shown when it ends. Ctrl-C stops waiting
for it (it goes on in the background), drops an unfinished chunk, or ends a watch.]]
end

-- ---- completion ---------------------------------------------------------------------------

local function add_keys(set, t, want_fn)
  if type(t) ~= "table" then return end
  for k, v in next, t do
    if is_identifier(k) and (not want_fn or type(v) == "function") then set[k] = true end
  end
end

-- The names reachable with "." (fields) or ":" (methods) from value v: its own keys, and the
-- keys of __index tables up its metatable chain (peerpool's conn keeps its methods in
-- metatable.methods behind an __index function).
local function member_names(v, sep)
  local set = {}
  local want_fn = sep == ":"
  if type(v) == "table" then add_keys(set, v, want_fn) end
  local seen = {}
  local x = v
  for _ = 1, 5 do
    local mt = getmetatable(x)
    if type(mt) ~= "table" or seen[mt] then break end
    seen[mt] = true
    local idx = rawget(mt, "__index")
    if type(idx) == "table" then
      add_keys(set, idx, want_fn)
      x = idx
    else
      add_keys(set, rawget(mt, "methods"), want_fn)
      break
    end
  end
  if type(v) == "string" then add_keys(set, string, want_fn) end
  return set
end

--- complete(word): the completions of `word` (a.b.c, a:b, or a plain name).
function M.complete(word)
  local base, sep, partial = word:match("^(.*)([%.:])([%w_]*)$")
  local set
  if base then
    local v = env
    for name in (base .. "."):gmatch("([^%.:]*)[%.:]") do
      if not is_identifier(name) and name ~= "_G" and name ~= "_ENV" then return {} end
      if name == "_ENV" then
        v = env
      else
        local ok, nv = pcall(function() return v[name] end)
        if not ok or nv == nil then return {} end
        v = nv
      end
    end
    set = member_names(v, sep)
  else
    partial = word
    base, sep = "", ""
    set = {}
    add_keys(set, _G)
    add_keys(set, helpers)
    for k in pairs(keywords) do set[k] = true end
  end
  local out = {}
  for k in pairs(set) do
    if k:sub(1, #partial) == partial then out[#out + 1] = base .. sep .. k end
  end
  sort(out)
  return out
end

-- ---- the terminal -------------------------------------------------------------------------

local term

--- term_start(interactive, keys): the terminal session; `interactive` = stdin is a terminal
-- (prompts, banner); `keys` = single key presses are reported (readline).
function M.term_start(interactive, keys)
  term = Session.new({
    write = H.write,
    prompt = H.prompt,
    watch = H.watch,
    keys = keys,
    history = H.history_add,
    close = function(s)
      H.prompt(nil)
      -- lines piped into --repl: like attach on a pipe, exit 1 if one failed
      H.quit(s.exit_code or ((not interactive and s.errors > 0) and 1 or 0))
    end,
  }, interactive, "terminal")
  term:start()
end
function M.term_line(line) if term then term:feed(line) end end
function M.term_eof() if term then term:eof() end end
function M.term_key() if term then term:key() end end
function M.term_interrupt() if term then term:interrupt() end end

-- ---- the unix socket ----------------------------------------------------------------------

-- Clients speak lines (repl_frames.lua splits them). `peerpool attach` starts with a hello:
-- "\1hello 1 tty" (a terminal that reports single keys), "\1hello 1 line" (a terminal that
-- sends whole lines) or "\1hello 1 pipe", and is then answered in frames "\1" type length ":"
-- payload: o output, e error output, p prompt (empty: none), w watch on/off, c completions
-- (newline-separated), b bye (payload: the count of lines that failed). Its control lines:
-- "\1complete <word>", "\1key", "\1interrupt". Any other client (socat, nc) gets plain text
-- with prompts.
--
-- What a client can make the program hold is bounded (limits above): its unfinished line (in
-- bytes and in time), the lines queued behind a running line and the output waiting for it
-- (reading pauses while either is over its bound; output over its bound is dropped and the
-- client told so), and the number of sessions. A client that hangs up, that a write fails to,
-- or that reads none of its output for limits.stall_ms loses its session and its pipe at once.
local frame = protocol.frame

local server, server_path
local exiting        -- shutdown() ran: the program is closing down
local open_pipes = 0 -- accepted clients whose pipe is still open (limits.sessions counts these)
local watched = {}   -- client pipe -> its check, run by the janitor until the pipe is closed
local janitor        -- one timer for every client's time bounds and hang-up

local function janitor_ms()
  return math.max(10, math.min(1000, math.floor(limits.line_ms / 4),
    math.floor(limits.stall_ms / 4)))
end

local function janitor_tick()
  local now = uv.now()
  for pipe, check in pairs(watched) do
    local ok, err = pcall(check, now)
    if not ok then
      default_write("peerpool: REPL internal error: " .. tostring(err) .. "\n")
      watched[pipe] = nil
    end
  end
  if next(watched) == nil then janitor:stop() else janitor:set_repeat(janitor_ms()) end
end

local function watch_pipe(pipe, check)
  watched[pipe] = check
  if not janitor then
    janitor = uv.new_timer()
    janitor:unref() -- it alone does not keep the program running
  end
  if not janitor:is_active() then janitor:start(janitor_ms(), janitor_ms(), janitor_tick) end
end

local function socket_session(client)
  local fd = client:fileno()
  local splitter = protocol.splitter(limits.line_bytes)
  local framed, started = false, false
  local reading, input_ended, hung = false, false, false
  local partial_since       -- uv.now() when the unfinished line began
  local progress = uv.now() -- when the client last took output, or had none waiting
  local last_queued = 0
  local dropped = 0         -- output bytes dropped since the client was last told
  local io = {}
  local sess = Session.new(io, true)
  sess.name = "socket session " .. sess.id
  local hello_timer = uv.new_timer()
  local on_read

  local function close_pipe()
    watched[client] = nil
    if not hello_timer:is_closing() then hello_timer:close() end
    if not client:is_closing() then
      client:close() -- the fd is closed here; the handle is freed on the next loop pass
      open_pipes = open_pipes - 1
    end
  end

  -- The client is gone (it hung up, a write failed) or reads nothing: close now. A line still
  -- running goes on without it.
  local function drop_client()
    hung = true
    if sess.closed then close_pipe() else sess:close() end
  end

  local function on_written(err)
    if err then return drop_client() end
    progress = uv.now()
  end

  local function send(data)
    if client:is_closing() then return end
    if not client:write(data, on_written) then drop_client() end
  end

  local function note_dropped()
    if dropped == 0 then return end
    local note = fmt("[peerpool: %d bytes of output dropped: more than %d were waiting for " ..
      "this client]\n", dropped, limits.output_bytes)
    dropped = 0
    send(framed and frame("e", note) or note)
  end

  -- Output takes what room is left under limits.output_bytes; the rest is dropped, and the
  -- client is told before the next output or prompt it gets.
  local function put(text, is_error)
    if client:is_closing() then return end
    local room = limits.output_bytes - client:get_write_queue_size()
    if #text > room then
      dropped = dropped + #text - math.max(room, 0)
      if room <= 0 then return end
      text = text:sub(1, room)
    else
      note_dropped()
    end
    send(framed and frame(is_error and "e" or "o", text) or text)
  end

  -- Read while the session can take more: a client that sends lines faster than they run, or
  -- does not read what they print, is not read either until that has shrunk.
  local function update_reading()
    if input_ended or client:is_closing() then return end
    local room = sess.queued <= limits.queued_bytes and
      client:get_write_queue_size() <= limits.output_bytes
    if room and not reading then
      reading = true
      client:read_start(on_read)
    elseif not room and reading then
      reading = false
      client:read_stop()
    end
  end

  -- A bound was broken: say so to the client and on the program's stderr, and close.
  local function end_session(why)
    if sess.closed then return end
    sess:out("peerpool: " .. why .. "; session closed", true)
    H.write(fmt("peerpool: REPL %s closed: %s\n", sess.name, why), true)
    sess:close()
  end

  function io.write(text, is_error) put(text, is_error) end
  function io.prompt(p)
    note_dropped()
    if framed then send(frame("p", p or "")) elseif p then send(p) end
  end
  function io.watch(on)
    if framed then send(frame("w", on and "1" or "0")) end
  end
  function io.drained() update_reading() end
  function io.close(s)
    input_ended = true
    if client:is_closing() then return end
    if hung then return close_pipe() end
    note_dropped()
    if framed then send(frame("b", tostring(s.errors))) end
    if client:is_closing() then return end
    client:read_stop()
    if exiting or client:get_write_queue_size() == 0 then return close_pipe() end
    -- Let the client read what waits for it; the janitor still ends this if it stalls.
    client:shutdown(close_pipe)
  end

  -- A client that says nothing is a plain one: greet it after a moment. `peerpool attach`
  -- says hello first; if its hello comes after the greeting anyway, the session turns to frames
  -- (attach skips what came before the first frame).
  local function start()
    if started then return end
    started = true
    if not hello_timer:is_closing() then hello_timer:close() end
    sess:start()
  end

  local function control(name, argument)
    if name == "complete" then
      local ok, list = pcall(M.complete, argument)
      send(frame("c", ok and concat(list, "\n") or ""))
    elseif name == "key" then
      sess:key()
    elseif name == "interrupt" then
      sess:interrupt()
    end
  end

  local function on_event(ev)
    local kind = ev[1]
    if kind == "hello" then
      framed = true
      sess.interactive = ev[2] ~= "pipe"
      io.keys = ev[2] == "tty"
      if started then sess:show_prompt() else start() end
      return
    end
    start()
    if kind == "line" then
      sess:feed(ev[2])
    elseif kind == "control" then
      control(ev[2], ev[3])
    elseif kind == "too_long" then
      end_session(fmt("a line over %d bytes", limits.line_bytes))
    end
  end

  local function deliver(events)
    for _, ev in ipairs(events) do
      if sess.closed then return end
      local ok, err = pcall(on_event, ev)
      if not ok then sess:out("peerpool: REPL internal error: " .. tostring(err), true) end
    end
  end

  on_read = function(err, data)
    if sess.closed then return end
    if err then return drop_client() end
    if not data then -- the client sends no more: closed, or half-closed to wait for results
      input_ended, reading, partial_since = true, false, nil
      client:read_stop()
      deliver(splitter:finish())
      start()
      sess:eof()
      if not client:is_closing() and H.hung_up(fd) then drop_client() end
      return
    end
    local lines = splitter.lines
    deliver(splitter:feed(data))
    if splitter:pending() == 0 then
      partial_since = nil
    elseif splitter.lines ~= lines or not partial_since then
      partial_since = uv.now()
    end
    update_reading()
  end

  -- Every tick of the janitor: the client's hang-up, its unfinished line's age, its reading.
  local function check(now)
    if client:is_closing() then
      watched[client] = nil
      return
    end
    if H.hung_up(fd) then return drop_client() end
    if partial_since and now - partial_since > limits.line_ms then
      return end_session(fmt("a line took more than %d ms to arrive", limits.line_ms))
    end
    local queued = client:get_write_queue_size()
    if queued == 0 or queued < last_queued then progress = now end
    last_queued = queued
    if now - progress > limits.stall_ms then
      H.write(fmt("peerpool: REPL %s closed: its client read none of its output for %d ms\n",
        sess.name, limits.stall_ms), true)
      return drop_client()
    end
    update_reading()
  end

  hello_timer:start(150, 0, start)
  watch_pipe(client, check)
  update_reading()
end

-- A new client: a session, unless limits.sessions are open already (it is told, then closed).
local function accept()
  local client = uv.new_pipe(false)
  if not server:accept(client) then
    client:close()
    return
  end
  open_pipes = open_pipes + 1
  if open_pipes > limits.sessions then
    client:write(fmt("peerpool: too many REPL sessions (%d open); try again later\n",
      limits.sessions))
    client:close()
    open_pipes = open_pipes - 1
    return
  end
  local ok, err = pcall(socket_session, client)
  if not ok then
    default_write("peerpool: REPL session failed: " .. tostring(err) .. "\n")
    if not client:is_closing() then
      client:close()
      open_pipes = open_pipes - 1
    end
  end
end

--- serve(path): the REPL on a unix socket created with mode 0600. Returns true, or nil and
-- why (the path exists and is not a stale socket, or cannot be bound).
function M.serve(path)
  local ok, err = H.probe_socket(path)
  if not ok then return nil, err end
  server = uv.new_pipe(false)
  local old = H.umask(tonumber("177", 8)) -- the socket is born 0600: no window for others
  local r, berr = server:bind(path)
  H.umask(old)
  if not r then
    server:close()
    server = nil
    return nil, fmt("cannot listen on %s: %s", path, tostring(berr))
  end
  server_path = path
  uv.fs_chmod(path, tonumber("600", 8))
  local lr, lerr = server:listen(64, function(e)
    if not e then accept() end
  end)
  if not lr then
    M.shutdown()
    return nil, fmt("cannot listen on %s: %s", path, tostring(lerr))
  end
  server:unref() -- the listener alone does not keep the program running
  return true
end

--- shutdown(): the program is closing down: end every socket session (with its bye), close
-- every client pipe and the socket (removing its file).
function M.shutdown()
  exiting = true
  local list = {}
  for s in pairs(sessions) do list[#list + 1] = s end
  for _, s in ipairs(list) do
    if s ~= term then s:close() end
  end
  for pipe in pairs(watched) do
    if not pipe:is_closing() then pipe:close() end
  end
  watched = {}
  if janitor then
    janitor:close()
    janitor = nil
  end
  if server then
    if not server:is_closing() then server:close() end
    server = nil
    local st = uv.fs_lstat(server_path)
    if st and st.type == "socket" then uv.fs_unlink(server_path) end
    server_path = nil
  end
end

return M
