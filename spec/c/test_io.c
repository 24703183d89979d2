/* Stream I/O on a lease: write with completion, read start/stop, kept bytes, counters. */
#include "fixtures.h"

/* A pool with one peer at `srv` and a lease on it held in f->held. */
static void io_fixture(fixture_t *f, srv_t *srv) {
  *f = fixture_start(srv, NULL);
  fixture_hold(f);
}

TEST(io_echo_round_trip) {
  fixture_t f;
  io_fixture(&f, srv_echo_start(NULL));
  test_reader_t rd = {0};
  ASSERT_OK(CALL(pp_conn_read_start(f.held.conn, test_reader_cb, &rd)));
  ASSERT_EQ(test_write(f.held.conn, "hello world", 11), 0);
  RUN_UNTIL(rd.len == 11, 2000);
  ASSERT(memcmp(rd.buf, "hello world", 11) == 0);
  ASSERT_EQ(rd.ended, 0);
  ASSERT_OK(pp_conn_read_stop(f.held.conn));
  ASSERT_OK(pp_release(&f.held, 0));
  test_reader_free(&rd);
  fixture_end(&f);
}

TEST(io_counters_rise) {
  fixture_t f;
  io_fixture(&f, srv_echo_start(NULL));
  pp_conn_t *c = f.held.conn;
  test_reader_t rd = {0};
  ASSERT_OK(pp_conn_read_start(c, test_reader_cb, &rd));
  ASSERT_EQ(test_write(c, "0123456789", 10), 0);
  RUN_UNTIL(rd.len == 10, 2000);
  ASSERT_EQ(test_write(c, "abcde", 5), 0);
  RUN_UNTIL(rd.len == 15, 2000);
  pp_conn_info_t ci;
  pp_conn_info(c, &ci);
  ASSERT_EQ(ci.bytes_out, 15);
  ASSERT_EQ(ci.bytes_in, 15);
  ASSERT_EQ(ci.msgs_out, 2);
  ASSERT_GE(ci.msgs_in, 2);
  ASSERT_LE(ci.msgs_in, 15);
  ASSERT_EQ(ci.msgs_in, (uint64_t)rd.calls);
  pp_peer_info_t pi = test_peer_info(f.peer);
  ASSERT_EQ(pi.bytes_out, 15);
  ASSERT_EQ(pi.bytes_in, 15);
  ASSERT_EQ(pi.msgs_out, 2);
  ASSERT_EQ(pi.msgs_in, ci.msgs_in);
  pp_stats_t s = test_stats(f.pool);
  ASSERT_EQ(s.bytes_out, 15);
  ASSERT_EQ(s.bytes_in, 15);
  ASSERT_EQ(s.msgs_out, 2);
  ASSERT_EQ(s.msgs_in, ci.msgs_in);
  ASSERT_OK(pp_release(&f.held, 0));
  test_reader_free(&rd);
  fixture_end(&f);
}

TEST(io_peer_counters_survive_conn_close) {
  fixture_t f;
  io_fixture(&f, srv_echo_start(NULL));
  ASSERT_EQ(test_write(f.held.conn, "abc", 3), 0);
  ASSERT_OK(pp_release(&f.held, PP_EBROKEN));
  RUN_UNTIL(test_stats(f.pool).conns == 0, 2000);
  ASSERT_EQ(test_peer_info(f.peer).bytes_out, 3);
  ASSERT_EQ(test_stats(f.pool).bytes_out, 3);
  fixture_end(&f);
}

static void write_cb_rec(pp_write_t *req, int status) {
  ASSERT_NOT_IN_CALL();
  test_rec_t *r = req->data;
  r->calls++;
  r->status = status;
  r->order = ++test_order_counter;
}

