/* peerpool.new and the pool methods written in C: add_peer, acquire, stats, peers, peer, on,
 * close. */
#include <stdlib.h>
#include <string.h>

#include "lpeerpool.h"

/* The engine pool's data: lives until the engine pool's close callback, so a callback that
 * runs after the userdata is gone finds `p == NULL` instead of freed memory. */
typedef struct {
  lpp_state_t *st;
  lpp_pool_t *p;
  /* pool:close{ drain_ms = N }: who hears how it ended (the engine's close callback) */
  int draining;
  int64_t drain_ms;
  int cb_ref; /* the close callback, or LUA_NOREF */
  /* the coroutine waiting in close{drain_ms}: here, not in the Lua pool, which a plain close()
   * during the drain forgets before the engine's close callback runs (its yielding frame keeps
   * the pool's userdata alive meanwhile) */
  lpp_wait_t close_wait;
} pool_link_t;

static const char pools_key = 'p'; /* weak table: lightuserdata(lpp_pool_t*) -> userdata */

const char lpp_pool_mt_key = 0;

lpp_pool_t *lpp_check_pool(lua_State *L, int idx) {
  lpp_pool_t *p = lpp_toudata(L, idx, &lpp_pool_mt_key);
  if (p == NULL) p = luaL_checkudata(L, idx, LPP_POOL); /* raises, naming what it got */
  if (p->pool == NULL) luaL_error(L, "attempt to use a closed pool");
  return p;
}

lpp_pool_t *lpp_check_pool_mutable(lua_State *L, int idx) {
  lpp_pool_t *p = lpp_check_pool(L, idx);
  if (p->in_engine_call) luaL_error(L, LPP_IN_HOOK_ERROR);
  return p;
}

/* ---- options --------------------------------------------------------------------------- */

/* The engine's options, from its one table (PP_OPTIONS_MAP). */
typedef struct {
  const char *name;
  size_t offset, size; /* in pp_options_t: an int or an int64_t */
  int64_t dflt, min, max;
  const char *unit, *doc;
} option_t;

static const option_t options[] = {
#define OPTION(type, name, dflt, min, max, unit, rule, doc) \
  {#name, offsetof(pp_options_t, name), sizeof(type), dflt, min, max, unit, doc},
    PP_OPTIONS_MAP(OPTION)
#undef OPTION
        {NULL, 0, 0, 0, 0, 0, NULL, NULL},
};

/* Options of the binding itself (not the engine's): fields of lpp_pool_t, all int64_t. */
static const option_t lua_options[] = {
    {"io_timeout", offsetof(lpp_pool_t, io_timeout), 8, 30000, 0, PP_MS_MAX, "ms",
     "deadline of a conn:receive() or of a send waiting for the peer to read (0 = none)"},
    {"hook_budget", offsetof(lpp_pool_t, budget), 8, 100000, 1000, 100000000, "instructions",
     "Lua instructions one policy hook call may run"},
    {"hook_memory", offsetof(lpp_pool_t, hook_memory), 8, 16 * 1024 * 1024, 64 * 1024,
     INT64_C(1) << 40, "bytes", "memory policy hooks may hold while they run"},
    {"max_receive", offsetof(lpp_pool_t, max_receive), 8, 1024 * 1024, 1, INT64_C(1) << 40, "bytes",
     "a line, \"*a\" or a byte count a receive may wait for (more: too_long)"},
    {"max_send_queue", offsetof(lpp_pool_t, max_send_queue), 8, 1024 * 1024, 0, INT64_C(1) << 40,
     "bytes",
     "bytes queued past the socket before a send in a coroutine waits for the peer to read"},
    {NULL, 0, 0, 0, 0, 0, NULL, NULL},
};

/* An option's value as an integer; raises naming it when it is not one (2^63 included). */
static lua_Integer option_integer(lua_State *L, const char *key) {
  int isint;
  lua_Integer v = lua_tointegerx(L, -1, &isint);
  if (lua_type(L, -1) != LUA_TNUMBER || !isint)
    luaL_error(L, "peerpool.new: option '%s' must be an integer (got %s)", key,
               luaL_typename(L, -1));
  return v;
}

/* ---- TLS options: peerpool.new{ tls = {...} } and add_peer's tag { tls = {...} } ----------- */

typedef struct {
  pp_tls_options_t o;
  const char *alpn[33]; /* at most 32 protocols (tls.c's limit), NULL-terminated */
} tls_opts_t;

/* Read the table at `idx` into *t. Its strings stay owned by that table: keep it reachable
 * while *t is in use. `what` starts errors ("peerpool.new: option"), which name the field. */
static void read_tls(lua_State *L, int idx, tls_opts_t *t, const char *what) {
  static const struct {
    const char *name;
    size_t offset;
  } strs[] = {
      {"ca_file", offsetof(pp_tls_options_t, ca_file)},
      {"ca_path", offsetof(pp_tls_options_t, ca_path)},
      {"cert_file", offsetof(pp_tls_options_t, cert_file)},
      {"key_file", offsetof(pp_tls_options_t, key_file)},
      {"server_name", offsetof(pp_tls_options_t, server_name)},
  };
  idx = lua_absindex(L, idx);
  pp_tls_options_init(&t->o);
  if (!lua_istable(L, idx))
    luaL_error(L, "%s 'tls' must be a table (got %s)", what, luaL_typename(L, idx));
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "?";
    size_t i = 0;
    while (i < sizeof(strs) / sizeof(strs[0]) && strcmp(strs[i].name, k) != 0)
      i++;
    if (i < sizeof(strs) / sizeof(strs[0])) {
      if (lua_type(L, -1) != LUA_TSTRING)
        luaL_error(L, "%s 'tls.%s' must be a string (got %s)", what, k, luaL_typename(L, -1));
      *(const char **)((char *)&t->o + strs[i].offset) = lua_tostring(L, -1);
    } else if (strcmp(k, "verify") == 0) {
      if (!lua_isboolean(L, -1))
        luaL_error(L, "%s 'tls.verify' must be a boolean (got %s)", what, luaL_typename(L, -1));
      t->o.verify = lua_toboolean(L, -1);
    } else if (strcmp(k, "min_version") == 0) {
      /* "1.2" or "1.3" (a number 1.2 is taken too); the engine checks the value */
      if (lua_type(L, -1) == LUA_TNUMBER)
        t->o.min_version = lua_tonumber(L, -1) == 1.3   ? "1.3"
                           : lua_tonumber(L, -1) == 1.2 ? "1.2"
                                                        : "?";
      else if (lua_type(L, -1) == LUA_TSTRING)
        t->o.min_version = lua_tostring(L, -1);
      else
        luaL_error(L, "%s 'tls.min_version' must be \"1.2\" or \"1.3\" (got %s)", what,
                   luaL_typename(L, -1));
    } else if (strcmp(k, "alpn") == 0) {
      if (!lua_istable(L, -1))
        luaL_error(L, "%s 'tls.alpn' must be a list of protocol names (got %s)", what,
                   luaL_typename(L, -1));
      lua_Integer n = luaL_len(L, -1);
      if (n > 32) luaL_error(L, "%s 'tls.alpn' must list at most 32 protocols", what);
      for (lua_Integer j = 1; j <= n; j++) {
        if (lua_rawgeti(L, -1, j) != LUA_TSTRING)
          luaL_error(L, "%s 'tls.alpn[%I]' must be a string (got %s)", what, j,
                     luaL_typename(L, -1));
        t->alpn[j - 1] = lua_tostring(L, -1); /* the list keeps it */
        lua_pop(L, 1);
      }
      t->alpn[n] = NULL;
      t->o.alpn = t->alpn;
    } else {
      luaL_error(L,
                 "%s 'tls.%s' is unknown (fields: ca_file, ca_path, cert_file, key_file, "
                 "server_name, verify, alpn, min_version)",
                 what, k);
    }
    lua_pop(L, 1);
  }
}

