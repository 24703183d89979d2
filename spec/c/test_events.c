/* Pool events (pp_pool_on_event), leak detection (leak_threshold) and the explain ring. */
#include "fixtures.h"
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>

#include <string.h>

#define EV_MAX 256

static struct {
  pp_event_t ev[EV_MAX];
  int n;
  int in_call; /* set while the test is inside an engine call: events must not arrive then */
  int during_call;
  pp_lease_t *release_on_leak;
} evs;

static void on_event(pp_pool_t *pool, const pp_event_t *ev, void *arg) {
  (void)pool;
  ASSERT_PTR_EQ(arg, &evs);
  if (evs.in_call) evs.during_call++;
  if (evs.n < EV_MAX) evs.ev[evs.n++] = *ev;
  if (ev->kind == PP_EVENT_LEAK && evs.release_on_leak) {
    ASSERT_PTR_EQ(ev->lease, evs.release_on_leak);
    ASSERT_OK(pp_release(ev->lease, 0)); /* the lease is valid during the callback */
    evs.release_on_leak = NULL;
  }
}

static int count(pp_event_kind_t kind) {
  int n = 0;
  for (int i = 0; i < evs.n; i++)
    n += evs.ev[i].kind == kind;
  return n;
}

static const pp_event_t *find(pp_event_kind_t kind) {
  for (int i = 0; i < evs.n; i++)
    if (evs.ev[i].kind == kind) return &evs.ev[i];
  return NULL;
}

typedef struct {
  char all[8192];
  int n;
} explain_buf_t;

static int collect(const pp_explain_t *e, void *arg) {
  explain_buf_t *b = arg;
  size_t len = strlen(b->all);
  snprintf(b->all + len, sizeof(b->all) - len, "[%s] %s\n", e->kind, e->text);
  b->n++;
  return 0;
}

/* The explain entries of `peer` (NULL: the pool's) into `b`. */
static void explain(pp_pool_t *pool, pp_peer_t *peer, explain_buf_t *b) {
  memset(b, 0, sizeof *b);
  ASSERT_OK(pp_pool_explain(pool, peer, collect, b));
}

/* A fixture on `srv` whose pool (with `opts`, NULL: engine defaults) sends its events to
 * `evs`; the peer is added after subscribing, so its events are seen too. */
static fixture_t events_start(srv_t *srv, const pp_options_t *opts) {
  fixture_t f;
  memset(&f, 0, sizeof f);
  f.srv = srv;
  f.pool = test_pool(opts);
  pp_pool_on_event(f.pool, on_event, &evs);
  f.peer = test_peer(f.pool, srv_addr(srv));
  return f;
}

TEST(events_conn_open_close_and_state_in_order) {
  fixture_t f = events_start(srv_echo_start(NULL), NULL);
  pp_pool_t *pool = f.pool;
  pp_peer_t *peer = f.peer;
  pp_lease_t *l = &f.held;
  evs.in_call = 1;
  ASSERT_OK(test_acquire_start(pool, l, &f.held_rec, peer, NULL));
  evs.in_call = 0;
  RUN_UNTIL(f.held_rec.calls == 1, 2000);
  RUN_UNTIL(count(PP_EVENT_CONN_OPEN) == 1, 1000);
  const pp_event_t *open = find(PP_EVENT_CONN_OPEN);
  ASSERT_PTR_EQ(open->peer, peer);
  ASSERT_EQ(open->conn_id, pp_conn_id(l->conn));
  ASSERT(open->conn_id > 0);
  ASSERT(count(PP_EVENT_STATE) >= 2); /* known -> connecting -> ready */
  ASSERT_EQ(evs.during_call, 0);
  uint64_t id = pp_conn_id(l->conn);
  evs.in_call = 1;
  ASSERT_OK(pp_release(l, PP_ENOREUSE));
  evs.in_call = 0;
  RUN_UNTIL(count(PP_EVENT_CONN_CLOSE) == 1, 1000);
  const pp_event_t *close = find(PP_EVENT_CONN_CLOSE);
  ASSERT_EQ(close->conn_id, id);
  ASSERT_EQ(close->reason, PP_CLOSE_DISCARDED);
  ASSERT_PTR_EQ(close->peer, peer);
  ASSERT_EQ(evs.during_call, 0);
  /* Unsubscribed: nothing more. */
  pp_pool_on_event(pool, NULL, NULL);
  int before = evs.n;
  test_acquire_release(pool, peer);
  test_run_for(20);
  ASSERT_EQ(evs.n, before);
  ASSERT_STREQ(pp_event_kind_name(PP_EVENT_ACQUIRE_TIMEOUT), "acquire_timeout");
  ASSERT_STREQ(pp_event_kind_name(PP_EVENT_COUNT), "unknown");
  fixture_end(&f);
}

