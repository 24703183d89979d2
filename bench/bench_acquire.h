/*
 * The acquire of the pool benchmarks (ping/ping_c.c, pipeline/pipeline_c.c): pp_try_acquire
 * first (an idle conn, no callback), pp_acquire when none is free. Either way the program's
 * next step is one function, `granted(lease)`; any error ends the program (bench_die).
 */
#ifndef BENCH_ACQUIRE_H
#define BENCH_ACQUIRE_H

#include "bench_util.h"
#include "peerpool.h"

/* What to do with a lease that holds a conn (the last bench_acquire's `granted`). */
static void (*bench_granted)(pp_lease_t *lease);

static inline void bench_on_acquired(pp_lease_t *lease, int status) {
  if (status != 0)
    bench_die("pp_acquire (callback): %s (%s)", pp_err_name(status), pp_strerror(status));
  bench_granted(lease);
}

/* Acquire a conn of `peer` (NULL: any) into `lease`, then run granted(lease): at once when a
 * conn is free now, else from the acquire's callback once one is. */
static inline void bench_acquire(pp_pool_t *pool, pp_lease_t *lease, pp_peer_t *peer,
                                 void (*granted)(pp_lease_t *lease)) {
  bench_granted = granted;
  int r = pp_try_acquire(pool, lease, peer, NULL);
  if (r == 0) {
    granted(lease);
    return;
  }
  if (r != PP_EAGAIN) bench_die("pp_try_acquire: %s (%s)", pp_err_name(r), pp_strerror(r));
  r = pp_acquire(pool, lease, peer, NULL, bench_on_acquired);
  if (r != 0) bench_die("pp_acquire: %s (%s)", pp_err_name(r), pp_strerror(r));
}

#endif
