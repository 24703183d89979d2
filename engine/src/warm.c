/* min_idle: conns kept open and idle for each peer, so that the first requests after a quiet
 * period pay no connect or TLS cost. HikariCP's minimumIdle semantics: the pool dials in the
 * background whenever a peer has fewer idle (or connecting) conns than min_idle, within
 * max_per_peer and max_total, and idle_timeout retires idle conns only down to min_idle.
 *
 * Work stays proportional to the peers that lack conns: a peer joins pool->warm_needy when it
 * may have fallen short (added, a conn leased or closed) and leaves once it has enough, or
 * cannot have any (burned, draining). Peers that may not be dialled now (backing off, ejected,
 * too old, at a limit) stay and are looked at again every maintenance_interval. Dials start
 * from the warm timer, never inside the engine call that found the shortfall. */
#include "internal.h"

static void warm_timer_cb(uv_timer_t *timer);

void pp__warm_init(pp_pool_t *pool) {
  pp__list_init(&pool->warm_needy);
  pp__list_init(&pool->warm_idle);
  uv_timer_init(pool->loop, &pool->warm_timer);
  pool->warm_timer.data = pool;
  /* Like idle conns, conns kept warm do not keep a program alive. */
  uv_unref((uv_handle_t *)&pool->warm_timer);
}

void pp__warm_need(pp_peer_t *peer) {
  pp_pool_t *pool = peer->pool;
  if (pool->closing || peer->draining || pp__warm_min(peer) == 0) return;
  if (!pp__linked(&peer->warm_link)) pp__list_push(&pool->warm_needy, &peer->warm_link);
  if (pool->warm_soon) return;
  pool->warm_soon = true;
  pp_timer_start(&pool->warm_timer, warm_timer_cb, 0); /* the next tick */
}

void pp__warm_closed(pp_conn_t *conn, pp_close_reason_t reason) {
  pp_peer_t *peer = conn->peer;
  /* A server that accepts and hangs up at once (or sends unasked bytes) ends every conn with a
   * successful connect, which clears the connect backoff; a dial that fails for want of fds has
   * no backoff at all. Either would have min_idle redial on the next tick, forever. */
  bool wasted = reason == PP_CLOSE_REMOTE ||
                (reason == PP_CLOSE_CLOSED && pp__err_is_local(conn->last_error));
  if (wasted && conn->leases_total == 0 && pp__warm_min(peer) > 0) {
    if (peer->warm_streak < 30) peer->warm_streak++;
    /* The built-in connect backoff's curve (full jitter, 100 ms doubling up to 30 s). */
    uint64_t hold = (uint64_t)pp_backoff_full_jitter(peer->pool, peer->warm_streak, 100, 30000);
    peer->warm_hold = pp_now() + (hold > 0 ? hold : 1);
  }
  pp__warm_check(peer);
}

/* Dial what `peer` lacks. Returns whether it is done with (has enough, or never will); if not,
 * lowers *retry_at to when it may be dialled again (its hold), if that is before. */
static bool fill(pp_peer_t *peer, uint64_t *retry_at) {
  pp_pool_t *pool = peer->pool;
  int min = pp__warm_min(peer);
  if (peer->draining || peer->burned || min == 0) return true;
  /* Connecting conns count: each becomes idle, or serves a waiter (its lease brings the peer
   * back here). */
  int have = peer->idle + peer->dialing + peer->backoff + peer->handshaking;
  if (peer->warm_hold && pp__ahead(pool, peer->warm_hold)) {
    if (peer->warm_hold < *retry_at) *retry_at = peer->warm_hold;
    return have >= min;
  }
  int dialled = 0;
  bool done = true;
  while (have < min) {
    if (!pp__peer_can_dial(peer) || pp__conn_dial(peer, NULL, NULL) != 0) {
      done = false;
      break;
    }
    have++;
    dialled++;
    pool->stats.warm_dials++;
  }
  if (dialled > 0)
    pp__explain(pool, "warm", peer, 0,
                "%s: %d conn%s dialled to keep min_idle %d (idle %d, conns %d/%d, pool %d/%d)",
                peer->addr, dialled, dialled == 1 ? "" : "s", min, peer->idle, peer->conns,
                pool->opts.max_per_peer, pool->total, pool->opts.max_total);
  return done;
}

static void warm_timer_cb(uv_timer_t *timer) {
  pp_pool_t *pool = timer->data;
  pool->warm_soon = false;
  if (pool->closing) return;
  bool pending = false;
  uint64_t retry_at = pp_now() + (uint64_t)pool->opts.maintenance_interval;
  pp__link_t *l = pool->warm_needy.next;
  while (l != &pool->warm_needy) {
    pp_peer_t *peer = PP__CONTAINER(l, pp_peer_t, warm_link);
    l = l->next;
    if (fill(peer, &retry_at))
      pp__list_remove(&peer->warm_link);
    else
      pending = true;
  }
  /* A peer that may not be dialled now (held, backing off, ejected, at a limit) is tried again:
   * at its hold's end, or every maintenance_interval. */
  if (pending && !pool->warm_soon) pp_timer_start_at(&pool->warm_timer, warm_timer_cb, retry_at);
}

int pp_peer_set_min_idle(pp_peer_t *peer, int min_idle) {
  if (peer == NULL || min_idle < -1 || min_idle > peer->pool->opts.max_per_peer) return PP_EINVAL;
  if (peer->pool->closing) return PP_ECLOSED;
  peer->min_idle = min_idle;
  pp__warm_check(peer);
  return 0;
}

bool pp__warm_keep(pp_conn_t *conn) {
  pp_peer_t *peer = conn->peer;
  if (peer->idle > pp__warm_min(peer) || peer->draining) return false;
  pp__list_remove(&conn->idle_link);
  pp__list_push(&conn->pool->warm_idle, &conn->idle_link);
  return true;
}

pp_conn_t *pp__idle_oldest(pp_pool_t *pool) {
  if (!pp__list_empty(&pool->idle)) return PP__CONTAINER(pool->idle.next, pp_conn_t, idle_link);
  if (!pp__list_empty(&pool->warm_idle))
    return PP__CONTAINER(pool->warm_idle.next, pp_conn_t, idle_link);
  return NULL;
}
