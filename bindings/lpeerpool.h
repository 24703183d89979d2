/* The Lua 5.4 module `peerpool`: shared declarations of the binding's files. The binding only
 * uses the engine's public header. */
#ifndef LPEERPOOL_H
#define LPEERPOOL_H

#include <lauxlib.h>
#include <stdbool.h>
#include <lua.h>

#include "peerpool.h"

#define LPP_POOL "peerpool.pool"
#define LPP_CONN "peerpool.conn"

/* The pool and conn metatables are also kept under these static keys: luaL_checkudata finds a
 * metatable by name (a C string turned into a Lua string on every call, about 300
 * instructions); on the acquire path one lua_rawgetp does. */
extern const char lpp_pool_mt_key, lpp_conn_mt_key;

/* The userdata at idx if its metatable is the one under `key`, else NULL (never raises). */
static inline void *lpp_toudata(lua_State *L, int idx, const void *key) {
  void *u = lua_touserdata(L, idx);
  if (u == NULL || !lua_getmetatable(L, idx)) return NULL;
  lua_rawgetp(L, LUA_REGISTRYINDEX, key);
  int same = lua_rawequal(L, -1, -2);
  lua_pop(L, 2);
  return same ? u : NULL;
}
#define LPP_NOTICE "peerpool.notice"
#define LPP_VIEW "peerpool.view"
#define LPP_HOOK_RUN "peerpool.hook_run"

/* Hooks, once: XX(ENUM, name, async, budget factor, policy). A sync hook answers within its
 * call; an async one runs as a coroutine and may wait on I/O (its conn, the seed's lookups).
 * Each call may run hook_budget x factor instructions. policy: set by a policy table (else by
 * an option: framing). peerpool.hooks, the per-hook counters and load_policy's checks derive
 * from it (docs/engine.md: how to add a hook). */
#define LPP_HOOK_MAP(XX)                \
  XX(SELECT_PEER, select_peer, 0, 1, 1) \
  XX(SELECT_CONN, select_conn, 0, 1, 1) \
  XX(BACKOFF, backoff, 0, 1, 1)         \
  XX(SEED, seed, 1, 10, 1)              \
  XX(HANDSHAKE, handshake, 1, 10, 1)    \
  XX(PING, ping, 1, 10, 1)              \
  XX(ROUTE, route, 0, 1, 1)             \
  XX(PEER_EVENT, peer_event, 0, 1, 1)   \
  XX(FRAMING, framing, 0, 1, 0)
enum {
#define XX(u, l, async, factor, policy) LPP_HOOK_##u,
  LPP_HOOK_MAP(XX)
#undef XX
      LPP_HOOK_COUNT
};

/* Per Lua state: the live pools, and the sentinel whose __gc closes them at lua_close before
 * luv's loop finaliser walks the loop (which would mistake our handles for its own). */
/* Records of one size kept for reuse, at most LPP_RECYCLE_MAX (lrequest.c): a freed record's
 * first bytes link it to the next. */
typedef struct {
  void *head;
  int n;
} lpp_recycle_t;

typedef struct lpp_state_s {
  uv_loop_t *loop;
  lua_Integer wait_serial;  /* the last wait id handed out (lwait.c) */
  lua_State *L;             /* the main thread */
  struct lpp_pool_s *pools; /* open pool userdata */
  int engine_pools;         /* engine pools not yet freed (closing ones included) */
  int shutting_down;
  uv_timer_t *later_timer; /* runs finalisers put off by lpp_finalize_later */
  void *alloc_ud;          /* the budget allocator's record (lsandbox.c) */
  lpp_recycle_t reqs;      /* requests kept for reuse (lrequest.c) */
  lpp_recycle_t calls;     /* pool:request's calls kept for reuse (lrequest.c) */
} lpp_state_t;

/* A coroutine waiting inside the API, and which of its waits this is (lwait.c). */
typedef struct {
  int co_ref;      /* the coroutine, or LUA_NOREF */
  lua_State *co;   /* the same, while co_ref anchors it */
  lua_Integer id;  /* the wait's id once it yielded, else 0 */
  const void *obj; /* the object its yielding frame holds (see lwait.c) */
} lpp_wait_t;

/* A wait with a deadline, in a list kept in deadline order whose one timer serves them all
 * (lwait.c). Embedded in what waits (a conn's receive, a pool:request call). */
