/* Observability beyond counters: pool events for observers (pp_pool_on_event), leak detection
 * (leak_threshold) and the explain ring (pp_pool_explain). Everything here runs off the hot
 * path: an acquire granted an idle conn at once and its release touch none of it (a release
 * checks one field for a leak report). */
#include "internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *pp_event_kind_name(pp_event_kind_t kind) {
  static const char *const names[] = {PP_EVENT_KIND_MAP(PP__ROW_STRING)};
  return pp__name_of(names, PP_EVENT_COUNT, (int)kind);
}

uint64_t pp_conn_id(const pp_conn_t *conn) {
  return conn ? conn->id : 0;
}

void pp_pool_on_event(pp_pool_t *pool, pp_event_cb cb, void *arg) {
  if (pool == NULL) return;
  pool->event_cb = cb;
  pool->event_arg = arg;
}

/* ---- the deferred event ring (shared with state transitions) --------------------------- */

struct pp__event_s *pp__event_slot(pp_pool_t *pool) {
  if (pool->events_len == pool->events_cap) {
    unsigned int cap = pool->events_cap ? pool->events_cap * 2 : 16;
    struct pp__event_s *ev = malloc(cap * sizeof(*ev));
    if (ev == NULL) return NULL; /* An event lost to OOM beats a crash; state stays correct. */
    for (unsigned int i = 0; i < pool->events_len; i++)
      ev[i] = pool->events[(pool->events_head + i) % pool->events_cap];
    free(pool->events);
    pool->events = ev;
    pool->events_cap = cap;
    pool->events_head = 0;
  }
  return &pool->events[(pool->events_head + pool->events_len) % pool->events_cap];
}

void pp__event_deliver(pp_pool_t *pool, const pp_event_t *ev) {
  if (ev->kind == PP_EVENT_STATE && pool->state_cb)
    pool->state_cb(pool, ev->peer, ev->from, ev->to);
  if (pool->event_cb) pool->event_cb(pool, ev, pool->event_arg);
}

static void event_init(pp_pool_t *pool, pp_event_t *ev, pp_event_kind_t kind, pp_peer_t *peer) {
  memset(ev, 0, sizeof(*ev));
  ev->kind = kind;
  ev->peer = peer;
  ev->at = pp_now();
}

/* A new event of `kind` about `peer` in the deferred ring, for the caller to fill in and queue
 * with pp__defer_pool_event; NULL when no observer listens, or when memory ran out (the event
 * is lost, the pool's state stays right). */
static pp_event_t *new_event(pp_pool_t *pool, pp_event_kind_t kind, pp_peer_t *peer) {
  if (pool->event_cb == NULL) return NULL;
  struct pp__event_s *slot = pp__event_slot(pool);
  if (slot == NULL) return NULL;
  event_init(pool, &slot->ev, kind, peer);
  return &slot->ev;
}

/* ---- explain ---------------------------------------------------------------------------- */

enum { LAZY_NONE = 0, LAZY_FAIL, LAZY_WAIT_DIAL, LAZY_WAIT_PEER, LAZY_WAIT_ANY, LAZY_GRANT };

static struct pp__explain_s *explain_next(pp_pool_t *pool, const char *kind, pp_peer_t *peer,
                                          uint64_t conn_id) {
#ifdef PP_NO_OBSERVE
  static struct pp__explain_s scratch; /* recorded nowhere (see internal.h) */
  (void)kind, (void)peer, (void)conn_id;
  if (pool) return &scratch;
#endif
  struct pp__explain_s *x = &pool->explain[pool->explain_next];
  pool->explain_next = (pool->explain_next + 1) % PP_EXPLAIN_MAX;
  if (pool->explain_len < PP_EXPLAIN_MAX) pool->explain_len++;
  x->e.at = pp_now();
  x->e.kind = kind;
  x->e.peer = peer;
  x->e.conn_id = conn_id;
  x->e.repeats = 0;
  x->e.text[0] = '\0';
  x->lazy = LAZY_NONE;
  return x;
}

/* The entry recorded last, or NULL. */
static struct pp__explain_s *explain_last(pp_pool_t *pool) {
  if (pool->explain_len == 0) return NULL;
  return &pool->explain[(pool->explain_next + PP_EXPLAIN_MAX - 1) % PP_EXPLAIN_MAX];
}

