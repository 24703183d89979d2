/*
 * bench_route — what an acquire routed by key costs with 100, 1,000 and 10,000 peers, through
 * the policy's route hook: a consistent-hash ring (64 points per peer) that the policy keeps up
 * to date from peer events and searches with a binary search, so a key's owner is found in
 * O(log n) whatever conns are idle.
 *
 * For each size N the pool holds N peers: 64 of them are real (listeners of this process on
 * 127.0.0.1, each holding one connected idle conn), the rest are addresses that are never
 * dialled (10.x.y.z:7). Keys are drawn from "user:<i>" and sorted by their owner. Times, in
 * nanoseconds per call (mean over --calls calls, best of --runs runs):
 *
 *   route        the route hook alone (ring lookup)
 *   try/hit      pp_try_acquire(pool, &l, NULL, {key}) + pp_release(&l, 0) for keys owned by a
 *                real peer: route, the owner's idle conn lent and returned
 *   try/miss     pp_try_acquire for keys owned by a peer with no conn: route, then the
 *                fail-fast check, answering PP_EAGAIN (an acquire would dial the owner)
 *   scan         for contrast, what a hook costs that is handed every peer per acquire and
 *                hashes each (rendezvous hashing): O(n)
 *
 * The ring is sorted lazily: peer events append points and the first lookup after a change
 * sorts (O(P log P) once, not per event), which keeps 10,000 additions cheap.
 *
 * usage: bench_route [--sizes 100,1000,10000] [--calls N] [--runs K]   (N = 200000, K = 5)
 * Traffic goes only to 127.0.0.1.
 */
#include "bench_util.h" /* first: it defines _GNU_SOURCE */

#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../spec/c/hash_ring.h" /* the ring's points, as the test's ring and peerpool.ring */
#include "peerpool.h"

enum { REAL = 64, VNODES = 64, NKEYS = 4096 };

/* ---- a ring kept through peer events ----------------------------------------------------- */

typedef struct {
  ring_point_t *pts;
  size_t n, cap;
  int dirty;
} ring_t;

static int point_cmp(const void *a, const void *b) {
  uint32_t x = ((const ring_point_t *)a)->h, y = ((const ring_point_t *)b)->h;
  return x < y ? -1 : x > y;
}

static void ring_event(void *data, pp_pool_t *pool, pp_peer_t *peer, pp_peer_event_t ev) {
  ring_t *r = data;
  if (ev == PP_PEER_EVENT_BURNED) {
    r->n = ring_drop(r->pts, r->n, peer);
    return;
  }
  if (r->n + VNODES > r->cap) {
    r->cap = r->cap ? r->cap * 2 : 4096;
    r->pts = realloc(r->pts, r->cap * sizeof(*r->pts));
    if (r->pts == NULL) abort();
  }
  for (int i = 0; i < VNODES; i++)
    r->pts[r->n++] = ring_vnode(peer, i);
  r->dirty = 1;
}

static pp_peer_t *ring_route(void *data, pp_pool_t *pool, const char *key) {
  ring_t *r = data;
  if (r->n == 0) return NULL;
  if (r->dirty) {
    qsort(r->pts, r->n, sizeof(*r->pts), point_cmp);
    r->dirty = 0;
  }
  return r->pts[ring_successor(r->pts, r->n, key)].peer;
}

/* ---- listeners that hold what they accept ------------------------------------------------ */

typedef struct {
  uv_tcp_t listener;
  uv_tcp_t *accepted;
  int port;
} sink_t;

static void on_conn(uv_stream_t *server, int status) {
  sink_t *s = server->data;
  if (status != 0 || s->accepted) return;
  s->accepted = malloc(sizeof(*s->accepted));
  uv_tcp_init(server->loop, s->accepted);
  if (uv_accept(server, (uv_stream_t *)s->accepted) != 0) abort();
}

static void sink_start(uv_loop_t *loop, sink_t *s) {
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", 0, &a);
  memset(s, 0, sizeof(*s));
  uv_tcp_init(loop, &s->listener);
  s->listener.data = s;
  if (uv_tcp_bind(&s->listener, (const struct sockaddr *)&a, 0) != 0 ||
      uv_listen((uv_stream_t *)&s->listener, 8, on_conn) != 0)
    abort();
  struct sockaddr_in got;
  int len = sizeof got;
  uv_tcp_getsockname(&s->listener, (struct sockaddr *)&got, &len);
  s->port = ntohs(got.sin_port);
}

