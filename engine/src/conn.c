/* Conns: dialling with per-attempt timeouts and backoff, the handshake, reading and writing,
 * lifespan, and closing. A conn's life reads from two fields: its flags word (which handles are
 * open or closing, what is pending or running) and its reference count (pp__conn_ref: handles,
 * leases, a pending delivery, a hook call in progress). It closes through one path,
 * pp__conn_close, in steps, and its memory goes when the last reference does. */
#include "internal.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void start_attempt(pp_conn_t *conn);
static void dial(pp_conn_t *conn);
static void connected(pp_conn_t *conn);
static void attempt_failed(pp_conn_t *conn, int err);
static void conn_ready(pp_conn_t *conn);
static void transport_ready(pp_conn_t *conn);
static void tls_start(pp_conn_t *conn);
static void tls_input(pp_conn_t *conn, const char *data, size_t len);
static bool tls_read_end(pp_conn_t *conn, int err);
static int tls_write(pp_write_t *req, pp_conn_t *conn, const uv_buf_t bufs[], unsigned int nbufs);
static int tls_try_write(pp_conn_t *conn, const uv_buf_t bufs[], unsigned int nbufs);
static void tls_drop(pp_conn_t *conn, bool notify);

static bool connecting_phase(pp__conn_phase_t p) {
  return p == PP_CONN_DIALING || p == PP_CONN_BACKOFF || p == PP_CONN_HANDSHAKE;
}

/* Move to `phase`, keeping the per-peer and pool counters of connecting conns in step. */
static void set_phase(pp_conn_t *conn, pp__conn_phase_t phase) {
  pp_peer_t *peer = conn->peer;
  switch (conn->phase) {
    case PP_CONN_DIALING:
      peer->dialing--;
      break;
    case PP_CONN_BACKOFF:
      peer->backoff--;
      break;
    case PP_CONN_HANDSHAKE:
      peer->handshaking--;
      break;
    default:
      break;
  }
  switch (phase) {
    case PP_CONN_DIALING:
      peer->dialing++;
      break;
    case PP_CONN_BACKOFF:
      peer->backoff++;
      break;
    case PP_CONN_HANDSHAKE:
      peer->handshaking++;
      break;
    default:
      break;
  }
  conn->pool->dialing += (int)connecting_phase(phase) - (int)connecting_phase(conn->phase);
  conn->phase = phase;
}

void pp__conn_unref(pp_conn_t *conn) {
  if (--conn->refs > 0) return;
  pp_peer_t *peer = conn->peer;
  pp__list_remove(&conn->peer_link);
  pp__pipe_free(conn);
  free(conn->kept);
  free(conn);
  /* A removed peer is freed once its last conn is (drain.c, from the deferred pass). */
  if (peer->removed && pp__list_empty(&peer->conns_list)) pp__defer_wake(peer->pool);
}

static void on_timer_closed(uv_handle_t *handle) {
  pp_conn_t *conn = handle->data;
  pp_pool_t *pool = conn->pool;
  conn->flags &= (uint16_t) ~(PP__CONN_F_TIMER | PP__CONN_F_TIMER_CLOSING);
  pool->conn_handles--;
  pp__conn_unref(conn); /* the timer's */
  pp__maybe_finish(pool);
}

/* The socket is closed: a conn that was closed (or an attempt that failed, after_attempt) may
 * go with its reference. */
static void socket_closed(pp_conn_t *conn) {
  conn->flags &= (uint16_t) ~(PP__CONN_F_SOCKET | PP__CONN_F_SOCKET_CLOSING);
  conn->pool->conn_handles--;
}

static void on_handle_closed(uv_handle_t *handle) {
  pp_conn_t *conn = handle->data;
  pp_pool_t *pool = conn->pool;
  socket_closed(conn);
  pp__conn_unref(conn); /* the socket's */
  pp__maybe_finish(pool);
}

/* conn->h was initialised: it holds a reference until its close callback. */
static void socket_opened(pp_conn_t *conn) {
  conn->h.handle.data = conn;
  conn->flags |= PP__CONN_F_SOCKET;
  conn->pool->conn_handles++;
  pp__conn_ref(conn);
}

static void close_handle(pp_conn_t *conn, uv_close_cb cb) {
  if (!PP__CONN_SOCKET_LIVE(conn)) return;
  conn->flags |= PP__CONN_F_SOCKET_CLOSING;
  conn->flags &= (uint16_t)~PP__CONN_F_READING;
  uv_close(&conn->h.handle, cb);
}

/* ---- dialling -------------------------------------------------------------------------- */

static void on_backoff_done(uv_timer_t *timer) {
  start_attempt(timer->data);
}

/* A new conn of `peer`, counted toward its limits, with its timer open; NULL when out of
 * memory. */
static pp_conn_t *conn_new(pp_peer_t *peer) {
  pp_pool_t *pool = peer->pool;
  pp_conn_t *conn;
  if (posix_memalign((void **)&conn, 64, sizeof(*conn)) != 0) return NULL;
  memset(conn, 0, sizeof(*conn));
  conn->pool = pool;
  conn->peer = peer;
  conn->phase = PP_CONN_NEW;
  conn->id = ++pool->conn_seq;
  pp__list_init(&conn->lease_list);
  uv_timer_init(pool->loop, &conn->timer);
  conn->timer.data = conn;
  conn->flags = PP__CONN_F_TIMER;
  conn->refs = 1; /* the timer's: dropped by its close callback, after pp__conn_close */
  pool->conn_handles++;
  pp__list_push(&peer->conns_list, &conn->peer_link);
  peer->conns++;
  pool->total++;
  return conn;
}

int pp__conn_probe(pp_peer_t *peer) {
  pp_conn_t *conn = conn_new(peer);
  if (conn == NULL) return UV_ENOMEM;
  conn->probe = true;
  peer->probing++;
  peer->pool->stats.probes++;
  start_attempt(conn); /* now, whatever the peer's retry time: that is the point */
  return 0;
}

int pp__conn_dial(pp_peer_t *peer, pp_lease_t *owner, pp_conn_t **out) {
  pp_pool_t *pool = peer->pool;
  pp_conn_t *conn = conn_new(peer);
  if (conn == NULL) return UV_ENOMEM;
  if (owner) {
    conn->owner = owner;
    owner->dial_ = conn;
    pool->dial_owners++;
  }
  if (peer->retry_at > pp_now()) {
    /* The peer is in backoff: the first attempt waits for its retry time. */
    set_phase(conn, PP_CONN_BACKOFF);
    pp_timer_start_at(&conn->timer, on_backoff_done, peer->retry_at);
    pp__peer_update_state(peer);
  } else {
    start_attempt(conn);
  }
  if (out) *out = conn;
  return 0;
}

static void on_connect_timeout(uv_timer_t *timer) {
  pp_conn_t *conn = timer->data;
  if (conn->phase == PP_CONN_DIALING) attempt_failed(conn, UV_ETIMEDOUT);
}

