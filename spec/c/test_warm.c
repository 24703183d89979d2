/* min_idle: conns kept open and idle without any acquire, re-dialled when they go, within the
 * pool's limits, and kept by idle_timeout (HikariCP's minimumIdle). */
#include "fixtures.h"
#include "internal.h"

/* Test options with `min` as min_idle, then the changes given. A held peer is looked at again
 * every 20 ms. */
#define WARM_OPTS(min, ...) TEST_OPTS(o.min_idle = (min); o.maintenance_interval = 20; __VA_ARGS__)

/* An echo server's pool with WARM_OPTS(min): its peer is not dialled yet. */
static fixture_t warm_echo(int min) {
  return fixture_start(srv_echo_start(NULL), WARM_OPTS(min));
}

TEST(warm_dials_min_idle_without_any_acquire) {
  fixture_t f = warm_echo(2);
  srv_t *srv = f.srv;
  pp_pool_t *pool = f.pool;
  pp_peer_t *peer = f.peer;
  ASSERT_EQ(srv_client_conns(srv), 0); /* not inside pp_pool_add_peer */
  RUN_UNTIL(test_peer_info(peer).idle == 2, 2000);
  test_run_for(50);
  pp_stats_t s = test_stats(pool);
  ASSERT_EQ(s.idle, 2); /* two, not more */
  ASSERT_EQ(s.acquires, 0);
  ASSERT_EQ(s.warm_dials, 2);
  ASSERT_EQ(srv_client_conns(srv), 2);
  /* The first acquire takes a warm conn: no connect. */
  test_acquire_release(pool, peer);
  ASSERT_EQ(test_stats(pool).acquired_immediate, 1);
  ASSERT_EQ(test_stats(pool).acquired_dialed, 0);
  fixture_end(&f);
}

TEST(warm_stays_within_max_per_peer_and_max_total) {
  srv_t *a = srv_echo_start(NULL), *b = srv_echo_start(NULL);
  pp_pool_t *pool = test_pool(WARM_OPTS(3, o.max_per_peer = 3; o.max_total = 4));
  test_peer(pool, srv_addr(a));
  test_peer(pool, srv_addr(b));
  RUN_UNTIL(test_stats(pool).idle == 4, 2000);
  test_run_for(100);
  const srv_t *both[2] = {a, b};
  int open[2];
  srv_client_conns_many(both, 2, open);
  ASSERT_EQ(open[0] + open[1], 4); /* max_total */
  ASSERT_LE(open[0], 3);           /* max_per_peer */
  ASSERT_LE(open[1], 3);
  ASSERT_EQ(test_stats(pool).conns, 4);
  test_finish(pool);
  srv_stop(a);
  srv_stop(b);
}

TEST(warm_idle_timeout_closes_down_to_min_idle_only) {
  fixture_t f = fixture_start(srv_echo_start(NULL), WARM_OPTS(1, o.idle_timeout = 50));
  pp_pool_t *pool = f.pool;
  pp_lease_t l[3];
  test_rec_t r[3];
  test_acquire_n(pool, f.peer, l, r, 3);
  test_release_n(l, 3, 0);
  /* While all three were lent, min_idle may have dialled a spare (3 or 4 conns, by timing). */
  uint64_t conns = (uint64_t)test_stats(pool).conns;
  ASSERT_GE(conns, 3);
  ASSERT_LE(conns, 4);
  RUN_UNTIL(test_stats(pool).closed[PP_CLOSE_IDLE] >= conns - 1, 2000);
  test_run_for(200); /* four idle timeouts more */
  pp_stats_t s = test_stats(pool);
  ASSERT_EQ(s.closed[PP_CLOSE_IDLE], conns - 1);
  ASSERT_EQ(s.idle, 1);
  ASSERT_EQ(srv_client_conns(f.srv), 1);
  /* The kept conn is still lent at once. */
  test_acquire_release(pool, f.peer);
  ASSERT_EQ(test_stats(pool).closed[PP_CLOSE_IDLE], conns - 1);
  fixture_end(&f);
}

TEST(warm_redials_conns_the_server_closed) {
  fixture_t f = warm_echo(2);
  RUN_UNTIL(test_peer_info(f.peer).idle == 2, 2000);
  KICK_AFTER_ACCEPTED(f.srv, 2);
  RUN_UNTIL(srv_accepted(f.srv) == 4 && test_peer_info(f.peer).idle == 2, 2000);
  test_run_for(50);
  ASSERT_EQ(srv_accepted(f.srv), 4);
  ASSERT_EQ(test_stats(f.pool).closed[PP_CLOSE_REMOTE], 2);
  fixture_end(&f);
}

