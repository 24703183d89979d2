/* The pool: creation, close, the deferred-callback queue, stats, small utilities. */
#include "internal.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

static void defer_run(uv_check_t *check);
static void idle_timer_cb(uv_timer_t *timer);
static void keepalive_timer_cb(uv_timer_t *timer);
static void maintenance_timer_cb(uv_timer_t *timer);

static int deadline_less(const pp__heap_node_t *a, const pp__heap_node_t *b) {
  const pp_lease_t *x = PP__CONTAINER(a, pp_lease_t, heap_);
  const pp_lease_t *y = PP__CONTAINER(b, pp_lease_t, heap_);
  if (x->deadline_ != y->deadline_) return x->deadline_ < y->deadline_;
  return x->seq_ < y->seq_;
}

static void queue_init(pp__queue_t *q) {
  for (int i = 0; i <= PP_PRIORITY_MAX; i++)
    pp__list_init(&q->level[i]);
  q->count = 0;
}

int pp_pool_new(uv_loop_t *loop, const pp_options_t *opts, pp_pool_t **out, const char **why) {
  pp_options_t defaults;
  if (why) *why = NULL;
  if (loop == NULL || out == NULL) {
    if (why) *why = loop == NULL ? "loop must not be NULL" : "pool must not be NULL";
    return PP_EINVAL;
  }
  if (opts == NULL) {
    pp_options_init(&defaults);
    opts = &defaults;
  }
  int err = pp_options_validate(opts, why);
  if (err) return err;
  pp_pool_t *pool = calloc(1, sizeof(*pool));
  if (pool == NULL) return UV_ENOMEM;
  pool->explain = calloc(PP_EXPLAIN_MAX, sizeof(*pool->explain)); /* events.c */
  if (pool->explain == NULL) {
    free(pool);
    return UV_ENOMEM;
  }
  pool->loop = loop;
  pool->opts = *opts;
  err = pp__tls_pool_init(pool, opts->tls, why); /* TLS (tls.c): copies opts->tls */
  if (err == 0 && (err = pp__dns_pool_init(pool, opts->dns_servers)) != 0) /* dns.c */
    pp__tls_pool_free(pool);
  if (err) {
    free(pool->explain);
    free(pool);
    return err;
  }
  pp__list_init(&pool->peers);
  pp__list_init(&pool->usable_peers);
  pp__list_init(&pool->waiting_peers);
  pp__list_init(&pool->idle);
  pp__list_init(&pool->notices);
  pp__list_init(&pool->defer_leases);
  pp__list_init(&pool->defer_notices);
  pp__list_init(&pool->defer_conns);
  pp__list_init(&pool->flush_conns);
  pp__list_init(&pool->defer_requests);
  pp_framing_init(&pool->framing, PP_FRAMING_NONE);
  if (opts->framing) pool->framing = *opts->framing; /* (validated with the options) */
  pool->opts.framing = &pool->framing;
  queue_init(&pool->any_waiters);
  pp__candidates_init(pool);
  pp__health_init(pool);
  pp__heap_init(&pool->deadlines, deadline_less);
  pool->rng = uv_hrtime() ^ (uint64_t)(uintptr_t)pool ^ 0x9E3779B97F4A7C15ull;
  if (pool->rng == 0) pool->rng = 1;
  uv_timer_init(loop, &pool->idle_timer);
  uv_timer_init(loop, &pool->deadline_timer);
  uv_timer_init(loop, &pool->keepalive_timer);
  uv_timer_init(loop, &pool->maintenance_timer);
  pool->maintenance_timer.data = pool;
  /* Unlike idle conns, maintenance is work the program asked for (target_peers): like a
   * listening server, it keeps the loop alive until the pool is closed. */
  if (opts->target_peers > 0)
    uv_timer_start(&pool->maintenance_timer, maintenance_timer_cb, 0,
                   (uint64_t)opts->maintenance_interval);
  uv_check_init(loop, &pool->defer_check);
  uv_idle_init(loop, &pool->defer_idle);
  pool->idle_timer.data = pool;
  pool->deadline_timer.data = pool;
  pool->keepalive_timer.data = pool;
  pool->defer_check.data = pool;
  pool->defer_idle.data = pool;
  /* Idle conns must not keep a program alive (as Node's agent unrefs free sockets). */
  uv_unref((uv_handle_t *)&pool->idle_timer);
  uv_unref((uv_handle_t *)&pool->keepalive_timer);
  if (opts->keepalive > 0)
    uv_timer_start(&pool->keepalive_timer, keepalive_timer_cb, (uint64_t)opts->keepalive,
                   (uint64_t)opts->keepalive);
  pp__events_init(pool); /* the leak timer */
  pp__warm_init(pool);   /* min_idle (warm.c) */
  pp__list_init(&pool->removed_peers);
  uv_timer_init(loop, &pool->drain_timer); /* graceful close (drain.c) */
  pool->drain_timer.data = pool;
  pool->own_handles = 10;
  *out = pool;
  return 0;
}

