/* The invariants of issue 2:
 *   - every acquire ends exactly once (a conn, or an error);
 *   - never more than max_per_peer conns per peer or max_total in all, counting conns still
 *     connecting (checked in the pool's stats and in the kernel's socket table);
 *   - acquire and release of an idle conn allocate nothing;
 *   - after close, the loop closes with 0 (every test ends with test_finish()).
 */
#include <unistd.h>

#include "fixtures.h"

/* ------------------------------------------------------------------------------------------
 * Allocation counting: this binary defines malloc & co. (forwarding to glibc's __libc_*), so
 * every allocation of the engine, libuv and libc in this process passes here. Only the
 * thread that sets `counting` is counted (the test servers allocate in their own threads).
 * Under AddressSanitizer the allocator belongs to ASan: the test skips itself.
 */
#if defined(__SANITIZE_ADDRESS__)
#define PP_NO_MALLOC_COUNT 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PP_NO_MALLOC_COUNT 1
#endif
#endif

static __thread volatile int counting;
static __thread volatile unsigned long alloc_count;

#ifndef PP_NO_MALLOC_COUNT
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void __libc_free(void *);

void *malloc(size_t n) {
  if (counting) alloc_count++;
  return __libc_malloc(n);
}

void *calloc(size_t n, size_t m) {
  if (counting) alloc_count++;
  return __libc_calloc(n, m);
}

void *realloc(void *p, size_t n) {
  if (counting) alloc_count++;
  return __libc_realloc(p, n);
}

void free(void *p) {
  __libc_free(p);
}
#endif

static void skip_if_no_malloc_count(void) {
#ifdef PP_NO_MALLOC_COUNT
  test_skip("allocation counting is not available under AddressSanitizer");
#endif
}

/* An echo server and a pool with engine defaults, left with one idle conn to it. */
static fixture_t one_idle_conn(void) {
  fixture_t f;
  memset(&f, 0, sizeof f);
  f.srv = srv_echo_start(NULL);
  f.pool = test_pool_on(f.srv, NULL, &f.peer);
  ASSERT_OK(test_acquire_wait(f.pool, &f.held, &f.held_rec, f.peer, NULL));
  ASSERT_OK(pp_release(&f.held, 0));
  return f;
}

/* `n` pp_try_acquire + pp_release on `peer` (NULL: any peer) with allocations counted; returns
 * how many try_acquires succeeded. */
static int counted_try_acquires(pp_pool_t *pool, pp_peer_t *peer, int n) {
  pp_lease_t l;
  memset(&l, 0, sizeof l);
  int ok = 0;
  counting = 1;
  for (int i = 0; i < n; i++) {
    if (pp_try_acquire(pool, &l, peer, NULL) == 0) ok++;
    pp_release(&l, 0);
  }
  counting = 0;
  return ok;
}

TEST(inv_try_acquire_release_of_idle_conn_allocates_nothing) {
  skip_if_no_malloc_count();
  /* The counter works at all. */
  counting = 1;
  void *volatile p = malloc(16);
  counting = 0;
  free(p);
  ASSERT_EQ(alloc_count, 1);
  alloc_count = 0;

  fixture_t f = one_idle_conn();
  /* Warm up once (first use of any lazily sized scratch space is not the steady state). */
  pp_lease_t l;
  memset(&l, 0, sizeof l);
  ASSERT_OK(pp_try_acquire(f.pool, &l, f.peer, NULL));
  ASSERT_OK(pp_release(&l, 0));
  ASSERT_EQ(counted_try_acquires(f.pool, f.peer, 1000), 1000);
  ASSERT_EQ(alloc_count, 0);
  /* The same through "any peer". */
  ASSERT_EQ(counted_try_acquires(f.pool, NULL, 1000), 1000);
  ASSERT_EQ(alloc_count, 0);
  fixture_end(&f);
}

TEST(inv_shared_try_acquire_release_allocates_nothing) {
  skip_if_no_malloc_count();
  fixture_t f =
      fixture_start(srv_echo_start(NULL), TEST_OPTS(o.client_limit = 4; o.max_per_peer = 2));
  pp_lease_t l[4];
  test_rec_t r[4];
  ASSERT_OK(test_acquire_wait(f.pool, &l[0], &r[0], f.peer, NULL));
  ASSERT_OK(pp_release(&l[0], 0));
  memset(l, 0, sizeof l);
  int ok = 0;
  counting = 1;
  for (int i = 0; i < 500; i++) {
    for (int k = 0; k < 4; k++)
      if (pp_try_acquire(f.pool, &l[k], f.peer, NULL) == 0) ok++;
    for (int k = 3; k >= 0; k--)
      pp_release(&l[k], 0);
  }
  counting = 0;
  ASSERT_EQ(ok, 2000);
  ASSERT_EQ(alloc_count, 0);
  fixture_end(&f);
}

