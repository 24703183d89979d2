/* Observability in Lua: histograms (stats().histograms, pool:histogram), events (pool:on and
 * pool:off for "state", "conn_open", "conn_close", "eject", "burn", "leak",
 * "acquire_timeout"), leak reports with the acquiring coroutine's traceback (leak_threshold)
 * and pool:explain([peer]). */
#include <string.h>

#include "lpeerpool.h"

/* ---- histograms ------------------------------------------------------------------------ */

static void push_quantile(lua_State *L, const pp_histogram_t *h, double q, const char *name) {
  if (h->count == 0) return;
  lua_pushnumber(L, pp_histogram_quantile(h, q) / 1e6);
  lua_setfield(L, -2, name);
}

static const char le_key = 'l'; /* registry: the bucket bounds, one table shared by all */

/* Push the shared list of finite bucket bounds in seconds (1e-06, 2e-06, ... 67.108864). */
static void push_le(lua_State *L) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &le_key) == LUA_TTABLE) return;
  lua_pop(L, 1);
  lua_createtable(L, PP_HIST_BUCKETS - 1, 0);
  for (int i = 0; i < PP_HIST_BUCKETS - 1; i++) {
    lua_pushnumber(L, pp_histogram_bound_us(i) / 1e6);
    lua_rawseti(L, -2, i + 1);
  }
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &le_key);
}

/* { count, sum (s), le = { bounds in s } (shared, finite ones), buckets = { cumulative count
 *   per bound }, p50, p90, p99 (s; absent while empty) } */
static void push_histogram(lua_State *L, const pp_histogram_t *h) {
  lua_createtable(L, 0, 7);
  lua_pushinteger(L, (lua_Integer)h->count);
  lua_setfield(L, -2, "count");
  lua_pushnumber(L, (double)h->sum_us / 1e6);
  lua_setfield(L, -2, "sum");
  push_le(L);
  lua_setfield(L, -2, "le");
  lua_createtable(L, PP_HIST_BUCKETS - 1, 0);
  uint64_t cum = 0;
  for (int i = 0; i < PP_HIST_BUCKETS - 1; i++) {
    cum += h->buckets[i];
    lua_pushinteger(L, (lua_Integer)cum);
    lua_rawseti(L, -2, i + 1);
  }
  lua_setfield(L, -2, "buckets");
  push_quantile(L, h, 0.5, "p50");
  push_quantile(L, h, 0.9, "p90");
  push_quantile(L, h, 0.99, "p99");
}

void lpp_push_histograms(lua_State *L, lpp_pool_t *p) {
  lua_createtable(L, 0, PP_HIST_COUNT);
  for (int k = 0; k < PP_HIST_COUNT; k++) {
    pp_histogram_t h;
    pp_pool_histogram(p->pool, (pp_hist_kind_t)k, &h);
    push_histogram(L, &h);
    lua_setfield(L, -2, pp_hist_kind_name((pp_hist_kind_t)k));
  }
}

/* pool:histogram(name): one histogram ("acquire_wait", "connect", "tls", "handshake", "hold") */
static int l_histogram(lua_State *L) {
  lpp_pool_t *p = lpp_check_pool(L, 1);
  const char *name = luaL_checkstring(L, 2);
  for (int k = 0; k < PP_HIST_COUNT; k++) {
    if (strcmp(name, pp_hist_kind_name((pp_hist_kind_t)k)) != 0) continue;
    pp_histogram_t h;
    pp_pool_histogram(p->pool, (pp_hist_kind_t)k, &h);
    push_histogram(L, &h);
    return 1;
  }
  return luaL_argerror(L, 2,
                       "histogram must be \"acquire_wait\", \"connect\", \"tls\", \"handshake\" "
                       "or \"hold\"");
}

/* ---- events ---------------------------------------------------------------------------- */

static const char *const event_names[] = {"state", "conn_open", "conn_close",      "eject",
                                          "burn",  "leak",      "acquire_timeout", NULL};

static void on_engine_event(pp_pool_t *pool, const pp_event_t *ev, void *arg);

/* Listen to the engine's events (once per pool): for pool:on and for leak reports. */
static void attach(lpp_pool_t *p) {
  pp_pool_on_event(p->pool, on_engine_event, NULL);
}

/* Push the pool's user value table field `name` (a list of handlers, or nil). */
static int push_handlers(lua_State *L, int pool_idx, const char *name) {
  lua_getiuservalue(L, pool_idx, 1);
  int t = lua_getfield(L, -1, name);
  lua_remove(L, -2);
  return t;
}