typedef struct lpp_timed_s {
  struct lpp_timed_s *next, *prev;
  uint64_t at; /* loop ms when the wait times out; 0 = not listed */
} lpp_timed_t;
typedef struct {
  lpp_timed_t *head, *tail;
  uv_timer_t *timer; /* made on first use (lpp_timer), dropped at the pool's close */
} lpp_timed_list_t;
#define LPP_CONTAINER(ptr, type, field) ((type *)((char *)(ptr)-offsetof(type, field)))

/* One per pool userdata. The engine pool outlives the userdata until its close callback. */
typedef struct lpp_pool_s {
  lpp_state_t *st;
  pp_pool_t *pool;          /* NULL once closed */
  lua_State *L;             /* the main thread */
  int state_refs;           /* registry ref of the table of on("state") callbacks */
  int64_t io_timeout;       /* ms for conn:receive(); 0 = none */
  int64_t max_receive;      /* bytes a receive may wait for (a line, "*a", a count) */
  int64_t max_send_queue;   /* bytes queued past the socket before a send waits */
  uint64_t leaked_leases;   /* conns collected while still leased */
  uint64_t callback_errors; /* Lua errors raised by callbacks and coroutines */
  /* policy */
  int policy_ref;        /* the active policy table, or LUA_NOREF */
  char policy_name[256]; /* its path (or "table"), for logs */
  lua_State *hook_L;     /* a thread of its own for synchronous hooks */
  int hook_L_ref;
  int64_t budget;      /* instructions a synchronous hook may run */
  int64_t hook_memory; /* bytes a hook call may allocate */
  int views_ref;       /* table of PP_CANDIDATES_MAX reusable view userdata */
  int cand_ref;        /* reusable candidates table */
  uint64_t hook_calls[LPP_HOOK_COUNT], hook_errors[LPP_HOOK_COUNT];
  uint64_t hook_logged_at[LPP_HOOK_COUNT], hook_suppressed[LPP_HOOK_COUNT];
  int in_engine_call;     /* > 0 while Lua runs inside an engine call (a hook's synchronous
                             part): acquire, release and close raise; see
                             lpp_enter_engine_call */
  int in_sync_hook;       /* > 0 inside select_peer/select_conn/backoff: add_peer raises too */
  uv_timer_t *book_timer; /* periodic address-book save (ours, not luv's: see lpool.c) */
  /* Receives waiting with an io_timeout, oldest first: one io_timeout for the whole pool makes
   * their deadlines come in start order, so one timer armed for the head serves them all. */
  lpp_timed_list_t receives; /* of lpp_conn_t, by their `timed` */
  /* pool:request's fast path (lrequest.c): its calls waiting for replies, oldest first (one
   * io_timeout: deadlines in start order), and their one timer */
  lpp_timed_list_t calls; /* of lpp_call_t (lrequest.c), by their `timed` */
  int book_fn_ref;
  int framed;      /* the pool has framing: send/receive go through requests (lrequest.c) */
  int framing_ref; /* framing = function(buf): the function, or LUA_NOREF */
  pp_framing_t framing;
  struct lpp_pool_s *next, *prev; /* live pools, for pools() and the close-at-exit sentinel */
} lpp_pool_t;

