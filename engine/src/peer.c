/* Peers: the address table, state derivation, and each peer's usable conns kept in lease-count
 * buckets (a bucket queue), which makes the default selection — fewest leases, then longest
 * idle — O(1) for every operation. */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

static uint32_t hash_str(const char *s) {
  uint32_t h = 2166136261u; /* FNV-1a */
  for (; *s; s++)
    h = (h ^ (unsigned char)*s) * 16777619u;
  return h;
}

static pp_peer_t *lookup(pp_pool_t *pool, const char *canonical) {
  if (pool->table_size == 0) return NULL;
  pp_peer_t *p = pool->table[hash_str(canonical) & (pool->table_size - 1)];
  for (; p; p = p->hash_next)
    if (strcmp(p->addr, canonical) == 0) return p;
  return NULL;
}

static int table_insert(pp_pool_t *pool, pp_peer_t *peer) {
  if ((pool->npeers + 1) * 4 > pool->table_size * 3) {
    unsigned int size = pool->table_size ? pool->table_size * 2 : 16;
    pp_peer_t **table = calloc(size, sizeof(*table));
    if (table == NULL) return UV_ENOMEM;
    for (unsigned int i = 0; i < pool->table_size; i++) {
      pp_peer_t *p = pool->table[i];
      while (p) {
        pp_peer_t *next = p->hash_next;
        uint32_t b = hash_str(p->addr) & (size - 1);
        p->hash_next = table[b];
        table[b] = p;
        p = next;
      }
    }
    free(pool->table);
    pool->table = table;
    pool->table_size = size;
  }
  uint32_t b = hash_str(peer->addr) & (pool->table_size - 1);
  peer->hash_next = pool->table[b];
  pool->table[b] = peer;
  pool->npeers++;
  return 0;
}

int pp_pool_add_peer(pp_pool_t *pool, const char *addr, int64_t last_seen_ms, pp_peer_t **out,
                     const char **why) {
  char *canonical;
  struct sockaddr_storage sa;
  bool is_pipe;
  if (why) *why = NULL;
  if (pool->closing) {
    if (why) *why = "pool is closed";
    return PP_ECLOSED;
  }
  if (last_seen_ms < 0) {
    if (why) *why = "last_seen must be Unix time in ms >= 0 (0 = now)";
    return PP_EINVAL;
  }
  int err = pp__addr_parse(addr, &canonical, &sa, &is_pipe, why);
  if (err) return err;
  if (last_seen_ms == 0) last_seen_ms = pp__unix_now_ms();
  pp_peer_t *peer = lookup(pool, canonical);
  if (peer) {
    free(canonical);
    if (last_seen_ms > peer->last_seen) peer->last_seen = last_seen_ms;
    bool unburn = peer->burned, undrain = peer->draining;
    if (undrain) peer->draining = false; /* re-adding ends a drain (drain.c) */
    if (unburn) {
      /* Re-adding is the one way back from burned: a fresh start. */
      peer->burned = false;
      pool->nburned--;
      peer->failures = 0;
      peer->connect_failures = 0;
      peer->ejections = 0;
      peer->eject_streak = 0;
      peer->retry_at = 0;
    }
    pp__peer_update_state(peer);
    if (out) *out = peer;
    if (unburn || undrain) pp__peer_event(peer, PP_PEER_EVENT_ADDED);
    if (unburn || undrain) pp__warm_need(peer);
    if (undrain && pool->any_waiters.count > 0) pp__capacity_soon(pool);
    return 0;
  }
  peer = calloc(1, sizeof(*peer));
  int limit = pool->opts.client_limit;
  if (peer) {
    peer->buckets = malloc((size_t)limit * sizeof(*peer->buckets));
    peer->nonempty = calloc(((size_t)limit + 63) / 64, sizeof(uint64_t));
  }
  if (peer == NULL || peer->buckets == NULL || peer->nonempty == NULL) goto nomem;
  peer->pool = pool;
  peer->addr = canonical;
  peer->sa = sa;
  peer->is_pipe = is_pipe;
  /* A host name (addr.c leaves its sockaddr AF_UNSPEC): its resolver state (dns.c). */
  if (!is_pipe && sa.ss_family == AF_UNSPEC && pp__dns_peer_new(peer) != 0) goto nomem;
  peer->last_seen = last_seen_ms;
  peer->state = PP_PEER_KNOWN;
  peer->seq = ++pool->peer_seq;
  peer->min_idle = -1; /* the pool's */
  pp__list_init(&peer->conns_list);
  for (int i = 0; i < limit; i++)
    pp__list_init(&peer->buckets[i]);
  for (int i = 0; i <= PP_PRIORITY_MAX; i++)
    pp__list_init(&peer->waiters.level[i]);
  if (table_insert(pool, peer) != 0) goto nomem;
  pp__list_push(&pool->peers, &peer->order_link);
  pool->stats.peers_by_state[PP_PEER_KNOWN]++;
  pp__peer_update_state(peer);
  if (peer->dns) pp__dns_resolve(peer); /* resolved as it is added, ready for its first dial */
  if (out) *out = peer;
  pp__peer_event(peer, PP_PEER_EVENT_ADDED);
  pp__warm_need(peer); /* min_idle conns, dialled on a later tick */
  /* Acquires for any peer may be waiting for exactly this (served from the defer queue: the
   * caller may be a seed hook inside pp_acquire, before that acquire is queued). */
  if (pool->any_waiters.count > 0) pp__capacity_soon(pool);
  return 0;
nomem:
  if (peer) {
    if (peer->dns) pp__dns_peer_free(peer);
    free(peer->buckets);
    free(peer->nonempty);
    free(peer);
  }
  free(canonical);
  if (why) *why = "out of memory";
  return UV_ENOMEM;
}

