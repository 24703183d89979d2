/* Peer states and their transitions, seen through pp_pool_on_state. */
#include "fixtures_multi.h"

/* A fixture on `srv` whose pool (`opts`, NULL = test_options()) records its transitions
 * (test_state_cb) from before the peer is added. */
static fixture_t watched_start(srv_t *srv, const pp_options_t *opts) {
  fixture_t f;
  memset(&f, 0, sizeof f);
  f.srv = srv;
  f.pool = test_pool(opts ? opts : TEST_OPTS());
  pp_pool_on_state(f.pool, test_state_cb);
  f.peer = test_peer(f.pool, srv_addr(srv));
  return f;
}

/* watched_start on an echo server whose peer served one acquire and release, and was seen
 * becoming ready. */
static fixture_t ready_start(void) {
  fixture_t f = watched_start(srv_echo_start(NULL), NULL);
  test_acquire_release(f.pool, f.peer);
  WAIT_TRANSITION(f.peer, PP_PEER_READY, 0, 1000);
  return f;
}

TEST(state_known_connecting_ready) {
  fixture_t f = watched_start(srv_echo_start(NULL), NULL);
  ASSERT_EQ(pp_peer_state(f.peer), PP_PEER_KNOWN);
  pp_lease_t l;
  test_rec_t r;
  ASSERT_OK(test_acquire_wait(f.pool, &l, &r, f.peer, NULL));
  ASSERT_EQ(pp_peer_state(f.peer), PP_PEER_READY);
  WAIT_TRANSITION(f.peer, PP_PEER_READY, 0, 1000);
  test_run_for(20);
  int c = test_find_transition(f.peer, PP_PEER_CONNECTING, 0);
  int rd = test_find_transition(f.peer, PP_PEER_READY, 0);
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
  pp_stats_t s = test_stats(f.pool);
  ASSERT_EQ(s.peers_by_state[PP_PEER_READY], 1);
  ASSERT_EQ(s.peers_by_state[PP_PEER_KNOWN], 0);
  ASSERT_OK(pp_release(&l, 0));
  fixture_end(&f);
}

TEST(state_no_transition_without_change) {
  /* A second acquire on a ready peer with an idle conn reports nothing. */
  fixture_t f = ready_start();
  test_run_for(20);
  int n = test_ntransitions;
  test_acquire_release(f.pool, f.peer);
  test_run_for(20);
  ASSERT_EQ(test_ntransitions, n);
  fixture_end(&f);
}

TEST(state_callback_can_be_removed) {
  fixture_t f = fixture_start(srv_echo_start(NULL), NULL);
  pp_pool_on_state(f.pool, test_state_cb);
  pp_pool_on_state(f.pool, NULL);
  fixture_hold(&f);
  test_run_for(20);
  ASSERT_EQ(test_ntransitions, 0);
  ASSERT_OK(pp_release(&f.held, 0));
  fixture_end(&f);
}

TEST(state_failed_after_refused_connect) {
  fixture_t f = watched_start(srv_refused_start(), TEST_OPTS(o.retries = 0));
  pp_lease_t l;
  test_rec_t r;
  ASSERT_ERR(test_acquire_wait(f.pool, &l, &r, f.peer, NULL), PP_ECANNOTCONNECT);
  ASSERT_EQ(pp_peer_state(f.peer), PP_PEER_FAILED);
  WAIT_TRANSITION(f.peer, PP_PEER_FAILED, 0, 1000);
  int c = test_find_transition(f.peer, PP_PEER_CONNECTING, 0);
  int failed = test_find_transition(f.peer, PP_PEER_FAILED, 0);
  ASSERT_GE(c, 0);
  ASSERT_GT(failed, c);
  ASSERT_EQ(test_find_transition(f.peer, PP_PEER_READY, 0), -1);
  pp_peer_info_t i = test_peer_info(f.peer);
  ASSERT_GE(i.failures, 1);
  ASSERT_ERR(i.last_error, UV_ECONNREFUSED);
  ASSERT_EQ(test_stats(f.pool).peers_by_state[PP_PEER_FAILED], 1);
  fixture_end(&f);
}

TEST(state_disconnected_after_server_closes_last_conn) {
  fixture_t f = ready_start();
  int before = test_ntransitions;
  KICK_AFTER_ACCEPTED(f.srv, 1);
  RUN_UNTIL(pp_peer_state(f.peer) == PP_PEER_DISCONNECTED, 3000);
  WAIT_TRANSITION(f.peer, PP_PEER_DISCONNECTED, before, 1000);
  int d = test_find_transition(f.peer, PP_PEER_DISCONNECTED, before);
  ASSERT_EQ(test_transitions[d].from, PP_PEER_READY);
  ASSERT_EQ(test_peer_info(f.peer).conns, 0);
  fixture_end(&f);
}

TEST(state_disconnected_after_idle_timeout) {
  fixture_t f = watched_start(srv_echo_start(NULL), TEST_OPTS(o.idle_timeout = 50));
  test_acquire_release(f.pool, f.peer);
  RUN_UNTIL(pp_peer_state(f.peer) == PP_PEER_DISCONNECTED, 3000);
  WAIT_TRANSITION(f.peer, PP_PEER_DISCONNECTED, 0, 1000);
  ASSERT_EQ(test_stats(f.pool).closed[PP_CLOSE_IDLE], 1);
  fixture_end(&f);
}

