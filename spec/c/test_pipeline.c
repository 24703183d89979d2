/* Requests on framed shared conns (pipeline.c): replies routed in order to their requests
 * whichever lease sent them, one write per conn per loop iteration, every pending request
 * failed once when its conn dies, and pp_request_abort breaking the pipeline. */
#include "fixtures.h"

#define NREQ 200

typedef struct {
  pp_request_t req;
  uv_buf_t buf;
  char text[32];
  int calls, status;
  int matched; /* the reply was its own text */
} treq_t;

static void on_reply(pp_request_t *req, int status, const char *reply, size_t len) {
  ASSERT_NOT_IN_CALL();
  treq_t *t = req->data;
  t->calls++;
  t->status = status;
  t->matched = status == 0 && len == strlen(t->text) && memcmp(reply, t->text, len) == 0;
}

/* Send "<tag><a>-<b>\n" as one request and expect it back. */
static int treq_send(treq_t *t, pp_conn_t *conn, const char *tag, int a, int b) {
  memset(t, 0, sizeof(*t));
  snprintf(t->text, sizeof(t->text), "%s%d-%d\n", tag, a, b);
  t->buf = uv_buf_init(t->text, (unsigned int)strlen(t->text));
  t->req.data = t;
  return CALL(pp_request_send(&t->req, conn, &t->buf, 1, on_reply));
}

/* How many replies (or failures) the requests t[0..n-1] got in all. */
static int treqs_done(const treq_t *t, int n) {
  int done = 0;
  for (int k = 0; k < n; k++)
    done += t[k].calls;
  return done;
}

/* Options for line-framed conns, one per peer shared by `client_limit` leases. */
static const pp_options_t *line_opts(int client_limit) {
  static pp_framing_t fr;
  pp_framing_init(&fr, PP_FRAMING_LINE);
  return TEST_OPTS(o.client_limit = client_limit; o.max_per_peer = 1; o.framing = &fr);
}

/* A pool of line-framed conns (client_limit 2) with `srv` as its peer, one lease held. */
static void line_held(fixture_t *f, srv_t *srv) {
  fixture_held(f, srv, line_opts(2));
}

TEST(pipeline_replies_routed_in_order_across_leases) {
  fixture_t f = fixture_start(srv_echo_start(NULL), line_opts(4));
  pp_pool_t *pool = f.pool;
  pp_lease_t l[4];
  test_rec_t r[4];
  test_acquire_n(pool, f.peer, l, r, 4);
  ASSERT_PTR_EQ(l[3].conn, l[0].conn); /* one shared conn */
  static treq_t t[NREQ];
  for (int k = 0; k < NREQ; k++)
    ASSERT_OK(treq_send(&t[k], l[k % 4].conn, "lease-req", k % 4, k));
  ASSERT_EQ(pp_conn_requests(l[0].conn), NREQ);
  RUN_UNTIL(treqs_done(t, NREQ) == NREQ, 2000);
  for (int k = 0; k < NREQ; k++) {
    ASSERT_EQ(t[k].calls, 1);
    ASSERT_MSG(t[k].matched, "request %d got another's reply", k);
  }
  ASSERT_EQ(pp_conn_requests(l[0].conn), 0);
  pp_histogram_t h;
  ASSERT_OK(pp_pool_histogram(pool, PP_HIST_REQUEST, &h));
  ASSERT_EQ(h.count, NREQ); /* one request time per answered request */
  /* the 200 requests sent within one iteration left in one write */
  pp_conn_info_t info;
  pp_conn_info(l[0].conn, &info);
  ASSERT_EQ(info.msgs_out, 1);
  ASSERT_EQ(info.msgs_in, NREQ);
  test_release_n(l, 4, 0);
  fixture_end(&f);
}

TEST(pipeline_reply_after_release_still_reaches_its_request) {
  fixture_t f;
  line_held(&f, srv_echo_start(NULL));
  pp_conn_t *conn = f.held.conn;
  treq_t t;
  ASSERT_OK(treq_send(&t, conn, "late", 1, 2));
  ASSERT_OK(pp_release(&f.held, 0)); /* the conn stays clean: the reply has a request to go to */
  RUN_UNTIL(t.calls == 1, 2000);
  ASSERT(t.matched);
  ASSERT_EQ(test_stats(f.pool).conns, 1);
  ASSERT_PTR_EQ(test_acquire_release(f.pool, f.peer), conn);
  fixture_end(&f);
}

