/* Shared conns: client_limit leases per conn, and the default conn selection (fewest
 * leases, then longest idle). */
#include "fixtures.h"

/* A pool with client_limit and max_per_peer set and one peer at an echo server. */
static fixture_t shared_start(int client_limit, int max_per_peer) {
  return fixture_start(srv_echo_start(NULL),
                       TEST_OPTS(o.client_limit = client_limit; o.max_per_peer = max_per_peer));
}

TEST(shared_three_leases_on_one_conn) {
  fixture_t f = shared_start(3, 2);
  pp_lease_t l[4];
  test_rec_t r[4];
  test_acquire_n(f.pool, f.peer, l, r, 3);
  ASSERT_PTR_EQ(l[1].conn, l[0].conn);
  ASSERT_PTR_EQ(l[2].conn, l[0].conn);
  ASSERT_EQ(pp_conn_leases(l[0].conn), 3);
  test_run_for(20);
  ASSERT_ACCEPTED(f.srv, 1);
  pp_stats_t s = test_stats(f.pool);
  ASSERT_EQ(s.conns, 1);
  ASSERT_EQ(s.active, 1);
  ASSERT_EQ(s.idle, 0);
  ASSERT_EQ(test_peer_info(f.peer).leases, 3);
  /* The fourth opens a second conn (max_per_peer = 2). */
  ASSERT_OK(test_acquire_wait(f.pool, &l[3], &r[3], f.peer, NULL));
  ASSERT_PTR_NE(l[3].conn, l[0].conn);
  ASSERT_ACCEPTED(f.srv, 2);
  ASSERT_EQ(test_stats(f.pool).conns, 2);
  test_release_n(l, 4, 0);
  fixture_end(&f);
}

TEST(shared_fourth_is_busy_when_max_per_peer_is_one) {
  fixture_t f = shared_start(3, 1);
  pp_lease_t l[4];
  test_rec_t r[4];
  test_acquire_n(f.pool, f.peer, l, r, 3);
  const pp_acquire_opts_t *busy_fail = TEST_ACQUIRE_OPTS(a.busy = PP_BUSY_FAIL);
  test_acquire_fails(f.pool, f.peer, busy_fail, PP_EBUSY);
  /* Releasing one lease makes room on the shared conn. */
  ASSERT_OK(pp_release(&l[1], 0));
  ASSERT_OK(test_acquire_wait(f.pool, &l[1], &r[1], f.peer, busy_fail));
  ASSERT_PTR_EQ(l[1].conn, l[0].conn);
  ASSERT_ACCEPTED(f.srv, 1);
  test_release_n(l, 3, 0);
  fixture_end(&f);
}

TEST(shared_waiter_served_when_a_shared_lease_ends) {
  fixture_t f = shared_start(2, 1);
  pp_lease_t l[3];
  test_rec_t r[3];
  test_acquire_n(f.pool, f.peer, l, r, 2);
  ASSERT_OK(test_acquire_start(f.pool, &l[2], &r[2], f.peer, NULL));
  test_run_for(30);
  ASSERT_EQ(r[2].calls, 0);
  ASSERT_OK(pp_release(&l[0], 0));
  RUN_UNTIL(r[2].calls == 1, 1000);
  ASSERT_OK(r[2].status);
  ASSERT_PTR_EQ(l[2].conn, l[1].conn);
  test_release_n(&l[1], 2, 0);
  fixture_end(&f);
}

