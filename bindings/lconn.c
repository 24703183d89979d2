/* Conn objects: acquire (coroutine or callback), send, receive in the cosocket style
 * ("*l", "*a", a byte count; io_timeout, max_receive), release, close, and the GC rule: a conn
 * collected while still leased is closed (not the peer's failure) and counted as leaked. */
#include <stdlib.h>
#include <string.h>

#include "lpeerpool.h"

const char lpp_conn_mt_key = 0;

lpp_conn_t *lpp_check_conn(lua_State *L, int idx) {
  lpp_conn_t *c = lpp_toudata(L, idx, &lpp_conn_mt_key);
  if (c == NULL) c = luaL_checkudata(L, idx, LPP_CONN); /* raises, naming what it got */
  if (c->state == LPP_CONN_HOOK && c->hook_conn == NULL)
    luaL_error(L, "attempt to use a conn the pool took back from its hook");
  if (c->state != LPP_CONN_LEASED && c->state != LPP_CONN_HOOK)
    luaL_error(L, "attempt to use a released conn");
  return c;
}

pp_conn_t *lpp_conn_of(lpp_conn_t *c) {
  return c->state == LPP_CONN_HOOK ? c->hook_conn : c->lease.conn;
}

/* ---- acquire --------------------------------------------------------------------------- */

/* Push the error tuple for an acquire of `lease` that failed with `err`: nil, code, detail.
 * With busy, the detail is a notice armed for `peer`; otherwise the engine's one line of why
 * (pp_lease_describe: the peer's state, conns in use, waiters ahead, last error and when). */
int lpp_push_acquire_error(lua_State *L, lpp_pool_t *p, const pp_lease_t *lease, pp_peer_t *peer,
                           int err) {
  if (err == PP_EBUSY) {
    lua_pushnil(L);
    lua_pushstring(L, pp_err_name(err));
    lpp_push_notice(L, p, 1, peer);
    return 3;
  }
  char why[320];
  int n = err == PP_ECLOSED ? 0 : pp_lease_describe(lease, why, sizeof(why));
  if (n <= 0 && (err == UV_EMFILE || err == UV_ENFILE || err == UV_ENOMEM || err == UV_ENOBUFS))
    snprintf(why, sizeof(why), "%s: this process is short of a resource (not the peer's fault)",
             pp_strerror(err));
  else if (n <= 0)
    snprintf(why, sizeof(why), "%s", pp_strerror(err));
  return lpp_push_error(L, err, why);
}

static void copy_addr(lpp_conn_t *c, pp_peer_t *peer) {
  const char *addr = pp_peer_addr(peer);
  size_t n = strlen(addr);
  if (n >= sizeof(c->peer_addr)) n = sizeof(c->peer_addr) - 1;
  memcpy(c->peer_addr, addr, n);
  c->peer_addr[n] = '\0';
}

static void granted(lpp_conn_t *c) {
  c->state = LPP_CONN_LEASED;
  copy_addr(c, c->lease.peer);
  pp_conn_info_t info;
  pp_conn_info(c->lease.conn, &info);
  c->reused = info.leases - 1; /* now: a shared conn's count moves on with other leases */
}

static void on_acquired(pp_lease_t *lease, int status) {
  lpp_conn_t *c = lease->data;
  lpp_pool_t *p = c->owner;
  lua_State *L = p->L;
  if (status == 0)
    granted(c);
  else
    c->state = LPP_CONN_DONE;
  if (p->st->shutting_down) {
    if (status == 0) {
      pp_release(&c->lease, PP_EBROKEN);
      c->state = LPP_CONN_DONE;
    }
    lpp_unref(L, &c->wait.co_ref);
    lpp_unref(L, &c->cb_ref);
    lpp_unref(L, &c->self_ref);
    return;
  }
  if (c->wait.co_ref != LUA_NOREF) {
    lua_State *co = lpp_wait_take(L, &c->wait); /* anchored on L until we return */
    if (co == NULL) {
      /* The coroutine was closed, or resumed by the program, while it waited: nobody will
       * take the conn. */
      if (status == 0) {
        c->state = LPP_CONN_DONE;
        pp_release(&c->lease, 0);
      }
      lpp_unref(L, &c->self_ref);
      lua_pop(L, 1);
      return;
    }
    int n;
    if (status == 0) {
      lua_rawgeti(co, LUA_REGISTRYINDEX, c->self_ref);
      n = 1;
    } else {
      n = lpp_push_acquire_error(co, p, lease, NULL, status);
    }
    lpp_unref(L, &c->self_ref);
    lpp_resume(L, co, n, p);
    lua_pop(L, 1);
    return;
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, c->cb_ref);
  if (status == 0) {
    lua_pushnil(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, c->self_ref);
    lua_pushnil(L);
  } else {
    int n = lpp_push_acquire_error(L, p, lease, NULL, status);
    /* (nil, code, detail) -> (code, nil, detail) */
    lua_remove(L, -n);
    lua_pushnil(L);
    lua_insert(L, -2);
  }
  lpp_unref(L, &c->cb_ref);
  lpp_unref(L, &c->self_ref);
  lpp_call(L, 3, p);
}

