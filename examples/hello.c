/* The README's C example: acquire a pooled conn to an echo peer, send a line, read it back,
 * release the conn, close the pool. Usage: pp_hello HOST:PORT */
#include "peerpool.h"

#include <stdio.h>

static pp_pool_t *pool;
static pp_write_t write_req;
static uv_buf_t line = {.base = "hello\n", .len = 6};

static void on_read(pp_conn_t *conn, ssize_t n, const char *buf, void *arg) {
  pp_lease_t *lease = arg;
  if (n > 0)
    printf("got %.*s", (int)n, buf);
  else
    fprintf(stderr, "read: %s\n", pp_strerror((int)n));
  pp_release(lease, n > 0 ? 0 : (int)n); /* a negative status closes the conn */
  pp_pool_close(pool, NULL);
}

static void on_written(pp_write_t *req, int status) {
  if (status < 0) fprintf(stderr, "write: %s\n", pp_strerror(status));
}

static void on_acquired(pp_lease_t *lease, int status) {
  if (status < 0) {
    fprintf(stderr, "acquire: %s (%s)\n", pp_strerror(status), pp_err_name(lease->cause));
    pp_pool_close(pool, NULL);
    return;
  }
  pp_conn_read_start(lease->conn, on_read, lease);
  pp_conn_write(&write_req, lease->conn, &line, 1, on_written);
}

int main(int argc, char **argv) {
  pp_options_t opts;
  pp_options_init(&opts);
  opts.max_per_peer = 2;
  opts.connect_timeout = 1000;
  const char *why;
  pp_peer_t *peer;
  pp_lease_t lease = {0};
  if (pp_pool_new(uv_default_loop(), &opts, &pool, &why) != 0 ||
      pp_pool_add_peer(pool, argc > 1 ? argv[1] : "127.0.0.1:7", 0, &peer, &why) != 0) {
    fprintf(stderr, "hello: %s\n", why);
    return 1;
  }
  int err = pp_acquire(pool, &lease, peer, NULL, on_acquired);
  if (err) fprintf(stderr, "acquire: %s\n", pp_strerror(err));
  uv_run(uv_default_loop(), UV_RUN_DEFAULT);
  return uv_loop_close(uv_default_loop());
}