TEST(shared_release_one_keeps_the_conn) {
  fixture_t f = shared_start(3, 1);
  pp_lease_t l[3];
  test_rec_t r[3];
  test_acquire_n(f.pool, f.peer, l, r, 3);
  pp_conn_t *c = l[0].conn;
  ASSERT_OK(pp_release(&l[0], 0));
  ASSERT_EQ(pp_conn_leases(c), 2);
  ASSERT_OK(pp_release(&l[1], 0));
  ASSERT_EQ(pp_conn_leases(c), 1);
  pp_stats_t s = test_stats(f.pool);
  ASSERT_EQ(s.active, 1);
  ASSERT_EQ(s.idle, 0);
  ASSERT_OK(pp_release(&l[2], 0));
  s = test_stats(f.pool);
  ASSERT_EQ(s.active, 0);
  ASSERT_EQ(s.idle, 1);
  fixture_end(&f);
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
  fixture_t f = shared_start(2, 1);
  pp_lease_t l[2];
  test_rec_t r[2];
  test_acquire_n(f.pool, f.peer, l, r, 2);
  test_reader_t rd = {0};
  ASSERT_OK(pp_conn_read_start(l[1].conn, test_reader_cb, &rd));
  ASSERT_OK(pp_release(&l[0], row->status));
  RUN_UNTIL(rd.ended == 1, 1000);
  if (row->reader_end != 0)
    ASSERT_ERR(rd.end_status, row->reader_end);
  else
    ASSERT_LT(rd.end_status, 0);
  test_try_acquire_fails(f.pool, f.peer, PP_EAGAIN); /* never lent again */
  ASSERT_ERR2(pp_release(&l[1], 0), 0, PP_ESTATE);
  RUN_UNTIL(test_stats(f.pool).conns == 0, 2000);
  ASSERT_EQ(rd.after_end, 0);
  pp_stats_t s = test_stats(f.pool);
  ASSERT_EQ(s.closed[row->reason], 1);
  ASSERT_EQ(s.released_broken, row->broken);
  ASSERT_EQ(test_peer_info(f.peer).failures, row->failures);
  test_reader_free(&rd);
  fixture_end(&f);
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
  fixture_t f = shared_start(3, 2);
  pp_lease_t l[8];
  test_rec_t r[8];
  test_acquire_n(f.pool, f.peer, l, r, 4);
  pp_conn_t *A = l[0].conn, *B = l[3].conn;
  ASSERT_PTR_NE(A, B);
  ASSERT_EQ(pp_conn_leases(A), 3);
  ASSERT_EQ(pp_conn_leases(B), 1);
  ASSERT_OK(pp_release(&l[0], 0)); /* A: 2, B: 1 */
  ASSERT_OK(test_acquire_wait(f.pool, &l[4], &r[4], f.peer, NULL));
  ASSERT_PTR_EQ(l[4].conn, B); /* B: 2 */
  test_release_n(&l[1], 2, 0); /* A: 0, B: 2 */
  ASSERT_OK(test_acquire_wait(f.pool, &l[5], &r[5], f.peer, NULL));
  ASSERT_PTR_EQ(l[5].conn, A); /* A: 1 */
  ASSERT_OK(test_acquire_wait(f.pool, &l[6], &r[6], f.peer, NULL));
  ASSERT_PTR_EQ(l[6].conn, A); /* A: 2 (1 < 2) */
  ASSERT_OK(test_acquire_wait(f.pool, &l[7], &r[7], f.peer, NULL));
  /* A and B both have 2: either is fine, but it is one of them */
  ASSERT(l[7].conn == A || l[7].conn == B);
  ASSERT_ACCEPTED(f.srv, 2);
  test_release_n(&l[3], 5, 0);
  fixture_end(&f);
}

TEST(exclusive_default_selection_lends_the_last_released) {
  fixture_t f = shared_start(1, 3);
  pp_lease_t l[3];
  test_rec_t r[3];
  test_acquire_n(f.pool, f.peer, l, r, 3);
  pp_conn_t *c[3] = {l[0].conn, l[1].conn, l[2].conn};
  /* Release in the order 1, 2, 0 with gaps: 1 has idled longest, then 2, then 0. */
  ASSERT_OK(pp_release(&l[1], 0));
  test_run_for(25);
  ASSERT_OK(pp_release(&l[2], 0));
  test_run_for(25);
  ASSERT_OK(pp_release(&l[0], 0));
  test_run_for(5);
  ASSERT_GE(pp_conn_idle_ms(c[1]), pp_conn_idle_ms(c[2]));
  ASSERT_GE(pp_conn_idle_ms(c[2]), pp_conn_idle_ms(c[0]));
  /* LIFO: the hot set stays small, and conns idle the longest are the ones idle_timeout
   * closes. */
  test_acquire_n(f.pool, f.peer, l, r, 3);
  ASSERT_PTR_EQ(l[0].conn, c[0]);
  ASSERT_PTR_EQ(l[1].conn, c[2]);
  ASSERT_PTR_EQ(l[2].conn, c[1]);
  test_release_n(l, 3, 0);
  fixture_end(&f);
}

TEST(shared_try_acquire_shares_too) {
  fixture_t f = shared_start(2, 1);
  pp_lease_t l, t;
  test_rec_t r;
  ASSERT_OK(test_acquire_wait(f.pool, &l, &r, f.peer, NULL));
  memset(&t, 0, sizeof t);
  ASSERT_OK(pp_try_acquire(f.pool, &t, f.peer, NULL));
  ASSERT_PTR_EQ(t.conn, l.conn);
  test_try_acquire_fails(f.pool, f.peer, PP_EAGAIN);
  ASSERT_OK(pp_release(&t, 0));
  ASSERT_OK(pp_release(&l, 0));
  fixture_end(&f);
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
  fixture_t f = shared_start(1, 2);
  pp_pool_t *pool = f.pool;
  pp_peer_t *peer = f.peer;
  pp_lease_t l[2];
  test_rec_t r[2];
  test_acquire_n(pool, peer, l, r, 2);
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
  fixture_end(&f);
}