void pp__explain(pp_pool_t *pool, const char *kind, pp_peer_t *peer, uint64_t conn_id,
                 const char *fmt, ...) {
#ifdef PP_NO_OBSERVE
  (void)pool, (void)kind, (void)peer, (void)conn_id, (void)fmt;
  return;
#endif
  struct pp__explain_s *x = explain_next(pool, kind, peer, conn_id);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(x->e.text, sizeof(x->e.text), fmt, ap);
  va_end(ap);
}

static const char *addr_of(const pp_peer_t *peer) {
  return peer ? peer->addr : "?";
}

/* Write the text of a lazy entry into out->text. */
static void explain_format(const struct pp__explain_s *x, pp_explain_t *out) {
  char *t = out->text;
  size_t n = sizeof(out->text);
  const int *v = x->v;
  switch (x->lazy) {
    case LAZY_FAIL: {
      pp_lease_t fake;
      memset(&fake, 0, sizeof(fake));
      fake.why_ = x->cause;
      fake.want_ = x->want;
      int len = snprintf(t, n, "acquire failed: ");
      if (len > 0 && (size_t)len < n) pp_lease_describe(&fake, t + len, n - (size_t)len);
      break;
    }
    case LAZY_WAIT_DIAL:
      snprintf(t, n,
               "acquire waits for a new conn to %s: no usable conn (%d/%d conns, %d leases, "
               "client_limit %d); pool %d/%d conns",
               addr_of(x->e.peer), v[0], v[1], v[2], v[3], v[4], v[5]);
      break;
    case LAZY_WAIT_PEER:
      snprintf(t, n,
               "acquire for %s waits behind capacity: %d/%d conns%s, %d leases (client_limit "
               "%d), pool %d/%d conns; %d waiter%s for it now",
               addr_of(x->e.peer), v[0], v[1], v[0] >= v[1] ? " (max_per_peer)" : "", v[2], v[3],
               v[4], v[5], v[6], v[6] == 1 ? "" : "s");
      break;
    case LAZY_WAIT_ANY:
      snprintf(t, n,
               "acquire for any peer waits behind capacity: pool %d/%d conns, %d leased; %d "
               "waiter%s for any peer now",
               v[4], v[5], v[2], v[6], v[6] == 1 ? "" : "s");
      break;
    case LAZY_GRANT:
      if (v[0])
        snprintf(t, n, "acquire got new conn #%llu to %s (%s), dialled for it, after %d ms",
                 (unsigned long long)x->e.conn_id, addr_of(x->e.peer),
                 v[1] == 2   ? "routed by key"
                 : v[1] == 1 ? "named by the acquire"
                             : "chosen by the select_peer policy",
                 v[2]);
      else
        snprintf(t, n,
                 "acquire got conn #%llu of %s (%s) after waiting %d ms behind capacity; now %d "
                 "lease%s on it",
                 (unsigned long long)x->e.conn_id, addr_of(x->e.peer),
                 v[1] == 2   ? "routed by key"
                 : v[1] == 1 ? "named by the acquire"
                             : "chosen by the select_peer policy",
                 v[2], v[3], v[3] == 1 ? "" : "s");
      break;
    default:
      break;
  }
  if (x->e.repeats > 0) {
    size_t len = strlen(t);
    if (len < n) snprintf(t + len, n - len, " (and %u more like it)", x->e.repeats);
  }
}

int pp_pool_explain(pp_pool_t *pool, pp_peer_t *peer,
                    int (*fn)(const pp_explain_t *entry, void *arg), void *arg) {
  if (pool == NULL || fn == NULL) return PP_EINVAL;
  unsigned int start = (pool->explain_next + PP_EXPLAIN_MAX - pool->explain_len) % PP_EXPLAIN_MAX;
  for (unsigned int i = 0; i < pool->explain_len; i++) {
    const struct pp__explain_s *x = &pool->explain[(start + i) % PP_EXPLAIN_MAX];
    if (peer && x->e.peer != peer) continue;
    int rc;
    if (x->lazy == LAZY_NONE && x->e.repeats == 0) {
      rc = fn(&x->e, arg);
    } else {
      pp_explain_t e = x->e; /* formatted into a copy: the ring stays as recorded */
      explain_format(x, &e);
      rc = fn(&e, arg);
    }
    if (rc) return rc;
  }
  return 0;
}

