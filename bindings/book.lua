-- The address book (option address_book): a pool's peers kept in a file across restarts.
-- Loaded at peerpool.new; saved every address_book_interval ms with libuv's thread pool doing
-- the writing and fsync (one save at a time per pool; requests meanwhile coalesce into one
-- more); saved synchronously when the pool is closed or collected, since the loop may never
-- run again. The text format (v2, and reading v1) is lbook.c's: see the comment at its top.
local M, uv, C = ... -- the module table, luv, lbook.c's functions

local book = {}
local books = setmetatable({}, { __mode = "k" }) -- pool -> its book

local BLOCK = 1 << 20 -- bytes read at a time: a big book is never held whole
local SLICE = 4096 -- peers formatted and written at a time (a few ms of the loop)
local DAY_MS = 24 * 3600 * 1000

local function report(b, msg)
  C.emit("peerpool: address book " .. b.path .. ": " .. msg)
end

-- ---- loading -------------------------------------------------------------------------------

local function refuse(st, line, why)
  st.nbad = st.nbad + 1
  if #st.bad < 5 then st.bad[#st.bad + 1] = "line " .. line .. ": " .. why end
end

-- The format version named by the first line: 2, 1 for the old header or none, or the
-- unknown number.
local function version_of(first_line)
  local v = first_line:match("^# peerpool address book v(%d+)%s*$")
  return v and tonumber(v) or 1
end

