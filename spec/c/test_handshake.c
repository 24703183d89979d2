/* The handshake hook: success moves the peer to ready through connected; an error or a
 * timeout fails the attempt (counting toward retries); `closed` tells the hook to let go. */
#include "fixtures_hook.h"

/* The hook's script, and what the hook saw of the pool when it was called. */
static struct {
  hook_script_t script;
  int state_in_hook;
  pp_stats_t stats_in_hook;
  pp_pool_t *pool;
} hs;

static void hs_hook(void *data, pp_conn_t *conn) {
  ASSERT_PTR_EQ(data, &hs);
  ASSERT_NOT_NULL(conn);
  hs.state_in_hook = pp_peer_state(pp_conn_peer(conn));
  pp_pool_stats(hs.pool, &hs.stats_in_hook);
  hook_script_run(&hs.script, conn);
}

static void hs_closed(void *data, pp_conn_t *conn) {
  /* Only conns still in the hook's hands are reported. */
  ASSERT_NOT_NULL(hook_script_closed(&hs.script, conn));
}

/* Retries come quickly in these tests. */
static int64_t hs_backoff(void *data, pp_peer_t *peer, int attempt, int err) {
  return 5;
}

/* A pool with `opts` (NULL = test defaults) whose policy is the hs hook in `mode` (with
 * hs_closed and hs_backoff), recording peer states, and one peer at an echo server with
 * `so` (NULL = plain). The lease of the test is f.held. */
static fixture_t hs_start(hook_mode_t mode, const pp_options_t *opts, const srv_opts_t *so) {
  memset(&hs, 0, sizeof hs);
  hook_script_init(&hs.script, mode, "HELLO\n", pp_conn_handshake_done, PP_EHANDSHAKE);
  hs.script.report_twice = 1;
  fixture_t f = fixture_start(srv_echo_start(so), opts);
  hs.pool = f.pool;
  TEST_SET_POLICY(f.pool, p.data = &hs; p.handshake = hs_hook; p.closed = hs_closed;
                  p.backoff = hs_backoff);
  pp_pool_on_state(f.pool, test_state_cb);
  return f;
}

/* Acquire f.held on the fixture's peer and return the callback's status. */
static int hs_acquire(fixture_t *f) {
  return test_acquire_wait(f->pool, &f->held, &f->held_rec, f->peer, NULL);
}

/* *f = hs_start(mode) on a plain echo server with the test defaults, and f->held acquired: the
 * hook reported done without an error and the peer is ready. */
static void hs_ready(fixture_t *f, hook_mode_t mode) {
  *f = hs_start(mode, NULL, NULL);
  ASSERT_OK(hs_acquire(f));
  ASSERT_OK(hs.script.done_rc);
  ASSERT_EQ(pp_peer_state(f->peer), PP_PEER_READY);
}

/* Start acquiring f.held and run until the hook was called for its dial. */
static void hs_acquire_until_hook(fixture_t *f) {
  ASSERT_OK(test_acquire_start(f->pool, &f->held, &f->held_rec, f->peer, NULL));
  RUN_UNTIL(hs.script.calls == 1, 2000);
}

/* Close the pool while the hook holds the conn: `closed` is called once and the acquire
 * ends with PP_ECLOSED. Ends the test. */
static void hs_close_pool_during_handshake(fixture_t *f) {
  ASSERT_OK(pp_pool_close(f->pool, test_close_cb));
  test_finish_closed();
  ASSERT_EQ(hs.script.closed_calls, 1);
  ASSERT_EQ(f->held_rec.calls, 1);
  ASSERT_ERR(f->held_rec.status, PP_ECLOSED);
  srv_stop(f->srv);
}

