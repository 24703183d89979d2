/* Acquire, try_acquire, release and cancel. */
#include "fixtures_multi.h"

TEST(acquire_named_peer) {
  fixture_t f = fixture_start(srv_echo_start(NULL), NULL);
  pp_lease_t *l = &f.held;
  test_rec_t *r = &f.held_rec;
  ASSERT_OK(test_acquire_start(f.pool, l, r, f.peer, NULL));
  ASSERT_EQ(r->calls, 0); /* never inside the call */
  test_wait_ok(r);
  ASSERT_NOT_NULL(l->conn);
  ASSERT_PTR_EQ(l->peer, f.peer);
  ASSERT_PTR_EQ(pp_conn_peer(l->conn), f.peer);
  ASSERT_EQ(pp_conn_leases(l->conn), 1);
  ASSERT_EQ(pp_conn_is_broken(l->conn), 0);
  ASSERT_EQ(srv_accepted(f.srv) <= 1, 1);
  ASSERT_ACCEPTED(f.srv, 1);
  ASSERT_OK(pp_release(l, 0));
  fixture_end(&f);
}

TEST(acquire_any_peer) {
  fixture_t f = fixture_start(srv_echo_start(NULL), NULL);
  ASSERT_OK(test_acquire_wait(f.pool, &f.held, &f.held_rec, NULL, NULL));
  ASSERT_NOT_NULL(f.held.conn);
  ASSERT_PTR_EQ(f.held.peer, f.peer);
  ASSERT_OK(pp_release(&f.held, 0));
  fixture_end(&f);
}

TEST(acquire_any_peer_spreads_over_ready_peers) {
  /* Two echo servers and max_per_peer = 1: two held acquires without a peer must land on
   * both peers. */
  fixture_peers_t f = echo_peers_start(2, TEST_OPTS(o.max_per_peer = 1));
  pp_lease_t a, b;
  test_rec_t ra, rb;
  ASSERT_OK(test_acquire_wait(f.pool, &a, &ra, NULL, NULL));
  ASSERT_OK(test_acquire_wait(f.pool, &b, &rb, NULL, NULL));
  /* max_per_peer = 1: the second must go to the other peer. */
  ASSERT_PTR_NE(a.peer, b.peer);
  ASSERT(a.peer == f.peer[0] || a.peer == f.peer[1]);
  ASSERT(b.peer == f.peer[0] || b.peer == f.peer[1]);
  ASSERT_OK(pp_release(&a, 0));
  ASSERT_OK(pp_release(&b, 0));
  fixture_peers_end(&f);
}

/* An acquire without a peer on `pool` ends in PP_ENOPEER: at once (its callback never runs)
 * or through its callback, once. */
static void acquire_any_is_no_peer(pp_pool_t *pool) {
  pp_lease_t l;
  test_rec_t r;
  int rc = test_acquire_start(pool, &l, &r, NULL, NULL);
  if (rc == 0) {
    RUN_UNTIL(r.calls == 1, 3000);
    ASSERT_ERR(r.status, PP_ENOPEER);
  } else {
    ASSERT_ERR(rc, PP_ENOPEER);
  }
  test_run_for(20);
  ASSERT_EQ(r.calls, rc == 0 ? 1 : 0);
}

TEST(acquire_any_peer_without_peers_is_no_peer) {
  pp_pool_t *pool = test_pool(NULL);
  acquire_any_is_no_peer(pool);
  test_finish(pool);
}

TEST(acquire_any_peer_skips_stale_addresses) {
  /* Peers whose last_seen is older than max_address_age are not dialled. */
  srv_t *srv = srv_echo_start(NULL);
  pp_options_t o;
  test_options(&o);
  o.max_address_age = 60000;
  pp_pool_t *pool = test_pool(&o);
  ASSERT_OK(pp_pool_add_peer(pool, srv_addr(srv), test_unix_ms() - 3600000, NULL, NULL));
  acquire_any_is_no_peer(pool);
  ASSERT_EQ(srv_accepted(srv), 0);
  ASSERT_EQ(test_stats(pool).connect_attempts, 0);
  test_finish_srv(pool, srv);
}