void pp__explain_forget(pp_pool_t *pool, pp_peer_t *peer) {
  for (unsigned int i = 0; i < pool->explain_len; i++) {
    struct pp__explain_s *x = &pool->explain[i];
    if (x->e.peer != peer && x->want != peer && x->cause.peer != peer) continue;
    if (x->lazy != LAZY_NONE || x->e.repeats > 0) {
      pp_explain_t e = x->e;
      explain_format(x, &e); /* the text, while the peer is still there to name */
      memcpy(x->e.text, e.text, sizeof(e.text));
      x->lazy = LAZY_NONE;
      x->e.repeats = 0;
    }
    if (x->e.peer == peer) x->e.peer = NULL;
    x->want = NULL;
    x->cause.peer = NULL;
  }
}

bool pp__events_mention(pp_pool_t *pool, pp_peer_t *peer) {
  for (unsigned int i = 0; i < pool->events_len; i++)
    if (pool->events[(pool->events_head + i) % pool->events_cap].ev.peer == peer) return true;
  return false;
}

static const char *err_name(int err) {
  return err ? pp_err_name(err) : "none";
}

/* ---- hook points ------------------------------------------------------------------------ */

void pp__ev_conn_open(pp_conn_t *conn) {
  pp_pool_t *pool = conn->pool;
  pp_peer_t *peer = conn->peer;
  uint64_t now = pp_now();
  int64_t ms = now > conn->attempt_started ? (int64_t)(now - conn->attempt_started) : 0;
  pp__explain(pool, "conn_open", peer, conn->id,
              "conn #%llu to %s open%s after %d attempt%s (last took %lld ms); peer has %d/%d "
              "conns, pool %d/%d",
              (unsigned long long)conn->id, peer->addr, conn->probe ? " (a probe)" : "",
              conn->attempt, conn->attempt == 1 ? "" : "s", (long long)ms, peer->conns,
              pool->opts.max_per_peer, pool->total, pool->opts.max_total);
  pp_event_t *ev = new_event(pool, PP_EVENT_CONN_OPEN, peer);
  if (ev == NULL) return;
  ev->conn_id = conn->id;
  ev->ms = ms;
  pp__defer_pool_event(pool);
}

void pp__ev_conn_close(pp_conn_t *conn, pp_close_reason_t reason) {
  pp_pool_t *pool = conn->pool;
  pp_peer_t *peer = conn->peer;
  uint64_t now = pp_now();
  int64_t age =
      conn->created_at && (int64_t)now > conn->created_at ? (int64_t)now - conn->created_at : 0;
  int err = conn->broken ? conn->last_error : 0;
  static const char *const why[PP_CLOSE_REASON_COUNT] = {
#define WHY(name, str, text) text,
      PP_CLOSE_REASON_MAP(WHY)
#undef WHY
  };
  pp__explain(pool, "conn_close", peer, conn->id,
              "conn #%llu to %s closed: %s; age %lld ms, %d lease%s; last error %s",
              (unsigned long long)conn->id, peer->addr,
              (unsigned)reason < PP_CLOSE_REASON_COUNT ? why[reason] : "?", (long long)age,
              conn->leases, conn->leases == 1 ? "" : "s", err_name(err));
  pp_event_t *ev = new_event(pool, PP_EVENT_CONN_CLOSE, peer);
  if (ev == NULL) return;
  ev->conn_id = conn->id;
  ev->reason = reason;
  ev->error = err;
  ev->ms = age;
  pp__defer_pool_event(pool);
}

void pp__ev_eject(pp_peer_t *peer, uint64_t cool_ms) {
  pp_pool_t *pool = peer->pool;
  int failures = peer->failures + peer->connect_failures;
  pp__explain(pool, "eject", peer, 0,
              "%s ejected for %llu ms: %d consecutive failures (eject_after %d; %s), last error "
              "%s; ejection #%d in a row; %d of %d peers ejected",
              peer->addr, (unsigned long long)cool_ms, failures, pool->opts.eject_after,
              peer->fail_in_use ? "failures in use" : "failed connects", err_name(peer->last_error),
              peer->eject_streak, pool->nejected, (int)pool->npeers - pool->nburned);
  pp_event_t *ev = new_event(pool, PP_EVENT_EJECT, peer);
  if (ev == NULL) return;
  ev->error = peer->last_error;
  ev->failures = failures;
  ev->ms = (int64_t)cool_ms;
  pp__defer_pool_event(pool);
}

