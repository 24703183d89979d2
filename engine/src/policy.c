/* Policy decisions: each consults the installed hook, checks its answer, and falls back to the
 * built-in default (counting a policy error) when the answer is unusable. The select hooks see
 * at most PP_CANDIDATES_MAX candidates, a window that rotates through the pool, so a hook's
 * cost does not grow with the pool; the route hook sees no candidates at all (it names the
 * owner of a key among all live peers, from the ring it keeps through peer events). */
#include "internal.h"

#include <stdlib.h>

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
    pp_conn_t **conns = (pp_conn_t **)pp__scratch(pool, PP_CANDIDATES_MAX);
    if (conns) {
      int n = pp__peer_usable_conns(peer, conns, PP_CANDIDATES_MAX);
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
    pp_peer_t **peers = (pp_peer_t **)pp__scratch(pool, PP_CANDIDATES_MAX);
    if (peers) {
      int n = 0;
      for (pp__link_t *l = pool->usable_peers.next;
           l != &pool->usable_peers && n < PP_CANDIDATES_MAX; l = l->next)
        peers[n++] = PP__CONTAINER(l, pp_peer_t, usable_link);
      int i = checked_choice(
          pool, pool->policy.select_peer(pool->policy.data, pool, peers, n, 0, key), n);
      if (i >= 0) chosen = peers[i];
    }
  }
  rotate_usable(pool, chosen);
  return chosen;
}

/* Up to `max` peers of a candidate ring, from its head (the peer dialled longest ago). */
static int ring_candidates(pp__link_t *ring, size_t link_offset, pp_peer_t **out, int max) {
  int n = 0;
  for (pp__link_t *l = ring->next; l != ring && n < max; l = l->next)
    out[n++] = (pp_peer_t *)((char *)l - link_offset);
  return n;
}

/* Move `peer` to the tail of the candidate rings it is in, so the next choice starts after it. */
static void rotate_dialable(pp_pool_t *pool, pp_peer_t *peer) {
  if (pp__linked(&peer->dial_link)) {
    pp__list_remove(&peer->dial_link);
    pp__list_push(&pool->dialable, &peer->dial_link);
  }
  if (pp__linked(&peer->bare_link)) {
    pp__list_remove(&peer->bare_link);
    pp__list_push(&pool->dialable_bare, &peer->bare_link);
  }
}

/* A peer to dial: among those that may be dialled now (with `bare`, only those with no conn),
 * round robin. Held peers (ejected, backing off) are not dialled for acquires: probes bring
 * them back. Only candidates are looked at, so the cost does not grow with burned, stale, full
 * or held peers. */
static pp_peer_t *select_dialable(pp_pool_t *pool, const char *key, bool bare) {
  pp_peer_t **peers = (pp_peer_t **)pp__scratch(pool, PP_CANDIDATES_MAX);
  if (peers == NULL || pool->closing || pool->total >= pool->opts.max_total) return NULL;
  pp__candidates_refresh(pool);
  int n = bare ? ring_candidates(&pool->dialable_bare, offsetof(pp_peer_t, bare_link), peers,
                                 PP_CANDIDATES_MAX)
               : ring_candidates(&pool->dialable, offsetof(pp_peer_t, dial_link), peers,
                                 PP_CANDIDATES_MAX);
  pool->candidate_visits += (uint64_t)n;
  if (n == 0) return NULL;
  pp_peer_t *chosen = peers[0];
  if (pool->policy.select_peer && n > 1) {
    int i = checked_choice(pool,
                           pool->policy.select_peer(pool->policy.data, pool, peers, n, 1, key), n);
    if (i >= 0) chosen = peers[i];
  }
  rotate_dialable(pool, chosen);
  return chosen;
}

pp_peer_t *pp__select_peer(pp_pool_t *pool, int dialing, const char *key) {
  if (!dialing) return pp__list_empty(&pool->usable_peers) ? NULL : select_usable(pool, key);
  return select_dialable(pool, key, dialing == 2);
}

pp_peer_t *pp__route(pp_pool_t *pool, const char *key) {
  pp_peer_t *peer = pool->policy.route(pool->policy.data, pool, key);
  if (peer && peer->pool != pool) {
    pool->stats.policy_errors++;
    return NULL;
  }
  return peer;
}
