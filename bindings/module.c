/* luaopen_peerpool: the module table, the per-state sentinel, luv's loop, and the one path by
 * which every Lua callback and coroutine is run (protected, with a traceback, never unwinding
 * through libuv and never exiting the process). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <luv/luv.h>

#include "lpeerpool.h"
#include "book_lua.h"     /* generated from bindings/book.lua */
#include "metrics_lua.h"  /* generated from bindings/metrics.lua */
#include "peerpool_lua.h" /* generated from bindings/peerpool.lua */
#include "policy_lua.h"   /* generated from bindings/policy.lua */

static const char state_key = 's';
static const char later_key = 'z'; /* registry: objects whose finaliser was put off */
static const char luv_key = 'l';

/* ---- the sentinel ---------------------------------------------------------------------- */

static int state_gc(lua_State *L) {
  lpp_state_t *st = lua_touserdata(L, 1);
  st->shutting_down = 1;
  lpp_sandbox_close(L, st->alloc_ud);
  st->alloc_ud = NULL;
  if (st->later_timer) {
    st->later_timer->data = NULL;
    uv_close((uv_handle_t *)st->later_timer, (uv_close_cb)free);
    st->later_timer = NULL;
  }
  /* Close what is still open, then let the loop finish our close callbacks: once every
   * engine handle is closed, luv's finaliser never sees one. */
  while (st->pools) {
    lpp_pool_t *p = st->pools;
    lpp_pools_remove(p);
    if (p->pool) {
      pp_pool_close(p->pool, NULL);
      p->pool = NULL;
    }
  }
  for (int i = 0; i < 1000 && st->engine_pools > 0; i++)
    uv_run(st->loop, UV_RUN_NOWAIT);
  lpp_req_free_all(st);
  return 0;
}

static void run_later(uv_timer_t *timer) {
  lpp_state_t *st = timer->data;
  if (st == NULL || st->shutting_down) return;
  lua_State *L = st->L;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &later_key) != LUA_TTABLE) {
    lua_pop(L, 1);
    return;
  }
  lua_newtable(L); /* a fresh list for what these finalisers put off again */
  lua_rawsetp(L, LUA_REGISTRYINDEX, &later_key);
  lua_pushnil(L);
  while (lua_next(L, -2)) {
    lua_pop(L, 1);
    if (luaL_getmetafield(L, -1, "__gc") == LUA_TFUNCTION) {
      lua_pushvalue(L, -2);
      lpp_call(L, 1, NULL);
    }
  }
  lua_pop(L, 1);
}

void lpp_finalize_later(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  lpp_state_t *st = lpp_state(L);
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &later_key) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &later_key);
  }
  lua_pushvalue(L, idx);
  lua_pushboolean(L, 1);
  lua_rawset(L, -3);
  lua_pop(L, 1);
  uv_timer_t *t = st->later_timer;
  if (t == NULL) {
    t = st->later_timer = malloc(sizeof(*t));
    if (t == NULL) return; /* the object stays anchored: a leak beats a crash */
    uv_timer_init(st->loop, t);
    uv_unref((uv_handle_t *)t);
  }
  t->data = st;
  pp_timer_start(t, run_later, 0);
}

lpp_state_t *lpp_state(lua_State *L) {
  lua_rawgetp(L, LUA_REGISTRYINDEX, &state_key);
  lpp_state_t *st = lua_touserdata(L, -1);
  lua_pop(L, 1);
  return st;
}

void lpp_pools_add(lpp_pool_t *p) {
  p->next = p->st->pools;
  p->prev = NULL;
  if (p->next) p->next->prev = p;
  p->st->pools = p;
}

void lpp_pools_remove(lpp_pool_t *p) {
  if (p->prev)
    p->prev->next = p->next;
  else if (p->st->pools == p)
    p->st->pools = p->next;
  if (p->next) p->next->prev = p->prev;
  p->next = p->prev = NULL;
}

/* ---- errors ---------------------------------------------------------------------------- */

int lpp_push_error(lua_State *L, int err, const char *detail) {
  lua_pushnil(L);
  lua_pushstring(L, pp_err_name(err));
  lua_pushstring(L, detail ? detail : pp_strerror(err));
  return 3;
}

static const char reporter_key = 'r';

