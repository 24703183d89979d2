rockspec_format = "3.0"
package = "peerpool"
version = "scm-1"
source = {
  url = "git+https://example.invalid/peerpool.git", -- `luarocks make` builds the checkout at hand
}
description = {
  summary = "Pooled outbound peer connections on libuv, scriptable from Lua (luv)",
  detailed = [[
peerpool pools long-lived outbound TCP and unix-socket connections to many peers: limits per
peer and in all, connect timeouts and retries with backoff, a wait queue with priorities and
deadlines, fail-fast busy answers with a notice, shared connections, idle and lifespan
recycling, peer states and metrics. The C engine runs on luv's own loop.
]],
  license = "MIT",
}
-- luv is required at run time (the module runs on luv's loop). It is not listed as a rock
-- dependency so that `luarocks make` works offline against the system's luv (Debian:
-- lua-luv); install luv as a rock elsewhere.
dependencies = {
  "lua >= 5.4",
}
build = {
  type = "cmake",
  variables = {
    CMAKE_BUILD_TYPE = "Release",
    CMAKE_INSTALL_PREFIX = "$(PREFIX)",
    PP_LUA_CMOD_DIR = "$(LIBDIR)",
    PP_LUA_MOD_DIR = "$(LUADIR)",
    PP_BUILD_TESTS = "OFF",
    PP_BUILD_BENCH = "OFF",
    -- The rock carries the Lua module (with the engine linked in) and the host program, not
    -- the C library: LuaRocks would deploy a libpeerpool.so from the rock's lib/ as if it
    -- were a Lua module. `cmake --install` of a plain build installs the C library.
    PP_INSTALL_C_LIB = "OFF",
  },
}
