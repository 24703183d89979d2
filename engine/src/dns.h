/* Host names (dns.c) and Happy Eyeballs dialling (eyeballs.c): the engine's side of
 * "name:port" peers. c-ares resolves on the pool's loop (its sockets in uv_poll_t handles, its
 * timeouts on a uv_timer_t), so no query blocks the loop or takes a libuv thread. */
#ifndef PP_DNS_H
#define PP_DNS_H

#include "peerpool.h"

#include <stdbool.h>
#include <stdint.h>

/* Check a dns_servers option ("ip[:port],[ip6]:port,..."): 0, or PP_EINVAL with *why set. */
int pp__dns_servers_check(const char *servers, const char **why);

/* A host-name peer's resolver state (peer->dns; NULL for numeric and unix peers). */
typedef struct pp__dns_peer_s {
  pp_peer_t *peer;
  char *host; /* the name, as in the peer's canonical address */
  int port;
  struct sockaddr_storage addrs[PP_DNS_MAX_ADDRS]; /* the last answer, in dial order */
  int naddrs;
  bool answered;                 /* addrs holds an answer (maybe an old one) */
  struct pp__dns_query_s *query; /* the query in flight, NULL: none */
  uint64_t refresh_at;           /* loop ms after which the answer is stale (0: none yet) */
  pp__heap_node_t refresh_node;  /* pool dns->refresh while refresh_key != 0 */
  uint64_t refresh_key;
  uint64_t seq;     /* ties in the refresh heap go to the older peer */
  char reason[128]; /* the last query's failure ("" after a success) */
} pp__dns_peer_t;

/* Pool-wide state: created with the pool (cheap), the c-ares channel and its handles only when
 * the first name is resolved. */
int pp__dns_pool_init(pp_pool_t *pool, const char *servers);
/* Close the channel and its handles (pool close). Queries end without effect. */
void pp__dns_close(pp_pool_t *pool);
void pp__dns_pool_free(pp_pool_t *pool);

/* Give a new peer whose address is a host name its resolver state, and start resolving it.
 * UV_ENOMEM on failure. */
int pp__dns_peer_new(pp_peer_t *peer);
void pp__dns_peer_free(pp_peer_t *peer);

/* Whether `peer`'s answer is current (answered and not stale). */
bool pp__dns_fresh(const pp_peer_t *peer);
/* Start a query for `peer` unless one is in flight. The answer may be applied before this
 * returns (localhost, a resolver that cannot start): check pp__dns_fresh and pp__dns_busy
 * afterwards. */
void pp__dns_resolve(pp_peer_t *peer);
/* Whether a query for `peer` is in flight. */
bool pp__dns_busy(const pp_peer_t *peer);
/* Whether the sockaddr `sa` is in `peer`'s last answer. */
bool pp__dns_has(const pp_peer_t *peer, const struct sockaddr_storage *sa);

/* Format a sockaddr as "1.2.3.4:port" or "[v6]:port" into out[n] ("" when unset). */
void pp__sockaddr_format(const struct sockaddr_storage *sa, char *out, size_t n);
bool pp__sockaddr_equal(const struct sockaddr_storage *a, const struct sockaddr_storage *b);

/* ---- eyeballs.c: race a dial over several addresses (RFC 8305) ------------------------- */
struct pp__race_s;
/* Race `conn`'s connect over the peer's answer (at least two addresses). The winner's socket
 * becomes conn's through pp__conn_race_won; if every address fails, pp__conn_race_failed. Returns
 * 0 or an error (nothing started). */
int pp__race_start(pp_conn_t *conn);
/* Stop the race of `conn` (timeout, close): its sockets close, conn is forgotten. */
void pp__race_cancel(pp_conn_t *conn);
/* conn.c: the race's outcome. `fd` is a connected socket conn now owns (a dup of the winner). */
void pp__conn_race_won(pp_conn_t *conn, int fd, const struct sockaddr_storage *sa);
void pp__conn_race_failed(pp_conn_t *conn, int err);
/* conn.c: `peer` has a new answer, or a failed query: conns waiting for it go on; conns on an
 * address that left the answer close once unleased. */
void pp__conn_dns_done(pp_peer_t *peer, bool changed);

#endif
