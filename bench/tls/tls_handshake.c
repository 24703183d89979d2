/* What a TLS handshake costs the client, and what session resumption saves: the TLS layer
 * (engine/src/tls.c) against a real redis-server, one conn after another on one libuv loop.
 *
 * Each conn: TCP connect, TLS handshake, one PING/+PONG (which also reads the session tickets
 * a TLS 1.3 server sends after the handshake), close_notify, close. Kinds:
 *   tcp      the same without TLS (redis' plain port): the floor
 *   full     TLS, no session offered: a full handshake every time
 *   resumed  TLS, each conn resumes a session from the previous one's tickets
 *   warm     one TLS conn kept open, PING/+PONG only: what a pooled request costs
 * Client CPU time is getrusage(RUSAGE_SELF) user + system over the timed phase, per conn (per
 * request for warm); latencies are per conn from connect to close. Prints one line per kind:
 *   RESULT kind=full n=2000 cpu_us=... user_us=... sys_us=... p50_us=... p99_us=... resumed=0
 * usage: tls_handshake --port TLS_PORT --plain-port PORT --ca CA.pem [--n 2000] [--warmup 50]
 *   [--kinds tcp,full,resumed,warm]
 *        tls_handshake --free-port     (prints a free port of 127.0.0.1)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "internal.h"

static uv_loop_t *loop;
static pp__tls_ctx_t *ctx;
static pp__tls_cache_t *cache;
static int tls_port, plain_port;

typedef struct {
  uv_tcp_t tcp;
  uv_connect_t creq;
  pp__tls_t *tls; /* NULL: plain TCP */
  int hs;
  int end;
  bool ponged, closed;
  char in[256];
  size_t in_len;
  uv_write_t plain_req;
} conn_t;

static char read_space[65536];

static void die(const char *what, int err) {
  fprintf(stderr, "tls_handshake: %s: %s\n", what, err ? pp_strerror(err) : "failed");
  exit(1);
}

static void on_alloc(uv_handle_t *h, size_t n, uv_buf_t *buf) {
  buf->base = read_space;
  buf->len = sizeof read_space;
}

static void on_wrote(uv_write_t *req, int status) {
  pp__tls_output_done((pp__tls_out_t *)req);
}

static void flush(conn_t *c) {
  pp__tls_out_t *out;
  int err;
  while ((out = pp__tls_output(c->tls, &err)) != NULL) {
    int r = uv_write(&out->req, (uv_stream_t *)&c->tcp, &out->buf, 1, on_wrote);
    if (r) die("uv_write", r);
  }
  if (err) die("pp__tls_output", err);
}

#define PING "*1\r\n$4\r\nPING\r\n"

static void got_plain(conn_t *c, const char *p, size_t n) {
  if (c->in_len + n >= sizeof c->in) die("reply too long", 0);
  memcpy(c->in + c->in_len, p, n);
  c->in_len += n;
  c->in[c->in_len] = '\0';
  if (strstr(c->in, "+PONG\r\n")) c->ponged = true;
}

static void on_plain_wrote(uv_write_t *req, int status) {
  if (status) die("write", status);
}

static void send_ping(conn_t *c) {
  c->in_len = 0;
  c->ponged = false;
  if (c->tls) {
    uv_buf_t b = uv_buf_init(PING, sizeof PING - 1);
    int err = pp__tls_write(c->tls, &b, 1);
    if (err) die("pp__tls_write", err);
    flush(c);
  } else {
    uv_buf_t b = uv_buf_init(PING, sizeof PING - 1);
    int r = uv_write(&c->plain_req, (uv_stream_t *)&c->tcp, &b, 1, on_plain_wrote);
    if (r) die("uv_write", r);
  }
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  conn_t *c = s->data;
  if (nread == 0) return;
  if (nread < 0) {
    c->end = (int)nread;
    uv_read_stop(s);
    return;
  }
  if (c->tls == NULL) {
    got_plain(c, buf->base, (size_t)nread);
    return;
  }
  if (pp__tls_feed(c->tls, buf->base, (size_t)nread)) die("pp__tls_feed", UV_ENOMEM);
  if (!pp__tls_done(c->tls)) {
    c->hs = pp__tls_handshake(c->tls);
    flush(c);
    if (c->hs == UV_EAGAIN) return;
    if (c->hs < 0) die(pp__tls_reason(c->tls), PP_ETLS);
    send_ping(c);
  }
  char plain[4096];
  ssize_t n;
  while ((n = pp__tls_read(c->tls, plain, sizeof plain)) > 0)
    got_plain(c, plain, (size_t)n);
  if (n < 0) c->end = (int)n;
  flush(c);
}

