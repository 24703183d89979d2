/*
 * bench_server — the far end of the benchmarks' connections, run as its own process.
 *
 * Listens on 127.0.0.1, port 0 (or the port given), prints the port it got on stdout as one
 * line, then accepts any number of connections and holds them: whatever a peer sends is read
 * and thrown away, and a connection that ends is closed. It never writes to a connection.
 *
 * It always stops by itself: when its stdin reaches end of file (the parent closed the pipe,
 * or died), or after a maximum lifetime (120 s unless --lifetime SECONDS says otherwise).
 * It raises its RLIMIT_NOFILE soft limit to the hard limit so it can hold many connections.
 *
 * usage: bench_server [--port N] [--lifetime SECONDS]
 */
#include "bench_util.h" /* first: it defines _GNU_SOURCE */

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <uv.h>

static uv_loop_t *loop;
static uv_tcp_t listener;
static uv_timer_t lifetime_timer;
static union {
  uv_pipe_t pipe;
  uv_tty_t tty;
} in;
static long conns_now, conns_total;

/* One buffer serves every read: the loop is single-threaded and each read callback is done
 * with the bytes before the next allocation. */
static char scratch[64 * 1024];

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  *buf = uv_buf_init(scratch, sizeof scratch);
}

static void conn_closed(uv_handle_t *h) {
  free(h);
  conns_now--;
}

static void conn_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  /* Bytes are discarded; EOF or an error ends the connection. */
  if (nread < 0 && !uv_is_closing((uv_handle_t *)s)) uv_close((uv_handle_t *)s, conn_closed);
}

static void on_connection(uv_stream_t *server, int status) {
  if (status < 0) {
    fprintf(stderr, "bench_server: accept: %s\n", uv_strerror(status));
    return;
  }
  uv_tcp_t *c = malloc(sizeof *c);
  if (c == NULL) {
    fprintf(stderr, "bench_server: out of memory\n");
    exit(1);
  }
  uv_tcp_init(loop, c);
  int r = uv_accept(server, (uv_stream_t *)c);
  if (r == 0) r = uv_read_start((uv_stream_t *)c, alloc_cb, conn_read);
  conns_now++;
  if (r != 0) {
    fprintf(stderr, "bench_server: accept: %s\n", uv_strerror(r));
    uv_close((uv_handle_t *)c, conn_closed);
    return;
  }
  conns_total++;
}

/* Stop the loop; main() exits and the kernel closes every socket at once, which is all a
 * holder of idle connections needs. */
static void shut_down(const char *why) {
  fprintf(stderr, "bench_server: %s; held %ld conns, accepted %ld in all; exiting\n", why,
          conns_now, conns_total);
  uv_stop(loop);
}

static void on_lifetime(uv_timer_t *t) {
  shut_down("maximum lifetime reached");
}

static void in_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  if (nread < 0) shut_down("stdin closed");
}

/* Watch stdin for end of file. A pipe or a terminal can be watched; anything else (e.g.
 * /dev/null, which is at EOF from the start) is ignored and only the lifetime applies. */
static void watch_stdin(void) {
  uv_handle_type t = uv_guess_handle(0);
  int r = UV_EINVAL;
  if (t == UV_NAMED_PIPE) {
    r = uv_pipe_init(loop, &in.pipe, 0);
    if (r == 0) r = uv_pipe_open(&in.pipe, 0);
  } else if (t == UV_TTY) {
    r = uv_tty_init(loop, &in.tty, 0, 1);
  } else {
    fprintf(stderr, "bench_server: stdin is not a pipe or terminal; relying on the lifetime\n");
    return;
  }
  if (r == 0) r = uv_read_start((uv_stream_t *)&in, alloc_cb, in_read);
  if (r != 0) {
    fprintf(stderr, "bench_server: cannot watch stdin: %s\n", uv_strerror(r));
    return;
  }
}

int main(int argc, char **argv) {
  int port = 0;
  double lifetime_s = 120;
  bench_start("bench_server", 0); /* the lifetime timer ends it */
  bench_parse_opts(argc, argv,
                   (const bench_opt_t[]){
                       {"--port", 'i', &port}, {"--lifetime", 'd', &lifetime_s}, {NULL, 0, NULL}});
  if (port < 0 || port > 65535 || !(lifetime_s > 0)) {
    fprintf(stderr, "bench_server: bad --port or --lifetime\n");
    return 2;
  }

  signal(SIGPIPE, SIG_IGN);
  bench_raise_nofile();
  loop = uv_default_loop();

  struct sockaddr_in addr;
  int r = uv_ip4_addr("127.0.0.1", port, &addr);
  if (r == 0) r = uv_tcp_init(loop, &listener);
  if (r == 0) r = uv_tcp_bind(&listener, (const struct sockaddr *)&addr, 0);
  /* The kernel caps the backlog at net.core.somaxconn; ask for plenty so bursts of connects
   * are not dropped (a dropped SYN costs the client a one-second retransmit). */
  if (r == 0) r = uv_listen((uv_stream_t *)&listener, 65535, on_connection);
  if (r != 0) {
    fprintf(stderr, "bench_server: listen on 127.0.0.1:%d: %s\n", port, uv_strerror(r));
    return 1;
  }
  struct sockaddr_storage got;
  int len = sizeof got;
  r = uv_tcp_getsockname(&listener, (struct sockaddr *)&got, &len);
  if (r != 0) {
    fprintf(stderr, "bench_server: getsockname: %s\n", uv_strerror(r));
    return 1;
  }

  uv_timer_init(loop, &lifetime_timer);
  uv_timer_start(&lifetime_timer, on_lifetime, (uint64_t)(lifetime_s * 1000), 0);
  watch_stdin();

  printf("%d\n", ntohs(((struct sockaddr_in *)&got)->sin_port));
  fflush(stdout);

  uv_run(loop, UV_RUN_DEFAULT);
  return 0;
}