static void count_cb(pp_lease_t *lease, int status) {
  test_rec_t *r = lease->data;
  r->calls++;
  r->status = status;
}

TEST(inv_acquire_release_of_idle_conn_allocates_nothing) {
  /* The callback path too: pp_acquire of an idle conn, the deferred callback, the release
   * (the loop iterations in between are counted as well). */
  skip_if_no_malloc_count();
  fixture_t f = one_idle_conn();
  test_tick(); /* the guard timer exists before counting starts */
  pp_lease_t l;
  test_rec_t r;
  memset(&l, 0, sizeof l);
  memset(&r, 0, sizeof r);
  l.data = &r;
  int warm = 5;
  for (int i = 0; i < 200 + warm; i++) {
    if (i == warm) counting = 1;
    int before = r.calls;
    ASSERT_OK(pp_acquire(f.pool, &l, f.peer, NULL, count_cb));
    while (r.calls == before)
      uv_run(test_loop(), UV_RUN_NOWAIT);
    ASSERT_OK(r.status);
    ASSERT_OK(pp_release(&l, 0));
  }
  counting = 0;
  ASSERT_EQ(r.calls, 200 + warm);
  ASSERT_EQ(alloc_count, 0);
  fixture_end(&f);
}

/* ------------------------------------------------------------------------------------------
 * The storm: random acquires (named peers and any peer, wait and fail, deadlines,
 * priorities), try_acquires, cancels, releases (healthy and broken), server kicks and
 * re-adds of a burned peer, against an echo server, a hanging listener, a refused port and a
 * peer whose backoff burns it; small limits. After every callback and every tick the limits
 * are checked; at the end every accepted acquire must have had exactly one callback.
 */
#define NSLOTS 96
enum { FREE, PENDING, GRANTED };

typedef struct {
  pp_lease_t lease;
  int state;
  int sync_granted;        /* granted by try_acquire: no callback */
  unsigned long accepted;  /* pp_acquire calls that returned 0 */
  unsigned long callbacks; /* callbacks received */
  int cancel_ok;           /* pp_acquire_cancel returned 0 in this generation */
  pp_write_t w;
  int writing;
} slot_t;

typedef struct {
  pp_pool_t *pool;
  srv_t *echo, *hang, *ref, *burn_srv;
  pp_peer_t *peers[4]; /* echo, hang, refused, burn */
  pp_options_t opts;
  slot_t slot[NSLOTS];
  uv_timer_t driver;
  int draining;
  unsigned long ops, cbs, grants, kicks, readds;
  unsigned long status_count[64];
  unsigned seed;
  int max_seen_total, max_seen_echo, max_seen_hang;
  unsigned long kernel_checks;
  uv_timer_t kernel_timer;
} storm_t;

static storm_t st;

static unsigned rnd(void) {
  st.seed = st.seed * 1103515245u + 12345u;
  return (st.seed >> 8) & 0xffffff;
}

static void check_limits(void) {
  pp_stats_t s;
  pp_pool_stats(st.pool, &s);
  if (s.conns > st.opts.max_total)
    FAIL("stats.conns %d > max_total %d", s.conns, st.opts.max_total);
  if (s.conns != s.idle + s.active + s.connecting)
    FAIL("conns %d != idle %d + active %d + connecting %d", s.conns, s.idle, s.active,
         s.connecting);
  int total = 0;
  for (int i = 0; i < 4; i++) {
    pp_peer_info_t pi;
    pp_peer_info(st.peers[i], &pi);
    if (pi.conns > st.opts.max_per_peer)
      FAIL("peer %s has %d conns > max_per_peer %d", pi.addr, pi.conns, st.opts.max_per_peer);
    if (pi.conns < 0 || pi.idle < 0 || pi.leases < 0 || pi.waiters < 0)
      FAIL("negative gauge on peer %s", pi.addr);
    total += pi.conns;
  }
  if (total > st.opts.max_total) FAIL("peers hold %d conns > max_total", total);
  if (s.conns > st.max_seen_total) st.max_seen_total = s.conns;
}

