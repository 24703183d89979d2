/* The `peerpool` host program: runs a Lua script with luv and peerpool on luv's loop, then the
 * loop until nothing is left; optionally the REPL on the terminal (--repl) and on a unix socket
 * (--repl-socket), both in that same loop. `peerpool attach PATH` is the socket's client. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <uv.h>

#include <luv/lhandle.h> /* luv_handle_t, for uv.walk */
#include <luv/luv.h>

#include "host.h"
#include "peerpool.h" /* PP_VERSION_STRING only: the program reaches the engine through Lua */
#include "peerpool_repl_frames_lua.h" /* generated from bindings/host/repl_frames.lua */
#include "peerpool_repl_lua.h"        /* generated from bindings/host/repl.lua */
#include "term.h"

#ifndef PP_INSTALL_CMOD_DIR
#define PP_INSTALL_CMOD_DIR ""
#endif

static const char core_key = 'c'; /* registry: the REPL core's table */
static const char luv_key = 'l';  /* registry: luv's module table (it owns the loop) */
static const char run_key = 'r';  /* registry: luv's own uv.run (the script sees a wrapper) */
static const char quit_key = 'q'; /* registry: the error object that unwinds a quitting script */

static struct {
  lua_State *L;
  uv_loop_t *loop;
  luv_ctx_t *luv;
  int repl;      /* a REPL is served: terminal or socket */
  int term;      /* the terminal REPL is on */
  int term_keys; /* the terminal reports single key presses (readline) */
  int quitting;  /* stop: the terminal session ended, a signal, or an error in a callback */
  int stopped;   /* the script called uv.stop() and has not run the loop since */
  int final;     /* the loop is over: the program is closing down */
  int cb_depth;  /* luv callbacks running now (nested: uv.walk inside a callback) */
  int exit_code;
  uv_poll_t in_poll;
  uv_idle_t in_idle; /* stdin that cannot be polled (a regular file) */
  uv_timer_t start_timer;
  uv_signal_t sigint, sigwinch; /* the terminal's: Ctrl-C at the prompt, window size */
  uv_async_t sig_async;         /* SIGTERM, and SIGINT when the terminal does not own it */
  int in_poll_on, in_idle_on, start_on, sigint_on, sigwinch_on, sig_async_on;
} host;

/* ---- errors and protected calls ---------------------------------------------------------- */

/* Whether the value at idx is the error object uv.run raises once the host is quitting: it
 * unwinds a script that drives the loop itself (peerpool.run in the main chunk) and is not an
 * error of the script's. */
static int is_quit(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &quit_key);
  int r = lua_rawequal(L, idx, -1);
  lua_pop(L, 1);
  return r;
}

static int msghandler(lua_State *L) {
  if (is_quit(L, 1)) return 1;
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING) return 1;
    msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}

/* Print an error without garbling the prompt. */
static void report(const char *what, const char *msg) {
  char buf[8192];
  int n = snprintf(buf, sizeof(buf), "peerpool: %s%s%s\n", what ? what : "", what ? ": " : "",
                   msg ? msg : "(no message)");
  if (n < 0) return;
  if ((size_t)n >= sizeof(buf)) n = sizeof(buf) - 1;
  if (host.term)
    term_write(buf, (size_t)n, 1);
  else {
    fflush(stdout);
    fwrite(buf, 1, (size_t)n, stderr);
    fflush(stderr);
  }
}

/* Call the function below nargs arguments with a traceback handler; report an error under
 * `what`. Returns the lua_pcall status; a script unwound because the host quits counts as
 * LUA_OK (the exit code is the quit's). */
static int docall(lua_State *L, int nargs, int nres, const char *what) {
  int base = lua_gettop(L) - nargs;
  lua_pushcfunction(L, msghandler);
  lua_insert(L, base);
  int status = lua_pcall(L, nargs, nres, base);
  lua_remove(L, base);
  if (status != LUA_OK) {
    if (is_quit(L, -1))
      status = LUA_OK;
    else
      report(what, lua_tostring(L, -1));
    lua_pop(L, 1);
  }
  return status;
}

static void quit(int code) {
  if (!host.quitting) host.exit_code = code;
  host.quitting = 1;
  uv_stop(host.loop);
}

/* Whether a luv callback the loop is about to run is skipped: for the rest of a run the script
 * stopped with uv.stop() or the host is quitting, and once the loop is over (the shutdown's
 * own loop passes, lua_close). Only callbacks the loop calls are skipped: one called from
 * inside a running callback, or from the main chunk (uv.walk's function), still runs. */