/* ---- deferred callbacks: run in the check phase, so never inside the caller's call ----- */

static void defer_idle_cb(uv_idle_t *idle) {
  (void)idle;
}

static void defer_wake(pp_pool_t *pool) {
  if (pool->defer_active || pool->own_closed) return;
  pool->defer_active = true;
  uv_check_start(&pool->defer_check, defer_run);
  /* An active idle handle makes the poll phase return at once, so the check runs soon. */
  uv_idle_start(&pool->defer_idle, defer_idle_cb);
}

void pp__defer_wake(pp_pool_t *pool) {
  defer_wake(pool);
}

void pp__defer_lease(pp_pool_t *pool, pp_lease_t *lease, int status) {
  lease->state_ = PP_LEASE_DONE;
  lease->status_ = status;
  pp__list_push(&pool->defer_leases, &lease->dlink_);
  pp__defer_wake(pool);
}

void pp__defer_notice(pp_pool_t *pool, pp_notice_t *notice, int status) {
  notice->state_ = PP_NOTICE_DONE;
  notice->status_ = status;
  pp__list_push(&pool->defer_notices, &notice->dlink_);
  pp__defer_wake(pool);
}

void pp__defer_conn(pp_pool_t *pool, pp_conn_t *conn) {
  if (conn->deliver_pending) return;
  conn->deliver_pending = true;
  pp__list_push(&pool->defer_conns, &conn->defer_link);
  pp__defer_wake(pool);
}

void pp__defer_event(pp_pool_t *pool, pp_peer_t *peer, pp_peer_state_t from, pp_peer_state_t to) {
  if (pool->state_cb == NULL && pool->event_cb == NULL) return;
  struct pp__event_s *e = pp__event_slot(pool); /* events.c */
  if (e == NULL) return;
  memset(&e->ev, 0, sizeof(e->ev));
  e->ev.kind = PP_EVENT_STATE;
  e->ev.peer = peer;
  e->ev.at = pp_now();
  e->ev.from = from;
  e->ev.to = to;
  pp__defer_pool_event(pool);
}

void pp__defer_pool_event(pp_pool_t *pool) {
  pool->events_len++;
  pp__defer_wake(pool);
}

static void splice(pp__link_t *from, pp__link_t *to) {
  pp__list_init(to);
  if (pp__list_empty(from)) return;
  to->next = from->next;
  to->prev = from->prev;
  to->next->prev = to;
  to->prev->next = to;
  pp__list_init(from);
}

/* Run what was queued before this pass; what callbacks queue now runs on the next pass, so
 * a callback that re-acquires in a loop cannot starve I/O. */
static void defer_run(uv_check_t *check) {
  pp_pool_t *pool = check->data;
  pp__link_t leases, notices, conns;
  unsigned int nevents = pool->events_len;
  pool->defer_pass++;
  splice(&pool->defer_leases, &leases);
  splice(&pool->defer_notices, &notices);
  splice(&pool->defer_conns, &conns);

  for (; nevents > 0 && pool->events_len > 0; nevents--) {
    struct pp__event_s e = pool->events[pool->events_head];
    pool->events_head = (pool->events_head + 1) % pool->events_cap;
    pool->events_len--;
    pp__event_deliver(pool, &e.ev);
  }
  while (!pp__list_empty(&conns)) {
    pp_conn_t *conn = PP__CONTAINER(conns.next, pp_conn_t, defer_link);
    pp__list_remove(&conn->defer_link);
    conn->deliver_pending = false;
    pp__conn_deliver_kept(conn);
  }
  while (!pp__list_empty(&leases)) {
    pp_lease_t *lease = PP__CONTAINER(leases.next, pp_lease_t, dlink_);
    pp__list_remove(&lease->dlink_);
    int status = lease->status_;
    lease->state_ = status == 0 ? PP_LEASE_GRANTED : PP_LEASE_UNUSED;
    lease->cb_(lease, status);
  }
  while (!pp__list_empty(&notices)) {
    pp_notice_t *notice = PP__CONTAINER(notices.next, pp_notice_t, dlink_);
    pp__list_remove(&notice->dlink_);
    notice->state_ = PP_NOTICE_IDLE;
    notice->cb_(notice, notice->status_);
  }
  /* Removed peers go once the callbacks that mention them have run (drain.c). */
  if (!pp__list_empty(&pool->removed_peers)) pp__peers_reap(pool);
  pp__pipe_run_deferred(pool);
  /* Last: the requests every callback of this pass sent leave in one write per conn. */
  pp__pipe_flush_all(pool);
  if (pp__list_empty(&pool->defer_leases) && pp__list_empty(&pool->defer_notices) &&
      pp__list_empty(&pool->defer_conns) && pool->events_len == 0 && !pp__pipe_pending(pool)) {
    pool->defer_active = false;
    uv_check_stop(&pool->defer_check);
    uv_idle_stop(&pool->defer_idle);
  }
  pp__maybe_finish(pool);
}