TEST(handshake_hello_reaches_ready) {
  fixture_t f;
  hs_ready(&f, HOOK_ECHO);
  ASSERT_EQ(hs.script.calls, 1);
  ASSERT_PTR_EQ(f.held.conn, hs.script.slot[0].conn);
  WAIT_TRANSITION(f.peer, PP_PEER_READY, 0, 1000);
  /* Strictly known -> connecting -> connected -> ready. */
  if (test_ntransitions != 3 || test_transitions[0].to != PP_PEER_CONNECTING ||
      test_transitions[1].to != PP_PEER_CONNECTED || test_transitions[2].to != PP_PEER_READY) {
    test_dump_transitions();
    FAIL("want known -> connecting -> connected -> ready");
  }
  ASSERT_EQ(srv_bytes_in(f.srv), 6);
  /* The hook's bytes count like any other. */
  ASSERT_EQ(test_peer_info(f.peer).bytes_out, 6);
  ASSERT_EQ(hs.script.closed_calls, 0);
  fixture_release_end(&f);
}

TEST(handshake_peer_is_connected_during_hook) {
  fixture_t f;
  hs_ready(&f, HOOK_ECHO);
  ASSERT_EQ(hs.state_in_hook, PP_PEER_CONNECTED);
  /* A handshaking conn counts as connecting (header: "connecting includes handshaking"). */
  ASSERT_EQ(hs.stats_in_hook.connecting, 1);
  ASSERT_EQ(hs.stats_in_hook.conns, 1);
  ASSERT_EQ(hs.stats_in_hook.idle, 0);
  fixture_release_end(&f);
}

TEST(handshake_done_inside_hook) {
  fixture_t f;
  hs_ready(&f, HOOK_SYNC_OK);
  fixture_release_end(&f);
}

TEST(handshake_done_twice_is_bad_state) {
  fixture_t f;
  hs_ready(&f, HOOK_ECHO);
  ASSERT_ERR(hs.script.done_again_rc, PP_ESTATE);
  /* No handshake runs on a leased conn. */
  ASSERT_ERR(pp_conn_handshake_done(f.held.conn, 0), PP_ESTATE);
  ASSERT_ERR(pp_conn_ping_done(f.held.conn, 0), PP_ESTATE);
  fixture_release_end(&f);
}

TEST(handshake_runs_once_per_conn) {
  fixture_t f = hs_start(HOOK_ECHO, NULL, NULL);
  for (int i = 0; i < 3; i++)
    test_acquire_release(f.pool, f.peer);
  ASSERT_EQ(hs.script.calls, 1);
  fixture_end(&f);
}

TEST(handshake_error_fails_the_attempt) {
  fixture_t f = hs_start(HOOK_ECHO_FAIL, TEST_OPTS(o.retries = 1), NULL);
  ASSERT_ERR(hs_acquire(&f), PP_ECANNOTCONNECT);
  ASSERT_ERR(f.held.cause, PP_EHANDSHAKE);
  ASSERT_EQ(hs.script.calls, 2); /* the first attempt and one retry */
  ASSERT_OK(hs.script.done_rc);
  expect_connects_all_failed(f.pool, 2);
  ASSERT_ACCEPTED(f.srv, 2);
  RUN_UNTIL(srv_open(f.srv) == 0, 2000);
  ASSERT_ERR(test_peer_info(f.peer).last_error, PP_EHANDSHAKE);
  ASSERT_EQ(test_find_transition(f.peer, PP_PEER_READY, 0), -1);
  fixture_end(&f);
}

TEST(handshake_timeout_fails_the_attempt) {
  fixture_t f = hs_start(HOOK_NEVER, TEST_OPTS(o.handshake_timeout = 100; o.retries = 0), NULL);
  uint64_t t0 = test_now_ms();
  ASSERT_ERR(hs_acquire(&f), PP_ECANNOTCONNECT);
  uint64_t took = test_now_ms() - t0;
  ASSERT_GE(took, 90);
  ASSERT_LT(took, 3000);
  ASSERT_ERR2(f.held.cause, PP_ETIMEDOUT, UV_ETIMEDOUT);
  ASSERT_EQ(hs.script.calls, 1);
  ASSERT_EQ(hs.script.closed_calls, 1); /* the engine gave up: the hook is told to let go */
  ASSERT_EQ(hs.script.slot[0].closed, 1);
  ASSERT_EQ(test_stats(f.pool).connects_failed, 1);
  RUN_UNTIL(srv_open(f.srv) == 0, 2000);
  fixture_end(&f);
}

