/* The deferred queue: lease and notice callbacks, reader deliveries, state events and pipeline
 * requests run from the pool's check handle, so a callback never runs inside the engine call
 * that decided it (libuv's promise), and a callback may free the object that called it. */
#include "internal.h"

#include <string.h>

static void defer_run(uv_check_t *check);

void pp__defer_init(pp_pool_t *pool) {
  pp__list_init(&pool->defer_leases);
  pp__list_init(&pool->defer_notices);
  pp__list_init(&pool->defer_conns);
  uv_check_init(pool->loop, &pool->defer_check);
  uv_idle_init(pool->loop, &pool->defer_idle);
  pool->defer_check.data = pool;
  pool->defer_idle.data = pool;
}

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
  if (conn->flags & PP__CONN_F_DELIVER_PENDING) return;
  conn->flags |= PP__CONN_F_DELIVER_PENDING;
  pp__conn_ref(conn); /* the conn stays until its reader has been handed what is kept */
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

void pp__capacity_soon(pp_pool_t *pool) {
  if (pool->closing) return;
  pool->capacity_soon = true;
  pp__defer_wake(pool);
}

void pp__defer_pool_event(pp_pool_t *pool) {
  pool->events_len++;
  pp__defer_wake(pool);
}

/* Run what was queued before this pass; what callbacks queue now runs on the next pass, so
 * a callback that re-acquires in a loop cannot starve I/O. */
static void defer_run(uv_check_t *check) {
  pp_pool_t *pool = check->data;
  pp__link_t leases, notices, conns;
  pool->defer_pass++;
  /* First the slots that opened since the last pass, so the acquires they serve or fail are
   * answered in this pass. */
  if (pool->capacity_soon) {
    pool->capacity_soon = false;
    pp__capacity_opened(pool);
  }
  unsigned int nevents = pool->events_len;
  pp__list_splice(&pool->defer_leases, &leases);
  pp__list_splice(&pool->defer_notices, &notices);
  pp__list_splice(&pool->defer_conns, &conns);

  for (; nevents > 0 && pool->events_len > 0; nevents--) {
    struct pp__event_s e = pool->events[pool->events_head];
    pool->events_head = (pool->events_head + 1) % pool->events_cap;
    pool->events_len--;
    pp__event_deliver(pool, &e.ev);
  }
  while (!pp__list_empty(&conns)) {
    pp_conn_t *conn = PP__CONTAINER(conns.next, pp_conn_t, defer_link);
    pp__list_remove(&conn->defer_link);
    conn->flags &= (uint16_t)~PP__CONN_F_DELIVER_PENDING;
    pp__conn_deliver_kept(conn);
    pp__conn_unref(conn);
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
      pp__list_empty(&pool->defer_conns) && pool->events_len == 0 && !pp__pipe_pending(pool) &&
      !pool->capacity_soon) {
    pool->defer_active = false;
    uv_check_stop(&pool->defer_check);
    uv_idle_stop(&pool->defer_idle);
  }
  pp__maybe_finish(pool);
}
