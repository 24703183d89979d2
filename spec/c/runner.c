/*
 * The test runner: `pp_tests` lists the tests, `pp_tests NAME` runs one, `pp_tests --all`
 * runs each in a child process and prints a summary (ctest is the usual driver).
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdarg.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "test.h"

static pp_test_t *tests_head, *tests_tail;
static const char *current_test = "?";

void pp_test_register(pp_test_t *t) {
  for (pp_test_t *o = tests_head; o; o = o->next) {
    if (strcmp(o->name, t->name) == 0) {
      fprintf(stderr, "duplicate test name %s (%s and %s)\n", t->name, o->file, t->file);
      abort();
    }
  }
  if (tests_tail)
    tests_tail->next = t;
  else
    tests_head = t;
  tests_tail = t;
}

void pp_test_fail(const char *file, int line, const char *fmt, ...) {
  va_list ap;
  fflush(stdout);
  fprintf(stderr, "FAIL %s\n%s:%d: ", current_test, file, line);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fprintf(stderr, "\n");
  fflush(stderr);
  abort();
}

void test_skip(const char *why) {
  printf("SKIP %s: %s\n", current_test, why);
  fflush(stdout);
  exit(0);
}

/* ------------------------------------------------------------------------------------------
 * Loop helpers.
 */
static uv_loop_t loop_storage;
static int loop_ready;
static int loop_finished; /* test_finish ran: waiting now only sleeps (servers' threads) */
static uv_timer_t guard;
static int guard_ready;

int test_in_call;
int test_close_calls;
int test_order_counter;

uv_loop_t *test_loop(void) {
  if (loop_finished) FAIL("the loop was used after test_finish()");
  if (!loop_ready) {
    if (uv_loop_init(&loop_storage) != 0) FAIL("uv_loop_init failed");
    loop_ready = 1;
  }
  return &loop_storage;
}

uint64_t test_now_ms(void) {
  return uv_hrtime() / 1000000u;
}

