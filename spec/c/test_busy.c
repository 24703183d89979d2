/* Resource-busy signalling: busy=fail + notices, busy=wait queues (FIFO, priority, deadline),
 * backlog, and prompt service of waiters on release. */
#include "fixtures_multi.h"

/* A fixture_busy and what waits behind its held conn: a notice `n` or an acquire `l`, whose
 * callbacks `r` records. */
typedef struct {
  fixture_t f;
  pp_notice_t n;
  pp_lease_t l;
  test_rec_t r;
} busy_t;

/* fixture_busy, and the notice armed (inside CALL) on the fixture's peer, or for any peer. */
static void busy_notice_fixture(busy_t *b, int any_peer) {
  fixture_busy(&b->f, NULL);
  ASSERT_OK(CALL(test_notice_start(b->f.pool, &b->n, &b->r, any_peer ? NULL : b->f.peer)));
}

/* fixture_busy, and the acquire queued on the fixture's peer, or for any peer. */
static void busy_waiter_fixture(busy_t *b, int any_peer) {
  fixture_busy(&b->f, NULL);
  ASSERT_OK(test_acquire_start(b->f.pool, &b->l, &b->r, any_peer ? NULL : b->f.peer, NULL));
}

/* Run the loop a while: what waits is called no more than the `calls` times it was. */
static void calls_stay_at(busy_t *b, int calls) {
  test_run_for(30);
  ASSERT_EQ(b->r.calls, calls);
}

/* Release the held conn with `status` (inside CALL): what waits is served, its `calls`-th
 * callback, with 0. */
static void release_serves(busy_t *b, int status, int calls) {
  ASSERT_OK(CALL(pp_release(&b->f.held, status)));
  RUN_UNTIL(b->r.calls == calls, 3000);
  ASSERT_OK(b->r.status);
}

/* Release the waiter's lease, then fixture_end. */
static void busy_waiter_end(busy_t *b) {
  ASSERT_OK(pp_release(&b->l, 0));
  fixture_end(&b->f);
}

/* fixture_busy, and a busy=fail acquire `l` answered PP_EBUSY at once. Returns its options,
 * to try again. */
static const pp_acquire_opts_t *busy_fail_fixture(fixture_t *f, pp_lease_t *l, test_rec_t *r) {
  fixture_busy(f, NULL);
  const pp_acquire_opts_t *fail = TEST_ACQUIRE_OPTS(a.busy = PP_BUSY_FAIL);
  ASSERT_ERR(test_acquire_start(f->pool, l, r, f->peer, fail), PP_EBUSY);
  return fail;
}

static pp_acquire_opts_t opts_busy(int busy, int64_t timeout, int prio) {
  pp_acquire_opts_t a;
  pp_acquire_opts_init(&a);
  a.busy = busy;
  a.timeout = timeout;
  a.priority = prio;
  return a;
}

TEST(busy_fail_at_capacity_answers_at_once) {
  fixture_t f;
  pp_lease_t l;
  test_rec_t r;
  const pp_acquire_opts_t *fail = busy_fail_fixture(&f, &l, &r);
  ASSERT_NULL(l.conn);
  pp_stats_t s = test_stats(f.pool);
  ASSERT_EQ(s.busy, 1);
  ASSERT_EQ(s.waiters, 0);
  ASSERT_OK(pp_release(&f.held, 0));
  test_run_for(30);
  ASSERT_EQ(r.calls, 0); /* an error return never runs the callback */
  /* With the conn free again, the same busy=fail acquire succeeds. */
  ASSERT_OK(test_acquire_wait(f.pool, &l, &r, f.peer, fail));
  ASSERT_OK(pp_release(&l, 0));
  fixture_end(&f);
}

