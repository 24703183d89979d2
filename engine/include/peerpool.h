/*
 * peerpool — a pool of outbound peer connections on libuv.
 *
 * One public header. Conventions follow libuv:
 *   - every function returns 0 or a negative error code (PP_E* or a libuv UV_E* code,
 *     passed through unchanged); pp_strerror() and pp_err_name() describe either kind;
 *   - a function that takes a callback and returns an error never runs that callback;
 *     otherwise the callback runs exactly once, later, never inside the call;
 *   - the caller owns request structs (pp_lease_t, pp_write_t, pp_notice_t) and must keep
 *     them alive until their callback has run (or, for a lease, until it is released);
 *   - a pool belongs to one uv_loop_t and is used from that loop's thread only.
 *
 * The engine never includes Lua headers: decisions a policy can make go through pp_policy_t.
 */
#ifndef PEERPOOL_H
#define PEERPOOL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PP_VERSION_MAJOR 0
#define PP_VERSION_MINOR 1
#define PP_VERSION_PATCH 0
#define PP_VERSION_STRING "0.1.0"

/* ------------------------------------------------------------------------------------------
 * Errors. Our codes live far below libuv's (which are negated errno values and -3000..-4095),
 * so one int carries either kind. XX(name, value, code_name, message).
 */
#define PP_ERRNO_MAP(XX)                                                                   \
  XX(EBUSY, -30001, "busy", "peer is at capacity")                                         \
  XX(ETIMEDOUT, -30002, "timeout", "timed out")                                            \
  XX(EEXHAUSTED, -30003, "exhausted", "wait queue is full")                                \
  XX(ECANNOTCONNECT, -30004, "cannot_connect", "cannot connect to peer")                   \
  XX(ECLOSED, -30005, "closed", "pool or connection is closed")                            \
  XX(ENOPEER, -30006, "no_peer", "no eligible peer")                                       \
  XX(EBURNED, -30007, "burned", "peer is burned")                                          \
  XX(EINVAL, -30008, "invalid", "invalid argument")                                        \
  XX(ECANCELED, -30009, "canceled", "operation canceled")                                  \
  XX(EAGAIN, -30010, "would_block", "no usable connection right now")                      \
  XX(EHANDSHAKE, -30011, "handshake_failed", "handshake failed")                           \
  XX(EBROKEN, -30012, "broken", "connection released as broken")                           \
  XX(EPING, -30013, "ping_failed", "health check failed")                                  \
  XX(ESTATE, -30014, "bad_state", "operation not valid in this state")                     \
  XX(ENOREUSE, -30015, "not_reusable", "connection is not reusable (its peer is healthy)") \
  XX(ETOOLONG, -30016, "too_long", "reply or line over the receive limit")                 \
  XX(EEJECTED, -30017, "ejected", "peer is ejected for a cool-down")                       \
  XX(ETLS, -30018, "tls", "TLS handshake or verification failed")                          \
  XX(EDNS, -30019, "dns", "host name did not resolve")                                     \
  XX(EREMOVED, -30020, "removed", "peer was removed or is draining")                       \
  XX(EFRAMING, -30021, "bad_reply", "reply does not parse under the conn's framing")       \
  XX(EPIPELINE, -30022, "pipeline_broken",                                                 \
     "an earlier request on the shared conn failed; reply order is lost")

typedef enum {
#define PP__ERR_ENUM(name, value, code, msg) PP_##name = value,
  PP_ERRNO_MAP(PP__ERR_ENUM)
#undef PP__ERR_ENUM
} pp_errno_t;

/* Local resource errors. UV_EMFILE, UV_ENFILE, UV_ENOMEM and UV_ENOBUFS say that this machine
 * is short of file descriptors, memory or socket buffers, not that a peer failed. Wherever one
 * occurs (a connect attempt, a read or write, a release status, a handshake or ping result) it
 * counts no failure of the peer, starts no backoff or ejection and never makes the peer
 * `failed`; the conn it hit is closed. An acquire whose dial hits one ends at once (on the next
 * tick, without further attempts) with that code as its status and lease->cause; the pool
 * dials again on the next acquire, so it recovers as soon as the resource frees. */

/* A human-readable message for any code (ours or libuv's). Never NULL; static storage. */
const char *pp_strerror(int err);
/* A stable short name: our snake_case code ("busy", "cannot_connect") or libuv's name
 * ("ECONNREFUSED") for socket errors. Never NULL; static storage. */
const char *pp_err_name(int err);

/* ------------------------------------------------------------------------------------------
 * Opaque handles. Pools are created and freed by the engine; peers and conns belong to
 * their pool.
 */
typedef struct pp_pool_s pp_pool_t;
typedef struct pp_peer_s pp_peer_t;
typedef struct pp_conn_s pp_conn_t;

/* Intrusive links (private; embedded in caller-owned requests). */
typedef struct pp__heap_node_s {
  struct pp__heap_node_s *left, *right, *parent;
} pp__heap_node_t;
typedef struct pp__link_s {
  struct pp__link_s *next, *prev;
} pp__link_t;

/* Caller-owned requests. */
typedef struct pp_lease_s pp_lease_t;
typedef struct pp_write_s pp_write_t;
typedef struct pp_notice_s pp_notice_t;

/* ------------------------------------------------------------------------------------------
 * TLS (OpenSSL 3). Options for a whole pool (pp_options_t.tls) and, over those, for one peer
 * (pp_peer_set_tls). Every string is copied when the options are taken; files are loaded then.
 * Verification is on unless verify is 0: the certificate chain must lead to a trusted CA and
 * the leaf must carry the peer's name — server_name, or else the host of the peer's address (a
 * host name is also sent as SNI; an IP address is checked against the certificate's IP
 * entries and not sent). Handshakes resume a session cached for the same peer when they can.
 * A handshake that fails answers PP_ETLS, and pp_peer_tls_reason() says why.
 * The TLS handshake runs after connect, before the handshake hook and before the conn is lent,
 * within the same handshake_timeout; a failure is a failed connect of the peer (not retried:
 * the certificate will not change) whose acquire answers PP_ETLS. On a TLS conn the conn API is
 * unchanged and carries plaintext (reads, writes, the late-reply rule, keep_idle_bytes);
 * pp_conn_close sends close_notify. bytes_in counts ciphertext, bytes_out plaintext.
 */
typedef struct {
  const char *ca_file;     /* PEM file of trusted CAs; with ca_path NULL too: the system's store */
  const char *ca_path;     /* directory of CA certificates named by hash (c_rehash) */
  const char *cert_file;   /* client certificate chain (PEM), for servers that ask for one */
  const char *key_file;    /* its private key (PEM); NULL: it is in cert_file */
  const char *server_name; /* the name to send and verify; NULL: the host of the peer's address */
  int verify;              /* 1: verify chain and name; 0: accept any certificate; -1 (default):
                              a peer's options take the pool's, a pool's mean 1 */
  const char *const *alpn; /* NULL-terminated list of protocols to offer, e.g. {"h2", NULL} */
  const char *min_version; /* "1.2" or "1.3"; NULL: "1.2" (or the pool's, for a peer) */
} pp_tls_options_t;

/* Fill *opts with the defaults: every field NULL, verify -1. */
void pp_tls_options_init(pp_tls_options_t *opts);

/* Give `peer` TLS options of its own over the pool's (copied): a field left NULL (verify -1)
 * keeps the pool's value, so { server_name = "shard5" } alone changes only the name. A peer
 * of a pool without TLS speaks TLS with these options alone. NULL drops the peer's own options
 * (the pool's apply again). Applies to conns dialled from now on; sessions cached for the peer
 * are dropped. Returns 0; PP_EINVAL with *why (if non-NULL) set to a static message naming the
 * field (a bad value, or a file that could not be loaded); PP_ECLOSED on a closing pool;
 * UV_ENOMEM. Refused options leave the peer failing closed: its dials answer PP_ETLS (the
 * reason says why) until options are accepted, or NULL drops its own. */
int pp_peer_set_tls(pp_peer_t *peer, const pp_tls_options_t *tls, const char **why);

/* Why the last TLS handshake with `peer` failed, as "<class>: <detail>" where the class is
 * "unknown CA", "name mismatch", "expired", "protocol" (version, cipher, a malformed record)
 * or "other" (e.g. "other: the peer refused our client certificate: ..."); NULL if none has.
 * Valid until the peer's next TLS failure or the pool's end. */
const char *pp_peer_tls_reason(const pp_peer_t *peer);

/* ------------------------------------------------------------------------------------------
 * The clock. Every time the engine reports ("loop ms": deadlines, stamps, retry_at) is on
 * libuv's loop timeline (what uv_now() reads once the loop's clock is current).
 */

/* The time in loop ms, read fresh. The engine never calls uv_update_time(): libuv 1.44 re-reads
 * the loop's clock while it runs its due timers, so a callback that advanced it would keep the
 * loop in its timer phase (no I/O, no check phase) while a repeating timer catches up. */
uint64_t pp_now(void);
/* Start one-shot `timer` to fire at loop ms `at` (or `ms` from now), counted on the same
 * timeline although libuv counts from its cached loop time, and never within the timer phase
 * that is running (at least 1 ms: a callback re-arming for a cause that has not gone would
 * otherwise keep libuv 1.44 in that phase). For the binding's and the program's own timers. */
void pp_timer_start_at(uv_timer_t *timer, uv_timer_cb cb, uint64_t at);
void pp_timer_start(uv_timer_t *timer, uv_timer_cb cb, uint64_t ms);

