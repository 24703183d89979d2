/* Host names: c-ares on the pool's loop. One channel per pool, made when the first name is
 * resolved; its sockets are watched by uv_poll_t handles (the sock state callback opens and
 * closes them) and its timeouts by one uv_timer_t, so a query never blocks the loop and never
 * takes one of libuv's 4 worker threads. Each name peer has at most one query in flight, and a
 * refresh heap re-resolves the names that have conns when their TTL (clamped to
 * dns_ttl_min..dns_ttl_max) runs out. Handles count in pool->conn_handles, so the pool's own
 * handles close after them. */
#include "internal.h"

#include <ares.h>
#include <arpa/inet.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct poller_s {
  uv_poll_t poll;
  struct pp__dns_pool_s *dns;
  ares_socket_t fd;
  struct poller_s *next; /* dns->pollers, while open */
} poller_t;

typedef struct pp__dns_pool_s {
  pp_pool_t *pool;
  char *servers; /* the dns_servers option, copied; NULL: the system's */
  ares_channel channel;
  bool channel_open;
  bool timers_open;
  uv_timer_t ares_timer;    /* c-ares' next timeout */
  uv_timer_t refresh_timer; /* the first refresh_at in `refresh` */
  pp__heap_t refresh;       /* name peers by refresh_at */
  poller_t *pollers;
  uint64_t seq;
} pp__dns_pool_t;

typedef struct pp__dns_query_s {
  pp_peer_t *peer; /* NULL once the peer is gone: the answer is dropped */
} query_t;

static void on_ares_timer(uv_timer_t *timer);

/* ---- helpers --------------------------------------------------------------------------- */

void pp__sockaddr_format(const struct sockaddr_storage *sa, char *out, size_t n) {
  char ip[INET6_ADDRSTRLEN] = "";
  if (n == 0) return;
  out[0] = '\0';
  if (sa->ss_family == AF_INET) {
    const struct sockaddr_in *a = (const struct sockaddr_in *)sa;
    uv_ip4_name(a, ip, sizeof ip);
    snprintf(out, n, "%s:%d", ip, ntohs(a->sin_port));
  } else if (sa->ss_family == AF_INET6) {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)sa;
    uv_ip6_name(a, ip, sizeof ip);
    snprintf(out, n, "[%s]:%d", ip, ntohs(a->sin6_port));
  }
}

bool pp__sockaddr_equal(const struct sockaddr_storage *a, const struct sockaddr_storage *b) {
  if (a->ss_family != b->ss_family) return false;
  if (a->ss_family == AF_INET) {
    const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
    return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
  }
  if (a->ss_family == AF_INET6) {
    const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
    return x->sin6_port == y->sin6_port &&
           memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0;
  }
  return false;
}

/* One server of a dns_servers list: "1.2.3.4", "1.2.3.4:53", "[::1]:53" or "::1". */
static bool server_ok(const char *s, size_t len) {
  char buf[64], host[64];
  struct sockaddr_in6 a6;
  struct sockaddr_in a4;
  if (len == 0 || len >= sizeof buf) return false;
  memcpy(buf, s, len);
  buf[len] = '\0';
  const char *port = NULL;
  if (buf[0] == '[') {
    char *close = strchr(buf, ']');
    if (close == NULL || (close[1] != '\0' && close[1] != ':')) return false;
    *close = '\0';
    snprintf(host, sizeof host, "%s", buf + 1);
    if (close[1] == ':') port = close + 2;
    if (uv_ip6_addr(host, 53, &a6) != 0) return false;
  } else if (uv_ip6_addr(buf, 53, &a6) == 0) {
    return true; /* a bare IPv6 address */
  } else {
    char *colon = strchr(buf, ':');
    if (colon) {
      *colon = '\0';
      port = colon + 1;
    }
    if (uv_ip4_addr(buf, 53, &a4) != 0) return false;
  }
  if (port) {
    if (*port == '\0' || strlen(port) > 5) return false;
    long v = 0;
    for (const char *p = port; *p; p++) {
      if (*p < '0' || *p > '9') return false;
      v = v * 10 + (*p - '0');
    }
    if (v < 1 || v > 65535) return false;
  }
  return true;
}