void lpp_emit(lua_State *L, const char *text) {
  /* A reporter set with peerpool.on_error(fn) gets it (the REPL prints it above its prompt);
   * if it fails too, or there is none, stderr does. */
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &reporter_key) == LUA_TFUNCTION) {
    lua_pushstring(L, text);
    if (lua_pcall(L, 1, 0, 0) == LUA_OK) return;
  }
  lua_pop(L, 1);
  fprintf(stderr, "%s\n", text);
  fflush(stderr);
}

void lpp_report(lua_State *L, const char *what, const char *msg, lpp_pool_t *pool) {
  if (pool) pool->callback_errors++;
  lua_pushfstring(L, "peerpool: error in %s: %s", what,
                  msg ? msg : "(error object is not a string)");
  lpp_emit(L, lua_tostring(L, -1));
  lua_pop(L, 1);
}

/* peerpool.on_error(fn | nil): where errors raised by callbacks and coroutines are reported. */
static int l_on_error(lua_State *L) {
  if (!lua_isnoneornil(L, 1)) luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_settop(L, 1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &reporter_key);
  return 0;
}

static int traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL && !lua_isnoneornil(L, 1)) msg = luaL_tolstring(L, 1, NULL);
  luaL_traceback(L, L, msg, 1);
  return 1;
}

int lpp_gc_stress;

void lpp_call(lua_State *L, int nargs, lpp_pool_t *pool) {
  int base = lua_gettop(L) - nargs;
  lua_pushcfunction(L, traceback);
  lua_insert(L, base);
  if (lpp_gc_stress) lua_gc(L, LUA_GCCOLLECT);
  lpp_budget_t *outside = lpp_budget_enter(NULL); /* the program's callback, not a hook's */
  int status = lua_pcall(L, nargs, 0, base);
  lpp_budget_leave(outside);
  if (status != LUA_OK) {
    lpp_report(L, "callback", lua_tostring(L, -1), pool);
    lua_pop(L, 1);
  }
  lua_remove(L, base);
}

lua_State *lpp_take_thread(lua_State *L, int *ref) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, *ref);
  lpp_unref(L, ref);
  return lua_tothread(L, -1);
}

void lpp_resume(lua_State *L, lua_State *co, int nargs, lpp_pool_t *pool) {
  int top = lua_gettop(L);
  /* The coroutine stays anchored on L's stack while it runs: nothing else may hold it (a
   * coroutine started by peerpool.spawn is held by nobody once it waited). */
  lua_pushthread(co);
  lua_xmove(co, L, 1);
  lpp_hook_run_t *run = lpp_hook_run_find(L, co); /* pushes it (or nil) */
  if (lpp_gc_stress) lua_gc(L, LUA_GCCOLLECT);
  /* A hook's coroutine runs on its budget; any other on none (even when a hook's code made the
   * resume happen: the program's coroutine is not the hook's). */
  lpp_budget_t *prev = lpp_budget_enter(run ? &run->budget : NULL);
  int nres = 0;
  int status = lua_resume(co, L, nargs, &nres);
  lpp_budget_leave(prev);
  if (status == LUA_YIELD || status == LUA_OK) { /* (a hook's body wraps itself up) */
    lua_pop(co, nres);
  } else {
    const char *msg = lua_tostring(co, -1);
    luaL_traceback(L, co, msg ? msg : "(error object is not a string)", 0);
    lpp_report(L, "coroutine", lua_tostring(L, -1), pool);
    lua_pop(L, 1);
    lua_resetthread(co); /* runs the dead coroutine's pending __close handlers */
    lua_settop(co, 0);   /* ... and leaves it empty, so coroutine.status() says "dead" */
  }
  lua_settop(L, top);
}

void lpp_unref(lua_State *L, int *ref) {
  if (*ref != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, *ref);
  *ref = LUA_NOREF;
}

int lpp_new_class(lua_State *L, const char *name, const luaL_Reg *methods, const luaL_Reg *meta) {
  if (!luaL_newmetatable(L, name)) return 0;
  if (methods) {
    lua_newtable(L);
    luaL_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");
  }
  luaL_setfuncs(L, meta, 0);
  return 1;
}

static void handle_closed(uv_handle_t *h) {
  free(h);
}

void lpp_handle_drop(uv_handle_t *h) {
  h->data = NULL; /* (its callback will not run) */
  uv_close(h, handle_closed);
}