static void free_handle(uv_handle_t *h) {
  if (h->data == NULL) free(h);
}

static void sink_stop(sink_t *s) {
  uv_close((uv_handle_t *)&s->listener, NULL);
  if (s->accepted) {
    s->accepted->data = NULL;
    uv_close((uv_handle_t *)s->accepted, free_handle);
  }
}

/* ---- the bench --------------------------------------------------------------------------- */

static int granted;

static void on_granted(pp_lease_t *lease, int status) {
  if (status != 0) {
    fprintf(stderr, "bench_route: dial failed: %s\n", pp_err_name(status));
    exit(1);
  }
  granted++;
}

typedef struct {
  pp_pool_t *pool;
  ring_t ring;
  sink_t sinks[REAL];
  pp_peer_t *real[REAL];
  char hit[NKEYS][24], miss[NKEYS][24];
  pp_acquire_opts_t hit_o[NKEYS], miss_o[NKEYS];
} bench_t;

static int is_real(const bench_t *b, const pp_peer_t *p) {
  for (int i = 0; i < REAL; i++)
    if (b->real[i] == p) return 1;
  return 0;
}

/* A pool of `n` peers (REAL of them with an idle conn), and keys owned by each kind. */
static void setup(bench_t *b, uv_loop_t *loop, int n) {
  pp_options_t o;
  pp_options_init(&o);
  o.max_per_peer = 1;
  o.max_total = REAL + 16;
  if (pp_pool_new(loop, &o, &b->pool, NULL) != 0) exit(1);
  pp_policy_t p;
  memset(&p, 0, sizeof p);
  p.data = &b->ring;
  p.route = ring_route;
  p.peer_event = ring_event;
  pp_pool_set_policy(b->pool, &p);
  static pp_lease_t leases[REAL];
  granted = 0;
  for (int i = 0; i < REAL; i++) {
    char addr[64];
    sink_start(loop, &b->sinks[i]);
    snprintf(addr, sizeof addr, "127.0.0.1:%d", b->sinks[i].port);
    if (pp_pool_add_peer(b->pool, addr, 0, &b->real[i], NULL) != 0) exit(1);
    memset(&leases[i], 0, sizeof leases[i]);
    if (pp_acquire(b->pool, &leases[i], b->real[i], NULL, on_granted) != 0) exit(1);
  }
  while (granted < REAL)
    uv_run(loop, UV_RUN_ONCE);
  for (int i = 0; i < REAL; i++)
    pp_release(&leases[i], 0);
  for (int i = REAL; i < n; i++) {
    char addr[64];
    snprintf(addr, sizeof addr, "10.%d.%d.%d:7", i >> 16, (i >> 8) & 255, i & 255);
    if (pp_pool_add_peer(b->pool, addr, 0, NULL, NULL) != 0) exit(1);
  }
  int nh = 0, nm = 0;
  for (int k = 0; nh < NKEYS || nm < NKEYS; k++) {
    char key[24];
    snprintf(key, sizeof key, "user:%d", k);
    int real = is_real(b, ring_route(&b->ring, b->pool, key));
    if (real && nh < NKEYS) memcpy(b->hit[nh++], key, sizeof key);
    if (!real && nm < NKEYS) memcpy(b->miss[nm++], key, sizeof key);
    if (k > 100000000) exit(1);
  }
  for (int k = 0; k < NKEYS; k++) {
    pp_acquire_opts_init(&b->hit_o[k]);
    b->hit_o[k].key = b->hit[k];
    pp_acquire_opts_init(&b->miss_o[k]);
    b->miss_o[k].key = b->miss[k];
  }
}

static void teardown(bench_t *b, uv_loop_t *loop) {
  pp_pool_close(b->pool, NULL);
  for (int i = 0; i < REAL; i++)
    sink_stop(&b->sinks[i]);
  uv_run(loop, UV_RUN_DEFAULT);
  free(b->ring.pts);
  memset(&b->ring, 0, sizeof b->ring);
}

