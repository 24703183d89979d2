/* Recovery under load: workers run request after request (acquire, write 8 bytes, read the
 * echo, release) while a server dies or restarts. A held peer that once connected is probed
 * (probe_interval) so that it serves again soon after it comes back, and acquires for any peer
 * route around a dead one: only the requests in flight on it fail. */
#include "fixtures.h"

#define NWORKERS 12
#define MSG "ping1234"
#define MSGLEN 8

typedef struct {
  pp_lease_t lease;
  pp_write_t w;
  uv_timer_t timer;
  size_t got;
  int end;          /* the read's end status (0 while none) */
  uint64_t started; /* test ms when its current acquire started */
  int busy;         /* a request (or its pause) is under way */
} worker_t;

static struct {
  pp_pool_t *pool;
  pp_peer_t *target; /* NULL: any peer */
  worker_t w[NWORKERS];
  int stopping;
  uint64_t ok, acquire_failed, request_failed;
  uint64_t first_fail_at, last_fail_at, last_ok_at;
  uint64_t detected_at;         /* when the dead peer was seen failed (0: not yet) */
  uint64_t failed_after_detect; /* requests started after detection that failed */
  uint64_t ok_after;            /* successes after `mark` */
  uint64_t first_ok_after;      /* first success after `mark` */
  uint64_t mark;
} L;

static void start(worker_t *w);

static void failed(worker_t *w, int acquire) {
  uint64_t now = test_now_ms();
  if (acquire)
    L.acquire_failed++;
  else
    L.request_failed++;
  if (L.first_fail_at == 0) L.first_fail_at = now;
  L.last_fail_at = now;
  if (L.detected_at && w->started > L.detected_at) L.failed_after_detect++;
}

static void succeeded(void) {
  uint64_t now = test_now_ms();
  L.ok++;
  L.last_ok_at = now;
  if (L.mark && now >= L.mark) {
    L.ok_after++;
    if (L.first_ok_after == 0) L.first_ok_after = now;
  }
}

static void again_cb(uv_timer_t *t) {
  start(t->data);
}

/* The next request after `ms` (0: on the next loop iteration, outside any engine callback). */
static void again(worker_t *w, uint64_t ms) {
  if (L.stopping) {
    w->busy = 0;
    return;
  }
  uv_timer_start(&w->timer, again_cb, ms, 0);
}

static void finish_cb(uv_timer_t *t) {
  worker_t *w = t->data;
  int end = w->end;
  ASSERT_OK(pp_release(&w->lease, end == 0 ? 0 : end));
  again(w, 0);
}

static void reader(pp_conn_t *conn, ssize_t nread, const char *buf, void *arg) {
  worker_t *w = arg;
  if (w->end || w->got >= MSGLEN) return;
  if (nread < 0) {
    w->end = (int)nread;
    failed(w, 0);
  } else {
    w->got += (size_t)nread;
    if (w->got < MSGLEN) return;
    succeeded();
  }
  pp_conn_read_stop(conn);
  uv_timer_start(&w->timer, finish_cb, 0, 0); /* release outside the reader */
}

static void written(pp_write_t *req, int status) {
  (void)req; /* a failed write ends the read too (the conn breaks) */
}

static void acquired(pp_lease_t *lease, int status) {
  worker_t *w = lease->data;
  if (status != 0) {
    failed(w, 1);
    again(w, 5);
    return;
  }
  static const char msg[] = MSG;
  uv_buf_t buf = uv_buf_init((char *)msg, MSGLEN);
  w->got = 0;
  w->end = 0;
  ASSERT_OK(pp_conn_read_start(lease->conn, reader, w));
  int rc = pp_conn_write(&w->w, lease->conn, &buf, 1, written);
  if (rc != 0) {
    w->end = rc;
    failed(w, 0);
    pp_conn_read_stop(lease->conn);
    uv_timer_start(&w->timer, finish_cb, 0, 0);
  }
}

static void start(worker_t *w) {
  pp_acquire_opts_t o;
  pp_acquire_opts_init(&o);
  o.timeout = 2000;
  memset(&w->lease, 0, sizeof w->lease);
  w->lease.data = w;
  w->busy = 1;
  w->started = test_now_ms();
  int rc = pp_acquire(L.pool, &w->lease, L.target, &o, acquired);
  if (rc != 0) {
    failed(w, 1);
    again(w, 5); /* answered at once: pace the retries */
  }
}

static void load_start(pp_pool_t *pool, pp_peer_t *target) {
  memset(&L, 0, sizeof L);
  L.pool = pool;
  L.target = target;
  for (int i = 0; i < NWORKERS; i++) {
    uv_timer_init(test_loop(), &L.w[i].timer);
    L.w[i].timer.data = &L.w[i];
    start(&L.w[i]);
  }
}