TEST(io_write_callback_later_with_status) {
  fixture_t f;
  io_fixture(&f, srv_echo_start(NULL));
  pp_write_t w;
  test_rec_t wr = {0};
  memset(&w, 0, sizeof w);
  w.data = &wr;
  uv_buf_t b = uv_buf_init("x", 1);
  ASSERT_OK(CALL(pp_conn_write(&w, f.held.conn, &b, 1, write_cb_rec)));
  ASSERT_EQ(wr.calls, 0);
  RUN_UNTIL(wr.calls == 1, 2000);
  ASSERT_OK(wr.status);
  test_run_for(10);
  ASSERT_EQ(wr.calls, 1);
  ASSERT_OK(pp_release(&f.held, 0));
  fixture_end(&f);
}

TEST(io_write_several_buffers_in_order) {
  fixture_t f;
  io_fixture(&f, srv_echo_start(NULL));
  test_reader_t rd = {0};
  ASSERT_OK(pp_conn_read_start(f.held.conn, test_reader_cb, &rd));
  pp_write_t w[3];
  test_rec_t wr[3];
  const char *parts[] = {"one,", "two,", "three"};
  for (int i = 0; i < 3; i++) {
    memset(&w[i], 0, sizeof w[i]);
    memset(&wr[i], 0, sizeof wr[i]);
    w[i].data = &wr[i];
  }
  uv_buf_t bufs[2] = {uv_buf_init((char *)parts[0], 4), uv_buf_init((char *)parts[1], 4)};
  ASSERT_OK(pp_conn_write(&w[0], f.held.conn, bufs, 2, write_cb_rec));
  uv_buf_t b3 = uv_buf_init((char *)parts[2], 5);
  ASSERT_OK(pp_conn_write(&w[1], f.held.conn, &b3, 1, write_cb_rec));
  RUN_UNTIL(rd.len == 13, 2000);
  ASSERT(memcmp(rd.buf, "one,two,three", 13) == 0);
  ASSERT_EQ(wr[0].calls, 1);
  ASSERT_EQ(wr[1].calls, 1);
  ASSERT_LT(wr[0].order, wr[1].order);
  pp_conn_info_t ci;
  pp_conn_info(f.held.conn, &ci);
  ASSERT_EQ(ci.bytes_out, 13);
  ASSERT_EQ(ci.msgs_out, 2);
  ASSERT_OK(pp_release(&f.held, 0));
  test_reader_free(&rd);
  fixture_end(&f);
}

TEST(io_large_round_trip) {
  fixture_t f;
  io_fixture(&f, srv_echo_start(NULL));
  size_t n = 1 << 20;
  char *data = malloc(n);
  for (size_t i = 0; i < n; i++)
    data[i] = (char)(i * 31 + 7);
  test_reader_t rd = {0};
  ASSERT_OK(pp_conn_read_start(f.held.conn, test_reader_cb, &rd));
  pp_write_t w;
  test_rec_t wr = {0};
  memset(&w, 0, sizeof w);
  w.data = &wr;
  uv_buf_t b = uv_buf_init(data, (unsigned int)n);
  ASSERT_OK(pp_conn_write(&w, f.held.conn, &b, 1, write_cb_rec));
  RUN_UNTIL(rd.len == n && wr.calls == 1, 10000);
  ASSERT(memcmp(rd.buf, data, n) == 0);
  ASSERT_OK(wr.status);
  ASSERT_OK(pp_release(&f.held, 0));
  free(data);
  test_reader_free(&rd);
  fixture_end(&f);
}