int lpp_acquire(lua_State *L, lpp_pool_t *p, pp_peer_t *peer, const pp_acquire_opts_t *opts,
                int cb_idx) {
  if (cb_idx == 0 && !lua_isyieldable(L))
    return luaL_error(L,
                      "pool:acquire() without a callback must run inside a coroutine "
                      "(peerpool.run(fn), or a coroutine on the luv loop)");
  lpp_conn_t *c = lua_newuserdatauv(L, sizeof(*c), 3); /* 3: receive_until's delimiter */
  int obj = lua_gettop(L);
  memset(c, 0, sizeof(*c));
  c->self_ref = c->wait.co_ref = c->cb_ref = c->send_wait.co_ref = c->send_self_ref = LUA_NOREF;
  c->send_ms = c->read_ms = -1;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &lpp_conn_mt_key);
  lua_setmetatable(L, -2);
  c->owner = p;
  c->lease.data = c;
  lpp_leak_watch(L, p, c);
  lua_pushvalue(L, 1); /* the pool lives at least as long as its conn objects */
  lua_setiuservalue(L, -2, 1);
  pp_acquire_opts_t anchored = *opts;
  if (opts->key) {
    /* The engine keeps the key while the acquire waits: the conn object anchors the string
     * the engine points into (Lua strings never move). */
    lua_pushstring(L, opts->key);
    anchored.key = lua_tostring(L, -1);
    lua_setiuservalue(L, -2, 2);
  }
  opts = &anchored;
  int err;
  if (cb_idx == 0) {
    err = pp_try_acquire(p->pool, &c->lease, peer, opts);
    if (err == 0) {
      granted(c);
      return 1;
    }
    if (err != PP_EAGAIN) return lpp_push_acquire_error(L, p, &c->lease, peer, err);
  }
  /* Anchor first, then register with the engine: an anchor that fails (out of memory) must
   * not leave the engine pointing at an object the collector may free. */
  lua_pushvalue(L, -1);
  c->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  if (cb_idx) {
    lua_pushvalue(L, cb_idx);
    c->cb_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  } else {
    lpp_wait_begin(L, &c->wait);
  }
  err = pp_acquire(p->pool, &c->lease, peer, opts, on_acquired);
  if (err) {
    if (cb_idx)
      lpp_unref(L, &c->cb_ref);
    else
      lpp_wait_cancel(L, &c->wait);
    lpp_unref(L, &c->self_ref);
    return lpp_push_acquire_error(L, p, &c->lease, peer, err);
  }
  c->state = LPP_CONN_PENDING;
  if (cb_idx) {
    lua_pushboolean(L, 1);
    return 1;
  }
  return lpp_wait_yield(L, p->st, obj, &c->wait);
}

/* ---- receive --------------------------------------------------------------------------- */

/* The receive buffer holds c->len unread bytes at c->buf + c->off; the first c->scanned of
 * them are known to hold no newline, so "*l" scans only new bytes. */

static char *unread(lpp_conn_t *c) {
  return c->buf + c->off;
}

static void consume(lpp_conn_t *c, size_t n) {
  c->off += n;
  c->len -= n;
  c->scanned = c->scanned > n ? c->scanned - n : 0;
  if (c->len == 0) c->off = 0;
}

/* The end of the first line, or NULL. */
static char *find_newline(lpp_conn_t *c) {
  if (c->scanned >= c->len) return NULL;
  char *nl = memchr(unread(c) + c->scanned, '\n', c->len - c->scanned);
  c->scanned = nl ? (size_t)(nl - unread(c)) : c->len;
  return nl;
}

/* The first `needle` in hay[0, n) (memmem is a GNU extension: memchr for its first byte). */
static char *find_bytes(char *hay, size_t n, const char *needle, size_t nl) {
  char *end = hay + n;
  while ((size_t)(end - hay) >= nl) {
    char *p = memchr(hay, needle[0], (size_t)(end - hay) - nl + 1);
    if (p == NULL) return NULL;
    if (memcmp(p + 1, needle + 1, nl - 1) == 0) return p;
    hay = p + 1;
  }
  return NULL;
}

/* The start of the first delimiter (receive_until), or NULL. Each call scans only what the last
 * one had not ruled out: the bytes that arrived since, plus the delimiter's length less one. */
static char *find_delim(lpp_conn_t *c) {
  size_t dl = c->delim_len;
  if (c->len < dl) return NULL;
  char *base = unread(c);
  char *hit = find_bytes(base + c->dscanned, c->len - c->dscanned, c->delim, dl);
  if (hit) {
    c->dscanned = (size_t)(hit - base);
    return hit;
  }
  c->dscanned = c->len - (dl - 1);
  return NULL;
}