/* The kernel's view: sockets open or connecting to each server. A dump of the socket table
 * costs a millisecond or more, so this runs every few ms (kernel_timer) and at the end rather
 * than after every callback. */
static void check_kernel(void) {
  const srv_t *srvs[2] = {st.echo, st.hang};
  int k[2];
  srv_client_conns_many(srvs, 2, k);
  int ke = k[0], kh = k[1];
  st.kernel_checks++;
  if (ke > st.max_seen_echo) st.max_seen_echo = ke;
  if (kh > st.max_seen_hang) st.max_seen_hang = kh;
  if (ke > st.opts.max_per_peer) FAIL("kernel: %d sockets to the echo server", ke);
  if (kh > st.opts.max_per_peer) FAIL("kernel: %d sockets to the hanging listener", kh);
  if (ke + kh > st.opts.max_total) FAIL("kernel: %d sockets in all", ke + kh);
}

/* Every failure leaves its cause on the lease, and a line that describes it. */
static void check_cause(const pp_lease_t *lease, int code) {
  pp_cause_t c;
  ASSERT_OK(pp_lease_cause(lease, &c));
  ASSERT_ERR(c.code, code);
  char line[256];
  ASSERT_GT(pp_lease_describe(lease, line, sizeof line), 0);
}

/* The errors the storm allows: what an acquire's callback may report, and what pp_acquire and
 * pp_try_acquire may return at once. */
static const int callback_errors[] = {PP_ETIMEDOUT, PP_ENOPEER,   PP_ECANNOTCONNECT, PP_EBURNED,
                                      PP_EEJECTED,  PP_ECANCELED, PP_ECLOSED};
static const int acquire_errors[] = {PP_EBUSY,    PP_EEXHAUSTED,     PP_EBURNED,
                                     PP_EEJECTED, PP_ECANNOTCONNECT, PP_ENOPEER};
static const int try_acquire_errors[] = {PP_EAGAIN, PP_EBURNED, PP_EEJECTED, PP_ECANNOTCONNECT,
                                         PP_ENOPEER};

/* Fail, naming `what`, unless `code` is one of the `n` codes of `allowed`. */
static void expect_one_of(const char *what, int code, const int *allowed, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (allowed[i] == code) return;
  FAIL("unexpected %s %d (%s)", what, code, pp_err_name(code));
}
#define EXPECT_ONE_OF(what, code, allowed) \
  expect_one_of(what, code, allowed, sizeof allowed / sizeof allowed[0])

static void storm_cb(pp_lease_t *lease, int status) {
  slot_t *sl = lease->data;
  ASSERT_NOT_IN_CALL();
  sl->callbacks++;
  st.cbs++;
  if (sl->state != PENDING)
    FAIL("callback (status %s) for slot %d that is not pending (state %d)", pp_err_name(status),
         (int)(sl - st.slot), sl->state);
  if (sl->callbacks != sl->accepted)
    FAIL("slot %d: %lu callbacks for %lu accepted acquires", (int)(sl - st.slot), sl->callbacks,
         sl->accepted);
  int idx = status == 0 ? 0 : (-status) % 64;
  st.status_count[idx]++;
  if (status == 0) {
    ASSERT_NOT_NULL(lease->conn);
    sl->state = GRANTED;
    st.grants++;
    if (st.draining) {
      int rc = pp_release(lease, 0);
      ASSERT_ERR2(rc, 0, PP_ESTATE);
      sl->state = FREE;
    }
  } else {
    EXPECT_ONE_OF("acquire status", status, callback_errors);
    check_cause(lease, status);
    if (status == PP_ECANCELED && !sl->cancel_ok) FAIL("PP_ECANCELED without a cancel");
    ASSERT_NULL(lease->conn);
    sl->state = FREE;
  }
  check_limits();
}

static void storm_write_cb(pp_write_t *req, int status) {
  ASSERT_NOT_IN_CALL();
  slot_t *sl = req->data;
  ASSERT_EQ(sl->writing, 1);
  sl->writing = 0;
}

static slot_t *pick(int state) {
  int start = (int)(rnd() % NSLOTS);
  for (int i = 0; i < NSLOTS; i++) {
    slot_t *sl = &st.slot[(start + i) % NSLOTS];
    if (sl->state == state) return sl;
  }
  return NULL;
}