/* A copy of the list at the top (nil: empty) without `fn` (its first occurrence) when skip is
 * set, or with `fn` appended. Lists are replaced, never changed, so a delivery in progress
 * walks the list it started with. */
static int copy_list(lua_State *L, int fn_idx, int remove) {
  int list = lua_gettop(L);
  int n = lua_istable(L, list) ? (int)lua_rawlen(L, list) : 0;
  int found = 0;
  lua_createtable(L, n + 1, 0);
  int j = 0;
  for (int i = 1; i <= n; i++) {
    lua_rawgeti(L, list, i);
    if (remove && !found && lua_rawequal(L, -1, fn_idx)) {
      found = 1;
      lua_pop(L, 1);
      continue;
    }
    lua_rawseti(L, -2, ++j);
  }
  if (!remove) {
    lua_pushvalue(L, fn_idx);
    lua_rawseti(L, -2, ++j);
  }
  lua_remove(L, list);
  return found;
}

static const char *check_event(lua_State *L, int idx) {
  const char *event = luaL_checkstring(L, idx);
  for (const char *const *n = event_names; *n; n++)
    if (strcmp(*n, event) == 0) return *n;
  luaL_argerror(L, idx,
                "event must be \"state\", \"conn_open\", \"conn_close\", \"eject\", \"burn\", "
                "\"leak\" or \"acquire_timeout\"");
  return NULL;
}

/* pool:on(event, fn) */
static int l_on(lua_State *L) {
  lpp_pool_t *p = lpp_check_pool(L, 1);
  const char *event = check_event(L, 2);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  lua_settop(L, 3);
  push_handlers(L, 1, event);
  copy_list(L, 3, 0);
  lua_getiuservalue(L, 1, 1);
  lua_insert(L, -2);
  lua_setfield(L, -2, event);
  if (strcmp(event, "state") != 0) attach(p);
  return 0;
}

/* pool:off(event, fn): true if fn was subscribed (its first subscription ends), else false */
static int l_off(lua_State *L) {
  lpp_check_pool(L, 1);
  const char *event = check_event(L, 2);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  lua_settop(L, 3);
  if (push_handlers(L, 1, event) != LUA_TTABLE) {
    lua_pushboolean(L, 0);
    return 1;
  }
  int found = copy_list(L, 3, 1);
  lua_getiuservalue(L, 1, 1);
  lua_insert(L, -2);
  lua_setfield(L, -2, event);
  lua_pushboolean(L, found);
  return 1;
}

static void set_int(lua_State *L, const char *k, int64_t v) {
  lua_pushinteger(L, (lua_Integer)v);
  lua_setfield(L, -2, k);
}

static void set_err(lua_State *L, const char *k, int err) {
  if (err == 0) return;
  lua_pushstring(L, pp_err_name(err));
  lua_setfield(L, -2, k);
}

/* ---- leaks ----------------------------------------------------------------------------- */

/* The acquiring stack is kept raw and formatted only if a leak is reported: per level the
 * function, its current line, its name and what kind of name (4 slots; `false` for none).
 * Acquires come from a few call sites, so each distinct stack is captured once per pool, in
 * the pool's "_stacks" cache under a key hashed from each level's code (a Lua function's
 * prototype, a C function's address) and line; an acquire walks the stack, hashes it and
 * stores the key in its conn object. luaL_traceback at every acquire cost about 30 us (it
 * searches package.loaded for each frame's global name) and a fresh table per acquire about
 * 2 us (mostly the garbage collection it brings); this costs a few hundred instructions and
 * allocates nothing once the stack has been seen. The cached tables anchor their functions,
 * so the addresses hashed are not reused while their entry lives. */
#define LEAK_LEVELS 12 /* frames kept; a deeper stack ends with "..." */
#define LEAK_SLOTS 4
#define LEAK_STACKS 1024 /* distinct stacks kept per pool; acquires from more are not traced */

/* Push the raw table of L's stack above the running C function (see above). */
static void capture_stack(lua_State *L, int levels, int more) {
  lua_createtable(L, levels * LEAK_SLOTS, more);
  int t = lua_gettop(L);
  lua_Debug ar;
  int n = 0;
  for (int level = 1; level <= levels && lua_getstack(L, level, &ar); level++) {
    lua_getinfo(L, "nlf", &ar); /* pushes the function */
    lua_rawseti(L, t, ++n);
    lua_pushinteger(L, ar.currentline);
    lua_rawseti(L, t, ++n);
    if (ar.name)
      lua_pushstring(L, ar.name);
    else
      lua_pushboolean(L, 0);
    lua_rawseti(L, t, ++n);
    lua_pushstring(L, ar.namewhat ? ar.namewhat : "");
    lua_rawseti(L, t, ++n);
  }
  if (more) {
    lua_pushboolean(L, 1); /* truncated */
    lua_setfield(L, t, "more");
  }
}

