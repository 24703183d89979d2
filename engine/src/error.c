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

const char *pp_strerror(int err) {
  switch (err) {
#define PP__ERR_MSG(name, value, code, msg) \
  case PP_##name:                           \
    return msg;
    PP_ERRNO_MAP(PP__ERR_MSG)
#undef PP__ERR_MSG
    case 0:
      return "success";
  }
  return uv_knows(err) ? uv_strerror(err) : "unknown error";
}

const char *pp_err_name(int err) {
  switch (err) {
#define PP__ERR_NAME(name, value, code, msg) \
  case PP_##name:                            \
    return code;
    PP_ERRNO_MAP(PP__ERR_NAME)
#undef PP__ERR_NAME
    case 0:
      return "ok";
  }
  return uv_knows(err) ? uv_err_name(err) : "unknown";
}

const char *pp_peer_state_name(pp_peer_state_t state) {
  static const char *const names[] = {
#define PP__STATE_NAME(name, str) str,
      PP_PEER_STATE_MAP(PP__STATE_NAME)
#undef PP__STATE_NAME
  };
  if ((unsigned)state >= PP_PEER_STATE_COUNT) return "unknown";
  return names[state];
}

const char *pp_close_reason_name(pp_close_reason_t reason) {
  static const char *const names[] = {
#define PP__REASON_NAME(name, str, why) str,
      PP_CLOSE_REASON_MAP(PP__REASON_NAME)
#undef PP__REASON_NAME
  };
  if ((unsigned)reason >= PP_CLOSE_REASON_COUNT) return "unknown";
  return names[reason];
}

const char *pp_peer_event_name(pp_peer_event_t event) {
  static const char *const names[] = {
#define PP__EVENT_NAME(name, str) str,
      PP_PEER_EVENT_MAP(PP__EVENT_NAME)
#undef PP__EVENT_NAME
  };
  if ((unsigned)event >= PP_PEER_EVENT_COUNT) return "unknown";
  return names[event];
}
