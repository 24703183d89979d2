/* The shared fixtures of fixtures_multi.h (no tests here). */
#include "fixtures_multi.h"

void fixture_leases_start(fixture_leases_t *s, const pp_options_t *opts, int n) {
  ASSERT_LE(n, FIXTURE_LEASES);
  s->f = fixture_start(srv_echo_start(NULL), opts);
  test_acquire_n(s->f.pool, s->f.peer, s->l, s->r, n);
}

void fixture_busy(fixture_t *f, const pp_options_t *opts) {
  pp_options_t o;
  if (opts != NULL)
    o = *opts;
  else
    test_options(&o);
  o.max_per_peer = 1;
  *f = fixture_start(srv_echo_start(NULL), &o);
  fixture_hold(f);
}

void fixture_busy_queue(fixture_leases_t *s, const pp_options_t *opts, int n) {
  ASSERT_LE(n, FIXTURE_LEASES);
  fixture_busy(&s->f, opts);
  test_acquire_start_n(s->f.pool, s->f.peer, s->l, s->r, n);
}

static int64_t burn(void *data, pp_peer_t *peer, int attempt, int err) {
  return PP_BACKOFF_BURN;
}

fixture_t fixture_burned(void) {
  fixture_t f;
  memset(&f, 0, sizeof f);
  f.srv = srv_refused_start();
  f.pool = test_pool_on(f.srv, NULL, &f.peer);
  test_set_backoff(f.pool, burn, NULL);
  pp_lease_t l;
  test_rec_t r;
  ASSERT_ERR(test_acquire_wait(f.pool, &l, &r, f.peer, NULL), PP_EBURNED);
  return f;
}

void test_wait_ok(const test_rec_t *r) {
  RUN_UNTIL(r->calls == 1, 5000);
  ASSERT_OK(r->status);
}

void test_acquire_start_n(pp_pool_t *pool, pp_peer_t *peer, pp_lease_t *l, test_rec_t *r, int n) {
  for (int i = 0; i < n; i++)
    ASSERT_OK(test_acquire_start(pool, &l[i], &r[i], peer, NULL));
}

void test_expect_gauges(pp_pool_t *pool, int conns, int active, int idle) {
  pp_stats_t s = test_stats(pool);
  if (conns >= 0) ASSERT_EQ(s.conns, conns);
  ASSERT_EQ(s.active, active);
  ASSERT_EQ(s.idle, idle);
  test_check_gauge_identity(pool);
}

void test_check_gauge_identity(pp_pool_t *pool) {
  pp_stats_t s = test_stats(pool);
  if (s.conns != s.idle + s.active + s.connecting)
    FAIL("conns %d != idle %d + active %d + connecting %d", s.conns, s.idle, s.active,
         s.connecting);
  int sum = 0;
  for (int i = 0; i < PP_PEER_STATE_COUNT; i++)
    sum += s.peers_by_state[i];
  ASSERT_EQ(sum, s.peers);
}

void test_expect_unblamed(pp_pool_t *pool, pp_peer_t *peer) {
  pp_stats_t s = test_stats(pool);
  ASSERT_EQ(s.released_broken, 0);
  ASSERT_EQ(s.ejections, 0);
  pp_peer_info_t i = test_peer_info(peer);
  ASSERT_EQ(i.failures, 0);
  ASSERT_EQ(i.retry_at, 0);
}
