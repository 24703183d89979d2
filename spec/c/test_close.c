/* Closing the pool: pending acquires and notices end with PP_ECLOSED, leases are detached,
 * the close callback runs once, and the loop closes with 0. */
#include "fixtures_multi.h"

/* An echo server and a pool on it with engine defaults (test_pool(NULL)), one lease in
 * f->held. In place: the pool points at f->held. */
static void echo_held(fixture_t *f) {
  pp_options_t d;
  pp_options_init(&d);
  *f = fixture_start(srv_echo_start(NULL), &d);
  fixture_hold(f);
}

TEST(close_empty_pool) {
  pp_pool_t *pool = test_pool(NULL);
  ASSERT_EQ(pp_pool_is_closing(pool), 0);
  ASSERT_OK(CALL(pp_pool_close(pool, test_close_cb)));
  ASSERT_EQ(test_close_calls, 0); /* later, not inside the call */
  ASSERT_EQ(pp_pool_is_closing(pool), 1);
  test_finish_closed();
}

TEST(close_with_null_callback) {
  srv_t *srv = srv_echo_start(NULL);
  pp_peer_t *peer;
  pp_pool_t *pool = test_pool_on(srv, NULL, &peer);
  test_acquire_release(pool, peer);
  ASSERT_OK(pp_pool_close(pool, NULL));
  /* Nothing to wait for but the loop running dry. */
  for (int i = 0; i < 200 && uv_loop_alive(test_loop()); i++)
    test_tick();
  test_close_calls = 1;
  test_finish_closed();
  srv_stop(srv);
}

TEST(close_twice_is_closed) {
  pp_pool_t *pool = test_pool(NULL);
  ASSERT_OK(pp_pool_close(pool, test_close_cb));
  ASSERT_ERR(pp_pool_close(pool, test_close_cb), PP_ECLOSED);
  test_finish_closed();
}

TEST(close_ends_pending_dial_with_closed) {
  fixture_t f = fixture_start(srv_hang_start(), TEST_OPTS(o.connect_timeout = 10000));
  pp_lease_t l;
  test_rec_t r;
  ASSERT_OK(test_acquire_start(f.pool, &l, &r, f.peer, NULL));
  test_run_for(20);
  ASSERT_EQ(srv_client_conns(f.srv), 1);
  ASSERT_OK(CALL(pp_pool_close(f.pool, test_close_cb)));
  ASSERT_EQ(r.calls, 0);
  RUN_UNTIL(r.calls == 1, 1000);
  ASSERT_ERR(r.status, PP_ECLOSED);
  ASSERT_NULL(l.conn);
  test_finish_closed();
  ASSERT_EQ(r.calls, 1);
  ASSERT_EQ(srv_client_conns(f.srv), 0);
  srv_stop(f.srv);
}

TEST(close_ends_waiters_with_closed) {
  fixture_leases_t h;
  fixture_busy_queue(&h, NULL, 3);
  ASSERT_OK(pp_pool_close(h.f.pool, test_close_cb));
  RUN_UNTIL(h.r[0].calls && h.r[1].calls && h.r[2].calls, 1000);
  for (int i = 0; i < 3; i++) {
    ASSERT_EQ(h.r[i].calls, 1);
    ASSERT_ERR(h.r[i].status, PP_ECLOSED);
  }
  test_finish_closed();
  ASSERT_EQ(h.f.held_rec.calls, 1);
  srv_stop(h.f.srv);
}

