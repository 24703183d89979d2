/* Policies written in Lua: the engine's pp_policy_t hooks, each running the Lua hook of the
 * active policy table under an instruction budget. A hook that raises, answers nonsense or runs
 * past its budget is cut off; the engine then uses its built-in default, the failure is counted
 * per hook and logged (at most once a second per hook). Synchronous hooks (select_peer,
 * select_conn, backoff) run on a thread of the pool's own; handshake, ping and seed run as
 * coroutines started by the Lua half (peerpool.lua's _run_hook). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "lpeerpool.h"

const char *const lpp_hook_names[LPP_HOOK_COUNT] = {
#define XX(u, l, async, factor, policy) #l,
    LPP_HOOK_MAP(XX)
#undef XX
};
const int lpp_hook_async[LPP_HOOK_COUNT] = {
#define XX(u, l, async, factor, policy) async,
    LPP_HOOK_MAP(XX)
#undef XX
};
const int lpp_hook_policy[LPP_HOOK_COUNT] = {
#define XX(u, l, async, factor, policy) policy,
    LPP_HOOK_MAP(XX)
#undef XX
};
const int lpp_hook_budget_factor[LPP_HOOK_COUNT] = {
#define XX(u, l, async, factor, policy) factor,
    LPP_HOOK_MAP(XX)
#undef XX
};

static const char seed_ctx_key = 'h'; /* registry: peerpool.lua's seed context maker */
static const char runs_key = 'R';     /* registry: weak-keyed hook thread -> lpp_hook_run_t */

void lpp_hook_error(lpp_pool_t *p, int hook, const char *msg) {
  /* The pool's hook thread: idle here, and never a thread in the middle of a resume (the main
   * thread once the pool is closed and its hook thread dropped). */
  lpp_hook_error_on(p->hook_L ? p->hook_L : p->L, p, hook, msg);
}

void lpp_hook_error_on(lua_State *L, lpp_pool_t *p, int hook, const char *msg) {
  p->hook_errors[hook]++;
  uint64_t now = pp_now();
  if (p->hook_logged_at[hook] != 0 && now - p->hook_logged_at[hook] < 1000) {
    p->hook_suppressed[hook]++;
    return;
  }
  char more[64] = "";
  if (p->hook_suppressed[hook])
    snprintf(more, sizeof(more), " (%llu more since the last report)",
             (unsigned long long)p->hook_suppressed[hook]);
  /* The first line says what and what now; a traceback, if any, follows it. */
  if (msg == NULL) msg = "(error object is not a string)";
  const char *trace = strstr(msg, "\nstack traceback:");
  int head = trace ? (int)(trace - msg) : (int)strlen(msg);
  lua_pushfstring(L, "peerpool: policy hook %s (%s) failed: ", lpp_hook_names[hook],
                  p->policy_name);
  lua_pushlstring(L, msg, (size_t)head);
  lua_pushfstring(L, "%s; using the default%s", more, trace ? trace : "");
  lua_concat(L, 3);
  /* A reporter (peerpool.on_error) runs while the engine may still be mid-decision: it may not
   * change this pool either. */
  int gc = lpp_enter_engine_call(p, 0);
  lpp_emit(L, lua_tostring(L, -1));
  lpp_leave_engine_call(p, gc);
  lua_pop(L, 1);
  p->hook_logged_at[hook] = now ? now : 1;
  p->hook_suppressed[hook] = 0;
}

/* Call the function under `nargs` arguments on p->hook_L; leaves one result. 0 on failure. */
/* The engine is in the middle of a decision while a hook runs: the hook may not change the
 * pool (lpp_check_pool_mutable), and a finaliser that would (a collected pool or leased conn)
 * is put off to the loop (lpp_finalize_later). */
int lpp_enter_engine_call(lpp_pool_t *p, int may_add_peers) {
  p->in_engine_call++;
  if (!may_add_peers) p->in_sync_hook++;
  return may_add_peers;
}

