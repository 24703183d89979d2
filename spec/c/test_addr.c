/* Peer addresses: IPv4, [v6]:port, unix paths; malformed ones refused; spellings are one
 * peer; the peer table (find, foreach, last_seen). */
#include "test.h"

static void expect_malformed(pp_pool_t *pool, const char *addr) {
  pp_peer_t *peer = (pp_peer_t *)0x1;
  const char *why = NULL;
  int rc = pp_pool_add_peer(pool, addr, 0, &peer, &why);
  if (rc != PP_EINVAL)
    FAIL("add_peer(\"%s\") = %d (%s), want PP_EINVAL", addr, rc, pp_err_name(rc));
  if (why == NULL || why[0] == '\0') FAIL("add_peer(\"%s\") refused without a why", addr);
  ASSERT_NULL(pp_pool_find_peer(pool, addr));
}

/* A NULL-terminated list of addresses. */
#define NAMES(...) ((const char *const[]){__VA_ARGS__, NULL})

/* Every spelling in `same` adds the very peer the first one adds, which reads back as
 * `canonical`. Returns that peer. */
static pp_peer_t *one_peer(pp_pool_t *pool, const char *canonical, const char *const *same) {
  pp_peer_t *a = test_peer(pool, same[0]);
  for (int i = 1; same[i]; i++)
    if (test_peer(pool, same[i]) != a) FAIL("\"%s\" is not the peer \"%s\"", same[i], same[0]);
  ASSERT_STREQ(pp_peer_addr(a), canonical);
  return a;
}

/* Every address in `others` adds a peer other than `a`. */
static void apart(pp_pool_t *pool, const pp_peer_t *a, const char *const *others) {
  for (int i = 0; others[i]; i++)
    if (test_peer(pool, others[i]) == a)
      FAIL("\"%s\" is the peer \"%s\"", others[i], pp_peer_addr(a));
}

/* pp_addr_canonical(addr) succeeds with `want`. */
static void expect_canonical(const char *addr, const char *want) {
  char out[300];
  ASSERT_OK(pp_addr_canonical(addr, out, sizeof out, NULL));
  if (strcmp(out, want) != 0) FAIL("\"%s\" reads back as \"%s\", want \"%s\"", addr, out, want);
}

TEST(addr_ipv4) {
  pp_pool_t *pool = test_pool(NULL);
  pp_peer_t *peer = NULL;
  const char *why = NULL;
  ASSERT_OK(pp_pool_add_peer(pool, "127.0.0.1:7001", 0, &peer, &why));
  ASSERT_NOT_NULL(peer);
  ASSERT_STREQ(pp_peer_addr(peer), "127.0.0.1:7001");
  ASSERT_EQ(pp_peer_state(peer), PP_PEER_KNOWN);
  ASSERT_PTR_EQ(pp_peer_pool(peer), pool);
  pp_stats_t s = test_stats(pool);
  ASSERT_EQ(s.peers, 1);
  ASSERT_EQ(s.peers_by_state[PP_PEER_KNOWN], 1);
  test_finish(pool);
}

TEST(addr_ipv6) {
  pp_pool_t *pool = test_pool(NULL);
  pp_peer_t *a = test_peer(pool, "[::1]:7001");
  ASSERT_STREQ(pp_peer_addr(a), "[::1]:7001");
  pp_peer_t *b = test_peer(pool, "[2001:db8::1]:443");
  ASSERT_STREQ(pp_peer_addr(b), "[2001:db8::1]:443");
  ASSERT_PTR_NE(a, b);
  test_finish(pool);
}

TEST(addr_ipv6_spellings_are_one_peer) {
  pp_pool_t *pool = test_pool(NULL);
  pp_peer_t *a = one_peer(pool, "[::1]:5", NAMES("[::1]:5", "[0:0::1]:5", "[0:0:0:0:0:0:0:1]:5"));
  one_peer(pool, "[2001:db8::1]:80", NAMES("[2001:DB8:0::1]:80", "[2001:db8::1]:80"));
  apart(pool, a, NAMES("[::1]:6")); /* another port is another peer */
  ASSERT_EQ(test_stats(pool).peers, 3);
  test_finish(pool);
}