TEST(close_ends_backoff_promptly) {
  /* A dial waiting out a long backoff does not hold the close up. */
  srv_t *srv = srv_refused_start();
  pp_peer_t *peer;
  pp_pool_t *pool = test_pool_on(srv, TEST_OPTS(o.retries = 5), &peer);
  int64_t delay = 10000;
  test_set_backoff(pool, test_backoff_fixed, &delay);
  pp_lease_t l;
  test_rec_t r;
  ASSERT_OK(test_acquire_start(pool, &l, &r, peer, NULL));
  RUN_UNTIL(test_stats(pool).connects_failed == 1, 2000);
  uint64_t t0 = test_now_ms();
  ASSERT_OK(pp_pool_close(pool, test_close_cb));
  RUN_UNTIL(test_close_calls == 1, 2000);
  ASSERT_LT(test_now_ms() - t0, 1000);
  ASSERT_EQ(r.calls, 1);
  ASSERT_ERR(r.status, PP_ECLOSED);
  test_finish_closed();
  srv_stop(srv);
}

TEST(close_fires_armed_notices_with_closed) {
  fixture_t f;
  fixture_busy(&f, NULL);
  pp_notice_t n1, n2;
  test_rec_t r1 = {0}, r2 = {0};
  memset(&n1, 0, sizeof n1);
  memset(&n2, 0, sizeof n2);
  n1.data = &r1;
  n2.data = &r2;
  ASSERT_OK(pp_notice_start(f.pool, &n1, f.peer, test_notice_cb));
  ASSERT_OK(pp_notice_start(f.pool, &n2, NULL, test_notice_cb));
  ASSERT_OK(CALL(pp_pool_close(f.pool, test_close_cb)));
  ASSERT_EQ(r1.calls + r2.calls, 0);
  RUN_UNTIL(r1.calls == 1 && r2.calls == 1, 1000);
  ASSERT_ERR(r1.status, PP_ECLOSED);
  ASSERT_ERR(r2.status, PP_ECLOSED);
  test_finish_closed();
  ASSERT_EQ(r1.calls, 1);
  ASSERT_EQ(r2.calls, 1);
  srv_stop(f.srv);
}

TEST(close_detaches_leases) {
  fixture_t f;
  echo_held(&f);
  ASSERT_OK(pp_pool_close(f.pool, test_close_cb));
  ASSERT_NULL(f.held.conn);
  /* Releasing a detached lease is a harmless no-op, while the pool is closing ... */
  ASSERT_ERR2(pp_release(&f.held, 0), 0, PP_ESTATE);
  RUN_UNTIL(test_close_calls == 1, 2000);
  /* ... and after the pool is gone (it must not touch freed memory: run under ASan). */
  ASSERT_ERR2(pp_release(&f.held, 0), 0, PP_ESTATE);
  ASSERT_ERR(pp_acquire_cancel(&f.held), PP_ESTATE);
  test_finish_closed();
  RUN_UNTIL(srv_open(f.srv) == 0, 2000);
  ASSERT_EQ(f.held_rec.calls, 1);
  srv_stop(f.srv);
}

TEST(close_detached_lease_released_only_after_close) {
  /* The holder learns of the close only later and releases then (the common case). */
  fixture_t f;
  echo_held(&f);
  ASSERT_OK(pp_pool_close(f.pool, test_close_cb));
  test_finish_closed();
  ASSERT_NULL(f.held.conn);
  ASSERT_ERR2(pp_release(&f.held, PP_EBROKEN), 0, PP_ESTATE);
  srv_stop(f.srv);
}

TEST(close_ends_reader_with_closed) {
  fixture_t f;
  echo_held(&f);
  test_reader_t rd = {0};
  ASSERT_OK(pp_conn_read_start(f.held.conn, test_reader_cb, &rd));
  ASSERT_OK(pp_pool_close(f.pool, test_close_cb));
  RUN_UNTIL(test_close_calls == 1, 2000);
  ASSERT_EQ(rd.ended, 1);
  ASSERT_ERR(rd.end_status, PP_ECLOSED);
  ASSERT_EQ(rd.after_end, 0);
  test_finish_closed();
  test_reader_free(&rd);
  srv_stop(f.srv);
}

static void count_write_cb(pp_write_t *req, int status) {
  ASSERT_NOT_IN_CALL();
  test_rec_t *r = req->data;
  r->calls++;
  r->status = status;
}

