/* Policy decisions: each consults the installed hook, checks its answer, and falls back to the
 * built-in default (counting a policy error) when the answer is unusable. Hooks see at most
 * PP__CANDIDATES_MAX candidates, a window that rotates through the pool, so a hook's cost does
 * not grow with the pool. */
#include "internal.h"

#define PP__CANDIDATES_MAX 64

int64_t pp_backoff_full_jitter(pp_pool_t *pool, int attempt, int64_t base_ms, int64_t cap_ms) {
  if (attempt < 0) attempt = 0;
  int64_t ceiling = base_ms;
  for (int i = 0; i < attempt && ceiling < cap_ms; i++)
    ceiling *= 2;
  if (ceiling > cap_ms) ceiling = cap_ms;
  if (ceiling <= 0) return 0;
  return (int64_t)(pp__random(pool) % (uint64_t)(ceiling + 1));
}

int64_t pp__backoff(pp_peer_t *peer, int attempt, int err) {
  pp_pool_t *pool = peer->pool;
  if (pool->policy.backoff) {
    int64_t ms = pool->policy.backoff(pool->policy.data, peer, attempt, err);
    if (ms == PP_BACKOFF_BURN) return -1;
    if (ms >= 0) return ms;
    if (ms != PP_BACKOFF_DEFAULT) pool->stats.policy_errors++;
  }
  return pp_backoff_full_jitter(pool, attempt, 100, 30000);
}

/* Ask the hook to pick among `n` candidates; -1 means use the default. */
static int checked_choice(pp_pool_t *pool, int choice, int n) {
  if (choice >= 0 && choice < n) return choice;
  if (choice != -1) pool->stats.policy_errors++;
  return -1;
}

pp_conn_t *pp__select_conn(pp_peer_t *peer, const char *key) {
  pp_pool_t *pool = peer->pool;
  if (pool->policy.select_conn && peer->usable > 1) {
    pp_conn_t **conns = (pp_conn_t **)pp__scratch(pool, PP__CANDIDATES_MAX);
    if (conns) {
      int n = pp__peer_usable_conns(peer, conns, PP__CANDIDATES_MAX);
      int i =
          checked_choice(pool, pool->policy.select_conn(pool->policy.data, peer, conns, n, key), n);
      if (i >= 0) return conns[i];
    }
  }
  return pp__peer_best_conn(peer);
}

/* Rotate the ring so the next call starts after `peer`. */
static void rotate_usable(pp_pool_t *pool, pp_peer_t *peer) {
  pp__list_remove(&peer->usable_link);
  pp__list_push(&pool->usable_peers, &peer->usable_link);
}

static pp_peer_t *select_usable(pp_pool_t *pool, const char *key) {
  pp_peer_t *first = PP__CONTAINER(pool->usable_peers.next, pp_peer_t, usable_link);
  pp_peer_t *chosen = first;
  if (pool->policy.select_peer && first->usable_link.next != &pool->usable_peers) {
    pp_peer_t **peers = (pp_peer_t **)pp__scratch(pool, PP__CANDIDATES_MAX);
    if (peers) {
      int n = 0;
      for (pp__link_t *l = pool->usable_peers.next;
           l != &pool->usable_peers && n < PP__CANDIDATES_MAX; l = l->next)
        peers[n++] = PP__CONTAINER(l, pp_peer_t, usable_link);
      int i = checked_choice(
          pool, pool->policy.select_peer(pool->policy.data, pool, peers, n, 0, key), n);
      if (i >= 0) chosen = peers[i];
    }
  }
  rotate_usable(pool, chosen);
  return chosen;
}

/* Peers that may be dialled, starting at the rotating cursor; those not waiting out a backoff
 * come first. */
static pp_peer_t *select_dialable(pp_pool_t *pool, const char *key, bool fresh_only) {
  pp_peer_t **peers = (pp_peer_t **)pp__scratch(pool, PP__CANDIDATES_MAX);
  if (peers == NULL || pool->npeers == 0) return NULL;
  uint64_t now = pp__now(pool);
  pp__link_t *start = pool->dial_cursor ? &pool->dial_cursor->order_link : pool->peers.next;
  int n = 0, waiting = 0;
  pp_peer_t *in_backoff[4];
  pp__link_t *l = start;
  for (unsigned int i = 0; i < pool->npeers && n < PP__CANDIDATES_MAX; i++, l = l->next) {
    if (l == &pool->peers) l = l->next; /* skip the list head */
    pp_peer_t *peer = PP__CONTAINER(l, pp_peer_t, order_link);
    if (!pp__peer_can_dial(peer) || (fresh_only && peer->conns > 0)) continue;
    if (peer->retry_at > now) {
      if (waiting < 4) in_backoff[waiting++] = peer;
      continue;
    }
    peers[n++] = peer;
  }
  for (int i = 0; n == 0 && i < waiting; i++)
    peers[n++] = in_backoff[i];
  if (n == 0) return NULL;
  pp_peer_t *chosen = peers[0];
  if (pool->policy.select_peer && n > 1) {
    int i = checked_choice(pool,
                           pool->policy.select_peer(pool->policy.data, pool, peers, n, 1, key), n);
    if (i >= 0) chosen = peers[i];
  }
  pp__link_t *next = chosen->order_link.next;
  if (next == &pool->peers) next = next->next;
  pool->dial_cursor = next == &pool->peers ? NULL : PP__CONTAINER(next, pp_peer_t, order_link);
  return chosen;
}

pp_peer_t *pp__select_peer(pp_pool_t *pool, int dialing, const char *key) {
  if (!dialing) return pp__list_empty(&pool->usable_peers) ? NULL : select_usable(pool, key);
  return select_dialable(pool, key, dialing == 2);
}
