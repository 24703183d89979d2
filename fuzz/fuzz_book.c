/* libFuzzer target for the address book's text format (bindings/lbook.c, compiled in here, as
 * bindings/book.lua uses it). Every line of the input is parsed as v1, v2 and v3:
 *   - by the plain C parser: what it accepts must lie within the line, decode, and survive
 *     escape + unescape unchanged (the input as one raw address or tag key must too); a v3
 *     history must be within its bounds;
 *   - by book.parse in a Lua state, the way book.lua's load reads a file: whole, and in two
 *     blocks with the unfinished line carried over (the same rows, line count and refusals);
 *     every row it gives is written back with book.lines (tags and history too) and must
 *     parse again to the same address (canonically), last_seen, source, tags and history.
 * The pool-facing functions of lbook.c (snapshot) are not run; their two binding helpers are
 * stubbed below. Built and run by fuzz/CMakeLists.txt (ctest case fuzz.book, `make fuzz-c`).
 */
#include "../bindings/lbook.c"

#include <lualib.h>

#include "fuzz_check.h"

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

/* A v3 history the parser accepted stays within what pp_peer_restore takes. */
static void check_history(const book_line_t *e) {
  const pp_peer_history_t *h = &e->history;
  const int64_t max = INT64_C(1) << 53;
  CHECK(h->burned == 0 || h->burned == 1);
  CHECK(h->failures >= 0 && h->failures <= 1000000 && h->eject_streak >= 0 &&
        h->eject_streak <= 64);
  CHECK(h->last_success >= 0 && h->last_success <= max && h->last_failure >= 0 &&
        h->last_failure <= max && h->ejected_until >= 0 && h->ejected_until <= max &&
        h->ejections <= (uint64_t)max);
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
  CHECK(version == 3 || !e.has_history);
  if (e.has_history) check_history(&e);
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

static int64_t history_field(lua_State *L, int idx, const char *name) {
  lua_getfield(L, idx, name);
  int64_t v = lua_type(L, -1) == LUA_TBOOLEAN ? lua_toboolean(L, -1) : lua_tointeger(L, -1);
  lua_pop(L, 1);
  return v;
}

/* newjob(addrs, seens, histories, meta): a job as l_snapshot makes, from lists instead of a
 * pool (a history is book.parse's table, or false). */
static int newjob(lua_State *L) {
  job_t *j = new_job(L);
  lua_pushvalue(L, 4);
  lua_setiuservalue(L, -2, 1);
  for (lua_Integer i = 1; lua_rawgeti(L, 1, i) == LUA_TSTRING; i++) {
    lua_rawgeti(L, 2, i);
    row_t r = {j->addrs.n, lua_tointeger(L, -1), {0}};
    if (lua_rawgeti(L, 3, i) == LUA_TTABLE) {
      int h = lua_gettop(L);
      r.history.burned = (int)history_field(L, h, "burned");
      r.history.failures = (int)history_field(L, h, "failures");
      r.history.last_success = history_field(L, h, "last_success");
      r.history.last_failure = history_field(L, h, "last_failure");
      r.history.ejections = (uint64_t)history_field(L, h, "ejections");
      r.history.eject_streak = (int)history_field(L, h, "eject_streak");
      r.history.ejected_until = history_field(L, h, "ejected_until");
    }
    out_add(L, &j->addrs, lua_tostring(L, -3), lua_rawlen(L, -3) + 1);
    out_add(L, &j->rows, (const char *)&r, sizeof(r));
    lua_pop(L, 3);
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
    "-- A history that says nothing is written back as '-', which reads as none.\n"
    "local function history(h)\n"
    "  if not h then return false end\n"
    "  for _, v in pairs(h) do if v ~= 0 and v ~= false then return h end end\n"
    "  return false\n"
    "end\n"
    "-- Parse `pieces` one after another as book.lua's load reads blocks: each parse gets the\n"
    "-- unfinished line of the one before in front of its block; at the end that line is\n"
    "-- given a newline. Returns st and the rows (6 values per row).\n"
    "local function read(version, pieces)\n"
    "  local st = { version = version, max_seen = 1 << 53, line = 0, nbad = 0, bad = {} }\n"
    "  local all, count, rest = {}, 0, ''\n"
    "  for i = 1, #pieces + 1 do\n"
    "    local data = pieces[i] and rest .. pieces[i] or (rest ~= '' and rest .. '\\n') or nil\n"
    "    if not data then break end\n"
    "    local rows = {}\n"
    "    local n, used = parse(st, data, rows)\n"
    "    assert(used <= #data and not data:find('\\n', used + 1, true), 'a whole line left')\n"
    "    for k = 1, 6 * n do all[6 * count + k] = rows[k] end\n"
    "    count = count + n\n"
    "    rest = data:sub(used + 1)\n"
    "  end\n"
    "  assert(st.nbad + count <= st.line, 'more rows than lines')\n"
    "  return st, all, count\n"
    "end\n"
    "return function(data, cut)\n"
    "  for version = 1, 3 do\n"
    "    local st, rows, n = read(version, { data })\n"
    "    local st2, rows2, n2 = read(version, { data:sub(1, cut), data:sub(cut + 1) })\n"
    "    assert(n2 == n and same(rows2, rows), 'blocks read differently from the whole')\n"
    "    assert(st2.line == st.line and st2.nbad == st.nbad and same(st2.bad, st.bad),\n"
    "      'blocks counted differently from the whole')\n"
    "    for r = 0, 6 * (n - 1), 6 do\n"
    "      local addr, seen, source, tags = rows[r + 1], rows[r + 2], rows[r + 3] or 'book',\n"
    "        rows[r + 4] or nil\n"
    "      local hist = history(rows[r + 6])\n"
    "      local c = canonical(addr)\n"
    "      if c then\n"
    "        local job = newjob({ c }, { seen }, { hist },\n"
    "          { [c] = { source = source, tags = tags } })\n"
    "        local text, done, dropped = lines(job, 1)\n"
    "        assert(done and dropped == 0, 'tags left out')\n"
    "        local _, back, nb = read(3, { text })\n"
    "        assert(nb == 1, 'a written line does not read back: ' .. text)\n"
    "        assert(canonical(back[1]) == c, 'address')\n"
    "        assert(back[2] == seen and back[3] == source, 'last_seen or source')\n"
    "        assert(same(back[4] or nil, tags), 'tags')\n"
    "        assert(same(history(back[6]), hist), 'history')\n"
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
  /* where the input is cut in two blocks: anywhere, picked by its bytes */
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < size; i++)
    h = (h ^ data[i]) * 16777619u;
  lua_pushinteger(L, size ? (lua_Integer)(h % (size + 1)) : 0);
  if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
    fprintf(stderr, "fuzz_book: %s\n", lua_tostring(L, -1));
    abort();
  }
  /* This input's garbage (jobs' buffers too) goes now: otherwise libFuzzer, seeing more
   * mallocs than frees, scans the whole heap for leaks after the input. */
  lua_gc(L, LUA_GCCOLLECT);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *s = (const char *)data;
  for (size_t pos = 0;;) {
    const char *nl = memchr(s + pos, '\n', size - pos);
    size_t n = nl ? (size_t)(nl - (s + pos)) : size - pos;
    /* A copy of exactly the line's bytes: ASan then catches any read past its end. */
    char *line = malloc(n ? n : 1);
    memcpy(line, s + pos, n);
    for (int version = 1; version <= 3; version++)
      check_line(line, n, version);
    free(line);
    if (nl == NULL) break;
    pos += n + 1;
  }
  round_trip((const char *)data, size, 0, 0);
  round_trip((const char *)data, size, 1, size > 0);
  lua_round_trip(data, size);
  return 0;
}
