/* Conns of a pool with framing: conn:send(data) is one engine request (pp_request_send) and
 * conn:receive() returns this lease's next whole reply, in the order its requests were sent,
 * while other leases pipeline on the same conn. Also the `framing` option (a built-in, or a
 * Lua function run as a contained hook). Requests are kept for reuse: steady state allocates
 * nothing here but the reply string. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "lpeerpool.h"

#define LPP_RECYCLE_MAX 4096

/* A record from `r` (or new, NULL when out of memory); its contents are garbage. */
static void *recycle_take(lpp_recycle_t *r, size_t size) {
  void *item = r->head;
  if (item == NULL) return malloc(size);
  memcpy(&r->head, item, sizeof(void *));
  r->n--;
  return item;
}

/* Keep `item` for reuse, or free it past the bound or at shutdown. */
static void recycle_give(lpp_state_t *st, lpp_recycle_t *r, void *item) {
  if (r->n >= LPP_RECYCLE_MAX || st->shutting_down) {
    free(item);
    return;
  }
  memcpy(item, &r->head, sizeof(void *));
  r->head = item;
  r->n++;
}

static void recycle_clear(lpp_recycle_t *r) {
  while (r->head) {
    void *item = r->head;
    memcpy(&r->head, item, sizeof(void *));
    free(item);
  }
  r->n = 0;
}

typedef struct lpp_req_s {
  pp_request_t req;
  uv_buf_t buf;
  lpp_state_t *st;
  lpp_conn_t *c;          /* the conn object its reply is for; NULL once that one left */
  struct lpp_req_s *next; /* c's requests, oldest first */
  int data_ref;           /* the sent string, anchored until the engine is done with it */
  int reply_ref;          /* the reply, once it came */
  int status;             /* its failure, once it failed */
  int done;
} lpp_req_t;

/* ---- the framing option ----------------------------------------------------------------- */

/* framing = function(buf): how long the reply at the front of buf is (nil: more bytes are
 * needed). Runs like a policy hook: budgeted, contained; an error or a bad answer makes the
 * stream unframeable (the conn's requests fail with bad_reply, the hook error is counted). */
static ssize_t lua_framer(void *data, const char *buf, size_t len) {
  lpp_pool_t *p = data;
  if (p->st->shutting_down || p->framing_ref == LUA_NOREF) return PP_EFRAMING;
  lua_State *L = p->hook_L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, p->framing_ref);
  lua_pushlstring(L, buf, len);
  if (!lpp_call_sync_hook(p, LPP_HOOK_FRAMING, 1)) return PP_EFRAMING;
  ssize_t n = -1;
  int isint = 0;
  lua_Integer v = lua_tointegerx(L, -1, &isint);
  if (lua_isnil(L, -1))
    n = 0;
  else if (isint && lua_type(L, -1) == LUA_TNUMBER && v >= 1 && (size_t)v <= len)
    n = (ssize_t)v;
  if (n < 0) {
    char msg[128];
    snprintf(msg, sizeof(msg), "answered %s (want a length in 1..#buf = %zu, or nil for more)",
             lua_type(L, -1) == LUA_TNUMBER ? lua_tostring(L, -1) : luaL_typename(L, -1), len);
    lpp_hook_error(p, LPP_HOOK_FRAMING, msg);
    n = PP_EFRAMING;
  }
  lua_pop(L, 1);
  return n;
}

static int field_int(lua_State *L, int t, const char *name, int dflt, int lo, int hi) {
  int isint, v = dflt;
  int type = lua_getfield(L, t, name);
  if (type == LUA_TBOOLEAN) {
    v = lua_toboolean(L, -1);
  } else if (type != LUA_TNIL) {
    lua_Integer i = lua_tointegerx(L, -1, &isint);
    if (!isint || i < lo || i > hi)
      luaL_error(L, "peerpool.new: option 'framing.%s' must be an integer in %d..%d", name, lo, hi);
    v = (int)i;
  }
  lua_pop(L, 1);
  return v;
}

static pp_framing_kind_t kind_named(lua_State *L, const char *s) {
  for (int k = PP_FRAMING_LINE; k <= PP_FRAMING_LENGTH; k++)
    if (strcmp(s, pp_framing_name((pp_framing_kind_t)k)) == 0) return (pp_framing_kind_t)k;
  luaL_error(L,
             "peerpool.new: option 'framing' must be \"line\", \"resp\", \"length\", a table "
             "or a function (got \"%s\")",
             s);
  return PP_FRAMING_NONE;
}