TEST(busy_fail_at_max_total) {
  fixture_peers_t f = echo_peers_start(2, TEST_OPTS(o.max_per_peer = 1; o.max_total = 1));
  pp_lease_t held;
  test_rec_t rh;
  ASSERT_OK(test_acquire_wait(f.pool, &held, &rh, f.peer[0], NULL));
  test_acquire_fails(f.pool, f.peer[1], TEST_ACQUIRE_OPTS(a.busy = PP_BUSY_FAIL), PP_EBUSY);
  test_run_for(30);
  ASSERT_EQ(srv_accepted(f.srv[1]), 0);
  ASSERT_OK(pp_release(&held, 0));
  fixture_peers_end(&f);
}

TEST(busy_notice_fires_after_release) {
  fixture_t f;
  pp_lease_t l;
  test_rec_t r;
  const pp_acquire_opts_t *fail = busy_fail_fixture(&f, &l, &r);
  pp_notice_t n;
  test_rec_t nr;
  ASSERT_OK(CALL(test_notice_start(f.pool, &n, &nr, f.peer)));
  test_run_for(50);
  ASSERT_EQ(nr.calls, 0);
  ASSERT_OK(CALL(pp_release(&f.held, 0)));
  test_wait_ok(&nr);
  test_run_for(30);
  ASSERT_EQ(nr.calls, 1); /* fires once */
  ASSERT_ERR(pp_notice_cancel(&n), PP_ESTATE);
  /* And now the acquire goes through. */
  ASSERT_OK(test_acquire_wait(f.pool, &l, &r, f.peer, fail));
  ASSERT_OK(pp_release(&l, 0));
  fixture_end(&f);
}

TEST(busy_notice_fires_next_tick_when_capacity_is_free) {
  fixture_t f;
  fixture_busy(&f, NULL);
  ASSERT_OK(pp_release(&f.held, 0));
  pp_notice_t n;
  test_rec_t nr;
  ASSERT_OK(CALL(test_notice_start(f.pool, &n, &nr, f.peer)));
  ASSERT_EQ(nr.calls, 0);
  test_wait_ok(&nr);
  fixture_end(&f);
}

/* A notice armed while the peer is at capacity (on the peer, or for any peer) stays quiet
 * until a release with `status` frees the slot, then fires. */
static void notice_fires_on_release(int any_peer, int status) {
  busy_t b;
  busy_notice_fixture(&b, any_peer);
  calls_stay_at(&b, 0);
  release_serves(&b, status, 1);
  fixture_end(&b.f);
}

TEST(busy_notice_for_any_peer) {
  notice_fires_on_release(1, 0);
}

TEST(busy_notice_fires_when_a_broken_release_frees_a_slot) {
  notice_fires_on_release(0, PP_EBROKEN);
}

TEST(busy_notice_cancel) {
  busy_t b;
  busy_notice_fixture(&b, 0);
  ASSERT_OK(CALL(pp_notice_cancel(&b.n)));
  ASSERT_EQ(b.r.calls, 0);
  RUN_UNTIL(b.r.calls == 1, 1000);
  ASSERT_ERR(b.r.status, PP_ECANCELED);
  ASSERT_ERR(pp_notice_cancel(&b.n), PP_ESTATE);
  /* A release later does not fire it again. */
  ASSERT_OK(pp_release(&b.f.held, 0));
  calls_stay_at(&b, 1);
  pp_notice_t z;
  memset(&z, 0, sizeof z);
  ASSERT_ERR(pp_notice_cancel(&z), PP_ESTATE);
  fixture_end(&b.f);
}

TEST(busy_notice_can_be_rearmed) {
  busy_t b;
  busy_notice_fixture(&b, 0);
  release_serves(&b, 0, 1);
  fixture_hold(&b.f);
  ASSERT_OK(pp_notice_start(b.f.pool, &b.n, b.f.peer, test_notice_cb));
  calls_stay_at(&b, 1);
  release_serves(&b, 0, 2);
  fixture_end(&b.f);
}

TEST(busy_notice_armed_twice_is_invalid_or_state) {
  busy_t b;
  busy_notice_fixture(&b, 0);
  int rc = pp_notice_start(b.f.pool, &b.n, b.f.peer, test_notice_cb);
  ASSERT_ERR2(rc, PP_EINVAL, PP_ESTATE);
  release_serves(&b, 0, 1);
  calls_stay_at(&b, 1);
  fixture_end(&b.f);
}

