/* What policy hook code may do. Each hook call runs under a budget of instructions and of
 * memory that holds across pcall and across every coroutine the hook starts: the count is kept
 * here, per call, not in Lua's per-thread hook counter, and once a budget is spent every
 * further instruction raises again, so a hook that catches the error cannot keep going.
 * While a hook runs, the standard functions that would end the process, block the loop or
 * switch the budget off are refused (the table `guards` below). One long C call (a
 * pathological string.find, say) cannot be interrupted: Lua checks budgets between
 * instructions only. */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "lpeerpool.h"

/* The budget of the hook call running now on this thread, or NULL outside hooks. */
static _Thread_local lpp_budget_t *running;

/* Instructions between two checks: a few checks per hook call, cheap enough to keep. */
#define STEP 1000

void lpp_budget_init(lpp_budget_t *b, int64_t instructions, size_t memory) {
  b->steps_left = instructions;
  b->mem_used = 0;
  b->mem_max = memory;
}

lpp_budget_t *lpp_budget_enter(lpp_budget_t *b) {
  lpp_budget_t *prev = running;
  running = b;
  return prev;
}

void lpp_budget_leave(lpp_budget_t *prev) {
  running = prev;
}

int lpp_in_hook(void) {
  return running != NULL;
}

static void count_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lpp_budget_t *b = running;
  /* A hook's coroutine resumed by a luv callback of its own (coroutine.resume) runs outside
   * the binding's resume: it still charges its instructions. (A coroutine the hook left behind,
   * resumed by someone else, is nobody's.) */
  if (b == NULL) b = lpp_hook_budget_of(L);
  if (b == NULL) return;
  b->steps_left -= STEP;
  if (b->steps_left > 0) return;
  /* Spent: from now on every instruction of this thread raises. */
  lua_sethook(L, count_hook, LUA_MASKCOUNT, 1);
  luaL_error(L, "instruction budget exceeded");
}

void lpp_budget_arm(lua_State *thread) {
  /* Threads a hook creates inherit this hook and charge the same budget. */
  lua_sethook(thread, count_hook, LUA_MASKCOUNT, STEP);
}

/* ---- memory: an allocator that charges the running hook call --------------------------- */

typedef struct {
  lua_Alloc f;
  void *ud;
} base_alloc_t;

static void *budget_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  base_alloc_t *base = ud;
  lpp_budget_t *b = running;
  if (b == NULL || nsize == 0) {
    if (b && ptr) b->mem_used -= osize < b->mem_used ? osize : b->mem_used;
    return base->f(base->ud, ptr, osize, nsize);
  }
  size_t old = ptr ? osize : 0;
  /* Only growth can be refused: Lua counts on shrinking never failing. */
  if (nsize > old && b->mem_used + (nsize - old) > b->mem_max) return NULL;
  void *out = base->f(base->ud, ptr, osize, nsize);
  if (out) {
    if (nsize >= old)
      b->mem_used += nsize - old;
    else
      b->mem_used -= old - nsize < b->mem_used ? old - nsize : b->mem_used;
  }
  return out;
}

static base_alloc_t *install_allocator(lua_State *L) {
  base_alloc_t *base = malloc(sizeof(*base));
  if (base == NULL) luaL_error(L, "peerpool: out of memory");
  base->f = lua_getallocf(L, &base->ud);
  lua_setallocf(L, budget_alloc, base);
  return base;
}

void lpp_sandbox_close(lua_State *L, void *alloc_ud) {
  void *ud;
  /* Put the original allocator back (it frees what is left of the state), unless somebody
   * wrapped ours since: then ours stays, and so does its small record. */
  if (alloc_ud && lua_getallocf(L, &ud) == budget_alloc && ud == alloc_ud) {
    base_alloc_t *base = alloc_ud;
    lua_setallocf(L, base->f, base->ud);
    free(base);
  }
}

/* ---- standard functions refused inside hooks ------------------------------------------- */

