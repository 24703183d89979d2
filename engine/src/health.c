/* Peer health: what counts against a peer (blame), outlier ejection as Envoy does it (a
 * cool-down that doubles with each consecutive ejection up to eject_max, a cap on the share of
 * peers ejected at once, never all of them), early probes of held peers, the fail-fast answer
 * for a peer that cannot serve, burning (the last verdict), and the failure history an address
 * book saves and restores.
 *
 * A peer is "held" while it may not be dialled: ejected (until eject_until) or backing off
 * after failed connects (until retry_at). Held peers are not dialled for acquires; a peer that
 * once connected gets a probe instead — one connect attempt, handshake included, every
 * probe_interval — and its first success ends the hold. */
#include "internal.h"

bool pp__err_blames(int err) {
  if (err >= 0) return false;
  switch (err) {
    case PP_ENOREUSE:
    case UV_EOF:
    case PP_ECLOSED:
    case PP_ECANCELED:
    case UV_ECANCELED:
    case PP_EPIPELINE: /* another request's failure broke the conn */
      return false;
    default:
      return !pp__err_is_local(err);
  }
}

uint64_t pp__peer_hold_until(const pp_peer_t *peer) {
  return peer->eject_until > peer->retry_at ? peer->eject_until : peer->retry_at;
}

/* ---- the hold timer: ejections end on time, probes start on time ----------------------- */

static void hold_timer_cb(uv_timer_t *timer);

/* Arm the hold timer for the first ejection end or probe due, and, while acquires for any
 * peer wait or notices are armed, for the first backoff end too (a peer coming back can serve
 * them). */
void pp__hold_timer_arm(pp_pool_t *pool) {
  /* Peers whose backoff ended leave the backoff heap first: its head is then truly ahead (a
   * peer that may be dialled but is not, e.g. at max_total, is woken by a release instead). */
  pp__candidates_refresh(pool);
  uint64_t at = 0;
  if (pool->ejected.min) at = PP__CONTAINER(pool->ejected.min, pp_peer_t, eject_node)->eject_until;
  if (pool->probes.min) {
    uint64_t p = PP__CONTAINER(pool->probes.min, pp_peer_t, probe_node)->probe_at;
    if (at == 0 || p < at) at = p;
  }
  pp_peer_t *soonest = pp__soonest_backoff(pool);
  if (soonest && (pool->any_waiters.count > 0 || !pp__list_empty(&pool->notices))) {
    uint64_t b = pp__peer_hold_until(soonest);
    if (at == 0 || b < at) at = b;
  }
  if (at == 0 || pool->closing) {
    uv_timer_stop(&pool->hold_timer);
    return;
  }
  pp_timer_start_at(&pool->hold_timer, hold_timer_cb, at);
}

void pp__health_init(pp_pool_t *pool) {
  PP__HEAP_INIT(&pool->ejected, pp_peer_t, eject_node, eject_until, seq);
  PP__HEAP_INIT(&pool->probes, pp_peer_t, probe_node, probe_at, seq);
  uv_timer_init(pool->loop, &pool->hold_timer);
  pool->hold_timer.data = pool;
  /* Like the idle timer, held peers do not keep a program alive. */
  uv_unref((uv_handle_t *)&pool->hold_timer);
}

/* ---- ejection -------------------------------------------------------------------------- */

static uint64_t cooldown(const pp_pool_t *pool, int streak) {
  uint64_t cool = (uint64_t)pool->opts.eject_time, max = (uint64_t)pool->opts.eject_max;
  for (int i = 0; i < streak && cool < max; i++)
    cool *= 2;
  return cool > max ? max : cool;
}

void pp__eject_end(pp_peer_t *peer) {
  if (!peer->ejected) return;
  pp_pool_t *pool = peer->pool;
  pp__heap_remove(&pool->ejected, &peer->eject_node);
  if (!peer->burned) pp__ev_recover(peer);
  peer->ejected = false;
  peer->eject_until = 0;
  peer->eject_ended_at = pp_now();
  pool->nejected--;
  pp__peer_update_state(peer);
}