void lpp_leave_engine_call(lpp_pool_t *p, int may_add_peers) {
  p->in_engine_call--;
  if (!may_add_peers) p->in_sync_hook--;
}

/* The message handler of synchronous hooks: the error with a traceback, made outside the
 * hook's budget (a hook out of memory or instructions still gets its report). */
static int hook_traceback(lua_State *L) {
  lpp_budget_t *spent = lpp_budget_enter(NULL);
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL) msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  luaL_traceback(L, L, msg, 1);
  lpp_budget_leave(spent);
  return 1;
}

static int call_hook(lpp_pool_t *p, int hook, int nargs) {
  lua_State *L = p->hook_L;
  int base = lua_gettop(L) - nargs; /* the function */
  lua_pushcfunction(L, hook_traceback);
  lua_insert(L, base);
  p->hook_calls[hook]++;
  int gc = lpp_enter_engine_call(p, 0);
  lpp_budget_t budget;
  lpp_budget_init(&budget, p->budget * lpp_hook_budget_factor[hook], (size_t)p->hook_memory);
  lpp_budget_arm(L);
  if (lpp_gc_stress) lua_gc(L, LUA_GCCOLLECT);
  lpp_budget_t *prev = lpp_budget_enter(&budget);
  int rc = lua_pcall(L, nargs, 1, base);
  lpp_budget_leave(prev);
  lpp_leave_engine_call(p, gc);
  lua_remove(L, base);
  if (rc != LUA_OK) {
    lpp_hook_error(p, hook, lua_tostring(L, -1));
    lua_pop(L, 1);
    return 0;
  }
  return 1;
}

int lpp_call_sync_hook(lpp_pool_t *p, int hook, int nargs) {
  return call_hook(p, hook, nargs);
}

/* Push the policy's hook function onto p->hook_L; 0 (nothing pushed) if unusable now. */
static int push_hook(lpp_pool_t *p, const char *name) {
  if (p->policy_ref == LUA_NOREF || p->st->shutting_down) return 0;
  lua_State *L = p->hook_L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, p->policy_ref);
  lua_getfield(L, -1, name);
  lua_remove(L, -2);
  if (!lua_isfunction(L, -1)) {
    lua_pop(L, 1);
    return 0;
  }
  return 1;
}

/* The hook's answer as an index in [0, n): a view it was given, or its 1-based index. */
static int answer_index(lpp_pool_t *p, int hook, int n) {
  lua_State *L = p->hook_L;
  int idx = -1;
  if (lua_type(L, -1) == LUA_TNUMBER) {
    /* 2.0 counts as 2, as Lua's own functions take it. */
    lua_Number d = lua_tonumber(L, -1);
    if (d >= 1 && d <= n && d == floor(d)) idx = (int)d - 1;
  } else {
    int slot = lpp_view_slot(L, -1);
    if (slot >= 0 && slot < n) idx = slot;
  }
  if (idx < 0) {
    char msg[128];
    snprintf(msg, sizeof(msg), "answered %s, not one of its %d candidates (a view or 1..%d)",
             luaL_typename(L, -1), n, n);
    lpp_hook_error(p, hook, msg);
  }
  lua_pop(L, 1);
  return idx;
}

static void push_ctx(lpp_pool_t *p, const char *key, int dialing) {
  lua_State *L = p->hook_L;
  lua_createtable(L, 0, 3);
  if (key) {
    lua_pushstring(L, key);
    lua_setfield(L, -2, "key");
  }
  lua_pushboolean(L, dialing);
  lua_setfield(L, -2, "dialing");
  lua_pushinteger(L, p->pool ? pp_pool_options(p->pool)->client_limit : 1);
  lua_setfield(L, -2, "client_limit");
}

static int c_select_peer(void *data, pp_pool_t *pool, pp_peer_t *const *peers, int n, int dialing,
                         const char *key) {
  lpp_pool_t *p = data;
  if (!push_hook(p, "select_peer")) return -1;
  lpp_views_fill(p, peers, NULL, n);
  push_ctx(p, key, dialing);
  int idx = call_hook(p, LPP_HOOK_SELECT_PEER, 2) ? answer_index(p, LPP_HOOK_SELECT_PEER, n) : -1;
  lpp_views_invalidate(p, n);
  return idx;
}

