/* The policy seam: select_peer / select_conn / backoff hooks, fallbacks and policy_errors. */
#include "fixtures.h"

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

static pp_pool_t *two_peers(srv_t *a, srv_t *b, pp_peer_t **pa, pp_peer_t **pb, sel_t *s) {
  pp_options_t o;
  test_options(&o);
  pp_pool_t *pool = test_pool(&o);
  *pa = test_peer(pool, srv_addr(a));
  *pb = test_peer(pool, srv_addr(b));
  pp_policy_t pol;
  memset(&pol, 0, sizeof pol);
  pol.data = s;
  pol.select_peer = sel_peer;
  pp_pool_set_policy(pool, &pol);
  return pool;
}

TEST(policy_select_peer_picks_for_dialing) {
  srv_t *a = srv_echo_start(NULL), *b = srv_echo_start(NULL);
  pp_peer_t *pa, *pb;
  sel_t s = {0};
  pp_pool_t *pool = two_peers(a, b, &pa, &pb, &s);
  s.answer = -2;
  s.want = pb;
  pp_acquire_opts_t ao;
  pp_acquire_opts_init(&ao);
  ao.key = "some-key";
  pp_lease_t l;
  test_rec_t r;
  ASSERT_OK(test_acquire_wait(pool, &l, &r, NULL, &ao));
  ASSERT_PTR_EQ(l.peer, pb);
  ASSERT_GE(s.calls, 1);
  ASSERT_EQ(s.last_dialing, 1); /* no peer had a usable conn */
  ASSERT_EQ(s.last_n, 2);
  ASSERT_STREQ(s.last_key, "some-key");
  ASSERT_ACCEPTED(b, 1);
  ASSERT_EQ(srv_accepted(a), 0);
  ASSERT_OK(pp_release(&l, 0));
  test_finish(pool);
  srv_stop(a);
  srv_stop(b);
}

TEST(policy_select_peer_picks_among_usable) {
  srv_t *a = srv_echo_start(NULL), *b = srv_echo_start(NULL);
  pp_peer_t *pa, *pb;
  sel_t s = {0};
  pp_pool_t *pool = two_peers(a, b, &pa, &pb, &s);
  pp_lease_t la, lb;
  test_rec_t ra, rb;
  ASSERT_OK(test_acquire_wait(pool, &la, &ra, pa, NULL));
  ASSERT_OK(test_acquire_wait(pool, &lb, &rb, pb, NULL));
  ASSERT_OK(pp_release(&la, 0));
  ASSERT_OK(pp_release(&lb, 0));
  s.answer = -2;
  for (int k = 0; k < 4; k++) {
    s.want = (k & 1) ? pa : pb;
    int before = s.calls;
    ASSERT_OK(test_acquire_wait(pool, &la, &ra, NULL, NULL));
    ASSERT_GT(s.calls, before);
    ASSERT_EQ(s.last_dialing, 0);
    ASSERT_EQ(s.last_n, 2);
    ASSERT_PTR_EQ(la.peer, s.want);
    ASSERT_OK(pp_release(&la, 0));
  }
  ASSERT_EQ(test_stats(pool).connect_attempts, 2);
  test_finish(pool);
  srv_stop(a);
  srv_stop(b);
}

TEST(policy_select_peer_bad_answer_falls_back) {
  srv_t *a = srv_echo_start(NULL), *b = srv_echo_start(NULL);
  pp_peer_t *pa, *pb;
  sel_t s = {0};
  pp_pool_t *pool = two_peers(a, b, &pa, &pb, &s);
  s.answer = 99;
  pp_lease_t l;
  test_rec_t r;
  ASSERT_OK(test_acquire_wait(pool, &l, &r, NULL, NULL));
  ASSERT(l.peer == pa || l.peer == pb);
  ASSERT_GE(test_stats(pool).policy_errors, 1);
  ASSERT_OK(pp_release(&l, 0));
  /* Both peers with an idle conn, so the hook has a real choice (n = 2). */
  pp_lease_t la, lb;
  test_rec_t ra, rb;
  ASSERT_OK(test_acquire_wait(pool, &la, &ra, pa, NULL));
  ASSERT_OK(test_acquire_wait(pool, &lb, &rb, pb, NULL));
  ASSERT_OK(pp_release(&la, 0));
  ASSERT_OK(pp_release(&lb, 0));
  s.answer = -5;
  uint64_t pe = test_stats(pool).policy_errors;
  int calls = s.calls;
  ASSERT_OK(test_acquire_wait(pool, &l, &r, NULL, NULL));
  ASSERT_GT(s.calls, calls);
  ASSERT_EQ(s.last_n, 2);
  ASSERT_GT(test_stats(pool).policy_errors, pe);
  ASSERT_OK(pp_release(&l, 0));
  test_finish(pool);
  srv_stop(a);
  srv_stop(b);
}

TEST(policy_select_peer_minus_one_is_default_not_error) {
  srv_t *a = srv_echo_start(NULL), *b = srv_echo_start(NULL);
  pp_peer_t *pa, *pb;
  sel_t s = {0};
  pp_pool_t *pool = two_peers(a, b, &pa, &pb, &s);
  s.answer = -1;
  pp_lease_t l;
  test_rec_t r;
  ASSERT_OK(test_acquire_wait(pool, &l, &r, NULL, NULL));
  ASSERT_EQ(test_stats(pool).policy_errors, 0);
  ASSERT_OK(pp_release(&l, 0));
  test_finish(pool);
  srv_stop(a);
  srv_stop(b);
}

