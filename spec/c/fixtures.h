/*
 * Shared setup and teardown for the engine tests: a pool with one peer at a test server,
 * optionally holding one lease on it, and the end of a test that used a server.
 * Implemented in test_fixtures.c (which defines no TEST).
 */
#ifndef PP_FIXTURES_H
#define PP_FIXTURES_H

#include <sys/resource.h>

#include "servers.h"
#include "test.h"

typedef struct {
  srv_t *srv;
  pp_pool_t *pool;
  pp_peer_t *peer;
  pp_lease_t held; /* filled by fixture_hold() */
  test_rec_t held_rec;
} fixture_t;

/* A static `T var`, filled by init(&var), then changed by the statements given, as a const
 * pointer. Each use has its own static copy, so the pointer stays valid for the whole test
 * (a pool may keep it). */
#define TEST_STATIC(T, init, var, ...) \
  ({                                   \
    static T var;                      \
    init(&var);                        \
    __VA_ARGS__;                       \
    (const T *)&var;                   \
  })
/* test_options() with changes on `o`, for test_pool or fixture_start:
 * TEST_OPTS(o.retries = 2; o.connect_timeout = 100). */
#define TEST_OPTS(...) TEST_STATIC(pp_options_t, test_options, o, __VA_ARGS__)
/* pp_acquire_opts_init() with changes on `a`: TEST_ACQUIRE_OPTS(a.busy = PP_BUSY_FAIL). */
#define TEST_ACQUIRE_OPTS(...) TEST_STATIC(pp_acquire_opts_t, pp_acquire_opts_init, a, __VA_ARGS__)

/* A pool with `opts` (NULL = test_options() defaults) and `srv` as its one peer. The fixture
 * owns `srv`: fixture_end() stops it. */
fixture_t fixture_start(srv_t *srv, const pp_options_t *opts);
/* Acquire a lease on the fixture's peer into f->held (it must succeed), and wait until the
 * server has accepted every conn the pool connected. */
void fixture_hold(fixture_t *f);
/* test_finish(f->pool), then srv_stop(f->srv). */
void fixture_end(fixture_t *f);

/* test_acquire_wait for leases l[0..n-1] (records r[0..n-1]) on `peer`: each must succeed. */
void test_acquire_n(pp_pool_t *pool, pp_peer_t *peer, pp_lease_t *l, test_rec_t *r, int n);
/* pp_release(&l[i], status) for i in 0..n-1: each must return 0. */
void test_release_n(pp_lease_t *l, int n, int status);
/* An acquire on `peer` with `opts` that must fail at once with `code`, its callback not run.
 * The lease is the helper's own: a pool that kept a failed lease is a bug ASan shows. */
void test_acquire_fails(pp_pool_t *pool, pp_peer_t *peer, const pp_acquire_opts_t *opts, int code);
/* pp_try_acquire on `peer` that must return `code` (PP_EAGAIN: nothing idle to lend). */
void test_try_acquire_fails(pp_pool_t *pool, pp_peer_t *peer, int code);

/* A pool with `opts` (NULL = engine defaults, as test_pool) and a peer at `srv`. */
pp_pool_t *test_pool_on(const srv_t *srv, const pp_options_t *opts, pp_peer_t **peer);
/* test_finish(pool), then srv_stop(srv): the end of a test with one server. */
void test_finish_srv(pp_pool_t *pool, srv_t *srv);

/* Run `fn(arg)` from inside a loop callback (in the check phase, where the pool delivers its
 * own callbacks) that first blocks for `stall_ms`, as a slow callback would, so the loop's
 * cached time lags that much behind when `fn` runs. Returns once `fn` ran; the helper's handle
 * is closed again. */
void test_after_stall(uint64_t stall_ms, void (*fn)(void *), void *arg);

/* File descriptors held to exhaust the process's open-file limit. */
typedef struct {
  int fds[1024];
  int n;
  struct rlimit saved;
} test_fds_t;
/* Lower the soft open-file limit to `limit` (as `ulimit -n`) and open /dev/null until it is
 * reached, so the next socket() fails with EMFILE. */
void test_fds_exhaust(test_fds_t *t, int limit);
/* Close what test_fds_exhaust opened and restore the limit. */
void test_fds_release(test_fds_t *t);

/* ---- More shared setup (test_addr, test_drain, test_evict, test_handshake, test_io,
 * test_ping, test_pipeline, test_route) ------------------------------------------------- */

/* *f = fixture_start(srv, opts), then fixture_hold(f): a pool with `srv` as its one peer and
 * f->held leased. The pool keeps pointers into *f from then on: never copy it. */
void fixture_held(fixture_t *f, srv_t *srv, const pp_options_t *opts);
/* Release f->held healthy (it must succeed), then fixture_end(f). */
void fixture_release_end(fixture_t *f);

/* The pool's stats once an acquire ended with PP_ECANNOTCONNECT after `attempts` connect
 * attempts that all failed: that many attempts, each failed, one cannot_connect, no conn. */
void expect_connects_all_failed(pp_pool_t *pool, int attempts);

/* Install a policy that is all defaults but what the statements set on `p`:
 * TEST_SET_POLICY(pool, p.data = &ring; p.route = ring_route). The pool copies it. */
#define TEST_SET_POLICY(pool, ...) \
  do {                             \
    pp_policy_t p;                 \
    memset(&p, 0, sizeof p);       \
    __VA_ARGS__;                   \
    pp_pool_set_policy(pool, &p);  \
  } while (0)

/* A pool with several servers of this process as its peers, peer[i] at srv[i]. */
#define FIXTURE_PEERS_MAX 4
typedef struct {
  pp_pool_t *pool;
  int n;
  srv_t *srv[FIXTURE_PEERS_MAX];
  pp_peer_t *peer[FIXTURE_PEERS_MAX];
} fixture_peers_t;
/* A pool with `opts` (NULL = test_options()) and srv[0..n-1] as its peers, added in order. The
 * fixture owns the servers: fixture_peers_end() stops them. */
fixture_peers_t fixture_peers_start(int n, srv_t *const srv[], const pp_options_t *opts);
/* fixture_peers_start() over `n` echo servers. */
fixture_peers_t echo_peers_start(int n, const pp_options_t *opts);
/* test_finish(f->pool), then stop every server. */
void fixture_peers_end(fixture_peers_t *f);
/* The index of `peer` in f->peer, or -1. */
int fixture_peers_index(const fixture_peers_t *f, const pp_peer_t *peer);

#endif /* PP_FIXTURES_H */