static int c_select_conn(void *data, pp_peer_t *peer, pp_conn_t *const *conns, int n,
                         const char *key) {
  lpp_pool_t *p = data;
  if (!push_hook(p, "select_conn")) return -1;
  lpp_views_fill(p, NULL, conns, n);
  push_ctx(p, key, 0);
  int idx = call_hook(p, LPP_HOOK_SELECT_CONN, 2) ? answer_index(p, LPP_HOOK_SELECT_CONN, n) : -1;
  lpp_views_invalidate(p, n);
  return idx;
}

static int64_t c_backoff(void *data, pp_peer_t *peer, int attempt, int err) {
  lpp_pool_t *p = data;
  if (!push_hook(p, "backoff")) return PP_BACKOFF_DEFAULT;
  lua_State *L = p->hook_L;
  lua_pushinteger(L, attempt);
  lua_pushstring(L, pp_err_name(err));
  lpp_push_peer_view(L, peer);
  if (!call_hook(p, LPP_HOOK_BACKOFF, 3)) return PP_BACKOFF_DEFAULT;
  int64_t ms = PP_BACKOFF_DEFAULT;
  if (lua_isboolean(L, -1) && !lua_toboolean(L, -1)) {
    ms = PP_BACKOFF_BURN;
  } else if (lua_type(L, -1) == LUA_TNUMBER) {
    double d = lua_tonumber(L, -1);
    if (d >= 0 && d <= 365.0 * 24 * 3600 * 1000 && !isnan(d)) ms = (int64_t)d;
  }
  if (ms == PP_BACKOFF_DEFAULT) {
    char msg[96];
    snprintf(msg, sizeof(msg), "answered %s (want ms >= 0, or false to burn)",
             luaL_typename(L, -1));
    lpp_hook_error(p, LPP_HOOK_BACKOFF, msg);
  }
  lua_pop(L, 1);
  return ms;
}

/* route(key, pool) -> the owning peer's address (or a view with .addr), or nil for the
 * default. Called before any candidate window: a ring kept by peer_event answers in O(log n). */
static pp_peer_t *c_route(void *data, pp_pool_t *pool, const char *key) {
  lpp_pool_t *p = data;
  if (!push_hook(p, "route")) return NULL;
  lua_State *L = p->hook_L;
  lua_pushstring(L, key);
  lpp_push_pool(L, p);
  if (!call_hook(p, LPP_HOOK_ROUTE, 2)) return NULL;
  if (lua_istable(L, -1)) lua_getfield(L, -1, "addr");
  pp_peer_t *peer = NULL;
  int t = lua_type(L, -1);
  if (t == LUA_TSTRING) peer = pp_pool_find_peer(pool, lua_tostring(L, -1));
  if (t != LUA_TNIL && peer == NULL) {
    char msg[160];
    snprintf(msg, sizeof(msg), "answered %s%s%s, not a peer of the pool (want an address or nil)",
             luaL_typename(L, -1), t == LUA_TSTRING ? " " : "",
             t == LUA_TSTRING ? lua_tostring(L, -1) : "");
    lpp_hook_error(p, LPP_HOOK_ROUTE, msg);
  }
  lua_settop(L, 0);
  return peer;
}

/* peer_event(addr, event): the live set changed ("added", "burned"); the answer is ignored. */
static void c_peer_event(void *data, pp_pool_t *pool, pp_peer_t *peer, pp_peer_event_t event) {
  lpp_pool_t *p = data;
  if (!push_hook(p, "peer_event")) return;
  lua_State *L = p->hook_L;
  lua_pushstring(L, pp_peer_addr(peer));
  lua_pushstring(L, pp_peer_event_name(event));
  if (call_hook(p, LPP_HOOK_PEER_EVENT, 2)) lua_pop(L, 1);
}

