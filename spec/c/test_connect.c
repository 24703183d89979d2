/* Connecting: timeouts per attempt, retries spaced by the backoff policy, cannot_connect with
 * the last socket error; unix and IPv6 peers. */
#include "fixtures_multi.h"

typedef struct {
  int calls;
  int attempts[64];
  int errs[64];
  pp_peer_t *peers[64];
  uint64_t at[64];
  int64_t delay;
} backoff_rec_t;

static int64_t rec_backoff(void *data, pp_peer_t *peer, int attempt, int err) {
  backoff_rec_t *b = data;
  if (b->calls < 64) {
    b->attempts[b->calls] = attempt;
    b->errs[b->calls] = err;
    b->peers[b->calls] = peer;
    b->at[b->calls] = test_now_ms();
  }
  b->calls++;
  return b->delay;
}

static backoff_rec_t bk;

/* A pool with `opts` whose backoff hook records into `bk` and answers `delay`, with a peer at
 * `srv`. The test's lease is f.held. */
static fixture_t backoff_start(srv_t *srv, int64_t delay, const pp_options_t *opts) {
  memset(&bk, 0, sizeof bk);
  bk.delay = delay;
  fixture_t f = fixture_start(srv, opts);
  test_set_backoff(f.pool, rec_backoff, &bk);
  return f;
}

/* Acquire f.held: it must end in cannot_connect. Returns how long it took (ms). */
static uint64_t cannot_connect(fixture_t *f) {
  uint64_t t0 = test_now_ms();
  ASSERT_ERR(test_acquire_wait(f->pool, &f->held, &f->held_rec, f->peer, NULL), PP_ECANNOTCONNECT);
  return test_now_ms() - t0;
}

TEST(connect_refused_cannot_connect_after_retries) {
  fixture_t f = backoff_start(srv_refused_start(), 5, TEST_OPTS(o.retries = 2));
  cannot_connect(&f);
  ASSERT_ERR(f.held.cause, UV_ECONNREFUSED);
  ASSERT_NULL(f.held.conn);
  pp_stats_t s = test_stats(f.pool);
  ASSERT_EQ(s.connect_attempts, 3);
  ASSERT_EQ(s.connects_failed, 3);
  ASSERT_EQ(s.connects_ok, 0);
  ASSERT_EQ(s.cannot_connect, 1);
  ASSERT_EQ(s.conns, 0);
  ASSERT_EQ(s.connecting, 0);
  pp_peer_info_t i = test_peer_info(f.peer);
  ASSERT_EQ(i.attempts, 3);
  ASSERT_ERR(i.last_error, UV_ECONNREFUSED);
  ASSERT_EQ(i.conns, 0);
  fixture_end(&f);
}

TEST(connect_refused_with_default_backoff) {
  /* Built-in backoff: full jitter, base 100 ms: two retries take at most ~600 ms. */
  fixture_t f = fixture_start(srv_refused_start(), TEST_OPTS(o.retries = 2));
  ASSERT_LT(cannot_connect(&f), 3000);
  ASSERT_ERR(f.held.cause, UV_ECONNREFUSED);
  ASSERT_EQ(test_stats(f.pool).connect_attempts, 3);
  fixture_end(&f);
}

TEST(connect_no_retries_means_one_attempt) {
  fixture_t f = backoff_start(srv_refused_start(), 5, TEST_OPTS(o.retries = 0));
  cannot_connect(&f);
  ASSERT_EQ(test_stats(f.pool).connect_attempts, 1);
  /* No retry needs a delay; the engine may still consult the policy once after the final
   * failure (to set the peer's retry time, or to burn it). */
  ASSERT_LE(bk.calls, 1);
  if (bk.calls == 1) ASSERT_EQ(bk.attempts[0], 1);
  fixture_end(&f);
}

TEST(connect_backoff_called_with_attempt_numbers) {
  fixture_t f = backoff_start(srv_refused_start(), 5, TEST_OPTS(o.retries = 3));
  cannot_connect(&f);
  /* Called before each of the 3 retries with 1, 2, 3; possibly once more (4) after the final
   * failure to set the peer's retry time. */
  ASSERT_GE(bk.calls, 3);
  ASSERT_LE(bk.calls, 4);
  for (int i = 0; i < bk.calls; i++) {
    ASSERT_EQ(bk.attempts[i], i + 1);
    ASSERT_ERR(bk.errs[i], UV_ECONNREFUSED);
    ASSERT_PTR_EQ(bk.peers[i], f.peer);
  }
  ASSERT_EQ(test_stats(f.pool).connect_attempts, 4);
  fixture_end(&f);
}

