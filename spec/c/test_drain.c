/* Taking peers and pools out of service: pp_pool_remove_peer, pp_pool_drain_peer and
 * pp_pool_close_drain — waiters answered, idle conns closed now, leased ones at release. */
#include "fixtures.h"
#include "internal.h"

/* Whether an explain entry of `kind` has `text` in it (every entry: NULL peer). */
typedef struct {
  const char *kind, *text;
  int found;
} find_t;
static int find_entry(const pp_explain_t *e, void *arg) {
  find_t *f = arg;
  if (strcmp(e->kind, f->kind) == 0 && strstr(e->text, f->text)) f->found++;
  return 0;
}
static int explained(pp_pool_t *pool, const char *kind, const char *text) {
  find_t f = {kind, text, 0};
  pp_pool_explain(pool, NULL, find_entry, &f);
  return f.found;
}

/* A pool (max_per_peer `max`) with an echo server as its one peer. */
static fixture_t echo_pool(int max) {
  return fixture_start(srv_echo_start(NULL), TEST_OPTS(o.max_per_peer = max));
}

/* echo_pool(1) with its one conn leased in f->held, and an acquire for the peer (`any_peer`:
 * for any peer) waiting behind it, recorded in `w`/`wr`. */
static void held_and_waiting(fixture_t *f, pp_lease_t *w, test_rec_t *wr, int any_peer) {
  fixture_held(f, srv_echo_start(NULL), TEST_OPTS(o.max_per_peer = 1));
  ASSERT_OK(test_acquire_start(f->pool, w, wr, any_peer ? NULL : f->peer, NULL));
}

/* The acquire or notice recorded in `r` ends, later, with `code`. */
static void answered(const test_rec_t *r, int code) {
  RUN_UNTIL(r->calls == 1, 1000);
  ASSERT_ERR(r->status, code);
}

/* The end of a test whose pool closed itself (close_drain). */
static void end_closed(fixture_t *f) {
  test_finish_closed();
  srv_stop(f->srv);
}

/* ---- remove_peer ------------------------------------------------------------------------- */

TEST(remove_peer_answers_waiters_leased_conns_close_at_release) {
  fixture_t f = echo_pool(2);
  pp_pool_t *pool = f.pool;
  pp_lease_t l[2], w;
  test_rec_t r[2], wr;
  test_acquire_n(pool, f.peer, l, r, 2);
  ASSERT_OK(test_acquire_start(pool, &w, &wr, f.peer, NULL));
  ASSERT_EQ(test_peer_info(f.peer).waiters, 1);
  ASSERT_OK(CALL(pp_pool_remove_peer(pool, f.peer)));
  ASSERT_EQ(wr.calls, 0); /* answered later, not inside the call */
  ASSERT_NULL(pp_pool_find_peer(pool, srv_addr(f.srv)));
  answered(&wr, PP_EREMOVED);
  pp_stats_t s = test_stats(pool);
  ASSERT_EQ(s.peers, 0);
  ASSERT_EQ(s.peers_removed, 1);
  ASSERT_EQ(s.waiters, 0);
  /* Leased conns still serve their holders, then close. */
  ASSERT_EQ(pp_conn_is_broken(l[0].conn), 0);
  ASSERT_OK(test_write(l[0].conn, "x", 1));
  ASSERT_EQ(srv_client_conns(f.srv), 2);
  ASSERT_OK(pp_release(&l[0], 0));
  ASSERT_EQ(srv_client_conns(f.srv), 1);
  ASSERT_OK(pp_release(&l[1], 0));
  ASSERT_EQ(test_stats(pool).closed[PP_CLOSE_REMOVED], 2);
  ASSERT_EQ(srv_client_conns(f.srv), 0);
  /* Freed once nothing needs it; explain keeps the story. */
  RUN_UNTIL(pp__list_empty(&pool->removed_peers), 1000);
  ASSERT_EQ(explained(pool, "remove", "removed: no new leases; 2 leased conns close at release"),
            1);
  ASSERT_EQ(explained(pool, "conn_close", "its peer was removed"), 2);
  ASSERT_EQ(explained(pool, "fail", "was removed"), 1);
  fixture_end(&f);
}