TEST(state_not_disconnected_while_another_conn_lives) {
  fixture_t f = watched_start(srv_echo_start(NULL), TEST_OPTS(o.max_per_peer = 2));
  pp_lease_t l[2];
  test_rec_t r[2];
  test_acquire_n(f.pool, f.peer, l, r, 2);
  ASSERT_PTR_NE(l[0].conn, l[1].conn);
  ASSERT_OK(pp_release(&l[0], PP_EBROKEN)); /* one conn closes, the other lives */
  test_run_for(30);
  ASSERT_EQ(test_find_transition(f.peer, PP_PEER_DISCONNECTED, 0), -1);
  ASSERT_EQ(pp_peer_state(f.peer), PP_PEER_READY);
  ASSERT_OK(pp_release(&l[1], 0));
  fixture_end(&f);
}

static int64_t burn_backoff(void *data, pp_peer_t *peer, int attempt, int err) {
  (*(int *)data)++;
  return PP_BACKOFF_BURN;
}

/* watched_start on a refused server (3 retries) whose backoff hook burns the peer at its
 * first failure, counting its calls in `*calls`; the peer is dialled once and burned. */
static fixture_t burned_start(int *calls) {
  *calls = 0;
  fixture_t f = watched_start(srv_refused_start(), TEST_OPTS(o.retries = 3));
  test_set_backoff(f.pool, burn_backoff, calls);
  pp_lease_t l;
  test_rec_t r;
  int st = test_acquire_wait(f.pool, &l, &r, f.peer, NULL);
  /* The acquire that saw the peer burn ends with burned or cannot_connect. */
  ASSERT_ERR2(st, PP_EBURNED, PP_ECANNOTCONNECT);
  ASSERT_EQ(pp_peer_state(f.peer), PP_PEER_BURNED);
  return f;
}

/* The burned peer is not dialled again: one connect attempt in all, also a while later. */
static void never_dialled_again(fixture_t *f) {
  ASSERT_EQ(test_stats(f->pool).connect_attempts, 1);
  test_run_for(100);
  ASSERT_EQ(test_stats(f->pool).connect_attempts, 1);
}

TEST(state_burned_when_backoff_gives_up) {
  int calls;
  fixture_t f = burned_start(&calls);
  ASSERT_EQ(calls, 1);
  WAIT_TRANSITION(f.peer, PP_PEER_BURNED, 0, 1000);
  ASSERT_EQ(test_stats(f.pool).peers_by_state[PP_PEER_BURNED], 1);
  never_dialled_again(&f);
  fixture_end(&f);
}

TEST(state_burned_peer_acquire_fails_at_once) {
  int calls;
  fixture_t f = burned_start(&calls);
  test_acquire_fails(f.pool, f.peer, NULL, PP_EBURNED);
  test_try_acquire_fails(f.pool, f.peer, PP_EBURNED);
  never_dialled_again(&f);
  fixture_end(&f);
}

TEST(state_readding_a_burned_peer_unburns_it) {
  int calls;
  fixture_t f = burned_start(&calls);
  WAIT_TRANSITION(f.peer, PP_PEER_BURNED, 0, 1000);
  int n = test_ntransitions;
  pp_peer_t *again = NULL;
  ASSERT_OK(CALL(pp_pool_add_peer(f.pool, srv_addr(f.srv), 0, &again, NULL)));
  ASSERT_PTR_EQ(again, f.peer);
  ASSERT_EQ(pp_peer_state(f.peer), PP_PEER_KNOWN);
  WAIT_TRANSITION(f.peer, PP_PEER_KNOWN, n, 1000);
  pp_lease_t l;
  test_rec_t r;
  /* It is dialled again (and, still refused, burned again). */
  int st = test_acquire_wait(f.pool, &l, &r, f.peer, NULL);
  ASSERT_ERR2(st, PP_EBURNED, PP_ECANNOTCONNECT);
  ASSERT_EQ(test_stats(f.pool).connect_attempts, 2);
  fixture_end(&f);
}

TEST(state_peers_by_state_sums_to_peers) {
  fixture_t f = watched_start(srv_echo_start(NULL), NULL);
  srv_t *ref = srv_refused_start();
  pp_peer_t *b = test_peer(f.pool, srv_addr(ref));
  test_peer(f.pool, "127.0.0.1:1");
  fixture_hold(&f);
  pp_lease_t lb;
  test_rec_t rb;
  ASSERT_ERR(test_acquire_wait(f.pool, &lb, &rb, b, NULL), PP_ECANNOTCONNECT);
  pp_stats_t s = test_stats(f.pool);
  ASSERT_EQ(s.peers, 3);
  test_check_gauge_identity(f.pool); /* the peers by state add up to the peers */
  ASSERT_EQ(s.peers_by_state[PP_PEER_READY], 1);
  ASSERT_EQ(s.peers_by_state[PP_PEER_FAILED], 1);
  ASSERT_EQ(s.peers_by_state[PP_PEER_KNOWN], 1);
  ASSERT_OK(pp_release(&f.held, 0));
  fixture_end(&f);
  srv_stop(ref);
}