/* Raise the engine's refusal of TLS options (`why` names the field: "tls.ca_file could not be
 * loaded ...") as "<what> 'tls.ca_file' could not be loaded ...". */
static int tls_error(lua_State *L, const char *what, const char *why) {
  if (why && strncmp(why, "tls.", 4) == 0) {
    size_t n = strcspn(why, " ");
    lua_pushlstring(L, why, n);
    return luaL_error(L, "%s '%s'%s", what, lua_tostring(L, -1), why + n);
  }
  return luaL_error(L, "%s 'tls': %s", what, why ? why : "refused");
}

static void push_option(lua_State *L, const option_t *opt, bool engine) {
  lua_createtable(L, 0, 7);
  lua_pushstring(L, opt->name);
  lua_setfield(L, -2, "name");
  lua_pushinteger(L, (lua_Integer)opt->dflt);
  lua_setfield(L, -2, "default");
  lua_pushinteger(L, (lua_Integer)opt->min);
  lua_setfield(L, -2, "min");
  lua_pushinteger(L, (lua_Integer)opt->max);
  lua_setfield(L, -2, "max");
  lua_pushstring(L, opt->unit);
  lua_setfield(L, -2, "unit");
  lua_pushstring(L, opt->doc);
  lua_setfield(L, -2, "doc");
  lua_pushboolean(L, engine);
  lua_setfield(L, -2, "engine");
}

/* peerpool.options(): every numeric option of peerpool.new, in table order, as
 * { name, default, min, max, unit, doc, engine } (engine: the C engine's, else the binding's). */
int lpp_l_options(lua_State *L) {
  lua_newtable(L);
  lua_Integer n = 0;
  for (const option_t *opt = options; opt->name; opt++) {
    push_option(L, opt, true);
    lua_rawseti(L, -2, ++n);
  }
  for (const option_t *opt = lua_options; opt->name; opt++) {
    push_option(L, opt, false);
    lua_rawseti(L, -2, ++n);
  }
  return 1;
}

/* Read opts.<name> into the engine options and the binding's own; every type or range error
 * names the field. */
static void read_options(lua_State *L, int idx, pp_options_t *o, lpp_pool_t *p) {
  pp_options_init(o);
  for (const option_t *lo = lua_options; lo->name; lo++)
    *(int64_t *)((char *)p + lo->offset) = lo->dflt;
  if (lua_isnoneornil(L, idx)) return;
  luaL_checktype(L, idx, LUA_TTABLE);
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    if (lua_type(L, -2) != LUA_TSTRING) luaL_error(L, "peerpool.new: option names must be strings");
    const char *key = lua_tostring(L, -2);
    if (strcmp(key, "tls") == 0 || strcmp(key, "dns_servers") == 0 ||
        strcmp(key, "framing") == 0) { /* read on their own */
      lua_pop(L, 1);
      continue;
    }
    const option_t *opt = options;
    while (opt->name && strcmp(opt->name, key) != 0)
      opt++;
    const option_t *lo = lua_options;
    while (lo->name && strcmp(lo->name, key) != 0)
      lo++;
    if (opt->name == NULL && lo->name == NULL)
      luaL_error(L, "peerpool.new: unknown option '%s'", key);
    lua_Integer v = option_integer(L, key);
    if (lo->name) {
      if (v < lo->min || v > lo->max)
        luaL_error(L, "peerpool.new: option '%s' must be an integer in %I..%I (%s)", key,
                   (lua_Integer)lo->min, (lua_Integer)lo->max, lo->unit);
      *(int64_t *)((char *)p + lo->offset) = v;
    } else if (opt->size == sizeof(int64_t)) {
      *(int64_t *)((char *)o + opt->offset) = v;
    } else {
      if (v < -2147483647 || v > 2147483647)
        luaL_error(L, "peerpool.new: option '%s' is out of range", key);
      *(int *)((char *)o + opt->offset) = (int)v;
    }
    lua_pop(L, 1);
  }
  const char *why;
  if (pp_options_validate(o, &why) != 0) luaL_error(L, "peerpool.new: option %s", why);
}

