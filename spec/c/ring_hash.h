/*
 * The hash of a consistent-hash ring over peers, as peerpool.ring places keys and points
 * (bindings/lring.c, `ring.hash(s)`): FNV-1a, then murmur3's finaliser, so that similar
 * strings ("key:1", "key:2") land far apart. Shared by the C rings of spec/c/test_route.c and
 * bench/bench_route.c; header-only, as both build it into their own program.
 */
#ifndef PP_RING_HASH_H
#define PP_RING_HASH_H

#include <stdint.h>

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

#endif /* PP_RING_HASH_H */
