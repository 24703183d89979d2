/* Acquire and release: the idle fast path, routing by key, dialling on demand, and serving
 * waiters the moment a conn or a slot frees (the wait queue is waiter.c, busy notices
 * notice.c). Every acquire ends exactly once: granted, or one error. */
#include "internal.h"

/* ---- serving --------------------------------------------------------------------------- */

static void grant_waiter(pp_conn_t *conn, pp_lease_t *lease) {
  pp_pool_t *pool = conn->pool;
  bool dialed = lease == conn->owner;
  if (dialed)
    pool->stats.acquired_dialed++;
  else
    pool->stats.acquired_waited++;
  pp__dequeue(pool, lease);
  pp__conn_lease(conn, lease);
  lease->granted_ = conn->last_used;
  pp__hist_observe_ns(pool, PP_HIST_ACQUIRE_WAIT, lease->wait_ns_);
  pp__ev_granted(lease, conn, dialed);
  pp__defer_lease(pool, lease, 0);
}

/* Whether a waiter for a named peer could dial if the pool had one more slot. */
static bool slot_wanted(pp_pool_t *pool) {
  for (pp__link_t *l = pool->waiting_peers.next; l != &pool->waiting_peers; l = l->next) {
    pp_peer_t *peer = PP__CONTAINER(l, pp_peer_t, waiting_link);
    if (pp__peer_may_dial(peer) && pp__queue_first(&peer->waiters, true)) return true;
  }
  return false;
}

/* At max_total, an idle conn of one peer must not starve another peer's acquires: close the
 * longest-idle conn so a slot opens (its waiters, in order, get it). */
static void evict_idle(pp_pool_t *pool) {
  pp_conn_t *oldest = pool->total < pool->opts.max_total ? NULL : pp__idle_oldest(pool);
  if (oldest) pp__conn_close(oldest, PP_CLOSE_EVICTED);
}

void pp__conn_available(pp_conn_t *conn) {
  pp_pool_t *pool = conn->pool;
  pp_peer_t *peer = conn->peer;
  if (pool->closing) return;
  if (conn->owner && pp__conn_lendable(conn)) grant_waiter(conn, conn->owner);
  while ((peer->waiters.count > 0 || pool->any_waiters.count > 0) && pp__conn_lendable(conn)) {
    pp_lease_t *mine = pp__queue_first(&peer->waiters, false);
    pp_lease_t *any = pp__queue_first(&pool->any_waiters, false);
    grant_waiter(conn, pp__served_before(mine, any) ? mine : any);
  }
  if (conn->leases == 0 && pool->total >= pool->opts.max_total && slot_wanted(pool)) {
    pp__conn_close(conn, PP_CLOSE_EVICTED);
    return;
  }
  if (!pp__list_empty(&pool->notices) && pp__conn_lendable(conn)) pp__fire_notices(pool, 0);
}

void pp__capacity_opened(pp_pool_t *pool) {
  if (pool->closing) return;
  pp__fail_hopeless_waiters(pool);
  while (pool->total < pool->opts.max_total && pool->waiters > 0) {
    pp_lease_t *best = NULL;
    pp_peer_t *target = NULL;
    for (pp__link_t *l = pool->waiting_peers.next; l != &pool->waiting_peers; l = l->next) {
      pp_peer_t *peer = PP__CONTAINER(l, pp_peer_t, waiting_link);
      if (!pp__peer_can_dial(peer)) continue;
      pp_lease_t *lease = pp__queue_first(&peer->waiters, true);
      if (pp__served_before(lease, best)) {
        best = lease;
        target = peer;
      }
    }
    pp_lease_t *any = pp__queue_first(&pool->any_waiters, true);
    if (pp__served_before(any, best)) {
      pp_peer_t *peer = pp__select_peer(pool, 1, any->key_);
      if (peer) {
        best = any;
        target = peer;
      }
    }
    if (best == NULL) break;
    int err = pp__conn_dial(target, best, NULL);
    if (err) pp__lease_complete(best, err);
  }
  if (!pp__list_empty(&pool->notices)) pp__fire_notices(pool, 0);
}

/* ---- the API --------------------------------------------------------------------------- */

static int check_args(pp_pool_t *pool, pp_lease_t *lease, pp_peer_t *peer,
                      const pp_acquire_opts_t *opts) {
  if (pool == NULL || lease == NULL) return PP_EINVAL;
  if (pool->closing) return PP_ECLOSED;
  if (lease->state_ != PP_LEASE_UNUSED && lease->state_ != PP_LEASE_DETACHED) return PP_EINVAL;
  if (peer && peer->pool != pool) return PP_EINVAL;
  if (opts && ((opts->busy != PP_BUSY_WAIT && opts->busy != PP_BUSY_FAIL) || opts->timeout < -1 ||
               opts->priority < 0 || opts->priority > PP_PRIORITY_MAX))
    return PP_EINVAL;
  return 0;
}

