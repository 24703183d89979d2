/* The address book's text (bindings/book.lua does the files): percent-escaping, the line
 * parser for format v3 (and v2, v1), and the formatter of a pool's peers (a snapshot, then lines
 * a slice at a time).
 *
 *   # peerpool address book v3
 *   127.0.0.1:7001 1700000000000 static -
 *   127.0.0.1:7002 1700000000000 seed b,f=3,lf=1700000000500
 *   ./run/my%20app.sock 1700000000000 runtime f=1,ls=1700000000000 zone=eu,weight=3
 *
 * One peer a line: address, last_seen (Unix ms), source, its failure history (v3: "-" for
 * none, or b (burned), f= consecutive failures, ls= last success, lf= last failure, ej=
 * ejections, es= ejection streak, eu= ejected until; times in Unix ms), and optionally tags,
 * separated by one space. v2 lines have no history field; v1 lines are "addr last_seen
 * [source]". Bytes that could break a line or a field (space, control bytes, non-ASCII, '%',
 * ',' and '=', and '.' in tag keys) are written %XX. A tag value written raw that reads as a
 * number is one, `true`/`false` are booleans; a string that would read that way has its first
 * byte escaped. Nested tag tables are flattened to dotted keys.
 *
 * The first part is plain C with no Lua and no engine; the Lua functions come after it.
 * fuzz/fuzz_book.c runs both on any input. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lpeerpool.h"

#define BOOK_LINE_MAX 65536 /* longer lines are refused: no address or tag set needs more */
#define BOOK_TAG_DEPTH 8    /* nesting of tag tables kept */

typedef struct {
  const char *p;
  size_t n;
} span_t;

typedef struct {
  span_t addr, source, tags; /* as written (v2: still escaped); tags.n == 0: none */
  int64_t last_seen;
  pp_peer_history_t history; /* v3 */
  int has_history;
} book_line_t;

/* A v3 history field: "-" or items "b", "f=N", "ls=MS", "lf=MS", "ej=N", "es=N", "eu=MS". */
static const char *book_parse_history(span_t s, pp_peer_history_t *h, int *any) {
  memset(h, 0, sizeof(*h));
  *any = 0;
  if (s.n == 0) return "missing history (v3: '-' for none)";
  if (s.n == 1 && s.p[0] == '-') return NULL;
  const char *p = s.p, *end = s.p + s.n;
  while (p < end) {
    const char *item = p;
    while (p < end && *p != ',')
      p++;
    size_t n = (size_t)(p - item);
    if (p < end) p++; /* the comma */
    if (n == 1 && item[0] == 'b') {
      h->burned = 1;
      *any = 1;
      continue;
    }
    const char *eq = memchr(item, '=', n);
    if (eq == NULL || eq == item + n - 1 || (size_t)(item + n - eq - 1) > 16)
      return "bad history item";
    int64_t v = 0;
    for (const char *d = eq + 1; d < item + n; d++) {
      if (*d < '0' || *d > '9') return "bad history number";
      v = v * 10 + (*d - '0');
    }
    if (v > (INT64_C(1) << 53)) return "history number over 2^53";
    size_t kn = (size_t)(eq - item);
#define KEY(k) (kn == sizeof(k) - 1 && memcmp(item, k, kn) == 0)
    if (KEY("f") && v <= 1000000)
      h->failures = (int)v;
    else if (KEY("ls"))
      h->last_success = v;
    else if (KEY("lf"))
      h->last_failure = v;
    else if (KEY("ej"))
      h->ejections = (uint64_t)v;
    else if (KEY("es") && v <= 64)
      h->eject_streak = (int)v;
    else if (KEY("eu"))
      h->ejected_until = v;
    else
      return "unknown history item";
#undef KEY
    *any = 1;
  }
  return NULL;
}