static void on_handshake_timeout(uv_timer_t *timer) {
  pp_conn_t *conn = timer->data;
  if (conn->phase == PP_CONN_HANDSHAKE) attempt_failed(conn, PP_ETIMEDOUT);
}

static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf) {
  pp_conn_t *conn = handle->data;
  buf->base = conn->pool->read_buf;
  buf->len = sizeof(conn->pool->read_buf);
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);

static void on_connect(uv_connect_t *req, int status) {
  pp_conn_t *conn = req->data;
  /* Timed out, closed, or its socket is being dropped (UV_ECANCELED): already handled. */
  if (conn->phase != PP_CONN_DIALING || !PP__CONN_SOCKET_LIVE(conn)) return;
  if (status < 0) {
    attempt_failed(conn, status);
    return;
  }
  connected(conn);
}

/* The socket is connected (on_connect, or the winner of a Happy Eyeballs race). */
static void connected(pp_conn_t *conn) {
  pp_pool_t *pool = conn->pool;
  pp_peer_t *peer = conn->peer;
  uv_timer_stop(&conn->timer);
  double ms = (double)(pp_now() - conn->attempt_started);
  pool->connect_latency_sum += ms;
  pp__hist_observe_ns(pool, PP_HIST_CONNECT, conn->phase_ns);
  conn->phase_ns = uv_hrtime(); /* the handshake starts */
  if (ms > pool->stats.connect_latency_ms_max) pool->stats.connect_latency_ms_max = ms;
  peer->latency_ms = peer->latency_ms == 0 ? ms : peer->latency_ms * 0.8 + ms * 0.2;
  if (!peer->is_pipe) uv_tcp_nodelay(&conn->h.tcp, 1);
  /* TLS (tls.c): a peer with TLS options (the pool's or its own) gets a TLS state, or the
   * attempt fails with PP_ETLS (its reason kept on the peer): never a conn in the clear. */
  int err = pp__tls_conn_new(peer, &conn->tls);
  if (err) {
    attempt_failed(conn, err);
    return;
  }
  err = uv_read_start(&conn->h.stream, on_alloc, on_read);
  if (err) {
    attempt_failed(conn, err);
    return;
  }
  conn->flags |= PP__CONN_F_READING;
  if (conn->tls) {
    tls_start(conn); /* transport_ready once the TLS handshake completes (on_read) */
    return;
  }
  transport_ready(conn);
}

/* The stream is ready for the protocol (TCP connected, TLS handshake done): the handshake hook
 * if any, else the conn is ready. A TLS conn is in PP_CONN_HANDSHAKE already: TLS and the hook
 * share one handshake_timeout, which is not restarted. */
static void transport_ready(pp_conn_t *conn) {
  pp_pool_t *pool = conn->pool;
  if (pool->policy.handshake) {
    if (conn->phase != PP_CONN_HANDSHAKE) {
      set_phase(conn, PP_CONN_HANDSHAKE);
      pp_timer_start(&conn->timer, on_handshake_timeout, (uint64_t)pool->opts.handshake_timeout);
      pp__peer_update_state(conn->peer);
    }
    conn->flags |= PP__CONN_F_HOOK;
    pool->policy.handshake(pool->policy.data, conn);
    return; /* the hook may have completed (or failed) the conn already */
  }
  conn_ready(conn);
}

static void start_attempt(pp_conn_t *conn) {
  pp_pool_t *pool = conn->pool;
  pp_peer_t *peer = conn->peer;
  conn->attempt++;
  conn->broken = false; /* a new socket: what the last one saw does not carry over */
  conn->kept_error = 0;
  peer->attempts++;
  pool->stats.connect_attempts++;
  set_phase(conn, PP_CONN_DIALING);
  if (peer->dns && !pp__dns_fresh(peer)) {
    /* A host name whose answer is missing or stale: dial once the query ends (dns.c calls
     * pp__conn_dns_done; its own timeouts bound the wait, which is no connect time). */
    pp__dns_resolve(peer);
    if (!pp__dns_fresh(peer) && pp__dns_busy(peer)) {
      conn->dns_wait = true;
      pp__peer_update_state(peer);
      return;
    }
  }
  dial(conn);
}

/* Open the socket and connect: to the unix path, the numeric address, the name's one address,
 * or a Happy Eyeballs race over the name's addresses (eyeballs.c). A name with no answer fails
 * the attempt with PP_EDNS. */
static void dial(pp_conn_t *conn) {
  pp_pool_t *pool = conn->pool;
  pp_peer_t *peer = conn->peer;
  int err = 0;
  conn->attempt_started = pp_now();
  conn->phase_ns = uv_hrtime();
  conn->connect_req.data = conn;
  if (peer->dns && peer->dns->naddrs == 0) {
    pp__peer_update_state(peer);
    attempt_failed(conn, PP_EDNS);
    return;
  }
  if (peer->dns && peer->dns->naddrs > 1) {
    memset(&conn->sa, 0, sizeof conn->sa); /* known once a socket wins */
    err = pp__race_start(conn);
  } else {
    conn->sa = peer->dns ? peer->dns->addrs[0] : peer->sa;
    if (peer->is_pipe) {
      err = uv_pipe_init(pool->loop, &conn->h.pipe, 0);
    } else {
      err = uv_tcp_init(pool->loop, &conn->h.tcp);
    }
    if (err == 0) {
      socket_opened(conn);
      if (peer->is_pipe)
        uv_pipe_connect(&conn->connect_req, &conn->h.pipe, peer->addr, on_connect);
      else
        err = uv_tcp_connect(&conn->connect_req, &conn->h.tcp, (const struct sockaddr *)&conn->sa,
                             on_connect);
    }
  }
  pp__peer_update_state(peer);
  if (err) {
    attempt_failed(conn, err);
    return;
  }
  pp_timer_start(&conn->timer, on_connect_timeout, (uint64_t)pool->opts.connect_timeout);
}

/* ---- host names (dns.h) ---------------------------------------------------------------- */

void pp__conn_race_won(pp_conn_t *conn, int fd, const struct sockaddr_storage *sa) {
  pp_pool_t *pool = conn->pool;
  conn->sa = *sa;
  int err = uv_tcp_init(pool->loop, &conn->h.tcp);
  if (err == 0) {
    socket_opened(conn);
    err = uv_tcp_open(&conn->h.tcp, fd);
  }
  if (err) {
    close(fd);
    attempt_failed(conn, err);
    return;
  }
  connected(conn);
}

void pp__conn_race_failed(pp_conn_t *conn, int err) {
  attempt_failed(conn, err);
}

/* Its address left the answer: no new lease; closed now if unleased, else at its release. */
static void address_gone(pp_conn_t *conn) {
  conn->dns_gone = true;
  conn->expired = true;
  if (conn->leases == 0 && (conn->phase == PP_CONN_READY || conn->phase == PP_CONN_PINGING))
    pp__conn_close(conn, PP_CLOSE_DNS);
  else
    pp__peer_unmark_usable(conn->peer, conn);
}

