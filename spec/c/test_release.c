/* What a release status does to the conn and to its peer: 0 returns a clean conn to service
 * (one holding unread bytes is closed instead, unless keep_idle_bytes); PP_ENOREUSE closes it
 * without blaming the peer; PP_EBROKEN and socket errors close it and count a failure. */
#include "fixtures_multi.h"

/* Write `msg` on the held conn with no reader and wait until its echo is kept, unread. */
static void leave_reply_unread(fixture_t *f, const char *msg) {
  size_t n = strlen(msg);
  ASSERT_EQ(test_write(f->held.conn, msg, n), 0);
  RUN_UNTIL(test_stats(f->pool).bytes_in >= n, 2000);
}

TEST(release_with_unread_bytes_closes_the_conn) {
  /* Unread bytes are a reply nobody will read: lending the conn again would hand it to the
   * next holder. It is closed, and the peer is not blamed. */
  fixture_t f = fixture_start(srv_echo_start(NULL), NULL);
  fixture_hold(&f);
  leave_reply_unread(&f, "reply");
  ASSERT_OK(pp_release(&f.held, 0));
  test_expect_gauges(f.pool, 0, 0, 0);
  ASSERT_EQ(test_stats(f.pool).closed[PP_CLOSE_BROKEN], 1);
  test_expect_unblamed(f.pool, f.peer);
  fixture_hold(&f);
  ASSERT_EQ(test_stats(f.pool).connect_attempts, 2); /* a new conn */
  ASSERT_OK(pp_release(&f.held, 0));
  fixture_end(&f);
}

TEST(release_with_unread_bytes_keeps_the_conn_with_keep_idle_bytes) {
  fixture_t f = fixture_start(srv_echo_start(NULL), TEST_OPTS(o.keep_idle_bytes = 1));
  fixture_hold(&f);
  pp_conn_t *c = f.held.conn;
  leave_reply_unread(&f, "chatter");
  ASSERT_OK(pp_release(&f.held, 0));
  ASSERT_EQ(test_stats(f.pool).idle, 1);
  fixture_hold(&f);
  ASSERT_PTR_EQ(f.held.conn, c);
  test_reader_t rd = {0};
  ASSERT_OK(pp_conn_read_start(f.held.conn, test_reader_cb, &rd));
  RUN_UNTIL(rd.len == 7, 2000);
  ASSERT(memcmp(rd.buf, "chatter", 7) == 0);
  ASSERT_OK(pp_release(&f.held, 0));
  test_reader_free(&rd);
  fixture_end(&f);
}

TEST(release_not_reusable_closes_without_blame) {
  /* PP_ENOREUSE: the holder cannot vouch for the conn (say its receive timed out with a
   * request in flight) but the peer is healthy. With eject_after = 1, one failure would eject
   * the peer; this counts none. */
  fixture_t f = fixture_start(srv_echo_start(NULL), TEST_OPTS(o.eject_after = 1));
  pp_pool_on_state(f.pool, test_state_cb);
  fixture_hold(&f);
  int start = test_ntransitions;
  ASSERT_OK(pp_release(&f.held, PP_ENOREUSE));
  ASSERT_NULL(f.held.conn);
  pp_stats_t s = test_stats(f.pool);
  ASSERT_EQ(s.conns, 0);
  ASSERT_EQ(s.releases, 1);
  ASSERT_EQ(s.closed[PP_CLOSE_DISCARDED], 1);
  ASSERT_EQ(s.closed[PP_CLOSE_BROKEN], 0);
  test_expect_unblamed(f.pool, f.peer);
  ASSERT_EQ(pp_peer_state(f.peer), PP_PEER_DISCONNECTED);
  test_run_for(20);
  ASSERT_EQ(test_find_transition(f.peer, PP_PEER_FAILED, start), -1);
  fixture_hold(&f); /* dialled again at once */
  ASSERT_EQ(test_stats(f.pool).connect_attempts, 2);
  ASSERT_OK(pp_release(&f.held, 0));
  fixture_end(&f);
}

TEST(release_not_reusable_has_a_name) {
  ASSERT_STREQ(pp_err_name(PP_ENOREUSE), "not_reusable");
  ASSERT_CONTAINS(pp_strerror(PP_ENOREUSE), "not reusable");
  ASSERT_STREQ(pp_close_reason_name(PP_CLOSE_DISCARDED), "discarded");
}
