/* Blame: only what is the peer's fault counts against it. A server that answers and closes
 * (an HTTP/1.1 server answering `Connection: close`), a clean EOF, a caller's ordinary close
 * and an EOF verdict count nothing; a reset, an explicit broken verdict and a socket error do.
 * The pools here eject at the first failure (with another peer beside, so that the one under
 * test may be ejected), so any wrong blame would show as an ejection. */
#include "fixtures_multi.h"

#define REQUEST "GET / HTTP/1.1\r\nHost: test\r\n\r\n"

/* A pool that ejects a peer at its first failure, with an echo server that has `so` (NULL =
 * plain echo) as peer[0], the one under test, and a spare echo server beside it. */
static fixture_peers_t strict_start(const srv_opts_t *so) {
  fixture_peers_t f = fixture_peers_start(2, (srv_t *[]){srv_echo_start(so), srv_echo_start(NULL)},
                                          TEST_OPTS(o.eject_after = 1; o.eject_max_percent = 100));
  pp_pool_on_state(f.pool, test_state_cb);
  return f;
}

/* Send the request on a lease of peer[0] and read its reply; with `to_eof`, until the server
 * ends the stream. Returns the reader (its end status tells how the stream ended). */
static test_reader_t request(fixture_peers_t *f, pp_lease_t *l, int to_eof) {
  test_rec_t r;
  test_reader_t rd = {0};
  ASSERT_OK(test_acquire_wait(f->pool, l, &r, f->peer[0], NULL));
  ASSERT_OK(pp_conn_read_start(l->conn, test_reader_cb, &rd));
  ASSERT_OK(test_write(l->conn, REQUEST, strlen(REQUEST)));
  if (to_eof)
    RUN_UNTIL(rd.ended == 1, 2000);
  else
    RUN_UNTIL(rd.len == strlen(REQUEST), 2000);
  return rd;
}

static void assert_never_blamed(fixture_peers_t *f) {
  test_expect_unblamed(f->pool, f->peer[0]);
  ASSERT_EQ(test_find_transition(f->peer[0], PP_PEER_EJECTED, 0), -1);
  ASSERT_EQ(test_find_transition(f->peer[0], PP_PEER_FAILED, 0), -1);
}

/* An HTTP/1.1 server answering `Connection: close`. */
static const srv_opts_t ANSWER_AND_CLOSE = {.answer_and_close = 1};

TEST(blame_server_that_answers_and_closes_serves_every_request) {
  /* Each conn carries one request: the reply, then EOF. The holder reads to the end and
   * releases; 20 of 20 are served and the peer is never blamed. */
  fixture_peers_t f = strict_start(&ANSWER_AND_CLOSE);
  int served = 0;
  for (int i = 0; i < 20; i++) {
    pp_lease_t l;
    test_reader_t rd = request(&f, &l, 1);
    ASSERT_ERR(rd.end_status, UV_EOF);
    if (rd.len == strlen(REQUEST) && memcmp(rd.buf, REQUEST, rd.len) == 0) served++;
    ASSERT_OK(pp_release(&l, 0));
    test_reader_free(&rd);
  }
  ASSERT_EQ(served, 20);
  ASSERT_EQ(srv_accepted(f.srv[0]), 20);
  assert_never_blamed(&f);
  ASSERT_EQ(test_stats(f.pool).closed[PP_CLOSE_REMOTE], 20);
  fixture_peers_end(&f);
}

TEST(blame_connection_close_released_not_reusable_serves_every_request) {
  /* The holder knows from the reply (`Connection: close`) that the conn is done and releases
   * it with PP_ENOREUSE without waiting for the EOF: the caller's ordinary close. */
  fixture_peers_t f = strict_start(&ANSWER_AND_CLOSE);
  for (int i = 0; i < 20; i++) {
    pp_lease_t l;
    test_reader_t rd = request(&f, &l, 0);
    ASSERT_OK(pp_release(&l, PP_ENOREUSE));
    test_reader_free(&rd);
  }
  ASSERT_EQ(srv_accepted(f.srv[0]), 20);
  assert_never_blamed(&f);
  fixture_peers_end(&f);
}

TEST(blame_eof_verdict_is_not_a_failure) {
  /* A holder that passes on what it saw, UV_EOF, blames nobody: the conn is discarded. */
  fixture_peers_t f = strict_start(NULL);
  pp_lease_t l;
  test_rec_t r;
  ASSERT_OK(test_acquire_wait(f.pool, &l, &r, f.peer[0], NULL));
  ASSERT_OK(pp_release(&l, UV_EOF));
  ASSERT_EQ(test_stats(f.pool).closed[PP_CLOSE_DISCARDED], 1);
  assert_never_blamed(&f);
  fixture_peers_end(&f);
}

TEST(blame_reset_mid_request_is_a_failure) {
  /* The server resets the conn when the request arrives: the reader gets ECONNRESET, the conn
   * closes as broken and the peer is blamed (here: ejected at once). */
  fixture_peers_t f = strict_start(&(srv_opts_t){.reset_on_read = 1});
  pp_lease_t l;
  test_reader_t rd = request(&f, &l, 1);
  ASSERT_ERR(rd.end_status, UV_ECONNRESET);
  ASSERT_OK(pp_release(&l, 0));
  pp_stats_t s = test_stats(f.pool);
  ASSERT_EQ(s.closed[PP_CLOSE_BROKEN], 1);
  ASSERT_EQ(s.ejections, 1);
  ASSERT_EQ(test_peer_info(f.peer[0]).last_error, UV_ECONNRESET);
  test_reader_free(&rd);
  fixture_peers_end(&f);
}

TEST(blame_broken_verdict_after_clean_eof_counts_once) {
  /* The server hung up cleanly, but the holder knows the reply was cut short and says so
   * (PP_EBROKEN): that counts, once for the conn. */
  fixture_peers_t f = strict_start(&ANSWER_AND_CLOSE);
  pp_lease_t l;
  test_reader_t rd = request(&f, &l, 1);
  ASSERT_ERR(rd.end_status, UV_EOF);
  ASSERT_EQ(test_peer_info(f.peer[0]).failures, 0);
  ASSERT_OK(pp_release(&l, PP_EBROKEN));
  ASSERT_EQ(test_peer_info(f.peer[0]).failures, 1);
  ASSERT_EQ(test_stats(f.pool).released_broken, 1);
  test_reader_free(&rd);
  fixture_peers_end(&f);
}

TEST(blame_shared_conn_broken_by_every_holder_counts_once) {
  /* Three holders of one shared conn all release it as broken: one failure, not three. */
  fixture_leases_t h;
  fixture_leases_start(&h, TEST_OPTS(o.client_limit = 3; o.eject_after = 0), 3);
  ASSERT_PTR_EQ(h.l[0].conn, h.l[2].conn);
  test_release_n(h.l, 3, PP_EBROKEN);
  ASSERT_EQ(test_peer_info(h.f.peer).failures, 1);
  fixture_end(&h.f);
}
