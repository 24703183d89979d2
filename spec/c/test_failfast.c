/* Fail fast with a cause: an acquire for a peer that cannot serve (burned, ejected, backing
 * off with no conn) is answered at once, never at its deadline, with a specific code; waiters
 * of a peer that stops being able to serve are answered on the next tick; the lease carries
 * the facts (pp_lease_cause) and a line that tells them (pp_lease_describe), a real timeout
 * included. */
#include "fixtures_multi.h"

/* A pool of two echo servers that ejects at the first failure. */
static fixture_peers_t duo_start(void) {
  return echo_peers_start(2, TEST_OPTS(o.eject_after = 1; o.eject_time = 5000));
}

/* A pool (options `o`) with one refused peer whose backoff is a fixed `*delay` ms. */
static fixture_t refused_start(const pp_options_t *o, int64_t *delay) {
  fixture_t f = fixture_start(srv_refused_start(), o);
  test_set_backoff(f.pool, test_backoff_fixed, delay);
  return f;
}

/* An acquire on the refused peer into `l`: it must fail to connect. */
static void fails_to_connect(fixture_t *f, pp_lease_t *l) {
  test_rec_t r;
  ASSERT_ERR(test_acquire_wait(f->pool, l, &r, f->peer, NULL), PP_ECANNOTCONNECT);
}

static void broken_use(pp_pool_t *pool, pp_peer_t *peer) {
  pp_lease_t l;
  test_rec_t r;
  ASSERT_OK(test_acquire_wait(pool, &l, &r, peer, NULL));
  ASSERT_OK(pp_release(&l, PP_EBROKEN));
}

static char line[512];

static const char *describe(const pp_lease_t *l) {
  int n = pp_lease_describe(l, line, sizeof line);
  ASSERT_GT(n, 0);
  ASSERT_LT(n, (int)sizeof line);
  printf("  describe: %s\n", line);
  return line;
}

TEST(failfast_ejected_peer_answers_at_once_with_its_cause) {
  fixture_peers_t d = duo_start();
  broken_use(d.pool, d.peer[0]);
  pp_lease_t l;
  test_rec_t r;
  ASSERT_ERR(test_acquire_start(d.pool, &l, &r, d.peer[0], NULL), PP_EEJECTED);
  pp_cause_t c;
  ASSERT_OK(pp_lease_cause(&l, &c));
  ASSERT_ERR(c.code, PP_EEJECTED);
  ASSERT_PTR_EQ(c.peer, d.peer[0]);
  ASSERT_EQ(c.state, PP_PEER_EJECTED);
  ASSERT_EQ(c.ejected, 1);
  ASSERT_GT(c.held_ms, 4000);
  ASSERT_LE(c.held_ms, 5000);
  ASSERT_EQ(c.failures, 1);
  ASSERT_ERR(c.last_error, PP_EBROKEN);
  ASSERT_EQ(c.peers, 2);
  ASSERT_EQ(c.peers_ejected, 1);
  ASSERT_CONTAINS(describe(&l), " is ejected for ");
  ASSERT_CONTAINS(line, " s more after 1 consecutive failure (last broken)");
  ASSERT(strncmp(line, srv_addr(d.srv[0]), strlen(srv_addr(d.srv[0]))) == 0);
  ASSERT_EQ(test_stats(d.pool).failed_fast, 1);
  ASSERT_EQ(r.calls, 0);
  fixture_peers_end(&d);
}

TEST(failfast_try_acquire_of_ejected_peer_says_ejected) {
  fixture_peers_t d = duo_start();
  broken_use(d.pool, d.peer[0]);
  pp_lease_t l;
  memset(&l, 0, sizeof l);
  ASSERT_ERR(pp_try_acquire(d.pool, &l, d.peer[0], NULL), PP_EEJECTED);
  ASSERT_CONTAINS(describe(&l), "is ejected");
  fixture_peers_end(&d);
}