TEST(remove_peer_closes_idle_conns_now) {
  fixture_t f = fixture_start(srv_echo_start(NULL), NULL);
  test_acquire_release(f.pool, f.peer);
  ASSERT_EQ(srv_client_conns(f.srv), 1);
  ASSERT_OK(pp_pool_remove_peer(f.pool, f.peer));
  ASSERT_EQ(srv_client_conns(f.srv), 0);
  pp_stats_t s = test_stats(f.pool);
  ASSERT_EQ(s.closed[PP_CLOSE_REMOVED], 1);
  ASSERT_EQ(s.conns, 0);
  ASSERT_EQ(s.peers_by_state[PP_PEER_READY], 0);
  RUN_UNTIL(pp__list_empty(&f.pool->removed_peers), 1000);
  fixture_end(&f);
}

TEST(remove_peer_then_add_again_is_a_new_peer) {
  fixture_t f = fixture_start(srv_echo_start(NULL), NULL);
  test_acquire_release(f.pool, f.peer);
  ASSERT_OK(pp_pool_remove_peer(f.pool, f.peer));
  pp_peer_t *again = test_peer(f.pool, srv_addr(f.srv));
  ASSERT_EQ(test_peer_info(again).attempts, 0);
  test_acquire_release(f.pool, again);
  ASSERT_EQ(test_stats(f.pool).peers, 1);
  fixture_end(&f);
}

TEST(remove_peer_errors) {
  fixture_t f = fixture_start(srv_echo_start(NULL), NULL);
  pp_pool_t *pool = f.pool, *other = test_pool(NULL);
  pp_peer_t *peer = f.peer;
  ASSERT_ERR(pp_pool_remove_peer(NULL, peer), PP_EINVAL);
  ASSERT_ERR(pp_pool_remove_peer(pool, NULL), PP_EINVAL);
  ASSERT_ERR(pp_pool_remove_peer(other, peer), PP_EINVAL);
  ASSERT_ERR(pp_pool_drain_peer(other, peer), PP_EINVAL);
  ASSERT_OK(pp_pool_close(other, NULL));
  ASSERT_OK(pp_pool_close(pool, test_close_cb));
  ASSERT_ERR(pp_pool_remove_peer(pool, peer), PP_ECLOSED);
  ASSERT_ERR(pp_pool_drain_peer(pool, peer), PP_ECLOSED);
  end_closed(&f);
}

TEST(remove_peer_fires_its_notices) {
  fixture_t f;
  fixture_held(&f, srv_echo_start(NULL), TEST_OPTS(o.max_per_peer = 1));
  pp_notice_t n;
  test_rec_t nr;
  ASSERT_OK(test_notice_start(f.pool, &n, &nr, f.peer));
  ASSERT_OK(CALL(pp_pool_remove_peer(f.pool, f.peer)));
  answered(&nr, PP_EREMOVED);
  fixture_release_end(&f);
}

TEST(remove_last_peer_fails_acquires_for_any_peer) {
  pp_lease_t any;
  test_rec_t ar;
  fixture_t f;
  held_and_waiting(&f, &any, &ar, 1);
  ASSERT_OK(pp_pool_remove_peer(f.pool, f.peer));
  answered(&ar, PP_ENOPEER);
  fixture_release_end(&f);
}

static int events_seen;
static void count_event(pp_pool_t *pool, const pp_event_t *ev, void *arg) {
  (void)pool;
  (void)arg;
  if (ev->peer) ASSERT_NOT_NULL(pp_peer_addr(ev->peer)); /* still valid when delivered */
  events_seen++;
}

TEST(remove_many_peers_frees_them) {
  /* Peers added and removed in a loop (with conns, explain entries and events) do not pile
   * up: each is freed once its callbacks ran. */
  srv_t *srv = srv_echo_start(NULL);
  pp_pool_t *pool = test_pool(TEST_OPTS());
  pp_pool_on_event(pool, count_event, NULL);
  for (int i = 0; i < 50; i++) {
    pp_peer_t *peer = test_peer(pool, srv_addr(srv));
    test_acquire_release(pool, peer);
    ASSERT_OK(pp_pool_remove_peer(pool, peer));
  }
  RUN_UNTIL(pp__list_empty(&pool->removed_peers), 2000);
  ASSERT_EQ(test_stats(pool).peers_removed, 50);
  ASSERT_GE(events_seen, 100); /* conn_open and conn_close of each, delivered */
  test_finish_srv(pool, srv);
}

/* ---- drain ------------------------------------------------------------------------------- */