TEST(events_acquire_timeout_and_explain_says_why_it_waited) {
  fixture_t f = events_start(srv_echo_start(NULL), TEST_OPTS(o.max_per_peer = 1));
  pp_pool_t *pool = f.pool;
  pp_peer_t *peer = f.peer;
  fixture_hold(&f);
  pp_lease_t waiting;
  test_rec_t r;
  ASSERT_ERR(test_acquire_wait(pool, &waiting, &r, peer, TEST_ACQUIRE_OPTS(a.timeout = 30)),
             PP_ETIMEDOUT);
  RUN_UNTIL(count(PP_EVENT_ACQUIRE_TIMEOUT) == 1, 1000);
  const pp_event_t *t = find(PP_EVENT_ACQUIRE_TIMEOUT);
  ASSERT_PTR_EQ(t->peer, peer);
  ASSERT(t->ms >= 20);
  ASSERT_EQ(t->conns, 1);
  ASSERT_EQ(t->max_conns, 1);
  explain_buf_t b;
  explain(pool, peer, &b);
  ASSERT(strstr(b.all, "[wait] acquire for") != NULL);
  ASSERT(strstr(b.all, "1/1 conns (max_per_peer)") != NULL);
  ASSERT(strstr(b.all, "[fail] acquire failed: timed out") != NULL);
  ASSERT(strstr(b.all, "[conn_open] conn #1") != NULL);
  ASSERT(strstr(b.all, "dialled for it") != NULL);
  /* A run of busy answers folds into one entry. */
  for (int i = 0; i < 50; i++)
    test_acquire_fails(pool, peer, TEST_ACQUIRE_OPTS(a.busy = PP_BUSY_FAIL), PP_EBUSY);
  explain_buf_t b2;
  explain(pool, peer, &b2);
  ASSERT_EQ(b2.n, b.n + 1);
  ASSERT_MSG(strstr(b2.all, "is at capacity: 1/1 conns in use (and 49 more like it)") != NULL, "%s",
             b2.all);
  ASSERT_OK(pp_release(&f.held, 0));
  fixture_end(&f);
}

TEST(events_eject_and_explain_names_peer_and_reason) {
  fixture_t f =
      events_start(srv_echo_start(NULL), TEST_OPTS(o.eject_after = 2; o.eject_time = 5000));
  pp_pool_t *pool = f.pool;
  pp_peer_t *p1 = f.peer;
  srv_t *spare = srv_echo_start(NULL); /* ejecting p1 needs another peer */
  test_peer(pool, srv_addr(spare));
  for (int i = 0; i < 2; i++) {
    pp_lease_t l;
    test_rec_t r;
    ASSERT_OK(test_acquire_wait(pool, &l, &r, p1, NULL));
    ASSERT_OK(pp_release(&l, PP_EBROKEN));
  }
  RUN_UNTIL(count(PP_EVENT_EJECT) == 1, 1000);
  const pp_event_t *e = find(PP_EVENT_EJECT);
  ASSERT_PTR_EQ(e->peer, p1);
  ASSERT_EQ(e->failures, 2);
  ASSERT_EQ(e->ms, 5000);
  ASSERT_EQ(e->error, PP_EBROKEN);
  explain_buf_t b;
  explain(pool, p1, &b);
  char want[128];
  snprintf(want, sizeof want, "[eject] %s ejected for 5000 ms: 2 consecutive failures",
           pp_peer_addr(p1));
  ASSERT_MSG(strstr(b.all, want) != NULL, "%s", b.all);
  ASSERT(strstr(b.all, "failures in use") != NULL);
  ASSERT(strstr(b.all, "last error broken") != NULL);
  ASSERT(strstr(b.all, "closed: broken") != NULL);
  fixture_end(&f);
  srv_stop(spare);
}

TEST(events_leak_reported_once_then_unleak) {
  fixture_t f = events_start(srv_echo_start(NULL), TEST_OPTS(o.leak_threshold = 40));
  pp_pool_t *pool = f.pool;
  pp_lease_t *l = &f.held;
  fixture_hold(&f);
  RUN_UNTIL(count(PP_EVENT_LEAK) == 1, 2000);
  const pp_event_t *k = find(PP_EVENT_LEAK);
  ASSERT_PTR_EQ(k->lease, l);
  ASSERT_EQ(k->conn_id, pp_conn_id(l->conn));
  ASSERT(k->ms > 40);
  ASSERT(k->leak_id > 0);
  uint64_t id = k->leak_id;
  test_run_for(120);
  ASSERT_EQ(count(PP_EVENT_LEAK), 1); /* once */
  ASSERT_OK(pp_release(l, 0));
  RUN_UNTIL(count(PP_EVENT_UNLEAK) == 1, 1000);
  const pp_event_t *u = find(PP_EVENT_UNLEAK);
  ASSERT_EQ(u->leak_id, id);
  ASSERT(u->ms >= 150);
  /* A lease released inside the leak callback. */
  fixture_hold(&f);
  evs.release_on_leak = l;
  RUN_UNTIL(count(PP_EVENT_LEAK) == 2 && count(PP_EVENT_UNLEAK) == 2, 2000);
  ASSERT_PTR_EQ(evs.release_on_leak, NULL);
  explain_buf_t b;
  explain(pool, NULL, &b);
  ASSERT(strstr(b.all, "past leak_threshold 40 ms") != NULL);
  ASSERT(strstr(b.all, "reported as leaked (leak #1) was released") != NULL);
  fixture_end(&f);
}

TEST(events_explain_ring_is_bounded) {
  pp_pool_t *pool = test_pool(NULL);
  for (int i = 0; i < PP_EXPLAIN_MAX + 10; i++)
    pp__explain(pool, "probe", NULL, 0, "entry %d", i);
  explain_buf_t *b = calloc(1, sizeof(*b) * 4);
  ASSERT_OK(pp_pool_explain(pool, NULL, collect, b));
  ASSERT_EQ(b->n, PP_EXPLAIN_MAX);
  ASSERT(strncmp(b->all, "[probe] entry 10\n", 17) == 0);
  free(b);
  ASSERT_ERR(pp_pool_explain(pool, NULL, NULL, NULL), PP_EINVAL);
  pp_options_t o;
  pp_options_init(&o);
  o.leak_threshold = -1;
  const char *why = NULL;
  ASSERT_ERR(pp_options_validate(&o, &why), PP_EINVAL);
  ASSERT(strstr(why, "leak_threshold") != NULL);
  test_finish(pool);
}
