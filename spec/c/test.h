/*
 * A tiny test framework for the engine's C tests.
 *
 * TEST(name) { ... } defines a test and registers it from a constructor, so the runner finds
 * every test by name without a hand-kept list. CMake turns each line that starts with
 * `TEST(name)` into its own ctest case that runs `pp_tests name` in its own process, so a
 * test may use process-wide state (the loop, counters) freely.
 *
 * Assertions print file:line, the expression and the values involved, then abort().
 */
#ifndef PP_TEST_H
#define PP_TEST_H

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "peerpool.h"

typedef void (*pp_test_fn)(void);

typedef struct pp_test_s {
  const char *name;
  pp_test_fn fn;
  const char *file;
  struct pp_test_s *next;
} pp_test_t;

void pp_test_register(pp_test_t *t);

#define TEST(name)                                                            \
  static void test_##name(void);                                              \
  static pp_test_t pp_test_rec_##name = {#name, test_##name, __FILE__, NULL}; \
  __attribute__((constructor)) static void pp_test_reg_##name(void) {         \
    pp_test_register(&pp_test_rec_##name);                                    \
  }                                                                           \
  static void test_##name(void)

/* ------------------------------------------------------------------------------------------
 * Assertions. Values are shown as integers; codes are also shown by pp_err_name().
 */
void pp_test_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 3, 4)));

#define FAIL(...) pp_test_fail(__FILE__, __LINE__, __VA_ARGS__)

