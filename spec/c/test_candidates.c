/* Choosing a peer to dial looks only at dial candidates: burned, stale, full and backing-off
 * peers are kept out of the way (pool->candidate_visits counts the peers looked at), and peers
 * come back from backoff in the order of their retry times. */
#include "fixtures.h"
#include "internal.h"

/* The engine hands a select_peer hook at most this many candidates (policy.c). */
#define CANDIDATES_MAX 64

/* Each failing peer's data says what its backoff hook answers: a delay in ms, or burn. */
static int64_t backoff_from_data(void *data, pp_peer_t *peer, int attempt, int err) {
  intptr_t ms = (intptr_t)pp_peer_get_data(peer);
  return ms < 0 ? PP_BACKOFF_BURN : (int64_t)ms;
}

/* Add a peer at 127.0.0.`host`:port (refused: nothing listens there) whose backoff answers
 * `ms` (< 0: burn), and start a named acquire of it that will fail. */
static pp_peer_t *failing_peer(pp_pool_t *pool, const srv_t *refused, int host, intptr_t ms,
                               pp_lease_t *lease, test_rec_t *rec) {
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.%d:%d", host, srv_port(refused));
  pp_peer_t *peer = test_peer(pool, addr);
  pp_peer_set_data(peer, (void *)ms);
  ASSERT_OK(test_acquire_start(pool, lease, rec, peer, NULL));
  return peer;
}

static void wait_all(test_rec_t *recs, int n) {
  for (int i = 0; i < n; i++)
    RUN_UNTIL(recs[i].calls == 1, 5000);
}

/* A pool with `o` whose peers back off as their data says (backoff_from_data). */
static pp_pool_t *failing_pool(const pp_options_t *o) {
  pp_pool_t *pool = test_pool(o);
  test_set_backoff(pool, backoff_from_data, NULL);
  return pool;
}

/* Three failing peers p[0..2] backing off for delay[0..2] ms, their first acquires ended. */
static void three_failing(pp_pool_t *pool, const srv_t *refused, const intptr_t delay[3],
                          pp_peer_t *p[3], pp_lease_t l[3], test_rec_t r[3]) {
  for (int i = 0; i < 3; i++)
    p[i] = failing_peer(pool, refused, 2 + i, delay[i], &l[i], &r[i]);
  wait_all(r, 3);
}

#define FAILING 100
#define STALE 100000

TEST(candidates_acquire_any_ignores_unusable_peers) {
  srv_t *refused = srv_refused_start();
  srv_t *echo = srv_echo_start(NULL);
  pp_pool_t *pool = failing_pool(TEST_OPTS(o.max_per_peer = 1; o.max_address_age = 3600 * 1000));
  /* FAILING peers fail their connect: every other one burns, the rest back off for a minute. */
  static pp_lease_t leases[FAILING];
  static test_rec_t recs[FAILING];
  for (int i = 0; i < FAILING; i++)
    failing_peer(pool, refused, 2 + i, i % 2 ? -1 : 60000, &leases[i], &recs[i]);
  wait_all(recs, FAILING);
  for (int i = 0; i < FAILING; i++)
    ASSERT_ERR(recs[i].status, i % 2 ? PP_EBURNED : PP_ECANNOTCONNECT);
  /* STALE peers whose addresses are two hours old, then one healthy peer, added last. */
  int64_t old = test_unix_ms() - 2 * 3600 * 1000;
  for (int i = 0; i < STALE; i++) {
    char addr[64];
    snprintf(addr, sizeof addr, "10.%d.%d.%d:7", i >> 16, (i >> 8) & 255, i & 255);
    ASSERT_OK(pp_pool_add_peer(pool, addr, old, NULL, NULL));
  }
  pp_peer_t *healthy = test_peer(pool, srv_addr(echo));
  ASSERT_EQ(test_stats(pool).peers, FAILING + STALE + 1);
  uint64_t visits = pool->candidate_visits;
  pp_lease_t l;
  test_rec_t r;
  ASSERT_OK(test_acquire_wait(pool, &l, &r, NULL, NULL));
  ASSERT_PTR_EQ(l.peer, healthy);
  ASSERT_LE(pool->candidate_visits - visits, CANDIDATES_MAX);
  /* With the healthy peer full, nothing may be dialled now (the rest are burned, stale or
   * backing off): the next acquire waits for the healthy peer's conn, still without a walk,
   * and dials nothing. */
  visits = pool->candidate_visits;
  pp_lease_t l2;
  test_rec_t r2;
  ASSERT_OK(test_acquire_start(pool, &l2, &r2, NULL, NULL));
  ASSERT_EQ(test_stats(pool).connecting, 0);
  ASSERT_EQ(test_stats(pool).waiters, 1);
  ASSERT_OK(CALL(pp_acquire_cancel(&l2)));
  RUN_UNTIL(r2.calls == 1, 2000);
  ASSERT_ERR(r2.status, PP_ECANCELED);
  ASSERT_LE(pool->candidate_visits - visits, CANDIDATES_MAX);
  ASSERT_OK(pp_release(&l, 0));
  test_finish(pool);
  srv_stop(echo);
  srv_stop(refused);
}

