/* Happy Eyeballs v2 (RFC 8305) for a conn whose peer's name has several addresses: one
 * connect per address, in the answer's order (families interleaved, IPv6 first), the next
 * started happy_eyeballs_delay ms after the previous or as soon as one fails, none cancelled by
 * a later start. The first to connect wins: its socket is handed to the conn (a dup, since a
 * libuv handle cannot move) and the others are closed. The race lives in memory of its own,
 * freed when its last handle has closed, so a conn that closes meanwhile just forgets it. */
#include "internal.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
  uv_tcp_t tcp;
  uv_connect_t req;
  struct pp__race_s *race;
  int index;
  bool open, pending;
} racer_t;

struct pp__race_s {
  pp_conn_t *conn; /* NULL once cancelled or decided */
  pp_pool_t *pool;
  uv_timer_t timer; /* the next start */
  int n, next, pending, handles;
  int last_error;
  bool starting; /* inside pp__race_start: a failure is returned, not reported */
  struct sockaddr_storage addrs[PP_DNS_MAX_ADDRS];
  racer_t racers[PP_DNS_MAX_ADDRS];
};

static void start_next(struct pp__race_s *race);

static void handle_closed(uv_handle_t *handle) {
  struct pp__race_s *race = handle->data;
  pp_pool_t *pool = race->pool;
  pool->conn_handles--;
  if (--race->handles == 0) free(race);
  pp__maybe_finish(pool);
}

static void close_racer(racer_t *r) {
  if (!r->open) return;
  r->open = false;
  uv_close((uv_handle_t *)&r->tcp, handle_closed);
}

/* Close every socket and the timer; the conn hears nothing more. */
static void finish(struct pp__race_s *race) {
  if (race->conn) race->conn->race = NULL;
  race->conn = NULL;
  for (int i = 0; i < race->next; i++)
    close_racer(&race->racers[i]);
  if (!uv_is_closing((uv_handle_t *)&race->timer))
    uv_close((uv_handle_t *)&race->timer, handle_closed);
}

static void on_timer(uv_timer_t *timer) {
  start_next(timer->data);
}

static void on_connect(uv_connect_t *req, int status) {
  racer_t *r = req->data;
  struct pp__race_s *race = r->race;
  r->pending = false;
  race->pending--;
  pp_conn_t *conn = race->conn;
  if (conn == NULL || status == UV_ECANCELED) return; /* decided, or closing */
  if (status == 0) {
    uv_os_fd_t fd;
    int err = uv_fileno((uv_handle_t *)&r->tcp, &fd);
    int dup_fd = err == 0 ? dup(fd) : -1;
    struct sockaddr_storage sa = race->addrs[r->index];
    finish(race);
    if (dup_fd < 0)
      pp__conn_race_failed(conn, err ? err : UV_EMFILE);
    else
      pp__conn_race_won(conn, dup_fd, &sa);
    return;
  }
  race->last_error = status;
  close_racer(r);
  if (race->next < race->n) {
    start_next(race); /* a failure starts the next at once (RFC 8305 5) */
  } else if (race->pending == 0) {
    finish(race);
    pp__conn_race_failed(conn, status);
  }
}

/* Start the next address's connect (skipping any that fail at once), and time the one after. */
static void start_next(struct pp__race_s *race) {
  pp_pool_t *pool = race->pool;
  while (race->conn && race->next < race->n) {
    racer_t *r = &race->racers[race->next];
    r->index = race->next++;
    r->race = race;
    int err = uv_tcp_init(pool->loop, &r->tcp);
    if (err == 0) {
      r->tcp.data = race;
      r->open = true;
      race->handles++;
      pool->conn_handles++;
      r->req.data = r;
      err = uv_tcp_connect(&r->req, &r->tcp, (const struct sockaddr *)&race->addrs[r->index],
                           on_connect);
    }
    if (err == 0) {
      r->pending = true;
      race->pending++;
      if (race->next < race->n)
        pp_timer_start(&race->timer, on_timer, (uint64_t)pool->opts.happy_eyeballs_delay);
      return;
    }
    race->last_error = err;
    close_racer(r);
    if (pp__err_is_local(err)) break; /* the others would fail alike */
  }
  if (race->conn && race->pending == 0 && !race->starting) {
    pp_conn_t *conn = race->conn;
    finish(race);
    pp__conn_race_failed(conn, race->last_error ? race->last_error : UV_ECONNREFUSED);
  }
}

int pp__race_start(pp_conn_t *conn) {
  pp_pool_t *pool = conn->pool;
  const pp__dns_peer_t *d = conn->peer->dns;
  struct pp__race_s *race = malloc(sizeof(*race));
  if (race == NULL) return UV_ENOMEM;
  memset(race, 0, offsetof(struct pp__race_s, addrs));
  race->conn = conn;
  race->pool = pool;
  race->n = d->naddrs;
  memcpy(race->addrs, d->addrs, (size_t)d->naddrs * sizeof(d->addrs[0]));
  uv_timer_init(pool->loop, &race->timer);
  race->timer.data = race;
  race->handles = 1;
  pool->conn_handles++;
  conn->race = race;
  race->starting = true;
  start_next(race);
  race->starting = false;
  if (race->pending > 0) return 0;
  int err = race->last_error ? race->last_error : UV_ECONNREFUSED;
  finish(race);
  return err;
}

void pp__race_cancel(pp_conn_t *conn) {
  if (conn->race) finish(conn->race);
}