static int callbacks_off(void) {
  if (host.cb_depth > 0) return 0;
  if (host.final) return 1;
  return (host.stopped || host.quitting) && host.luv->mode != -1;
}

/* luv runs every Lua callback through this (instead of its own, which exits the process).
 * With a REPL served, an error is reported and the program goes on; without one, a script's
 * error in a callback stops it with exit code 1, like an error in its main chunk. */
static int luv_callback_pcall(lua_State *L, int nargs, int nresults, int flags) {
  if (callbacks_off()) {
    lua_pop(L, nargs + 1);
    if (nresults == LUA_MULTRET) return 0;
    for (int i = 0; i < nresults; i++)
      lua_pushnil(L);
    return nresults;
  }
  int base = lua_gettop(L) - nargs;
  lua_pushcfunction(L, msghandler);
  lua_insert(L, base);
  host.cb_depth++;
  int status = lua_pcall(L, nargs, nresults, base);
  host.cb_depth--;
  lua_remove(L, base);
  if (status == LUA_OK) return nresults == LUA_MULTRET ? lua_gettop(L) - base + 1 : nresults;
  if (is_quit(L, -1)) {
    lua_pop(L, 1);
    return -status;
  }
  if ((flags & LUVF_CALLBACK_NOERRMSG) == 0) report("error in a callback", lua_tostring(L, -1));
  lua_pop(L, 1);
  if (!host.repl) quit(1);
  return -status;
}

/* uv.stop() as scripts see it: luv's, noting that the script stopped the loop (the rest of
 * this run's callbacks are skipped, and the host does not run the loop again). */
static int l_stop(lua_State *L) {
  lua_settop(L, 0);
  host.stopped = 1;
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_call(L, 0, LUA_MULTRET);
  return lua_gettop(L);
}

/* uv.run() as scripts see it: running the loop again takes back an earlier uv.stop(). Once the
 * host is quitting it raises the quit object instead, so that a main chunk driving the loop
 * itself (peerpool.run) ends rather than going round without its callbacks. */
static int l_run(lua_State *L) {
  if (host.quitting) {
    lua_rawgetp(L, LUA_REGISTRYINDEX, &quit_key);
    return lua_error(L);
  }
  host.stopped = 0;
  int n = lua_gettop(L);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, n, LUA_MULTRET);
  return lua_gettop(L);
}

/* uv.walk(fn) as scripts see it. luv's walk takes every handle on the loop for one of its own
 * (and asserts so): the host's (signals, the terminal) and the engine's are not, and are left
 * out — a luv handle's data is a luv_handle_t naming luv's context; the engine's handles point
 * at its conns and pools, larger structs where that field holds something else. */
static void walk_cb(uv_handle_t *h, void *arg) {
  lua_State *L = arg;
  const char *at = (const char *)h;
  luv_handle_t *data = h->data;
  if (at >= (const char *)&host && at < (const char *)(&host + 1)) return;
  if (data == NULL || data->ctx != host.luv) return;
  lua_pushvalue(L, 1);
  lua_rawgeti(L, LUA_REGISTRYINDEX, data->ref); /* the handle's userdata, as luv finds it */
  host.luv->cb_pcall(L, 1, 0, 0);
}

static int l_walk(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_settop(L, 1);
  uv_walk(host.loop, walk_cb, L);
  return 0;
}

/* Replace luv.<name> (the table scripts get from require "luv") by f with luv's function as
 * its upvalue; the original is kept in the registry under key when key is not NULL. */
static void wrap_luv(lua_State *L, int luv_idx, const char *name, lua_CFunction f,
                     const void *key) {
  lua_getfield(L, luv_idx, name);
  if (key) {
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, key);
  }
  lua_pushcclosure(L, f, 1);
  lua_setfield(L, luv_idx, name);
}

/* Call core[name](args...) (args already pushed). Returns the lua_pcall status. */
static int call_core(const char *name, int nargs, int nres) {
  lua_State *L = host.L;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &core_key);
  lua_getfield(L, -1, name);
  lua_remove(L, -2);
  lua_insert(L, -1 - nargs);
  return docall(L, nargs, nres, "REPL");
}

/* ---- functions the REPL core calls (the table H in repl.lua) ------------------------------ */

static int l_write(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  int err = lua_toboolean(L, 2);
  if (host.term) {
    term_write(s, n, err);
  } else {
    FILE *f = err ? stderr : stdout;
    fwrite(s, 1, n, f);
    fflush(f);
  }
  return 0;
}

