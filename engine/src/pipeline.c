/* Requests on framed conns: the send queue, one coalesced write per conn per loop iteration,
 * and the routing of each whole reply to the request it answers (in order). A conn gets its
 * pipe with its first request and keeps it (buffers included) until it is freed, so steady
 * state allocates nothing. */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

struct pp__pipe_s {
  pp_conn_t *conn;
  pp_framer_t framer;
  pp__link_t send_q;  /* requests not yet handed to the socket, in order */
  pp__link_t reply_q; /* requests written (or being written), waiting for replies, in order */
  int requests;       /* on both queues */
  int fail_status;    /* what the requests left on a closing conn fail with; 0: its error */
  uv_buf_t *iov;      /* scratch for one coalesced write */
  unsigned int iov_cap;
  pp_write_t w; /* the one write of ours in flight */
  bool writing;
  bool flush_pending;
  pp__link_t flush_link; /* pool->flush_conns */
  char *buf;             /* a reply split across reads: its bytes so far (and any after it) */
  size_t off, len, cap;
  uint64_t read_ns; /* uv_hrtime of the read being framed (the request histogram) */
};

/* The clock of the request histogram; compiled out with it (PP_NO_OBSERVE). */
static inline uint64_t request_clock(void) {
#ifdef PP_NO_OBSERVE
  return 0;
#else
  return uv_hrtime();
#endif
}

static pp__pipe_t *pipe_of(pp_conn_t *conn) {
  pp__pipe_t *p = conn->pipe;
  if (p) return p;
  p = calloc(1, sizeof(*p));
  if (p == NULL) return NULL;
  p->conn = conn;
  pp_framer_init(&p->framer, &conn->pool->framing);
  pp__list_init(&p->send_q);
  pp__list_init(&p->reply_q);
  conn->pipe = p;
  return p;
}

int pp_conn_requests(const pp_conn_t *conn) {
  return conn && conn->pipe ? conn->pipe->requests : 0;
}

static void schedule_flush(pp__pipe_t *p) {
  if (p->flush_pending) return;
  p->flush_pending = true;
  pp__list_push(&p->conn->pool->flush_conns, &p->flush_link);
  pp__defer_wake(p->conn->pool);
}

int pp_request_send(pp_request_t *req, pp_conn_t *conn, const uv_buf_t bufs[], unsigned int nbufs,
                    pp_reply_cb cb) {
  if (req == NULL || conn == NULL || cb == NULL || (bufs == NULL && nbufs > 0)) return PP_EINVAL;
  if (conn->pool->framing.kind == PP_FRAMING_NONE) return PP_ESTATE;
  if (conn->phase == PP_CONN_CLOSED || conn->broken) return pp__conn_end_error(conn);
  if (conn->phase != PP_CONN_READY && conn->phase != PP_CONN_HANDSHAKE &&
      conn->phase != PP_CONN_PINGING)
    return PP_ESTATE;
  pp__pipe_t *p = pipe_of(conn);
  if (p == NULL) return UV_ENOMEM;
  req->conn_ = conn;
  req->cb_ = cb;
  req->bufs_ = bufs;
  req->nbufs_ = nbufs;
  req->status_ = 0;
  req->sent_ns_ = 0; /* stamped when its write hands it to the socket (flush) */
  pp__list_push(&p->send_q, &req->link_);
  p->requests++;
  schedule_flush(p);
  return 0;
}

/* Queue the callback of `req` (taken off its conn's queue) with `status`. */
static void complete_later(pp_pool_t *pool, pp_request_t *req, int status) {
  req->conn_ = NULL;
  req->status_ = status;
  pp__list_push(&pool->defer_requests, &req->link_);
  pp__defer_wake(pool);
}

static void fail_queue(pp__pipe_t *p, pp__link_t *q, int status) {
  while (!pp__list_empty(q)) {
    pp_request_t *req = PP__CONTAINER(q->next, pp_request_t, link_);
    pp__list_remove(&req->link_);
    p->requests--;
    complete_later(p->conn->pool, req, status);
  }
}

/* Every request still on the conn fails with `status` (replies first: they are older); the
 * stream can no longer be framed, so what is buffered goes. */
static void fail_all(pp__pipe_t *p, int status) {
  fail_queue(p, &p->reply_q, status);
  fail_queue(p, &p->send_q, status);
  p->off = p->len = 0;
  pp_framer_init(&p->framer, &p->conn->pool->framing);
}

void pp__pipe_closed(pp_conn_t *conn) {
  pp__pipe_t *p = conn->pipe;
  if (p == NULL) return;
  if (p->flush_pending) {
    pp__list_remove(&p->flush_link);
    p->flush_pending = false;
  }
  int status = p->fail_status;
  if (status == 0) status = pp__conn_end_error(conn);
  p->fail_status = 0; /* a conn that dials again starts afresh */
  fail_all(p, status);
}

