/* At max_total, idle conns of one peer give way to acquires for another peer. */
#include "fixtures.h"

#include <string.h>

static pp_pool_t *two_peer_pool(srv_t *a, srv_t *b, pp_peer_t **pa, pp_peer_t **pb) {
  pp_options_t o;
  test_options(&o);
  o.max_per_peer = 2;
  o.max_total = 1;
  pp_pool_t *pool = test_pool(&o);
  *pa = test_peer(pool, srv_addr(a));
  *pb = test_peer(pool, srv_addr(b));
  return pool;
}

TEST(evict_idle_conn_of_other_peer_for_named_acquire) {
  srv_t *a = srv_echo_start(NULL), *b = srv_echo_start(NULL);
  pp_peer_t *pa, *pb;
  pp_pool_t *pool = two_peer_pool(a, b, &pa, &pb);
  pp_lease_t l;
  test_rec_t r;
  ASSERT_OK(test_acquire_wait(pool, &l, &r, pa, NULL));
  ASSERT_OK(pp_release(&l, 0)); /* A's conn idles; the pool is at max_total */
  ASSERT_OK(test_acquire_wait(pool, &l, &r, pb, NULL));
  ASSERT_PTR_EQ(l.peer, pb);
  pp_stats_t s = test_stats(pool);
  ASSERT_EQ(s.closed[PP_CLOSE_EVICTED], 1);
  ASSERT_EQ(s.conns, 1);
  ASSERT_OK(pp_release(&l, 0));
  test_finish(pool);
  srv_stop(a);
  srv_stop(b);
}

TEST(evict_released_conn_serves_waiter_of_other_peer) {
  srv_t *a = srv_echo_start(NULL), *b = srv_echo_start(NULL);
  pp_peer_t *pa, *pb;
  pp_pool_t *pool = two_peer_pool(a, b, &pa, &pb);
  pp_lease_t la, lb;
  test_rec_t ra, rb;
  ASSERT_OK(test_acquire_wait(pool, &la, &ra, pa, NULL));
  ASSERT_OK(test_acquire_start(pool, &lb, &rb, pb, NULL)); /* waits: A holds the only slot */
  test_run_for(20);
  ASSERT_EQ(rb.calls, 0);
  ASSERT_EQ(test_stats(pool).waiters, 1);
  ASSERT_OK(pp_release(&la, 0)); /* nobody wants A's conn: it gives way to B */
  RUN_UNTIL(rb.calls == 1, 2000);
  ASSERT_OK(rb.status);
  ASSERT_PTR_EQ(lb.peer, pb);
  ASSERT_EQ(test_stats(pool).closed[PP_CLOSE_EVICTED], 1);
  ASSERT_OK(pp_release(&lb, 0));
  test_finish(pool);
  srv_stop(a);
  srv_stop(b);
}

TEST(evict_keeps_conn_wanted_by_its_own_peer) {
  srv_t *a = srv_echo_start(NULL), *b = srv_echo_start(NULL);
  pp_peer_t *pa, *pb;
  pp_pool_t *pool = two_peer_pool(a, b, &pa, &pb);
  pp_lease_t la, la2, lb;
  test_rec_t ra, ra2, rb;
  ASSERT_OK(test_acquire_wait(pool, &la, &ra, pa, NULL));
  ASSERT_OK(test_acquire_start(pool, &la2, &ra2, pa, NULL)); /* A's own waiter, first */
  ASSERT_OK(test_acquire_start(pool, &lb, &rb, pb, NULL));
  ASSERT_OK(pp_release(&la, 0));
  RUN_UNTIL(ra2.calls == 1, 2000);
  ASSERT_OK(ra2.status);
  ASSERT_EQ(test_stats(pool).closed[PP_CLOSE_EVICTED], 0); /* handed over, not evicted */
  ASSERT_EQ(rb.calls, 0);
  ASSERT_OK(pp_release(&la2, 0)); /* now B's waiter gets the slot */
  RUN_UNTIL(rb.calls == 1, 2000);
  ASSERT_OK(rb.status);
  ASSERT_OK(pp_release(&lb, 0));
  test_finish(pool);
  srv_stop(a);
  srv_stop(b);
}
