/* Re-entrancy: policy code (hooks) runs only where the engine's state is consistent, and a
 * hook may acquire, release or close the pool from there. The `closed` hook is told after a
 * conn's counters are updated; the work that follows a freed slot or a new peer (which runs
 * select_peer) is deferred, never run inside pp_release, pp_pool_add_peer or a closing conn;
 * and an acquire whose seed hook adds peers is queued before select_peer runs. */
#include "fixtures.h"

static struct {
  pp_pool_t *pool;
  pp_peer_t *peer;
  int mode;            /* what the closed hook does */
  int closed_calls;    /* closed hook */
  int conns_in_closed; /* pp_stats_t.conns seen inside it */
  int close_rc;        /* pp_pool_close inside it */
  pp_lease_t lease;    /* acquired inside it */
  test_rec_t rec;
  int acquire_rc;
  int select_calls;   /* select_peer */
  int select_in_call; /* select_peer calls inside an engine call of the test (CALL) */
  int in_seed;        /* set while the seed hook runs */
  int select_in_seed; /* select_peer calls inside the seed hook */
  int waiters_at_select;
  int seed_calls;
  const char *seed_addr[2]; /* the addresses the seed hook adds (NULL: none) */
  int dials_in_seed;        /* pp_stats_t.connecting after it added them */
  int stats_conns_at_close;
} rx;

enum { CLOSED_CLOSES_POOL, CLOSED_ACQUIRES };

static void never_ping(void *data, pp_conn_t *conn) {
  (void)data, (void)conn; /* the ping never completes: handshake_timeout closes the conn */
}

static void reentry_close_cb(pp_pool_t *pool) {
  rx.stats_conns_at_close = test_stats(pool).conns;
  test_close_cb(pool);
}

static void closed_hook(void *data, pp_conn_t *conn) {
  (void)data, (void)conn;
  rx.closed_calls++;
  rx.conns_in_closed = test_stats(rx.pool).conns;
  if (rx.mode == CLOSED_CLOSES_POOL) {
    rx.close_rc = pp_pool_close(rx.pool, reentry_close_cb);
  } else {
    memset(&rx.rec, 0, sizeof rx.rec);
    rx.lease.data = &rx.rec;
    rx.acquire_rc = pp_acquire(rx.pool, &rx.lease, rx.peer, NULL, test_acquire_cb);
  }
}

/* A pool whose one conn to `srv` is in a ping that never completes, with an acquire `l`
 * waiting for it (max_per_peer 1). */
static pp_pool_t *pinging_pool(srv_t *srv, int mode, pp_lease_t *l, test_rec_t *r) {
  memset(&rx, 0, sizeof rx);
  rx.mode = mode;
  pp_options_t o;
  test_options(&o);
  o.ping_after = 30;
  o.handshake_timeout = 60; /* the ping's deadline */
  o.max_per_peer = 1;
  rx.pool = test_pool(&o);
  pp_policy_t pol;
  memset(&pol, 0, sizeof pol);
  pol.ping = never_ping;
  pol.closed = closed_hook;
  pp_pool_set_policy(rx.pool, &pol);
  rx.peer = test_peer(rx.pool, srv_addr(srv));
  test_acquire_release(rx.pool, rx.peer);
  test_run_for(50);
  ASSERT_OK(test_acquire_start(rx.pool, l, r, rx.peer, NULL)); /* pings, then waits */
  return rx.pool;
}

TEST(reentry_closed_hook_may_close_the_pool) {
  srv_t *srv = srv_echo_start(NULL);
  pp_lease_t l;
  test_rec_t r;
  pinging_pool(srv, CLOSED_CLOSES_POOL, &l, &r);
  RUN_UNTIL(rx.closed_calls == 1, 2000);
  ASSERT_EQ(rx.conns_in_closed, 0); /* the closing conn is no longer counted */
  ASSERT_OK(rx.close_rc);
  RUN_UNTIL(r.calls == 1, 2000);
  ASSERT_EQ(r.status, PP_ECLOSED);
  test_finish_closed();
  ASSERT_EQ(rx.stats_conns_at_close, 0); /* counted down once, not twice */
  srv_stop(srv);
}

TEST(reentry_closed_hook_may_acquire) {
  srv_t *srv = srv_echo_start(NULL);
  pp_lease_t l;
  test_rec_t r;
  pp_pool_t *pool = pinging_pool(srv, CLOSED_ACQUIRES, &l, &r);
  RUN_UNTIL(rx.closed_calls == 1, 2000);
  ASSERT_EQ(rx.conns_in_closed, 0);
  ASSERT_OK(rx.acquire_rc);
  RUN_UNTIL(rx.rec.calls == 1, 2000); /* it dialled: the closed conn's slot was free */
  ASSERT_OK(rx.rec.status);
  ASSERT_EQ(r.calls, 0); /* max_per_peer 1: the first acquire waits for that conn */
  ASSERT_OK(pp_release(&rx.lease, 0));
  RUN_UNTIL(r.calls == 1, 2000);
  ASSERT_OK(r.status);
  ASSERT_OK(pp_release(&l, 0));
  pp_stats_t s = test_stats(pool);
  ASSERT_EQ(s.conns, 1);
  test_finish_srv(pool, srv);
}