uv_timer_t *lpp_timer(lua_State *L, lpp_pool_t *p, uv_timer_t **slot, void *data) {
  if (*slot == NULL) {
    *slot = malloc(sizeof(**slot));
    if (*slot == NULL) luaL_error(L, "out of memory");
    uv_timer_init(p->st->loop, *slot);
  }
  (*slot)->data = data;
  return *slot;
}

void lpp_timer_drop(uv_timer_t **slot) {
  if (*slot == NULL) return;
  lpp_handle_drop((uv_handle_t *)*slot);
  *slot = NULL;
}

int64_t lpp_opt_ms(lua_State *L, int idx, const char *what, int64_t dflt) {
  if (lua_isnoneornil(L, idx)) return dflt;
  int isnum;
  lua_Number n = lua_tonumberx(L, idx, &isnum);
  if (!isnum || n < 0 || n > LPP_MAX_MS || n != n)
    luaL_error(L, "%s must be a number of ms >= 0", what);
  return (int64_t)n;
}

/* A write to a peer that hung up raises SIGPIPE, whose default action ends the process: a
 * plain `lua5.4` program would die on conn:send. Ignore it as luv programs (and Node) expect,
 * and get EPIPE instead. A handler the program set itself is left alone. */
static void ignore_sigpipe(void) {
  struct sigaction sa;
  if (sigaction(SIGPIPE, NULL, &sa) != 0) return;
  if (!(sa.sa_flags & SA_SIGINFO) && sa.sa_handler == SIG_DFL) {
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);
  }
}

/* ---- module functions ------------------------------------------------------------------ */

static int l_strerror(lua_State *L) {
  const char *code = luaL_checkstring(L, 1);
#define XX(name, value, str, msg) \
  if (strcmp(code, str) == 0) {   \
    lua_pushstring(L, msg);       \
    return 1;                     \
  }
  PP_ERRNO_MAP(XX)
#undef XX
#define XX(name, msg)             \
  if (strcmp(code, #name) == 0) { \
    lua_pushstring(L, msg);       \
    return 1;                     \
  }
  UV_ERRNO_MAP(XX)
#undef XX
  if (strcmp(code, "ok") == 0) {
    lua_pushliteral(L, "success");
    return 1;
  }
  lua_pushfstring(L, "unknown error code '%s'", code);
  return 1;
}

/* peerpool._canonical(addr): the canonical spelling, or nil, why. */
static int l_canonical(lua_State *L) {
  char out[256];
  const char *why = NULL;
  if (pp_addr_canonical(luaL_checkstring(L, 1), out, sizeof(out), &why) != 0) {
    lua_pushnil(L);
    lua_pushstring(L, why ? why : "address too long");
    return 2;
  }
  lua_pushstring(L, out);
  return 1;
}

/* Whether luv's loop is running now (uv.run on the stack). */
static int l_loop_running(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, "luv_context");
  luv_ctx_t *ctx = lua_touserdata(L, -1);
  lua_pop(L, 1);
  lua_pushboolean(L, ctx && ctx->mode != -1);
  return 1;
}

/* peerpool._resume(co, ...): resume a waiting coroutine through the protected path (a hook's
 * coroutine is charged to its budget). */
static int l_resume(lua_State *L) {
  lua_State *co = lua_tothread(L, 1);
  luaL_argexpected(L, co != NULL && co != L, 1, "coroutine");
  int n = lua_gettop(L) - 1;
  if (lua_status(co) != LUA_YIELD) return 0;
  if (!lua_checkstack(co, n + 1)) return luaL_error(L, "peerpool._resume: stack overflow");
  lua_xmove(L, co, n);
  lpp_resume(L, co, n, NULL);
  return 0;
}

/* Resume a coroutine through the protected path (used by peerpool.run). */
static int l_spawn(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  int n = lua_gettop(L);
  lua_State *co = lua_newthread(L);
  lua_insert(L, 1);
  lua_xmove(L, co, n);
  lpp_resume(L, co, n - 1, NULL);
  return 1; /* the thread */
}

static const luaL_Reg module_fns[] = {
    {"strerror", l_strerror},
    {"new", lpp_l_new},
    {"pools", lpp_l_pools},
    {"options", lpp_l_options},
    {"stats_fields", lpp_l_stats_fields},
    {"_loop_running", l_loop_running},
    {"_spawn", l_spawn},
    {"spawn", l_spawn},
    {"on_error", l_on_error},
    {"sleep", lpp_l_sleep},
    {"_canonical", l_canonical},
    {"_set_seed_ctx", lpp_l_set_seed_ctx},
    {"_resume", l_resume},
    {"ring", lpp_l_ring},
    {NULL, NULL},
};

