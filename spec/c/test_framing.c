/* The framers ("line", "resp", "length", a function): each against the same stream delivered
 * whole, one byte at a time and in uneven chunks, so replies split across reads and many
 * replies in one read come out alike; and the errors (bad bytes, too long). */
#include <string.h>

#include "test.h"

/* Feed `stream` to a framer `chunk` bytes at a time (0: uneven chunks 1, 2, 3, ...), taking
 * every whole reply as soon as the framer sees it; check the replies have the lengths in
 * `want` (0-terminated) and that nothing is left over. Returns the first error, or 0. */
static int frame_stream(const pp_framing_t *cfg, const char *stream, size_t len, size_t chunk,
                        const size_t *want) {
  pp_framer_t fr;
  pp_framer_init(&fr, cfg);
  size_t have = 0, taken = 0, step = 1;
  int nreply = 0;
  while (have < len) {
    size_t add = chunk ? chunk : step++;
    if (add > len - have) add = len - have;
    have += add;
    for (;;) {
      ssize_t n = pp_framer_next(&fr, stream + taken, have - taken);
      if (n < 0) return (int)n;
      if (n == 0) break;
      ASSERT_MSG(want[nreply] != 0, "more replies than expected (chunk %zu)", chunk);
      ASSERT_MSG((size_t)n == want[nreply], "reply %d: %zd bytes, want %zu (chunk %zu)", nreply, n,
                 want[nreply], chunk);
      taken += (size_t)n;
      nreply++;
    }
  }
  ASSERT_MSG(want[nreply] == 0, "only %d replies (chunk %zu)", nreply, chunk);
  ASSERT_EQ(taken, len);
  return 0;
}

/* Every chunking: whole, byte by byte, uneven, and a few fixed sizes. */
static void frame_all_ways(const pp_framing_t *cfg, const char *stream, size_t len,
                           const size_t *want) {
  size_t chunks[] = {len, 1, 0, 2, 3, 7, 64};
  for (size_t i = 0; i < sizeof(chunks) / sizeof(chunks[0]); i++)
    ASSERT_OK(frame_stream(cfg, stream, len, chunks[i], want));
}

static ssize_t first_error(pp_framing_kind_t kind, const char *stream, size_t max_reply) {
  pp_framing_t cfg;
  pp_framing_init(&cfg, kind);
  cfg.max_reply = max_reply;
  pp_framer_t fr;
  pp_framer_init(&fr, &cfg);
  return pp_framer_next(&fr, stream, strlen(stream));
}

TEST(framing_line_splits_lf_and_crlf) {
  pp_framing_t cfg;
  pp_framing_init(&cfg, PP_FRAMING_LINE);
  const char s[] = "PONG\r\nhello world\n\r\n\nlast\r\n";
  size_t want[] = {6, 12, 2, 1, 6, 0};
  frame_all_ways(&cfg, s, sizeof(s) - 1, want);
}

TEST(framing_line_too_long) {
  ASSERT_EQ(first_error(PP_FRAMING_LINE, "0123456789", 10), PP_ETOOLONG);
  ASSERT_EQ(first_error(PP_FRAMING_LINE, "012345678\n", 10), 10);
}

/* One reply per entry: every RESP2 and RESP3 type, nesting, CRLFs inside a bulk string. */
static const char *const resp_replies[] = {"+OK\r\n",
                                           "-ERR unknown command\r\n",
                                           ":-42\r\n",
                                           "$5\r\nhello\r\n",
                                           "$-1\r\n",
                                           "$0\r\n\r\n",
                                           "*-1\r\n",
                                           "*0\r\n",
                                           "*2\r\n$3\r\nfoo\r\n*2\r\n:1\r\n*1\r\n+x\r\n",
                                           "$11\r\na\r\nb\r\n\r\nc\r\n\r\n",
                                           "%1\r\n+k\r\n#t\r\n",
                                           "|1\r\n+ttl\r\n:3\r\n:7\r\n",
                                           "_\r\n",
                                           ",3.14\r\n",
                                           "(123\r\n",
                                           "=7\r\ntxt:abc\r\n",
                                           "~1\r\n!2\r\nno\r\n",
                                           ">2\r\n+message\r\n*1\r\n%0\r\n",
                                           NULL};

