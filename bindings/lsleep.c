/* peerpool.sleep(ms): the running coroutine waits ms milliseconds, then the loop resumes it.
 *
 * A sleep is a wait like the API's others (lwait.c): its waker answers only if the coroutine
 * is still suspended in this very sleep. A program that resumes it by hand meanwhile must not
 * be woken again, later, inside whatever it waits on next. The yield has a continuation, so
 * however the sleep ends -- its waker, or a resume by hand -- the waker (a timer, or for
 * sleep(0) an async handle) is freed then, not when it would have fired. The sleeping
 * coroutine is anchored (nothing else need hold a coroutine started by peerpool.spawn); its
 * yielding frame holds the sleep's userdata, whose __gc frees the waker once the coroutine is
 * closed, or at lua_close (before luv's loop finaliser: the userdata is made after the
 * module's sentinel, see module.c). */
#include <math.h>
#include <stdlib.h>

#include "lpeerpool.h"

#define LPP_SLEEP "peerpool.sleep"

/* What wakes a sleep: a timer, or for sleep(0) an async handle. libuv 1.44 runs a timer due
 * "now" in the timer phase that is running (pp_timer_start waits 1 ms instead), while an async
 * send is seen by the next poll: a later turn of the loop, after its I/O, at once. */
typedef union {
  uv_handle_t handle;
  uv_timer_t timer;
  uv_async_t async;
} waker_t;

typedef struct {
  lpp_state_t *st;
  lpp_wait_t wait;
  waker_t *waker; /* malloc'd: it outlives the userdata until its close callback */
} sleep_t;

static void drop_waker(sleep_t *s) {
  if (s->waker == NULL) return;
  lpp_handle_drop(&s->waker->handle);
  s->waker = NULL;
}

/* The sleep is over, one way or another: free the waker and the coroutine's anchor. */
static void finish(lua_State *L, sleep_t *s) {
  drop_waker(s);
  lpp_unref(L, &s->wait.co_ref);
}

static void on_wake(uv_handle_t *h) {
  sleep_t *s = h->data;
  if (s == NULL || s->st->shutting_down) return;
  lua_State *L = s->st->L;
  drop_waker(s);
  lua_State *co = lpp_wait_take(L, &s->wait); /* anchored on L until the pop */
  if (co) lpp_resume(L, co, 0, NULL);         /* (s may be collected from here on) */
  lua_pop(L, 1);
}

static void on_timer(uv_timer_t *timer) {
  on_wake((uv_handle_t *)timer);
}

static void on_async(uv_async_t *async) {
  on_wake((uv_handle_t *)async);
}

/* Runs in the coroutine when it is resumed, by its waker or by hand: its frame is [s, id,
 * what the resumer passed]. */
static int sleep_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  finish(L, lua_touserdata(L, 1));
  return lua_gettop(L) - 2; /* by hand, sleep returns what the resumer passed */
}

/* peerpool.sleep(ms): yield the running coroutine for at least ms (a number >= 0; a fraction
 * counts as a whole ms more), counted from now; sleep(0) until a later turn of the loop. */
int lpp_l_sleep(lua_State *L) {
  lua_Number ms = lua_tonumber(L, 1);
  if (lua_type(L, 1) != LUA_TNUMBER) return luaL_typeerror(L, 1, "number (ms)");
  luaL_argcheck(L, ms >= 0 && ms <= LPP_MAX_MS, 1, /* (NaN fails both) */
                "ms must be >= 0 and at most a year");
  if (!lua_isyieldable(L))
    return luaL_error(L,
                      "peerpool.sleep(ms) must run inside a coroutine: wrap the code in "
                      "peerpool.run(fn) (or peerpool.spawn(fn) inside one); a synchronous "
                      "policy hook cannot wait");
  lpp_state_t *st = lpp_state(L);
  lua_settop(L, 0);
  sleep_t *s = lua_newuserdatauv(L, sizeof(*s), 0);
  s->st = st;
  s->wait.co_ref = LUA_NOREF;
  s->waker = NULL;
  luaL_setmetatable(L, LPP_SLEEP); /* from here on, __gc frees what s holds */
  waker_t *w = malloc(sizeof(*w));
  if (w == NULL) return luaL_error(L, "out of memory");
  if (ms > 0)
    uv_timer_init(st->loop, &w->timer);
  else if (uv_async_init(st->loop, &w->async, on_async) != 0) {
    free(w);
    return luaL_error(L, "peerpool.sleep: cannot make an async handle");
  }
  w->handle.data = s;
  s->waker = w;
  lpp_wait_begin(L, &s->wait); /* anchored before the waker may look for it */
  /* Clocks count whole ms: the sleep started up to 1 ms after the ms it is counted from. */
  if (ms > 0)
    pp_timer_start(&w->timer, on_timer, (uint64_t)ceil(ms) + 1);
  else
    uv_async_send(&w->async);
  return lpp_wait_yieldk(L, st, 1, &s->wait, sleep_k);
}

static int sleep_gc(lua_State *L) {
  finish(L, lua_touserdata(L, 1));
  return 0;
}

static const luaL_Reg sleep_meta[] = {
    {"__gc", sleep_gc},
    {NULL, NULL},
};

void lpp_sleep_open(lua_State *L) {
  lpp_new_class(L, LPP_SLEEP, NULL, sleep_meta);
  lua_pop(L, 1);
}
