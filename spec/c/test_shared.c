/* Shared conns: client_limit leases per conn, and the default conn selection (fewest
 * leases, then longest idle). */
#include "fixtures_multi.h"

/* A pool with client_limit and max_per_peer set, one peer at an echo server, and `n` leases
 * held on it. */
static void shared_start(fixture_leases_t *h, int client_limit, int max_per_peer, int n) {
  fixture_leases_start(h, TEST_OPTS(o.client_limit = client_limit; o.max_per_peer = max_per_peer),
                       n);
}

TEST(shared_three_leases_on_one_conn) {
  fixture_leases_t h;
  shared_start(&h, 3, 2, 3);
  ASSERT_PTR_EQ(h.l[1].conn, h.l[0].conn);
  ASSERT_PTR_EQ(h.l[2].conn, h.l[0].conn);
  ASSERT_EQ(pp_conn_leases(h.l[0].conn), 3);
  test_run_for(20);
  ASSERT_ACCEPTED(h.f.srv, 1);
  test_expect_gauges(h.f.pool, 1, 1, 0);
  ASSERT_EQ(test_peer_info(h.f.peer).leases, 3);
  /* The fourth opens a second conn (max_per_peer = 2). */
  ASSERT_OK(test_acquire_wait(h.f.pool, &h.l[3], &h.r[3], h.f.peer, NULL));
  ASSERT_PTR_NE(h.l[3].conn, h.l[0].conn);
  ASSERT_ACCEPTED(h.f.srv, 2);
  ASSERT_EQ(test_stats(h.f.pool).conns, 2);
  test_release_n(h.l, 4, 0);
  fixture_end(&h.f);
}

TEST(shared_fourth_is_busy_when_max_per_peer_is_one) {
  fixture_leases_t h;
  shared_start(&h, 3, 1, 3);
  const pp_acquire_opts_t *busy_fail = TEST_ACQUIRE_OPTS(a.busy = PP_BUSY_FAIL);
  test_acquire_fails(h.f.pool, h.f.peer, busy_fail, PP_EBUSY);
  /* Releasing one lease makes room on the shared conn. */
  ASSERT_OK(pp_release(&h.l[1], 0));
  ASSERT_OK(test_acquire_wait(h.f.pool, &h.l[1], &h.r[1], h.f.peer, busy_fail));
  ASSERT_PTR_EQ(h.l[1].conn, h.l[0].conn);
  ASSERT_ACCEPTED(h.f.srv, 1);
  test_release_n(h.l, 3, 0);
  fixture_end(&h.f);
}

TEST(shared_waiter_served_when_a_shared_lease_ends) {
  fixture_leases_t h;
  shared_start(&h, 2, 1, 2);
  ASSERT_OK(test_acquire_start(h.f.pool, &h.l[2], &h.r[2], h.f.peer, NULL));
  test_run_for(30);
  ASSERT_EQ(h.r[2].calls, 0);
  ASSERT_OK(pp_release(&h.l[0], 0));
  test_wait_ok(&h.r[2]);
  ASSERT_PTR_EQ(h.l[2].conn, h.l[1].conn);
  test_release_n(&h.l[1], 2, 0);
  fixture_end(&h.f);
}

TEST(shared_release_one_keeps_the_conn) {
  fixture_leases_t h;
  shared_start(&h, 3, 1, 3);
  pp_conn_t *c = h.l[0].conn;
  ASSERT_OK(pp_release(&h.l[0], 0));
  ASSERT_EQ(pp_conn_leases(c), 2);
  ASSERT_OK(pp_release(&h.l[1], 0));
  ASSERT_EQ(pp_conn_leases(c), 1);
  test_expect_gauges(h.f.pool, 1, 1, 0);
  ASSERT_OK(pp_release(&h.l[2], 0));
  test_expect_gauges(h.f.pool, 1, 0, 1);
  fixture_end(&h.f);
}

/* How one holder's release ends a shared conn for every holder: the release status, what
 * the other holder's reader sees at the end (0: any error), the close reason, and whether
 * the release counts as broken and as the peer's failure. */