TEST(framing_resp_all_types_every_split) {
  pp_framing_t cfg;
  pp_framing_init(&cfg, PP_FRAMING_RESP);
  char stream[512];
  size_t want[32], len = 0, n = 0;
  for (; resp_replies[n]; n++) {
    want[n] = strlen(resp_replies[n]);
    memcpy(stream + len, resp_replies[n], want[n]);
    len += want[n];
  }
  want[n] = 0;
  frame_all_ways(&cfg, stream, len, want);
}

TEST(framing_resp_deep_nesting) {
  /* 60 nested one-element arrays around one integer: fine; 70 is refused. */
  char s[512];
  size_t n = 0;
  for (int i = 0; i < 60; i++)
    n += (size_t)snprintf(s + n, sizeof(s) - n, "*1\r\n");
  n += (size_t)snprintf(s + n, sizeof(s) - n, ":1\r\n");
  pp_framing_t cfg;
  pp_framing_init(&cfg, PP_FRAMING_RESP);
  size_t want[] = {n, 0};
  frame_all_ways(&cfg, s, n, want);
  n = 0;
  for (int i = 0; i < 70; i++)
    n += (size_t)snprintf(s + n, sizeof(s) - n, "*1\r\n");
  ASSERT_EQ(first_error(PP_FRAMING_RESP, s, 0), PP_EFRAMING);
}

TEST(framing_resp_errors) {
  ASSERT_EQ(first_error(PP_FRAMING_RESP, "hello\r\n", 0), PP_EFRAMING);
  ASSERT_EQ(first_error(PP_FRAMING_RESP, "$x\r\n", 0), PP_EFRAMING);
  ASSERT_EQ(first_error(PP_FRAMING_RESP, "$-2\r\n", 0), PP_EFRAMING);
  ASSERT_EQ(first_error(PP_FRAMING_RESP, "$3\r\nabcXY", 0), PP_EFRAMING); /* no CRLF after */
  ASSERT_EQ(first_error(PP_FRAMING_RESP, "+a\rb\r\n", 0), PP_EFRAMING);
  ASSERT_EQ(first_error(PP_FRAMING_RESP, "$?\r\n", 0), PP_EFRAMING); /* streamed: refused */
  ASSERT_EQ(first_error(PP_FRAMING_RESP, "%-1\r\n", 0), PP_EFRAMING);
  ASSERT_EQ(first_error(PP_FRAMING_RESP, "$100\r\n", 50), PP_ETOOLONG);
  ASSERT_EQ(first_error(PP_FRAMING_RESP, "+aaaaaaaaaaaaaaaaaaaaaaa", 10), PP_ETOOLONG);
  ASSERT_EQ(first_error(PP_FRAMING_RESP, "*2\r\n$3\r\nfoo\r\n$20\r\n", 30), PP_ETOOLONG);
  /* incomplete is not an error */
  ASSERT_EQ(first_error(PP_FRAMING_RESP, "*2\r\n$3\r\nfoo\r\n", 0), 0);
  ASSERT_EQ(first_error(PP_FRAMING_RESP, "+OK\r", 0), 0);
}

TEST(framing_resp_big_bulk_scanned_once) {
  /* A 1 MiB bulk reply arriving 1 KiB at a time: the header is parsed each time but the body
   * is never searched (no quadratic scan): this just has to be right and quick. */
  size_t body = 1 << 20;
  size_t len = 16 + body;
  char *s = malloc(len);
  ASSERT_NOT_NULL(s);
  int h = snprintf(s, 16, "$%zu\r\n", body);
  memset(s + h, '\r', body); /* CRs in the body must not confuse it */
  memcpy(s + h + body, "\r\n", 2);
  len = (size_t)h + body + 2;
  pp_framing_t cfg;
  pp_framing_init(&cfg, PP_FRAMING_RESP);
  size_t want[] = {len, 0};
  ASSERT_OK(frame_stream(&cfg, s, len, 1024, want));
  free(s);
}

/* A length-prefixed framing: a `size`-byte length at `offset`, big- or little-endian, of the
 * payload or (includes_header) of the whole frame. */
static pp_framing_t length_framing(int size, int offset, int big_endian, int includes_header) {
  pp_framing_t cfg;
  pp_framing_init(&cfg, PP_FRAMING_LENGTH);
  cfg.length_size = size;
  cfg.length_offset = offset;
  cfg.length_big_endian = big_endian;
  cfg.length_includes_header = includes_header;
  return cfg;
}