static int l_prompt(lua_State *L) {
  if (host.term) term_prompt(luaL_optstring(L, 1, NULL));
  return 0;
}

static int l_watch(lua_State *L) {
  if (host.term) term_watch(lua_toboolean(L, 1));
  return 0;
}

static int l_history_add(lua_State *L) {
  if (host.term) term_history_add(luaL_checkstring(L, 1));
  return 0;
}

static int l_quit(lua_State *L) {
  quit((int)luaL_optinteger(L, 1, 0));
  return 0;
}

static int l_umask(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)umask((mode_t)luaL_checkinteger(L, 1)));
  return 1;
}

/* probe_socket(path): true when a socket may be created at path (nothing there, or a stale
 * socket, which is removed); else nil and why. A file that is not a socket is never replaced,
 * and neither is a socket some process still answers on. */
static int l_probe_socket(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  struct sockaddr_un sa;
  if (strlen(path) >= sizeof(sa.sun_path)) {
    lua_pushnil(L);
    lua_pushfstring(L, "%s: path too long for a unix socket (at most %d bytes)", path,
                    (int)sizeof(sa.sun_path) - 1);
    return 2;
  }
  struct stat st;
  if (lstat(path, &st) != 0) {
    if (errno == ENOENT) {
      lua_pushboolean(L, 1);
      return 1;
    }
    lua_pushnil(L);
    lua_pushfstring(L, "%s: %s", path, strerror(errno));
    return 2;
  }
  if (!S_ISSOCK(st.st_mode)) {
    lua_pushnil(L);
    lua_pushfstring(L, "refusing to replace %s: it exists and is not a socket", path);
    return 2;
  }
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    lua_pushnil(L);
    lua_pushfstring(L, "socket: %s", strerror(errno));
    return 2;
  }
  memset(&sa, 0, sizeof(sa));
  sa.sun_family = AF_UNIX;
  memcpy(sa.sun_path, path, strlen(path) + 1);
  int rc = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
  int err = errno;
  close(fd);
  if (rc == 0 || err == EAGAIN || err == EINPROGRESS) {
    lua_pushnil(L);
    lua_pushfstring(L, "%s is in use: another process serves a REPL there", path);
    return 2;
  }
  if (err == ECONNREFUSED) { /* stale: nobody listens */
    if (unlink(path) != 0) {
      lua_pushnil(L);
      lua_pushfstring(L, "cannot remove the stale socket %s: %s", path, strerror(errno));
      return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
  }
  lua_pushnil(L);
  lua_pushfstring(L, "%s: %s", path, strerror(err));
  return 2;
}

/* hung_up(fd): true when the peer of a connected socket is gone — it closed its end (both
 * directions are shut: POLLHUP) or an error is pending; false while it may still read what is
 * sent to it, e.g. `peerpool attach` on a pipe, which shuts down only its sending side. */
static int l_hung_up(lua_State *L) {
  struct pollfd p = {(int)luaL_checkinteger(L, 1), 0, 0};
  lua_pushboolean(L, poll(&p, 1, 0) > 0 && (p.revents & (POLLHUP | POLLERR | POLLNVAL)) != 0);
  return 1;
}

static const luaL_Reg host_fns[] = {
    {"write", l_write},
    {"prompt", l_prompt},
    {"watch", l_watch},
    {"history_add", l_history_add},
    {"quit", l_quit},
    {"umask", l_umask},
    {"probe_socket", l_probe_socket},
    {"hung_up", l_hung_up},
    {NULL, NULL},
};

/* ---- the terminal ------------------------------------------------------------------------ */

static void on_term_line(void *arg, const char *line) {
  if (line) {
    lua_pushstring(host.L, line);
    call_core("term_line", 1, 0);
  } else {
    call_core("term_eof", 0, 0);
  }
}

static void on_term_key(void *arg) {
  call_core("term_key", 0, 0);
}

