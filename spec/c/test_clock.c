/* Deadlines, timeouts and idle stamps are measured from the moment of the call, not from the
 * loop's cached time, which lags behind after blocking work in a callback. */
#include "fixtures_multi.h"

typedef struct {
  fixture_t *f;
  pp_lease_t lease;
  test_rec_t rec;
  pp_acquire_opts_t opts;
  uint64_t called_at; /* test_now_ms() when the engine was called */
  int rc;
} late_call_t;

static void acquire_now(void *arg) {
  late_call_t *a = arg;
  a->called_at = test_now_ms();
  a->rc = test_acquire_start(a->f->pool, &a->lease, &a->rec, a->f->peer, &a->opts);
}

static void release_now(void *arg) {
  late_call_t *a = arg;
  a->called_at = test_now_ms();
  a->rc = pp_release(&a->f->held, 0);
}

TEST(clock_acquire_deadline_counts_from_the_call) {
  /* A callback blocks for 600 ms, then acquires with a 500 ms timeout from a peer that never
   * answers: the acquire must not time out before ~500 ms from the call. */
  /* connect_timeout: the acquire's deadline ends the wait, not the connect. */
  fixture_t f = fixture_start(srv_hang_start(), TEST_OPTS(o.connect_timeout = 10000));
  late_call_t a = {.f = &f};
  pp_acquire_opts_init(&a.opts);
  a.opts.timeout = 500;
  test_after_stall(600, acquire_now, &a);
  ASSERT_OK(a.rc);
  RUN_UNTIL(a.rec.calls == 1, 5000);
  ASSERT_ERR(a.rec.status, PP_ETIMEDOUT);
  ASSERT_GE(a.rec.at_ms - a.called_at, 450);
  ASSERT_LT(a.rec.at_ms - a.called_at, 3000);
  fixture_end(&f);
}

TEST(clock_connect_after_a_stall_succeeds) {
  /* connect_timeout (200 ms in test_options) runs from the connect: a loopback connect started
   * after a 600 ms stall succeeds, and the healthy peer is not blamed. */
  fixture_t f = fixture_start(srv_echo_start(NULL), NULL);
  late_call_t a = {.f = &f};
  pp_acquire_opts_init(&a.opts);
  test_after_stall(600, acquire_now, &a);
  ASSERT_OK(a.rc);
  test_wait_ok(&a.rec);
  test_expect_unblamed(f.pool, f.peer);
  ASSERT_EQ(pp_peer_state(f.peer), PP_PEER_READY);
  ASSERT_EQ(test_stats(f.pool).connects_failed, 0);
  ASSERT_OK(pp_release(&a.lease, 0));
  fixture_end(&f);
}

TEST(clock_idle_timeout_counts_from_the_release) {
  /* A conn released after a 600 ms stall idles its whole idle_timeout (300 ms) before the
   * sweep closes it. */
  fixture_t f = fixture_start(srv_echo_start(NULL), TEST_OPTS(o.idle_timeout = 300));
  fixture_hold(&f);
  late_call_t a = {.f = &f};
  test_after_stall(600, release_now, &a);
  ASSERT_OK(a.rc);
  RUN_UNTIL(test_stats(f.pool).closed[PP_CLOSE_IDLE] == 1, 5000);
  ASSERT_GE(test_now_ms() - a.called_at, 250);
  fixture_end(&f);
}

static int leak_events;

static void count_leaks(pp_pool_t *pool, const pp_event_t *ev, void *arg) {
  (void)pool;
  (void)arg;
  if (ev->kind == PP_EVENT_LEAK) leak_events++;
}

static void try_acquire_now(void *arg) {
  late_call_t *a = arg;
  a->called_at = test_now_ms();
  a->rc = pp_try_acquire(a->f->pool, &a->lease, a->f->peer, NULL);
}

TEST(clock_lease_hold_counts_from_the_grant) {
  /* A lease granted at once (an idle conn) after a 600 ms stall and held 150 ms is no leak at
   * leak_threshold 400: its hold counts from the grant, not from the loop's cached time (which
   * the engine no longer brings up to date on the way). */
  fixture_t f = fixture_start(srv_echo_start(NULL), TEST_OPTS(o.leak_threshold = 400));
  pp_pool_on_event(f.pool, count_leaks, NULL);
  leak_events = 0;
  fixture_hold(&f);
  ASSERT_OK(pp_release(&f.held, 0)); /* one idle conn */
  late_call_t a = {.f = &f};
  test_after_stall(600, try_acquire_now, &a);
  ASSERT_OK(a.rc);
  test_run_for(150); /* the leak sweep runs every 100 ms */
  ASSERT_EQ(leak_events, 0);
  ASSERT_OK(pp_release(&a.lease, 0));
  fixture_end(&f);
}

TEST(clock_run_for_turns_the_loop_after_a_stall) {
  /* test_run_for(ms) whose process stalled for all of `ms` (a loaded machine; here ms = 0)
   * still turns the loop: a cancelled acquire's callback, deferred to the next tick, has run
   * when it returns. */
  pp_options_t o;
  test_options(&o);
  o.connect_timeout = 10000;
  fixture_t f = fixture_start(srv_hang_start(), &o);
  pp_lease_t l;
  test_rec_t r;
  ASSERT_OK(test_acquire_start(f.pool, &l, &r, f.peer, NULL));
  ASSERT_OK(CALL(pp_acquire_cancel(&l)));
  ASSERT_EQ(r.calls, 0); /* later, not inside the call */
  test_run_for(0);
  ASSERT_EQ(r.calls, 1);
  ASSERT_ERR(r.status, PP_ECANCELED);
  fixture_end(&f);
}