void pp__ev_eject_refused(pp_peer_t *peer, uint64_t brief_ms) {
  pp_pool_t *pool = peer->pool;
  pp__explain(pool, "eject", peer, 0,
              "%s not ejected after %d consecutive failures (last error %s): eject_max_percent "
              "%d%% reached (%d of %d peers ejected); backs off %llu ms instead",
              peer->addr, peer->failures + peer->connect_failures, err_name(peer->last_error),
              pool->opts.eject_max_percent, pool->nejected, (int)pool->npeers - pool->nburned,
              (unsigned long long)brief_ms);
}

void pp__ev_burn(pp_peer_t *peer) {
  pp_pool_t *pool = peer->pool;
  int failures = peer->failures + peer->connect_failures;
  pp__explain(pool, "burn", peer, 0,
              "%s burned: the backoff policy gave up after %d consecutive failures (last error "
              "%s); it is not dialled again until re-added",
              peer->addr, failures, err_name(peer->last_error));
  pp_event_t *ev = new_event(pool, PP_EVENT_BURN, peer);
  if (ev == NULL) return;
  ev->error = peer->last_error;
  ev->failures = failures;
  pp__defer_pool_event(pool);
}

void pp__ev_probe(pp_peer_t *peer) {
  pp_pool_t *pool = peer->pool;
  uint64_t now = pp_now(), hold = pp__peer_hold_until(peer);
  pp__explain(pool, "probe", peer, 0,
              "%s probed (one connect attempt): it is %s for %llu ms more; last error %s",
              peer->addr, peer->ejected ? "ejected" : "backing off",
              (unsigned long long)(hold > now ? hold - now : 0), err_name(peer->last_error));
}

void pp__ev_recover(pp_peer_t *peer) {
  pp__explain(peer->pool, "recover", peer, 0,
              "%s recovered: its ejection ended (%s); %d consecutive failures so far", peer->addr,
              peer->eject_until > pp_now() ? "it connected again" : "its cool-down passed",
              peer->failures + peer->connect_failures);
}

void pp__ev_granted(pp_lease_t *lease, pp_conn_t *conn, bool dialed) {
  pp_pool_t *pool = conn->pool;
  struct pp__explain_s *x = explain_next(pool, "acquire", conn->peer, conn->id);
  uint64_t now = x->e.at; /* (pp_now(), just read) */
  x->lazy = LAZY_GRANT;
  x->v[0] = dialed;
  x->v[1] = lease->want_ ? (lease->key_ && pool->policy.route ? 2 : 1) : 0;
  x->v[2] = lease->since_ && now > lease->since_ ? (int)(now - lease->since_) : 0;
  x->v[3] = conn->leases;
}

void pp__ev_queued(pp_lease_t *lease, pp_peer_t *target) {
  pp_pool_t *pool = lease->pool_;
  pp_peer_t *peer = target ? target : lease->want_;
  struct pp__explain_s *x = explain_next(pool, "wait", peer, 0);
  x->lazy = target ? LAZY_WAIT_DIAL : peer ? LAZY_WAIT_PEER : LAZY_WAIT_ANY;
  x->v[0] = peer ? peer->conns : 0;
  x->v[1] = pool->opts.max_per_peer;
  x->v[2] = peer ? peer->leases : pool->active;
  x->v[3] = pool->opts.client_limit;
  x->v[4] = pool->total;
  x->v[5] = pool->opts.max_total;
  x->v[6] = peer ? peer->waiters.count : pool->any_waiters.count;
}

void pp__ev_failed(pp_lease_t *lease) {
  pp_pool_t *pool = lease->pool_;
  const pp_cause_t *c = &lease->why_;
  /* A run of the same failure for the same peer folds into one entry (a busy storm must not
   * push every other decision out of the ring, nor pay for a line each). */
  struct pp__explain_s *x = explain_last(pool);
  if (x && x->lazy == LAZY_FAIL && x->e.peer == c->peer && x->cause.code == c->code &&
      x->want == lease->want_) {
    x->e.repeats++;
    x->e.at = pp_now();
  } else {
    x = explain_next(pool, "fail", c->peer, 0);
    x->lazy = LAZY_FAIL;
    x->want = lease->want_;
  }
  x->cause = *c;
  if (c->code != PP_ETIMEDOUT) return;
  pp_event_t *ev = new_event(pool, PP_EVENT_ACQUIRE_TIMEOUT, c->peer);
  if (ev == NULL) return;
  ev->error = PP_ETIMEDOUT;
  ev->ms = c->waited_ms;
  ev->waiters_ahead = c->waiters_ahead;
  ev->conns = c->conns;
  ev->max_conns = c->max_conns;
  pp__defer_pool_event(pool);
}