static void storm_op(void) {
  unsigned r = rnd() % 100;
  st.ops++;
  if (r < 45) { /* acquire */
    slot_t *sl = pick(FREE);
    if (!sl) return;
    pp_acquire_opts_t a;
    pp_acquire_opts_init(&a);
    a.busy = rnd() % 5 == 0 ? PP_BUSY_FAIL : PP_BUSY_WAIT;
    unsigned t = rnd() % 4;
    a.timeout = t == 0 ? -1 : t == 1 ? 0 : (int64_t)(10 + rnd() % 190);
    a.priority = (int)(rnd() % (PP_PRIORITY_MAX + 1));
    unsigned p = rnd() % 10;
    pp_peer_t *peer = p < 5   ? st.peers[0]
                      : p < 7 ? st.peers[1]
                      : p < 8 ? st.peers[2]
                      : p < 9 ? st.peers[3]
                              : NULL;
    void *data = sl->lease.data;
    memset(&sl->lease, 0, sizeof sl->lease);
    sl->lease.data = data;
    sl->cancel_ok = 0;
    int rc = CALL(pp_acquire(st.pool, &sl->lease, peer, &a, storm_cb));
    if (rc == 0) {
      sl->accepted++;
      sl->state = PENDING;
    } else {
      EXPECT_ONE_OF("pp_acquire return", rc, acquire_errors);
      check_cause(&sl->lease, rc);
    }
  } else if (r < 55) { /* try_acquire */
    slot_t *sl = pick(FREE);
    if (!sl) return;
    pp_peer_t *peer = rnd() % 2 ? st.peers[0] : NULL;
    void *data = sl->lease.data;
    memset(&sl->lease, 0, sizeof sl->lease);
    sl->lease.data = data;
    int rc = CALL(pp_try_acquire(st.pool, &sl->lease, peer, NULL));
    if (rc == 0) {
      ASSERT_NOT_NULL(sl->lease.conn);
      sl->state = GRANTED;
      sl->sync_granted++;
    } else {
      EXPECT_ONE_OF("pp_try_acquire return", rc, try_acquire_errors);
      if (rc != PP_EAGAIN) check_cause(&sl->lease, rc);
    }
  } else if (r < 65) { /* cancel */
    slot_t *sl = pick(PENDING);
    if (!sl) return;
    int rc = CALL(pp_acquire_cancel(&sl->lease));
    ASSERT_ERR2(rc, 0, PP_ESTATE);
    if (rc == 0) sl->cancel_ok = 1;
  } else if (r < 70) { /* write on a held conn; the echo comes back with no reader */
    slot_t *sl = pick(GRANTED);
    if (!sl || sl->writing || !sl->lease.conn) return;
    static char payload[] = "storm";
    uv_buf_t b = uv_buf_init(payload, 5);
    sl->w.data = sl;
    int rc = CALL(pp_conn_write(&sl->w, sl->lease.conn, &b, 1, storm_write_cb));
    if (rc == 0)
      sl->writing = 1;
    else
      ASSERT_LT(rc, 0);
  } else if (r < 95) { /* release */
    slot_t *sl = pick(GRANTED);
    if (!sl) return;
    int status = rnd() % 6 == 0 ? PP_EBROKEN : 0;
    int rc = CALL(pp_release(&sl->lease, status));
    ASSERT_ERR2(rc, 0, PP_ESTATE);
    sl->state = FREE;
  } else if (r < 97) { /* the echo server hangs up on everyone */
    srv_kick(st.echo);
    st.kicks++;
  } else { /* re-add the burn peer (unburns it) */
    pp_peer_t *p = NULL;
    ASSERT_OK(CALL(pp_pool_add_peer(st.pool, srv_addr(st.burn_srv), 0, &p, NULL)));
    ASSERT_PTR_EQ(p, st.peers[3]);
    st.readds++;
  }
  check_limits();
}

static void driver_cb(uv_timer_t *t) {
  for (int i = 0; i < 8; i++)
    storm_op();
}

static void kernel_cb(uv_timer_t *t) {
  check_kernel();
}

static int64_t storm_backoff(void *data, pp_peer_t *peer, int attempt, int err) {
  if (peer == st.peers[3]) return PP_BACKOFF_BURN;
  return (int64_t)(rnd() % 20);
}