TEST(handshake_timeout_counts_toward_retries) {
  fixture_t f = hs_start(HOOK_NEVER, TEST_OPTS(o.handshake_timeout = 50; o.retries = 2), NULL);
  ASSERT_ERR(hs_acquire(&f), PP_ECANNOTCONNECT);
  ASSERT_EQ(hs.script.calls, 3);
  ASSERT_EQ(hs.script.closed_calls, 3);
  expect_connects_all_failed(f.pool, 3);
  fixture_end(&f);
}

TEST(handshake_closed_hook_on_pool_close) {
  fixture_t f = hs_start(HOOK_NEVER, TEST_OPTS(o.handshake_timeout = 10000), NULL);
  hs_acquire_until_hook(&f);
  ASSERT_EQ(test_stats(f.pool).connecting, 1);
  hs_close_pool_during_handshake(&f);
}

TEST(handshake_server_closes_during_handshake) {
  /* The server hangs up on the HELLO: the attempt fails (the hook's reader sees the end, or
   * the engine gives up and calls `closed`). */
  srv_opts_t so = {0};
  so.close_after_bytes = 1;
  fixture_t f = hs_start(HOOK_ECHO, TEST_OPTS(o.handshake_timeout = 300), &so);
  ASSERT_ERR(hs_acquire(&f), PP_ECANNOTCONNECT);
  ASSERT_NE(f.held.cause, 0);
  ASSERT_EQ(hs.script.calls, 1);
  ASSERT_EQ(hs.script.closed_calls, 1);
  fixture_end(&f);
}

TEST(handshake_canceled_acquire_leaves_the_conn_to_the_pool) {
  /* The acquire that started a dial is canceled during the handshake; the handshake then
   * succeeds and the conn becomes idle (not leaked, not lost). */
  fixture_t f = hs_start(HOOK_NEVER, TEST_OPTS(o.handshake_timeout = 5000), NULL);
  hs_acquire_until_hook(&f);
  ASSERT_OK(pp_acquire_cancel(&f.held));
  RUN_UNTIL(f.held_rec.calls == 1, 1000);
  ASSERT_ERR(f.held_rec.status, PP_ECANCELED);
  ASSERT_OK(hook_script_finish(&hs.script, 0));
  RUN_UNTIL(test_stats(f.pool).idle == 1, 1000);
  pp_lease_t t;
  memset(&t, 0, sizeof t);
  ASSERT_OK(pp_try_acquire(f.pool, &t, f.peer, NULL));
  ASSERT_PTR_EQ(t.conn, hs.script.slot[0].conn);
  ASSERT_OK(pp_release(&t, 0));
  fixture_end(&f);
}

TEST(handshake_reader_not_called_after_closed_on_pool_close) {
  /* `closed` tells the hook to forget the conn (it may free the reader's arg there): the
   * hook's reader must not be called after it. hs_read_cb asserts it. */
  fixture_t f = hs_start(HOOK_READ_NEVER, TEST_OPTS(o.handshake_timeout = 10000), NULL);
  hs_acquire_until_hook(&f);
  hs_close_pool_during_handshake(&f);
}

TEST(handshake_reader_not_called_after_closed_on_timeout) {
  fixture_t f = hs_start(HOOK_READ_NEVER, TEST_OPTS(o.handshake_timeout = 60), NULL);
  ASSERT_ERR(hs_acquire(&f), PP_ECANNOTCONNECT);
  test_run_for(30);
  ASSERT_EQ(hs.script.closed_calls, 1);
  fixture_end(&f);
}
