-- The README's options table, made from peerpool.options() (itself made from the engine's
-- PP_OPTIONS_MAP and the binding's own table). spec/docs_spec.lua fails when the README's copy
-- disagrees; rewrite it with:
--   LUA_CPATH='build/lua/?.so;;' lua5.4 tools/options_table.lua --write README.md
local M = {}

M.BEGIN = "<!-- options: made by tools/options_table.lua from peerpool.options(); do not edit -->"
M.END = "<!-- /options -->"

local function amount(v, unit)
  if v == 0 and unit ~= "flag" then return "0" end
  if unit == "ms" then
    if v % 3600000 == 0 then return (v // 3600000) .. " h" end
    if v >= 10000 and v % 1000 == 0 then return (v // 1000) .. " s" end
    return v .. " ms"
  elseif unit == "bytes" then
    if v % (1 << 20) == 0 then return (v >> 20) .. " MiB" end
    if v % 1024 == 0 then return (v >> 10) .. " KiB" end
    return v .. " bytes"
  elseif unit == "flag" then
    return v == 0 and "off" or "on"
  elseif unit == "%" then
    return v .. " %"
  end
  return tostring(v)
end

-- The markdown table (markers included) for `options`, a peerpool.options() list.
function M.render(options)
  local out = { M.BEGIN, "| option | default | meaning |", "|---|---|---|" }
  for _, o in ipairs(options) do
    local doc = o.doc
    if not o.engine then doc = doc .. " (Lua only)" end
    out[#out + 1] = string.format("| `%s` | %s | %s |", o.name, amount(o.default, o.unit), doc)
  end
  out[#out + 1] = M.END
  return table.concat(out, "\n")
end

-- The block between the markers in `text` (markers included), or nil.
function M.find(text)
  local b = text:find(M.BEGIN, 1, true)
  local _, e = text:find(M.END, 1, true)
  if b and e then return text:sub(b, e), b, e end
end

if arg and arg[0] and arg[0]:match("options_table%.lua$") then
  local table_text = M.render(require("peerpool").options())
  if arg[1] == "--write" then
    local f = assert(io.open(arg[2], "rb"))
    local text = f:read("a")
    f:close()
    local _, b, e = M.find(text)
    assert(b, arg[2] .. ": no options markers")
    f = assert(io.open(arg[2], "wb"))
    f:write(text:sub(1, b - 1), table_text, text:sub(e + 1))
    f:close()
  else
    print(table_text)
  end
end

return M