/* Append n bytes; 0, or UV_ENOMEM. */
static int append(lpp_conn_t *c, const char *data, size_t n) {
  if (n == 0) return 0;
  if (c->off + c->len + n > c->cap && c->off > 0) {
    memmove(c->buf, unread(c), c->len);
    c->off = 0;
  }
  if (c->len + n > c->cap) {
    size_t cap = c->cap ? c->cap : 1024;
    while (cap < c->len + n)
      cap *= 2;
    char *b = realloc(c->buf, cap);
    if (b == NULL) return UV_ENOMEM;
    c->buf = b;
    c->cap = cap;
  }
  memcpy(c->buf + c->off + c->len, data, n);
  c->len += n;
  return 0;
}

static void drop_buffer(lpp_conn_t *c) {
  free(c->buf);
  c->buf = NULL;
  c->off = c->len = c->cap = c->scanned = 0;
}

/* Whether the wanted pattern can no longer be met within the pool's max_receive. */
static int too_long(lpp_conn_t *c) {
  size_t max = (size_t)c->owner->max_receive;
  switch (c->want_kind) {
    case 'l':
      return c->len >= max && c->scanned >= max;
    case 'a':
      return c->len > max;
    case 'u': /* no delimiter starts within the first max bytes */
      return c->dscanned > max;
    default:
      return 0;
  }
}

/* Whether the buffer satisfies the wanted pattern (without consuming it). Within max_receive
 * as too_long counts it, whether the bytes came in one read or many. */
static int ready(lpp_conn_t *c) {
  size_t max = (size_t)c->owner->max_receive;
  switch (c->want_kind) {
    case 'l':
      return find_newline(c) != NULL && c->scanned < max;
    case 'n':
      return c->len >= c->want_n;
    case 'u':
      return find_delim(c) != NULL && c->dscanned <= max;
    case 'r': /* with framing: the oldest request's reply (lrequest.c) */
      return lpp_req_ready(c);
    default: /* 'a': everything, once the stream has ended */
      return c->read_error != 0 && c->len <= max;
  }
}

/* If the buffer satisfies the wanted pattern, push the result and consume it: how many values
 * were pushed; else 0. */
static int take(lua_State *L, lpp_conn_t *c) {
  if (c->want_kind == 'r') return lpp_req_take(L, c);
  if (!ready(c)) return 0;
  size_t n;
  switch (c->want_kind) {
    case 'l': {
      n = c->scanned; /* find_newline left it at the newline */
      lua_pushlstring(L, unread(c), n > 0 && unread(c)[n - 1] == '\r' ? n - 1 : n);
      n++;
      break;
    }
    case 'n':
      n = c->want_n;
      lua_pushlstring(L, unread(c), n);
      break;
    case 'u': /* find_delim left dscanned at the delimiter, which is consumed too */
      lua_pushlstring(L, unread(c), c->dscanned);
      n = c->dscanned + c->delim_len;
      break;
    default:
      n = c->len;
      lua_pushlstring(L, unread(c), n);
      break;
  }
  consume(c, n);
  c->unanswered = 0;
  return 1;
}

/* Push the outcome of a receive that cannot wait: data, or nil, code, partial. */
static int push_receive_end(lua_State *L, lpp_conn_t *c, int err) {
  lua_pushnil(L);
  lua_pushstring(L, err == UV_EOF || err == PP_ECLOSED ? "closed" : pp_err_name(err));
  lua_pushlstring(L, unread(c), c->len); /* the partial data, as cosockets do */
  if (err != PP_ETIMEDOUT) consume(c, c->len);
  return 3;
}

static void end_lease(lua_State *L, lpp_conn_t *c, int status);
static void finish_receive_unbudgeted(lpp_conn_t *c, int err);

/* A reply over max_receive: the conn is closed (without blaming the peer: the limit is ours),
 * and the caller gets nil, "too_long", detail. */
static int fail_too_long(lua_State *L, lpp_conn_t *c) {
  char msg[96];
  snprintf(msg, sizeof(msg), "no %s within max_receive (%zu bytes); conn closed",
           c->want_kind == 'l'   ? "end of line"
           : c->want_kind == 'u' ? "delimiter"
                                 : "end of stream",
           (size_t)c->owner->max_receive);
  c->want_kind = 0;
  end_lease(L, c, LPP_NOREUSE);
  return lpp_push_error(L, PP_ETOOLONG, msg);
}

/* ---- io_timeout: the pool's list of waiting receives, one timer for all ----------------- */

static void on_io_timeout(uv_timer_t *timer);

static void unlist_receive(lpp_conn_t *c) {
  lpp_timed_remove(&c->owner->receives, &c->timed);
}

/* In deadline order: a shorter per-conn or per-call timeout goes ahead of the pool's. */
static void list_receive(lua_State *L, lpp_conn_t *c, int64_t ms) {
  lpp_pool_t *p = c->owner;
  lpp_timed_add(L, p, &p->receives, &c->timed, pp_now() + (uint64_t)ms, on_io_timeout);
}

/* A receive's timeout: the call's, else the conn's (settimeouts), else the pool's io_timeout;
 * 0 waits without one. */