void pp__conn_dns_done(pp_peer_t *peer, bool changed) {
  pp__link_t *l = peer->conns_list.next;
  while (l != &peer->conns_list) {
    pp_conn_t *conn = PP__CONTAINER(l, pp_conn_t, peer_link);
    l = l->next; /* conns this adds go at the end, dialled with the new answer already */
    if (conn->dns_wait) {
      conn->dns_wait = false;
      dial(conn);
    } else if (changed && !conn->dns_gone && conn->sa.ss_family != AF_UNSPEC &&
               (conn->phase == PP_CONN_READY || conn->phase == PP_CONN_PINGING) &&
               !pp__dns_has(peer, &conn->sa)) {
      address_gone(conn);
    }
  }
}

int pp_conn_address(const pp_conn_t *conn, char *out, size_t n) {
  if (conn == NULL || conn->peer->is_pipe) return PP_EINVAL;
  char buf[64];
  pp__sockaddr_format(&conn->sa, buf, sizeof buf);
  if (strlen(buf) >= n) return UV_ENOBUFS;
  memcpy(out, buf, strlen(buf) + 1);
  return 0;
}

static void on_attempt_closed(uv_handle_t *handle);
static void on_attempt_timer(uv_timer_t *timer);

/* Take the hook's hold off `conn`; returns whether a hook held it. Its reader goes too: the hook
 * forgets the conn in `closed` and must not be called afterwards. */
static bool hook_release(pp_conn_t *conn) {
  if (!(conn->flags & PP__CONN_F_HOOK)) return false;
  conn->flags &= (uint16_t)~PP__CONN_F_HOOK;
  conn->read_cb = NULL;
  conn->kept_error = 0;
  return true;
}

/* Tell the policy that the hook holding `conn` lost it. Called last, once every counter is
 * consistent, so the hook may acquire, release or close anything (the pool too); the conn
 * stays allocated while it runs. */
static void hook_closed(pp_conn_t *conn) {
  pp_pool_t *pool = conn->pool;
  if (pool->policy.closed == NULL) return;
  pp__conn_ref(conn);
  pool->policy.closed(pool->policy.data, conn);
  pp__conn_unref(conn);
}

/* One attempt failed: drop its socket; once the socket is closed, decide (on_attempt_closed)
 * between another attempt after the backoff delay, giving up, or burning the peer. A local
 * failure (this machine out of fds or memory) keeps the conn dialling until then: the peer
 * did nothing wrong, so it never shows as failed. */
static void attempt_failed(pp_conn_t *conn, int err) {
  pp_pool_t *pool = conn->pool;
  pp_peer_t *peer = conn->peer;
  bool local = pp__err_is_local(err);
  pp__race_cancel(conn);
  conn->dns_wait = false;
  conn->last_error = err;
  if (!local) peer->last_error = err;
  pool->stats.connects_failed++;
  bool hooked = hook_release(conn);
  uv_timer_stop(&conn->timer);
  conn->read_cb = NULL;
  conn->kept_len = 0;
  conn->kept_error = 0;
  pp__pipe_closed(conn); /* a handshake hook's requests fail with the attempt */
  tls_drop(conn, false); /* a retry or a probe makes a new TLS state */
  set_phase(conn, local ? PP_CONN_DIALING : PP_CONN_BACKOFF);
  if (PP__CONN_SOCKET_LIVE(conn))
    close_handle(conn, on_attempt_closed);
  else
    pp_timer_start(&conn->timer, on_attempt_timer, 0); /* no socket: decide next tick */
  pp__peer_update_state(peer);
  if (hooked) hook_closed(conn);
}

/* The dial of `conn` ends without a conn (`status` for its owner); a held peer gets a probe. */
static void give_up(pp_conn_t *conn, int status) {
  pp_peer_t *peer = conn->peer;
  if (conn->probe) conn->pool->stats.probes_failed++;
  pp__dial_failed(conn, status);
  pp__conn_close(conn, PP_CLOSE_CLOSED);
  pp__probe_schedule(peer);
}

/* The failed attempt's socket is gone: count the failure (which may eject the peer), then
 * retry after the backoff delay, give up (the peer backs off), or burn. A probe makes one
 * attempt only. */
static void after_attempt(pp_conn_t *conn) {
  pp_pool_t *pool = conn->pool;
  pp_peer_t *peer = conn->peer;
  if (conn->phase == PP_CONN_CLOSED) return; /* the pool closed meanwhile */
  int err = conn->last_error;
  if (pp__err_is_local(err)) {
    /* No backoff and no further attempt (they would fail alike): the owner hears the error
     * itself at once, and the next acquire dials again. */
    pp__dial_failed(conn, err);
    pp__conn_close(conn, PP_CLOSE_CLOSED);
    return;
  }
  pp__peer_failed(peer, err, false);
  if (peer->ejected) { /* its waiters heard PP_EEJECTED; no further attempt */
    give_up(conn, PP_EEJECTED);
    return;
  }
  int64_t delay = pp__backoff(peer, peer->connect_failures, err);
  if (delay < 0) {
    if (conn->probe) pool->stats.probes_failed++;
    pp__dial_failed(conn, PP_EBURNED);
    pp__peer_burn(peer);
    return;
  }
  /* TLS (tls.c): a certificate does not change between attempts, so a TLS failure is not
   * retried and the owner hears PP_ETLS itself. A name that did not resolve (dns.c) was asked
   * with retries of its own: the owner hears PP_EDNS at once, not at its deadline. */
  bool final = err == PP_ETLS || err == PP_EDNS;
  if (!conn->probe && conn->attempt <= pool->opts.retries && !final) {
    pp_timer_start(&conn->timer, on_backoff_done, (uint64_t)delay);
    pp__peer_update_state(peer);
    return;
  }
  uint64_t at = pp_now() + (uint64_t)delay;
  if (at > peer->retry_at) peer->retry_at = at;
  give_up(conn, final ? err : PP_ECANNOTCONNECT);
}

static void on_attempt_closed(uv_handle_t *handle) {
  pp_conn_t *conn = handle->data;
  pp_pool_t *pool = conn->pool;
  socket_closed(conn);
  after_attempt(conn);
  pp__conn_unref(conn); /* the socket's */
  pp__maybe_finish(pool);
}

static void on_attempt_timer(uv_timer_t *timer) {
  after_attempt(timer->data);
}

int pp_conn_handshake_done(pp_conn_t *conn, int status) {
  if (conn == NULL || conn->phase != PP_CONN_HANDSHAKE || !(conn->flags & PP__CONN_F_HOOK))
    return PP_ESTATE;
  conn->flags &= (uint16_t)~PP__CONN_F_HOOK;
  if (status == 0 && conn->broken) status = conn->last_error; /* the stream died meanwhile */
  if (status == 0) {
    pp__hist_observe_ns(conn->pool, PP_HIST_HANDSHAKE, conn->phase_ns);
    conn_ready(conn);
  } else {
    attempt_failed(conn, status < 0 ? status : PP_EHANDSHAKE);
  }
  return 0;
}