/* ------------------------------------------------------------------------------------------
 * Framing: where one reply ends in a conn's byte stream, so that a shared conn can pipeline
 * (pp_request_send below routes each whole reply to the request it answers, in order).
 * Built-ins: "line" (a reply ends at LF; CRLF included), "resp" (Redis RESP2 and RESP3, nested
 * aggregates, attributes and streamed bulk sizes refused), "length" (a length field at a fixed
 * offset), or a function of the caller's. A reply longer than max_reply fails with PP_ETOOLONG;
 * bytes that cannot start or continue a reply fail with PP_EFRAMING.
 */
#define PP_FRAMING_MAP(XX) \
  XX(NONE, "none")         \
  XX(LINE, "line")         \
  XX(RESP, "resp")         \
  XX(LENGTH, "length")     \
  XX(CUSTOM, "function")

typedef enum {
#define PP__FRAMING_ENUM(name, str) PP_FRAMING_##name,
  PP_FRAMING_MAP(PP__FRAMING_ENUM)
#undef PP__FRAMING_ENUM
      PP_FRAMING_COUNT
} pp_framing_kind_t;

/* A caller's framer: the length of the whole reply at the start of buf[0, len) (1..len), 0 when
 * more bytes are needed (it is called again with the same bytes and more), or a negative
 * error (PP_EFRAMING). It may keep no pointer into buf. */
typedef ssize_t (*pp_frame_fn)(void *data, const char *buf, size_t len);

typedef struct {
  pp_framing_kind_t kind;     /* PP_FRAMING_* (NONE: conns do not pipeline) */
  size_t max_reply;           /* longest reply accepted, bytes; 0 = 64 MiB */
  int length_size;            /* length: 1, 2, 4 or 8 bytes (4) */
  int length_big_endian;      /* length: 1 network order, 0 little-endian (1) */
  int length_offset;          /* length: bytes before the length field, 0..1024 (0) */
  int length_includes_header; /* length: 1 if the length counts the header (the offset bytes
                                 and the field) as well as the payload (0) */
  pp_frame_fn fn;             /* custom: the framer */
  void *fn_data;              /* custom: passed to fn */
} pp_framing_t;

/* Fill *f for `kind` with the defaults above. */
void pp_framing_init(pp_framing_t *f, pp_framing_kind_t kind);
/* Check every field. Returns 0, or PP_EINVAL with *why (if non-NULL) naming the field. */
int pp_framing_validate(const pp_framing_t *f, const char **why);
/* "line", "resp", ...; "unknown" for an out-of-range value. */
const char *pp_framing_name(pp_framing_kind_t kind);

/* An incremental framer over one stream. Each call to pp_framer_next() gets the bytes not yet
 * taken as replies (those passed before, not yet returned, and any new ones behind them); it
 * resumes where it stopped, so a reply that arrives one byte at a time is scanned once, not
 * once per byte. Owns no memory. */
typedef struct {
  pp_framing_t cfg;
  /* private */
  size_t pos_;       /* resp: where the next element header starts; line: bytes scanned */
  size_t scan_;      /* resp: bytes of the current header scanned for its CRLF */
  int depth_;        /* resp: open aggregates */
  int64_t left_[64]; /* resp: elements still owed by each open aggregate */
} pp_framer_t;

/* Start `fr` with a copy of `cfg` (validated by the caller). */
void pp_framer_init(pp_framer_t *fr, const pp_framing_t *cfg);
/* The length of the whole reply at the start of buf[0, len): > 0 (the framer restarts for the
 * next reply), 0 when more bytes are needed, or PP_EFRAMING / PP_ETOOLONG (the stream cannot be
 * framed any more; reset with pp_framer_init). Allocates nothing, copies nothing. */
ssize_t pp_framer_next(pp_framer_t *fr, const char *buf, size_t len);

/* ------------------------------------------------------------------------------------------
 * Options. Call pp_options_init() for the defaults, change fields, pass to pp_pool_new().
 * Durations are milliseconds; 0 means "never" where noted. Every deadline and timeout (acquire,
 * connect, handshake, ping, backoff, idle, lifespan) runs from the moment the engine starts it,
 * read from pp_now(), so blocking work in a callback before the call does not eat into it.
 */
/* Every numeric pool option, once: X(type, name, default, min, max, unit, rule, doc). The
 * struct below, pp_options_init's defaults, pp_options_validate's ranges and messages ("NAME
 * must be RULE"), the Lua option parser (peerpool.new), peerpool.options() and the README's
 * table (checked by a spec) all derive from it. unit: "ms", "%", "" (a count) or "flag" (0/1).
 * PP_MS_MAX (one year) bounds every duration: deadline arithmetic stays far from overflow.
 * How to add an option: docs/engine.md. */
#define PP_MS_MAX ((int64_t)365 * 24 * 3600 * 1000)
#define PP_OPTIONS_MAP(X)                                                                         \
  X(int, max_per_peer, 4, 1, 1000000, "", "an integer in 1..1000000",                             \
    "conns per peer, counting conns still connecting")                                            \
  X(int, max_total, 256, 1, 10000000, "", "an integer in 1..10000000",                            \
    "conns in the pool, counting conns still connecting")                                         \
  X(int, client_limit, 1, 1, 65536, "", "an integer in 1..65536",                                 \
    "leases one conn carries at once (shared conns when > 1)")                                    \
  X(int64_t, connect_timeout, 5000, 1, PP_MS_MAX, "ms",                                           \
    "a positive number of ms (at most one year)", "per connect attempt")                          \
  X(int, retries, 3, 0, 100, "", "an integer in 0..100",                                          \
    "further attempts after the first, spaced by the backoff policy")                             \
  X(int64_t, acquire_timeout, 30000, 0, PP_MS_MAX, "ms", "a number of ms >= 0 (0 = no deadline)", \
    "default deadline of an acquire (0 = none); per call: opts.timeout")                          \
  X(int, backlog, 1024, 0, 10000000, "", "an integer in 0..10000000",                             \
    "acquires allowed to wait behind capacity; a full queue answers exhausted at once (0 = "      \
    "never wait; an acquire waiting for the conn dialled for it does not count)")                 \
  X(int64_t, idle_timeout, 300000, 0, PP_MS_MAX, "ms", "a number of ms >= 0 (0 = never)",         \
    "close conns idle this long (0 = never)")                                                     \
  X(int64_t, max_lifespan, 3600000, 0, PP_MS_MAX, "ms", "a number of ms >= 0 (0 = never)",        \
    "close conns this old when their last lease ends (0 = never)")                                \
  X(int, lifespan_jitter, 10, 0, 50, "%", "a percentage in 0..50",                                \
    "each conn's lifespan is shortened by a random 0..jitter %, so conns opened together "        \
    "expire apart")                                                                               \
  X(int64_t, handshake_timeout, 5000, 1, PP_MS_MAX, "ms", "a positive number of ms",              \
    "for the TLS handshake and the handshake hook together (and for a ping)")                     \
  X(int64_t, max_address_age, 10800000, 0, PP_MS_MAX * 100, "ms",                                 \
    "a number of ms >= 0 (0 = no limit)",                                                         \
    "peers whose last_seen is older are not dialled (0 = no limit)")                              \
  X(int64_t, ping_after, 0, 0, PP_MS_MAX, "ms", "a number of ms >= 0 (0 = never)",                \
    "with a ping hook: ping a conn idle this long before lending it (0 = never)")                 \
  X(int64_t, keepalive, 0, 0, PP_MS_MAX, "ms", "a number of ms >= 0 (0 = never)",                 \
    "with a ping hook: ping conns idle this long, checked this often (0 = never); a ping has "    \
    "handshake_timeout to complete")                                                              \
  X(int, target_peers, 0, 0, 1000000, "", "an integer in 0..1000000",                             \
    "keep this many peers ready: a maintenance tick dials fresh peers and asks the seed hook "    \
    "for addresses when none is left (0 = off; like a server, this keeps the loop alive until "   \
    "the pool is closed)")                                                                        \
  X(int64_t, maintenance_interval, 1000, 1, PP_MS_MAX, "ms", "a positive number of ms",           \
    "between maintenance ticks")                                                                  \
  X(int64_t, seed_interval, 10000, 0, PP_MS_MAX, "ms", "a number of ms >= 0",                     \
    "at least this long between two seed hook calls")                                             \
  X(int, eject_after, 5, 0, 1000000, "", "an integer >= 0 (0 = never)",                           \
    "consecutive failures (failed connects and handshakes, failures in use: see pp_release) "     \
    "that eject a peer for a cool-down (0 = never)")                                              \
  X(int64_t, eject_time, 10000, 1, PP_MS_MAX, "ms", "a positive number of ms",                    \
    "the first cool-down; doubles with each consecutive ejection (reset once the peer went "      \
    "eject_time without a failure)")                                                              \
  X(int64_t, eject_max, 300000, 1, PP_MS_MAX, "ms", "a number of ms >= eject_time",               \
    "the longest cool-down")                                                                      \
  X(int, eject_max_percent, 50, 0, 100, "%", "a percentage in 0..100",                            \
    "at most this share of the peers that are not burned are ejected at once, never all of "      \
    "them; a peer over the limit backs off for min(eject_time, 500 ms) instead")                  \
  X(int64_t, probe_interval, 500, 0, PP_MS_MAX, "ms", "a number of ms >= 0 (0 = no probes)",      \
    "an ejected or backing-off peer that once connected gets one probe (a connect attempt, "      \
    "handshake included, not a lease) this often, so it serves again soon after it comes back "   \
    "(0 = no probes)")                                                                            \
  X(int, keep_idle_bytes, 0, 0, 1, "flag", "0 or 1",                                              \
    "keep bytes that arrive on an idle conn for its next holder (chatty P2P protocols) instead "  \
    "of closing it as a late reply")                                                              \
  X(int64_t, leak_threshold, 0, 0, PP_MS_MAX, "ms", "a number of ms >= 0 (0 = off)",              \
    "a lease held longer is reported once (event leak), and again at its release (unleak); "      \
    "checked every threshold/4 (10..1000) ms (0 = off)")                                          \
  X(int64_t, dns_timeout, 2000, 1, 3600000, "ms", "a positive number of ms (at most one hour)",   \
    "host names: one try of a query; a query tries twice per server (the second try waits "       \
    "twice as long), so a name nobody answers fails after about 3 x this")                        \
  X(int64_t, dns_ttl_min, 1000, 1, PP_MS_MAX, "ms", "a positive number of ms",                    \
    "host names: an answer is re-resolved after its TTL, but not sooner (a failed query is "      \
    "retried after this too)")                                                                    \
  X(int64_t, dns_ttl_max, 300000, 1, PP_MS_MAX, "ms", "a number of ms >= dns_ttl_min",            \
    "host names: ... and not later than this")                                                    \
  X(int64_t, happy_eyeballs_delay, 250, 10, 10000, "ms", "a number of ms in 10..10000",           \
    "between the starts of two connect attempts to a name's addresses (RFC 8305)")                \
  X(int, min_idle, 0, 0, 1000000, "", "an integer in 0..max_per_peer",                            \
    "conns each peer keeps open and idle, dialled in the background (as HikariCP's "              \
    "minimumIdle: idle_timeout closes idle conns only down to it); per peer: add_peer's tag")

