/* Stats: gauges and counters match what the test did. */
#include "fixtures_multi.h"

/* Every scalar gauge and counter of pp_stats_t (peers_by_state and closed are arrays). */
/* clang-format off */
#define STATS_SCALARS(X) \
  X(conns) X(idle) X(active) X(connecting) X(waiters) X(peers) X(acquires) \
  X(acquired_immediate) X(acquired_dialed) X(acquired_waited) X(timed_out) X(busy) \
  X(exhausted) X(canceled) X(cannot_connect) X(releases) X(released_broken) \
  X(connect_attempts) X(connects_ok) X(connects_failed) X(bytes_in) X(bytes_out) \
  X(msgs_in) X(msgs_out) X(policy_errors)
/* clang-format on */
/* An ASSERT_EQ naming the field, on `s`. */
#define EXPECT_ZERO(field) ASSERT_EQ(s.field, 0);

TEST(stats_fresh_pool_is_zero) {
  pp_pool_t *pool = test_pool(NULL);
  pp_stats_t s = test_stats(pool);
  STATS_SCALARS(EXPECT_ZERO);
  for (int i = 0; i < PP_PEER_STATE_COUNT; i++)
    ASSERT_EQ(s.peers_by_state[i], 0);
  for (int i = 0; i < PP_CLOSE_REASON_COUNT; i++)
    ASSERT_EQ(s.closed[i], 0);
  ASSERT(s.connect_latency_ms_avg == 0.0);
  test_finish(pool);
}

TEST(stats_gauges_idle_and_active) {
  fixture_leases_t h;
  fixture_leases_start(&h, TEST_OPTS(o.max_per_peer = 3), 3);
  test_expect_gauges(h.f.pool, 3, 3, 0);
  ASSERT_OK(pp_release(&h.l[0], 0));
  test_expect_gauges(h.f.pool, 3, 2, 1);
  pp_peer_info_t i = test_peer_info(h.f.peer);
  ASSERT_EQ(i.conns, 3);
  ASSERT_EQ(i.idle, 1);
  ASSERT_EQ(i.leases, 2);
  ASSERT_OK(pp_release(&h.l[1], PP_EBROKEN));
  RUN_UNTIL(test_stats(h.f.pool).conns == 2, 1000);
  test_expect_gauges(h.f.pool, -1, 1, 1);
  ASSERT_OK(pp_release(&h.l[2], 0));
  test_expect_gauges(h.f.pool, -1, 0, 2);
  fixture_end(&h.f);
}

TEST(stats_connecting_gauge) {
  fixture_t f =
      fixture_start(srv_hang_start(), TEST_OPTS(o.max_per_peer = 2; o.connect_timeout = 5000));
  pp_lease_t l[3];
  test_rec_t r[3];
  test_acquire_start_n(f.pool, f.peer, l, r, 3);
  test_run_for(30);
  pp_stats_t s = test_stats(f.pool);
  ASSERT_EQ(s.connecting, 2); /* max_per_peer counts conns still connecting */
  ASSERT_EQ(s.idle, 0);
  ASSERT_EQ(s.active, 0);
  ASSERT_EQ(test_peer_info(f.peer).conns, 2);
  ASSERT_EQ(srv_client_conns(f.srv), 2);
  test_check_gauge_identity(f.pool);
  ASSERT_EQ(s.peers_by_state[PP_PEER_CONNECTING], 1);
  for (int i = 0; i < 3; i++)
    ASSERT_OK(pp_acquire_cancel(&l[i]));
  RUN_UNTIL(r[0].calls && r[1].calls && r[2].calls, 1000);
  ASSERT_EQ(test_stats(f.pool).canceled, 3);
  fixture_end(&f);
}

TEST(stats_waiters_gauge) {
  fixture_leases_t h;
  fixture_busy_queue(&h, NULL, 4);
  ASSERT_EQ(test_stats(h.f.pool).waiters, 4);
  ASSERT_EQ(test_peer_info(h.f.peer).waiters, 4);
  ASSERT_OK(pp_acquire_cancel(&h.l[3]));
  RUN_UNTIL(h.r[3].calls == 1, 1000);
  ASSERT_EQ(test_stats(h.f.pool).waiters, 3);
  ASSERT_OK(pp_release(&h.f.held, 0));
  RUN_UNTIL(h.r[0].calls == 1, 1000);
  ASSERT_EQ(test_stats(h.f.pool).waiters, 2);
  ASSERT_EQ(test_peer_info(h.f.peer).waiters, 2);
  fixture_end(&h.f);
}