typedef struct {
  int status;
  int reader_end;
  pp_close_reason_t reason;
  int broken, failures;
} shared_close_row_t;

/* Two holders of one shared conn; the first releases it with row->status: the other
 * holder's reader sees the end, the conn is never lent again, releasing the other lease is
 * harmless, the conn closes, and the counters are the row's. */
static void shared_release_closes_for_every_holder(const shared_close_row_t *row) {
  fixture_leases_t h;
  shared_start(&h, 2, 1, 2);
  test_reader_t rd = {0};
  ASSERT_OK(pp_conn_read_start(h.l[1].conn, test_reader_cb, &rd));
  ASSERT_OK(pp_release(&h.l[0], row->status));
  RUN_UNTIL(rd.ended == 1, 1000);
  if (row->reader_end != 0)
    ASSERT_ERR(rd.end_status, row->reader_end);
  else
    ASSERT_LT(rd.end_status, 0);
  test_try_acquire_fails(h.f.pool, h.f.peer, PP_EAGAIN); /* never lent again */
  ASSERT_ERR2(pp_release(&h.l[1], 0), 0, PP_ESTATE);
  RUN_UNTIL(test_stats(h.f.pool).conns == 0, 2000);
  ASSERT_EQ(rd.after_end, 0);
  pp_stats_t s = test_stats(h.f.pool);
  ASSERT_EQ(s.closed[row->reason], 1);
  ASSERT_EQ(s.released_broken, row->broken);
  ASSERT_EQ(test_peer_info(h.f.peer).failures, row->failures);
  test_reader_free(&rd);
  fixture_end(&h.f);
}

TEST(shared_broken_release_closes_for_every_holder) {
  shared_release_closes_for_every_holder(
      &(shared_close_row_t){PP_EBROKEN, 0, PP_CLOSE_BROKEN, .broken = 1, .failures = 1});
}

TEST(shared_not_reusable_release_closes_for_every_holder) {
  /* One holder of a shared conn says it is not reusable (its replies are out of step): the
   * conn closes for every holder, as with PP_EBROKEN, but the peer counts no failure. */
  shared_release_closes_for_every_holder(&(shared_close_row_t){
      PP_ENOREUSE, PP_ECLOSED, PP_CLOSE_DISCARDED, .broken = 0, .failures = 0});
}

TEST(shared_default_selection_fewest_leases) {
  fixture_leases_t h;
  shared_start(&h, 3, 2, 4);
  pp_conn_t *A = h.l[0].conn, *B = h.l[3].conn;
  ASSERT_PTR_NE(A, B);
  ASSERT_EQ(pp_conn_leases(A), 3);
  ASSERT_EQ(pp_conn_leases(B), 1);
  ASSERT_OK(pp_release(&h.l[0], 0)); /* A: 2, B: 1 */
  ASSERT_OK(test_acquire_wait(h.f.pool, &h.l[4], &h.r[4], h.f.peer, NULL));
  ASSERT_PTR_EQ(h.l[4].conn, B); /* B: 2 */
  test_release_n(&h.l[1], 2, 0); /* A: 0, B: 2 */
  ASSERT_OK(test_acquire_wait(h.f.pool, &h.l[5], &h.r[5], h.f.peer, NULL));
  ASSERT_PTR_EQ(h.l[5].conn, A); /* A: 1 */
  ASSERT_OK(test_acquire_wait(h.f.pool, &h.l[6], &h.r[6], h.f.peer, NULL));
  ASSERT_PTR_EQ(h.l[6].conn, A); /* A: 2 (1 < 2) */
  ASSERT_OK(test_acquire_wait(h.f.pool, &h.l[7], &h.r[7], h.f.peer, NULL));
  /* A and B both have 2: either is fine, but it is one of them */
  ASSERT(h.l[7].conn == A || h.l[7].conn == B);
  ASSERT_ACCEPTED(h.f.srv, 2);
  test_release_n(&h.l[3], 5, 0);
  fixture_end(&h.f);
}

