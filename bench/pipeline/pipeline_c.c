/*
 * pipeline_c — the pipelining benchmark's C API client: PING against the redis-servers of
 * --addrs from --clients clients on one loop, through one framed pool (framing RESP,
 * client_limit 16, max_per_peer 1: one shared conn per server). Each request is
 *
 *   pp_try_acquire(pool, &lease, peer, NULL)     (pp_acquire while the conns are dialled)
 *   pp_request_send(&req, lease.conn, PING, on_reply)
 *   on_reply: check "+PONG\r\n", pp_release(&lease, 0), and the client's next request
 *
 * so the requests of the clients sharing a conn leave in one write per loop iteration and their
 * replies come back in one read. First 2 warm-up requests per client (the conns open), then
 * --requests in all, timed. Prints "requests seconds cpu_seconds" (the process's user + system
 * time over the timed part), as pipeline.lua does. Any failure ends the run with a message.
 * usage: pipeline_c --addrs 127.0.0.1:6379,127.0.0.1:6380 [--clients 32] [--requests 400000]
 */
#include "../bench_acquire.h"

typedef struct {
  pp_lease_t lease;
  pp_request_t req;
  pp_peer_t *peer[2];
  long left, k;
} client_t;

static uv_loop_t *loop;
static pp_pool_t *pool;
static int running;
static char ping[] = "*1\r\n$4\r\nPING\r\n";
static uv_buf_t ping_buf;

static void die(const char *what, int err) {
  bench_die("%s: %s (%s)", what, pp_err_name(err), pp_strerror(err));
}

static void start_request(client_t *c);

static void on_reply(pp_request_t *req, int status, const char *reply, size_t len) {
  client_t *c = req->data;
  if (status != 0) die("request", status);
  if (len != 7 || memcmp(reply, "+PONG\r\n", 7) != 0) die("unexpected reply", PP_EFRAMING);
  int r = pp_release(&c->lease, 0);
  if (r != 0) die("pp_release", r);
  if (--c->left > 0)
    start_request(c);
  else if (--running == 0)
    uv_stop(loop);
}

static void granted(pp_lease_t *lease) {
  client_t *c = lease->data;
  int r = pp_request_send(&c->req, lease->conn, &ping_buf, 1, on_reply);
  if (r != 0) die("pp_request_send", r);
}

static void start_request(client_t *c) {
  bench_acquire(pool, &c->lease, c->peer[c->k++ & 1], granted);
}

static void run_phase(client_t *clients, int n, long per) {
  running = n;
  for (int i = 0; i < n; i++) {
    clients[i].left = per;
    start_request(&clients[i]);
  }
  while (running > 0)
    uv_run(loop, UV_RUN_DEFAULT);
}

static double cpu_seconds(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static void pool_closed(pp_pool_t *p) {
  (void)p;
  pool = NULL;
}

int main(int argc, char **argv) {
  const char *addrs = NULL;
  int nclients = 32;
  long total = 400000;
  bench_start("pipeline_c", 0);
  bench_parse_opts(argc, argv,
                   (const bench_opt_t[]){{"--addrs", 's', &addrs},
                                         {"--clients", 'i', &nclients},
                                         {"--requests", 'l', &total},
                                         {NULL, 0, NULL}});
  if (addrs == NULL || nclients < 1 || total < nclients) {
    fprintf(stderr, "usage: pipeline_c --addrs A,B [--clients 32] [--requests 400000]\n");
    return 2;
  }
  loop = uv_default_loop();
  ping_buf = uv_buf_init(ping, (unsigned int)strlen(ping));
  pp_options_t o;
  pp_options_init(&o);
  pp_framing_t f;
  pp_framing_init(&f, PP_FRAMING_RESP);
  o.framing = &f;
  o.client_limit = 16;
  o.max_per_peer = 1;
  const char *why = NULL;
  int r = pp_pool_new(loop, &o, &pool, &why);
  if (r != 0) die(why ? why : "pp_pool_new", r);
  pp_peer_t *peers[2];
  int npeers = 0;
  char *list = strdup(addrs);
  for (char *a = strtok(list, ","); a && npeers < 2; a = strtok(NULL, ",")) {
    r = pp_pool_add_peer(pool, a, 0, &peers[npeers++], &why);
    if (r != 0) die(why ? why : "pp_pool_add_peer", r);
  }
  free(list);
  if (npeers == 1) peers[1] = peers[0];
  client_t *clients = calloc((size_t)nclients, sizeof *clients);
  if (clients == NULL) die("calloc", UV_ENOMEM);
  for (int i = 0; i < nclients; i++) {
    clients[i].lease.data = clients[i].req.data = &clients[i];
    clients[i].peer[0] = peers[i & 1];
    clients[i].peer[1] = peers[(i + 1) & 1];
  }
  run_phase(clients, nclients, 2);
  long per = total / nclients;
  uint64_t t0 = uv_hrtime();
  double c0 = cpu_seconds();
  run_phase(clients, nclients, per);
  double secs = (double)(uv_hrtime() - t0) / 1e9, cpu = cpu_seconds() - c0;
  printf("%ld %.4f %.4f\n", per * nclients, secs, cpu);
  fflush(stdout);
  pp_pool_close(pool, pool_closed);
  while (pool != NULL)
    uv_run(loop, UV_RUN_DEFAULT);
  uv_run(loop, UV_RUN_DEFAULT);
  free(clients);
  return uv_loop_close(loop) != 0;
}