/* dns_servers: a list of "ip[:port]" / "[ipv6]:port" strings (or one such string), replaced on
 * the stack at `idx` by the engine's comma-separated form; NULL for nil (the system's). */
static const char *read_dns_servers(lua_State *L, int idx) {
  if (lua_isnil(L, idx)) return NULL;
  if (lua_type(L, idx) == LUA_TSTRING) return lua_tostring(L, idx);
  if (!lua_istable(L, idx))
    luaL_error(L,
               "peerpool.new: option 'dns_servers' must be a list of \"ip[:port]\" strings "
               "(got %s)",
               luaL_typename(L, idx));
  lua_Integer n = luaL_len(L, idx);
  if (n < 1 || n > 16) luaL_error(L, "peerpool.new: option 'dns_servers' must list 1..16 servers");
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  for (lua_Integer i = 1; i <= n; i++) {
    if (i > 1) luaL_addchar(&b, ',');
    if (lua_rawgeti(L, idx, i) != LUA_TSTRING)
      luaL_error(L, "peerpool.new: option 'dns_servers[%I]' must be a string (got %s)", i,
                 luaL_typename(L, -1));
    if (strchr(lua_tostring(L, -1), ','))
      luaL_error(L, "peerpool.new: option 'dns_servers[%I]' must be one server", i);
    luaL_addvalue(&b);
  }
  luaL_pushresult(&b);
  lua_replace(L, idx);
  return lua_tostring(L, idx);
}

/* ---- lifecycle ------------------------------------------------------------------------- */

static void stop_timers(lua_State *L, lpp_pool_t *p);

/* The Lua side of a pool whose engine pool closed (or is closing): what close() drops too
 * (the receives' and requests' deadline timer would keep the loop alive up to io_timeout). */
static void forget_engine_pool(lua_State *L, lpp_pool_t *p) {
  pool_link_t *link = pp_pool_get_data(p->pool);
  link->p = NULL;
  stop_timers(L, p);
  p->pool = NULL;
  lpp_pools_remove(p);
  lpp_policy_free(L, p);
  lpp_unref(L, &p->framing_ref);
}

/* A graceful close ended (the engine pool still readable): the pool's Lua side goes, and the
 * waiting coroutine or the callback hears true, or nil, "timeout", why when leases were cut. */
static void drain_done(pp_pool_t *pool, pool_link_t *link) {
  lpp_state_t *st = link->st;
  lua_State *L = st->L;
  lpp_pool_t *p = link->p; /* NULL once its userdata was collected (then nothing waits) */
  if (p) forget_engine_pool(L, p);
  if (st->shutting_down) {
    lpp_unref(L, &link->close_wait.co_ref);
    lpp_unref(L, &link->cb_ref);
    return;
  }
  pp_stats_t s;
  pp_pool_stats(pool, &s);
  char why[160];
  snprintf(why, sizeof(why), "%llu lease%s still held after %lld ms %s cut (their conns closed)",
           (unsigned long long)s.leases_cut, s.leases_cut == 1 ? "" : "s",
           (long long)link->drain_ms, s.leases_cut == 1 ? "was" : "were");
  if (link->cb_ref != LUA_NOREF) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, link->cb_ref);
    lpp_unref(L, &link->cb_ref);
    if (s.leases_cut == 0) {
      lua_pushnil(L);
      lua_pushnil(L);
    } else {
      lua_pushstring(L, pp_err_name(PP_ETIMEDOUT));
      lua_pushstring(L, why);
    }
    lpp_call(L, 2, NULL); /* fn(err, detail) */
  }
  if (link->close_wait.co_ref != LUA_NOREF) {
    lua_State *co = lpp_wait_take(L, &link->close_wait); /* anchored on L until we return */
    if (co) {
      int n = 1;
      if (s.leases_cut == 0)
        lua_pushboolean(co, 1);
      else
        n = lpp_push_error(co, PP_ETIMEDOUT, why);
      lpp_resume(L, co, n, NULL);
    }
    lua_pop(L, 1);
  }
}

static void engine_pool_closed(pp_pool_t *pool) {
  pool_link_t *link = pp_pool_get_data(pool);
  link->st->engine_pools--;
  if (link->draining) drain_done(pool, link);
  free(link);
}

static void state_changed(pp_pool_t *pool, pp_peer_t *peer, pp_peer_state_t from,
                          pp_peer_state_t to) {
  pool_link_t *link = pp_pool_get_data(pool);
  lpp_pool_t *p = link->p;
  if (p == NULL || link->st->shutting_down) return;
  lua_State *L = p->L;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &pools_key);
  lua_rawgetp(L, -1, p);
  lua_remove(L, -2);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return;
  }
  lua_getiuservalue(L, -1, 1);
  lua_remove(L, -2);
  lua_getfield(L, -1, "state");
  lua_remove(L, -2);
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    return;
  }
  int n = (int)luaL_len(L, -1);
  for (int i = 1; i <= n; i++) {
    lua_rawgeti(L, -1, i);
    lpp_push_peer_view(L, peer);
    lua_pushstring(L, pp_peer_state_name(from));
    lua_pushstring(L, pp_peer_state_name(to));
    lpp_call(L, 3, p);
  }
  lua_pop(L, 1);
}

