/* conn:send(data [, callback]) with backpressure. Bytes the socket does not take at once are
 * queued in the engine; past the pool's max_send_queue a send does not add more without
 * waiting: in a coroutine it waits (up to io_timeout) for the queue to drain below the mark,
 * elsewhere it answers busy. With a callback, callback(err) says when the data has been
 * written (nil) or failed (a code). So a peer that never reads holds at most about
 * max_send_queue bytes of ours, plus the send in progress. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "lpeerpool.h"

/* A queued write. Writes complete in order; the conn keeps them in a list so that a conn
 * collected first can tell them it is gone (w->c = NULL). */
typedef struct write_s {
  pp_write_t req;
  lpp_conn_t *c;
  lpp_state_t *st;
  struct write_s *prev, *next;
  int cb_ref; /* callback(err), or LUA_NOREF */
  char data[];
} write_t;

static void unlink_write(write_t *w) {
  lpp_conn_t *c = w->c;
  if (c == NULL) return;
  if (w->prev)
    w->prev->next = w->next;
  else
    c->writes = w->next;
  if (w->next) w->next->prev = w->prev;
  w->c = NULL;
}

static size_t queued(lpp_conn_t *c) {
  pp_conn_t *conn = lpp_conn_of(c);
  return conn ? pp_conn_write_queue_size(conn) : 0;
}

static int error_code(int err) {
  return err == UV_EOF || err == UV_ECANCELED ? PP_ECLOSED : err;
}

/* The coroutine waiting for the queue to drain goes on: with `err`, or true. */
void lpp_send_wake(lpp_conn_t *c, int err) {
  if (c->send_wait.co_ref == LUA_NOREF) return;
  lpp_budget_t *outside = lpp_budget_enter(NULL); /* (a hook's code may have caused this) */
  lua_State *L = c->owner->L;
  if (c->send_timer) uv_timer_stop(c->send_timer);
  lua_State *co = lpp_wait_take(L, &c->send_wait);
  lpp_unref(L, &c->send_self_ref);
  if (err == PP_ETIMEDOUT) c->tainted = 1; /* part of a request may be on the wire */
  if (co && !c->owner->st->shutting_down) {
    int n = 1;
    if (err)
      n = lpp_push_error(co, err == PP_ETIMEDOUT ? PP_ETIMEDOUT : error_code(err),
                         err == PP_ETIMEDOUT ? "the peer did not read within io_timeout" : NULL);
    else
      lua_pushinteger(co, (lua_Integer)c->send_len);
    lpp_resume(L, co, n, c->owner);
  }
  lua_pop(L, 1);
  lpp_budget_leave(outside);
}

static void on_written(pp_write_t *req, int status) {
  write_t *w = (write_t *)req;
  /* The write stays linked to its conn while the callback runs: a conn object the callback
   * (or a collection at its entry) frees sets w->c to NULL, so w->c is read again after. */
  if (w->cb_ref != LUA_NOREF) {
    lua_State *L = w->st->L;
    if (w->st->shutting_down) {
      luaL_unref(L, LUA_REGISTRYINDEX, w->cb_ref);
    } else {
      lua_rawgeti(L, LUA_REGISTRYINDEX, w->cb_ref);
      luaL_unref(L, LUA_REGISTRYINDEX, w->cb_ref);
      if (status)
        lua_pushstring(L, pp_err_name(error_code(status)));
      else
        lua_pushnil(L);
      lpp_call(L, 1, w->c ? w->c->owner : NULL);
    }
  }
  lpp_conn_t *c = w->c;
  unlink_write(w);
  free(w);
  if (c && c->send_wait.co_ref != LUA_NOREF &&
      (status != 0 || queued(c) <= (size_t)c->owner->max_send_queue))
    lpp_send_wake(c, status);
}

static void on_send_timeout(uv_timer_t *t) {
  lpp_conn_t *c = t->data;
  if (c) lpp_send_wake(c, PP_ETIMEDOUT);
}

void lpp_send_detach(lpp_conn_t *c) {
  while (c->writes)
    unlink_write(c->writes);
  lpp_timer_drop(&c->send_timer);
}

