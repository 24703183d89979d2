/* A coroutine waiting inside the API (acquire, receive, send, notice:wait, close{drain_ms},
 * pool:request), and the proof that an answer arriving later is still for it.
 *
 * The program may resume such a coroutine itself (its scheduler, a luv callback, a stray
 * coroutine.resume). It then runs on, and may wait again -- in the API or elsewhere -- before
 * the first wait's answer arrives. Resuming it with that answer would hand one call's reply to
 * another. So each wait has an id, and the yielding C frame holds [the object, the id] as its
 * whole stack: while the coroutine is suspended in that very yield, its stack reads exactly
 * that (a suspended coroutine's stack is the frame it yielded from). Resumed by anyone, the
 * frame is gone, and with it the proof. Nothing is written when the coroutine resumes, so the
 * record holding the wait may go away at any time after its answer is taken. */
#include "lpeerpool.h"

static bool armed(const lpp_wait_t *w);

void lpp_wait_begin(lua_State *L, lpp_wait_t *w) {
  lua_pushthread(L);
  w->co_ref = luaL_ref(L, LUA_REGISTRYINDEX); /* (may raise: nothing is armed yet) */
  w->co = L;
  w->id = 0;
  w->obj = NULL;
}

void lpp_wait_cancel(lua_State *L, lpp_wait_t *w) {
  lpp_unref(L, &w->co_ref);
  w->co = NULL;
  w->id = 0;
}

/* A record that waits often keeps a registry slot of its own across its waits (luaL_ref'd once,
 * holding false between waits): storing the coroutine there is one table write and never
 * raises (the slot exists), where luaL_ref and luaL_unref cost four table operations each. */
void lpp_wait_begin_kept(lua_State *L, lpp_wait_t *w, int slot) {
  lua_pushthread(L);
  lua_rawseti(L, LUA_REGISTRYINDEX, slot);
  w->co_ref = slot;
  w->co = L;
  w->id = 0;
  w->obj = NULL;
}

static void empty_slot(lua_State *L, lpp_wait_t *w) {
  lua_pushboolean(L, 0);
  lua_rawseti(L, LUA_REGISTRYINDEX, w->co_ref);
  w->co_ref = LUA_NOREF;
  w->co = NULL;
  w->id = 0;
}

void lpp_wait_cancel_kept(lua_State *L, lpp_wait_t *w) {
  if (w->co_ref != LUA_NOREF) empty_slot(L, w);
}

lua_State *lpp_wait_take_kept(lua_State *L, lpp_wait_t *w) {
  if (w->co_ref == LUA_NOREF) {
    lua_pushnil(L);
    return NULL;
  }
  bool waits = armed(w);
  lua_rawgeti(L, LUA_REGISTRYINDEX, w->co_ref); /* anchored on L from here on */
  lua_State *co = lua_tothread(L, -1);
  empty_slot(L, w);
  return waits ? co : NULL;
}

int lpp_wait_yield(lua_State *L, lpp_state_t *st, int obj, lpp_wait_t *w) {
  return lpp_wait_yieldk(L, st, obj, w, NULL);
}

int lpp_wait_yieldk(lua_State *L, lpp_state_t *st, int obj, lpp_wait_t *w, lua_KFunction k) {
  lua_Integer id = ++st->wait_serial;
  if (obj == 1) { /* (the object is the method's self: nothing to move, no stack to check) */
    lua_settop(L, 1);
    lua_pushinteger(L, id);
  } else {
    obj = lua_absindex(L, obj);
    luaL_checkstack(L, 2, NULL); /* (may raise: nothing is armed yet) */
    lua_pushvalue(L, obj);
    lua_pushinteger(L, id);
    lua_copy(L, -2, 1);
    lua_copy(L, -1, 2);
    lua_settop(L, 2);
  } /* the frame: [obj, id] */
  /* Armed last: an error raised anywhere between lpp_wait_begin and here leaves the wait
   * unarmed, so no answer can resume the coroutine wherever it went on to. */
  w->obj = lua_topointer(L, 1);
  w->id = id;
  /* resumed, k runs (on the stack [obj, id, what the resumer passed]), or without k the call
   * returns what the resumer passed */
  return lua_yieldk(L, 0, 0, k);
}

/* Whether `w` is still owed its answer: its coroutine is suspended in this wait's yield. */
static bool armed(const lpp_wait_t *w) {
  if (w->co_ref == LUA_NOREF || w->id == 0) return false;
  lua_State *co = w->co;
  return lua_status(co) == LUA_YIELD && lua_gettop(co) == 2 && lua_isinteger(co, 2) &&
         lua_tointeger(co, 2) == w->id && lua_topointer(co, 1) == w->obj;
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

/* ---- waits with a deadline -------------------------------------------------------------- */

void lpp_timed_arm(lua_State *L, lpp_pool_t *p, lpp_timed_list_t *l, uv_timer_cb cb) {
  if (l->head == NULL) return;
  pp_timer_start_at(lpp_timer(L, p, &l->timer, p), cb, l->head->at);
}

void lpp_timed_remove(lpp_timed_list_t *l, lpp_timed_t *t) {
  if (t->at == 0) return;
  if (t->prev)
    t->prev->next = t->next;
  else
    l->head = t->next;
  if (t->next)
    t->next->prev = t->prev;
  else
    l->tail = t->prev;
  t->next = t->prev = NULL;
  t->at = 0;
}

void lpp_timed_add(lua_State *L, lpp_pool_t *p, lpp_timed_list_t *l, lpp_timed_t *t, uint64_t at,
                   uv_timer_cb cb) {
  t->at = at;
  lpp_timed_t *after = l->tail;
  while (after && after->at > at)
    after = after->prev;
  t->prev = after;
  t->next = after ? after->next : l->head;
  if (t->next)
    t->next->prev = t;
  else
    l->tail = t;
  if (after)
    after->next = t;
  else
    l->head = t;
  if (l->head == t) lpp_timed_arm(L, p, l, cb);
}