typedef struct {
#define PP__OPTION_FIELD(type, name, dflt, min, max, unit, rule, doc) type name;
  PP_OPTIONS_MAP(PP__OPTION_FIELD)
#undef PP__OPTION_FIELD
  const pp_tls_options_t *tls; /* TLS for every peer (copied by pp_pool_new, which points this
                                  at its copy); NULL: plain TCP (NULL) */
  const char *dns_servers;     /* host names (see "Peers"): "ip[:port],[ip6]:port,..." to ask
                                  instead of the system's resolv.conf (copied); /etc/hosts is
                                  read either way; NULL: the system's (NULL) */
  const pp_framing_t *framing; /* where replies end, for pipelining requests on shared conns
                                  (copied by pp_pool_new); NULL: none (NULL) */
} pp_options_t;

/* Fill *opts with the defaults above. */
void pp_options_init(pp_options_t *opts);

/* Check every field. Returns 0, or PP_EINVAL with *why (if non-NULL) set to a static
 * message naming the field, e.g. "max_per_peer must be an integer >= 1". */
int pp_options_validate(const pp_options_t *opts, const char **why);

/* ------------------------------------------------------------------------------------------
 * Peer states. Every transition is reported to the state callback.
 */
#define PP_PEER_STATE_MAP(XX)      \
  XX(KNOWN, "known")               \
  XX(CONNECTING, "connecting")     \
  XX(CONNECTED, "connected")       \
  XX(READY, "ready")               \
  XX(DISCONNECTED, "disconnected") \
  XX(FAILED, "failed")             \
  XX(EJECTED, "ejected")           \
  XX(BURNED, "burned")

typedef enum {
#define PP__STATE_ENUM(name, str) PP_PEER_##name,
  PP_PEER_STATE_MAP(PP__STATE_ENUM)
#undef PP__STATE_ENUM
      PP_PEER_STATE_COUNT
} pp_peer_state_t;

/* "known", "connecting", ... ; "unknown" for an out-of-range value. */
const char *pp_peer_state_name(pp_peer_state_t state);

/* Why a conn was closed (counted in pp_stats_t.closed[]). "discarded": its holder released it
 * with PP_ENOREUSE. "dns": its address left its host name's DNS answer (closed once unleased).
 * "removed" / "drained": its peer was removed (pp_pool_remove_peer) or is draining
 * (pp_pool_drain_peer); conns a closing pool closes, gracefully or not, are "closed". */
#define PP_CLOSE_REASON_MAP(XX)                                                              \
  XX(IDLE, "idle", "idle past idle_timeout")                                                 \
  XX(LIFESPAN, "lifespan", "past its lifespan (max_lifespan)")                               \
  XX(BROKEN, "broken", "broken (an I/O error, a verdict blaming the peer, or unread bytes)") \
  XX(REMOTE, "remote", "the peer closed it")                                                 \
  XX(PING, "ping", "its health ping failed")                                                 \
  XX(EVICTED, "evicted", "evicted to make room under max_total")                             \
  XX(EJECTED, "ejected", "its peer is ejected")                                              \
  XX(CLOSED, "closed", "the pool or its peer closed (burned, closing)")                      \
  XX(DISCARDED, "discarded", "its holder discarded it (not reusable)")                       \
  XX(DNS, "dns", "its address left its host name's DNS answer")                              \
  XX(REMOVED, "removed", "its peer was removed (remove_peer)")                               \
  XX(DRAINED, "drained", "its peer is draining (drain)")

typedef enum {
#define PP__REASON_ENUM(name, str, why) PP_CLOSE_##name,
  PP_CLOSE_REASON_MAP(PP__REASON_ENUM)
#undef PP__REASON_ENUM
      PP_CLOSE_REASON_COUNT
} pp_close_reason_t;

const char *pp_close_reason_name(pp_close_reason_t reason);

/* Peer lifecycle events for the policy's peer_event hook: a peer joins the set of live peers
 * (added, or a burned or draining peer re-added) or leaves it (burned; removed: by
 * pp_pool_remove_peer, or draining by pp_pool_drain_peer). A policy that routes keys keeps its
 * ring over exactly these peers. Ejection and backoff do not change the set: an owner that is
 * down stays the owner, and the route hook decides what its keys do meanwhile. */
#define PP_PEER_EVENT_MAP(XX) \
  XX(ADDED, "added")          \
  XX(BURNED, "burned")        \
  XX(REMOVED, "removed")

typedef enum {
#define PP__EVENT_ENUM(name, str) PP_PEER_EVENT_##name,
  PP_PEER_EVENT_MAP(PP__EVENT_ENUM)
#undef PP__EVENT_ENUM
      PP_PEER_EVENT_COUNT
} pp_peer_event_t;

/* "added", "burned", "removed"; "unknown" for an out-of-range value. */
const char *pp_peer_event_name(pp_peer_event_t event);

/* ------------------------------------------------------------------------------------------
 * Policy: every decision a policy script can make. Any NULL member keeps the built-in
 * default. The engine calls hooks synchronously from the loop thread, in the middle of its
 * own work: a hook decides and returns; it must not acquire, release, cancel or close the
 * pool (handshake/ping hooks start I/O and complete later, or complete at once). `data` is
 * passed back to every hook.
 */
typedef struct {
  void *data;

  /* Pick the peer for an acquire that named none (and was not routed: see `route`), among
   * `n` (1..PP_CANDIDATES_MAX) eligible candidates, a window that rotates through the pool: peers
   * with a usable conn when `dialing` is 0, peers that may be dialled now when it is 1 (not burned,
   * not ejected, not stale, not backing off, under max_per_peer). Because the window holds
   * only such peers, and at most PP_CANDIDATES_MAX of them, this hook suits load balancing (least
   * loaded, power of two choices), not key affinity: use `route` for that. `key` is the acquire's
   * key (may be NULL). Return an index in [0, n), or -1 for the default (round robin). Any other
   * value counts as a policy error and uses the default. */
  int (*select_peer)(void *data, pp_pool_t *pool, pp_peer_t *const *peers, int n, int dialing,
                     const char *key);

  /* Pick one of `n` (>= 1) usable conns of `peer`. Return an index or -1 for the default
   * (fewest leases, then longest idle). */
  int (*select_conn)(void *data, pp_peer_t *peer, pp_conn_t *const *conns, int n, const char *key);

  /* Called after every failed connect attempt (and failed handshake) of `peer`: milliseconds
   * before the peer's next attempt. `attempt` is the peer's consecutive failures so far
   * (1 after the first). Return PP_BACKOFF_BURN to burn the peer, PP_BACKOFF_DEFAULT for the
   * built-in exponential backoff with full jitter (base 100 ms, cap 30 s). After the last
   * attempt of a dial, the delay sets the peer's retry time (pp_peer_info_t.retry_at). */
  int64_t (*backoff)(void *data, pp_peer_t *peer, int attempt, int err);

  /* Run a protocol handshake on a freshly connected conn. The hook starts I/O on `conn` and
   * later calls pp_conn_handshake_done(conn, 0 or error) exactly once — unless the engine
   * gives up first (handshake_timeout, pool close), in which case `closed` is called and the
   * hook must not touch the conn again. */
  void (*handshake)(void *data, pp_conn_t *conn);

  /* Health-check an idle conn; completes with pp_conn_ping_done(conn, 0 or error), with the
   * same give-up rule as handshake. */
  void (*ping)(void *data, pp_conn_t *conn);

  /* A conn that was passed to handshake or ping is closing: forget it. Called once the engine
   * has finished closing it (it no longer counts toward any limit or stat), so the hook may
   * acquire, release, add peers or close the pool from here. */
  void (*closed)(void *data, pp_conn_t *conn);

  /* The pool wants `wanted` more addresses (target_peers maintenance ran out of candidates,
   * or an acquire for any peer found none). Add them with pp_pool_add_peer, now or later.
   * Called at most once per seed_interval. */
  void (*seed)(void *data, pp_pool_t *pool, int wanted);

  /* Route an acquire that carries a key and names no peer: return the peer that owns `key`
   * (a peer of `pool`), or NULL to fall back to `select_peer`. Called first, before any
   * candidate window, for every such acquire (pp_acquire and pp_try_acquire), so it must be
   * cheap: keep a structure (a hash ring) up to date through `peer_event` rather than walking
   * the peers. The acquire then goes to that peer by the rules of an acquire that named it: it
   * takes a usable conn, dials, waits, or fails fast with the peer's own cause (PP_EBURNED,
   * PP_EEJECTED, PP_ECANNOTCONNECT). What a key does while its owner is down is the hook's
   * choice: return the owner (the acquire fails fast), or the next peer on the ring for which
   * pp_peer_check() answers 0. A peer of another pool counts as a policy error (fallback). */
  pp_peer_t *(*route)(void *data, pp_pool_t *pool, const char *key);

  /* A peer joined or left the live set (see pp_peer_event_t). Delivered synchronously, once
   * the engine has finished the change (the peer is fully added, or burned with its waiters
   * answered and its idle conns closed), and for every live peer (ADDED, in insertion order)
   * when the policy is installed with pp_pool_set_policy, so a policy's ring always matches
   * the pool. The hook may read the pool and its peers; like every hook it must not acquire,
   * release, add peers or close the pool. (A seed hook that adds peers makes ADDED arrive
   * inside that pp_pool_add_peer call, so inside the seed hook.) */
  void (*peer_event)(void *data, pp_pool_t *pool, pp_peer_t *peer, pp_peer_event_t event);
} pp_policy_t;