TEST(io_read_stop_keeps_bytes_for_next_reader) {
  fixture_t f;
  io_fixture(&f, srv_echo_start(NULL));
  test_reader_t rd = {0};
  ASSERT_OK(pp_conn_read_start(f.held.conn, test_reader_cb, &rd));
  ASSERT_OK(pp_conn_read_stop(f.held.conn));
  ASSERT_EQ(test_write(f.held.conn, "kept bytes", 10), 0);
  RUN_UNTIL(srv_bytes_out(f.srv) == 10, 2000); /* the echo is on its way back */
  test_run_for(30);
  ASSERT_EQ(rd.calls, 0);
  ASSERT_OK(CALL(pp_conn_read_start(f.held.conn, test_reader_cb, &rd)));
  ASSERT_EQ(rd.calls, 0); /* delivered on a later tick, not inside read_start */
  RUN_UNTIL(rd.len == 10, 2000);
  ASSERT(memcmp(rd.buf, "kept bytes", 10) == 0);
  ASSERT_OK(pp_release(&f.held, 0));
  test_reader_free(&rd);
  fixture_end(&f);
}

TEST(io_bytes_before_any_reader_are_kept) {
  fixture_t f;
  io_fixture(&f, srv_echo_start(NULL));
  ASSERT_EQ(test_write(f.held.conn, "early", 5), 0);
  RUN_UNTIL(srv_bytes_out(f.srv) == 5, 2000);
  test_run_for(30);
  test_reader_t rd = {0};
  ASSERT_OK(CALL(pp_conn_read_start(f.held.conn, test_reader_cb, &rd)));
  ASSERT_EQ(rd.calls, 0);
  RUN_UNTIL(rd.len == 5, 2000);
  ASSERT(memcmp(rd.buf, "early", 5) == 0);
  ASSERT_OK(pp_release(&f.held, 0));
  test_reader_free(&rd);
  fixture_end(&f);
}

TEST(io_kept_bytes_beyond_64k_are_not_lost) {
  /* Reading pauses once 64 KiB are kept; nothing is lost, everything arrives after
   * read_start. */
  fixture_t f;
  io_fixture(&f, srv_echo_start(NULL));
  size_t n = 256 * 1024;
  char *data = malloc(n);
  for (size_t i = 0; i < n; i++)
    data[i] = (char)(i * 13 + 1);
  pp_write_t w;
  test_rec_t wr = {0};
  memset(&w, 0, sizeof w);
  w.data = &wr;
  uv_buf_t b = uv_buf_init(data, (unsigned int)n);
  ASSERT_OK(pp_conn_write(&w, f.held.conn, &b, 1, write_cb_rec));
  test_run_for(200);
  ASSERT_EQ(pp_conn_is_broken(f.held.conn), 0);
  test_reader_t rd = {0};
  ASSERT_OK(pp_conn_read_start(f.held.conn, test_reader_cb, &rd));
  RUN_UNTIL(rd.len == n && wr.calls == 1, 10000);
  ASSERT(memcmp(rd.buf, data, n) == 0);
  ASSERT_OK(pp_release(&f.held, 0));
  free(data);
  test_reader_free(&rd);
  fixture_end(&f);
}

TEST(io_second_reader_is_bad_state) {
  fixture_t f;
  io_fixture(&f, srv_echo_start(NULL));
  test_reader_t a = {0}, b = {0};
  ASSERT_OK(pp_conn_read_start(f.held.conn, test_reader_cb, &a));
  ASSERT_ERR(pp_conn_read_start(f.held.conn, test_reader_cb, &b), PP_ESTATE);
  ASSERT_OK(pp_conn_read_stop(f.held.conn));
  ASSERT_OK(pp_conn_read_stop(f.held.conn)); /* always 0 */
  ASSERT_OK(pp_conn_read_start(f.held.conn, test_reader_cb, &b));
  ASSERT_EQ(test_write(f.held.conn, "z", 1), 0);
  RUN_UNTIL(b.len == 1, 2000);
  ASSERT_EQ(a.calls, 0);
  ASSERT_OK(pp_release(&f.held, 0));
  test_reader_free(&a);
  test_reader_free(&b);
  fixture_end(&f);
}

