/* Errors of this machine (EMFILE, ENFILE, ENOMEM, ENOBUFS) are not the peer's fault: no
 * failure, backoff, ejection or failed state; the acquire hears the code itself at once, and
 * the pool dials again as soon as the resource frees. */
#include "fixtures.h"

/* Options under which one failure of the peer would show: retries with backoff, ejection at
 * the first failure, and an acquire deadline far away. */
static void blaming_options(pp_options_t *o) {
  test_options(o);
  o->retries = 2;
  o->eject_after = 1;
  o->acquire_timeout = 10000;
}

/* Acquire from `peer` (NULL: any) while the process is out of file descriptors. */
static int acquire_without_fds(pp_pool_t *pool, pp_peer_t *peer, uint64_t *took_ms) {
  test_fds_t fds;
  pp_lease_t l;
  test_rec_t r;
  test_fds_exhaust(&fds, 64);
  uint64_t t0 = test_now_ms();
  int rc = test_acquire_start(pool, &l, &r, peer, NULL);
  if (rc == 0) RUN_WHILE_NOT(r.calls == 1, 5000);
  test_fds_release(&fds);
  ASSERT_OK(rc);
  ASSERT_EQ(r.calls, 1);
  *took_ms = r.at_ms - t0;
  return r.status;
}

TEST(local_emfile_is_not_the_peers_fault) {
  pp_options_t o;
  blaming_options(&o);
  fixture_t f = fixture_start(srv_echo_start(NULL), &o);
  pp_pool_on_state(f.pool, test_state_cb);
  fixture_hold(&f); /* a healthy conn, leased while the machine runs out of fds */
  int start = test_ntransitions;
  uint64_t took;
  ASSERT_ERR(acquire_without_fds(f.pool, f.peer, &took), UV_EMFILE);
  ASSERT_LT(took, 1000); /* promptly, not at the deadline */
  test_run_for(20);
  pp_peer_info_t i = test_peer_info(f.peer);
  ASSERT_EQ(i.failures, 0);
  ASSERT_EQ(i.retry_at, 0);
  ASSERT_EQ(i.ejections, 0);
  ASSERT_EQ(i.state, PP_PEER_READY);
  ASSERT_EQ(test_find_transition(f.peer, PP_PEER_FAILED, start), -1);
  /* The conn released meanwhile goes back to idle: its peer is not cooling down. */
  ASSERT_OK(pp_release(&f.held, 0));
  pp_stats_t s = test_stats(f.pool);
  ASSERT_EQ(s.idle, 1);
  ASSERT_EQ(s.ejections, 0);
  ASSERT_EQ(s.closed[PP_CLOSE_EJECTED], 0);
  fixture_end(&f);
}

TEST(local_emfile_pool_dials_again_once_fds_free) {
  pp_options_t o;
  blaming_options(&o);
  fixture_t f = fixture_start(srv_echo_start(NULL), &o);
  uint64_t took;
  ASSERT_ERR(acquire_without_fds(f.pool, NULL, &took), UV_EMFILE);
  ASSERT_LT(took, 1000);
  ASSERT_EQ(test_peer_info(f.peer).state, PP_PEER_KNOWN);
  pp_lease_t l;
  test_rec_t r;
  uint64_t t0 = test_now_ms();
  ASSERT_OK(test_acquire_wait(f.pool, &l, &r, NULL, NULL));
  ASSERT_LT(r.at_ms - t0, 1000); /* no retry time to wait out */
  ASSERT_PTR_EQ(l.peer, f.peer);
  ASSERT_EQ(test_peer_info(f.peer).failures, 0);
  ASSERT_OK(pp_release(&l, 0));
  fixture_end(&f);
}

TEST(local_error_release_closes_without_blame) {
  /* A holder that saw a local error (here ENOBUFS) releases with it: the conn closes, the
   * peer counts no failure. A socket error still counts one. */
  pp_options_t o;
  blaming_options(&o);
  fixture_t f = fixture_start(srv_echo_start(NULL), &o);
  fixture_hold(&f);
  ASSERT_OK(pp_release(&f.held, UV_ENOBUFS));
  pp_stats_t s = test_stats(f.pool);
  ASSERT_EQ(s.conns, 0);
  ASSERT_EQ(s.ejections, 0);
  ASSERT_EQ(test_peer_info(f.peer).failures, 0);
  ASSERT_EQ(test_peer_info(f.peer).retry_at, 0);
  fixture_hold(&f);
  ASSERT_OK(pp_release(&f.held, UV_ECONNRESET));
  ASSERT_EQ(test_peer_info(f.peer).failures, 1);
  fixture_end(&f);
}