/* Queue what the socket did not take; 0 or an error code. */
static int queue_rest(lua_State *L, lpp_conn_t *c, pp_conn_t *conn, const char *data, size_t len,
                      int cb_idx) {
  write_t *w = malloc(sizeof(*w) + len);
  if (w == NULL) return UV_ENOMEM;
  memcpy(w->data, data, len);
  w->c = c;
  w->st = c->owner->st;
  w->cb_ref = LUA_NOREF;
  uv_buf_t buf = uv_buf_init(w->data, (unsigned int)len);
  int err = pp_conn_write(&w->req, conn, &buf, 1, on_written);
  if (err) {
    free(w);
    return error_code(err);
  }
  w->prev = NULL;
  w->next = c->writes;
  if (c->writes) c->writes->prev = w;
  c->writes = w;
  if (cb_idx) {
    lua_pushvalue(L, cb_idx);
    w->cb_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  return 0;
}

/* conn:send(data [, callback]) -> bytes, or nil, code, detail */
int lpp_l_send(lua_State *L) {
  lpp_conn_t *c = lpp_check_conn(L, 1);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  luaL_argcheck(L, len <= UINT_MAX, 2, "data must be under 4 GiB");
  int cb_idx = 0;
  if (!lua_isnoneornil(L, 3) && !c->owner->framed) {
    luaL_checktype(L, 3, LUA_TFUNCTION);
    cb_idx = 3;
  }
  pp_conn_t *conn = lpp_conn_of(c);
  if (conn == NULL) return lpp_push_error(L, PP_ECLOSED, NULL);
  if (c->owner->framed) return lpp_req_send(L, c, conn, 2); /* one request (lrequest.c) */
  size_t mark = (size_t)c->owner->max_send_queue;
  int in_coroutine = cb_idx == 0 && lua_isyieldable(L);
  if (!in_coroutine && queued(c) > mark) {
    char msg[128];
    snprintf(msg, sizeof(msg), "%zu bytes wait to be written, over max_send_queue (%zu)", queued(c),
             mark);
    return lpp_push_error(L, PP_EBUSY, msg);
  }
  /* a sender whose coroutine was closed or resumed by the program waits no more */
  if (c->send_wait.co_ref != LUA_NOREF) {
    if (!lpp_wait_active(L, &c->send_wait)) {
      lpp_unref(L, &c->send_wait.co_ref);
      lpp_unref(L, &c->send_self_ref);
      if (c->send_timer) uv_timer_stop(c->send_timer);
    }
  }
  luaL_argcheck(L, c->send_wait.co_ref == LUA_NOREF, 1, "a send is already waiting on this conn");
  /* Most sends fit the socket buffer at once: no copy, no queued write. */
  int done = 0;
  if (len > 0 && queued(c) == 0 && cb_idx == 0) { /* a callback waits for its own write */
    uv_buf_t first = uv_buf_init((char *)data, (unsigned int)len);
    done = pp_conn_try_write(conn, &first, 1);
    if (done < 0 && done != UV_EAGAIN) return lpp_push_error(L, error_code(done), NULL);
    if (done < 0) done = 0;
  }
  if ((size_t)done < len || cb_idx) { /* (a callback also for "") */
    int err = queue_rest(L, c, conn, data + done, len - (size_t)done, cb_idx);
    if (err) return lpp_push_error(L, err, NULL);
  } else if (in_coroutine && queued(c) > mark) {
    /* A TLS conn's try_write takes every byte and queues the ciphertext the socket did not
     * take in the engine: an empty write after it completes once the queue has drained, and
     * wakes this send (writes complete in order). */
    int err = queue_rest(L, c, conn, data, 0, 0);
    if (err) return lpp_push_error(L, err, NULL);
  }
  if (len > 0) c->unanswered = 1;
  if (!in_coroutine || queued(c) <= mark) {
    lua_pushinteger(L, (lua_Integer)len);
    return 1;
  }
  /* Over the mark: wait for the peer to read, up to io_timeout. */
  c->send_len = len;
  lpp_wait_begin(L, &c->send_wait);
  lua_pushvalue(L, 1);
  c->send_self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  int64_t ms = c->send_ms >= 0 ? c->send_ms : c->owner->io_timeout;
  if (ms > 0) {
    pp_timer_start(lpp_timer(L, c->owner, &c->send_timer, c), on_send_timeout, (uint64_t)ms);
  }
  return lpp_wait_yield(L, c->owner->st, 1, &c->send_wait);
}
