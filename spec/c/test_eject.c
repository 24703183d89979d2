/* Outlier ejection: eject_after consecutive failures eject a peer for a cool-down that doubles
 * with each consecutive ejection up to eject_max and starts over after sustained success; at
 * most eject_max_percent of the peers are ejected at once, never all (a peer refused ejection
 * backs off briefly instead); an ejected peer lends nothing, and its leased conns close when
 * they come back. */
#include "fixtures.h"

#define NSRV 4

typedef struct {
  srv_t *srv[NSRV];
  pp_peer_t *peer[NSRV];
  pp_pool_t *pool;
  int n;
} farm_t;

/* `n` echo servers, a pool (with `o`) holding each as a peer. */
static farm_t farm_start(int n, const pp_options_t *o) {
  farm_t f;
  memset(&f, 0, sizeof f);
  f.n = n;
  f.pool = test_pool(o);
  pp_pool_on_state(f.pool, test_state_cb);
  for (int i = 0; i < n; i++) {
    f.srv[i] = srv_echo_start(NULL);
    f.peer[i] = test_peer(f.pool, srv_addr(f.srv[i]));
  }
  return f;
}

static void farm_end(farm_t *f) {
  test_finish(f->pool);
  for (int i = 0; i < f->n; i++)
    srv_stop(f->srv[i]);
}

static void eject_options(pp_options_t *o, int after, int64_t time, int64_t max) {
  test_options(o);
  o->eject_after = after;
  o->eject_time = time;
  o->eject_max = max;
}

/* A farm of `n` echo servers whose pool ejects after `after` failures, for `time` ms doubling
 * up to `max` ms. */
static farm_t eject_farm(int n, int after, int64_t time, int64_t max) {
  pp_options_t o;
  eject_options(&o, after, time, max);
  return farm_start(n, &o);
}

/* Acquire a conn of `peer` and release it with `status`. */
static void use(pp_pool_t *pool, pp_peer_t *peer, int status) {
  pp_lease_t l;
  test_rec_t r;
  ASSERT_OK(test_acquire_wait(pool, &l, &r, peer, NULL));
  ASSERT_OK(pp_release(&l, status));
}

/* How much longer `peer` is held (ejected or backing off), in ms. */
static int64_t held_ms(pp_peer_t *peer) {
  int64_t at = test_peer_info(peer).retry_at;
  uv_update_time(test_loop());
  int64_t now = (int64_t)uv_now(test_loop());
  return at > now ? at - now : 0;
}

TEST(eject_after_consecutive_broken_releases) {
  farm_t f = eject_farm(2, 3, 200, 400);
  for (int i = 0; i < 3; i++)
    use(f.pool, f.peer[0], PP_EBROKEN);
  ASSERT_EQ(test_stats(f.pool).ejections, 1);
  pp_peer_info_t info = test_peer_info(f.peer[0]);
  ASSERT_EQ(info.ejections, 1);
  ASSERT_EQ(info.eject_streak, 1);
  ASSERT_EQ(info.state, PP_PEER_EJECTED);
  ASSERT_GT(info.ejected_until, test_unix_ms());
  ASSERT_LE(info.ejected_until, test_unix_ms() + 200 + 5);
  /* While it cools down an acquire for it is answered at once; afterwards it serves again. */
  ASSERT_ERR(pp_peer_check(f.peer[0]), PP_EEJECTED);
  uint64_t t0 = test_now_ms();
  RUN_UNTIL(pp_peer_check(f.peer[0]) == 0, 2000);
  ASSERT_GE(test_now_ms() - t0, 100); /* generous: the cool-down is 200 ms */
  use(f.pool, f.peer[0], 0);
  ASSERT_EQ(pp_peer_state(f.peer[0]), PP_PEER_READY);
  farm_end(&f);
}

