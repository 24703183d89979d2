/* Peer states and their transitions, seen through pp_pool_on_state. */
#include "fixtures.h"

/* A pool with `opts` (NULL = test_options()) that records its transitions (test_state_cb),
 * and a peer at `srv`. */
static pp_pool_t *watched_pool(const srv_t *srv, const pp_options_t *opts, pp_peer_t **peer) {
  pp_pool_t *pool = test_pool(opts ? opts : TEST_OPTS());
  pp_pool_on_state(pool, test_state_cb);
  *peer = test_peer(pool, srv_addr(srv));
  return pool;
}

TEST(state_known_connecting_ready) {
  srv_t *srv = srv_echo_start(NULL);
  pp_peer_t *peer;
  pp_pool_t *pool = watched_pool(srv, NULL, &peer);
  ASSERT_EQ(pp_peer_state(peer), PP_PEER_KNOWN);
  pp_lease_t l;
  test_rec_t r;
  ASSERT_OK(test_acquire_wait(pool, &l, &r, peer, NULL));
  ASSERT_EQ(pp_peer_state(peer), PP_PEER_READY);
  WAIT_TRANSITION(peer, PP_PEER_READY, 0, 1000);
  test_run_for(20);
  int c = test_find_transition(peer, PP_PEER_CONNECTING, 0);
  int rd = test_find_transition(peer, PP_PEER_READY, 0);
  if (c != 0 || rd < 0) {
    test_dump_transitions();
    FAIL("want known -> connecting first, then ready");
  }
  ASSERT_EQ(test_transitions[0].from, PP_PEER_KNOWN);
  /* Without a handshake hook, "connected" may be skipped or pass at once; it never comes
   * after ready, and nothing else happens in between. */
  for (int i = c + 1; i < rd; i++)
    ASSERT_EQ(test_transitions[i].to, PP_PEER_CONNECTED);
  ASSERT_EQ(rd, test_ntransitions - 1);
  pp_stats_t s = test_stats(pool);
  ASSERT_EQ(s.peers_by_state[PP_PEER_READY], 1);
  ASSERT_EQ(s.peers_by_state[PP_PEER_KNOWN], 0);
  ASSERT_OK(pp_release(&l, 0));
  test_finish_srv(pool, srv);
}

TEST(state_no_transition_without_change) {
  /* A second acquire on a ready peer with an idle conn reports nothing. */
  srv_t *srv = srv_echo_start(NULL);
  pp_peer_t *peer;
  pp_pool_t *pool = watched_pool(srv, NULL, &peer);
  test_acquire_release(pool, peer);
  WAIT_TRANSITION(peer, PP_PEER_READY, 0, 1000);
  test_run_for(20);
  int n = test_ntransitions;
  test_acquire_release(pool, peer);
  test_run_for(20);
  ASSERT_EQ(test_ntransitions, n);
  test_finish_srv(pool, srv);
}

TEST(state_callback_can_be_removed) {
  srv_t *srv = srv_echo_start(NULL);
  pp_pool_t *pool = test_pool(TEST_OPTS());
  pp_pool_on_state(pool, test_state_cb);
  pp_pool_on_state(pool, NULL);
  pp_peer_t *peer = test_peer(pool, srv_addr(srv));
  pp_lease_t l;
  test_rec_t r;
  ASSERT_OK(test_acquire_wait(pool, &l, &r, peer, NULL));
  test_run_for(20);
  ASSERT_EQ(test_ntransitions, 0);
  ASSERT_OK(pp_release(&l, 0));
  test_finish_srv(pool, srv);
}

