/* libFuzzer target for the address book's text format (bindings/lbook.c). Every line of the
 * input is parsed as v1 and as v2:
 *   - by the plain C parser: what it accepts must lie within the line, decode, and survive
 *     escape + unescape unchanged (the input as one raw address or tag key must too);
 *   - by book.parse in a Lua state: every row it gives is written back with book.lines (tags
 *     and all) and must parse again to the same address (canonically), last_seen, source and
 *     tags.
 * The pool-facing functions of lbook.c (snapshot) are not run; their two binding helpers are
 * stubbed below.
 *
 *   cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DPP_FUZZ=ON
 *   cmake --build build-fuzz --target fuzz_book
 *   mkdir -p /tmp/book-corpus
 *   build-fuzz/fuzz_book -dict=fuzz/book.dict -max_len=4096 /tmp/book-corpus fuzz/corpus/book
 */
#include "../bindings/lbook.c"

#include <lualib.h>

#define CHECK(cond)                                                         \
  do {                                                                      \
    if (!(cond)) {                                                          \
      fprintf(stderr, "fuzz_book: %s failed (line %d)\n", #cond, __LINE__); \
      abort();                                                              \
    }                                                                       \
  } while (0)

/* s (n raw bytes) escaped, then unescaped, is s again, and its escaped form holds no byte
 * that would end a field or a line. */
static void round_trip(const char *s, size_t n, int in_key, int first) {
  if (memchr(s, '\0', n)) return; /* the writer keeps NUL out of the book */
  char *esc = malloc(3 * n + 1), *back = malloc(3 * n + 1);
  size_t m = book_escape(s, n, in_key, first, esc);
  for (size_t i = 0; i < m; i++)
    CHECK(esc[i] != ' ' && esc[i] != '\n' && esc[i] != '\r' && esc[i] != ',' && esc[i] != '=' &&
          (!in_key || esc[i] != '.') && (unsigned char)esc[i] > ' ' &&
          (unsigned char)esc[i] < 0x7f);
  span_t e = {esc, m};
  CHECK(book_unescape(e, NULL) == (long)n);
  long k = book_unescape(e, back);
  CHECK(k == (long)n && memcmp(back, s, n) == 0);
  free(esc);
  free(back);
}

static void check_span(span_t f, const char *line, size_t n) {
  CHECK(f.n == 0 || (f.p >= line && f.p + f.n <= line + n));
}

static void check_line(const char *line, size_t n, int version) {
  book_line_t e;
  const int64_t max = INT64_C(1) << 53;
  const char *why = book_parse_line(line, n, version, max, &e);
  if (why) return;
  check_span(e.addr, line, n);
  check_span(e.source, line, n);
  check_span(e.tags, line, n);
  CHECK(e.addr.n > 0 && e.last_seen >= 1 && e.last_seen <= max);
  if (version == 1) return;
  char *buf = malloc(n + 1);
  long k = book_unescape(e.addr, buf);
  CHECK(k >= 0 && memchr(buf, '\0', (size_t)k) == NULL);
  round_trip(buf, (size_t)k, 0, 0);
  CHECK(book_unescape(e.source, buf) >= 0);
  span_t rest = e.tags, key, value;
  while (rest.n > 0 && book_next_tag(&rest, &key, &value) == NULL) {
    check_span(key, line, n);
    check_span(value, line, n);
    CHECK(key.n > 0 && book_unescape(key, buf) >= 0 && book_unescape(value, buf) >= 0);
  }
  free(buf);
}

/* ---- the Lua half ---------------------------------------------------------------------- */

lpp_pool_t *lpp_check_pool(lua_State *L, int idx) {
  luaL_error(L, "fuzz_book: no pools here");
  return NULL;
}

void lpp_emit(lua_State *L, const char *text) {}

/* newjob(addrs, seens, meta): a job as l_snapshot makes, from lists instead of a pool. */
static int newjob(lua_State *L) {
  job_t *j = lua_newuserdatauv(L, sizeof(*j), 1);
  memset(j, 0, sizeof(*j));
  if (luaL_newmetatable(L, LBOOK_JOB)) {
    lua_pushcfunction(L, job_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  lua_pushvalue(L, 3);
  lua_setiuservalue(L, -2, 1);
  for (lua_Integer i = 1; lua_rawgeti(L, 1, i) == LUA_TSTRING; i++) {
    lua_rawgeti(L, 2, i);
    row_t r = {j->addrs.n, lua_tointeger(L, -1)};
    out_add(L, &j->addrs, lua_tostring(L, -2), lua_rawlen(L, -2) + 1);
    out_add(L, &j->rows, (const char *)&r, sizeof(r));
    lua_pop(L, 2);
  }
  lua_pop(L, 1);
  return 1;
}

/* canonical(addr): the engine's spelling, or nil. */
static int canonical(lua_State *L) {
  char out[256];
  if (pp_addr_canonical(luaL_checkstring(L, 1), out, sizeof(out), NULL) != 0) return 0;
  lua_pushstring(L, out);
  return 1;
}

static const char round_trip_lua[] =
    "local parse, lines, newjob, canonical = ...\n"
    "local function same(a, b)\n"
    "  if type(a) ~= 'table' or type(b) ~= 'table' then\n"
    "    return a == b and math.type(a) == math.type(b)\n"
    "  end\n"
    "  for k, v in pairs(a) do if not same(v, b[k]) then return false end end\n"
    "  for k in pairs(b) do if a[k] == nil then return false end end\n"
    "  return true\n"
    "end\n"
    "return function(data)\n"
    "  for version = 1, 2 do\n"
    "    local st = { version = version, max_seen = 1 << 53, line = 0, nbad = 0, bad = {} }\n"
    "    local rows = {}\n"
    "    local n, used = parse(st, data, rows)\n"
    "    assert(used <= #data and st.nbad + n <= st.line)\n"
    "    for r = 0, 5 * (n - 1), 5 do\n"
    "      local addr, seen, source, tags = rows[r + 1], rows[r + 2], rows[r + 3] or 'book',\n"
    "        rows[r + 4] or nil\n"
    "      local c = canonical(addr)\n"
    "      if c then\n"
    "        local job = newjob({ c }, { seen }, { [c] = { source = source, tags = tags } })\n"
    "        local text, done, dropped = lines(job, 1)\n"
    "        assert(done and dropped == 0, 'tags left out')\n"
    "        local st2 = { version = 2, max_seen = 1 << 53, line = 0, nbad = 0, bad = {} }\n"
    "        local rows2 = {}\n"
    "        assert(parse(st2, text, rows2) == 1, st2.bad[1] or 'no row')\n"
    "        assert(canonical(rows2[1]) == c, 'address')\n"
    "        assert(rows2[2] == seen and rows2[3] == source, 'last_seen or source')\n"
    "        assert(same(rows2[4] or nil, tags), 'tags')\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "end\n";

static lua_State *L;

/* Run the Lua round trip on data; a failed check aborts with its message. */
static void lua_round_trip(const uint8_t *data, size_t size) {
  if (L == NULL) {
    L = luaL_newstate();
    luaL_openlibs(L);
    CHECK(luaL_loadbuffer(L, round_trip_lua, sizeof(round_trip_lua) - 1, "=round_trip") == LUA_OK);
    lpp_book_open(L);
    lua_getfield(L, -1, "parse");
    lua_getfield(L, -2, "lines");
    lua_remove(L, -3);
    lua_pushcfunction(L, newjob);
    lua_pushcfunction(L, canonical);
    lua_call(L, 4, 1);
    lua_setglobal(L, "round_trip");
  }
  lua_getglobal(L, "round_trip");
  lua_pushlstring(L, (const char *)data, size);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    fprintf(stderr, "fuzz_book: %s\n", lua_tostring(L, -1));
    abort();
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *s = (const char *)data;
  for (size_t pos = 0;;) {
    const char *nl = memchr(s + pos, '\n', size - pos);
    size_t n = nl ? (size_t)(nl - (s + pos)) : size - pos;
    /* A copy of exactly the line's bytes: ASan then catches any read past its end. */
    char *line = malloc(n ? n : 1);
    memcpy(line, s + pos, n);
    check_line(line, n, 1);
    check_line(line, n, 2);
    free(line);
    if (nl == NULL) break;
    pos += n + 1;
  }
  round_trip((const char *)data, size, 0, 0);
  round_trip((const char *)data, size, 1, size > 0);
  lua_round_trip(data, size);
  return 0;
}
