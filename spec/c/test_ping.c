/* The ping hook: a health check before lending a conn that idled past ping_after, and on a
 * keepalive sweep; failures and timeouts close the conn (reason "ping"). */
#include "fixtures.h"

enum { PING_ECHO, PING_FAIL, PING_NEVER, PING_SYNC_OK, PING_READ_NEVER };

typedef struct {
  pp_conn_t *conn;
  pp_write_t w;
  char got[16];
  size_t len;
  int finished;
  int closed;
} ping_slot_t;

#define PING_SLOTS 64

static struct {
  int mode;
  int calls;
  int closed_calls;
  int done_rc;
  ping_slot_t slot[PING_SLOTS];
} pg;

static ping_slot_t *live_slot(pp_conn_t *conn) {
  for (int i = 0; i < pg.calls && i < PING_SLOTS; i++)
    if (pg.slot[i].conn == conn && !pg.slot[i].finished && !pg.slot[i].closed) return &pg.slot[i];
  return NULL;
}

static void ping_write_cb(pp_write_t *req, int status) {
  (void)req;
}

static void ping_read_cb(pp_conn_t *conn, ssize_t nread, const char *buf, void *arg) {
  ping_slot_t *s = arg;
  ASSERT(!s->closed);
  if (nread < 0) return;
  if (s->len + (size_t)nread <= sizeof s->got) memcpy(s->got + s->len, buf, (size_t)nread);
  s->len += (size_t)nread;
  if (s->len >= 5 && memcmp(s->got, "PING\n", 5) == 0) {
    ASSERT_OK(pp_conn_read_stop(conn));
    s->finished = 1;
    pg.done_rc = pp_conn_ping_done(conn, pg.mode == PING_FAIL ? PP_EPING : 0);
  }
}

static void ping_hook(void *data, pp_conn_t *conn) {
  int i = pg.calls++;
  ASSERT_LT(i, PING_SLOTS);
  ping_slot_t *s = &pg.slot[i];
  memset(s, 0, sizeof *s);
  s->conn = conn;
  ASSERT_EQ(pp_conn_leases(conn), 0); /* pings run on idle conns */
  switch (pg.mode) {
    case PING_ECHO:
    case PING_FAIL: {
      ASSERT_OK(pp_conn_read_start(conn, ping_read_cb, s));
      uv_buf_t b = uv_buf_init("PING\n", 5);
      ASSERT_OK(pp_conn_write(&s->w, conn, &b, 1, ping_write_cb));
      break;
    }
    case PING_SYNC_OK:
      s->finished = 1;
      pg.done_rc = pp_conn_ping_done(conn, 0);
      break;
    case PING_READ_NEVER: /* a reader, but no answer ever completes the ping */
      ASSERT_OK(pp_conn_read_start(conn, ping_read_cb, s));
      break;
    case PING_NEVER:
      break;
  }
}

static void ping_closed(void *data, pp_conn_t *conn) {
  ping_slot_t *s = live_slot(conn);
  if (s == NULL) return; /* a conn whose ping completed earlier: nothing to forget */
  pg.closed_calls++;
  s->closed = 1;
}

static pp_pool_t *ping_pool(int mode, pp_options_t *o, srv_t *srv, pp_peer_t **peer) {
  memset(&pg, 0, sizeof pg);
  pg.mode = mode;
  pp_pool_t *pool = test_pool(o);
  pp_policy_t pol;
  memset(&pol, 0, sizeof pol);
  pol.ping = ping_hook;
  pol.closed = ping_closed;
  pp_pool_set_policy(pool, &pol);
  *peer = test_peer(pool, srv_addr(srv));
  return pool;
}

TEST(ping_before_lending_an_idle_conn) {
  srv_t *srv = srv_echo_start(NULL);
  pp_options_t o;
  test_options(&o);
  o.ping_after = 50;
  o.max_per_peer = 1; /* the acquire waits for the ping instead of dialling a second conn */
  pp_peer_t *peer;
  pp_pool_t *pool = ping_pool(PING_ECHO, &o, srv, &peer);
  pp_lease_t l;
  test_rec_t r;
  pp_conn_t *c = test_acquire_release(pool, peer);
  ASSERT_EQ(pg.calls, 0); /* a fresh conn needs no ping */
  test_run_for(100);
  ASSERT_OK(test_acquire_wait(pool, &l, &r, peer, NULL));
  ASSERT_EQ(pg.calls, 1);
  ASSERT_PTR_EQ(pg.slot[0].conn, c);
  ASSERT_OK(pg.done_rc);
  ASSERT_PTR_EQ(l.conn, c);
  ASSERT_ACCEPTED(srv, 1);
  pp_stats_t s = test_stats(pool);
  ASSERT_EQ(s.pings, 1);
  ASSERT_EQ(s.pings_failed, 0);
  ASSERT_OK(pp_release(&l, 0));
  test_finish_srv(pool, srv);
}

