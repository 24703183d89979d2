/*
 * Shared by the C clients of the PING benchmark (ping_c.c, ping_connect.c): arguments, clocks,
 * CPU time, latency percentiles and the one RESULT line every client kind prints, so that
 * bench_ping.lua reads the C, Lua and Node clients the same way.
 *
 * Every client takes the same arguments:
 *   --peers HOST:PORT[,HOST:PORT...]   the redis-servers (127.0.0.1 only in the bench)
 *   --clients C                        concurrent clients (32)
 *   --requests N                       timed requests in all, split evenly over the clients
 *   --warmup W                         untimed requests per client before the timed phase
 * and prints, on success, one line:
 *   RESULT kind=K requests=N wall_s=S cpu_user_s=U cpu_sys_s=Y p50_us=A p99_us=B errors=E
 * where the CPU and wall figures cover the timed phase only (getrusage(RUSAGE_SELF) and
 * CLOCK_MONOTONIC around it), and each latency is one request's, from the start of its
 * acquire (or connect) to the moment its +PONG line is complete.
 */
#ifndef PING_COMMON_H
#define PING_COMMON_H

#include "../bench_util.h" /* first: it defines _GNU_SOURCE */

#include <uv.h>

enum { PING_MAX_PEERS = 8 };

typedef struct {
  const char *kind;
  char prog[32]; /* "ping_" kind: the program's name in messages */
  char peers[PING_MAX_PEERS][64];
  char hosts[PING_MAX_PEERS][48];
  int ports[PING_MAX_PEERS];
  int npeers;
  int clients;
  long requests; /* timed, in all */
  long warmup;   /* per client */
} ping_args_t;

static void ping_parse_args(ping_args_t *a, const char *kind, int argc, char **argv) {
  memset(a, 0, sizeof *a);
  a->kind = kind;
  snprintf(a->prog, sizeof a->prog, "ping_%s", kind);
  bench_start(a->prog, 60); /* the bench gives each run far less; this only ends a hang */
  a->clients = 32;
  a->requests = 100000;
  a->warmup = 20;
  const char *peers = "127.0.0.1:6379";
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--peers") == 0 && i + 1 < argc)
      peers = argv[++i];
    else if (strcmp(argv[i], "--clients") == 0 && i + 1 < argc)
      a->clients = atoi(argv[++i]);
    else if (strcmp(argv[i], "--requests") == 0 && i + 1 < argc)
      a->requests = atol(argv[++i]);
    else if (strcmp(argv[i], "--warmup") == 0 && i + 1 < argc)
      a->warmup = atol(argv[++i]);
    else {
      fprintf(stderr,
              "usage: %s [--peers HOST:PORT,...] [--clients C] [--requests N] [--warmup W]\n",
              argv[0]);
      exit(2);
    }
  }
  if (a->clients < 1 || a->clients > 10000 || a->requests < a->clients || a->warmup < 0)
    bench_die("bad --clients (1..10000), --requests (>= clients) or --warmup (>= 0)");
  a->requests -= a->requests % a->clients; /* an even split */
  for (const char *s = peers; *s && a->npeers < PING_MAX_PEERS;) {
    size_t n = strcspn(s, ",");
    if (n == 0 || n >= sizeof a->peers[0]) bench_die("bad --peers");
    memcpy(a->peers[a->npeers], s, n);
    a->peers[a->npeers][n] = '\0';
    const char *colon = strrchr(a->peers[a->npeers], ':');
    if (colon == NULL || (size_t)(colon - a->peers[a->npeers]) >= sizeof a->hosts[0])
      bench_die("bad peer '%s' (HOST:PORT expected)", a->peers[a->npeers]);
    memcpy(a->hosts[a->npeers], a->peers[a->npeers], (size_t)(colon - a->peers[a->npeers]));
    a->ports[a->npeers] = atoi(colon + 1);
    if (a->ports[a->npeers] <= 0 || a->ports[a->npeers] > 65535)
      bench_die("bad port in '%s'", a->peers[a->npeers]);
    a->npeers++;
    s += n;
    if (*s == ',') s++;
  }
  if (a->npeers == 0) bench_die("no peers");
  signal(SIGPIPE, SIG_IGN);
}

typedef struct {
  uint64_t wall_ns;
  struct rusage ru;
} ping_mark_t;

static void ping_mark(ping_mark_t *m) {
  getrusage(RUSAGE_SELF, &m->ru);
  m->wall_ns = bench_now_ns();
}

static double ping_tv_s(struct timeval a, struct timeval b) {
  return (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_usec - a.tv_usec) / 1e6;
}

static int ping_cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}

/* The q-quantile (0..1) of n sorted values: nearest rank. */
static double ping_quantile(const uint32_t *v, long n, double q) {
  if (n <= 0) return 0;
  long rank = (long)(q * (double)n + 0.999999);
  if (rank < 1) rank = 1;
  if (rank > n) rank = n;
  return v[rank - 1];
}

/* Latencies in ns (uint32_t: a request longer than 4.29 s is clamped, and counted). */
static void ping_report(const ping_args_t *a, const ping_mark_t *t0, const ping_mark_t *t1,
                        uint32_t *lat_ns, long n, long errors) {
  qsort(lat_ns, (size_t)n, sizeof *lat_ns, ping_cmp_u32);
  printf(
      "RESULT kind=%s requests=%ld wall_s=%.6f cpu_user_s=%.6f cpu_sys_s=%.6f p50_us=%.2f "
      "p99_us=%.2f errors=%ld\n",
      a->kind, n, (double)(t1->wall_ns - t0->wall_ns) / 1e9,
      ping_tv_s(t0->ru.ru_utime, t1->ru.ru_utime), ping_tv_s(t0->ru.ru_stime, t1->ru.ru_stime),
      ping_quantile(lat_ns, n, 0.50) / 1e3, ping_quantile(lat_ns, n, 0.99) / 1e3, errors);
  fflush(stdout);
}

/* What every client kind keeps of its requests: how many are left in the phase, when the one
 * in flight started, and its reply so far. */
typedef struct {
  long left;
  uint64_t t0;
  char buf[64];
  size_t len;
} ping_req_t;

/* Add `n` bytes of a reply to q's. Returns 1 once the reply is the complete "+PONG\r\n" line
 * (and empties the buffer), 0 while the line is not complete; anything else ends the program. */
static int ping_pong_add(ping_req_t *q, const char *data, size_t n) {
  if (q->len + n > sizeof q->buf) bench_die("reply too long");
  memcpy(q->buf + q->len, data, n);
  q->len += n;
  if (memchr(q->buf, '\n', q->len) == NULL) return 0;
  if (q->len != 7 || memcmp(q->buf, "+PONG\r\n", 7) != 0)
    bench_die("unexpected reply '%.*s'", (int)q->len, q->buf);
  q->len = 0;
  return 1;
}

/* One phase: `start(i, per_client)` starts client i on its `per_client` requests; the loop runs
 * until every client said it is done by counting `*running` down to 0 (and stopping the loop). */
static void ping_run_phase(uv_loop_t *loop, int *running, int clients, long per_client,
                           void (*start)(int i, long per_client)) {
  *running = clients;
  for (int i = 0; i < clients; i++)
    start(i, per_client);
  while (*running > 0)
    uv_run(loop, UV_RUN_DEFAULT);
}

static uint32_t ping_clamp_ns(uint64_t ns) {
  return ns > UINT32_MAX ? UINT32_MAX : (uint32_t)ns;
}

#endif