TEST(acquire_callback_not_inside_call_when_idle_conn) {
  /* Even when an idle conn could be handed over at once, the callback is deferred. */
  fixture_t f = fixture_start(srv_echo_start(NULL), NULL);
  test_acquire_release(f.pool, f.peer);
  /* test_acquire_cb asserts it does not run inside the call. */
  ASSERT_OK(test_acquire_start(f.pool, &f.held, &f.held_rec, f.peer, NULL));
  ASSERT_EQ(f.held_rec.calls, 0);
  test_wait_ok(&f.held_rec);
  ASSERT_OK(pp_release(&f.held, 0));
  fixture_end(&f);
}

TEST(acquire_release_reuses_the_conn) {
  fixture_t f = fixture_start(srv_echo_start(NULL), NULL);
  fixture_hold(&f);
  pp_conn_t *c = f.held.conn;
  ASSERT_OK(pp_release(&f.held, 0));
  ASSERT_NULL(f.held.conn);
  for (int i = 0; i < 5; i++) {
    ASSERT_OK(test_acquire_wait(f.pool, &f.held, &f.held_rec, f.peer, NULL));
    ASSERT_PTR_EQ(f.held.conn, c);
    ASSERT_OK(pp_release(&f.held, 0));
  }
  test_run_for(30);
  ASSERT_ACCEPTED(f.srv, 1);
  pp_stats_t s = test_stats(f.pool);
  ASSERT_EQ(s.conns, 1);
  ASSERT_EQ(s.idle, 1);
  ASSERT_EQ(s.releases, 6);
  ASSERT_EQ(s.connects_ok, 1);
  fixture_end(&f);
}

TEST(acquire_released_lease_can_be_reused_as_is) {
  /* "Zero it (or reuse a released one) before pp_acquire." */
  fixture_t f = fixture_start(srv_echo_start(NULL), NULL);
  fixture_hold(&f);
  ASSERT_OK(pp_release(&f.held, 0));
  f.held_rec.calls = 0;
  ASSERT_OK(CALL(pp_acquire(f.pool, &f.held, f.peer, NULL, test_acquire_cb)));
  test_wait_ok(&f.held_rec);
  ASSERT_OK(pp_release(&f.held, 0));
  fixture_end(&f);
}

TEST(acquire_try_acquire_eagain_when_nothing_idle) {
  fixture_t f = fixture_start(srv_echo_start(NULL), NULL);
  pp_lease_t l;
  memset(&l, 0, sizeof l);
  ASSERT_ERR(pp_try_acquire(f.pool, &l, f.peer, NULL), PP_EAGAIN);
  ASSERT_NULL(l.conn);
  ASSERT_ERR(pp_try_acquire(f.pool, &l, NULL, NULL), PP_EAGAIN);
  /* It neither waits nor dials. */
  test_run_for(30);
  pp_stats_t s = test_stats(f.pool);
  ASSERT_EQ(s.connect_attempts, 0);
  ASSERT_EQ(s.connecting, 0);
  ASSERT_EQ(s.waiters, 0);
  ASSERT_EQ(srv_accepted(f.srv), 0);
  fixture_end(&f);
}

TEST(acquire_try_acquire_eagain_when_all_busy) {
  fixture_t f = fixture_start(srv_echo_start(NULL), NULL);
  fixture_hold(&f);
  test_try_acquire_fails(f.pool, f.peer, PP_EAGAIN);
  ASSERT_OK(pp_release(&f.held, 0));
  fixture_end(&f);
}

TEST(acquire_try_acquire_grants_idle_conn_synchronously) {
  fixture_t f = fixture_start(srv_echo_start(NULL), NULL);
  pp_conn_t *c = test_acquire_release(f.pool, f.peer);
  pp_lease_t t;
  memset(&t, 0, sizeof t);
  ASSERT_OK(pp_try_acquire(f.pool, &t, f.peer, NULL));
  ASSERT_PTR_EQ(t.conn, c);
  ASSERT_PTR_EQ(t.peer, f.peer);
  ASSERT_EQ(pp_conn_leases(c), 1);
  ASSERT_OK(pp_release(&t, 0));
  memset(&t, 0, sizeof t);
  ASSERT_OK(pp_try_acquire(f.pool, &t, NULL, NULL)); /* any peer */
  ASSERT_PTR_EQ(t.conn, c);
  ASSERT_OK(pp_release(&t, 0));
  fixture_end(&f);
}

