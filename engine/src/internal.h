/* Engine internals: the structs behind the opaque handles and the pp__ functions the engine
 * files share. Nothing here is part of the public API. */
#ifndef PP_INTERNAL_H
#define PP_INTERNAL_H

#include "peerpool.h"

#include <stdbool.h>
#include <stdint.h>

/* ---- intrusive doubly-linked list (circular, with a head node) ------------------------- */
static inline void pp__list_init(pp__link_t *h) {
  h->next = h->prev = h;
}
static inline bool pp__list_empty(const pp__link_t *h) {
  return h->next == h;
}
static inline bool pp__linked(const pp__link_t *l) {
  return l->next != NULL;
}
static inline void pp__list_push(pp__link_t *h, pp__link_t *l) {
  l->prev = h->prev;
  l->next = h;
  h->prev->next = l;
  h->prev = l;
}
static inline void pp__list_remove(pp__link_t *l) {
  l->prev->next = l->next;
  l->next->prev = l->prev;
  l->next = l->prev = NULL;
}
/* Move every link of `from` to `to` (which is initialised first), in order; `from` is left
 * empty: work queued from here on waits for the next pass. */
static inline void pp__list_splice(pp__link_t *from, pp__link_t *to) {
  pp__list_init(to);
  if (pp__list_empty(from)) return;
  to->next = from->next;
  to->prev = from->prev;
  to->next->prev = to;
  to->prev->next = to;
  pp__list_init(from);
}
#define PP__CONTAINER(ptr, type, field) ((type *)((char *)(ptr)-offsetof(type, field)))

/* ---- names from the X-macro lists ------------------------------------------------------ */
/* A row's string, in a list whose rows read (NAME, "string", ...): makes a name table. */
#define PP__ROW_STRING(name, str, ...) str,
/* names[value] for a value in 0..count-1, else "unknown" (a value from outside the list). */
static inline const char *pp__name_of(const char *const names[], int count, int value) {
  return value >= 0 && value < count ? names[value] : "unknown";
}

/* ---- validators: functions that take `const char **why` ------------------------------- */
/* Set *why (when asked for) to `msg`, a static string naming the field, and fail. */
#define PP__INVALID(msg) \
  do {                   \
    if (why) *why = msg; \
    return PP_EINVAL;    \
  } while (0)
#define PP__CHECK(cond, msg)       \
  do {                             \
    if (!(cond)) PP__INVALID(msg); \
  } while (0)

/* ---- intrusive min-heap (pointer tree, O(log n) insert/remove of any node) ------------- */
/* Every heap in the engine orders by a time key kept in the struct that embeds the node, ties
 * by an insertion number kept there too (so equal times come out first in, first out, as
 * libuv's timers do). The heap finds both at fixed offsets from its node (PP__HEAP_INIT). Keys
 * compare in their own type: a Unix ms key (int64_t) may be negative, and a loop ms deadline
 * (uint64_t) may pass 2^63 (pp_acquire takes any timeout), so neither reads as the other. */
typedef struct {
  pp__heap_node_t *min;
  unsigned int n;
  ptrdiff_t key_at, seq_at; /* where the key and the insertion number are, from the node */
  bool key_signed;          /* the key is an int64_t, else a uint64_t */
} pp__heap_t;

void pp__heap_init(pp__heap_t *heap, ptrdiff_t key_at, ptrdiff_t seq_at, bool key_signed);
/* A heap of `type`s linked by their field `node`, ordered by (`key`, `seq`). */
/* Whether a key is signed; any type but int64_t and uint64_t fails to compile. (clang-format 14
 * would split _Generic's associations across lines.) */
