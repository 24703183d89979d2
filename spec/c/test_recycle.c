/* Recycling: idle timeout, max lifespan (with jitter), conns the server closes mid-use or
 * while idle. */
#include "fixtures_multi.h"

/* The next acquire gets a fresh conn (the server accepts a second one) that works; then the
 * end. */
static void fresh_conn_then_end(fixture_t *f) {
  fixture_hold(f);
  ASSERT_EQ(test_write(f->held.conn, "ping", 4), 0);
  ASSERT_ACCEPTED(f->srv, 2);
  ASSERT_OK(pp_release(&f->held, 0));
  fixture_end(f);
}

/* A fixture whose conns live `lifespan_ms` (no jitter), holding one. */
static void lifespan_start(fixture_t *f, int64_t lifespan_ms) {
  *f = fixture_start(srv_echo_start(NULL),
                     TEST_OPTS(o.max_lifespan = lifespan_ms; o.lifespan_jitter = 0));
  fixture_hold(f);
}

/* The info of the first conn of a pool with `o` (the pool is gone when this returns). */
static pp_conn_info_t first_conn_info(const pp_options_t *o) {
  fixture_t f = fixture_start(srv_echo_start(NULL), o);
  fixture_hold(&f);
  pp_conn_info_t ci;
  pp_conn_info(f.held.conn, &ci);
  ASSERT_OK(pp_release(&f.held, 0));
  fixture_end(&f);
  return ci;
}

TEST(recycle_idle_timeout_closes_idle_conn) {
  fixture_t f = fixture_start(srv_echo_start(NULL), TEST_OPTS(o.idle_timeout = 50));
  test_acquire_release(f.pool, f.peer);
  uint64_t t0 = test_now_ms();
  RUN_UNTIL(test_stats(f.pool).closed[PP_CLOSE_IDLE] == 1, 3000);
  ASSERT_GE(test_now_ms() - t0, 40);
  test_expect_gauges(f.pool, 0, 0, 0);
  test_expect_unblamed(f.pool, f.peer);
  RUN_UNTIL(srv_open(f.srv) == 0, 2000);
  fixture_end(&f);
}

TEST(recycle_idle_timeout_spares_leased_conns) {
  fixture_t f = fixture_start(srv_echo_start(NULL), TEST_OPTS(o.idle_timeout = 50));
  fixture_hold(&f);
  test_run_for(200);
  ASSERT_EQ(test_stats(f.pool).closed[PP_CLOSE_IDLE], 0);
  ASSERT_NOT_NULL(f.held.conn);
  ASSERT_EQ(pp_conn_is_broken(f.held.conn), 0);
  ASSERT_EQ(test_write(f.held.conn, "x", 1), 0);
  ASSERT_OK(pp_release(&f.held, 0));
  fixture_end(&f);
}

TEST(recycle_idle_timer_restarts_on_reuse) {
  /* Reusing a conn every 100 ms keeps it alive under a 500 ms idle timeout for longer than
   * the timeout (wide margins: a loaded machine stretches each pause). */
  fixture_t f = fixture_start(srv_echo_start(NULL), TEST_OPTS(o.idle_timeout = 500));
  for (int i = 0; i < 8; i++) {
    test_acquire_release(f.pool, f.peer);
    test_run_for(100);
  }
  ASSERT_EQ(test_stats(f.pool).closed[PP_CLOSE_IDLE], 0);
  ASSERT_ACCEPTED(f.srv, 1);
  fixture_end(&f);
}

TEST(recycle_idle_timeout_zero_never_closes) {
  fixture_t f = fixture_start(srv_echo_start(NULL), TEST_OPTS(o.idle_timeout = 0));
  test_acquire_release(f.pool, f.peer);
  test_run_for(150);
  ASSERT_EQ(test_stats(f.pool).conns, 1);
  fixture_end(&f);
}

TEST(recycle_max_lifespan_closes_when_last_lease_ends) {
  fixture_t f;
  lifespan_start(&f, 50);
  pp_conn_t *c = f.held.conn;
  test_run_for(120);
  /* Past its lifespan but leased: still open and usable. */
  ASSERT_EQ(test_stats(f.pool).closed[PP_CLOSE_LIFESPAN], 0);
  ASSERT_EQ(pp_conn_is_broken(c), 0);
  ASSERT_EQ(test_write(c, "abc", 3), 0);
  ASSERT_OK(pp_release(&f.held, 0));
  RUN_UNTIL(test_stats(f.pool).closed[PP_CLOSE_LIFESPAN] == 1, 1000);
  test_expect_gauges(f.pool, 0, 0, 0);
  test_expect_unblamed(f.pool, f.peer);
  /* The next acquire gets a fresh conn. */
  fresh_conn_then_end(&f);
}

TEST(recycle_expired_idle_conn_is_not_lent) {
  /* An idle conn that passed its lifespan is never handed out again. */
  fixture_t f;
  lifespan_start(&f, 60);
  ASSERT_OK(pp_release(&f.held, 0)); /* idle, young */
  test_run_for(120);
  test_try_acquire_fails(f.pool, f.peer, PP_EAGAIN);
  fresh_conn_then_end(&f);
}