static int bad_conn_choice(void *data, pp_peer_t *peer, pp_conn_t *const *conns, int n,
                           const char *key) {
  (*(int *)data)++;
  return n + 10;
}

TEST(policy_select_conn_bad_answer_falls_back) {
  fixture_t f = fixture_start(srv_echo_start(NULL), TEST_OPTS(o.max_per_peer = 2));
  pp_lease_t l[2];
  test_rec_t r[2];
  for (int i = 0; i < 2; i++)
    ASSERT_OK(test_acquire_wait(f.pool, &l[i], &r[i], f.peer, NULL));
  for (int i = 0; i < 2; i++)
    ASSERT_OK(pp_release(&l[i], 0));
  int calls = 0;
  pp_policy_t pol;
  memset(&pol, 0, sizeof pol);
  pol.data = &calls;
  pol.select_conn = bad_conn_choice;
  pp_pool_set_policy(f.pool, &pol);
  ASSERT_OK(test_acquire_wait(f.pool, &l[0], &r[0], f.peer, NULL));
  ASSERT_GE(calls, 1);
  ASSERT_GE(test_stats(f.pool).policy_errors, 1);
  ASSERT_NOT_NULL(l[0].conn);
  ASSERT_OK(pp_release(&l[0], 0));
  fixture_end(&f);
}

static int64_t nonsense_backoff(void *data, pp_peer_t *peer, int attempt, int err) {
  (*(int *)data)++;
  return -7;
}

TEST(policy_backoff_nonsense_falls_back) {
  srv_t *srv = srv_refused_start();
  pp_options_t o;
  test_options(&o);
  o.retries = 1;
  pp_pool_t *pool = test_pool(&o);
  int calls = 0;
  test_set_backoff(pool, nonsense_backoff, &calls);
  pp_peer_t *peer = test_peer(pool, srv_addr(srv));
  pp_lease_t l;
  test_rec_t r;
  ASSERT_ERR(test_acquire_wait(pool, &l, &r, peer, NULL), PP_ECANNOTCONNECT);
  ASSERT_GE(calls, 1);
  ASSERT_GE(test_stats(pool).policy_errors, 1);
  ASSERT_EQ(test_stats(pool).connect_attempts, 2); /* not burned, retried */
  ASSERT(pp_peer_state(peer) != PP_PEER_BURNED);
  test_finish_srv(pool, srv);
}

TEST(policy_is_copied_and_null_restores_defaults) {
  srv_t *a = srv_echo_start(NULL), *b = srv_echo_start(NULL);
  pp_peer_t *pa, *pb;
  sel_t s = {0};
  s.answer = -1;
  pp_options_t o;
  test_options(&o);
  pp_pool_t *pool = test_pool(&o);
  pa = test_peer(pool, srv_addr(a));
  pb = test_peer(pool, srv_addr(b));
  (void)pa;
  (void)pb;
  pp_policy_t pol;
  memset(&pol, 0, sizeof pol);
  pol.data = &s;
  pol.select_peer = sel_peer;
  pp_pool_set_policy(pool, &pol);
  pol.select_peer = NULL; /* the pool keeps its copy */
  pp_lease_t l;
  test_rec_t r;
  ASSERT_OK(test_acquire_wait(pool, &l, &r, NULL, NULL));
  ASSERT_GE(s.calls, 1);
  ASSERT_OK(pp_release(&l, 0));
  pp_pool_set_policy(pool, NULL);
  int before = s.calls;
  ASSERT_OK(test_acquire_wait(pool, &l, &r, NULL, NULL));
  ASSERT_EQ(s.calls, before);
  ASSERT_OK(pp_release(&l, 0));
  test_finish(pool);
  srv_stop(a);
  srv_stop(b);
}

TEST(policy_default_select_peer_round_robin) {
  /* Without a hook, acquires that name no peer rotate over ready peers. */
  srv_t *a = srv_echo_start(NULL), *b = srv_echo_start(NULL);
  pp_options_t o;
  test_options(&o);
  pp_pool_t *pool = test_pool(&o);
  pp_peer_t *pa = test_peer(pool, srv_addr(a));
  pp_peer_t *pb = test_peer(pool, srv_addr(b));
  pp_lease_t la, lb;
  test_rec_t ra, rb;
  ASSERT_OK(test_acquire_wait(pool, &la, &ra, pa, NULL));
  ASSERT_OK(test_acquire_wait(pool, &lb, &rb, pb, NULL));
  ASSERT_OK(pp_release(&la, 0));
  ASSERT_OK(pp_release(&lb, 0));
  int hits_a = 0, hits_b = 0;
  for (int k = 0; k < 6; k++) {
    ASSERT_OK(test_acquire_wait(pool, &la, &ra, NULL, NULL));
    if (la.peer == pa) hits_a++;
    if (la.peer == pb) hits_b++;
    ASSERT_OK(pp_release(&la, 0));
  }
  ASSERT_EQ(hits_a + hits_b, 6);
  ASSERT_GE(hits_a, 2);
  ASSERT_GE(hits_b, 2);
  test_finish(pool);
  srv_stop(a);
  srv_stop(b);
}