static int load_idle(void) {
  for (int i = 0; i < NWORKERS; i++)
    if (L.w[i].busy) return 0;
  return 1;
}

static void load_stop(void) {
  L.stopping = 1;
  RUN_UNTIL(load_idle(), 5000);
  for (int i = 0; i < NWORKERS; i++)
    uv_close((uv_handle_t *)&L.w[i].timer, NULL);
  test_run_for(5);
}

TEST(recover_only_peer_restart_serves_again_within_2s) {
  /* The pool's only peer is killed and restarted on the same port 300 ms later. The engine's
   * defaults for ejection (after 5, 10 s) and backoff (full jitter, up to 30 s) apply: with
   * one peer it is never ejected, and a probe every 500 ms finds it back. */
  srv_t *srv = srv_echo_start(NULL);
  int port = srv_port(srv);
  pp_options_t o;
  test_options(&o);
  pp_options_t d;
  pp_options_init(&d);
  o.eject_after = d.eject_after;
  o.eject_time = d.eject_time;
  o.probe_interval = d.probe_interval;
  pp_peer_t *peer;
  pp_pool_t *pool = test_pool_on(srv, &o, &peer);
  load_start(pool, NULL);
  RUN_UNTIL(L.ok >= 200, 3000);
  uint64_t down = test_now_ms();
  srv_stop(srv);
  test_run_for(300);
  srv = srv_echo_start_on(NULL, port);
  if (srv == NULL) {
    load_stop();
    test_finish(pool);
    test_skip("the port was taken meanwhile");
  }
  uint64_t up = test_now_ms();
  L.mark = up;
  RUN_UNTIL(L.ok_after >= 100, 5000);
  uint64_t back = L.first_ok_after - up;
  printf(
      "restart: down %llu ms; served again %llu ms after the restart; failures: %llu "
      "acquires, %llu requests, last %llu ms after the restart; probes %llu\n",
      (unsigned long long)(up - down), (unsigned long long)back,
      (unsigned long long)L.acquire_failed, (unsigned long long)L.request_failed,
      (unsigned long long)(L.last_fail_at > up ? L.last_fail_at - up : 0),
      (unsigned long long)test_stats(pool).probes);
  ASSERT_LT(back, 2000);
  ASSERT_EQ(test_stats(pool).ejections, 0);
  load_stop();
  test_finish_srv(pool, srv);
}

/* Two echo servers (*a, *b) and a pool with `opts` and a peer at each (the one at *a in *pa). */
static pp_pool_t *pool_on_two(const pp_options_t *opts, srv_t **a, srv_t **b, pp_peer_t **pa) {
  *a = srv_echo_start(NULL);
  *b = srv_echo_start(NULL);
  pp_pool_t *pool = test_pool_on(*a, opts, pa);
  test_peer(pool, srv_addr(*b));
  return pool;
}

/* test_finish(pool), then stop both servers. */
static void finish_two(pp_pool_t *pool, srv_t *a, srv_t *b) {
  test_finish(pool);
  srv_stop(a);
  srv_stop(b);
}

/* Marks the moment the dead peer is seen failed: its conns gone, held or ejected. */
static pp_peer_t *watched;

static void watch_cb(uv_timer_t *t) {
  pp_peer_info_t i = test_peer_info(watched);
  if (L.detected_at == 0 && i.conns == 0 &&
      (i.state == PP_PEER_FAILED || i.state == PP_PEER_EJECTED))
    L.detected_at = test_now_ms();
}

TEST(recover_one_of_three_dies_under_load) {
  /* Acquires for any peer over three servers; one dies. Only requests in flight on it (at most
   * max_per_peer) fail; no acquire fails; once it is seen failed, no request fails. */
  srv_t *s[3];
  const pp_options_t *opts = TEST_OPTS();
  pp_pool_t *pool = test_pool(opts);
  pp_peer_t *p[3];
  for (int i = 0; i < 3; i++) {
    s[i] = srv_echo_start(NULL);
    p[i] = test_peer(pool, srv_addr(s[i]));
  }
  load_start(pool, NULL);
  RUN_UNTIL(L.ok >= 300 && test_peer_info(p[1]).conns > 0, 3000);
  watched = p[1];
  uv_timer_t watch;
  uv_timer_init(test_loop(), &watch);
  uv_timer_start(&watch, watch_cb, 1, 1);
  uint64_t ok_before = L.ok;
  uint64_t killed = test_now_ms();
  srv_stop(s[1]);
  test_run_for(1500);
  uv_close((uv_handle_t *)&watch, NULL);
  printf(
      "one of three dies: %llu requests served after the kill; failed: %llu acquires, %llu "
      "requests (all within %llu ms of the kill), %llu of them started after the peer was "
      "seen failed (%llu ms after the kill)\n",
      (unsigned long long)(L.ok - ok_before), (unsigned long long)L.acquire_failed,
      (unsigned long long)L.request_failed,
      (unsigned long long)(L.last_fail_at ? L.last_fail_at - killed : 0),
      (unsigned long long)L.failed_after_detect,
      (unsigned long long)(L.detected_at ? L.detected_at - killed : 0));
  ASSERT_GT(L.detected_at, 0);
  ASSERT_EQ(L.acquire_failed, 0);
  ASSERT_LE(L.request_failed, (uint64_t)opts->max_per_peer);
  ASSERT_EQ(L.failed_after_detect, 0);
  ASSERT_GT(L.ok - ok_before, 300);
  load_stop();
  finish_two(pool, s[0], s[2]);
}