void pp__ejections_refresh(pp_pool_t *pool) {
  if (pool->ejected.min == NULL) return;
  uint64_t now = pp_now();
  while (pool->ejected.min) {
    pp_peer_t *peer = PP__CONTAINER(pool->ejected.min, pp_peer_t, eject_node);
    if (peer->eject_until > now) break;
    pp__eject_end(peer);
  }
}

/* Whether one more peer may be ejected: at most eject_max_percent of the peers that are not
 * burned, and never all of them (Envoy's max_ejection_percent, with a panic floor of one). */
static bool eject_allowed(pp_pool_t *pool) {
  pp__ejections_refresh(pool);
  int64_t live = (int64_t)pool->npeers - pool->nburned;
  int64_t after = (int64_t)pool->nejected + 1;
  return after < live && after * 100 <= (int64_t)pool->opts.eject_max_percent * live;
}

static void set_ejected(pp_peer_t *peer, uint64_t until) {
  pp_pool_t *pool = peer->pool;
  if (peer->ejected)
    pp__heap_remove(&pool->ejected, &peer->eject_node);
  else
    pool->nejected++;
  peer->ejected = true;
  peer->eject_until = until;
  pp__heap_insert(&pool->ejected, &peer->eject_node);
}

/* An ejected peer lends nothing: its idle conns close, its leased ones leave the buckets (so
 * a shared conn takes no new lease) and close when their last lease ends. */
static void bar_conns(pp_peer_t *peer) {
  pp__link_t *l = peer->conns_list.next;
  while (l != &peer->conns_list) {
    pp_conn_t *conn = PP__CONTAINER(l, pp_conn_t, peer_link);
    l = l->next;
    if (conn->leases == 0 && conn->phase == PP_CONN_READY && !conn->broken)
      pp__conn_close(conn, PP_CLOSE_EJECTED);
    else
      pp__peer_unmark_usable(peer, conn);
  }
}

/* Eject `peer` until `until` (loop ms): conns barred, waiters answered PP_EEJECTED. */
static void eject_until(pp_peer_t *peer, uint64_t until) {
  pp_pool_t *pool = peer->pool;
  set_ejected(peer, until);
  pp__peer_update_state(peer);
  bar_conns(peer);
  pp__fail_peer_waiters(peer, PP_EEJECTED);
  pp__probe_schedule(peer);
  pp__hold_timer_arm(pool);
}

static void eject(pp_peer_t *peer) {
  pp_pool_t *pool = peer->pool;
  uint64_t cool = cooldown(pool, peer->eject_streak);
  peer->eject_streak++;
  peer->ejections++;
  pool->stats.ejections++;
  eject_until(peer, pp_now() + cool);
  pp__ev_eject(peer, cool);
}

/* Ejection refused (the share of ejected peers is at its limit): the peer only backs off, for
 * min(eject_time, 500 ms), so that the pool keeps trying the peers it has. */
static void back_off_briefly(pp_peer_t *peer) {
  pp_pool_t *pool = peer->pool;
  uint64_t brief = (uint64_t)pool->opts.eject_time;
  if (brief > PP__BRIEF_BACKOFF_MS) brief = PP__BRIEF_BACKOFF_MS;
  uint64_t at = pp_now() + brief;
  if (peer->retry_at < at) peer->retry_at = at;
  pool->stats.ejections_refused++;
  pp__ev_eject_refused(peer, brief);
}

/* Whether `peer` is ejected now (an ejection whose time has passed ends here). */
static bool still_ejected(pp_peer_t *peer) {
  if (!peer->ejected) return false;
  if (pp__ahead(peer->pool, peer->eject_until)) return true;
  pp__eject_end(peer);
  return false;
}

void pp__peer_failed(pp_peer_t *peer, int err, bool in_use) {
  pp_pool_t *pool = peer->pool;
  if (pp__err_is_local(err)) return; /* this machine's shortage, not the peer's failure */
  if (in_use)
    peer->failures++;
  else
    peer->connect_failures++;
  peer->last_error = err;
  peer->last_error_at = pp_now();
  peer->last_failure = pp__unix_now_ms();
  peer->fail_in_use = in_use;
  int limit = pool->opts.eject_after;
  /* The run is not cleared by an ejection: once it ends, the next failure ejects again (with a
   * doubled cool-down) until a success ends the run — the circuit breaker's half-open state. */
  /* A draining (or removed) peer is on its way out: it is never ejected, so never probed, and
   * a removed one never enters the ejection heap again. */
  if (limit > 0 && peer->failures + peer->connect_failures >= limit && !peer->burned &&
      !peer->draining && !pool->closing && !still_ejected(peer)) {
    if (eject_allowed(pool))
      eject(peer);
    else
      back_off_briefly(peer);
  }
  pp__peer_update_state(peer);
}