/* ---- asynchronous hooks: handshake, ping and seed run as coroutines -------------------- */

/* Each runs in a coroutine of its own, registered in a weak table with its budget (its factor
 * in LPP_HOOK_MAP times hook_budget: these wait on I/O); lpp_resume charges every slice to it and,
 * when the coroutine ends, calls lpp_hook_run_end. The wrap-up runs here, in C and outside the
 * budget: a hook that spent its budget cannot keep its conn from going back to the engine. */

/* Whether any Lua state of the process ever made a hook's coroutine: until then no coroutine
 * is one, and lpp_resume skips the registry lookup (about 130 instructions per resume). */
static bool any_hook_runs;

lpp_hook_run_t *lpp_hook_run_find(lua_State *L, lua_State *co) {
  if (!any_hook_runs) {
    lua_pushnil(L);
    return NULL;
  }
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &runs_key) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_pushnil(L);
    return NULL;
  }
  lua_pushvalue(L, -2); /* the thread, anchored by the caller just below */
  lua_rawget(L, -2);
  lua_remove(L, -2);
  return luaL_testudata(L, -1, LPP_HOOK_RUN);
}

lpp_budget_t *lpp_hook_budget_of(lua_State *co) {
  if (!lua_checkstack(co, 3)) return NULL;
  lua_pushthread(co);
  lpp_hook_run_t *run = lpp_hook_run_find(co, co);
  lpp_budget_t *b = run ? &run->budget : NULL;
  lua_pop(co, 2); /* the run (or nil) and the thread: the run stays anchored by the table */
  return b;
}

/* The hook's wrap-up, on its own coroutine once fn has returned or raised (however it was
 * resumed: by the binding, or by a luv callback of the hook's with coroutine.resume), in C and
 * outside the budget: a hook that spent its budget still hands its conn back. Stack: run,
 * message handler, then fn's answer or its error. */
static int hook_body_k(lua_State *co, int status, lua_KContext ctx) {
  (void)ctx;
  lpp_budget_t *spent = lpp_budget_enter(NULL);
  lpp_hook_run_t *run = lua_touserdata(co, 1);
  lua_getiuservalue(co, 1, 1);
  lpp_pool_t *p = luaL_testudata(co, -1, LPP_POOL);
  lua_getiuservalue(co, 1, 2);
  lpp_conn_t *c = luaL_testudata(co, -1, LPP_CONN);
  lua_pop(co, 2);
  int ok = 0;
  if (status != LUA_OK && status != LUA_YIELD) {
    if (p) lpp_hook_error_on(co, p, run->hook, lua_tostring(co, -1));
  } else if (run->hook != LPP_HOOK_SEED) {
    int t = lua_type(co, -1);
    ok = t == LUA_TBOOLEAN && lua_toboolean(co, -1);
    if (t != LUA_TBOOLEAN && t != LUA_TNIL && p) {
      char msg[96];
      snprintf(msg, sizeof(msg), "answered %s (want true or false)", lua_typename(co, t));
      lpp_hook_error_on(co, p, run->hook, msg);
    }
  }
  if (c) lpp_hook_conn_done(c, ok);
  lpp_budget_leave(spent);
  return 0;
}

/* The body of a hook's coroutine: fn(input) under a message handler, then the wrap-up.
 * Stack: run, fn, input. */
static int hook_body(lua_State *co) {
  lua_pushcfunction(co, hook_traceback);
  lua_insert(co, 2);
  return hook_body_k(co, lua_pcallk(co, 1, 1, 2, 0, hook_body_k), 0);
}

/* Start hook `hook` of p's policy as a coroutine; `push_input` pushes its argument onto L.
 * Returns 0 when the policy has no such hook now (nothing started). */
