/*
 * The pieces of a consistent-hash ring over peers that spec/c/test_route.c and
 * bench/bench_route.c both build (each keeps its points its own way: sorted on insert, or
 * sorted lazily). Keys and points are placed as peerpool.ring places them (bindings/lring.c,
 * `ring.hash(s)`): FNV-1a, then murmur3's finaliser, so that similar strings ("key:1",
 * "key:2") land far apart. Header-only: both build it into their own program.
 */
#ifndef PP_HASH_RING_H
#define PP_HASH_RING_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "peerpool.h"

typedef struct {
  uint32_t h; /* position on the ring */
  pp_peer_t *peer;
} ring_point_t;

static inline uint32_t ring_hash(const char *s) {
  uint32_t h = 2166136261u;
  for (; *s; s++)
    h = (h ^ (unsigned char)*s) * 16777619u;
  h ^= h >> 16;
  h *= 0x85ebca6bu;
  h ^= h >> 13;
  h *= 0xc2b2ae35u;
  return h ^ (h >> 16);
}

/* The `i`th point of `peer`: the hash of "<addr>#<i>". */
static inline ring_point_t ring_vnode(pp_peer_t *peer, int i) {
  char v[320];
  snprintf(v, sizeof v, "%s#%d", pp_peer_addr(peer), i);
  return (ring_point_t){ring_hash(v), peer};
}

/* The index of the first of the `n` (> 0) points `pts`, sorted by h, at or after the hash of
 * `key`, wrapping to 0 past the last (a binary search). */
static inline size_t ring_successor(const ring_point_t *pts, size_t n, const char *key) {
  uint32_t h = ring_hash(key);
  size_t lo = 0, hi = n;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (pts[mid].h < h)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo == n ? 0 : lo;
}

/* Drop the points of `peer` from the `n` points `pts`, keeping the others' order; returns how
 * many are left. */
static inline size_t ring_drop(ring_point_t *pts, size_t n, const pp_peer_t *peer) {
  size_t k = 0;
  for (size_t i = 0; i < n; i++)
    if (pts[i].peer != peer) pts[k++] = pts[i];
  return k;
}

#endif /* PP_HASH_RING_H */