void pp__peer_succeeded(pp_peer_t *peer) {
  pp_pool_t *pool = peer->pool;
  if (peer->eject_streak == 0 || peer->ejected) return;
  /* Sustained success: eject_time without a failure since the last ejection ended. Then the
   * next ejection starts again from eject_time. */
  uint64_t since =
      peer->last_error_at > peer->eject_ended_at ? peer->last_error_at : peer->eject_ended_at;
  if (pp_now() - since >= (uint64_t)pool->opts.eject_time) peer->eject_streak = 0;
}

/* ---- probes ---------------------------------------------------------------------------- */

void pp__probe_cancel(pp_peer_t *peer) {
  pp__heap_set_key(&peer->pool->probes, &peer->probe_node, 0);
}

void pp__probe_schedule(pp_peer_t *peer) {
  pp_pool_t *pool = peer->pool;
  int64_t every = pool->opts.probe_interval;
  if (every == 0 || pool->closing || peer->burned || peer->draining || peer->probe_at != 0) return;
  /* Only a peer that once connected is worth probing (the rest are mere addresses), and a
   * connect proves nothing about failures in use (resets mid-request, broken verdicts). */
  if (peer->last_success == 0 || (peer->ejected && peer->fail_in_use)) return;
  uint64_t at = pp_now() + (uint64_t)every;
  if (pp__peer_hold_until(peer) <= at) return; /* the hold ends first: it is dialled as usual */
  pp__heap_set_key(&pool->probes, &peer->probe_node, (int64_t)at);
  pp__hold_timer_arm(pool);
}

/* A probe of `peer` is due: dial it once if it is still held and nothing else is on its way. */
static void probe_due(pp_peer_t *peer) {
  pp_pool_t *pool = peer->pool;
  pp__probe_cancel(peer);
  if (peer->burned || !pp__ahead(pool, pp__peer_hold_until(peer))) return;
  bool busy = peer->dialing + peer->backoff + peer->handshaking > 0;
  bool room = peer->conns < pool->opts.max_per_peer && pool->total < pool->opts.max_total &&
              pp__peer_is_fresh(peer);
  if (busy || !room) {
    pp__probe_schedule(peer);
  } else {
    pp__ev_probe(peer);
    if (pp__conn_probe(peer) != 0) pp__probe_schedule(peer);
  }
}

static void hold_timer_cb(uv_timer_t *timer) {
  pp_pool_t *pool = timer->data;
  pp__ejections_refresh(pool);
  uint64_t now = pp_now();
  while (pool->probes.min) {
    pp_peer_t *peer = PP__CONTAINER(pool->probes.min, pp_peer_t, probe_node);
    if (peer->probe_at > now) break;
    probe_due(peer); /* leaves the heap, or is planned again later than now */
  }
  if (pool->any_waiters.count > 0) pp__capacity_opened(pool); /* held peers may be back */
  if (!pp__list_empty(&pool->notices)) pp__fire_notices(pool, 0);
  pp__hold_timer_arm(pool);
}

/* ---- fail fast ------------------------------------------------------------------------- */

int pp__peer_fail_code(pp_peer_t *peer) {
  pp_pool_t *pool = peer->pool;
  if (peer->draining) return PP_EREMOVED; /* drain.c */
  if (peer->burned) return PP_EBURNED;
  if (still_ejected(peer)) return PP_EEJECTED;
  if (peer->usable > 0 || peer->conns > peer->probing) return 0; /* a conn may serve it */
  /* A name that did not resolve (dns.c) answers PP_EDNS while it backs off, as its dial did. */
  if (pp__ahead(pool, peer->retry_at))
    return peer->last_error == PP_EDNS ? PP_EDNS : PP_ECANNOTCONNECT;
  if (!pp__peer_is_fresh(peer)) return PP_ENOPEER;
  return 0;
}