TEST(exclusive_default_selection_lends_the_last_released) {
  fixture_leases_t h;
  shared_start(&h, 1, 3, 3);
  pp_conn_t *c[3] = {h.l[0].conn, h.l[1].conn, h.l[2].conn};
  /* Release in the order 1, 2, 0 with gaps: 1 has idled longest, then 2, then 0. */
  ASSERT_OK(pp_release(&h.l[1], 0));
  test_run_for(25);
  ASSERT_OK(pp_release(&h.l[2], 0));
  test_run_for(25);
  ASSERT_OK(pp_release(&h.l[0], 0));
  test_run_for(5);
  ASSERT_GE(pp_conn_idle_ms(c[1]), pp_conn_idle_ms(c[2]));
  ASSERT_GE(pp_conn_idle_ms(c[2]), pp_conn_idle_ms(c[0]));
  /* LIFO: the hot set stays small, and conns idle the longest are the ones idle_timeout
   * closes. */
  test_acquire_n(h.f.pool, h.f.peer, h.l, h.r, 3);
  ASSERT_PTR_EQ(h.l[0].conn, c[0]);
  ASSERT_PTR_EQ(h.l[1].conn, c[2]);
  ASSERT_PTR_EQ(h.l[2].conn, c[1]);
  test_release_n(h.l, 3, 0);
  fixture_end(&h.f);
}

TEST(shared_try_acquire_shares_too) {
  fixture_leases_t h;
  shared_start(&h, 2, 1, 1);
  pp_lease_t t;
  memset(&t, 0, sizeof t);
  ASSERT_OK(pp_try_acquire(h.f.pool, &t, h.f.peer, NULL));
  ASSERT_PTR_EQ(t.conn, h.l[0].conn);
  test_try_acquire_fails(h.f.pool, h.f.peer, PP_EAGAIN);
  ASSERT_OK(pp_release(&t, 0));
  ASSERT_OK(pp_release(&h.l[0], 0));
  fixture_end(&h.f);
}

typedef struct {
  int calls;
  int last_n;
  pp_conn_t *want;
} select_rec_t;

static int pick_wanted_conn(void *data, pp_peer_t *peer, pp_conn_t *const *conns, int n,
                            const char *key) {
  select_rec_t *s = data;
  s->calls++;
  s->last_n = n;
  int idx = -1;
  for (int i = 0; i < n; i++) {
    ASSERT_PTR_EQ(pp_conn_peer(conns[i]), peer);
    if (conns[i] == s->want) idx = i;
  }
  return idx;
}

TEST(shared_select_conn_hook_is_used) {
  fixture_leases_t h;
  shared_start(&h, 1, 2, 2);
  pp_pool_t *pool = h.f.pool;
  pp_peer_t *peer = h.f.peer;
  pp_lease_t *l = h.l;
  test_rec_t *r = h.r;
  pp_conn_t *c0 = l[0].conn, *c1 = l[1].conn;
  ASSERT_OK(pp_release(&l[0], 0));
  test_run_for(20);
  ASSERT_OK(pp_release(&l[1], 0));
  /* The default would pick c1 (released last: exclusive conns are lent LIFO); the hook
   * picks c0. */
  select_rec_t s = {0, 0, c0};
  pp_policy_t pol;
  memset(&pol, 0, sizeof pol);
  pol.data = &s;
  pol.select_conn = pick_wanted_conn;
  pp_pool_set_policy(pool, &pol);
  ASSERT_OK(test_acquire_wait(pool, &l[0], &r[0], peer, NULL));
  ASSERT_GE(s.calls, 1);
  ASSERT_EQ(s.last_n, 2);
  ASSERT_PTR_EQ(l[0].conn, c0);
  ASSERT_OK(pp_release(&l[0], 0));
  test_run_for(5);
  /* NULL policy restores the default: the conn released last (c0 again). */
  pp_pool_set_policy(pool, NULL);
  int before = s.calls;
  ASSERT_OK(test_acquire_wait(pool, &l[0], &r[0], peer, NULL));
  ASSERT_EQ(s.calls, before);
  ASSERT_PTR_EQ(l[0].conn, c0);
  (void)c1;
  ASSERT_OK(pp_release(&l[0], 0));
  fixture_end(&h.f);
}