/* ---- close ----------------------------------------------------------------------------- */

static void own_handle_closed(uv_handle_t *handle) {
  pp_pool_t *pool = handle->data;
  if (--pool->own_handles > 0) return;
  pp_close_cb cb = pool->close_cb;
  if (cb) cb(pool);
  /* Free everything: peers own their conns' memory only through the lists, and every conn
   * was freed when its handles closed (leases were detached at close). */
  while (!pp__list_empty(&pool->peers)) {
    pp_peer_t *peer = PP__CONTAINER(pool->peers.next, pp_peer_t, order_link);
    pp__list_remove(&peer->order_link);
    pp__peer_free(peer);
  }
  pp__peers_free_removed(pool); /* drain.c */
  pp__tls_pool_free(pool);      /* TLS (tls.c) */
  pp__dns_pool_free(pool);      /* host names (dns.c) */
  free(pool->table);
  free(pool->scratch);
  free(pool->events);
  free(pool->explain);
  free(pool);
}

void pp__maybe_finish(pp_pool_t *pool) {
  if (!pool->closing || pool->own_closed || pool->conn_handles > 0 || pool->defer_active) return;
  /* A graceful close waits for leases on conns that closed under them, too: their release
   * still reaches the pool (pp_release calls this again). */
  if (pool->drain_closing && pp__drain_leases_left(pool)) return;
  pool->own_closed = true;
  uv_close((uv_handle_t *)&pool->idle_timer, own_handle_closed);
  uv_close((uv_handle_t *)&pool->deadline_timer, own_handle_closed);
  uv_close((uv_handle_t *)&pool->keepalive_timer, own_handle_closed);
  uv_close((uv_handle_t *)&pool->maintenance_timer, own_handle_closed);
  uv_close((uv_handle_t *)&pool->hold_timer, own_handle_closed);
  uv_close((uv_handle_t *)&pool->leak_timer, own_handle_closed);
  uv_close((uv_handle_t *)&pool->defer_check, own_handle_closed);
  uv_close((uv_handle_t *)&pool->defer_idle, own_handle_closed);
  uv_close((uv_handle_t *)&pool->warm_timer, own_handle_closed);
  uv_close((uv_handle_t *)&pool->drain_timer, own_handle_closed);
}

void pp__close_begin(pp_pool_t *pool) {
  pool->closing = true;
  uv_timer_stop(&pool->idle_timer);
  uv_timer_stop(&pool->deadline_timer);
  uv_timer_stop(&pool->keepalive_timer);
  uv_timer_stop(&pool->maintenance_timer);
  uv_timer_stop(&pool->hold_timer);
  uv_timer_stop(&pool->warm_timer);
  pp__events_close(pool);
  pp__dns_close(pool); /* host names (dns.c): queries end, their handles close */
  pp__fail_all_waiters(pool, PP_ECLOSED);
  pp__fire_notices(pool, PP_ECLOSED);
}