void lpp_read_framing(lua_State *L, int idx, lpp_pool_t *p) {
  idx = lua_absindex(L, idx);
  pp_framing_t *f = &p->framing;
  p->framing_ref = LUA_NOREF;
  switch (lua_type(L, idx)) {
    case LUA_TNIL:
      pp_framing_init(f, PP_FRAMING_NONE);
      return;
    case LUA_TSTRING:
      pp_framing_init(f, kind_named(L, lua_tostring(L, idx)));
      break;
    case LUA_TFUNCTION:
      pp_framing_init(f, PP_FRAMING_CUSTOM);
      f->fn = lua_framer;
      f->fn_data = p; /* the pool's struct: it lives as long as the engine pool's reads */
      break;
    case LUA_TTABLE: {
      if (lua_getfield(L, idx, "kind") != LUA_TSTRING)
        luaL_error(L,
                   "peerpool.new: option 'framing.kind' must be \"line\", \"resp\" or "
                   "\"length\" (got %s)",
                   luaL_typename(L, -1));
      pp_framing_init(f, kind_named(L, lua_tostring(L, -1)));
      lua_pop(L, 1);
      f->length_size = field_int(L, idx, "size", 4, 1, 8);
      f->length_big_endian = field_int(L, idx, "big_endian", 1, 0, 1);
      f->length_offset = field_int(L, idx, "offset", 0, 0, 1024);
      f->length_includes_header = field_int(L, idx, "includes_header", 0, 0, 1);
      f->max_reply = (size_t)field_int(L, idx, "max_reply", 0, 0, INT_MAX);
      break;
    }
    default:
      luaL_error(L,
                 "peerpool.new: option 'framing' must be \"line\", \"resp\", \"length\", a "
                 "table or a function (got %s)",
                 luaL_typename(L, idx));
  }
  const char *why;
  if (pp_framing_validate(f, &why) != 0) luaL_error(L, "peerpool.new: option %s", why);
  if (f->kind == PP_FRAMING_CUSTOM) {
    lua_pushvalue(L, idx);
    p->framing_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  p->framed = 1;
}

/* ---- requests ----------------------------------------------------------------------------- */

static lpp_req_t *req_new(lpp_state_t *st) {
  lpp_req_t *r = recycle_take(&st->reqs, sizeof(*r));
  if (r == NULL) return NULL;
  memset(r, 0, sizeof(*r));
  r->st = st;
  r->data_ref = r->reply_ref = LUA_NOREF;
  return r;
}

static void req_free(lua_State *L, lpp_req_t *r) {
  lpp_state_t *st = r->st;
  lpp_unref(L, &r->data_ref);
  lpp_unref(L, &r->reply_ref);
  recycle_give(st, &st->reqs, r);
}

/* (at the state's end: the calls' registry slots go with the registry) */
void lpp_req_free_all(lpp_state_t *st) {
  recycle_clear(&st->reqs);
  recycle_clear(&st->calls);
}

static void on_reply(pp_request_t *req, int status, const char *reply, size_t len) {
  lpp_req_t *r = req->data;
  lua_State *L = r->st->L;
  lpp_budget_t *outside = lpp_budget_enter(NULL); /* (a hook's code may have caused this) */
  lpp_unref(L, &r->data_ref);
  lpp_conn_t *c = r->c;
  if (c == NULL || r->st->shutting_down) { /* nobody will receive it */
    req_free(L, r);
    lpp_budget_leave(outside);
    return;
  }
  r->done = 1;
  r->status = status;
  if (status == 0) {
    lua_pushlstring(L, reply, len); /* the reply's one copy */
    r->reply_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  if (c->rq_head == r && c->want_kind == 'r') lpp_receive_wake(c);
  lpp_budget_leave(outside);
}

int lpp_req_send(lua_State *L, lpp_conn_t *c, pp_conn_t *conn, int data_idx) {
  if (!lua_isnoneornil(L, data_idx + 1))
    return luaL_argerror(L, data_idx + 1,
                         "a send callback is not available on a conn with framing "
                         "(conn:receive() answers each request)");
  size_t len;
  const char *data = lua_tolstring(L, data_idx, &len);
  lpp_req_t *r = req_new(c->owner->st);
  if (r == NULL) return lpp_push_error(L, UV_ENOMEM, NULL);
  lua_pushvalue(L, data_idx); /* Lua strings never move: the engine writes from it */
  r->data_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  r->buf = uv_buf_init((char *)data, (unsigned int)len);
  r->req.data = r;
  r->c = c;
  int err = pp_request_send(&r->req, conn, &r->buf, 1, on_reply);
  if (err) {
    r->c = NULL;
    req_free(L, r);
    return lpp_push_error(L, err == UV_EOF ? PP_ECLOSED : err, NULL);
  }
  if (c->rq_tail)
    c->rq_tail->next = r;
  else
    c->rq_head = r;
  c->rq_tail = r;
  lua_pushinteger(L, (lua_Integer)len);
  return 1;
}

int lpp_req_ready(lpp_conn_t *c) {
  return c->rq_head && c->rq_head->done;
}

static lpp_req_t *pop_head(lpp_conn_t *c) {
  lpp_req_t *r = c->rq_head;
  c->rq_head = r->next;
  if (c->rq_head == NULL) c->rq_tail = NULL;
  r->next = NULL;
  return r;
}

int lpp_req_take(lua_State *L, lpp_conn_t *c) {
  if (!lpp_req_ready(c)) return 0;
  lpp_req_t *r = pop_head(c);
  int n = 1;
  if (r->status == 0) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, r->reply_ref);
  } else {
    int err = r->status == UV_EOF ? PP_ECLOSED : r->status;
    const char *detail =
        err == PP_EPIPELINE  ? "an earlier request on this shared conn timed out or failed; "
                               "the conn was closed and this request's reply is lost"
        : err == PP_EFRAMING ? "a reply did not parse under the pool's framing; conn closed"
                             : NULL;
    n = lpp_push_error(L, err, detail);
  }
  req_free(L, r);
  return n;
}

