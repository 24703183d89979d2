/* The pool: creation, its accessors and policy, and its close (waiters and notices answered,
 * conns closed, the pool's own handles closed, then everything freed). Its deferred queue is in
 * defer.c, its timers' work in maintain.c, its stats in stats.c. */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

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
  pp__list_init(&pool->idle);
  pp__list_init(&pool->notices);
  pp__list_init(&pool->flush_conns);
  pp__list_init(&pool->defer_requests);
  pp_framing_init(&pool->framing, PP_FRAMING_NONE);
  if (opts->framing) pool->framing = *opts->framing; /* (validated with the options) */
  pool->opts.framing = &pool->framing;
  pp__candidates_init(pool);
  pp__health_init(pool);
  pool->rng = uv_hrtime() ^ (uint64_t)(uintptr_t)pool ^ 0x9E3779B97F4A7C15ull;
  if (pool->rng == 0) pool->rng = 1;
  pp__waiters_init(pool);  /* the queues, the deadline heap and its timer (waiter.c) */
  pp__maintain_init(pool); /* idle, keepalive and maintenance timers (maintain.c) */
  pp__defer_init(pool);    /* the check and idle handles of the deferred queue (defer.c) */
  pp__events_init(pool);   /* the leak timer */
  pp__warm_init(pool);     /* min_idle (warm.c) */
  pp__list_init(&pool->removed_peers);
  uv_timer_init(loop, &pool->drain_timer); /* graceful close (drain.c) */
  pool->drain_timer.data = pool;
  pool->own_handles = 10;
  *out = pool;
  return 0;
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
  /* Every handle the pool owns, whichever file started it; the count is taken from this list,
   * so a handle added here is waited for. */
  uv_handle_t *own[] = {
      (uv_handle_t *)&pool->idle_timer,      (uv_handle_t *)&pool->deadline_timer,
      (uv_handle_t *)&pool->keepalive_timer, (uv_handle_t *)&pool->maintenance_timer,
      (uv_handle_t *)&pool->hold_timer,      (uv_handle_t *)&pool->leak_timer,
      (uv_handle_t *)&pool->defer_check,     (uv_handle_t *)&pool->defer_idle,
      (uv_handle_t *)&pool->warm_timer,      (uv_handle_t *)&pool->drain_timer,
  };
  pool->own_handles = (int)(sizeof own / sizeof own[0]);
  for (size_t i = 0; i < sizeof own / sizeof own[0]; i++)
    uv_close(own[i], own_handle_closed);
}

void pp__close_begin(pp_pool_t *pool) {
  pool->closing = true;
  /* The timers that drive the pool's work; the drain timer, which ends a graceful close, runs
   * on (and events.c stops the leak timer). */
  uv_timer_t *work[] = {&pool->idle_timer,        &pool->deadline_timer, &pool->keepalive_timer,
                        &pool->maintenance_timer, &pool->hold_timer,     &pool->warm_timer};
  for (size_t i = 0; i < sizeof work / sizeof work[0]; i++)
    uv_timer_stop(work[i]);
  pp__events_close(pool);
  pp__dns_close(pool); /* host names (dns.c): queries end, their handles close */
  pp__fail_all_waiters(pool, PP_ECLOSED);
  pp__fire_notices(pool, PP_ECLOSED);
}

/* Detach every lease of `conn` (pp__lease_detach, as a release does): one granted but not yet
 * told hears PP_ECLOSED instead, one held is cut (its pp_release is then a no-op). */
static void detach_leases(pp_conn_t *conn) {
  pp_pool_t *pool = conn->pool;
  while (!pp__list_empty(&conn->lease_list)) {
    pp_lease_t *lease = PP__CONTAINER(conn->lease_list.next, pp_lease_t, qlink_);
    pp__lease_detach(conn, lease);
    if (lease->state_ == PP_LEASE_DONE) {
      lease->status_ = PP_ECLOSED; /* granted, callback not yet run */
      pp__cause_fill(lease, conn->peer, PP_ECLOSED);
    } else {
      lease->state_ = PP_LEASE_DETACHED;
      pool->stats.leases_cut++;
    }
    pp__conn_unref(conn); /* the lease's; the conn's own hold (below) keeps it */
  }
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
        cl = cl->next; /* the conn may be freed below */
        pp__conn_ref(conn);
        pp__conn_close(conn, PP_CLOSE_CLOSED); /* no-op when it closed earlier */
        detach_leases(conn);
        pp__conn_unref(conn); /* a conn closed earlier and held only by leases goes now */
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
