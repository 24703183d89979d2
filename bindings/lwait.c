/* A coroutine waiting inside the API (acquire, receive, send, notice:wait), and the proof that
 * an answer arriving later is still for it.
 *
 * The program may resume such a coroutine itself (its scheduler, a luv callback, a stray
 * coroutine.resume). It then runs on, and may wait again — in the API or elsewhere — before
 * the first wait's answer arrives. Resuming it with that answer would hand one call's reply to
 * another. So each wait has an id, the registry's `waits` table maps the coroutine to the id
 * of the wait it is in, and the yield's continuation clears that entry however the coroutine
 * is resumed: an answer resumes the coroutine only while the entry still holds its wait's id. */
#include "lpeerpool.h"

static const char waits_key = 0; /* registry: coroutine -> id of the API wait it is in */

static void push_waits(lua_State *L) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &waits_key) == LUA_TTABLE) return;
  lua_pop(L, 1);
  lua_newtable(L); /* weak keys: a closed, unreachable coroutine's entry goes with it */
  lua_newtable(L);
  lua_pushliteral(L, "k");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &waits_key);
}

/* waits[co] = id (or nil when id is 0). Clearing never allocates, so it never raises. */
static void set_wait(lua_State *L, lua_State *co, lua_Integer id) {
  push_waits(L);
  lua_pushthread(co);
  lua_xmove(co, L, 1);
  if (id)
    lua_pushinteger(L, id);
  else
    lua_pushnil(L);
  lua_rawset(L, -3);
  lua_pop(L, 1);
}

void lpp_wait_begin(lua_State *L, lpp_state_t *st, lpp_wait_t *w) {
  lua_Integer id = ++st->wait_serial;
  set_wait(L, L, id); /* (may raise: before anything is registered) */
  lua_pushthread(L);
  w->co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  w->id = id;
}

void lpp_wait_cancel(lua_State *L, lpp_wait_t *w) {
  set_wait(L, L, 0);
  lpp_unref(L, &w->co_ref);
  w->id = 0;
}

static int wait_k(lua_State *L, int status, lua_KContext base) {
  (void)status;
  set_wait(L, L, 0); /* however it was resumed, it waits here no more */
  return lua_gettop(L) - (int)base; /* what the resumer passed */
}

int lpp_wait_yield(lua_State *L) {
  return lua_yieldk(L, 0, (lua_KContext)lua_gettop(L), wait_k);
}

static bool still_waits(lua_State *L, lua_State *co, lua_Integer id) {
  if (co == NULL || lua_status(co) != LUA_YIELD) return false; /* closed, or dead */
  push_waits(L);
  lua_pushthread(co);
  lua_xmove(co, L, 1);
  lua_rawget(L, -2);
  bool same = lua_tointeger(L, -1) == id;
  lua_pop(L, 2);
  return same;
}

lua_State *lpp_wait_take(lua_State *L, lpp_wait_t *w) {
  lua_State *co = lpp_take_thread(L, &w->co_ref);
  lua_Integer id = w->id;
  w->id = 0;
  return still_waits(L, co, id) ? co : NULL;
}

bool lpp_wait_active(lua_State *L, const lpp_wait_t *w) {
  if (w->co_ref == LUA_NOREF) return false;
  lua_rawgeti(L, LUA_REGISTRYINDEX, w->co_ref);
  bool active = still_waits(L, lua_tothread(L, -1), w->id);
  lua_pop(L, 1);
  return active;
}