static volatile uintptr_t sink_value;

static double time_route(bench_t *b, int calls) {
  uint64_t t0 = uv_hrtime();
  for (int i = 0; i < calls; i++)
    sink_value += (uintptr_t)ring_route(&b->ring, b->pool, b->hit[i % NKEYS]);
  return (double)(uv_hrtime() - t0) / calls;
}

static double time_try(bench_t *b, int calls, int hit) {
  pp_lease_t l;
  memset(&l, 0, sizeof l);
  uint64_t t0 = uv_hrtime();
  for (int i = 0; i < calls; i++) {
    int rc = pp_try_acquire(b->pool, &l, NULL, hit ? &b->hit_o[i % NKEYS] : &b->miss_o[i % NKEYS]);
    if (hit) {
      if (rc != 0) {
        fprintf(stderr, "bench_route: try_acquire: %s\n", pp_err_name(rc));
        exit(1);
      }
      pp_release(&l, 0);
    } else if (rc != PP_EAGAIN) {
      fprintf(stderr, "bench_route: try_acquire (miss): %s\n", pp_err_name(rc));
      exit(1);
    }
  }
  return (double)(uv_hrtime() - t0) / calls;
}

typedef struct {
  const char *key;
  uint32_t best;
  pp_peer_t *owner;
} scan_t;

static int scan_peer(pp_peer_t *peer, void *arg) {
  scan_t *s = arg;
  char v[300];
  snprintf(v, sizeof v, "%s|%s", pp_peer_addr(peer), s->key);
  uint32_t h = ring_hash(v);
  if (s->owner == NULL || h > s->best) {
    s->best = h;
    s->owner = peer;
  }
  return 0;
}

static double time_scan(bench_t *b, int calls) {
  uint64_t t0 = uv_hrtime();
  for (int i = 0; i < calls; i++) {
    scan_t s = {b->hit[i % NKEYS], 0, NULL};
    pp_pool_foreach_peer(b->pool, scan_peer, &s);
    sink_value += (uintptr_t)s.owner;
  }
  return (double)(uv_hrtime() - t0) / calls;
}

static double best_of(double (*fn)(bench_t *, int), bench_t *b, int calls, int runs) {
  double best = 1e300;
  for (int r = 0; r < runs; r++) {
    double ns = fn(b, calls);
    if (ns < best) best = ns;
  }
  return best;
}

static double try_hit(bench_t *b, int calls) {
  return time_try(b, calls, 1);
}
static double try_miss(bench_t *b, int calls) {
  return time_try(b, calls, 0);
}

int main(int argc, char **argv) {
  const char *sizes = "100,1000,10000";
  int calls = 200000, runs = 5;
  bench_start("bench_route", 0);
  bench_parse_opts(argc, argv,
                   (const bench_opt_t[]){{"--sizes", 's', &sizes},
                                         {"--calls", 'i', &calls},
                                         {"--runs", 'i', &runs},
                                         {NULL, 0, NULL}});
  if (calls < 1) calls = 1;
  if (runs < 1) runs = 1;
  uv_loop_t loop;
  uv_loop_init(&loop);
  static bench_t b;
  printf("%8s %10s %10s %10s %12s   (ns per call, best of %d runs of %d calls)\n", "peers", "route",
         "try/hit", "try/miss", "scan", runs, calls);
  for (const char *s = sizes; *s;) {
    int n = atoi(s);
    if (n < REAL) n = REAL;
    setup(&b, &loop, n);
    double route = best_of(time_route, &b, calls, runs);
    double hit = best_of(try_hit, &b, calls, runs);
    double miss = best_of(try_miss, &b, calls, runs);
    int scan_calls = calls / (n / 100 + 1) + 1;
    double scan = best_of(time_scan, &b, scan_calls, runs);
    printf("%8d %10.1f %10.1f %10.1f %12.1f\n", n, route, hit, miss, scan);
    teardown(&b, &loop);
    s = strchr(s, ',');
    if (s == NULL) break;
    s++;
  }
  return uv_loop_close(&loop) == 0 ? 0 : 1;
}
