/* An echo server on a libuv loop (libuv only): every byte a client sends comes back. Shared by
 * pp_echo (examples/echo.c, the peer of examples/hello.c) and the `make run` demo
 * (examples/demo.c). */
#ifndef EXAMPLES_ECHO_SERVER_H
#define EXAMPLES_ECHO_SERVER_H

#include <stddef.h>
#include <uv.h>

/* Bind `tcp` (uninitialised storage the caller owns, until its close callback) to
 * 127.0.0.1:port (0: a free port) and write "127.0.0.1:PORT" into addr (n bytes). When
 * `listening`, accept connections and echo them; otherwise the port refuses every connect.
 * Returns 0, or a libuv error (then addr is not written; pp_echo and the demo exit). */
int echo_server_start(uv_loop_t *loop, uv_tcp_t *tcp, int port, int listening, char *addr,
                      size_t n);

#endif