static void on_connect(uv_connect_t *req, int status) {
  conn_t *c = req->data;
  if (status) die("connect", status);
  uv_tcp_nodelay(&c->tcp, 1);
  uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
  if (c->tls) {
    c->hs = pp__tls_handshake(c->tls);
    flush(c);
  } else {
    send_ping(c);
  }
}

static void on_closed(uv_handle_t *h) {
  ((conn_t *)h->data)->closed = true;
}

static void conn_open(conn_t *c, bool tls, pp__tls_cache_t *with) {
  memset(c, 0, sizeof *c);
  c->hs = UV_EAGAIN;
  if (tls) {
    int err = pp__tls_new(ctx, with, "127.0.0.1", &c->tls);
    if (err) die("pp__tls_new", err);
  }
  uv_tcp_init(loop, &c->tcp);
  c->tcp.data = c;
  c->creq.data = c;
  struct sockaddr_in sa;
  uv_ip4_addr("127.0.0.1", tls ? tls_port : plain_port, &sa);
  int r = uv_tcp_connect(&c->creq, &c->tcp, (const struct sockaddr *)&sa, on_connect);
  if (r) die("uv_tcp_connect", r);
}

static void run_until(bool *flag, conn_t *c) {
  while (!*flag) {
    if (c->end) die("the server ended the conn", c->end);
    uv_run(loop, UV_RUN_ONCE);
  }
}

static void conn_close(conn_t *c) {
  if (c->tls) {
    pp__tls_close_notify(c->tls);
    pp__tls_out_t *out = pp__tls_output(c->tls, NULL);
    if (out) {
      uv_try_write((uv_stream_t *)&c->tcp, &out->buf, 1);
      pp__tls_output_done(out);
    }
    pp__tls_free(c->tls);
    c->tls = NULL;
  }
  uv_close((uv_handle_t *)&c->tcp, on_closed);
  run_until(&c->closed, c);
}

static uint64_t cpu_us(uint64_t *user, uint64_t *sys) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  *user = (uint64_t)ru.ru_utime.tv_sec * 1000000 + (uint64_t)ru.ru_utime.tv_usec;
  *sys = (uint64_t)ru.ru_stime.tv_sec * 1000000 + (uint64_t)ru.ru_stime.tv_usec;
  return *user + *sys;
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

/* One conn of `kind`; returns whether it resumed. */
static bool one_conn(const char *kind) {
  conn_t c;
  bool tls = strcmp(kind, "tcp") != 0;
  conn_open(&c, tls, strcmp(kind, "resumed") == 0 ? cache : NULL);
  run_until(&c.ponged, &c);
  bool resumed = tls && pp__tls_resumed(c.tls);
  conn_close(&c);
  return resumed;
}