TEST(recycle_lifespan_jitter_bounds) {
  fixture_t f =
      fixture_start(srv_echo_start(NULL),
                    TEST_OPTS(o.max_lifespan = 10000; o.lifespan_jitter = 50; o.max_per_peer = 8));
  enum { N = 8 };
  pp_lease_t l[N];
  test_rec_t r[N];
  test_acquire_n(f.pool, f.peer, l, r, N);
  int64_t first = -1;
  int spread = 0;
  for (int i = 0; i < N; i++) {
    pp_conn_info_t ci;
    pp_conn_info(l[i].conn, &ci);
    int64_t life = ci.expires_at - ci.created_at;
    ASSERT_GE(life, 5000 - 1);
    ASSERT_LE(life, 10000);
    if (first < 0) first = life;
    if (life != first) spread = 1;
  }
  ASSERT_MSG(spread, "8 conns opened together all expire together despite 50%% jitter");
  test_release_n(l, N, 0);
  fixture_end(&f);
}

TEST(recycle_lifespan_without_jitter_is_exact) {
  pp_conn_info_t ci = first_conn_info(TEST_OPTS(o.max_lifespan = 10000; o.lifespan_jitter = 0));
  ASSERT_EQ(ci.expires_at - ci.created_at, 10000);
}

TEST(recycle_no_lifespan_means_no_expiry) {
  pp_conn_info_t ci = first_conn_info(TEST_OPTS(o.max_lifespan = 0));
  ASSERT_EQ(ci.expires_at, 0);
}

TEST(recycle_server_closes_mid_use) {
  srv_opts_t so = {0};
  so.close_after_bytes = 4;
  fixture_t f = fixture_start(srv_echo_start(&so), NULL);
  fixture_hold(&f);
  test_reader_t rd = {0};
  ASSERT_OK(pp_conn_read_start(f.held.conn, test_reader_cb, &rd));
  ASSERT_EQ(test_write(f.held.conn, "12345678", 8), 0);
  RUN_UNTIL(rd.ended == 1, 3000);
  ASSERT_LT(rd.end_status, 0);
  ASSERT_EQ(rd.len, 0);
  ASSERT_EQ(pp_conn_is_broken(f.held.conn), 1);
  /* The holder releases it (healthy, as far as it knows): it is closed all the same. A reset
   * (the server closed with our bytes unread) is the peer's failure; a clean EOF is not. */
  ASSERT_OK(pp_release(&f.held, 0));
  RUN_UNTIL(test_stats(f.pool).conns == 0, 2000);
  pp_stats_t s = test_stats(f.pool);
  ASSERT_EQ(s.closed[PP_CLOSE_BROKEN] + s.closed[PP_CLOSE_REMOTE], 1);
  ASSERT_EQ(test_peer_info(f.peer).failures, rd.end_status == UV_EOF ? 0 : 1);
  ASSERT_EQ(rd.after_end, 0);
  test_reader_free(&rd);
  fixture_end(&f);
}

TEST(recycle_server_closes_right_after_accept) {
  /* The conn dies before or just after being lent: the lease holder sees it broken or gets
   * an EOF; either way a later acquire gets a fresh attempt. */
  srv_opts_t so = {0};
  so.close_on_accept = 1;
  fixture_t f = fixture_start(srv_echo_start(&so), NULL);
  pp_lease_t l;
  test_rec_t r;
  int st = test_acquire_wait(f.pool, &l, &r, f.peer, NULL);
  if (st == 0) {
    test_reader_t rd = {0};
    ASSERT_OK(pp_conn_read_start(l.conn, test_reader_cb, &rd));
    RUN_UNTIL(rd.ended == 1, 3000);
    ASSERT_LT(rd.end_status, 0);
    ASSERT_OK(pp_release(&l, 0));
    test_reader_free(&rd);
  }
  RUN_UNTIL(test_stats(f.pool).conns == 0, 2000);
  fixture_end(&f);
}

TEST(recycle_server_closes_idle_conn) {
  fixture_t f = fixture_start(srv_echo_start(NULL), NULL);
  test_acquire_release(f.pool, f.peer);
  KICK_AFTER_ACCEPTED(f.srv, 1);
  RUN_UNTIL(test_stats(f.pool).closed[PP_CLOSE_REMOTE] == 1, 3000);
  test_expect_gauges(f.pool, 0, 0, 0);
  ASSERT_EQ(test_stats(f.pool).closed[PP_CLOSE_BROKEN], 0);
  test_expect_unblamed(f.pool, f.peer);
  ASSERT_EQ(srv_client_conns(f.srv), 0); /* our side of the socket is closed too */
  fresh_conn_then_end(&f);
}

TEST(recycle_server_closes_after_delay_while_idle) {
  srv_opts_t so = {0};
  so.close_after_ms = 60;
  fixture_t f = fixture_start(srv_echo_start(&so), NULL);
  test_acquire_release(f.pool, f.peer);
  RUN_UNTIL(test_stats(f.pool).conns == 0, 3000);
  ASSERT_EQ(test_stats(f.pool).closed[PP_CLOSE_REMOTE], 1);
  ASSERT_EQ(test_peer_info(f.peer).failures, 0);
  fixture_end(&f);
}
