/*
 * ping_c — the PING workload through peerpool's C API.
 *
 * One pool on one uv loop, every peer of --peers added to it, max_per_peer = ceil(C / peers),
 * max_total = C, client_limit 1. C clients run concurrently; each request is:
 *
 *   pp_try_acquire(pool, &lease, NULL, NULL)   the synchronous fast path (any peer: the
 *                                              pool's default selection picks it)
 *     or, when it says PP_EAGAIN (no idle conn: only while the pool fills),
 *   pp_acquire(pool, &lease, NULL, NULL, cb)   which dials or queues;
 *   pp_conn_read_start + pp_conn_write("PING\r\n");
 *   read until "+PONG\r\n" is complete, pp_conn_read_stop, pp_release(&lease, 0),
 *   and the client's next request starts right there, in the read callback.
 *
 * First every client does --warmup requests (untimed: this is when the pool dials its conns),
 * then --requests / C each, timed. Any error (a failed acquire, a read error, a reply other than
 * +PONG) ends the program with a message: the figures are only printed for a clean run.
 * The RESULT line is described in common.h.
 */
#include "../bench_acquire.h"
#include "common.h"

typedef struct {
  pp_lease_t lease;
  pp_write_t wreq[2]; /* a write's callback may still be pending when the next one starts */
  int wbusy[2];
  int wnext;
  ping_req_t q;
} client_t;

static ping_args_t args;
static uv_loop_t *loop;
static pp_pool_t *pool;
static client_t *clients;
static int phase; /* 0 warm-up, 1 timed */
static int running;
static uint32_t *lat;
static long nlat;
static char ping_bytes[] = "PING\r\n";
static int recycle; /* PP_PING_RECYCLE=1: every conn closed after its request */

static void start_request(client_t *c);

static void fail(const char *what, int err) {
  bench_die("%s: %s (%s)", what, pp_err_name(err), pp_strerror(err));
}

static void on_written(pp_write_t *req, int status) {
  int *busy = req->data;
  *busy = 0;
  if (status != 0) fail("write", status);
}

static void client_done(client_t *c) {
  if (--running == 0) uv_stop(loop);
}

static void on_read(pp_conn_t *conn, ssize_t nread, const char *data, void *arg) {
  client_t *c = arg;
  if (nread < 0) fail("read", (int)nread);
  if (!ping_pong_add(&c->q, data, (size_t)nread)) return;
  uint64_t t = bench_now_ns();
  if (phase == 1) lat[nlat++] = ping_clamp_ns(t - c->q.t0);
  pp_conn_read_stop(conn);
  int r = pp_release(&c->lease, recycle ? PP_ENOREUSE : 0);
  if (r != 0) fail("pp_release", r);
  if (--c->q.left > 0)
    start_request(c);
  else
    client_done(c);
}

static void granted(pp_lease_t *lease) {
  client_t *c = lease->data;
  pp_conn_t *conn = lease->conn;
  int r = pp_conn_read_start(conn, on_read, c);
  if (r != 0) fail("pp_conn_read_start", r);
  int w = c->wnext;
  if (c->wbusy[w]) w ^= 1;
  if (c->wbusy[w]) bench_die("two writes still pending on one client");
  c->wnext = w ^ 1;
  c->wbusy[w] = 1;
  c->wreq[w].data = &c->wbusy[w];
  uv_buf_t buf = uv_buf_init(ping_bytes, 6);
  r = pp_conn_write(&c->wreq[w], conn, &buf, 1, on_written);
  if (r != 0) fail("pp_conn_write", r);
}

static void start_request(client_t *c) {
  c->q.t0 = bench_now_ns();
  bench_acquire(pool, &c->lease, NULL, granted);
}

static void start_client(int i, long per_client) {
  clients[i].q.left = per_client;
  start_request(&clients[i]);
}

static void run_phase(long per_client) {
  ping_run_phase(loop, &running, args.clients, per_client, start_client);
}

/* The cost of observability (bench/observe/): PP_PING_OBSERVE=1 takes every pool event and,
 * every second (PP_PING_SCRAPE_MS; 0: never), reads what an exporter would (stats, every
 * histogram and its quantiles, the explain ring); PP_PING_LEAK=ms sets leak_threshold. */
static uv_timer_t scrape;
static uint64_t events_seen;

static void on_event(pp_pool_t *p, const pp_event_t *ev, void *arg) {
  (void)p, (void)ev, (void)arg;
  events_seen++;
}

