/* libFuzzer target: the line protocol of the host's REPL socket (bindings/host/repl_frames.lua,
 * embedded at build time), run in Lua 5.4 as the host runs it.
 *
 * Input: byte 0 picks the splitter's max_line (1..64 bytes, or 1 MiB), byte 1 seeds the chunk
 * sizes, the rest is what a client sends. The bytes are fed to one splitter whole and to
 * another in pseudo-random chunks (1..8 bytes mostly, up to 4 KiB at times). Checked:
 *   - no Lua error escapes feed() or finish();
 *   - the splitter never holds more than max_line bytes;
 *   - both splitters give the same events, each well formed (a line holds no "\n" and at most
 *     max_line bytes; "too_long" comes last, once).
 * A broken invariant aborts with a message (libFuzzer saves the input). The Lua lines run are
 * libFuzzer's coverage (lua_cov.h). Built and run by fuzz/CMakeLists.txt (ctest case
 * fuzz.repl_frames, `make fuzz-c`).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "lua_cov.h"
#include "peerpool_repl_frames_lua.h" /* generated from bindings/host/repl_frames.lua */

/* The checks that read better in Lua: events well formed, and two event lists equal. Returns
 * check(max_line, whole, chunked) -> nil, or what is wrong. */
static const char check_lua[] =
    "local function describe(ev) return ev and table.concat(ev, '|', 1, #ev) or 'nothing' end\n"
    "local function well_formed(events, max_line)\n"
    "  for i, ev in ipairs(events) do\n"
    "    local kind = ev[1]\n"
    "    if kind == 'line' then\n"
    "      if ev[2]:find('\\n', 1, true) then return 'a line holds a newline' end\n"
    "      if #ev[2] > max_line then return 'a line is over max_line' end\n"
    "    elseif kind == 'too_long' then\n"
    "      if i ~= #events then return 'an event after too_long' end\n"
    "    elseif kind == 'hello' then\n"
    "      if i ~= 1 then return 'a hello after the first line' end\n"
    "    elseif kind ~= 'control' then\n"
    "      return 'an event of kind ' .. tostring(kind)\n"
    "    end\n"
    "  end\n"
    "end\n"
    "return function(max_line, whole, chunked)\n"
    "  local bad = well_formed(whole, max_line)\n"
    "  if bad then return bad end\n"
    "  for i = 1, math.max(#whole, #chunked) do\n"
    "    local a, b = describe(whole[i]), describe(chunked[i])\n"
    "    if a ~= b then\n"
    "      return ('event %d: %q whole, %q chunked'):format(i, a, b)\n"
    "    end\n"
    "  end\n"
    "end\n";

/* Every input makes and frees thousands of small Lua strings: ASan's default 256 MB quarantine
 * of freed memory took this target's RSS past 500 MB in a short run. 32 MB still keeps
 * recently freed memory poisoned across several inputs. */
const char *__asan_default_options(void) {
  return "quarantine_size_mb=32";
}

static lua_State *L;
static int frames_ref; /* the module table */
static int check_ref;  /* check(max_line, whole, chunked) */

static void fail(const char *what, const char *detail) {
  fprintf(stderr, "fuzz_repl_frames: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
  abort();
}

/* Call the function below nargs arguments; a Lua error is a finding. */
static void call(int nargs, int nres, const char *what) {
  if (lua_pcall(L, nargs, nres, 0) != LUA_OK) fail(what, lua_tostring(L, -1));
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  L = luaL_newstate();
  if (L == NULL) fail("cannot create a Lua state", NULL);
  luaL_openlibs(L);
  if (luaL_loadbuffer(L, (const char *)peerpool_repl_frames_lua, sizeof(peerpool_repl_frames_lua),
                      "=repl_frames") != LUA_OK)
    fail("cannot load repl_frames.lua", lua_tostring(L, -1));
  call(0, 1, "repl_frames.lua");
  frames_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  if (luaL_loadbuffer(L, check_lua, sizeof(check_lua) - 1, "=check") != LUA_OK)
    fail("cannot load the checks", lua_tostring(L, -1));
  call(0, 1, "the checks");
  check_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_cov_start(L);
  return 0;
}

/* Push a new splitter for max_line. */
static void new_splitter(lua_Integer max_line) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, frames_ref);
  lua_getfield(L, -1, "splitter");
  lua_remove(L, -2);
  lua_pushinteger(L, max_line);
  call(1, 1, "splitter()");
}

/* splitter:method(out [, data, n]) for the splitter at index sp and the event list at out. */
static void feed(int sp, int out, const char *method, const uint8_t *data, size_t n) {
  lua_getfield(L, sp, method);
  lua_pushvalue(L, sp);
  int nargs = 2;
  if (data) {
    lua_pushlstring(L, (const char *)data, n);
    nargs++;
  }
  lua_pushvalue(L, out);
  call(nargs, 0, method);
}

static lua_Integer pending(int sp) {
  lua_getfield(L, sp, "pending");
  lua_pushvalue(L, sp);
  call(1, 1, "pending()");
  lua_Integer n = lua_tointeger(L, -1);
  lua_pop(L, 1);
  return n;
}

static uint32_t xorshift(uint32_t *x) {
  *x ^= *x << 13;
  *x ^= *x >> 17;
  *x ^= *x << 5;
  return *x;
}

int LLVMFuzzerTestOneInput(const uint8_t *in, size_t size) {
  if (size < 2) return 0;
  lua_Integer max_line = in[0] < 250 ? 1 + in[0] % 64 : 1 << 20;
  uint32_t rng = 2463534242u ^ ((uint32_t)in[1] * 2654435761u);
  const uint8_t *data = in + 2;
  size_t n = size - 2;
  int top = lua_gettop(L);

  new_splitter(max_line); /* top + 1: fed whole */
  lua_newtable(L);        /* top + 2: its events */
  feed(top + 1, top + 2, "feed", data, n);
  feed(top + 1, top + 2, "finish", NULL, 0);

  new_splitter(max_line); /* top + 3: fed in chunks */
  lua_newtable(L);        /* top + 4: its events */
  for (size_t at = 0; at < n;) {
    uint32_t r = xorshift(&rng);
    size_t len = (r & 0x100) ? 1 + (r >> 9) % 4096 : 1 + (r >> 9) % 8;
    if (len > n - at) len = n - at;
    feed(top + 3, top + 4, "feed", data + at, len);
    at += len;
    if (pending(top + 3) > max_line) fail("the splitter holds more than max_line bytes", NULL);
  }
  feed(top + 3, top + 4, "finish", NULL, 0);
  if (pending(top + 3) != 0) fail("bytes left in the splitter after finish()", NULL);

  lua_rawgeti(L, LUA_REGISTRYINDEX, check_ref);
  lua_pushinteger(L, max_line);
  lua_pushvalue(L, top + 2);
  lua_pushvalue(L, top + 4);
  call(3, 1, "the checks");
  if (!lua_isnil(L, -1)) fail("whole and chunked feeds differ", lua_tostring(L, -1));
  lua_settop(L, top);
  /* Free this input's garbage now: an input whose mallocs and frees do not match makes
   * libFuzzer scan the whole heap for leaks, which costs far more than a collection. */
  lua_gc(L, LUA_GCCOLLECT);
  return 0;
}