static int start_async(lpp_pool_t *p, int hook, void (*push_input)(lpp_pool_t *, void *, int),
                       void *arg) {
  lua_State *L = p->L;
  if (p->policy_ref == LUA_NOREF || p->st->shutting_down) return 0;
  int top = lua_gettop(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, p->policy_ref);
  lua_getfield(L, -1, lpp_hook_names[hook]);
  lpp_push_pool(L, p);
  if (!lua_isfunction(L, -2) || lua_isnil(L, -1)) {
    lua_settop(L, top);
    return 0;
  }
  p->hook_calls[hook]++;
  int fn = top + 2, pool_idx = top + 3;
  lua_State *co = lua_newthread(L);
  lpp_hook_run_t *run = lua_newuserdatauv(L, sizeof(*run), 2);
  lpp_budget_init(&run->budget, p->budget * lpp_hook_budget_factor[hook], (size_t)p->hook_memory);
  run->hook = hook;
  luaL_setmetatable(L, LPP_HOOK_RUN);
  lua_pushvalue(L, pool_idx);
  lua_setiuservalue(L, -2, 1);
  push_input(p, arg, pool_idx); /* run's uservalue 2 is set by the conn hooks */
  /* co: hook_body, run, fn, input */
  lua_pushcfunction(co, hook_body);
  lua_pushvalue(L, -2); /* the run */
  lua_xmove(L, co, 1);
  lua_pushvalue(L, fn);
  lua_xmove(L, co, 1);
  lua_xmove(L, co, 1); /* the input */
  any_hook_runs = true;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &runs_key) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "k");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &runs_key);
  }
  lua_pushvalue(L, -3); /* the thread */
  lua_pushvalue(L, -3); /* the run */
  lua_rawset(L, -3);
  lua_pop(L, 1);
  lpp_budget_arm(co);
  /* The hook's first slice runs inside the engine's call; later slices (after it yields) do
   * not. A seed hook adds peers: that much is allowed. */
  int gc = lpp_enter_engine_call(p, 1);
  lpp_resume(L, co, 3, p);
  lpp_leave_engine_call(p, gc);
  lua_settop(L, top);
  return 1;
}

static void push_hook_conn(lpp_pool_t *p, void *conn, int pool_idx) {
  lua_State *L = p->L;
  lpp_hook_run_t *run = lua_touserdata(L, -1);
  lpp_push_hook_conn(L, p, conn, run->hook);
  lua_pushvalue(L, -1);
  lua_setiuservalue(L, -3, 2);
  (void)pool_idx;
}

static void c_conn_hook(lpp_pool_t *p, pp_conn_t *conn, int hook) {
  if (start_async(p, hook, push_hook_conn, conn)) return;
  /* No usable hook after all (policy swapped meanwhile): succeed, as without a hook. */
  if (hook == LPP_HOOK_HANDSHAKE)
    pp_conn_handshake_done(conn, 0);
  else
    pp_conn_ping_done(conn, 0);
}

static void c_handshake(void *data, pp_conn_t *conn) {
  c_conn_hook(data, conn, LPP_HOOK_HANDSHAKE);
}
static void c_ping(void *data, pp_conn_t *conn) {
  c_conn_hook(data, conn, LPP_HOOK_PING);
}

static void c_closed(void *data, pp_conn_t *conn) {
  lpp_conn_t *c = pp_conn_get_data(conn);
  if (c == NULL) return;
  lpp_pool_t *p = data;
  int gc = lpp_enter_engine_call(p, 0); /* may resume the hook's coroutine */
  lpp_hook_conn_dead(c);
  lpp_leave_engine_call(p, gc);
}

/* The seed hook's argument: peerpool.lua's seed context (ctx.wanted, ctx:add, ctx:resolve),
 * made outside the budget. */
static void push_seed_ctx(lpp_pool_t *p, void *arg, int pool_idx) {
  lua_State *L = p->L;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &seed_ctx_key);
  lua_pushvalue(L, pool_idx);
  lua_pushinteger(L, *(int *)arg);
  if (lua_pcall(L, 2, 1, 0) != LUA_OK) {
    lpp_report(L, "seed context", lua_tostring(L, -1), p);
    lua_pop(L, 1);
    lua_pushnil(L);
  }
}

