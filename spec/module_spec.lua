-- The module table: require, errors, version.
describe("peerpool", function()
  local peerpool = require "peerpool"

  it("loads on luv's loop and says its version", function()
    assert.is_string(peerpool.version)
    assert.is_function(peerpool.new)
  end)

  it("lists the stable error codes", function()
    for _, code in ipairs { "busy", "timeout", "exhausted", "cannot_connect", "closed", "no_peer", "burned" } do
      assert.equal(code, peerpool.errors[code])
    end
  end)
end)
