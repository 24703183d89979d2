/* Framing: where one reply ends in a byte stream ("line", "resp", "length", or the caller's
 * function). The framers are incremental — each call resumes where the last one stopped, so a
 * reply that arrives a byte at a time is scanned once — and never copy or allocate: they only
 * say how long the reply at the front of a buffer is. */
#include "internal.h"

#include <string.h>

#define DEFAULT_MAX_REPLY ((size_t)64 * 1024 * 1024)
#define RESP_DEPTH_MAX ((int)(sizeof(((pp_framer_t *)0)->left_) / sizeof(int64_t)))

const char *pp_framing_name(pp_framing_kind_t kind) {
  static const char *const names[] = {PP_FRAMING_MAP(PP__ROW_STRING)};
  return pp__name_of(names, PP_FRAMING_COUNT, (int)kind);
}

void pp_framing_init(pp_framing_t *f, pp_framing_kind_t kind) {
  memset(f, 0, sizeof(*f));
  f->kind = kind;
  f->length_size = 4;
  f->length_big_endian = 1;
}

int pp_framing_validate(const pp_framing_t *f, const char **why) {
  if (why) *why = NULL;
  PP__CHECK(f != NULL, "framing must not be NULL");
  PP__CHECK((int)f->kind >= 0 && f->kind < PP_FRAMING_COUNT,
            "framing.kind must be none, line, resp, length or a function");
  PP__CHECK(f->max_reply <= ((size_t)1 << 40), "framing.max_reply must be at most 2^40 bytes");
  if (f->kind == PP_FRAMING_LENGTH) {
    PP__CHECK(
        f->length_size == 1 || f->length_size == 2 || f->length_size == 4 || f->length_size == 8,
        "framing.length_size must be 1, 2, 4 or 8");
    PP__CHECK(f->length_offset >= 0 && f->length_offset <= 1024,
              "framing.length_offset must be an integer in 0..1024");
    PP__CHECK(f->length_big_endian == 0 || f->length_big_endian == 1,
              "framing.length_big_endian must be 0 or 1");
    PP__CHECK(f->length_includes_header == 0 || f->length_includes_header == 1,
              "framing.length_includes_header must be 0 or 1");
  }
  PP__CHECK(f->kind != PP_FRAMING_CUSTOM || f->fn != NULL, "framing.fn must be set for a function");
  return 0;
}

void pp_framer_init(pp_framer_t *fr, const pp_framing_t *cfg) {
  memset(fr, 0, sizeof(*fr));
  fr->cfg = *cfg;
  if (fr->cfg.max_reply == 0) fr->cfg.max_reply = DEFAULT_MAX_REPLY;
}

static void restart(pp_framer_t *fr) {
  fr->pos_ = fr->scan_ = 0;
  fr->depth_ = 0;
}

/* ---- line ----------------------------------------------------------------------------- */

static ssize_t line_next(pp_framer_t *fr, const char *buf, size_t len) {
  size_t from = fr->pos_ < len ? fr->pos_ : len;
  const char *nl = memchr(buf + from, '\n', len - from);
  if (nl == NULL) {
    fr->pos_ = len;
    return len >= fr->cfg.max_reply ? PP_ETOOLONG : 0;
  }
  size_t n = (size_t)(nl - buf) + 1;
  restart(fr);
  return n > fr->cfg.max_reply ? PP_ETOOLONG : (ssize_t)n;
}

/* ---- resp ----------------------------------------------------------------------------- */

/* A RESP length: "-1" or decimal digits, at most 18 of them. */
static int parse_len(const char *p, size_t n, int64_t *out) {
  if (n == 2 && p[0] == '-' && p[1] == '1') {
    *out = -1;
    return 0;
  }
  if (n == 0 || n > 18) return -1;
  int64_t v = 0;
  for (size_t i = 0; i < n; i++) {
    if (p[i] < '0' || p[i] > '9') return -1;
    v = v * 10 + (p[i] - '0');
  }
  *out = v;
  return 0;
}

/* One element header at pos_ at a time: a simple value or a bulk string completes an element
 * (which may complete the aggregates around it); an aggregate header opens a level. */