int lpp_l_new(lua_State *L) {
  pp_options_t o;
  lpp_pool_t opts_of_binding;
  if (lua_istable(L, 1)) {
    /* keep_idle_bytes may be given as a boolean */
    if (lua_getfield(L, 1, "keep_idle_bytes") == LUA_TBOOLEAN) {
      lua_pushinteger(L, lua_toboolean(L, -1));
      lua_setfield(L, 1, "keep_idle_bytes");
    }
    lua_pop(L, 1);
  }
  memset(&opts_of_binding, 0, sizeof(opts_of_binding));
  read_options(L, 1, &o, &opts_of_binding);
  tls_opts_t tls;
  if (lua_istable(L, 1) && lua_getfield(L, 1, "tls") != LUA_TNIL) {
    read_tls(L, -1, &tls, "peerpool.new: option"); /* its strings live in opts.tls */
    o.tls = &tls.o;
  }
  if (lua_istable(L, 1)) {
    lua_getfield(L, 1, "dns_servers");
    o.dns_servers = read_dns_servers(L, lua_gettop(L)); /* on the stack until pp_pool_new */
  }
  lpp_state_t *st = lpp_state(L);
  lpp_pool_t *p = lua_newuserdatauv(L, sizeof(*p), 1);
  *p = opts_of_binding;
  p->st = st;
  p->L = st->L;
  p->book_fn_ref = LUA_NOREF;
  p->framing_ref = LUA_NOREF;
  lpp_policy_init(L, p);
  if (lua_istable(L, 1)) {
    lua_getfield(L, 1, "framing");
    lpp_read_framing(L, -1, p); /* lrequest.c; raises naming the field */
    lua_pop(L, 1);
    if (p->framed) o.framing = &p->framing;
  }
  pool_link_t *link = malloc(sizeof(*link));
  if (link == NULL) return luaL_error(L, "peerpool.new: out of memory");
  const char *why;
  int err = pp_pool_new(st->loop, &o, &p->pool, &why);
  if (err) {
    free(link);
    lpp_unref(L, &p->framing_ref);
    if (o.tls && why && strncmp(why, "tls", 3) == 0)
      return tls_error(L, "peerpool.new: option", why);
    return luaL_error(L, "peerpool.new: %s", why ? why : pp_strerror(err));
  }
  memset(link, 0, sizeof(*link));
  link->st = st;
  link->p = p;
  link->cb_ref = LUA_NOREF;
  link->close_wait.co_ref = LUA_NOREF;
  pp_pool_set_data(p->pool, link);
  pp_pool_on_state(p->pool, state_changed);
  st->engine_pools++;
  lua_newtable(L);
  lua_setiuservalue(L, -2, 1);
  luaL_setmetatable(L, LPP_POOL);
  lpp_pools_add(p);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &pools_key);
  lua_pushvalue(L, -2);
  lua_rawsetp(L, -2, p);
  lua_pop(L, 1);
  return 1;
}

/* close(), __gc and __close: safe to run twice. */
static int close_pool(lua_State *L, lpp_pool_t *p);

static void stop_book_timer(lua_State *L, lpp_pool_t *p) {
  lpp_timer_drop(&p->book_timer);
  lpp_unref(L, &p->book_fn_ref);
}

/* The pool's timers at its final close. (A graceful drain keeps the io_timeout timers: leases
 * still receive and request meanwhile, and their timeouts must still fire.) */
static void stop_timers(lua_State *L, lpp_pool_t *p) {
  lpp_timer_drop(&p->receives.timer); /* waiting receives end with the conns' final reads */
  lpp_timer_drop(&p->calls.timer);    /* pool:request's calls end with their requests' failure */
  stop_book_timer(L, p);
}

static void book_tick(uv_timer_t *t) {
  lpp_pool_t *p = t->data;
  if (p == NULL || p->pool == NULL || p->st->shutting_down) return;
  lua_rawgeti(p->L, LUA_REGISTRYINDEX, p->book_fn_ref);
  lpp_call(p->L, 0, p);
}

/* pool:_every(ms, fn): call fn every ms until the pool closes. A handle of our own rather than
 * a luv timer: closing a luv handle just before the program ends crashes luv at lua_close. */
static int l_every(lua_State *L) {
  lpp_pool_t *p = lpp_check_pool(L, 1);
  lua_Integer ms = luaL_checkinteger(L, 2);
  luaL_argcheck(L, ms > 0, 2, "interval must be > 0 ms");
  luaL_checktype(L, 3, LUA_TFUNCTION);
  stop_book_timer(L, p);
  uv_unref((uv_handle_t *)lpp_timer(L, p, &p->book_timer, p));
  lua_pushvalue(L, 3);
  p->book_fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  uv_timer_start(p->book_timer, book_tick, (uint64_t)ms, (uint64_t)ms);
  return 0;
}

/* pool:close{ drain_ms = N [, callback = fn] }: a graceful close (pp_pool_close_drain). Inside
 * a coroutine without a callback it waits until the pool has closed: true, or nil, "timeout",
 * why when leases were still held at the end (they were cut). Elsewhere it returns true at once
 * and fn(err, detail) runs when the pool has closed (err nil: every lease ended in time). */