TEST(addr_ipv4_and_ipv6_differ) {
  pp_pool_t *pool = test_pool(NULL);
  apart(pool, test_peer(pool, "127.0.0.1:5"), NAMES("[::1]:5"));
  test_finish(pool);
}

TEST(addr_unix_path) {
  pp_pool_t *pool = test_pool(NULL);
  pp_peer_t *a = test_peer(pool, "/tmp/pp-nowhere/x.sock");
  ASSERT_CONTAINS(pp_peer_addr(a), "/tmp/pp-nowhere/x.sock");
  ASSERT_EQ(pp_peer_state(a), PP_PEER_KNOWN);
  test_finish(pool);
}

TEST(addr_unix_prefix_is_same_peer) {
  pp_pool_t *pool = test_pool(NULL);
  one_peer(pool, "/tmp/pp-nowhere/x.sock",
           NAMES("/tmp/pp-nowhere/x.sock", "unix:/tmp/pp-nowhere/x.sock"));
  ASSERT_EQ(test_stats(pool).peers, 1);
  test_finish(pool);
}

TEST(addr_unix_relative_path) {
  pp_pool_t *pool = test_pool(NULL);
  one_peer(pool, "./x.sock", NAMES("./x.sock", "./x.sock"));
  test_finish(pool);
}

TEST(addr_unix_prefixed_relative_path_reads_back) {
  /* The canonical spelling of "unix:x.sock" must read back as the same unix path (found by
   * the round-trip property of fuzz/fuzz_addr.c: it used to be "x.sock", host:port). */
  expect_canonical("unix:x.sock", "./x.sock");
  expect_canonical("./x.sock", "./x.sock");
  expect_canonical("unix:unix:x", "./unix:x");
  pp_pool_t *pool = test_pool(NULL);
  pp_peer_t *a = one_peer(pool, "./x.sock", NAMES("unix:x.sock", "./x.sock"));
  ASSERT_PTR_EQ(pp_pool_find_peer(pool, pp_peer_addr(a)), a);
  test_finish(pool);
}

TEST(addr_ipv6_zone_refused) {
  /* The canonical spelling has no zone: "[fe80::1%lo]:5" and "[fe80::1%eth0]:5" would be one
   * peer with one of their zones (and an unknown zone was silently ignored). */
  pp_pool_t *pool = test_pool(NULL);
  expect_malformed(pool, "[fe80::1%lo]:5");
  expect_malformed(pool, "[::1%no-such-interface]:5");
  test_finish(pool);
}