/* (Re)arm the lifespan timer for what is left of the conn's life. */
static void arm_lifespan(pp_conn_t *conn);

static void on_ping_timeout(uv_timer_t *timer) {
  pp_conn_t *conn = timer->data;
  if (conn->phase != PP_CONN_PINGING) return;
  conn->pool->stats.pings_failed++;
  conn->blamed = true;
  pp__peer_failed(conn->peer, PP_ETIMEDOUT, true);
  pp__conn_close(conn, PP_CLOSE_PING); /* tells the hook through `closed` */
}

bool pp__conn_needs_ping(const pp_conn_t *conn, uint64_t idle_ms) {
  pp_pool_t *pool = conn->pool;
  return pool->policy.ping && conn->leases == 0 && idle_ms > 0 &&
         pp_now() - conn->last_used >= idle_ms;
}

void pp__conn_ping(pp_conn_t *conn) {
  pp_pool_t *pool = conn->pool;
  pp__peer_unmark_usable(conn->peer, conn);
  conn->phase = PP_CONN_PINGING;
  conn->flags |= PP__CONN_F_HOOK;
  pool->stats.pings++;
  uv_ref((uv_handle_t *)&conn->timer); /* a running ping keeps the loop alive */
  pp_timer_start(&conn->timer, on_ping_timeout, (uint64_t)pool->opts.handshake_timeout);
  pool->policy.ping(pool->policy.data, conn);
}

int pp_conn_ping_done(pp_conn_t *conn, int status) {
  if (conn == NULL || conn->phase != PP_CONN_PINGING || !(conn->flags & PP__CONN_F_HOOK))
    return PP_ESTATE;
  pp_pool_t *pool = conn->pool;
  conn->flags &= (uint16_t)~PP__CONN_F_HOOK;
  conn->read_cb = NULL; /* the hook's reader ends with the ping */
  uv_timer_stop(&conn->timer);
  uv_unref((uv_handle_t *)&conn->timer);
  conn->phase = PP_CONN_READY;
  if (status == 0 && conn->broken) status = conn->last_error; /* the stream died meanwhile */
  if (status != 0) {
    pool->stats.pings_failed++;
    conn->blamed = true;
    pp__peer_failed(conn->peer, status < 0 ? status : PP_EPING, true);
    pp__conn_close(conn, PP_CLOSE_PING);
    return 0;
  }
  conn->last_used = pp_now();
  arm_lifespan(conn);
  if (pp__conn_lendable(conn)) {
    pp__peer_mark_usable(conn->peer, conn);
    pp__conn_available(conn);
  }
  return 0;
}

static void on_lifespan(uv_timer_t *timer) {
  pp_conn_t *conn = timer->data;
  conn->expired = true;
  if (conn->leases == 0 && conn->phase == PP_CONN_READY)
    pp__conn_close(conn, PP_CLOSE_LIFESPAN);
  else
    pp__peer_unmark_usable(conn->peer, conn);
}

static void arm_lifespan(pp_conn_t *conn) {
  if (conn->expires_at == 0) return;
  pp_timer_start_at(&conn->timer, on_lifespan, (uint64_t)conn->expires_at);
}

/* The peer's side of a successful connect: its backoff ends, a probe becomes an ordinary
 * conn, and an ejection for failed connects ends (the peer is reachable again) — not one for
 * failures in use, which a connect does not disprove. */
static void peer_connected(pp_conn_t *conn) {
  pp_peer_t *peer = conn->peer;
  peer->connect_failures = 0;
  peer->retry_at = 0;
  peer->ever_connected = true;
  if (conn->probe) {
    conn->probe = false;
    peer->probing--;
  }
  pp__probe_cancel(peer);
  if (peer->ejected && !peer->fail_in_use) pp__eject_end(peer);
  pp__peer_succeeded(peer);
  peer->last_success = pp__unix_now_ms();
  if (peer->last_success > peer->last_seen) peer->last_seen = peer->last_success;
}

static void conn_ready(pp_conn_t *conn) {
  pp_pool_t *pool = conn->pool;
  pp_peer_t *peer = conn->peer;
  uint64_t now = pp_now();
  uv_timer_stop(&conn->timer);
  conn->read_cb = NULL; /* a handshake hook's reader ends with the handshake */
  set_phase(conn, PP_CONN_READY);
  pool->stats.connects_ok++;
  pp__ev_conn_open(conn); /* events.c */
  peer_connected(conn);
  conn->created_at = (int64_t)now;
  conn->last_used = now;
  if (pool->opts.max_lifespan > 0) {
    uint64_t life = (uint64_t)pool->opts.max_lifespan;
    uint64_t jitter = life * (uint64_t)pool->opts.lifespan_jitter / 100;
    if (jitter > 0) life -= pp__random(pool) % (jitter + 1);
    conn->expires_at = (int64_t)(now + life);
    arm_lifespan(conn);
  }
  /* Idle conns do not keep the loop alive; a lease refs the stream again. */
  uv_unref(&conn->h.handle);
  uv_unref((uv_handle_t *)&conn->timer);
  pp__peer_update_state(peer);
  /* A race over an answer that a new one replaced meanwhile may win on a gone address. */
  if (peer->dns && !pp__dns_has(peer, &conn->sa)) conn->dns_gone = conn->expired = true;
  if (!pp__conn_lendable(conn)) { /* its peer is still ejected, or its address is gone */
    pp__conn_close(conn, conn->dns_gone ? PP_CLOSE_DNS : PP_CLOSE_EJECTED);
    return;
  }
  pp__peer_mark_usable(peer, conn);
  pp__conn_available(conn);
}

/* ---- leases ---------------------------------------------------------------------------- */

bool pp__conn_lendable(const pp_conn_t *conn) {
  return conn->phase == PP_CONN_READY && !conn->broken && !conn->expired &&
         conn->leases < conn->pool->opts.client_limit && !conn->peer->ejected &&
         !conn->peer->burned && !conn->peer->draining && !conn->pool->closing;
}

void pp__conn_lease(pp_conn_t *conn, pp_lease_t *lease) {
  pp_peer_t *peer = conn->peer;
  pp__peer_unmark_usable(peer, conn);
  if (conn->leases++ == 0) {
    conn->pool->active++;
    uv_ref(&conn->h.handle);
  }
  peer->leases++;
  conn->leases_total++;
  pp__list_push(&conn->lease_list, &lease->qlink_);
  pp__conn_ref(conn); /* the lease's: dropped by pp__conn_released or the pool's close */
  lease->conn = conn;
  lease->peer = peer;
  pp__warm_lent(conn);
  pp__warm_check(peer); /* min_idle: one idle conn fewer (warm.c) */
  /* The grant's stamp: the lease's hold (leak_threshold, the hold histogram) counts from it.
   * Not the cached loop time, which lags behind by whatever ran in this loop iteration before
   * (the engine never brings it up to date); the coarse clock is cheap enough here. */
  conn->last_used = pp__stamp(conn->pool);
  if (pp__conn_lendable(conn)) pp__peer_mark_usable(peer, conn);
}