TEST(io_reader_gets_eof_once_when_server_closes) {
  fixture_t f;
  io_fixture(&f, srv_echo_start(NULL));
  test_reader_t rd = {0};
  ASSERT_OK(pp_conn_read_start(f.held.conn, test_reader_cb, &rd));
  KICK_AFTER_ACCEPTED(f.srv, 1);
  RUN_UNTIL(rd.ended == 1, 2000);
  ASSERT_ERR2(rd.end_status, UV_EOF, UV_ECONNRESET);
  test_run_for(30);
  ASSERT_EQ(rd.after_end, 0);
  ASSERT_EQ(pp_conn_is_broken(f.held.conn), 1);
  ASSERT_OK(pp_release(&f.held, 0));
  test_reader_free(&rd);
  fixture_end(&f);
}

TEST(io_write_on_broken_conn_fails) {
  fixture_t f;
  io_fixture(&f, srv_echo_start(NULL));
  test_reader_t rd = {0};
  ASSERT_OK(pp_conn_read_start(f.held.conn, test_reader_cb, &rd));
  KICK_AFTER_ACCEPTED(f.srv, 1);
  RUN_UNTIL(rd.ended == 1, 2000);
  pp_write_t w;
  test_rec_t wr = {0};
  memset(&w, 0, sizeof w);
  w.data = &wr;
  uv_buf_t b = uv_buf_init("late", 4);
  int rc = CALL(pp_conn_write(&w, f.held.conn, &b, 1, write_cb_rec));
  if (rc == 0) {
    RUN_UNTIL(wr.calls == 1, 2000);
    ASSERT_LT(wr.status, 0);
  } else {
    ASSERT_LT(rc, 0);
    test_run_for(20);
    ASSERT_EQ(wr.calls, 0);
  }
  ASSERT_OK(pp_release(&f.held, 0));
  test_reader_free(&rd);
  fixture_end(&f);
}

TEST(io_read_start_on_broken_conn) {
  /* After the stream ended, a new reader learns it at once (PP_ECLOSED) or through one final
   * callback with the error; never silence. */
  fixture_t f;
  io_fixture(&f, srv_echo_start(NULL));
  test_reader_t a = {0};
  ASSERT_OK(pp_conn_read_start(f.held.conn, test_reader_cb, &a));
  KICK_AFTER_ACCEPTED(f.srv, 1);
  RUN_UNTIL(a.ended == 1, 2000);
  ASSERT_OK(pp_conn_read_stop(f.held.conn));
  test_reader_t b = {0};
  int rc = CALL(pp_conn_read_start(f.held.conn, test_reader_cb, &b));
  if (rc == 0) {
    RUN_UNTIL(b.ended == 1, 2000);
    ASSERT_LT(b.end_status, 0);
  } else {
    ASSERT_ERR(rc, PP_ECLOSED);
  }
  ASSERT_OK(pp_release(&f.held, 0));
  test_reader_free(&a);
  test_reader_free(&b);
  fixture_end(&f);
}

TEST(io_write_error_marks_conn_broken_and_closes_on_release) {
  srv_opts_t so = {0};
  so.close_after_bytes = 1;
  fixture_t f;
  io_fixture(&f, srv_echo_start(&so));
  /* Keep writing until the socket errors (the server closed after the first byte). */
  int failed = 0;
  for (int i = 0; i < 50 && !failed; i++) {
    int st = test_write(f.held.conn, "0123456789", 10);
    if (st < 0) failed = 1;
    test_run_for(5);
  }
  ASSERT(failed || pp_conn_is_broken(f.held.conn));
  ASSERT_EQ(pp_conn_is_broken(f.held.conn), 1);
  ASSERT_OK(pp_release(&f.held, 0));
  RUN_UNTIL(test_stats(f.pool).conns == 0, 2000);
  /* The server's close reached us as a reset (its unread bytes) or a clean EOF before the
   * write failed: only a reset is the peer's failure. */
  pp_stats_t s = test_stats(f.pool);
  ASSERT_EQ(test_peer_info(f.peer).failures, (int)s.closed[PP_CLOSE_BROKEN]);
  fixture_end(&f);
}

