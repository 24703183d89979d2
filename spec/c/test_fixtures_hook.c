/* The scripted conn hook of fixtures_hook.h (no tests here). */
#include "fixtures_hook.h"

void hook_script_init(hook_script_t *h, hook_mode_t mode, const char *line,
                      int (*done)(pp_conn_t *, int), int fail_status) {
  memset(h, 0, sizeof *h);
  h->mode = mode;
  h->line = line;
  h->done = done;
  h->fail_status = fail_status;
}

static void report(hook_script_t *h, hook_slot_t *s, int status, int twice) {
  s->done = 1;
  h->done_rc = h->done(s->conn, status);
  if (twice) h->done_again_rc = h->done(s->conn, status);
}

static void hook_write_cb(pp_write_t *req, int status) {
  (void)req;
}

static void hook_read_cb(pp_conn_t *conn, ssize_t nread, const char *buf, void *arg) {
  hook_slot_t *s = arg;
  hook_script_t *h = s->script;
  ASSERT(!s->closed); /* `closed` means the script's reader is never called again */
  if (nread < 0) return;
  if (s->len + (size_t)nread <= sizeof s->got) memcpy(s->got + s->len, buf, (size_t)nread);
  s->len += (size_t)nread;
  size_t n = strlen(h->line);
  if (s->len >= n && memcmp(s->got, h->line, n) == 0) {
    ASSERT_OK(pp_conn_read_stop(conn));
    report(h, s, h->mode == HOOK_ECHO_FAIL ? h->fail_status : 0, h->report_twice);
  }
}

void hook_script_run(hook_script_t *h, pp_conn_t *conn) {
  ASSERT_NOT_NULL(conn);
  int i = h->calls++;
  ASSERT_LT(i, HOOK_SLOTS);
  hook_slot_t *s = &h->slot[i];
  memset(s, 0, sizeof *s);
  s->script = h;
  s->conn = conn;
  switch (h->mode) {
    case HOOK_ECHO:
    case HOOK_ECHO_FAIL: {
      ASSERT_OK(pp_conn_read_start(conn, hook_read_cb, s));
      uv_buf_t b = uv_buf_init((char *)h->line, (unsigned int)strlen(h->line));
      ASSERT_OK(pp_conn_write(&s->w, conn, &b, 1, hook_write_cb));
      break;
    }
    case HOOK_SYNC_OK:
      report(h, s, 0, 0);
      break;
    case HOOK_READ_NEVER:
      ASSERT_OK(pp_conn_read_start(conn, hook_read_cb, s));
      break;
    case HOOK_NEVER:
      break;
  }
}

hook_slot_t *hook_script_closed(hook_script_t *h, pp_conn_t *conn) {
  for (int i = 0; i < h->calls && i < HOOK_SLOTS; i++) {
    hook_slot_t *s = &h->slot[i];
    if (s->conn == conn && !s->done && !s->closed) {
      s->closed = 1;
      h->closed_calls++;
      return s;
    }
  }
  return NULL;
}

int hook_script_finish(hook_script_t *h, int i) {
  h->slot[i].done = 1;
  return h->done(h->slot[i].conn, 0);
}