/* The part of a lease's end that a release and the pool's close share; returns whether it was
 * the conn's last lease. */
static inline bool lease_off(pp_conn_t *conn, pp_lease_t *lease) {
  pp_peer_t *peer = conn->peer;
  pp__list_remove(&lease->qlink_);
  lease->conn = NULL;
  pp__peer_unmark_usable(peer, conn);
  peer->leases--;
  return --conn->leases == 0;
}

void pp__lease_detach(pp_conn_t *conn, pp_lease_t *lease) {
  if (lease_off(conn, lease) && conn->phase != PP_CONN_CLOSED) conn->pool->active--;
}

void pp__conn_unlease(pp_conn_t *conn, pp_lease_t *lease) {
  if (lease_off(conn, lease)) {
    conn->read_cb = NULL; /* a reader does not outlive the last lease */
    if (conn->phase != PP_CONN_CLOSED) {
      conn->pool->active--;
      uv_unref(&conn->h.handle);
    }
  }
  conn->last_used = pp__stamp(conn->pool);
}

/* Count the holder's verdict `status` against the peer if it blames it, once per conn. */
static void blame(pp_conn_t *conn, int status) {
  if (!pp__err_blames(status) || conn->blamed) return;
  conn->blamed = true;
  pp__peer_failed(conn->peer, status, true);
}

/* A lease of `conn` ended with the holder's verdict `status` (see pp_release): a healthy conn
 * returns to service; any other verdict closes it for every holder, and blames the peer only
 * when the verdict says the peer failed. */
void pp__conn_released(pp_conn_t *conn, int status) {
  if (conn->phase == PP_CONN_CLOSED) {
    blame(conn, status);  /* e.g. the server hung up cleanly mid-reply: the holder knows */
    pp__conn_unref(conn); /* the lease's: it may be the last */
    return;
  }
  conn->refs--; /* the lease's, never the last on an open conn: its timer holds one */
  if (status < 0) {
    bool fault = pp__err_blames(status);
    conn->broken = true; /* before blame: an ejection must not close it as "ejected" */
    if (fault) conn->last_error = status;
    blame(conn, status);
    pp__conn_close(conn, fault || pp__err_is_local(status) ? PP_CLOSE_BROKEN : PP_CLOSE_DISCARDED);
    return;
  }
  if (conn->leases == 0 && conn->expired) {
    pp__conn_close(conn, conn->dns_gone ? PP_CLOSE_DNS : PP_CLOSE_LIFESPAN);
    return;
  }
  pp_peer_t *peer = conn->peer;
  if (conn->pool->closing || peer->draining) {
    /* A graceful close or a drain: the conn served its last holder (drain.c). */
    if (conn->leases == 0)
      pp__conn_close(conn, conn->pool->closing ? PP_CLOSE_CLOSED : pp__drain_reason(peer));
    return;
  }
  bool unclean = conn->kept_len > 0 && !conn->pool->opts.keep_idle_bytes;
  if (conn->leases == 0 && (unclean || peer->burned)) {
    /* Unread bytes are a reply nobody will read: lending the conn would shift every later
     * reply by one. A burned peer's conns do not return to service. */
    pp__conn_close(conn, peer->burned ? PP_CLOSE_CLOSED : PP_CLOSE_BROKEN);
    return;
  }
  if (peer->ejected && pp__peer_fail_code(peer) == PP_EEJECTED) {
    if (conn->leases == 0) pp__conn_close(conn, PP_CLOSE_EJECTED); /* its peer cools down */
    return;
  }
  peer->failures = 0; /* a healthy release ends a run of failures */
  if (peer->eject_streak) pp__peer_succeeded(peer);
  if (pp__conn_lendable(conn)) {
    pp__peer_mark_usable(conn->peer, conn);
    pp__conn_available(conn);
  }
}

/* ---- reading --------------------------------------------------------------------------- */

/* Keep bytes no reader took, appended or (front) ahead of those kept already. On failure to
 * grow the buffer the conn is broken (0 returned only on success). */
static int keep_bytes(pp_conn_t *conn, const char *data, size_t len, bool front) {
  if (conn->kept_len + len > conn->kept_cap) {
    size_t cap = conn->kept_cap ? conn->kept_cap : 4096;
    while (cap < conn->kept_len + len)
      cap *= 2;
    char *p = realloc(conn->kept, cap);
    if (p == NULL) {
      pp__conn_io_error(conn, UV_ENOMEM);
      return UV_ENOMEM;
    }
    conn->kept = p;
    conn->kept_cap = cap;
  }
  if (front) {
    memmove(conn->kept + len, conn->kept, conn->kept_len);
    memcpy(conn->kept, data, len);
  } else {
    memcpy(conn->kept + conn->kept_len, data, len);
  }
  conn->kept_len += len;
  if (conn->kept_len >= PP__READ_KEEP_MAX && (conn->flags & PP__CONN_F_READING)) {
    uv_read_stop(&conn->h.stream); /* backpressure until a reader drains it */
    conn->flags &= (uint16_t)~PP__CONN_F_READING;
  }
  return 0;
}

/* Bytes of the stream (plaintext on a TLS conn) to the reader, or kept for one. */
static void deliver(pp_conn_t *conn, char *data, ssize_t nread) {
  pp_pool_t *pool = conn->pool;
  if (pool->framing.kind != PP_FRAMING_NONE && pp__pipe_input(conn, data, (size_t)nread))
    return; /* replies (pipeline.c) */
  if (conn->leases == 0 && conn->phase == PP_CONN_READY && !pool->opts.keep_idle_bytes) {
    /* Nobody holds an idle conn, so its bytes are a late reply (or chatter) that would
     * reach the next holder ahead of its own reply: the conn is no longer clean. */
    uv_read_stop(&conn->h.stream);
    conn->flags &= (uint16_t)~PP__CONN_F_READING;
    pp__conn_close(conn, PP_CLOSE_REMOTE);
    return;
  }
  if (conn->read_cb && conn->kept_len == 0 && !(conn->flags & PP__CONN_F_DELIVER_PENDING)) {
    pp__count_io(conn, (pp__io_t){.msgs_in = 1});
    conn->read_cb(conn, nread, data, conn->read_arg);
    return;
  }
  keep_bytes(conn, data, (size_t)nread, false);
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  pp_conn_t *conn = stream->data;
  if (nread == 0) return;
  if (nread < 0) {
    uv_read_stop(stream);
    conn->flags &= (uint16_t)~PP__CONN_F_READING;
    if (conn->tls && tls_read_end(conn, (int)nread)) return;
    pp__conn_io_error(conn, (int)nread);
    return;
  }
  pp__count_io(conn, (pp__io_t){.bytes_in = (uint64_t)nread});
  if (conn->tls) {
    tls_input(conn, buf->base, (size_t)nread); /* plaintext goes to deliver */
    return;
  }
  deliver(conn, buf->base, nread);
}