enum {
  GUARD_ALWAYS,  /* refused inside hooks */
  GUARD_FILE_OP, /* file:read/lines: only on regular files (a tty or pipe blocks) */
  GUARD_OPEN,    /* io.open: not on FIFOs and devices (open itself may block) */
  GUARD_LINES,   /* io.lines(): stdin is refused, a file name is fine */
  GUARD_LOAD,    /* load/loadfile: text chunks only (binary chunks can crash Lua) */
  GUARD_GC,      /* collectgarbage: no switching the collector off or retuning it */
};

typedef struct {
  const char *lib; /* a global table, or LUA_FILEHANDLE for file methods */
  const char *name;
  int kind;
  const char *why;
} guard_t;

static const guard_t guards[] = {
    {"os", "exit", GUARD_ALWAYS, "it would end the process"},
    {"os", "execute", GUARD_ALWAYS, "it blocks the loop"},
    {"io", "popen", GUARD_ALWAYS, "it blocks the loop"},
    {"io", "read", GUARD_ALWAYS, "it blocks the loop on stdin"},
    {"io", "input", GUARD_ALWAYS, "hooks do not redirect the program's stdin"},
    {"io", "output", GUARD_ALWAYS, "hooks do not redirect the program's stdout"},
    {"io", "lines", GUARD_LINES, "stdin, FIFOs and devices block the loop"},
    {"package", "loadlib", GUARD_ALWAYS, "native code is beyond any budget"},
    {"io", "open", GUARD_OPEN, "opening a FIFO or device can block the loop"},
    {LUA_FILEHANDLE, "read", GUARD_FILE_OP, "reading a terminal, pipe or socket blocks the loop"},
    {LUA_FILEHANDLE, "lines", GUARD_FILE_OP, "reading a terminal, pipe or socket blocks the loop"},
    {"_G", "load", GUARD_LOAD, "binary chunks are refused"},
    {"_G", "loadfile", GUARD_LOAD, "binary chunks are refused"},
    {"_G", "dofile", GUARD_ALWAYS, "it can run binary chunks and read stdin"},
    {"_G", "collectgarbage", GUARD_GC, "the collector is the program's"},
    /* the debug library, but for traceback and getinfo: guarded one by one below */
};

static int refuse(lua_State *L) {
  return luaL_error(L, "%s is not available inside a policy hook: %s",
                    lua_tostring(L, lua_upvalueindex(2)), lua_tostring(L, lua_upvalueindex(3)));
}

static int is_regular_stream(lua_State *L, int idx) {
  luaL_Stream *s = luaL_testudata(L, idx, LUA_FILEHANDLE);
  struct stat st;
  if (s == NULL || s->closef == NULL || s->f == NULL) return 1; /* let the original complain */
  return fstat(fileno(s->f), &st) == 0 && S_ISREG(st.st_mode);
}

/* Whether opening `path` cannot block: a regular file, a directory, or nothing there yet. */
static int openable(const char *path) {
  struct stat st;
  return path == NULL || stat(path, &st) != 0 || S_ISREG(st.st_mode) || S_ISDIR(st.st_mode);
}

static int allowed(lua_State *L, int kind) {
  switch (kind) {
    case GUARD_FILE_OP:
      return is_regular_stream(L, 1);
    case GUARD_LINES: /* no file name: stdin */
      return !lua_isnoneornil(L, 1) && openable(lua_tostring(L, 1));
    case GUARD_OPEN:
      return openable(lua_tostring(L, 1));
    case GUARD_LOAD: /* load(chunk, name, mode), loadfile(file, mode): see guarded() */
      return 1;
    case GUARD_GC: {
      const char *opt = luaL_optstring(L, 1, "collect");
      return strcmp(opt, "collect") == 0 || strcmp(opt, "count") == 0 || strcmp(opt, "step") == 0 ||
             strcmp(opt, "isrunning") == 0;
    }
    default:
      return 0;
  }
}

