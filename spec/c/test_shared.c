/* Shared conns: client_limit leases per conn, and the default conn selection (fewest
 * leases, then longest idle). */
#include "fixtures.h"

static pp_pool_t *shared_pool(srv_t *srv, int client_limit, int max_per_peer, pp_peer_t **peer) {
  pp_options_t o;
  test_options(&o);
  o.client_limit = client_limit;
  o.max_per_peer = max_per_peer;
  return test_pool_on(srv, &o, peer);
}

TEST(shared_three_leases_on_one_conn) {
  srv_t *srv = srv_echo_start(NULL);
  pp_peer_t *peer;
  pp_pool_t *pool = shared_pool(srv, 3, 2, &peer);
  pp_lease_t l[4];
  test_rec_t r[4];
  for (int i = 0; i < 3; i++)
    ASSERT_OK(test_acquire_wait(pool, &l[i], &r[i], peer, NULL));
  ASSERT_PTR_EQ(l[1].conn, l[0].conn);
  ASSERT_PTR_EQ(l[2].conn, l[0].conn);
  ASSERT_EQ(pp_conn_leases(l[0].conn), 3);
  test_run_for(20);
  ASSERT_ACCEPTED(srv, 1);
  pp_stats_t s = test_stats(pool);
  ASSERT_EQ(s.conns, 1);
  ASSERT_EQ(s.active, 1);
  ASSERT_EQ(s.idle, 0);
  ASSERT_EQ(test_peer_info(peer).leases, 3);
  /* The fourth opens a second conn (max_per_peer = 2). */
  ASSERT_OK(test_acquire_wait(pool, &l[3], &r[3], peer, NULL));
  ASSERT_PTR_NE(l[3].conn, l[0].conn);
  ASSERT_ACCEPTED(srv, 2);
  ASSERT_EQ(test_stats(pool).conns, 2);
  for (int i = 0; i < 4; i++)
    ASSERT_OK(pp_release(&l[i], 0));
  test_finish_srv(pool, srv);
}

TEST(shared_fourth_is_busy_when_max_per_peer_is_one) {
  srv_t *srv = srv_echo_start(NULL);
  pp_peer_t *peer;
  pp_pool_t *pool = shared_pool(srv, 3, 1, &peer);
  pp_lease_t l[4];
  test_rec_t r[4];
  for (int i = 0; i < 3; i++)
    ASSERT_OK(test_acquire_wait(pool, &l[i], &r[i], peer, NULL));
  pp_acquire_opts_t a;
  pp_acquire_opts_init(&a);
  a.busy = PP_BUSY_FAIL;
  ASSERT_ERR(test_acquire_start(pool, &l[3], &r[3], peer, &a), PP_EBUSY);
  /* Releasing one lease makes room on the shared conn. */
  ASSERT_OK(pp_release(&l[1], 0));
  ASSERT_OK(test_acquire_wait(pool, &l[3], &r[3], peer, &a));
  ASSERT_PTR_EQ(l[3].conn, l[0].conn);
  ASSERT_ACCEPTED(srv, 1);
  ASSERT_OK(pp_release(&l[0], 0));
  ASSERT_OK(pp_release(&l[2], 0));
  ASSERT_OK(pp_release(&l[3], 0));
  test_finish_srv(pool, srv);
}

TEST(shared_waiter_served_when_a_shared_lease_ends) {
  srv_t *srv = srv_echo_start(NULL);
  pp_peer_t *peer;
  pp_pool_t *pool = shared_pool(srv, 2, 1, &peer);
  pp_lease_t l[3];
  test_rec_t r[3];
  ASSERT_OK(test_acquire_wait(pool, &l[0], &r[0], peer, NULL));
  ASSERT_OK(test_acquire_wait(pool, &l[1], &r[1], peer, NULL));
  ASSERT_OK(test_acquire_start(pool, &l[2], &r[2], peer, NULL));
  test_run_for(30);
  ASSERT_EQ(r[2].calls, 0);
  ASSERT_OK(pp_release(&l[0], 0));
  RUN_UNTIL(r[2].calls == 1, 1000);
  ASSERT_OK(r[2].status);
  ASSERT_PTR_EQ(l[2].conn, l[1].conn);
  ASSERT_OK(pp_release(&l[1], 0));
  ASSERT_OK(pp_release(&l[2], 0));
  test_finish_srv(pool, srv);
}