/* The stream ended or failed. An idle conn just closes (the remote hung up: no failure), and so
 * does a leased one that saw a clean EOF (a server that answers and closes, as with
 * `Connection: close`); a leased one that saw an error is closed as broken and counts a
 * failure; a hook sees the error through its reader and decides. The error (UV_EOF too) reaches
 * the reader after any kept bytes. */
void pp__conn_io_error(pp_conn_t *conn, int err) {
  if (conn->broken) return;
  conn->broken = true;
  conn->last_error = err;
  if (conn->phase == PP_CONN_HANDSHAKE || conn->phase == PP_CONN_PINGING) {
    conn->kept_error = err;
    if (conn->read_cb) pp__defer_conn(conn->pool, conn);
    return;
  }
  if (conn->phase != PP_CONN_READY) return;
  if (conn->leases == 0 || err == UV_EOF) {
    pp__conn_close(conn, PP_CLOSE_REMOTE); /* the server hung up: not a failure */
    return;
  }
  if (pp__err_blames(err)) {
    conn->blamed = true;
    pp__peer_failed(conn->peer, err, true);
  }
  pp__conn_close(conn, PP_CLOSE_BROKEN);
}

int pp_conn_read_start(pp_conn_t *conn, pp_read_cb cb, void *arg) {
  if (conn == NULL || cb == NULL) return PP_EINVAL;
  if (conn->read_cb) return PP_ESTATE;
  bool pending = conn->kept_len > 0 || conn->kept_error != 0;
  if (conn->phase == PP_CONN_CLOSED && !pending) return PP_ECLOSED;
  conn->read_cb = cb;
  conn->read_arg = arg;
  if (pending) {
    pp__defer_conn(conn->pool, conn);
  } else if (!(conn->flags & PP__CONN_F_READING) && PP__CONN_SOCKET_LIVE(conn) && !conn->broken) {
    if (uv_read_start(&conn->h.stream, on_alloc, on_read) == 0) conn->flags |= PP__CONN_F_READING;
  }
  return 0;
}

int pp_conn_read_stop(pp_conn_t *conn) {
  if (conn) conn->read_cb = NULL;
  return 0;
}

int pp_conn_unread(pp_conn_t *conn, const char *data, size_t len) {
  if (conn == NULL || (data == NULL && len > 0)) return PP_EINVAL;
  if (conn->phase == PP_CONN_CLOSED) return PP_ECLOSED;
  return len == 0 ? 0 : keep_bytes(conn, data, len, true);
}

/* Hand kept bytes, then a kept error, to the reader (run from the defer queue, whose reference
 * keeps the conn while the reader runs). */
void pp__conn_deliver_kept(pp_conn_t *conn) {
  pp_pool_t *pool = conn->pool;
  if (conn->read_cb && conn->kept_len > 0) {
    size_t len = conn->kept_len;
    conn->kept_len = 0;
    pp__count_io(conn, (pp__io_t){.msgs_in = 1});
    /* The reader gets the buffer itself; nothing appends to it during the call. */
    conn->read_cb(conn, (ssize_t)len, conn->kept, conn->read_arg);
  }
  if (conn->read_cb && conn->kept_len == 0 && conn->kept_error) {
    pp_read_cb cb = conn->read_cb;
    int err = conn->kept_error;
    conn->read_cb = NULL;
    conn->kept_error = 0;
    cb(conn, err, NULL, conn->read_arg);
  }
  if (conn->read_cb && conn->kept_len > 0) pp__defer_conn(pool, conn); /* more arrived */
  if (!(conn->flags & PP__CONN_F_READING) && PP__CONN_SOCKET_LIVE(conn) && !conn->broken &&
      conn->kept_len < PP__READ_KEEP_MAX) {
    if (uv_read_start(&conn->h.stream, on_alloc, on_read) == 0) conn->flags |= PP__CONN_F_READING;
  }
}

/* ---- writing --------------------------------------------------------------------------- */

static void write_done(pp_write_t *req, int status) {
  pp_conn_t *conn = req->conn_;
  if (status == 0) {
    pp__count_io(conn, (pp__io_t){.bytes_out = req->bytes_, .msgs_out = 1});
  } else if (status != UV_ECANCELED) {
    pp__conn_io_error(conn, status);
  }
  req->cb_(req, status);
}

static void on_write(uv_write_t *w, int status) {
  write_done(w->data, status);
}

static int writable(const pp_conn_t *conn) {
  if (conn->phase == PP_CONN_CLOSED || !PP__CONN_SOCKET_LIVE(conn)) return pp__conn_end_error(conn);
  if (conn->phase != PP_CONN_READY && conn->phase != PP_CONN_HANDSHAKE &&
      conn->phase != PP_CONN_PINGING)
    return PP_ESTATE;
  return 0;
}

int pp_conn_try_write(pp_conn_t *conn, const uv_buf_t bufs[], unsigned int nbufs) {
  if (conn == NULL || (bufs == NULL && nbufs > 0)) return PP_EINVAL;
  int err = writable(conn);
  if (err) return err;
  /* Queued writes go first: writing past them would reorder the stream. */
  if (uv_stream_get_write_queue_size(&conn->h.stream) > 0) return UV_EAGAIN;
  if (conn->tls) return tls_try_write(conn, bufs, nbufs);
  int n = uv_try_write(&conn->h.stream, bufs, nbufs);
  if (n < 0) {
    if (n != UV_EAGAIN) pp__conn_io_error(conn, n);
    return n;
  }
  size_t total = 0;
  for (unsigned int i = 0; i < nbufs; i++)
    total += bufs[i].len;
  /* A message counts once all of it went. */
  pp__count_io(conn, (pp__io_t){.bytes_out = (uint64_t)n, .msgs_out = (size_t)n == total});
  return n;
}

int pp_conn_write(pp_write_t *req, pp_conn_t *conn, const uv_buf_t bufs[], unsigned int nbufs,
                  pp_write_cb cb) {
  if (req == NULL || conn == NULL || cb == NULL || (bufs == NULL && nbufs > 0)) return PP_EINVAL;
  int err = writable(conn);
  if (err) return err;
  size_t bytes = 0;
  for (unsigned int i = 0; i < nbufs; i++)
    bytes += bufs[i].len;
  req->conn_ = conn;
  req->cb_ = cb;
  req->bytes_ = bytes;
  req->uv_.data = req;
  if (conn->tls && bytes > 0) return tls_write(req, conn, bufs, nbufs);
  return uv_write(&req->uv_, &conn->h.stream, bufs, nbufs, on_write);
}

size_t pp_conn_write_queue_size(const pp_conn_t *conn) {
  if (!PP__CONN_SOCKET_LIVE(conn)) return 0;
  return uv_stream_get_write_queue_size(&conn->h.stream);
}

/* ---- closing --------------------------------------------------------------------------- */

/* Step 1: out of service and out of every count (the dial it owned, the pool's and the peer's
 * gauges, the close stats), so that what runs later sees consistent numbers. */
