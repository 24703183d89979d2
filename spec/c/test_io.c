/* Stream I/O on a lease: write with completion, read start/stop, kept bytes, counters. */
#include "fixtures.h"

/* fixture_held(f, srv) with the test defaults, and `rd` reading on f->held (started inside CALL:
 * the reader is never called inside pp_conn_read_start). */
static void io_reading(fixture_t *f, srv_t *srv, test_reader_t *rd) {
  fixture_held(f, srv, NULL);
  ASSERT_OK(CALL(pp_conn_read_start(f->held.conn, test_reader_cb, rd)));
}

static void write_cb_rec(pp_write_t *req, int status) {
  ASSERT_NOT_IN_CALL();
  test_rec_t *r = req->data;
  r->calls++;
  r->status = status;
  r->order = ++test_order_counter;
}

/* A write request and the record of its callback. */
typedef struct {
  pp_write_t req;
  test_rec_t rec;
} io_write_t;

/* Start a write of `len` bytes at `data` on the held conn, recorded into w->rec (inside
 * CALL). Returns what pp_conn_write returned. */
static int io_write_start(fixture_t *f, io_write_t *w, const void *data, size_t len) {
  memset(w, 0, sizeof *w);
  w->req.data = &w->rec;
  uv_buf_t b = uv_buf_init((char *)data, (unsigned int)len);
  return CALL(pp_conn_write(&w->req, f->held.conn, &b, 1, write_cb_rec));
}

/* A held conn to an echo server, and a write of `len` bytes at `data` started on it (it must be
 * accepted), recorded in `w`. */
static void io_writing(fixture_t *f, io_write_t *w, const void *data, size_t len) {
  fixture_held(f, srv_echo_start(NULL), NULL);
  ASSERT_OK(io_write_start(f, w, data, len));
}

/* Write `s` on the held conn and wait until the reader `rd` has it all, then compare. */
static void io_echo(fixture_t *f, test_reader_t *rd, const char *s) {
  size_t n = strlen(s), before = rd->len;
  ASSERT_EQ(test_write(f->held.conn, s, n), 0);
  RUN_UNTIL(rd->len == before + n, 2000);
  ASSERT(memcmp(rd->buf + before, s, n) == 0);
}

/* `n` bytes of a pattern that shows misordered or lost bytes (the caller frees it). */
static char *io_pattern(size_t n, int mul, int add) {
  char *data = malloc(n);
  for (size_t i = 0; i < n; i++)
    data[i] = (char)(i * (size_t)mul + (size_t)add);
  return data;
}

/* A held conn to an echo server with reader `rd` on it; then the server closes the conn: wait
 * until the reader saw the end. */
static void io_server_closed(fixture_t *f, test_reader_t *rd) {
  fixture_held(f, srv_echo_start(NULL), NULL);
  ASSERT_OK(pp_conn_read_start(f->held.conn, test_reader_cb, rd));
  KICK_AFTER_ACCEPTED(f->srv, 1);
  RUN_UNTIL(rd->ended == 1, 2000);
}

/* Write `s` on the held conn, with no reader, until its echo has reached our end (the server
 * sent it all, and a little time for it to arrive). */
static void io_echo_unread(fixture_t *f, const char *s) {
  size_t n = strlen(s);
  ASSERT_EQ(test_write(f->held.conn, s, n), 0);
  RUN_UNTIL(srv_bytes_out(f->srv) == n, 2000);
  test_run_for(30);
}

/* Release the held lease healthy, free the reader (NULL: none) and end the fixture. */
static void io_end(fixture_t *f, test_reader_t *rd) {
  ASSERT_OK(pp_release(&f->held, 0));
  if (rd != NULL) test_reader_free(rd);
  fixture_end(f);
}

/* Reader `b` takes over f.held's conn from `a`: an echo of `text` reaches `b`, and `a` is never
 * called. Frees both readers and ends the test. */
static void io_reader_takes_over(fixture_t *f, test_reader_t *a, test_reader_t *b,
                                 const char *text) {
  ASSERT_OK(pp_conn_read_start(f->held.conn, test_reader_cb, b));
  io_echo(f, b, text);
  ASSERT_EQ(a->calls, 0);
  test_reader_free(a);
  io_end(f, b);
}

TEST(io_echo_round_trip) {
  test_reader_t rd = {0};
  fixture_t f;
  io_reading(&f, srv_echo_start(NULL), &rd);
  io_echo(&f, &rd, "hello world");
  ASSERT_EQ(rd.ended, 0);
  ASSERT_OK(pp_conn_read_stop(f.held.conn));
  io_end(&f, &rd);
}

