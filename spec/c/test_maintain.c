/* target_peers maintenance, the seed hook, and keep_idle_bytes (ejection: test_eject.c). */
#include "fixtures.h"

#include <string.h>

typedef struct {
  int calls;
  int wanted;
  const char *addrs[4];
  int n;
} seed_rec_t;

static void seed_hook(void *data, pp_pool_t *pool, int wanted) {
  seed_rec_t *s = data;
  s->calls++;
  s->wanted = wanted;
  for (int i = 0; i < s->n; i++)
    pp_pool_add_peer(pool, s->addrs[i], 0, NULL, NULL);
}

/* A pool with `o` whose seed hook is seed_hook on `rec`. */
static pp_pool_t *seeded_pool(const pp_options_t *o, seed_rec_t *rec) {
  pp_policy_t policy = {0};
  policy.data = rec;
  policy.seed = seed_hook;
  pp_pool_t *pool = test_pool(o);
  pp_pool_set_policy(pool, &policy);
  return pool;
}

/* A seed record that adds the address of `srv`. */
static seed_rec_t seeds_of(const srv_t *srv) {
  seed_rec_t rec = {0};
  rec.addrs[0] = srv_addr(srv);
  rec.n = 1;
  return rec;
}

TEST(maintain_target_peers_dials_until_ready) {
  srv_t *a = srv_echo_start(NULL), *b = srv_echo_start(NULL), *c = srv_echo_start(NULL);
  pp_pool_t *pool = test_pool(TEST_OPTS(o.target_peers = 2; o.maintenance_interval = 20));
  test_peer(pool, srv_addr(a));
  test_peer(pool, srv_addr(b));
  test_peer(pool, srv_addr(c));
  RUN_UNTIL(test_stats(pool).peers_by_state[PP_PEER_READY] == 2, 2000);
  test_run_for(100);
  pp_stats_t s = test_stats(pool);
  ASSERT_EQ(s.peers_by_state[PP_PEER_READY], 2); /* two, not three */
  ASSERT_EQ(s.conns, 2);
  test_finish(pool);
  srv_stop(a);
  srv_stop(b);
  srv_stop(c);
}

TEST(maintain_calls_seed_when_out_of_candidates) {
  srv_t *a = srv_echo_start(NULL);
  seed_rec_t rec = seeds_of(a);
  pp_pool_t *pool = seeded_pool(
      TEST_OPTS(o.target_peers = 1; o.maintenance_interval = 20; o.seed_interval = 1000), &rec);
  RUN_UNTIL(test_stats(pool).peers_by_state[PP_PEER_READY] == 1, 2000);
  ASSERT_EQ(rec.calls, 1);
  ASSERT_EQ(rec.wanted, 1);
  ASSERT_EQ(test_stats(pool).seeds, 1);
  test_finish_srv(pool, a);
}

TEST(maintain_seed_is_rate_limited) {
  seed_rec_t rec = {0}; /* adds nothing */
  pp_pool_t *pool = seeded_pool(
      TEST_OPTS(o.target_peers = 3; o.maintenance_interval = 10; o.seed_interval = 100000), &rec);
  test_run_for(150);
  ASSERT_EQ(rec.calls, 1);
  test_finish(pool);
}

TEST(maintain_any_acquire_waits_for_seeded_peer) {
  srv_t *a = srv_echo_start(NULL);
  seed_rec_t rec = seeds_of(a);
  pp_pool_t *pool = seeded_pool(TEST_OPTS(), &rec);
  pp_lease_t l;
  test_rec_t r;
  /* No peer at all: with a seed hook the acquire waits and the seeded peer serves it. */
  ASSERT_OK(test_acquire_wait(pool, &l, &r, NULL, NULL));
  ASSERT_EQ(rec.calls, 1);
  ASSERT_STREQ(pp_peer_addr(l.peer), srv_addr(a));
  ASSERT_OK(pp_release(&l, 0));
  test_finish_srv(pool, a);
}

TEST(maintain_no_seed_hook_no_peer) {
  pp_pool_t *pool = test_pool(NULL);
  pp_lease_t l;
  test_rec_t r;
  ASSERT_ERR(test_acquire_start(pool, &l, &r, NULL, NULL), PP_ENOPEER);
  test_finish(pool);
}

static void written(pp_write_t *req, int status) {
  *(int *)req->data = status == 0 ? 1 : -1;
}

/* Write "late!" on a lease of the fixture's peer and release it at once, so the echo arrives
 * while the conn idles. Returns how many conns then closed as remote. */
static int late_reply(fixture_t *f) {
  static pp_write_t w;
  static int done;
  static char late[] = "late!";
  uv_buf_t buf = uv_buf_init(late, 5);
  fixture_hold(f);
  w.data = &done;
  ASSERT_OK(pp_conn_write(&w, f->held.conn, &buf, 1, written));
  ASSERT_OK(pp_release(&f->held, 0));
  RUN_UNTIL(test_stats(f->pool).bytes_in >= 5, 2000);
  test_run_for(20);
  return (int)test_stats(f->pool).closed[PP_CLOSE_REMOTE];
}

TEST(keep_idle_bytes_keeps_chatty_conns) {
  fixture_t f = fixture_start(srv_echo_start(NULL), TEST_OPTS(o.keep_idle_bytes = 1));
  ASSERT_EQ(late_reply(&f), 0);
  ASSERT_EQ(test_stats(f.pool).idle, 1);
  /* The next holder's reader gets the kept bytes. */
  fixture_hold(&f);
  test_reader_t rd = {0};
  ASSERT_OK(pp_conn_read_start(f.held.conn, test_reader_cb, &rd));
  RUN_UNTIL(rd.len >= 5, 2000);
  ASSERT_EQ(memcmp(rd.buf, "late!", 5), 0);
  ASSERT_OK(pp_release(&f.held, 0));
  test_reader_free(&rd);
  fixture_end(&f);
}

TEST(keep_idle_bytes_off_closes_on_late_reply) {
  fixture_t f = fixture_start(srv_echo_start(NULL), NULL);
  ASSERT_EQ(late_reply(&f), 1);
  fixture_end(&f);
}
