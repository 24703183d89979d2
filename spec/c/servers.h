/*
 * Real servers for the engine tests, on 127.0.0.1 / ::1 / unix sockets, each on an ephemeral
 * port. Echo-style servers run in their own thread on their own uv_loop_t, so the test's
 * loop (and the pool on it) is never blocked by them; their counters are atomics the test
 * reads at any time. srv_stop() stops a server cleanly and frees it.
 */
#ifndef PP_SERVERS_H
#define PP_SERVERS_H

#include <stddef.h>
#include <stdint.h>

typedef struct srv_s srv_t;

typedef struct {
  int close_on_accept;      /* close each conn right after accepting it */
  size_t close_after_bytes; /* close a conn (without echoing) once it received this many
                               bytes in all; 0 = never */
  int close_after_ms;       /* close each conn this long after accept; 0 = never */
  int no_echo;              /* swallow bytes instead of echoing them */
  int no_read;              /* accept but never read: the client's writes back up */
  int answer_and_close;     /* like an HTTP/1.1 server answering `Connection: close`: echo the
                               first bytes of a conn as its one reply, then shut the conn down
                               cleanly (FIN: the client reads the reply, then EOF) */
  int reset_on_read;        /* reset each conn (RST: the client sees ECONNRESET) when bytes
                               arrive on it */
} srv_opts_t;

/* An echo server on 127.0.0.1 (opts NULL = plain echo). */
srv_t *srv_echo_start(const srv_opts_t *opts);
/* The same on a given port of 127.0.0.1 (a server stopped there comes back: a restart). NULL if
 * the port cannot be bound. */
srv_t *srv_echo_start_on(const srv_opts_t *opts, int port);
/* An echo server on [::1]; NULL if IPv6 loopback is unavailable. */
srv_t *srv_echo6_start(const srv_opts_t *opts);
/* An echo server on a unix socket under a fresh mkdtemp directory. */
srv_t *srv_unix_start(const srv_opts_t *opts);
/* A port on 127.0.0.1 where nothing listens: the socket is bound (so nobody else gets the
 * port) but never listens, so connects are refused with ECONNREFUSED. */
srv_t *srv_refused_start(void);
/* A listener on 127.0.0.1 whose accept queue is full: listen(fd, 0), never accepts, queue
 * filled with raw connects; verified with a probe connect that does not complete within
 * 200 ms. Connects to it hang until the caller's timeout. */
srv_t *srv_hang_start(void);

void srv_stop(srv_t *srv);

/* "127.0.0.1:port", "[::1]:port" or the socket path. Valid until srv_stop. */
const char *srv_addr(const srv_t *srv);
int srv_port(const srv_t *srv);

/* Counters (server's view). */
int srv_accepted(const srv_t *srv); /* conns accepted in all */
int srv_open(const srv_t *srv);     /* conns open now */
int srv_max_open(const srv_t *srv); /* the most open at once */
uint64_t srv_bytes_in(const srv_t *srv);
uint64_t srv_bytes_out(const srv_t *srv); /* bytes echoed and written */

/* Close every open conn of the server now; returns once they are closed. */
void srv_kick(srv_t *srv);

/* The kernel's view of client sockets towards this server (TCP kinds only): sockets on this
 * host connected or connecting to the server's port (ESTABLISHED, SYN_SENT or CLOSE_WAIT),
 * excluding the hang server's own filler sockets. Unlike srv_open() this has no lag: a
 * client's close() takes effect at once, so it is the exact count of conns the pool holds
 * open to the server. */
int srv_client_conns(const srv_t *srv);
/* srv_client_conns for several servers with one walk of the kernel's socket table. */
void srv_client_conns_many(const srv_t *const *srvs, int n, int *out);

/* Wait (running the test loop) until the server accepted `n` conns in all, then check that
 * no more arrive for a little while: the server thread sees a connect after the client does. */
#define ASSERT_ACCEPTED(srv, n)                \
  do {                                         \
    RUN_UNTIL(srv_accepted(srv) >= (n), 2000); \
    test_run_for(20);                          \
    ASSERT_EQ(srv_accepted(srv), (n));         \
  } while (0)

/* Close every conn of the server once it has accepted `n` in all: a client's connect
 * completes before the server thread accepts, so kicking at once could miss the conn. */
#define KICK_AFTER_ACCEPTED(srv, n)            \
  do {                                         \
    RUN_UNTIL(srv_accepted(srv) >= (n), 2000); \
    srv_kick(srv);                             \
  } while (0)

#endif /* PP_SERVERS_H */
