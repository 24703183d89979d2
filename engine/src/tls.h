/* TLS for conns (tls.c): OpenSSL 3 on memory BIOs. libuv owns the socket; this layer only
 * turns ciphertext into plaintext and back. Nothing here is part of the public API, and no
 * OpenSSL type shows outside tls.c.
 *
 * Three objects:
 *   pp__tls_ctx_t    settings made once from pp_tls_options_t (trusted CAs, client
 *                    certificate, verification, minimum version, ALPN): an SSL_CTX,
 *                    reference-counted, shared by every conn that uses those settings.
 *   pp__tls_cache_t  one peer's resumable sessions (at most PP__TLS_SESSIONS, dropped when
 *                    their lifetime ends) and its handshake counters and last failure.
 *   pp__tls_t        one conn's TLS state machine.
 *
 * A conn drives its pp__tls_t like this (the seam in conn.c is described at the top of tls.c):
 *   pp__tls_new                 at connect; then pp__tls_handshake to send the ClientHello;
 *   pp__tls_feed                every ciphertext read from the socket, then
 *   pp__tls_handshake           while not pp__tls_done: 0 done, UV_EAGAIN more input needed,
 *                               PP_ETLS failed (pp__tls_reason says why);
 *   pp__tls_read                once done: plaintext out (0 = none for now);
 *   pp__tls_write               plaintext in (always taken whole);
 *   pp__tls_output              after ANY of the calls above: ciphertext to send, or NULL;
 *                               send out->buf, then pp__tls_output_done(out);
 *   pp__tls_close_notify        before closing the socket: queues close_notify (send it with
 *                               pp__tls_output);
 *   pp__tls_free                when the conn goes (chunks still being sent stay valid).
 * Every call is synchronous and runs no callback of the caller's.
 */
#ifndef PP_TLS_H
#define PP_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "peerpool.h"

typedef struct pp__tls_ctx_s pp__tls_ctx_t;
typedef struct pp__tls_cache_s pp__tls_cache_t;
typedef struct pp__tls_s pp__tls_t;

/* Sessions kept per peer: enough for a burst of dials that each resume with a ticket of its
 * own (TLS 1.3 tickets are used once). */
#define PP__TLS_SESSIONS 8
/* The longest failure reason kept, NUL included. */
#define PP__TLS_REASON_MAX 192

/* What a failed handshake (or a fatal alert later) comes down to. The reason string starts with
 * the class's name ("unknown CA: ...", "name mismatch: ...", "expired: ...", "protocol: ...",
 * "other: ..."), then says what OpenSSL saw. */
#define PP__TLS_FAIL_MAP(XX)         \
  XX(NONE, "none")                   \
  XX(UNKNOWN_CA, "unknown CA")       \
  XX(NAME_MISMATCH, "name mismatch") \
  XX(EXPIRED, "expired")             \
  XX(PROTOCOL, "protocol")           \
  XX(OTHER, "other")

typedef enum {
#define PP__TLS_FAIL_ENUM(name, str) PP__TLS_FAIL_##name,
  PP__TLS_FAIL_MAP(PP__TLS_FAIL_ENUM)
#undef PP__TLS_FAIL_ENUM
      PP__TLS_FAIL_COUNT
} pp__tls_fail_t;

const char *pp__tls_fail_name(pp__tls_fail_t fail);

/* ---- settings -------------------------------------------------------------------------- */

/* Check `o` without touching any file: 0, or PP_EINVAL with *why (if non-NULL) set to a static
 * message naming the field ("tls.min_version must be \"1.2\" or \"1.3\""). */
int pp__tls_options_check(const pp_tls_options_t *o, const char **why);

/* Make a context from `o` (checked first; verify -1 means on): loads the CA file/dir (or the
 * system's store when both are NULL), the client certificate and key. Returns 0 with *out set
 * (one reference), PP_EINVAL with *why naming the field that could not be used, or UV_ENOMEM.
 * Nothing of `o` is kept. */
int pp__tls_ctx_new(const pp_tls_options_t *o, pp__tls_ctx_t **out, const char **why);
void pp__tls_ctx_ref(pp__tls_ctx_t *ctx);
void pp__tls_ctx_unref(pp__tls_ctx_t *ctx); /* frees it with the last reference; NULL is ok */
bool pp__tls_ctx_verifies(const pp__tls_ctx_t *ctx);

/* ---- sessions and counters of one peer ------------------------------------------------- */

typedef struct {
  uint64_t full;    /* handshakes completed without resuming */
  uint64_t resumed; /* handshakes that resumed a cached session */
  uint64_t failed;  /* handshakes (and established conns) that ended with PP_ETLS */
  int sessions;     /* sessions cached now */
} pp__tls_counts_t;

/* A cache for one peer. `stats` (may be NULL): a pool's stats, whose tls_full, tls_resumed
 * and tls_failed count along. Returns NULL when out of memory. */
pp__tls_cache_t *pp__tls_cache_new(pp_stats_t *stats);
/* Drop every session (the settings they were made under changed). */
void pp__tls_cache_clear(pp__tls_cache_t *cache);
/* Free the cache; no pp__tls_t may use it any more. NULL is ok. */
void pp__tls_cache_free(pp__tls_cache_t *cache);
void pp__tls_cache_counts(const pp__tls_cache_t *cache, pp__tls_counts_t *out);
/* The reason of the last failure counted here ("" = none yet). */
const char *pp__tls_cache_reason(const pp__tls_cache_t *cache);

/* ---- one conn -------------------------------------------------------------------------- */

