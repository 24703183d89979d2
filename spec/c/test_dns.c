/* Host names: "name:port" peers resolved with c-ares on the loop against a DNS server on
 * loopback (dns_server.c), dialled over real loopback servers; Happy Eyeballs over several
 * addresses; TTL refresh moving conns; failures answered with PP_EDNS and the resolver's
 * reason; hostile answers kept bounded. */
#include <stdio.h>

#include "dns_server.h"
#include "servers.h"
#include "test.h"

/* A pool asking `dns` only, with quick DNS timeouts and refreshes. */
static pp_pool_t *dns_pool(dns_srv_t *dns, pp_options_t *o) {
  pp_options_t local;
  if (o == NULL) {
    test_options(&local);
    o = &local;
  }
  o->dns_servers = dns_srv_addr(dns);
  o->dns_timeout = 100;
  return test_pool(o);
}

/* dns_pool() whose answers are asked again every 20..50 ms (the TTL clamped to that). */
static pp_pool_t *refreshing_pool(dns_srv_t *dns) {
  pp_options_t o;
  test_options(&o);
  o.dns_ttl_min = 20;
  o.dns_ttl_max = 50;
  return dns_pool(dns, &o);
}

static pp_peer_t *name_peer(pp_pool_t *pool, const char *name, int port) {
  char addr[300];
  snprintf(addr, sizeof addr, "%s:%d", name, port);
  return test_peer(pool, addr);
}

typedef struct {
  const char *kind, *text;
} explain_want_t;

static int explain_match(const pp_explain_t *e, void *arg) {
  const explain_want_t *w = arg;
  return strcmp(e->kind, w->kind) == 0 && strstr(e->text, w->text) != NULL;
}

/* Whether the explain ring holds an entry of `kind` whose text contains `text`. */
static int explain_has(pp_pool_t *pool, const char *kind, const char *text) {
  explain_want_t want = {kind, text};
  return pp_pool_explain(pool, NULL, explain_match, &want);
}

/* The conn is connected to `srv`'s address. */
static void assert_conn_to(const pp_conn_t *conn, const srv_t *srv) {
  char addr[64];
  ASSERT_OK(pp_conn_address(conn, addr, sizeof addr));
  ASSERT_STREQ(addr, srv_addr(srv));
}

/* The end of a test with a DNS server and, unless NULL, one echo server. */
static void dns_finish(dns_srv_t *dns, pp_pool_t *pool, srv_t *srv) {
  dns_srv_stop(dns);
  test_finish(pool);
  if (srv) srv_stop(srv);
}

/* An acquire on `name` (port 7), which the DNS server answers with failure `mode`, ends
 * PP_EDNS. Copies the peer's DNS reason into `why`; returns how many queries the server got. */
static int dns_failure(const char *name, int mode, char *why, size_t n) {
  dns_srv_t *dns = dns_srv_start();
  dns_srv_set(dns, name, mode, NULL, NULL, 0);
  pp_pool_t *pool = dns_pool(dns, NULL);
  pp_peer_t *peer = name_peer(pool, name, 7);
  pp_lease_t l;
  test_rec_t r;
  ASSERT_EQ(test_acquire_wait(pool, &l, &r, peer, NULL), PP_EDNS);
  snprintf(why, n, "%s", pp_peer_dns_reason(peer));
  int queries = dns_srv_queries(dns, name);
  dns_finish(dns, pool, NULL);
  return queries;
}

TEST(dns_name_resolves_and_dials) {
  srv_t *srv = srv_echo_start(NULL);
  dns_srv_t *dns = dns_srv_start();
  dns_srv_set(dns, "db.pp.test", DNS_ANSWER, "127.0.0.1", NULL, 30);
  pp_pool_t *pool = dns_pool(dns, NULL);
  pp_peer_t *peer = name_peer(pool, "DB.pp.test", srv_port(srv));
  char want[64];
  snprintf(want, sizeof want, "db.pp.test:%d", srv_port(srv));
  ASSERT_STREQ(pp_peer_addr(peer), want);
  pp_lease_t l;
  test_rec_t r;
  ASSERT_OK(test_acquire_wait(pool, &l, &r, peer, NULL));
  assert_conn_to(l.conn, srv);
  pp_resolved_t res[4];
  ASSERT_EQ(pp_peer_resolved(peer, res, 4), 1);
  ASSERT_EQ(res[0].conns, 1);
  ASSERT_EQ(res[0].current, 1);
  ASSERT_NULL(pp_peer_dns_reason(peer));
  ASSERT_STREQ(pp_peer_addr(peer), want); /* the name stays the peer's address */
  ASSERT_EQ(test_stats(pool).dns_queries, 1);
  ASSERT(explain_has(pool, "dns", "db.pp.test resolved to 1 address (127.0.0.1:"));
  ASSERT_OK(pp_release(&l, 0));
  /* A numeric peer has no answer to show. */
  ASSERT_EQ(pp_peer_resolved(test_peer(pool, "127.0.0.1:9"), res, 4), -1);
  dns_finish(dns, pool, srv);
}

