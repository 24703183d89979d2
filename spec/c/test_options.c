/* Options: defaults, validation naming the field, copies into the pool. */
#include "test.h"

TEST(options_defaults) {
  pp_options_t o;
  memset(&o, 0x5a, sizeof o);
  pp_options_init(&o);
  ASSERT_EQ(o.max_per_peer, 4);
  ASSERT_EQ(o.max_total, 256);
  ASSERT_EQ(o.client_limit, 1);
  ASSERT_EQ(o.connect_timeout, 5000);
  ASSERT_EQ(o.retries, 3);
  ASSERT_EQ(o.acquire_timeout, 30000);
  ASSERT_EQ(o.backlog, 1024);
  ASSERT_EQ(o.idle_timeout, 300000);
  ASSERT_EQ(o.max_lifespan, 3600000);
  ASSERT_EQ(o.lifespan_jitter, 10);
  ASSERT_EQ(o.handshake_timeout, 5000);
  ASSERT_EQ(o.max_address_age, 3 * 3600 * 1000);
  ASSERT_EQ(o.ping_after, 0);
  ASSERT_EQ(o.keepalive, 0);
  ASSERT_EQ(o.eject_after, 5);
  ASSERT_EQ(o.eject_time, 10000);
  ASSERT_EQ(o.eject_max, 300000);
  ASSERT_EQ(o.eject_max_percent, 50);
  ASSERT_EQ(o.probe_interval, 500);
}

TEST(options_defaults_are_valid) {
  pp_options_t o;
  pp_options_init(&o);
  const char *why = "untouched";
  ASSERT_OK(pp_options_validate(&o, &why));
  ASSERT_OK(pp_options_validate(&o, NULL));
}

