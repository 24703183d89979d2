/* Views: what Lua sees of a peer. A peer view (pool:peers(), pool:peer(), state events) is a
 * plain table, a snapshot taken when it is made. A candidate view (the select hooks' arguments)
 * is a userdata read live from the engine, valid only during the hook call that received it:
 * each pool keeps PP_CANDIDATES_MAX of them and reuses them for every call. */
#include <stdio.h>
#include <string.h>

#include "lpeerpool.h"

/* ---- peer views ------------------------------------------------------------------------ */

/* A host-name peer's `resolved` list ({ addr, conns, current } per address, the answer's first)
 * and `dns_error` (why its last query failed). */
static void push_resolved(lua_State *L, pp_peer_t *peer) {
  pp_resolved_t r[PP_DNS_MAX_ADDRS * 2];
  int n = pp_peer_resolved(peer, r, PP_DNS_MAX_ADDRS * 2);
  if (n < 0) return;
  if (n > PP_DNS_MAX_ADDRS * 2) n = PP_DNS_MAX_ADDRS * 2;
  lua_createtable(L, n, 0);
  for (int k = 0; k < n; k++) {
    char addr[96] = "";
    if (r[k].sa.ss_family == AF_INET6) {
      char ip[64];
      uv_ip6_name((const struct sockaddr_in6 *)&r[k].sa, ip, sizeof ip);
      snprintf(addr, sizeof addr, "[%s]:%d", ip,
               ntohs(((const struct sockaddr_in6 *)&r[k].sa)->sin6_port));
    } else if (r[k].sa.ss_family == AF_INET) {
      char ip[64];
      uv_ip4_name((const struct sockaddr_in *)&r[k].sa, ip, sizeof ip);
      snprintf(addr, sizeof addr, "%s:%d", ip,
               ntohs(((const struct sockaddr_in *)&r[k].sa)->sin_port));
    }
    lua_createtable(L, 0, 3);
    lua_pushstring(L, addr);
    lua_setfield(L, -2, "addr");
    lua_pushinteger(L, r[k].conns);
    lua_setfield(L, -2, "conns");
    lua_pushboolean(L, r[k].current);
    lua_setfield(L, -2, "current");
    lua_rawseti(L, -2, k + 1);
  }
  lua_setfield(L, -2, "resolved");
  if (pp_peer_dns_reason(peer)) {
    lua_pushstring(L, pp_peer_dns_reason(peer));
    lua_setfield(L, -2, "dns_error");
  }
}