TEST(close_ends_pending_write) {
  fixture_t f;
  echo_held(&f);
  size_t n = 8 << 20; /* big enough not to complete in one go */
  char *data = calloc(1, n);
  pp_write_t w;
  test_rec_t wr = {0};
  memset(&w, 0, sizeof w);
  w.data = &wr;
  uv_buf_t b = uv_buf_init(data, (unsigned int)n);
  ASSERT_OK(pp_conn_write(&w, f.held.conn, &b, 1, count_write_cb));
  ASSERT_OK(pp_pool_close(f.pool, test_close_cb));
  RUN_UNTIL(test_close_calls == 1, 3000);
  /* The write's callback ran (once) before the pool finished closing. */
  ASSERT_EQ(wr.calls, 1);
  test_finish_closed();
  ASSERT_EQ(wr.calls, 1);
  free(data);
  srv_stop(f.srv);
}

TEST(close_closes_every_conn) {
  fixture_leases_t h;
  fixture_leases_start(&h, TEST_OPTS(o.max_per_peer = 4), 4);
  test_release_n(h.l, 2, 0); /* two idle, two leased */
  RUN_UNTIL(srv_open(h.f.srv) == 4, 2000);
  ASSERT_OK(pp_pool_close(h.f.pool, test_close_cb));
  RUN_UNTIL(test_close_calls == 1, 2000);
  ASSERT_EQ(srv_client_conns(h.f.srv), 0);
  test_finish_closed();
  RUN_UNTIL(srv_open(h.f.srv) == 0, 2000);
  srv_stop(h.f.srv);
}

static pp_stats_t stats_in_close_cb;

static void close_cb_with_stats(pp_pool_t *pool) {
  pp_pool_stats(pool, &stats_in_close_cb);
  test_close_cb(pool);
}

TEST(close_counts_closed_conns) {
  fixture_leases_t h;
  fixture_leases_start(&h, TEST_OPTS(o.max_per_peer = 2), 2);
  test_release_n(h.l, 1, 0);
  ASSERT_OK(pp_pool_close(h.f.pool, close_cb_with_stats));
  test_finish_closed();
  ASSERT_EQ(stats_in_close_cb.closed[PP_CLOSE_CLOSED], 2);
  ASSERT_EQ(stats_in_close_cb.conns, 0);
  ASSERT_EQ(stats_in_close_cb.idle, 0);
  ASSERT_EQ(stats_in_close_cb.active, 0);
  ASSERT_EQ(stats_in_close_cb.waiters, 0);
  srv_stop(h.f.srv);
}

TEST(close_refuses_new_work) {
  fixture_t f = fixture_start(srv_echo_start(NULL), NULL);
  test_acquire_release(f.pool, f.peer);
  ASSERT_OK(pp_pool_close(f.pool, test_close_cb));
  test_acquire_fails(f.pool, f.peer, NULL, PP_ECLOSED);
  test_acquire_fails(f.pool, NULL, NULL, PP_ECLOSED);
  test_try_acquire_fails(f.pool, f.peer, PP_ECLOSED);
  pp_notice_t n;
  test_rec_t nr;
  ASSERT_ERR(test_notice_start(f.pool, &n, &nr, f.peer), PP_ECLOSED);
  test_finish_closed();
  ASSERT_EQ(nr.calls, 0);
  srv_stop(f.srv);
}

static pp_pool_t *cb_pool;

static void close_from_acquire_cb(pp_lease_t *lease, int status) {
  test_acquire_cb(lease, status);
  ASSERT_OK(pp_pool_close(cb_pool, test_close_cb));
  ASSERT_ERR2(pp_release(lease, 0), 0, PP_ESTATE);
}

