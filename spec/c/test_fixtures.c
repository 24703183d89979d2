/* The shared fixtures of fixtures.h (no tests here). */
#include "fixtures.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

fixture_t fixture_start(srv_t *srv, const pp_options_t *opts) {
  fixture_t f;
  pp_options_t d;
  if (opts == NULL) {
    test_options(&d);
    opts = &d;
  }
  memset(&f, 0, sizeof f);
  f.srv = srv;
  f.pool = test_pool_on(srv, opts, &f.peer);
  return f;
}

void fixture_hold(fixture_t *f) {
  ASSERT_OK(test_acquire_wait(f->pool, &f->held, &f->held_rec, f->peer, NULL));
  /* The client side connects before the server's accept runs: wait for the server too, so a
   * test that then runs the process out of fds does not make libuv's accept drop this conn
   * (its EMFILE trick accepts and closes what is pending). */
  RUN_UNTIL(srv_accepted(f->srv) >= (int)test_stats(f->pool).connects_ok, 2000);
}

void fixture_end(fixture_t *f) {
  test_finish_srv(f->pool, f->srv);
}

void test_acquire_n(pp_pool_t *pool, pp_peer_t *peer, pp_lease_t *l, test_rec_t *r, int n) {
  for (int i = 0; i < n; i++)
    ASSERT_OK(test_acquire_wait(pool, &l[i], &r[i], peer, NULL));
}

void test_release_n(pp_lease_t *l, int n, int status) {
  for (int i = 0; i < n; i++)
    ASSERT_OK(pp_release(&l[i], status));
}

void test_acquire_fails(pp_pool_t *pool, pp_peer_t *peer, const pp_acquire_opts_t *opts, int code) {
  pp_lease_t l;
  test_rec_t r;
  ASSERT_ERR(test_acquire_start(pool, &l, &r, peer, opts), code);
  ASSERT_EQ(r.calls, 0);
}

void test_try_acquire_fails(pp_pool_t *pool, pp_peer_t *peer, int code) {
  pp_lease_t l;
  memset(&l, 0, sizeof l);
  ASSERT_ERR(pp_try_acquire(pool, &l, peer, NULL), code);
}

pp_pool_t *test_pool_on(const srv_t *srv, const pp_options_t *opts, pp_peer_t **peer) {
  pp_pool_t *pool = test_pool(opts);
  *peer = test_peer(pool, srv_addr(srv));
  return pool;
}

void test_finish_srv(pp_pool_t *pool, srv_t *srv) {
  test_finish(pool);
  srv_stop(srv);
}

typedef struct {
  uint64_t stall_ms;
  void (*fn)(void *);
  void *arg;
  int ran, closed;
} stall_t;

/* A check callback, like the pool's own deferred callbacks: the next loop iteration runs its
 * timers before it polls, so anything the stale clock made due fires first. */
static void stall_cb(uv_check_t *c) {
  stall_t *s = c->data;
  uv_check_stop(c);
  uint64_t end = uv_hrtime() + s->stall_ms * 1000000u;
  while (uv_hrtime() < end) {
  }
  s->fn(s->arg);
  s->ran = 1;
}

static void stall_closed(uv_handle_t *h) {
  ((stall_t *)h->data)->closed = 1;
}

void test_after_stall(uint64_t stall_ms, void (*fn)(void *), void *arg) {
  stall_t s = {stall_ms, fn, arg, 0, 0};
  uv_check_t c;
  uv_check_init(test_loop(), &c);
  c.data = &s;
  uv_check_start(&c, stall_cb);
  RUN_UNTIL(s.ran, 5000);
  uv_close((uv_handle_t *)&c, stall_closed);
  RUN_UNTIL(s.closed, 1000);
}

void test_fds_exhaust(test_fds_t *t, int limit) {
  if (getrlimit(RLIMIT_NOFILE, &t->saved) != 0) FAIL("getrlimit: %s", strerror(errno));
  struct rlimit low = t->saved;
  low.rlim_cur = (rlim_t)limit;
  if (setrlimit(RLIMIT_NOFILE, &low) != 0) FAIL("setrlimit: %s", strerror(errno));
  t->n = 0;
  for (;;) {
    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      ASSERT_EQ(errno, EMFILE);
      return;
    }
    if (t->n == (int)(sizeof t->fds / sizeof t->fds[0]))
      FAIL("open-file limit %d not reached", limit);
    t->fds[t->n++] = fd;
  }
}

void test_fds_release(test_fds_t *t) {
  while (t->n > 0)
    close(t->fds[--t->n]);
  if (setrlimit(RLIMIT_NOFILE, &t->saved) != 0) FAIL("setrlimit: %s", strerror(errno));
}

/* ---- More shared setup (see the block at the end of fixtures.h) ---------------------------- */

void fixture_held(fixture_t *f, srv_t *srv, const pp_options_t *opts) {
  *f = fixture_start(srv, opts);
  fixture_hold(f);
}

void fixture_release_end(fixture_t *f) {
  ASSERT_OK(pp_release(&f->held, 0));
  fixture_end(f);
}

void expect_connects_all_failed(pp_pool_t *pool, int attempts) {
  pp_stats_t s = test_stats(pool);
  ASSERT_EQ(s.connect_attempts, attempts);
  ASSERT_EQ(s.connects_failed, attempts);
  ASSERT_EQ(s.cannot_connect, 1);
  ASSERT_EQ(s.conns, 0);
}

fixture_peers_t fixture_peers_start(int n, srv_t *const srv[], const pp_options_t *opts) {
  ASSERT_LE(n, FIXTURE_PEERS_MAX);
  fixture_peers_t f;
  memset(&f, 0, sizeof f);
  f.n = n;
  f.pool = test_pool(opts != NULL ? opts : TEST_OPTS());
  for (int i = 0; i < n; i++) {
    f.srv[i] = srv[i];
    f.peer[i] = test_peer(f.pool, srv_addr(f.srv[i]));
  }
  return f;
}

fixture_peers_t echo_peers_start(int n, const pp_options_t *opts) {
  ASSERT_LE(n, FIXTURE_PEERS_MAX);
  srv_t *srv[FIXTURE_PEERS_MAX];
  for (int i = 0; i < n; i++)
    srv[i] = srv_echo_start(NULL);
  return fixture_peers_start(n, srv, opts);
}

void fixture_peers_end(fixture_peers_t *f) {
  test_finish(f->pool);
  for (int i = 0; i < f->n; i++)
    srv_stop(f->srv[i]);
}

int fixture_peers_index(const fixture_peers_t *f, const pp_peer_t *peer) {
  for (int i = 0; i < f->n; i++)
    if (f->peer[i] == peer) return i;
  return -1;
}
