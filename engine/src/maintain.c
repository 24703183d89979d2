/* Pool maintenance on timers: the idle sweep (one timer for the whole pool, armed for the
 * oldest idle conn), keepalive pings of conns that idled, and the target_peers tick that dials
 * fresh peers and asks the seed hook for addresses. min_idle has its own file (warm.c). */
#include "internal.h"

static void idle_timer_cb(uv_timer_t *timer);
static void keepalive_timer_cb(uv_timer_t *timer);
static void maintenance_timer_cb(uv_timer_t *timer);

void pp__maintain_init(pp_pool_t *pool) {
  uv_loop_t *loop = pool->loop;
  const pp_options_t *opts = &pool->opts;
  uv_timer_init(loop, &pool->idle_timer);
  uv_timer_init(loop, &pool->keepalive_timer);
  uv_timer_init(loop, &pool->maintenance_timer);
  pool->idle_timer.data = pool;
  pool->keepalive_timer.data = pool;
  pool->maintenance_timer.data = pool;
  /* Unlike idle conns, maintenance is work the program asked for (target_peers): like a
   * listening server, it keeps the loop alive until the pool is closed. */
  if (opts->target_peers > 0)
    uv_timer_start(&pool->maintenance_timer, maintenance_timer_cb, 0,
                   (uint64_t)opts->maintenance_interval);
  /* Idle conns must not keep a program alive (as Node's agent unrefs free sockets). */
  uv_unref((uv_handle_t *)&pool->idle_timer);
  uv_unref((uv_handle_t *)&pool->keepalive_timer);
  if (opts->keepalive > 0)
    uv_timer_start(&pool->keepalive_timer, keepalive_timer_cb, (uint64_t)opts->keepalive,
                   (uint64_t)opts->keepalive);
}

/* ---- idle sweep ------------------------------------------------------------------------ */

void pp__idle_timer_arm(pp_pool_t *pool) {
  if (pool->opts.idle_timeout == 0 || pool->closing || pp__list_empty(&pool->idle)) return;
  if (uv_is_active((uv_handle_t *)&pool->idle_timer)) return;
  pp_conn_t *oldest = PP__CONTAINER(pool->idle.next, pp_conn_t, idle_link);
  pp_timer_start_at(&pool->idle_timer, idle_timer_cb,
                    oldest->last_used + (uint64_t)pool->opts.idle_timeout);
}

static void idle_timer_cb(uv_timer_t *timer) {
  pp_pool_t *pool = timer->data;
  uint64_t now = pp_now();
  while (!pp__list_empty(&pool->idle)) {
    pp_conn_t *oldest = PP__CONTAINER(pool->idle.next, pp_conn_t, idle_link);
    if (oldest->last_used + (uint64_t)pool->opts.idle_timeout > now) break;
    if (pp__warm_keep(oldest)) continue; /* min_idle: moved to pool->warm_idle (warm.c) */
    pp__conn_close(oldest, PP_CLOSE_IDLE);
  }
  pp__idle_timer_arm(pool);
}

/* Ping every conn that has idled `keepalive` ms. The idle list is oldest first, so the walk
 * stops at the first conn that idled less. */
static void keepalive_timer_cb(uv_timer_t *timer) {
  pp_pool_t *pool = timer->data;
  if (pool->policy.ping == NULL) return;
  uint64_t idle_ms = (uint64_t)pool->opts.keepalive;
  /* Both idle lists (the conns min_idle keeps, too) are oldest first. */
  pp__link_t *lists[2] = {&pool->warm_idle, &pool->idle};
  for (int i = 0; i < 2; i++)
    while (!pp__list_empty(lists[i])) {
      pp_conn_t *oldest = PP__CONTAINER(lists[i]->next, pp_conn_t, idle_link);
      if (!pp__conn_needs_ping(oldest, idle_ms)) break;
      pp__conn_ping(oldest); /* leaves the idle list */
    }
}

/* target_peers: count peers ready or on their way, dial fresh ones for the rest (chosen by
 * the selection policy among dialable peers with no conn), and ask the seed hook for more
 * addresses when none is left. */
static void maintenance_timer_cb(uv_timer_t *timer) {
  pp_pool_t *pool = timer->data;
  const int *by = pool->stats.peers_by_state;
  int have = by[PP_PEER_READY] + by[PP_PEER_CONNECTED] + by[PP_PEER_CONNECTING];
  for (int need = pool->opts.target_peers - have; need > 0; need--) {
    pp_peer_t *peer = pp__select_peer(pool, 2, NULL);
    if (peer == NULL) {
      pp__request_seed(pool, need);
      break;
    }
    if (pp__conn_dial(peer, NULL, NULL) != 0) break;
  }
}

bool pp__request_seed(pp_pool_t *pool, int wanted) {
  if (pool->policy.seed == NULL || pool->closing) return false;
  uint64_t now = pp_now();
  if (pool->last_seed != 0 && now - pool->last_seed < (uint64_t)pool->opts.seed_interval)
    return true;
  pool->last_seed = now ? now : 1;
  pool->stats.seeds++;
  pool->policy.seed(pool->policy.data, pool, wanted);
  return true;
}
