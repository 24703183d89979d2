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

TEST(options_max_per_peer_range) {
  EXPECT_BAD(max_per_peer, 0);
  EXPECT_BAD(max_per_peer, -1);
  EXPECT_GOOD(max_per_peer, 1);
}

TEST(options_max_total_range) {
  EXPECT_BAD(max_total, 0);
  EXPECT_BAD(max_total, -5);
  EXPECT_GOOD(max_total, 4);
  EXPECT_GOOD(max_total, 100000);
}

TEST(options_client_limit_range) {
  EXPECT_BAD(client_limit, 0);
  EXPECT_BAD(client_limit, -1);
  EXPECT_GOOD(client_limit, 1);
  EXPECT_GOOD(client_limit, 64);
}

TEST(options_connect_timeout_range) {
  EXPECT_BAD(connect_timeout, 0);
  EXPECT_BAD(connect_timeout, -1);
  EXPECT_GOOD(connect_timeout, 1);
}

TEST(options_retries_range) {
  EXPECT_BAD(retries, -1);
  EXPECT_BAD(retries, 101);
  EXPECT_GOOD(retries, 0);
  EXPECT_GOOD(retries, 100);
}

TEST(options_acquire_timeout_range) {
  EXPECT_BAD(acquire_timeout, -1);
  EXPECT_GOOD(acquire_timeout, 0);
  EXPECT_GOOD(acquire_timeout, 1);
}

TEST(options_backlog_range) {
  EXPECT_BAD(backlog, -1);
  EXPECT_GOOD(backlog, 0);
  EXPECT_GOOD(backlog, 1);
}

TEST(options_idle_timeout_range) {
  EXPECT_BAD(idle_timeout, -1);
  EXPECT_GOOD(idle_timeout, 0);
  EXPECT_GOOD(idle_timeout, 10);
}

TEST(options_max_lifespan_range) {
  EXPECT_BAD(max_lifespan, -1);
  EXPECT_GOOD(max_lifespan, 0);
  EXPECT_GOOD(max_lifespan, 10);
}

TEST(options_lifespan_jitter_range) {
  EXPECT_BAD(lifespan_jitter, -1);
  EXPECT_BAD(lifespan_jitter, 51);
  EXPECT_GOOD(lifespan_jitter, 0);
  EXPECT_GOOD(lifespan_jitter, 50);
}

TEST(options_handshake_timeout_range) {
  EXPECT_BAD(handshake_timeout, 0);
  EXPECT_BAD(handshake_timeout, -1);
  EXPECT_GOOD(handshake_timeout, 1);
}

TEST(options_max_address_age_range) {
  EXPECT_BAD(max_address_age, -1);
  EXPECT_GOOD(max_address_age, 0);
}

TEST(options_ping_after_range) {
  EXPECT_BAD(ping_after, -1);
  EXPECT_GOOD(ping_after, 0);
  EXPECT_GOOD(ping_after, 1000);
}

TEST(options_keepalive_range) {
  EXPECT_BAD(keepalive, -1);
  EXPECT_GOOD(keepalive, 0);
  EXPECT_GOOD(keepalive, 1000);
}

TEST(options_eject_max_percent_range) {
  EXPECT_BAD(eject_max_percent, -1);
  EXPECT_BAD(eject_max_percent, 101);
  EXPECT_GOOD(eject_max_percent, 0);
  EXPECT_GOOD(eject_max_percent, 100);
}

TEST(options_probe_interval_range) {
  EXPECT_BAD(probe_interval, -1);
  EXPECT_GOOD(probe_interval, 0);
  EXPECT_GOOD(probe_interval, 1);
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