#define PP_BACKOFF_DEFAULT ((int64_t)-1)
#define PP_BACKOFF_BURN ((int64_t)-2)

/* The built-in backoff: a random delay in [0, min(cap, base * 2^attempt)] ms. */
int64_t pp_backoff_full_jitter(pp_pool_t *pool, int attempt, int64_t base_ms, int64_t cap_ms);

/* ------------------------------------------------------------------------------------------
 * Pool.
 */
typedef void (*pp_close_cb)(pp_pool_t *pool);
typedef void (*pp_state_cb)(pp_pool_t *pool, pp_peer_t *peer, pp_peer_state_t from,
                            pp_peer_state_t to);

/* Create a pool on `loop`. `opts` NULL means defaults; it is copied. On success returns 0
 * and sets *pool. On bad options returns PP_EINVAL and sets *why (if non-NULL) to a message
 * naming the field; UV_ENOMEM when out of memory. */
int pp_pool_new(uv_loop_t *loop, const pp_options_t *opts, pp_pool_t **pool, const char **why);

/* Close the pool: every pending acquire ends with PP_ECLOSED, every armed notice fires with
 * PP_ECLOSED, every conn is closed (outstanding leases are detached: pp_release on them is a
 * harmless no-op, their conn pointer becomes NULL). `cb` (may be NULL) runs once every handle
 * is closed; the pool's memory is freed right after `cb` returns. A second call returns
 * PP_ECLOSED. */
int pp_pool_close(pp_pool_t *pool, pp_close_cb cb);

/* Close the pool gracefully: like pp_pool_close, except that conns leased now may serve their
 * holders for up to `drain_ms` more. At once: new acquires answer PP_ECLOSED (so do
 * pp_pool_add_peer and pp_notice_start), queued acquires end with PP_ECLOSED, armed notices
 * fire PP_ECLOSED, and every conn that no lease holds closes (idle, connecting, pinging). A
 * leased conn keeps working (reads, writes) and closes when its last lease ends (released
 * healthy or not, it is not lent again). Once no lease is left, or when drain_ms runs out,
 * the pool closes as pp_pool_close does: leases still held then are detached (counted in
 * pp_stats_t.leases_cut; pp_release on them is a harmless no-op), and `cb` (may be NULL) runs
 * once every handle is closed, the pool's memory freed right after it returns — so a callback
 * may read pp_pool_stats() to learn whether leases were cut. The drain timer keeps the loop
 * alive until then. With no lease held, or drain_ms 0, this is pp_pool_close. A pp_pool_close
 * during the drain ends it now (its `cb`, when non-NULL, replaces this one).
 * Returns 0; PP_EINVAL for a NULL pool or drain_ms outside 0..one year; PP_ECLOSED if the pool
 * is closing already (gracefully or not). */
int pp_pool_close_drain(pp_pool_t *pool, int64_t drain_ms, pp_close_cb cb);

/* 1 once pp_pool_close() or pp_pool_close_drain() was called. */
int pp_pool_is_closing(const pp_pool_t *pool);

uv_loop_t *pp_pool_loop(const pp_pool_t *pool);
const pp_options_t *pp_pool_options(const pp_pool_t *pool);
void *pp_pool_get_data(const pp_pool_t *pool);
void pp_pool_set_data(pp_pool_t *pool, void *data);

/* Install `policy` (copied). NULL restores every default. Takes effect for the next
 * decision; conns are untouched. A peer_event hook hears ADDED for every live peer before this
 * returns. */
void pp_pool_set_policy(pp_pool_t *pool, const pp_policy_t *policy);

/* Report every peer state transition to `cb` (NULL to stop). Transitions are delivered in
 * order on a later loop tick (never inside the engine call that caused them, so the callback
 * may call into the pool freely); by then the peer may have moved on, so trust `to`, not
 * pp_peer_state(). */
void pp_pool_on_state(pp_pool_t *pool, pp_state_cb cb);

/* Pool events for observers (logs, metrics, the Lua pool:on). Like state transitions they are
 * delivered in order on a later loop tick, never inside the engine call that caused them, so
 * the callback may call into the pool freely — except PP_EVENT_LEAK, delivered from the pool's
 * leak timer (also never inside a call of yours) so that `lease` is still held and valid.
 * PP_EVENT_STATE repeats what pp_pool_on_state reports, in the same order as the rest. */
#define PP_EVENT_KIND_MAP(XX)            \
  XX(STATE, "state")                     \
  XX(CONN_OPEN, "conn_open")             \
  XX(CONN_CLOSE, "conn_close")           \
  XX(EJECT, "eject")                     \
  XX(BURN, "burn")                       \
  XX(ACQUIRE_TIMEOUT, "acquire_timeout") \
  XX(LEAK, "leak")                       \
  XX(UNLEAK, "unleak")

typedef enum {
#define PP__EVKIND_ENUM(name, str) PP_EVENT_##name,
  PP_EVENT_KIND_MAP(PP__EVKIND_ENUM)
#undef PP__EVKIND_ENUM
      PP_EVENT_COUNT
} pp_event_kind_t;

/* "state", "conn_open", ...; "unknown" for an out-of-range value. */
const char *pp_event_kind_name(pp_event_kind_t kind);

typedef struct {
  pp_event_kind_t kind;
  pp_peer_t *peer;          /* the peer it is about (valid while the pool lives); NULL: none */
  uint64_t conn_id;         /* conn_open, conn_close, leak, unleak: the conn (pp_conn_id) */
  uint64_t at;              /* loop ms when it happened */
  pp_peer_state_t from, to; /* state */
  pp_close_reason_t reason; /* conn_close */
  int error;                /* conn_close: the conn's last socket error, 0 = none; eject, burn:
                               the peer's last error; acquire_timeout: PP_ETIMEDOUT */
  int failures;             /* eject, burn: the peer's consecutive failures */
  int64_t ms;               /* conn_open: the connect attempt's duration; conn_close: the conn's
                               age; eject: the cool-down; acquire_timeout: how long it waited;
                               leak, unleak: how long the lease was held */
  int waiters_ahead;        /* acquire_timeout: acquires that were ahead of it */
  int conns, max_conns;     /* acquire_timeout: conns in use and the limit it waited behind */
  uint64_t leak_id;         /* leak, unleak: numbers a leak, so its unleak can be matched */
  pp_lease_t *lease;        /* leak only: the lease held too long (valid during the callback) */
} pp_event_t;

typedef void (*pp_event_cb)(pp_pool_t *pool, const pp_event_t *event, void *arg);

/* Deliver every event to `cb` with `arg` (NULL to stop). Costs nothing while unset. */
void pp_pool_on_event(pp_pool_t *pool, pp_event_cb cb, void *arg);

/* ------------------------------------------------------------------------------------------
 * Explain: the pool's recent decisions and their reasons, in a ring of PP_EXPLAIN_MAX
 * entries kept inside the pool (recording allocates nothing; the oldest entry is overwritten).
 * Recorded: acquires that were dialled for or waited (and why: at capacity n/m, waiters
 * ahead), acquires that failed (pp_lease_describe's line), conns opened and closed (reason),
 * peers ejected, ejections refused, probes, recoveries, burns, leaks. An acquire granted an
 * idle conn at once is not recorded (the hot path stays as it is): the histograms count it.
 * Acquires that wait, are granted after waiting, or fail record their numbers only (a few
 * stores); the text is written when pp_pool_explain reads the entry, and a run of failures
 * with the same code for the same peer folds into one entry (`repeats`).
 */
#define PP_EXPLAIN_MAX 256
#define PP_EXPLAIN_TEXT 200

typedef struct {
  uint64_t at;          /* loop ms */
  const char *kind;     /* "acquire", "wait", "fail", "conn_open", "conn_close", "eject",
                           "burn", "probe", "recover", "leak", "dns", "warm" (min_idle dials),
                           "remove", "drain", "close" (a graceful close) (static strings) */
  pp_peer_t *peer;      /* NULL: no peer in particular */
  uint64_t conn_id;     /* 0: none */
  unsigned int repeats; /* more of the same folded into this entry: failures of an acquire with
                           the same code for the same peer, in a row (at, text: the last) */
  char text[PP_EXPLAIN_TEXT];
} pp_explain_t;

/* Call fn for every recorded entry about `peer` (every entry for NULL), oldest first, until fn
 * returns non-zero (that value is returned). fn must not call into the pool. */
int pp_pool_explain(pp_pool_t *pool, pp_peer_t *peer,
                    int (*fn)(const pp_explain_t *entry, void *arg), void *arg);

/* A conn's number, unique within its pool (1, 2, ...). */
uint64_t pp_conn_id(const pp_conn_t *conn);

