/* Coverage of Lua code for libFuzzer. A harness that runs a parser written in Lua gets no
 * coverage signal from the Lua interpreter (Debian's, not instrumented), so libFuzzer could not
 * tell a new path through the Lua code from an old one. This line hook counts each step from
 * one line to the next in a table libFuzzer reads as extra counters (the
 * __libfuzzer_extra_counters section, LLVM's libFuzzer on Linux): a new pair of lines is new
 * coverage, as a new edge is in compiled code. Include once, in the harness's one C file. */
#include <stdint.h>

#include <lua.h>

#define LUA_COV_SIZE 8192

__attribute__((
    used, section("__libfuzzer_extra_counters"))) static uint8_t lua_cov_counters[LUA_COV_SIZE];
static uint32_t lua_cov_prev;

static void lua_cov_hook(lua_State *L, lua_Debug *ar) {
  (void)L;
  uint32_t cur = (uint32_t)ar->currentline * 2654435761u;
  uint8_t *c = &lua_cov_counters[(cur ^ lua_cov_prev) % LUA_COV_SIZE];
  if (*c < 255) (*c)++;
  lua_cov_prev = cur >> 1; /* A->B and B->A are different steps */
}

/* Count the lines run by L (and by the coroutines it creates from now on). */
static void lua_cov_start(lua_State *L) {
  lua_sethook(L, lua_cov_hook, LUA_MASKLINE, 0);
}