void lpp_req_timed_out(lpp_conn_t *c) {
  if (c->rq_head == NULL || c->rq_head->done) return;
  lpp_req_t *r = pop_head(c);
  r->c = NULL; /* its (aborted) callback frees it */
  pp_request_abort(&r->req, PP_ETIMEDOUT);
}

void lpp_req_detach_all(lua_State *L, lpp_conn_t *c) {
  while (c->rq_head) {
    lpp_req_t *r = pop_head(c);
    if (r->done)
      req_free(L, r);
    else
      r->c = NULL; /* the engine still owes its callback, which frees it */
  }
}

/* ---- pool:request's fast path ---------------------------------------------------------------
 * A coroutine's pool:request(peer, data) without opts, when a conn is lent at once (on a shared
 * conn under client_limit, nearly always): one C call takes the lease into a reused call
 * struct, sends, waits, and resumes the coroutine with the reply pushed straight onto its stack
 * once the lease is released. No conn object, no reply anchored in the registry, no method
 * calls from Lua. Anything else (a wait for a conn, opts, a peer view, an error to explain)
 * answers false and takes the general path in peerpool.lua. */

#define LPP_CALL_INLINE 64 /* requests up to this size are copied into the call itself */

typedef struct lpp_call_s {
  pp_lease_t lease; /* (first: the recycle list's link overwrites it, never co_slot) */
  pp_request_t req;
  uv_buf_t buf;
  lpp_state_t *st;
  pp_pool_t *pool; /* the engine pool, not the Lua one: the program may close or drop that
                    * while the call waits (resumed by hand), and it is freed once collected;
                    * the engine pool answers every request before its close callback */
  lpp_wait_t wait;
  int co_slot;       /* this record's own registry slot, kept while it is recycled: anchors the
                      * waiting coroutine (lpp_wait_begin_kept) */
  lpp_timed_t timed; /* its io_timeout, in the pool's list of timed calls */
  char *bytes;       /* a copy of the sent string, which the engine writes from until the reply:
                      * `small`, or malloc'd. A copy, not a ref: it needs no registry write */
  char small[LPP_CALL_INLINE];
} lpp_call_t;

/* A call record (a recycled one, or new with its registry slot; NULL when out of memory);
 * raises only while it holds nothing (the new slot's luaL_ref). */
static lpp_call_t *call_take(lua_State *L, lpp_state_t *st) {
  if (st->calls.head) return recycle_take(&st->calls, sizeof(lpp_call_t));
  lua_pushboolean(L, 0);
  int slot = luaL_ref(L, LUA_REGISTRYINDEX);
  lpp_call_t *k = malloc(sizeof(*k));
  if (k == NULL) {
    luaL_unref(L, LUA_REGISTRYINDEX, slot);
    return NULL;
  }
  k->co_slot = slot;
  return k;
}

/* The call's pool's Lua side; NULL once the program closed it (or it was collected). */
static lpp_pool_t *call_pool(const lpp_call_t *k) {
  return lpp_pool_of(k->pool);
}

