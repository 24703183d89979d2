-- Running the `peerpool` host program to its end from a spec (host_spec, repl_spec), on top of
-- spec/support/host_helper.lua:
--
--   it("...", R.test(function() ... end [, ms]))   the body runs through T.run (fails after ms)
--   R.exits(code, args [, opts])   run `peerpool args...` until it ends and check that it exits
--                                  with `code`; returns its stdout and stderr. opts.stdin:
--                                  written to it, then its stdin is closed; opts.env as T.spawn;
--                                  opts.ms: how long it may take (15000)
--   R.script(dir, name, code)      write a script file; returns its path
local T = require "spec.support.host_helper"

local R = {}

function R.test(fn, ms)
  return function() T.run(fn, ms) end
end

function R.exits(code, args, opts)
  opts = opts or {}
  local p = T.spawn(table.move(args, 1, #args, 2, { T.peerpool }), opts)
  if opts.stdin then
    p:write(opts.stdin)
    p:close_stdin()
  end
  local got = p:wait(opts.ms)
  assert(got == code, ("`peerpool %s` exited with %s, not %d; stderr: %s"):format(
    table.concat(args, " "), tostring(got), code, p.err))
  return p.out, p.err
end

function R.script(dir, name, code)
  local path = dir .. "/" .. name
  local f = assert(io.open(path, "w"))
  f:write(code)
  f:close()
  return path
end

return R