TEST(close_from_inside_acquire_callback) {
  srv_t *srv = srv_echo_start(NULL);
  pp_pool_t *pool = test_pool(NULL);
  cb_pool = pool;
  pp_peer_t *peer = test_peer(pool, srv_addr(srv));
  pp_lease_t l, l2;
  test_rec_t r, r2;
  memset(&l, 0, sizeof l);
  memset(&r, 0, sizeof r);
  l.data = &r;
  ASSERT_OK(pp_acquire(pool, &l, peer, NULL, close_from_acquire_cb));
  ASSERT_OK(test_acquire_start(pool, &l2, &r2, peer, NULL)); /* waits for a 2nd conn */
  RUN_UNTIL(r.calls == 1, 3000);
  RUN_UNTIL(r2.calls == 1, 3000);
  ASSERT_ERR2(r2.status, 0, PP_ECLOSED);
  test_finish_closed();
  srv_stop(srv);
}

static void close_from_state_cb(pp_pool_t *pool, pp_peer_t *peer, pp_peer_state_t from,
                                pp_peer_state_t to) {
  test_state_cb(pool, peer, from, to);
  if (to == PP_PEER_READY && !pp_pool_is_closing(pool))
    ASSERT_OK(pp_pool_close(pool, test_close_cb));
}

TEST(close_from_inside_state_callback) {
  srv_t *srv = srv_echo_start(NULL);
  pp_pool_t *pool = test_pool(NULL);
  pp_pool_on_state(pool, close_from_state_cb);
  pp_peer_t *peer = test_peer(pool, srv_addr(srv));
  pp_lease_t l;
  test_rec_t r;
  ASSERT_OK(test_acquire_start(pool, &l, &r, peer, NULL));
  RUN_UNTIL(test_close_calls == 1, 3000);
  ASSERT_EQ(r.calls, 1);
  test_finish_closed();
  srv_stop(srv);
}

TEST(close_pool_with_many_objects) {
  /* Lots of everything at once: idle and leased conns, dials, backoffs, waiters, notices. */
  srv_t *echo = srv_echo_start(NULL), *hang = srv_hang_start(), *ref = srv_refused_start();
  pp_pool_t *pool =
      test_pool(TEST_OPTS(o.max_per_peer = 2; o.retries = 3; o.connect_timeout = 5000));
  int64_t delay = 5000;
  test_set_backoff(pool, test_backoff_fixed, &delay);
  pp_peer_t *pe = test_peer(pool, srv_addr(echo));
  pp_peer_t *ph = test_peer(pool, srv_addr(hang));
  pp_peer_t *pr = test_peer(pool, srv_addr(ref));
  enum { N = 10 };
  pp_lease_t l[N];
  test_rec_t r[N];
  ASSERT_OK(test_acquire_wait(pool, &l[0], &r[0], pe, NULL));
  ASSERT_OK(test_acquire_wait(pool, &l[1], &r[1], pe, NULL));
  ASSERT_OK(pp_release(&l[1], 0));
  ASSERT_OK(test_acquire_start(pool, &l[1], &r[1], pe, NULL)); /* gets the idle one */
  ASSERT_OK(test_acquire_start(pool, &l[2], &r[2], pe, NULL)); /* waits */
  ASSERT_OK(test_acquire_start(pool, &l[3], &r[3], ph, NULL)); /* dial hangs */
  ASSERT_OK(test_acquire_start(pool, &l[4], &r[4], ph, NULL));
  ASSERT_OK(test_acquire_start(pool, &l[5], &r[5], ph, NULL)); /* waits */
  ASSERT_OK(test_acquire_start(pool, &l[6], &r[6], pr, NULL)); /* refused, then backoff */
  pp_notice_t n;
  test_rec_t nr;
  ASSERT_OK(test_notice_start(pool, &n, &nr, pe));
  test_run_for(50);
  ASSERT_OK(pp_pool_close(pool, test_close_cb));
  test_finish_closed();
  for (int i = 0; i < 7; i++)
    ASSERT_EQ(r[i].calls, 1);
  for (int i = 2; i < 7; i++)
    ASSERT_ERR(r[i].status, PP_ECLOSED);
  ASSERT_EQ(nr.calls, 1);
  srv_stop(echo);
  srv_stop(hang);
  srv_stop(ref);
}
