-- Policies, the Lua side (compiled into peerpool.so, run by peerpool.lua): pool:load_policy
-- (a script path or a table, checked against the hook list of bindings/lpeerpool.h's
-- LPP_HOOK_MAP), the searcher that finds `peerpool.policies.NAME`, and the seed hook's context.
-- The hooks themselves run in C (bindings/lpolicy.c).
local M, pool_methods, uv, check_pool = ...

local HOOKS = M.hooks -- name -> "sync" or "async" (bindings/lpeerpool.h's LPP_HOOK_MAP)
local HOOK_LIST = {}
for name in pairs(HOOKS) do HOOK_LIST[#HOOK_LIST + 1] = name end
table.sort(HOOK_LIST)
HOOK_LIST = table.concat(HOOK_LIST, ", ")
local POLICY_INFO = { name = "string", description = "string" }

-- `require "peerpool.policies.NAME"` finds the policy library: installed with the rock, or
-- in the source tree the module was built from (scripts/policies/NAME.lua).
if M._scripts_dir then
  local dir = M._scripts_dir
  table.insert(package.searchers, function(name)
    local rest = name:match("^peerpool%.policies%.([%w_]+)$")
    if not rest then return nil end
    local path = dir .. "/policies/" .. rest .. ".lua"
    local chunk, err = loadfile(path)
    if not chunk then
      return "\n\tno file '" .. path .. "'" .. (err and (" (" .. err .. ")") or "")
    end
    return chunk, path
  end)
end

-- A policy from a path (a Lua script returning a table) or a table; nil, message if unusable.
local function policy_from(source)
  local tbl, name = source, "table"
  if type(source) == "string" then
    name = source
    local chunk, err = loadfile(source, "t")
    if not chunk then return nil, "policy " .. err end
    local ok, res = pcall(chunk)
    if not ok then return nil, "policy " .. source .. ": " .. tostring(res) end
    tbl = res
  end
  if type(tbl) ~= "table" then
    return nil, "policy " .. name .. " must return a table of hooks (got " .. type(tbl) .. ")"
  end
  for k, v in pairs(tbl) do
    if HOOKS[k] then
      if type(v) ~= "function" then
        return nil, "policy." .. tostring(k) .. " must be a function (got " .. type(v) .. ")"
      end
    elseif POLICY_INFO[k] then
      if type(v) ~= POLICY_INFO[k] then
        return nil, "policy." .. k .. " must be a " .. POLICY_INFO[k]
      end
    else
      return nil, "policy." .. tostring(k) .. " is not a hook (hooks: " .. HOOK_LIST .. ")"
    end
  end
  return tbl, name
end

--- pool:load_policy(path_or_table): swap the whole policy at once; conns are untouched.
-- Returns true, or nil, "invalid", message (the previous policy stays active).
function pool_methods:load_policy(source)
  check_pool(self, "load_policy", true)
  if type(source) ~= "string" and type(source) ~= "table" then
    error("bad argument #1 to 'load_policy' (path or table expected, got " .. type(source) .. ")",
      2)
  end
  local tbl, name = policy_from(source)
  if not tbl then return nil, M.errors.invalid, name end
  if tbl.name and tbl.name ~= name then name = tbl.name .. " (" .. name .. ")" end
  return self:_set_policy(tbl, name)
end

-- The seed hook's context: ctx.wanted, ctx:add(addr [, last_seen]), ctx:resolve(host, port).
-- The hook runs in a coroutine the binding started; the resolver resumes it through
-- M._resume, which charges the hook's budget and ends its call when it returns.
M._set_seed_ctx(function(pool, wanted)
  local ctx = { wanted = wanted, added = 0 }
  function ctx.add(_, addr, last_seen)
    -- (a hook that waited -- sleep, resolve -- may wake after the pool closed: not its fault)
    if pool:_closed() then
      return nil, M.errors.closed, "the pool closed while the seed hook ran"
    end
    local ok, err, why = pool:_add_peer(addr, last_seen, nil, "seed")
    if ok then ctx.added = ctx.added + 1 end
    return ok, err, why
  end
  function ctx.resolve(_, host, port)
    local co = coroutine.running()
    local out, failure
    local req = uv.getaddrinfo(host, tostring(port), { socktype = "stream" }, function(err, res)
      if err then failure = err
      else
        out = {}
        for _, a in ipairs(res or {}) do
          out[#out + 1] = a.family == "inet6" and ("[" .. a.addr .. "]:" .. a.port)
            or (a.addr .. ":" .. a.port)
        end
      end
      M._resume(co)
    end)
    if not req then return nil, "resolve failed" end
    coroutine.yield()
    if failure then return nil, failure end
    return out
  end
  return ctx
end)
