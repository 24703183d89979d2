-- The documentation's lists agree with the code's tables.
local peerpool = require "peerpool"
local options_table = require "tools.options_table"

local function read(path)
  local f = assert(io.open(path, "rb"))
  local text = f:read("a")
  f:close()
  return text
end

describe("the README's options table", function()
  it("is the one peerpool.options() makes (tools/options_table.lua --write README.md)", function()
    local block = options_table.find(read("README.md"))
    assert.is_not_nil(block, "README.md lost its options markers")
    assert.equal(options_table.render(peerpool.options()), block)
  end)

  it("lists every option peerpool.new accepts, and peerpool.new accepts each", function()
    for _, o in ipairs(peerpool.options()) do
      local pool = peerpool.new { [o.name] = o.default }
      pool:close()
      assert.error_matches(function() peerpool.new { [o.name] = o.max + 1 } end,
        "option '?" .. o.name, nil, false, o.name)
    end
  end)
end)

describe("the engine's stats", function()
  it("are all in stats(), each shown by a named Prometheus family in docs/metrics.md", function()
    local pool = peerpool.new {}
    local stats = pool:stats()
    pool:close()
    local md = read("docs/metrics.md")
    for name in pairs(peerpool.stats_fields()) do
      assert.is_not_nil(stats[name], name)
      assert.is_truthy(md:find("`" .. name .. "`", 1, true), name .. " is not in docs/metrics.md")
    end
  end)
end)