/* The most candidates a select hook is shown at once (its window; see pp_policy_t). */
#define PP_CANDIDATES_MAX 64
/* Room for any canonical peer address with its NUL: a unix path (107 bytes, sun_path), an
 * IPv6 address with its port, a host name (253 bytes) with its port. */
#define PP_ADDR_MAX 264

/* ------------------------------------------------------------------------------------------
 * Peers. Addresses: "1.2.3.4:port", "[v6]:port", "name:port", or a unix socket path (starting
 * with '/' or "./", or prefixed "unix:"). Names are canonicalised, so spellings of one address
 * are one peer, and a canonical spelling reads back as itself: "unix:x.sock" becomes "./x.sock",
 * "Redis.Internal:6379" becomes "redis.internal:6379". IPv6 zone ids ("[fe80::1%eth0]:5") are
 * refused.
 * A host name (letters, digits, '-', '_', dots; at most 253 bytes) stays the peer's address; the
 * pool resolves it (A and AAAA, with c-ares on the loop: nothing blocks and no libuv thread is
 * used) when it is added, again when its answer's TTL runs out (within dns_ttl_min..max) while
 * the peer has conns, and before a dial once the answer is stale. "localhost" and names under
 * ".localhost" answer ::1 and 127.0.0.1 without a query (RFC 6761). A dial of a name with several
 * addresses races them (Happy Eyeballs, RFC 8305): families interleaved, IPv6 first, a new
 * attempt every happy_eyeballs_delay ms (or as soon as one fails) while the earlier ones go on;
 * the first to connect wins and the others are closed; the whole race is one connect attempt
 * within connect_timeout. Conns to an address that leaves a new answer close once their last
 * lease ends (reason "dns"); the others stay. A query that fails keeps the last answer; a name
 * that has no answer yet fails its dial with PP_EDNS (a failed connect: backoff, no retry within
 * the dial), and pp_peer_dns_reason() says why. At most PP_DNS_MAX_ADDRS addresses are kept;
 * unspecified (0.0.0.0, ::), multicast and broadcast ones in an answer are dropped.
 */

/* Add (or find) the peer at `addr`. `last_seen_ms` is Unix time in ms; 0 means now. An
 * existing peer keeps the newer last_seen; a burned one is unburned (re-added), its failure
 * history cleared. A new or unburned peer is reported to the policy's peer_event hook (ADDED)
 * before this returns.
 * Returns 0 and sets *peer (if non-NULL); PP_EINVAL with *why set for a malformed address;
 * PP_ECLOSED on a closing pool. */
int pp_pool_add_peer(pp_pool_t *pool, const char *addr, int64_t last_seen_ms, pp_peer_t **peer,
                     const char **why);

/* Check `addr` and write its canonical spelling (as pp_pool_add_peer would) into out[n].
 * Returns 0, or PP_EINVAL with *why (if non-NULL) set; UV_ENOBUFS if out is too small. */
int pp_addr_canonical(const char *addr, char *out, size_t n, const char **why);

/* The peer at `addr` (any spelling), or NULL. */
pp_peer_t *pp_pool_find_peer(pp_pool_t *pool, const char *addr);

/* Remove `peer` from the pool now. Acquires waiting for it end with PP_EREMOVED, armed notices
 * for it fire PP_EREMOVED, its idle and connecting conns close (reason "removed"), its leased
 * conns keep serving their holders and close at release; it leaves the peer table (lookups,
 * pp_pool_foreach_peer, stats, hence the address book), the dial candidates and, with a
 * peer_event hook, the policy's live set (PP_PEER_EVENT_REMOVED, before this returns). Adding
 * the address again makes a new peer with no history. Acquires for any peer go on with the
 * others (and fail fast if none is left).
 * Ownership: the engine frees the peer once its last conn is gone and the callbacks it caused
 * have run, so `peer` must not be used after this call (nor pp_cause_t.peer or
 * pp_lease_describe() of leases that failed about it, except inside their callback), except
 * lease->peer and pp_conn_peer() of a conn still leased.
 * Returns 0; PP_EINVAL for a NULL pool or peer, or a peer of another pool; PP_ECLOSED on a
 * closing pool. */
int pp_pool_remove_peer(pp_pool_t *pool, pp_peer_t *peer);

/* Drain `peer`: it takes no new lease, and closes its conns as their leases end. At once:
 * acquires for it (waiting or new) answer PP_EREMOVED (pp_lease_describe: "draining"), armed
 * notices for it fire PP_EREMOVED, its idle and connecting conns close (reason "drained"); it
 * is no dial candidate, keeps no min_idle conns and leaves the policy's live set
 * (PP_PEER_EVENT_REMOVED). It stays known (pp_pool_find_peer, foreach, stats, the address
 * book) with pp_peer_info_t.draining = 1, its history kept, once drained too: a drain is done
 * when pp_peer_info_t.conns reads 0. pp_pool_add_peer() on it ends the drain (it serves
 * again); pp_pool_remove_peer() forgets it. Draining a draining peer does nothing.
 * Returns 0; PP_EINVAL for a NULL pool or peer, or a peer of another pool; PP_ECLOSED on a
 * closing pool. */
int pp_pool_drain_peer(pp_pool_t *pool, pp_peer_t *peer);

/* Give `peer` its own min_idle (0..max_per_peer), or -1 to follow the pool's option again.
 * Conns are dialled for it soon (not inside the call) when it has fewer idle conns. Lowering it
 * closes no conn: the ones kept idle beyond the new value close at their lifespan, or on a
 * remote close. Returns 0; PP_EINVAL for a NULL peer or a value out of range; PP_ECLOSED on a
 * closing pool. */
int pp_peer_set_min_idle(pp_peer_t *peer, int min_idle);

/* Calls fn for every peer, in insertion order, until fn returns non-zero (that value is
 * returned). fn must not add peers. */
int pp_pool_foreach_peer(pp_pool_t *pool, int (*fn)(pp_peer_t *peer, void *arg), void *arg);

typedef struct {
  const char *addr; /* canonical address; valid while the pool lives */
  pp_peer_state_t state;
  int conns; /* open or connecting */
  int idle;  /* conns with no lease */
  int leases;
  int waiters;          /* acquires queued for this peer */
  int failures;         /* consecutive failures: failed connect attempts since the last
                           successful connect, plus failures in use (see pp_release) since
                           the last healthy release */
  int64_t last_seen;    /* Unix ms */
  int64_t last_success; /* Unix ms of the last successful connect, 0 = never */
  int64_t retry_at;     /* loop ms (pp_now) before which no dial starts (the later of its
                           backoff and its ejection); 0 = none */
  uint64_t attempts;    /* connect attempts in all */
  uint64_t ejections;   /* times this peer was ejected */
  double latency_ms;    /* EWMA of connect times */
  uint64_t bytes_in, bytes_out, msgs_in, msgs_out;
  int last_error; /* last socket or protocol error, 0 = none */
  /* failure history, as an address book saves it (see pp_peer_history_t) */
  int burned;            /* 1 while burned */
  int64_t ejected_until; /* Unix ms when the current ejection ends; 0 = not ejected */
  int eject_streak;      /* consecutive ejections: the next cool-down is eject_time * 2^streak */
  int64_t last_failure;  /* Unix ms of the last failure, 0 = none */
  int draining;          /* 1 while draining (pp_pool_drain_peer) */
  int min_idle;          /* conns it keeps idle: its own (pp_peer_set_min_idle) or the pool's */
} pp_peer_info_t;

void pp_peer_info(const pp_peer_t *peer, pp_peer_info_t *info);

/* Whether an acquire for `peer` would be served (now or after waiting), or fail fast: 0, or
 * the code it would fail with — PP_EBURNED (burned), PP_EEJECTED (ejected for a cool-down),
 * PP_ECANNOTCONNECT (backing off after failed connects, with no conn that could serve),
 * PP_ENOPEER (its address is older than max_address_age and it has no conn); PP_EINVAL for a
 * NULL peer. Cheap (no walk, at most one clock read): a route hook calls it to pass over an
 * owner that is down. An ejection whose time has passed ends here (the peer leaves the ejected
 * state). */
int pp_peer_check(pp_peer_t *peer);

/* A peer's failure history: what an address book saves, and pp_peer_restore() puts back when
 * the peer is added again after a restart (so burned peers stay burned, and a peer that kept
 * failing is not trusted afresh). Times are Unix ms, so they survive a restart. */
typedef struct {
  int failures;          /* consecutive failures, >= 0 */
  int64_t last_success;  /* Unix ms, 0 = never */
  int64_t last_failure;  /* Unix ms, 0 = none */
  uint64_t ejections;    /* times ejected in all */
  int eject_streak;      /* consecutive ejections, >= 0 */
  int burned;            /* 0 or 1 */
  int64_t ejected_until; /* Unix ms, 0 = not ejected */
} pp_peer_history_t;

/* Fill *out with `peer`'s history. */
void pp_peer_history(const pp_peer_t *peer, pp_peer_history_t *out);

/* Put `hist` back on `peer` (typically right after pp_pool_add_peer). The counters are set as
 * given. burned = 1 burns the peer (as its backoff policy would: its waiters end with
 * PP_EBURNED, its idle conns close, the policy hears PP_PEER_EVENT_BURNED); burned = 0 leaves
 * a burned peer burned (re-adding it is what unburns). An ejected_until still to come ejects the
 * peer until then (eject_max at most), if eject_max_percent allows it; otherwise, and for a
 * time that has passed, it is not ejected but stays on probation (its failures are kept, so
 * its next failure ejects it when allowed). last_seen is not touched (pp_pool_add_peer sets
 * it). Returns 0; PP_EINVAL for NULL or a field out of range (negative counts or times,
 * burned other than 0/1); PP_ECLOSED when the pool is closing. */