TEST(shared_release_one_keeps_the_conn) {
  srv_t *srv = srv_echo_start(NULL);
  pp_peer_t *peer;
  pp_pool_t *pool = shared_pool(srv, 3, 1, &peer);
  pp_lease_t l[3];
  test_rec_t r[3];
  for (int i = 0; i < 3; i++)
    ASSERT_OK(test_acquire_wait(pool, &l[i], &r[i], peer, NULL));
  pp_conn_t *c = l[0].conn;
  ASSERT_OK(pp_release(&l[0], 0));
  ASSERT_EQ(pp_conn_leases(c), 2);
  ASSERT_OK(pp_release(&l[1], 0));
  ASSERT_EQ(pp_conn_leases(c), 1);
  pp_stats_t s = test_stats(pool);
  ASSERT_EQ(s.active, 1);
  ASSERT_EQ(s.idle, 0);
  ASSERT_OK(pp_release(&l[2], 0));
  s = test_stats(pool);
  ASSERT_EQ(s.active, 0);
  ASSERT_EQ(s.idle, 1);
  test_finish_srv(pool, srv);
}

TEST(shared_broken_release_closes_for_every_holder) {
  /* A shared conn released as broken is closed for every holder: the other holder's reader
   * sees the end, the conn is never lent again, and releasing the other lease is harmless. */
  srv_t *srv = srv_echo_start(NULL);
  pp_peer_t *peer;
  pp_pool_t *pool = shared_pool(srv, 2, 1, &peer);
  pp_lease_t l[2];
  test_rec_t r[2];
  for (int i = 0; i < 2; i++)
    ASSERT_OK(test_acquire_wait(pool, &l[i], &r[i], peer, NULL));
  test_reader_t rd = {0};
  ASSERT_OK(pp_conn_read_start(l[1].conn, test_reader_cb, &rd));
  ASSERT_OK(pp_release(&l[0], PP_EBROKEN));
  RUN_UNTIL(rd.ended == 1, 1000);
  ASSERT_LT(rd.end_status, 0);
  pp_lease_t t;
  memset(&t, 0, sizeof t);
  ASSERT_ERR(pp_try_acquire(pool, &t, peer, NULL), PP_EAGAIN); /* never lent again */
  ASSERT_ERR2(pp_release(&l[1], 0), 0, PP_ESTATE);
  RUN_UNTIL(test_stats(pool).conns == 0, 2000);
  pp_stats_t s = test_stats(pool);
  ASSERT_EQ(s.closed[PP_CLOSE_BROKEN], 1);
  ASSERT_EQ(s.released_broken, 1);
  ASSERT_EQ(test_peer_info(peer).failures, 1);
  ASSERT_EQ(rd.after_end, 0);
  test_reader_free(&rd);
  test_finish_srv(pool, srv);
}

TEST(shared_not_reusable_release_closes_for_every_holder) {
  /* One holder of a shared conn says it is not reusable (its replies are out of step): the
   * conn closes for every holder, as with PP_EBROKEN, but the peer counts no failure. */
  srv_t *srv = srv_echo_start(NULL);
  pp_peer_t *peer;
  pp_pool_t *pool = shared_pool(srv, 2, 1, &peer);
  pp_lease_t l[2];
  test_rec_t r[2];
  for (int i = 0; i < 2; i++)
    ASSERT_OK(test_acquire_wait(pool, &l[i], &r[i], peer, NULL));
  test_reader_t rd = {0};
  ASSERT_OK(pp_conn_read_start(l[1].conn, test_reader_cb, &rd));
  ASSERT_OK(pp_release(&l[0], PP_ENOREUSE));
  RUN_UNTIL(rd.ended == 1, 1000);
  ASSERT_ERR(rd.end_status, PP_ECLOSED);
  pp_lease_t t;
  memset(&t, 0, sizeof t);
  ASSERT_ERR(pp_try_acquire(pool, &t, peer, NULL), PP_EAGAIN); /* never lent again */
  ASSERT_ERR2(pp_release(&l[1], 0), 0, PP_ESTATE);
  pp_stats_t s = test_stats(pool);
  ASSERT_EQ(s.closed[PP_CLOSE_DISCARDED], 1);
  ASSERT_EQ(s.released_broken, 0);
  ASSERT_EQ(test_peer_info(peer).failures, 0);
  test_reader_free(&rd);
  test_finish_srv(pool, srv);
}