TEST(stats_acquire_counters) {
  srv_t *srv = srv_echo_start(NULL);
  pp_peer_t *peer;
  pp_pool_t *pool = test_pool_on(srv, TEST_OPTS(o.max_per_peer = 1; o.backlog = 1), &peer);
  pp_lease_t l, b, c;
  test_rec_t rl, rb, rc;
  /* 1: dialled for it. */
  test_acquire_release(pool, peer);
  /* 2: the idle conn, at once. */
  ASSERT_OK(test_acquire_wait(pool, &l, &rl, peer, NULL));
  ASSERT_OK(pp_release(&l, 0));
  /* 3: try_acquire. */
  memset(&l, 0, sizeof l);
  ASSERT_OK(pp_try_acquire(pool, &l, peer, NULL));
  /* 4: waits behind capacity, then served. */
  ASSERT_OK(test_acquire_start(pool, &b, &rb, peer, NULL));
  /* rejected: busy and exhausted (not counted as acquires) */
  test_acquire_fails(pool, peer, TEST_ACQUIRE_OPTS(a.busy = PP_BUSY_FAIL), PP_EBUSY);
  test_acquire_fails(pool, peer, NULL, PP_EEXHAUSTED);
  ASSERT_OK(pp_release(&l, 0));
  RUN_UNTIL(rb.calls == 1, 1000);
  /* 5: times out. */
  ASSERT_OK(test_acquire_start(pool, &c, &rc, peer, TEST_ACQUIRE_OPTS(a.timeout = 30)));
  RUN_UNTIL(rc.calls == 1, 1000);
  ASSERT_ERR(rc.status, PP_ETIMEDOUT);
  /* 6: canceled. */
  ASSERT_OK(test_acquire_start(pool, &c, &rc, peer, NULL));
  ASSERT_OK(pp_acquire_cancel(&c));
  RUN_UNTIL(rc.calls == 1, 1000);
  ASSERT_OK(pp_release(&b, PP_EBROKEN));
  pp_stats_t s = test_stats(pool);
  ASSERT_EQ(s.acquires, 6);
  ASSERT_EQ(s.acquired_dialed, 1);
  ASSERT_EQ(s.acquired_immediate, 2);
  ASSERT_EQ(s.acquired_waited, 1);
  ASSERT_EQ(s.busy, 1);
  ASSERT_EQ(s.exhausted, 1);
  ASSERT_EQ(s.timed_out, 1);
  ASSERT_EQ(s.canceled, 1);
  ASSERT_EQ(s.releases, 4);
  ASSERT_EQ(s.released_broken, 1);
  ASSERT_EQ(s.cannot_connect, 0);
  test_finish_srv(pool, srv);
}

TEST(stats_connect_counters) {
  fixture_peers_t f = fixture_peers_start(2, (srv_t *[]){srv_echo_start(NULL), srv_refused_start()},
                                          TEST_OPTS(o.retries = 1));
  int64_t delay = 5;
  test_set_backoff(f.pool, test_backoff_fixed, &delay);
  pp_peer_t *pe = f.peer[0], *pr = f.peer[1];
  pp_lease_t a, b;
  test_rec_t ra, rb;
  ASSERT_OK(test_acquire_wait(f.pool, &a, &ra, pe, NULL));
  ASSERT_ERR(test_acquire_wait(f.pool, &b, &rb, pr, NULL), PP_ECANNOTCONNECT);
  pp_stats_t s = test_stats(f.pool);
  ASSERT_EQ(s.connect_attempts, 3);
  ASSERT_EQ(s.connects_ok, 1);
  ASSERT_EQ(s.connects_failed, 2);
  ASSERT_EQ(s.cannot_connect, 1);
  ASSERT_DBL_GE(s.connect_latency_ms_max, s.connect_latency_ms_avg);
  ASSERT_EQ(test_peer_info(pe).attempts, 1);
  ASSERT_EQ(test_peer_info(pr).attempts, 2);
  ASSERT_OK(pp_release(&a, 0));
  fixture_peers_end(&f);
}

TEST(stats_closed_by_reason) {
  fixture_leases_t h;
  fixture_leases_start(&h, TEST_OPTS(o.max_per_peer = 4; o.idle_timeout = 0), 3);
  ASSERT_OK(pp_release(&h.l[0], PP_EBROKEN)); /* broken */
  RUN_UNTIL(test_stats(h.f.pool).closed[PP_CLOSE_BROKEN] == 1, 1000);
  test_release_n(&h.l[1], 2, 0);
  KICK_AFTER_ACCEPTED(h.f.srv, 3); /* both idle conns: remote */
  RUN_UNTIL(test_stats(h.f.pool).closed[PP_CLOSE_REMOTE] == 2, 2000);
  ASSERT_OK(test_acquire_wait(h.f.pool, &h.l[3], &h.r[3], h.f.peer, NULL));
  ASSERT_OK(pp_release(&h.l[3], 0));
  ASSERT_OK(pp_pool_close(h.f.pool, test_close_cb)); /* closed */
  pp_stats_t s = test_stats(h.f.pool);
  test_finish_closed();
  ASSERT_EQ(s.closed[PP_CLOSE_BROKEN], 1);
  ASSERT_EQ(s.closed[PP_CLOSE_REMOTE], 2);
  ASSERT_EQ(s.closed[PP_CLOSE_IDLE], 0);
  ASSERT_EQ(s.closed[PP_CLOSE_LIFESPAN], 0);
  srv_stop(h.f.srv);
}