int pp_peer_restore(pp_peer_t *peer, const pp_peer_history_t *hist);
const char *pp_peer_addr(const pp_peer_t *peer);

#define PP_DNS_MAX_ADDRS 16

/* One address a peer's name resolved to, or that one of its conns still uses. */
typedef struct {
  struct sockaddr_storage sa;
  int conns;   /* open or connecting conns using it */
  int current; /* 1: in the last answer; 0: gone from it (its conns close as leases end) */
} pp_resolved_t;

/* The addresses of a host-name peer: the last answer's (in dial order), then any its conns
 * still use that left it. Writes at most `max` entries; returns how many there are (which may
 * be more than max), 0 for a name with no answer yet, or -1 for a numeric or unix peer. */
int pp_peer_resolved(const pp_peer_t *peer, pp_resolved_t *out, int max);

/* Why the last query for a host-name peer failed, e.g. "redis.internal: NXDOMAIN" or
 * "redis.internal: timeout"; NULL when its last query succeeded (or it is no name). Valid until
 * the peer's next query ends. */
const char *pp_peer_dns_reason(const pp_peer_t *peer);

/* Write the address a TCP conn dialled ("10.0.0.5:6379", "[::1]:6379"; for a conn still racing
 * several: "") into out[n]. Returns 0, PP_EINVAL for a unix socket conn, UV_ENOBUFS. */
int pp_conn_address(const pp_conn_t *conn, char *out, size_t n);

pp_peer_state_t pp_peer_state(const pp_peer_t *peer);
pp_pool_t *pp_peer_pool(const pp_peer_t *peer);
void *pp_peer_get_data(const pp_peer_t *peer);
void pp_peer_set_data(pp_peer_t *peer, void *data);

/* ------------------------------------------------------------------------------------------
 * Acquire and release.
 */
enum { PP_BUSY_WAIT = 0, PP_BUSY_FAIL = 1 };
#define PP_PRIORITY_MAX 7

typedef struct {
  int busy;        /* PP_BUSY_WAIT (queue) or PP_BUSY_FAIL (answer PP_EBUSY at once) */
  int64_t timeout; /* ms; -1 = the pool's acquire_timeout; 0 = no deadline */
  int priority;    /* 0..PP_PRIORITY_MAX, higher served first; FIFO within a level */
  const char *key; /* passed to select hooks (e.g. consistent hashing); not copied */
} pp_acquire_opts_t;

void pp_acquire_opts_init(pp_acquire_opts_t *opts);

typedef void (*pp_acquire_cb)(pp_lease_t *lease, int status);

/* Why an acquire failed: the facts as they stood when its outcome was decided (for an error
 * pp_acquire returned, during the call; for one its callback reports, just before the
 * callback was queued). Read it with pp_lease_cause(); pp_lease_describe() puts it in one
 * line. Durations are ms relative to that moment. */
typedef struct {
  int code;              /* the failure; 0: the lease has not failed (the rest is zero) */
  pp_peer_t *peer;       /* the peer it is about: the one the acquire named (or was routed to);
                            for an acquire for any peer, the peer that made no peer able to
                            serve (the held peer that returns first), else NULL. Valid while
                            the pool lives. */
  pp_peer_state_t state; /* that peer's state */
  int conns;             /* its conns (open or connecting); for any peer: the pool's */
  int max_conns;         /* max_per_peer; for any peer: what the live peers may hold in all
                            (max_per_peer each, max_total at most) */
  int leases;            /* leases on those conns */
  int waiters_ahead;     /* for PP_ETIMEDOUT: acquires that were to be served before this one,
                            in the queue it waited in (the peer's, or the any-peer queue) */
  int failures;          /* the peer's consecutive failures */
  int last_error;        /* the peer's last socket or protocol error, 0 = none */
  int64_t last_error_ms; /* how long before, ms; -1 = no error */
  int64_t held_ms;       /* how much longer the peer stays ejected or backing off; 0 = not */
  int ejected;           /* 1 when the hold is an ejection */
  int64_t waited_ms;     /* how long the acquire had waited (0 for an error answered at once) */
  int peers;             /* the pool's peers not burned */
  int peers_ejected;     /* of them, ejected */
} pp_cause_t;

/* A lease: while pending it is a waiter; once granted it holds one conn. Zero it (or reuse a
 * released one) before pp_acquire. Public fields are read-only for the caller, except data. */
struct pp_lease_s {
  void *data;
  pp_conn_t *conn; /* set when granted; NULL after release or pool close */
  pp_peer_t *peer; /* the peer that serves it (set when granted) */
  int cause;       /* with PP_ECANNOTCONNECT: the last socket error (also when answered fast
                      for a peer backing off); with a local resource error: that error */
  /* private */
  pp_cause_t why_;
  uint64_t since_;   /* loop ms when it started waiting */
  uint64_t wait_ns_; /* uv_hrtime when it started waiting (histograms) */
  uint64_t granted_; /* loop ms of its grant (hold histogram, leak detection) */
  uint64_t leak_id_; /* its leak report, 0 = none */
  pp_peer_t *tried_; /* for any peer: the peer whose dial for it failed last */
  pp_pool_t *pool_;
  pp_peer_t *want_;
  pp_conn_t *dial_;
  pp_acquire_cb cb_;
  const char *key_;
  pp__link_t qlink_;     /* wait queue, then the conn's lease list */
  pp__link_t dlink_;     /* deferred completion queue */
  pp__heap_node_t heap_; /* deadline heap node */
  uint64_t seq_;
  uint64_t deadline_;
  int status_;
  unsigned char state_, priority_, busy_;
};

/* Acquire a conn of `peer`, or of any peer if `peer` is NULL; `opts` NULL means defaults.
 * With a key and no peer, the policy's route hook (if any) names the peer first. The callback
 * runs later with 0 (lease->conn is set) or an error.
 * Fail fast: an acquire for a peer that cannot serve is answered at once, never at its
 * deadline. Errors returned at once (the callback then never runs; pp_lease_cause() tells
 * why): PP_ECLOSED; PP_EREMOVED (the peer is draining: pp_pool_drain_peer); PP_EBURNED (the
 * peer is burned); PP_EEJECTED (the peer is ejected for a
 * cool-down); PP_ECANNOTCONNECT (the peer is backing off after failed connects and has no conn
 * that could serve; lease->cause is its last socket error); PP_ENOPEER (the peer's address is
 * too old to dial; for any peer: no peer is known, or all are burned or too old); for any peer,
 * when no peer can serve because every one is burned, ejected or backing off: the code of the
 * peer that returns first (PP_EEJECTED or PP_ECANNOTCONNECT) — unless a seed hook is installed,
 * when the acquire waits for its addresses; PP_EBUSY (busy=fail at capacity; arm a pp_notice_t
 * to learn when capacity frees); PP_EEXHAUSTED (backlog full); PP_EINVAL (bad opts, lease in
 * use, peer of another pool).
 * Callback statuses: 0; PP_ETIMEDOUT (pp_lease_describe() says what it waited behind);
 * PP_EREMOVED (the peer it waited for was removed or began draining);
 * PP_ECANNOTCONNECT (its dial ran out of attempts; lease->cause is the last socket error);
 * PP_ETLS (the peer's TLS handshake failed; not retried: pp_peer_tls_reason() says why);
 * PP_EBURNED, PP_EEJECTED, PP_ECANNOTCONNECT, PP_ENOPEER when the peer it waited for stopped
 * being able to serve (burned, ejected, backing off with no conn left, aged out) — an acquire
 * for any peer whose dial failed instead goes on waiting for another peer, and fails only when
 * no peer can serve; PP_ECANCELED; PP_ECLOSED; or a local resource error (UV_EMFILE,
 * UV_ENFILE, UV_ENOMEM, UV_ENOBUFS: see "Local resource errors" above) that stopped the dial. */
int pp_acquire(pp_pool_t *pool, pp_lease_t *lease, pp_peer_t *peer, const pp_acquire_opts_t *opts,
               pp_acquire_cb cb);

/* Synchronous fast path: grant a usable idle (or shareable) conn right now, without waiting
 * or dialling, and without any callback. Returns 0 with lease->conn set; PP_EAGAIN when no
 * conn is usable right now; PP_EBURNED, PP_EEJECTED, PP_ECANNOTCONNECT or PP_ENOPEER when the
 * peer (named, or routed to) would fail fast (see pp_acquire; pp_lease_cause() tells why);
 * PP_ECLOSED; PP_EINVAL. Allocates nothing. */
int pp_try_acquire(pp_pool_t *pool, pp_lease_t *lease, pp_peer_t *peer,
                   const pp_acquire_opts_t *opts);

/* Copy the cause of the lease's last failure into *out (all zero if it has not failed since
 * it was last passed to pp_acquire or pp_try_acquire). Returns 0, or PP_EINVAL for NULL. */
int pp_lease_cause(const pp_lease_t *lease, pp_cause_t *out);

/* Describe the lease's last failure in one line of plain text, e.g.
 *   "timed out after 1000 ms waiting for 127.0.0.1:7001: 4/4 conns in use, 12 waiters ahead;
 *    last error ECONNREFUSED 0.2 s ago"
 *   "127.0.0.1:7001 is ejected for 4.2 s more after 5 consecutive failures (last ECONNREFUSED)"
 * Writes at most `len` bytes into `buf`, always NUL-terminated when len > 0 (truncated if it
 * must be). Returns the length of the whole line (as snprintf: compare with len to detect
 * truncation), 0 when the lease has not failed (buf gets ""), or PP_EINVAL for a NULL lease,
 * or a NULL buf with len > 0. The peer's address is read from the pool: call it while the pool
 * lives (a callback with PP_ECLOSED still may). */
int pp_lease_describe(const pp_lease_t *lease, char *buf, size_t len);

