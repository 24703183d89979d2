/* The ping hook: a health check before lending a conn that idled past ping_after, and on a
 * keepalive sweep; failures and timeouts close the conn (reason "ping"). */
#include "fixtures_hook.h"

static hook_script_t pg;

static void ping_hook(void *data, pp_conn_t *conn) {
  ASSERT_EQ(pp_conn_leases(conn), 0); /* pings run on idle conns */
  hook_script_run(&pg, conn);
}

/* A conn whose ping completed earlier is not the script's any more: nothing to forget. */
static void ping_closed(void *data, pp_conn_t *conn) {
  hook_script_closed(&pg, conn);
}

/* A pool with `opts` whose policy is the ping hook in `mode` (with ping_closed), and one
 * peer at an echo server. The test's lease is f.held. */
static fixture_t ping_start(hook_mode_t mode, const pp_options_t *opts) {
  hook_script_init(&pg, mode, "PING\n", pp_conn_ping_done, PP_EPING);
  fixture_t f = fixture_start(srv_echo_start(NULL), opts);
  TEST_SET_POLICY(f.pool, p.ping = ping_hook; p.closed = ping_closed);
  return f;
}

/* Acquire f.held (it must succeed). */
static void ping_acquire(fixture_t *f) {
  ASSERT_OK(test_acquire_wait(f->pool, &f->held, &f->held_rec, f->peer, NULL));
}

/* One conn, released idle; then run until the keepalive sweep called the hook for it. */
static void ping_until_hook(fixture_t *f) {
  test_acquire_release(f->pool, f->peer);
  RUN_UNTIL(pg.calls == 1, 2000);
}

TEST(ping_before_lending_an_idle_conn) {
  /* max_per_peer 1: the acquire waits for the ping instead of dialling a second conn. */
  fixture_t f = ping_start(HOOK_ECHO, TEST_OPTS(o.ping_after = 50; o.max_per_peer = 1));
  pp_conn_t *c = test_acquire_release(f.pool, f.peer);
  ASSERT_EQ(pg.calls, 0); /* a fresh conn needs no ping */
  test_run_for(100);
  ping_acquire(&f);
  ASSERT_EQ(pg.calls, 1);
  ASSERT_PTR_EQ(pg.slot[0].conn, c);
  ASSERT_OK(pg.done_rc);
  ASSERT_PTR_EQ(f.held.conn, c);
  ASSERT_ACCEPTED(f.srv, 1);
  pp_stats_t s = test_stats(f.pool);
  ASSERT_EQ(s.pings, 1);
  ASSERT_EQ(s.pings_failed, 0);
  fixture_release_end(&f);
}

TEST(ping_not_needed_for_a_recently_used_conn) {
  fixture_t f = ping_start(HOOK_ECHO, TEST_OPTS(o.ping_after = 5000));
  for (int i = 0; i < 3; i++)
    test_acquire_release(f.pool, f.peer);
  ASSERT_EQ(pg.calls, 0);
  fixture_end(&f);
}

TEST(ping_completed_inside_hook) {
  fixture_t f = ping_start(HOOK_SYNC_OK, TEST_OPTS(o.ping_after = 30));
  test_acquire_release(f.pool, f.peer);
  test_run_for(60);
  ping_acquire(&f);
  ASSERT_EQ(pg.calls, 1);
  ASSERT_OK(pg.done_rc);
  fixture_release_end(&f);
}

TEST(ping_failure_closes_the_conn_and_acquire_gets_another) {
  fixture_t f = ping_start(HOOK_ECHO_FAIL, TEST_OPTS(o.ping_after = 30));
  pp_conn_t *c = test_acquire_release(f.pool, f.peer);
  test_run_for(60);
  ping_acquire(&f);
  ASSERT_GE(pg.calls, 1);
  ASSERT_OK(pg.done_rc);
  ASSERT_PTR_NE(f.held.conn, c);
  ASSERT_ACCEPTED(f.srv, 2);
  pp_stats_t s = test_stats(f.pool);
  ASSERT_EQ(s.closed[PP_CLOSE_PING], 1);
  ASSERT_EQ(s.pings_failed, 1);
  fixture_release_end(&f);
}

