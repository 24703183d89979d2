/* At max_total, idle conns of one peer give way to acquires for another peer. */
#include "fixtures.h"

#include <string.h>

/* Two echo servers as the peers of a pool with room for one conn in all. */
static fixture_peers_t pair_start(void) {
  return echo_peers_start(2, TEST_OPTS(o.max_per_peer = 2; o.max_total = 1));
}

/* Wait for the acquire of `r` to be granted; it must succeed. */
static void granted(const test_rec_t *r) {
  RUN_UNTIL(r->calls == 1, 2000);
  ASSERT_OK(r->status);
}

TEST(evict_idle_conn_of_other_peer_for_named_acquire) {
  fixture_peers_t p = pair_start();
  pp_peer_t *pa = p.peer[0], *pb = p.peer[1];
  pp_lease_t l;
  test_rec_t r;
  ASSERT_OK(test_acquire_wait(p.pool, &l, &r, pa, NULL));
  ASSERT_OK(pp_release(&l, 0)); /* A's conn idles; the pool is at max_total */
  ASSERT_OK(test_acquire_wait(p.pool, &l, &r, pb, NULL));
  ASSERT_PTR_EQ(l.peer, pb);
  pp_stats_t s = test_stats(p.pool);
  ASSERT_EQ(s.closed[PP_CLOSE_EVICTED], 1);
  ASSERT_EQ(s.conns, 1);
  ASSERT_OK(pp_release(&l, 0));
  fixture_peers_end(&p);
}

TEST(evict_released_conn_serves_waiter_of_other_peer) {
  fixture_peers_t p = pair_start();
  pp_peer_t *pa = p.peer[0], *pb = p.peer[1];
  pp_lease_t la, lb;
  test_rec_t ra, rb;
  ASSERT_OK(test_acquire_wait(p.pool, &la, &ra, pa, NULL));
  ASSERT_OK(test_acquire_start(p.pool, &lb, &rb, pb, NULL)); /* waits: A holds the only slot */
  test_run_for(20);
  ASSERT_EQ(rb.calls, 0);
  ASSERT_EQ(test_stats(p.pool).waiters, 1);
  ASSERT_OK(pp_release(&la, 0)); /* nobody wants A's conn: it gives way to B */
  granted(&rb);
  ASSERT_PTR_EQ(lb.peer, pb);
  ASSERT_EQ(test_stats(p.pool).closed[PP_CLOSE_EVICTED], 1);
  ASSERT_OK(pp_release(&lb, 0));
  fixture_peers_end(&p);
}

TEST(evict_keeps_conn_wanted_by_its_own_peer) {
  fixture_peers_t p = pair_start();
  pp_peer_t *pa = p.peer[0], *pb = p.peer[1];
  pp_lease_t la, la2, lb;
  test_rec_t ra, ra2, rb;
  ASSERT_OK(test_acquire_wait(p.pool, &la, &ra, pa, NULL));
  ASSERT_OK(test_acquire_start(p.pool, &la2, &ra2, pa, NULL)); /* A's own waiter, first */
  ASSERT_OK(test_acquire_start(p.pool, &lb, &rb, pb, NULL));
  ASSERT_OK(pp_release(&la, 0));
  granted(&ra2);
  ASSERT_EQ(test_stats(p.pool).closed[PP_CLOSE_EVICTED], 0); /* handed over, not evicted */
  ASSERT_EQ(rb.calls, 0);
  ASSERT_OK(pp_release(&la2, 0)); /* now B's waiter gets the slot */
  granted(&rb);
  ASSERT_OK(pp_release(&lb, 0));
  fixture_peers_end(&p);
}
