-- The line protocol of the REPL's unix socket, without any I/O: bytes from a client in, events
-- out; frames to a client. Compiled into the `peerpool` program (repl.lua gets it from main.c),
-- and loaded as it is by fuzz/fuzz_repl_frames.c and spec/repl_frames_spec.lua.
--
-- A client sends lines ending in "\n" (a "\r" before it is dropped). `peerpool attach` starts
-- with a hello, "\1hello 1 tty|line|pipe", and sends control lines "\1complete <word>",
-- "\1key", "\1interrupt" among its lines. The host answers in frames: "\1" kind length ":"
-- payload (see docs/repl.md).
local F = {}

--- F.frame(kind, payload): one frame to a client.
function F.frame(kind, payload)
  return "\1" .. kind .. #payload .. ":" .. payload
end

local Splitter = {}
Splitter.__index = Splitter

--- F.splitter(max_line): a splitter for one client's bytes. A line (without its "\n") longer
-- than max_line bytes ends the splitting: it is reported once as { "too_long" } and every
-- byte after it is ignored, so what a splitter holds never exceeds max_line bytes.
function F.splitter(max_line)
  assert(math.type(max_line) == "integer" and max_line > 0, "max_line must be a positive integer")
  return setmetatable({
    max_line = max_line,
    pieces = {}, -- the unfinished line, in pieces (see push)
    size = 0,    -- its length
    lines = 0,   -- lines completed so far
    first = true,
    failed = false,
  }, Splitter)
end

-- Keep a piece of the unfinished line. A piece at least as long as the one below it is merged
-- into it, so that a line dripped in a byte at a time costs O(n log n) copying and O(log n)
-- pieces, not O(n^2) or n pieces.
function Splitter:push(s)
  local stack = self.pieces
  stack[#stack + 1] = s
  self.size = self.size + #s
  while #stack > 1 and #stack[#stack] >= #stack[#stack - 1] do
    local top = table.remove(stack)
    stack[#stack] = stack[#stack] .. top
  end
end

-- Take the unfinished line (and forget it).
function Splitter:take()
  local s = table.concat(self.pieces)
  self.pieces, self.size = {}, 0
  return s
end

-- What a complete line means: the hello (first line only), a control line, or a line to run.
-- A control line that does not parse is dropped (a newer client's, say).
function Splitter:event(raw)
  local line = raw:sub(-1) == "\r" and raw:sub(1, -2) or raw
  self.lines = self.lines + 1
  if self.first then
    self.first = false
    local version, mode = line:match("^\1hello (%d+) (%a+)")
    if mode then return { "hello", mode, tonumber(version) } end
  end
  if line:byte(1) == 1 then
    local name, argument = line:match("^\1(%a+) ?(.*)$")
    if name then return { "control", name, argument } end
    return nil
  end
  return { "line", line }
end

function Splitter:fail(out)
  self.failed = true
  self.pieces, self.size = {}, 0
  out[#out + 1] = { "too_long" }
  return out
end

--- splitter:feed(data [, out]): split data, appending events to out (a new table by default)
-- and returning it. Events: { "hello", mode, version }, { "control", name, argument },
-- { "line", text }, { "too_long" } (the last one ever).
function Splitter:feed(data, out)
  out = out or {}
  if self.failed then return out end
  local pos = 1
  while true do
    local nl = data:find("\n", pos, true)
    if not nl then break end
    if self.size + (nl - pos) > self.max_line then return self:fail(out) end
    local raw = data:sub(pos, nl - 1)
    if self.size > 0 then raw = self:take() .. raw end
    out[#out + 1] = self:event(raw)
    pos = nl + 1
  end
  if pos <= #data then
    if self.size + (#data - pos + 1) > self.max_line then return self:fail(out) end
    self:push(pos == 1 and data or data:sub(pos))
  end
  return out
end

--- splitter:finish([out]): the client sends no more: its last line, if it did not end in
-- "\n", is a line too. Returns out.
function Splitter:finish(out)
  out = out or {}
  if not self.failed and self.size > 0 then out[#out + 1] = self:event(self:take()) end
  return out
end

--- splitter:pending(): the bytes of the unfinished line held now (at most max_line).
function Splitter:pending()
  return self.size
end

return F