/* Set one field to `bad` on defaults, validate, and check the message names the field. */
#define EXPECT_BAD(field, bad)                            \
  do {                                                    \
    pp_options_t o;                                       \
    pp_options_init(&o);                                  \
    o.field = (bad);                                      \
    const char *why = NULL;                               \
    ASSERT_ERR(pp_options_validate(&o, &why), PP_EINVAL); \
    ASSERT_CONTAINS(why, #field);                         \
    ASSERT_ERR(pp_options_validate(&o, NULL), PP_EINVAL); \
  } while (0)

#define EXPECT_GOOD(field, good)                                                            \
  do {                                                                                      \
    pp_options_t o;                                                                         \
    pp_options_init(&o);                                                                    \
    o.field = (good);                                                                       \
    const char *why = NULL;                                                                 \
    int rc = pp_options_validate(&o, &why);                                                 \
    if (rc != 0) FAIL("%s = %lld refused: %s", #field, (long long)(good), why ? why : "-"); \
  } while (0)

/* Each value in `bad` (a LIST) refused naming `field`, each value in `good` taken. */
#define LIST(...) \
  { __VA_ARGS__ }
#define EXPECT_RANGE(field, bad, good)                                         \
  do {                                                                         \
    const __typeof__(((pp_options_t *)0)->field) bads[] = bad, goods[] = good; \
    for (size_t i = 0; i < sizeof bads / sizeof bads[0]; i++)                  \
      EXPECT_BAD(field, bads[i]);                                              \
    for (size_t i = 0; i < sizeof goods / sizeof goods[0]; i++)                \
      EXPECT_GOOD(field, goods[i]);                                            \
  } while (0)

TEST(options_max_per_peer_range) {
  EXPECT_RANGE(max_per_peer, LIST(0, -1), LIST(1));
}

TEST(options_max_total_range) {
  EXPECT_RANGE(max_total, LIST(0, -5), LIST(4, 100000));
}

TEST(options_client_limit_range) {
  EXPECT_RANGE(client_limit, LIST(0, -1), LIST(1, 64));
}

TEST(options_connect_timeout_range) {
  EXPECT_RANGE(connect_timeout, LIST(0, -1), LIST(1));
}

TEST(options_retries_range) {
  EXPECT_RANGE(retries, LIST(-1, 101), LIST(0, 100));
}

TEST(options_acquire_timeout_range) {
  EXPECT_RANGE(acquire_timeout, LIST(-1), LIST(0, 1));
}

TEST(options_backlog_range) {
  EXPECT_RANGE(backlog, LIST(-1), LIST(0, 1));
}

TEST(options_idle_timeout_range) {
  EXPECT_RANGE(idle_timeout, LIST(-1), LIST(0, 10));
}

TEST(options_max_lifespan_range) {
  EXPECT_RANGE(max_lifespan, LIST(-1), LIST(0, 10));
}

TEST(options_lifespan_jitter_range) {
  EXPECT_RANGE(lifespan_jitter, LIST(-1, 51), LIST(0, 50));
}

TEST(options_handshake_timeout_range) {
  EXPECT_RANGE(handshake_timeout, LIST(0, -1), LIST(1));
}

TEST(options_max_address_age_range) {
  EXPECT_RANGE(max_address_age, LIST(-1), LIST(0));
}

TEST(options_ping_after_range) {
  EXPECT_RANGE(ping_after, LIST(-1), LIST(0, 1000));
}

TEST(options_keepalive_range) {
  EXPECT_RANGE(keepalive, LIST(-1), LIST(0, 1000));
}

TEST(options_eject_max_percent_range) {
  EXPECT_RANGE(eject_max_percent, LIST(-1, 101), LIST(0, 100));
}

TEST(options_probe_interval_range) {
  EXPECT_RANGE(probe_interval, LIST(-1), LIST(0, 1));
}

TEST(options_pool_new_refuses_bad_options) {
  pp_options_t o;
  pp_options_init(&o);
  o.client_limit = 0;
  pp_pool_t *pool = NULL;
  const char *why = NULL;
  ASSERT_ERR(pp_pool_new(test_loop(), &o, &pool, &why), PP_EINVAL);
  ASSERT_CONTAINS(why, "client_limit");
  /* Nothing was created on the loop. */
  test_finish(NULL);
}

TEST(options_pool_new_null_means_defaults) {
  pp_pool_t *pool = test_pool(NULL);
  pp_options_t d;
  pp_options_init(&d);
  const pp_options_t *o = pp_pool_options(pool);
  ASSERT_NOT_NULL(o);
  ASSERT_EQ(o->max_per_peer, d.max_per_peer);
  ASSERT_EQ(o->max_total, d.max_total);
  ASSERT_EQ(o->connect_timeout, d.connect_timeout);
  ASSERT_EQ(o->retries, d.retries);
  ASSERT_EQ(o->idle_timeout, d.idle_timeout);
  ASSERT_PTR_EQ(pp_pool_loop(pool), test_loop());
  ASSERT_EQ(pp_pool_is_closing(pool), 0);
  test_finish(pool);
}

TEST(options_are_copied) {
  pp_options_t o;
  pp_options_init(&o);
  o.max_per_peer = 7;
  pp_pool_t *pool = test_pool(&o);
  o.max_per_peer = 1;
  ASSERT_EQ(pp_pool_options(pool)->max_per_peer, 7);
  test_finish(pool);
}

TEST(options_pool_data) {
  pp_pool_t *pool = test_pool(NULL);
  int x;
  ASSERT_NULL(pp_pool_get_data(pool));
  pp_pool_set_data(pool, &x);
  ASSERT_PTR_EQ(pp_pool_get_data(pool), &x);
  test_finish(pool);
}

TEST(options_acquire_opts_defaults) {
  pp_acquire_opts_t a;
  memset(&a, 0x5a, sizeof a);
  pp_acquire_opts_init(&a);
  ASSERT_EQ(a.busy, PP_BUSY_WAIT);
  ASSERT_EQ(a.timeout, -1);
  ASSERT_EQ(a.priority, 0);
  ASSERT_NULL(a.key);
}
