/* The policy seam: select_peer / select_conn / backoff hooks, fallbacks and policy_errors. */
#include "fixtures_multi.h"

typedef struct {
  int calls;
  int last_n;
  int last_dialing;
  const char *last_key;
  int answer; /* fixed answer, or -2 to pick `want` */
  pp_peer_t *want;
} sel_t;

static int sel_peer(void *data, pp_pool_t *pool, pp_peer_t *const *peers, int n, int dialing,
                    const char *key) {
  sel_t *s = data;
  s->calls++;
  s->last_n = n;
  s->last_dialing = dialing;
  s->last_key = key;
  ASSERT_GE(n, 1);
  for (int i = 0; i < n; i++)
    ASSERT_PTR_EQ(pp_peer_pool(peers[i]), pool);
  if (s->answer != -2) return s->answer;
  for (int i = 0; i < n; i++)
    if (peers[i] == s->want) return i;
  return -1;
}

/* Two echo servers as the peers of one pool (echo_peers_start), with `s` as the select_peer hook's
 * data. */
typedef struct {
  fixture_peers_t f;
  sel_t s;
} duo_t;

static void duo_start(duo_t *d, int hooked) {
  memset(d, 0, sizeof *d);
  d->f = echo_peers_start(2, NULL);
  if (!hooked) return;
  pp_policy_t pol;
  memset(&pol, 0, sizeof pol);
  pol.data = &d->s;
  pol.select_peer = sel_peer;
  pp_pool_set_policy(d->f.pool, &pol);
}

/* Leave one idle conn on each peer, so a hook has a real choice (n = 2). */
static void duo_idle_both(duo_t *d) {
  pp_lease_t la, lb;
  test_rec_t ra, rb;
  ASSERT_OK(test_acquire_wait(d->f.pool, &la, &ra, d->f.peer[0], NULL));
  ASSERT_OK(test_acquire_wait(d->f.pool, &lb, &rb, d->f.peer[1], NULL));
  ASSERT_OK(pp_release(&la, 0));
  ASSERT_OK(pp_release(&lb, 0));
}

/* An acquire that names no peer (the policy picks) into `l`; it must succeed. */
static void acquire_any(duo_t *d, pp_lease_t *l, const pp_acquire_opts_t *ao) {
  test_rec_t r;
  ASSERT_OK(test_acquire_wait(d->f.pool, l, &r, NULL, ao));
}

/* acquire_any, then a healthy release; returns the peer it was lent from. */
static pp_peer_t *use_any(duo_t *d) {
  pp_lease_t l;
  acquire_any(d, &l, NULL);
  pp_peer_t *peer = l.peer;
  ASSERT_OK(pp_release(&l, 0));
  return peer;
}

TEST(policy_select_peer_picks_for_dialing) {
  duo_t d;
  duo_start(&d, 1);
  d.s.answer = -2;
  d.s.want = d.f.peer[1];
  pp_lease_t l;
  acquire_any(&d, &l, TEST_ACQUIRE_OPTS(a.key = "some-key"));
  ASSERT_PTR_EQ(l.peer, d.f.peer[1]);
  ASSERT_GE(d.s.calls, 1);
  ASSERT_EQ(d.s.last_dialing, 1); /* no peer had a usable conn */
  ASSERT_EQ(d.s.last_n, 2);
  ASSERT_STREQ(d.s.last_key, "some-key");
  ASSERT_ACCEPTED(d.f.srv[1], 1);
  ASSERT_EQ(srv_accepted(d.f.srv[0]), 0);
  ASSERT_OK(pp_release(&l, 0));
  fixture_peers_end(&d.f);
}

TEST(policy_select_peer_picks_among_usable) {
  duo_t d;
  duo_start(&d, 1);
  duo_idle_both(&d);
  d.s.answer = -2;
  for (int k = 0; k < 4; k++) {
    d.s.want = (k & 1) ? d.f.peer[0] : d.f.peer[1];
    int before = d.s.calls;
    ASSERT_PTR_EQ(use_any(&d), d.s.want);
    ASSERT_GT(d.s.calls, before);
    ASSERT_EQ(d.s.last_dialing, 0);
    ASSERT_EQ(d.s.last_n, 2);
  }
  ASSERT_EQ(test_stats(d.f.pool).connect_attempts, 2);
  fixture_peers_end(&d.f);
}

