/* Stats: the counters the engine keeps in pool->stats plus the gauges derived from its lists
 * and counts, in one pp_stats_t (its fields: PP_STATS_MAP in peerpool.h). */
#include "internal.h"

void pp_pool_stats(const pp_pool_t *pool, pp_stats_t *s) {
  *s = pool->stats;
  s->conns = pool->total;
  s->idle = pool->idle_count;
  s->active = pool->active;
  s->connecting = pool->dialing;
  s->waiters = pool->waiters;
  s->peers = (int)pool->npeers;
  s->connect_latency_ms_avg =
      pool->stats.connects_ok ? pool->connect_latency_sum / (double)pool->stats.connects_ok : 0;
}