#define ASSERT(expr)                                  \
  do {                                                \
    if (!(expr)) FAIL("assertion failed: %s", #expr); \
  } while (0)

#define ASSERT_MSG(expr, ...)              \
  do {                                     \
    if (!(expr)) {                         \
      fprintf(stderr, "  note: ");         \
      fprintf(stderr, __VA_ARGS__);        \
      fprintf(stderr, "\n");               \
      FAIL("assertion failed: %s", #expr); \
    }                                      \
  } while (0)

#define PP__ASSERT_CMP(a, op, b)                                                                   \
  do {                                                                                             \
    long long pp__a = (long long)(a), pp__b = (long long)(b);                                      \
    if (!(pp__a op pp__b))                                                                         \
      FAIL("assertion failed: %s %s %s\n  left:  %lld\n  right: %lld", #a, #op, #b, pp__a, pp__b); \
  } while (0)

#define ASSERT_EQ(a, b) PP__ASSERT_CMP(a, ==, b)
#define ASSERT_NE(a, b) PP__ASSERT_CMP(a, !=, b)
#define ASSERT_LT(a, b) PP__ASSERT_CMP(a, <, b)
#define ASSERT_LE(a, b) PP__ASSERT_CMP(a, <=, b)
#define ASSERT_GT(a, b) PP__ASSERT_CMP(a, >, b)
#define ASSERT_GE(a, b) PP__ASSERT_CMP(a, >=, b)

#define ASSERT_DBL_GE(a, b)                                                               \
  do {                                                                                    \
    double pp__a = (double)(a), pp__b = (double)(b);                                      \
    if (!(pp__a >= pp__b))                                                                \
      FAIL("assertion failed: %s >= %s\n  left:  %g\n  right: %g", #a, #b, pp__a, pp__b); \
  } while (0)

#define ASSERT_PTR_EQ(a, b)                                                               \
  do {                                                                                    \
    const void *pp__a = (const void *)(a), *pp__b = (const void *)(b);                    \
    if (pp__a != pp__b)                                                                   \
      FAIL("assertion failed: %s == %s\n  left:  %p\n  right: %p", #a, #b, pp__a, pp__b); \
  } while (0)

#define ASSERT_PTR_NE(a, b)                                                          \
  do {                                                                               \
    const void *pp__a = (const void *)(a), *pp__b = (const void *)(b);               \
    if (pp__a == pp__b) FAIL("assertion failed: %s != %s (both %p)", #a, #b, pp__a); \
  } while (0)

#define ASSERT_NULL(a) ASSERT_PTR_EQ(a, NULL)
#define ASSERT_NOT_NULL(a) ASSERT_PTR_NE(a, NULL)

#define ASSERT_STREQ(a, b)                                                             \
  do {                                                                                 \
    const char *pp__a = (a), *pp__b = (b);                                             \
    if (pp__a == NULL || pp__b == NULL || strcmp(pp__a, pp__b) != 0)                   \
      FAIL("assertion failed: %s equals %s\n  left:  \"%s\"\n  right: \"%s\"", #a, #b, \
           pp__a ? pp__a : "(null)", pp__b ? pp__b : "(null)");                        \
  } while (0)

#define ASSERT_CONTAINS(hay, needle)                                            \
  do {                                                                          \
    const char *pp__h = (hay), *pp__n = (needle);                               \
    if (pp__h == NULL || strstr(pp__h, pp__n) == NULL)                          \
      FAIL("assertion failed: %s contains \"%s\"\n  text: \"%s\"", #hay, pp__n, \
           pp__h ? pp__h : "(null)");                                           \
  } while (0)

/* Status / return code assertions: show codes by name. */
#define ASSERT_ERR(expr, code)                                                                    \
  do {                                                                                            \
    int pp__got = (int)(expr), pp__want = (int)(code);                                            \
    if (pp__got != pp__want)                                                                      \
      FAIL("assertion failed: %s == %s\n  got:  %d (%s)\n  want: %d (%s)", #expr, #code, pp__got, \
           pp_err_name(pp__got), pp__want, pp_err_name(pp__want));                                \
  } while (0)

#define ASSERT_OK(expr) ASSERT_ERR(expr, 0)

/* Either of two codes (for places where the contract allows both). */
#define ASSERT_ERR2(expr, c1, c2)                                                        \
  do {                                                                                   \
    int pp__got = (int)(expr);                                                           \
    if (pp__got != (int)(c1) && pp__got != (int)(c2))                                    \
      FAIL("assertion failed: %s is %s or %s\n  got: %d (%s)", #expr, #c1, #c2, pp__got, \
           pp_err_name(pp__got));                                                        \
  } while (0)

/* ------------------------------------------------------------------------------------------
 * Loop helpers. Each test runs in its own process and uses test_loop(); a guard timer that
 * wakes the loop every few ms lets RUN_UNTIL re-check conditions that depend on other
 * threads (the servers) and bound the wait even when the pool has nothing scheduled.
 */
uv_loop_t *test_loop(void);
uint64_t test_now_ms(void); /* monotonic ms (uv_hrtime based) */
int64_t test_unix_ms(void); /* wall clock Unix ms */

/* Run one loop iteration that waits at most ~5 ms (after test_finish: just sleep 1 ms, so
 * RUN_UNTIL can still wait for the servers). */
void test_tick(void);
/* Run the loop for about `ms` milliseconds, and at least three iterations (a process stalled
 * for `ms` still turns it). */
void test_run_for(uint64_t ms);
/* Run UV_RUN_NOWAIT once. */
void test_run_nowait(void);

/* Run the loop until `cond` holds or `ms` passes; fail if it never held. */
#define RUN_UNTIL(cond, ms)                                                       \
  do {                                                                            \
    uint64_t pp__end = test_now_ms() + (uint64_t)(ms);                            \
    while (!(cond) && test_now_ms() < pp__end)                                    \
      test_tick();                                                                \
    if (!(cond)) FAIL("timed out after %d ms waiting for: %s", (int)(ms), #cond); \
  } while (0)

/* Run the loop until `cond` holds or `ms` passes; evaluates to whether it held. */
#define RUN_WHILE_NOT(cond, ms)                         \
  ({                                                    \
    uint64_t pp__end2 = test_now_ms() + (uint64_t)(ms); \
    while (!(cond) && test_now_ms() < pp__end2)         \
      test_tick();                                      \
    (cond) ? 1 : 0;                                     \
  })

/* Make a pool on test_loop() with `opts` (NULL = defaults); fails the test on error. */
pp_pool_t *test_pool(const pp_options_t *opts);

/* Options with small timeouts suited to tests (connect 200 ms, handshake 200 ms, retries 0,
 * acquire timeout 2 s). */
void test_options(pp_options_t *opts);

/* Add a peer; fails the test on error. */
pp_peer_t *test_peer(pp_pool_t *pool, const char *addr);

/* Close `pool` (if not NULL and not already closing), run the loop until its close callback
 * ran exactly once, close the guard timer, then assert uv_loop_close() == 0 (no handle left
 * behind); prints the remaining handles otherwise. Every test ends with this. */
void test_finish(pp_pool_t *pool);
/* The same when the test already called pp_pool_close(pool, test_close_cb). */
void test_close_cb(pp_pool_t *pool);
extern int test_close_calls;
void test_finish_closed(void);

/* Set while the test is inside an engine call that must not run callbacks synchronously;
 * callbacks in tests assert it is 0. */
extern int test_in_call;
#define CALL(expr)           \
  ({                         \
    test_in_call = 1;        \
    int pp__r = (int)(expr); \
    test_in_call = 0;        \
    pp__r;                   \
  })
#define ASSERT_NOT_IN_CALL()                                                   \
  do {                                                                         \
    if (test_in_call) FAIL("callback ran inside the call that registered it"); \
  } while (0)

/* A recording acquire callback: use lease->data = a test_lease_rec_t. */
typedef struct {
  int calls;
  int status;
  uint64_t at_ms;
  int order; /* global completion order, from 1 */
} test_rec_t;
extern int test_order_counter;
void test_acquire_cb(pp_lease_t *lease, int status); /* records into (test_rec_t*)lease->data */
void test_notice_cb(pp_notice_t *n, int status);     /* records into (test_rec_t*)n->data */

/* Zero `lease` and `rec`, link them, and call pp_acquire (inside CALL). Returns what
 * pp_acquire returned; on an error the callback must never run (checked later by
 * test_acquire_wait/the rec count). */
int test_acquire_start(pp_pool_t *pool, pp_lease_t *lease, test_rec_t *rec, pp_peer_t *peer,
                       const pp_acquire_opts_t *opts);
/* test_acquire_start, fail on an immediate error, run until the callback ran once and
 * return its status. */
int test_acquire_wait(pp_pool_t *pool, pp_lease_t *lease, test_rec_t *rec, pp_peer_t *peer,
                      const pp_acquire_opts_t *opts);

/* test_acquire_wait on `peer` (it must succeed), then release the lease healthy at once.
 * Returns the conn it was lent, to compare with later leases (the pool owns it). */
pp_conn_t *test_acquire_release(pp_pool_t *pool, pp_peer_t *peer);
/* The same with acquire options `opts` (NULL: defaults; e.g. a key and no peer). */
pp_conn_t *test_acquire_release_with(pp_pool_t *pool, pp_peer_t *peer,
                                     const pp_acquire_opts_t *opts);

/* Zero `n` and `rec`, link them, and call pp_notice_start with test_notice_cb (not inside
 * CALL: wrap the call for that). Returns what pp_notice_start returned. */
int test_notice_start(pp_pool_t *pool, pp_notice_t *n, test_rec_t *rec, pp_peer_t *peer);

/* Install a policy whose only hook is `backoff` (called with `data`). */
void test_set_backoff(pp_pool_t *pool, int64_t (*backoff)(void *, pp_peer_t *, int, int),
                      void *data);

/* Fixed-delay backoff policy helper: `data` points to an int64_t delay in ms. */
int64_t test_backoff_fixed(void *data, pp_peer_t *peer, int attempt, int err);

/* A recording state callback: install with pp_pool_on_state(pool, test_state_cb). It checks
 * that each transition of a peer starts where the previous one ended (peers start known),
 * that from != to, and that pp_peer_state() already reports `to` inside the callback. */
typedef struct {
  pp_peer_t *peer;
  pp_peer_state_t from, to;
} test_transition_t;
#define TEST_MAX_TRANSITIONS 4096
extern test_transition_t test_transitions[TEST_MAX_TRANSITIONS];
extern int test_ntransitions;
void test_state_cb(pp_pool_t *pool, pp_peer_t *peer, pp_peer_state_t from, pp_peer_state_t to);
/* Index of the first transition of `peer` into `to` at or after index `start`, or -1. */
int test_find_transition(pp_peer_t *peer, pp_peer_state_t to, int start);
/* Run the loop until `peer` was reported entering `to` (at or after index `start`). */
#define WAIT_TRANSITION(peer, to, start, ms)                                                \
  do {                                                                                      \
    uint64_t pp__e = test_now_ms() + (uint64_t)(ms);                                        \
    while (test_find_transition(peer, to, start) < 0 && test_now_ms() < pp__e)              \
      test_tick();                                                                          \
    if (test_find_transition(peer, to, start) < 0) {                                        \
      test_dump_transitions();                                                              \
      FAIL("no transition to %s reported within %d ms", pp_peer_state_name(to), (int)(ms)); \
    }                                                                                       \
  } while (0)
/* Print the recorded transitions (for failure diagnostics). */
void test_dump_transitions(void);

/* Stats shorthand. */
pp_stats_t test_stats(pp_pool_t *pool);
pp_peer_info_t test_peer_info(pp_peer_t *peer);

/* Write all of `data` on `conn` and wait for the completion; returns the status. */
int test_write(pp_conn_t *conn, const void *data, size_t len);

/* Collecting reader: appends bytes into a buffer and records the end status. */
typedef struct {
  char *buf;
  size_t len, cap;
  int calls;
  int ended; /* number of nread < 0 calls */
  ssize_t end_status;
  int after_end; /* calls after the end (must stay 0) */
} test_reader_t;
void test_reader_cb(pp_conn_t *conn, ssize_t nread, const char *buf, void *arg);
void test_reader_free(test_reader_t *r);

/* Skip the test (prints SKIP, exits 0 after closing nothing: use before creating a pool). */
void test_skip(const char *why) __attribute__((noreturn));

#endif /* PP_TEST_H */
