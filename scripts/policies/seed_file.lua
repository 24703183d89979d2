-- seed_file: a seed hook that reads addresses from a file, one per line:
--
--   # comments and blank lines are skipped
--   10.0.0.1:8333
--   10.0.0.2:8333 1767225600000        <- optional last_seen, Unix time in ms
--
-- Anything after the timestamp is ignored, so a peerpool address book ("addr last_seen
-- source [tags]") is a valid seed file; the %-escaped addresses of a v2 book (first line
-- "# peerpool address book v2") are decoded. An address without a timestamp counts as seen
-- now; one with an old timestamp is known but not dialled once older than the pool's
-- max_address_age.
-- The file is read again at every call (edit it while the pool runs). Good lines are added
-- even when others are bad; the first bad line is then raised as the hook's error (logged and
-- counted in stats().hooks.seed). A missing file is an error too.
--
-- The file is read synchronously, line by line, within the hook's instruction budget
-- (10 x hook_budget; about 20000 lines with the default budget).
--
-- Options (seed_file.new{...}):
--   path = "peers.txt"   the file
--
-- Example:
--   pool:load_policy(require "peerpool.policies.seed_file".new{ path = "/var/lib/node/peers" })
local options = require "peerpool.policies.options"

local DEFAULTS = {
  path = { "peers.txt", "string" },
}

local function build(M, opts)
  local o = options.check("policy.seed", opts, DEFAULTS)
  local path = o.path

  function M.seed(ctx)
    local f, err = io.open(path, "r")
    if not f then error("seed_file: cannot open " .. tostring(err), 0) end
    local n, bad, escaped = 0, nil, false
    for line in f:lines() do
      n = n + 1
      escaped = escaped or (n == 1 and line:match("^# peerpool address book v2%s*$") ~= nil)
      local addr, seen = line:match("^%s*([^%s#]%S*)%s*(%S*)")
      if seen and seen:sub(1, 1) == "#" then seen = "" end
      if addr and escaped then
        addr = addr:gsub("%%(%x%x)", function(hex) return string.char(tonumber(hex, 16)) end)
      end
      if addr then
        local last_seen = nil
        if seen ~= "" then last_seen = math.tointeger(tonumber(seen)) end
        if seen ~= "" and (not last_seen or last_seen < 0) then
          bad = bad or string.format("%s:%d: bad timestamp %q (want Unix time in ms)", path, n,
            seen)
        else
          local ok, code, why = ctx:add(addr, last_seen)
          if not ok and code == "invalid" then
            bad = bad or string.format("%s:%d: %s: %s", path, n, addr, tostring(why))
          end
        end
      end
    end
    f:close()
    if bad then error("seed_file: " .. bad, 0) end
  end

  return o
end

return options.policy("seed_file",
  "addresses from a file, one per line, optional last_seen (Unix ms)", build)