TEST(connect_backoff_delay_is_respected) {
  fixture_t f = backoff_start(srv_refused_start(), 120, TEST_OPTS(o.retries = 2));
  uint64_t took = cannot_connect(&f);
  ASSERT_GE(took, 200); /* two waits of 120 ms */
  ASSERT_LT(took, 5000);
  fixture_end(&f);
}

TEST(connect_backoff_default_value_uses_builtin) {
  fixture_t f = backoff_start(srv_refused_start(), PP_BACKOFF_DEFAULT, TEST_OPTS(o.retries = 1));
  cannot_connect(&f);
  ASSERT_GE(bk.calls, 1);
  ASSERT_LE(bk.calls, 2);
  ASSERT_EQ(test_stats(f.pool).connect_attempts, 2);
  ASSERT_EQ(test_stats(f.pool).policy_errors, 0);
  fixture_end(&f);
}

TEST(connect_full_jitter_bounds) {
  pp_pool_t *pool = test_pool(NULL);
  int distinct = 0;
  int64_t first = -1;
  for (int attempt = 0; attempt <= 20; attempt++) {
    int64_t cap = 30000, lim = 100;
    for (int k = 0; k < attempt && lim < cap; k++)
      lim *= 2;
    if (lim > cap) lim = cap;
    for (int i = 0; i < 200; i++) {
      int64_t d = pp_backoff_full_jitter(pool, attempt, 100, 30000);
      ASSERT_GE(d, 0);
      ASSERT_LE(d, lim);
      if (attempt == 5) {
        if (first < 0) first = d;
        if (d != first) distinct = 1;
      }
    }
  }
  ASSERT_MSG(distinct, "200 draws at attempt 5 (range 0..3200) were all equal: not random");
  test_finish(pool);
}

TEST(connect_hanging_listener_times_out_each_attempt) {
  fixture_t f =
      backoff_start(srv_hang_start(), 5, TEST_OPTS(o.connect_timeout = 100; o.retries = 1));
  uint64_t t0 = test_now_ms();
  ASSERT_OK(test_acquire_start(f.pool, &f.held, &f.held_rec, f.peer, NULL));
  test_run_for(30);
  ASSERT_EQ(f.held_rec.calls, 0);
  ASSERT_EQ(test_stats(f.pool).connecting, 1);
  ASSERT_EQ(srv_client_conns(f.srv), 1); /* the kernel sees one SYN_SENT socket */
  RUN_UNTIL(f.held_rec.calls == 1, 5000);
  uint64_t took = test_now_ms() - t0;
  ASSERT_ERR(f.held_rec.status, PP_ECANNOTCONNECT);
  ASSERT_ERR2(f.held.cause, UV_ETIMEDOUT, PP_ETIMEDOUT);
  ASSERT_GE(took, 180); /* two attempts of 100 ms */
  ASSERT_LT(took, 4000);
  ASSERT_GE(bk.calls, 1);
  ASSERT_LE(bk.calls, 2);
  ASSERT_ERR2(bk.errs[0], UV_ETIMEDOUT, PP_ETIMEDOUT);
  pp_stats_t s = test_stats(f.pool);
  ASSERT_EQ(s.connect_attempts, 2);
  ASSERT_EQ(s.connects_failed, 2);
  ASSERT_EQ(s.connecting, 0);
  ASSERT_EQ(srv_client_conns(f.srv), 0); /* the timed-out sockets were closed */
  fixture_end(&f);
}

TEST(connect_timeout_single_attempt) {
  fixture_t f = fixture_start(srv_hang_start(), TEST_OPTS(o.connect_timeout = 100; o.retries = 0));
  uint64_t took = cannot_connect(&f);
  ASSERT_GE(took, 90);
  ASSERT_LT(took, 3000);
  fixture_end(&f);
}

