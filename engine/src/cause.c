/* Why an acquire failed: a snapshot of the facts taken when its outcome is decided (the peer,
 * its conns and limits, the waiters ahead, its last error, how long it stays held), and the
 * one-line description built from it. Nothing here runs on the path of a granted acquire. */
#include "internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static void fill_peer(pp_cause_t *c, const pp_peer_t *peer, uint64_t now) {
  c->state = peer->state;
  c->conns = peer->conns;
  c->max_conns = peer->pool->opts.max_per_peer;
  c->leases = peer->leases;
  c->failures = peer->failures + peer->connect_failures;
  c->last_error = peer->last_error;
  if (peer->last_error && peer->last_error_at)
    c->last_error_ms = now > peer->last_error_at ? (int64_t)(now - peer->last_error_at) : 0;
  uint64_t hold = pp__peer_hold_until(peer);
  if (hold > now) c->held_ms = (int64_t)(hold - now);
  c->ejected = peer->ejected && peer->eject_until > now;
}

/* For an acquire for any peer: the pool's conns against what its live peers may hold. */
static void fill_pool(pp_cause_t *c, const pp_pool_t *pool) {
  const pp_options_t *o = &pool->opts;
  int64_t cap = (int64_t)(pool->npeers - (unsigned)pool->nburned - (unsigned)pool->nejected);
  cap *= o->max_per_peer;
  c->conns = pool->total;
  c->max_conns = (int)(cap > o->max_total ? o->max_total : cap);
  c->leases = pool->active;
}

void pp__cause_fill(pp_lease_t *lease, pp_peer_t *peer, int code) {
  pp_pool_t *pool = lease->pool_;
  pp_cause_t *c = &lease->why_;
  uint64_t now = pp_now();
  bool queued = lease->state_ == PP_LEASE_WAITING;
  memset(c, 0, sizeof(*c));
  c->code = code;
  c->peer = peer;
  c->last_error_ms = -1;
  c->waiters_ahead = code == PP_ETIMEDOUT && queued ? pp__waiters_ahead(lease) : 0;
  c->waited_ms =
      queued && lease->since_ && now > lease->since_ ? (int64_t)(now - lease->since_) : 0;
  c->peers = (int)pool->npeers - pool->nburned;
  c->peers_ejected = pool->nejected;
  if (peer)
    fill_peer(c, peer, now);
  else
    fill_pool(c, pool);
  /* The binding's (and libuv users') habit: lease->cause names the socket error. */
  if (code == PP_ECANNOTCONNECT && lease->cause == 0 && peer) lease->cause = peer->last_error;
  pp__ev_failed(lease); /* events.c: explain, acquire_timeout */
}

int pp__any_fail_code(pp_pool_t *pool, pp_peer_t **out) {
  pp__ejections_refresh(pool);
  pp__candidates_refresh(pool);
  pp_peer_t *held = pp__soonest_backoff(pool); /* held peers that may dial after, soonest first */
  if (pool->ejected.min) {
    pp_peer_t *ej = PP__CONTAINER(pool->ejected.min, pp_peer_t, eject_node);
    if (held == NULL || pp__peer_hold_until(ej) < pp__peer_hold_until(held)) held = ej;
  }
  *out = held;
  if (held == NULL) return PP_ENOPEER;
  return held->ejected ? PP_EEJECTED : PP_ECANNOTCONNECT;
}

int pp_lease_cause(const pp_lease_t *lease, pp_cause_t *out) {
  if (lease == NULL || out == NULL) return PP_EINVAL;
  if (lease->why_.code == 0)
    memset(out, 0, sizeof(*out));
  else
    *out = lease->why_;
  return 0;
}

/* ---- describe: a bounded string builder and one sentence per kind of failure ----------- */

typedef struct {
  char *buf;
  size_t cap, len; /* len: what the whole text needs, even past cap */
} line_t;

__attribute__((format(printf, 2, 3))) static void put(line_t *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  size_t room = b->len < b->cap ? b->cap - b->len : 0;
  int n = vsnprintf(room ? b->buf + b->len : NULL, room, fmt, ap);
  va_end(ap);
  if (n > 0) b->len += (size_t)n;
}

static double secs(int64_t ms) {
  return (double)ms / 1000.0;
}

static const char *where(const pp_cause_t *c) {
  return c->peer ? pp_peer_addr(c->peer) : "any peer";
}

static void put_failures(line_t *b, const pp_cause_t *c) {
  put(b, " after %d consecutive failure%s", c->failures, c->failures == 1 ? "" : "s");
  if (c->last_error) put(b, " (last %s)", pp_err_name(c->last_error));
}