/* Ciphertext to send: a chunk of the conn's output. `req` and `data` are the caller's (for
 * uv_write); `buf` must not be changed before the chunk is handed back, except that a caller
 * that sent part of it may advance buf.base and shrink buf.len. Chunks are reused, so a conn
 * that writes and reads in a steady rhythm allocates nothing of its own. */
typedef struct pp__tls_out_s {
  uv_write_t req;
  uv_buf_t buf;
  void *data;
  /* private */
  struct pp__tls_out_s *next;
  pp__tls_t *tls;
  char *mem;
  size_t cap;
} pp__tls_out_t;

/* A TLS client for one conn. `host`: the name (SNI and host-name check) or IP address (IP
 * check, no SNI) the peer's certificate must match; NULL is allowed only when the context does
 * not verify. `cache` (may be NULL) supplies a session to resume and receives the new ones; it
 * must outlive the pp__tls_t. Returns 0 with *out set, PP_EINVAL (verification on and no
 * host), or UV_ENOMEM. The handshake starts with the first pp__tls_handshake call. */
int pp__tls_new(pp__tls_ctx_t *ctx, pp__tls_cache_t *cache, const char *host, pp__tls_t **out);

/* Free the state. Chunks not yet handed back stay valid; the last pp__tls_output_done frees
 * them. NULL is ok. */
void pp__tls_free(pp__tls_t *tls);

/* Take `len` bytes of ciphertext read from the socket. Returns 0 or UV_ENOMEM. */
int pp__tls_feed(pp__tls_t *tls, const char *data, size_t len);

/* Advance the handshake with what was fed. Returns 0 once it is done (also on every later
 * call), UV_EAGAIN while it waits for the peer, or PP_ETLS when it failed (pp__tls_reason,
 * pp__tls_failure; counted in the cache). Either way, check pp__tls_output afterwards. */
int pp__tls_handshake(pp__tls_t *tls);
bool pp__tls_done(const pp__tls_t *tls);

/* Decrypt into buf[len] as much fed ciphertext as makes whole records. Returns the number of
 * plaintext bytes (> 0), 0 when none is available yet (more ciphertext is needed: a record may
 * also have been a session ticket or a key update, which is handled here), UV_EOF once the peer
 * sent close_notify, or PP_ETLS on a fatal alert or a bad record (reason set, counted). An end
 * met after some bytes is returned by the next call. */
ssize_t pp__tls_read(pp__tls_t *tls, char *buf, size_t len);

/* Encrypt `bufs` (all of it, in order). Returns 0, PP_ESTATE before the handshake is done or
 * after close_notify, PP_ETLS after a failure, or UV_ENOMEM. Small buffers are sent as one
 * record. */
int pp__tls_write(pp__tls_t *tls, const uv_buf_t bufs[], unsigned int nbufs);

/* Queue close_notify (once; a no-op before the handshake completed or after a failure). */
void pp__tls_close_notify(pp__tls_t *tls);

/* The ciphertext waiting to be sent, as one chunk, or NULL when there is none (or memory ran
 * out: *err, if non-NULL, says UV_ENOMEM then, else 0). */
pp__tls_out_t *pp__tls_output(pp__tls_t *tls, int *err);
/* Hand a chunk back once it was sent (or its write failed or was cancelled). */
void pp__tls_output_done(pp__tls_out_t *out);
/* Bytes of ciphertext produced and not yet taken with pp__tls_output. */
size_t pp__tls_pending(const pp__tls_t *tls);

/* After PP_ETLS: why, as "<class>: <detail>" ("" before any failure). Valid while tls lives. */
const char *pp__tls_reason(const pp__tls_t *tls);
pp__tls_fail_t pp__tls_failure(const pp__tls_t *tls);
/* The protocol the peer chose by ALPN, or NULL (none offered, none chosen, or not done). */
const char *pp__tls_alpn(const pp__tls_t *tls, size_t *len);
/* Whether the completed handshake resumed a session. */
bool pp__tls_resumed(const pp__tls_t *tls);
/* "TLSv1.3", "TLSv1.2", ... of the completed handshake. */
const char *pp__tls_version(const pp__tls_t *tls);

/* Allocations tls.c made itself (not OpenSSL's), for the test that the steady state makes
 * none. Loop thread only. */
extern uint64_t pp__tls_allocs;

/* ---- the pool and its peers (settings per pool and per peer, a cache per peer) ---------- */

/* pp_pool_new: take the pool's TLS options (opts->tls, may be NULL). Copies them, so that
 * pool->opts.tls then points at the pool's own copy. Returns 0, PP_EINVAL with *why, or
 * UV_ENOMEM. */
int pp__tls_pool_init(pp_pool_t *pool, const pp_tls_options_t *opts, const char **why);
/* When the pool's memory goes: frees every TLS object of the pool and its peers. */
void pp__tls_pool_free(pp_pool_t *pool);

/* The TLS state for a new conn of `peer`: 0 with *out NULL when the peer speaks plain TCP
 * (neither the pool nor the peer has TLS options), 0 with *out set (context and session
 * cache of the peer, its host or server_name), or PP_ETLS (the peer needs a server_name: the
 * reason is recorded as the peer's) or UV_ENOMEM. */
int pp__tls_conn_new(pp_peer_t *peer, pp__tls_t **out);
/* Until the seam at the top of tls.c is wired: whether `peer` has TLS options, so that its new
 * conn must fail with PP_ETLS rather than talk in the clear (the reason is recorded on the
 * peer and counted as a failed handshake). */
bool pp__tls_not_wired(pp_peer_t *peer);
/* The peer's session cache and counters, or NULL before its first TLS conn (or setting). */
pp__tls_cache_t *pp__tls_peer_cache(const pp_peer_t *peer);

#endif /* PP_TLS_H */