static void table_remove(pp_pool_t *pool, pp_peer_t *peer) {
  pp_peer_t **p = &pool->table[hash_str(peer->addr) & (pool->table_size - 1)];
  while (*p && *p != peer)
    p = &(*p)->hash_next;
  if (*p) *p = peer->hash_next;
  peer->hash_next = NULL;
  pool->npeers--;
}

void pp__peer_unlink(pp_peer_t *peer) {
  pp_pool_t *pool = peer->pool;
  table_remove(pool, peer);
  pp__list_remove(&peer->order_link);
  pool->stats.peers_by_state[peer->state]--;
  if (peer->burned) pool->nburned--;
}

void pp__peer_free(pp_peer_t *peer) {
  pp__dns_peer_free(peer);
  free(peer->addr);
  free(peer->buckets);
  free(peer->nonempty);
  free(peer);
}

pp_peer_t *pp_pool_find_peer(pp_pool_t *pool, const char *addr) {
  char *canonical;
  struct sockaddr_storage sa;
  bool is_pipe;
  if (addr == NULL) return NULL;
  /* Most lookups use the canonical spelling: try it as given before parsing. */
  pp_peer_t *found = lookup(pool, addr);
  if (found) return found;
  if (pp__addr_parse(addr, &canonical, &sa, &is_pipe, NULL) != 0) return NULL;
  pp_peer_t *peer = lookup(pool, canonical);
  free(canonical);
  return peer;
}

int pp_pool_foreach_peer(pp_pool_t *pool, int (*fn)(pp_peer_t *, void *), void *arg) {
  for (pp__link_t *l = pool->peers.next; l != &pool->peers;) {
    pp_peer_t *peer = PP__CONTAINER(l, pp_peer_t, order_link);
    l = l->next;
    int r = fn(peer, arg);
    if (r) return r;
  }
  return 0;
}

/* ---- dial candidates: kept in step with each peer's fields ----------------------------- */

void pp__candidates_init(pp_pool_t *pool) {
  pp__list_init(&pool->dialable);
  pp__list_init(&pool->dialable_bare);
  PP__HEAP_INIT(&pool->backoff, pp_peer_t, backoff_node, backoff_key, seq);
  PP__HEAP_INIT(&pool->freshness, pp_peer_t, fresh_node, stale_at, seq);
}

static void set_linked(pp__link_t *ring, pp__link_t *link, bool in) {
  if (pp__linked(link) == in) return;
  if (in)
    pp__list_push(ring, link);
  else
    pp__list_remove(link);
}

static bool fresh_at(const pp_peer_t *peer, int64_t unix_now) {
  int64_t age = peer->pool->opts.max_address_age;
  return age == 0 || unix_now - peer->last_seen <= age;
}

/* Put `peer` where its fields say, as of loop time `now` and Unix time `unix_now`. A held peer
 * (ejected, or backing off) waits in pool->backoff until its hold ends. */