TEST(dns_nxdomain_fails_fast_with_reason) {
  dns_srv_t *dns = dns_srv_start();
  dns_srv_set(dns, "gone.pp.test", DNS_NXDOMAIN, NULL, NULL, 0);
  pp_options_t o;
  test_options(&o);
  o.acquire_timeout = 30000; /* the answer must come long before this */
  o.retries = 3;             /* and without retrying a name that does not exist */
  pp_pool_t *pool = dns_pool(dns, &o);
  pp_peer_t *peer = name_peer(pool, "gone.pp.test", 7);
  pp_lease_t l;
  test_rec_t r;
  uint64_t t0 = test_now_ms();
  ASSERT_EQ(test_acquire_wait(pool, &l, &r, peer, NULL), PP_EDNS);
  ASSERT(test_now_ms() - t0 < 5000);
  ASSERT_STREQ(pp_err_name(PP_EDNS), "dns");
  ASSERT_STREQ(pp_peer_dns_reason(peer), "gone.pp.test: NXDOMAIN");
  char why[256];
  pp_lease_describe(&l, why, sizeof why);
  ASSERT_CONTAINS(why, "gone.pp.test: NXDOMAIN");
  ASSERT_EQ(test_peer_info(peer).last_error, PP_EDNS);
  ASSERT(test_stats(pool).dns_failures >= 1);
  ASSERT(explain_has(pool, "dns", "gone.pp.test: NXDOMAIN"));
  /* While it backs off, an acquire is answered PP_EDNS at once. */
  if (pp_peer_check(peer) != 0) {
    ASSERT_EQ(pp_peer_check(peer), PP_EDNS);
    ASSERT_EQ(test_acquire_start(pool, &l, &r, peer, NULL), PP_EDNS);
  }
  dns_finish(dns, pool, NULL);
}

TEST(dns_silent_server_times_out) {
  char why[256];
  ASSERT(dns_failure("mute.pp.test", DNS_SILENT, why, sizeof why) >= 2);
  ASSERT_STREQ(why, "mute.pp.test: timeout");
}

TEST(dns_servfail_names_the_failure) {
  char why[256];
  dns_failure("sick.pp.test", DNS_SERVFAIL, why, sizeof why);
  ASSERT_CONTAINS(why, "sick.pp.test: ");
  ASSERT_CONTAINS(why, "SERVFAIL");
}

/* Happy Eyeballs: IPv6 first; the server listens on 127.0.0.1 only, so [::1] is refused and
 * the race goes on to 127.0.0.1 at once: one connect attempt, no failure counted. */
TEST(dns_happy_eyeballs_falls_back_to_ipv4) {
  srv_t *srv = srv_echo_start(NULL);
  dns_srv_t *dns = dns_srv_start();
  dns_srv_set(dns, "both.pp.test", DNS_ANSWER, "127.0.0.1", "::1", 30);
  pp_pool_t *pool = dns_pool(dns, NULL);
  pp_peer_t *peer = name_peer(pool, "both.pp.test", srv_port(srv));
  pp_lease_t l;
  test_rec_t r;
  ASSERT_OK(test_acquire_wait(pool, &l, &r, peer, NULL));
  assert_conn_to(l.conn, srv);
  pp_stats_t s = test_stats(pool);
  ASSERT_EQ(s.connect_attempts, 1);
  ASSERT_EQ(s.connects_failed, 0);
  pp_resolved_t res[4];
  ASSERT_EQ(pp_peer_resolved(peer, res, 4), 2);
  ASSERT_EQ(res[0].sa.ss_family, AF_INET6); /* dial order: IPv6 first */
  ASSERT_EQ(res[0].conns, 0);
  ASSERT_EQ(res[1].conns, 1);
  ASSERT_OK(pp_release(&l, 0));
  dns_finish(dns, pool, srv);
}