TEST(drain_peer_no_new_leases_conns_close_at_release) {
  fixture_t f = echo_pool(2);
  pp_pool_t *pool = f.pool;
  pp_peer_t *peer = f.peer;
  fixture_hold(&f);
  test_acquire_release(pool, peer); /* a second conn, idle */
  ASSERT_EQ(srv_client_conns(f.srv), 2);
  ASSERT_OK(CALL(pp_pool_drain_peer(pool, peer)));
  ASSERT_EQ(srv_client_conns(f.srv), 1);     /* the idle one closed now */
  ASSERT_OK(pp_pool_drain_peer(pool, peer)); /* again: nothing more */
  pp_lease_t l;
  test_rec_t r;
  ASSERT_ERR(test_acquire_start(pool, &l, &r, peer, NULL), PP_EREMOVED);
  char why[200];
  pp_lease_describe(&l, why, sizeof why);
  ASSERT_CONTAINS(why, "draining");
  ASSERT_EQ(test_peer_info(peer).draining, 1);
  ASSERT_EQ(explained(pool, "drain", "draining: no new leases; 1 leased conn close at release"), 1);
  ASSERT_OK(test_write(f.held.conn, "x", 1)); /* the leased conn still works */
  ASSERT_OK(pp_release(&f.held, 0));
  ASSERT_EQ(test_peer_info(peer).conns, 0); /* drained */
  RUN_UNTIL(srv_client_conns(f.srv) == 0, 1000);
  pp_stats_t s = test_stats(pool);
  ASSERT_EQ(s.closed[PP_CLOSE_DRAINED], 2);
  ASSERT_EQ(s.peers_drained, 1);
  ASSERT_EQ(s.peers, 1); /* still known */
  ASSERT_PTR_EQ(pp_pool_find_peer(pool, srv_addr(f.srv)), peer);
  /* Re-adding ends the drain. */
  ASSERT_OK(pp_pool_add_peer(pool, srv_addr(f.srv), 0, NULL, NULL));
  ASSERT_EQ(test_peer_info(peer).draining, 0);
  test_acquire_release(pool, peer);
  fixture_end(&f);
}

TEST(drain_peer_answers_waiters_removed) {
  pp_lease_t w;
  test_rec_t wr;
  fixture_t f;
  held_and_waiting(&f, &w, &wr, 0);
  ASSERT_OK(CALL(pp_pool_drain_peer(f.pool, f.peer)));
  answered(&wr, PP_EREMOVED);
  fixture_release_end(&f);
}

TEST(drain_peer_keeps_no_min_idle_conns) {
  fixture_t f =
      fixture_start(srv_echo_start(NULL), TEST_OPTS(o.min_idle = 2; o.maintenance_interval = 20));
  RUN_UNTIL(test_peer_info(f.peer).idle == 2, 2000);
  ASSERT_OK(pp_pool_drain_peer(f.pool, f.peer));
  test_run_for(100);
  ASSERT_EQ(srv_client_conns(f.srv), 0);
  ASSERT_EQ(test_stats(f.pool).warm_dials, 2);
  fixture_end(&f);
}

/* ---- close_drain ------------------------------------------------------------------------- */

static pp_stats_t closed_stats;
static int closed_calls;
static void record_close(pp_pool_t *pool) {
  pp_pool_stats(pool, &closed_stats); /* still valid inside the callback */
  closed_calls++;
  test_close_cb(pool);
}

/* A pool with one lease held, then close_drain(`ms`, record_close) on it. Returns the time
 * just before that call. */
static uint64_t held_then_close_drain(fixture_t *f, int64_t ms) {
  fixture_held(f, srv_echo_start(NULL), NULL);
  uint64_t t0 = test_now_ms();
  ASSERT_OK(pp_pool_close_drain(f->pool, ms, record_close));
  return t0;
}

/* Release the fixture's lease; the pool then finishes closing. */
static void release_then_closed(fixture_t *f) {
  ASSERT_OK(pp_release(&f->held, 0));
  RUN_UNTIL(closed_calls == 1, 1000);
}