TEST(ping_timeout_closes_the_conn) {
  /* A ping has handshake_timeout to complete; max_per_peer 1: the acquire waits for the ping
   * instead of dialling. */
  fixture_t f = ping_start(
      HOOK_NEVER, TEST_OPTS(o.ping_after = 30; o.handshake_timeout = 80; o.max_per_peer = 1));
  test_acquire_release(f.pool, f.peer);
  test_run_for(60);
  uint64_t t0 = test_now_ms();
  ping_acquire(&f);
  ASSERT_GE(test_now_ms() - t0, 70);
  ASSERT_EQ(pg.calls, 1);
  ASSERT_EQ(pg.closed_calls, 1);
  ASSERT_EQ(test_stats(f.pool).closed[PP_CLOSE_PING], 1);
  ASSERT_ACCEPTED(f.srv, 2);
  fixture_release_end(&f);
}

TEST(ping_keepalive_checks_idle_conns) {
  fixture_t f = ping_start(HOOK_ECHO, TEST_OPTS(o.keepalive = 40));
  test_acquire_release(f.pool, f.peer);
  RUN_UNTIL(pg.calls >= 2 && pg.slot[pg.calls - 1].done, 2000);
  ASSERT_OK(pg.done_rc);
  pp_stats_t s = test_stats(f.pool);
  ASSERT_GE(s.pings, 1);
  ASSERT_EQ(s.closed[PP_CLOSE_PING], 0);
  ASSERT_EQ(s.conns, 1);
  fixture_end(&f);
}

TEST(ping_keepalive_skips_leased_conns) {
  fixture_t f = ping_start(HOOK_ECHO, TEST_OPTS(o.keepalive = 30));
  ping_acquire(&f);
  test_run_for(200);
  ASSERT_EQ(pg.calls, 0);
  fixture_release_end(&f);
}

TEST(ping_keepalive_failure_closes_idle_conn) {
  fixture_t f = ping_start(HOOK_ECHO_FAIL, TEST_OPTS(o.keepalive = 40));
  test_acquire_release(f.pool, f.peer);
  RUN_UNTIL(test_stats(f.pool).closed[PP_CLOSE_PING] == 1, 2000);
  ASSERT_EQ(test_stats(f.pool).conns, 0);
  RUN_UNTIL(srv_open(f.srv) == 0, 2000);
  fixture_end(&f);
}

/* The pool closes while the hook (in `mode`) holds a conn: `closed` is called once. */
static void ping_pool_closed_while_pinging(hook_mode_t mode) {
  fixture_t f = ping_start(mode, TEST_OPTS(o.keepalive = 30; o.handshake_timeout = 10000));
  ping_until_hook(&f);
  ASSERT_OK(pp_pool_close(f.pool, test_close_cb));
  test_finish_closed();
  ASSERT_EQ(pg.closed_calls, 1);
  srv_stop(f.srv);
}

TEST(ping_closed_hook_on_pool_close) {
  ping_pool_closed_while_pinging(HOOK_NEVER);
}

TEST(ping_hook_reader_not_called_after_closed) {
  /* `closed` means "forget this conn": the hook's reader (whose arg the hook may free in
   * `closed`) must not be called afterwards. the script's reader asserts it. */
  ping_pool_closed_while_pinging(HOOK_READ_NEVER);
}

TEST(ping_pinging_conn_is_not_lent_by_try_acquire) {
  fixture_t f = ping_start(HOOK_NEVER, TEST_OPTS(o.keepalive = 30; o.handshake_timeout = 10000));
  ping_until_hook(&f);
  test_try_acquire_fails(f.pool, f.peer, PP_EAGAIN);
  /* Completing the ping makes it lendable again. */
  ASSERT_OK(hook_script_finish(&pg, 0));
  pp_lease_t t;
  memset(&t, 0, sizeof t);
  ASSERT_OK(pp_try_acquire(f.pool, &t, f.peer, NULL));
  ASSERT_OK(pp_release(&t, 0));
  fixture_end(&f);
}

TEST(ping_hook_reader_not_called_after_closed_on_timeout) {
  fixture_t f = ping_start(HOOK_READ_NEVER, TEST_OPTS(o.keepalive = 30; o.handshake_timeout = 50));
  test_acquire_release(f.pool, f.peer);
  RUN_UNTIL(pg.closed_calls == 1, 2000);
  test_run_for(30);
  ASSERT_EQ(test_stats(f.pool).closed[PP_CLOSE_PING], 1);
  fixture_end(&f);
}