static void call_free(lua_State *L, lpp_call_t *k) {
  lpp_state_t *st = k->st;
  if (k->bytes != k->small) free(k->bytes);
  k->bytes = NULL;
  if (st->calls.n >= LPP_RECYCLE_MAX || st->shutting_down)
    luaL_unref(L, LUA_REGISTRYINDEX, k->co_slot); /* (recycle_give frees the record) */
  recycle_give(st, &st->calls, k);
}

static void call_unlist(lpp_call_t *k) {
  lpp_pool_t *p = call_pool(k);
  if (p) lpp_timed_remove(&p->calls, &k->timed); /* (a closed pool's list was emptied) */
}

/* Past io_timeout: the request is aborted (the shared conn breaks, reply order being lost);
 * its callback, later, resumes the caller with the timeout. */
static void on_call_timeout(uv_timer_t *timer) {
  lpp_pool_t *p = timer->data;
  if (p == NULL) return;
  uint64_t now = pp_now();
  while (p->calls.head && p->calls.head->at <= now) {
    lpp_call_t *k = LPP_CONTAINER(p->calls.head, lpp_call_t, timed);
    call_unlist(k);
    pp_request_abort(&k->req, PP_ETIMEDOUT);
  }
  lpp_timed_arm(p->L, p, &p->calls, on_call_timeout);
}

/* The coroutine waiting for k's answer, pushed on L; or NULL, with k freed, when nobody takes
 * the answer (the state shuts down, or the program resumed or closed it while it waited). */
static lua_State *take_caller(lua_State *L, lpp_call_t *k) {
  int down = k->st->shutting_down;
  lua_State *co = down ? NULL : lpp_wait_take_kept(L, &k->wait);
  if (co) return co;
  if (!down)
    lua_pop(L, 1);
  else
    lpp_wait_cancel_kept(L, &k->wait);
  call_free(L, k);
  return NULL;
}

/* Free k and resume its caller `co` (taken by take_caller) with the `n` values on its stack. */
static void answer_caller(lua_State *L, lpp_call_t *k, lua_State *co, int n) {
  lpp_pool_t *p = call_pool(k);
  call_free(L, k);
  lpp_resume(L, co, n, p);
  lua_pop(L, 1);
}

static void on_call_reply(pp_request_t *req, int status, const char *reply, size_t len) {
  lpp_call_t *k = req->data;
  lua_State *L = k->st->L;
  lpp_budget_t *outside = lpp_budget_enter(NULL); /* (a hook's code may have caused this) */
  call_unlist(k);
  pp_release(&k->lease, 0); /* the reply is in: the conn owes this lease nothing more */
  lua_State *co = take_caller(L, k);
  if (co == NULL) {
    lpp_budget_leave(outside);
    return;
  }
  int n = 1;
  if (status == 0) {
    lua_pushlstring(co, reply, len); /* the reply's one copy, on the caller's stack */
  } else {
    int err = status == UV_EOF ? PP_ECLOSED : status;
    const char *detail =
        err == PP_ETIMEDOUT
            ? "no reply within io_timeout; the shared conn was closed and the requests behind "
              "this one fail with pipeline_broken"
        : err == PP_EPIPELINE ? "an earlier request on this shared conn timed out or failed; "
                                "the conn was closed and this request's reply is lost"
        : err == PP_EFRAMING  ? "a reply did not parse under the pool's framing; conn closed"
                              : NULL;
    n = lpp_push_error(co, err, detail);
  }
  answer_caller(L, k, co, n);
  lpp_budget_leave(outside);
}

/* Send k's request on its lease's conn and start its io_timeout: 0, or the error. */
static int call_send(lua_State *L, lpp_pool_t *p, lpp_call_t *k) {
  int err = pp_request_send(&k->req, k->lease.conn, &k->buf, 1, on_call_reply);
  if (err) return err == UV_EOF ? PP_ECLOSED : err;
  int64_t ms = p->io_timeout; /* (the pool's one: calls are listed in start order) */
  if (ms > 0) lpp_timed_add(L, p, &p->calls, &k->timed, pp_now() + (uint64_t)ms, on_call_timeout);
  return 0;
}

/* A conn for a call that had to wait: send (the caller is resumed by the reply), or resume the
 * caller with why not. */
