/* The `make run` demo of the C engine: local echo peers on loopback (three healthy, one that
 * refuses every connect), one pool, and concurrent workers doing request/response through it.
 * Every second it prints a status line; at the end, a summary. Runs for `seconds` (argv[1],
 * default 5) and stops by itself. */
#include "echo_server.h"
#include "peerpool.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PEERS 3
#define WORKERS 32

/* ---- echo peers (on the same loop: the pool never blocks it) -------------------------- */

static uv_tcp_t servers[PEERS + 1]; /* echo_server.c; the last one does not listen */

/* ---- workers ---------------------------------------------------------------------------- */

typedef struct {
  pp_lease_t lease;
  pp_write_t write;
  char out[32], in[32];
  size_t got, want;
  uint64_t started;
} worker_t;

static pp_pool_t *pool;
static uv_timer_t tick, stop_timer;
static worker_t workers[WORKERS];
static int stopping;
static uint64_t done_requests, last_requests, errors[64];
static const char *error_names[64];

static void count_error(int err) {
  for (int i = 0; i < 64; i++) {
    if (error_names[i] == NULL) error_names[i] = pp_err_name(err);
    if (strcmp(error_names[i], pp_err_name(err)) == 0) {
      errors[i]++;
      return;
    }
  }
}

static void work(worker_t *w);

static void on_reply(pp_conn_t *conn, ssize_t n, const char *buf, void *arg) {
  worker_t *w = arg;
  if (n < 0) {
    count_error((int)n);
    pp_release(&w->lease, (int)n);
    work(w);
    return;
  }
  memcpy(w->in + w->got, buf, (size_t)n);
  w->got += (size_t)n;
  if (w->got < w->want) return;
  pp_conn_read_stop(conn);
  pp_release(&w->lease, memcmp(w->in, w->out, w->want) == 0 ? 0 : PP_EBROKEN);
  done_requests++;
  work(w);
}

static void on_sent(pp_write_t *req, int status) {
  worker_t *w = req->data;
  if (status < 0) {
    count_error(status);
    pp_release(&w->lease, status);
    work(w);
  }
}

static void on_acquired(pp_lease_t *lease, int status) {
  worker_t *w = lease->data;
  if (status < 0) {
    count_error(status);
    if (!stopping) work(w);
    return;
  }
  w->want =
      (size_t)snprintf(w->out, sizeof(w->out), "ping %llu\n", (unsigned long long)done_requests);
  w->got = 0;
  uv_buf_t buf = uv_buf_init(w->out, (unsigned int)w->want);
  w->write.data = w;
  int err = pp_conn_read_start(lease->conn, on_reply, w);
  if (err == 0) err = pp_conn_write(&w->write, lease->conn, &buf, 1, on_sent);
  if (err) {
    count_error(err);
    pp_release(lease, err);
    work(w);
  }
}

static void work(worker_t *w) {
  if (stopping) return;
  w->lease.data = w;
  pp_acquire_opts_t opts;
  pp_acquire_opts_init(&opts);
  opts.timeout = 1000;
  int err = pp_acquire(pool, &w->lease, NULL, &opts, on_acquired);
  if (err) count_error(err);
}

static void print_status(uv_timer_t *t) {
  pp_stats_t s;
  pp_pool_stats(pool, &s);
  printf(
      "%6llu req/s | conns %3d (idle %3d, active %3d, connecting %d) | peers ready %d, "
      "failed %d | waiters %3d\n",
      (unsigned long long)(done_requests - last_requests), s.conns, s.idle, s.active, s.connecting,
      s.peers_by_state[PP_PEER_READY], s.peers_by_state[PP_PEER_FAILED], s.waiters);
  fflush(stdout);
  last_requests = done_requests;
}

static void closed_handle(uv_handle_t *h) {}

static void on_stop(uv_timer_t *t) {
  stopping = 1;
  pp_stats_t s;
  pp_pool_stats(pool, &s);
  printf(
      "\nsummary: %llu requests, %llu acquires (%llu immediate, %llu waited), "
      "%llu connects ok, %llu failed\n",
      (unsigned long long)done_requests, (unsigned long long)s.acquires,
      (unsigned long long)s.acquired_immediate, (unsigned long long)s.acquired_waited,
      (unsigned long long)s.connects_ok, (unsigned long long)s.connects_failed);
  for (int i = 0; i < 64 && error_names[i]; i++)
    printf("  errors %-16s %llu\n", error_names[i], (unsigned long long)errors[i]);
  pp_pool_close(pool, NULL);
  uv_close((uv_handle_t *)&tick, closed_handle);
  uv_close((uv_handle_t *)&stop_timer, closed_handle);
  for (int i = 0; i <= PEERS; i++)
    uv_close((uv_handle_t *)&servers[i], closed_handle);
}

int main(int argc, char **argv) {
  int seconds = argc > 1 ? atoi(argv[1]) : 5;
  if (seconds < 1) seconds = 1;
  uv_loop_t *loop = uv_default_loop();
  pp_options_t o;
  pp_options_init(&o);
  o.max_per_peer = 4;
  o.max_total = 12;
  o.connect_timeout = 500;
  o.retries = 1;
  const char *why;
  if (pp_pool_new(loop, &o, &pool, &why) != 0) {
    fprintf(stderr, "demo: %s\n", why);
    return 1;
  }
  char addr[64];
  for (int i = 0; i <= PEERS; i++) {
    int err = echo_server_start(loop, &servers[i], 0, i < PEERS, addr, sizeof(addr));
    if (err != 0) {
      fprintf(stderr, "demo: echo peer: %s\n", uv_strerror(err));
      return 1;
    }
    pp_pool_add_peer(pool, addr, 0, NULL, NULL);
    printf("peer %s%s\n", addr, i < PEERS ? "" : " (refuses connects)");
  }
  printf("%d workers, %d s\n\n", WORKERS, seconds);
  for (int i = 0; i < WORKERS; i++)
    work(&workers[i]);
  uv_timer_init(loop, &tick);
  uv_timer_start(&tick, print_status, 1000, 1000);
  uv_timer_init(loop, &stop_timer);
  uv_timer_start(&stop_timer, on_stop, (uint64_t)seconds * 1000, 0);
  uv_run(loop, UV_RUN_DEFAULT);
  return uv_loop_close(loop) == 0 ? 0 : 1;
}