static void close_uncount(pp_conn_t *conn, pp_close_reason_t reason) {
  pp_pool_t *pool = conn->pool;
  pp_peer_t *peer = conn->peer;
  pp__peer_unmark_usable(peer, conn);
  if (conn->owner) {
    conn->owner->dial_ = NULL;
    conn->owner = NULL;
    pool->dial_owners--;
  }
  bool was_open = conn->phase == PP_CONN_READY || conn->phase == PP_CONN_PINGING;
  if (was_open) pool->stats.closed[reason]++;
  if (was_open) pp__ev_conn_close(conn, reason); /* events.c: recorded, delivered deferred */
  if (was_open && conn->leases > 0) pool->active--;
  set_phase(conn, PP_CONN_CLOSED);
  pp__race_cancel(conn);
  conn->dns_wait = false;
  peer->conns--;
  pool->total--;
  if (conn->probe) {
    conn->probe = false;
    peer->probing--;
  }
}

/* Step 2: whoever reads the conn learns why it ended (from the defer queue), its requests fail,
 * and its handles close; their callbacks drop their references. */
static void close_io(pp_conn_t *conn) {
  int why = pp__conn_end_error(conn);
  if (conn->read_cb) {
    if (!conn->kept_error) conn->kept_error = why;
    pp__defer_conn(conn->pool, conn);
  } else if (!conn->kept_error && conn->leases > 0) {
    conn->kept_error = why; /* a lessee that starts reading later still learns why */
  }
  pp__pipe_closed(conn); /* its requests fail, once each (pipeline.c) */
  tls_drop(conn, true);  /* close_notify, then the TLS state goes */
  close_handle(conn, on_handle_closed);
  if ((conn->flags & (PP__CONN_F_TIMER | PP__CONN_F_TIMER_CLOSING)) == PP__CONN_F_TIMER) {
    conn->flags |= PP__CONN_F_TIMER_CLOSING;
    uv_close((uv_handle_t *)&conn->timer, on_timer_closed);
  }
}

/* The one close path, in steps: uncount, end the I/O, re-derive the peer's state, then -- with
 * everything consistent -- tell the hook that held the conn, and let the freed slot serve
 * waiters from the defer queue (never policy code inside this call, which may come from a
 * release, a hook or the pool's close). Leases still on the conn stay attached until released
 * (or the pool's close detaches them); the memory goes with the last reference. */
void pp__conn_close(pp_conn_t *conn, pp_close_reason_t reason) {
  if (conn->phase == PP_CONN_CLOSED) return;
  pp_pool_t *pool = conn->pool;
  pp_peer_t *peer = conn->peer;
  bool hooked = hook_release(conn);
  close_uncount(conn, reason);
  close_io(conn);
  pp__peer_update_state(peer);
  if (!pool->closing) pp__warm_closed(conn, reason); /* min_idle: a replacement (warm.c) */
  if (!pool->closing) pp__capacity_soon(pool);
  if (hooked) hook_closed(conn);
}

/* ---- TLS (tls.c): the layer between the socket and the conn's stream ------------------ */

/* The stream failed with `err`: while the TLS handshake runs (no hook holds the conn yet)
 * that fails the attempt, later it is an I/O error as on a plain conn. */
static void tls_stream_failed(pp_conn_t *conn, int err) {
  if (conn->phase == PP_CONN_HANDSHAKE && !(conn->flags & PP__CONN_F_HOOK) &&
      PP__CONN_SOCKET_LIVE(conn))
    attempt_failed(conn, err);
  else
    pp__conn_io_error(conn, err);
}

static void on_tls_flushed(uv_write_t *w, int status) {
  pp__tls_out_t *out = (pp__tls_out_t *)w; /* the request is the chunk's first member */
  pp_conn_t *conn = out->data;
  pp__tls_output_done(out);
  if (status < 0 && status != UV_ECANCELED) tls_stream_failed(conn, status);
}

/* Send the ciphertext the layer made by itself (handshake flights, alerts, key update
 * answers). Returns 0, or the error the conn broke with. */
static int tls_flush(pp_conn_t *conn) {
  pp__tls_out_t *out;
  int err = 0;
  while (conn->tls && (out = pp__tls_output(conn->tls, &err)) != NULL) {
    out->data = conn;
    err = uv_write(&out->req, &conn->h.stream, &out->buf, 1, on_tls_flushed);
    if (err) {
      pp__tls_output_done(out);
      break;
    }
  }
  if (err) tls_stream_failed(conn, err);
  return err;
}

/* A TLS handshake failed: send the alert if we can, then fail the attempt (no retry: the owner
 * hears PP_ETLS, the peer's reason says why). */
static void tls_failed(pp_conn_t *conn) {
  tls_flush(conn);
  attempt_failed(conn, PP_ETLS);
}

/* on_connect, for a TLS conn: the ClientHello goes out; handshake_timeout runs from here. */
static void tls_start(pp_conn_t *conn) {
  pp_pool_t *pool = conn->pool;
  set_phase(conn, PP_CONN_HANDSHAKE);
  pp_timer_start(&conn->timer, on_handshake_timeout, (uint64_t)pool->opts.handshake_timeout);
  pp__peer_update_state(conn->peer);
  int r = pp__tls_handshake(conn->tls);
  if (r == PP_ETLS) {
    tls_failed(conn);
    return;
  }
  if (tls_flush(conn) == 0 && r == 0) transport_ready(conn); /* cannot happen before a reply */
}

static bool tls_alive(const pp_conn_t *conn) {
  return conn->tls && PP__CONN_SOCKET_LIVE(conn) && conn->phase != PP_CONN_CLOSED;
}

/* Ciphertext read from the socket: the handshake goes on, then plaintext goes to deliver.
 * Everything fed is decrypted at once (at most one read's worth), so nothing waits in the
 * layer for a read that may never come. */
static void tls_input(pp_conn_t *conn, const char *data, size_t len) {
  pp_pool_t *pool = conn->pool;
  int err = pp__tls_feed(conn->tls, data, len);
  if (err) {
    tls_stream_failed(conn, err);
    return;
  }
  if (!pp__tls_done(conn->tls)) {
    int r = pp__tls_handshake(conn->tls);
    if (r == PP_ETLS) {
      tls_failed(conn);
      return;
    }
    if (tls_flush(conn) != 0 || r == UV_EAGAIN) return;
    pp__hist_observe_ns(pool, PP_HIST_TLS, conn->phase_ns);
    conn->phase_ns = uv_hrtime(); /* the handshake hook starts */
    transport_ready(conn);        /* may lend, fail or close the conn */
  }
  ssize_t n = 0;
  while (tls_alive(conn) &&
         (n = pp__tls_read(conn->tls, pool->read_buf, sizeof(pool->read_buf))) > 0)
    deliver(conn, pool->read_buf, n);
  if (!tls_alive(conn)) return;
  if (tls_flush(conn) != 0) return;
  if (n == UV_EOF || n == PP_ETLS) {
    uv_read_stop(&conn->h.stream);
    conn->flags &= (uint16_t)~PP__CONN_F_READING;
    if (n == PP_ETLS && conn->phase == PP_CONN_READY && conn->leases == 0 && !conn->blamed) {
      /* A fatal alert on an idle conn (a TLS 1.3 server refusing our certificate after the
       * handshake) is the peer's failure even though nobody holds the conn. */
      conn->blamed = true;
      pp__peer_failed(conn->peer, PP_ETLS, true);
    }
    pp__conn_io_error(conn, (int)n);
  }
}