static void storm_setup(void) {
  memset(&st, 0, sizeof st);
  const char *env = getenv("PP_SEED");
  st.seed = env ? (unsigned)strtoul(env, NULL, 10) : (unsigned)(test_now_ms() ^ (uint64_t)getpid());
  printf("storm seed %u (set PP_SEED to replay)\n", st.seed);
  st.echo = srv_echo_start(NULL);
  st.hang = srv_hang_start();
  st.ref = srv_refused_start();
  st.burn_srv = srv_refused_start();
  test_options(&st.opts);
  st.opts.max_per_peer = 2;
  st.opts.max_total = 5;
  st.opts.client_limit = 2;
  st.opts.backlog = 8;
  st.opts.acquire_timeout = 150;
  st.opts.connect_timeout = 50;
  st.opts.retries = 1;
  st.opts.idle_timeout = 100;
  st.opts.max_lifespan = 300;
  st.opts.lifespan_jitter = 50;
  /* Short cool-downs, so that the storm sees ejected peers come back (and be ejected again). */
  st.opts.eject_time = 100;
  st.opts.eject_max = 400;
  st.pool = test_pool(&st.opts);
  test_set_backoff(st.pool, storm_backoff, NULL);
  pp_pool_on_state(st.pool, test_state_cb);
  st.peers[0] = test_peer(st.pool, srv_addr(st.echo));
  st.peers[1] = test_peer(st.pool, srv_addr(st.hang));
  st.peers[2] = test_peer(st.pool, srv_addr(st.ref));
  st.peers[3] = test_peer(st.pool, srv_addr(st.burn_srv));
  for (int i = 0; i < NSLOTS; i++)
    st.slot[i].lease.data = &st.slot[i];
  uv_timer_init(test_loop(), &st.driver);
  uv_timer_start(&st.driver, driver_cb, 1, 1);
  uv_timer_init(test_loop(), &st.kernel_timer);
  uv_timer_start(&st.kernel_timer, kernel_cb, 3, 3);
}

static void storm_stop_driver(void) {
  check_kernel();
  uv_close((uv_handle_t *)&st.driver, NULL);
  uv_close((uv_handle_t *)&st.kernel_timer, NULL);
}

static int pending_count(void) {
  int n = 0;
  for (int i = 0; i < NSLOTS; i++)
    n += st.slot[i].state == PENDING;
  return n;
}

static void storm_check_once(void) {
  unsigned long acc = 0;
  for (int i = 0; i < NSLOTS; i++) {
    slot_t *sl = &st.slot[i];
    if (sl->callbacks != sl->accepted)
      FAIL("slot %d: %lu accepted acquires but %lu callbacks", i, sl->accepted, sl->callbacks);
    acc += sl->accepted;
  }
  printf(
      "storm: %lu ops, %lu accepted acquires, %lu callbacks, %lu granted, %lu kicks, %lu "
      "re-adds; max conns %d, max kernel sockets echo %d hang %d (%lu kernel checks)\n",
      st.ops, acc, st.cbs, st.grants, st.kicks, st.readds, st.max_seen_total, st.max_seen_echo,
      st.max_seen_hang, st.kernel_checks);
  printf(
      "statuses: ok %lu timeout %lu cannot_connect %lu burned %lu ejected %lu no_peer %lu "
      "canceled %lu closed %lu\n",
      st.status_count[0], st.status_count[(-PP_ETIMEDOUT) % 64],
      st.status_count[(-PP_ECANNOTCONNECT) % 64], st.status_count[(-PP_EBURNED) % 64],
      st.status_count[(-PP_EEJECTED) % 64], st.status_count[(-PP_ENOPEER) % 64],
      st.status_count[(-PP_ECANCELED) % 64], st.status_count[(-PP_ECLOSED) % 64]);
  ASSERT_GT(acc, 50); /* the storm did something */
  ASSERT_GT(st.grants, 10);
}

static void storm_teardown(void) {
  srv_stop(st.echo);
  srv_stop(st.hang);
  srv_stop(st.ref);
  srv_stop(st.burn_srv);
}

