/* The engine tests' DNS server (dns_server.h): one uv_udp_t on the test loop. */
#include "dns_server.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "test.h"

#define MAX_NAMES 16
#define MAX_ADDRS 64

typedef struct {
  char name[128];
  int mode;
  unsigned ttl;
  int n4, n6;
  unsigned char a[MAX_ADDRS][4], aaaa[MAX_ADDRS][16];
  int queries;
} entry_t;

struct dns_srv_s {
  uv_udp_t udp;
  char addr[32];
  entry_t entries[MAX_NAMES];
  int nentries;
  int queries;
  char buf[2048];
};

static entry_t *find(dns_srv_t *srv, const char *name) {
  for (int i = 0; i < srv->nentries; i++)
    if (strcmp(srv->entries[i].name, name) == 0) return &srv->entries[i];
  return NULL;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  dns_srv_t *srv = h->data;
  (void)suggested;
  buf->base = srv->buf;
  buf->len = sizeof srv->buf;
}

typedef struct {
  uv_udp_send_t req;
  uv_buf_t buf;
  unsigned char data[4096];
} send_t;

static void on_sent(uv_udp_send_t *req, int status) {
  (void)status;
  free(req->data);
}

static void put16(unsigned char *p, unsigned v) {
  p[0] = (unsigned char)(v >> 8);
  p[1] = (unsigned char)v;
}

static void on_recv(uv_udp_t *udp, ssize_t n, const uv_buf_t *buf, const struct sockaddr *from,
                    unsigned flags) {
  dns_srv_t *srv = udp->data;
  (void)flags;
  if (n < 12 || from == NULL) return;
  const unsigned char *q = (const unsigned char *)buf->base;
  char name[256];
  size_t i = 12, len = 0;
  while (i < (size_t)n && q[i] != 0) {
    unsigned l = q[i];
    if (l >= 64 || i + 1 + l >= (size_t)n || len + l + 1 >= sizeof name) return;
    if (len) name[len++] = '.';
    for (unsigned k = 0; k < l; k++) {
      char c = (char)q[i + 1 + k];
      name[len++] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
    }
    i += 1 + l;
  }
  name[len] = '\0';
  if (i + 5 > (size_t)n) return;
  unsigned qtype = (unsigned)(q[i + 1] << 8 | q[i + 2]);
  size_t qend = i + 5;
  srv->queries++;
  entry_t *e = find(srv, name);
  if (e) e->queries++;
  if (e && e->mode == DNS_SILENT) return;
  int rcode = e ? (e->mode == DNS_ANSWER ? 0 : e->mode) : DNS_NXDOMAIN;
  send_t *s = malloc(sizeof *s);
  if (s == NULL) return;
  unsigned char *r = s->data;
  memcpy(r, q, qend);
  unsigned qflags = (unsigned)(q[2] << 8 | q[3]);
  put16(r + 2, 0x8000 | (qflags & 0x7900) | 0x0400 | 0x0080 | (unsigned)rcode);
  put16(r + 4, 1);
  put16(r + 8, 0);
  put16(r + 10, 0);
  size_t at = qend;
  int count = 0;
  if (rcode == 0) {
    int m = qtype == 1 ? e->n4 : qtype == 28 ? e->n6 : 0;
    for (int k = 0; k < m; k++) {
      size_t dlen = qtype == 1 ? 4 : 16;
      if (at + 12 + dlen > sizeof s->data) break;
      put16(r + at, 0xC00C);
      put16(r + at + 2, qtype);
      put16(r + at + 4, 1);
      put16(r + at + 6, e->ttl >> 16);
      put16(r + at + 8, e->ttl & 0xffff);
      put16(r + at + 10, (unsigned)dlen);
      memcpy(r + at + 12, qtype == 1 ? e->a[k] : e->aaaa[k], dlen);
      at += 12 + dlen;
      count++;
    }
  }
  put16(r + 6, (unsigned)count);
  s->buf = uv_buf_init((char *)s->data, (unsigned)at);
  s->req.data = s;
  if (uv_udp_send(&s->req, udp, &s->buf, 1, from, on_sent) != 0) free(s);
}

dns_srv_t *dns_srv_start(void) {
  dns_srv_t *srv = calloc(1, sizeof *srv);
  struct sockaddr_in sa;
  uv_ip4_addr("127.0.0.1", 0, &sa);
  if (uv_udp_init(test_loop(), &srv->udp) != 0 ||
      uv_udp_bind(&srv->udp, (const struct sockaddr *)&sa, 0) != 0)
    FAIL("dns server: cannot bind a UDP socket on 127.0.0.1");
  srv->udp.data = srv;
  struct sockaddr_storage me;
  int len = sizeof me;
  uv_udp_getsockname(&srv->udp, (struct sockaddr *)&me, &len);
  snprintf(srv->addr, sizeof srv->addr, "127.0.0.1:%d",
           ntohs(((struct sockaddr_in *)&me)->sin_port));
  uv_udp_recv_start(&srv->udp, on_alloc, on_recv);
  return srv;
}

static int parse_list(const char *list, int family, unsigned char (*out)[16], size_t size) {
  int n = 0;
  char buf[64];
  while (list && *list && n < MAX_ADDRS) {
    size_t len = strcspn(list, ",");
    if (len >= sizeof buf) FAIL("dns server: address too long");
    memcpy(buf, list, len);
    buf[len] = '\0';
    if (inet_pton(family, buf, out[n]) != 1) FAIL("dns server: bad address %s", buf);
    (void)size;
    n++;
    list += len + (list[len] == ',');
  }
  return n;
}

void dns_srv_set(dns_srv_t *srv, const char *name, int mode, const char *a, const char *aaaa,
                 unsigned ttl) {
  entry_t *e = find(srv, name);
  if (e == NULL) {
    if (srv->nentries == MAX_NAMES) FAIL("dns server: too many names");
    e = &srv->entries[srv->nentries++];
    snprintf(e->name, sizeof e->name, "%s", name);
  }
  e->mode = mode;
  e->ttl = ttl;
  unsigned char tmp[MAX_ADDRS][16];
  e->n4 = parse_list(a, AF_INET, tmp, 4);
  for (int k = 0; k < e->n4; k++)
    memcpy(e->a[k], tmp[k], 4);
  e->n6 = parse_list(aaaa, AF_INET6, e->aaaa, 16);
}

int dns_srv_queries(const dns_srv_t *srv, const char *name) {
  if (name == NULL) return srv->queries;
  for (int i = 0; i < srv->nentries; i++)
    if (strcmp(srv->entries[i].name, name) == 0) return srv->entries[i].queries;
  return 0;
}

const char *dns_srv_addr(const dns_srv_t *srv) {
  return srv->addr;
}

static void on_closed(uv_handle_t *h) {
  free(h->data);
}

void dns_srv_stop(dns_srv_t *srv) {
  if (srv) uv_close((uv_handle_t *)&srv->udp, on_closed);
}