TEST(io_counters_rise) {
  test_reader_t rd = {0};
  fixture_t f;
  io_reading(&f, srv_echo_start(NULL), &rd);
  pp_conn_t *c = f.held.conn;
  io_echo(&f, &rd, "0123456789");
  io_echo(&f, &rd, "abcde");
  pp_conn_info_t ci;
  pp_conn_info(c, &ci);
  ASSERT_EQ(ci.bytes_out, 15);
  ASSERT_EQ(ci.bytes_in, 15);
  ASSERT_EQ(ci.msgs_out, 2);
  ASSERT_GE(ci.msgs_in, 2);
  ASSERT_LE(ci.msgs_in, 15);
  ASSERT_EQ(ci.msgs_in, (uint64_t)rd.calls);
  /* The peer's counters, then the pool's: the same sums. */
  pp_peer_info_t pi = test_peer_info(f.peer);
  pp_stats_t s = test_stats(f.pool);
  uint64_t sums[2][4] = {{pi.bytes_out, pi.bytes_in, pi.msgs_out, pi.msgs_in},
                         {s.bytes_out, s.bytes_in, s.msgs_out, s.msgs_in}};
  for (int i = 0; i < 2; i++) {
    ASSERT_EQ(sums[i][0], 15);
    ASSERT_EQ(sums[i][1], 15);
    ASSERT_EQ(sums[i][2], 2);
    ASSERT_EQ(sums[i][3], ci.msgs_in);
  }
  io_end(&f, &rd);
}

TEST(io_peer_counters_survive_conn_close) {
  fixture_t f;
  fixture_held(&f, srv_echo_start(NULL), NULL);
  ASSERT_EQ(test_write(f.held.conn, "abc", 3), 0);
  ASSERT_OK(pp_release(&f.held, PP_EBROKEN));
  RUN_UNTIL(test_stats(f.pool).conns == 0, 2000);
  ASSERT_EQ(test_peer_info(f.peer).bytes_out, 3);
  ASSERT_EQ(test_stats(f.pool).bytes_out, 3);
  fixture_end(&f);
}

TEST(io_write_callback_later_with_status) {
  fixture_t f;
  io_write_t w;
  io_writing(&f, &w, "x", 1);
  ASSERT_EQ(w.rec.calls, 0);
  RUN_UNTIL(w.rec.calls == 1, 2000);
  ASSERT_OK(w.rec.status);
  test_run_for(10);
  ASSERT_EQ(w.rec.calls, 1);
  io_end(&f, NULL);
}

TEST(io_write_several_buffers_in_order) {
  test_reader_t rd = {0};
  fixture_t f;
  io_reading(&f, srv_echo_start(NULL), &rd);
  pp_write_t w[2];
  test_rec_t wr[2] = {{0}};
  for (int i = 0; i < 2; i++) {
    memset(&w[i], 0, sizeof w[i]);
    w[i].data = &wr[i];
  }
  uv_buf_t bufs[2] = {uv_buf_init("one,", 4), uv_buf_init("two,", 4)};
  ASSERT_OK(pp_conn_write(&w[0], f.held.conn, bufs, 2, write_cb_rec));
  uv_buf_t b3 = uv_buf_init("three", 5);
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
  io_end(&f, &rd);
}

TEST(io_large_round_trip) {
  size_t n = 1 << 20;
  char *data = io_pattern(n, 31, 7);
  test_reader_t rd = {0};
  fixture_t f;
  io_reading(&f, srv_echo_start(NULL), &rd);
  io_write_t w;
  ASSERT_OK(io_write_start(&f, &w, data, n));
  RUN_UNTIL(rd.len == n && w.rec.calls == 1, 10000);
  ASSERT(memcmp(rd.buf, data, n) == 0);
  ASSERT_OK(w.rec.status);
  free(data);
  io_end(&f, &rd);
}

TEST(io_read_stop_keeps_bytes_for_next_reader) {
  test_reader_t rd = {0};
  fixture_t f;
  io_reading(&f, srv_echo_start(NULL), &rd);
  ASSERT_OK(pp_conn_read_stop(f.held.conn));
  io_echo_unread(&f, "kept bytes");
  ASSERT_EQ(rd.calls, 0);
  ASSERT_OK(CALL(pp_conn_read_start(f.held.conn, test_reader_cb, &rd)));
  ASSERT_EQ(rd.calls, 0); /* delivered on a later tick, not inside read_start */
  RUN_UNTIL(rd.len == 10, 2000);
  ASSERT(memcmp(rd.buf, "kept bytes", 10) == 0);
  io_end(&f, &rd);
}