TEST(framing_length_prefix_variants) {
  /* 2-byte big-endian payload length after a 1-byte type */
  pp_framing_t cfg = length_framing(2, 1, 1, 0);
  const char a[] =
      "T\x00\x03"
      "abc"
      "U\x00\x00"
      "V\x01\x01";
  char big[12 + 257];
  memcpy(big, a, 12);
  memset(big + 12, 'x', 257);
  size_t want_a[] = {6, 3, 3 + 257, 0};
  frame_all_ways(&cfg, big, sizeof(big), want_a);
  /* 4-byte little-endian total length (header included) */
  cfg = length_framing(4, 0, 0, 1);
  const char b[] =
      "\x06\x00\x00\x00hi"
      "\x04\x00\x00\x00"
      "\x05\x00\x00\x00!";
  size_t want_b[] = {6, 4, 5, 0};
  frame_all_ways(&cfg, b, sizeof(b) - 1, want_b);
  /* 8-byte, 1-byte */
  cfg = length_framing(1, 0, 1, 0);
  const char c[] = "\x02zz\x00\x01q";
  size_t want_c[] = {3, 1, 2, 0};
  frame_all_ways(&cfg, c, sizeof(c) - 1, want_c);
}

TEST(framing_length_errors) {
  pp_framing_t cfg;
  pp_framing_init(&cfg, PP_FRAMING_LENGTH);
  cfg.length_includes_header = 1;
  pp_framer_t fr;
  pp_framer_init(&fr, &cfg);
  ASSERT_EQ(pp_framer_next(&fr, "\x00\x00\x00\x02", 4), PP_EFRAMING); /* shorter than itself */
  pp_framing_init(&cfg, PP_FRAMING_LENGTH);
  cfg.max_reply = 100;
  pp_framer_init(&fr, &cfg);
  ASSERT_EQ(pp_framer_next(&fr, "\x00\x00\x01\x00", 4), PP_ETOOLONG);
  pp_framer_init(&fr, &cfg);
  ASSERT_EQ(pp_framer_next(&fr, "\x00\x00", 2), 0);
}

static ssize_t colon_framer(void *data, const char *buf, size_t len) {
  (*(int *)data)++;
  const char *p = memchr(buf, ':', len);
  if (p && p == buf) return -1;
  return p ? (ssize_t)(p - buf) + 1 : 0;
}

TEST(framing_function) {
  int calls = 0;
  pp_framing_t cfg;
  pp_framing_init(&cfg, PP_FRAMING_CUSTOM);
  ASSERT_ERR(pp_framing_validate(&cfg, NULL), PP_EINVAL);
  cfg.fn = colon_framer;
  cfg.fn_data = &calls;
  ASSERT_OK(pp_framing_validate(&cfg, NULL));
  const char s[] = "ab:c:defg:";
  size_t want[] = {3, 2, 5, 0};
  frame_all_ways(&cfg, s, sizeof(s) - 1, want);
  ASSERT_GT(calls, 0);
  pp_framer_t fr;
  pp_framer_init(&fr, &cfg);
  ASSERT_EQ(pp_framer_next(&fr, ":x", 2), PP_EFRAMING);
}

TEST(framing_validate_names_the_field) {
  pp_framing_t cfg;
  const char *why;
  pp_framing_init(&cfg, PP_FRAMING_LENGTH);
  cfg.length_size = 3;
  ASSERT_ERR(pp_framing_validate(&cfg, &why), PP_EINVAL);
  ASSERT_CONTAINS(why, "length_size");
  pp_framing_init(&cfg, PP_FRAMING_LENGTH);
  cfg.length_offset = -1;
  ASSERT_ERR(pp_framing_validate(&cfg, &why), PP_EINVAL);
  ASSERT_CONTAINS(why, "length_offset");
  pp_framing_init(&cfg, (pp_framing_kind_t)42);
  ASSERT_ERR(pp_framing_validate(&cfg, &why), PP_EINVAL);
  ASSERT_CONTAINS(why, "framing.kind");
  ASSERT_STREQ(pp_framing_name(PP_FRAMING_RESP), "resp");
  ASSERT_STREQ(pp_framing_name((pp_framing_kind_t)42), "unknown");
}