TEST(acquire_release_broken_closes_the_conn) {
  fixture_t f = fixture_start(srv_echo_start(NULL), NULL);
  fixture_hold(&f);
  pp_conn_t *c = f.held.conn;
  RUN_UNTIL(srv_open(f.srv) == 1, 2000);
  ASSERT_OK(pp_release(&f.held, PP_EBROKEN));
  ASSERT_NULL(f.held.conn);
  pp_stats_t s = test_stats(f.pool);
  ASSERT_EQ(s.releases, 1);
  ASSERT_EQ(s.released_broken, 1);
  ASSERT_EQ(test_peer_info(f.peer).failures, 1);
  RUN_UNTIL(test_stats(f.pool).closed[PP_CLOSE_BROKEN] == 1, 2000);
  RUN_UNTIL(srv_open(f.srv) == 0, 2000);
  s = test_stats(f.pool);
  ASSERT_EQ(s.conns, 0);
  ASSERT_EQ(s.idle, 0);
  /* The next acquire opens a new conn. */
  ASSERT_OK(test_acquire_wait(f.pool, &f.held, &f.held_rec, f.peer, NULL));
  (void)c;
  ASSERT_ACCEPTED(f.srv, 2);
  ASSERT_OK(pp_release(&f.held, 0));
  fixture_end(&f);
}

TEST(acquire_release_with_socket_error_counts_failure) {
  fixture_t f = fixture_start(srv_echo_start(NULL), NULL);
  fixture_hold(&f);
  ASSERT_OK(pp_release(&f.held, UV_ECONNRESET));
  ASSERT_EQ(test_stats(f.pool).released_broken, 1);
  ASSERT_EQ(test_peer_info(f.peer).failures, 1);
  RUN_UNTIL(test_stats(f.pool).conns == 0, 2000);
  fixture_end(&f);
}

TEST(acquire_healthy_release_resets_nothing_bad) {
  /* A healthy release is not a failure. */
  fixture_t f = fixture_start(srv_echo_start(NULL), NULL);
  test_acquire_release(f.pool, f.peer);
  ASSERT_EQ(test_peer_info(f.peer).failures, 0);
  ASSERT_EQ(test_stats(f.pool).released_broken, 0);
  fixture_end(&f);
}

TEST(acquire_release_twice_is_bad_state) {
  fixture_t f = fixture_start(srv_echo_start(NULL), NULL);
  fixture_hold(&f);
  ASSERT_OK(pp_release(&f.held, 0));
  ASSERT_ERR(pp_release(&f.held, 0), PP_ESTATE);
  ASSERT_EQ(test_stats(f.pool).releases, 1);
  pp_lease_t z;
  memset(&z, 0, sizeof z);
  ASSERT_ERR(pp_release(&z, 0), PP_ESTATE);
  fixture_end(&f);
}

/* A peer that never accepts, and an acquire f->held pending on its dial (the lease is in
 * the pool's queue by address: the fixture must not be copied after this). */
static void acquire_pending_start(fixture_t *f) {
  *f = fixture_start(srv_hang_start(), TEST_OPTS(o.connect_timeout = 5000));
  ASSERT_OK(test_acquire_start(f->pool, &f->held, &f->held_rec, f->peer, NULL));
}

TEST(acquire_release_of_pending_lease_is_bad_state) {
  fixture_t f;
  acquire_pending_start(&f);
  ASSERT_ERR(pp_release(&f.held, 0), PP_ESTATE);
  ASSERT_OK(pp_acquire_cancel(&f.held));
  RUN_UNTIL(f.held_rec.calls == 1, 1000);
  ASSERT_ERR(f.held_rec.status, PP_ECANCELED);
  fixture_end(&f);
}

TEST(acquire_cancel_pending) {
  fixture_t f;
  acquire_pending_start(&f);
  test_run_for(20);
  ASSERT_EQ(f.held_rec.calls, 0);
  ASSERT_OK(CALL(pp_acquire_cancel(&f.held)));
  ASSERT_EQ(f.held_rec.calls, 0); /* later, not inside the call */
  RUN_UNTIL(f.held_rec.calls == 1, 1000);
  ASSERT_ERR(f.held_rec.status, PP_ECANCELED);
  ASSERT_NULL(f.held.conn);
  test_run_for(20);
  ASSERT_EQ(f.held_rec.calls, 1);
  ASSERT_EQ(test_stats(f.pool).canceled, 1);
  ASSERT_ERR(pp_acquire_cancel(&f.held), PP_ESTATE);
  fixture_end(&f);
}