TEST(failfast_waiter_of_a_peer_that_gets_ejected_is_answered_on_the_next_tick) {
  /* A waiter queued behind the peer's only conn (deadline 5 s): the conn breaks, the peer is
   * ejected, and the waiter hears PP_EEJECTED at once, not at its deadline. */
  fixture_peers_t d = duo_start();
  pp_lease_t held, waiter;
  test_rec_t hr, wr;
  ASSERT_OK(test_acquire_wait(d.pool, &held, &hr, d.peer[0], NULL));
  /* max_per_peer is 4: fill it so the waiter queues. */
  pp_lease_t more[3];
  test_rec_t mr[3];
  test_acquire_n(d.pool, d.peer[0], more, mr, 3);
  ASSERT_OK(
      test_acquire_start(d.pool, &waiter, &wr, d.peer[0], TEST_ACQUIRE_OPTS(a.timeout = 5000)));
  uint64_t t0 = test_now_ms();
  ASSERT_OK(pp_release(&held, PP_EBROKEN));
  RUN_UNTIL(wr.calls == 1, 1000);
  ASSERT_ERR(wr.status, PP_EEJECTED);
  ASSERT_LT(wr.at_ms - t0, 500);
  ASSERT_CONTAINS(describe(&waiter), "is ejected for");
  test_release_n(more, 3, 0);
  fixture_peers_end(&d);
}

TEST(failfast_backing_off_peer_describes_its_backoff) {
  int64_t delay = 3000;
  fixture_t f = refused_start(TEST_OPTS(o.eject_after = 0), &delay);
  pp_lease_t l;
  test_rec_t r;
  fails_to_connect(&f, &l);
  ASSERT_CONTAINS(describe(&l), "cannot connect to ");
  ASSERT_CONTAINS(line,
                  ": backing off for 3.0 s more after 1 consecutive failure (last "
                  "ECONNREFUSED)");
  uint64_t t0 = test_now_ms();
  ASSERT_ERR(test_acquire_start(f.pool, &l, &r, f.peer, NULL), PP_ECANNOTCONNECT);
  ASSERT_LT(test_now_ms() - t0, 1000); /* at once, not after the 3 s backoff */
  ASSERT_ERR(l.cause, UV_ECONNREFUSED);
  ASSERT_CONTAINS(describe(&l), "backing off for");
  fixture_end(&f);
}

TEST(failfast_burned_peer_describes_itself) {
  fixture_t f = fixture_burned();
  pp_lease_t l;
  test_rec_t r;
  ASSERT_ERR(test_acquire_start(f.pool, &l, &r, f.peer, NULL), PP_EBURNED);
  ASSERT_CONTAINS(describe(&l), " is burned: ");
  ASSERT_CONTAINS(line, "(last ECONNREFUSED)");
  fixture_end(&f);
}

TEST(failfast_timeout_describes_what_it_waited_behind) {
  /* One conn (max_per_peer 1), held; two waiters; the second times out first: it waited
   * behind the conn in use and one waiter, and the peer's last error shows. */
  fixture_t f;
  fixture_busy(&f, TEST_OPTS(o.eject_after = 0));
  ASSERT_OK(pp_release(&f.held, UV_ECONNRESET)); /* a last error to report */
  fixture_hold(&f);
  pp_lease_t first, second;
  test_rec_t fr, sr;
  pp_acquire_opts_t ao;
  pp_acquire_opts_init(&ao);
  ao.timeout = 2000;
  ASSERT_OK(test_acquire_start(f.pool, &first, &fr, f.peer, &ao));
  ao.timeout = 200;
  ASSERT_OK(test_acquire_start(f.pool, &second, &sr, f.peer, &ao));
  RUN_UNTIL(sr.calls == 1, 2000);
  ASSERT_ERR(sr.status, PP_ETIMEDOUT);
  pp_cause_t c;
  ASSERT_OK(pp_lease_cause(&second, &c));
  ASSERT_EQ(c.conns, 1);
  ASSERT_EQ(c.max_conns, 1);
  ASSERT_EQ(c.waiters_ahead, 1);
  ASSERT_GE(c.waited_ms, 200);
  ASSERT_ERR(c.last_error, UV_ECONNRESET);
  ASSERT_CONTAINS(describe(&second), "timed out after ");
  char want[256];
  snprintf(want, sizeof want,
           " ms waiting for %s: 1/1 conns in use, 1 waiter ahead; last error "
           "ECONNRESET ",
           srv_addr(f.srv));
  ASSERT_CONTAINS(line, want);
  ASSERT_CONTAINS(line, " s ago");
  ASSERT_OK(pp_acquire_cancel(&first));
  RUN_UNTIL(fr.calls == 1, 1000);
  ASSERT_OK(pp_release(&f.held, 0));
  fixture_end(&f);
}