static int unhex(unsigned char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Decode the %XX escapes of s into out (which has room for s.n bytes: decoding never grows;
 * NULL: only check). Returns the decoded length, or -1 for a malformed escape or an escaped
 * NUL. */
static long book_unescape(span_t s, char *out) {
  size_t o = 0;
  for (size_t i = 0; i < s.n; i++) {
    unsigned char c = (unsigned char)s.p[i];
    if (c == '%') {
      if (i + 2 >= s.n) return -1;
      int hi = unhex((unsigned char)s.p[i + 1]), lo = unhex((unsigned char)s.p[i + 2]);
      if (hi < 0 || lo < 0 || (hi | lo) == 0) return -1;
      c = (unsigned char)(hi << 4 | lo);
      i += 2;
    }
    if (out) out[o] = (char)c;
    o++;
  }
  return (long)o;
}

/* Whether byte c is written %XX (in a tag key, '.' separates levels, so it is escaped too). */
static int book_must_escape(unsigned char c, int in_key) {
  return c <= ' ' || c >= 0x7f || c == '%' || c == ',' || c == '=' || (in_key && c == '.');
}

/* Write s escaped into out (room for 3 * n bytes); `first` forces the first byte's escape.
 * Returns the length written. */
static size_t book_escape(const char *s, size_t n, int in_key, int first, char *out) {
  static const char hex[] = "0123456789ABCDEF";
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (book_must_escape(c, in_key) || (first && i == 0)) {
      out[o++] = '%';
      out[o++] = hex[c >> 4];
      out[o++] = hex[c & 15];
    } else {
      out[o++] = (char)c;
    }
  }
  return o;
}

/* A last_seen field: decimal digits only, 1 ..= max (the caller's now + 1 day, at most
 * 2^53 so that it is exact in a Lua float too). Returns NULL or why it is refused. */
static const char *book_parse_time(span_t s, int64_t max, int64_t *out) {
  int64_t v = 0;
  if (s.n == 0) return "missing last_seen";
  if (s.n > 20) return "last_seen is not a Unix time in ms";
  for (size_t i = 0; i < s.n; i++) {
    if (s.p[i] < '0' || s.p[i] > '9') return "last_seen is not a non-negative integer";
    if (v > (INT64_C(1) << 53)) break; /* already too big; no overflow below */
    v = v * 10 + (s.p[i] - '0');
  }
  if (v > (INT64_C(1) << 53)) return "last_seen is over 2^53";
  if (v > max) return "last_seen is in the future";
  if (v == 0) return "last_seen is 0";
  if (v < INT64_C(100000000000)) return "last_seen looks like seconds (under 10^11 ms)";
  *out = v;
  return NULL;
}

/* The next field of a line: v2 fields end at one space; v1 fields at runs of blanks. */
static span_t next_field(const char **p, const char *end, int version) {
  span_t f = {*p, 0};
  if (version == 1)
    while (f.p < end && (*f.p == ' ' || *f.p == '\t'))
      f.p++;
  const char *q = f.p;
  while (q < end && *q != ' ' && (version >= 2 || *q != '\t'))
    q++;
  f.n = (size_t)(q - f.p);
  *p = q < end ? q + 1 : q;
  if (version == 1)
    while (*p < end && (**p == ' ' || **p == '\t'))
      (*p)++;
  return f;
}

/* Split and check one line (without its newline; a trailing CR is dropped) of a book in
 * format `version` (1 or 2). Returns NULL with *out filled in, "" for a line to skip quietly
 * (blank or a # comment), or why the line is refused. The address itself is checked later, by
 * the pool that adds it. */
static const char *book_parse_line(const char *s, size_t n, int version, int64_t max_seen,
                                   book_line_t *out) {
  if (n > 0 && s[n - 1] == '\r') n--;
  if (memchr(s, '\0', n)) return "NUL byte in the line";
  if (n == 0 || s[0] == '#') return "";
  if (n > BOOK_LINE_MAX) return "line too long";
  const char *p = s, *end = s + n;
  memset(out, 0, sizeof(*out));
  out->addr = next_field(&p, end, version);
  if (out->addr.n == 0) return version == 1 && p == end ? "" : "empty address";
  span_t seen = next_field(&p, end, version);
  const char *why = book_parse_time(seen, max_seen, &out->last_seen);
  if (why) return why;
  if (version == 1) { /* addr last_seen [source], raw */
    out->source = next_field(&p, end, 1);
    return p < end ? "unknown field after the source" : NULL;
  }
  if (p == end && (p == s || p[-1] != ' ')) return "missing source";
  out->source = next_field(&p, end, 2);
  if (out->source.n == 0) return "empty source";
  if (version >= 3) {
    span_t h = next_field(&p, end, 2);
    why = book_parse_history(h, &out->history, &out->has_history);
    if (why) return why;
  }
  if (p < end || p[-1] == ' ') {
    out->tags = next_field(&p, end, 2);
    if (out->tags.n == 0) return "empty tags field";
    if (p < end || p[-1] == ' ') return "unknown field after the tags";
  }
  if (book_unescape(out->addr, NULL) < 0) return "bad %-escape in the address";
  if (book_unescape(out->source, NULL) < 0) return "bad %-escape in the source";
  if (book_unescape(out->tags, NULL) < 0) return "bad %-escape in the tags";
  return NULL;
}