/* A conn object: a lease while pending, then the hold on a conn; plus a receive buffer. */
typedef struct lpp_conn_s {
  pp_lease_t lease;
  lpp_pool_t *owner; /* the pool userdata's struct (its user value keeps it alive) */
  int self_ref;      /* registry ref keeping this userdata alive while pending/reading */
  lpp_wait_t wait;   /* the coroutine waiting in acquire/receive */
  int cb_ref;        /* the acquire callback, or LUA_NOREF */
  int state;         /* LPP_CONN_* */
  /* receive */
  char *buf;
  size_t off, len, cap; /* len unread bytes at buf + off */
  size_t scanned;       /* of those, how many are known to hold no newline */
  int tainted;          /* a receive timed out or overflowed: a reply may be on its way */
  int unanswered;       /* bytes were sent since the last receive returned data */
  /* send (lsend.c) */
  struct write_s *writes; /* queued writes, newest first */
  lpp_wait_t send_wait;   /* the coroutine waiting for the send queue to drain */
  int send_self_ref;      /* keeps this object alive meanwhile */
  size_t send_len;        /* what that send returns */
  uv_timer_t *send_timer; /* io_timeout of that wait */
  int want_kind;          /* 0 none, 'l' line, 'n' bytes, 'a' all, 'u' up to delim, 'r' reply */
  size_t want_n;
  const char *delim; /* receive_until's delimiter (anchored in user value 3 meanwhile) */
  size_t delim_len;
  size_t dscanned;             /* unread bytes known to start no delimiter, in this receive_until */
  int64_t send_ms, read_ms;    /* conn:settimeouts; -1: the pool's io_timeout */
  uint64_t reused;             /* leases of this conn before this one (conn:reused()) */
  int read_error;              /* stream end/error seen, 0 = none */
  struct lpp_reader_s *reader; /* set while the engine may call our reader (see lconn.c) */
  lpp_timed_t timed;    /* a waiting receive's deadline, in the pool's list of timed receives */
  pp_conn_t *hook_conn; /* with LPP_CONN_HOOK */
  int hook_kind;        /* LPP_HOOK_HANDSHAKE or LPP_HOOK_PING */
  char peer_addr[PP_ADDR_MAX];
  struct lpp_req_s *rq_head, *rq_tail; /* with framing: requests sent, replies not yet received */
  uint64_t leak_stack; /* with leak_threshold: the acquiring stack's key in the pool's stack
                          cache (lobserve.c); 0 = not kept */
} lpp_conn_t;

/* A release status: close the conn without counting a failure of its peer. */
#define LPP_NOREUSE PP_ENOREUSE
/* LPP_CONN_HOOK: a conn lent to a handshake/ping hook (no lease: `hook_conn`). */
enum { LPP_CONN_PENDING = 1, LPP_CONN_LEASED, LPP_CONN_DONE, LPP_CONN_HOOK };

typedef struct {
  pp_notice_t notice;
  int self_ref;    /* alive while armed */
  lpp_wait_t wait; /* coroutine in notice:wait() */
  int cb_ref;      /* notice:on_free(fn) */
  int fired;       /* 0 armed, 1 fired with status */
  int cancelled;   /* cancel() was called */
  int status;
  uv_timer_t *timer; /* wait(ms) */
  lpp_pool_t *owner;
} lpp_notice_t;

/* lwait.c: a coroutine waits in the API with lpp_wait_begin (anchors it; may raise) and
 * `return lpp_wait_yield(L, st, obj, w)` (arms the wait and yields; `obj`, the stack index of
 * the object waited on, stays on the yielding frame: alive, and part of the proof), or
 * lpp_wait_cancel if it cannot wait after all. An answer takes it with lpp_wait_take: the coroutine
 * (pushed on L, anchored there) if it still waits in this wait, else NULL (the program resumed it
 * by hand, or closed it, or it never yielded: nobody takes the answer; still pop the pushed value).
 * lpp_wait_active: whether a wait is still owed its answer. */
void lpp_wait_begin(lua_State *L, lpp_wait_t *w);
void lpp_wait_cancel(lua_State *L, lpp_wait_t *w);
int lpp_wait_yield(lua_State *L, lpp_state_t *st, int obj, lpp_wait_t *w);
/* lpp_wait_yield with a continuation `k`, run however the coroutine is resumed (lsleep.c). */
int lpp_wait_yieldk(lua_State *L, lpp_state_t *st, int obj, lpp_wait_t *w, lua_KFunction k);
lua_State *lpp_wait_take(lua_State *L, lpp_wait_t *w);
bool lpp_wait_active(lua_State *L, const lpp_wait_t *w);
/* The same for a record that owns registry slot `slot` (luaL_ref'd once, false between waits)
 * and anchors each wait's coroutine there: begin (never raises), take, cancel (both leave the
 * slot holding false, and w->co_ref LUA_NOREF). */
void lpp_wait_begin_kept(lua_State *L, lpp_wait_t *w, int slot);
lua_State *lpp_wait_take_kept(lua_State *L, lpp_wait_t *w);
void lpp_wait_cancel_kept(lua_State *L, lpp_wait_t *w);
/* Waits with a deadline: lpp_timed_add lists `t` to time out at loop ms `at` (> 0), in deadline
 * order, walking back from the tail (deadlines that come in start order, as with one
 * io_timeout, append at once), and arms the list's timer (with `cb`, its data `p`) when `t`
 * became the first. lpp_timed_remove takes `t` off (no-op when not listed). lpp_timed_arm arms
 * the timer for the first deadline, if any (after `cb` ended the due waits). */