static char **on_term_complete(void *arg, const char *word) {
  lua_State *L = host.L;
  lua_pushstring(L, word);
  if (call_core("complete", 1, 1) != LUA_OK) return NULL;
  char **list = NULL;
  if (lua_istable(L, -1)) {
    lua_Integer n = luaL_len(L, -1);
    list = calloc((size_t)n + 1, sizeof(*list));
    for (lua_Integer i = 1; list && i <= n; i++) {
      lua_rawgeti(L, -1, i);
      const char *s = lua_tostring(L, -1);
      list[i - 1] = strdup(s ? s : "");
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  return list;
}

static void stop_input(void) {
  if (host.in_poll_on) uv_poll_stop(&host.in_poll);
  if (host.in_idle_on) uv_idle_stop(&host.in_idle);
}

static void on_stdin(uv_poll_t *h, int status, int events) {
  if (term_input_ready() < 0) stop_input();
}

static void on_stdin_idle(uv_idle_t *h) {
  if (term_input_ready() < 0) stop_input();
}

static void on_sigint(uv_signal_t *h, int signum) {
  term_cancel_line();
  call_core("term_interrupt", 0, 0);
}

static void on_sigwinch(uv_signal_t *h, int signum) {
  term_resize();
}

/* SIGTERM, and SIGINT where the terminal's REPL does not give Ctrl-C its own meaning: the
 * first one asks the loop to close down cleanly (pools closed, so address books saved; the
 * exit code is 128 + the signal's number); a second one while that is under way, or while
 * the script keeps the loop from turning, ends the program at once. */
static volatile sig_atomic_t pending_signal;

static void on_signal(int signo) {
  if (pending_signal) {
    signal(signo, SIG_DFL);
    raise(signo); /* delivered when this handler returns */
    return;
  }
  pending_signal = signo;
  uv_async_send(&host.sig_async); /* async-signal-safe */
}

static void on_signal_async(uv_async_t *h) {
  if (pending_signal) quit(128 + pending_signal);
}

static void catch_signals(void) {
  uv_async_init(host.loop, &host.sig_async, on_signal_async);
  host.sig_async_on = 1;
  uv_unref((uv_handle_t *)&host.sig_async);
  struct sigaction sa;
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGTERM, &sa, NULL);
  if (!host.sigint_on) sigaction(SIGINT, &sa, NULL);
}

/* Once the program is closing down, a signal ends it at once (the async handle that would
 * carry it to the loop is closed). */
static void default_signals(void) {
  signal(SIGTERM, SIG_DFL);
  if (!host.sigint_on) signal(SIGINT, SIG_DFL);
}

/* The first loop iteration: show the banner and the prompt, then listen to stdin. Deferred so
 * that the prompt comes after what the script printed while it started. */
static void on_term_start(uv_timer_t *t) {
  lua_pushboolean(host.L, isatty(0));
  lua_pushboolean(host.L, host.term_keys);
  call_core("term_start", 2, 0);
  if (host.quitting) return;
  if (uv_poll_init(host.loop, &host.in_poll, 0) == 0) {
    host.in_poll_on = 1;
    /* uv_poll_init made fd 0 non-blocking, and a terminal's stdin and stdout share one file
     * description: put it back, or printf would fail with EAGAIN. Reads only follow a
     * readiness report, so they do not block. */
    int fl = fcntl(0, F_GETFL);
    if (fl >= 0) fcntl(0, F_SETFL, fl & ~O_NONBLOCK);
    uv_poll_start(&host.in_poll, UV_READABLE, on_stdin);
  } else { /* a regular file: reads never block */
    uv_idle_init(host.loop, &host.in_idle);
    host.in_idle_on = 1;
    uv_idle_start(&host.in_idle, on_stdin_idle);
  }
}

static void start_terminal(void) {
  term_cbs_t cbs = {on_term_line, on_term_key, on_term_complete, NULL};
  host.term_keys = term_open(&cbs, host_history_path(), 1);
  host.term = 1;
  atexit(term_close); /* os.exit() must not leave the terminal in readline's modes */
  uv_timer_init(host.loop, &host.start_timer);
  host.start_on = 1;
  uv_timer_start(&host.start_timer, on_term_start, 0, 0);
  if (isatty(0)) {
    uv_signal_init(host.loop, &host.sigint);
    host.sigint_on = 1;
    uv_signal_start(&host.sigint, on_sigint, SIGINT);
    uv_unref((uv_handle_t *)&host.sigint);
    uv_signal_init(host.loop, &host.sigwinch);
    host.sigwinch_on = 1;
    uv_signal_start(&host.sigwinch, on_sigwinch, SIGWINCH);
    uv_unref((uv_handle_t *)&host.sigwinch);
  }
}

const char *host_history_path(void) {
  static char path[PATH_MAX];
  const char *env = getenv("PEERPOOL_HISTORY");
  if (env) return *env ? env : NULL;
  const char *home = getenv("HOME");
  if (home == NULL || *home == '\0') return NULL;
  snprintf(path, sizeof(path), "%s/.peerpool_history", home);
  return path;
}

/* Close the handles this file owns (luv's finaliser must never see them). */
static void close_handles(void) {
  uv_handle_t *hs[] = {(uv_handle_t *)&host.in_poll,     (uv_handle_t *)&host.in_idle,
                       (uv_handle_t *)&host.start_timer, (uv_handle_t *)&host.sigint,
                       (uv_handle_t *)&host.sigwinch,    (uv_handle_t *)&host.sig_async};
  int *on[] = {&host.in_poll_on, &host.in_idle_on,  &host.start_on,
               &host.sigint_on,  &host.sigwinch_on, &host.sig_async_on};
  for (size_t i = 0; i < sizeof(hs) / sizeof(hs[0]); i++) {
    if (*on[i] && !uv_is_closing(hs[i])) uv_close(hs[i], NULL);
    *on[i] = 0;
  }
}

/* ---- setting up Lua ---------------------------------------------------------------------- */

/* The directory of this executable (to find the module beside it), or "" if unknown. */
static void exe_dir(char *out, size_t n, const char *argv0) {
  char buf[PATH_MAX];
  ssize_t len = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (len > 0) {
    buf[len] = '\0';
  } else if (argv0 == NULL || realpath(argv0, buf) == NULL || strchr(argv0, '/') == NULL) {
    out[0] = '\0';
    return;
  }
  char *slash = strrchr(buf, '/');
  if (slash) *slash = '\0';
  snprintf(out, n, "%s", buf);
}

/* package.cpath: first the module beside this program — in the build tree (bin/../lua/),
 * installed (bin/../lib/lua/5.4/, as `make install` and luarocks lay it out) and the install
 * dir it was configured with — then whatever LUA_CPATH or Lua's defaults give (luv). */
static void set_paths(lua_State *L, const char *argv0) {
  char dir[PATH_MAX];
  exe_dir(dir, sizeof(dir), argv0);
  lua_getglobal(L, "package");
  int parts = 0;
  if (dir[0]) {
    lua_pushfstring(L, "%s/../lua/?.so;%s/../lib/lua/5.4/?.so;", dir, dir);
    parts++;
  }
  if (PP_INSTALL_CMOD_DIR[0] == '/') {
    lua_pushliteral(L, PP_INSTALL_CMOD_DIR "/?.so;");
    parts++;
  }
  lua_getfield(L, -1 - parts, "cpath");
  lua_concat(L, parts + 1);
  lua_setfield(L, -2, "cpath");
  if (dir[0]) {
    lua_getfield(L, -1, "path");
    lua_pushfstring(L, "%s/../share/lua/5.4/?.lua;%s/../share/lua/5.4/?/init.lua;%s", dir, dir,
                    lua_tostring(L, -1));
    lua_setfield(L, -3, "path");
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}

/* arg as lua5.4 sets it: arg[0] the script, arg[1..] its arguments, negative indices the
 * program and its options; with no script, arg[0] is the program. */
static void set_arg(lua_State *L, char **argv, int argc, int script) {
  int base = script > 0 ? script : 0;
  lua_createtable(L, argc - base, base + 1);
  for (int i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - base);
  }
  lua_setglobal(L, "arg");
}

static int quit_tostring(lua_State *L) {
  lua_pushvalue(L, lua_upvalueindex(1));
  return 1;
}

static int require_luv(lua_State *L) {
  lua_getglobal(L, "require");
  lua_pushliteral(L, "luv");
  if (docall(L, 1, 1, "cannot load luv (Debian: apt-get install lua-luv)") != LUA_OK) return -1;
  lua_rawsetp(L, LUA_REGISTRYINDEX, &luv_key);
  lua_getfield(L, LUA_REGISTRYINDEX, "luv_context");
  luv_ctx_t *ctx = lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (ctx == NULL || ctx->loop == NULL) {
    report(NULL, "luv did not set up its loop");
    return -1;
  }
  ctx->cb_pcall = luv_callback_pcall;
  host.luv = ctx;
  host.loop = ctx->loop;

  /* The quit object (see is_quit), and the luv functions that must know about stops. */
  lua_newtable(L);
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, "peerpool: the program is quitting (uv.run refused)");
  lua_pushcclosure(L, quit_tostring, 1);
  lua_setfield(L, -2, "__tostring");
  lua_setmetatable(L, -2);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &quit_key);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &luv_key);
  wrap_luv(L, lua_gettop(L), "stop", l_stop, NULL);
  wrap_luv(L, lua_gettop(L), "run", l_run, &run_key);
  lua_pushcfunction(L, l_walk);
  lua_setfield(L, -2, "walk");
  lua_pop(L, 1);
  return 0;
}