TEST(connect_success_records_latency) {
  fixture_t f = fixture_start(srv_echo_start(NULL), NULL);
  pp_lease_t l;
  test_rec_t r;
  int64_t before = test_unix_ms();
  ASSERT_OK(test_acquire_wait(f.pool, &l, &r, f.peer, NULL));
  pp_stats_t s = test_stats(f.pool);
  ASSERT_EQ(s.connect_attempts, 1);
  ASSERT_EQ(s.connects_ok, 1);
  ASSERT_EQ(s.connects_failed, 0);
  ASSERT_DBL_GE(s.connect_latency_ms_avg, 0.0);
  ASSERT(s.connect_latency_ms_avg < 1000.0);
  ASSERT_DBL_GE(s.connect_latency_ms_max, s.connect_latency_ms_avg);
  pp_peer_info_t i = test_peer_info(f.peer);
  ASSERT_EQ(i.attempts, 1);
  ASSERT_EQ(i.failures, 0);
  ASSERT_EQ(i.last_error, 0);
  ASSERT_GE(i.last_success, before - 2000);
  ASSERT_LE(i.last_success, test_unix_ms() + 2000);
  ASSERT_DBL_GE(i.latency_ms, 0.0);
  ASSERT_EQ(i.conns, 1);
  ASSERT_EQ(i.leases, 1);
  ASSERT_EQ(i.idle, 0);
  ASSERT_OK(pp_release(&l, 0));
  fixture_end(&f);
}

TEST(connect_unix_socket_peer) {
  fixture_t f = fixture_start(srv_unix_start(NULL), NULL);
  fixture_hold(&f);
  ASSERT_NOT_NULL(f.held.conn);
  ASSERT_ACCEPTED(f.srv, 1);
  ASSERT_EQ(pp_peer_state(f.peer), PP_PEER_READY);
  ASSERT_OK(pp_release(&f.held, 0));
  fixture_end(&f);
}

TEST(connect_unix_prefixed_peer) {
  srv_t *srv = srv_unix_start(NULL);
  pp_pool_t *pool = test_pool(NULL);
  char addr[300];
  snprintf(addr, sizeof addr, "unix:%s", srv_addr(srv));
  pp_peer_t *peer = test_peer(pool, addr);
  test_acquire_release(pool, peer);
  test_finish_srv(pool, srv);
}

/* A pool without retries and a peer at a unix path that does not exist. */
static pp_pool_t *missing_path_pool(pp_peer_t **peer) {
  pp_pool_t *pool = test_pool(TEST_OPTS(o.retries = 0));
  *peer = test_peer(pool, "/tmp/pp-test-no-such-dir/none.sock");
  return pool;
}

TEST(connect_unix_missing_path) {
  pp_peer_t *peer;
  pp_pool_t *pool = missing_path_pool(&peer);
  pp_lease_t l;
  test_rec_t r;
  ASSERT_ERR(test_acquire_wait(pool, &l, &r, peer, NULL), PP_ECANNOTCONNECT);
  ASSERT_ERR(l.cause, UV_ENOENT);
  test_finish(pool);
}

TEST(connect_ipv6_peer) {
  srv_t *srv = srv_echo6_start(NULL);
  if (srv == NULL) test_skip("no IPv6 loopback");
  pp_pool_t *pool = test_pool(NULL);
  pp_peer_t *peer = test_peer(pool, srv_addr(srv));
  ASSERT_STREQ(pp_peer_addr(peer), srv_addr(srv));
  pp_lease_t l;
  test_rec_t r;
  ASSERT_OK(test_acquire_wait(pool, &l, &r, peer, NULL));
  ASSERT_ACCEPTED(srv, 1);
  ASSERT_EQ(srv_client_conns(srv), 1);
  ASSERT_OK(pp_release(&l, 0));
  test_finish_srv(pool, srv);
}