/* The next key=value of a tags field (consumed from *rest). Returns NULL, or why the field is
 * malformed. */
static const char *book_next_tag(span_t *rest, span_t *key, span_t *value) {
  const char *comma = memchr(rest->p, ',', rest->n);
  size_t len = comma ? (size_t)(comma - rest->p) : rest->n;
  const char *eq = memchr(rest->p, '=', len);
  if (eq == NULL) return "tag without '='";
  key->p = rest->p;
  key->n = (size_t)(eq - rest->p);
  value->p = eq + 1;
  value->n = len - key->n - 1;
  if (key->n == 0) return "tag with an empty key";
  if (comma && comma + 1 == rest->p + rest->n) return "tags end with ','";
  rest->p += comma ? len + 1 : len;
  rest->n -= comma ? len + 1 : len;
  return NULL;
}

/* ---- Lua ------------------------------------------------------------------------------- */

/* A growable byte buffer (malloc'd: it lives in a userdata whose __gc frees it). */
typedef struct {
  char *p;
  size_t n, cap;
} out_t;

/* Room for n more bytes; raises on out of memory. */
static char *out_room(lua_State *L, out_t *o, size_t n) {
  if (o->cap - o->n < n) {
    size_t cap = o->cap ? o->cap : 65536;
    while (cap - o->n < n)
      cap *= 2;
    char *p = realloc(o->p, cap);
    if (p == NULL) luaL_error(L, "address book: out of memory");
    o->p = p;
    o->cap = cap;
  }
  return o->p + o->n;
}

static void out_add(lua_State *L, out_t *o, const char *s, size_t n) {
  memcpy(out_room(L, o, n), s, n);
  o->n += n;
}

static void out_escaped(lua_State *L, out_t *o, const char *s, size_t n, int in_key, int first) {
  o->n += book_escape(s, n, in_key, first, out_room(L, o, 3 * n));
}

/* Whether a string written raw would read back as something else: a number or a boolean. */
static int reads_as_other(lua_State *L, const char *s, int is_value) {
  if (is_value && (strcmp(s, "true") == 0 || strcmp(s, "false") == 0)) return 1;
  if (lua_stringtonumber(L, s) == 0) return 0;
  lua_pop(L, 1);
  return 1;
}

/* Append the tags table at the top of the stack as key=value pairs; `prefix` is the escaped
 * key path so far. Returns how many entries it had to leave out (keys other than strings and
 * integers, values other than strings, numbers, booleans and tables, NaN, deeper nesting). */