/* Cancel a pending acquire: its callback runs later with PP_ECANCELED (a grant decided but
 * not yet delivered is undone). Returns 0, or PP_ESTATE if the lease is not pending (its
 * outcome is final: granted and delivered, failed, released or never used). */
int pp_acquire_cancel(pp_lease_t *lease);

/* End a lease. `status` is the holder's verdict on the conn; only a verdict that the peer
 * failed is held against it (blame):
 *   0            healthy: it goes back to idle (or straight to the next waiter), and ends the
 *                peer's run of failures. One that holds bytes nobody read (a reply nobody
 *                will read) is closed instead, so that no later holder reads it (reason
 *                "broken", no failure of the peer) — unless the pool has keep_idle_bytes, when
 *                the bytes wait for the next holder. A conn the server already closed cleanly
 *                (it answered and hung up, as with `Connection: close`) is simply let go.
 *   PP_ENOREUSE  the caller's ordinary close: the conn must not be lent again but its peer is
 *                healthy (the protocol says so, a receive timed out with a request still in
 *                flight, the lease was collected): it is closed for every holder (reason
 *                "discarded"); the peer counts no failure and its run of failures goes on
 *                unchanged. UV_EOF (the server ended the stream cleanly), PP_ECLOSED and
 *                UV_ECANCELED/PP_ECANCELED do the same.
 *   PP_EBROKEN or a socket error (UV_ECONNRESET, UV_ETIMEDOUT, PP_ETIMEDOUT, ...): the
 *                peer's fault. The conn is closed for every holder (reason "broken") and counts
 *                one failure of its peer (eject_after in a row eject it) — one per conn
 *                however many of its holders say so, and none if an I/O error on the conn
 *                already counted. Also when the conn was closed already (say by a clean EOF
 *                mid-reply): the holder knows the reply was cut short.
 *   a local resource error (UV_EMFILE, UV_ENFILE, UV_ENOMEM, UV_ENOBUFS): closed, no blame.
 * The engine blames on its own what it sees: failed connects and handshakes, failed pings,
 * and an I/O error (reset, write error) on a leased conn; never a clean EOF, on an idle or a
 * leased conn (the reader still gets UV_EOF), and never an error on an idle conn.
 * Safe on a lease detached by pool close (no-op). Returns 0, PP_EINVAL for a positive status,
 * or PP_ESTATE if the lease holds no conn. Allocates nothing. */
int pp_release(pp_lease_t *lease, int status);

/* ------------------------------------------------------------------------------------------
 * Busy notices: learn when capacity for a peer frees (the ResourceBusy-with-condition
 * pattern). Armed after PP_EBUSY, a notice fires once: with 0 when a conn of that peer (or any
 * peer, for NULL) becomes usable or a slot opens, PP_ECANCELED on pp_notice_cancel,
 * PP_EREMOVED when its peer is removed or drained, or PP_ECLOSED when the pool closes. If
 * capacity is free already it fires on the next tick.
 */
typedef void (*pp_notice_cb)(pp_notice_t *notice, int status);

struct pp_notice_s {
  void *data;
  /* private */
  pp_pool_t *pool_;
  pp_peer_t *peer_;
  pp_notice_cb cb_;
  pp__link_t link_;  /* armed notices */
  pp__link_t dlink_; /* deferred callbacks */
  int status_;
  unsigned char state_;
};

/* Arm `notice` for `peer` (NULL: any peer). Returns 0 (the callback runs later, once);
 * PP_ECLOSED on a closing pool; PP_EINVAL for a NULL pool, notice or cb, a notice already
 * armed, or a peer of another pool. Allocates nothing. */
int pp_notice_start(pp_pool_t *pool, pp_notice_t *notice, pp_peer_t *peer, pp_notice_cb cb);
/* Returns 0 (callback runs later with PP_ECANCELED) or PP_ESTATE if it is not armed. */
int pp_notice_cancel(pp_notice_t *notice);

/* ------------------------------------------------------------------------------------------
 * Conns and stream I/O. A conn is valid while a lease holds it, and for a hook from
 * handshake()/ping() until it completes or `closed` is called.
 */
pp_peer_t *pp_conn_peer(const pp_conn_t *conn);
/* The protocol the server chose by ALPN on a TLS conn ("h2"), or NULL (a plain conn, none
 * offered or none chosen). Valid while the conn is open. */
const char *pp_conn_tls_alpn(const pp_conn_t *conn);
int pp_conn_leases(const pp_conn_t *conn);
int pp_conn_is_broken(const pp_conn_t *conn);
/* Milliseconds since the conn last changed lease count (its idle time when unleased). */
uint64_t pp_conn_idle_ms(const pp_conn_t *conn);
void *pp_conn_get_data(const pp_conn_t *conn);
void pp_conn_set_data(pp_conn_t *conn, void *data);

typedef struct {
  uint64_t bytes_in, bytes_out;
  uint64_t msgs_in;   /* read callbacks delivered */
  uint64_t msgs_out;  /* write requests completed */
  int64_t created_at; /* loop ms */
  int64_t expires_at; /* loop ms; 0 = no lifespan */
  uint64_t leases;    /* leases granted over its life, the current ones included (a conn
                         lent the first time has 1: OpenResty's getreusedtimes is leases - 1) */
} pp_conn_info_t;
void pp_conn_info(const pp_conn_t *conn, pp_conn_info_t *info);

/* Reading. The conn reads all the time; bytes go to the reader set here. nread > 0: `buf`
 * holds nread bytes valid only during the call. nread < 0: the stream ended (UV_EOF), failed
 * (a UV_E* code) or the conn is closing (PP_ECLOSED); no further calls follow. Bytes that
 * arrive on a leased conn with no reader are kept (up to 64 KiB, then reading pauses) and
 * delivered after the next pp_conn_read_start, on a later tick. A conn must go back clean:
 * one released with unread bytes, or that receives bytes while idle (a late reply), is
 * closed — unless the pool has keep_idle_bytes, when they wait for the next holder. Returns 0,
 * PP_ECLOSED, or PP_ESTATE when another reader is set. */
typedef void (*pp_read_cb)(pp_conn_t *conn, ssize_t nread, const char *buf, void *arg);
int pp_conn_read_start(pp_conn_t *conn, pp_read_cb cb, void *arg);
/* Stop delivering; later bytes are kept for the next reader. Always returns 0. */
int pp_conn_read_stop(pp_conn_t *conn);

/* Put bytes a reader took but did not consume back in front of the conn's kept bytes, so the
 * next reader gets them first (with keep_idle_bytes, for the conn's next holder). Returns 0,
 * PP_ECLOSED, or UV_ENOMEM. */
int pp_conn_unread(pp_conn_t *conn, const char *data, size_t len);

typedef void (*pp_write_cb)(pp_write_t *req, int status);
struct pp_write_s {
  void *data;
  /* private */
  uv_write_t uv_;
  pp_conn_t *conn_;
  pp_write_cb cb_;
  size_t bytes_;
};
/* Write `bufs` (the bytes must stay valid until the callback). Returns 0 (callback later),
 * PP_ECLOSED, or the stored error of a broken conn. A write error marks the conn broken. */
int pp_conn_write(pp_write_t *req, pp_conn_t *conn, const uv_buf_t bufs[], unsigned int nbufs,
                  pp_write_cb cb);

/* Write what the socket takes right now, without queueing (uv_try_write): the number of
 * bytes written (maybe fewer than asked), UV_EAGAIN when none could be, PP_ECLOSED, or the
 * stored error of a broken conn. No callback; counts bytes and, when all was written, one
 * message. Writing this way first saves a queued write and its poll re-arm on the hot path.
 * On a TLS conn records cannot be taken back once made: it takes every byte (encrypting all,
 * queueing what the socket did not accept) or fails; UV_EAGAIN only when writes are queued. */
int pp_conn_try_write(pp_conn_t *conn, const uv_buf_t bufs[], unsigned int nbufs);

/* Bytes written on `conn` but not yet taken by the kernel: what pp_conn_write() calls queued
 * beyond what the socket accepted at once (libuv's write_queue_size; the engine queues nothing
 * of its own). It grows while the peer does not read (its buffers and ours are full) and falls
 * as the writes drain, so a caller can stop sending above a mark and resume below it (send
 * backpressure). 0 for a conn that is closed or closing (its queued writes end with
 * UV_ECANCELED). Never fails; allocates nothing. */
size_t pp_conn_write_queue_size(const pp_conn_t *conn);

/* ------------------------------------------------------------------------------------------
 * Requests: pipelining on conns of a pool with framing (pp_options_t.framing). Each request's
 * bytes are queued on the conn in order, and each whole reply goes to the request it answers,
 * in the same order, whichever lease (or handshake/ping hook) sent it — so a conn shared by
 * client_limit leases carries many requests at once. Requests sent on one conn within one loop
 * iteration leave in one write (uv_try_write of many buffers) at the end of the iteration; the
 * replies parsed from one read go to many requests. Steady state allocates nothing.
 * Failure: a conn that dies (I/O error, EOF, close, a reply that does not frame) fails every
 * request still on it, once each, with the conn's error (PP_EFRAMING, PP_ETOOLONG, a socket
 * error, or PP_ECLOSED). pp_request_abort() gives up on one request: since the reply order is
 * lost, its conn is closed (reason "discarded", not the peer's failure) and every other request
 * on it fails with PP_EPIPELINE. A reply that answers no request closes the conn as a late
 * reply (reason "remote"). Replies are routed in order; a protocol that answers out of order
 * would give its framer's replies ids — that seam is not built (see docs/engine.md).
 * Bytes that arrive while no request waits go to the raw reader (pp_conn_read_start) as
 * before, so a handshake may use either; do not have raw reads and requests in flight at once.
 */