static ssize_t resp_next(pp_framer_t *fr, const char *buf, size_t len) {
  size_t max = fr->cfg.max_reply;
  for (;;) {
    size_t pos = fr->pos_;
    if (pos >= len) return 0;
    if (fr->scan_ <= pos) fr->scan_ = pos + 1;
    const char *cr = fr->scan_ < len ? memchr(buf + fr->scan_, '\r', len - fr->scan_) : NULL;
    if (cr == NULL) {
      fr->scan_ = len;
      return len > max ? PP_ETOOLONG : 0;
    }
    size_t crl = (size_t)(cr - buf);
    if (crl + 1 >= len) { /* the LF has not arrived */
      fr->scan_ = crl;
      return 0;
    }
    if (buf[crl + 1] != '\n') return PP_EFRAMING;
    size_t next = crl + 2, end;
    int64_t n;
    char type = buf[pos];
    switch (type) {
      case '+':
      case '-':
      case ':':
      case '_':
      case '#':
      case ',':
      case '(':
        end = next;
        break;
      case '$':
      case '!':
      case '=':
        if (parse_len(buf + pos + 1, crl - pos - 1, &n) != 0) return PP_EFRAMING;
        if (n == -1) {
          if (type != '$') return PP_EFRAMING;
          end = next;
          break;
        }
        if ((uint64_t)n > max) return PP_ETOOLONG;
        end = next + (size_t)n + 2;
        if (end > max) return PP_ETOOLONG;
        if (end > len) { /* the body has not all arrived: resume at this header */
          fr->scan_ = crl;
          return 0;
        }
        if (buf[end - 2] != '\r' || buf[end - 1] != '\n') return PP_EFRAMING;
        break;
      case '*':
      case '~':
      case '>':
      case '%':
      case '|':
        if (parse_len(buf + pos + 1, crl - pos - 1, &n) != 0) return PP_EFRAMING;
        if (n == -1 && type != '*') return PP_EFRAMING;
        if (type == '%') n *= 2;
        if (type == '|') n = n * 2 + 1; /* its pairs, then the value it annotates */
        if (n > (int64_t)max) return PP_ETOOLONG;
        if (n > 0) {
          if (fr->depth_ == RESP_DEPTH_MAX) return PP_EFRAMING;
          fr->left_[fr->depth_++] = n;
          fr->pos_ = fr->scan_ = next;
          if (next > max) return PP_ETOOLONG;
          continue;
        }
        end = next; /* empty or null: a whole element */
        break;
      default:
        return PP_EFRAMING;
    }
    fr->pos_ = fr->scan_ = end;
    while (fr->depth_ > 0 && --fr->left_[fr->depth_ - 1] == 0)
      fr->depth_--;
    if (fr->depth_ == 0) {
      restart(fr);
      return (ssize_t)end;
    }
    if (end > max) return PP_ETOOLONG;
  }
}

/* ---- length --------------------------------------------------------------------------- */

static ssize_t length_next(pp_framer_t *fr, const char *buf, size_t len) {
  const pp_framing_t *c = &fr->cfg;
  size_t hdr = (size_t)c->length_offset + (size_t)c->length_size;
  if (len < hdr) return 0;
  const unsigned char *p = (const unsigned char *)buf + c->length_offset;
  uint64_t v = 0;
  for (int i = 0; i < c->length_size; i++) {
    int k = c->length_big_endian ? i : c->length_size - 1 - i;
    v = (v << 8) | p[k];
  }
  if (c->length_includes_header && v < hdr) return PP_EFRAMING;
  if (v > c->max_reply) return PP_ETOOLONG;
  uint64_t total = c->length_includes_header ? v : hdr + v;
  if (total > c->max_reply) return PP_ETOOLONG;
  return len >= total ? (ssize_t)total : 0;
}

/* ---- the caller's function -------------------------------------------------------------- */

static ssize_t custom_next(pp_framer_t *fr, const char *buf, size_t len) {
  ssize_t r = fr->cfg.fn(fr->cfg.fn_data, buf, len);
  if (r < 0) return r == PP_ETOOLONG ? PP_ETOOLONG : PP_EFRAMING;
  if ((size_t)r > len) return PP_EFRAMING;
  if (r == 0 && len > fr->cfg.max_reply) return PP_ETOOLONG;
  if ((size_t)r > fr->cfg.max_reply) return PP_ETOOLONG;
  return r;
}

ssize_t pp_framer_next(pp_framer_t *fr, const char *buf, size_t len) {
  switch (fr->cfg.kind) {
    case PP_FRAMING_LINE:
      return line_next(fr, buf, len);
    case PP_FRAMING_RESP:
      return resp_next(fr, buf, len);
    case PP_FRAMING_LENGTH:
      return length_next(fr, buf, len);
    case PP_FRAMING_CUSTOM:
      return custom_next(fr, buf, len);
    default:
      return len > 0 ? (ssize_t)len : 0; /* none: every read is a reply */
  }
}