static void put_last_error(line_t *b, const pp_cause_t *c) {
  if (c->last_error && c->last_error_ms >= 0)
    put(b, "; last error %s %.1f s ago", pp_err_name(c->last_error), secs(c->last_error_ms));
}

/* "no peer can serve (3 peers, 1 ejected): " before the telling peer of an any-peer acquire. */
static void put_any_prefix(line_t *b, const pp_lease_t *lease, const pp_cause_t *c) {
  if (lease->want_ != NULL) return;
  put(b, "no peer can serve (%d peer%s, %d ejected)%s", c->peers, c->peers == 1 ? "" : "s",
      c->peers_ejected, c->peer ? ": " : "");
}

static void describe_timeout(line_t *b, const pp_cause_t *c) {
  put(b, "timed out after %lld ms waiting for %s: %d/%d conns in use, %d waiter%s ahead",
      (long long)c->waited_ms, where(c), c->conns, c->max_conns, c->waiters_ahead,
      c->waiters_ahead == 1 ? "" : "s");
  if (c->peer && c->state != PP_PEER_READY) put(b, "; peer %s", pp_peer_state_name(c->state));
  put_last_error(b, c);
}

static void describe_held(line_t *b, const pp_lease_t *lease, const pp_cause_t *c) {
  put_any_prefix(b, lease, c);
  if (c->peer == NULL) return;
  if (c->code == PP_EEJECTED) {
    put(b, "%s is ejected for %.1f s more", where(c), secs(c->held_ms));
  } else {
    put(b, "cannot connect to %s", where(c));
    if (c->held_ms > 0) put(b, ": backing off for %.1f s more", secs(c->held_ms));
  }
  put_failures(b, c);
}

static void describe_other(line_t *b, const pp_lease_t *lease, const pp_cause_t *c) {
  switch (c->code) {
    case PP_EREMOVED: /* drain.c: the peer still exists while its failures are told */
      if (c->peer && c->peer->removed)
        put(b, "%s was removed from the pool (remove_peer)", where(c));
      else
        put(b, "%s is draining: it takes no new leases (add_peer again to end the drain)",
            where(c));
      return;
    case PP_EBURNED:
      put(b, "%s is burned: its backoff policy gave up; it is not dialled unless re-added",
          where(c));
      if (c->last_error) put(b, " (last %s)", pp_err_name(c->last_error));
      return;
    case PP_ENOPEER:
      if (lease->want_)
        put(b, "%s is not dialled: its address is older than max_address_age", where(c));
      else if (c->peers == 0)
        put(b, "no peer can serve: the pool knows no peer");
      else
        put(b,
            "no peer can serve: none of the %d known peer%s can be dialled (burned, or too "
            "old)",
            c->peers, c->peers == 1 ? "" : "s");
      return;
    case PP_EBUSY:
      put(b, "%s is at capacity: %d/%d conns in use", where(c), c->conns, c->max_conns);
      return;
    case PP_EEXHAUSTED:
      put(b, "the wait queue is full (backlog)");
      return;
    case PP_EDNS: /* host names (dns.c): the resolver's reason, "name: NXDOMAIN" */
      if (c->peer && pp_peer_dns_reason(c->peer))
        put(b, "%s did not resolve: %s", where(c), pp_peer_dns_reason(c->peer));
      else
        put(b, "%s did not resolve", where(c));
      if (c->held_ms > 0) put(b, "; backing off for %.1f s more", secs(c->held_ms));
      return;
    case PP_ETLS: /* TLS (tls.c): the reason the handshake gave */
      put(b, "TLS with %s failed", where(c));
      if (c->peer && pp_peer_tls_reason(c->peer)) put(b, ": %s", pp_peer_tls_reason(c->peer));
      return;
    default:
      put(b, "%s (%s)", pp_strerror(c->code), pp_err_name(c->code));
      if (pp__err_is_local(c->code))
        put(b, ": this process is short of a resource, not the peer's fault");
  }
}

int pp_lease_describe(const pp_lease_t *lease, char *buf, size_t len) {
  if (lease == NULL || (buf == NULL && len > 0)) return PP_EINVAL;
  line_t b = {buf, len, 0};
  const pp_cause_t *c = &lease->why_;
  if (len > 0) buf[0] = '\0';
  if (c->code == 0) return 0;
  if (c->code == PP_ETIMEDOUT)
    describe_timeout(&b, c);
  else if (c->code == PP_EEJECTED || c->code == PP_ECANNOTCONNECT)
    describe_held(&b, lease, c);
  else
    describe_other(&b, lease, c);
  return (int)b.len;
}