typedef struct pp_request_s pp_request_t;
/* status 0: `reply` holds the whole reply (len bytes, valid only during the call). Otherwise
 * the request failed (reply NULL). */
typedef void (*pp_reply_cb)(pp_request_t *req, int status, const char *reply, size_t len);

struct pp_request_s {
  void *data;
  /* private */
  pp_conn_t *conn_;
  pp_reply_cb cb_;
  const uv_buf_t *bufs_;
  unsigned int nbufs_;
  int status_;
  pp__link_t link_;  /* the conn's send queue, then its reply queue, then the pool's defer list */
  uint64_t sent_ns_; /* uv_hrtime at the write that sent it (the request histogram) */
};

/* Send `bufs` on `conn` (held by a lease, or by a handshake/ping hook) as one request: its
 * reply comes to `cb`, exactly once (later, never inside this call), with 0 and the reply or
 * an error. The array `bufs` and the bytes must stay valid until the callback. Returns 0;
 * PP_ESTATE when the pool has no framing or the conn is not open for I/O; PP_ECLOSED or the
 * stored error of a broken conn; PP_EINVAL; UV_ENOMEM (the conn's first request). */
int pp_request_send(pp_request_t *req, pp_conn_t *conn, const uv_buf_t bufs[], unsigned int nbufs,
                    pp_reply_cb cb);

/* Give up on a pending request (a timeout): its callback runs later with `status` (< 0), its
 * conn is closed without blaming the peer, and every other request on that conn fails with
 * PP_EPIPELINE. Returns 0, or PP_ESTATE when the request is not pending (its callback is
 * queued already or has run). */
int pp_request_abort(pp_request_t *req, int status);

/* Requests on `conn` whose callbacks have not been queued yet (sent or waiting to be). */
int pp_conn_requests(const pp_conn_t *conn);

/* Complete the handshake / ping started by the policy hook. status 0 = success. Returns 0 or
 * PP_ESTATE if no handshake/ping is running on the conn. */
int pp_conn_handshake_done(pp_conn_t *conn, int status);
int pp_conn_ping_done(pp_conn_t *conn, int status);

/* ------------------------------------------------------------------------------------------
 * Stats: gauges and counters since the pool was created.
 */
/* Every scalar stat, once: X(type, name, doc). pp_stats_t and the Lua stats() table derive
 * from it (peerpool.stats_fields() lists them for tools); a counter's name says what it counts
 * since the pool was created, a gauge is a count now. */
#define PP_STATS_MAP(X)                                                                          \
  X(int, conns, "gauge: conns open, connecting ones included")                                   \
  X(int, idle, "gauge: conns idle, ready to lend")                                               \
  X(int, active, "gauge: conns with at least one lease")                                         \
  X(int, connecting, "gauge: conns connecting, handshaking or backing off")                      \
  X(int, waiters, "gauge: acquires waiting")                                                     \
  X(int, peers, "gauge: known peers")                                                            \
  X(uint64_t, acquires, "calls to pp_acquire / pp_try_acquire that were accepted")               \
  X(uint64_t, acquired_immediate, "granted an idle (or shareable) conn at once")                 \
  X(uint64_t, acquired_dialed, "granted the conn dialled for it")                                \
  X(uint64_t, acquired_waited, "granted after queueing behind capacity")                         \
  X(uint64_t, timed_out, "acquires that reached their deadline")                                 \
  X(uint64_t, busy, "acquires answered busy (busy = fail at capacity)")                          \
  X(uint64_t, exhausted, "acquires refused because the backlog was full")                        \
  X(uint64_t, canceled, "acquires canceled")                                                     \
  X(uint64_t, cannot_connect, "acquires whose dial ran out of attempts")                         \
  X(uint64_t, releases, "leases ended")                                                          \
  X(uint64_t, released_broken, "leases ended with a verdict against the peer")                   \
  X(uint64_t, connect_attempts, "connect attempts")                                              \
  X(uint64_t, connects_ok, "connects that succeeded")                                            \
  X(uint64_t, connects_failed, "connect attempts that failed")                                   \
  X(double, connect_latency_ms_avg, "mean time of the successful connects, ms")                  \
  X(double, connect_latency_ms_max, "longest successful connect, ms")                            \
  X(uint64_t, tls_full, "TLS handshakes completed without resuming a session")                   \
  X(uint64_t, tls_resumed, "TLS handshakes completed by resuming a cached session")              \
  X(uint64_t, tls_failed, "TLS handshakes (or conns later) that ended with PP_ETLS")             \
  X(uint64_t, bytes_in, "bytes read")                                                            \
  X(uint64_t, bytes_out, "bytes written")                                                        \
  X(uint64_t, msgs_in, "reads")                                                                  \
  X(uint64_t, msgs_out, "writes")                                                                \
  X(uint64_t, pings, "pings started")                                                            \
  X(uint64_t, pings_failed, "pings that failed")                                                 \
  X(uint64_t, ejections, "peers ejected for a cool-down after consecutive failures")             \
  X(uint64_t, ejections_refused,                                                                 \
    "ejections eject_max_percent refused (the peer backed off briefly instead)")                 \
  X(uint64_t, failed_fast,                                                                       \
    "acquires answered at once because no peer could serve them (burned, ejected, backing "      \
    "off, too old)")                                                                             \
  X(uint64_t, probes, "probe connects of held peers")                                            \
  X(uint64_t, probes_failed, "probe connects that failed")                                       \
  X(uint64_t, seeds, "seed hook calls")                                                          \
  X(uint64_t, policy_errors, "hook results the engine had to ignore")                            \
  X(uint64_t, dns_queries, "host name lookups started (A and AAAA together count one)")          \
  X(uint64_t, dns_failures, "host name lookups that failed (no such name, no address, timeout)") \
  X(uint64_t, warm_dials, "dials started to keep min_idle conns idle")                           \
  X(uint64_t, peers_removed, "pp_pool_remove_peer calls that removed a peer")                    \
  X(uint64_t, peers_drained, "pp_pool_drain_peer calls that started a drain")                    \
  X(uint64_t, leases_cut,                                                                        \
    "leases a pool close took from their holders (all of them for a "                            \
    "plain close, those still held when the drain ended for a graceful one)")

/* Stats: the scalar ones above, and counts by peer state and by close reason. */
typedef struct {
#define PP__STAT_FIELD(type, name, doc) type name;
  PP_STATS_MAP(PP__STAT_FIELD)
#undef PP__STAT_FIELD
  int peers_by_state[PP_PEER_STATE_COUNT];
  uint64_t closed[PP_CLOSE_REASON_COUNT]; /* conns closed, by reason */
} pp_stats_t;

void pp_pool_stats(const pp_pool_t *pool, pp_stats_t *stats);

/* ------------------------------------------------------------------------------------------
 * Latency histograms, kept by every pool from its creation. Fixed log-spaced buckets: bucket i
 * (0 <= i < PP_HIST_BUCKETS - 1) counts observations <= 2^i microseconds (1 us .. 67.1 s) and
 * above the bucket before; the last counts the rest (+Inf). Counts are per bucket, not
 * cumulative. Updating one allocates nothing and reads no clock of its own.
 *   acquire_wait  from pp_acquire to the grant, for every granted acquire (pp_try_acquire and
 *                 an idle conn granted at once count 0); failed acquires are not observed
 *   connect       a successful TCP (or unix socket) connect attempt, from connect() to the
 *                 socket being connected
 *   tls           a successful TLS handshake (once TLS is wired into conns)
 *   handshake     the handshake hook, from its start to pp_conn_handshake_done(conn, 0)
 *   hold          a lease, from its grant to pp_release; measured with the loop's clocks (the
 *                 cached loop time at the grant, the coarse monotonic clock at the release), so
 *                 it has about a loop tick of resolution (1..4 ms): holds shorter than that
 *                 count 0 or one tick. Leases detached by pool close are not observed.
 *   request       a request on a framed conn (pp_request_send), from the call to the read that
 *                 brought its whole reply (the replies of one read share its stamp); failed
 *                 and aborted requests are not observed
 */
#define PP_HIST_KIND_MAP(XX)       \
  XX(ACQUIRE_WAIT, "acquire_wait") \
  XX(CONNECT, "connect")           \
  XX(TLS, "tls")                   \
  XX(HANDSHAKE, "handshake")       \
  XX(HOLD, "hold")                 \
  XX(REQUEST, "request")

typedef enum {
#define PP__HIST_ENUM(name, str) PP_HIST_##name,
  PP_HIST_KIND_MAP(PP__HIST_ENUM)
#undef PP__HIST_ENUM
      PP_HIST_COUNT
} pp_hist_kind_t;

#define PP_HIST_BUCKETS 28

typedef struct {
  uint64_t count;                    /* observations */
  uint64_t sum_us;                   /* their sum, microseconds */
  uint64_t buckets[PP_HIST_BUCKETS]; /* per bucket (not cumulative); see pp_histogram_bound_us */
} pp_histogram_t;

/* "acquire_wait", "connect", ...; "unknown" for an out-of-range value. */
const char *pp_hist_kind_name(pp_hist_kind_t kind);
/* The upper bound of bucket i in microseconds (2^i), INFINITY for the last. */
double pp_histogram_bound_us(int i);
/* Copy the pool's histogram of `kind` into *out. Returns 0 or PP_EINVAL. */
int pp_pool_histogram(const pp_pool_t *pool, pp_hist_kind_t kind, pp_histogram_t *out);
/* The q-quantile (0..1) in microseconds, interpolated linearly inside its bucket (as
 * Prometheus' histogram_quantile); the highest finite bound if it falls in +Inf; NAN for an
 * empty histogram or q out of range. */
double pp_histogram_quantile(const pp_histogram_t *h, double q);

#ifdef __cplusplus
}
#endif
#endif /* PEERPOOL_H */