void lpp_timed_add(lua_State *L, lpp_pool_t *p, lpp_timed_list_t *l, lpp_timed_t *t, uint64_t at,
                   uv_timer_cb cb);
void lpp_timed_remove(lpp_timed_list_t *l, lpp_timed_t *t);
void lpp_timed_arm(lua_State *L, lpp_pool_t *p, lpp_timed_list_t *l, uv_timer_cb cb);

/* lsleep.c: peerpool.sleep(ms) */
void lpp_sleep_open(lua_State *L);
int lpp_l_sleep(lua_State *L);

/* lbook.c: the address book's C functions, into the module table on top of the stack */
int lpp_book_open(lua_State *L);

/* module.c */
LUAMOD_API int luaopen_peerpool(lua_State *L);
lpp_state_t *lpp_state(lua_State *L);
void lpp_pools_add(lpp_pool_t *p);
void lpp_pools_remove(lpp_pool_t *p);
/* Push the error tuple nil, code, message; returns 3. */
int lpp_push_error(lua_State *L, int err, const char *detail);
/* Resume coroutine `co` with the `nargs` values on top of its stack. Errors are reported with
 * a traceback and counted on `pool` (may be NULL); they never propagate. The coroutine is
 * anchored while it runs; a hook's coroutine runs under its budget and ends its hook call. */
void lpp_resume(lua_State *L, lua_State *co, int nargs, lpp_pool_t *pool);
/* Push the thread held by registry ref *ref onto L (anchoring it), drop the ref, return it. */
lua_State *lpp_take_thread(lua_State *L, int *ref);
/* PEERPOOL_GC_STRESS=1: a full collection at every entry from C into Lua. */
extern int lpp_gc_stress;
/* Call the function below `nargs` arguments on L's stack in protected mode, the same way. */
void lpp_call(lua_State *L, int nargs, lpp_pool_t *pool);
/* Send a report line to peerpool.on_error's function, or to stderr. */
void lpp_emit(lua_State *L, const char *text);
/* Report a Lua error message (with traceback already attached). */
void lpp_report(lua_State *L, const char *what, const char *msg, lpp_pool_t *pool);
/* A finaliser that would change a pool in the middle of an engine call keeps the object
 * alive (resurrects it) and runs again from the loop, once the engine call is over. */
void lpp_finalize_later(lua_State *L, int idx);
/* Drop a registry reference and mark it LUA_NOREF. */
void lpp_unref(lua_State *L, int *ref);
/* The metatable `name` for a kind of userdata, made on first use (luaL_newmetatable) with the
 * metamethods in `meta` and, when `methods` is not NULL, an __index table holding them. Leaves
 * the metatable on the stack; returns 1 when it was made now, 0 when it existed. */
int lpp_new_class(lua_State *L, const char *name, const luaL_Reg *methods, const luaL_Reg *meta);
/* The timer in *slot (created on first use, with `data`); raises on out of memory. Our timers
 * are malloc'd, so they outlive the userdata that uses them while their close completes. */
uv_timer_t *lpp_timer(lua_State *L, lpp_pool_t *p, uv_timer_t **slot, void *data);
/* Close the timer in *slot (its callback will not run) and clear the slot. */
void lpp_timer_drop(uv_timer_t **slot);
/* Close a malloc'd handle whose callback must not run any more, and free it once closed. */
void lpp_handle_drop(uv_handle_t *h);
/* The longest wait in ms the binding takes (a year): longer is surely a mistake, a unit slip
 * (seconds for ms, or ns). */
#define LPP_MAX_MS (365.0 * 24 * 3600 * 1000)
/* Get a timeout in ms: nil → dflt; a number >= 0 and <= LPP_MAX_MS; else raise naming `what`. */
int64_t lpp_opt_ms(lua_State *L, int idx, const char *what, int64_t dflt);

/* lpool.c */
void lpp_pool_open(lua_State *L);
int lpp_l_new(lua_State *L);          /* peerpool.new(opts) */
int lpp_l_pools(lua_State *L);        /* peerpool.pools() */
int lpp_l_options(lua_State *L);      /* peerpool.options() */
int lpp_l_stats_fields(lua_State *L); /* peerpool.stats_fields() */
/* The pool userdata's struct of an engine pool, or NULL once it is gone (or shutting down). */
lpp_pool_t *lpp_pool_of(pp_pool_t *pool);