static int64_t read_timeout(lpp_conn_t *c, int64_t call_ms) {
  if (call_ms >= 0) return call_ms;
  return c->read_ms >= 0 ? c->read_ms : c->owner->io_timeout;
}

/* The optional timeout argument at idx: milliseconds >= 0, or -1 when absent. */
static int64_t opt_timeout(lua_State *L, int idx) {
  if (lua_isnoneornil(L, idx)) return -1;
  lua_Integer ms = luaL_checkinteger(L, idx);
  luaL_argcheck(L, ms >= 0, idx, "timeout must be milliseconds >= 0");
  return (int64_t)ms;
}

/* Nothing waits in receive any more: drop the anchors and the deadline. */
static void stop_waiting(lua_State *L, lpp_conn_t *c) {
  unlist_receive(c);
  c->want_kind = 0;
  lpp_unref(L, &c->wait.co_ref);
  lpp_unref(L, &c->self_ref);
}

static void finish_receive(lpp_conn_t *c, int err) {
  lpp_budget_t *outside = lpp_budget_enter(NULL); /* (a hook's code may have caused this) */
  finish_receive_unbudgeted(c, err);
  lpp_budget_leave(outside);
}

static void finish_receive_unbudgeted(lpp_conn_t *c, int err) {
  lpp_pool_t *p = c->owner;
  lua_State *L = p->L;
  unlist_receive(c);
  /* A reply still on its way would be read by the conn's next holder as its own. */
  if (err == PP_ETIMEDOUT || err == PP_ETOOLONG) c->tainted = 1;
  lua_State *co = lpp_wait_take(L, &c->wait); /* anchored on L until we return */
  if (co == NULL) { /* closed, or resumed by the program, while it waited: data stays buffered */
    stop_waiting(L, c);
    lua_pop(L, 1);
    return;
  }
  int n;
  if (c->want_kind == 'r' && err == PP_ETIMEDOUT) {
    lpp_req_timed_out(c); /* the shared conn breaks: reply order is lost */
    n = lpp_push_error(co, PP_ETIMEDOUT,
                       "no reply within io_timeout; the shared conn was closed and the "
                       "requests behind this one fail with pipeline_broken");
  } else if (c->want_kind == 'r' && err) {
    n = lpp_push_error(co, err == UV_EOF ? PP_ECLOSED : err, NULL);
  } else if (err == PP_ETOOLONG) {
    consume(c, c->len);
    n = fail_too_long(co, c);
  } else {
    n = err ? push_receive_end(co, c, err) : take(co, c);
  }
  c->want_kind = 0;
  lpp_unref(L, &c->self_ref);
  if (p->st->shutting_down)
    lua_pop(co, n);
  else
    lpp_resume(L, co, n, p);
  lua_pop(L, 1);
}

/* The reader's argument is this token, not the userdata: when the conn object is collected
 * while the engine still owes its reader a final call (its pool closed under it), the token
 * outlives it and that last call frees it. */
typedef struct lpp_reader_s {
  lpp_conn_t *c; /* NULL once the conn object stopped listening */
} lpp_reader_t;

#define LPP_RECV_BUFFER_MAX (64 * 1024) /* past this, unread bytes wait in the engine */

static void on_read(pp_conn_t *conn, ssize_t nread, const char *data, void *arg);

static int start_reading(lpp_conn_t *c, pp_conn_t *conn) {
  if (c->reader) return 0;
  lpp_reader_t *t = malloc(sizeof(*t));
  if (t == NULL) return UV_ENOMEM;
  t->c = c;
  int err = pp_conn_read_start(conn, on_read, t);
  if (err) {
    free(t);
    return err;
  }
  c->reader = t;
  return 0;
}

/* Stop listening. With the conn still there the engine calls no more; without it (detached by
 * a pool close) one final call is owed, which frees the orphaned token. */
static void stop_reading(lpp_conn_t *c, pp_conn_t *conn) {
  lpp_reader_t *t = c->reader;
  if (t == NULL) return;
  c->reader = NULL;
  if (conn) {
    pp_conn_read_stop(conn);
    free(t);
  } else {
    t->c = NULL;
  }
}

static void on_read(pp_conn_t *conn, ssize_t nread, const char *data, void *arg) {
  lpp_reader_t *t = arg;
  lpp_conn_t *c = t->c;
  if (nread < 0) free(t); /* the engine's last call to this reader */
  if (c == NULL) return;
  if (nread < 0) {
    c->read_error = (int)nread;
    c->reader = NULL;
  } else if (append(c, data, (size_t)nread) != 0) {
    c->read_error = UV_ENOMEM;
    stop_reading(c, conn);
    if (c->wait.co_ref != LUA_NOREF) finish_receive(c, UV_ENOMEM);
    return;
  }
  if (c->wait.co_ref == LUA_NOREF) {
    /* Nobody is receiving: past a bound, let the engine hold (and pause) the stream. */
    if (c->len >= LPP_RECV_BUFFER_MAX) stop_reading(c, conn);
    return;
  }
  /* "*a" is satisfied by the end of the stream; others fail on it. */
  if (ready(c))
    finish_receive(c, 0);
  else if (too_long(c))
    finish_receive(c, PP_ETOOLONG);
  else if (c->read_error)
    finish_receive(c, c->read_error);
}

