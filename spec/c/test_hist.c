/* Latency histograms: one observation per granted acquire, per connect, per release; buckets
 * are powers of two of a microsecond; quantiles interpolate inside a bucket. */
#include "fixtures.h"
#include "internal.h"

#include <math.h>

static pp_histogram_t hist(pp_pool_t *pool, pp_hist_kind_t kind) {
  pp_histogram_t h;
  ASSERT_OK(pp_pool_histogram(pool, kind, &h));
  uint64_t n = 0;
  for (int i = 0; i < PP_HIST_BUCKETS; i++)
    n += h.buckets[i];
  ASSERT_EQ(n, h.count);
  return h;
}

TEST(hist_counts_follow_acquires_connects_and_releases) {
  fixture_t f = fixture_start(srv_echo_start(NULL), TEST_OPTS(o.max_per_peer = 2));
  pp_lease_t l[3];
  test_rec_t r[3];
  ASSERT_OK(test_acquire_wait(f.pool, &l[0], &r[0], f.peer, NULL)); /* dialled */
  ASSERT_OK(test_acquire_wait(f.pool, &l[1], &r[1], f.peer, NULL)); /* dialled */
  ASSERT_EQ(hist(f.pool, PP_HIST_CONNECT).count, 2);
  ASSERT_EQ(hist(f.pool, PP_HIST_HANDSHAKE).count, 0);
  ASSERT_EQ(hist(f.pool, PP_HIST_ACQUIRE_WAIT).count, 2);
  ASSERT_EQ(hist(f.pool, PP_HIST_HOLD).count, 0);
  ASSERT_OK(pp_release(&l[0], 0));
  ASSERT_EQ(hist(f.pool, PP_HIST_HOLD).count, 1);
  for (int i = 0; i < 5; i++) { /* idle conn at once: wait 0 */
    ASSERT_OK(pp_try_acquire(f.pool, &l[2], f.peer, NULL));
    ASSERT_OK(pp_release(&l[2], 0));
  }
  pp_histogram_t w = hist(f.pool, PP_HIST_ACQUIRE_WAIT);
  ASSERT_EQ(w.count, 7);
  ASSERT(w.buckets[0] >= 5);
  ASSERT_EQ(w.count, test_stats(f.pool).acquires);
  ASSERT_EQ(hist(f.pool, PP_HIST_HOLD).count, 6);
  ASSERT_OK(pp_release(&l[1], 0));
  ASSERT_EQ(hist(f.pool, PP_HIST_HOLD).count, test_stats(f.pool).releases);
  pp_histogram_t c = hist(f.pool, PP_HIST_CONNECT);
  ASSERT(c.sum_us > 0);
  ASSERT(c.sum_us < 5000000);
  fixture_end(&f);
}

TEST(hist_buckets_and_quantiles) {
  ASSERT(pp_histogram_bound_us(0) == 1.0);
  ASSERT(pp_histogram_bound_us(10) == 1024.0);
  ASSERT(isinf(pp_histogram_bound_us(PP_HIST_BUCKETS - 1)));
  ASSERT_STREQ(pp_hist_kind_name(PP_HIST_ACQUIRE_WAIT), "acquire_wait");
  ASSERT_STREQ(pp_hist_kind_name(PP_HIST_HOLD), "hold");
  ASSERT_STREQ(pp_hist_kind_name(PP_HIST_COUNT), "unknown");
  pp_pool_t *pool = test_pool(NULL);
  pp_histogram_t h;
  ASSERT_ERR(pp_pool_histogram(pool, PP_HIST_COUNT, &h), PP_EINVAL);
  ASSERT_ERR(pp_pool_histogram(NULL, PP_HIST_HOLD, &h), PP_EINVAL);
  /* 100 observations: 90 of 3 us (bucket 2: (2, 4]), 10 of 1000 us (bucket 10: (512, 1024]) */
  for (int i = 0; i < 90; i++)
    pp__hist_observe_us(pool, PP_HIST_HOLD, 3);
  for (int i = 0; i < 10; i++)
    pp__hist_observe_us(pool, PP_HIST_HOLD, 1000);
  pp__hist_observe_us(pool, PP_HIST_CONNECT, (uint64_t)1 << 40); /* +Inf */
  h = hist(pool, PP_HIST_HOLD);
  ASSERT_EQ(h.count, 100);
  ASSERT_EQ(h.buckets[2], 90);
  ASSERT_EQ(h.buckets[10], 10);
  ASSERT_EQ(h.sum_us, 90 * 3 + 10 * 1000);
  double p50 = pp_histogram_quantile(&h, 0.5), p99 = pp_histogram_quantile(&h, 0.99);
  ASSERT(p50 > 2 && p50 <= 4);
  ASSERT(p99 > 512 && p99 <= 1024);
  ASSERT(isnan(pp_histogram_quantile(&h, 1.5)));
  pp_histogram_t c = hist(pool, PP_HIST_CONNECT);
  ASSERT_EQ(c.buckets[PP_HIST_BUCKETS - 1], 1);
  ASSERT(pp_histogram_quantile(&c, 0.5) == pp_histogram_bound_us(PP_HIST_BUCKETS - 2));
  pp_histogram_t e = hist(pool, PP_HIST_TLS);
  ASSERT(isnan(pp_histogram_quantile(&e, 0.5)));
  test_finish(pool);
}