static int put_tags(lua_State *L, out_t *o, out_t *prefix, int depth, int *count) {
  int dropped = 0;
  size_t base = prefix->n;
  lua_pushnil(L);
  while (lua_next(L, -2)) {
    prefix->n = base;
    int kt = lua_type(L, -2), vt = lua_type(L, -1);
    size_t kn = 0;
    const char *k = kt == LUA_TSTRING ? lua_tolstring(L, -2, &kn) : NULL;
    if (k && kn > 0 && memchr(k, '\0', kn) == NULL) { /* the parser refuses an escaped NUL */
      out_escaped(L, prefix, k, kn, 1, reads_as_other(L, k, 0));
    } else if (lua_isinteger(L, -2)) {
      char num[32];
      out_add(L, prefix, num,
              (size_t)snprintf(num, sizeof(num), LUA_INTEGER_FMT, lua_tointeger(L, -2)));
    } else {
      goto drop;
    }
    if (vt == LUA_TTABLE) {
      if (depth + 1 >= BOOK_TAG_DEPTH) goto drop;
      out_add(L, prefix, ".", 1);
      dropped += put_tags(L, o, prefix, depth + 1, count);
      lua_pop(L, 1);
      continue;
    }
    char num[64];
    const char *v = num;
    size_t vn = 0;
    int first = 0;
    if (vt == LUA_TSTRING) {
      v = lua_tolstring(L, -1, &vn);
      if (memchr(v, '\0', vn)) goto drop;
      first = vn > 0 && reads_as_other(L, v, 1);
    } else if (vt == LUA_TBOOLEAN) {
      v = lua_toboolean(L, -1) ? "true" : "false";
      vn = strlen(v);
    } else if (lua_isinteger(L, -1)) {
      vn = (size_t)snprintf(num, sizeof(num), LUA_INTEGER_FMT, lua_tointeger(L, -1));
    } else if (vt == LUA_TNUMBER && !isnan(lua_tonumber(L, -1))) {
      double d = (double)lua_tonumber(L, -1);
      if (isinf(d)) {
        v = d > 0 ? "1e9999" : "-1e9999";
        vn = strlen(v);
      } else {
        vn = (size_t)snprintf(num, sizeof(num), "%.17g", d);
        if (strpbrk(num, ".e") == NULL) /* "3" would read back as an integer */
          vn += (size_t)snprintf(num + vn, sizeof(num) - vn, ".0");
      }
    } else {
      goto drop;
    }
    out_add(L, o, *count ? "," : " ", 1);
    out_add(L, o, prefix->p, prefix->n);
    out_add(L, o, "=", 1);
    out_escaped(L, o, v, vn, 0, first);
    (*count)++;
    lua_pop(L, 1);
    continue;
  drop:
    dropped++;
    lua_pop(L, 1);
  }
  prefix->n = base;
  return dropped;
}

/* A save in progress: a snapshot of the engine's peers (address and last_seen, burned peers
 * left out), taken in one pass, which is quick; the lines, which need the Lua side's record
 * of each peer (a few table lookups each, the slow part), are made a slice at a time. */
typedef struct {
  size_t addr; /* offset in addrs */
  int64_t last_seen;
  pp_peer_history_t history;
} row_t;

typedef struct {
  out_t addrs, rows;  /* the snapshot: NUL-terminated addresses back to back; row_t's */
  out_t text, prefix; /* the slice being made; a tag key path */
  size_t next;        /* the next row to write */
  int dropped;        /* tag entries left out so far */
} job_t;

#define LBOOK_JOB "peerpool.book_job"

static int job_gc(lua_State *L) {
  job_t *j = luaL_checkudata(L, 1, LBOOK_JOB);
  out_t *bufs[] = {&j->addrs, &j->rows, &j->text, &j->prefix};
  for (int i = 0; i < 4; i++) {
    free(bufs[i]->p);
    memset(bufs[i], 0, sizeof(out_t));
  }
  return 0;
}

