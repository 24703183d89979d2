/* Waiters: acquires that could not be served yet. One FIFO queue per peer and one for acquires
 * for any peer, each a list per priority level; deadlines in one heap with one timer (ties go
 * by insertion order, so equal deadlines fire FIFO); ending a waiter (granted elsewhere, failed,
 * timed out, canceled) takes it out of both. */
#include "internal.h"

static void deadline_timer_cb(uv_timer_t *timer);

void pp__queue_init(pp__queue_t *q) {
  for (int i = 0; i <= PP_PRIORITY_MAX; i++)
    pp__list_init(&q->level[i]);
  q->count = 0;
}

void pp__waiters_init(pp_pool_t *pool) {
  pp__list_init(&pool->waiting_peers);
  pp__queue_init(&pool->any_waiters);
  PP__HEAP_INIT(&pool->deadlines, pp_lease_t, heap_, deadline_, seq_);
  uv_timer_init(pool->loop, &pool->deadline_timer);
  pool->deadline_timer.data = pool;
}

static pp__queue_t *queue_of(pp_pool_t *pool, pp_lease_t *lease) {
  return lease->want_ ? &lease->want_->waiters : &pool->any_waiters;
}

/* The first waiter in service order; with `without_dial`, the first that owns no dial. */
pp_lease_t *pp__queue_first(pp__queue_t *q, bool without_dial) {
  if (q->count == 0) return NULL;
  for (int p = PP_PRIORITY_MAX; p >= 0; p--) {
    for (pp__link_t *l = q->level[p].next; l != &q->level[p]; l = l->next) {
      pp_lease_t *lease = PP__CONTAINER(l, pp_lease_t, qlink_);
      if (!without_dial || lease->dial_ == NULL) return lease;
    }
  }
  return NULL;
}

/* Whether `a` is served before `b` (NULL is served last). */
bool pp__served_before(const pp_lease_t *a, const pp_lease_t *b) {
  if (a == NULL) return false;
  if (b == NULL) return true;
  if (a->priority_ != b->priority_) return a->priority_ > b->priority_;
  return a->seq_ < b->seq_;
}

static void arm_deadline_timer(pp_pool_t *pool) {
  if (pool->deadlines.min == NULL || pool->closing) return;
  pp_lease_t *first = PP__CONTAINER(pool->deadlines.min, pp_lease_t, heap_);
  pp_timer_start_at(&pool->deadline_timer, deadline_timer_cb, first->deadline_);
}

int pp__waiters_ahead(pp_lease_t *lease) {
  pp__queue_t *q = queue_of(lease->pool_, lease);
  int n = 0;
  for (int p = PP_PRIORITY_MAX; p > lease->priority_; p--)
    for (pp__link_t *l = q->level[p].next; l != &q->level[p]; l = l->next)
      n++;
  for (pp__link_t *l = q->level[lease->priority_].next; l != &lease->qlink_; l = l->next)
    n++;
  return n;
}

void pp__enqueue(pp_pool_t *pool, pp_lease_t *lease, int64_t timeout) {
  pp__queue_t *q = queue_of(pool, lease);
  lease->wait_ns_ = uv_hrtime();
  uint64_t now = lease->wait_ns_ / 1000000; /* pp_now(), from the same reading */
  lease->state_ = PP_LEASE_WAITING;
  lease->seq_ = ++pool->seq;
  lease->since_ = now;
  pp__list_push(&q->level[lease->priority_], &lease->qlink_);
  if (q->count++ == 0 && lease->want_)
    pp__list_push(&pool->waiting_peers, &lease->want_->waiting_link);
  pool->waiters++;
  lease->deadline_ = 0;
  if (timeout > 0) {
    lease->deadline_ = now + (uint64_t)timeout;
    pp__heap_insert(&pool->deadlines, &lease->heap_);
    if (pool->deadlines.min == &lease->heap_) arm_deadline_timer(pool);
  }
}