TEST(state_failed_after_refused_connect) {
  srv_t *srv = srv_refused_start();
  pp_peer_t *peer;
  pp_pool_t *pool = watched_pool(srv, TEST_OPTS(o.retries = 0), &peer);
  pp_lease_t l;
  test_rec_t r;
  ASSERT_ERR(test_acquire_wait(pool, &l, &r, peer, NULL), PP_ECANNOTCONNECT);
  ASSERT_EQ(pp_peer_state(peer), PP_PEER_FAILED);
  WAIT_TRANSITION(peer, PP_PEER_FAILED, 0, 1000);
  int c = test_find_transition(peer, PP_PEER_CONNECTING, 0);
  int f = test_find_transition(peer, PP_PEER_FAILED, 0);
  ASSERT_GE(c, 0);
  ASSERT_GT(f, c);
  ASSERT_EQ(test_find_transition(peer, PP_PEER_READY, 0), -1);
  pp_peer_info_t i = test_peer_info(peer);
  ASSERT_GE(i.failures, 1);
  ASSERT_ERR(i.last_error, UV_ECONNREFUSED);
  ASSERT_EQ(test_stats(pool).peers_by_state[PP_PEER_FAILED], 1);
  test_finish_srv(pool, srv);
}

TEST(state_disconnected_after_server_closes_last_conn) {
  srv_t *srv = srv_echo_start(NULL);
  pp_peer_t *peer;
  pp_pool_t *pool = watched_pool(srv, NULL, &peer);
  test_acquire_release(pool, peer);
  WAIT_TRANSITION(peer, PP_PEER_READY, 0, 1000);
  int before = test_ntransitions;
  KICK_AFTER_ACCEPTED(srv, 1);
  RUN_UNTIL(pp_peer_state(peer) == PP_PEER_DISCONNECTED, 3000);
  WAIT_TRANSITION(peer, PP_PEER_DISCONNECTED, before, 1000);
  int d = test_find_transition(peer, PP_PEER_DISCONNECTED, before);
  ASSERT_EQ(test_transitions[d].from, PP_PEER_READY);
  ASSERT_EQ(test_peer_info(peer).conns, 0);
  test_finish_srv(pool, srv);
}

TEST(state_disconnected_after_idle_timeout) {
  srv_t *srv = srv_echo_start(NULL);
  pp_peer_t *peer;
  pp_pool_t *pool = watched_pool(srv, TEST_OPTS(o.idle_timeout = 50), &peer);
  test_acquire_release(pool, peer);
  RUN_UNTIL(pp_peer_state(peer) == PP_PEER_DISCONNECTED, 3000);
  WAIT_TRANSITION(peer, PP_PEER_DISCONNECTED, 0, 1000);
  ASSERT_EQ(test_stats(pool).closed[PP_CLOSE_IDLE], 1);
  test_finish_srv(pool, srv);
}

TEST(state_not_disconnected_while_another_conn_lives) {
  srv_t *srv = srv_echo_start(NULL);
  pp_peer_t *peer;
  pp_pool_t *pool = watched_pool(srv, TEST_OPTS(o.max_per_peer = 2), &peer);
  pp_lease_t l[2];
  test_rec_t r[2];
  test_acquire_n(pool, peer, l, r, 2);
  ASSERT_PTR_NE(l[0].conn, l[1].conn);
  ASSERT_OK(pp_release(&l[0], PP_EBROKEN)); /* one conn closes, the other lives */
  test_run_for(30);
  ASSERT_EQ(test_find_transition(peer, PP_PEER_DISCONNECTED, 0), -1);
  ASSERT_EQ(pp_peer_state(peer), PP_PEER_READY);
  ASSERT_OK(pp_release(&l[1], 0));
  test_finish_srv(pool, srv);
}

static int64_t burn_backoff(void *data, pp_peer_t *peer, int attempt, int err) {
  (*(int *)data)++;
  return PP_BACKOFF_BURN;
}

static pp_peer_t *burn_a_peer(pp_pool_t **poolp, srv_t *srv, int *calls) {
  pp_peer_t *peer;
  pp_pool_t *pool = watched_pool(srv, TEST_OPTS(o.retries = 3), &peer);
  test_set_backoff(pool, burn_backoff, calls);
  pp_lease_t l;
  test_rec_t r;
  int st = test_acquire_wait(pool, &l, &r, peer, NULL);
  /* The acquire that saw the peer burn ends with burned or cannot_connect. */
  ASSERT_ERR2(st, PP_EBURNED, PP_ECANNOTCONNECT);
  ASSERT_EQ(pp_peer_state(peer), PP_PEER_BURNED);
  *poolp = pool;
  return peer;
}

