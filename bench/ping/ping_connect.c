/*
 * ping_connect — the PING workload without a pool: a fresh TCP connection per request, in C
 * on plain libuv (no peerpool), so the row shows what connecting costs and not what a
 * language costs.
 *
 * C clients run concurrently on one uv loop; each request is
 *   uv_tcp_init + uv_tcp_connect (peers taken in turn), TCP_NODELAY,
 *   uv_read_start + uv_write("PING\r\n"), read until "+PONG\r\n" is complete,
 *   uv_close, and the client's next request starts in the close callback.
 * The latency runs from just before uv_tcp_init to the complete +PONG line (the close is not
 * in it, but its CPU time is in the CPU figure).
 *
 * Closing first leaves each socket in TIME_WAIT on this side for a minute, holding a local
 * port: the bench keeps this kind's request count small (a few thousand per run) so the
 * ephemeral port range is never exhausted. Any error ends the program with a message.
 * Arguments and the RESULT line: see common.h.
 */
#include "common.h"

typedef struct {
  uv_tcp_t tcp;
  uv_connect_t creq;
  uv_write_t wreq;
  long seq;
  int id;
  ping_req_t q;
} client_t;

static ping_args_t args;
static uv_loop_t *loop;
static client_t *clients;
static struct sockaddr_storage addrs[PING_MAX_PEERS];
static int phase, running;
static uint32_t *lat;
static long nlat;
static char ping_bytes[] = "PING\r\n";
static char rbuf[256];

static void fail(const char *what, int err) {
  bench_die("%s: %s (%s)", what, uv_err_name(err), uv_strerror(err));
}

static void start_request(client_t *c);

static void on_closed(uv_handle_t *h) {
  client_t *c = h->data;
  if (--c->q.left > 0)
    start_request(c);
  else if (--running == 0)
    uv_stop(loop);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  *buf = uv_buf_init(rbuf, sizeof rbuf);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  client_t *c = s->data;
  if (nread == 0) return;
  if (nread < 0) fail("read", (int)nread);
  if (!ping_pong_add(&c->q, buf->base, (size_t)nread)) return;
  if (phase == 1) lat[nlat++] = ping_clamp_ns(bench_now_ns() - c->q.t0);
  uv_close((uv_handle_t *)&c->tcp, on_closed);
}

static void on_written(uv_write_t *w, int status) {
  if (status != 0 && status != UV_ECANCELED) fail("write", status);
}

static void on_connected(uv_connect_t *req, int status) {
  client_t *c = req->data;
  if (status != 0) fail("connect", status);
  uv_tcp_nodelay(&c->tcp, 1);
  int r = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
  if (r != 0) fail("uv_read_start", r);
  uv_buf_t b = uv_buf_init(ping_bytes, 6);
  r = uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, on_written);
  if (r != 0) fail("uv_write", r);
}

static void start_request(client_t *c) {
  c->q.t0 = bench_now_ns();
  int r = uv_tcp_init(loop, &c->tcp);
  if (r != 0) fail("uv_tcp_init", r);
  c->tcp.data = c;
  c->creq.data = c;
  const struct sockaddr *sa = (const struct sockaddr *)&addrs[(c->id + c->seq++) % args.npeers];
  r = uv_tcp_connect(&c->creq, &c->tcp, sa, on_connected);
  if (r != 0) fail("uv_tcp_connect", r);
}

static void start_client(int i, long per_client) {
  clients[i].q.left = per_client;
  start_request(&clients[i]);
}

static void run_phase(long per_client) {
  ping_run_phase(loop, &running, args.clients, per_client, start_client);
}

int main(int argc, char **argv) {
  ping_parse_args(&args, "connect", argc, argv);
  loop = uv_default_loop();
  for (int i = 0; i < args.npeers; i++) {
    int r = uv_ip4_addr(args.hosts[i], args.ports[i], (struct sockaddr_in *)&addrs[i]);
    if (r != 0) r = uv_ip6_addr(args.hosts[i], args.ports[i], (struct sockaddr_in6 *)&addrs[i]);
    if (r != 0) bench_die("bad address %s", args.peers[i]);
  }
  clients = calloc((size_t)args.clients, sizeof *clients);
  lat = malloc(sizeof *lat * (size_t)args.requests);
  if (clients == NULL || lat == NULL) bench_die("out of memory");
  for (int i = 0; i < args.clients; i++)
    clients[i].id = i;

  if (args.warmup > 0) run_phase(args.warmup);
  phase = 1;
  ping_mark_t t0, t1;
  ping_mark(&t0);
  run_phase(args.requests / args.clients);
  ping_mark(&t1);
  ping_report(&args, &t0, &t1, lat, nlat, 0);
  uv_run(loop, UV_RUN_DEFAULT);
  return uv_loop_close(loop) != 0;
}