static int load_core(lua_State *L, const char *socket_path) {
  if (luaL_loadbuffer(L, (const char *)peerpool_repl_lua, sizeof(peerpool_repl_lua),
                      "=peerpool/repl") != LUA_OK) {
    report("REPL", lua_tostring(L, -1));
    return -1;
  }
  luaL_newlib(L, host_fns);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &luv_key);
  if (luaL_loadbuffer(L, (const char *)peerpool_repl_frames_lua, sizeof(peerpool_repl_frames_lua),
                      "=peerpool/repl_frames") != LUA_OK) {
    report("REPL", lua_tostring(L, -1));
    return -1;
  }
  if (docall(L, 0, 1, "REPL") != LUA_OK) return -1;
  if (docall(L, 3, 1, "REPL") != LUA_OK) return -1;
  lua_pushliteral(L, PP_VERSION_STRING);
  lua_setfield(L, -2, "version");
  const char *limit = getenv("PEERPOOL_REPL_BLOCK_MS");
  if (limit && atoi(limit) > 0) {
    lua_pushinteger(L, atoi(limit));
    lua_setfield(L, -2, "block_limit_ms");
  }
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &core_key);

  /* require "peerpool.host": what a script may want to know about its host. */
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_createtable(L, 0, 7);
  lua_pushliteral(L, PP_VERSION_STRING);
  lua_setfield(L, -2, "version");
  lua_pushboolean(L, host.repl);
  lua_setfield(L, -2, "repl");
  lua_pushboolean(L, host.term);
  lua_setfield(L, -2, "terminal");
  if (socket_path) {
    lua_pushstring(L, socket_path);
    lua_setfield(L, -2, "socket");
  }
  lua_getfield(L, -3, "pretty");
  lua_setfield(L, -2, "pretty");
  lua_getfield(L, -3, "print");
  lua_setfield(L, -2, "print");
  lua_getfield(L, -3, "limits");
  lua_setfield(L, -2, "repl_limits");
  lua_setfield(L, -2, "peerpool.host");
  lua_pop(L, 1);

  if (host.repl) { /* a REPL line's print goes to its session; others keep off the prompt */
    lua_getfield(L, -1, "print");
    lua_setglobal(L, "print");
  }
  lua_pop(L, 1);
  return 0;
}