static void on_call_acquired(pp_lease_t *lease, int status) {
  lpp_call_t *k = lease->data;
  lpp_pool_t *p = call_pool(k);
  lua_State *L = k->st->L;
  int down = k->st->shutting_down || p == NULL;
  if (status == 0) {
    if (!down && lpp_wait_active(L, &k->wait)) {
      status = call_send(L, p, k);
      if (status == 0) return;
    } else {
      status = PP_ECLOSED; /* nobody waits for it any more */
    }
    pp_release(lease, 0);
  }
  lpp_budget_t *outside = lpp_budget_enter(NULL);
  lua_State *co = take_caller(L, k);
  if (co)
    answer_caller(L, k, co,
                  p ? lpp_push_acquire_error(co, p, lease, NULL, status)
                    : lpp_push_error(co, PP_ECLOSED, NULL));
  lpp_budget_leave(outside);
}

/* The fast path: its answer's count, or -1 (nothing pushed) for the general path, which also
 * explains errors. Its self check compares with upvalue 1, the pool metatable (cheaper than a
 * registry lookup). */
static int request_fast(lua_State *L) {
  lpp_pool_t *p = lua_type(L, 1) == LUA_TUSERDATA ? lua_touserdata(L, 1) : NULL;
  if (p && lua_getmetatable(L, 1)) {
    if (!lua_rawequal(L, -1, lua_upvalueindex(1))) p = NULL;
    lua_pop(L, 1);
  } else {
    p = NULL;
  }
  int t = lua_type(L, 2);
  if (p == NULL || p->pool == NULL || p->in_engine_call || !p->framed ||
      lua_type(L, 3) != LUA_TSTRING || !lua_isnoneornil(L, 4) || !lua_isnoneornil(L, 5) ||
      (t != LUA_TNIL && t != LUA_TSTRING) || !lua_isyieldable(L)) {
    return -1;
  }
  size_t len;
  const char *data = lua_tolstring(L, 3, &len);
  pp_peer_t *peer = NULL;
  if (t == LUA_TSTRING && (peer = pp_pool_find_peer(p->pool, lua_tostring(L, 2))) == NULL) {
    return -1; /* the general path explains */
  }
  lpp_state_t *st = p->st;
  /* The record first (it may raise, holding nothing yet); nothing below raises before the
   * yield. Then the lease, and the engine is handed what it will point at. */
  lpp_call_t *k = call_take(L, st);
  if (k == NULL) {
    return -1; /* the general path explains */
  }
  k->st = st;
  k->pool = p->pool;
  k->bytes = len <= LPP_CALL_INLINE ? k->small : malloc(len);
  if (k->bytes == NULL) {
    call_free(L, k);
    return -1;
  }
  memcpy(k->bytes, data, len);
  memset(&k->lease, 0, sizeof(k->lease));
  lpp_wait_begin_kept(L, &k->wait, k->co_slot);
  k->timed = (lpp_timed_t){NULL, NULL, 0};
  k->lease.data = k->req.data = k;
  k->buf = uv_buf_init(k->bytes, (unsigned int)len);
  int err = pp_try_acquire(p->pool, &k->lease, peer, NULL);
  /* No conn free now: wait for one here too (the acquire's callback sends). */
  if (err == PP_EAGAIN && pp_acquire(p->pool, &k->lease, peer, NULL, on_call_acquired) == 0)
    return lpp_wait_yield(L, st, 1, &k->wait);
  if (err != 0) {
    /* (k's lease is only written on success) */
    lpp_wait_cancel_kept(L, &k->wait);
    call_free(L, k);
    return -1; /* the general path explains */
  }
  err = call_send(L, p, k);
  if (err) {
    lpp_wait_cancel_kept(L, &k->wait);
    pp_release(&k->lease, 0);
    call_free(L, k);
    return lpp_push_error(L, err, NULL);
  }
  return lpp_wait_yield(L, st, 1, &k->wait);
}

static int request_general_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  return lua_gettop(L); /* the general function's answers, all that is left on the stack */
}

/* pool:request itself: the fast path, else the general function (upvalue 2, peerpool.lua's)
 * with the same arguments, returning what it returns (it may wait: called with a
 * continuation). */
static int l_request(lua_State *L) {
  int n = request_fast(L);
  if (n >= 0) return n;
  int nargs = lua_gettop(L);
  lua_pushvalue(L, lua_upvalueindex(2));
  lua_insert(L, 1);
  lua_callk(L, nargs, LUA_MULTRET, 0, request_general_k);
  return request_general_k(L, LUA_OK, 0);
}

int lpp_l_request_method(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &lpp_pool_mt_key);
  lua_pushvalue(L, 1);
  lua_pushcclosure(L, l_request, 2);
  return 1;
}