TEST(ping_not_needed_for_a_recently_used_conn) {
  srv_t *srv = srv_echo_start(NULL);
  pp_options_t o;
  test_options(&o);
  o.ping_after = 5000;
  pp_peer_t *peer;
  pp_pool_t *pool = ping_pool(PING_ECHO, &o, srv, &peer);
  for (int i = 0; i < 3; i++)
    test_acquire_release(pool, peer);
  ASSERT_EQ(pg.calls, 0);
  test_finish_srv(pool, srv);
}

TEST(ping_completed_inside_hook) {
  srv_t *srv = srv_echo_start(NULL);
  pp_options_t o;
  test_options(&o);
  o.ping_after = 30;
  pp_peer_t *peer;
  pp_pool_t *pool = ping_pool(PING_SYNC_OK, &o, srv, &peer);
  pp_lease_t l;
  test_rec_t r;
  test_acquire_release(pool, peer);
  test_run_for(60);
  ASSERT_OK(test_acquire_wait(pool, &l, &r, peer, NULL));
  ASSERT_EQ(pg.calls, 1);
  ASSERT_OK(pg.done_rc);
  ASSERT_OK(pp_release(&l, 0));
  test_finish_srv(pool, srv);
}

TEST(ping_failure_closes_the_conn_and_acquire_gets_another) {
  srv_t *srv = srv_echo_start(NULL);
  pp_options_t o;
  test_options(&o);
  o.ping_after = 30;
  pp_peer_t *peer;
  pp_pool_t *pool = ping_pool(PING_FAIL, &o, srv, &peer);
  pp_lease_t l;
  test_rec_t r;
  pp_conn_t *c = test_acquire_release(pool, peer);
  test_run_for(60);
  ASSERT_OK(test_acquire_wait(pool, &l, &r, peer, NULL));
  ASSERT_GE(pg.calls, 1);
  ASSERT_OK(pg.done_rc);
  ASSERT_PTR_NE(l.conn, c);
  ASSERT_ACCEPTED(srv, 2);
  pp_stats_t s = test_stats(pool);
  ASSERT_EQ(s.closed[PP_CLOSE_PING], 1);
  ASSERT_EQ(s.pings_failed, 1);
  ASSERT_OK(pp_release(&l, 0));
  test_finish_srv(pool, srv);
}

TEST(ping_timeout_closes_the_conn) {
  srv_t *srv = srv_echo_start(NULL);
  pp_options_t o;
  test_options(&o);
  o.ping_after = 30;
  o.handshake_timeout = 80; /* a ping has handshake_timeout to complete */
  o.max_per_peer = 1;       /* the acquire waits for the ping instead of dialling */
  pp_peer_t *peer;
  pp_pool_t *pool = ping_pool(PING_NEVER, &o, srv, &peer);
  pp_lease_t l;
  test_rec_t r;
  test_acquire_release(pool, peer);
  test_run_for(60);
  uint64_t t0 = test_now_ms();
  ASSERT_OK(test_acquire_wait(pool, &l, &r, peer, NULL));
  ASSERT_GE(test_now_ms() - t0, 70);
  ASSERT_EQ(pg.calls, 1);
  ASSERT_EQ(pg.closed_calls, 1);
  ASSERT_EQ(test_stats(pool).closed[PP_CLOSE_PING], 1);
  ASSERT_ACCEPTED(srv, 2);
  ASSERT_OK(pp_release(&l, 0));
  test_finish_srv(pool, srv);
}

TEST(ping_keepalive_checks_idle_conns) {
  srv_t *srv = srv_echo_start(NULL);
  pp_options_t o;
  test_options(&o);
  o.keepalive = 40;
  pp_peer_t *peer;
  pp_pool_t *pool = ping_pool(PING_ECHO, &o, srv, &peer);
  test_acquire_release(pool, peer);
  RUN_UNTIL(pg.calls >= 2 && pg.slot[pg.calls - 1].finished, 2000);
  ASSERT_OK(pg.done_rc);
  pp_stats_t s = test_stats(pool);
  ASSERT_GE(s.pings, 1);
  ASSERT_EQ(s.closed[PP_CLOSE_PING], 0);
  ASSERT_EQ(s.conns, 1);
  test_finish_srv(pool, srv);
}