/* ---- the metrics endpoint ---------------------------------------------------------------- */

/* --metrics HOST:PORT (also [V6]:PORT, or PORT alone for 127.0.0.1): peerpool.serve_metrics on
 * the loop, unref'd like the REPL socket (it alone does not keep the program running); its
 * handle is peerpool.host.metrics. Returns true, or nil, why, exit code. */
static const char serve_metrics_lua[] =
    "local spec = ...\n"
    "local host, port = spec:match('^%[(.+)%]:(%d+)$')\n"
    "if not host then host, port = spec:match('^([^:]*):(%d+)$') end\n"
    "if not host then port = spec:match('^(%d+)$') end\n"
    "port = math.tointeger(tonumber(port))\n"
    "if not port or port > 65535 then\n"
    "  return nil, 'expects HOST:PORT (e.g. 127.0.0.1:9145), not ' .. spec, 2\n"
    "end\n"
    "if host == '' then host = nil end\n"
    "local h, _, detail = require('peerpool').serve_metrics(host, port)\n"
    "if not h then return nil, detail, 1 end\n"
    "h:unref()\n"
    "package.loaded['peerpool.host'].metrics = h\n"
    "if port == 0 then io.stderr:write('peerpool: metrics on ', h.url, '\\n') end\n"
    "return true\n";

/* Start the endpoint; 0, or the exit code after reporting why not. */
static int serve_metrics(lua_State *L, const char *spec) {
  if (luaL_loadbuffer(L, serve_metrics_lua, sizeof(serve_metrics_lua) - 1, "=peerpool/metrics") !=
      LUA_OK) {
    report("--metrics", lua_tostring(L, -1));
    lua_pop(L, 1);
    return 1;
  }
  lua_pushstring(L, spec);
  if (docall(L, 1, 3, "--metrics") != LUA_OK) return 1;
  int code = 0;
  if (!lua_toboolean(L, -3)) {
    report("--metrics", lua_tostring(L, -2));
    code = (int)luaL_optinteger(L, -1, 1);
  }
  lua_pop(L, 3);
  return code;
}

/* ---- closing down ------------------------------------------------------------------------ */

