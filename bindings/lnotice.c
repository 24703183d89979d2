/* Busy notices: the detail of a "busy" answer. notice:wait([ms]) in a coroutine,
 * notice:on_free(fn), notice:cancel(). A notice fires once. */
#include <stdlib.h>
#include <string.h>

#include "lpeerpool.h"

static lpp_notice_t *check_notice(lua_State *L, int idx) {
  return luaL_checkudata(L, idx, LPP_NOTICE);
}

/* Deliver the outcome to whoever waits: the coroutine in wait(), then the on_free callback. */
static void deliver(lpp_notice_t *n) {
  lpp_pool_t *p = n->owner;
  lua_State *L = p->L;
  if (n->timer) uv_timer_stop(n->timer);
  if (p->st->shutting_down) {
    lpp_unref(L, &n->wait.co_ref);
    lpp_unref(L, &n->cb_ref);
    lpp_unref(L, &n->self_ref);
    return;
  }
  /* Keep the userdata alive across the calls below. */
  lua_rawgeti(L, LUA_REGISTRYINDEX, n->self_ref);
  int anchor = lua_gettop(L);
  if (n->wait.co_ref != LUA_NOREF) {
    lua_State *co = lpp_wait_take(L, &n->wait); /* anchored until settop below */
    if (co == NULL) goto callback; /* closed, or resumed by the program, while it waited */
    int nres = 1;
    if (n->status == 0)
      lua_pushboolean(co, 1);
    else
      nres = lpp_push_error(co, n->status, NULL);
    lpp_resume(L, co, nres, p);
  }
callback:
  if (n->cb_ref != LUA_NOREF) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, n->cb_ref);
    lpp_unref(L, &n->cb_ref);
    if (n->status == 0)
      lua_pushnil(L);
    else
      lua_pushstring(L, pp_err_name(n->status));
    lpp_call(L, 1, p);
  }
  lua_settop(L, anchor - 1);
}

static void on_fired(pp_notice_t *notice, int status) {
  lpp_notice_t *n = notice->data;
  n->fired = 1;
  n->status = status;
  deliver(n);
  lpp_unref(n->owner->L, &n->self_ref); /* fired: no longer needs to be kept alive */
}

void lpp_push_notice(lua_State *L, lpp_pool_t *p, int pool_idx, pp_peer_t *peer) {
  lpp_notice_t *n = lua_newuserdatauv(L, sizeof(*n), 1);
  memset(n, 0, sizeof(*n));
  n->self_ref = n->wait.co_ref = n->cb_ref = LUA_NOREF;
  n->owner = p;
  n->notice.data = n;
  luaL_setmetatable(L, LPP_NOTICE);
  lua_pushvalue(L, pool_idx); /* the pool stays alive while its notice does */
  lua_setiuservalue(L, -2, 1);
  lua_pushvalue(L, -1); /* anchored before the engine holds it */
  n->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  if (pp_notice_start(p->pool, &n->notice, peer, on_fired) != 0) {
    lpp_unref(L, &n->self_ref);
    n->fired = 1;
    n->status = PP_ECLOSED;
  }
}

static void on_wait_timeout(uv_timer_t *timer) {
  lpp_notice_t *n = timer->data;
  if (n == NULL || n->wait.co_ref == LUA_NOREF) return;
  lua_State *L = n->owner->L;
  lua_State *co = lpp_wait_take(L, &n->wait);
  if (co) {
    int nres = lpp_push_error(co, PP_ETIMEDOUT, "capacity did not free in time");
    lpp_resume(L, co, nres, n->owner);
  }
  lua_pop(L, 1);
}

/* notice:wait([ms]) -> true once capacity freed, or nil, code, message. */
static int l_wait(lua_State *L) {
  lpp_notice_t *n = check_notice(L, 1);
  int64_t ms = lpp_opt_ms(L, 2, "notice:wait(ms): ms", 0);
  if (n->fired) {
    if (n->status == 0) {
      lua_pushboolean(L, 1);
      return 1;
    }
    return lpp_push_error(L, n->status, NULL);
  }
  /* a waiter whose coroutine was closed or resumed by the program waits no more */
  if (n->wait.co_ref != LUA_NOREF && !lpp_wait_active(L, &n->wait)) lpp_unref(L, &n->wait.co_ref);
  luaL_argcheck(L, n->wait.co_ref == LUA_NOREF, 1, "a coroutine is already waiting on this notice");
  if (!lua_isyieldable(L))
    return luaL_error(L, "notice:wait() must run inside a coroutine (or use notice:on_free(fn))");
  uv_timer_t *timer = ms > 0 ? lpp_timer(L, n->owner, &n->timer, n) : NULL;
  lpp_wait_begin(L, &n->wait); /* anchored before the timer may look for it */
  if (timer) pp_timer_start(timer, on_wait_timeout, (uint64_t)ms);
  return lpp_wait_yield(L, n->owner->st, 1, &n->wait);
}

static void on_late(uv_timer_t *timer) {
  lpp_notice_t *n = timer->data;
  if (n) deliver(n);
  if (n) lpp_unref(n->owner->L, &n->self_ref);
}

/* notice:on_free(fn): fn(nil) when capacity frees, fn(code) if cancelled or closed. */
static int l_on_free(lua_State *L) {
  lpp_notice_t *n = check_notice(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  lpp_unref(L, &n->cb_ref);
  lua_pushvalue(L, 2);
  n->cb_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  if (n->fired) {
    /* Already fired: call back on a later tick, never inside on_free. */
    lpp_timer(L, n->owner, &n->timer, n);
    if (n->self_ref == LUA_NOREF) {
      lua_pushvalue(L, 1);
      n->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    pp_timer_start(n->timer, on_late, 0);
  }
  lua_settop(L, 1);
  return 1;
}

static int l_cancel(lua_State *L) {
  lpp_notice_t *n = check_notice(L, 1);
  int armed = !n->fired && !n->cancelled;
  if (armed) {
    n->cancelled = 1;
    armed = pp_notice_cancel(&n->notice) == 0;
  }
  lua_pushboolean(L, armed);
  return 1;
}

static int l_gc(lua_State *L) {
  lpp_notice_t *n = check_notice(L, 1);
  lpp_timer_drop(&n->timer);
  lpp_unref(L, &n->cb_ref);
  lpp_unref(L, &n->wait.co_ref);
  return 0;
}

static int l_tostring(lua_State *L) {
  lpp_notice_t *n = check_notice(L, 1);
  lua_pushfstring(L, "peerpool.notice (%s): %p",
                  n->fired ? (n->status == 0 ? "fired" : pp_err_name(n->status)) : "armed",
                  (void *)n);
  return 1;
}

static const luaL_Reg notice_methods[] = {
    {"wait", l_wait},
    {"on_free", l_on_free},
    {"cancel", l_cancel},
    {NULL, NULL},
};

static const luaL_Reg notice_meta[] = {
    {"__gc", l_gc},
    {"__tostring", l_tostring},
    {NULL, NULL},
};

void lpp_notice_open(lua_State *L) {
  lpp_new_class(L, LPP_NOTICE, notice_methods, notice_meta);
  lua_pop(L, 1);
}