static void place_candidate(pp_peer_t *peer, uint64_t now, int64_t unix_now) {
  pp_pool_t *pool = peer->pool;
  int64_t age = pool->opts.max_address_age;
  bool live = !peer->burned && !peer->ejected && !peer->draining && peer->conns > peer->probing;
  if (live != peer->live) {
    peer->live = live;
    pool->live_peers += live ? 1 : -1;
  }
  bool may = !peer->burned && !peer->draining && peer->conns < pool->opts.max_per_peer &&
             fresh_at(peer, unix_now);
  uint64_t hold = pp__peer_hold_until(peer);
  bool later = may && hold > now;
  int64_t stale_at = 0;
  if (may && age > 0)
    stale_at = peer->last_seen > INT64_MAX - age ? INT64_MAX : peer->last_seen + age;
  /* The heaps are keyed by copies (stale_at, backoff_key), so a field that changes between two
   * updates never breaks their order. */
  pp__heap_set_key(&pool->freshness, &peer->fresh_node, stale_at);
  pp__heap_set_key(&pool->backoff, &peer->backoff_node, later ? (int64_t)hold : 0);
  set_linked(&pool->dialable, &peer->dial_link, may && !later);
  set_linked(&pool->dialable_bare, &peer->bare_link, may && !later && peer->conns == 0);
}

void pp__candidates_refresh(pp_pool_t *pool) {
  pp__ejections_refresh(pool); /* an ejection that ended places its peer anew */
  uint64_t now = pp_now();
  int64_t unix_now = pp__unix_now_ms();
  while (pool->freshness.min) {
    pp_peer_t *peer = PP__CONTAINER(pool->freshness.min, pp_peer_t, fresh_node);
    if (peer->stale_at >= unix_now) break;
    pool->candidate_visits++;
    place_candidate(peer, now, unix_now); /* stale now: leaves every candidate structure */
  }
  while (pool->backoff.min) {
    pp_peer_t *peer = PP__CONTAINER(pool->backoff.min, pp_peer_t, backoff_node);
    if (peer->backoff_key > now) break;
    pool->candidate_visits++;
    place_candidate(peer, now, unix_now); /* its retry time passed (or moved later) */
  }
}

bool pp__any_dial_candidate(pp_pool_t *pool) {
  pp__candidates_refresh(pool);
  return !pp__list_empty(&pool->dialable);
}

pp_peer_t *pp__soonest_backoff(pp_pool_t *pool) {
  return pool->backoff.min ? PP__CONTAINER(pool->backoff.min, pp_peer_t, backoff_node) : NULL;
}

/* ---- state: derived from the conns, never set by hand ---------------------------------- */

static pp_peer_state_t derive_state(const pp_peer_t *peer, uint64_t now) {
  if (peer->burned) return PP_PEER_BURNED;
  if (peer->ejected) return PP_PEER_EJECTED;
  int ready = peer->conns - peer->dialing - peer->backoff - peer->handshaking;
  if (ready > 0) return PP_PEER_READY;
  if (peer->handshaking > 0) return PP_PEER_CONNECTED;
  if (peer->dialing > 0) return PP_PEER_CONNECTING;
  if (peer->backoff > 0 || peer->failures > 0 || peer->connect_failures > 0 || peer->retry_at > now)
    return PP_PEER_FAILED;
  if (peer->ever_connected) return PP_PEER_DISCONNECTED;
  return PP_PEER_KNOWN;
}

void pp__peer_update_state(pp_peer_t *peer) {
  if (peer->removed) return; /* out of every count and candidate structure for good */
  uint64_t now = pp_now();
  place_candidate(peer, now, pp__unix_now_ms());
  pp_peer_state_t to = derive_state(peer, now);
  if (to == peer->state) return;
  pp_pool_t *pool = peer->pool;
  pp_peer_state_t from = peer->state;
  peer->state = to;
  pool->stats.peers_by_state[from]--;
  pool->stats.peers_by_state[to]++;
  pp__defer_event(pool, peer, from, to);
}

bool pp__peer_is_fresh(const pp_peer_t *peer) {
  return fresh_at(peer, pp__unix_now_ms());
}

bool pp__peer_may_dial(pp_peer_t *peer) {
  pp_pool_t *pool = peer->pool;
  return !peer->burned && !peer->ejected && !peer->draining && !pool->closing &&
         peer->conns < pool->opts.max_per_peer && !pp__ahead(pool, peer->retry_at) &&
         pp__peer_is_fresh(peer);
}

bool pp__peer_can_dial(pp_peer_t *peer) {
  return peer->pool->total < peer->pool->opts.max_total && pp__peer_may_dial(peer);
}

/* ---- usable conns ---------------------------------------------------------------------- */