void lpp_push_peer_view(lua_State *L, pp_peer_t *peer) {
  pp_peer_info_t i;
  pp_peer_info(peer, &i);
  lua_createtable(L, 0, 18);
  lua_pushstring(L, i.addr);
  lua_setfield(L, -2, "addr");
  lua_pushstring(L, pp_peer_state_name(i.state));
  lua_setfield(L, -2, "state");
#define INT_FIELD(f)                    \
  lua_pushinteger(L, (lua_Integer)i.f); \
  lua_setfield(L, -2, #f);
  INT_FIELD(conns)
  INT_FIELD(idle)
  INT_FIELD(leases)
  INT_FIELD(waiters)
  INT_FIELD(failures)
  INT_FIELD(last_seen)
  INT_FIELD(last_success)
  INT_FIELD(attempts)
  INT_FIELD(bytes_in)
  INT_FIELD(bytes_out)
  INT_FIELD(msgs_in)
  INT_FIELD(msgs_out)
#undef INT_FIELD
  lua_pushnumber(L, i.latency_ms);
  lua_setfield(L, -2, "latency_ms");
  lua_pushinteger(L, (lua_Integer)i.ejections);
  lua_setfield(L, -2, "ejections");
  lua_pushinteger(L, i.min_idle);
  lua_setfield(L, -2, "min_idle");
  lua_pushboolean(L, i.draining);
  lua_setfield(L, -2, "draining");
  if (i.last_error) {
    lua_pushstring(L, pp_err_name(i.last_error));
    lua_setfield(L, -2, "last_error");
  }
  if (i.retry_at) {
    uint64_t now = pp_now();
    lua_pushinteger(L, i.retry_at > (int64_t)now ? i.retry_at - (int64_t)now : 0);
    lua_setfield(L, -2, "retry_in_ms");
  }
  push_resolved(L, peer);
  if (lpp_push_peer_meta(L, peer) == LUA_TTABLE) {
    lua_getfield(L, -1, "source");
    lua_setfield(L, -3, "source");
    lua_getfield(L, -1, "tags");
    lua_setfield(L, -3, "tags");
  }
  lua_pop(L, 1);
}

/* ---- candidate views ------------------------------------------------------------------- */

typedef struct {
  lpp_pool_t *p;
  pp_peer_t *peer;
  pp_conn_t *conn; /* for conn views */
  int slot;
  int valid; /* views are valid only during the hook call that received them */
} view_t;

static int view_index(lua_State *L) {
  view_t *v = luaL_checkudata(L, 1, LPP_VIEW);
  const char *key = luaL_checkstring(L, 2);
  if (!v->valid || v->p->pool == NULL)
    return luaL_error(L, "a candidate view is valid only during the hook call");
  pp_peer_info_t i;
  pp_peer_info(v->peer, &i);
  if (strcmp(key, "addr") == 0)
    lua_pushstring(L, i.addr);
  else if (strcmp(key, "leases") == 0)
    lua_pushinteger(L, v->conn ? pp_conn_leases(v->conn) : i.leases);
  else if (strcmp(key, "idle_ms") == 0)
    lua_pushinteger(L, v->conn ? (lua_Integer)pp_conn_idle_ms(v->conn) : 0);
  else if (strcmp(key, "latency_ms") == 0)
    lua_pushnumber(L, i.latency_ms);
  else if (strcmp(key, "failures") == 0)
    lua_pushinteger(L, i.failures);
  else if (strcmp(key, "state") == 0)
    lua_pushstring(L, pp_peer_state_name(i.state));
  else if (strcmp(key, "conns") == 0)
    lua_pushinteger(L, i.conns);
  else if (strcmp(key, "idle") == 0)
    lua_pushinteger(L, i.idle);
  else if (strcmp(key, "waiters") == 0)
    lua_pushinteger(L, i.waiters);
  else if (strcmp(key, "last_seen") == 0)
    lua_pushinteger(L, i.last_seen);
  else if (strcmp(key, "tags") == 0 || strcmp(key, "source") == 0) {
    if (lpp_push_peer_meta(L, v->peer) == LUA_TTABLE)
      lua_getfield(L, -1, key);
    else
      lua_pushnil(L);
  } else
    lua_pushnil(L);
  return 1;
}

static int view_tostring(lua_State *L) {
  view_t *v = luaL_checkudata(L, 1, LPP_VIEW);
  lua_pushfstring(L, "peerpool.view (%s)", v->valid ? pp_peer_addr(v->peer) : "expired");
  return 1;
}

int lpp_views_new(lua_State *L, lpp_pool_t *p) {
  lua_createtable(L, PP_CANDIDATES_MAX, 0);
  for (int i = 0; i < PP_CANDIDATES_MAX; i++) {
    view_t *v = lua_newuserdatauv(L, sizeof(*v), 0);
    memset(v, 0, sizeof(*v));
    v->p = p;
    v->slot = i;
    luaL_setmetatable(L, LPP_VIEW);
    lua_rawseti(L, -2, i + 1);
  }
  return luaL_ref(L, LUA_REGISTRYINDEX);
}

/* Fill the reusable candidates table with n views and push it. */
void lpp_views_fill(lpp_pool_t *p, pp_peer_t *const *peers, pp_conn_t *const *conns, int n) {
  lua_State *L = p->hook_L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, p->cand_ref);
  lua_rawgeti(L, LUA_REGISTRYINDEX, p->views_ref);
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, -1, i + 1);
    view_t *v = lua_touserdata(L, -1);
    v->conn = conns ? conns[i] : NULL;
    v->peer = conns ? pp_conn_peer(conns[i]) : peers[i];
    v->valid = 1;
    lua_rawseti(L, -3, i + 1);
  }
  lua_pop(L, 1);
  for (int i = n + 1; i <= PP_CANDIDATES_MAX; i++) {
    if (lua_rawgeti(L, -1, i) == LUA_TNIL) {
      lua_pop(L, 1);
      break;
    }
    lua_pop(L, 1);
    lua_pushnil(L);
    lua_rawseti(L, -2, i);
  }
}

void lpp_views_invalidate(lpp_pool_t *p, int n) {
  lua_State *L = p->hook_L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, p->views_ref);
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, -1, i + 1);
    ((view_t *)lua_touserdata(L, -1))->valid = 0;
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}

int lpp_view_slot(lua_State *L, int idx) {
  view_t *v = luaL_testudata(L, idx, LPP_VIEW);
  return v && v->valid ? v->slot : -1;
}

void lpp_view_open(lua_State *L) {
  static const luaL_Reg meta[] = {
      {"__index", view_index},
      {"__tostring", view_tostring},
      {NULL, NULL},
  };
  lpp_new_class(L, LPP_VIEW, NULL, meta);
  lua_pop(L, 1);
}