TEST(warm_comes_back_after_a_server_restart_with_backoff) {
  srv_t *srv = srv_echo_start(NULL);
  int port = srv_port(srv);
  pp_peer_t *peer;
  pp_pool_t *pool = test_pool_on(srv, WARM_OPTS(2, o.eject_after = 0), &peer);
  int64_t delay = 100;
  test_set_backoff(pool, test_backoff_fixed, &delay);
  RUN_UNTIL(test_peer_info(peer).idle == 2, 2000);
  srv_stop(srv); /* its conns close; the port refuses */
  RUN_UNTIL(test_stats(pool).connects_failed >= 2, 2000);
  uint64_t attempts = test_stats(pool).connect_attempts;
  test_run_for(300);
  /* Backoff: a refused dial waits 100 ms before its next try, so ~3 rounds, not a spin. */
  ASSERT_LT(test_stats(pool).connect_attempts - attempts, 30);
  ASSERT_EQ(test_peer_info(peer).idle, 0);
  srv = srv_echo_start_on(NULL, port);
  if (srv == NULL) { /* as in test_recover.c: a test running in parallel may take the port */
    test_finish(pool);
    test_skip("the port was taken meanwhile");
  }
  RUN_UNTIL(test_peer_info(peer).idle == 2, 3000);
  test_run_for(50);
  ASSERT_EQ(srv_client_conns(srv), 2);
  test_finish_srv(pool, srv);
}

TEST(warm_redials_after_lifespan) {
  fixture_t f =
      fixture_start(srv_echo_start(NULL), WARM_OPTS(1, o.max_lifespan = 60; o.lifespan_jitter = 0));
  RUN_UNTIL(test_stats(f.pool).closed[PP_CLOSE_LIFESPAN] >= 2, 2000);
  RUN_UNTIL(test_peer_info(f.peer).idle == 1 && srv_accepted(f.srv) >= 3, 2000);
  ASSERT_LE(test_stats(f.pool).conns, 1);
  fixture_end(&f);
}

static int warm_handshakes;
static void warm_handshake(void *data, pp_conn_t *conn) {
  (void)data;
  warm_handshakes++;
  pp_conn_handshake_done(conn, 0);
}

TEST(warm_conns_run_the_handshake_hook) {
  srv_t *srv = srv_echo_start(NULL);
  pp_pool_t *pool = test_pool(TEST_OPTS(o.min_idle = 2));
  pp_policy_t policy = {0};
  policy.handshake = warm_handshake;
  pp_pool_set_policy(pool, &policy);
  pp_peer_t *peer = test_peer(pool, srv_addr(srv));
  RUN_UNTIL(test_peer_info(peer).idle == 2, 2000);
  ASSERT_EQ(warm_handshakes, 2);
  test_finish_srv(pool, srv);
}

TEST(warm_per_peer_min_idle) {
  srv_t *a = srv_echo_start(NULL), *b = srv_echo_start(NULL);
  pp_pool_t *pool = test_pool(TEST_OPTS()); /* the pool's min_idle is 0 */
  pp_peer_t *pa = test_peer(pool, srv_addr(a));
  pp_peer_t *pb = test_peer(pool, srv_addr(b));
  ASSERT_ERR(pp_peer_set_min_idle(pa, 5), PP_EINVAL); /* over max_per_peer (4) */
  ASSERT_ERR(pp_peer_set_min_idle(pa, -2), PP_EINVAL);
  ASSERT_ERR(pp_peer_set_min_idle(NULL, 1), PP_EINVAL);
  ASSERT_OK(CALL(pp_peer_set_min_idle(pa, 3)));
  ASSERT_EQ(srv_client_conns(a), 0);
  RUN_UNTIL(test_peer_info(pa).idle == 3, 2000);
  test_run_for(50);
  ASSERT_EQ(test_peer_info(pa).min_idle, 3);
  ASSERT_EQ(test_peer_info(pb).min_idle, 0);
  ASSERT_EQ(srv_client_conns(b), 0);
  test_finish(pool);
  srv_stop(a);
  srv_stop(b);
}

TEST(warm_option_is_checked) {
  pp_options_t o;
  pp_options_init(&o);
  const char *why;
  o.min_idle = o.max_per_peer + 1;
  ASSERT_ERR(pp_options_validate(&o, &why), PP_EINVAL);
  ASSERT_STREQ(why, "min_idle must be an integer in 0..max_per_peer");
  o.min_idle = -1;
  ASSERT_ERR(pp_options_validate(&o, &why), PP_EINVAL);
}

TEST(warm_close_with_dials_in_flight) {
  srv_t *hang = srv_hang_start();
  pp_peer_t *peer;
  pp_pool_t *pool = test_pool_on(hang, WARM_OPTS(2, o.connect_timeout = 5000), &peer);
  RUN_UNTIL(srv_client_conns(hang) == 2, 2000);
  test_finish(pool); /* the loop closes with no handle left */
  ASSERT_EQ(srv_client_conns(hang), 0);
  srv_stop(hang);
}

TEST(warm_not_for_a_burned_peer) {
  srv_t *srv = srv_refused_start();
  pp_pool_t *pool = test_pool(WARM_OPTS(1));
  int64_t burn = PP_BACKOFF_BURN;
  test_set_backoff(pool, test_backoff_fixed, &burn);
  pp_peer_t *peer = test_peer(pool, srv_addr(srv));
  RUN_UNTIL(test_peer_info(peer).burned, 2000);
  uint64_t attempts = test_stats(pool).connect_attempts;
  test_run_for(150);
  ASSERT_EQ(test_stats(pool).connect_attempts, attempts);
  ASSERT(pp__list_empty(&pool->warm_needy));
  test_finish_srv(pool, srv);
}