TEST(shared_default_selection_fewest_leases) {
  srv_t *srv = srv_echo_start(NULL);
  pp_peer_t *peer;
  pp_pool_t *pool = shared_pool(srv, 3, 2, &peer);
  pp_lease_t l[8];
  test_rec_t r[8];
  for (int i = 0; i < 4; i++)
    ASSERT_OK(test_acquire_wait(pool, &l[i], &r[i], peer, NULL));
  pp_conn_t *A = l[0].conn, *B = l[3].conn;
  ASSERT_PTR_NE(A, B);
  ASSERT_EQ(pp_conn_leases(A), 3);
  ASSERT_EQ(pp_conn_leases(B), 1);
  ASSERT_OK(pp_release(&l[0], 0)); /* A: 2, B: 1 */
  ASSERT_OK(test_acquire_wait(pool, &l[4], &r[4], peer, NULL));
  ASSERT_PTR_EQ(l[4].conn, B); /* B: 2 */
  ASSERT_OK(pp_release(&l[1], 0));
  ASSERT_OK(pp_release(&l[2], 0)); /* A: 0, B: 2 */
  ASSERT_OK(test_acquire_wait(pool, &l[5], &r[5], peer, NULL));
  ASSERT_PTR_EQ(l[5].conn, A); /* A: 1 */
  ASSERT_OK(test_acquire_wait(pool, &l[6], &r[6], peer, NULL));
  ASSERT_PTR_EQ(l[6].conn, A); /* A: 2 (1 < 2) */
  ASSERT_OK(test_acquire_wait(pool, &l[7], &r[7], peer, NULL));
  /* A and B both have 2: either is fine, but it is one of them */
  ASSERT(l[7].conn == A || l[7].conn == B);
  ASSERT_ACCEPTED(srv, 2);
  int idx[] = {3, 4, 5, 6, 7};
  for (int i = 0; i < 5; i++)
    ASSERT_OK(pp_release(&l[idx[i]], 0));
  test_finish_srv(pool, srv);
}

TEST(exclusive_default_selection_lends_the_last_released) {
  srv_t *srv = srv_echo_start(NULL);
  pp_peer_t *peer;
  pp_pool_t *pool = shared_pool(srv, 1, 3, &peer);
  pp_lease_t l[3];
  test_rec_t r[3];
  for (int i = 0; i < 3; i++)
    ASSERT_OK(test_acquire_wait(pool, &l[i], &r[i], peer, NULL));
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
  pp_lease_t t[3];
  test_rec_t tr[3];
  /* LIFO: the hot set stays small, and conns idle the longest are the ones idle_timeout
   * closes. */
  ASSERT_OK(test_acquire_wait(pool, &t[0], &tr[0], peer, NULL));
  ASSERT_PTR_EQ(t[0].conn, c[0]);
  ASSERT_OK(test_acquire_wait(pool, &t[1], &tr[1], peer, NULL));
  ASSERT_PTR_EQ(t[1].conn, c[2]);
  ASSERT_OK(test_acquire_wait(pool, &t[2], &tr[2], peer, NULL));
  ASSERT_PTR_EQ(t[2].conn, c[1]);
  for (int i = 0; i < 3; i++)
    ASSERT_OK(pp_release(&t[i], 0));
  test_finish_srv(pool, srv);
}

TEST(shared_try_acquire_shares_too) {
  srv_t *srv = srv_echo_start(NULL);
  pp_peer_t *peer;
  pp_pool_t *pool = shared_pool(srv, 2, 1, &peer);
  pp_lease_t l, t, u;
  test_rec_t r;
  ASSERT_OK(test_acquire_wait(pool, &l, &r, peer, NULL));
  memset(&t, 0, sizeof t);
  memset(&u, 0, sizeof u);
  ASSERT_OK(pp_try_acquire(pool, &t, peer, NULL));
  ASSERT_PTR_EQ(t.conn, l.conn);
  ASSERT_ERR(pp_try_acquire(pool, &u, peer, NULL), PP_EAGAIN);
  ASSERT_OK(pp_release(&t, 0));
  ASSERT_OK(pp_release(&l, 0));
  test_finish_srv(pool, srv);
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
  srv_t *srv = srv_echo_start(NULL);
  pp_peer_t *peer;
  pp_pool_t *pool = shared_pool(srv, 1, 2, &peer);
  pp_lease_t l[2];
  test_rec_t r[2];
  for (int i = 0; i < 2; i++)
    ASSERT_OK(test_acquire_wait(pool, &l[i], &r[i], peer, NULL));
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
  test_finish_srv(pool, srv);
}