/* clang-format off */
#define PP__KEY_SIGNED(x) _Generic((x), int64_t: true, uint64_t: false)
#define PP__HEAP_INIT(heap, type, node, key, seq)                                           \
  do {                                                                                      \
    _Static_assert(sizeof(((type *)0)->seq) == 8, #type "." #seq " must be 64-bit");        \
    pp__heap_init((heap), (ptrdiff_t)offsetof(type, key) - (ptrdiff_t)offsetof(type, node), \
                  (ptrdiff_t)offsetof(type, seq) - (ptrdiff_t)offsetof(type, node),         \
                  PP__KEY_SIGNED(((type *)0)->key));                                        \
  } while (0)
/* clang-format on */
void pp__heap_insert(pp__heap_t *heap, pp__heap_node_t *node);
void pp__heap_remove(pp__heap_t *heap, pp__heap_node_t *node);
/* Give `node` the key `key`, where a key of 0 means "not in the heap": it leaves the heap
 * under its old key (if not 0) and enters it again under the new one (if not 0). */
void pp__heap_set_key(pp__heap_t *heap, pp__heap_node_t *node, int64_t key);

/* ---- I/O counters ---------------------------------------------------------------------- */
/* What went through a conn, or through all of a peer's conns: counted by pp__count_io,
 * reported by pp_conn_info and pp_peer_info (whose four fields of the same names it fills). */
typedef struct {
  uint64_t bytes_in, bytes_out;
  uint64_t msgs_in;  /* read callbacks delivered */
  uint64_t msgs_out; /* write requests completed */
} pp__io_t;
#define PP__IO_REPORT(info, io)         \
  do {                                  \
    (info)->bytes_in = (io).bytes_in;   \
    (info)->bytes_out = (io).bytes_out; \
    (info)->msgs_in = (io).msgs_in;     \
    (info)->msgs_out = (io).msgs_out;   \
  } while (0)

/* ---- states ---------------------------------------------------------------------------- */
typedef enum {
  PP_LEASE_UNUSED = 0, /* zeroed, released, or completed with an error */
  PP_LEASE_WAITING,    /* queued; may also own a dial */
  PP_LEASE_DONE,       /* outcome decided, callback queued on the defer list */
  PP_LEASE_GRANTED,    /* holds a conn */
  PP_LEASE_DETACHED,   /* held a conn when the pool closed */
} pp__lease_state_t;

typedef enum {
  PP_CONN_NEW = 0,   /* allocated, no attempt yet */
  PP_CONN_DIALING,   /* connect in flight */
  PP_CONN_BACKOFF,   /* waiting before the next attempt (no socket) */
  PP_CONN_HANDSHAKE, /* connected, handshake hook running */
  PP_CONN_READY,     /* usable (if under client_limit and not broken) */
  PP_CONN_PINGING,   /* ping hook running; not lendable */
  PP_CONN_CLOSED,    /* handle closing or closed; memory kept while leases remain */
} pp__conn_phase_t;

typedef enum { PP_NOTICE_IDLE = 0, PP_NOTICE_ARMED, PP_NOTICE_DONE } pp__notice_state_t;

/* A wait queue: FIFO lists, one per priority level. */
typedef struct {
  pp__link_t level[PP_PRIORITY_MAX + 1];
  int count;
} pp__queue_t;

/* One pool-wide hold timer (pool->hold_timer) ends ejections on time and starts probes. */
#define PP__BRIEF_BACKOFF_MS 500 /* a refused ejection backs off min(eject_time, this) */

#define PP__READ_KEEP_MAX (64 * 1024)

/* A conn's lifetime word (conn->flags), as libuv's handle flags: which of its handles are open
 * or closing, and what is pending or running on it. */
enum {
  PP__CONN_F_SOCKET = 1 << 0,         /* conn->h is initialised and not yet closed */
  PP__CONN_F_SOCKET_CLOSING = 1 << 1, /* uv_close(conn->h) called, its callback not yet run */
  PP__CONN_F_TIMER = 1 << 2,          /* conn->timer likewise */
  PP__CONN_F_TIMER_CLOSING = 1 << 3,
  PP__CONN_F_READING = 1 << 4,         /* uv_read_start is active */
  PP__CONN_F_DELIVER_PENDING = 1 << 5, /* on the defer list to hand kept bytes to the reader */
  PP__CONN_F_HOOK = 1 << 6,            /* a handshake/ping hook holds the conn */
};
/* Whether the socket is open and not closing (what the old H_OPEN meant). */
#define PP__CONN_SOCKET_LIVE(conn) \
  (((conn)->flags & (PP__CONN_F_SOCKET | PP__CONN_F_SOCKET_CLOSING)) == PP__CONN_F_SOCKET)

/* The fields the acquire/release hot path touches come first, so a lend or a return touches
 * the conn's first two cache lines (and a list neighbour's first line) and not more: with
 * thousands of idle conns lent longest-idle first, every conn is a cache miss. Conns are
 * allocated 64-byte aligned. */
struct pp_conn_s {
  /* line 0 */
  pp__link_t bucket_link; /* in peer->buckets[leases] while usable */
  pp__link_t idle_link;   /* in pool->idle while usable with no lease */
  pp_pool_t *pool;
  pp_peer_t *peer;
  int leases;
  pp__conn_phase_t phase;
  bool broken;    /* saw an I/O error or EOF; never lent again */
  bool expired;   /* past max_lifespan; closes when its last lease ends */
  bool probe;     /* a probe: one attempt, for a held peer, not counted as live */
  bool blamed;    /* counted a failure of its peer already (once per conn) */
  uint16_t flags; /* PP__CONN_F_*: what is open, pending or running (its lifetime word) */
  /* line 1 */
  unsigned int refs;     /* holders (see pp__conn_ref): the conn is freed when they are gone */
  pp__link_t lease_list; /* leases holding this conn (their qlink_) */
  uint64_t last_used;    /* loop ms when the lease count last changed */
  size_t kept_len;       /* bytes kept in `kept` */
  pp_read_cb read_cb;
  void *read_arg;
  pp_lease_t *owner;     /* the waiter this dial was started for (may be NULL) */
  uint64_t leases_total; /* leases granted over its life (pp_conn_info) */
  /* the rest */
  union {
    uv_handle_t handle;
    uv_stream_t stream;
    uv_tcp_t tcp;
    uv_pipe_t pipe;
  } h;
  uv_connect_t connect_req;
  uv_timer_t timer;         /* attempt timeout, backoff, handshake timeout, then lifespan */
  int attempt;              /* connect attempts made by this dial */
  int last_error;           /* socket error of the last attempt / I/O */
  uint64_t attempt_started; /* loop ms */
  int64_t created_at, expires_at;
  pp__link_t peer_link;  /* in peer->conns */
  pp__link_t defer_link; /* in pool->defer_conns while deliver_pending */
  char *kept;            /* bytes that arrived with no reader */
  size_t kept_cap;
  int kept_error; /* an end/error seen with no reader, delivered after kept bytes */
  pp__io_t io;
  uint64_t phase_ns; /* uv_hrtime when its connect attempt or handshake began (histograms) */
  uint64_t id;       /* pp_conn_id (events.c) */
  void *data;
  struct pp__tls_s *tls; /* TLS state (tls.c) while the socket lives; NULL: plain TCP */
  /* Host names (dns.h): the address this conn dialled, its Happy Eyeballs race while one
   * runs, whether it waits for its peer's answer, whether its address left the answer. */
  struct sockaddr_storage sa;
  struct pp__race_s *race;
  bool dns_wait;
  bool dns_gone;
  struct pp__pipe_s *pipe; /* requests and reply framing (pipeline.c); NULL: none sent yet */
};
/* The error a conn that ended hands its readers and requests: its I/O error, else closed. */
static inline int pp__conn_end_error(const pp_conn_t *conn) {
  return conn->broken && conn->last_error ? conn->last_error : PP_ECLOSED;
}

struct pp_peer_s {
  pp_pool_t *pool;
  char *addr;                 /* canonical */
  struct sockaddr_storage sa; /* for TCP peers */
  bool is_pipe;
  bool burned;
  bool ever_connected;
  pp_peer_state_t state;
  int conns;                         /* every conn counted toward max_per_peer */
  int dialing, backoff, handshaking; /* conns not yet ready, by phase */
  int usable;                        /* conns in the buckets */
  int idle;
  int leases;
  int failures;         /* consecutive failures in use (broken conns, failed pings) */
  int connect_failures; /* consecutive failed connect attempts (drives backoff) */
  int last_error;
  uint64_t last_error_at; /* loop ms of the last failure (0 = none) */
  int64_t last_failure;   /* Unix ms of the same */
  bool fail_in_use;       /* the last failure was in use, not a connect: a probe proves nothing */
  int64_t last_seen, last_success; /* Unix ms */
  uint64_t retry_at;               /* loop ms */
  uint64_t attempts;
  uint64_t ejections;
  double latency_ms;
  pp__io_t io; /* of all its conns, closed ones included */
  pp__link_t conns_list;
  /* usable conns by lease count: buckets[k] holds conns with k leases, oldest use first */
  pp__link_t *buckets;
  uint64_t *nonempty; /* bitmap over buckets */
  pp__queue_t waiters;
  pp__link_t order_link;   /* pool->peers, insertion order */
  pp__link_t usable_link;  /* pool->usable_peers while usable > 0 */
  pp__link_t waiting_link; /* pool->waiting_peers while waiters.count > 0 */
  pp_peer_t *hash_next;
  void *data;
  struct pp__tls_peer_s *tls; /* TLS settings, sessions, last failure (tls.c); NULL: none yet */
  /* Its place among dial candidates (peer.c keeps it in step in pp__peer_update_state). A peer
   * that may be dialled (not burned, fresh, under max_per_peer) is in pool->dialable, or in
   * pool->backoff until its retry time; burned, stale and full peers are in neither. */
  uint64_t seq;                 /* insertion number: ties in the heaps go to the older peer */
  pp__link_t dial_link;         /* pool->dialable */
  pp__link_t bare_link;         /* pool->dialable_bare: in pool->dialable with no conn */
  pp__heap_node_t backoff_node; /* pool->backoff while backoff_key != 0 */
  uint64_t backoff_key;         /* its retry_at when it entered pool->backoff */
  pp__heap_node_t fresh_node;   /* pool->freshness while stale_at != 0 */
  int64_t stale_at;             /* Unix ms after which its address is too old to dial */
  bool live; /* not burned, not ejected, holding a conn that is no probe: pool->live_peers */
  /* Health (health.c): ejection and probes. */
  bool ejected;               /* in pool->ejected until eject_until */
  uint64_t eject_until;       /* loop ms */
  uint64_t eject_ended_at;    /* loop ms when its last ejection ended (0 = never ejected) */
  pp__heap_node_t eject_node; /* pool->ejected */
  int eject_streak;           /* consecutive ejections: the cool-down doubles with each */
  uint64_t probe_at;          /* loop ms of its next probe; 0 = none scheduled */
  pp__heap_node_t probe_node; /* pool->probes while probe_at != 0 */
  int probing;                /* its conns that are probes */
  struct pp__dns_peer_s *dns; /* a host name's resolver state (dns.c); NULL: numeric or unix */
  /* warm.c: min_idle; drain.c: drain and removal */
  int min_idle;          /* its own min_idle, -1: the pool's (see pp__warm_min) */
  pp__link_t warm_link;  /* pool->warm_needy while it may have fewer idle conns than that */
  int warm_streak;       /* its conns that ended unused in a row (see pp__warm_closed) */
  uint64_t warm_hold;    /* loop ms before which no min_idle dial starts for it; 0: none */
  bool draining;         /* takes no lease, closes conns at release (removed peers too) */
  bool removed;          /* out of the table; freed once no conn and no callback needs it */
  uint64_t removed_pass; /* pool->defer_pass when it was removed */
};

struct pp_pool_s {
  uv_loop_t *loop;
  pp_options_t opts;
  pp_policy_t policy;
  pp_state_cb state_cb;
  void *data;
  struct pp__tls_pool_s *tls; /* TLS of the pool and its peers (tls.c); NULL: none */
  bool closing;
  pp_close_cb close_cb;
  int conn_handles; /* conn handles not yet closed */
  int own_handles;  /* the pool's own handles not yet closed */
  bool own_closed;
  /* peers */
  pp_peer_t **table;
  unsigned int table_size, npeers;
  pp__link_t peers;
  pp__link_t usable_peers; /* round-robin ring of peers with a usable conn */
  pp__link_t waiting_peers;
  /* Dial candidates, so that choosing a peer to dial costs the same however many peers are
   * burned, stale, full or backing off: */
  pp__link_t dialable;      /* round-robin ring of peers that may be dialled now */
  pp__link_t dialable_bare; /* those of them with no conn at all (target_peers maintenance) */
  pp__heap_t backoff;       /* peers that may be dialled once their retry time passes, soonest
                               first */
  pp__heap_t freshness;     /* candidate peers by when their address goes stale, soonest first */
  int live_peers;           /* peers not burned or ejected with a conn that is no probe */
  int nburned, nejected;    /* peers burned; peers ejected */
  pp__heap_t ejected;       /* ejected peers by eject_until, soonest first */
  pp__heap_t probes;        /* peers with a probe scheduled, by probe_at */
  uv_timer_t hold_timer;    /* fires at the first ejection end or probe due */
  uint64_t peer_seq;
  uint64_t candidate_visits; /* peers looked at to choose one to dial (tests bound the walk) */
  /* conns */
  int total;                       /* conns counted toward max_total */
  int dialing, idle_count, active; /* gauges: connecting, idle, leased conns */
  pp__link_t idle;                 /* usable conns with no lease, oldest first */
  uv_timer_t idle_timer;
  uv_timer_t keepalive_timer;
  uv_timer_t maintenance_timer;
  uint64_t last_seed; /* loop ms of the last seed hook call; 0 = never */
  /* waiters */
  pp__queue_t any_waiters;
  pp__link_t notices; /* armed notices */
  int waiters;
  int dial_owners; /* waiters that own a dial (not counted against backlog) */
  uint64_t seq;
  pp__heap_t deadlines;
  uv_timer_t deadline_timer;
  /* deferred callbacks, run from a check handle (an idle handle keeps poll from blocking) */
  pp__link_t defer_leases, defer_notices, defer_conns;
  struct pp__event_s *events; /* peer state changes waiting for delivery (a ring) */
  unsigned int events_head, events_len, events_cap;
  uv_check_t defer_check;
  uv_idle_t defer_idle;
  bool defer_active;
  bool capacity_soon; /* pp__capacity_opened runs at the start of the next deferred pass */
  /* scratch for policy candidates */
  void **scratch;
  int scratch_cap;
  /* random */
  uint64_t rng;
  /* shared read buffer: reads are handled synchronously on the loop thread */
  char read_buf[64 * 1024];
  pp_stats_t stats;
  double connect_latency_sum;
  pp_histogram_t hist[PP_HIST_COUNT]; /* hist.c */
  /* events.c: observers, leak detection, the explain ring */
  pp_event_cb event_cb;
  void *event_arg;
  uint64_t conn_seq, leak_seq;
  uv_timer_t leak_timer;
  unsigned int explain_next, explain_len;
  struct pp__explain_s *explain; /* PP_EXPLAIN_MAX entries, allocated with the pool */
  struct pp__dns_pool_s *dns;    /* host names (dns.c) */
  /* warm.c: min_idle */
  uv_timer_t warm_timer; /* fills the needy peers; a pool handle */
  bool warm_soon;        /* warm_timer is armed for the next tick */
  pp__link_t warm_needy; /* peers that may lack idle conns (their warm_link) */
  pp__link_t warm_idle;  /* idle conns past idle_timeout kept for min_idle (their idle_link),
                            oldest first; still counted idle and lendable */
  /* drain.c: removal and graceful close */
  pp__link_t removed_peers; /* removed peers not yet freed (their order_link) */
  uint64_t defer_pass;      /* deferred-callback passes run so far */
  uv_timer_t drain_timer;   /* ends a graceful close (pp_pool_close_drain); a pool handle */
  bool drain_closing;       /* a graceful close is letting leases finish */
  /* pipeline.c: framing (kind NONE: conns do not pipeline), conns with requests to write,
   * requests whose callbacks wait for the check phase */
  pp_framing_t framing;
  pp__link_t flush_conns, defer_requests;
};

/* An explain entry: text formatted when recorded, or (lazy != 0) the numbers to format it
 * from when it is read (events.c). */
struct pp__explain_s {
  pp_explain_t e;
  unsigned char lazy;
  pp_peer_t *want;  /* fail: the acquire's named (or routed) peer */
  pp_cause_t cause; /* fail */
  int v[8];         /* wait, acquire */
};

struct pp__event_s {
  pp_event_t ev; /* kind PP_EVENT_STATE: a state transition (ev.peer, ev.from, ev.to) */
};

typedef struct pp__pipe_s pp__pipe_t;

/* ---- tls.c: TLS on memory BIOs, per pool and per peer --------------------------------- */
#include "tls.h"

/* ---- dns.c, eyeballs.c: host names and Happy Eyeballs ---------------------------------- */
#include "dns.h"

/* ---- error.c --------------------------------------------------------------------------- */
/* Whether `err` says this machine is short of a resource (fds, memory, buffers) rather than
 * that the peer failed. */
bool pp__err_is_local(int err);

/* ---- pool.c ---------------------------------------------------------------------------- */
/* Finish the close once nothing is pending: close the pool's own handles, then free it. */
void pp__maybe_finish(pp_pool_t *pool);

/* ---- defer.c --------------------------------------------------------------------------- */
void pp__defer_init(pp_pool_t *pool); /* the lists, the check and the idle handle */
void pp__defer_lease(pp_pool_t *pool, pp_lease_t *lease, int status);
void pp__defer_notice(pp_pool_t *pool, pp_notice_t *notice, int status);
void pp__defer_conn(pp_pool_t *pool, pp_conn_t *conn);
/* Make sure the check phase runs the defer queue (pipeline.c's lists are read there). */
void pp__defer_wake(pp_pool_t *pool);
void pp__defer_event(pp_pool_t *pool, pp_peer_t *peer, pp_peer_state_t from, pp_peer_state_t to);
/* Queue the event written into pp__event_slot()'s slot. */
void pp__defer_pool_event(pp_pool_t *pool);
/* A conn slot opened or a peer came: run pp__capacity_opened from the next deferred pass, not
 * inside this call (it runs policy hooks: select_peer, and through dials, handshake). */
void pp__capacity_soon(pp_pool_t *pool);

/* ---- maintain.c ------------------------------------------------------------------------ */
void pp__maintain_init(pp_pool_t *pool); /* the idle, keepalive and maintenance timers */
void pp__idle_timer_arm(pp_pool_t *pool);
/* Ask the seed hook for `wanted` addresses, if it has not been asked within seed_interval.
 * Returns whether a seed hook exists. */
bool pp__request_seed(pp_pool_t *pool, int wanted);

/* ---- clock.c --------------------------------------------------------------------------- */
int64_t pp__unix_now_ms(void);
/* Whether loop time `at` is still to come, reading the clock only when the cached loop time
 * (never ahead of it) says so: cheap on the hot path when `at` has long passed (or is 0). */
bool pp__ahead(pp_pool_t *pool, uint64_t at);
/* The loop time for stamps on the hot path (when an idle conn was released): from the coarse
 * monotonic clock, at most one tick (a few ms) behind the real time, never behind uv_now(), at
 * a third of the cost of pp_now(). */
uint64_t pp__stamp(pp_pool_t *pool);

/* ---- peer.c ---------------------------------------------------------------------------- */
/* Re-derive everything that follows from a peer's fields (burned, conns, retry_at, last_seen):
 * its state (reporting a change) and its place among the dial candidates. Call it after
 * changing any of them. */
void pp__peer_update_state(pp_peer_t *peer);
void pp__candidates_init(pp_pool_t *pool);
/* Bring the dial candidates up to date with the clocks: addresses that aged out leave, peers
 * whose retry time passed move from pool->backoff to pool->dialable. Amortised O(log n) per
 * peer that changed; nothing else is looked at. */
void pp__candidates_refresh(pp_pool_t *pool);
/* Whether some peer may be dialled now (max_total aside). */
bool pp__any_dial_candidate(pp_pool_t *pool);
/* The peer in backoff whose retry time comes first, or NULL. */
pp_peer_t *pp__soonest_backoff(pp_pool_t *pool);
bool pp__peer_is_fresh(const pp_peer_t *peer);
/* Not burned, ejected or backing off; fresh; under max_per_peer (and, for can_dial, under
 * max_total too). */
bool pp__peer_may_dial(pp_peer_t *peer);
bool pp__peer_can_dial(pp_peer_t *peer);
/* The loop ms until which `peer` is not dialled: the later of its backoff and its ejection. */
uint64_t pp__peer_hold_until(const pp_peer_t *peer);
void pp__peer_free(pp_peer_t *peer);
void pp__peer_mark_usable(pp_peer_t *peer, pp_conn_t *conn);
void pp__peer_unmark_usable(pp_peer_t *peer, pp_conn_t *conn);
/* Retire `peer`'s conns (it is burned, draining or removed): none takes a new lease; those no
 * lease holds close now with `reason`, failing the dial a waiter owns with `err` first; leased
 * ones close when their last lease ends. */
void pp__peer_retire_conns(pp_peer_t *peer, pp_close_reason_t reason, int err);
pp_conn_t *pp__peer_best_conn(pp_peer_t *peer);
int pp__peer_usable_conns(pp_peer_t *peer, pp_conn_t **out, int max);

/* ---- health.c -------------------------------------------------------------------------- */
/* Burn `peer` (the backoff policy gave up): never dialled again until re-added. */
void pp__peer_burn(pp_peer_t *peer);
/* Whether a verdict or error `err` is the peer's fault (see pp_release): false for 0,
 * PP_ENOREUSE, UV_EOF, PP_ECLOSED, cancelations and local errors. */
bool pp__err_blames(int err);
/* Count a failure of `peer` (`in_use`: of a conn in use — a broken conn, a failed ping; else a
 * failed connect attempt or handshake). At eject_after in a row the peer is ejected, when
 * eject_max_percent allows; otherwise it backs off briefly. A local error counts nothing. */
void pp__peer_failed(pp_peer_t *peer, int err, bool in_use);
/* A success (a connect, a healthy release): ends a long-enough-past run of ejections. */
void pp__peer_succeeded(pp_peer_t *peer);
/* End `peer`'s ejection now (its time passed, a connect succeeded, or it burned). */
void pp__eject_end(pp_peer_t *peer);
int64_t pp__peer_ejected_until_unix(const pp_peer_t *peer);
void pp__hold_timer_arm(pp_pool_t *pool);
/* End the ejections whose time has passed (amortised O(log n) each). */
void pp__ejections_refresh(pp_pool_t *pool);
/* Plan a probe for a held peer that once connected (no-op when probes are off or useless). */
void pp__probe_schedule(pp_peer_t *peer);
void pp__probe_cancel(pp_peer_t *peer);
void pp__health_init(pp_pool_t *pool);
/* 0 when an acquire for `peer` could be served, else its fail-fast code (pp_peer_check). */
int pp__peer_fail_code(pp_peer_t *peer);
/* Deliver a peer event to the policy's hook, if any. */
void pp__peer_event(pp_peer_t *peer, pp_peer_event_t event);

/* ---- cause.c --------------------------------------------------------------------------- */
/* Record in `lease` why it fails with `code`, about `peer` (NULL: an acquire for any peer, or
 * no peer in particular). Call it while the lease is still queued (waiters_ahead). */
void pp__cause_fill(pp_lease_t *lease, pp_peer_t *peer, int code);
/* For an acquire for any peer that no peer can serve: the code and the peer that tells why
 * (the held peer that returns first), or PP_ENOPEER and NULL. */
int pp__any_fail_code(pp_pool_t *pool, pp_peer_t **peer);

/* ---- hist.c ---------------------------------------------------------------------------- */
/* Inline: the acquire and release hot path observes through these (a few instructions). */
/* PP_NO_OBSERVE (defined only for the benchmark of what observability costs, bench/observe/)
 * compiles the histogram updates and the explain ring out. */
static inline void pp__hist_observe_us(pp_pool_t *pool, pp_hist_kind_t kind, uint64_t us) {
#ifdef PP_NO_OBSERVE
  (void)pool, (void)kind, (void)us;
  return;
#endif
  pp_histogram_t *h = &pool->hist[kind];
  unsigned int i = us <= 1 ? 0 : 64 - (unsigned int)__builtin_clzll(us - 1); /* 2^i >= us */
  if (i > PP_HIST_BUCKETS - 1) i = PP_HIST_BUCKETS - 1;
  h->buckets[i]++;
  h->count++;
  h->sum_us += us;
}
/* An observation of 0 (an acquire granted at once). */
static inline void pp__hist_observe_zero(pp_pool_t *pool, pp_hist_kind_t kind) {
#ifdef PP_NO_OBSERVE
  (void)pool, (void)kind;
  return;
#endif
  pool->hist[kind].buckets[0]++;
  pool->hist[kind].count++;
}
/* Observe the time since `start_ns` (a uv_hrtime() reading). */
void pp__hist_observe_ns(pp_pool_t *pool, pp_hist_kind_t kind, uint64_t start_ns);

/* ---- events.c -------------------------------------------------------------------------- */
/* A slot at the end of the deferred event ring (grown as needed), or NULL when out of memory. */
struct pp__event_s *pp__event_slot(pp_pool_t *pool);
/* Deliver one deferred event (from the pool's check phase). */
void pp__event_deliver(pp_pool_t *pool, const pp_event_t *ev);
void pp__events_init(pp_pool_t *pool); /* starts the leak timer (a pool handle) */
void pp__events_close(pp_pool_t *pool);
/* Record an explain entry (printf-style text). */
void pp__explain(pp_pool_t *pool, const char *kind, pp_peer_t *peer, uint64_t conn_id,
                 const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* Hook points: each records what explain needs and, with an observer, queues the event. */
void pp__ev_conn_open(pp_conn_t *conn);
void pp__ev_conn_close(pp_conn_t *conn, pp_close_reason_t reason);
void pp__ev_eject(pp_peer_t *peer, uint64_t cool_ms);
void pp__ev_eject_refused(pp_peer_t *peer, uint64_t brief_ms);
void pp__ev_burn(pp_peer_t *peer);
void pp__ev_probe(pp_peer_t *peer);
void pp__ev_recover(pp_peer_t *peer);
/* An acquire got `conn` after being dialled for (dialed) or queueing. */
void pp__ev_granted(pp_lease_t *lease, pp_conn_t *conn, bool dialed);
/* An acquire queued behind capacity, or waits for a dial of `target`. */
void pp__ev_queued(pp_lease_t *lease, pp_peer_t *target);
/* An acquire failed (its cause is filled). */
void pp__ev_failed(pp_lease_t *lease);
/* A lease reported as leaked was released after `held_ms`. */
void pp__ev_unleak(pp_lease_t *lease, pp_conn_t *conn, uint64_t held_ms);

/* ---- warm.c: min_idle ------------------------------------------------------------------ */
/* The min_idle `peer` keeps: its own, or the pool's. */
static inline int pp__warm_min(const pp_peer_t *peer) {
  return peer->min_idle >= 0 ? peer->min_idle : peer->pool->opts.min_idle;
}
void pp__warm_init(pp_pool_t *pool); /* inits warm_timer and the lists */
/* `peer` may have fewer idle conns than its min_idle: dial for it on a later tick. */
void pp__warm_need(pp_peer_t *peer);
/* Cheap check for the hot path: call pp__warm_need only when idle conns fell short. */
static inline void pp__warm_check(pp_peer_t *peer) {
  if (peer->idle < pp__warm_min(peer)) pp__warm_need(peer);
}
/* `conn` closed (not the pool): min_idle may want a replacement. One that ended unused, hung up
 * on by its server or failed on this machine (out of fds), holds the peer's min_idle dials back,
 * longer each time in a row, until a lease shows the peer serves: no dial loop. */
void pp__warm_closed(pp_conn_t *conn, pp_close_reason_t reason);
/* A lease of one of `peer`'s conns: its conns are of use, min_idle dials need no holding back. */
static inline void pp__warm_lent(pp_conn_t *conn) {
  conn->peer->warm_streak = 0;
  conn->peer->warm_hold = 0;
}
/* The idle sweep found `conn` past idle_timeout: keep it (moved to pool->warm_idle) when its
 * peer would fall below min_idle; returns whether it was kept. */
bool pp__warm_keep(pp_conn_t *conn);
/* The longest-idle conn (idle list first, then the kept ones), or NULL. */
pp_conn_t *pp__idle_oldest(pp_pool_t *pool);

/* ---- drain.c: removal, drain, graceful close ------------------------------------------- */
/* How a conn of a draining peer closes: "removed" or "drained". */
pp_close_reason_t pp__drain_reason(const pp_peer_t *peer);
/* Free the removed peers nothing needs any more (run at the end of a deferred pass). */
void pp__peers_reap(pp_pool_t *pool);
/* During a graceful close: whether a lease is still held (maybe on a conn closed under it). */
bool pp__drain_leases_left(pp_pool_t *pool);
/* Free every removed peer (the pool's end). */
void pp__peers_free_removed(pp_pool_t *pool);
/* pool.c: close every conn now, detaching leases (pp_pool_close's work, and a drain's end). */
void pp__close_all_conns(pp_pool_t *pool);
/* pool.c: stop the pool's timers and answer waiters and notices with PP_ECLOSED. */
void pp__close_begin(pp_pool_t *pool);
/* peer.c: take `peer` out of the table, the insertion list and the state counts. */
void pp__peer_unlink(pp_peer_t *peer);
/* notice.c: fire the armed notices for `peer` with `status`. */
void pp__fire_peer_notices(pp_pool_t *pool, pp_peer_t *peer, int status);
/* events.c: explain entries about `peer` keep their text and forget the pointer. */
void pp__explain_forget(pp_pool_t *pool, pp_peer_t *peer);
/* events.c: whether a queued event is about `peer`. */
bool pp__events_mention(pp_pool_t *pool, pp_peer_t *peer);
/* tls.c: free the peer's TLS state (a removed peer's end). */
void pp__tls_peer_free(pp_peer_t *peer);

/* ---- addr.c ---------------------------------------------------------------------------- */
/* Parse `addr` into a canonical string (malloc'd) and, for TCP, a sockaddr. */
int pp__addr_parse(const char *addr, char **canonical, struct sockaddr_storage *sa, bool *is_pipe,
                   const char **why);

/* ---- conn.c ---------------------------------------------------------------------------- */
int pp__conn_dial(pp_peer_t *peer, pp_lease_t *owner, pp_conn_t **out);
void pp__conn_close(pp_conn_t *conn, pp_close_reason_t reason);
void pp__conn_lease(pp_conn_t *conn, pp_lease_t *lease);
void pp__conn_unlease(pp_conn_t *conn, pp_lease_t *lease);
void pp__conn_deliver_kept(pp_conn_t *conn);
bool pp__conn_lendable(const pp_conn_t *conn);
/* A lease ended (after pp__conn_unlease) with the holder's verdict `status`; drops the
 * lease's reference. */
void pp__conn_released(pp_conn_t *conn, int status);
/* A conn's holders, Redis-style: each open (or closing) handle, each lease, a pending or
 * running delivery to its reader, and whoever calls out (a hook) while the conn must stay.
 * pp__conn_unref frees it when the last holder goes; that is always after pp__conn_close,
 * since the timer's reference is only dropped by its close callback. */
static inline void pp__conn_ref(pp_conn_t *conn) {
  conn->refs++;
}
void pp__conn_unref(pp_conn_t *conn);
/* Take `lease` off `conn` and out of every count it was in (the conn's, its peer's, the pool's
 * active gauge); the lease's reference stays with the caller, to drop with pp__conn_unref.
 * Shared by a release (pp__conn_unlease) and the pool's close (pp__close_all_conns). */
void pp__lease_detach(pp_conn_t *conn, pp_lease_t *lease);
/* Whether an unleased conn has idled `idle_ms` (> 0) and a ping hook is installed. */
bool pp__conn_needs_ping(const pp_conn_t *conn, uint64_t idle_ms);
void pp__conn_ping(pp_conn_t *conn);
void pp__conn_io_error(pp_conn_t *conn, int err);
/* Count I/O on `conn` (`add`: what went through just now) for the conn, its peer and the pool. */
void pp__count_io(pp_conn_t *conn, pp__io_t add);
/* Dial `peer` once, now, for no waiter: a probe of a held peer. */
int pp__conn_probe(pp_peer_t *peer);

/* ---- acquire.c ------------------------------------------------------------------------- */
/* A conn became usable (connected, released, pinged): serve its owner or the next waiter,
 * or fire notices. */
void pp__conn_available(pp_conn_t *conn);
/* A conn slot opened (a conn closed, a peer was added): start dials for waiters that can
 * use it, and fire notices. */
void pp__capacity_opened(pp_pool_t *pool);

/* ---- waiter.c -------------------------------------------------------------------------- */
void pp__queue_init(pp__queue_t *q);
void pp__waiters_init(pp_pool_t *pool); /* the queues, the deadline heap and its timer */
/* Queue `lease` (state WAITING) at its priority, with a deadline `timeout` ms away (> 0). */
void pp__enqueue(pp_pool_t *pool, pp_lease_t *lease, int64_t timeout);
/* Take a queued `lease` out of its queue and the deadline heap; a dial it owns goes on. */
void pp__dequeue(pp_pool_t *pool, pp_lease_t *lease);
/* The first waiter of `q` in service order; with `without_dial`, the first that owns no dial. */
pp_lease_t *pp__queue_first(pp__queue_t *q, bool without_dial);
/* Whether `a` is served before `b` (NULL is served last). */
bool pp__served_before(const pp_lease_t *a, const pp_lease_t *b);
/* A dial ended without a conn: tell its owner (an acquire for any peer keeps waiting, for
 * another peer, unless the error was local). */
void pp__dial_failed(pp_conn_t *conn, int status);
/* End a pending lease with `status` (cause recorded about `peer`, see pp__cause_fill). */
void pp__lease_fail(pp_lease_t *lease, int status, pp_peer_t *peer);
void pp__lease_complete(pp_lease_t *lease, int status);
void pp__fail_all_waiters(pp_pool_t *pool, int status);
void pp__fail_peer_waiters(pp_peer_t *peer, int status);
/* Answer the waiters that nothing can serve any more (their peer burned, ejected, backing off
 * with no conn, aged out; for any peer: no peer can serve) with their fail-fast code. */
void pp__fail_hopeless_waiters(pp_pool_t *pool);
/* Whether some peer not burned or ejected holds a conn or may be dialled now. */
bool pp__any_peer_could_serve(pp_pool_t *pool);
/* Acquires ahead of `lease` in its queue (it must be queued). */
int pp__waiters_ahead(pp_lease_t *lease);

/* ---- notice.c -------------------------------------------------------------------------- */
/* Fire armed notices: all of them with an error status; with 0, those whose peer (or any
 * peer) has capacity now. */
void pp__fire_notices(pp_pool_t *pool, int status);

/* ---- pipeline.c ------------------------------------------------------------------------ */
/* Bytes read on a conn: whole replies go to its requests. Returns false when the conn has no
 * request waiting (the bytes are the raw reader's, or a late reply). */
bool pp__pipe_input(pp_conn_t *conn, const char *data, size_t len);
/* The conn closes (or its attempt failed): its requests fail. */
void pp__pipe_closed(pp_conn_t *conn);
void pp__pipe_free(pp_conn_t *conn);
/* From the defer queue: request callbacks queued before this pass, then every conn's write. */
void pp__pipe_run_deferred(pp_pool_t *pool);
void pp__pipe_flush_all(pp_pool_t *pool);
bool pp__pipe_pending(const pp_pool_t *pool);

/* ---- policy.c -------------------------------------------------------------------------- */
uint64_t pp__random(pp_pool_t *pool); /* xorshift64*: jitter */
/* Room for `n` candidate pointers, reused by every decision (NULL when out of memory). */
void **pp__scratch(pp_pool_t *pool, int n);
/* dialing: 0 = among peers with a usable conn; 1 = among peers that may be dialled;
 * 2 = among dialable peers with no conn at all (target_peers maintenance). */
pp_peer_t *pp__select_peer(pp_pool_t *pool, int dialing, const char *key);
/* The route hook's owner for `key` (NULL: no hook, no key, or fall back). */
pp_peer_t *pp__route(pp_pool_t *pool, const char *key);
pp_conn_t *pp__select_conn(pp_peer_t *peer, const char *key);
/* >= 0 ms to wait, or -1 to burn. */
int64_t pp__backoff(pp_peer_t *peer, int attempt, int err);

#endif
