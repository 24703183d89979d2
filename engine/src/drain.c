/* Taking peers and pools out of service without cutting requests short: draining a peer (no new
 * lease, conns close as their leases end), removing one (the same, and it leaves the pool), and
 * closing a pool gracefully (leases may finish within a deadline).
 *
 * A removed peer's memory outlives the call: its leased conns, the deferred callbacks that
 * report its waiters' failures and its events still point at it. It waits on
 * pool->removed_peers and is freed at the end of a deferred pass once it has no conn left, no
 * queued event names it and the pass began after its removal (so the callbacks queued by the
 * removal have run); its explain entries keep their text and forget the pointer. */
#include "internal.h"

pp_close_reason_t pp__drain_reason(const pp_peer_t *peer) {
  return peer->removed ? PP_CLOSE_REMOVED : PP_CLOSE_DRAINED;
}

/* Stop lending `peer`'s conns and dialling it: waiters and notices hear PP_EREMOVED, conns no
 * lease holds close now, leased ones close at release (pp__conn_released), and the policy's live
 * set loses it. `removing` also forgets its hold (ejection, probe): it will never be dialled. */
static void bar(pp_peer_t *peer, bool removing) {
  pp_pool_t *pool = peer->pool;
  peer->draining = true;
  if (pp__linked(&peer->warm_link)) pp__list_remove(&peer->warm_link);
  pp__probe_cancel(peer);
  if (removing && peer->ejected) {
    pp__heap_remove(&pool->ejected, &peer->eject_node);
    peer->ejected = false;
    pool->nejected--;
  }
  pp__peer_update_state(peer); /* leaves the dial candidates and the live count */
  pp__fail_peer_waiters(peer, PP_EREMOVED);
  pp__fire_peer_notices(pool, peer, PP_EREMOVED);
  peer->removed = removing; /* (the close reason of conns closed later: pp__drain_reason) */
  pp__peer_retire_conns(peer, pp__drain_reason(peer), PP_EREMOVED);
  if (!peer->burned) pp__peer_event(peer, PP_PEER_EVENT_REMOVED); /* burned: it left already */
}

static int check(pp_pool_t *pool, pp_peer_t *peer) {
  if (pool == NULL || peer == NULL || peer->pool != pool || peer->removed) return PP_EINVAL;
  if (pool->closing) return PP_ECLOSED;
  return 0;
}

int pp_pool_drain_peer(pp_pool_t *pool, pp_peer_t *peer) {
  int err = check(pool, peer);
  if (err || peer->draining) return err;
  pool->stats.peers_drained++;
  bar(peer, false);
  pp__explain(pool, "drain", peer, 0,
              "%s draining: no new leases; %d leased conn%s close at release (%d lease%s held)",
              peer->addr, peer->conns, peer->conns == 1 ? "" : "s", peer->leases,
              peer->leases == 1 ? "" : "s");
  pp__capacity_soon(pool); /* its closed conns freed slots; any-peer waiters may be hopeless */
  return 0;
}

int pp_pool_remove_peer(pp_pool_t *pool, pp_peer_t *peer) {
  int err = check(pool, peer);
  if (err) return err;
  pool->stats.peers_removed++;
  bar(peer, true);
  /* An acquire for any peer whose dial of this peer failed names it as the telling peer. */
  for (int p = 0; p <= PP_PRIORITY_MAX; p++)
    for (pp__link_t *l = pool->any_waiters.level[p].next; l != &pool->any_waiters.level[p];
         l = l->next) {
      pp_lease_t *lease = PP__CONTAINER(l, pp_lease_t, qlink_);
      if (lease->tried_ == peer) lease->tried_ = NULL;
    }
  pp__explain(pool, "remove", peer, 0,
              "%s removed: no new leases; %d leased conn%s close at release, %d lease%s held",
              peer->addr, peer->conns, peer->conns == 1 ? "" : "s", peer->leases,
              peer->leases == 1 ? "" : "s");
  pp__peer_unlink(peer); /* out of the table, the peer list and the state counts */
  peer->removed_pass = pool->defer_pass;
  pp__list_push(&pool->removed_peers, &peer->order_link);
  pp__defer_wake(pool); /* to free it once the callbacks it caused have run */
  pp__capacity_soon(pool);
  return 0;
}