static void on_io_timeout(uv_timer_t *timer) {
  lpp_pool_t *p = timer->data;
  if (p == NULL) return;
  uint64_t now = pp_now();
  /* finish_receive unlists the head; a resumed coroutine may list new receives at the tail */
  while (p->receives.head && p->receives.head->at <= now)
    finish_receive(LPP_CONTAINER(p->receives.head, lpp_conn_t, timed), PP_ETIMEDOUT);
  lpp_timed_arm(p->L, p, &p->receives, on_io_timeout);
}

void lpp_receive_wake(lpp_conn_t *c) {
  if (c->wait.co_ref != LUA_NOREF) finish_receive(c, 0);
}

/* receive() on a conn of a pool with framing: the lease's next whole reply, in the order its
 * requests were sent. receive(0) answers "" (as for any conn); receive(nil, ms) times out. */
static int receive_reply(lua_State *L, lpp_conn_t *c) {
  if (lua_type(L, 2) == LUA_TNUMBER && lua_tointeger(L, 2) == 0) {
    lua_pushliteral(L, "");
    return 1;
  }
  if (!lua_isnoneornil(L, 2))
    return luaL_argerror(L, 2,
                         "a pool with framing has no receive patterns: receive() returns the "
                         "next whole reply");
  int64_t call_ms = opt_timeout(L, 3);
  c->want_kind = 'r';
  int n = take(L, c);
  if (n) {
    c->want_kind = 0;
    return n;
  }
  c->want_kind = 0;
  if (c->rq_head == NULL)
    return lpp_push_error(L, PP_ESTATE, "nothing sent on this conn awaits a reply");
  if (!lua_isyieldable(L))
    return luaL_error(L, "conn:receive() must run inside a coroutine (peerpool.run(fn))");
  lpp_wait_begin(L, &c->wait); /* anchored first: see lpp_acquire */
  lua_pushvalue(L, 1);
  c->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  c->want_kind = 'r';
  int64_t ms = read_timeout(c, call_ms);
  if (ms > 0) list_receive(L, c, ms);
  return lpp_wait_yield(L, c->owner->st, 1, &c->wait);
}

/* The wanted pattern is set: answer from the buffer, or wait in the coroutine for more. */
static int receive_wanted(lua_State *L, lpp_conn_t *c, int64_t call_ms) {
  if (take(L, c)) return 1;
  if (too_long(c)) return fail_too_long(L, c);
  if (c->read_error) return push_receive_end(L, c, c->read_error);
  pp_conn_t *conn = lpp_conn_of(c);
  if (conn == NULL) return push_receive_end(L, c, PP_ECLOSED);
  if (!lua_isyieldable(L))
    return luaL_error(L, "conn:receive() must run inside a coroutine (peerpool.run(fn))");
  lpp_wait_begin(L, &c->wait); /* anchored first: see lpp_acquire */
  lua_pushvalue(L, 1);
  c->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  int err = start_reading(c, conn);
  if (err) {
    stop_waiting(L, c);
    return push_receive_end(L, c, err);
  }
  int64_t ms = read_timeout(c, call_ms);
  if (ms > 0) list_receive(L, c, ms);
  return lpp_wait_yield(L, c->owner->st, 1, &c->wait);
}

/* The conn's receive may start: no other waits (one whose coroutine was closed or resumed by
 * the program waits no more). */
static lpp_conn_t *check_receive(lua_State *L) {
  lpp_conn_t *c = lpp_check_conn(L, 1);
  if (c->wait.co_ref != LUA_NOREF && !lpp_wait_active(L, &c->wait)) stop_waiting(L, c);
  luaL_argcheck(L, c->wait.co_ref == LUA_NOREF, 1, "a receive is already waiting on this conn");
  return c;
}

/* conn:receive([pattern [, timeout_ms]]) */
static int l_receive(lua_State *L) {
  lpp_conn_t *c = check_receive(L);
  if (c->owner->framed) return receive_reply(L, c);
  int64_t call_ms = opt_timeout(L, 3);
  c->want_kind = 'l';
  if (lua_type(L, 2) == LUA_TNUMBER) {
    lua_Integer n = luaL_checkinteger(L, 2);
    luaL_argcheck(L, n >= 0, 2, "byte count must be >= 0");
    if (n == 0) {
      c->want_kind = 0;
      lua_pushliteral(L, "");
      return 1;
    }
    if (n > c->owner->max_receive) {
      char msg[96];
      c->want_kind = 0;
      snprintf(msg, sizeof(msg), "%lld bytes is over the pool's max_receive (%lld)", (long long)n,
               (long long)c->owner->max_receive);
      return lpp_push_error(L, PP_ETOOLONG, msg);
    }
    c->want_kind = 'n';
    c->want_n = (size_t)n;
  } else if (!lua_isnoneornil(L, 2)) {
    const char *pat = luaL_checkstring(L, 2);
    if (*pat == '*') pat++;
    luaL_argcheck(L, strcmp(pat, "l") == 0 || strcmp(pat, "a") == 0, 2,
                  "pattern must be \"*l\", \"*a\" or a byte count");
    c->want_kind = pat[0];
  }
  return receive_wanted(L, c, call_ms);
}