static int explain_one(const pp_explain_t *e, void *arg) {
  (*(size_t *)arg) += strlen(e->text);
  return 0;
}

static void on_scrape(uv_timer_t *t) {
  (void)t;
  pp_stats_t st;
  pp_pool_stats(pool, &st);
  volatile double q = 0;
  for (int k = 0; k < PP_HIST_COUNT; k++) {
    pp_histogram_t h;
    pp_pool_histogram(pool, (pp_hist_kind_t)k, &h);
    q += pp_histogram_quantile(&h, 0.5) + pp_histogram_quantile(&h, 0.99);
  }
  size_t text = 0;
  pp_pool_explain(pool, NULL, explain_one, &text);
}

static void pool_closed(pp_pool_t *p) {
  pool = NULL;
}

int main(int argc, char **argv) {
  ping_parse_args(&args, "c", argc, argv);
  loop = uv_default_loop();
  pp_options_t o;
  pp_options_init(&o);
  o.max_per_peer = (args.clients + args.npeers - 1) / args.npeers;
  o.max_total = args.clients;
  o.client_limit = 1;
  /* TLS (bench/tls/ping_tls.lua): PP_PING_TLS_CA names the CA of a redis --tls-port peer. */
  pp_tls_options_t tls;
  pp_tls_options_init(&tls);
  if (getenv("PP_PING_TLS_CA")) {
    tls.ca_file = getenv("PP_PING_TLS_CA");
    o.tls = &tls;
  }
  recycle = getenv("PP_PING_RECYCLE") && strcmp(getenv("PP_PING_RECYCLE"), "1") == 0;
  int observe = getenv("PP_PING_OBSERVE") && strcmp(getenv("PP_PING_OBSERVE"), "1") == 0;
  if (getenv("PP_PING_LEAK")) o.leak_threshold = atol(getenv("PP_PING_LEAK"));
  const char *why = NULL;
  int r = pp_pool_new(loop, &o, &pool, &why);
  if (r != 0) bench_die("pp_pool_new: %s", why ? why : pp_strerror(r));
  for (int i = 0; i < args.npeers; i++) {
    r = pp_pool_add_peer(pool, args.peers[i], 0, NULL, &why);
    if (r != 0) bench_die("pp_pool_add_peer(%s): %s", args.peers[i], why ? why : "?");
  }
  if (observe) {
    pp_pool_on_event(pool, on_event, NULL);
    uv_timer_init(loop, &scrape);
    long every = getenv("PP_PING_SCRAPE_MS") ? atol(getenv("PP_PING_SCRAPE_MS")) : 1000;
    if (every > 0) uv_timer_start(&scrape, on_scrape, (uint64_t)every, (uint64_t)every);
    uv_unref((uv_handle_t *)&scrape);
  }
  clients = calloc((size_t)args.clients, sizeof *clients);
  lat = malloc(sizeof *lat * (size_t)args.requests);
  if (clients == NULL || lat == NULL) bench_die("out of memory");
  for (int i = 0; i < args.clients; i++)
    clients[i].lease.data = &clients[i];

  if (args.warmup > 0) run_phase(args.warmup);
  phase = 1;
  pp_stats_t st0;
  pp_pool_stats(pool, &st0);
  ping_mark_t t0, t1;
  ping_mark(&t0);
  run_phase(args.requests / args.clients);
  ping_mark(&t1);

  pp_stats_t st;
  pp_pool_stats(pool, &st);
  fprintf(stderr,
          "ping_c: pool: %d conns; acquires %llu (immediate %llu, dialed %llu, waited %llu); "
          "connects %llu\n",
          st.conns, (unsigned long long)st.acquires, (unsigned long long)st.acquired_immediate,
          (unsigned long long)st.acquired_dialed, (unsigned long long)st.acquired_waited,
          (unsigned long long)st.connects_ok);
  ping_report(&args, &t0, &t1, lat, nlat, 0);
  printf("TLS full=%llu resumed=%llu failed=%llu\n",
         (unsigned long long)(st.tls_full - st0.tls_full),
         (unsigned long long)(st.tls_resumed - st0.tls_resumed),
         (unsigned long long)(st.tls_failed - st0.tls_failed));
  fflush(stdout);

  if (observe) uv_close((uv_handle_t *)&scrape, NULL);
  pp_pool_close(pool, pool_closed);
  while (pool != NULL)
    uv_run(loop, UV_RUN_DEFAULT);
  uv_run(loop, UV_RUN_DEFAULT);
  return uv_loop_close(loop) != 0;
}