/* Push the pool's stack cache (created on first use); pool_idx is the pool userdata. */
static void push_stacks(lua_State *L, int pool_idx) {
  lua_getiuservalue(L, pool_idx, 1);
  luaL_getsubtable(L, -1, "_stacks");
  lua_remove(L, -2);
}

/* The key of L's stack in the cache of the pool at pool_idx, capturing it on first sight;
 * 0 when the cache is full and the stack is new. */
static uint64_t stack_key(lua_State *L, int pool_idx) {
  uint64_t h = 1469598103934665603ull; /* FNV-1a over (code, line) per level */
  lua_Debug ar;
  int level = 1;
  for (; level <= LEAK_LEVELS && lua_getstack(L, level, &ar); level++) {
    lua_getinfo(L, "Slf", &ar);
    const void *code = *ar.what == 'C' ? (const void *)lua_tocfunction(L, -1) : ar.source;
    lua_pop(L, 1);
    h = (h ^ (uint64_t)(uintptr_t)code) * 1099511628211ull;
    h = (h ^ (uint64_t)(uint32_t)ar.linedefined) * 1099511628211ull;
    h = (h ^ (uint64_t)(uint32_t)ar.currentline) * 1099511628211ull;
  }
  int levels = level - 1;
  int more = lua_getstack(L, level, &ar);
  h = (h ^ (uint64_t)(uint32_t)more) * 1099511628211ull;
  if (h == 0) h = 1;
  push_stacks(L, pool_idx);
  int cache = lua_gettop(L);
  if (lua_rawgeti(L, cache, (lua_Integer)h) == LUA_TTABLE) {
    lua_settop(L, cache - 1);
    return h;
  }
  lua_pop(L, 1);
  lua_getfield(L, cache, "n");
  lua_Integer n = lua_tointeger(L, -1);
  lua_pop(L, 1);
  if (n >= LEAK_STACKS) {
    lua_settop(L, cache - 1);
    return 0;
  }
  capture_stack(L, levels, more);
  lua_rawseti(L, cache, (lua_Integer)h);
  lua_pushinteger(L, n + 1);
  lua_setfield(L, cache, "n");
  lua_settop(L, cache - 1);
  return h;
}

/* Replace the raw stack at the top with its text, in luaL_traceback's layout ("acquired",
 * "stack traceback:", then "\n\tsrc:line: in what" per frame). */
static void format_stack(lua_State *L) {
  int t = lua_gettop(L);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addstring(&b, "acquired\nstack traceback:");
  int n = (int)lua_rawlen(L, t);
  for (int i = 1; i + LEAK_SLOTS - 1 <= n; i += LEAK_SLOTS) {
    lua_Debug ar;
    lua_rawgeti(L, t, i + 1);
    lua_Integer line = lua_tointeger(L, -1);
    lua_pop(L, 1);
    lua_rawgeti(L, t, i);
    lua_getinfo(L, ">S", &ar); /* pops the function */
    if (line > 0)
      lua_pushfstring(L, "\n\t%s:%I: in ", ar.short_src, line);
    else
      lua_pushfstring(L, "\n\t%s: in ", ar.short_src);
    luaL_addvalue(&b);
    lua_rawgeti(L, t, i + 2);
    lua_rawgeti(L, t, i + 3);
    const char *name = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
    const char *namewhat = lua_tostring(L, -1);
    if (name && namewhat && *namewhat)
      lua_pushfstring(L, "%s '%s'", namewhat, name);
    else if (*ar.what == 'm')
      lua_pushliteral(L, "main chunk");
    else if (*ar.what != 'C')
      lua_pushfstring(L, "function <%s:%d>", ar.short_src, ar.linedefined);
    else
      lua_pushliteral(L, "?");
    lua_replace(L, -3);
    lua_pop(L, 1);
    luaL_addvalue(&b);
  }
  if (lua_getfield(L, t, "more") == LUA_TBOOLEAN) {
    lua_pop(L, 1);
    luaL_addstring(&b, "\n\t...");
  } else {
    lua_pop(L, 1);
  }
  luaL_pushresult(&b);
  lua_replace(L, t);
}

/* At an acquire of a pool with leak_threshold: remember the acquiring coroutine's stack (its
 * key in the pool's cache; formatted only for a report). */