static void lease_reset(pp_lease_t *lease, pp_pool_t *pool, pp_peer_t *peer,
                        const pp_acquire_opts_t *opts, pp_acquire_cb cb) {
  lease->conn = NULL;
  lease->peer = NULL;
  lease->cause = 0;
  lease->why_.code = 0;
  lease->since_ = 0;
  lease->leak_id_ = 0;
  lease->tried_ = NULL;
  lease->pool_ = pool;
  lease->want_ = peer;
  lease->dial_ = NULL;
  lease->cb_ = cb;
  lease->key_ = opts ? opts->key : NULL;
  lease->priority_ = opts ? (unsigned char)opts->priority : 0;
  lease->busy_ = opts ? (unsigned char)opts->busy : PP_BUSY_WAIT;
  lease->deadline_ = 0;
  lease->state_ = PP_LEASE_UNUSED;
}

/* The peer an acquire goes to: the one it named, or for a key the route hook's owner. */
static pp_peer_t *target_of(pp_pool_t *pool, pp_peer_t *peer, const pp_acquire_opts_t *opts) {
  if (peer == NULL && opts && opts->key && pool->policy.route) return pp__route(pool, opts->key);
  return peer;
}

/* Answer an acquire at once with `code`, recording why; the lease stays unused. */
static int fail_now(pp_lease_t *lease, int code, pp_peer_t *peer) {
  pp__cause_fill(lease, peer, code);
  return code;
}

/* A burned, ejected or draining peer lends nothing, not even a shared conn it still has. */
static int barred(pp_peer_t *peer) {
  return peer->burned || peer->ejected || peer->draining ? pp__peer_fail_code(peer) : 0;
}

/* The conn to lend now, or NULL. A conn that idled past ping_after is sent for a ping first
 * (it serves a waiter when the ping succeeds) and the search goes on. */
static pp_conn_t *find_usable(pp_pool_t *pool, pp_peer_t *peer, const char *key) {
  for (;;) {
    pp_peer_t *p = peer;
    if (p == NULL) {
      if (pp__list_empty(&pool->usable_peers)) return NULL;
      p = pp__select_peer(pool, 0, key);
    }
    if (p == NULL || p->usable == 0) return NULL;
    pp_conn_t *conn = pp__select_conn(p, key);
    if (!pool->policy.ping || !pp__conn_needs_ping(conn, (uint64_t)pool->opts.ping_after))
      return conn;
    pp__conn_ping(conn);
  }
}

int pp_try_acquire(pp_pool_t *pool, pp_lease_t *lease, pp_peer_t *peer,
                   const pp_acquire_opts_t *opts) {
  int err = check_args(pool, lease, peer, opts);
  if (err) return err;
  peer = target_of(pool, peer, opts);
  lease_reset(lease, pool, peer, opts, NULL);
  if (peer && (err = barred(peer)) != 0) return fail_now(lease, err, peer);
  pp_conn_t *conn = find_usable(pool, peer, lease->key_);
  if (conn == NULL) {
    if (peer && (err = pp__peer_fail_code(peer)) != 0) return fail_now(lease, err, peer);
    return PP_EAGAIN;
  }
  pp__conn_lease(conn, lease);
  lease->state_ = PP_LEASE_GRANTED;
  lease->granted_ = conn->last_used;
  pool->stats.acquires++;
  pool->stats.acquired_immediate++;
  pp__hist_observe_zero(pool, PP_HIST_ACQUIRE_WAIT);
  return 0;
}

/* The peer to dial for an acquire that found no usable conn, or NULL. */
static pp_peer_t *dial_target(pp_pool_t *pool, pp_peer_t *peer, const char *key) {
  if (peer) {
    if (pp__peer_may_dial(peer)) evict_idle(pool); /* at max_total, make room */
    return pp__peer_can_dial(peer) ? peer : NULL;
  }
  return pool->total < pool->opts.max_total ? pp__select_peer(pool, 1, key) : NULL;
}

/* Dial `target` for `lease`, which waits meanwhile. */
static int wait_for_dial(pp_pool_t *pool, pp_lease_t *lease, pp_peer_t *target, int64_t timeout) {
  pp__enqueue(pool, lease, timeout);
  int err = pp__conn_dial(target, lease, NULL);
  if (err) {
    pp__dequeue(pool, lease);
    lease->state_ = PP_LEASE_UNUSED;
    return err;
  }
  pool->stats.acquires++;
  pp__ev_queued(lease, target);
  return 0;
}

