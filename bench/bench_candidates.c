/*
 * bench_candidates — what an acquire for any peer costs when the pool knows many peers that
 * cannot be dialled (here: addresses past max_address_age), with 0, 1,000 and 100,000 of
 * them. Each call is pp_acquire(pool, &lease, NULL, {busy = fail}) answering PP_ENOPEER at
 * once: it has to decide that no peer holds a conn or may be dialled, the path that used to
 * walk every peer (37 ms per acquire at 100,000 peers). No sockets, no callbacks.
 *
 * usage: bench_candidates [--sizes 0,1000,100000] [--calls N]   (defaults shown; N = 2000)
 * Prints one line per size: peers, microseconds per acquire (mean over N calls).
 */
#include "bench_util.h" /* first: it defines _GNU_SOURCE */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "peerpool.h"

/* An acquire answered at once never runs its callback. */
static void never_called(pp_lease_t *lease, int status) {
  abort();
}

static double us_per_acquire(uv_loop_t *loop, int stale, int calls) {
  pp_options_t o;
  pp_options_init(&o);
  o.max_address_age = 3600 * 1000;
  pp_pool_t *pool;
  if (pp_pool_new(loop, &o, &pool, NULL) != 0) exit(1);
  uv_timeval64_t tv;
  uv_gettimeofday(&tv);
  int64_t old = (int64_t)tv.tv_sec * 1000 - 2 * 3600 * 1000;
  for (int i = 0; i < stale; i++) {
    char addr[64];
    snprintf(addr, sizeof addr, "10.%d.%d.%d:7", i >> 16, (i >> 8) & 255, i & 255);
    if (pp_pool_add_peer(pool, addr, old, NULL, NULL) != 0) exit(1);
  }
  pp_acquire_opts_t ao;
  pp_acquire_opts_init(&ao);
  ao.busy = PP_BUSY_FAIL;
  uint64_t t0 = uv_hrtime();
  for (int i = 0; i < calls; i++) {
    pp_lease_t lease;
    memset(&lease, 0, sizeof lease);
    int rc = pp_acquire(pool, &lease, NULL, &ao, never_called);
    if (rc != PP_ENOPEER) {
      fprintf(stderr, "bench_candidates: acquire answered %s\n", pp_err_name(rc));
      exit(1);
    }
  }
  double us = (double)(uv_hrtime() - t0) / 1e3 / calls;
  pp_pool_close(pool, NULL);
  uv_run(loop, UV_RUN_DEFAULT);
  return us;
}

int main(int argc, char **argv) {
  const char *sizes = "0,1000,100000";
  int calls = 2000;
  bench_start("bench_candidates", 0);
  bench_parse_opts(
      argc, argv,
      (const bench_opt_t[]){{"--sizes", 's', &sizes}, {"--calls", 'i', &calls}, {NULL, 0, NULL}});
  uv_loop_t loop;
  uv_loop_init(&loop);
  printf("%10s  %s\n", "peers", "us/acquire (any peer, none dialable)");
  for (const char *s = sizes; *s;) {
    int n = atoi(s);
    printf("%10d  %.3f\n", n, us_per_acquire(&loop, n, calls > 0 ? calls : 1));
    s = strchr(s, ',');
    if (s == NULL) break;
    s++;
  }
  return uv_loop_close(&loop) == 0 ? 0 : 1;
}