static int close_drain(lua_State *L, lpp_pool_t *p) {
  lua_pushnil(L);
  while (lua_next(L, 2)) {
    lua_pop(L, 1);
    const char *k = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "?";
    if (strcmp(k, "drain_ms") != 0 && strcmp(k, "callback") != 0)
      return luaL_error(L,
                        "bad argument #1 to 'close' (unknown option '%s'; options: drain_ms, "
                        "callback)",
                        k);
  }
  lua_getfield(L, 2, "drain_ms");
  int isint;
  lua_Integer ms = lua_tointegerx(L, -1, &isint);
  if (!isint || ms < 0 || ms > INT64_C(365) * 24 * 3600 * 1000)
    return luaL_error(L,
                      "bad argument #1 to 'close' (drain_ms must be an integer number of ms "
                      ">= 0, got %s)",
                      luaL_typename(L, -1));
  int has_cb = lua_getfield(L, 2, "callback") != LUA_TNIL;
  if (has_cb) luaL_argexpected(L, lua_isfunction(L, -1), 2, "function as callback");
  if (p->pool == NULL) { /* closed already: nothing to wait for */
    lua_pushboolean(L, 1);
    return 1;
  }
  pool_link_t *link = pp_pool_get_data(p->pool);
  if (link->draining) return lpp_push_error(L, PP_ECLOSED, "the pool is closing already");
  int wait = !has_cb && lua_isyieldable(L);
  if (wait) lpp_wait_begin(L, &link->close_wait); /* may raise: before anything changes */
  stop_book_timer(L, p);
  if (has_cb) {
    lua_pushvalue(L, -1);
    link->cb_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  link->draining = 1;
  link->drain_ms = ms;
  pp_pool_close_drain(p->pool, ms, engine_pool_closed); /* its callback runs drain_done */
  if (wait) return lpp_wait_yield(L, p->st, 1, &link->close_wait);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_close(lua_State *L) {
  lpp_pool_t *p = luaL_checkudata(L, 1, LPP_POOL);
  if (p->pool && p->in_engine_call) return luaL_error(L, LPP_IN_HOOK_ERROR);
  if (!lua_isnoneornil(L, 2)) {
    luaL_argexpected(L, lua_istable(L, 2), 2, "table of options");
    return close_drain(L, p);
  }
  return close_pool(L, p);
}

/* __gc: collected in the middle of an engine call (a hook ran the collector), close later. */
static int l_gc(lua_State *L) {
  lpp_pool_t *p = luaL_checkudata(L, 1, LPP_POOL);
  if (p->pool && p->in_engine_call && !p->st->shutting_down) {
    lpp_finalize_later(L, 1);
    return 0;
  }
  return close_pool(L, p);
}

static int close_pool(lua_State *L, lpp_pool_t *p) {
  stop_timers(L, p);
  if (p->pool) {
    pool_link_t *link = pp_pool_get_data(p->pool);
    link->p = NULL;
    /* Its calls in flight no longer see p (lrequest.c): they end without this list. */
    p->calls.head = p->calls.tail = NULL;
    pp_pool_close(p->pool, engine_pool_closed); /* during a drain: ends it now */
    p->pool = NULL;
    lpp_pools_remove(p);
    lpp_policy_free(L, p);
    lpp_unref(L, &p->framing_ref);
  }
  return 0;
}

/* pool:_framed(): whether the pool has framing (for pool:request, written in Lua). */
static int l_framed(lua_State *L) {
  lua_pushboolean(L, ((lpp_pool_t *)luaL_checkudata(L, 1, LPP_POOL))->framed);
  return 1;
}

/* pool:_closed(): whether the pool is closed (for methods written in Lua). */
static int l_closed(lua_State *L) {
  lua_pushboolean(L, ((lpp_pool_t *)luaL_checkudata(L, 1, LPP_POOL))->pool == NULL);
  return 1;
}

static int l_tostring(lua_State *L) {
  lpp_pool_t *p = luaL_checkudata(L, 1, LPP_POOL);
  if (p->pool == NULL) {
    lua_pushfstring(L, "peerpool.pool (closed): %p", (void *)p);
  } else {
    pp_stats_t s;
    pp_pool_stats(p->pool, &s);
    lua_pushfstring(L, "peerpool.pool (%d peers, %d conns, %d waiters): %p", s.peers, s.conns,
                    s.waiters, (void *)p);
  }
  return 1;
}

/* ---- peers ----------------------------------------------------------------------------- */

/* Record a peer's source and tags in the pool's user value: peer_meta[addr]. */
static void set_peer_meta(lua_State *L, int pool_idx, const char *addr, int tags_idx,
                          const char *source) {
  lua_getiuservalue(L, pool_idx, 1);
  luaL_getsubtable(L, -1, "peer_meta");
  if (!luaL_getsubtable(L, -1, addr)) { /* a new peer: its source (tags may come again) */
    lua_pushstring(L, source);
    lua_setfield(L, -2, "source");
  }
  if (tags_idx) {
    lua_pushvalue(L, tags_idx);
    lua_setfield(L, -2, "tags");
  }
  lua_pop(L, 3);
}

/* 10^11 ms is March 1973; as seconds it is the year 5138: a smaller non-zero last_seen was
 * given in seconds. */
#define LPP_MS_1973 INT64_C(100000000000)

/* pool:add_peer(addr [, last_seen] [, tags]) and pool:_add_peer(addr, last_seen, tags, source) */
static int add_peer(lua_State *L, const char *source) {
  lpp_pool_t *p = lpp_check_pool(L, 1);
  if (p->in_sync_hook) /* a seed hook may add peers; a selection or backoff hook may not */
    luaL_error(L, LPP_IN_HOOK_ERROR);
  const char *addr = luaL_checkstring(L, 2);
  lua_Integer last_seen = 0;
  if (!lua_isnoneornil(L, 3)) {
    if (!lua_isinteger(L, 3)) luaL_argerror(L, 3, "last_seen must be Unix time in ms (integer)");
    last_seen = lua_tointeger(L, 3);
    luaL_argcheck(L, last_seen >= 0, 3, "last_seen must be Unix time in ms >= 0");
    /* Unix time in seconds (os.time()) read as ms is 1970: the peer would be stale forever. */
    if (last_seen > 0 && last_seen < LPP_MS_1973)
      luaL_argerror(L, 3,
                    lua_pushfstring(L,
                                    "last_seen must be Unix time in ms (%I looks like "
                                    "seconds: use os.time() * 1000)",
                                    last_seen));
  }
  int tags_idx = 0;
  if (!lua_isnoneornil(L, 4)) {
    luaL_argexpected(L, lua_istable(L, 4), 4, "table of tags");
    tags_idx = 4;
  }
  int min_idle = -1; /* the tag min_idle: the peer's own (checked before the peer is added) */
  if (tags_idx && lua_getfield(L, tags_idx, "min_idle") != LUA_TNIL) {
    int max = pp_pool_options(p->pool)->max_per_peer;
    if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 0 || lua_tointeger(L, -1) > max)
      luaL_error(L, "pool:add_peer: tag 'min_idle' must be an integer in 0..%d (max_per_peer)",
                 max);
    min_idle = (int)lua_tointeger(L, -1);
  }
  if (tags_idx) lua_pop(L, 1);
  tls_opts_t tls;
  int has_tls = tags_idx && lua_getfield(L, tags_idx, "tls") != LUA_TNIL;
  if (has_tls) read_tls(L, -1, &tls, "pool:add_peer: tag"); /* checked before the peer is added */
  pp_peer_t *peer;
  const char *why;
  int err = pp_pool_add_peer(p->pool, addr, last_seen, &peer, &why);
  if (err) return lpp_push_error(L, err, why);
  /* The tag's tls table: the peer's own TLS options over the pool's. Refused, the peer fails
   * closed (no conn at all) and the call raises naming the field. */
  if (has_tls && (err = pp_peer_set_tls(peer, &tls.o, &why)) != 0)
    return tls_error(L, "pool:add_peer: tag", why ? why : pp_strerror(err));
  if (min_idle >= 0) pp_peer_set_min_idle(peer, min_idle);
  set_peer_meta(L, 1, pp_peer_addr(peer), tags_idx, source);
  lua_pushstring(L, pp_peer_addr(peer));
  return 1;
}

/* The peer named by argument 2 (an address or a peer view), or NULL with the error tuple of an
 * unknown peer pushed (3 values). */
static pp_peer_t *peer_arg(lua_State *L, lpp_pool_t *p) {
  if (lua_istable(L, 2) && lua_getfield(L, 2, "addr") == LUA_TSTRING) lua_replace(L, 2);
  const char *addr = luaL_checkstring(L, 2);
  pp_peer_t *peer = pp_pool_find_peer(p->pool, addr);
  if (peer == NULL) {
    char msg[200];
    snprintf(msg, sizeof(msg), "unknown peer %s", addr);
    lpp_push_error(L, PP_ENOPEER, msg);
  }
  return peer;
}

/* pool:remove_peer(addr): see pp_pool_remove_peer. true, or nil, code, why. Its source and
 * tags go too (the address book forgets it at its next save). */
static int l_remove_peer(lua_State *L) {
  lpp_pool_t *p = lpp_check_pool_mutable(L, 1);
  pp_peer_t *peer = peer_arg(L, p);
  if (peer == NULL) return 3;
  lua_pushstring(L, pp_peer_addr(peer)); /* (the peer's memory may go) */
  int err = pp_pool_remove_peer(p->pool, peer);
  if (err) return lpp_push_error(L, err, NULL);
  lua_getiuservalue(L, 1, 1);
  if (lua_getfield(L, -1, "peer_meta") == LUA_TTABLE) {
    lua_pushvalue(L, -3);
    lua_pushnil(L);
    lua_rawset(L, -3);
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* pool:drain(addr): see pp_pool_drain_peer. true, or nil, code, why. */
static int l_drain(lua_State *L) {
  lpp_pool_t *p = lpp_check_pool_mutable(L, 1);
  pp_peer_t *peer = peer_arg(L, p);
  if (peer == NULL) return 3;
  int err = pp_pool_drain_peer(p->pool, peer);
  if (err) return lpp_push_error(L, err, NULL);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_add_peer(lua_State *L) {
  return add_peer(L, "runtime");
}

static int l_add_peer_from(lua_State *L) {
  const char *source = luaL_checkstring(L, 5);
  lua_settop(L, 4);
  return add_peer(L, source);
}

int lpp_push_peer_meta(lua_State *L, pp_peer_t *peer) {
  pool_link_t *link = pp_pool_get_data(pp_peer_pool(peer));
  if (link == NULL || link->p == NULL) {
    lua_pushnil(L);
    return LUA_TNIL;
  }
  lpp_push_pool(L, link->p);
  if (lua_isnil(L, -1)) return LUA_TNIL;
  lua_getiuservalue(L, -1, 1);
  lua_remove(L, -2);
  if (lua_getfield(L, -1, "peer_meta") != LUA_TTABLE) {
    lua_remove(L, -2);
    return LUA_TNIL;
  }
  lua_remove(L, -2);
  int t = lua_getfield(L, -1, pp_peer_addr(peer));
  lua_remove(L, -2);
  return t;
}

static int push_view_cb(pp_peer_t *peer, void *arg) {
  lua_State *L = arg;
  lpp_push_peer_view(L, peer);
  lua_rawseti(L, -2, (lua_Integer)luaL_len(L, -2) + 1);
  return 0;
}

static int l_peers(lua_State *L) {
  lpp_pool_t *p = lpp_check_pool(L, 1);
  lua_newtable(L);
  pp_pool_foreach_peer(p->pool, push_view_cb, L);
  return 1;
}

static int l_peer(lua_State *L) {
  lpp_pool_t *p = lpp_check_pool(L, 1);
  pp_peer_t *peer = pp_pool_find_peer(p->pool, luaL_checkstring(L, 2));
  if (peer == NULL) {
    lua_pushnil(L);
    return 1;
  }
  lpp_push_peer_view(L, peer);
  return 1;
}

/* pool:_restore(addr, history): put a peer's failure history back (the address book's v3 field;
 * see pp_peer_restore). */
static int l_restore(lua_State *L) {
  lpp_pool_t *p = lpp_check_pool_mutable(L, 1);
  pp_peer_t *peer = pp_pool_find_peer(p->pool, luaL_checkstring(L, 2));
  luaL_checktype(L, 3, LUA_TTABLE);
  if (peer == NULL) return lpp_push_error(L, PP_ENOPEER, NULL);
  pp_peer_history_t h;
  memset(&h, 0, sizeof(h));
#define F(f, type)                         \
  do {                                     \
    lua_getfield(L, 3, #f);                \
    h.f = (type)luaL_optinteger(L, -1, 0); \
    lua_pop(L, 1);                         \
  } while (0)
  F(failures, int);
  F(last_success, int64_t);
  F(last_failure, int64_t);
  F(ejections, uint64_t);
  F(eject_streak, int);
  F(ejected_until, int64_t);
#undef F
  lua_getfield(L, 3, "burned");
  h.burned = lua_toboolean(L, -1);
  lua_pop(L, 1);
  int err = pp_peer_restore(peer, &h);
  if (err) return lpp_push_error(L, err, NULL);
  lua_pushboolean(L, 1);
  return 1;
}

/* pool:check(addr): whether an acquire for the peer would be served (now or after waiting):
 * true, or nil, code, why (burned, ejected, cannot_connect while it backs off, no_peer). Cheap:
 * a route hook may call it to pass over an owner that is down. */
static int l_check(lua_State *L) {
  lpp_pool_t *p = lpp_check_pool(L, 1);
  pp_peer_t *peer = pp_pool_find_peer(p->pool, luaL_checkstring(L, 2));
  int err = peer ? pp_peer_check(peer) : PP_ENOPEER;
  if (err) return lpp_push_error(L, err, peer ? NULL : "unknown peer");
  lua_pushboolean(L, 1);
  return 1;
}

/* ---- stats ----------------------------------------------------------------------------- */

/* The engine's scalar stats, from its one table (PP_STATS_MAP). */
typedef struct {
  const char *name, *doc;
  size_t offset, size;
  bool is_double;
} stat_t;

static const stat_t stats[] = {
#define STAT(type, name, doc) \
  {#name, doc, offsetof(pp_stats_t, name), sizeof(type), (type)0.5 != 0},
    PP_STATS_MAP(STAT)
#undef STAT
        {NULL, NULL, 0, 0, false},
};

/* peerpool.stats_fields(): { name = doc } of every scalar field of stats() the engine keeps. */
int lpp_l_stats_fields(lua_State *L) {
  lua_newtable(L);
  for (const stat_t *st = stats; st->name; st++) {
    lua_pushstring(L, st->doc);
    lua_setfield(L, -2, st->name);
  }
  return 1;
}

static int l_stats(lua_State *L) {
  lpp_pool_t *p = lpp_check_pool(L, 1);
  pp_stats_t s;
  pp_pool_stats(p->pool, &s);
  lua_createtable(L, 0, 48);
  for (const stat_t *st = stats; st->name; st++) {
    const char *field = (const char *)&s + st->offset;
    if (st->is_double)
      lua_pushnumber(L, *(const double *)field);
    else if (st->size == sizeof(int))
      lua_pushinteger(L, *(const int *)field);
    else
      lua_pushinteger(L, (lua_Integer) * (const uint64_t *)field);
    lua_setfield(L, -2, st->name);
  }
  lua_pushinteger(L, (lua_Integer)p->leaked_leases);
  lua_setfield(L, -2, "leaked_leases");
  lua_pushinteger(L, (lua_Integer)p->callback_errors);
  lua_setfield(L, -2, "callback_errors");
  lua_createtable(L, 0, PP_PEER_STATE_COUNT);
  for (int i = 0; i < PP_PEER_STATE_COUNT; i++) {
    lua_pushinteger(L, s.peers_by_state[i]);
    lua_setfield(L, -2, pp_peer_state_name((pp_peer_state_t)i));
  }
  lua_setfield(L, -2, "peers_by_state");
  lua_createtable(L, 0, PP_CLOSE_REASON_COUNT);
  for (int i = 0; i < PP_CLOSE_REASON_COUNT; i++) {
    lua_pushinteger(L, (lua_Integer)s.closed[i]);
    lua_setfield(L, -2, pp_close_reason_name((pp_close_reason_t)i));
  }
  lua_setfield(L, -2, "closed");
  lua_createtable(L, 0, LPP_HOOK_COUNT);
  for (int h = 0; h < LPP_HOOK_COUNT; h++) {
    lua_createtable(L, 0, 2);
    lua_pushinteger(L, (lua_Integer)p->hook_calls[h]);
    lua_setfield(L, -2, "calls");
    lua_pushinteger(L, (lua_Integer)p->hook_errors[h]);
    lua_setfield(L, -2, "errors");
    lua_setfield(L, -2, lpp_hook_names[h]);
  }
  lua_setfield(L, -2, "hooks");
  lua_pushstring(L, p->policy_name);
  lua_setfield(L, -2, "policy");
  lpp_push_histograms(L, p); /* lobserve.c */
  lua_setfield(L, -2, "histograms");
  return 1;
}

/* ---- events ---------------------------------------------------------------------------- */

lpp_pool_t *lpp_pool_of(pp_pool_t *pool) {
  pool_link_t *link = pp_pool_get_data(pool);
  if (link == NULL || link->st->shutting_down) return NULL;
  return link->p;
}

/* ---- acquire --------------------------------------------------------------------------- */

static const char *const acquire_option_names[] = {"busy", "timeout", "priority", "key", NULL};

static void read_acquire_opts(lua_State *L, int idx, pp_acquire_opts_t *o) {
  pp_acquire_opts_init(o);
  if (lua_isnoneornil(L, idx)) return;
  luaL_argexpected(L, lua_istable(L, idx), idx, "table of options");
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    const char *k = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    const char *const *n = acquire_option_names;
    while (k && *n && strcmp(*n, k) != 0)
      n++;
    if (k == NULL || *n == NULL)
      luaL_error(L,
                 "bad argument #%d to 'acquire' (unknown option '%s'; options: busy, timeout, "
                 "priority, key)",
                 idx - 1, k ? k : luaL_typename(L, -1));
  }
  if (lua_getfield(L, idx, "busy") != LUA_TNIL) {
    const char *b = lua_tostring(L, -1);
    if (lua_type(L, -1) != LUA_TSTRING || (strcmp(b, "wait") != 0 && strcmp(b, "fail") != 0))
      luaL_error(L, "opts.busy must be \"wait\" or \"fail\"");
    o->busy = strcmp(b, "fail") == 0 ? PP_BUSY_FAIL : PP_BUSY_WAIT;
  }
  lua_pop(L, 1);
  lua_getfield(L, idx, "timeout");
  o->timeout = lpp_opt_ms(L, -1, "opts.timeout", -1);
  lua_pop(L, 1);
  if (lua_getfield(L, idx, "priority") != LUA_TNIL) {
    if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 0 || lua_tointeger(L, -1) > PP_PRIORITY_MAX)
      luaL_error(L, "opts.priority must be an integer in 0..%d", PP_PRIORITY_MAX);
    o->priority = (int)lua_tointeger(L, -1);
  }
  lua_pop(L, 1);
  if (lua_getfield(L, idx, "key") != LUA_TNIL) {
    if (lua_type(L, -1) != LUA_TSTRING) luaL_error(L, "opts.key must be a string");
    o->key = lua_tostring(L, -1); /* anchored by the opts table for the call */
  }
  lua_pop(L, 1);
}

/* pool:acquire([peer] [, opts] [, callback]) */
static int l_acquire(lua_State *L) {
  lpp_pool_t *p = lpp_check_pool_mutable(L, 1);
  pp_peer_t *peer = NULL;
  int t = lua_type(L, 2);
  /* Allow acquire(opts), acquire(fn) and acquire(opts, fn) with no peer. */
  if (t == LUA_TTABLE && lua_getfield(L, 2, "addr") == LUA_TSTRING) {
    /* A peer view (from pool:peers(), pool:peer() or a state event): its address. */
    lua_replace(L, 2);
  } else if (t == LUA_TTABLE || t == LUA_TFUNCTION) {
    if (t == LUA_TTABLE) lua_pop(L, 1);
    lua_pushnil(L);
    lua_insert(L, 2);
  } else if (t != LUA_TNIL && t != LUA_TNONE) {
    luaL_argexpected(L, t == LUA_TSTRING, 2, "peer address (string), peer view or nil");
  }
  int cb_idx = 0;
  if (lua_isfunction(L, 3)) {
    lua_pushnil(L);
    lua_insert(L, 3);
  }
  if (!lua_isnoneornil(L, 4)) {
    luaL_checktype(L, 4, LUA_TFUNCTION);
    cb_idx = 4;
  }
  pp_acquire_opts_t opts;
  read_acquire_opts(L, 3, &opts);
  if (lua_type(L, 2) == LUA_TSTRING) {
    const char *addr = lua_tostring(L, 2);
    peer = pp_pool_find_peer(p->pool, addr);
    if (peer == NULL) {
      char msg[200];
      snprintf(msg, sizeof(msg), "unknown peer %s (add it with pool:add_peer)", addr);
      return lpp_push_error(L, PP_ENOPEER, msg);
    }
  }
  return lpp_acquire(L, p, peer, &opts, cb_idx);
}

void lpp_push_pool(lua_State *L, lpp_pool_t *p) {
  lua_rawgetp(L, LUA_REGISTRYINDEX, &pools_key);
  lua_rawgetp(L, -1, p);
  lua_remove(L, -2);
}

int lpp_l_pools(lua_State *L) {
  lpp_state_t *st = lpp_state(L);
  lua_newtable(L);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &pools_key);
  int i = 0;
  for (lpp_pool_t *p = st->pools; p; p = p->next) {
    if (lua_rawgetp(L, -1, p) == LUA_TNIL) {
      lua_pop(L, 1);
      continue;
    }
    lua_rawseti(L, -3, ++i);
  }
  lua_pop(L, 1);
  return 1;
}

static const luaL_Reg pool_methods[] = {
    {"add_peer", l_add_peer},
    {"_add_peer", l_add_peer_from},
    {"acquire", l_acquire},
    {"stats", l_stats},
    {"_every", l_every},
    {"peers", l_peers},
    {"peer", l_peer},
    {"check", l_check},
    {"_restore", l_restore},
    {"close", l_close},
    {"remove_peer", l_remove_peer},
    {"drain", l_drain},
    {"_closed", l_closed},
    {"_framed", l_framed},
    {"_request_method", lpp_l_request_method},
    {NULL, NULL},
};

static const luaL_Reg pool_meta[] = {
    {"__gc", l_gc},
    {"__close", l_close},
    {"__tostring", l_tostring},
    {NULL, NULL},
};

void lpp_pool_open(lua_State *L) {
  lpp_new_class(L, LPP_POOL, pool_methods, pool_meta);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &lpp_pool_mt_key);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &pools_key);
  if (lua_isnil(L, -1)) {
    lua_newtable(L);
    lua_newtable(L);
    lua_pushliteral(L, "v");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &pools_key);
  }
  lua_pop(L, 1);
}