/* conn:receive_until(delim [, timeout_ms]): the bytes before the next `delim` (which is read
 * and dropped), within max_receive. Scans each byte about once however the data arrives. */
static int l_receive_until(lua_State *L) {
  lpp_conn_t *c = check_receive(L);
  size_t dl;
  const char *delim = luaL_checklstring(L, 2, &dl);
  luaL_argcheck(L, dl > 0, 2, "delimiter must not be empty");
  int64_t call_ms = opt_timeout(L, 3);
  if (c->owner->framed)
    return luaL_error(L,
                      "conn:receive_until() is not available on a pool with framing "
                      "(receive() returns each whole reply)");
  lua_pushvalue(L, 2); /* the delimiter lives in user value 3 while we point into it */
  lua_setiuservalue(L, 1, 3);
  c->delim = delim;
  c->delim_len = dl;
  c->dscanned = 0;
  c->want_kind = 'u';
  return receive_wanted(L, c, call_ms);
}

/* conn:settimeouts(connect_ms, send_ms, read_ms): this lease's send and receive timeouts
 * (nil: the pool's io_timeout; 0: none), as OpenResty's cosocket. connect_ms is accepted for
 * code written for cosockets and has no effect: the conn was dialled before it was lent,
 * under the pool's connect_timeout. */
static int l_settimeouts(lua_State *L) {
  lpp_conn_t *c = lpp_check_conn(L, 1);
  if (!lua_isnoneornil(L, 2)) {
    lua_Integer ms = luaL_checkinteger(L, 2);
    luaL_argcheck(L, ms >= 0, 2, "timeout must be milliseconds >= 0");
  }
  int64_t send_ms = opt_timeout(L, 3), read_ms = opt_timeout(L, 4);
  c->send_ms = send_ms;
  c->read_ms = read_ms;
  lua_settop(L, 1);
  return 1;
}

/* conn:reused(): how many leases this conn served before this one (0: a new conn). */
static int l_reused(lua_State *L) {
  lpp_conn_t *c = lpp_check_conn(L, 1);
  lua_pushinteger(L, (lua_Integer)c->reused);
  return 1;
}

/* ---- release --------------------------------------------------------------------------- */

/* Hand this object's unread bytes back to `conn` for its next reader, on a chatty pool
 * (keep_idle_bytes). 1: handed back, or none to hand; 0: not a chatty pool (or no conn);
 * -1: the engine could not keep them. */
static int keep_unread(lpp_conn_t *c, pp_conn_t *conn) {
  if (c->len == 0) return 1;
  pp_pool_t *pool = c->owner->pool;
  if (!pool || !pp_pool_options(pool)->keep_idle_bytes || !conn) return 0;
  return pp_conn_unread(conn, unread(c), c->len) == 0 ? 1 : -1;
}

/* End the lease: status 0 gives the conn back; LPP_NOREUSE closes it without blaming the
 * peer; PP_EBROKEN (or a socket error) closes it as the peer's failure. A conn that may still
 * have a reply on its way — a receive waiting in another coroutine, one that timed out, unread
 * bytes — is never lent again: it is closed, without blame (except on a framed pool, where each
 * reply goes to its own request whoever holds the conn). */
static void end_lease(lua_State *L, lpp_conn_t *c, int status) {
  if (c->state != LPP_CONN_LEASED) return;
  int waiting = 0;
  if (c->wait.co_ref != LUA_NOREF) {
    waiting = lpp_wait_active(L, &c->wait);
    if (!waiting) stop_waiting(L, c); /* its coroutine left the wait: nothing waits any more */
  }
  /* A request whose reply was never read (sent after the last receive, or still queued) may be
   * answered later: the next holder would read that answer as its own. Protocols without
   * replies keep_idle_bytes (their conns' unsolicited bytes are expected). */
  pp_pool_t *owner_pool = c->owner->pool;
  int chatty = owner_pool && pp_pool_options(owner_pool)->keep_idle_bytes;
  /* With framing every reply goes to its own request: a reply still on its way is no one
   * else's, so the conn stays clean (its requests just forget this object). */
  int framed = c->owner->framed;
  int in_flight = !chatty && !framed &&
                  (c->unanswered || (c->lease.conn && pp_conn_write_queue_size(c->lease.conn) > 0));
  if (framed) lpp_req_detach_all(L, c);
  if (status == 0 && !framed && (waiting || c->tainted || in_flight)) status = LPP_NOREUSE;
  stop_reading(c, c->lease.conn);
  /* Unread bytes: for a chatty protocol (keep_idle_bytes) the next holder reads them;
   * otherwise they are a reply nobody will read, and the conn is not clean. */
  if (status == 0 && keep_unread(c, c->lease.conn) != 1) status = LPP_NOREUSE;
  if (c->send_wait.co_ref != LUA_NOREF && status == 0)
    status = LPP_NOREUSE;   /* half a request out */
  c->state = LPP_CONN_DONE; /* before anything can run: a reentrant release is a no-op */
  pp_release(&c->lease, status);
  lpp_send_wake(c, PP_ECLOSED);
  if (waiting) {
    c->read_error = PP_ECLOSED;
    finish_receive(c, PP_ECLOSED);
  }
  drop_buffer(c);
}