/* Close the --metrics endpoint, then every live pool through pool:close(), which also saves the
 * pool's address book (the finaliser lua_close runs closes the engine's pools without it).
 * Nothing is loaded for a script that never required peerpool. */
static const char close_pools_lua[] =
    "local host = package.loaded['peerpool.host']\n"
    "if host and host.metrics then pcall(host.metrics.close, host.metrics) end\n"
    "local pp = package.loaded.peerpool\n"
    "if type(pp) ~= 'table' or type(pp.pools) ~= 'function' then return end\n"
    "for _, pool in ipairs(pp.pools()) do\n"
    "  local ok, err = pcall(pool.close, pool)\n"
    "  if not ok then\n"
    "    io.stderr:write('peerpool: closing ', tostring(pool), ': ', tostring(err), '\\n')\n"
    "  end\n"
    "end\n";

/* The loop is over: take everything down in order, with no more of the script's luv
 * callbacks — the terminal (restored, history saved), our own handles, every live pool, the
 * REPL's sessions and socket. One pass of the loop then finishes those closes (luv frees a
 * handle still closing at lua_close, then touches it); in it the closed pools end what still
 * waited on them with `closed`, as pool:close() promises. Last the Lua state: the peerpool
 * module's sentinel, then luv, close whatever is left. */
static void close_down(lua_State *L) {
  host.final = 1;
  default_signals();
  if (host.term) term_close();
  host.term = 0;
  close_handles();
  if (luaL_loadbuffer(L, close_pools_lua, sizeof(close_pools_lua) - 1, "=peerpool/close") == LUA_OK)
    docall(L, 0, 0, "closing the pools");
  else
    lua_pop(L, 1);
  call_core("shutdown", 0, 0);
  uv_run(host.loop, UV_RUN_NOWAIT);
  lua_close(L);
}

/* ---- main -------------------------------------------------------------------------------- */

static void usage(FILE *f, const char *prog) {
  fprintf(f,
          "usage: %s [options] [script.lua [args...]]\n"
          "       %s attach PATH\n"
          "Runs script.lua with `luv` and `peerpool` on luv's loop, then the loop until nothing\n"
          "is left (or the script stops it). With no script and a terminal on stdin: the REPL.\n"
          "options:\n"
          "  -i, --repl             an interactive REPL on this terminal, in the same loop\n"
          "  --repl-socket PATH     serve the REPL on a unix socket (mode 0600)\n"
          "  --metrics HOST:PORT    serve every pool's Prometheus metrics at\n"
          "                         http://HOST:PORT/metrics (port 0: a free one, printed)\n"
          "  -e CHUNK               run CHUNK before the script\n"
          "  -                      read the script from stdin\n"
          "  -v, --version          show versions\n"
          "  -h, --help             this text\n"
          "attach PATH: connect this terminal (or pipe: echo 'return pool:stats()' | %s attach "
          "PATH)\n"
          "to a program serving --repl-socket PATH. History: $PEERPOOL_HISTORY or "
          "~/.peerpool_history.\n",
          prog, prog, prog);
}

static void version(void) {
  printf("peerpool %s (host program), %s, libuv %s, %s\n", PP_VERSION_STRING, LUA_RELEASE,
         uv_version_string(), term_backend());
}

/* Whether argv[*i] is the option `name`, which takes a value as "NAME VALUE" or "NAME=VALUE":
 * then *value is the value (NULL when none follows) and *i is at the last word it used. */
static int option_value(int argc, char **argv, int *i, const char *name, const char **value) {
  const char *a = argv[*i];
  size_t n = strlen(name);
  if (strncmp(a, name, n) != 0 || (a[n] != '\0' && a[n] != '=')) return 0;
  if (a[n] == '=')
    *value = a + n + 1;
  else
    *value = *i + 1 < argc ? argv[++*i] : NULL;
  return 1;
}