/* Push a new, empty job (its one user value, the peers' meta table, is nil). */
static job_t *new_job(lua_State *L) {
  job_t *j = lua_newuserdatauv(L, sizeof(*j), 1);
  memset(j, 0, sizeof(*j));
  if (luaL_newmetatable(L, LBOOK_JOB)) {
    lua_pushcfunction(L, job_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  return j;
}

typedef struct {
  lua_State *L;
  job_t *job;
} snap_t;

static int snap_peer(pp_peer_t *peer, void *arg) {
  snap_t *s = arg;
  pp_peer_info_t i;
  pp_peer_info(peer, &i);
  row_t r = {s->job->addrs.n, i.last_seen, {0}}; /* burned peers too: they stay burned */
  pp_peer_history(peer, &r.history);
  out_add(s->L, &s->job->addrs, i.addr, strlen(i.addr) + 1);
  out_add(s->L, &s->job->rows, (const char *)&r, sizeof(r));
  return 0;
}

/* book.snapshot(pool): a save of the pool's peers, for book.lines. Source and tags are looked
 * up later in the pool's own record (its user value, laid out by lpool.c's set_peer_meta),
 * anchored here, rather than through lpp_push_peer_meta: that goes through a weak table which
 * the collector has already cleared when a collected pool is saved from a finaliser. */
static int l_snapshot(lua_State *L) {
  lpp_pool_t *p = lpp_check_pool(L, 1);
  job_t *j = new_job(L);
  if (lua_getiuservalue(L, 1, 1) == LUA_TTABLE) lua_getfield(L, -1, "peer_meta");
  lua_setiuservalue(L, 2, 1); /* (a table, or nil or whatever else: put_line checks) */
  lua_settop(L, 2);
  snap_t s = {L, j};
  pp_pool_foreach_peer(p->pool, snap_peer, &s);
  return 1;
}

/* Append " history" (v3): "-", or the items that are not zero. */
static void put_history(lua_State *L, out_t *o, const pp_peer_history_t *h) {
  char buf[160];
  int n = 0;
  const struct {
    const char *key;
    int64_t v;
  } items[] = {{"f", h->failures},      {"ls", h->last_success},
               {"lf", h->last_failure}, {"ej", (int64_t)h->ejections},
               {"es", h->eject_streak}, {"eu", h->ejected_until}};
  buf[n++] = ' ';
  if (h->burned) n += snprintf(buf + n, sizeof(buf) - (size_t)n, "b,");
  for (size_t k = 0; k < sizeof(items) / sizeof(items[0]); k++)
    if (items[k].v > 0)
      n += snprintf(buf + n, sizeof(buf) - (size_t)n, "%s=%lld,", items[k].key,
                    (long long)items[k].v);
  if (n == 1)
    buf[n++] = '-';
  else
    n--; /* the last comma */
  out_add(L, o, buf, (size_t)n);
}

/* Append the line of row r; the pool's peer_meta table (or nil) is at meta_idx. */
static void put_line(lua_State *L, job_t *j, const row_t *r, int meta_idx) {
  /* The engine's canonical spelling reads back as itself (peerpool.h), so it is written as is:
   * a relative unix path is "./path", never something that reads as host:port. */
  const char *addr = j->addrs.p + r->addr;
  out_escaped(L, &j->text, addr, strlen(addr), 0, 0);
  char num[24], *d = num + sizeof(num); /* " last_seen ", without snprintf's cost per line */
  uint64_t v = r->last_seen > 0 ? (uint64_t)r->last_seen : 0;
  *--d = ' ';
  do
    *--d = (char)('0' + v % 10);
  while (v /= 10);
  *--d = ' ';
  out_add(L, &j->text, d, (size_t)(num + sizeof(num) - d));
  int top = lua_gettop(L);
  int has_meta = lua_istable(L, meta_idx) && lua_getfield(L, meta_idx, addr) == LUA_TTABLE;
  size_t sn = 0;
  const char *source = NULL;
  if (has_meta && lua_getfield(L, top + 1, "source") == LUA_TSTRING)
    source = lua_tolstring(L, -1, &sn);
  if (source == NULL || sn == 0 || memchr(source, '\0', sn)) { /* would not read back */
    source = "runtime";
    sn = 7;
  }
  out_escaped(L, &j->text, source, sn, 0, 0);
  put_history(L, &j->text, &r->history);
  if (has_meta && lua_getfield(L, top + 1, "tags") == LUA_TTABLE) {
    int count = 0;
    j->dropped += put_tags(L, &j->text, &j->prefix, 0, &count);
  }
  lua_settop(L, top);
  out_add(L, &j->text, "\n", 1);
}

/* book.lines(job, n): the text of the next n peers of a snapshot (the header first), whether
 * that was the last of them, and how many tag entries have been left out so far. A slice at a
 * time keeps each loop tick short, and so is each string the collector is charged for. */
static int l_lines(lua_State *L) {
  job_t *j = luaL_checkudata(L, 1, LBOOK_JOB);
  lua_Integer n = luaL_checkinteger(L, 2);
  luaL_argcheck(L, n > 0, 2, "count must be > 0");
  lua_settop(L, 1);
  lua_getiuservalue(L, 1, 1);
  j->text.n = 0;
  if (j->next == 0) {
    static const char header[] = "# peerpool address book v3\n";
    out_add(L, &j->text, header, sizeof(header) - 1);
  }
  size_t rows = j->rows.n / sizeof(row_t);
  for (; j->next < rows && n > 0; j->next++, n--)
    put_line(L, j, (const row_t *)j->rows.p + j->next, 2);
  lua_pushlstring(L, j->text.p, j->text.n);
  lua_pushboolean(L, j->next == rows);
  lua_pushinteger(L, j->dropped);
  return 3;
}

/* ---- reading --------------------------------------------------------------------------- */

/* Push the decoded string of an escaped span (v2) or the span itself (v1). */
static void push_field(lua_State *L, span_t s, int version, char *scratch) {
  if (version == 1) {
    lua_pushlstring(L, s.p, s.n);
  } else {
    long n = book_unescape(s, scratch);
    lua_pushlstring(L, scratch, n < 0 ? 0 : (size_t)n); /* escapes were checked already */
  }
}

/* Push a tag key segment or value: raw numbers read as numbers (keys: integers only), raw
 * true/false as booleans (values only), anything else as its decoded string. */
static void push_token(lua_State *L, span_t s, int is_value, char *scratch) {
  if (s.n > 0 && s.n < 64 && s.p[0] != '%') {
    char tok[64];
    memcpy(tok, s.p, s.n);
    tok[s.n] = '\0';
    if (is_value && strcmp(tok, "true") == 0) {
      lua_pushboolean(L, 1);
      return;
    }
    if (is_value && strcmp(tok, "false") == 0) {
      lua_pushboolean(L, 0);
      return;
    }
    if (lua_stringtonumber(L, tok)) {
      if (is_value || lua_isinteger(L, -1)) return;
      lua_pop(L, 1);
    }
  }
  push_field(L, s, 2, scratch);
}

/* Build the tags table of a v2 tags field; pushes it, or returns why the field is bad (and
 * pushes nothing). */
static const char *push_tags(lua_State *L, span_t field, char *scratch) {
  lua_newtable(L);
  int top = lua_gettop(L);
  span_t key, value;
  while (field.n > 0) {
    const char *why = book_next_tag(&field, &key, &value);
    if (why) {
      lua_settop(L, top - 1);
      return why;
    }
    lua_settop(L, top);
    /* Walk (and make) the tables of all but the last segment of the dotted key. */
    for (int depth = 0;; depth++) {
      const char *dot = memchr(key.p, '.', key.n);
      span_t seg = {key.p, dot ? (size_t)(dot - key.p) : key.n};
      if (seg.n == 0 || depth >= BOOK_TAG_DEPTH) {
        lua_settop(L, top - 1);
        return seg.n == 0 ? "tag key with an empty part" : "tags nested too deep";
      }
      push_token(L, seg, 0, scratch);
      if (dot == NULL) break;
      key.p += seg.n + 1;
      key.n -= seg.n + 1;
      lua_pushvalue(L, -1);
      int t = lua_rawget(L, -3);
      if (t == LUA_TNIL) {
        lua_pop(L, 1);
        lua_newtable(L);
        lua_pushvalue(L, -2);
        lua_pushvalue(L, -2);
        lua_rawset(L, -5);
      } else if (t != LUA_TTABLE) {
        lua_settop(L, top - 1);
        return "tag key is both a value and a table";
      }
      lua_remove(L, -2);
    }
    lua_pushvalue(L, -1);
    if (lua_rawget(L, -3) == LUA_TTABLE) {
      lua_settop(L, top - 1);
      return "tag key is both a value and a table";
    }
    lua_pop(L, 1);
    push_token(L, value, 1, scratch);
    lua_rawset(L, -3);
  }
  lua_settop(L, top);
  return NULL;
}

/* Note a refused line in st: count it, and keep its reason among the first few. */
static void refuse(lua_State *L, int st, lua_Integer line, const char *why) {
  lua_getfield(L, st, "nbad");
  lua_Integer nbad = lua_tointeger(L, -1) + 1;
  lua_pop(L, 1);
  lua_pushinteger(L, nbad);
  lua_setfield(L, st, "nbad");
  lua_getfield(L, st, "bad");
  if (lua_istable(L, -1) && luaL_len(L, -1) < 5) {
    lua_pushfstring(L, "line %I: %s", line, why);
    lua_rawseti(L, -2, luaL_len(L, -2) + 1);
  }
  lua_pop(L, 1);
}

static void push_history(lua_State *L, const book_line_t *e) {
  if (!e->has_history) {
    lua_pushboolean(L, 0);
    return;
  }
  const pp_peer_history_t *h = &e->history;
  lua_createtable(L, 0, 7);
  lua_pushboolean(L, h->burned);
  lua_setfield(L, -2, "burned");
#define F(f)                             \
  lua_pushinteger(L, (lua_Integer)h->f); \
  lua_setfield(L, -2, #f);
  F(failures) F(last_success) F(last_failure) F(ejections) F(eject_streak) F(ejected_until)
#undef F
}

/* book.parse(st, data, rows): parse the whole lines of `data` (up to its last newline) of a
 * book; st = { version = 1|2, max_seen = ms, line = lines read so far, nbad = n, bad = {} }.
 * Good lines go to rows as flat 6-tuples: addr, last_seen, source (nil in v1 when absent),
 * tags (false if none), line number, history (a table, or false when none). Refused lines are
 * counted in st.nbad and the first five reasons kept in st.bad. Returns the number of rows and the
 * bytes consumed. */
static int l_parse(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  size_t n;
  const char *data = luaL_checklstring(L, 2, &n);
  luaL_checktype(L, 3, LUA_TTABLE);
  lua_getfield(L, 1, "version");
  int version = (int)luaL_optinteger(L, -1, 2);
  lua_getfield(L, 1, "max_seen");
  int64_t max_seen = (int64_t)luaL_checkinteger(L, -1);
  lua_getfield(L, 1, "line");
  lua_Integer line = luaL_optinteger(L, -1, 0);
  lua_pop(L, 3);
  luaL_argcheck(L, version >= 1 && version <= 3, 1, "st.version must be 1, 2 or 3");
  char *scratch = lua_newuserdatauv(L, BOOK_LINE_MAX, 0);
  lua_Integer rows = 0;
  size_t pos = 0;
  const char *nl;
  while ((nl = memchr(data + pos, '\n', n - pos)) != NULL) {
    const char *s = data + pos;
    size_t len = (size_t)(nl - s);
    pos += len + 1;
    line++;
    book_line_t e;
    const char *why = book_parse_line(s, len, version, max_seen, &e);
    if (why == NULL && e.tags.n > 0) why = push_tags(L, e.tags, scratch);
    if (why) {
      if (*why) refuse(L, 1, line, why);
      continue;
    }
    lua_Integer r = rows * 6;
    push_history(L, &e);
    lua_rawseti(L, 3, r + 6);
    if (e.tags.n == 0) lua_pushboolean(L, 0);
    lua_rawseti(L, 3, r + 4);
    push_field(L, e.addr, version, scratch);
    lua_rawseti(L, 3, r + 1);
    lua_pushinteger(L, e.last_seen);
    lua_rawseti(L, 3, r + 2);
    if (e.source.n > 0)
      push_field(L, e.source, version, scratch);
    else
      lua_pushnil(L);
    lua_rawseti(L, 3, r + 3);
    lua_pushinteger(L, line);
    lua_rawseti(L, 3, r + 5);
    rows++;
  }
  lua_pushinteger(L, line);
  lua_setfield(L, 1, "line");
  lua_pushinteger(L, rows);
  lua_pushinteger(L, (lua_Integer)pos);
  return 2;
}

/* book.emit(text): through the binding's reporting path (peerpool.on_error's function, or
 * stderr). */
static int l_emit(lua_State *L) {
  lpp_emit(L, luaL_checkstring(L, 1));
  return 0;
}

/* book.set_close(fn): keep book.close where C can find it without the module table:
 * registry["peerpool.book.close"] (a pool's C finaliser may call it; book.lua's own finaliser
 * already does the same, first). */
static int l_set_close(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_settop(L, 1);
  lua_setfield(L, LUA_REGISTRYINDEX, "peerpool.book.close");
  return 0;
}

static const luaL_Reg book_fns[] = {
    {"snapshot", l_snapshot}, {"lines", l_lines},         {"parse", l_parse},
    {"emit", l_emit},         {"set_close", l_set_close}, {NULL, NULL},
};

/* Push the table of the book's C functions (module.c hands it to book.lua). */
int lpp_book_open(lua_State *L) {
  luaL_newlib(L, book_fns);
  lua_pushinteger(L, BOOK_LINE_MAX);
  lua_setfield(L, -2, "LINE_MAX");
  return 1;
}