TEST(addr_malformed_refused) {
  pp_pool_t *pool = test_pool(NULL);
  const char *bad[] = {
      "",
      "127.0.0.1",
      "127.0.0.1:",
      ":80",
      "127.0.0.1:65536",
      "127.0.0.1:99999999999",
      "127.0.0.1:-1",
      "127.0.0.1:abc",
      "127.0.0.1:80x",
      "127.0.0.1:80:80",
      "256.0.0.1:80",
      "1.2.3:80",
      "1.2.3.4.5:80",
      "::1:80",
      "[::1]",
      "[::1]:",
      "[::1:80",
      "::1]:80",
      "[zz::1]:80",
      "[127.0.0.1]:80",
      "[::1]80",
      "unix:",
      " 127.0.0.1:80",
      "127.0.0.1 :80",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    expect_malformed(pool, bad[i]);
  ASSERT_EQ(test_stats(pool).peers, 0);
  test_finish(pool);
}

TEST(addr_hostname_canonical) {
  /* A host name is a peer of its own: lowercased, a trailing dot dropped, the port kept. It is
   * not resolved here (pp_addr_canonical makes no query). */
  expect_canonical("Redis.Internal:6379", "redis.internal:6379");
  expect_canonical("redis.internal.:6379", "redis.internal:6379");
  expect_canonical("_srv-1.a-b.example:1", "_srv-1.a-b.example:1");
  expect_canonical("localhost:80", "localhost:80");
  pp_pool_t *pool = test_pool(NULL);
  pp_peer_t *a = one_peer(pool, "localhost:80", NAMES("LocalHost:80", "localhost.:80"));
  ASSERT_PTR_EQ(pp_pool_find_peer(pool, "LOCALHOST:80"), a);
  apart(pool, a, NAMES("127.0.0.1:80")); /* a name is not its address */
  test_finish(pool);
}

TEST(addr_hostname_malformed_refused) {
  pp_pool_t *pool = test_pool(NULL);
  char long_label[80], long_name[300];
  memset(long_label, 'a', 64);
  strcpy(long_label + 64, ".x:1");
  memset(long_name, 0, sizeof long_name);
  for (int i = 0; i < 64; i++)
    memcpy(long_name + i * 4, "abc.", 4); /* 256 bytes */
  strcat(long_name, "x:1");
  const char *bad[] = {
      "bad..name:80", ".lead:80", "trail-.x:80", "-x.y:80", "spa ce:80",
      "1.2.3.256:80", "1.2.3:80", "999:80",      "x/y:80",  "caf\xc3\xa9.example:80",
      long_label,     long_name,  "name:0",      "name:",   "name:65536",
      "UNIX:80",      "Unix.:80", /* would read back as a unix path */
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    expect_malformed(pool, bad[i]);
  ASSERT_EQ(test_stats(pool).peers, 0);
  test_finish(pool);
}

TEST(addr_unix_path_too_long) {
  pp_pool_t *pool = test_pool(NULL);
  char path[300];
  memset(path, 'a', sizeof path);
  path[0] = '/';
  path[sizeof path - 1] = '\0';
  expect_malformed(pool, path);
  test_finish(pool);
}

TEST(addr_same_string_twice_one_peer) {
  pp_pool_t *pool = test_pool(NULL);
  pp_peer_t *a = one_peer(pool, "127.0.0.1:80", NAMES("127.0.0.1:80", "127.0.0.1:80"));
  ASSERT_EQ(test_stats(pool).peers, 1);
  apart(pool, a, NAMES("127.0.0.1:81", "127.0.0.2:80"));
  ASSERT_EQ(test_stats(pool).peers, 3);
  test_finish(pool);
}

TEST(addr_ipv4_spellings) {
  /* Leading zeros are either refused or canonicalised to the same peer; never a second peer. */
  pp_pool_t *pool = test_pool(NULL);
  pp_peer_t *a = test_peer(pool, "127.0.0.1:80");
  const char *alt[] = {"127.000.0.1:80", "127.0.0.1:080", "127.0.0.1:0080"};
  for (size_t i = 0; i < sizeof alt / sizeof alt[0]; i++) {
    pp_peer_t *p = NULL;
    const char *why = NULL;
    int rc = pp_pool_add_peer(pool, alt[i], 0, &p, &why);
    if (rc == 0) {
      if (p != a) FAIL("\"%s\" became a second peer \"%s\"", alt[i], pp_peer_addr(p));
    } else {
      ASSERT_ERR(rc, PP_EINVAL);
    }
  }
  ASSERT_EQ(test_stats(pool).peers, 1);
  test_finish(pool);
}

TEST(addr_find_peer_any_spelling) {
  pp_pool_t *pool = test_pool(NULL);
  pp_peer_t *a = test_peer(pool, "[::1]:5");
  pp_peer_t *b = test_peer(pool, "10.1.2.3:7");
  ASSERT_PTR_EQ(pp_pool_find_peer(pool, "[0:0::1]:5"), a);
  ASSERT_PTR_EQ(pp_pool_find_peer(pool, "[::1]:5"), a);
  ASSERT_PTR_EQ(pp_pool_find_peer(pool, "10.1.2.3:7"), b);
  ASSERT_NULL(pp_pool_find_peer(pool, "10.1.2.3:8"));
  ASSERT_NULL(pp_pool_find_peer(pool, "garbage"));
  ASSERT_NULL(pp_pool_find_peer(pool, ""));
  test_finish(pool);
}

TEST(addr_last_seen_keeps_newer) {
  pp_pool_t *pool = test_pool(NULL);
  int64_t now = test_unix_ms();
  pp_peer_t *p = NULL;
  ASSERT_OK(pp_pool_add_peer(pool, "127.0.0.1:9", now - 5000, &p, NULL));
  ASSERT_EQ(test_peer_info(p).last_seen, now - 5000);
  ASSERT_OK(pp_pool_add_peer(pool, "127.0.0.1:9", now - 1000, NULL, NULL));
  ASSERT_EQ(test_peer_info(p).last_seen, now - 1000);
  ASSERT_OK(pp_pool_add_peer(pool, "127.0.0.1:9", now - 3000, NULL, NULL));
  ASSERT_EQ(test_peer_info(p).last_seen, now - 1000);
  test_finish(pool);
}

TEST(addr_last_seen_zero_means_now) {
  pp_pool_t *pool = test_pool(NULL);
  int64_t before = test_unix_ms();
  pp_peer_t *p = test_peer(pool, "127.0.0.1:9");
  int64_t after = test_unix_ms();
  pp_peer_info_t i = test_peer_info(p);
  /* Loop time may lag the wall clock a little; allow a generous margin. */
  ASSERT_GE(i.last_seen, before - 2000);
  ASSERT_LE(i.last_seen, after + 2000);
  test_finish(pool);
}

TEST(addr_peer_info_fresh) {
  pp_pool_t *pool = test_pool(NULL);
  pp_peer_t *p = test_peer(pool, "127.0.0.1:9");
  pp_peer_info_t i = test_peer_info(p);
  ASSERT_STREQ(i.addr, "127.0.0.1:9");
  ASSERT_EQ(i.state, PP_PEER_KNOWN);
  ASSERT_EQ(i.conns, 0);
  ASSERT_EQ(i.idle, 0);
  ASSERT_EQ(i.leases, 0);
  ASSERT_EQ(i.waiters, 0);
  ASSERT_EQ(i.failures, 0);
  ASSERT_EQ(i.last_success, 0);
  ASSERT_EQ(i.attempts, 0);
  ASSERT_EQ(i.last_error, 0);
  ASSERT_EQ(i.bytes_in, 0);
  ASSERT_EQ(i.bytes_out, 0);
  ASSERT_EQ(i.msgs_in, 0);
  ASSERT_EQ(i.msgs_out, 0);
  test_finish(pool);
}

typedef struct {
  const char *seen[8];
  int n;
  int stop_at;
} walk_t;

static int walk_fn(pp_peer_t *peer, void *arg) {
  walk_t *w = arg;
  w->seen[w->n++] = pp_peer_addr(peer);
  return w->n == w->stop_at ? 42 : 0;
}

TEST(addr_foreach_insertion_order) {
  pp_pool_t *pool = test_pool(NULL);
  test_peer(pool, "127.0.0.1:3");
  test_peer(pool, "[::1]:1");
  test_peer(pool, "127.0.0.1:2");
  test_peer(pool, "[::1]:1"); /* duplicate: keeps its place */
  walk_t w = {{0}, 0, 0};
  ASSERT_EQ(pp_pool_foreach_peer(pool, walk_fn, &w), 0);
  ASSERT_EQ(w.n, 3);
  ASSERT_STREQ(w.seen[0], "127.0.0.1:3");
  ASSERT_STREQ(w.seen[1], "[::1]:1");
  ASSERT_STREQ(w.seen[2], "127.0.0.1:2");
  walk_t w2 = {{0}, 0, 2};
  ASSERT_EQ(pp_pool_foreach_peer(pool, walk_fn, &w2), 42);
  ASSERT_EQ(w2.n, 2);
  test_finish(pool);
}

TEST(addr_peer_data) {
  pp_pool_t *pool = test_pool(NULL);
  pp_peer_t *p = test_peer(pool, "127.0.0.1:9");
  int x;
  ASSERT_NULL(pp_peer_get_data(p));
  pp_peer_set_data(p, &x);
  ASSERT_PTR_EQ(pp_peer_get_data(p), &x);
  ASSERT_PTR_EQ(test_peer(pool, "127.0.0.1:9"), p);
  ASSERT_PTR_EQ(pp_peer_get_data(p), &x); /* re-adding keeps the peer and its data */
  test_finish(pool);
}

TEST(addr_add_on_closing_pool) {
  pp_pool_t *pool = test_pool(NULL);
  ASSERT_OK(pp_pool_close(pool, test_close_cb));
  ASSERT_EQ(pp_pool_is_closing(pool), 1);
  const char *why = NULL;
  pp_peer_t *p = NULL;
  ASSERT_ERR(pp_pool_add_peer(pool, "127.0.0.1:9", 0, &p, &why), PP_ECLOSED);
  test_finish_closed();
}