TEST(eject_healthy_release_resets_the_run) {
  farm_t f = eject_farm(2, 2, 10000, 10000);
  for (int i = 0; i < 4; i++)
    use(f.pool, f.peer[0], i % 2 == 0 ? PP_EBROKEN : 0); /* broken, healthy, ... */
  ASSERT_EQ(test_stats(f.pool).ejections, 0);
  farm_end(&f);
}

TEST(eject_leased_conn_closes_when_it_comes_back) {
  farm_t f = eject_farm(2, 1, 10000, 10000);
  pp_lease_t spare;
  test_rec_t r;
  ASSERT_OK(test_acquire_wait(f.pool, &spare, &r, f.peer[0], NULL));
  use(f.pool, f.peer[0], PP_EBROKEN);
  ASSERT_EQ(pp_peer_state(f.peer[0]), PP_PEER_EJECTED);
  ASSERT_OK(pp_release(&spare, 0)); /* healthy, but its peer cools down */
  pp_stats_t s = test_stats(f.pool);
  ASSERT_EQ(s.closed[PP_CLOSE_EJECTED], 1);
  ASSERT_EQ(s.conns, 0);
  farm_end(&f);
}

TEST(eject_shared_conn_takes_no_new_lease) {
  /* With client_limit > 1 a leased conn could take more leases: not while its peer is
   * ejected. l1 and l2 share conn A; l3 gets conn B, whose broken verdict ejects the peer. */
  pp_options_t o;
  eject_options(&o, 1, 10000, 10000);
  o.client_limit = 2;
  farm_t f = farm_start(2, &o);
  pp_lease_t l[3], more;
  test_rec_t r[3];
  for (int i = 0; i < 3; i++)
    ASSERT_OK(test_acquire_wait(f.pool, &l[i], &r[i], f.peer[0], NULL));
  ASSERT_PTR_EQ(l[0].conn, l[1].conn);
  ASSERT_PTR_NE(l[0].conn, l[2].conn);
  ASSERT_OK(pp_release(&l[2], PP_EBROKEN));
  ASSERT_EQ(pp_peer_state(f.peer[0]), PP_PEER_EJECTED);
  ASSERT_OK(pp_release(&l[1], 0)); /* A has room for a lease again, but lends nothing */
  memset(&more, 0, sizeof more);
  ASSERT_ERR(pp_try_acquire(f.pool, &more, f.peer[0], NULL), PP_EEJECTED);
  ASSERT_OK(pp_release(&l[0], 0));
  ASSERT_EQ(test_stats(f.pool).closed[PP_CLOSE_EJECTED], 1);
  farm_end(&f);
}

TEST(eject_cooldown_doubles_up_to_eject_max) {
  /* Each ejection that follows the last one without sustained success in between doubles the
   * cool-down: 200, 400, then eject_max (500). The run of failures outlives an ejection, so
   * one more failure after it ejects again (the breaker's half-open state). Long enough that
   * a loaded machine's stalls (up to 150 ms) neither end a success streak nor blur a step. */
  farm_t f = eject_farm(3, 1, 200, 500);
  int64_t want[3] = {200, 400, 500};
  for (int i = 0; i < 3; i++) {
    RUN_UNTIL(pp_peer_check(f.peer[0]) == 0, 2000);
    use(f.pool, f.peer[0], PP_EBROKEN);
    int64_t held = held_ms(f.peer[0]);
    ASSERT_LE(held, want[i]);
    ASSERT_GT(held, want[i] - 150);
    ASSERT_EQ(test_peer_info(f.peer[0]).eject_streak, i + 1);
  }
  ASSERT_EQ(test_peer_info(f.peer[0]).ejections, 3);
  farm_end(&f);
}

