/* An echo peer for examples/hello.c (libuv only): listens on 127.0.0.1:PORT (0 picks a free
 * port), prints the address it listens on as one line ("127.0.0.1:40213"), echoes every byte
 * back, and exits by itself after SECONDS (default 60) so a forgotten one never lingers.
 * Usage: pp_echo [PORT [SECONDS]]. The install test (examples/install/check.sh) runs hello
 * against it. */
#include <stdio.h>
#include <stdlib.h>

#include "echo_server.h"

static uv_tcp_t server;
static uv_timer_t lifetime;

/* Time is up: stop the whole loop; the process exits without waiting for open conns. */
static void on_lifetime(uv_timer_t *t) {
  uv_stop(t->loop);
}

int main(int argc, char **argv) {
  int port = argc > 1 ? atoi(argv[1]) : 0;
  long seconds = argc > 2 ? atol(argv[2]) : 60;
  uv_loop_t *loop = uv_default_loop();
  char addr[32];
  int err = echo_server_start(loop, &server, port, 1, addr, sizeof(addr));
  if (err != 0) {
    fprintf(stderr, "pp_echo: 127.0.0.1:%d: %s\n", port, uv_strerror(err));
    return 1;
  }
  printf("%s\n", addr);
  fflush(stdout);
  uv_timer_init(loop, &lifetime);
  uv_timer_start(&lifetime, on_lifetime, (uint64_t)(seconds > 0 ? seconds : 60) * 1000, 0);
  uv_run(loop, UV_RUN_DEFAULT);
  return 0;
}