TEST(failfast_any_peer_passes_over_held_peers) {
  /* An ejected peer, a peer backing off and a healthy one: acquires for any peer all go to the
   * healthy one and none fails. */
  srv_t *refused = srv_refused_start();
  fixture_peers_t d = duo_start();
  int64_t delay = 60000;
  test_set_backoff(d.pool, test_backoff_fixed, &delay);
  pp_peer_t *pr = test_peer(d.pool, srv_addr(refused));
  broken_use(d.pool, d.peer[0]);
  pp_lease_t l;
  test_rec_t r;
  ASSERT_ERR(test_acquire_wait(d.pool, &l, &r, pr, NULL), PP_ECANNOTCONNECT);
  for (int i = 0; i < 10; i++) {
    ASSERT_OK(test_acquire_wait(d.pool, &l, &r, NULL, NULL));
    ASSERT_PTR_EQ(l.peer, d.peer[1]);
    ASSERT_OK(pp_release(&l, 0));
  }
  fixture_peers_end(&d);
  srv_stop(refused);
}

TEST(failfast_any_peer_with_all_held_names_the_telling_peer) {
  int64_t delay = 60000;
  fixture_t f = refused_start(NULL, &delay);
  pp_lease_t l;
  test_rec_t r;
  /* The acquire for any peer dials the only one; its failure leaves nothing to serve. */
  ASSERT_OK(test_acquire_start(f.pool, &l, &r, NULL, NULL));
  RUN_UNTIL(r.calls == 1, 2000);
  ASSERT_ERR(r.status, PP_ECANNOTCONNECT);
  ASSERT_ERR(test_acquire_start(f.pool, &l, &r, NULL, NULL), PP_ECANNOTCONNECT);
  pp_cause_t c;
  ASSERT_OK(pp_lease_cause(&l, &c));
  ASSERT_PTR_EQ(c.peer, f.peer);
  ASSERT_CONTAINS(describe(&l), "no peer can serve (1 peer, 0 ejected): cannot connect to ");
  fixture_end(&f);
}

TEST(failfast_cause_is_zero_after_a_grant) {
  fixture_t f = fixture_start(srv_echo_start(NULL), NULL);
  pp_lease_t *l = &f.held;
  ASSERT_OK(test_acquire_start(f.pool, l, &f.held_rec, NULL,
                               TEST_ACQUIRE_OPTS(a.busy = PP_BUSY_FAIL; a.timeout = -1)));
  test_wait_ok(&f.held_rec);
  pp_cause_t c;
  memset(&c, 0xff, sizeof c);
  ASSERT_OK(pp_lease_cause(l, &c));
  ASSERT_EQ(c.code, 0);
  ASSERT_NULL(c.peer);
  ASSERT_EQ(pp_lease_describe(l, line, sizeof line), 0);
  ASSERT_STREQ(line, "");
  ASSERT_OK(pp_release(l, 0));
  fixture_end(&f);
}

TEST(failfast_describe_truncates_like_snprintf) {
  fixture_t f = fixture_start(srv_echo_start(NULL), TEST_OPTS(o.max_per_peer = 1));
  fixture_hold(&f);
  pp_lease_t l;
  test_rec_t r;
  ASSERT_ERR(test_acquire_start(f.pool, &l, &r, f.peer, TEST_ACQUIRE_OPTS(a.busy = PP_BUSY_FAIL)),
             PP_EBUSY);
  int whole = pp_lease_describe(&l, line, sizeof line);
  ASSERT_CONTAINS(line, " is at capacity: 1/1 conns in use");
  char small[8];
  ASSERT_EQ(pp_lease_describe(&l, small, sizeof small), whole);
  ASSERT_EQ(strlen(small), 7);
  ASSERT(strncmp(small, line, 7) == 0);
  ASSERT_EQ(pp_lease_describe(&l, NULL, 0), whole);
  ASSERT_ERR(pp_lease_describe(&l, NULL, 4), PP_EINVAL);
  ASSERT_ERR(pp_lease_describe(NULL, line, sizeof line), PP_EINVAL);
  ASSERT_ERR(pp_lease_cause(NULL, NULL), PP_EINVAL);
  ASSERT_OK(pp_release(&f.held, 0));
  fixture_end(&f);
}