TEST(eject_streak_resets_after_sustained_success) {
  /* eject_time 400 ms: the use right after the cool-down must come before a sustained success
   * (eject_time) could have passed, even on a loaded machine. */
  farm_t f = eject_farm(3, 1, 400, 4000);
  use(f.pool, f.peer[0], PP_EBROKEN);
  RUN_UNTIL(pp_peer_check(f.peer[0]) == 0, 2000);
  use(f.pool, f.peer[0], 0); /* right after the cool-down: not sustained yet */
  ASSERT_EQ(test_peer_info(f.peer[0]).eject_streak, 1);
  test_run_for(450); /* eject_time without a failure */
  use(f.pool, f.peer[0], 0);
  ASSERT_EQ(test_peer_info(f.peer[0]).eject_streak, 0);
  use(f.pool, f.peer[0], PP_EBROKEN);
  ASSERT_LE(held_ms(f.peer[0]), 400); /* starts from eject_time again */
  farm_end(&f);
}

TEST(eject_max_percent_caps_ejections) {
  /* 4 peers, 50%: two may be ejected at once; the third backs off briefly instead. */
  farm_t f = eject_farm(4, 1, 10000, 10000);
  for (int i = 0; i < 3; i++)
    use(f.pool, f.peer[i], PP_EBROKEN);
  pp_stats_t s = test_stats(f.pool);
  ASSERT_EQ(s.ejections, 2);
  ASSERT_EQ(s.ejections_refused, 1);
  ASSERT_EQ(s.peers_by_state[PP_PEER_EJECTED], 2);
  ASSERT_EQ(pp_peer_state(f.peer[2]), PP_PEER_FAILED);
  ASSERT_LE(held_ms(f.peer[2]), 500);
  RUN_UNTIL(pp_peer_check(f.peer[2]) == 0, 1500);
  use(f.pool, f.peer[2], 0);
  farm_end(&f);
}

/* A farm of `n` peers that eject at the first failure, at most `max_percent` of them at once;
 * peer 0 fails once and its ejection is refused. */
static farm_t ejection_refused(int n, int max_percent) {
  pp_options_t o;
  eject_options(&o, 1, 10000, 10000);
  o.eject_max_percent = max_percent;
  farm_t f = farm_start(n, &o);
  use(f.pool, f.peer[0], PP_EBROKEN);
  ASSERT_EQ(test_stats(f.pool).ejections, 0);
  ASSERT_EQ(test_stats(f.pool).ejections_refused, 1);
  return f;
}

TEST(eject_never_the_only_peer) {
  /* With one peer an ejection would be an outage: it backs off for at most 500 ms and serves
   * again. */
  farm_t f = ejection_refused(1, 100);
  ASSERT_ERR(pp_peer_check(f.peer[0]), PP_ECANNOTCONNECT); /* no conn, backing off briefly */
  uint64_t t0 = test_now_ms();
  RUN_UNTIL(pp_peer_check(f.peer[0]) == 0, 2000);
  ASSERT_LT(test_now_ms() - t0, 1000);
  use(f.pool, f.peer[0], 0);
  farm_end(&f);
}

TEST(eject_max_percent_zero_never_ejects) {
  farm_t f = ejection_refused(3, 0);
  farm_end(&f);
}

TEST(eject_counts_failed_connects) {
  /* Failed connects count toward eject_after like failures in use. */
  srv_t *refused = srv_refused_start();
  pp_options_t o;
  eject_options(&o, 2, 10000, 10000);
  o.retries = 1;
  farm_t f = farm_start(2, &o);
  pp_peer_t *bad = test_peer(f.pool, srv_addr(refused));
  pp_lease_t l;
  test_rec_t r;
  ASSERT_ERR(test_acquire_wait(f.pool, &l, &r, bad, NULL), PP_EEJECTED);
  ASSERT_EQ(test_peer_info(bad).ejections, 1);
  ASSERT_EQ(test_stats(f.pool).connect_attempts, 2);
  pp_cause_t c;
  ASSERT_OK(pp_lease_cause(&l, &c));
  ASSERT_ERR(c.last_error, UV_ECONNREFUSED);
  farm_end(&f);
  srv_stop(refused);
}