TEST(acquire_cancel_then_release_does_not_matter) {
  /* Canceling twice before the callback: the second is bad state or a harmless 0, and the
   * callback still runs once. */
  fixture_t f;
  acquire_pending_start(&f);
  ASSERT_OK(pp_acquire_cancel(&f.held));
  int rc = pp_acquire_cancel(&f.held);
  ASSERT_ERR2(rc, 0, PP_ESTATE);
  RUN_UNTIL(f.held_rec.calls >= 1, 1000);
  test_run_for(20);
  ASSERT_EQ(f.held_rec.calls, 1);
  ASSERT_ERR(f.held_rec.status, PP_ECANCELED);
  fixture_end(&f);
}

TEST(acquire_cancel_granted_is_bad_state) {
  fixture_t f = fixture_start(srv_echo_start(NULL), NULL);
  fixture_hold(&f);
  ASSERT_ERR(pp_acquire_cancel(&f.held), PP_ESTATE);
  ASSERT_NOT_NULL(f.held.conn); /* still held */
  ASSERT_OK(pp_release(&f.held, 0));
  ASSERT_ERR(pp_acquire_cancel(&f.held), PP_ESTATE);
  pp_lease_t z;
  memset(&z, 0, sizeof z);
  ASSERT_ERR(pp_acquire_cancel(&z), PP_ESTATE);
  test_run_for(20);
  ASSERT_EQ(f.held_rec.calls, 1);
  fixture_end(&f);
}

TEST(acquire_cancel_waiter_frees_its_queue_slot) {
  fixture_t f = fixture_start(srv_echo_start(NULL), TEST_OPTS(o.max_per_peer = 1; o.backlog = 1));
  fixture_hold(&f);
  pp_lease_t w1, w2;
  test_rec_t r1, r2;
  ASSERT_OK(test_acquire_start(f.pool, &w1, &r1, f.peer, NULL));
  ASSERT_EQ(test_stats(f.pool).waiters, 1);
  ASSERT_OK(pp_acquire_cancel(&w1));
  RUN_UNTIL(r1.calls == 1, 1000);
  ASSERT_ERR(r1.status, PP_ECANCELED);
  ASSERT_EQ(test_stats(f.pool).waiters, 0);
  ASSERT_OK(test_acquire_start(f.pool, &w2, &r2, f.peer, NULL));
  ASSERT_OK(pp_release(&f.held, 0));
  test_wait_ok(&r2);
  ASSERT_OK(pp_release(&w2, 0));
  fixture_end(&f);
}

TEST(acquire_lease_in_use_is_invalid) {
  fixture_t f = fixture_start(srv_echo_start(NULL), NULL);
  ASSERT_OK(test_acquire_start(f.pool, &f.held, &f.held_rec, f.peer, NULL));
  /* Pending: reusing it is refused. */
  ASSERT_ERR(CALL(pp_acquire(f.pool, &f.held, f.peer, NULL, test_acquire_cb)), PP_EINVAL);
  test_wait_ok(&f.held_rec);
  /* Granted: refused too. */
  ASSERT_ERR(CALL(pp_acquire(f.pool, &f.held, f.peer, NULL, test_acquire_cb)), PP_EINVAL);
  ASSERT_ERR(pp_try_acquire(f.pool, &f.held, f.peer, NULL), PP_EINVAL);
  test_run_for(20);
  ASSERT_EQ(f.held_rec.calls, 1);
  ASSERT_NOT_NULL(f.held.conn);
  ASSERT_OK(pp_release(&f.held, 0));
  fixture_end(&f);
}

TEST(acquire_peer_of_another_pool_is_invalid) {
  pp_pool_t *p1 = test_pool(NULL);
  pp_pool_t *p2 = test_pool(NULL);
  pp_peer_t *peer = test_peer(p2, "127.0.0.1:9");
  test_acquire_fails(p1, peer, NULL, PP_EINVAL);
  test_try_acquire_fails(p1, peer, PP_EINVAL);
  ASSERT_OK(pp_pool_close(p2, NULL));
  test_finish(p1);
}