TEST(io_unix_round_trip) {
  fixture_t f;
  io_fixture(&f, srv_unix_start(NULL));
  test_reader_t rd = {0};
  ASSERT_OK(pp_conn_read_start(f.held.conn, test_reader_cb, &rd));
  ASSERT_EQ(test_write(f.held.conn, "via unix", 8), 0);
  RUN_UNTIL(rd.len == 8, 2000);
  ASSERT(memcmp(rd.buf, "via unix", 8) == 0);
  ASSERT_EQ(test_peer_info(f.peer).bytes_in, 8);
  ASSERT_OK(pp_release(&f.held, 0));
  test_reader_free(&rd);
  fixture_end(&f);
}

TEST(io_reader_released_with_lease) {
  /* Releasing a lease whose reader is set: the next holder can set its own reader. */
  fixture_t f;
  io_fixture(&f, srv_echo_start(NULL));
  test_reader_t a = {0}, b = {0};
  ASSERT_OK(pp_conn_read_start(f.held.conn, test_reader_cb, &a));
  pp_conn_t *c = f.held.conn;
  ASSERT_OK(pp_release(&f.held, 0));
  ASSERT_OK(test_acquire_wait(f.pool, &f.held, &f.held_rec, f.peer, NULL));
  ASSERT_PTR_EQ(f.held.conn, c);
  ASSERT_OK(pp_conn_read_start(f.held.conn, test_reader_cb, &b));
  ASSERT_EQ(test_write(f.held.conn, "q", 1), 0);
  RUN_UNTIL(b.len == 1, 2000);
  ASSERT_EQ(a.len, 0);
  ASSERT_OK(pp_release(&f.held, 0));
  test_reader_free(&a);
  test_reader_free(&b);
  fixture_end(&f);
}

TEST(io_conn_data) {
  fixture_t f;
  io_fixture(&f, srv_echo_start(NULL));
  int x;
  ASSERT_NULL(pp_conn_get_data(f.held.conn));
  pp_conn_set_data(f.held.conn, &x);
  ASSERT_PTR_EQ(pp_conn_get_data(f.held.conn), &x);
  ASSERT_OK(pp_release(&f.held, 0));
  fixture_end(&f);
}

TEST(io_unread_reply_is_not_handed_to_the_next_lessee) {
  /* Bytes the last holder left unread are a reply nobody will read: the next holder must not
   * receive them (the conn is closed or the bytes dropped). */
  fixture_t f;
  io_fixture(&f, srv_echo_start(NULL));
  ASSERT_EQ(test_write(f.held.conn, "stale", 5), 0);
  RUN_UNTIL(srv_bytes_out(f.srv) == 5, 2000);
  test_run_for(20);
  ASSERT_OK(pp_release(&f.held, 0));
  ASSERT_OK(test_acquire_wait(f.pool, &f.held, &f.held_rec, f.peer, NULL));
  test_reader_t rd = {0};
  ASSERT_OK(pp_conn_read_start(f.held.conn, test_reader_cb, &rd));
  ASSERT_EQ(test_write(f.held.conn, "fresh", 5), 0);
  RUN_UNTIL(rd.len >= 5, 2000);
  test_run_for(20);
  ASSERT_EQ(rd.len, 5);
  ASSERT(memcmp(rd.buf, "fresh", 5) == 0);
  ASSERT_OK(pp_release(&f.held, 0));
  test_reader_free(&rd);
  fixture_end(&f);
}

