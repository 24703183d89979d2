/*
 * A scripted conn hook for the handshake and ping tests: both hooks are handed a conn, talk
 * on it and report the end with a done call (pp_conn_handshake_done, pp_conn_ping_done). The
 * script writes a line and waits for its echo, fails, finishes inside the hook, or never
 * finishes, as its mode says, and records each conn it was handed in a slot.
 * Implemented in test_fixtures_hook.c (which defines no TEST).
 */
#ifndef PP_FIXTURES_HOOK_H
#define PP_FIXTURES_HOOK_H

#include "fixtures.h"

typedef enum {
  HOOK_ECHO,       /* write the line, read its echo, then report done(0) */
  HOOK_ECHO_FAIL,  /* the same, then report done(fail_status) */
  HOOK_SYNC_OK,    /* report done(0) inside the hook */
  HOOK_NEVER,      /* do nothing: the engine's timeout or close ends it */
  HOOK_READ_NEVER, /* start a reader, but never report done */
} hook_mode_t;

#define HOOK_SLOTS 64

typedef struct hook_script_s hook_script_t;

/* One conn the hook was handed. */
typedef struct {
  hook_script_t *script;
  pp_conn_t *conn;
  pp_write_t w;
  char got[64];
  size_t len;
  int done;   /* the script reported done for it */
  int closed; /* `closed` told the script to let it go */
} hook_slot_t;

struct hook_script_s {
  hook_mode_t mode;
  const char *line;                     /* what HOOK_ECHO writes and waits for */
  int (*done)(pp_conn_t *, int status); /* pp_conn_handshake_done or pp_conn_ping_done */
  int fail_status;                      /* what HOOK_ECHO_FAIL reports */
  int report_twice; /* after an echo, report done a second time at once, into done_again_rc */
  int calls;        /* conns handed to the hook */
  int closed_calls; /* conns `closed` took back from the script */
  int done_rc, done_again_rc;
  hook_slot_t slot[HOOK_SLOTS];
};

/* Zero `h` and set what its script does. */
void hook_script_init(hook_script_t *h, hook_mode_t mode, const char *line,
                      int (*done)(pp_conn_t *, int), int fail_status);
/* Call from the hook: record `conn` in the next slot and act as the mode says. */
void hook_script_run(hook_script_t *h, pp_conn_t *conn);
/* Call from `closed`: the slot of `conn` while the script still holds it (marked closed now,
 * counted in closed_calls), or NULL if the script had reported done for it already. */
hook_slot_t *hook_script_closed(hook_script_t *h, pp_conn_t *conn);
/* Report done(0) for slot `i` from the test, as a hook that finishes late would. */
int hook_script_finish(hook_script_t *h, int i);

#endif /* PP_FIXTURES_HOOK_H */
