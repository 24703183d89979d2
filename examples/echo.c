/* An echo peer for examples/hello.c (libuv only): listens on 127.0.0.1:PORT (0 picks a free
 * port), prints the address it listens on as one line ("127.0.0.1:40213"), echoes every byte
 * back, and exits by itself after SECONDS (default 60) so a forgotten one never lingers.
 * Usage: pp_echo [PORT [SECONDS]]. The install test (examples/install/check.sh) runs hello
 * against it. */
#include <uv.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  uv_tcp_t tcp;
  char buf[4096];
} echo_conn_t;

typedef struct {
  uv_write_t req;
  char data[];
} echo_write_t;

static uv_tcp_t server;
static uv_timer_t lifetime;

static void on_alloc(uv_handle_t *h, size_t n, uv_buf_t *buf) {
  echo_conn_t *c = (echo_conn_t *)h;
  *buf = uv_buf_init(c->buf, sizeof(c->buf));
}

static void on_closed(uv_handle_t *h) {
  free(h);
}

static void on_written(uv_write_t *req, int status) {
  free(req);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  if (n < 0) {
    uv_close((uv_handle_t *)s, on_closed);
    return;
  }
  if (n == 0) return;
  echo_write_t *w = malloc(sizeof(*w) + (size_t)n);
  if (w == NULL) {
    uv_close((uv_handle_t *)s, on_closed);
    return;
  }
  memcpy(w->data, buf->base, (size_t)n);
  uv_buf_t out = uv_buf_init(w->data, (unsigned int)n);
  if (uv_write(&w->req, s, &out, 1, on_written) != 0) {
    free(w);
    uv_close((uv_handle_t *)s, on_closed);
  }
}

static void on_connection(uv_stream_t *listener, int status) {
  if (status < 0) return;
  echo_conn_t *c = malloc(sizeof(*c));
  if (c == NULL) return;
  uv_tcp_init(listener->loop, &c->tcp);
  if (uv_accept(listener, (uv_stream_t *)&c->tcp) == 0)
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
  else
    uv_close((uv_handle_t *)&c->tcp, on_closed);
}

/* Time is up: stop the whole loop; the process exits without waiting for open conns. */
static void on_lifetime(uv_timer_t *t) {
  uv_stop(t->loop);
}

int main(int argc, char **argv) {
  int port = argc > 1 ? atoi(argv[1]) : 0;
  long seconds = argc > 2 ? atol(argv[2]) : 60;
  uv_loop_t *loop = uv_default_loop();
  struct sockaddr_in sa;
  struct sockaddr_storage name;
  int len = sizeof(name);
  int err = uv_ip4_addr("127.0.0.1", port, &sa);
  if (err == 0) err = uv_tcp_init(loop, &server);
  if (err == 0) err = uv_tcp_bind(&server, (const struct sockaddr *)&sa, 0);
  if (err == 0) err = uv_listen((uv_stream_t *)&server, 128, on_connection);
  if (err == 0) err = uv_tcp_getsockname(&server, (struct sockaddr *)&name, &len);
  if (err != 0) {
    fprintf(stderr, "pp_echo: 127.0.0.1:%d: %s\n", port, uv_strerror(err));
    return 1;
  }
  printf("127.0.0.1:%d\n", ntohs(((struct sockaddr_in *)&name)->sin_port));
  fflush(stdout);
  uv_timer_init(loop, &lifetime);
  uv_timer_start(&lifetime, on_lifetime, (uint64_t)(seconds > 0 ? seconds : 60) * 1000, 0);
  uv_run(loop, UV_RUN_DEFAULT);
  return 0;
}