int pp__dns_servers_check(const char *servers, const char **why) {
  const char *msg =
      "dns_servers must list servers as \"ip[:port]\" or \"[ipv6]:port\", separated by commas";
  if (*servers == '\0' || strlen(servers) > 1024) {
    if (why) *why = msg;
    return PP_EINVAL;
  }
  for (const char *s = servers;;) {
    size_t len = strcspn(s, ",");
    if (!server_ok(s, len)) {
      if (why) *why = msg;
      return PP_EINVAL;
    }
    if (s[len] == '\0') return 0;
    s += len + 1;
  }
}

/* ---- the channel and its handles ------------------------------------------------------- */

static void handle_closed(uv_handle_t *handle) {
  pp_pool_t *pool = handle->data;
  pool->conn_handles--;
  pp__maybe_finish(pool);
}

static void poller_closed(uv_handle_t *handle) {
  poller_t *p = (poller_t *)handle;
  pp_pool_t *pool = p->dns->pool;
  free(p);
  pool->conn_handles--;
  pp__maybe_finish(pool);
}

/* Read the channel's next timeout into the timer; the timer keeps the loop alive only while a
 * query is in flight (an acquire may be waiting for it). */
static void arm(pp__dns_pool_t *dns) {
  if (!dns->channel_open) return;
  struct timeval tv, *t = ares_timeout(dns->channel, NULL, &tv);
  if (t == NULL) {
    uv_timer_stop(&dns->ares_timer);
    return;
  }
  uint64_t ms = (uint64_t)t->tv_sec * 1000 + ((uint64_t)t->tv_usec + 999) / 1000;
  pp_timer_start(&dns->ares_timer, on_ares_timer, ms);
  uv_ref((uv_handle_t *)&dns->ares_timer);
}

