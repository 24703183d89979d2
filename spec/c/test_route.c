/* The route hook: an acquire that carries a key and names no peer goes to the peer the hook
 * names, before any candidate window, so a hash ring over the live peers (kept up to date
 * through peer events) holds whatever conns are idle; what a key does while its owner is down
 * is the hook's choice. */
#include "fixtures.h"
#include "hash_ring.h"

/* ---- a consistent-hash ring kept through peer events ---------------------------------- */

#define VNODES 64
#define MAXPTS (16 * VNODES)

typedef struct {
  ring_point_t pts[MAXPTS];
  int n;
  int next_when_down; /* route a key whose owner cannot serve to the next peer on the ring */
  int events[PP_PEER_EVENT_COUNT];
  int bad_state; /* an event arrived while the peer did not show it */
  int calls;     /* route calls */
} ring_t;

static void ring_add(ring_t *r, pp_peer_t *peer) {
  for (int i = 0; i < VNODES && r->n < MAXPTS; i++) {
    ring_point_t p = ring_vnode(peer, i);
    int at = r->n;
    while (at > 0 && r->pts[at - 1].h > p.h) {
      r->pts[at] = r->pts[at - 1];
      at--;
    }
    r->pts[at] = p;
    r->n++;
  }
}

static void ring_remove(ring_t *r, pp_peer_t *peer) {
  r->n = (int)ring_drop(r->pts, (size_t)r->n, peer);
}

/* Index of the first point at or after the key's hash (wrapping). */
static int ring_find(const ring_t *r, const char *key) {
  return (int)ring_successor(r->pts, (size_t)r->n, key);
}

static pp_peer_t *ring_owner(const ring_t *r, const char *key) {
  return r->n ? r->pts[ring_find(r, key)].peer : NULL;
}

static pp_peer_t *ring_route(void *data, pp_pool_t *pool, const char *key) {
  ring_t *r = data;
  r->calls++;
  if (r->n == 0) return NULL;
  int i = ring_find(r, key);
  if (!r->next_when_down) return r->pts[i].peer;
  for (int k = 0; k < r->n; k++) {
    pp_peer_t *peer = r->pts[(i + k) % r->n].peer;
    if (pp_peer_check(peer) == 0) return peer;
  }
  return r->pts[i].peer; /* all down: the owner, which fails fast with its cause */
}

static void ring_event(void *data, pp_pool_t *pool, pp_peer_t *peer, pp_peer_event_t ev) {
  ring_t *r = data;
  r->events[ev]++;
  if (ev == PP_PEER_EVENT_ADDED) {
    ring_add(r, peer);
    if (pp_peer_state(peer) == PP_PEER_BURNED) r->bad_state++;
  } else {
    ring_remove(r, peer);
    if (pp_peer_state(peer) != PP_PEER_BURNED || pp_peer_check(peer) != PP_EBURNED) r->bad_state++;
  }
}

static void ring_install(pp_pool_t *pool, ring_t *r) {
  TEST_SET_POLICY(pool, p.data = r; p.route = ring_route; p.peer_event = ring_event);
}

/* ---- a pool over three echo servers ---------------------------------------------------- */

static pp_acquire_opts_t keyed(const char *key) {
  pp_acquire_opts_t o;
  pp_acquire_opts_init(&o);
  o.key = key;
  return o;
}

static ring_t ring;

/* Where an acquire with `ao` on `peer` (NULL: let the pool choose) lands; released again. */
static pp_peer_t *lands_on(pp_pool_t *pool, pp_peer_t *peer, const pp_acquire_opts_t *ao) {
  return pp_conn_peer(test_acquire_release_with(pool, peer, ao));
}

/* A conn to `peer` released broken: with eject_after = 1 the peer is ejected. */
static void break_a_conn(pp_pool_t *pool, pp_peer_t *peer) {
  pp_lease_t l;
  test_rec_t r;
  ASSERT_OK(test_acquire_wait(pool, &l, &r, peer, NULL));
  ASSERT_OK(pp_release(&l, PP_EBROKEN));
}

