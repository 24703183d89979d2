/* The clock: one timeline (libuv's monotonic loop time, in ms) for every deadline, read fresh
 * with pp_now() rather than from the cached loop time, cheap readings for the hot path, timers
 * started on that timeline, and the Unix time that addresses are stamped with. */
#include "internal.h"

#include <time.h>

uint64_t pp_now(void) {
  return uv_hrtime() / 1000000;
}

bool pp__ahead(pp_pool_t *pool, uint64_t at) {
  return at > uv_now(pool->loop) && at > pp_now();
}

uint64_t pp__stamp(pp_pool_t *pool) {
  uint64_t now = uv_now(pool->loop);
#ifdef CLOCK_MONOTONIC_COARSE
  /* libuv reads its loop time from CLOCK_MONOTONIC (or its coarse variant): one timeline. */
  struct timespec ts;
  if (clock_gettime(CLOCK_MONOTONIC_COARSE, &ts) == 0) {
    uint64_t coarse = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
    if (coarse > now) now = coarse;
  }
  return now;
#else
  return pp_now();
#endif
}

void pp_timer_start_at(uv_timer_t *timer, uv_timer_cb cb, uint64_t at) {
  /* libuv counts from its cached loop time, which lags behind after blocking work: count from
   * it too, so the timer fires at `at` on the same timeline. At least 1 ms: libuv 1.44 runs a
   * timer due "now" again within the timer phase that is running, and a callback that re-arms
   * for a cause that has not gone would keep the loop there (no I/O, no check phase). */
  uint64_t base = uv_now(timer->loop);
  uv_timer_start(timer, cb, at > base ? at - base : 1, 0);
}

void pp_timer_start(uv_timer_t *timer, uv_timer_cb cb, uint64_t ms) {
  pp_timer_start_at(timer, cb, pp_now() + ms);
}

int64_t pp__unix_now_ms(void) {
  uv_timeval64_t tv;
  if (uv_gettimeofday(&tv) != 0) return 0;
  return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}