int pp_peer_check(pp_peer_t *peer) {
  if (peer == NULL) return PP_EINVAL;
  return pp__peer_fail_code(peer);
}

void pp__peer_event(pp_peer_t *peer, pp_peer_event_t event) {
  pp_pool_t *pool = peer->pool;
  if (event == PP_PEER_EVENT_BURNED) pp__ev_burn(peer);
  if (pool->policy.peer_event && !pool->closing)
    pool->policy.peer_event(pool->policy.data, pool, peer, event);
}

/* ---- history --------------------------------------------------------------------------- */

/* A loop time as Unix ms (0 stays 0). */
static int64_t loop_to_unix(const pp_pool_t *pool, uint64_t at) {
  if (at == 0) return 0;
  return pp__unix_now_ms() + ((int64_t)at - (int64_t)pp_now());
}

int64_t pp__peer_ejected_until_unix(const pp_peer_t *peer) {
  return peer->ejected ? loop_to_unix(peer->pool, peer->eject_until) : 0;
}

void pp_peer_history(const pp_peer_t *peer, pp_peer_history_t *out) {
  out->failures = peer->failures + peer->connect_failures;
  out->last_success = peer->last_success;
  out->last_failure = peer->last_failure;
  out->ejections = peer->ejections;
  out->eject_streak = peer->eject_streak;
  out->burned = peer->burned;
  out->ejected_until = pp__peer_ejected_until_unix(peer);
}

static bool history_valid(const pp_peer_history_t *h) {
  return h->failures >= 0 && h->last_success >= 0 && h->last_failure >= 0 && h->eject_streak >= 0 &&
         (h->burned == 0 || h->burned == 1) && h->ejected_until >= 0;
}

/* Restore an ejection that had `left` ms to go, when the share of ejected peers allows. */
static void restore_ejection(pp_peer_t *peer, int64_t left) {
  pp_pool_t *pool = peer->pool;
  if (left <= 0 || still_ejected(peer) || !eject_allowed(pool)) return;
  if (left > pool->opts.eject_max) left = pool->opts.eject_max;
  eject_until(peer, pp_now() + (uint64_t)left);
}

int pp_peer_restore(pp_peer_t *peer, const pp_peer_history_t *h) {
  if (peer == NULL || h == NULL || !history_valid(h)) return PP_EINVAL;
  pp_pool_t *pool = peer->pool;
  if (pool->closing) return PP_ECLOSED;
  int64_t unix_now = pp__unix_now_ms();
  peer->failures = h->failures; /* in use: only a healthy release clears it */
  peer->connect_failures = 0;
  peer->last_success = h->last_success;
  peer->last_failure = h->last_failure;
  peer->ejections = h->ejections;
  peer->eject_streak = h->eject_streak;
  peer->fail_in_use = false;
  if (h->last_failure > 0 && h->last_failure <= unix_now) {
    uint64_t now = pp_now(), ago = (uint64_t)(unix_now - h->last_failure);
    peer->last_error_at = ago < now ? now - ago : 1;
  }
  if (h->burned) {
    if (!peer->burned) pp__peer_burn(peer);
    return 0;
  }
  restore_ejection(peer, h->ejected_until - unix_now);
  pp__peer_update_state(peer);
  return 0;
}

/* ---- burning: the verdict of a backoff policy that gave up ------------------------------ */

/* Burn `peer`: its waiters end with PP_EBURNED, its unleased conns close (leased ones take no
 * new lease and close at release), and the policy hears that it left the live set. */
void pp__peer_burn(pp_peer_t *peer) {
  pp_pool_t *pool = peer->pool;
  peer->burned = true;
  pool->nburned++;
  pp__probe_cancel(peer);
  pp__eject_end(peer);
  pp__peer_update_state(peer);
  pp__fail_peer_waiters(peer, PP_EBURNED);
  pp__peer_retire_conns(peer, PP_CLOSE_CLOSED, PP_EBURNED);
  pp__peer_event(peer, PP_PEER_EVENT_BURNED);
}
