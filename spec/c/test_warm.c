/* min_idle: conns kept open and idle without any acquire, re-dialled when they go, within the
 * pool's limits, and kept by idle_timeout (HikariCP's minimumIdle). */
#include "fixtures.h"
#include "internal.h"

static pp_pool_t *warm_pool(const srv_t *srv, int min_idle, pp_options_t *o, pp_peer_t **peer) {
  o->min_idle = min_idle;
  o->maintenance_interval = 20; /* a held peer is looked at again this often */
  pp_pool_t *pool = test_pool(o);
  *peer = srv ? test_peer(pool, srv_addr(srv)) : NULL;
  return pool;
}

TEST(warm_dials_min_idle_without_any_acquire) {
  srv_t *srv = srv_echo_start(NULL);
  pp_options_t o;
  test_options(&o);
  pp_peer_t *peer;
  pp_pool_t *pool = warm_pool(srv, 2, &o, &peer);
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
  test_finish_srv(pool, srv);
}

TEST(warm_stays_within_max_per_peer_and_max_total) {
  srv_t *a = srv_echo_start(NULL), *b = srv_echo_start(NULL);
  pp_options_t o;
  test_options(&o);
  o.max_per_peer = 3;
  o.max_total = 4;
  pp_peer_t *pa;
  pp_pool_t *pool = warm_pool(a, 3, &o, &pa);
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
  srv_t *srv = srv_echo_start(NULL);
  pp_options_t o;
  test_options(&o);
  o.idle_timeout = 50;
  pp_peer_t *peer;
  pp_pool_t *pool = warm_pool(srv, 1, &o, &peer);
  pp_lease_t l[3];
  test_rec_t r[3];
  for (int i = 0; i < 3; i++)
    ASSERT_OK(test_acquire_wait(pool, &l[i], &r[i], peer, NULL));
  for (int i = 0; i < 3; i++)
    ASSERT_OK(pp_release(&l[i], 0));
  RUN_UNTIL(test_stats(pool).closed[PP_CLOSE_IDLE] >= 2, 2000);
  test_run_for(200); /* four idle timeouts more */
  pp_stats_t s = test_stats(pool);
  ASSERT_EQ(s.closed[PP_CLOSE_IDLE], 2);
  ASSERT_EQ(s.idle, 1);
  ASSERT_EQ(srv_client_conns(srv), 1);
  /* The kept conn is still lent at once. */
  test_acquire_release(pool, peer);
  ASSERT_EQ(test_stats(pool).closed[PP_CLOSE_IDLE], 2);
  test_finish_srv(pool, srv);
}

TEST(warm_redials_conns_the_server_closed) {
  srv_t *srv = srv_echo_start(NULL);
  pp_options_t o;
  test_options(&o);
  pp_peer_t *peer;
  pp_pool_t *pool = warm_pool(srv, 2, &o, &peer);
  RUN_UNTIL(test_peer_info(peer).idle == 2, 2000);
  KICK_AFTER_ACCEPTED(srv, 2);
  RUN_UNTIL(srv_accepted(srv) == 4 && test_peer_info(peer).idle == 2, 2000);
  test_run_for(50);
  ASSERT_EQ(srv_accepted(srv), 4);
  ASSERT_EQ(test_stats(pool).closed[PP_CLOSE_REMOTE], 2);
  test_finish_srv(pool, srv);
}

TEST(warm_comes_back_after_a_server_restart_with_backoff) {
  srv_t *srv = srv_echo_start(NULL);
  int port = srv_port(srv);
  pp_options_t o;
  test_options(&o);
  o.eject_after = 0;
  pp_peer_t *peer;
  pp_pool_t *pool = warm_pool(srv, 2, &o, &peer);
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
  ASSERT_NOT_NULL(srv);
  RUN_UNTIL(test_peer_info(peer).idle == 2, 3000);
  test_run_for(50);
  ASSERT_EQ(srv_client_conns(srv), 2);
  test_finish_srv(pool, srv);
}

TEST(warm_redials_after_lifespan) {
  srv_t *srv = srv_echo_start(NULL);
  pp_options_t o;
  test_options(&o);
  o.max_lifespan = 60;
  o.lifespan_jitter = 0;
  pp_peer_t *peer;
  pp_pool_t *pool = warm_pool(srv, 1, &o, &peer);
  RUN_UNTIL(test_stats(pool).closed[PP_CLOSE_LIFESPAN] >= 2, 2000);
  RUN_UNTIL(test_peer_info(peer).idle == 1 && srv_accepted(srv) >= 3, 2000);
  ASSERT_LE(test_stats(pool).conns, 1);
  test_finish_srv(pool, srv);
}

static int warm_handshakes;
static void warm_handshake(void *data, pp_conn_t *conn) {
  (void)data;
  warm_handshakes++;
  pp_conn_handshake_done(conn, 0);
}

TEST(warm_conns_run_the_handshake_hook) {
  srv_t *srv = srv_echo_start(NULL);
  pp_options_t o;
  test_options(&o);
  o.min_idle = 2;
  pp_pool_t *pool = test_pool(&o);
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
  pp_options_t o;
  test_options(&o);
  pp_pool_t *pool = test_pool(&o); /* the pool's min_idle is 0 */
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
  pp_options_t o;
  test_options(&o);
  o.connect_timeout = 5000;
  pp_peer_t *peer;
  pp_pool_t *pool = warm_pool(hang, 2, &o, &peer);
  RUN_UNTIL(srv_client_conns(hang) == 2, 2000);
  test_finish(pool); /* the loop closes with no handle left */
  ASSERT_EQ(srv_client_conns(hang), 0);
  srv_stop(hang);
}

TEST(warm_not_for_a_burned_peer) {
  srv_t *srv = srv_refused_start();
  pp_options_t o;
  test_options(&o);
  pp_peer_t *peer;
  pp_pool_t *pool = warm_pool(NULL, 1, &o, &peer);
  int64_t burn = PP_BACKOFF_BURN;
  test_set_backoff(pool, test_backoff_fixed, &burn);
  peer = test_peer(pool, srv_addr(srv));
  RUN_UNTIL(test_peer_info(peer).burned, 2000);
  uint64_t attempts = test_stats(pool).connect_attempts;
  test_run_for(150);
  ASSERT_EQ(test_stats(pool).connect_attempts, attempts);
  ASSERT(pp__list_empty(&pool->warm_needy));
  test_finish_srv(pool, srv);
}
