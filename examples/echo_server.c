/* The echo server of echo_server.h. Each conn reads into its own buffer and writes back a copy
 * of what it read; a read error or end of file closes it; running out of memory drops the conn
 * rather than the process. */
#include "echo_server.h"

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

int echo_server_start(uv_loop_t *loop, uv_tcp_t *tcp, int port, int listening, char *addr,
                      size_t n) {
  struct sockaddr_in sa;
  struct sockaddr_storage name;
  int len = sizeof(name);
  int err = uv_ip4_addr("127.0.0.1", port, &sa);
  if (err == 0) err = uv_tcp_init(loop, tcp);
  if (err == 0) err = uv_tcp_bind(tcp, (const struct sockaddr *)&sa, 0);
  if (err == 0 && listening) err = uv_listen((uv_stream_t *)tcp, 128, on_connection);
  if (err == 0) err = uv_tcp_getsockname(tcp, (struct sockaddr *)&name, &len);
  if (err == 0) snprintf(addr, n, "127.0.0.1:%d", ntohs(((struct sockaddr_in *)&name)->sin_port));
  return err;
}
