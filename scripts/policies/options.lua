-- options: not a policy. The option checker and the module maker that the library's policies
-- share (`require "peerpool.policies.options"`).
--
-- Every library module follows one pattern:
--
--   local options = require "peerpool.policies.options"
--   local DEFAULTS = { base_ms = { 100, "positive_number" }, ... }   -- name = { default, kind }
--   local function build(M, opts)                                     -- one instance
--     local o = options.check("policy.backoff", opts, DEFAULTS)      -- raises naming the field
--     function M.backoff(attempt, err, peer) ... end                  -- hooks use `o`
--     return o
--   end
--   return options.policy("NAME", "what it does", build)             -- the default instance
--
-- so `require "peerpool.policies.NAME"` is a policy with the default options (loadable as is,
-- by path or as a table), and `.new{...}` makes another instance with its own options and
-- state. `new`, `options` (the checked options) and any extra fields live in the instance's
-- metatable, out of the way of policy validation, which only accepts hooks, `name` and
-- `description` as keys.
local O = {}

local function is_int(v)
  return math.type(v) == "integer" or (math.type(v) == "float" and v == math.floor(v)
    and v > -2 ^ 53 and v < 2 ^ 53)
end

local function is_list_of(v, pred)
  if type(v) ~= "table" then return false end
  local n = 0
  for k in pairs(v) do
    if math.type(k) ~= "integer" or k < 1 then return false end
    n = n + 1
  end
  for i = 1, n do
    if not pred(v[i]) then return false end
  end
  return true
end

local function is_string(v) return type(v) == "string" and v ~= "" end

-- kind = { phrase used in "must be ...", predicate }
O.kinds = {
  positive_number = { "a positive number",
    function(v) return type(v) == "number" and v > 0 and v < math.huge end },
  number = { "a number >= 0",
    function(v) return type(v) == "number" and v >= 0 and v < math.huge end },
  positive_integer = { "a positive integer", function(v) return is_int(v) and v >= 1 end },
  integer = { "an integer >= 0", function(v) return is_int(v) and v >= 0 end },
  count_or_false = { "a positive integer or false",
    function(v) return v == false or (is_int(v) and v >= 1) end },
  string = { "a non-empty string", is_string },
  strings = { "a list of strings", function(v) return is_list_of(v, is_string) end },
  boolean = { "a boolean", function(v) return type(v) == "boolean" end },
  port = { "a port number (1..65535)",
    function(v) return is_int(v) and v >= 1 and v <= 65535 end },
  port_or_false = { "a port number (1..65535) or false",
    function(v) return v == false or (is_int(v) and v >= 1 and v <= 65535) end },
  table = { "a table", function(v) return type(v) == "table" end },
  table_or_false = { "a table or false", function(v) return v == false or type(v) == "table" end },
  function_or_false = { "a function or false",
    function(v) return v == false or type(v) == "function" end },
  string_or_false = { "a non-empty string or false",
    function(v) return v == false or is_string(v) end },
}

--- options.check(where, opts, spec): opts (a table or nil) checked against `spec`
-- (name = { default, kind }); returns a new table with every option set. Raises an error naming
-- the dotted field ("policy.backoff.base_ms must be a positive number") for a wrong value or an
-- unknown name. The message carries no position: pool:load_policy(path) prefixes it with the
-- script's path, and `return mod.new{...}` (a tail call) would lose the line anyway.
function O.check(where, opts, spec)
  local level = 0
  if opts == nil then opts = {} end
  if type(opts) ~= "table" then
    error(where .. " options must be a table (got " .. type(opts) .. ")", level)
  end
  local names = {}
  for name in pairs(spec) do names[#names + 1] = name end
  table.sort(names)
  for k in pairs(opts) do
    if type(k) ~= "string" or spec[k] == nil then
      error(string.format("%s.%s is not an option (%s)", where, tostring(k),
        #names == 0 and "it takes none" or "options: " .. table.concat(names, ", ")), level)
    end
  end
  local out = {}
  for _, name in ipairs(names) do
    local default, kind = spec[name][1], spec[name][2]
    local v = opts[name]
    if v == nil then v = default end
    local k = O.kinds[kind] or error("options: unknown kind " .. tostring(kind))
    if not k[2](v) then error(where .. "." .. name .. " must be " .. k[1], level) end
    if math.type(v) == "float" and (kind == "positive_integer" or kind == "integer"
        or kind == "port" or kind == "count_or_false" or kind == "port_or_false") then
      v = math.tointeger(v)
    end
    out[name] = v
  end
  return out
end

--- options.instance(M, new, opts [, extra [, computed]]): give policy table M its metatable:
-- M.new (another instance), M.options (the checked options), every field of `extra`, and every
-- field of `computed` (name = function() → value, called at each access, e.g. a fresh table of
-- pool options) are found through it. Returns M.
function O.instance(M, new, opts, extra, computed)
  local index = { new = new, options = opts }
  for k, v in pairs(extra or {}) do index[k] = v end
  computed = computed or {}
  return setmetatable(M, { __index = function(_, k)
    local fn = computed[k]
    if fn then return fn() end
    return index[k]
  end })
end

--- options.policy(name, description, build): a library policy module: returns the instance
-- with the default options, whose .new(opts) makes more. Each instance is a table M with
-- M.name = name; build(M, opts) checks opts (raising on a bad one), adds the hooks to M and
-- returns the checked options o, and optionally `extra` and `computed` fields for
-- options.instance. M.description = description, or description(o) when that is a function.
function O.policy(name, description, build)
  local function new(opts)
    local M = { name = name }
    local o, extra, computed = build(M, opts)
    M.description = type(description) == "function" and description(o) or description
    return O.instance(M, new, o, extra, computed)
  end
  return new()
end

--- options.burner(o): a function(attempt, err) → true when the backoff options in `o`
-- (burn_after: consecutive failures; burn_on: error codes that burn at once) say to burn.
function O.burner(o)
  local burn_after = o.burn_after
  local burn_on = {}
  for _, code in ipairs(o.burn_on or {}) do burn_on[code] = true end
  return function(attempt, err)
    return (burn_after and attempt >= burn_after) or burn_on[err] == true
  end
end

--- options.backoff(opts, spec): the options of a backoff policy: `spec` (its own options, base_ms
-- among them) plus the ones every backoff takes, cap_ms = 30000, burn_after = false and
-- burn_on = {}, checked as options.check("policy.backoff", opts, ...) does, and cap_ms no smaller
-- than base_ms. Returns the checked options and their burner (options.burner).
local BACKOFF_COMMON = {
  cap_ms = { 30000, "positive_number" },
  burn_after = { false, "count_or_false" },
  burn_on = { {}, "strings" },
}
function O.backoff(opts, spec)
  local all = {}
  for k, v in pairs(BACKOFF_COMMON) do all[k] = v end
  for k, v in pairs(spec) do all[k] = v end
  local o = O.check("policy.backoff", opts, all)
  if o.cap_ms < o.base_ms then error("policy.backoff.cap_ms must be >= base_ms", 0) end
  return o, O.burner(o)
end

return O