/* lobserve.c: histograms, events (pool:on/off), leak reports, explain */
void lpp_observe_open(lua_State *L);
/* Push stats().histograms. */
void lpp_push_histograms(lua_State *L, lpp_pool_t *p);
/* At an acquire (the new conn object at the top): keep its traceback if leak_threshold is set. */
void lpp_leak_watch(lua_State *L, lpp_pool_t *p, struct lpp_conn_s *c);
/* Push the pool userdata of `p` (nil if it is gone). */
void lpp_push_pool(lua_State *L, lpp_pool_t *p);
lpp_pool_t *lpp_check_pool(lua_State *L, int idx);
/* lpp_check_pool for calls that change the pool: refused inside a synchronous policy hook,
 * where the engine is in the middle of a decision. */
lpp_pool_t *lpp_check_pool_mutable(lua_State *L, int idx);
/* Push the peer's { source, tags } record (or nil); returns its Lua type. */
int lpp_push_peer_meta(lua_State *L, pp_peer_t *peer);

/* lconn.c */
void lpp_conn_open(lua_State *L);
/* The engine conn behind a conn object (leased or lent to a hook), or NULL. */
pp_conn_t *lpp_conn_of(lpp_conn_t *c);
/* luaL_checkudata for a conn that is leased or lent to a hook; raises otherwise. */
lpp_conn_t *lpp_check_conn(lua_State *L, int idx);
/* Push a conn object lent to a handshake/ping hook. */
lpp_conn_t *lpp_push_hook_conn(lua_State *L, lpp_pool_t *p, pp_conn_t *conn, int kind);
/* The hook finished with its conn: hand it back to the engine (once), ok or failed. */
void lpp_hook_conn_done(lpp_conn_t *c, int ok);
/* The engine gave up on a hook's conn: end its waits, make it unusable. */
void lpp_hook_conn_dead(lpp_conn_t *c);

/* lsandbox.c: what hook code may do (see the file's head comment) */
typedef struct lpp_budget_s {
  int64_t steps_left; /* instructions left in this hook call */
  size_t mem_used;    /* bytes the call allocated and has not freed */
  size_t mem_max;
} lpp_budget_t;
void lpp_budget_init(lpp_budget_t *b, int64_t instructions, size_t memory);
/* Charge what runs from now on to `b` (NULL: nothing); returns the budget to restore. */
lpp_budget_t *lpp_budget_enter(lpp_budget_t *b);
void lpp_budget_leave(lpp_budget_t *prev);
/* Whether hook code is running now (a budget is being charged). */
int lpp_in_hook(void);
/* Install the budget's count hook on a thread that runs hook code. */
void lpp_budget_arm(lua_State *thread);
/* At luaopen: guard the standard functions, wrap the allocator (returns its record). */
void *lpp_sandbox_open(lua_State *L);
/* At the state's end: put the original allocator back. */
void lpp_sandbox_close(lua_State *L, void *alloc_ud);

/* lring.c */
int lpp_l_ring(lua_State *L); /* peerpool.ring([vnodes]) */

/* lsend.c */
int lpp_l_send(lua_State *L); /* conn:send(data [, callback]) */
/* A coroutine waiting in send goes on (err 0: its data is queued within the mark). */
void lpp_send_wake(lpp_conn_t *c, int err);
/* The conn object goes: its queued writes forget it, its timer closes. */
void lpp_send_detach(lpp_conn_t *c);

/* lrequest.c: send/receive on conns of a pool with framing */
/* framing = "line" | "resp" | "length" | { kind = "length", ... } | function(buf): read the
 * value at idx into p->framing (raises naming the field). */
void lpp_read_framing(lua_State *L, int idx, lpp_pool_t *p);
/* conn:send(data) with framing: one request; returns what send returns. */
int lpp_req_send(lua_State *L, lpp_conn_t *c, pp_conn_t *conn, int data_idx);
/* Whether the lease's oldest request has its answer. */
int lpp_req_ready(lpp_conn_t *c);
/* Push the oldest request's answer (reply, or nil, code, detail) and forget it; returns how
 * many values were pushed. */