void pp__dequeue(pp_pool_t *pool, pp_lease_t *lease) {
  pp__queue_t *q = queue_of(pool, lease);
  pp__list_remove(&lease->qlink_);
  if (--q->count == 0 && lease->want_) pp__list_remove(&lease->want_->waiting_link);
  pool->waiters--;
  if (lease->deadline_) {
    pp__heap_remove(&pool->deadlines, &lease->heap_);
    lease->deadline_ = 0;
  }
  if (lease->dial_) {
    lease->dial_->owner = NULL; /* the dial goes on; its conn will serve someone else */
    lease->dial_ = NULL;
    pool->dial_owners--;
  }
  /* A ref'd timer armed for a waiter that left would keep uv_run from returning. */
  if (pool->deadlines.min == NULL) uv_timer_stop(&pool->deadline_timer);
}

static void deadline_timer_cb(uv_timer_t *timer) {
  pp_pool_t *pool = timer->data;
  uint64_t now = pp_now();
  while (pool->deadlines.min) {
    pp_lease_t *lease = PP__CONTAINER(pool->deadlines.min, pp_lease_t, heap_);
    if (lease->deadline_ > now) break;
    pool->stats.timed_out++;
    pp__lease_fail(lease, PP_ETIMEDOUT, lease->want_);
  }
  arm_deadline_timer(pool);
}

void pp__lease_complete(pp_lease_t *lease, int status) {
  pp_pool_t *pool = lease->pool_;
  if (lease->state_ == PP_LEASE_WAITING) pp__dequeue(pool, lease);
  pp__defer_lease(pool, lease, status);
}

void pp__lease_fail(pp_lease_t *lease, int status, pp_peer_t *peer) {
  if (status == PP_ECANNOTCONNECT) lease->pool_->stats.cannot_connect++;
  pp__cause_fill(lease, peer, status);
  pp__lease_complete(lease, status);
}

static void fail_queue(pp_pool_t *pool, pp__queue_t *q, int status, pp_peer_t *peer) {
  pp_lease_t *lease;
  while ((lease = pp__queue_first(q, false)) != NULL)
    pp__lease_fail(lease, status, peer);
}

void pp__fail_peer_waiters(pp_peer_t *peer, int status) {
  fail_queue(peer->pool, &peer->waiters, status, peer);
}

void pp__fail_all_waiters(pp_pool_t *pool, int status) {
  while (!pp__list_empty(&pool->waiting_peers)) {
    pp_peer_t *peer = PP__CONTAINER(pool->waiting_peers.next, pp_peer_t, waiting_link);
    fail_queue(pool, &peer->waiters, status, peer);
  }
  fail_queue(pool, &pool->any_waiters, status, NULL);
}

bool pp__any_peer_could_serve(pp_pool_t *pool) {
  return pool->live_peers > 0 || pp__any_dial_candidate(pool);
}

void pp__fail_hopeless_waiters(pp_pool_t *pool) {
  pp__link_t *l = pool->waiting_peers.next;
  while (l != &pool->waiting_peers) {
    pp_peer_t *peer = PP__CONTAINER(l, pp_peer_t, waiting_link);
    l = l->next; /* failing its waiters takes the peer off the list */
    int code = pp__peer_fail_code(peer);
    if (code) fail_queue(pool, &peer->waiters, code, peer);
  }
  /* With a seed hook, acquires for any peer wait for the addresses it brings. */
  if (pool->any_waiters.count == 0 || pool->policy.seed || pp__any_peer_could_serve(pool)) return;
  pp_peer_t *telling;
  int code = pp__any_fail_code(pool, &telling);
  pp_lease_t *lease;
  while ((lease = pp__queue_first(&pool->any_waiters, false)) != NULL) {
    /* The peer its own dial failed on tells most (burned, say), if it still cannot serve. */
    int own = lease->tried_ ? pp__peer_fail_code(lease->tried_) : 0;
    pp__lease_fail(lease, own ? own : code, own ? lease->tried_ : telling);
  }
}

void pp__dial_failed(pp_conn_t *conn, int status) {
  pp_lease_t *owner = conn->owner;
  if (owner == NULL) return;
  pp_pool_t *pool = conn->pool;
  if (owner->want_ == NULL && !pp__err_is_local(status)) {
    /* An acquire for any peer is not bound to this one: it waits on, for a conn another peer
     * frees or a dial of another peer (pp__capacity_opened), and fails only when no peer
     * can serve (pp__fail_hopeless_waiters). */
    owner->dial_ = NULL;
    owner->tried_ = conn->peer;
    conn->owner = NULL;
    pool->dial_owners--;
    return;
  }
  owner->cause = conn->last_error;
  pp__lease_fail(owner, status, conn->peer);
}