void lpp_leak_watch(lua_State *L, lpp_pool_t *p, lpp_conn_t *c) {
  if (pp_pool_options(p->pool)->leak_threshold <= 0) return;
  attach(p);
  lpp_push_pool(L, p);
  c->leak_stack = stack_key(L, lua_gettop(L));
  lua_pop(L, 1);
}

/* The leak record of a report: { addr, conn, traceback }, kept in the pool's "_leaks" by leak
 * id until the unleak. Leaves the record on the stack. */
static void leak_record(lua_State *L, int pool_idx, const pp_event_t *ev) {
  lua_getiuservalue(L, pool_idx, 1);
  luaL_getsubtable(L, -1, "_leaks");
  lua_remove(L, -2); /* _leaks */
  if (ev->kind == PP_EVENT_UNLEAK) {
    lua_rawgeti(L, -1, (lua_Integer)ev->leak_id);
    lua_pushnil(L);
    lua_rawseti(L, -3, (lua_Integer)ev->leak_id);
    lua_remove(L, -2);
    if (!lua_istable(L, -1)) {
      lua_pop(L, 1);
      lua_newtable(L);
    }
    return;
  }
  lua_createtable(L, 0, 1);
  int rec = lua_gettop(L);
  /* the traceback, from the stack cache (lpp_leak_watch) */
  const lpp_conn_t *c = ev->lease->data;
  if (c->leak_stack == 0) {
    lua_pushfstring(L,
                    "acquired (the stack was not kept: more than %d distinct acquiring "
                    "stacks in this pool)",
                    LEAK_STACKS);
  } else {
    push_stacks(L, pool_idx);
    lua_rawgeti(L, -1, (lua_Integer)c->leak_stack);
    lua_remove(L, -2);
    if (lua_istable(L, -1)) format_stack(L);
  }
  lua_setfield(L, rec, "traceback");
  lua_settop(L, rec);
  lua_pushvalue(L, rec);
  lua_rawseti(L, -3, (lua_Integer)ev->leak_id);
  lua_remove(L, -2); /* _leaks */
}

/* ---- delivery -------------------------------------------------------------------------- */

static void push_event(lua_State *L, const pp_event_t *ev, const char *name) {
  lua_createtable(L, 0, 10);
  lua_pushstring(L, name);
  lua_setfield(L, -2, "event");
  set_int(L, "at_ms", (int64_t)ev->at);
  if (ev->peer) {
    lua_pushstring(L, pp_peer_addr(ev->peer));
    lua_setfield(L, -2, "addr");
    lpp_push_peer_view(L, ev->peer);
    lua_setfield(L, -2, "peer");
  }
  if (ev->conn_id) set_int(L, "conn", (int64_t)ev->conn_id);
  switch (ev->kind) {
    case PP_EVENT_CONN_OPEN:
      set_int(L, "connect_ms", ev->ms);
      break;
    case PP_EVENT_CONN_CLOSE:
      lua_pushstring(L, pp_close_reason_name(ev->reason));
      lua_setfield(L, -2, "reason");
      set_err(L, "error", ev->error);
      set_int(L, "age_ms", ev->ms);
      break;
    case PP_EVENT_EJECT:
      set_int(L, "cooldown_ms", ev->ms); /* and what a burn says: */
      /* fall through */
    case PP_EVENT_BURN:
      set_int(L, "failures", ev->failures);
      set_err(L, "error", ev->error);
      break;
    case PP_EVENT_ACQUIRE_TIMEOUT:
      set_int(L, "waited_ms", ev->ms);
      set_int(L, "waiters_ahead", ev->waiters_ahead);
      set_int(L, "conns", ev->conns);
      set_int(L, "max_conns", ev->max_conns);
      break;
    case PP_EVENT_LEAK:
    case PP_EVENT_UNLEAK:
      set_int(L, "held_ms", ev->ms);
      set_int(L, "leak_id", (int64_t)ev->leak_id);
      lua_pushboolean(L, ev->kind == PP_EVENT_UNLEAK);
      lua_setfield(L, -2, "unleaked");
      break;
    default:
      break;
  }
}