TEST(route_keys_stay_with_their_owner_whatever_is_idle) {
  /* 40 keys over 3 peers, 400 acquires; before each, a random set of conns is held so that
   * which peers have idle conns keeps changing. Every key is always served by its owner. */
  fixture_peers_t t = echo_peers_start(3, TEST_OPTS());
  ring_install(t.pool, &ring);
  ASSERT_EQ(ring.events[PP_PEER_EVENT_ADDED], 3);
  pp_peer_t *owner[40] = {0};
  int per_peer[3] = {0};
  char key[40][16];
  for (int k = 0; k < 40; k++)
    snprintf(key[k], sizeof key[k], "key:%d", k);
  srand(12345);
  for (int round = 0; round < 400; round++) {
    pp_lease_t hold[4];
    test_rec_t hr[4];
    int nhold = rand() % 4;
    for (int h = 0; h < nhold; h++)
      ASSERT_OK(test_acquire_wait(t.pool, &hold[h], &hr[h], t.peer[rand() % 3], NULL));
    int k = rand() % 40;
    pp_acquire_opts_t ao = keyed(key[k]);
    pp_lease_t l;
    test_rec_t r;
    ASSERT_OK(test_acquire_wait(t.pool, &l, &r, NULL, &ao));
    if (owner[k] == NULL) {
      owner[k] = l.peer;
      per_peer[fixture_peers_index(&t, l.peer)]++;
    }
    ASSERT_PTR_EQ(l.peer, owner[k]);
    ASSERT_PTR_EQ(l.peer, ring_owner(&ring, key[k]));
    ASSERT_OK(pp_release(&l, 0));
    for (int h = 0; h < nhold; h++)
      ASSERT_OK(pp_release(&hold[h], 0));
  }
  printf("keys first seen per peer: %d %d %d\n", per_peer[0], per_peer[1], per_peer[2]);
  for (int i = 0; i < 3; i++)
    ASSERT_GT(per_peer[i], 0); /* the keys spread over every peer */
  ASSERT_EQ(test_stats(t.pool).policy_errors, 0);
  fixture_peers_end(&t);
}

/* The first of keys "key:0", "key:1", ... that the ring gives to `peer`. */
static const char *key_of(pp_peer_t *peer) {
  static char key[16];
  for (int k = 0; k < 1000; k++) {
    snprintf(key, sizeof key, "key:%d", k);
    if (ring_owner(&ring, key) == peer) return key;
  }
  FAIL("no key for the peer");
}

TEST(route_owner_down_fails_fast_with_its_cause) {
  /* The hook returns the owner even when it is down: the acquire is answered at once with the
   * owner's own cause. */
  fixture_peers_t t = echo_peers_start(3, TEST_OPTS(o.eject_after = 1));
  ring_install(t.pool, &ring);
  break_a_conn(t.pool, t.peer[0]);
  pp_acquire_opts_t ao = keyed(key_of(t.peer[0]));
  pp_lease_t l;
  test_rec_t r;
  ASSERT_ERR(test_acquire_start(t.pool, &l, &r, NULL, &ao), PP_EEJECTED);
  pp_cause_t c;
  ASSERT_OK(pp_lease_cause(&l, &c));
  ASSERT_PTR_EQ(c.peer, t.peer[0]);
  char line[256];
  pp_lease_describe(&l, line, sizeof line);
  ASSERT(strncmp(line, srv_addr(t.srv[0]), strlen(srv_addr(t.srv[0]))) == 0);
  memset(&l, 0, sizeof l);
  ASSERT_ERR(pp_try_acquire(t.pool, &l, NULL, &ao), PP_EEJECTED);
  fixture_peers_end(&t);
}

TEST(route_next_on_the_ring_when_the_owner_is_down) {
  /* The hook passes over an owner that cannot serve: its keys go to the next peer on the
   * ring, the same one every time, and come back once the owner does. */
  fixture_peers_t t =
      echo_peers_start(3, TEST_OPTS(o.eject_after = 1; o.eject_time = 300; o.eject_max = 300));
  ring.next_when_down = 1;
  ring_install(t.pool, &ring);
  break_a_conn(t.pool, t.peer[0]);
  pp_acquire_opts_t ao = keyed(key_of(t.peer[0]));
  pp_peer_t *stand_in = NULL;
  for (int i = 0; i < 10; i++) {
    pp_peer_t *at = lands_on(t.pool, NULL, &ao);
    ASSERT_PTR_NE(at, t.peer[0]);
    if (stand_in == NULL) stand_in = at;
    ASSERT_PTR_EQ(at, stand_in);
  }
  RUN_UNTIL(pp_peer_check(t.peer[0]) == 0, 2000);
  ASSERT_PTR_EQ(lands_on(t.pool, NULL, &ao), t.peer[0]);
  fixture_peers_end(&t);
}

static int64_t burn(void *data, pp_peer_t *peer, int attempt, int err) {
  return PP_BACKOFF_BURN;
}