void pp__pipe_free(pp_conn_t *conn) {
  pp__pipe_t *p = conn->pipe;
  if (p == NULL) return;
  free(p->iov);
  free(p->buf);
  free(p);
  conn->pipe = NULL;
}

int pp_request_abort(pp_request_t *req, int status) {
  if (req == NULL || status >= 0) return PP_EINVAL;
  pp_conn_t *conn = req->conn_;
  if (conn == NULL) return PP_ESTATE;
  pp__pipe_t *p = conn->pipe;
  pp__list_remove(&req->link_);
  p->requests--;
  complete_later(conn->pool, req, status);
  /* The replies behind it would each go to the request before: the order is lost. */
  p->fail_status = PP_EPIPELINE;
  if (conn->phase == PP_CONN_READY || conn->phase == PP_CONN_PINGING) {
    conn->broken = true;
    pp__conn_close(conn, PP_CLOSE_DISCARDED);
  } else { /* a handshake hook's request: the hook fails its handshake on the errors */
    fail_all(p, PP_EPIPELINE);
    p->fail_status = 0;
    if (!conn->broken) {
      conn->broken = true;
      conn->last_error = PP_EPIPELINE;
    }
  }
  return 0;
}

/* ---- writing: one write per conn per loop iteration ----------------------------------- */

static void flush(pp__pipe_t *p);

static void on_flushed(pp_write_t *w, int status) {
  pp__pipe_t *p = PP__CONTAINER(w, pp__pipe_t, w);
  p->writing = false;
  if (status == 0 && !pp__list_empty(&p->send_q)) schedule_flush(p);
  /* an error closed the conn (conn.c's write_done): its requests failed there */
}

/* Hand every queued request to the socket in one write: what it takes now (uv_try_write of all
 * the buffers), the rest in one queued write. They join the reply queue in the same order. */
static void flush(pp__pipe_t *p) {
  pp_conn_t *conn = p->conn;
  if (p->writing || pp__list_empty(&p->send_q) || conn->phase == PP_CONN_CLOSED) return;
  unsigned int n = 0;
  for (pp__link_t *l = p->send_q.next; l != &p->send_q; l = l->next)
    n += PP__CONTAINER(l, pp_request_t, link_)->nbufs_;
  if (n > p->iov_cap) {
    unsigned int cap = p->iov_cap ? p->iov_cap : 16;
    while (cap < n)
      cap *= 2;
    uv_buf_t *iov = realloc(p->iov, cap * sizeof(*iov));
    if (iov == NULL) {
      pp__conn_io_error(conn, UV_ENOMEM);
      return;
    }
    p->iov = iov;
    p->iov_cap = cap;
  }
  unsigned int k = 0;
  size_t total = 0;
  uint64_t now = request_clock(); /* one reading for the whole write */
  while (!pp__list_empty(&p->send_q)) {
    pp_request_t *req = PP__CONTAINER(p->send_q.next, pp_request_t, link_);
    pp__list_remove(&req->link_);
    pp__list_push(&p->reply_q, &req->link_);
    req->sent_ns_ = now;
    for (unsigned int i = 0; i < req->nbufs_; i++) {
      if (req->bufs_[i].len == 0) continue;
      p->iov[k++] = req->bufs_[i];
      total += req->bufs_[i].len;
    }
  }
  if (total == 0) return;
  int r = pp_conn_try_write(conn, p->iov, k);
  if (r == UV_EAGAIN) r = 0;
  if (r < 0) {
    if (conn->phase != PP_CONN_CLOSED) pp__conn_io_error(conn, r); /* fails the requests */
    return;
  }
  if ((size_t)r == total) return;
  unsigned int first = 0;
  size_t done = (size_t)r;
  while (done >= p->iov[first].len) {
    done -= p->iov[first].len;
    first++;
  }
  p->iov[first].base += done;
  p->iov[first].len -= done;
  p->writing = true;
  r = pp_conn_write(&p->w, conn, p->iov + first, k - first, on_flushed);
  if (r) {
    p->writing = false;
    if (conn->phase != PP_CONN_CLOSED) pp__conn_io_error(conn, r);
  }
}

/* ---- the defer queue's part (defer.c) ------------------------------------------------------ */

bool pp__pipe_pending(const pp_pool_t *pool) {
  return !pp__list_empty(&pool->flush_conns) || !pp__list_empty(&pool->defer_requests);
}

void pp__pipe_run_deferred(pp_pool_t *pool) {
  pp__link_t done;
  pp__list_splice(&pool->defer_requests, &done); /* those queued before this pass */
  while (!pp__list_empty(&done)) {
    pp_request_t *req = PP__CONTAINER(done.next, pp_request_t, link_);
    pp__list_remove(&req->link_);
    req->cb_(req, req->status_, NULL, 0);
  }
}

void pp__pipe_flush_all(pp_pool_t *pool) {
  while (!pp__list_empty(&pool->flush_conns)) {
    pp__pipe_t *p = PP__CONTAINER(pool->flush_conns.next, pp__pipe_t, flush_link);
    pp__list_remove(&p->flush_link);
    p->flush_pending = false;
    flush(p);
  }
}