static void log_leak(lua_State *L, lpp_pool_t *p, const pp_event_t *ev, int rec) {
  lua_getfield(L, rec, "traceback");
  const char *tb = lua_tostring(L, -1);
  if (ev->kind == PP_EVENT_LEAK)
    lua_pushfstring(L,
                    "peerpool: leak: lease of conn #%I to %s held %I ms (leak_threshold %I ms, "
                    "leak #%I)%s%s",
                    (lua_Integer)ev->conn_id, ev->peer ? pp_peer_addr(ev->peer) : "?",
                    (lua_Integer)ev->ms, (lua_Integer)pp_pool_options(p->pool)->leak_threshold,
                    (lua_Integer)ev->leak_id, tb ? "\n" : "", tb ? tb : "");
  else
    lua_pushfstring(L,
                    "peerpool: unleaked: lease of conn #%I to %s released after %I ms (leak #%I)",
                    (lua_Integer)ev->conn_id, ev->peer ? pp_peer_addr(ev->peer) : "?",
                    (lua_Integer)ev->ms, (lua_Integer)ev->leak_id);
  lpp_emit(L, lua_tostring(L, -1));
  lua_pop(L, 2);
}

static void on_engine_event(pp_pool_t *pool, const pp_event_t *ev, void *arg) {
  (void)arg;
  if (ev->kind == PP_EVENT_STATE) return; /* the state callback (lpool.c) delivers those */
  lpp_pool_t *p = lpp_pool_of(pool);
  if (p == NULL) return;
  lua_State *L = p->L;
  int top = lua_gettop(L);
  lpp_push_pool(L, p);
  if (lua_isnil(L, -1)) {
    lua_settop(L, top);
    return;
  }
  int pool_idx = lua_gettop(L);
  int leak = ev->kind == PP_EVENT_LEAK || ev->kind == PP_EVENT_UNLEAK;
  const char *name = leak ? "leak" : pp_event_kind_name(ev->kind);
  int rec = 0;
  if (leak) {
    leak_record(L, pool_idx, ev);
    rec = lua_gettop(L);
    log_leak(L, p, ev, rec);
  }
  if (push_handlers(L, pool_idx, name) != LUA_TTABLE) {
    lua_settop(L, top);
    return;
  }
  int list = lua_gettop(L);
  push_event(L, ev, name);
  if (rec) {
    lua_getfield(L, rec, "traceback");
    lua_setfield(L, -2, "traceback");
  }
  int evt = lua_gettop(L);
  int n = (int)lua_rawlen(L, list);
  for (int i = 1; i <= n; i++) {
    lua_rawgeti(L, list, i);
    lua_pushvalue(L, evt);
    lpp_call(L, 1, p);
  }
  lua_settop(L, top);
}

/* ---- explain --------------------------------------------------------------------------- */

typedef struct {
  lua_State *L;
  int n;
} explain_ctx_t;

static int explain_one(const pp_explain_t *e, void *arg) {
  explain_ctx_t *x = arg;
  lua_State *L = x->L;
  lua_createtable(L, 0, 5);
  set_int(L, "at_ms", (int64_t)e->at);
  lua_pushstring(L, e->kind);
  lua_setfield(L, -2, "kind");
  if (e->peer) {
    lua_pushstring(L, pp_peer_addr(e->peer));
    lua_setfield(L, -2, "peer");
  }
  if (e->conn_id) set_int(L, "conn", (int64_t)e->conn_id);
  if (e->repeats) set_int(L, "repeats", (int64_t)e->repeats);
  lua_pushstring(L, e->text);
  lua_setfield(L, -2, "text");
  lua_rawseti(L, -2, ++x->n);
  return 0;
}

/* pool:explain([peer]): recent decisions, oldest first: { { at_ms, kind, peer, conn, text } } */
static int l_explain(lua_State *L) {
  lpp_pool_t *p = lpp_check_pool(L, 1);
  pp_peer_t *peer = NULL;
  if (lua_istable(L, 2)) {
    lua_getfield(L, 2, "addr");
    lua_replace(L, 2);
  }
  if (!lua_isnoneornil(L, 2)) {
    const char *addr = luaL_checkstring(L, 2);
    peer = pp_pool_find_peer(p->pool, addr);
    if (peer == NULL) {
      lua_newtable(L);
      return 1;
    }
  }
  lua_createtable(L, PP_EXPLAIN_MAX, 0);
  explain_ctx_t x = {L, 0};
  pp_pool_explain(p->pool, peer, explain_one, &x);
  return 1;
}

static const luaL_Reg observe_methods[] = {
    {"on", l_on}, {"off", l_off}, {"histogram", l_histogram}, {"explain", l_explain}, {NULL, NULL},
};

void lpp_observe_open(lua_State *L) {
  luaL_getmetatable(L, LPP_POOL);
  lua_getfield(L, -1, "__index");
  luaL_setfuncs(L, observe_methods, 0);
  lua_pop(L, 2);
}