TEST(route_peer_events_follow_the_live_set) {
  /* Installing the policy replays the live peers; adding, burning and re-adding a peer tell
   * it, each once the engine is done (the peer already shows its new state). */
  srv_t *a = srv_echo_start(NULL), *refused = srv_refused_start();
  pp_pool_t *pool = test_pool(NULL);
  test_peer(pool, srv_addr(a));
  ring_install(pool, &ring);
  ASSERT_EQ(ring.events[PP_PEER_EVENT_ADDED], 1);
  ASSERT_EQ(ring.n, VNODES); /* the ring holds the replayed peer */
  ring.n = 0;
  memset(ring.events, 0, sizeof ring.events);
  TEST_SET_POLICY(pool, p.data = &ring; p.route = ring_route; p.peer_event = ring_event;
                  p.backoff = burn);
  ASSERT_EQ(ring.events[PP_PEER_EVENT_ADDED], 1);
  pp_peer_t *bad = test_peer(pool, srv_addr(refused));
  ASSERT_EQ(ring.events[PP_PEER_EVENT_ADDED], 2);
  ASSERT_EQ(ring.n, 2 * VNODES);
  pp_lease_t l;
  test_rec_t r;
  ASSERT_ERR(test_acquire_wait(pool, &l, &r, bad, NULL), PP_EBURNED);
  ASSERT_EQ(ring.events[PP_PEER_EVENT_BURNED], 1);
  ASSERT_EQ(ring.n, VNODES);
  test_peer(pool, srv_addr(refused)); /* re-added: live again */
  ASSERT_EQ(ring.events[PP_PEER_EVENT_ADDED], 3);
  ASSERT_EQ(ring.n, 2 * VNODES);
  ASSERT_EQ(ring.bad_state, 0);
  ASSERT_STREQ(pp_peer_event_name(PP_PEER_EVENT_ADDED), "added");
  ASSERT_STREQ(pp_peer_event_name(PP_PEER_EVENT_BURNED), "burned");
  ASSERT_STREQ(pp_peer_event_name(PP_PEER_EVENT_COUNT), "unknown");
  test_finish(pool);
  srv_stop(a);
  srv_stop(refused);
}

static pp_peer_t *route_none(void *data, pp_pool_t *pool, const char *key) {
  return NULL;
}

/* A keyed acquire on a pool with one peer and a policy whose only hook is `route`: it lands on
 * that peer (the default selection) and the pool counts `policy_errors`. Ends the test, closing
 * `other` (NULL: none) first, a pool whose peer `route` may return. */
static void keyed_acquire_falls_back(pp_peer_t *(*route)(void *, pp_pool_t *, const char *),
                                     int policy_errors, pp_pool_t *other) {
  srv_t *srv = srv_echo_start(NULL);
  pp_peer_t *peer;
  pp_pool_t *pool = test_pool_on(srv, NULL, &peer);
  TEST_SET_POLICY(pool, p.route = route);
  pp_acquire_opts_t ao = keyed("k");
  ASSERT_PTR_EQ(lands_on(pool, NULL, &ao), peer);
  ASSERT_EQ(test_stats(pool).policy_errors, policy_errors);
  if (other != NULL) pp_pool_close(other, NULL);
  test_finish_srv(pool, srv);
}

TEST(route_null_falls_back_to_the_selection) {
  keyed_acquire_falls_back(route_none, 0, NULL);
}

static pp_peer_t *foreign;

static pp_peer_t *route_foreign(void *data, pp_pool_t *pool, const char *key) {
  return foreign;
}

TEST(route_to_a_peer_of_another_pool_is_a_policy_error) {
  pp_pool_t *other = test_pool(NULL);
  foreign = test_peer(other, "127.0.0.1:9");
  keyed_acquire_falls_back(route_foreign, 1, other);
}

TEST(route_is_asked_only_for_a_key_without_a_peer) {
  fixture_peers_t t = echo_peers_start(3, TEST_OPTS());
  ring_install(t.pool, &ring);
  pp_acquire_opts_t ao = keyed("key:1");
  ASSERT_PTR_EQ(lands_on(t.pool, t.peer[2], &ao), t.peer[2]); /* a named peer wins over the key */
  lands_on(t.pool, NULL, NULL);
  ASSERT_EQ(ring.calls, 0);
  lands_on(t.pool, NULL, &ao);
  ASSERT_EQ(ring.calls, 1);
  fixture_peers_end(&t);
}