/* Queue `lease` behind capacity, or answer at once (nothing can serve, busy, backlog full). */
static int wait_for_capacity(pp_pool_t *pool, pp_lease_t *lease, int64_t timeout) {
  pp_peer_t *peer = lease->want_;
  if (peer == NULL && !pp__any_peer_could_serve(pool) && !pp__request_seed(pool, 1)) {
    pp_peer_t *telling; /* (with a seed hook, an acquire for any peer waits for addresses) */
    int code = pp__any_fail_code(pool, &telling);
    if (telling) pool->stats.failed_fast++;
    return fail_now(lease, code, telling);
  }
  if (lease->busy_ == PP_BUSY_FAIL) {
    pool->stats.busy++;
    return fail_now(lease, PP_EBUSY, peer);
  }
  if (pool->waiters - pool->dial_owners >= pool->opts.backlog) {
    pool->stats.exhausted++;
    return fail_now(lease, PP_EEXHAUSTED, peer);
  }
  pp__enqueue(pool, lease, timeout);
  pool->stats.acquires++;
  pp__ev_queued(lease, NULL);
  if (peer == NULL) {
    /* A seed hook may have added peers during this call: dial one for the new waiter. */
    if (pool->total < pool->opts.max_total) pp__capacity_opened(pool);
    pp__hold_timer_arm(pool); /* and a peer whose backoff ends may serve it */
  }
  return 0;
}

int pp_acquire(pp_pool_t *pool, pp_lease_t *lease, pp_peer_t *peer, const pp_acquire_opts_t *opts,
               pp_acquire_cb cb) {
  int err = check_args(pool, lease, peer, opts);
  if (err) return err;
  if (cb == NULL) return PP_EINVAL;
  peer = target_of(pool, peer, opts);
  lease_reset(lease, pool, peer, opts, cb);
  if (peer && (err = barred(peer)) != 0) {
    pool->stats.failed_fast++;
    return fail_now(lease, err, peer);
  }
  pp_conn_t *conn = find_usable(pool, peer, lease->key_);
  if (conn) {
    pp__conn_lease(conn, lease);
    lease->granted_ = conn->last_used;
    pool->stats.acquires++;
    pool->stats.acquired_immediate++;
    pp__hist_observe_zero(pool, PP_HIST_ACQUIRE_WAIT);
    pp__defer_lease(pool, lease, 0);
    return 0;
  }
  if (peer && (err = pp__peer_fail_code(peer)) != 0) {
    pool->stats.failed_fast++;
    return fail_now(lease, err, peer);
  }
  int64_t timeout = opts && opts->timeout >= 0 ? opts->timeout : pool->opts.acquire_timeout;
  pp_peer_t *target = dial_target(pool, peer, lease->key_);
  if (target) return wait_for_dial(pool, lease, target, timeout);
  return wait_for_capacity(pool, lease, timeout);
}

int pp_acquire_cancel(pp_lease_t *lease) {
  if (lease == NULL) return PP_EINVAL;
  pp_pool_t *pool = lease->pool_;
  if (lease->state_ == PP_LEASE_WAITING) {
    pool->stats.canceled++;
    pp__lease_fail(lease, PP_ECANCELED, lease->want_);
    return 0;
  }
  if (lease->state_ == PP_LEASE_DONE && lease->status_ == 0 && lease->conn) {
    /* Granted but not yet told: undo the grant and report the cancel instead. */
    pp_conn_t *conn = lease->conn;
    pp__conn_unlease(conn, lease);
    pp__conn_released(conn, 0);
    pool->stats.canceled++;
    lease->status_ = PP_ECANCELED;
    pp__cause_fill(lease, lease->want_, PP_ECANCELED);
    return 0;
  }
  return PP_ESTATE;
}

int pp_release(pp_lease_t *lease, int status) {
  if (lease == NULL || status > 0) return PP_EINVAL;
  if (lease->state_ == PP_LEASE_DETACHED) {
    lease->state_ = PP_LEASE_UNUSED;
    return 0;
  }
  if (lease->state_ != PP_LEASE_GRANTED || lease->conn == NULL) return PP_ESTATE;
  pp_conn_t *conn = lease->conn;
  pp_pool_t *pool = conn->pool;
  pp__conn_unlease(conn, lease);
  lease->state_ = PP_LEASE_UNUSED;
  pool->stats.releases++;
  if (lease->leak_id_) {
    pp__ev_unleak(lease, conn,
                  conn->last_used > lease->granted_ ? conn->last_used - lease->granted_ : 0);
    lease->leak_id_ = 0;
  }
  /* conn->last_used is the release stamp pp__conn_unlease just took. */
  pp__hist_observe_us(
      pool, PP_HIST_HOLD,
      conn->last_used > lease->granted_ ? (conn->last_used - lease->granted_) * 1000 : 0);
  if (pp__err_blames(status)) pool->stats.released_broken++;
  pp__conn_released(conn, status);
  if (pool->drain_closing) pp__maybe_finish(pool); /* the last lease of a graceful close */
  return 0;
}