-- Add the parsed rows (6-tuples, see lbook.c's parse) to the pool, with their failure
-- history (v3): burned peers stay burned, a peer that kept failing is not trusted afresh.
local function add_rows(pool, st, rows, n)
  for r = 0, 6 * (n - 1), 6 do
    local addr, _, why = pool:_add_peer(rows[r + 1], rows[r + 2], rows[r + 4] or nil,
      rows[r + 3] or "book")
    if not addr then
      refuse(st, rows[r + 5], why)
    elseif rows[r + 6] then
      pool:_restore(addr, rows[r + 6])
    end
  end
end

-- Read the book into the pool, a block at a time. Bad lines are skipped one by one and
-- summed up in one report; the rest of the book loads.
local function load(b, pool)
  local kind = uv.fs_stat(b.path)
  if kind and kind.type ~= "file" then -- a FIFO would block the loop in open, a device worse
    report(b, "it is a " .. kind.type .. ", not a file; not loaded")
    return
  end
  local f, err, code = io.open(b.path, "rb")
  if not f then
    if code ~= 2 then report(b, "cannot read it: " .. err) end -- ENOENT: no book yet
    return
  end
  local st = { version = nil, max_seen = os.time() * 1000 + DAY_MS, line = 0, nbad = 0, bad = {} }
  local rows, rest, skipping = {}, "", false
  while true do
    local block = f:read(BLOCK)
    if not st.version then
      st.version = version_of(block and block:match("^[^\n]*") or "")
      if st.version < 1 or st.version > 3 then
        f:close()
        local aside = b.path .. ".v" .. st.version .. "-" .. os.time()
        local ok, rerr = os.rename(b.path, aside)
        report(b, "format v" .. st.version .. " is newer than this peerpool reads; not loaded, " ..
          (ok and ("moved to " .. aside) or ("and it could not be moved aside: " .. rerr)))
        return
      end
    end
    if skipping and block then -- the rest of a line too long to keep
      local nl = block:find("\n", 1, true)
      if nl then block, skipping, st.line = block:sub(nl + 1), false, st.line + 1 end
    end
    if not skipping or not block then
      local data = block and rest .. block or (rest ~= "" and rest .. "\n") or nil
      if not data then break end
      local n, used = C.parse(st, data, rows)
      add_rows(pool, st, rows, n)
      rest = data:sub(used + 1)
      if #rest > C.LINE_MAX then
        refuse(st, st.line + 1, "line too long")
        rest, skipping = "", true
      end
    end
    if not block then break end
  end
  f:close()
  if st.nbad > 0 then
    report(b, string.format("skipped %d bad line%s of %d (%s%s)", st.nbad,
      st.nbad == 1 and "" or "s", st.line, table.concat(st.bad, "; "),
      st.nbad > #st.bad and "; ..." or ""))
  end
end

-- ---- saving --------------------------------------------------------------------------------

-- uv.fs_<name>(...) synchronously, or (async) from a save's coroutine: the call runs on
-- libuv's thread pool while the coroutine waits. Returns the call's results, or nil, err.
local function fs(async, name, ...)
  local fn = uv["fs_" .. name]
  if not async then return fn(...) end
  local co = coroutine.running()
  local args = table.pack(...)
  args.n = args.n + 1
  args[args.n] = function(...)
    local ok, err = coroutine.resume(co, ...)
    if not ok then C.emit("peerpool: address book: " .. tostring(err)) end
  end
  local req, err = fn(table.unpack(args, 1, args.n))
  if not req then return nil, err end
  local res = table.pack(coroutine.yield())
  if res[1] then return nil, res[1] end
  return table.unpack(res, 2, res.n)
end

-- Write all of s at offset off of fd.
local function write_all(async, fd, s, off)
  local done = 0
  while done < #s do
    local n, err = fs(async, "write", fd, done == 0 and s or s:sub(done + 1), off + done)
    if not n or n == 0 then return nil, err or "short write" end
    done = done + n
  end
  return true
end

-- Write the pool's peers to a new file beside the book, fsync it and rename it over the
-- book. mkstemp creates the file with O_CREAT|O_EXCL, mode 0600 and a random name, so a
-- symlink planted in the book's directory is never followed. The peers are a snapshot taken
-- at the start; their lines are made a slice at a time, each while the previous one is being
-- written. An asynchronous save gives up once the book is closed: close() has written a newer
-- one. Returns true and the number of tag entries left out, or nil, err.
local function write_book(b, async)
  local function stale() return async and b.closed end
  local job = C.snapshot(b.pool)
  local fd, tmp = fs(async, "mkstemp", b.path .. ".tmp-XXXXXX")
  if not fd then return nil, tmp end
  b.tmp = async and tmp or nil -- close() removes it if this save is still running
  local off, done, dropped, err = 0, false, 0, nil
  while not done and not err and not stale() do
    local text
    text, done, dropped = C.lines(job, SLICE)
    err = select(2, write_all(async, fd, text, off))
    off = off + #text
  end
  if not err and not stale() then err = select(2, fs(async, "fsync", fd)) end
  local closed, cerr = fs(async and not b.closed, "close", fd)
  if not closed then err = err or cerr end
  if not err and not stale() then
    -- Renamed on the loop even by an asynchronous save: a rename still queued on the
    -- thread pool could land after close()'s final save and put this older text back.
    err = select(2, uv.fs_rename(tmp, b.path))
  elseif not err then
    err = "closed"
  end
  if err then uv.fs_unlink(tmp) end
  b.tmp = nil
  if err then return nil, err end
  return true, dropped
end

-- Save the book now; reports a failure (once, until it changes).
local function save_now(b, async)
  local ok, written, extra = pcall(write_book, b, async)
  local err = not ok and written or not written and extra or nil
  local dropped = err == nil and extra or 0
  if err == nil then
    b.saves, b.last_error = b.saves + 1, nil
    if dropped > 0 and not b.told_tags then
      b.told_tags = true
      report(b, dropped .. " tag entries could not be kept (keys must be strings or integers; " ..
        "values strings, numbers, booleans or tables of them)")
    end
  elseif err ~= "closed" then
    if err ~= b.last_error then report(b, "cannot save it: " .. tostring(err)) end
    b.last_error = err
  end
  return err == nil, err
end

-- Start an asynchronous save, or, if one is running, have it run once more when it ends.
local function save_async(b, cb)
  if cb then b.waiting[#b.waiting + 1] = cb end
  if b.closed then return end
  if b.saving then b.again = true return end
  b.saving = true
  local co = coroutine.create(function()
    local ok, err = xpcall(function()
      repeat
        b.again = false
        local waiting = b.waiting
        b.waiting = {}
        local saved, serr = save_now(b, true)
        for _, fn in ipairs(waiting) do
          local cok, cerr = pcall(fn, not saved and serr or nil)
          if not cok then report(b, "save callback: " .. tostring(cerr)) end
        end
      until not b.again or b.closed
    end, debug.traceback)
    b.saving = false
    if not ok then report(b, tostring(err)) end
  end)
  coroutine.resume(co)
end

-- The final save of a book (idempotent): synchronous, and stops its asynchronous saves.
local function close_book(b)
  if b.closed then return end
  b.closed = true
  if b.tmp then uv.fs_unlink(b.tmp) end -- a running save's file: that save is stale now
  save_now(b, false)
  for _, fn in ipairs(b.waiting) do pcall(fn, "closed") end
  b.waiting = {}
end

-- A book is finalised before its pool (it was given its finaliser after the pool was made,
-- and Lua runs finalisers in the reverse order), so a collected pool is still open here: the
-- peers learned since the last periodic save are kept, at lua_close too.
local book_mt = {
  __gc = function(b)
    local ok, err = pcall(close_book, b)
    if not ok then report(b, tostring(err)) end
  end,
}

-- ---- the pool's side ---------------------------------------------------------------------

--- book.open(pool, path, interval_ms): load the book at path into the pool, then save it every
-- interval_ms and when the pool is closed or collected.
function book.open(pool, path, interval)
  local b = { pool = pool, path = path, waiting = {}, saves = 0 }
  load(b, pool)
  books[pool] = setmetatable(b, book_mt)
  -- The timer's function must not hold the pool: the pool would never be collected.
  local weak = setmetatable({ pool = pool }, { __mode = "v" })
  pool:_every(interval, function()
    local p = weak.pool
    if p and books[p] then save_async(books[p]) end
  end)
end

--- book.save(pool [, cb]): save now, off the loop; cb(err) runs when it is written (err nil).
-- A save requested while one runs is done once more after it.
function book.save(pool, cb)
  local b = books[pool]
  if not b then
    if cb then cb("no address book") end
    return
  end
  save_async(b, cb)
end

--- book.close(pool): the final, synchronous save of the pool's book, and the end of its
-- periodic saves. Safe to call twice, and on a pool without a book. pool:close() calls it
-- before closing the pool; so does a collected pool (from the book's own finaliser).
function book.close(pool)
  local b = books[pool]
  if b then close_book(b) end
end

C.set_close(book.close) -- registry["peerpool.book.close"], for the pool's C finaliser

--- book.info(pool): { path, saving, saves, last_error }, or nil without a book.
function book.info(pool)
  local b = books[pool]
  if not b then return nil end
  return { path = b.path, saving = b.saving or false, saves = b.saves, last_error = b.last_error }
end

M._book = book
return book