TEST(state_burned_when_backoff_gives_up) {
  srv_t *srv = srv_refused_start();
  pp_pool_t *pool;
  int calls = 0;
  pp_peer_t *peer = burn_a_peer(&pool, srv, &calls);
  ASSERT_EQ(calls, 1);
  WAIT_TRANSITION(peer, PP_PEER_BURNED, 0, 1000);
  pp_stats_t s = test_stats(pool);
  ASSERT_EQ(s.peers_by_state[PP_PEER_BURNED], 1);
  ASSERT_EQ(s.connect_attempts, 1); /* no attempt after the burn */
  test_run_for(100);
  ASSERT_EQ(test_stats(pool).connect_attempts, 1);
  test_finish_srv(pool, srv);
}

TEST(state_burned_peer_acquire_fails_at_once) {
  srv_t *srv = srv_refused_start();
  pp_pool_t *pool;
  int calls = 0;
  pp_peer_t *peer = burn_a_peer(&pool, srv, &calls);
  pp_lease_t l;
  test_rec_t r;
  ASSERT_ERR(test_acquire_start(pool, &l, &r, peer, NULL), PP_EBURNED);
  pp_lease_t t;
  memset(&t, 0, sizeof t);
  ASSERT_ERR(pp_try_acquire(pool, &t, peer, NULL), PP_EBURNED);
  test_run_for(30);
  ASSERT_EQ(r.calls, 0);
  ASSERT_EQ(test_stats(pool).connect_attempts, 1);
  test_finish_srv(pool, srv);
}

TEST(state_readding_a_burned_peer_unburns_it) {
  srv_t *srv = srv_refused_start();
  pp_pool_t *pool;
  int calls = 0;
  pp_peer_t *peer = burn_a_peer(&pool, srv, &calls);
  WAIT_TRANSITION(peer, PP_PEER_BURNED, 0, 1000);
  int n = test_ntransitions;
  pp_peer_t *again = NULL;
  ASSERT_OK(CALL(pp_pool_add_peer(pool, srv_addr(srv), 0, &again, NULL)));
  ASSERT_PTR_EQ(again, peer);
  ASSERT_EQ(pp_peer_state(peer), PP_PEER_KNOWN);
  WAIT_TRANSITION(peer, PP_PEER_KNOWN, n, 1000);
  pp_lease_t l;
  test_rec_t r;
  /* It is dialled again (and, still refused, burned again). */
  int st = test_acquire_wait(pool, &l, &r, peer, NULL);
  ASSERT_ERR2(st, PP_EBURNED, PP_ECANNOTCONNECT);
  ASSERT_EQ(test_stats(pool).connect_attempts, 2);
  test_finish_srv(pool, srv);
}

TEST(state_peers_by_state_sums_to_peers) {
  srv_t *echo = srv_echo_start(NULL);
  srv_t *ref = srv_refused_start();
  pp_peer_t *a;
  pp_pool_t *pool = watched_pool(echo, NULL, &a);
  pp_peer_t *b = test_peer(pool, srv_addr(ref));
  test_peer(pool, "127.0.0.1:1");
  pp_lease_t la, lb;
  test_rec_t ra, rb;
  ASSERT_OK(test_acquire_wait(pool, &la, &ra, a, NULL));
  ASSERT_ERR(test_acquire_wait(pool, &lb, &rb, b, NULL), PP_ECANNOTCONNECT);
  pp_stats_t s = test_stats(pool);
  ASSERT_EQ(s.peers, 3);
  int sum = 0;
  for (int i = 0; i < PP_PEER_STATE_COUNT; i++)
    sum += s.peers_by_state[i];
  ASSERT_EQ(sum, 3);
  ASSERT_EQ(s.peers_by_state[PP_PEER_READY], 1);
  ASSERT_EQ(s.peers_by_state[PP_PEER_FAILED], 1);
  ASSERT_EQ(s.peers_by_state[PP_PEER_KNOWN], 1);
  ASSERT_OK(pp_release(&la, 0));
  test_finish(pool);
  srv_stop(echo);
  srv_stop(ref);
}