TEST(connect_one_dial_for_two_waiting_acquires) {
  /* max_per_peer = 1: the second acquire waits for the first conn instead of dialling. */
  fixture_t f = fixture_start(srv_echo_start(NULL), TEST_OPTS(o.max_per_peer = 1));
  pp_lease_t a, b;
  test_rec_t ra, rb;
  ASSERT_OK(test_acquire_start(f.pool, &a, &ra, f.peer, NULL));
  ASSERT_OK(test_acquire_start(f.pool, &b, &rb, f.peer, NULL));
  RUN_UNTIL(ra.calls + rb.calls >= 1, 3000);
  test_run_for(20);
  ASSERT_EQ(ra.calls + rb.calls, 1);
  pp_lease_t *first = ra.calls ? &a : &b, *second = ra.calls ? &b : &a;
  test_rec_t *second_rec = ra.calls ? &rb : &ra;
  ASSERT_OK(pp_release(first, 0));
  test_wait_ok(second_rec);
  ASSERT_EQ(test_stats(f.pool).connect_attempts, 1);
  ASSERT_ACCEPTED(f.srv, 1);
  ASSERT_OK(pp_release(second, 0));
  fixture_end(&f);
}

TEST(connect_failure_is_not_inside_acquire) {
  /* Even a failure known early (unix path missing) is reported through the callback. */
  pp_peer_t *peer;
  pp_pool_t *pool = missing_path_pool(&peer);
  pp_lease_t l;
  test_rec_t r;
  ASSERT_OK(test_acquire_start(pool, &l, &r, peer, NULL));
  ASSERT_EQ(r.calls, 0);
  RUN_UNTIL(r.calls == 1, 2000);
  test_finish(pool);
}

TEST(connect_failed_peer_fails_fast_until_its_retry_time) {
  /* After cannot_connect, the peer is in backoff: an acquire for it is answered at once with
   * cannot_connect (its last socket error as the cause), without a dial, until the retry time
   * the backoff policy gave; then it is dialled again. */
  fixture_t f =
      backoff_start(srv_refused_start(), 300, TEST_OPTS(o.retries = 0; o.acquire_timeout = 0));
  cannot_connect(&f);
  pp_peer_info_t i = test_peer_info(f.peer);
  ASSERT_EQ(i.state, PP_PEER_FAILED);
  ASSERT_GT(i.retry_at, 0);
  ASSERT_ERR(test_acquire_start(f.pool, &f.held, &f.held_rec, f.peer, NULL), PP_ECANNOTCONNECT);
  ASSERT_ERR(f.held.cause, UV_ECONNREFUSED);
  ASSERT_EQ(test_stats(f.pool).connect_attempts, 1);
  RUN_UNTIL(pp_peer_check(f.peer) == 0, 3000); /* the retry time passed */
  cannot_connect(&f);
  ASSERT_EQ(test_stats(f.pool).connect_attempts, 2);
  fixture_end(&f);
}

TEST(connect_deadline_applies_while_dialing) {
  /* An acquire's deadline ends it even while its dial is still trying. */
  fixture_t f = fixture_start(srv_hang_start(), TEST_OPTS(o.connect_timeout = 5000));
  pp_lease_t l;
  test_rec_t r;
  uint64_t t0 = test_now_ms();
  ASSERT_ERR(test_acquire_wait(f.pool, &l, &r, f.peer, TEST_ACQUIRE_OPTS(a.timeout = 100)),
             PP_ETIMEDOUT);
  uint64_t took = test_now_ms() - t0;
  ASSERT_GE(took, 90);
  ASSERT_LT(took, 2000);
  ASSERT_EQ(test_stats(f.pool).timed_out, 1);
  fixture_end(&f);
}

TEST(connect_waiters_behind_a_failing_dial_all_end) {
  /* max_per_peer 1 and three acquires on a refused peer: each one ends (cannot_connect, or
   * its deadline), none hangs. */
  fixture_t f =
      backoff_start(srv_refused_start(), 5,
                    TEST_OPTS(o.max_per_peer = 1; o.retries = 1; o.acquire_timeout = 1500));
  pp_lease_t l[3];
  test_rec_t r[3];
  for (int i = 0; i < 3; i++)
    ASSERT_OK(test_acquire_start(f.pool, &l[i], &r[i], f.peer, NULL));
  RUN_UNTIL(r[0].calls && r[1].calls && r[2].calls, 5000);
  for (int i = 0; i < 3; i++) {
    ASSERT_EQ(r[i].calls, 1);
    ASSERT_ERR2(r[i].status, PP_ECANNOTCONNECT, PP_ETIMEDOUT);
  }
  ASSERT_ERR(r[0].status, PP_ECANNOTCONNECT);
  ASSERT_EQ(test_stats(f.pool).waiters, 0);
  fixture_end(&f);
}