void pp__peer_mark_usable(pp_peer_t *peer, pp_conn_t *conn) {
  pp_pool_t *pool = peer->pool;
  int k = conn->leases;
  pp__list_push(&peer->buckets[k], &conn->bucket_link);
  peer->nonempty[k >> 6] |= (uint64_t)1 << (k & 63);
  if (peer->usable++ == 0) pp__list_push(&pool->usable_peers, &peer->usable_link);
  if (k == 0) {
    pp__list_push(&pool->idle, &conn->idle_link);
    pool->idle_count++;
    peer->idle++;
    pp__idle_timer_arm(pool);
  }
}

void pp__peer_unmark_usable(pp_peer_t *peer, pp_conn_t *conn) {
  if (!pp__linked(&conn->bucket_link)) return;
  pp_pool_t *pool = peer->pool;
  int k = conn->leases;
  pp__list_remove(&conn->bucket_link);
  if (pp__list_empty(&peer->buckets[k])) peer->nonempty[k >> 6] &= ~((uint64_t)1 << (k & 63));
  if (--peer->usable == 0) pp__list_remove(&peer->usable_link);
  if (pp__linked(&conn->idle_link)) {
    pp__list_remove(&conn->idle_link);
    pool->idle_count--;
    peer->idle--;
  }
}

void pp__peer_retire_conns(pp_peer_t *peer, pp_close_reason_t reason, int err) {
  pp__link_t *l = peer->conns_list.next;
  while (l != &peer->conns_list) {
    pp_conn_t *conn = PP__CONTAINER(l, pp_conn_t, peer_link);
    l = l->next;
    if (conn->phase == PP_CONN_CLOSED) continue;
    if (conn->leases > 0) {
      pp__peer_unmark_usable(peer, conn); /* a shared conn takes no new lease */
      continue;
    }
    if (conn->owner) pp__dial_failed(conn, err);
    pp__conn_close(conn, reason);
  }
}

pp_conn_t *pp__peer_best_conn(pp_peer_t *peer) {
  if (peer->usable == 0) return NULL;
  int limit = peer->pool->opts.client_limit, words = (limit + 63) / 64;
  for (int w = 0; w < words; w++) {
    if (peer->nonempty[w] == 0) continue;
    int k = w * 64 + __builtin_ctzll(peer->nonempty[w]);
    /* Exclusive conns: the one released last (LIFO, as Vitess and HikariCP lend: a hot set
     * stays in cache and the rest can idle out). Shared ones: fewest leases, then longest
     * idle (the seed's heap rule). Buckets are kept in release order. */
    pp__link_t *bucket = &peer->buckets[k];
    return PP__CONTAINER(limit == 1 ? bucket->prev : bucket->next, pp_conn_t, bucket_link);
  }
  return NULL;
}

int pp__peer_usable_conns(pp_peer_t *peer, pp_conn_t **out, int max) {
  int n = 0, limit = peer->pool->opts.client_limit;
  for (int k = 0; k < limit && n < max; k++)
    for (pp__link_t *l = peer->buckets[k].next; l != &peer->buckets[k] && n < max; l = l->next)
      out[n++] = PP__CONTAINER(l, pp_conn_t, bucket_link);
  return n;
}

/* ---- accessors ------------------------------------------------------------------------- */

void pp_peer_info(const pp_peer_t *peer, pp_peer_info_t *info) {
  info->addr = peer->addr;
  info->state = peer->state;
  info->conns = peer->conns;
  info->idle = peer->idle;
  info->leases = peer->leases;
  info->waiters = peer->waiters.count;
  info->failures = peer->failures + peer->connect_failures;
  info->last_seen = peer->last_seen;
  info->last_success = peer->last_success;
  info->retry_at = (int64_t)pp__peer_hold_until(peer);
  info->attempts = peer->attempts;
  info->ejections = peer->ejections;
  info->latency_ms = peer->latency_ms;
  PP__IO_REPORT(info, peer->io);
  info->last_error = peer->last_error;
  info->burned = peer->burned;
  info->ejected_until = pp__peer_ejected_until_unix(peer);
  info->eject_streak = peer->eject_streak;
  info->last_failure = peer->last_failure;
  info->draining = peer->draining;
  info->min_idle = pp__warm_min(peer);
}

const char *pp_peer_addr(const pp_peer_t *peer) {
  return peer->addr;
}
pp_peer_state_t pp_peer_state(const pp_peer_t *peer) {
  return peer->state;
}
pp_pool_t *pp_peer_pool(const pp_peer_t *peer) {
  return peer->pool;
}
void *pp_peer_get_data(const pp_peer_t *peer) {
  return peer->data;
}
void pp_peer_set_data(pp_peer_t *peer, void *data) {
  peer->data = data;
}