/* upvalues: the original function, its name, why it is guarded, the guard kind */
static int guarded(lua_State *L) {
  int kind = (int)lua_tointeger(L, lua_upvalueindex(4));
  if (running && !allowed(L, kind)) return refuse(L);
  if (running && kind == GUARD_LOAD) {
    /* The mode argument: 3rd of load, 2nd of loadfile. Text only, whatever was asked. */
    int mode = strcmp(lua_tostring(L, lua_upvalueindex(2)), "loadfile") == 0 ? 2 : 3;
    const char *m = lua_tostring(L, mode);
    if (m && strchr(m, 'b')) return refuse(L);
    if (lua_gettop(L) < mode) lua_settop(L, mode);
    lua_pushliteral(L, "t");
    lua_replace(L, mode);
  }
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
  return lua_gettop(L);
}

/* Replace tbl[name] (tbl at idx) by its guarded version. */
static void guard_field(lua_State *L, int idx, const char *name, const char *label, int kind,
                        const char *why) {
  if (lua_getfield(L, idx, name) != LUA_TFUNCTION) {
    lua_pop(L, 1);
    return;
  }
  lua_pushstring(L, label);
  lua_pushstring(L, why);
  lua_pushinteger(L, kind);
  lua_pushcclosure(L, guarded, 4);
  lua_setfield(L, idx, name);
}

static void push_lib(lua_State *L, const char *lib) {
  if (strcmp(lib, LUA_FILEHANDLE) == 0) {
    luaL_getmetatable(L, LUA_FILEHANDLE);
    if (lua_istable(L, -1)) {
      lua_getfield(L, -1, "__index");
      lua_remove(L, -2);
    }
  } else if (strcmp(lib, "_G") == 0) {
    lua_pushglobaltable(L);
  } else {
    lua_getglobal(L, lib);
  }
}

static void install_guards(lua_State *L) {
  for (size_t i = 0; i < sizeof(guards) / sizeof(guards[0]); i++) {
    const guard_t *g = &guards[i];
    push_lib(L, g->lib);
    if (lua_istable(L, -1)) {
      char label[64];
      snprintf(label, sizeof(label), "%s%s%s",
               strcmp(g->lib, "_G") == 0             ? ""
               : strcmp(g->lib, LUA_FILEHANDLE) == 0 ? "file:"
                                                     : g->lib,
               strcmp(g->lib, "_G") == 0 || strcmp(g->lib, LUA_FILEHANDLE) == 0 ? "" : ".",
               g->name);
      guard_field(L, lua_gettop(L), g->name, label, g->kind, g->why);
    }
    lua_pop(L, 1);
  }
  /* debug: a hook could switch its budget off (sethook), read or change any variable, or
   * stop the loop in debug.debug(); it keeps traceback and getinfo. */
  if (lua_getglobal(L, "debug") == LUA_TTABLE) {
    int dbg = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, dbg)) {
      lua_pop(L, 1);
      const char *k = lua_tostring(L, -1);
      if (k && strcmp(k, "traceback") != 0 && strcmp(k, "getinfo") != 0) {
        char label[64];
        snprintf(label, sizeof(label), "debug.%s", k);
        lua_pushvalue(L, -1);
        lua_rawget(L, dbg); /* key, value */
        if (lua_tocfunction(L, -1) == guarded) {
          lua_pop(L, 1);
          continue;
        }
        lua_pushstring(L, label);
        lua_pushliteral(L, "the debug library is the program's");
        lua_pushinteger(L, GUARD_ALWAYS);
        lua_pushcclosure(L, guarded, 4); /* key, guarded */
        lua_pushvalue(L, -2);
        lua_insert(L, -2);  /* key, key, guarded */
        lua_rawset(L, dbg); /* an existing field may change during lua_next */
      }
    }
  }
  lua_pop(L, 1);
}

void *lpp_sandbox_open(lua_State *L) {
  install_guards(L);
  return install_allocator(L);
}