TEST(acquire_bad_opts_are_invalid) {
  fixture_t f = fixture_start(srv_echo_start(NULL), NULL);
  pp_lease_t l;
  test_rec_t r;
  pp_acquire_opts_t a;
  pp_acquire_opts_init(&a);
  a.priority = PP_PRIORITY_MAX + 1;
  ASSERT_ERR(test_acquire_start(f.pool, &l, &r, f.peer, &a), PP_EINVAL);
  pp_acquire_opts_init(&a);
  a.priority = -1;
  ASSERT_ERR(test_acquire_start(f.pool, &l, &r, f.peer, &a), PP_EINVAL);
  pp_acquire_opts_init(&a);
  a.busy = 7;
  ASSERT_ERR(test_acquire_start(f.pool, &l, &r, f.peer, &a), PP_EINVAL);
  pp_acquire_opts_init(&a);
  a.timeout = -2;
  ASSERT_ERR(test_acquire_start(f.pool, &l, &r, f.peer, &a), PP_EINVAL);
  /* The bounds themselves are fine. */
  pp_acquire_opts_init(&a);
  a.priority = PP_PRIORITY_MAX;
  ASSERT_OK(test_acquire_wait(f.pool, &l, &r, f.peer, &a));
  ASSERT_OK(pp_release(&l, 0));
  ASSERT_EQ(test_stats(f.pool).acquires, 1);
  fixture_end(&f);
}

/* Acquire f.held on the fixture's peer with `cb` (which records through test_acquire_cb). */
static void acquire_with_cb(fixture_t *f, pp_acquire_cb cb) {
  memset(&f->held, 0, sizeof f->held);
  memset(&f->held_rec, 0, sizeof f->held_rec);
  f->held.data = &f->held_rec;
  ASSERT_OK(CALL(pp_acquire(f->pool, &f->held, f->peer, NULL, cb)));
}

static pp_lease_t chain_second;
static test_rec_t chain_rec2;

/* Records the grant and releases the lease from inside its callback. */
static void release_inside_cb(pp_lease_t *lease, int status) {
  test_acquire_cb(lease, status);
  ASSERT_OK(status);
  ASSERT_OK(pp_release(lease, 0));
}

TEST(acquire_release_inside_callback) {
  fixture_t f = fixture_start(srv_echo_start(NULL), NULL);
  acquire_with_cb(&f, release_inside_cb);
  RUN_UNTIL(f.held_rec.calls == 1, 3000);
  ASSERT_NULL(f.held.conn);
  ASSERT_EQ(test_stats(f.pool).idle, 1);
  /* And acquiring from the callback of another acquire works as well. */
  ASSERT_OK(test_acquire_wait(f.pool, &chain_second, &chain_rec2, f.peer, NULL));
  ASSERT_OK(pp_release(&chain_second, 0));
  fixture_end(&f);
}

static pp_pool_t *nested_pool;
static pp_peer_t *nested_peer;
static pp_lease_t nested_inner;
static test_rec_t nested_inner_rec;

/* release_inside_cb, then an acquire of nested_inner from the same callback. */
static void acquire_inside_cb(pp_lease_t *lease, int status) {
  release_inside_cb(lease, status);
  memset(&nested_inner, 0, sizeof nested_inner);
  nested_inner.data = &nested_inner_rec;
  /* test_in_call is 0 here: we are in a callback, and the inner callback must not run
   * inside this pp_acquire either. */
  ASSERT_OK(CALL(pp_acquire(nested_pool, &nested_inner, nested_peer, NULL, test_acquire_cb)));
  ASSERT_EQ(nested_inner_rec.calls, 0);
}

TEST(acquire_acquire_inside_callback) {
  fixture_t f = fixture_start(srv_echo_start(NULL), NULL);
  nested_pool = f.pool;
  nested_peer = f.peer;
  acquire_with_cb(&f, acquire_inside_cb);
  test_wait_ok(&nested_inner_rec);
  ASSERT_OK(pp_release(&nested_inner, 0));
  ASSERT_ACCEPTED(f.srv, 1);
  fixture_end(&f);
}

TEST(acquire_any_peer_when_all_are_burned_is_no_peer) {
  fixture_t f = fixture_burned();
  ASSERT_EQ(pp_peer_state(f.peer), PP_PEER_BURNED);
  acquire_any_is_no_peer(f.pool);
  fixture_end(&f);
}

TEST(acquire_conn_idle_ms_grows_while_idle) {
  fixture_t f = fixture_start(srv_echo_start(NULL), NULL);
  pp_conn_t *c = test_acquire_release(f.pool, f.peer);
  test_run_for(300); /* the margins below leave a loaded machine 250 ms of stalls */
  ASSERT_GE(pp_conn_idle_ms(c), 250); /* c is idle but still alive: the pool owns it */
  fixture_hold(&f);
  ASSERT_PTR_EQ(f.held.conn, c);
  ASSERT_LT(pp_conn_idle_ms(c), 250);
  ASSERT_OK(pp_release(&f.held, 0));
  fixture_end(&f);
}