TEST(failfast_waiters_stay_while_a_leased_conn_may_serve_them) {
  /* The only peer backs off (a broken conn, its ejection refused) while another conn of it is
   * leased: an acquire for it waits rather than failing fast, and the release serves it. */
  fixture_t f =
      fixture_start(srv_echo_start(NULL), TEST_OPTS(o.eject_after = 1; o.max_per_peer = 2));
  fixture_hold(&f);
  pp_lease_t broken, waiter;
  test_rec_t br, wr;
  ASSERT_OK(test_acquire_wait(f.pool, &broken, &br, f.peer, NULL));
  ASSERT_OK(pp_release(&broken, PP_EBROKEN));
  ASSERT_EQ(test_stats(f.pool).ejections_refused, 1);
  ASSERT_GT(test_peer_info(f.peer).retry_at, 0); /* backing off */
  ASSERT_EQ(pp_peer_check(f.peer), 0);           /* but its leased conn may serve */
  ASSERT_OK(test_acquire_start(f.pool, &waiter, &wr, f.peer, NULL));
  test_run_for(50);
  ASSERT_EQ(wr.calls, 0);
  ASSERT_EQ(test_stats(f.pool).connect_attempts, 2); /* nothing dialled meanwhile */
  ASSERT_OK(pp_release(&f.held, 0));
  test_wait_ok(&wr);
  ASSERT_OK(pp_release(&waiter, 0));
  fixture_end(&f);
}

TEST(failfast_notice_for_a_held_peer_fires_when_its_hold_ends) {
  int64_t delay = 200;
  fixture_t f = refused_start(TEST_OPTS(o.eject_after = 0), &delay);
  pp_lease_t l;
  fails_to_connect(&f, &l);
  pp_notice_t n;
  test_rec_t nr;
  uint64_t t0 = test_now_ms();
  ASSERT_OK(test_notice_start(f.pool, &n, &nr, f.peer));
  test_wait_ok(&nr);
  ASSERT_GE(nr.at_ms - t0, 100);
  fixture_end(&f);
}

static int seeds;

static void seed_nothing(void *data, pp_pool_t *pool, int wanted) {
  seeds++;
}

TEST(failfast_any_peer_with_a_seed_hook_waits_for_a_held_peer_to_return) {
  /* With a seed hook an acquire for any peer waits (addresses may come); when the only peer's
   * backoff ends, it is dialled for the waiter at once. */
  srv_t *srv = srv_echo_start(NULL);
  int port = srv_port(srv);
  pp_options_t o;
  test_options(&o);
  o.eject_after = 0;
  o.probe_interval = 0;
  o.seed_interval = 0;
  pp_peer_t *peer;
  pp_pool_t *pool = test_pool_on(srv, &o, &peer);
  pp_policy_t p;
  memset(&p, 0, sizeof p);
  int64_t delay = 300;
  p.data = &delay;
  p.backoff = test_backoff_fixed;
  p.seed = seed_nothing;
  pp_pool_set_policy(pool, &p);
  srv_stop(srv);
  pp_lease_t l;
  test_rec_t r;
  ASSERT_OK(test_acquire_start(pool, &l, &r, peer, NULL));
  RUN_UNTIL(r.calls == 1, 2000);
  ASSERT_ERR(r.status, PP_ECANNOTCONNECT);
  srv = srv_echo_start_on(NULL, port);
  if (srv == NULL) {
    test_finish(pool);
    test_skip("the port was taken meanwhile");
  }
  ASSERT_OK(test_acquire_start(pool, &l, &r, NULL, NULL));
  ASSERT_GE(seeds, 1);
  test_wait_ok(&r);
  ASSERT_OK(pp_release(&l, 0));
  test_finish_srv(pool, srv);
}