TEST(pipeline_conn_death_fails_each_request_once) {
  srv_opts_t so = {0};
  so.no_echo = 1;
  so.close_after_bytes = 30;
  fixture_t f;
  line_held(&f, srv_echo_start(&so));
  static treq_t t[20];
  for (int k = 0; k < 20; k++)
    ASSERT_OK(treq_send(&t[k], f.held.conn, "x", k, k));
  RUN_UNTIL(treqs_done(t, 20) == 20, 2000);
  test_run_for(30);
  for (int k = 0; k < 20; k++) {
    ASSERT_EQ(t[k].calls, 1);
    ASSERT_MSG(t[k].status == UV_EOF || t[k].status == UV_ECONNRESET, "request %d: %s", k,
               pp_err_name(t[k].status));
  }
  fixture_release_end(&f);
}

TEST(pipeline_abort_breaks_the_conn_and_fails_the_rest) {
  srv_opts_t so = {0};
  so.no_echo = 1; /* no reply ever comes: the second request times out */
  fixture_t f;
  line_held(&f, srv_echo_start(&so));
  treq_t t[3];
  for (int k = 0; k < 3; k++)
    ASSERT_OK(treq_send(&t[k], f.held.conn, "y", k, k));
  test_run_for(20); /* written */
  ASSERT_OK(CALL(pp_request_abort(&t[1].req, PP_ETIMEDOUT)));
  ASSERT_EQ(t[0].calls + t[1].calls + t[2].calls, 0); /* later, never inside the call */
  ASSERT_ERR(pp_request_abort(&t[1].req, PP_ETIMEDOUT), PP_ESTATE);
  RUN_UNTIL(treqs_done(t, 3) == 3, 1000);
  ASSERT_EQ(t[1].status, PP_ETIMEDOUT);
  ASSERT_EQ(t[0].status, PP_EPIPELINE);
  ASSERT_EQ(t[2].status, PP_EPIPELINE);
  pp_stats_t s = test_stats(f.pool);
  ASSERT_EQ(s.closed[PP_CLOSE_DISCARDED], 1);
  ASSERT_EQ(test_peer_info(f.peer).failures, 0); /* not the peer's failure */
  ASSERT_OK(pp_release(&f.held, PP_EPIPELINE));
  ASSERT_EQ(test_peer_info(f.peer).failures, 0);
  fixture_end(&f);
}

TEST(pipeline_unasked_reply_closes_the_conn) {
  fixture_t f;
  line_held(&f, srv_echo_start(NULL));
  /* one request whose bytes make two replies: the second answers nobody */
  treq_t t;
  ASSERT_OK(treq_send(&t, f.held.conn, "a1\nb", 1, 2));
  RUN_UNTIL(t.calls == 1, 2000);
  ASSERT_OK(t.status); /* "a1\n"; then "b1-2\n" answers nobody */
  RUN_UNTIL(test_stats(f.pool).closed[PP_CLOSE_REMOTE] == 1, 2000);
  fixture_release_end(&f);
}

static void on_raw_written(pp_write_t *w, int status) {
  *(int *)w->data = status == 0 ? 1 : status;
}

/* A reply in a read of its own while a lease holds the conn and no request waits: kept, it
 * would sit ahead of the next replies and stall the conn once the keep buffer filled. */
TEST(pipeline_unasked_reply_while_leased_closes_the_conn) {
  fixture_t f;
  line_held(&f, srv_echo_start(NULL));
  /* bytes written around the request queue: their echo answers no request */
  pp_write_t w;
  int written = 0;
  w.data = &written;
  uv_buf_t b = uv_buf_init((char *)"zz\n", 3);
  ASSERT_OK(pp_conn_write(&w, f.held.conn, &b, 1, on_raw_written));
  RUN_UNTIL(test_stats(f.pool).closed[PP_CLOSE_REMOTE] == 1, 2000);
  ASSERT_EQ(written, 1);
  treq_t t;
  ASSERT_EQ(pp_request_send(&t.req, f.held.conn, &b, 1, on_reply), PP_EFRAMING);
  fixture_release_end(&f);
}

TEST(pipeline_needs_framing) {
  fixture_t f;
  fixture_held(&f, srv_echo_start(NULL), NULL);
  treq_t t;
  ASSERT_ERR(treq_send(&t, f.held.conn, "z", 1, 1), PP_ESTATE);
  fixture_release_end(&f);
}

TEST(pipeline_bad_framing_option_names_the_field) {
  pp_options_t o;
  pp_options_init(&o);
  pp_framing_t fr;
  pp_framing_init(&fr, PP_FRAMING_LENGTH);
  fr.length_size = 5;
  o.framing = &fr;
  const char *why;
  ASSERT_ERR(pp_options_validate(&o, &why), PP_EINVAL);
  ASSERT_CONTAINS(why, "framing.length_size");
}
