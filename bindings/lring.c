/* peerpool.ring(vnodes): a consistent-hash ring in C, for routing policies. Each address owns
 * `vnodes` points on a 32-bit ring (FNV-1a of the address, spread by murmur3's finaliser); a
 * key belongs to the owner of the first point at or after the key's hash. Kept in C because
 * a ring over 10,000 peers holds 640,000 points: in Lua tables that is tens of MB a hook call
 * would have to allocate at once (beyond hook_memory), here 8 bytes a point, sorted once per
 * change and searched in O(log n).
 *   ring:add(addr)  ring:remove(addr)  ring:owner(key [, accept])  ring:size()  ring.hash(s) */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lpeerpool.h"

#define LPP_RING "peerpool.ring"

typedef struct {
  uint32_t at;   /* position on the ring */
  uint32_t addr; /* index into the uservalue's list of addresses */
} point_t;

enum { NONE = 0, ON = 1, LEFT = 2 };

typedef struct {
  point_t *pts;
  size_t n, cap;
  size_t dead; /* points whose address left */
  int vnodes;
  int sorted;
  unsigned char *live; /* per address index: ON, LEFT (its points still there) or NONE */
  size_t naddrs, live_cap;
} ring_t;

static uint32_t fnv(const char *s, size_t len) {
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < len; i++)
    h = (h ^ (unsigned char)s[i]) * 16777619u;
  return h;
}

static uint32_t mix(uint32_t h) {
  h ^= h >> 16;
  h *= 0x85ebca6bu;
  h ^= h >> 13;
  h *= 0xc2b2ae35u;
  return h ^ (h >> 16);
}

static ring_t *check_ring(lua_State *L) {
  return luaL_checkudata(L, 1, LPP_RING);
}

/* The index of addr in the uservalue { [addr] = i, [i] = addr }, or 0 (with create: a new one). */
static size_t addr_index(lua_State *L, ring_t *r, int addr_idx, int create) {
  lua_getiuservalue(L, 1, 1);
  lua_pushvalue(L, addr_idx);
  lua_rawget(L, -2);
  size_t i = (size_t)lua_tointeger(L, -1);
  lua_pop(L, 1);
  if (i == 0 && create) {
    if (r->naddrs == r->live_cap) {
      size_t cap = r->live_cap ? r->live_cap * 2 : 16;
      unsigned char *live = realloc(r->live, cap);
      if (live == NULL) luaL_error(L, "ring: out of memory");
      r->live = live;
      r->live_cap = cap;
    }
    i = ++r->naddrs;
    r->live[i - 1] = NONE;
    lua_pushvalue(L, addr_idx);
    lua_pushinteger(L, (lua_Integer)i);
    lua_rawset(L, -3);
    lua_pushvalue(L, addr_idx);
    lua_rawseti(L, -2, (lua_Integer)i);
  }
  lua_pop(L, 1);
  return i;
}

/* ring:add(addr): the address joins (again); no-op if it is on the ring. */
static int l_add(lua_State *L) {
  ring_t *r = check_ring(L);
  size_t len;
  const char *addr = luaL_checklstring(L, 2, &len);
  size_t i = addr_index(L, r, 2, 1);
  if (r->live[i - 1] == ON) return 0;
  if (r->live[i - 1] == LEFT) { /* back before a compaction: its points are still there */
    r->live[i - 1] = ON;
    r->dead -= (size_t)r->vnodes;
    return 0;
  }
  if (r->n + (size_t)r->vnodes > r->cap) {
    size_t cap = r->cap ? r->cap : 256;
    while (cap < r->n + (size_t)r->vnodes)
      cap *= 2;
    point_t *pts = realloc(r->pts, cap * sizeof(*pts));
    if (pts == NULL) return luaL_error(L, "ring: out of memory");
    r->pts = pts;
    r->cap = cap;
  }
  uint32_t base = fnv(addr, len);
  for (int v = 1; v <= r->vnodes; v++)
    r->pts[r->n++] = (point_t){mix(base + (uint32_t)v * 0x9e3779b9u), (uint32_t)i};
  r->live[i - 1] = ON;
  r->sorted = 0;
  return 0;
}

static int by_position(const void *a, const void *b) {
  const point_t *x = a, *y = b;
  if (x->at != y->at) return x->at < y->at ? -1 : 1;
  return x->addr < y->addr ? -1 : x->addr > y->addr; /* ties: a stable, order-free rule */
}