/* The socket ended (nread < 0) on a TLS conn. During the TLS handshake that is the handshake's
 * failure (with a reason); returns whether it was handled here. */
static bool tls_read_end(pp_conn_t *conn, int err) {
  if (pp__tls_done(conn->tls) || conn->phase != PP_CONN_HANDSHAKE) return false;
  if (err != UV_EOF) {
    attempt_failed(conn, err); /* reset: a failed connect attempt, retried as one */
    return true;
  }
  pp__tls_feed_eof(conn->tls);
  pp__tls_handshake(conn->tls); /* fails: "protocol: ... unexpected eof ..." */
  attempt_failed(conn, PP_ETLS);
  return true;
}

static void on_tls_write(uv_write_t *w, int status) {
  pp__tls_out_t *out = (pp__tls_out_t *)w;
  pp_write_t *req = out->data;
  pp__tls_output_done(out);
  write_done(req, status);
}

/* pp_conn_write on a TLS conn: the plaintext is encrypted now, its ciphertext queued; the last
 * chunk carries the caller's request (pp_write_t's own uv_ stays unused). */
static int tls_write(pp_write_t *req, pp_conn_t *conn, const uv_buf_t bufs[], unsigned int nbufs) {
  int err = pp__tls_write(conn->tls, bufs, nbufs);
  if (err) {
    if (err == PP_ETLS) pp__conn_io_error(conn, err);
    return err;
  }
  pp__tls_out_t *out = pp__tls_output(conn->tls, &err);
  while (out) {
    pp__tls_out_t *next = pp__tls_output(conn->tls, &err);
    bool last = next == NULL && err == 0;
    out->data = last ? (void *)req : (void *)conn;
    int r =
        uv_write(&out->req, &conn->h.stream, &out->buf, 1, last ? on_tls_write : on_tls_flushed);
    if (r) {
      pp__tls_output_done(out);
      if (next) pp__tls_output_done(next);
      pp__conn_io_error(conn, r);
      return r;
    }
    out = next;
  }
  if (err) pp__conn_io_error(conn, err);
  return err;
}

/* pp_conn_try_write on a TLS conn: records cannot be taken back once made, so every byte is
 * encrypted and taken; what the socket does not accept now is queued (UV_EAGAIN was answered
 * before, when writes were queued already). */
static int tls_try_write(pp_conn_t *conn, const uv_buf_t bufs[], unsigned int nbufs) {
  int err = pp__tls_write(conn->tls, bufs, nbufs);
  if (err) {
    if (err == PP_ETLS) pp__conn_io_error(conn, err);
    return err;
  }
  size_t total = 0;
  for (unsigned int i = 0; i < nbufs; i++)
    total += bufs[i].len;
  pp__tls_out_t *out;
  while ((out = pp__tls_output(conn->tls, &err)) != NULL) {
    int n = uv_try_write(&conn->h.stream, &out->buf, 1);
    if (n == UV_EAGAIN) n = 0;
    if (n >= 0 && (size_t)n < out->buf.len) {
      out->buf.base += n;
      out->buf.len -= (size_t)n;
      out->data = conn;
      n = uv_write(&out->req, &conn->h.stream, &out->buf, 1, on_tls_flushed);
      if (n == 0) continue;
    }
    pp__tls_output_done(out);
    if (n < 0) {
      err = n;
      break;
    }
  }
  if (err) {
    pp__conn_io_error(conn, err);
    return err;
  }
  pp__count_io(conn, (pp__io_t){.bytes_out = total, .msgs_out = 1});
  return (int)total;
}

/* The socket goes: close_notify first when `notify` (best effort: sent only if the socket
 * takes it now, as uv_close cancels queued writes), then the TLS state is freed (chunks still
 * queued stay valid until their cancelled callbacks hand them back). */
static void tls_drop(pp_conn_t *conn, bool notify) {
  if (conn->tls == NULL) return;
  /* A conn released as "do not reuse" is broken but its socket is fine; one that saw an I/O
   * error (last_error) gets nothing more written. */
  bool dead = conn->broken && conn->last_error != 0;
  if (notify && pp__tls_done(conn->tls) && !dead && PP__CONN_SOCKET_LIVE(conn)) {
    pp__tls_close_notify(conn->tls);
    pp__tls_out_t *out = pp__tls_output(conn->tls, NULL);
    if (out) {
      if (uv_stream_get_write_queue_size(&conn->h.stream) == 0)
        uv_try_write(&conn->h.stream, &out->buf, 1);
      pp__tls_output_done(out);
    }
  }
  pp__tls_free(conn->tls);
  conn->tls = NULL;
}

const char *pp_conn_tls_alpn(const pp_conn_t *conn) {
  return conn && conn->tls ? pp__tls_alpn(conn->tls, NULL) : NULL;
}

/* ---- accessors ------------------------------------------------------------------------- */

pp_peer_t *pp_conn_peer(const pp_conn_t *conn) {
  return conn->peer;
}
int pp_conn_leases(const pp_conn_t *conn) {
  return conn->leases;
}
int pp_conn_is_broken(const pp_conn_t *conn) {
  return conn->broken || conn->phase == PP_CONN_CLOSED;
}
uint64_t pp_conn_idle_ms(const pp_conn_t *conn) {
  uint64_t now = pp_now();
  return now > conn->last_used ? now - conn->last_used : 0;
}
void *pp_conn_get_data(const pp_conn_t *conn) {
  return conn->data;
}
void pp_conn_set_data(pp_conn_t *conn, void *data) {
  conn->data = data;
}

static void io_add(pp__io_t *to, const pp__io_t *add) {
  to->bytes_in += add->bytes_in;
  to->bytes_out += add->bytes_out;
  to->msgs_in += add->msgs_in;
  to->msgs_out += add->msgs_out;
}

void pp__count_io(pp_conn_t *conn, pp__io_t add) {
  io_add(&conn->io, &add);
  io_add(&conn->peer->io, &add);
  pp_stats_t *s = &conn->pool->stats;
  s->bytes_in += add.bytes_in;
  s->bytes_out += add.bytes_out;
  s->msgs_in += add.msgs_in;
  s->msgs_out += add.msgs_out;
}

void pp_conn_info(const pp_conn_t *conn, pp_conn_info_t *info) {
  PP__IO_REPORT(info, conn->io);
  info->created_at = conn->created_at;
  info->expires_at = conn->expires_at;
  info->leases = conn->leases_total;
}