void pp__peers_reap(pp_pool_t *pool) {
  pp__link_t *l = pool->removed_peers.next;
  while (l != &pool->removed_peers) {
    pp_peer_t *peer = PP__CONTAINER(l, pp_peer_t, order_link);
    l = l->next;
    if (!pp__list_empty(&peer->conns_list) || peer->removed_pass >= pool->defer_pass ||
        pp__events_mention(pool, peer))
      continue; /* its conn frees, the next pass or the event's delivery wakes us again */
    pp__list_remove(&peer->order_link);
    pp__explain_forget(pool, peer);
    pp__tls_peer_free(peer);
    pp__peer_free(peer);
  }
  /* A peer that waits only for the next pass must get one. */
  if (!pp__list_empty(&pool->removed_peers)) {
    for (l = pool->removed_peers.next; l != &pool->removed_peers; l = l->next) {
      pp_peer_t *peer = PP__CONTAINER(l, pp_peer_t, order_link);
      if (pp__list_empty(&peer->conns_list)) {
        pp__defer_wake(pool);
        break;
      }
    }
  }
}

bool pp__drain_leases_left(pp_pool_t *pool) {
  pp__link_t *lists[2] = {&pool->peers, &pool->removed_peers};
  for (int i = 0; i < 2; i++)
    for (pp__link_t *pl = lists[i]->next; pl != lists[i]; pl = pl->next)
      if (PP__CONTAINER(pl, pp_peer_t, order_link)->leases > 0) return true;
  return false;
}

void pp__peers_free_removed(pp_pool_t *pool) {
  while (!pp__list_empty(&pool->removed_peers)) {
    pp_peer_t *peer = PP__CONTAINER(pool->removed_peers.next, pp_peer_t, order_link);
    pp__list_remove(&peer->order_link);
    pp__peer_free(peer); /* its TLS state goes with the pool's (pp__tls_pool_free) */
  }
}

/* ---- graceful close -------------------------------------------------------------------- */

static void drain_timer_cb(uv_timer_t *timer) {
  pp_pool_t *pool = timer->data;
  if (!pool->drain_closing) return;
  pp__explain(pool, "close", NULL, 0,
              "pool drain time is up: %d conn%s still in use closed, their leases cut "
              "(detached)",
              pool->active, pool->active == 1 ? "" : "s");
  pp_pool_close(pool, NULL);
}

int pp_pool_close_drain(pp_pool_t *pool, int64_t drain_ms, pp_close_cb cb) {
  if (pool == NULL || drain_ms < 0 || drain_ms > (int64_t)365 * 24 * 3600 * 1000) return PP_EINVAL;
  if (pool->closing) return PP_ECLOSED;
  if (drain_ms == 0 || pool->active == 0) return pp_pool_close(pool, cb);
  pool->close_cb = cb;
  pool->drain_closing = true;
  pp__close_begin(pool);
  /* Every conn no lease holds goes now; leased ones close at release (pp__conn_released). */
  pp__link_t *lists[2] = {&pool->peers, &pool->removed_peers};
  for (int i = 0; i < 2; i++)
    for (pp__link_t *pl = lists[i]->next; pl != lists[i]; pl = pl->next) {
      pp_peer_t *peer = PP__CONTAINER(pl, pp_peer_t, order_link);
      pp__link_t *cl = peer->conns_list.next;
      while (cl != &peer->conns_list) {
        pp_conn_t *conn = PP__CONTAINER(cl, pp_conn_t, peer_link);
        cl = cl->next;
        if (conn->phase == PP_CONN_CLOSED) continue;
        pp__peer_unmark_usable(peer, conn);
        if (conn->leases == 0) pp__conn_close(conn, PP_CLOSE_CLOSED);
      }
    }
  pp__explain(pool, "close", NULL, 0,
              "pool closing gracefully: %d conn%s in use may finish within %lld ms; new "
              "acquires answer closed",
              pool->active, pool->active == 1 ? "" : "s", (long long)drain_ms);
  pp_timer_start(&pool->drain_timer, drain_timer_cb, (uint64_t)drain_ms);
  return 0;
}
