/* The error table: our codes, libuv's, and the name tables for states and close reasons. */
#include "test.h"

TEST(errors_our_codes_have_names_and_messages) {
#define CHECK(name, value, code, msg)         \
  ASSERT_EQ(PP_##name, value);                \
  ASSERT_STREQ(pp_err_name(PP_##name), code); \
  ASSERT_STREQ(pp_strerror(PP_##name), msg);
  PP_ERRNO_MAP(CHECK)
#undef CHECK
}

TEST(errors_our_codes_are_outside_libuv_range) {
#define CHECK(name, value, code, msg) ASSERT_LT(PP_##name, -4095);
  PP_ERRNO_MAP(CHECK)
#undef CHECK
}

TEST(errors_libuv_codes_pass_through) {
  /* Every code of libuv's own table keeps libuv's name and message. */
#define CHECK(name, msg)                       \
  ASSERT_STREQ(pp_err_name(UV_##name), #name); \
  ASSERT_STREQ(pp_strerror(UV_##name), msg);
  UV_ERRNO_MAP(CHECK)
#undef CHECK
}

TEST(errors_unknown_codes_never_null) {
  int codes[] = {-29999, -30000, -30015, -30100, -1000000, 12345, 1, -5000};
  for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
    const char *n = pp_err_name(codes[i]);
    const char *m = pp_strerror(codes[i]);
    ASSERT_NOT_NULL(n);
    ASSERT_NOT_NULL(m);
    ASSERT_GT(strlen(n), 0);
    ASSERT_GT(strlen(m), 0);
  }
}

TEST(errors_zero_is_not_an_error_name) {
  /* 0 is success: any non-NULL string is fine, but it must not claim to be one of ours. */
  const char *n = pp_err_name(0);
  ASSERT_NOT_NULL(n);
#define CHECK(name, value, code, msg) ASSERT(strcmp(n, code) != 0);
  PP_ERRNO_MAP(CHECK)
#undef CHECK
  ASSERT_NOT_NULL(pp_strerror(0));
}

TEST(errors_peer_state_names) {
  ASSERT_STREQ(pp_peer_state_name(PP_PEER_KNOWN), "known");
  ASSERT_STREQ(pp_peer_state_name(PP_PEER_CONNECTING), "connecting");
  ASSERT_STREQ(pp_peer_state_name(PP_PEER_CONNECTED), "connected");
  ASSERT_STREQ(pp_peer_state_name(PP_PEER_READY), "ready");
  ASSERT_STREQ(pp_peer_state_name(PP_PEER_DISCONNECTED), "disconnected");
  ASSERT_STREQ(pp_peer_state_name(PP_PEER_FAILED), "failed");
  ASSERT_STREQ(pp_peer_state_name(PP_PEER_BURNED), "burned");
  ASSERT_STREQ(pp_peer_state_name(PP_PEER_STATE_COUNT), "unknown");
  ASSERT_STREQ(pp_peer_state_name((pp_peer_state_t)-1), "unknown");
  ASSERT_STREQ(pp_peer_state_name((pp_peer_state_t)1000), "unknown");
}

TEST(errors_close_reason_names) {
#define CHECK(name, str, why) ASSERT_STREQ(pp_close_reason_name(PP_CLOSE_##name), str);
  PP_CLOSE_REASON_MAP(CHECK)
#undef CHECK
  ASSERT_NOT_NULL(pp_close_reason_name(PP_CLOSE_REASON_COUNT));
  ASSERT_NOT_NULL(pp_close_reason_name((pp_close_reason_t)-1));
}

TEST(errors_ejected_has_its_code) {
  ASSERT_EQ(PP_EEJECTED, -30017);
  ASSERT_STREQ(pp_err_name(PP_EEJECTED), "ejected");
  ASSERT_STREQ(pp_strerror(PP_EEJECTED), "peer is ejected for a cool-down");
  ASSERT_STREQ(pp_peer_state_name(PP_PEER_EJECTED), "ejected");
}
