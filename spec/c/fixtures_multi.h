/*
 * More shared setup for the engine tests, beside fixtures.h: a fixture that already holds
 * several leases, a peer at capacity, a peer that burned, and the checks that
 * several tests make on a pool's gauges and on a peer's blame.
 * Implemented in test_fixtures_multi.c (which defines no TEST).
 */
#ifndef PP_FIXTURES_MULTI_H
#define PP_FIXTURES_MULTI_H

#include "fixtures.h"

/* The most leases fixture_leases_start() can hold. */
#define FIXTURE_LEASES 8

/* A fixture (one echo server as the one peer) with leases l[0..n-1] held on its peer; the rest
 * of l[] is free for the test. */
typedef struct {
  fixture_t f;
  pp_lease_t l[FIXTURE_LEASES];
  test_rec_t r[FIXTURE_LEASES];
} fixture_leases_t;

/* fixture_start(srv_echo_start(NULL), opts), then test_acquire_n of `n` leases into s->l. */
void fixture_leases_start(fixture_leases_t *s, const pp_options_t *opts, int n);

/* A fixture whose peer (an echo server; `opts`, NULL = test_options(), with max_per_peer = 1)
 * is at capacity: its only conn is held by f->held (fixture_hold). */
void fixture_busy(fixture_t *f, const pp_options_t *opts);
/* fixture_busy into s->f, and acquires s->l[0..n-1] queued behind the held conn. */
void fixture_busy_queue(fixture_leases_t *s, const pp_options_t *opts, int n);

/* A pool with engine defaults (as test_pool(NULL)) whose one peer, at a refused server, burned:
 * its backoff hook answers PP_BACKOFF_BURN, and the acquire that dialled it ended PP_EBURNED.
 * End it with fixture_end(). */
fixture_t fixture_burned(void);

/* Run the loop until the callback that `r` records (an acquire's or a notice's) ran once; its
 * status must be 0. */
void test_wait_ok(const test_rec_t *r);

/* test_acquire_start of leases l[0..n-1] (records r[0..n-1]) on `peer`: each must return 0 (it
 * waits, or dials). */
void test_acquire_start_n(pp_pool_t *pool, pp_peer_t *peer, pp_lease_t *l, test_rec_t *r, int n);

/* The pool's active and idle gauges, its conns (unless -1), and test_check_gauge_identity. */
void test_expect_gauges(pp_pool_t *pool, int conns, int active, int idle);
/* conns = idle + active + connecting, and the peers by state add up to the peers. */
void test_check_gauge_identity(pp_pool_t *pool);

/* Nothing was counted against `peer`: no release as broken and no ejection in the pool, no
 * failure of the peer and no backoff. */
void test_expect_unblamed(pp_pool_t *pool, pp_peer_t *peer);

#endif /* PP_FIXTURES_MULTI_H */