static const char module_key = 'm';

int luaopen_peerpool(lua_State *L) {
  /* Required again (busted clears package.loaded): the same module, set up once per state. */
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &module_key) == LUA_TTABLE) return 1;
  lua_pop(L, 1);
  /* luv first: its loop is ours, and its table must never be collected (it owns the loop). */
  lua_getglobal(L, "require");
  lua_pushliteral(L, "luv");
  lua_call(L, 1, 1);
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &luv_key) == LUA_TNIL) {
    lua_pop(L, 1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &luv_key); /* the first luv table: it owns the loop */
  } else {
    lua_pop(L, 2);
  }
  lua_getfield(L, LUA_REGISTRYINDEX, "luv_context");
  luv_ctx_t *ctx = lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (ctx == NULL || ctx->loop == NULL)
    return luaL_error(L, "peerpool: luv's loop is not available");

  /* One sentinel per state, created after luv so that it is finalised before luv's loop. */
  lua_rawgetp(L, LUA_REGISTRYINDEX, &state_key);
  if (lua_isnil(L, -1)) {
    lpp_state_t *st = lua_newuserdatauv(L, sizeof(*st), 0);
    memset(st, 0, sizeof(*st));
    st->loop = ctx->loop;
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    st->L = lua_tothread(L, -1);
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushcfunction(L, state_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &state_key);
    st->alloc_ud = lpp_sandbox_open(L);
    ignore_sigpipe();
    const char *stress = getenv("PEERPOOL_GC_STRESS");
    lpp_gc_stress = stress != NULL && *stress != '\0' && strcmp(stress, "0") != 0;
  }
  lua_pop(L, 1);

  lpp_pool_open(L);
  lpp_observe_open(L);
  lpp_conn_open(L);
  lpp_notice_open(L);
  lpp_policy_open(L);
  lpp_sleep_open(L);

  lua_newtable(L); /* the module */
  luaL_setfuncs(L, module_fns, 0);
  lua_newtable(L);
#define XX(name, value, str, msg) \
  lua_pushliteral(L, str);        \
  lua_setfield(L, -2, str);
  PP_ERRNO_MAP(XX)
#undef XX
  lua_setfield(L, -2, "errors");
  lua_newtable(L); /* hooks: name -> "sync" or "async" */
  for (int h = 0; h < LPP_HOOK_COUNT; h++) {
    if (!lpp_hook_policy[h]) continue; /* (set by an option, not by a policy) */
    lua_pushstring(L, lpp_hook_async[h] ? "async" : "sync");
    lua_setfield(L, -2, lpp_hook_names[h]);
  }
  lua_setfield(L, -2, "hooks");
  lua_pushliteral(L, PP_VERSION_STRING);
  lua_setfield(L, -2, "version");
#ifdef PP_SCRIPTS_DIR
  lua_pushliteral(L, PP_SCRIPTS_DIR);
  lua_setfield(L, -2, "_scripts_dir");
#endif

  /* The Lua half: peerpool.new, pool:with, peerpool.run... the address book, handed over as
   * its chunk and lbook.c's functions, metrics.lua's chunk and policy.lua's chunk. */
  if (luaL_loadbuffer(L, (const char *)peerpool_lua, sizeof(peerpool_lua), "=peerpool.lua") !=
      LUA_OK)
    return lua_error(L);
  lua_pushvalue(L, -2);
  luaL_getmetatable(L, LPP_POOL);
  luaL_getmetatable(L, LPP_CONN);
  luaL_getmetatable(L, LPP_NOTICE);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &luv_key);
  if (luaL_loadbuffer(L, (const char *)book_lua, sizeof(book_lua), "=book.lua") != LUA_OK)
    return lua_error(L);
  lpp_book_open(L);
  if (luaL_loadbuffer(L, (const char *)metrics_lua, sizeof(metrics_lua), "=metrics.lua") != LUA_OK)
    return lua_error(L);
  if (luaL_loadbuffer(L, (const char *)policy_lua, sizeof(policy_lua), "=policy.lua") != LUA_OK)
    return lua_error(L);
  lua_call(L, 9, 0);
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &module_key);
  return 1;
}