/* Close every conn; detach the leases still holding one. */
void pp__close_all_conns(pp_pool_t *pool) {
  pp__link_t *pl, *lists[2] = {&pool->peers, &pool->removed_peers};
  for (int i = 0; i < 2; i++)
    for (pl = lists[i]->next; pl != lists[i]; pl = pl->next) {
      pp_peer_t *peer = PP__CONTAINER(pl, pp_peer_t, order_link);
      pp__link_t *cl = peer->conns_list.next;
      while (cl != &peer->conns_list) {
        pp_conn_t *conn = PP__CONTAINER(cl, pp_conn_t, peer_link);
        cl = cl->next;                      /* the conn may be freed below */
        pp__peer_unmark_usable(peer, conn); /* while its bucket still matches its lease count */
        while (!pp__list_empty(&conn->lease_list)) {
          pp_lease_t *lease = PP__CONTAINER(conn->lease_list.next, pp_lease_t, qlink_);
          pp__list_remove(&lease->qlink_);
          lease->conn = NULL;
          if (lease->state_ == PP_LEASE_DONE) {
            lease->status_ = PP_ECLOSED; /* granted, callback not yet run */
            pp__cause_fill(lease, peer, PP_ECLOSED);
          } else {
            lease->state_ = PP_LEASE_DETACHED;
            pool->stats.leases_cut++;
          }
          conn->leases--;
          peer->leases--;
          if (conn->leases == 0 && conn->phase != PP_CONN_CLOSED) pool->active--;
        }
        if (conn->phase == PP_CONN_CLOSED)
          pp__conn_maybe_free(conn); /* closed earlier, held only by the leases just detached */
        else
          pp__conn_close(conn, PP_CLOSE_CLOSED);
      }
    }
}

int pp_pool_close(pp_pool_t *pool, pp_close_cb cb) {
  if (pool == NULL) return PP_EINVAL;
  if (pool->closing && !pool->drain_closing) return PP_ECLOSED;
  if (pool->drain_closing) { /* a graceful close ends now (drain.c) */
    pool->drain_closing = false;
    uv_timer_stop(&pool->drain_timer);
    if (cb) pool->close_cb = cb;
  } else {
    pool->close_cb = cb;
    pp__close_begin(pool);
  }
  pp__close_all_conns(pool);
  pp__maybe_finish(pool);
  return 0;
}

int pp_pool_is_closing(const pp_pool_t *pool) {
  return pool->closing;
}
uv_loop_t *pp_pool_loop(const pp_pool_t *pool) {
  return pool->loop;
}
const pp_options_t *pp_pool_options(const pp_pool_t *pool) {
  return &pool->opts;
}
void *pp_pool_get_data(const pp_pool_t *pool) {
  return pool->data;
}
void pp_pool_set_data(pp_pool_t *pool, void *data) {
  pool->data = data;
}

void pp_pool_set_policy(pp_pool_t *pool, const pp_policy_t *policy) {
  if (policy)
    pool->policy = *policy;
  else
    memset(&pool->policy, 0, sizeof(pool->policy));
  if (pool->policy.peer_event == NULL) return;
  /* The new policy learns the live peers, so a ring it keeps starts out right. */
  for (pp__link_t *l = pool->peers.next; l != &pool->peers; l = l->next) {
    pp_peer_t *peer = PP__CONTAINER(l, pp_peer_t, order_link);
    if (!peer->burned) pp__peer_event(peer, PP_PEER_EVENT_ADDED);
  }
}

void pp_pool_on_state(pp_pool_t *pool, pp_state_cb cb) {
  pool->state_cb = cb;
}

/* ---- idle sweep: one timer for the whole pool, armed for the oldest idle conn ---------- */

void pp__idle_timer_arm(pp_pool_t *pool) {
  if (pool->opts.idle_timeout == 0 || pool->closing || pp__list_empty(&pool->idle)) return;
  if (uv_is_active((uv_handle_t *)&pool->idle_timer)) return;
  pp_conn_t *oldest = PP__CONTAINER(pool->idle.next, pp_conn_t, idle_link);
  pp_timer_start_at(&pool->idle_timer, idle_timer_cb,
                     oldest->last_used + (uint64_t)pool->opts.idle_timeout);
}

static void idle_timer_cb(uv_timer_t *timer) {
  pp_pool_t *pool = timer->data;
  uint64_t now = pp_now();
  while (!pp__list_empty(&pool->idle)) {
    pp_conn_t *oldest = PP__CONTAINER(pool->idle.next, pp_conn_t, idle_link);
    if (oldest->last_used + (uint64_t)pool->opts.idle_timeout > now) break;
    if (pp__warm_keep(oldest)) continue; /* min_idle: moved to pool->warm_idle (warm.c) */
    pp__conn_close(oldest, PP_CLOSE_IDLE);
  }
  pp__idle_timer_arm(pool);
}

/* Ping every conn that has idled `keepalive` ms. The idle list is oldest first, so the walk
 * stops at the first conn that idled less. */
static void keepalive_timer_cb(uv_timer_t *timer) {
  pp_pool_t *pool = timer->data;
  if (pool->policy.ping == NULL) return;
  uint64_t idle_ms = (uint64_t)pool->opts.keepalive;
  /* Both idle lists (the conns min_idle keeps, too) are oldest first. */
  pp__link_t *lists[2] = {&pool->warm_idle, &pool->idle};
  for (int i = 0; i < 2; i++)
    while (!pp__list_empty(lists[i])) {
      pp_conn_t *oldest = PP__CONTAINER(lists[i]->next, pp_conn_t, idle_link);
      if (!pp__conn_needs_ping(oldest, idle_ms)) break;
      pp__conn_ping(oldest); /* leaves the idle list */
    }
}