TEST(io_bytes_before_any_reader_are_kept) {
  fixture_t f;
  fixture_held(&f, srv_echo_start(NULL), NULL);
  io_echo_unread(&f, "early");
  test_reader_t rd = {0};
  ASSERT_OK(CALL(pp_conn_read_start(f.held.conn, test_reader_cb, &rd)));
  ASSERT_EQ(rd.calls, 0);
  RUN_UNTIL(rd.len == 5, 2000);
  ASSERT(memcmp(rd.buf, "early", 5) == 0);
  io_end(&f, &rd);
}

TEST(io_kept_bytes_beyond_64k_are_not_lost) {
  /* Reading pauses once 64 KiB are kept; nothing is lost, everything arrives after
   * read_start. */
  size_t n = 256 * 1024;
  char *data = io_pattern(n, 13, 1);
  fixture_t f;
  io_write_t w;
  io_writing(&f, &w, data, n);
  test_run_for(200);
  ASSERT_EQ(pp_conn_is_broken(f.held.conn), 0);
  test_reader_t rd = {0};
  ASSERT_OK(pp_conn_read_start(f.held.conn, test_reader_cb, &rd));
  RUN_UNTIL(rd.len == n && w.rec.calls == 1, 10000);
  ASSERT(memcmp(rd.buf, data, n) == 0);
  free(data);
  io_end(&f, &rd);
}

TEST(io_second_reader_is_bad_state) {
  test_reader_t a = {0}, b = {0};
  fixture_t f;
  io_reading(&f, srv_echo_start(NULL), &a);
  ASSERT_ERR(pp_conn_read_start(f.held.conn, test_reader_cb, &b), PP_ESTATE);
  ASSERT_OK(pp_conn_read_stop(f.held.conn));
  ASSERT_OK(pp_conn_read_stop(f.held.conn)); /* always 0 */
  io_reader_takes_over(&f, &a, &b, "z");
}

TEST(io_reader_gets_eof_once_when_server_closes) {
  fixture_t f;
  test_reader_t rd = {0};
  io_server_closed(&f, &rd);
  ASSERT_ERR2(rd.end_status, UV_EOF, UV_ECONNRESET);
  test_run_for(30);
  ASSERT_EQ(rd.after_end, 0);
  ASSERT_EQ(pp_conn_is_broken(f.held.conn), 1);
  io_end(&f, &rd);
}

TEST(io_write_on_broken_conn_fails) {
  fixture_t f;
  test_reader_t rd = {0};
  io_server_closed(&f, &rd);
  io_write_t w;
  int rc = io_write_start(&f, &w, "late", 4);
  if (rc == 0) {
    RUN_UNTIL(w.rec.calls == 1, 2000);
    ASSERT_LT(w.rec.status, 0);
  } else {
    ASSERT_LT(rc, 0);
    test_run_for(20);
    ASSERT_EQ(w.rec.calls, 0);
  }
  io_end(&f, &rd);
}

TEST(io_read_start_on_broken_conn) {
  /* After the stream ended, a new reader learns it at once (PP_ECLOSED) or through one final
   * callback with the error; never silence. */
  fixture_t f;
  test_reader_t a = {0};
  io_server_closed(&f, &a);
  ASSERT_OK(pp_conn_read_stop(f.held.conn));
  test_reader_t b = {0};
  int rc = CALL(pp_conn_read_start(f.held.conn, test_reader_cb, &b));
  if (rc == 0) {
    RUN_UNTIL(b.ended == 1, 2000);
    ASSERT_LT(b.end_status, 0);
  } else {
    ASSERT_ERR(rc, PP_ECLOSED);
  }
  test_reader_free(&a);
  io_end(&f, &b);
}

TEST(io_write_error_marks_conn_broken_and_closes_on_release) {
  srv_opts_t so = {0};
  so.close_after_bytes = 1;
  fixture_t f;
  fixture_held(&f, srv_echo_start(&so), NULL);
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
  test_reader_t rd = {0};
  fixture_t f;
  io_reading(&f, srv_unix_start(NULL), &rd);
  io_echo(&f, &rd, "via unix");
  ASSERT_EQ(test_peer_info(f.peer).bytes_in, 8);
  io_end(&f, &rd);
}

TEST(io_reader_released_with_lease) {
  /* Releasing a lease whose reader is set: the next holder can set its own reader. */
  test_reader_t a = {0}, b = {0};
  fixture_t f;
  io_reading(&f, srv_echo_start(NULL), &a);
  pp_conn_t *c = f.held.conn;
  ASSERT_OK(pp_release(&f.held, 0));
  ASSERT_OK(test_acquire_wait(f.pool, &f.held, &f.held_rec, f.peer, NULL));
  ASSERT_PTR_EQ(f.held.conn, c);
  io_reader_takes_over(&f, &a, &b, "q");
}