/* localhost answers ::1 and 127.0.0.1 without a query: it works with a server on either. */
static void localhost_reaches(srv_t *srv) {
  pp_options_t o;
  test_options(&o);
  o.dns_servers = "127.0.0.1:1"; /* nobody: localhost must not need it */
  pp_pool_t *pool = test_pool(&o);
  pp_peer_t *peer = name_peer(pool, "localhost", srv_port(srv));
  pp_lease_t l;
  test_rec_t r;
  ASSERT_OK(test_acquire_wait(pool, &l, &r, peer, NULL));
  assert_conn_to(l.conn, srv);
  ASSERT_OK(pp_release(&l, 0));
  test_finish(pool);
  srv_stop(srv);
}

TEST(dns_localhost_reaches_ipv4_only_server) {
  localhost_reaches(srv_echo_start(NULL));
}

TEST(dns_localhost_reaches_ipv6_only_server) {
  srv_t *srv = srv_echo6_start(NULL);
  if (srv == NULL) test_skip("IPv6 loopback (::1) is unavailable on this machine");
  localhost_reaches(srv);
}

/* A new answer without the address a conn uses: the idle conn closes at once, the leased one
 * when its lease ends (reason "dns"); new conns dial the new address. */
TEST(dns_refresh_drains_conns_of_a_gone_address) {
  srv_t *six = srv_echo6_start(NULL);
  if (six == NULL) test_skip("IPv6 loopback (::1) is unavailable on this machine");
  srv_t *four = srv_echo_start_on(NULL, srv_port(six));
  if (four == NULL) test_skip("the port of the IPv6 server is taken on 127.0.0.1");
  dns_srv_t *dns = dns_srv_start();
  dns_srv_set(dns, "move.pp.test", DNS_ANSWER, NULL, "::1", 1);
  pp_pool_t *pool = refreshing_pool(dns);
  pp_peer_t *peer = name_peer(pool, "move.pp.test", srv_port(six));
  pp_lease_t a, b;
  test_rec_t ra, rb;
  ASSERT_OK(test_acquire_wait(pool, &a, &ra, peer, NULL));
  ASSERT_OK(test_acquire_wait(pool, &b, &rb, peer, NULL));
  ASSERT_OK(pp_release(&b, 0)); /* idle */
  /* Unchanged answers keep the conns. */
  int before = dns_srv_queries(dns, "move.pp.test");
  RUN_UNTIL(dns_srv_queries(dns, "move.pp.test") >= before + 4, 3000);
  ASSERT_EQ(test_stats(pool).closed[PP_CLOSE_DNS], 0);
  dns_srv_set(dns, "move.pp.test", DNS_ANSWER, "127.0.0.1", NULL, 1);
  RUN_UNTIL(test_stats(pool).closed[PP_CLOSE_DNS] == 1, 3000);
  ASSERT_EQ(test_stats(pool).conns, 1); /* the leased one stays */
  pp_resolved_t res[4];
  ASSERT_EQ(pp_peer_resolved(peer, res, 4), 2);
  ASSERT_EQ(res[0].current, 1);
  ASSERT_EQ(res[0].conns, 0);
  ASSERT_EQ(res[1].current, 0); /* [::1], still used by the lease */
  ASSERT_EQ(res[1].conns, 1);
  ASSERT(explain_has(pool, "dns", "move.pp.test resolved to 1 address (127.0.0.1:"));
  ASSERT_OK(pp_release(&a, 0));
  ASSERT_EQ(test_stats(pool).closed[PP_CLOSE_DNS], 2);
  ASSERT_OK(test_acquire_wait(pool, &a, &ra, peer, NULL));
  assert_conn_to(a.conn, four);
  ASSERT_OK(pp_release(&a, 0));
  dns_finish(dns, pool, four);
  srv_stop(six);
}