/* ------------------------------------------------------------------------------------------
 * Waiting.
 */
#define NW 5

TEST(busy_wait_is_fifo) {
  fixture_leases_t h;
  fixture_busy_queue(&h, NULL, NW);
  pp_stats_t s = test_stats(h.f.pool);
  ASSERT_EQ(s.waiters, NW);
  ASSERT_EQ(test_peer_info(h.f.peer).waiters, NW);
  test_run_for(30);
  for (int i = 0; i < NW; i++)
    ASSERT_EQ(h.r[i].calls, 0);
  pp_lease_t *cur = &h.f.held;
  for (int i = 0; i < NW; i++) {
    ASSERT_OK(pp_release(cur, 0));
    test_wait_ok(&h.r[i]);
    for (int j = i + 1; j < NW; j++)
      ASSERT_EQ(h.r[j].calls, 0);
    cur = &h.l[i];
  }
  ASSERT_OK(pp_release(cur, 0));
  ASSERT_EQ(test_stats(h.f.pool).waiters, 0);
  ASSERT_ACCEPTED(h.f.srv, 1);
  fixture_end(&h.f);
}

TEST(busy_wait_higher_priority_first) {
  fixture_t f;
  fixture_busy(&f, NULL);
  int prio[] = {0, 5, 2, 5, 7, 0};
  int want[] = {4, 1, 3, 2, 0, 5}; /* indices in service order */
  enum { N = 6 };
  pp_lease_t w[N];
  test_rec_t r[N];
  for (int i = 0; i < N; i++) {
    pp_acquire_opts_t a = opts_busy(PP_BUSY_WAIT, 0, prio[i]);
    ASSERT_OK(test_acquire_start(f.pool, &w[i], &r[i], f.peer, &a));
  }
  pp_lease_t *cur = &f.held;
  for (int k = 0; k < N; k++) {
    ASSERT_OK(pp_release(cur, 0));
    int i = want[k];
    test_wait_ok(&r[i]);
    int served = 0;
    for (int j = 0; j < N; j++)
      served += r[j].calls;
    if (served != k + 1) FAIL("after %d releases, %d waiters served", k + 1, served);
    cur = &w[i];
  }
  ASSERT_OK(pp_release(cur, 0));
  fixture_end(&f);
}

TEST(busy_wait_deadline_times_out) {
  fixture_t f;
  fixture_busy(&f, NULL);
  pp_acquire_opts_t a = opts_busy(PP_BUSY_WAIT, 100, 0);
  pp_lease_t l;
  test_rec_t r;
  uint64_t t0 = test_now_ms();
  ASSERT_OK(test_acquire_start(f.pool, &l, &r, f.peer, &a));
  RUN_UNTIL(r.calls == 1, 3000);
  uint64_t took = test_now_ms() - t0;
  ASSERT_ERR(r.status, PP_ETIMEDOUT);
  ASSERT_NULL(l.conn);
  ASSERT_GE(took, 90);
  ASSERT_LT(took, 2000);
  pp_stats_t s = test_stats(f.pool);
  ASSERT_EQ(s.timed_out, 1);
  ASSERT_EQ(s.waiters, 0);
  ASSERT_EQ(test_peer_info(f.peer).waiters, 0);
  /* The timed-out waiter does not take the conn when it frees. */
  ASSERT_OK(pp_release(&f.held, 0));
  test_run_for(30);
  ASSERT_EQ(r.calls, 1);
  ASSERT_EQ(test_stats(f.pool).idle, 1);
  fixture_end(&f);
}

TEST(busy_wait_uses_pool_acquire_timeout) {
  fixture_t f;
  fixture_busy(&f, TEST_OPTS(o.acquire_timeout = 100));
  pp_lease_t l;
  test_rec_t r;
  uint64_t t0 = test_now_ms();
  ASSERT_OK(test_acquire_start(f.pool, &l, &r, f.peer, NULL)); /* timeout -1 */
  RUN_UNTIL(r.calls == 1, 3000);
  ASSERT_ERR(r.status, PP_ETIMEDOUT);
  ASSERT_GE(test_now_ms() - t0, 90);
  ASSERT_OK(pp_release(&f.held, 0));
  fixture_end(&f);
}

