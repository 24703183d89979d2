/* The failure history an address book saves (pp_peer_history, pp_peer_info) and restores when a
 * peer is added again after a restart (pp_peer_restore): burned peers stay burned, an ejection
 * runs to its end, and a peer that kept failing is not trusted afresh. */
#include "fixtures_multi.h"

/* An echo server as the one peer of a pool with engine defaults. */
static fixture_t echo_pool(void) {
  fixture_t f;
  memset(&f, 0, sizeof f);
  f.srv = srv_echo_start(NULL);
  f.pool = test_pool_on(f.srv, NULL, &f.peer);
  return f;
}

/* A healthy acquire and release on `peer`: it serves. */
static void use_once(pp_pool_t *pool, pp_peer_t *peer) {
  pp_lease_t l;
  test_rec_t r;
  ASSERT_OK(test_acquire_wait(pool, &l, &r, peer, NULL));
  ASSERT_OK(pp_release(&l, 0));
}

TEST(history_burned_peer_stays_burned_after_a_restart) {
  /* Pool one burns a peer; its history goes to pool two (the next run), which never dials it. */
  fixture_t one = fixture_burned();
  pp_peer_history_t h;
  pp_peer_history(one.peer, &h);
  ASSERT_EQ(h.burned, 1);
  ASSERT_EQ(h.failures, 1);
  ASSERT_GT(h.last_failure, 0);
  pp_pool_close(one.pool, NULL);
  pp_peer_t *again;
  pp_pool_t *two = test_pool_on(one.srv, NULL, &again);
  ASSERT_OK(pp_peer_restore(again, &h));
  ASSERT_EQ(pp_peer_state(again), PP_PEER_BURNED);
  ASSERT_EQ(test_peer_info(again).burned, 1);
  test_acquire_fails(two, again, NULL, PP_EBURNED);
  test_acquire_fails(two, NULL, NULL, PP_ENOPEER);
  ASSERT_EQ(test_stats(two).connect_attempts, 0);
  ASSERT_EQ(test_stats(two).peers_by_state[PP_PEER_BURNED], 1);
  test_finish_srv(two, one.srv);
}

TEST(history_restores_the_counters) {
  fixture_t f = echo_pool();
  pp_peer_history_t h = {0};
  h.failures = 3;
  h.last_success = 1700000000000;
  h.last_failure = test_unix_ms() - 2000;
  h.ejections = 7;
  h.eject_streak = 2;
  ASSERT_OK(pp_peer_restore(f.peer, &h));
  pp_peer_info_t i = test_peer_info(f.peer);
  ASSERT_EQ(i.failures, 3);
  ASSERT_EQ(i.last_success, 1700000000000);
  ASSERT_EQ(i.last_failure, h.last_failure);
  ASSERT_EQ(i.ejections, 7);
  ASSERT_EQ(i.eject_streak, 2);
  ASSERT_EQ(i.burned, 0);
  ASSERT_EQ(i.ejected_until, 0);
  pp_peer_history_t back;
  pp_peer_history(f.peer, &back);
  ASSERT_EQ(back.failures, 3);
  ASSERT_EQ(back.ejections, 7);
  /* A healthy release ends the restored run, as it would have ended the original one. */
  use_once(f.pool, f.peer);
  ASSERT_EQ(test_peer_info(f.peer).failures, 0);
  fixture_end(&f);
}

TEST(history_restores_an_ejection_to_its_end) {
  fixture_peers_t f = echo_peers_start(2, NULL);
  pp_peer_t *pa = f.peer[0];
  pp_peer_history_t h = {0};
  h.failures = 5;
  h.ejections = 1;
  h.eject_streak = 1;
  h.ejected_until = test_unix_ms() + 300;
  ASSERT_OK(pp_peer_restore(pa, &h));
  ASSERT_EQ(pp_peer_state(pa), PP_PEER_EJECTED);
  pp_peer_info_t i = test_peer_info(pa);
  ASSERT_GT(i.ejected_until, test_unix_ms());
  ASSERT_LE(i.ejected_until, h.ejected_until + 5);
  test_acquire_fails(f.pool, pa, NULL, PP_EEJECTED);
  RUN_UNTIL(pp_peer_check(pa) == 0, 2000);
  use_once(f.pool, pa);
  fixture_peers_end(&f);
}

TEST(history_ejection_is_not_restored_on_the_only_peer) {
  /* eject_max_percent holds for restored ejections too: the only peer is not ejected. */
  fixture_t f = echo_pool();
  pp_peer_history_t h = {0};
  h.failures = 5;
  h.ejected_until = test_unix_ms() + 60000;
  ASSERT_OK(pp_peer_restore(f.peer, &h));
  ASSERT_NE(pp_peer_state(f.peer), PP_PEER_EJECTED);
  ASSERT_EQ(test_peer_info(f.peer).ejected_until, 0);
  use_once(f.pool, f.peer);
  fixture_end(&f);
}

TEST(history_restore_refuses_bad_fields) {
  pp_pool_t *pool = test_pool(NULL);
  pp_peer_t *peer = test_peer(pool, "127.0.0.1:9");
  pp_peer_history_t ok = {0};
  ASSERT_ERR(pp_peer_restore(NULL, &ok), PP_EINVAL);
  ASSERT_ERR(pp_peer_restore(peer, NULL), PP_EINVAL);
  const pp_peer_history_t bad[] = {
      {.failures = -1}, {.burned = 2}, {.ejected_until = -5}, {.eject_streak = -1}};
  for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++)
    ASSERT_ERR(pp_peer_restore(peer, &bad[k]), PP_EINVAL);
  ASSERT_OK(pp_peer_restore(peer, &ok));
  pp_pool_close(pool, test_close_cb);
  ASSERT_ERR(pp_peer_restore(peer, &ok), PP_ECLOSED);
  test_finish_closed();
}

TEST(history_readding_a_restored_burned_peer_unburns_it) {
  fixture_t f = echo_pool();
  pp_peer_history_t h = {0};
  h.burned = 1;
  ASSERT_OK(pp_peer_restore(f.peer, &h));
  ASSERT_EQ(pp_peer_state(f.peer), PP_PEER_BURNED);
  test_peer(f.pool, srv_addr(f.srv));
  ASSERT_NE(pp_peer_state(f.peer), PP_PEER_BURNED);
  use_once(f.pool, f.peer);
  fixture_end(&f);
}