static void c_seed(void *data, pp_pool_t *pool, int wanted) {
  start_async(data, LPP_HOOK_SEED, push_seed_ctx, &wanted);
}

/* ---- installing a policy --------------------------------------------------------------- */

/* pool:_set_policy(tbl, name): install a validated policy table (peerpool.lua checks it). */
static int l_set_policy(lua_State *L) {
  lpp_pool_t *p = lpp_check_pool(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  const char *name = luaL_optstring(L, 3, "table");
  pp_policy_t policy;
  memset(&policy, 0, sizeof(policy));
  policy.data = p;
#define HAS(f) (lua_getfield(L, 2, f) == LUA_TFUNCTION ? (lua_pop(L, 1), 1) : (lua_pop(L, 1), 0))
  if (HAS("select_peer")) policy.select_peer = c_select_peer;
  if (HAS("select_conn")) policy.select_conn = c_select_conn;
  if (HAS("backoff")) policy.backoff = c_backoff;
  if (HAS("seed")) policy.seed = c_seed;
  if (HAS("handshake")) policy.handshake = c_handshake;
  if (HAS("ping")) policy.ping = c_ping;
  if (HAS("route")) policy.route = c_route;
  if (HAS("peer_event")) policy.peer_event = c_peer_event;
#undef HAS
  policy.closed = c_closed;
  /* Swap: the engine takes the new hooks for its next decision; conns are untouched. */
  lua_pushvalue(L, 2);
  int ref = luaL_ref(L, LUA_REGISTRYINDEX);
  if (p->policy_ref != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, p->policy_ref);
  p->policy_ref = ref;
  snprintf(p->policy_name, sizeof(p->policy_name), "%s", name);
  pp_pool_set_policy(p->pool, &policy);
  lua_pushboolean(L, 1);
  return 1;
}

/* pool:_hook_error(name, msg): count and log a failure of an asynchronous hook. */
static int l_hook_error(lua_State *L) {
  lpp_pool_t *p = luaL_checkudata(L, 1, LPP_POOL);
  const char *name = luaL_checkstring(L, 2);
  for (int h = 0; h < LPP_HOOK_COUNT; h++)
    if (strcmp(name, lpp_hook_names[h]) == 0) lpp_hook_error(p, h, luaL_optstring(L, 3, "?"));
  return 0;
}

void lpp_policy_init(lua_State *L, lpp_pool_t *p) {
  p->policy_ref = LUA_NOREF;
  snprintf(p->policy_name, sizeof(p->policy_name), "built-in");
  p->hook_L = lua_newthread(L);
  p->hook_L_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  p->views_ref = lpp_views_new(L, p);
  lua_createtable(L, PP_CANDIDATES_MAX, 0);
  p->cand_ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

void lpp_policy_free(lua_State *L, lpp_pool_t *p) {
  int *refs[] = {&p->policy_ref, &p->hook_L_ref, &p->views_ref, &p->cand_ref};
  for (size_t i = 0; i < sizeof(refs) / sizeof(refs[0]); i++) {
    if (*refs[i] != LUA_NOREF && *refs[i] != 0) luaL_unref(L, LUA_REGISTRYINDEX, *refs[i]);
    *refs[i] = LUA_NOREF;
  }
  p->hook_L = NULL; /* unanchored: the collector may take it */
}

static const luaL_Reg policy_methods[] = {
    {"_set_policy", l_set_policy},
    {"_hook_error", l_hook_error},
    {NULL, NULL},
};

void lpp_policy_open(lua_State *L) {
  luaL_newmetatable(L, LPP_HOOK_RUN);
  lua_pop(L, 1);
  lpp_view_open(L);
  luaL_getmetatable(L, LPP_POOL);
  lua_getfield(L, -1, "__index");
  luaL_setfuncs(L, policy_methods, 0);
  lua_pop(L, 2);
}

/* peerpool.lua hands its seed context maker over through this. */
int lpp_l_set_seed_ctx(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_pushvalue(L, 1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &seed_ctx_key);
  return 0;
}