TEST(busy_wait_timeout_zero_means_no_deadline) {
  fixture_t f;
  fixture_busy(&f, TEST_OPTS(o.acquire_timeout = 50));
  pp_acquire_opts_t a = opts_busy(PP_BUSY_WAIT, 0, 0);
  pp_lease_t l;
  test_rec_t r;
  ASSERT_OK(test_acquire_start(f.pool, &l, &r, f.peer, &a));
  test_run_for(250);
  ASSERT_EQ(r.calls, 0);
  ASSERT_OK(pp_release(&f.held, 0));
  test_wait_ok(&r);
  ASSERT_OK(pp_release(&l, 0));
  fixture_end(&f);
}

TEST(busy_wait_deadlines_fire_in_order) {
  fixture_t f;
  fixture_busy(&f, NULL);
  int64_t tmo[] = {150, 50, 100};
  pp_lease_t w[3];
  test_rec_t r[3];
  for (int i = 0; i < 3; i++) {
    pp_acquire_opts_t a = opts_busy(PP_BUSY_WAIT, tmo[i], 0);
    ASSERT_OK(test_acquire_start(f.pool, &w[i], &r[i], f.peer, &a));
  }
  RUN_UNTIL(r[0].calls && r[1].calls && r[2].calls, 3000);
  for (int i = 0; i < 3; i++)
    ASSERT_ERR(r[i].status, PP_ETIMEDOUT);
  ASSERT_LT(r[1].order, r[2].order);
  ASSERT_LT(r[2].order, r[0].order);
  ASSERT_EQ(test_stats(f.pool).timed_out, 3);
  ASSERT_OK(pp_release(&f.held, 0));
  fixture_end(&f);
}

/* Equal deadlines end first in, first out (the heap's tie-break by insertion number). */
TEST(busy_wait_equal_deadlines_fire_in_arrival_order) {
  fixture_t f;
  fixture_busy(&f, NULL);
  pp_lease_t w[4];
  test_rec_t r[4];
  for (int i = 0; i < 4; i++) {
    pp_acquire_opts_t a = opts_busy(PP_BUSY_WAIT, 60, 0);
    ASSERT_OK(test_acquire_start(f.pool, &w[i], &r[i], f.peer, &a));
  }
  RUN_UNTIL(r[0].calls && r[1].calls && r[2].calls && r[3].calls, 3000);
  for (int i = 0; i < 4; i++)
    ASSERT_ERR(r[i].status, PP_ETIMEDOUT);
  for (int i = 0; i < 3; i++)
    ASSERT_LT(r[i].order, r[i + 1].order);
  ASSERT_OK(pp_release(&f.held, 0));
  fixture_end(&f);
}

/* The C API takes any timeout >= 1: a far deadline (past 2^63 ms of loop time as a uint64_t)
 * must still sort after a near one, or it holds the deadline timer and the near one never fires. */
TEST(busy_wait_far_deadline_does_not_hold_back_a_near_one) {
  fixture_t f;
  fixture_busy(&f, NULL);
  int64_t tmo[] = {INT64_MAX, 50};
  pp_lease_t w[2];
  test_rec_t r[2];
  for (int i = 0; i < 2; i++) {
    pp_acquire_opts_t a = opts_busy(PP_BUSY_WAIT, tmo[i], 0);
    ASSERT_OK(test_acquire_start(f.pool, &w[i], &r[i], f.peer, &a));
  }
  RUN_UNTIL(r[1].calls == 1, 3000);
  ASSERT_ERR(r[1].status, PP_ETIMEDOUT);
  ASSERT_EQ(r[0].calls, 0);
  ASSERT_OK(pp_release(&f.held, 0));
  test_wait_ok(&r[0]);
  ASSERT_OK(pp_release(&w[0], 0));
  fixture_end(&f);
}