/* ---- conns lent to handshake/ping hooks -------------------------------------------------- */

lpp_conn_t *lpp_push_hook_conn(lua_State *L, lpp_pool_t *p, pp_conn_t *conn, int kind) {
  lpp_conn_t *c = lua_newuserdatauv(L, sizeof(*c), 3);
  memset(c, 0, sizeof(*c));
  c->self_ref = c->wait.co_ref = c->cb_ref = c->send_wait.co_ref = c->send_self_ref = LUA_NOREF;
  c->send_ms = c->read_ms = -1;
  luaL_setmetatable(L, LPP_CONN);
  c->owner = p;
  c->state = LPP_CONN_HOOK;
  c->hook_conn = conn;
  c->hook_kind = kind;
  copy_addr(c, pp_conn_peer(conn));
  lpp_push_pool(L, p);
  lua_setiuservalue(L, -2, 1);
  pp_conn_set_data(conn, c);
  return c;
}

/* Hand the conn back to the engine; the hook's reader ends with it. */
static void hook_conn_detach(lpp_conn_t *c) {
  stop_reading(c, c->hook_conn);
  lpp_req_detach_all(c->owner->L, c);
  if (c->hook_conn) pp_conn_set_data(c->hook_conn, NULL);
  c->hook_conn = NULL;
}

void lpp_hook_conn_dead(lpp_conn_t *c) {
  hook_conn_detach(c);
  lpp_send_wake(c, PP_ECLOSED);
  c->read_error = PP_ECLOSED;
  if (c->wait.co_ref != LUA_NOREF) finish_receive(c, PP_ECLOSED);
}

void lpp_hook_conn_done(lpp_conn_t *c, int ok) {
  if (c->state != LPP_CONN_HOOK || c->hook_conn == NULL) return;
  pp_conn_t *conn = c->hook_conn;
  /* Bytes that came with the hook's answer (a P2P peer's first message in the same read as
   * its VERACK) belong to the conn's first holder on a chatty pool, as a holder's unread bytes
   * do at release; elsewhere they are an answer nobody asked for, dropped. */
  if (ok && keep_unread(c, conn) < 0) ok = 0;
  int status = ok ? 0 : (c->hook_kind == LPP_HOOK_HANDSHAKE ? PP_EHANDSHAKE : PP_EPING);
  hook_conn_detach(c);
  lpp_send_wake(c, PP_ECLOSED);
  c->state = LPP_CONN_DONE;
  if (c->hook_kind == LPP_HOOK_HANDSHAKE)
    pp_conn_handshake_done(conn, status);
  else
    pp_conn_ping_done(conn, status);
}

/* How to end a lease whose protocol state the program lost (an error left its scope, it was
 * collected): closed, without blame. On a framed conn every reply goes to its own request, so
 * the state is never the lease's: the conn stays with the leases sharing it. */
static int unknown_state(lpp_conn_t *c) {
  return c->owner->framed ? 0 : LPP_NOREUSE;
}

static void check_not_in_hook(lua_State *L, lpp_conn_t *c) {
  if (c->state == LPP_CONN_LEASED && c->owner->in_engine_call) luaL_error(L, LPP_IN_HOOK_ERROR);
}

static int l_release(lua_State *L) {
  lpp_conn_t *c = lpp_toudata(L, 1, &lpp_conn_mt_key);
  if (c == NULL) c = luaL_checkudata(L, 1, LPP_CONN);
  if (c->state == LPP_CONN_HOOK)
    return luaL_error(L, "a hook's conn goes back to the pool when the hook returns");
  check_not_in_hook(L, c);
  int was = c->state == LPP_CONN_LEASED;
  end_lease(L, c, 0);
  lua_pushboolean(L, was);
  return 1;
}

/* conn:close([verdict]): the conn is closed, not lent again. Without a verdict the peer is not
 * blamed (a caller's ordinary close: Connection: close, a protocol state the caller gave up
 * on); close("broken") counts a failure of the peer (it misbehaved). */
static int l_close(lua_State *L) {
  lpp_conn_t *c = luaL_checkudata(L, 1, LPP_CONN);
  if (c->state == LPP_CONN_HOOK)
    return luaL_error(L, "a hook fails its conn by returning false (or raising)");
  int status = LPP_NOREUSE;
  if (!lua_isnoneornil(L, 2)) {
    const char *verdict = luaL_checkstring(L, 2);
    luaL_argcheck(L, strcmp(verdict, "broken") == 0, 2, "verdict must be \"broken\" or nil");
    status = PP_EBROKEN;
  }
  check_not_in_hook(L, c);
  int was = c->state == LPP_CONN_LEASED;
  end_lease(L, c, status);
  lua_pushboolean(L, was);
  return 1;
}

