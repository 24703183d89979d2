/* Latency histograms: fixed log-spaced buckets (powers of two of a microsecond), counted in
 * place in the pool, so an observation is a count leading zeros, two adds and an increment:
 * no allocation, no lock, no clock read of its own (callers pass durations they have). */
#include "internal.h"

#include <math.h>
#include <string.h>

const char *pp_hist_kind_name(pp_hist_kind_t kind) {
  static const char *const names[] = {PP_HIST_KIND_MAP(PP__ROW_STRING)};
  return pp__name_of(names, PP_HIST_COUNT, (int)kind);
}

double pp_histogram_bound_us(int i) {
  if (i < 0) return 0;
  if (i >= PP_HIST_BUCKETS - 1) return INFINITY;
  return (double)((uint64_t)1 << i);
}

void pp__hist_observe_ns(pp_pool_t *pool, pp_hist_kind_t kind, uint64_t start_ns) {
#ifdef PP_NO_OBSERVE
  (void)pool, (void)kind, (void)start_ns;
  return;
#endif
  uint64_t now = uv_hrtime();
  pp__hist_observe_us(pool, kind, now > start_ns ? (now - start_ns + 500) / 1000 : 0);
}

int pp_pool_histogram(const pp_pool_t *pool, pp_hist_kind_t kind, pp_histogram_t *out) {
  if (pool == NULL || out == NULL || (int)kind < 0 || kind >= PP_HIST_COUNT) return PP_EINVAL;
  *out = pool->hist[kind];
  return 0;
}

double pp_histogram_quantile(const pp_histogram_t *h, double q) {
  if (h == NULL || h->count == 0 || !(q >= 0 && q <= 1)) return NAN;
  double rank = q * (double)h->count;
  uint64_t seen = 0;
  for (int i = 0; i < PP_HIST_BUCKETS; i++) {
    uint64_t n = h->buckets[i];
    if (n == 0 || (double)(seen + n) < rank) {
      seen += n;
      continue;
    }
    double lo = i == 0 ? 0 : pp_histogram_bound_us(i - 1);
    if (i == PP_HIST_BUCKETS - 1) return lo; /* +Inf: the highest finite bound, as Prometheus */
    double hi = pp_histogram_bound_us(i);
    double frac = (rank - (double)seen) / (double)n;
    if (frac < 0) frac = 0;
    return lo + (hi - lo) * frac;
  }
  return pp_histogram_bound_us(PP_HIST_BUCKETS - 2);
}