int lpp_req_take(lua_State *L, lpp_conn_t *c);
/* The receive waiting for the oldest request timed out: give up on it (its conn breaks). */
void lpp_req_timed_out(lpp_conn_t *c);
/* The conn object stops taking replies (released, collected): its requests forget it. */
void lpp_req_detach_all(lua_State *L, lpp_conn_t *c);
/* Free the kept requests (at the state's end). */
void lpp_req_free_all(lpp_state_t *st);
/* pool._request_method(general): pool:request as a C function (lrequest.c) that takes the
 * fast path when it can (a coroutine's request without opts or callback, a conn lent at once or
 * after a wait) and otherwise calls general(self, peer, data, opts, cb) (peerpool.lua's). */
int lpp_l_request_method(lua_State *L);
/* Push nil, code, detail for an acquire of `lease` that failed with `err` (lconn.c); with busy
 * the detail is a notice armed for `peer`. Returns 3. */
int lpp_push_acquire_error(lua_State *L, lpp_pool_t *p, const pp_lease_t *lease, pp_peer_t *peer,
                           int err);
/* lconn.c: the answer a receive waits for has come. */
void lpp_receive_wake(lpp_conn_t *c);

/* lview.c: peer views (tables) and candidate views (userdata valid during one hook call) */
/* Push a peer's view table: the engine's figures plus its source and tags. */
void lpp_push_peer_view(lua_State *L, pp_peer_t *peer);
/* The candidate views of pool `p`: a table of PP_CANDIDATES_MAX, as a registry reference. */
int lpp_views_new(lua_State *L, lpp_pool_t *p);
/* Fill p's candidates table (p->cand_ref) with n views, valid until lpp_views_invalidate, and
 * push it on p->hook_L. */
void lpp_views_fill(lpp_pool_t *p, pp_peer_t *const *peers, pp_conn_t *const *conns, int n);
void lpp_views_invalidate(lpp_pool_t *p, int n);
/* The 0-based slot of the valid candidate view at `idx`, or -1. */
int lpp_view_slot(lua_State *L, int idx);
void lpp_view_open(lua_State *L); /* the peerpool.view metatable */

/* lpolicy.c */
/* Call a synchronous hook already pushed on p->hook_L with nargs arguments (budgeted,
 * contained); leaves one result on p->hook_L, or returns 0 (the error counted and logged). */
int lpp_call_sync_hook(lpp_pool_t *p, int hook, int nargs);
void lpp_policy_open(lua_State *L);
void lpp_policy_init(lua_State *L, lpp_pool_t *p); /* at pool creation */
void lpp_policy_free(lua_State *L, lpp_pool_t *p); /* at pool close */
#define LPP_IN_HOOK_ERROR \
  "a policy hook cannot change its pool (acquire, release, add_peer, close...)"
/* Bracket Lua code run inside an engine call: pool changes raise, and finalisers that would
 * change the pool are put off. */
int lpp_enter_engine_call(lpp_pool_t *p, int may_add_peers);
void lpp_leave_engine_call(lpp_pool_t *p, int may_add_peers);
/* Count a hook failure and log it (at most once a second per hook); _on: from thread L. */
void lpp_hook_error(lpp_pool_t *p, int hook, const char *msg);
void lpp_hook_error_on(lua_State *L, lpp_pool_t *p, int hook, const char *msg);
extern const char *const lpp_hook_names[LPP_HOOK_COUNT];
extern const int lpp_hook_async[LPP_HOOK_COUNT];
extern const int lpp_hook_budget_factor[LPP_HOOK_COUNT];
extern const int lpp_hook_policy[LPP_HOOK_COUNT];
int lpp_l_set_seed_ctx(lua_State *L); /* peerpool._set_seed_ctx(fn) */
/* A hook call running as a coroutine (handshake, ping, seed). */
typedef struct {
  lpp_budget_t budget;
  int hook;
} lpp_hook_run_t;
/* Push the hook run of coroutine co (or nil) and return it (or NULL). */
lpp_hook_run_t *lpp_hook_run_find(lua_State *L, lua_State *co);
/* The budget of hook coroutine co (NULL if co is not one). */
lpp_budget_t *lpp_hook_budget_of(lua_State *co);
/* Start an acquire for the pool at stack index 1; see pool:acquire in lpool.c. */
int lpp_acquire(lua_State *L, lpp_pool_t *pool, pp_peer_t *peer, const pp_acquire_opts_t *opts,
                int cb_idx);

/* lnotice.c */
void lpp_notice_open(lua_State *L);
/* Arm a notice for `peer` and push it (or push nil if arming failed). */
void lpp_push_notice(lua_State *L, lpp_pool_t *pool, int pool_idx, pp_peer_t *peer);

#endif