/* A failed refresh keeps the last answer and its conns. */
TEST(dns_failed_refresh_keeps_the_answer) {
  srv_t *srv = srv_echo_start(NULL);
  dns_srv_t *dns = dns_srv_start();
  dns_srv_set(dns, "flaky.pp.test", DNS_ANSWER, "127.0.0.1", NULL, 1);
  pp_pool_t *pool = refreshing_pool(dns);
  pp_peer_t *peer = name_peer(pool, "flaky.pp.test", srv_port(srv));
  test_acquire_release(pool, peer);
  dns_srv_set(dns, "flaky.pp.test", DNS_SERVFAIL, NULL, NULL, 0);
  RUN_UNTIL(pp_peer_dns_reason(peer) != NULL, 3000);
  ASSERT_EQ(test_stats(pool).conns, 1);
  test_acquire_release(pool, peer); /* the idle conn serves */
  ASSERT_EQ(test_stats(pool).closed[PP_CLOSE_DNS], 0);
  dns_finish(dns, pool, srv);
}

/* 64 addresses in an answer: at most PP_DNS_MAX_ADDRS are kept, the dial still works. */
TEST(dns_hostile_answer_is_bounded) {
  srv_t *srv = srv_echo_start(NULL);
  dns_srv_t *dns = dns_srv_start();
  char list[64 * 16] = "127.0.0.1";
  for (int i = 2; i <= 64; i++)
    snprintf(list + strlen(list), sizeof list - strlen(list), ",127.0.1.%d", i);
  dns_srv_set(dns, "many.pp.test", DNS_ANSWER, list, NULL, 0);
  pp_pool_t *pool = dns_pool(dns, NULL);
  pp_peer_t *peer = name_peer(pool, "many.pp.test", srv_port(srv));
  pp_lease_t l;
  test_rec_t r;
  int rc = test_acquire_wait(pool, &l, &r, peer, NULL);
  if (rc) fprintf(stderr, "reason: %s\n", pp_peer_dns_reason(peer));
  ASSERT_OK(rc);
  pp_resolved_t res[64];
  ASSERT_EQ(pp_peer_resolved(peer, res, 64), PP_DNS_MAX_ADDRS);
  ASSERT_OK(pp_release(&l, 0));
  dns_finish(dns, pool, srv);
}

/* Closing the pool while a query is out: the acquire ends with PP_ECLOSED, nothing is left on
 * the loop (test_finish checks), and the late answer goes nowhere. */
TEST(dns_close_with_query_in_flight) {
  dns_srv_t *dns = dns_srv_start();
  dns_srv_set(dns, "mute.pp.test", DNS_SILENT, NULL, NULL, 0);
  pp_pool_t *pool = dns_pool(dns, NULL);
  pp_peer_t *peer = name_peer(pool, "mute.pp.test", 7);
  pp_lease_t l;
  test_rec_t r;
  ASSERT_OK(test_acquire_start(pool, &l, &r, peer, NULL));
  test_run_for(20);
  ASSERT_EQ(r.calls, 0);
  ASSERT_OK(pp_pool_close(pool, test_close_cb));
  RUN_UNTIL(r.calls == 1, 2000);
  ASSERT_EQ(r.status, PP_ECLOSED);
  dns_srv_stop(dns);
  test_finish_closed();
}

TEST(dns_options_checked) {
  pp_options_t o;
  pp_options_init(&o);
  const char *why = NULL;
  o.dns_servers = "127.0.0.1:5353,[::1]:53,10.0.0.1";
  ASSERT_OK(pp_options_validate(&o, &why));
  const char *bad[] = {"", "localhost:53", "127.0.0.1:0", "127.0.0.1:x", "[::1", "1.2.3.4,"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    o.dns_servers = bad[i];
    ASSERT_EQ(pp_options_validate(&o, &why), PP_EINVAL);
    ASSERT_CONTAINS(why, "dns_servers");
  }
  pp_options_init(&o);
  o.dns_ttl_max = o.dns_ttl_min - 1;
  ASSERT_EQ(pp_options_validate(&o, &why), PP_EINVAL);
  ASSERT_CONTAINS(why, "dns_ttl_max");
  pp_options_init(&o);
  o.happy_eyeballs_delay = 0;
  ASSERT_EQ(pp_options_validate(&o, &why), PP_EINVAL);
  ASSERT_CONTAINS(why, "happy_eyeballs_delay");
}