static void on_ares_timer(uv_timer_t *timer) {
  pp__dns_pool_t *dns = timer->data;
  uv_unref((uv_handle_t *)timer);
  ares_process_fd(dns->channel, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
  arm(dns);
}

static void on_poll(uv_poll_t *handle, int status, int events) {
  poller_t *p = (poller_t *)handle;
  pp__dns_pool_t *dns = p->dns;
  ares_socket_t fd = p->fd;
  /* An error on the socket: let c-ares read it and find out. */
  bool r = status < 0 || (events & UV_READABLE), w = status < 0 || (events & UV_WRITABLE);
  ares_process_fd(dns->channel, r ? fd : ARES_SOCKET_BAD, w ? fd : ARES_SOCKET_BAD);
  arm(dns);
}

static void sock_state(void *data, ares_socket_t fd, int readable, int writable) {
  pp__dns_pool_t *dns = data;
  pp_pool_t *pool = dns->pool;
  poller_t **link = &dns->pollers, *p;
  while ((p = *link) && p->fd != fd)
    link = &p->next;
  if (!readable && !writable) {
    if (p == NULL) return;
    *link = p->next;
    uv_close((uv_handle_t *)&p->poll, poller_closed);
    return;
  }
  if (p == NULL) {
    p = calloc(1, sizeof(*p));
    if (p == NULL) return; /* the query times out */
    if (uv_poll_init_socket(pool->loop, &p->poll, fd) != 0) {
      free(p);
      return;
    }
    p->dns = dns;
    p->fd = fd;
    p->poll.data = pool;
    p->next = dns->pollers;
    dns->pollers = p;
    pool->conn_handles++;
    uv_unref((uv_handle_t *)&p->poll); /* the timer keeps the loop alive while one waits */
  }
  uv_poll_start(&p->poll, (readable ? UV_READABLE : 0) | (writable ? UV_WRITABLE : 0), on_poll);
}

static pthread_once_t library_once = PTHREAD_ONCE_INIT;
static void library_init(void) {
  ares_library_init(ARES_LIB_INIT_ALL);
}

/* Open the channel: 0, or a c-ares status. */
static int channel_open(pp__dns_pool_t *dns) {
  pp_pool_t *pool = dns->pool;
  if (dns->channel_open) return ARES_SUCCESS;
  pthread_once(&library_once, library_init);
  struct ares_options o;
  memset(&o, 0, sizeof o);
  o.sock_state_cb = sock_state;
  o.sock_state_cb_data = dns;
  o.timeout = (int)pool->opts.dns_timeout;
  o.tries = 2;
  /* EDNS (RFC 6891) with the usual 1232-byte payload: an answer with many addresses comes in one
   * UDP datagram rather than being refused (1.18 does not enable it by default). */
  o.flags = ARES_FLAG_EDNS;
  o.ednspsz = 1232;
  int status = ares_init_options(&dns->channel, &o,
                                 ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES |
                                     ARES_OPT_FLAGS | ARES_OPT_EDNSPSZ);
  if (status != ARES_SUCCESS) return status;
  if (dns->servers) {
    status = ares_set_servers_ports_csv(dns->channel, dns->servers);
    if (status != ARES_SUCCESS) {
      ares_destroy(dns->channel);
      return status;
    }
  }
  dns->channel_open = true;
  return ARES_SUCCESS;
}

static void on_refresh_timer(uv_timer_t *timer);

int pp__dns_pool_init(pp_pool_t *pool, const char *servers) {
  pp__dns_pool_t *dns = calloc(1, sizeof(*dns));
  if (dns == NULL) return UV_ENOMEM;
  if (servers && (dns->servers = strdup(servers)) == NULL) {
    free(dns);
    return UV_ENOMEM;
  }
  dns->pool = pool;
  PP__HEAP_INIT(&dns->refresh, pp__dns_peer_t, refresh_node, refresh_key, seq);
  pool->dns = dns;
  pool->opts.dns_servers = dns->servers; /* the options point at the pool's copy */
  return 0;
}

/* The timers, opened with the first name peer (a pool without names has no DNS handle). */
static void timers_open(pp__dns_pool_t *dns) {
  pp_pool_t *pool = dns->pool;
  if (dns->timers_open) return;
  dns->timers_open = true;
  uv_timer_init(pool->loop, &dns->ares_timer);
  uv_timer_init(pool->loop, &dns->refresh_timer);
  dns->ares_timer.data = dns;
  dns->refresh_timer.data = dns;
  uv_unref((uv_handle_t *)&dns->ares_timer);
  uv_unref((uv_handle_t *)&dns->refresh_timer);
  pool->conn_handles += 2;
}

void pp__dns_close(pp_pool_t *pool) {
  pp__dns_pool_t *dns = pool->dns;
  if (dns == NULL) return;
  if (dns->channel_open) {
    dns->channel_open = false;
    ares_destroy(dns->channel); /* queries end (ARES_EDESTRUCTION), sockets close */
  }
  if (dns->timers_open) {
    dns->timers_open = false;
    dns->ares_timer.data = pool;
    dns->refresh_timer.data = pool;
    uv_close((uv_handle_t *)&dns->ares_timer, handle_closed);
    uv_close((uv_handle_t *)&dns->refresh_timer, handle_closed);
  }
}

void pp__dns_pool_free(pp_pool_t *pool) {
  if (pool->dns == NULL) return;
  free(pool->dns->servers);
  free(pool->dns);
  pool->dns = NULL;
}

/* ---- the refresh heap ------------------------------------------------------------------ */

static void refresh_arm(pp__dns_pool_t *dns) {
  if (!dns->timers_open || dns->pool->closing) return;
  if (dns->refresh.min == NULL) {
    uv_timer_stop(&dns->refresh_timer);
    return;
  }
  pp__dns_peer_t *d = PP__CONTAINER(dns->refresh.min, pp__dns_peer_t, refresh_node);
  pp_timer_start_at(&dns->refresh_timer, on_refresh_timer, d->refresh_key);
}

static void set_refresh(pp_peer_t *peer, uint64_t at) {
  pp__dns_pool_t *dns = peer->pool->dns;
  pp__dns_peer_t *d = peer->dns;
  d->refresh_at = at;
  pp__heap_set_key(&dns->refresh, &d->refresh_node, (int64_t)at);
  refresh_arm(dns);
}

/* Names whose answer ran out: re-resolve those with conns (their conns may have to move);
 * the others are resolved at their next dial. */
static void on_refresh_timer(uv_timer_t *timer) {
  pp__dns_pool_t *dns = timer->data;
  uint64_t now = pp_now();
  /* An answer that comes at once (localhost) is due ttl_min >= 1 ms from now: no spin. */
  while (dns->refresh.min && !dns->pool->closing) {
    pp__dns_peer_t *d = PP__CONTAINER(dns->refresh.min, pp__dns_peer_t, refresh_node);
    if (d->refresh_key > now) break;
    pp__heap_remove(&dns->refresh, &d->refresh_node);
    d->refresh_key = 0;
    if (d->peer->conns > 0 && !d->peer->burned) pp__dns_resolve(d->peer);
  }
  refresh_arm(dns);
}

/* ---- queries --------------------------------------------------------------------------- */

static const char *reason_of(int status) {
  switch (status) {
    case ARES_ENOTFOUND:
      return "NXDOMAIN";
    case ARES_ENODATA:
      return "no address (NODATA)";
    case ARES_ESERVFAIL:
      return "SERVFAIL";
    case ARES_ETIMEOUT:
      return "timeout";
    case ARES_EREFUSED:
      return "REFUSED";
    case ARES_ECONNREFUSED: /* c-ares skips a server that answers SERVFAIL or REFUSED */
      return "no server answered (SERVFAIL, REFUSED or unreachable)";
    case ARES_EBADRESP:
      return "bad response";
    case ARES_ENOMEM:
      return "out of memory";
    default:
      return ares_strerror(status);
  }
}

static uint64_t clamp_ttl(const pp_pool_t *pool, uint64_t ms) {
  if (ms < (uint64_t)pool->opts.dns_ttl_min) return (uint64_t)pool->opts.dns_ttl_min;
  if (ms > (uint64_t)pool->opts.dns_ttl_max) return (uint64_t)pool->opts.dns_ttl_max;
  return ms;
}

/* Whether two answers hold the same addresses (in any order). */
static bool same_set(const pp__dns_peer_t *d, const struct sockaddr_storage *a, int n) {
  if (n != d->naddrs) return false;
  for (int i = 0; i < n; i++) {
    bool found = false;
    for (int j = 0; j < d->naddrs && !found; j++)
      found = pp__sockaddr_equal(&a[i], &d->addrs[j]);
    if (!found) return false;
  }
  return true;
}

static void explain_answer(pp_peer_t *peer, uint64_t ttl_ms) {
  pp__dns_peer_t *d = peer->dns;
  char list[PP_EXPLAIN_TEXT], one[64];
  size_t len = 0;
  list[0] = '\0';
  for (int i = 0; i < d->naddrs && len < sizeof list; i++) {
    pp__sockaddr_format(&d->addrs[i], one, sizeof one);
    len += (size_t)snprintf(list + len, sizeof list - len, "%s%s", i ? ", " : "", one);
  }
  pp__explain(peer->pool, "dns", peer, 0, "%s resolved to %d address%s (%s), next in %.1f s",
              d->host, d->naddrs, d->naddrs == 1 ? "" : "es", list, (double)ttl_ms / 1000);
}

/* A new answer: keep it, schedule its refresh, move the conns. */
static void answered(pp_peer_t *peer, const struct sockaddr_storage *addrs, int n,
                     uint64_t ttl_ms) {
  pp__dns_peer_t *d = peer->dns;
  bool changed = !d->answered || !same_set(d, addrs, n);
  bool was_failing = d->reason[0] != '\0';
  memcpy(d->addrs, addrs, (size_t)n * sizeof(*addrs));
  d->naddrs = n;
  d->answered = true;
  d->reason[0] = '\0';
  ttl_ms = clamp_ttl(peer->pool, ttl_ms);
  set_refresh(peer, pp_now() + ttl_ms);
  if (changed || was_failing) explain_answer(peer, ttl_ms);
  pp__conn_dns_done(peer, changed);
}

static void failed(pp_peer_t *peer, const char *why) {
  pp__dns_peer_t *d = peer->dns;
  pp_pool_t *pool = peer->pool;
  pool->stats.dns_failures++;
  snprintf(d->reason, sizeof d->reason, "%s: %s", d->host, why);
  set_refresh(peer, pp_now() + (uint64_t)pool->opts.dns_ttl_min);
  pp__explain(pool, "dns", peer, 0, "%s%s", d->reason,
              d->answered ? " (the last answer is kept)" : "");
  pp__conn_dns_done(peer, false);
}

/* Whether an answer's address can be a peer: not unspecified (0.0.0.0 and :: connect to this
 * host on Linux: a hostile answer would point the pool at local services), multicast or the
 * broadcast address, also as v4-mapped IPv6. */
static bool unicast(const struct sockaddr_storage *sa) {
  const uint8_t *b;
  if (sa->ss_family == AF_INET6) {
    b = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (memcmp(b, mapped, 12) != 0) {
      static const uint8_t zero[16] = {0};
      return b[0] != 0xff && memcmp(b, zero, 16) != 0;
    }
    b += 12;
  } else {
    b = (const uint8_t *)&((const struct sockaddr_in *)sa)->sin_addr.s_addr;
  }
  uint32_t v4 = (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
  return v4 != 0 && (v4 >> 28) != 0xe && v4 != 0xffffffffu;
}

/* Put the answer's addresses in dial order (RFC 8305 4: families interleaved, IPv6 first),
 * with the peer's port, at most PP_DNS_MAX_ADDRS, no duplicates, only unicast ones (*dropped
 * counts the others). Returns how many. */
static int collect(const struct ares_addrinfo *ai, int port, struct sockaddr_storage *out,
                   uint64_t *ttl_ms, int *dropped) {
  struct sockaddr_storage v6[PP_DNS_MAX_ADDRS], v4[PP_DNS_MAX_ADDRS];
  int n6 = 0, n4 = 0, n = 0;
  int ttl = -1;
  for (const struct ares_addrinfo_node *node = ai ? ai->nodes : NULL; node; node = node->ai_next) {
    struct sockaddr_storage sa;
    memset(&sa, 0, sizeof sa);
    if (node->ai_family == AF_INET6 && node->ai_addrlen >= sizeof(struct sockaddr_in6)) {
      if (n6 == PP_DNS_MAX_ADDRS) continue;
      memcpy(&sa, node->ai_addr, sizeof(struct sockaddr_in6));
      ((struct sockaddr_in6 *)&sa)->sin6_port = htons((uint16_t)port);
    } else if (node->ai_family == AF_INET && node->ai_addrlen >= sizeof(struct sockaddr_in)) {
      if (n4 == PP_DNS_MAX_ADDRS) continue;
      memcpy(&sa, node->ai_addr, sizeof(struct sockaddr_in));
      ((struct sockaddr_in *)&sa)->sin_port = htons((uint16_t)port);
    } else {
      continue;
    }
    if (!unicast(&sa)) {
      (*dropped)++;
      continue;
    }
    struct sockaddr_storage *list = sa.ss_family == AF_INET6 ? v6 : v4;
    int *count = sa.ss_family == AF_INET6 ? &n6 : &n4;
    bool dup = false;
    for (int i = 0; i < *count && !dup; i++)
      dup = pp__sockaddr_equal(&list[i], &sa);
    if (dup) continue;
    list[(*count)++] = sa;
    if (ttl < 0 || node->ai_ttl < ttl) ttl = node->ai_ttl;
  }
  for (int i = 0; n < PP_DNS_MAX_ADDRS && (i < n6 || i < n4); i++) {
    if (i < n6) out[n++] = v6[i];
    if (i < n4 && n < PP_DNS_MAX_ADDRS) out[n++] = v4[i];
  }
  *ttl_ms = ttl < 0 ? 0 : (uint64_t)ttl * 1000;
  return n;
}

static void on_addrinfo(void *arg, int status, int timeouts, struct ares_addrinfo *ai) {
  (void)timeouts;
  query_t *q = arg;
  pp_peer_t *peer = q->peer;
  free(q);
  if (peer) peer->dns->query = NULL;
  if (peer == NULL || status == ARES_EDESTRUCTION || peer->pool->closing) {
    if (ai) ares_freeaddrinfo(ai);
    return;
  }
  struct sockaddr_storage addrs[PP_DNS_MAX_ADDRS];
  uint64_t ttl_ms = 0;
  int dropped = 0;
  int n = status == ARES_SUCCESS ? collect(ai, peer->dns->port, addrs, &ttl_ms, &dropped) : 0;
  if (ai) ares_freeaddrinfo(ai);
  if (status == ARES_SUCCESS && n == 0 && dropped > 0)
    failed(peer, "no usable address (only unspecified, multicast or broadcast ones)");
  else if (status == ARES_SUCCESS && n == 0)
    failed(peer, reason_of(ARES_ENODATA));
  else if (status != ARES_SUCCESS)
    failed(peer, reason_of(status));
  else
    answered(peer, addrs, n, ttl_ms);
}

/* RFC 6761 6.3: "localhost" and names under ".localhost" are the loopback addresses, answered
 * without a query (as c-ares does from 1.22; 1.18 asks /etc/hosts, which may lack ::1). */
static bool is_localhost(const char *host) {
  size_t n = strlen(host);
  return strcmp(host, "localhost") == 0 || (n > 10 && strcmp(host + n - 10, ".localhost") == 0);
}

static void answer_localhost(pp_peer_t *peer) {
  struct sockaddr_storage addrs[2];
  memset(addrs, 0, sizeof addrs);
  uv_ip6_addr("::1", peer->dns->port, (struct sockaddr_in6 *)&addrs[0]);
  uv_ip4_addr("127.0.0.1", peer->dns->port, (struct sockaddr_in *)&addrs[1]);
  answered(peer, addrs, 2, (uint64_t)peer->pool->opts.dns_ttl_max);
}

void pp__dns_resolve(pp_peer_t *peer) {
  pp_pool_t *pool = peer->pool;
  pp__dns_peer_t *d = peer->dns;
  if (d->query || pool->closing) return;
  pool->stats.dns_queries++;
  if (is_localhost(d->host)) {
    answer_localhost(peer);
    return;
  }
  pp__dns_pool_t *dns = pool->dns;
  timers_open(dns);
  int status = channel_open(dns);
  query_t *q = status == ARES_SUCCESS ? malloc(sizeof(*q)) : NULL;
  if (q == NULL) {
    failed(peer, status == ARES_SUCCESS ? "out of memory" : reason_of(status));
    return;
  }
  q->peer = peer;
  d->query = q;
  struct ares_addrinfo_hints hints;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  /* NOSORT: c-ares would connect a UDP socket to every address to sort them (RFC 6724);
   * collect() orders them for Happy Eyeballs instead. */
  hints.ai_flags = ARES_AI_NOSORT;
  ares_getaddrinfo(dns->channel, d->host, NULL, &hints, on_addrinfo, q);
  arm(dns);
}

bool pp__dns_busy(const pp_peer_t *peer) {
  return peer->dns && peer->dns->query != NULL;
}

bool pp__dns_fresh(const pp_peer_t *peer) {
  const pp__dns_peer_t *d = peer->dns;
  return d->answered && pp__ahead(peer->pool, d->refresh_at);
}

bool pp__dns_has(const pp_peer_t *peer, const struct sockaddr_storage *sa) {
  for (int i = 0; i < peer->dns->naddrs; i++)
    if (pp__sockaddr_equal(&peer->dns->addrs[i], sa)) return true;
  return false;
}

/* ---- peers ----------------------------------------------------------------------------- */

int pp__dns_peer_new(pp_peer_t *peer) {
  pp__dns_peer_t *d = calloc(1, sizeof(*d));
  if (d == NULL) return UV_ENOMEM;
  const char *colon = strrchr(peer->addr, ':');
  d->host = strndup(peer->addr, (size_t)(colon - peer->addr));
  if (d->host == NULL) {
    free(d);
    return UV_ENOMEM;
  }
  d->port = atoi(colon + 1);
  d->seq = ++peer->pool->dns->seq;
  d->peer = peer;
  peer->dns = d;
  return 0;
}

void pp__dns_peer_free(pp_peer_t *peer) {
  pp__dns_peer_t *d = peer->dns;
  if (d == NULL) return;
  if (d->query) d->query->peer = NULL; /* its answer, if it ever comes, is dropped */
  if (d->refresh_key && peer->pool->dns)
    pp__heap_remove(&peer->pool->dns->refresh, &d->refresh_node);
  free(d->host);
  free(d);
  peer->dns = NULL;
}

int pp_peer_resolved(const pp_peer_t *peer, pp_resolved_t *out, int max) {
  if (peer == NULL || peer->dns == NULL) return -1;
  const pp__dns_peer_t *d = peer->dns;
  pp_resolved_t all[PP_DNS_MAX_ADDRS * 2];
  int n = 0;
  for (int i = 0; i < d->naddrs; i++) {
    memset(&all[n], 0, sizeof all[n]);
    all[n].sa = d->addrs[i];
    all[n++].current = 1;
  }
  for (const pp__link_t *l = peer->conns_list.next; l != &peer->conns_list; l = l->next) {
    const pp_conn_t *conn = PP__CONTAINER(l, pp_conn_t, peer_link);
    if (conn->phase == PP_CONN_CLOSED || conn->sa.ss_family == AF_UNSPEC) continue;
    int i = 0;
    while (i < n && !pp__sockaddr_equal(&all[i].sa, &conn->sa))
      i++;
    if (i == n) {
      if (n == (int)(sizeof all / sizeof all[0])) continue;
      memset(&all[n], 0, sizeof all[n]);
      all[n++].sa = conn->sa;
    }
    all[i].conns++;
  }
  for (int i = 0; i < n && i < max; i++)
    out[i] = all[i];
  return n;
}

const char *pp_peer_dns_reason(const pp_peer_t *peer) {
  if (peer == NULL || peer->dns == NULL || peer->dns->reason[0] == '\0') return NULL;
  return peer->dns->reason;
}