TEST(policy_select_peer_bad_answer_falls_back) {
  duo_t d;
  duo_start(&d, 1);
  d.s.answer = 99;
  pp_peer_t *got = use_any(&d);
  ASSERT(got == d.f.peer[0] || got == d.f.peer[1]);
  ASSERT_GE(test_stats(d.f.pool).policy_errors, 1);
  duo_idle_both(&d);
  d.s.answer = -5;
  uint64_t pe = test_stats(d.f.pool).policy_errors;
  int calls = d.s.calls;
  use_any(&d);
  ASSERT_GT(d.s.calls, calls);
  ASSERT_EQ(d.s.last_n, 2);
  ASSERT_GT(test_stats(d.f.pool).policy_errors, pe);
  fixture_peers_end(&d.f);
}

TEST(policy_select_peer_minus_one_is_default_not_error) {
  duo_t d;
  duo_start(&d, 1);
  d.s.answer = -1;
  use_any(&d);
  ASSERT_EQ(test_stats(d.f.pool).policy_errors, 0);
  fixture_peers_end(&d.f);
}

static int bad_conn_choice(void *data, pp_peer_t *peer, pp_conn_t *const *conns, int n,
                           const char *key) {
  (*(int *)data)++;
  return n + 10;
}

TEST(policy_select_conn_bad_answer_falls_back) {
  fixture_leases_t h;
  fixture_leases_start(&h, TEST_OPTS(o.max_per_peer = 2), 2);
  test_release_n(h.l, 2, 0);
  int calls = 0;
  pp_policy_t pol;
  memset(&pol, 0, sizeof pol);
  pol.data = &calls;
  pol.select_conn = bad_conn_choice;
  pp_pool_set_policy(h.f.pool, &pol);
  ASSERT_OK(test_acquire_wait(h.f.pool, &h.l[0], &h.r[0], h.f.peer, NULL));
  ASSERT_GE(calls, 1);
  ASSERT_GE(test_stats(h.f.pool).policy_errors, 1);
  ASSERT_NOT_NULL(h.l[0].conn);
  ASSERT_OK(pp_release(&h.l[0], 0));
  fixture_end(&h.f);
}

static int64_t nonsense_backoff(void *data, pp_peer_t *peer, int attempt, int err) {
  (*(int *)data)++;
  return -7;
}

TEST(policy_backoff_nonsense_falls_back) {
  fixture_t f = fixture_start(srv_refused_start(), TEST_OPTS(o.retries = 1));
  int calls = 0;
  test_set_backoff(f.pool, nonsense_backoff, &calls);
  pp_lease_t l;
  test_rec_t r;
  ASSERT_ERR(test_acquire_wait(f.pool, &l, &r, f.peer, NULL), PP_ECANNOTCONNECT);
  ASSERT_GE(calls, 1);
  ASSERT_GE(test_stats(f.pool).policy_errors, 1);
  ASSERT_EQ(test_stats(f.pool).connect_attempts, 2); /* not burned, retried */
  ASSERT(pp_peer_state(f.peer) != PP_PEER_BURNED);
  fixture_end(&f);
}

TEST(policy_is_copied_and_null_restores_defaults) {
  duo_t d;
  duo_start(&d, 0);
  d.s.answer = -1;
  pp_policy_t pol;
  memset(&pol, 0, sizeof pol);
  pol.data = &d.s;
  pol.select_peer = sel_peer;
  pp_pool_set_policy(d.f.pool, &pol);
  pol.select_peer = NULL; /* the pool keeps its copy */
  use_any(&d);
  ASSERT_GE(d.s.calls, 1);
  pp_pool_set_policy(d.f.pool, NULL);
  int before = d.s.calls;
  use_any(&d);
  ASSERT_EQ(d.s.calls, before);
  fixture_peers_end(&d.f);
}

TEST(policy_default_select_peer_round_robin) {
  /* Without a hook, acquires that name no peer rotate over ready peers. */
  duo_t d;
  duo_start(&d, 0);
  duo_idle_both(&d);
  int hits_a = 0, hits_b = 0;
  for (int k = 0; k < 6; k++) {
    pp_peer_t *got = use_any(&d);
    if (got == d.f.peer[0]) hits_a++;
    if (got == d.f.peer[1]) hits_b++;
  }
  ASSERT_EQ(hits_a + hits_b, 6);
  ASSERT_GE(hits_a, 2);
  ASSERT_GE(hits_b, 2);
  fixture_peers_end(&d.f);
}