/* __close: released, or closed (the peer not blamed: the error was the program's) when the
 * scope is left by an error. */
static int l_close_scope(lua_State *L) {
  lpp_conn_t *c = luaL_checkudata(L, 1, LPP_CONN);
  if (c->state == LPP_CONN_HOOK) return 0;
  check_not_in_hook(L, c);
  end_lease(L, c, lua_isnoneornil(L, 2) ? 0 : unknown_state(c));
  return 0;
}

static int l_gc(lua_State *L) {
  lpp_conn_t *c = luaL_checkudata(L, 1, LPP_CONN);
  if (c->state == LPP_CONN_LEASED && c->owner->in_engine_call && !c->owner->st->shutting_down) {
    /* A hook ran the collector: releasing now would change the pool under the engine. */
    lpp_finalize_later(L, 1);
    return 0;
  }
  /* A receive still waiting here means Lua is closing (the wait anchors the object): the
   * waiting coroutine is not resumed from a finaliser. */
  stop_waiting(L, c);
  lpp_send_detach(c);
  lpp_req_detach_all(L, c);
  if (c->state == LPP_CONN_HOOK && c->hook_conn) hook_conn_detach(c);
  stop_reading(c, lpp_conn_of(c)); /* e.g. a lease its pool's close detached */
  if (c->state == LPP_CONN_LEASED) {
    c->owner->leaked_leases++;
    end_lease(L, c, unknown_state(c)); /* our program's leak, not the peer's failure */
  }
  drop_buffer(c);
  return 0;
}

static int l_tostring(lua_State *L) {
  lpp_conn_t *c = luaL_checkudata(L, 1, LPP_CONN);
  const char *state = c->state == LPP_CONN_LEASED    ? "leased"
                      : c->state == LPP_CONN_PENDING ? "pending"
                      : c->state == LPP_CONN_HOOK    ? "in a hook"
                                                     : "released";
  lua_pushfstring(L, "peerpool.conn (%s, %s): %p", c->peer_addr[0] ? c->peer_addr : "-", state,
                  (void *)c);
  return 1;
}

/* __index: the methods (upvalue 1) first — the common case — then the `peer` field. */
static int l_index(lua_State *L) {
  lua_pushvalue(L, 2);
  if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL) return 1;
  lpp_conn_t *c = luaL_checkudata(L, 1, LPP_CONN);
  const char *key = lua_tostring(L, 2);
  lua_pushstring(L, key && strcmp(key, "peer") == 0 ? c->peer_addr : NULL); /* NULL: nil */
  return 1;
}

/* The engine's conn behind argument 1, a conn; NULL once its lease ended. */
static pp_conn_t *arg_conn(lua_State *L) {
  return lpp_conn_of(luaL_checkudata(L, 1, LPP_CONN));
}

/* conn:alpn(): the protocol the server chose by ALPN on a TLS conn ("h2"), or nil (a plain
 * conn, none offered or chosen, or the lease ended). */
static int l_alpn(lua_State *L) {
  pp_conn_t *conn = arg_conn(L);
  lua_pushstring(L, conn ? pp_conn_tls_alpn(conn) : NULL);
  return 1;
}

/* conn:address(): the address this conn dialled ("10.0.0.5:6379", "[::1]:6379": for a peer
 * named by a host name, the resolved address it uses), or nil (a unix socket, the lease
 * ended). */
static int l_address(lua_State *L) {
  pp_conn_t *conn = arg_conn(L);
  char buf[64];
  lua_pushstring(L, conn && pp_conn_address(conn, buf, sizeof buf) == 0 && buf[0] ? buf : NULL);
  return 1;
}

static const luaL_Reg conn_methods[] = {
    {"send", lpp_l_send},
    {"receive", l_receive},
    {"receive_until", l_receive_until},
    {"settimeouts", l_settimeouts},
    {"reused", l_reused},
    {"release", l_release},
    {"close", l_close},
    {"alpn", l_alpn},
    {"address", l_address},
    {NULL, NULL},
};

static const luaL_Reg conn_meta[] = {
    {"__gc", l_gc},
    {"__close", l_close_scope},
    {"__tostring", l_tostring},
    {NULL, NULL},
};

void lpp_conn_open(lua_State *L) {
  if (lpp_new_class(L, LPP_CONN, conn_methods, conn_meta)) {
    /* __index becomes l_index, which looks in the methods table first (its upvalue). */
    lua_getfield(L, -1, "__index");
    lua_pushvalue(L, -1);
    lua_setfield(L, -3, "methods");
    lua_pushcclosure(L, l_index, 1);
    lua_setfield(L, -2, "__index");
  }
  lua_rawsetp(L, LUA_REGISTRYINDEX, &lpp_conn_mt_key);
}