void pp__ev_unleak(pp_lease_t *lease, pp_conn_t *conn, uint64_t held_ms) {
  pp_pool_t *pool = conn->pool;
  pp__explain(pool, "leak", conn->peer, conn->id,
              "lease of conn #%llu to %s reported as leaked (leak #%llu) was released after %llu "
              "ms",
              (unsigned long long)conn->id, conn->peer->addr, (unsigned long long)lease->leak_id_,
              (unsigned long long)held_ms);
  pp_event_t *ev = new_event(pool, PP_EVENT_UNLEAK, conn->peer);
  if (ev == NULL) return;
  ev->conn_id = conn->id;
  ev->ms = (int64_t)held_ms;
  ev->leak_id = lease->leak_id_;
  pp__defer_pool_event(pool);
}

/* ---- leak detection --------------------------------------------------------------------- */

/* Report one lease held past the threshold and not reported yet; false when there is none. */
static bool report_one_leak(pp_pool_t *pool, uint64_t now) {
  uint64_t limit = (uint64_t)pool->opts.leak_threshold;
  for (pp__link_t *pl = pool->peers.next; pl != &pool->peers; pl = pl->next) {
    pp_peer_t *peer = PP__CONTAINER(pl, pp_peer_t, order_link);
    if (peer->leases == 0) continue;
    for (pp__link_t *cl = peer->conns_list.next; cl != &peer->conns_list; cl = cl->next) {
      pp_conn_t *conn = PP__CONTAINER(cl, pp_conn_t, peer_link);
      if (conn->leases == 0) continue;
      for (pp__link_t *ll = conn->lease_list.next; ll != &conn->lease_list; ll = ll->next) {
        pp_lease_t *lease = PP__CONTAINER(ll, pp_lease_t, qlink_);
        if (lease->state_ != PP_LEASE_GRANTED || lease->leak_id_ != 0) continue;
        if (now < lease->granted_ || now - lease->granted_ <= limit) continue;
        uint64_t held = now - lease->granted_;
        lease->leak_id_ = ++pool->leak_seq;
        pp__explain(pool, "leak", peer, conn->id,
                    "lease of conn #%llu to %s held %llu ms, past leak_threshold %lld ms "
                    "(leak #%llu)",
                    (unsigned long long)conn->id, peer->addr, (unsigned long long)held,
                    (long long)limit, (unsigned long long)lease->leak_id_);
        if (pool->event_cb) {
          pp_event_t ev;
          event_init(pool, &ev, PP_EVENT_LEAK, peer);
          ev.conn_id = conn->id;
          ev.ms = (int64_t)held;
          ev.leak_id = lease->leak_id_;
          ev.lease = lease;
          pool->event_cb(pool, &ev, pool->event_arg); /* may release, close: walk again */
        }
        return true;
      }
    }
  }
  return false;
}

static void leak_timer_cb(uv_timer_t *timer) {
  pp_pool_t *pool = timer->data;
  uint64_t now = pp_now();
  for (int n = 0; n < 64 && !pool->closing && report_one_leak(pool, now); n++) {
  }
}

void pp__events_init(pp_pool_t *pool) {
  uv_timer_init(pool->loop, &pool->leak_timer);
  pool->leak_timer.data = pool;
  uv_unref((uv_handle_t *)&pool->leak_timer); /* watching leases keeps no program alive */
  int64_t t = pool->opts.leak_threshold;
  if (t <= 0) return;
  uint64_t every = (uint64_t)(t / 4);
  if (every < 10) every = 10;
  if (every > 1000) every = 1000;
  uv_timer_start(&pool->leak_timer, leak_timer_cb, every, every);
}

void pp__events_close(pp_pool_t *pool) {
  uv_timer_stop(&pool->leak_timer);
}