static void run_kind(const char *kind, int n, int warmup) {
  uint64_t *lat = malloc(sizeof(uint64_t) * (size_t)n);
  int resumed = 0;
  uint64_t u0, s0, u1, s1;
  conn_t warm;
  bool is_warm = strcmp(kind, "warm") == 0;
  if (is_warm) {
    conn_open(&warm, true, NULL);
    run_until(&warm.ponged, &warm);
    for (int i = 0; i < warmup; i++) {
      send_ping(&warm);
      run_until(&warm.ponged, &warm);
    }
  } else {
    for (int i = 0; i < warmup; i++)
      one_conn(kind);
  }
  cpu_us(&u0, &s0);
  for (int i = 0; i < n; i++) {
    uint64_t t0 = uv_hrtime();
    if (is_warm) {
      send_ping(&warm);
      run_until(&warm.ponged, &warm);
    } else {
      resumed += one_conn(kind);
    }
    lat[i] = (uv_hrtime() - t0) / 1000;
  }
  cpu_us(&u1, &s1);
  if (is_warm) conn_close(&warm);
  qsort(lat, (size_t)n, sizeof lat[0], cmp_u64);
  double user = (double)(u1 - u0) / n, sys = (double)(s1 - s0) / n;
  printf(
      "RESULT kind=%s n=%d cpu_us=%.1f user_us=%.1f sys_us=%.1f p50_us=%llu p99_us=%llu "
      "resumed=%d\n",
      kind, n, user + sys, user, sys, (unsigned long long)lat[n / 2],
      (unsigned long long)lat[(size_t)n * 99 / 100], resumed);
  fflush(stdout);
  free(lat);
}

/* Print a port of 127.0.0.1 that nothing listens on (for run.sh's redis-server). */
static int print_free_port(void) {
  uv_tcp_t tcp;
  struct sockaddr_in sa;
  struct sockaddr_storage got;
  int len = sizeof got;
  uv_loop_t *l = uv_default_loop();
  uv_ip4_addr("127.0.0.1", 0, &sa);
  uv_tcp_init(l, &tcp);
  if (uv_tcp_bind(&tcp, (const struct sockaddr *)&sa, 0) ||
      uv_tcp_getsockname(&tcp, (struct sockaddr *)&got, &len))
    die("bind", 0);
  printf("%d\n", ntohs(((struct sockaddr_in *)&got)->sin_port));
  uv_close((uv_handle_t *)&tcp, NULL);
  uv_run(l, UV_RUN_DEFAULT);
  return uv_loop_close(l);
}

int main(int argc, char **argv) {
  const char *ca = NULL, *kinds = "tcp,full,resumed,warm";
  int n = 2000, warmup = 50;
  if (argc == 2 && strcmp(argv[1], "--free-port") == 0) return print_free_port();
  for (int i = 1; i + 1 < argc; i += 2) {
    if (strcmp(argv[i], "--port") == 0)
      tls_port = atoi(argv[i + 1]);
    else if (strcmp(argv[i], "--plain-port") == 0)
      plain_port = atoi(argv[i + 1]);
    else if (strcmp(argv[i], "--ca") == 0)
      ca = argv[i + 1];
    else if (strcmp(argv[i], "--n") == 0)
      n = atoi(argv[i + 1]);
    else if (strcmp(argv[i], "--warmup") == 0)
      warmup = atoi(argv[i + 1]);
    else if (strcmp(argv[i], "--kinds") == 0)
      kinds = argv[i + 1];
    else
      die(argv[i], PP_EINVAL);
  }
  if (tls_port <= 0 || ca == NULL || n <= 0) {
    fprintf(stderr,
            "usage: tls_handshake --port TLS_PORT --plain-port PORT --ca CA.pem [--n N] "
            "[--warmup N] [--kinds tcp,full,resumed,warm]\n");
    return 2;
  }
  loop = uv_default_loop();
  pp_tls_options_t o;
  pp_tls_options_init(&o);
  o.ca_file = ca;
  const char *why = NULL;
  int err = pp__tls_ctx_new(&o, &ctx, &why);
  if (err) die(why ? why : "pp__tls_ctx_new", err);
  cache = pp__tls_cache_new(NULL);
  char list[128];
  snprintf(list, sizeof list, "%s", kinds);
  for (char *k = strtok(list, ","); k; k = strtok(NULL, ",")) {
    if (strcmp(k, "tcp") == 0 && plain_port <= 0) continue;
    run_kind(k, n, warmup);
  }
  pp__tls_cache_free(cache);
  pp__tls_ctx_unref(ctx);
  uv_loop_close(loop);
  return 0;
}