TEST(io_late_reply_on_idle_conn_is_not_handed_to_the_next_lessee) {
  /* The reply arrives after the release, while the conn idles: same rule. */
  fixture_t f;
  srv_opts_t so = {0};
  io_fixture(&f, srv_echo_start(&so));
  pp_write_t w;
  test_rec_t wr = {0};
  memset(&w, 0, sizeof w);
  w.data = &wr;
  uv_buf_t b = uv_buf_init("late!", 5);
  ASSERT_OK(pp_conn_write(&w, f.held.conn, &b, 1, write_cb_rec));
  ASSERT_OK(pp_release(&f.held, 0)); /* before the echo can be back */
  RUN_UNTIL(wr.calls == 1 && srv_bytes_out(f.srv) == 5, 2000);
  test_run_for(30); /* the echo reaches the idle conn */
  ASSERT_OK(test_acquire_wait(f.pool, &f.held, &f.held_rec, f.peer, NULL));
  test_reader_t rd = {0};
  ASSERT_OK(pp_conn_read_start(f.held.conn, test_reader_cb, &rd));
  ASSERT_EQ(test_write(f.held.conn, "fresh", 5), 0);
  RUN_UNTIL(rd.len >= 5 || rd.ended, 2000);
  test_run_for(20);
  ASSERT_EQ(rd.ended, 0);
  ASSERT_EQ(rd.len, 5);
  ASSERT(memcmp(rd.buf, "fresh", 5) == 0);
  ASSERT_OK(pp_release(&f.held, 0));
  test_reader_free(&rd);
  fixture_end(&f);
}

TEST(io_write_queue_size_grows_while_the_peer_does_not_read) {
  /* 32 MiB to a peer that never reads: the kernel takes a few MiB, the rest stays queued and
   * shows in pp_conn_write_queue_size until the conn closes. */
  srv_opts_t so = {0};
  so.no_read = 1;
  fixture_t f;
  io_fixture(&f, srv_echo_start(&so));
  pp_conn_t *c = f.held.conn;
  ASSERT_EQ(pp_conn_write_queue_size(c), 0);
  size_t n = 32u << 20;
  char *data = calloc(1, n);
  pp_write_t w;
  test_rec_t wr = {0};
  memset(&w, 0, sizeof w);
  w.data = &wr;
  uv_buf_t b = uv_buf_init(data, (unsigned int)n);
  ASSERT_OK(pp_conn_write(&w, c, &b, 1, write_cb_rec));
  size_t queued = pp_conn_write_queue_size(c);
  ASSERT_GT(queued, 0);
  ASSERT_LE(queued, n);
  test_run_for(100); /* the kernel's buffers fill up; nothing more leaves */
  size_t later = pp_conn_write_queue_size(c);
  ASSERT_GT(later, n / 2);
  ASSERT_LE(later, queued);
  ASSERT_EQ(wr.calls, 0);
  uv_buf_t one = uv_buf_init("x", 1);
  ASSERT_ERR(pp_conn_try_write(c, &one, 1), UV_EAGAIN); /* queued bytes go first */
  ASSERT_OK(pp_release(&f.held, PP_EBROKEN));
  RUN_UNTIL(wr.calls == 1, 2000);
  ASSERT_ERR(wr.status, UV_ECANCELED);
  free(data);
  fixture_end(&f);
}

TEST(io_write_queue_size_drains_to_zero) {
  fixture_t f;
  io_fixture(&f, srv_echo_start(NULL));
  test_reader_t rd = {0};
  ASSERT_OK(pp_conn_read_start(f.held.conn, test_reader_cb, &rd));
  size_t n = 8u << 20;
  char *data = calloc(1, n);
  pp_write_t w;
  test_rec_t wr = {0};
  memset(&w, 0, sizeof w);
  w.data = &wr;
  uv_buf_t b = uv_buf_init(data, (unsigned int)n);
  ASSERT_OK(pp_conn_write(&w, f.held.conn, &b, 1, write_cb_rec));
  RUN_UNTIL(wr.calls == 1, 10000);
  ASSERT_OK(wr.status);
  ASSERT_EQ(pp_conn_write_queue_size(f.held.conn), 0);
  RUN_UNTIL(rd.len == n, 10000);
  ASSERT_OK(pp_release(&f.held, 0));
  free(data);
  test_reader_free(&rd);
  fixture_end(&f);
}
