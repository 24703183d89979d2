-- Finding F9 (fuzz seed 3 after the merge of the book rework: peerpool.new raised an internal
-- error): an address book line whose last_seen is a small positive integer (here 123, e.g. a
-- book written by hand in seconds) makes peerpool.new raise
--   book.lua:36: bad argument #2 to '_add_peer' (last_seen must be Unix time in ms (123 looks
--   like seconds: use os.time() * 1000))
-- instead of skipping that line and reporting it like the other bad lines (docs/policies.md,
-- "Bad lines are skipped one by one ..."). The error names an internal method, and the pool
-- made before the book was read stays open until it is collected.
--   LUA_CPATH='build/lua/?.so;;' lua5.4 spec/fuzz/repro/book_small_last_seen.lua
local peerpool = require "peerpool"
local path = os.tmpname()
local f = assert(io.open(path, "w"))
f:write("127.0.0.1:7001 123 runtime\n127.0.0.1:7002 1767225600000 runtime\n")
f:close()
peerpool.on_error(function(text) print("report: " .. text) end)
local ok, pool = pcall(peerpool.new, { address_book = path })
print(ok and "ok: the pool opened with " .. #pool:peers() .. " peer(s)" or "BUG: " .. tostring(pool))
print("open pools:", #peerpool.pools())
if ok then pool:close() end
os.remove(path)