int main(int argc, char **argv) {
  const char *prog = "peerpool";
  const char *socket_path = NULL;
  const char *metrics_addr = NULL;
  int want_repl = 0, script = 0, chunks[64], nchunks = 0;

  signal(SIGPIPE, SIG_IGN); /* a REPL client that vanishes must not kill the host */

  if (argc >= 2 && strcmp(argv[1], "attach") == 0) {
    if (argc != 3) {
      fprintf(stderr, "usage: %s attach PATH\n", prog);
      return 2;
    }
    return host_attach(argv[2]);
  }

  for (int i = 1; i < argc && script == 0; i++) {
    const char *a = argv[i];
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      usage(stdout, prog);
      return 0;
    } else if (strcmp(a, "-v") == 0 || strcmp(a, "--version") == 0) {
      version();
      return 0;
    } else if (strcmp(a, "-i") == 0 || strcmp(a, "--repl") == 0) {
      want_repl = 1;
    } else if (option_value(argc, argv, &i, "--repl-socket", &socket_path)) {
      if (socket_path == NULL || *socket_path == '\0') {
        fprintf(stderr, "%s: --repl-socket needs a path\n", prog);
        return 2;
      }
    } else if (option_value(argc, argv, &i, "--metrics", &metrics_addr)) {
      if (metrics_addr == NULL) {
        fprintf(stderr, "%s: --metrics needs HOST:PORT\n", prog);
        return 2;
      }
    } else if (strcmp(a, "-e") == 0) {
      if (i + 1 >= argc || nchunks == 64) {
        fprintf(stderr, "%s: -e needs a chunk\n", prog);
        return 2;
      }
      chunks[nchunks++] = ++i;
    } else if (strcmp(a, "--") == 0) {
      if (i + 1 < argc) script = i + 1;
      break;
    } else if (a[0] == '-' && a[1] != '\0') {
      fprintf(stderr, "%s: unknown option %s\n", prog, a);
      usage(stderr, prog);
      return 2;
    } else {
      script = i; /* the script, or "-" for stdin; the rest is the script's */
    }
  }
  /* Like lua5.4: with nothing to run, a terminal gets the REPL and a pipe is the script. */
  if (script == 0 && nchunks == 0 && !want_repl && socket_path == NULL) {
    if (isatty(0))
      want_repl = 1;
    else
      script = -1;
  }
  if (want_repl && script > 0 && strcmp(argv[script], "-") == 0) {
    fprintf(stderr, "%s: --repl reads the terminal; the script cannot come from stdin\n", prog);
    return 2;
  }

  lua_State *L = luaL_newstate();
  if (L == NULL) {
    fprintf(stderr, "%s: cannot create a Lua state\n", prog);
    return 1;
  }
  host.L = L;
  host.repl = want_repl || socket_path != NULL;
  host.term = 0;
  luaL_openlibs(L);
  set_paths(L, argv[0]);
  set_arg(L, argv, argc, script > 0 ? script : 0);
  int status = 0;
  if (require_luv(L) != 0 || load_core(L, socket_path) != 0) {
    lua_close(L);
    return 1;
  }
  if (want_repl) {
    start_terminal();
    /* peerpool.host.terminal was set before the terminal existed */
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_getfield(L, -1, "peerpool.host");
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "terminal");
    lua_pop(L, 2);
  }
  if (socket_path) {
    lua_pushstring(L, socket_path);
    if (call_core("serve", 1, 2) != LUA_OK) {
      status = 1;
    } else {
      if (!lua_toboolean(L, -2)) {
        report("--repl-socket", lua_tostring(L, -1));
        status = 1;
      }
      lua_pop(L, 2);
    }
  }
  if (metrics_addr && status == 0) status = serve_metrics(L, metrics_addr);
  catch_signals();

  for (int c = 0; c < nchunks && status == 0; c++) {
    if (luaL_loadbuffer(L, argv[chunks[c]], strlen(argv[chunks[c]]), "=(command line)") != LUA_OK) {
      report(NULL, lua_tostring(L, -1));
      lua_pop(L, 1);
      status = 1;
    } else if (docall(L, 0, 0, NULL) != LUA_OK) {
      status = 1;
    }
  }

  if (status == 0 && script != 0) {
    const char *name = script > 0 ? argv[script] : "-";
    int from_stdin = strcmp(name, "-") == 0;
    if (luaL_loadfile(L, from_stdin ? NULL : name) != LUA_OK) {
      report(NULL, lua_tostring(L, -1));
      lua_pop(L, 1);
      status = 1;
    } else {
      int nargs = 0;
      for (int i = script + 1; script > 0 && i < argc; i++, nargs++)
        lua_pushstring(L, argv[i]);
      if (docall(L, nargs, 0, NULL) != LUA_OK) status = 1;
    }
  }

  /* The loop, through luv's run so that luv (and peerpool.run) know it is running; not when
   * the script stopped it (uv.stop() in its main chunk, or in a loop it ran itself). */
  if (status == 0 && !host.quitting && !host.stopped) {
    lua_rawgetp(L, LUA_REGISTRYINDEX, &run_key);
    if (docall(L, 0, 0, NULL) != LUA_OK) status = 1;
  }
  if (status == 0) status = host.exit_code;
  close_down(L);
  return status;
}