/* Drop dead points once they are half the ring. */
static void compact(ring_t *r) {
  size_t out = 0;
  for (size_t k = 0; k < r->n; k++)
    if (r->live[r->pts[k].addr - 1] == ON) r->pts[out++] = r->pts[k];
  r->n = out;
  r->dead = 0;
  for (size_t i = 0; i < r->naddrs; i++)
    if (r->live[i] == LEFT) r->live[i] = NONE;
}

/* ring:remove(addr): the address leaves; its keys go to the next owners. */
static int l_remove(lua_State *L) {
  ring_t *r = check_ring(L);
  luaL_checkstring(L, 2);
  size_t i = addr_index(L, r, 2, 0);
  if (i == 0 || r->live[i - 1] != ON) return 0;
  r->live[i - 1] = LEFT;
  r->dead += (size_t)r->vnodes;
  if (r->dead * 2 > r->n) compact(r);
  return 0;
}

static void push_addr(lua_State *L, size_t i) {
  lua_getiuservalue(L, 1, 1);
  lua_rawgeti(L, -1, (lua_Integer)i);
  lua_remove(L, -2);
}

/* ring:owner(key [, accept]): the address that owns key; with accept, the first owner in ring
 * order for which accept(addr) is true (the owner itself if none is). nil on an empty ring. */
static int l_owner(lua_State *L) {
  ring_t *r = check_ring(L);
  size_t len;
  const char *key = luaL_checklstring(L, 2, &len);
  int accept = !lua_isnoneornil(L, 3);
  if (accept) luaL_checktype(L, 3, LUA_TFUNCTION);
  if (r->n == r->dead) return 0;
  if (!r->sorted) {
    qsort(r->pts, r->n, sizeof(*r->pts), by_position);
    r->sorted = 1;
  }
  uint32_t h = mix(fnv(key, len));
  size_t lo = 0, hi = r->n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (r->pts[mid].at < h)
      lo = mid + 1;
    else
      hi = mid;
  }
  size_t first = 0;
  for (size_t step = 0; step < r->n; step++) {
    size_t i = r->pts[(lo + step) % r->n].addr;
    if (r->live[i - 1] != ON) continue;
    if (!first) first = i;
    if (!accept) break;
    lua_pushvalue(L, 3);
    push_addr(L, i);
    lua_call(L, 1, 1);
    int ok = lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (ok) {
      push_addr(L, i);
      return 1;
    }
    if (step > (size_t)r->vnodes * 64) break; /* enough: the owner answers */
  }
  push_addr(L, first);
  return 1;
}

static int l_size(lua_State *L) {
  ring_t *r = check_ring(L);
  size_t n = 0;
  for (size_t i = 0; i < r->naddrs; i++)
    n += r->live[i] == ON;
  lua_pushinteger(L, (lua_Integer)n);
  return 1;
}

static int l_hash(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  lua_pushinteger(L, mix(fnv(s, len)));
  return 1;
}

static int l_gc(lua_State *L) {
  ring_t *r = check_ring(L);
  free(r->pts);
  free(r->live);
  r->pts = NULL;
  r->live = NULL;
  r->n = r->cap = r->naddrs = r->live_cap = 0;
  return 0;
}

/* peerpool.ring([vnodes = 64]) */
int lpp_l_ring(lua_State *L) {
  lua_Integer vnodes = luaL_optinteger(L, 1, 64);
  luaL_argcheck(L, vnodes >= 1 && vnodes <= 4096, 1, "vnodes must be an integer in 1..4096");
  ring_t *r = lua_newuserdatauv(L, sizeof(*r), 1);
  memset(r, 0, sizeof(*r));
  r->vnodes = (int)vnodes;
  r->sorted = 1;
  lua_newtable(L);
  lua_setiuservalue(L, -2, 1);
  static const luaL_Reg methods[] = {
      {"add", l_add},   {"remove", l_remove}, {"owner", l_owner},
      {"size", l_size}, {"hash", l_hash},     {NULL, NULL},
  };
  static const luaL_Reg meta[] = {{"__gc", l_gc}, {NULL, NULL}};
  lpp_new_class(L, LPP_RING, methods, meta);
  lua_setmetatable(L, -2);
  return 1;
}