TEST(close_drain_lets_leases_finish) {
  fixture_t f = fixture_start(srv_echo_start(NULL), NULL);
  pp_pool_t *pool = f.pool;
  pp_lease_t l[3];
  test_rec_t r[3];
  test_acquire_n(pool, f.peer, l, r, 3);
  ASSERT_OK(pp_release(&l[2], 0)); /* one idle conn, two leased */
  ASSERT_EQ(srv_client_conns(f.srv), 3);
  ASSERT_OK(CALL(pp_pool_close_drain(pool, 5000, record_close)));
  ASSERT_EQ(pp_pool_is_closing(pool), 1);
  ASSERT_EQ(srv_client_conns(f.srv), 2); /* the idle conn closed at once */
  test_acquire_fails(pool, f.peer, NULL, PP_ECLOSED);
  ASSERT_ERR(pp_pool_close_drain(pool, 10, NULL), PP_ECLOSED);
  ASSERT_OK(test_write(l[0].conn, "x", 1)); /* leases keep working */
  ASSERT_OK(pp_release(&l[0], 0));
  ASSERT_EQ(srv_client_conns(f.srv), 1); /* released conns close at once */
  test_run_for(50);
  ASSERT_EQ(closed_calls, 0); /* l[1] is still held */
  ASSERT_OK(pp_release(&l[1], 0));
  RUN_UNTIL(closed_calls == 1, 1000);
  ASSERT_EQ(closed_stats.leases_cut, 0);
  end_closed(&f);
}

TEST(close_drain_ends_waiters_with_closed) {
  pp_lease_t w;
  test_rec_t wr;
  fixture_t f;
  held_and_waiting(&f, &w, &wr, 0);
  ASSERT_OK(CALL(pp_pool_close_drain(f.pool, 5000, record_close)));
  answered(&wr, PP_ECLOSED);
  release_then_closed(&f); /* not lent to anybody: closed */
  ASSERT_EQ(wr.calls, 1);
  end_closed(&f);
}

TEST(close_drain_cuts_leases_at_the_deadline) {
  fixture_t f;
  uint64_t t0 = held_then_close_drain(&f, 50);
  RUN_UNTIL(closed_calls == 1, 2000);
  ASSERT_GE(test_now_ms() - t0, 40); /* not before the deadline */
  ASSERT_EQ(closed_stats.leases_cut, 1);
  ASSERT_NULL(f.held.conn);
  ASSERT_OK(pp_release(&f.held, 0)); /* its late release is harmless */
  end_closed(&f);
}

TEST(close_drain_waits_for_a_lease_whose_conn_died) {
  fixture_t f;
  held_then_close_drain(&f, 5000);
  KICK_AFTER_ACCEPTED(f.srv, 1); /* the server hangs up under the lease */
  RUN_UNTIL(pp_conn_is_broken(f.held.conn), 1000);
  test_run_for(50);
  ASSERT_EQ(closed_calls, 0); /* the lease still points into the pool */
  release_then_closed(&f);
  ASSERT_EQ(closed_stats.leases_cut, 0);
  end_closed(&f);
}

TEST(close_during_drain_is_immediate) {
  fixture_t f;
  held_then_close_drain(&f, 60000);
  ASSERT_OK(pp_pool_close(f.pool, NULL)); /* ends the drain now; record_close still runs */
  ASSERT_ERR(pp_pool_close(f.pool, NULL), PP_ECLOSED);
  RUN_UNTIL(closed_calls == 1, 1000);
  ASSERT_EQ(closed_stats.leases_cut, 1);
  ASSERT_OK(pp_release(&f.held, 0));
  end_closed(&f);
}

TEST(close_drain_without_leases_closes_at_once) {
  fixture_t f = fixture_start(srv_echo_start(NULL), NULL);
  test_acquire_release(f.pool, f.peer);
  ASSERT_ERR(pp_pool_close_drain(f.pool, -1, NULL), PP_EINVAL);
  ASSERT_OK(pp_pool_close_drain(f.pool, 60000, record_close));
  RUN_UNTIL(closed_calls == 1, 1000);
  end_closed(&f);
}

TEST(remove_peer_whose_leased_conn_breaks_is_not_ejected) {
  /* A failure of a removed peer's leased conn must not eject it: an ejected peer sits in the
   * pool's ejection heap, and a removed one is freed (ASan: heap-use-after-free before). */
  fixture_t f =
      fixture_start(srv_echo_start(NULL), TEST_OPTS(o.eject_after = 1; o.eject_max_percent = 100));
  srv_t *b = srv_echo_start(NULL), *c = srv_echo_start(NULL);
  test_peer(f.pool, srv_addr(b));
  test_peer(f.pool, srv_addr(c));
  fixture_hold(&f);
  ASSERT_OK(pp_pool_remove_peer(f.pool, f.peer));
  ASSERT_OK(pp_release(&f.held, PP_EBROKEN));
  ASSERT_EQ(test_stats(f.pool).ejections, 0);
  RUN_UNTIL(pp__list_empty(&f.pool->removed_peers), 1000);
  ASSERT_NULL(f.pool->ejected.min);
  test_run_for(30);
  fixture_end(&f);
  srv_stop(b);
  srv_stop(c);
}