TEST(busy_backlog_full_is_exhausted_at_once) {
  fixture_t f;
  fixture_busy(&f, TEST_OPTS(o.backlog = 2));
  pp_lease_t w[3];
  test_rec_t r[3];
  ASSERT_OK(test_acquire_start(f.pool, &w[0], &r[0], f.peer, NULL));
  ASSERT_OK(test_acquire_start(f.pool, &w[1], &r[1], f.peer, NULL));
  ASSERT_ERR(test_acquire_start(f.pool, &w[2], &r[2], f.peer, NULL), PP_EEXHAUSTED);
  pp_stats_t s = test_stats(f.pool);
  ASSERT_EQ(s.exhausted, 1);
  ASSERT_EQ(s.waiters, 2);
  test_run_for(30);
  ASSERT_EQ(r[2].calls, 0);
  ASSERT_OK(pp_acquire_cancel(&w[0]));
  ASSERT_OK(pp_acquire_cancel(&w[1]));
  RUN_UNTIL(r[0].calls == 1 && r[1].calls == 1, 1000);
  ASSERT_OK(pp_release(&f.held, 0));
  fixture_end(&f);
}

TEST(busy_backlog_zero_never_waits) {
  fixture_t f;
  fixture_busy(&f, TEST_OPTS(o.backlog = 0));
  pp_lease_t l;
  test_rec_t r;
  ASSERT_ERR(test_acquire_start(f.pool, &l, &r, f.peer, NULL), PP_EEXHAUSTED);
  ASSERT_EQ(test_stats(f.pool).waiters, 0);
  ASSERT_OK(pp_release(&f.held, 0));
  test_run_for(20);
  ASSERT_EQ(r.calls, 0);
  fixture_end(&f);
}

TEST(busy_waiter_served_on_release_without_polling) {
  busy_t b;
  busy_waiter_fixture(&b, 0);
  test_run_for(20);
  ASSERT_EQ(b.r.calls, 0);
  uint64_t waited_before = test_stats(b.f.pool).acquired_waited;
  ASSERT_OK(CALL(pp_release(&b.f.held, 0)));
  ASSERT_EQ(b.r.calls, 0);
  int iters = 0;
  while (b.r.calls == 0 && iters < 10) {
    test_run_nowait();
    iters++;
  }
  ASSERT_MSG(b.r.calls == 1, "waiter not served within %d non-blocking loop iterations", iters);
  ASSERT_LE(iters, 3);
  ASSERT_OK(b.r.status);
  ASSERT_NOT_NULL(b.l.conn);
  pp_stats_t s = test_stats(b.f.pool);
  ASSERT_EQ(s.acquired_waited, waited_before + 1);
  ASSERT_EQ(s.waiters, 0);
  busy_waiter_end(&b);
}

TEST(busy_waiter_gets_new_conn_after_broken_release) {
  busy_t b;
  busy_waiter_fixture(&b, 0);
  release_serves(&b, PP_EBROKEN, 1);
  ASSERT_ACCEPTED(b.f.srv, 2);
  busy_waiter_end(&b);
}

TEST(busy_waiter_for_any_peer) {
  busy_t b;
  busy_waiter_fixture(&b, 1);
  calls_stay_at(&b, 0);
  ASSERT_EQ(test_stats(b.f.pool).waiters, 1);
  release_serves(&b, 0, 1);
  ASSERT_PTR_EQ(b.l.peer, b.f.peer);
  busy_waiter_end(&b);
}

TEST(busy_wait_with_priority_in_range_only) {
  fixture_t f;
  fixture_busy(&f, NULL);
  pp_acquire_opts_t a = opts_busy(PP_BUSY_WAIT, 0, PP_PRIORITY_MAX + 1);
  pp_lease_t l;
  test_rec_t r;
  ASSERT_ERR(test_acquire_start(f.pool, &l, &r, f.peer, &a), PP_EINVAL);
  ASSERT_EQ(test_stats(f.pool).waiters, 0);
  ASSERT_OK(pp_release(&f.held, 0));
  fixture_end(&f);
}