/* The outcome of an acquire of `peer`: an error answered at once, or the callback's status. */
static int acquire_status(pp_pool_t *pool, pp_lease_t *l, test_rec_t *r, pp_peer_t *peer) {
  int rc = test_acquire_start(pool, l, r, peer, NULL);
  if (rc != 0) return rc;
  RUN_UNTIL(r->calls == 1, 5000);
  return r->status;
}

TEST(recover_probe_ends_an_ejection_for_failed_connects) {
  /* A peer that served, then refused connects until it was ejected (eject_time 10 s), comes
   * back: a probe finds it within about probe_interval, long before its cool-down ends. */
  srv_t *a, *b;
  pp_peer_t *pa;
  pp_pool_t *pool = pool_on_two(
      TEST_OPTS(o.eject_after = 2; o.eject_time = 10000; o.probe_interval = 100), &a, &b, &pa);
  int port = srv_port(a);
  test_acquire_release(pool, pa);
  srv_stop(a);
  RUN_UNTIL(test_peer_info(pa).conns == 0, 2000);
  pp_lease_t l;
  test_rec_t r;
  int code;
  do { /* dial it until it is ejected: cannot_connect, backoff, ..., ejected */
    code = acquire_status(pool, &l, &r, pa);
    if (code == PP_ECANNOTCONNECT) RUN_UNTIL(pp_peer_check(pa) != PP_ECANNOTCONNECT, 2000);
  } while (code == PP_ECANNOTCONNECT);
  ASSERT_ERR(code, PP_EEJECTED);
  a = srv_echo_start_on(NULL, port);
  if (a == NULL) {
    test_finish(pool);
    test_skip("the port was taken meanwhile");
  }
  uint64_t t0 = test_now_ms();
  RUN_UNTIL(pp_peer_check(pa) == 0, 2000);
  ASSERT_LT(test_now_ms() - t0, 1000);
  ASSERT_GE(test_stats(pool).probes, 1);
  ASSERT_EQ(pp_peer_state(pa), PP_PEER_READY);
  test_acquire_release(pool, pa);
  finish_two(pool, a, b);
}

TEST(recover_no_probe_for_failures_in_use) {
  /* A peer ejected for broken conns is not probed: a connect proves nothing about those. */
  srv_t *a, *b;
  pp_peer_t *pa;
  pp_pool_t *pool = pool_on_two(TEST_OPTS(o.eject_after = 1; o.probe_interval = 20), &a, &b, &pa);
  pp_lease_t l;
  test_rec_t r;
  ASSERT_OK(test_acquire_wait(pool, &l, &r, pa, NULL));
  ASSERT_OK(pp_release(&l, PP_EBROKEN));
  ASSERT_EQ(pp_peer_state(pa), PP_PEER_EJECTED);
  test_run_for(200);
  ASSERT_EQ(test_stats(pool).probes, 0);
  ASSERT_EQ(test_stats(pool).connect_attempts, 1);
  ASSERT_ERR(pp_peer_check(pa), PP_EEJECTED);
  finish_two(pool, a, b);
}

TEST(recover_probe_interval_zero_sends_no_probe) {
  srv_t *srv = srv_echo_start(NULL);
  int port = srv_port(srv);
  int64_t delay = 60000;
  pp_peer_t *peer;
  pp_pool_t *pool = test_pool_on(srv, TEST_OPTS(o.probe_interval = 0; o.eject_after = 0), &peer);
  test_set_backoff(pool, test_backoff_fixed, &delay);
  test_acquire_release(pool, peer);
  srv_stop(srv);
  RUN_UNTIL(test_peer_info(peer).conns == 0, 2000);
  pp_lease_t l;
  test_rec_t r;
  ASSERT_ERR(test_acquire_wait(pool, &l, &r, peer, NULL), PP_ECANNOTCONNECT);
  srv = srv_echo_start_on(NULL, port);
  test_run_for(200);
  ASSERT_EQ(test_stats(pool).probes, 0);
  ASSERT_ERR(pp_peer_check(peer), PP_ECANNOTCONNECT);
  test_finish(pool);
  if (srv) srv_stop(srv);
}