TEST(inv_storm_every_acquire_ends_once) {
  storm_setup();
  /* Until 4000 operations (about 1.5 s), at most 4 s on a slow (sanitizer) build. */
  RUN_WHILE_NOT(st.ops >= 4000, 4000);
  storm_stop_driver();
  /* Drain: release everything granted; grants that arrive from now on are released at once. */
  st.draining = 1;
  for (int i = 0; i < NSLOTS; i++) {
    if (st.slot[i].state == GRANTED) {
      int rc = pp_release(&st.slot[i].lease, 0);
      ASSERT_ERR2(rc, 0, PP_ESTATE);
      st.slot[i].state = FREE;
    }
  }
  RUN_UNTIL(pending_count() == 0, 10000);
  check_limits();
  check_kernel();
  pp_stats_t s = test_stats(st.pool);
  ASSERT_EQ(s.waiters, 0);
  ASSERT_EQ(s.active, 0);
  storm_check_once();
  test_finish(st.pool);
  /* Nothing arrives after close either. */
  storm_check_once();
  storm_teardown();
}

TEST(inv_storm_then_close_midway) {
  storm_setup();
  RUN_WHILE_NOT(st.ops >= 2000, 3000);
  storm_stop_driver();
  int pend = pending_count();
  ASSERT_OK(pp_pool_close(st.pool, test_close_cb));
  test_finish_closed();
  for (int i = 0; i < NSLOTS; i++) {
    slot_t *sl = &st.slot[i];
    if (sl->state == PENDING) FAIL("slot %d still pending after close", i);
    if (sl->state == GRANTED) {
      ASSERT_NULL(sl->lease.conn); /* detached */
      ASSERT_ERR2(pp_release(&sl->lease, 0), 0, PP_ESTATE);
    }
  }
  printf("pending at close: %d\n", pend);
  storm_check_once();
  storm_teardown();
}

TEST(inv_limits_hold_under_a_burst) {
  /* 40 simultaneous acquires for one peer: never more than max_per_peer dials. */
  fixture_t f = fixture_start(srv_echo_start(NULL),
                              TEST_OPTS(o.max_per_peer = 3; o.max_total = 3; o.backlog = 100));
  enum { N = 40 };
  pp_lease_t l[N];
  test_rec_t r[N];
  for (int i = 0; i < N; i++)
    ASSERT_OK(test_acquire_start(f.pool, &l[i], &r[i], f.peer, NULL));
  ASSERT_LE(test_stats(f.pool).connecting, 3);
  ASSERT_LE(srv_client_conns(f.srv), 3);
  int served = 0;
  uint64_t end = test_now_ms() + 5000;
  while (served < N && test_now_ms() < end) {
    test_tick();
    ASSERT_LE(srv_client_conns(f.srv), 3);
    ASSERT_LE(test_stats(f.pool).conns, 3);
    for (int i = 0; i < N; i++) {
      if (r[i].calls == 1 && l[i].conn) {
        ASSERT_OK(r[i].status);
        ASSERT_OK(pp_release(&l[i], 0));
        served++;
      }
    }
  }
  ASSERT_EQ(served, N);
  for (int i = 0; i < N; i++)
    ASSERT_EQ(r[i].calls, 1);
  ASSERT_LE(srv_max_open(f.srv), 3);
  ASSERT_LE(srv_accepted(f.srv), 3);
  fixture_end(&f);
}

TEST(inv_loop_closes_after_close_with_everything_in_flight) {
  /* The close path with conns in every phase: connecting, handshake-free ready, idle, leased,
   * backing off, and waiters; then uv_loop_close() == 0 (checked by test_finish). */
  srv_t *echo = srv_echo_start(NULL), *hang = srv_hang_start(), *ref = srv_refused_start();
  pp_pool_t *pool =
      test_pool(TEST_OPTS(o.max_per_peer = 2; o.retries = 5; o.connect_timeout = 5000));
  pp_peer_t *pe = test_peer(pool, srv_addr(echo));
  pp_peer_t *ph = test_peer(pool, srv_addr(hang));
  pp_peer_t *pr = test_peer(pool, srv_addr(ref));
  pp_lease_t l[8];
  test_rec_t r[8];
  test_acquire_n(pool, pe, l, r, 2);
  ASSERT_OK(pp_release(&l[1], 0));
  ASSERT_OK(test_acquire_start(pool, &l[2], &r[2], ph, NULL));
  ASSERT_OK(test_acquire_start(pool, &l[3], &r[3], pr, NULL));
  test_run_for(30);
  test_finish(pool);
  ASSERT_EQ(r[2].calls, 1);
  ASSERT_EQ(r[3].calls, 1);
  srv_stop(echo);
  srv_stop(hang);
  srv_stop(ref);
}
