/* The shared fixtures of fixtures.h (no tests here). */
#include "fixtures.h"

fixture_t fixture_start(srv_t *srv, const pp_options_t *opts) {
  fixture_t f;
  pp_options_t d;
  if (opts == NULL) {
    test_options(&d);
    opts = &d;
  }
  memset(&f, 0, sizeof f);
  f.srv = srv;
  f.pool = test_pool_on(srv, opts, &f.peer);
  return f;
}

void fixture_hold(fixture_t *f) {
  ASSERT_OK(test_acquire_wait(f->pool, &f->held, &f->held_rec, f->peer, NULL));
}

void fixture_end(fixture_t *f) {
  test_finish_srv(f->pool, f->srv);
}

pp_pool_t *test_pool_on(const srv_t *srv, const pp_options_t *opts, pp_peer_t **peer) {
  pp_pool_t *pool = test_pool(opts);
  *peer = test_peer(pool, srv_addr(srv));
  return pool;
}

void test_finish_srv(pp_pool_t *pool, srv_t *srv) {
  test_finish(pool);
  srv_stop(srv);
}