TEST(candidates_backoff_ends_in_retry_order) {
  /* Three peers back off for 300, 100 and 200 ms. Once all three retry times have passed,
   * acquires for any peer dial them in that order: 100, 200, 300 (not insertion order). */
  srv_t *refused = srv_refused_start();
  pp_pool_t *pool = failing_pool(TEST_OPTS(o.max_per_peer = 1));
  pp_pool_on_state(pool, test_state_cb);
  pp_lease_t l[3];
  test_rec_t r[3];
  pp_peer_t *p[3];
  three_failing(pool, refused, (const intptr_t[3]){300, 100, 200}, p, l, r);
  test_run_for(400);
  int start = test_ntransitions;
  for (int i = 0; i < 3; i++)
    ASSERT_OK(test_acquire_start(pool, &l[i], &r[i], NULL, NULL));
  wait_all(r, 3);
  int dialled[3];
  for (int i = 0; i < 3; i++) {
    dialled[i] = test_find_transition(p[i], PP_PEER_CONNECTING, start);
    ASSERT_GE(dialled[i], 0);
  }
  ASSERT_LT(dialled[1], dialled[2]);
  ASSERT_LT(dialled[2], dialled[0]);
  test_finish_srv(pool, refused);
}

/* Counts failed attempts after the setup. */
static int nfailed;

static int64_t backoff_counting(void *data, pp_peer_t *peer, int attempt, int err) {
  nfailed++;
  return 60000;
}

TEST(candidates_all_held_fails_fast_naming_the_soonest) {
  /* No peer may be dialled now (all back off): an acquire for any peer dials none of them; it
   * is answered at once with cannot_connect, about the peer whose backoff ends first. */
  srv_t *refused = srv_refused_start();
  pp_pool_t *pool = failing_pool(TEST_OPTS());
  pp_lease_t l[3];
  test_rec_t r[3];
  pp_peer_t *p[3];
  /* Backoffs long enough that none ends while a loaded machine sets up the three. */
  three_failing(pool, refused, (const intptr_t[3]){30000, 1500, 20000}, p, l, r);
  test_set_backoff(pool, backoff_counting, NULL);
  ASSERT_ERR(test_acquire_start(pool, &l[0], &r[0], NULL, NULL), PP_ECANNOTCONNECT);
  pp_cause_t c;
  ASSERT_OK(pp_lease_cause(&l[0], &c));
  ASSERT_PTR_EQ(c.peer, p[1]);
  ASSERT_GT(c.held_ms, 0);
  ASSERT_LE(c.held_ms, 1500);
  test_run_for(50);
  ASSERT_EQ(nfailed, 0);
  ASSERT_EQ(test_stats(pool).connect_attempts, 3);
  test_finish_srv(pool, refused);
}