/* target_peers: count peers ready or on their way, dial fresh ones for the rest (chosen by
 * the selection policy among dialable peers with no conn), and ask the seed hook for more
 * addresses when none is left. */
static void maintenance_timer_cb(uv_timer_t *timer) {
  pp_pool_t *pool = timer->data;
  const int *by = pool->stats.peers_by_state;
  int have = by[PP_PEER_READY] + by[PP_PEER_CONNECTED] + by[PP_PEER_CONNECTING];
  for (int need = pool->opts.target_peers - have; need > 0; need--) {
    pp_peer_t *peer = pp__select_peer(pool, 2, NULL);
    if (peer == NULL) {
      pp__request_seed(pool, need);
      break;
    }
    if (pp__conn_dial(peer, NULL, NULL) != 0) break;
  }
}

bool pp__request_seed(pp_pool_t *pool, int wanted) {
  if (pool->policy.seed == NULL || pool->closing) return false;
  uint64_t now = pp_now();
  if (pool->last_seed != 0 && now - pool->last_seed < (uint64_t)pool->opts.seed_interval)
    return true;
  pool->last_seed = now ? now : 1;
  pool->stats.seeds++;
  pool->policy.seed(pool->policy.data, pool, wanted);
  return true;
}

/* ---- stats ----------------------------------------------------------------------------- */

void pp_pool_stats(const pp_pool_t *pool, pp_stats_t *s) {
  *s = pool->stats;
  s->conns = pool->total;
  s->idle = pool->idle_count;
  s->active = pool->active;
  s->connecting = pool->dialing;
  s->waiters = pool->waiters;
  s->peers = (int)pool->npeers;
  s->connect_latency_ms_avg =
      pool->stats.connects_ok ? pool->connect_latency_sum / (double)pool->stats.connects_ok : 0;
}

/* ---- utilities ------------------------------------------------------------------------- */

uint64_t pp__random(pp_pool_t *pool) {
  /* xorshift64*: fast, and good enough for jitter. */
  uint64_t x = pool->rng;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  pool->rng = x;
  return x * 0x2545F4914F6CDD1Dull;
}

void **pp__scratch(pp_pool_t *pool, int n) {
  if (n > pool->scratch_cap) {
    int cap = pool->scratch_cap ? pool->scratch_cap : 16;
    while (cap < n)
      cap *= 2;
    void **p = realloc(pool->scratch, (size_t)cap * sizeof(void *));
    if (p == NULL) return NULL;
    pool->scratch = p;
    pool->scratch_cap = cap;
  }
  return pool->scratch;
}

uint64_t pp_now(void) {
  return uv_hrtime() / 1000000;
}


bool pp__ahead(pp_pool_t *pool, uint64_t at) {
  return at > uv_now(pool->loop) && at > pp_now();
}

uint64_t pp__stamp(pp_pool_t *pool) {
  uint64_t now = uv_now(pool->loop);
#ifdef CLOCK_MONOTONIC_COARSE
  /* libuv reads its loop time from CLOCK_MONOTONIC (or its coarse variant): one timeline. */
  struct timespec ts;
  if (clock_gettime(CLOCK_MONOTONIC_COARSE, &ts) == 0) {
    uint64_t coarse = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
    if (coarse > now) now = coarse;
  }
  return now;
#else
  return pp_now();
#endif
}

void pp_timer_start_at(uv_timer_t *timer, uv_timer_cb cb, uint64_t at) {
  /* libuv counts from its cached loop time, which lags behind after blocking work: count from
   * it too, so the timer fires at `at` on the same timeline. At least 1 ms: libuv 1.44 runs a
   * timer due "now" again within the timer phase that is running, and a callback that re-arms
   * for a cause that has not gone would keep the loop there (no I/O, no check phase). */
  uint64_t base = uv_now(timer->loop);
  uv_timer_start(timer, cb, at > base ? at - base : 1, 0);
}

void pp_timer_start(uv_timer_t *timer, uv_timer_cb cb, uint64_t ms) {
  pp_timer_start_at(timer, cb, pp_now() + ms);
}

int64_t pp__unix_now_ms(void) {
  uv_timeval64_t tv;
  if (uv_gettimeofday(&tv) != 0) return 0;
  return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}
