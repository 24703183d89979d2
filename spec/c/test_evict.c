/* At max_total, idle conns of one peer give way to acquires for another peer. */
#include "fixtures.h"

#include <string.h>

/* Echo servers `a` and `b` as the peers of a pool with room for one conn in all. */
typedef struct {
  srv_t *a, *b;
  pp_pool_t *pool;
  pp_peer_t *pa, *pb;
} duo_t;

static void duo_start(duo_t *d) {
  d->a = srv_echo_start(NULL);
  d->b = srv_echo_start(NULL);
  d->pool = test_pool(TEST_OPTS(o.max_per_peer = 2; o.max_total = 1));
  d->pa = test_peer(d->pool, srv_addr(d->a));
  d->pb = test_peer(d->pool, srv_addr(d->b));
}

static void duo_end(duo_t *d) {
  test_finish(d->pool);
  srv_stop(d->a);
  srv_stop(d->b);
}

/* Wait for the acquire of `r` to be granted; it must succeed. */
static void granted(const test_rec_t *r) {
  RUN_UNTIL(r->calls == 1, 2000);
  ASSERT_OK(r->status);
}

TEST(evict_idle_conn_of_other_peer_for_named_acquire) {
  duo_t d;
  duo_start(&d);
  pp_pool_t *pool = d.pool;
  pp_peer_t *pa = d.pa, *pb = d.pb;
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
  duo_end(&d);
}

TEST(evict_released_conn_serves_waiter_of_other_peer) {
  duo_t d;
  duo_start(&d);
  pp_pool_t *pool = d.pool;
  pp_peer_t *pa = d.pa, *pb = d.pb;
  pp_lease_t la, lb;
  test_rec_t ra, rb;
  ASSERT_OK(test_acquire_wait(pool, &la, &ra, pa, NULL));
  ASSERT_OK(test_acquire_start(pool, &lb, &rb, pb, NULL)); /* waits: A holds the only slot */
  test_run_for(20);
  ASSERT_EQ(rb.calls, 0);
  ASSERT_EQ(test_stats(pool).waiters, 1);
  ASSERT_OK(pp_release(&la, 0)); /* nobody wants A's conn: it gives way to B */
  granted(&rb);
  ASSERT_PTR_EQ(lb.peer, pb);
  ASSERT_EQ(test_stats(pool).closed[PP_CLOSE_EVICTED], 1);
  ASSERT_OK(pp_release(&lb, 0));
  duo_end(&d);
}

TEST(evict_keeps_conn_wanted_by_its_own_peer) {
  duo_t d;
  duo_start(&d);
  pp_pool_t *pool = d.pool;
  pp_peer_t *pa = d.pa, *pb = d.pb;
  pp_lease_t la, la2, lb;
  test_rec_t ra, ra2, rb;
  ASSERT_OK(test_acquire_wait(pool, &la, &ra, pa, NULL));
  ASSERT_OK(test_acquire_start(pool, &la2, &ra2, pa, NULL)); /* A's own waiter, first */
  ASSERT_OK(test_acquire_start(pool, &lb, &rb, pb, NULL));
  ASSERT_OK(pp_release(&la, 0));
  granted(&ra2);
  ASSERT_EQ(test_stats(pool).closed[PP_CLOSE_EVICTED], 0); /* handed over, not evicted */
  ASSERT_EQ(rb.calls, 0);
  ASSERT_OK(pp_release(&la2, 0)); /* now B's waiter gets the slot */
  granted(&rb);
  ASSERT_OK(pp_release(&lb, 0));
  duo_end(&d);
}
