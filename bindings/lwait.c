/* A coroutine waiting inside the API (acquire, receive, send, notice:wait), and the proof that
 * an answer arriving later is still for it.
 *
 * The program may resume such a coroutine itself (its scheduler, a luv callback, a stray
 * coroutine.resume). It then runs on, and may wait again — in the API or elsewhere — before
 * the first wait's answer arrives. Resuming it with that answer would hand one call's reply to
 * another. So each wait has an id, armed in its lpp_wait_t at the yield, and the yield's
 * continuation disarms it however the coroutine is resumed: an answer resumes the coroutine
 * only while its wait is still armed.
 *
 * No table: the continuation reaches the lpp_wait_t through its context pointer, and the
 * yielding frame keeps [the object holding it, the id] — the object stays alive for as long
 * as the coroutine may be resumed, and the id tells the continuation whether the lpp_wait_t
 * still holds this wait (an object may be waited on again once an answer took the old wait). */
#include "lpeerpool.h"

void lpp_wait_begin(lua_State *L, lpp_wait_t *w) {
  lua_pushthread(L);
  w->co_ref = luaL_ref(L, LUA_REGISTRYINDEX); /* (may raise: nothing is armed yet) */
  w->co = L;
  w->id = 0;
}

void lpp_wait_cancel(lua_State *L, lpp_wait_t *w) {
  lpp_unref(L, &w->co_ref);
  w->co = NULL;
  w->id = 0;
}

static int wait_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  lpp_wait_t *w = (lpp_wait_t *)ctx;
  if (w->id == lua_tointeger(L, 2)) w->id = 0; /* however it was resumed, it waits no more */
  return lua_gettop(L) - 2;                    /* what the resumer passed */
}

int lpp_wait_yield(lua_State *L, lpp_state_t *st, int obj, lpp_wait_t *w) {
  obj = lua_absindex(L, obj);
  luaL_checkstack(L, 2, NULL); /* (may raise: nothing is armed yet) */
  lua_Integer id = ++st->wait_serial;
  lua_pushvalue(L, obj);
  lua_pushinteger(L, id);
  lua_copy(L, -2, 1);
  lua_copy(L, -1, 2);
  lua_settop(L, 2); /* the frame: [obj, id] */
  /* Armed last: an error raised anywhere between lpp_wait_begin and here leaves the wait
   * unarmed, so no answer can resume the coroutine wherever it went on to. */
  w->id = id;
  return lua_yieldk(L, 0, (lua_KContext)w, wait_k);
}

/* Whether `w` is still owed its answer: armed (yielded, not resumed since) and its coroutine
 * not closed. */
static bool armed(const lpp_wait_t *w) {
  return w->co_ref != LUA_NOREF && w->id != 0 && lua_status(w->co) == LUA_YIELD;
}

lua_State *lpp_wait_take(lua_State *L, lpp_wait_t *w) {
  bool waits = armed(w);
  lua_State *co = lpp_take_thread(L, &w->co_ref);
  w->co = NULL;
  w->id = 0;
  return waits ? co : NULL;
}

bool lpp_wait_active(lua_State *L, const lpp_wait_t *w) {
  (void)L;
  return armed(w);
}
