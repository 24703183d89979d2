/* Error names and messages: ours from PP_ERRNO_MAP, libuv's passed through. */
#include "internal.h"

#include <string.h>

bool pp__err_is_local(int err) {
  return err == UV_EMFILE || err == UV_ENFILE || err == UV_ENOMEM || err == UV_ENOBUFS;
}

/* libuv allocates (and never frees) a string for a code it does not know; ask it through
 * the buffer variant first so unknown codes cost nothing. */
static int uv_knows(int err) {
  char buf[64];
  uv_err_name_r(err, buf, sizeof(buf));
  return strncmp(buf, "Unknown system error", 20) != 0;
}

/* Our row of PP_ERRNO_MAP for `err`: its name and message; 0 when it is not ours. */
static int own_error(int err, const char **name, const char **msg) {
  switch (err) {
#define PP__ERR_ROW(row, value, code, text) \
  case PP_##row:                            \
    *name = code;                           \
    *msg = text;                            \
    return 1;
    PP_ERRNO_MAP(PP__ERR_ROW)
#undef PP__ERR_ROW
  }
  return 0;
}

const char *pp_strerror(int err) {
  const char *name, *msg;
  if (err == 0) return "success";
  if (own_error(err, &name, &msg)) return msg;
  return uv_knows(err) ? uv_strerror(err) : "unknown error";
}

const char *pp_err_name(int err) {
  const char *name, *msg;
  if (err == 0) return "ok";
  if (own_error(err, &name, &msg)) return name;
  return uv_knows(err) ? uv_err_name(err) : "unknown";
}

const char *pp_peer_state_name(pp_peer_state_t state) {
  static const char *const names[] = {PP_PEER_STATE_MAP(PP__ROW_STRING)};
  return pp__name_of(names, PP_PEER_STATE_COUNT, (int)state);
}

const char *pp_close_reason_name(pp_close_reason_t reason) {
  static const char *const names[] = {PP_CLOSE_REASON_MAP(PP__ROW_STRING)};
  return pp__name_of(names, PP_CLOSE_REASON_COUNT, (int)reason);
}

const char *pp_peer_event_name(pp_peer_event_t event) {
  static const char *const names[] = {PP_PEER_EVENT_MAP(PP__ROW_STRING)};
  return pp__name_of(names, PP_PEER_EVENT_COUNT, (int)event);
}