/* ---- reading: whole replies to their requests ---------------------------------------------- */

/* The stream cannot be framed (`err`): every request fails with it and the conn closes. */
static void framing_failed(pp__pipe_t *p, int err) {
  pp_conn_t *conn = p->conn;
  fail_all(p, err);
  if (err == PP_ETOOLONG && conn->phase == PP_CONN_READY) {
    conn->broken = true; /* our limit, not the peer's failure */
    conn->last_error = err;
    pp__conn_close(conn, PP_CLOSE_DISCARDED);
    return;
  }
  pp__conn_io_error(conn, err);
}

/* One whole reply: to the oldest request; with none waiting it is a late reply. Returns
 * whether the conn can go on reading. */
static bool route(pp__pipe_t *p, const char *reply, size_t len) {
  pp_conn_t *conn = p->conn;
  if (pp__list_empty(&p->reply_q)) {
    p->fail_status = PP_EFRAMING;
    conn->broken = true;
    pp__conn_close(conn, PP_CLOSE_REMOTE);
    return false;
  }
  pp_request_t *req = PP__CONTAINER(p->reply_q.next, pp_request_t, link_);
  pp__list_remove(&req->link_);
  p->requests--;
  req->conn_ = NULL;
  pp__count_io(conn, (pp__io_t){.msgs_in = 1});
  pp__hist_observe_us(conn->pool, PP_HIST_REQUEST,
                      p->read_ns > req->sent_ns_ ? (p->read_ns - req->sent_ns_ + 500) / 1000 : 0);
  req->cb_(req, 0, reply, len); /* may send, release, close the conn: look again after */
  return conn->phase != PP_CONN_CLOSED && !conn->broken;
}

/* Take every whole reply at the front of data[0, len); returns how many bytes were taken, or
 * -1 when the conn stopped reading (closed, or broken). */
static ssize_t take_replies(pp__pipe_t *p, const char *data, size_t len) {
  size_t off = 0;
  while (off < len) {
    ssize_t n = pp_framer_next(&p->framer, data + off, len - off);
    if (n == 0) break;
    if (n < 0) {
      framing_failed(p, (int)n);
      return -1;
    }
    if (!route(p, data + off, (size_t)n)) return -1;
    off += (size_t)n;
  }
  return (ssize_t)off;
}

static int buffer(pp__pipe_t *p, const char *data, size_t len) {
  if (p->off + p->len + len > p->cap && p->off > 0) {
    memmove(p->buf, p->buf + p->off, p->len);
    p->off = 0;
  }
  if (p->len + len > p->cap) {
    size_t cap = p->cap ? p->cap : 16 * 1024;
    while (cap < p->len + len)
      cap *= 2;
    char *b = realloc(p->buf, cap);
    if (b == NULL) return UV_ENOMEM;
    p->buf = b;
    p->cap = cap;
  }
  memcpy(p->buf + p->off + p->len, data, len);
  p->len += len;
  return 0;
}

/* Bytes with no request waiting on a framed conn: a raw reader's (a hook or a C caller reading
 * the stream itself), kept for one (not ready yet, or a chatty protocol), or else a reply nobody
 * asked for. Kept, it would sit ahead of the next reply's bytes and, once the keep buffer
 * filled, stop the conn reading with requests in flight: the conn closes instead. */
static bool unasked(pp_conn_t *conn) {
  if (conn->read_cb || conn->phase != PP_CONN_READY || conn->leases == 0 ||
      conn->pool->opts.keep_idle_bytes)
    return false; /* conn.c's rules (an idle conn's bytes close it there) */
  if (conn->pipe) conn->pipe->fail_status = PP_EFRAMING;
  conn->broken = true;
  conn->last_error = PP_EFRAMING;
  pp__conn_close(conn, PP_CLOSE_REMOTE);
  return true;
}

bool pp__pipe_input(pp_conn_t *conn, const char *data, size_t len) {
  pp__pipe_t *p = conn->pipe;
  if (p == NULL || (p->requests == 0 && p->len == 0)) return unasked(conn);
  p->read_ns = request_clock(); /* one stamp for every reply this read completes */
  if (p->len == 0) {
    /* The common case: whole replies straight from the read buffer, uncopied; only a reply
     * cut at the end of the read is copied, once, to wait for the rest. */
    ssize_t took = take_replies(p, data, len);
    if (took < 0) return true;
    if ((size_t)took < len && buffer(p, data + took, len - (size_t)took) != 0)
      framing_failed(p, UV_ENOMEM);
    return true;
  }
  if (buffer(p, data, len) != 0) {
    framing_failed(p, UV_ENOMEM);
    return true;
  }
  ssize_t took = take_replies(p, p->buf + p->off, p->len);
  if (took < 0) return true;
  p->off += (size_t)took;
  p->len -= (size_t)took;
  if (p->len == 0) p->off = 0;
  return true;
}