TEST(ping_keepalive_skips_leased_conns) {
  srv_t *srv = srv_echo_start(NULL);
  pp_options_t o;
  test_options(&o);
  o.keepalive = 30;
  pp_peer_t *peer;
  pp_pool_t *pool = ping_pool(PING_ECHO, &o, srv, &peer);
  pp_lease_t l;
  test_rec_t r;
  ASSERT_OK(test_acquire_wait(pool, &l, &r, peer, NULL));
  test_run_for(200);
  ASSERT_EQ(pg.calls, 0);
  ASSERT_OK(pp_release(&l, 0));
  test_finish_srv(pool, srv);
}

TEST(ping_keepalive_failure_closes_idle_conn) {
  srv_t *srv = srv_echo_start(NULL);
  pp_options_t o;
  test_options(&o);
  o.keepalive = 40;
  pp_peer_t *peer;
  pp_pool_t *pool = ping_pool(PING_FAIL, &o, srv, &peer);
  test_acquire_release(pool, peer);
  RUN_UNTIL(test_stats(pool).closed[PP_CLOSE_PING] == 1, 2000);
  ASSERT_EQ(test_stats(pool).conns, 0);
  RUN_UNTIL(srv_open(srv) == 0, 2000);
  test_finish_srv(pool, srv);
}

TEST(ping_closed_hook_on_pool_close) {
  srv_t *srv = srv_echo_start(NULL);
  pp_options_t o;
  test_options(&o);
  o.keepalive = 30;
  o.handshake_timeout = 10000;
  pp_peer_t *peer;
  pp_pool_t *pool = ping_pool(PING_NEVER, &o, srv, &peer);
  test_acquire_release(pool, peer);
  RUN_UNTIL(pg.calls == 1, 2000);
  ASSERT_OK(pp_pool_close(pool, test_close_cb));
  test_finish_closed();
  ASSERT_EQ(pg.closed_calls, 1);
  srv_stop(srv);
}

TEST(ping_hook_reader_not_called_after_closed) {
  /* `closed` means "forget this conn": the hook's reader (whose arg the hook may free in
   * `closed`) must not be called afterwards. ping_read_cb asserts it. */
  srv_t *srv = srv_echo_start(NULL);
  pp_options_t o;
  test_options(&o);
  o.keepalive = 30;
  o.handshake_timeout = 10000;
  pp_peer_t *peer;
  pp_pool_t *pool = ping_pool(PING_READ_NEVER, &o, srv, &peer);
  test_acquire_release(pool, peer);
  RUN_UNTIL(pg.calls == 1, 2000);
  ASSERT_OK(pp_pool_close(pool, test_close_cb));
  test_finish_closed();
  ASSERT_EQ(pg.closed_calls, 1);
  srv_stop(srv);
}

TEST(ping_pinging_conn_is_not_lent_by_try_acquire) {
  srv_t *srv = srv_echo_start(NULL);
  pp_options_t o;
  test_options(&o);
  o.keepalive = 30;
  o.handshake_timeout = 10000;
  pp_peer_t *peer;
  pp_pool_t *pool = ping_pool(PING_NEVER, &o, srv, &peer);
  test_acquire_release(pool, peer);
  RUN_UNTIL(pg.calls == 1, 2000);
  pp_lease_t t;
  memset(&t, 0, sizeof t);
  ASSERT_ERR(pp_try_acquire(pool, &t, peer, NULL), PP_EAGAIN);
  /* Completing the ping makes it lendable again. */
  pg.slot[0].finished = 1;
  ASSERT_OK(pp_conn_ping_done(pg.slot[0].conn, 0));
  ASSERT_OK(pp_try_acquire(pool, &t, peer, NULL));
  ASSERT_OK(pp_release(&t, 0));
  test_finish_srv(pool, srv);
}

TEST(ping_hook_reader_not_called_after_closed_on_timeout) {
  srv_t *srv = srv_echo_start(NULL);
  pp_options_t o;
  test_options(&o);
  o.keepalive = 30;
  o.handshake_timeout = 50;
  pp_peer_t *peer;
  pp_pool_t *pool = ping_pool(PING_READ_NEVER, &o, srv, &peer);
  test_acquire_release(pool, peer);
  RUN_UNTIL(pg.closed_calls == 1, 2000);
  test_run_for(30);
  ASSERT_EQ(test_stats(pool).closed[PP_CLOSE_PING], 1);
  test_finish_srv(pool, srv);
}