/* select_peer that counts where it runs and picks the first candidate. */
static int select_first(void *data, pp_pool_t *pool, pp_peer_t *const *peers, int n, int dialing,
                        const char *key) {
  (void)data, (void)peers, (void)n, (void)dialing, (void)key;
  rx.select_calls++;
  if (test_in_call) rx.select_in_call++;
  if (rx.in_seed) rx.select_in_seed++;
  if (rx.select_calls == 1) rx.waiters_at_select = test_stats(pool).waiters;
  return 0;
}

static void seed_hook(void *data, pp_pool_t *pool, int wanted) {
  (void)data, (void)wanted;
  rx.seed_calls++;
  rx.in_seed = 1;
  for (int i = 0; i < 2 && rx.seed_addr[i]; i++)
    ASSERT_OK(pp_pool_add_peer(pool, rx.seed_addr[i], 0, NULL, NULL));
  rx.dials_in_seed = test_stats(pool).connecting;
  rx.in_seed = 0;
}

static pp_pool_t *select_pool(pp_options_t *o, int with_seed) {
  memset(&rx, 0, sizeof rx);
  rx.pool = test_pool(o);
  pp_policy_t pol;
  memset(&pol, 0, sizeof pol);
  pol.select_peer = select_first;
  if (with_seed) pol.seed = seed_hook;
  pp_pool_set_policy(rx.pool, &pol);
  return rx.pool;
}

TEST(reentry_release_that_closes_runs_no_select_peer_inside) {
  srv_t *a = srv_echo_start(NULL), *b = srv_echo_start(NULL);
  pp_options_t o;
  test_options(&o);
  o.max_total = 1;
  pp_pool_t *pool = select_pool(&o, 0);
  pp_peer_t *peer = test_peer(pool, srv_addr(a));
  test_peer(pool, srv_addr(b)); /* two candidates: select_peer is asked */
  pp_lease_t held, any;
  test_rec_t hr, ar;
  ASSERT_OK(test_acquire_wait(pool, &held, &hr, peer, NULL));
  ASSERT_OK(test_acquire_start(pool, &any, &ar, NULL, NULL)); /* any peer: waits (max_total) */
  int before = rx.select_calls;
  ASSERT_OK(CALL(pp_release(&held, PP_ENOREUSE))); /* closes the conn: a slot opens */
  ASSERT_EQ(rx.select_in_call, 0);
  ASSERT_EQ(test_stats(pool).connecting, 0); /* no dial started inside the release */
  RUN_UNTIL(ar.calls == 1, 2000);
  ASSERT_OK(ar.status);
  ASSERT_GT(rx.select_calls, before); /* the waiter's dial chose its peer, later */
  ASSERT_OK(pp_release(&any, 0));
  test_finish(pool);
  srv_stop(a);
  srv_stop(b);
}

TEST(reentry_add_peer_starts_no_dial_inside) {
  srv_t *srv = srv_echo_start(NULL);
  pp_options_t o;
  test_options(&o);
  pp_pool_t *pool = select_pool(&o, 1); /* a seed hook that adds nothing: acquires wait */
  pp_lease_t any;
  test_rec_t ar;
  ASSERT_OK(test_acquire_start(pool, &any, &ar, NULL, NULL));
  ASSERT_EQ(rx.seed_calls, 1);
  ASSERT_OK(CALL(pp_pool_add_peer(pool, srv_addr(srv), 0, NULL, NULL)));
  ASSERT_EQ(test_stats(pool).connecting, 0); /* the waiter's dial starts from the defer queue */
  RUN_UNTIL(ar.calls == 1, 2000);
  ASSERT_OK(ar.status);
  ASSERT_OK(pp_release(&any, 0));
  test_finish_srv(pool, srv);
}

TEST(reentry_seed_hook_adding_peers_queues_the_acquire_before_select_peer) {
  srv_t *a = srv_echo_start(NULL), *b = srv_echo_start(NULL);
  pp_options_t o;
  test_options(&o);
  o.seed_interval = 0; /* every acquire that finds no peer asks */
  pp_pool_t *pool = select_pool(&o, 1);
  pp_lease_t first, second;
  test_rec_t fr, sr;
  ASSERT_OK(test_acquire_start(pool, &first, &fr, NULL, NULL)); /* seeds nothing: waits */
  rx.seed_addr[0] = srv_addr(a);
  rx.seed_addr[1] = srv_addr(b);
  ASSERT_OK(test_acquire_start(pool, &second, &sr, NULL, NULL)); /* seeds both servers */
  ASSERT_EQ(rx.seed_calls, 2);
  ASSERT_EQ(rx.dials_in_seed, 0); /* adding peers chose and dialled nothing inside the hook */
  ASSERT_EQ(rx.select_in_seed, 0);
  ASSERT_GE(rx.select_calls, 1);
  ASSERT_EQ(rx.waiters_at_select, 2); /* both acquires queued when the first choice ran */
  RUN_UNTIL(fr.calls == 1 && sr.calls == 1, 2000);
  ASSERT_OK(fr.status);
  ASSERT_OK(sr.status);
  ASSERT_OK(pp_release(&first, 0));
  ASSERT_OK(pp_release(&second, 0));
  test_finish(pool);
  srv_stop(a);
  srv_stop(b);
}