TEST(io_conn_data) {
  fixture_t f;
  fixture_held(&f, srv_echo_start(NULL), NULL);
  int x;
  ASSERT_NULL(pp_conn_get_data(f.held.conn));
  pp_conn_set_data(f.held.conn, &x);
  ASSERT_PTR_EQ(pp_conn_get_data(f.held.conn), &x);
  io_end(&f, NULL);
}

/* The next holder of the conn (the same one, or a new one if the pool closed it) writes
 * "fresh": it must read back exactly that, no stale bytes before it and no end. */
static void io_next_lessee_reads_only_its_reply(fixture_t *f) {
  ASSERT_OK(test_acquire_wait(f->pool, &f->held, &f->held_rec, f->peer, NULL));
  test_reader_t rd = {0};
  ASSERT_OK(pp_conn_read_start(f->held.conn, test_reader_cb, &rd));
  ASSERT_EQ(test_write(f->held.conn, "fresh", 5), 0);
  RUN_UNTIL(rd.len >= 5 || rd.ended, 2000);
  test_run_for(20);
  ASSERT_EQ(rd.ended, 0);
  ASSERT_EQ(rd.len, 5);
  ASSERT(memcmp(rd.buf, "fresh", 5) == 0);
  io_end(f, &rd);
}

TEST(io_unread_reply_is_not_handed_to_the_next_lessee) {
  /* Bytes the last holder left unread are a reply nobody will read: the next holder must not
   * receive them (the conn is closed or the bytes dropped). */
  fixture_t f;
  fixture_held(&f, srv_echo_start(NULL), NULL);
  io_echo_unread(&f, "stale");
  ASSERT_OK(pp_release(&f.held, 0));
  io_next_lessee_reads_only_its_reply(&f);
}

TEST(io_late_reply_on_idle_conn_is_not_handed_to_the_next_lessee) {
  /* The reply arrives after the release, while the conn idles: same rule. */
  fixture_t f;
  io_write_t w;
  io_writing(&f, &w, "late!", 5);
  ASSERT_OK(pp_release(&f.held, 0)); /* before the echo can be back */
  RUN_UNTIL(w.rec.calls == 1 && srv_bytes_out(f.srv) == 5, 2000);
  test_run_for(30); /* the echo reaches the idle conn */
  io_next_lessee_reads_only_its_reply(&f);
}

TEST(io_write_queue_size_grows_while_the_peer_does_not_read) {
  /* 32 MiB to a peer that never reads: the kernel takes a few MiB, the rest stays queued and
   * shows in pp_conn_write_queue_size until the conn closes. */
  srv_opts_t so = {0};
  so.no_read = 1;
  fixture_t f;
  fixture_held(&f, srv_echo_start(&so), NULL);
  pp_conn_t *c = f.held.conn;
  ASSERT_EQ(pp_conn_write_queue_size(c), 0);
  size_t n = 32u << 20;
  char *data = calloc(1, n);
  io_write_t w;
  ASSERT_OK(io_write_start(&f, &w, data, n));
  size_t queued = pp_conn_write_queue_size(c);
  ASSERT_GT(queued, 0);
  ASSERT_LE(queued, n);
  test_run_for(100); /* the kernel's buffers fill up; nothing more leaves */
  size_t later = pp_conn_write_queue_size(c);
  ASSERT_GT(later, n / 2);
  ASSERT_LE(later, queued);
  ASSERT_EQ(w.rec.calls, 0);
  uv_buf_t one = uv_buf_init("x", 1);
  ASSERT_ERR(pp_conn_try_write(c, &one, 1), UV_EAGAIN); /* queued bytes go first */
  ASSERT_OK(pp_release(&f.held, PP_EBROKEN));
  RUN_UNTIL(w.rec.calls == 1, 2000);
  ASSERT_ERR(w.rec.status, UV_ECANCELED);
  free(data);
  fixture_end(&f);
}

TEST(io_write_queue_size_drains_to_zero) {
  test_reader_t rd = {0};
  fixture_t f;
  io_reading(&f, srv_echo_start(NULL), &rd);
  size_t n = 8u << 20;
  char *data = calloc(1, n);
  io_write_t w;
  ASSERT_OK(io_write_start(&f, &w, data, n));
  RUN_UNTIL(w.rec.calls == 1, 10000);
  ASSERT_OK(w.rec.status);
  ASSERT_EQ(pp_conn_write_queue_size(f.held.conn), 0);
  RUN_UNTIL(rd.len == n, 10000);
  free(data);
  io_end(&f, &rd);
}
