/* Busy notices: an acquire answered `busy` (busy = "fail") gets a notice that fires when its
 * peer, or any peer, has capacity again -- the ResourceBusy-with-condition pattern. Armed
 * notices wait in one list; they fire through the deferred queue. */
#include "internal.h"

static bool any_peer_dialable(pp_pool_t *pool) {
  return !pool->closing && pool->total < pool->opts.max_total && pp__any_dial_candidate(pool);
}

static bool has_capacity(pp_pool_t *pool, pp_peer_t *peer) {
  if (peer) return peer->usable > 0 || pp__peer_can_dial(peer);
  return !pp__list_empty(&pool->usable_peers) || any_peer_dialable(pool);
}

/* Fire armed notices: all of them with an error status; with 0, those whose peer (or any
 * peer) has capacity now. */
void pp__fire_notices(pp_pool_t *pool, int status) {
  pp__link_t *l = pool->notices.next;
  while (l != &pool->notices) {
    pp_notice_t *notice = PP__CONTAINER(l, pp_notice_t, link_);
    l = l->next;
    if (status == 0 && !has_capacity(pool, notice->peer_)) continue;
    pp__list_remove(&notice->link_);
    pp__defer_notice(pool, notice, status);
  }
}

void pp__fire_peer_notices(pp_pool_t *pool, pp_peer_t *peer, int status) {
  pp__link_t *l = pool->notices.next;
  while (l != &pool->notices) {
    pp_notice_t *notice = PP__CONTAINER(l, pp_notice_t, link_);
    l = l->next;
    if (notice->peer_ != peer) continue;
    pp__list_remove(&notice->link_);
    pp__defer_notice(pool, notice, status);
  }
}

int pp_notice_start(pp_pool_t *pool, pp_notice_t *notice, pp_peer_t *peer, pp_notice_cb cb) {
  if (pool == NULL || notice == NULL || cb == NULL) return PP_EINVAL;
  if (pool->closing) return PP_ECLOSED;
  if (notice->state_ != PP_NOTICE_IDLE) return PP_EINVAL;
  if (peer && peer->pool != pool) return PP_EINVAL;
  notice->pool_ = pool;
  notice->peer_ = peer;
  notice->cb_ = cb;
  notice->status_ = 0;
  if (peer && peer->draining) {
    pp__defer_notice(pool, notice, PP_EREMOVED); /* it will never have capacity again */
  } else if (has_capacity(pool, peer)) {
    pp__defer_notice(pool, notice, 0);
  } else {
    notice->state_ = PP_NOTICE_ARMED;
    pp__list_push(&pool->notices, &notice->link_);
    pp__hold_timer_arm(pool); /* capacity may come back with a held peer */
  }
  return 0;
}

int pp_notice_cancel(pp_notice_t *notice) {
  if (notice == NULL) return PP_EINVAL;
  if (notice->state_ == PP_NOTICE_ARMED) {
    pp__list_remove(&notice->link_);
    pp__defer_notice(notice->pool_, notice, PP_ECANCELED);
    return 0;
  }
  if (notice->state_ == PP_NOTICE_DONE) {
    notice->status_ = PP_ECANCELED;
    return 0;
  }
  return PP_ESTATE;
}