int64_t test_unix_ms(void) {
  struct timeval tv;
  gettimeofday(&tv, NULL);
  return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

static void guard_cb(uv_timer_t *t) {
  (void)t;
}

static void ensure_guard(void) {
  if (!guard_ready) {
    uv_timer_init(test_loop(), &guard);
    uv_timer_start(&guard, guard_cb, 5, 5);
    guard_ready = 1;
  }
}

void test_tick(void) {
  if (loop_finished) {
    usleep(1000);
    return;
  }
  ensure_guard();
  uv_run(test_loop(), UV_RUN_ONCE);
}

void test_run_nowait(void) {
  if (loop_finished) return;
  uv_run(test_loop(), UV_RUN_NOWAIT);
}

void test_run_for(uint64_t ms) {
  /* A few turns of the loop whatever the clock says: a process stalled for `ms` on a loaded
   * machine would otherwise turn it not at all, and work deferred to the next tick (which the
   * caller may expect done) would not have run. */
  uint64_t end = test_now_ms() + ms;
  for (int turns = 0; turns < 3 || test_now_ms() < end; turns++)
    test_tick();
}

void test_options(pp_options_t *opts) {
  pp_options_init(opts);
  opts->connect_timeout = 200;
  opts->handshake_timeout = 200;
  opts->retries = 0;
  opts->acquire_timeout = 2000;
}

pp_pool_t *test_pool(const pp_options_t *opts) {
  pp_pool_t *pool = NULL;
  const char *why = NULL;
  int rc = pp_pool_new(test_loop(), opts, &pool, &why);
  if (rc != 0) FAIL("pp_pool_new: %s (%s)", pp_err_name(rc), why ? why : "-");
  ASSERT_NOT_NULL(pool);
  return pool;
}

pp_peer_t *test_peer(pp_pool_t *pool, const char *addr) {
  pp_peer_t *peer = NULL;
  const char *why = NULL;
  int rc = pp_pool_add_peer(pool, addr, 0, &peer, &why);
  if (rc != 0) FAIL("pp_pool_add_peer(%s): %s (%s)", addr, pp_err_name(rc), why ? why : "-");
  ASSERT_NOT_NULL(peer);
  return peer;
}

void test_close_cb(pp_pool_t *pool) {
  (void)pool;
  ASSERT_NOT_IN_CALL();
  test_close_calls++;
}

static void walk_cb(uv_handle_t *h, void *arg) {
  (void)arg;
  fprintf(stderr, "  handle left: type=%s active=%d closing=%d\n", uv_handle_type_name(h->type),
          uv_is_active(h), uv_is_closing(h));
}

void test_finish_closed(void) {
  RUN_UNTIL(test_close_calls >= 1, 5000);
  /* A few more iterations: the close callback must not run twice. */
  for (int i = 0; i < 5; i++)
    test_run_nowait();
  ASSERT_EQ(test_close_calls, 1);
  if (guard_ready) {
    uv_close((uv_handle_t *)&guard, NULL);
    guard_ready = 0;
  }
  for (int i = 0; i < 5; i++)
    test_run_nowait();
  int rc = uv_loop_close(test_loop());
  if (rc != 0) {
    uv_walk(test_loop(), walk_cb, NULL);
    FAIL("uv_loop_close(loop) == 0\n  got: %d (%s): a handle was left behind", rc, pp_err_name(rc));
  }
  loop_ready = 0;
  loop_finished = 1;
}

void test_finish(pp_pool_t *pool) {
  if (pool != NULL) {
    int rc = CALL(pp_pool_close(pool, test_close_cb));
    if (rc != 0) FAIL("pp_pool_close at test end: %s", pp_err_name(rc));
    ASSERT_EQ(test_close_calls, 0); /* never inside the call */
  } else {
    test_close_calls = 1;
  }
  test_finish_closed();
}

/* What the recording callbacks share: never inside the call, then one more call of `rec`. */
static void record(test_rec_t *rec, int status) {
  ASSERT_NOT_IN_CALL();
  ASSERT_NOT_NULL(rec);
  rec->calls++;
  rec->status = status;
  rec->at_ms = test_now_ms();
  rec->order = ++test_order_counter;
}

void test_acquire_cb(pp_lease_t *lease, int status) {
  record(lease->data, status);
  if (status == 0) {
    ASSERT_NOT_NULL(lease->conn);
  }
}

void test_notice_cb(pp_notice_t *n, int status) {
  record(n->data, status);
}

int test_acquire_start(pp_pool_t *pool, pp_lease_t *lease, test_rec_t *rec, pp_peer_t *peer,
                       const pp_acquire_opts_t *opts) {
  memset(lease, 0, sizeof *lease);
  memset(rec, 0, sizeof *rec);
  lease->data = rec;
  return CALL(pp_acquire(pool, lease, peer, opts, test_acquire_cb));
}

int test_acquire_wait(pp_pool_t *pool, pp_lease_t *lease, test_rec_t *rec, pp_peer_t *peer,
                      const pp_acquire_opts_t *opts) {
  int rc = test_acquire_start(pool, lease, rec, peer, opts);
  if (rc != 0) FAIL("pp_acquire returned %d (%s)", rc, pp_err_name(rc));
  ASSERT_EQ(rec->calls, 0);
  RUN_UNTIL(rec->calls > 0, 10000);
  ASSERT_EQ(rec->calls, 1);
  return rec->status;
}

pp_conn_t *test_acquire_release_with(pp_pool_t *pool, pp_peer_t *peer,
                                     const pp_acquire_opts_t *opts) {
  pp_lease_t l;
  test_rec_t r;
  ASSERT_OK(test_acquire_wait(pool, &l, &r, peer, opts));
  pp_conn_t *conn = l.conn;
  ASSERT_OK(pp_release(&l, 0));
  return conn;
}

pp_conn_t *test_acquire_release(pp_pool_t *pool, pp_peer_t *peer) {
  return test_acquire_release_with(pool, peer, NULL);
}

int test_notice_start(pp_pool_t *pool, pp_notice_t *n, test_rec_t *rec, pp_peer_t *peer) {
  memset(n, 0, sizeof *n);
  memset(rec, 0, sizeof *rec);
  n->data = rec;
  return pp_notice_start(pool, n, peer, test_notice_cb);
}

void test_set_backoff(pp_pool_t *pool, int64_t (*backoff)(void *, pp_peer_t *, int, int),
                      void *data) {
  pp_policy_t pol;
  memset(&pol, 0, sizeof pol);
  pol.data = data;
  pol.backoff = backoff;
  pp_pool_set_policy(pool, &pol);
}

int64_t test_backoff_fixed(void *data, pp_peer_t *peer, int attempt, int err) {
  (void)peer;
  (void)attempt;
  (void)err;
  return *(int64_t *)data;
}

test_transition_t test_transitions[TEST_MAX_TRANSITIONS];
int test_ntransitions;

void test_state_cb(pp_pool_t *pool, pp_peer_t *peer, pp_peer_state_t from, pp_peer_state_t to) {
  ASSERT_NOT_IN_CALL(); /* delivered on a later tick, never inside the causing call */
  ASSERT_NOT_NULL(pool);
  ASSERT_NOT_NULL(peer);
  ASSERT_PTR_EQ(pp_peer_pool(peer), pool);
  if (from == to) FAIL("state callback with from == to (%s)", pp_peer_state_name(from));
  pp_peer_state_t prev = PP_PEER_KNOWN;
  for (int i = test_ntransitions - 1; i >= 0; i--) {
    if (test_transitions[i].peer == peer) {
      prev = test_transitions[i].to;
      break;
    }
  }
  if (from != prev) {
    test_dump_transitions();
    FAIL("transition %s -> %s of %s, but the peer was %s", pp_peer_state_name(from),
         pp_peer_state_name(to), pp_peer_addr(peer), pp_peer_state_name(prev));
  }
  if (test_ntransitions < TEST_MAX_TRANSITIONS) {
    test_transitions[test_ntransitions].peer = peer;
    test_transitions[test_ntransitions].from = from;
    test_transitions[test_ntransitions].to = to;
    test_ntransitions++;
  }
}

int test_find_transition(pp_peer_t *peer, pp_peer_state_t to, int start) {
  for (int i = start < 0 ? 0 : start; i < test_ntransitions; i++)
    if (test_transitions[i].peer == peer && test_transitions[i].to == to) return i;
  return -1;
}

void test_dump_transitions(void) {
  fprintf(stderr, "  transitions:\n");
  for (int i = 0; i < test_ntransitions; i++)
    fprintf(stderr, "    %d: %p %s -> %s\n", i, (void *)test_transitions[i].peer,
            pp_peer_state_name(test_transitions[i].from),
            pp_peer_state_name(test_transitions[i].to));
}

pp_stats_t test_stats(pp_pool_t *pool) {
  pp_stats_t s;
  memset(&s, 0xa5, sizeof s);
  pp_pool_stats(pool, &s);
  return s;
}

pp_peer_info_t test_peer_info(pp_peer_t *peer) {
  pp_peer_info_t i;
  memset(&i, 0xa5, sizeof i);
  pp_peer_info(peer, &i);
  return i;
}

typedef struct {
  int done;
  int status;
} write_wait_t;

static void write_wait_cb(pp_write_t *req, int status) {
  ASSERT_NOT_IN_CALL();
  write_wait_t *w = req->data;
  w->done++;
  w->status = status;
}

int test_write(pp_conn_t *conn, const void *data, size_t len) {
  pp_write_t req;
  write_wait_t w = {0, 0};
  memset(&req, 0, sizeof req);
  req.data = &w;
  uv_buf_t buf = uv_buf_init((char *)data, (unsigned int)len);
  int rc = CALL(pp_conn_write(&req, conn, &buf, 1, write_wait_cb));
  if (rc != 0) {
    /* A call that returns an error never runs its callback. */
    for (int i = 0; i < 3; i++)
      test_run_nowait();
    ASSERT_EQ(w.done, 0);
    return rc;
  }
  RUN_UNTIL(w.done == 1, 5000);
  return w.status;
}

void test_reader_cb(pp_conn_t *conn, ssize_t nread, const char *buf, void *arg) {
  (void)conn;
  ASSERT_NOT_IN_CALL();
  test_reader_t *r = arg;
  if (r->ended) {
    r->after_end++;
    return;
  }
  r->calls++;
  if (nread < 0) {
    r->ended++;
    r->end_status = nread;
    return;
  }
  if (r->len + (size_t)nread > r->cap) {
    size_t cap = r->cap ? r->cap : 1024;
    while (cap < r->len + (size_t)nread)
      cap *= 2;
    r->buf = realloc(r->buf, cap);
    ASSERT_NOT_NULL(r->buf);
    r->cap = cap;
  }
  memcpy(r->buf + r->len, buf, (size_t)nread);
  r->len += (size_t)nread;
}

void test_reader_free(test_reader_t *r) {
  free(r->buf);
  memset(r, 0, sizeof *r);
}

/* ------------------------------------------------------------------------------------------
 * main
 */
static void on_alarm(int sig) {
  (void)sig;
  static const char msg[] = "FAIL: test watchdog expired (hung)\n";
  ssize_t n = write(2, msg, sizeof msg - 1);
  (void)n;
  abort();
}

static int run_all(const char *self) {
  int total = 0, failed = 0;
  for (pp_test_t *t = tests_head; t; t = t->next) {
    total++;
    pid_t pid = fork();
    if (pid == 0) {
      execl(self, self, t->name, (char *)NULL);
      _exit(127);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    int ok = WIFEXITED(st) && WEXITSTATUS(st) == 0;
    if (!ok) failed++;
    printf("%-4s %s\n", ok ? "ok" : "FAIL", t->name);
    fflush(stdout);
  }
  printf("%d tests, %d failed\n", total, failed);
  return failed ? 1 : 0;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  /* Like any libuv program that writes to sockets: a peer that went away must show up as
   * EPIPE, not kill the process. */
  signal(SIGPIPE, SIG_IGN);
  if (argc < 2) {
    for (pp_test_t *t = tests_head; t; t = t->next)
      printf("%s\n", t->name);
    return 0;
  }
  if (strcmp(argv[1], "--all") == 0) return run_all(argv[0]);
  for (pp_test_t *t = tests_head; t; t = t->next) {
    if (strcmp(t->name, argv[1]) == 0) {
      current_test = t->name;
      signal(SIGALRM, on_alarm);
      alarm(55);
      srand((unsigned)time(NULL) ^ (unsigned)getpid());
      t->fn();
      if (loop_ready) FAIL("the test used the loop but did not end with test_finish()");
      printf("ok %s\n", t->name);
      return 0;
    }
  }
  fprintf(stderr, "no test named %s\n", argv[1]);
  return 2;
}
