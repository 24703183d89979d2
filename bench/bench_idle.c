/*
 * bench_idle — the cost of acquiring and releasing an idle pooled connection through the C
 * API, with 10, 1,000 and 16,000 conns in the pool.
 *
 * The conns are real TCP sockets to bench_server, which runs as a child process and holds
 * them. For each pool size N the bench makes a pool with max_per_peer = max_total = N and
 * client_limit 1, fills it with N connected conns (N acquires held at once, then all
 * released), and times:
 *
 *   try/peer   pp_try_acquire(pool, &lease, peer, NULL) + pp_release(&lease, 0)
 *   try/any    the same with peer = NULL (the pool picks the peer)
 *   async/1    pp_acquire(...) -> callback -> pp_release -> next pp_acquire, driven by
 *              uv_run; one chain, so every op pays for one deferred callback
 *   async/8    the same with 8 chains in flight, so loop iterations are shared
 *
 * Every path is timed in two layouts of the idle list. "fill order": the conns were released
 * in the order they were created, so the pool lends them in allocation order, the kindest
 * case for the CPU's caches and prefetcher. "shuffled": all N were taken and given back in a random
 * order, as after any real churn, so each op may touch a conn that is cold in the cache.
 *
 * Each figure is the median of --runs timed runs of about --seconds each (after a warm-up
 * run), in nanoseconds per acquire+release pair. The table goes to stdout and, with --out, into
 * docs/bench.md between the markers <!-- bench:idle --> and <!-- /bench:idle -->; the rest
 * of that file is left alone.
 *
 * Traffic goes only to 127.0.0.1. The bench stops by itself: every wait has a deadline, an
 * alarm ends the process if something hangs, and the server exits when its stdin closes.
 *
 * usage: bench_idle [--out FILE] [--server PATH] [--seconds S] [--runs K] [--sizes 10,1000]
 *   defaults: no file, the bench_server next to this build, 0.2 s, 5 runs, 10,1000,16000
 */
#include "bench_util.h" /* first: it defines _GNU_SOURCE */

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "peerpool.h"

#ifndef PP_BENCH_SERVER
#define PP_BENCH_SERVER "bench_server"
#endif
#ifndef PP_BENCH_BUILD_TYPE
#define PP_BENCH_BUILD_TYPE "unknown"
#endif

#define MARK_BEGIN "<!-- bench:idle -->"
#define MARK_END "<!-- /bench:idle -->"

enum { MAX_SIZES = 8, MAX_RUNS = 25, FILL_BATCH = 1000, ASYNC_CHAINS = 8 };
enum { P_TRY_PEER, P_TRY_ANY, P_ASYNC_1, P_ASYNC_N, NPATHS };
enum { L_FILL, L_SHUFFLED, NLAYOUTS };

static const char *const path_names[NPATHS] = {"try/peer", "try/any", "async/1", "async/8"};
static const char *const layout_names[NLAYOUTS] = {"fill order", "shuffled"};
static const char *const path_desc[NPATHS] = {
    "`pp_try_acquire(pool, &lease, peer, NULL)` + `pp_release(&lease, 0)`",
    "`pp_try_acquire(pool, &lease, NULL, NULL)` (any peer) + `pp_release(&lease, 0)`",
    "`pp_acquire(..., cb)`, callback, `pp_release`, next `pp_acquire`: one chain on `uv_run`",
    "the same with 8 chains in flight",
};

typedef struct {
  double med, min, max; /* ns per op */
  uint64_t ops;         /* ops in one timed run */
} result_t;

typedef struct {
  int n;
  double fill_ms, close_ms;
  int touched_peer, touched_any; /* distinct conns used by N consecutive try ops */
  result_t r[NLAYOUTS][NPATHS];
} size_result_t;

static uv_loop_t loop_storage, *loop = &loop_storage;
static pid_t server_pid = -1;
static int server_in = -1;
static double seconds_per_run = 0.2;
static int runs = 5;

/* ------------------------------------------------------------------------------------------
 * Small helpers (the others are in bench_util.h).
 */

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static void summarise(const double *v, int k, result_t *out) {
  double s[MAX_RUNS];
  memcpy(s, v, sizeof(double) * (size_t)k);
  qsort(s, (size_t)k, sizeof(double), cmp_double);
  out->min = s[0];
  out->max = s[k - 1];
  out->med = k % 2 ? s[k / 2] : (s[k / 2 - 1] + s[k / 2]) / 2;
}

/* ------------------------------------------------------------------------------------------
 * The server child. Its stdin is a pipe we hold: when we exit, for any reason, it reads EOF
 * and stops.
 */
static int start_server(const char *path) {
  int in[2], out[2];
  if (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0)
    bench_die("pipe: %s", strerror(errno));
  pid_t pid = fork();
  if (pid < 0) bench_die("fork: %s", strerror(errno));
  if (pid == 0) {
    dup2(in[0], 0);
    dup2(out[1], 1);
    execl(path, path, "--lifetime", "150", (char *)NULL);
    fprintf(stderr, "bench_idle: cannot run %s: %s\n", path, strerror(errno));
    _exit(127);
  }
  close(in[0]);
  close(out[1]);
  server_pid = pid;
  server_in = in[1];

  char line[32];
  size_t len = 0;
  uint64_t deadline = bench_now_ns() + 10000000000u;
  while (len < sizeof line - 1) {
    struct pollfd p = {out[0], POLLIN, 0};
    int left = (int)((int64_t)(deadline - bench_now_ns()) / 1000000);
    if (left <= 0 || poll(&p, 1, left) <= 0) bench_die("no port from %s within 10 s", path);
    ssize_t got = read(out[0], line + len, 1);
    if (got <= 0) bench_die("%s exited before printing its port", path);
    if (line[len] == '\n') break;
    len++;
  }
  line[len] = '\0';
  close(out[0]);
  int port = atoi(line);
  if (port <= 0 || port > 65535) bench_die("bad port line from %s: '%s'", path, line);
  return port;
}

static void stop_server(void) {
  if (server_pid < 0) return;
  close(server_in);
  int status;
  for (int i = 0; i < 500; i++) {
    if (waitpid(server_pid, &status, WNOHANG) == server_pid) {
      server_pid = -1;
      return;
    }
    usleep(10000);
  }
  fprintf(stderr, "bench_idle: server did not exit on EOF; killing it\n");
  kill(server_pid, SIGKILL);
  waitpid(server_pid, &status, 0);
  server_pid = -1;
}

/* ------------------------------------------------------------------------------------------
 * Driving the loop until a counter drops to zero, with a deadline. Callbacks that bring the
 * counter to zero call uv_stop(); a guard timer wakes the loop now and then so a lost
 * callback ends the bench instead of hanging it.
 */
static uv_timer_t guard;
static int *watched;
static uint64_t watch_deadline;

static void guard_cb(uv_timer_t *t) {
  if (*watched <= 0 || bench_now_ns() > watch_deadline) uv_stop(loop);
}

static void run_until_zero(int *counter, double limit_s, const char *what) {
  watched = counter;
  watch_deadline = bench_now_ns() + (uint64_t)(limit_s * 1e9);
  uv_timer_start(&guard, guard_cb, 100, 100);
  while (*counter > 0) {
    uv_run(loop, UV_RUN_DEFAULT);
    if (*counter > 0 && bench_now_ns() > watch_deadline)
      bench_die("%s: %d callbacks still missing after %.0f s", what, *counter, limit_s);
  }
  uv_timer_stop(&guard);
}

static void count_down(int *counter) {
  if (--*counter == 0) uv_stop(loop);
}

/* ------------------------------------------------------------------------------------------
 * Filling the pool: N acquires held at once force N conns (client_limit 1), dialled in
 * batches so the server's accept queue never overflows (a dropped SYN costs a 1 s retry).
 */
static int fill_pending, fill_failed, fill_first_err, fill_first_cause;

static void fill_cb(pp_lease_t *lease, int status) {
  if (status != 0) {
    if (fill_failed++ == 0) {
      fill_first_err = status;
      fill_first_cause = lease->cause;
    }
  } else if (lease->conn == NULL) {
    if (fill_failed++ == 0) fill_first_err = PP_ESTATE;
  }
  count_down(&fill_pending);
}

static void fill(pp_pool_t *pool, pp_peer_t *peer, pp_lease_t *leases, int n) {
  pp_acquire_opts_t o;
  pp_acquire_opts_init(&o);
  o.busy = PP_BUSY_WAIT;
  o.timeout = 0; /* our own deadline below */
  for (int done = 0; done < n;) {
    int batch = n - done < FILL_BATCH ? n - done : FILL_BATCH;
    for (int i = 0; i < batch; i++) {
      pp_lease_t *l = &leases[done + i];
      memset(l, 0, sizeof *l);
      int r = pp_acquire(pool, l, peer, &o, fill_cb);
      if (r != 0)
        bench_die("fill: pp_acquire #%d: %s (%s)", done + i, pp_err_name(r), pp_strerror(r));
      fill_pending++;
    }
    run_until_zero(&fill_pending, 30, "fill");
    if (fill_failed)
      bench_die("fill: %d of %d acquires failed; first: %s (%s), cause %s", fill_failed, batch,
                pp_err_name(fill_first_err), pp_strerror(fill_first_err),
                fill_first_cause ? pp_err_name(fill_first_cause) : "-");
    done += batch;
  }
}

static void check_stats(pp_pool_t *pool, int n, int idle, const char *when) {
  pp_stats_t st;
  pp_pool_stats(pool, &st);
  if (st.conns != n || st.idle != idle || st.active != n - idle || st.connecting != 0)
    bench_die("%s: stats say conns=%d idle=%d active=%d connecting=%d; expected conns=%d idle=%d",
              when, st.conns, st.idle, st.active, st.connecting, n, idle);
}

/* ------------------------------------------------------------------------------------------
 * The synchronous path.
 */
static uint64_t time_sync(pp_pool_t *pool, pp_peer_t *peer, uint64_t iters) {
  pp_lease_t lease;
  memset(&lease, 0, sizeof lease);
  uint64_t t0 = bench_now_ns();
  for (uint64_t i = 0; i < iters; i++) {
    int r = pp_try_acquire(pool, &lease, peer, NULL);
    if (__builtin_expect(r != 0, 0))
      bench_die("pp_try_acquire (op %llu): %s (%s)", (unsigned long long)i, pp_err_name(r),
                pp_strerror(r));
    r = pp_release(&lease, 0);
    if (__builtin_expect(r != 0, 0))
      bench_die("pp_release (op %llu): %s (%s)", (unsigned long long)i, pp_err_name(r),
                pp_strerror(r));
  }
  return bench_now_ns() - t0;
}

/* How many distinct conns `ops` consecutive acquires use: it tells whether the selection
 * rotates through every idle conn (touching a cold one each time) or reuses a few. Uses the
 * conn's data pointer as a mark; not timed. */
static int count_touched(pp_pool_t *pool, pp_peer_t *peer, int ops, uintptr_t stamp) {
  pp_lease_t lease;
  memset(&lease, 0, sizeof lease);
  int touched = 0;
  for (int i = 0; i < ops; i++) {
    int r = pp_try_acquire(pool, &lease, peer, NULL);
    if (r != 0) bench_die("pp_try_acquire: %s", pp_err_name(r));
    if ((uintptr_t)pp_conn_get_data(lease.conn) != stamp) {
      pp_conn_set_data(lease.conn, (void *)stamp);
      touched++;
    }
    if (pp_release(&lease, 0) != 0) bench_die("pp_release failed");
  }
  return touched;
}

/* ------------------------------------------------------------------------------------------
 * The asynchronous path: chains of acquire -> callback -> release -> acquire.
 */
static struct {
  pp_pool_t *pool;
  pp_peer_t *peer;
  uint64_t target, started, done;
  int inflight, err;
  pp_lease_t leases[ASYNC_CHAINS];
} as;

static void async_cb(pp_lease_t *lease, int status) {
  if (status != 0 || lease->conn == NULL) {
    if (!as.err) as.err = status ? status : PP_ESTATE;
    count_down(&as.inflight);
    return;
  }
  int r = pp_release(lease, 0);
  if (r != 0 && !as.err) as.err = r;
  as.done++;
  if (as.started < as.target && !as.err) {
    as.started++;
    r = pp_acquire(as.pool, lease, as.peer, NULL, async_cb);
    if (r == 0) return;
    if (!as.err) as.err = r;
  }
  count_down(&as.inflight);
}

static uint64_t time_async(pp_pool_t *pool, pp_peer_t *peer, int chains, uint64_t iters) {
  memset(&as, 0, sizeof as);
  as.pool = pool;
  as.peer = peer;
  as.target = iters;
  uint64_t t0 = bench_now_ns();
  for (int i = 0; i < chains && as.started < as.target; i++) {
    as.started++;
    int r = pp_acquire(pool, &as.leases[i], peer, NULL, async_cb);
    if (r != 0) bench_die("pp_acquire: %s (%s)", pp_err_name(r), pp_strerror(r));
    as.inflight++;
  }
  run_until_zero(&as.inflight, 20, "async acquire");
  uint64_t t = bench_now_ns() - t0;
  if (as.err) bench_die("async path: %s (%s)", pp_err_name(as.err), pp_strerror(as.err));
  if (as.done != iters)
    bench_die("async path: %llu ops done, %llu expected", (unsigned long long)as.done,
              (unsigned long long)iters);
  return t;
}

/* ------------------------------------------------------------------------------------------
 * Measuring one path: calibrate the op count for about seconds_per_run, one warm-up run,
 * then `runs` timed runs; the median is the figure.
 */
static uint64_t time_path(int path, pp_pool_t *pool, pp_peer_t *peer, uint64_t iters) {
  switch (path) {
    case P_TRY_PEER:
      return time_sync(pool, peer, iters);
    case P_TRY_ANY:
      return time_sync(pool, NULL, iters);
    case P_ASYNC_1:
      return time_async(pool, peer, 1, iters);
    default:
      return time_async(pool, peer, ASYNC_CHAINS, iters);
  }
}

static void measure(int path, pp_pool_t *pool, pp_peer_t *peer, result_t *out) {
  uint64_t iters = 1000, t;
  for (;;) {
    t = time_path(path, pool, peer, iters);
    if (t >= 20000000u || iters >= (1u << 30)) break;
    iters *= 4;
  }
  double per = (double)t / (double)iters;
  iters = (uint64_t)(seconds_per_run * 1e9 / (per > 0.1 ? per : 0.1));
  if (iters < 1000) iters = 1000;

  double v[MAX_RUNS];
  (void)time_path(path, pool, peer, iters); /* warm-up */
  for (int k = 0; k < runs; k++) {
    uv_run(loop, UV_RUN_NOWAIT); /* let the pool do any deferred housekeeping */
    v[k] = (double)time_path(path, pool, peer, iters) / (double)iters;
  }
  summarise(v, runs, out);
  out->ops = iters;
}

/* Take every idle conn and give them back in a random (but fixed) order, so the pool's idle
 * order no longer follows where the conns sit in memory. Not timed. */
static void shuffle_idle(pp_pool_t *pool, pp_peer_t *peer, pp_lease_t *leases, int n) {
  for (int i = 0; i < n; i++) {
    memset(&leases[i], 0, sizeof leases[i]);
    int r = pp_try_acquire(pool, &leases[i], peer, NULL);
    if (r != 0) bench_die("shuffle: pp_try_acquire #%d: %s", i, pp_err_name(r));
  }
  check_stats(pool, n, 0, "shuffle, all taken");
  /* Leases are linked into their conns, so they stay where they are; the order is shuffled. */
  int *order = malloc(sizeof(int) * (size_t)n);
  if (order == NULL) bench_die("out of memory");
  for (int i = 0; i < n; i++)
    order[i] = i;
  uint64_t x = 0x9e3779b97f4a7c15u;
  for (int i = n - 1; i > 0; i--) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17; /* xorshift64 */
    int j = (int)(x % (uint64_t)(i + 1)), t = order[i];
    order[i] = order[j], order[j] = t;
  }
  for (int i = 0; i < n; i++) {
    int r = pp_release(&leases[order[i]], 0);
    if (r != 0) bench_die("shuffle: pp_release: %s", pp_err_name(r));
  }
  free(order);
  check_stats(pool, n, n, "shuffle, all given back");
}

/* ------------------------------------------------------------------------------------------
 * One pool size.
 */
static int pool_closed;

static void pool_close_cb(pp_pool_t *pool) {
  count_down(&pool_closed);
}

static void bench_size(int port, size_result_t *sr) {
  int n = sr->n;
  pp_options_t opts;
  pp_options_init(&opts);
  opts.max_per_peer = n;
  opts.max_total = n;
  opts.client_limit = 1;
  if (opts.backlog < n) opts.backlog = n;
  const char *why = NULL;
  pp_pool_t *pool = NULL;
  int r = pp_pool_new(loop, &opts, &pool, &why);
  if (r != 0) bench_die("pp_pool_new(N=%d): %s: %s", n, pp_err_name(r), why ? why : pp_strerror(r));

  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
  pp_peer_t *peer = NULL;
  r = pp_pool_add_peer(pool, addr, 0, &peer, &why);
  if (r != 0) bench_die("pp_pool_add_peer(%s): %s: %s", addr, pp_err_name(r), why ? why : "");

  pp_lease_t *leases = calloc((size_t)n, sizeof *leases);
  if (leases == NULL) bench_die("out of memory");
  uint64_t t0 = bench_now_ns();
  fill(pool, peer, leases, n);
  sr->fill_ms = (double)(bench_now_ns() - t0) / 1e6;
  check_stats(pool, n, 0, "after fill");
  for (int i = 0; i < n; i++) {
    r = pp_release(&leases[i], 0);
    if (r != 0) bench_die("release after fill: %s", pp_err_name(r));
  }
  uv_run(loop, UV_RUN_NOWAIT);
  check_stats(pool, n, n, "after releasing the fill");
  fprintf(stderr, "N=%d: %d conns connected in %.0f ms\n", n, n, sr->fill_ms);

  for (int layout = 0; layout < NLAYOUTS; layout++) {
    if (layout == L_SHUFFLED) shuffle_idle(pool, peer, leases, n);
    for (int p = 0; p < NPATHS; p++) {
      result_t *res = &sr->r[layout][p];
      measure(p, pool, peer, res);
      fprintf(stderr, "N=%d %-10s %-9s %8.1f ns/op (min %.1f, max %.1f, %llu ops per run)\n", n,
              layout_names[layout], path_names[p], res->med, res->min, res->max,
              (unsigned long long)res->ops);
    }
  }
  free(leases);
  (void)count_touched(pool, peer, n, 1); /* marks every conn seen so far */
  sr->touched_peer = count_touched(pool, peer, n, 2);
  sr->touched_any = count_touched(pool, NULL, n, 3);
  uv_run(loop, UV_RUN_NOWAIT);
  check_stats(pool, n, n, "after the timed runs");

  t0 = bench_now_ns();
  pool_closed = 1;
  r = pp_pool_close(pool, pool_close_cb);
  if (r != 0) bench_die("pp_pool_close: %s", pp_err_name(r));
  run_until_zero(&pool_closed, 20, "pool close");
  sr->close_ms = (double)(bench_now_ns() - t0) / 1e6;
}

/* ------------------------------------------------------------------------------------------
 * Reporting.
 */
static void read_first(const char *file, const char *key, char *out, size_t outlen) {
  snprintf(out, outlen, "unknown");
  FILE *f = fopen(file, "r");
  if (f == NULL) return;
  char line[512];
  size_t klen = strlen(key);
  while (fgets(line, sizeof line, f)) {
    if (strncmp(line, key, klen) != 0) continue;
    char *v = line + klen;
    if (*key) {
      v = strchr(line, ':');
      if (v == NULL) continue;
      v++;
    }
    while (*v == ' ' || *v == '\t')
      v++;
    v[strcspn(v, "\n")] = '\0';
    snprintf(out, outlen, "%s", v);
    break;
  }
  fclose(f);
}

/* The 1, 5 and 15 minute load averages. */
static void read_load(char *out, size_t outlen) {
  read_first("/proc/loadavg", "", out, outlen);
  char *sp = out;
  for (int i = 0; i < 3 && sp; i++)
    sp = strchr(sp + (i ? 1 : 0), ' ');
  if (sp) *sp = '\0';
}

typedef struct {
  char cpu[256], load[128], load_end[128], kernel[256], date[64], commit[64];
  long ncpu;
} machine_t;

static void machine_info(machine_t *m) {
  read_first("/proc/cpuinfo", "model name", m->cpu, sizeof m->cpu);
  read_load(m->load, sizeof m->load);
  m->ncpu = sysconf(_SC_NPROCESSORS_ONLN);
  struct utsname u;
  if (uname(&u) == 0)
    snprintf(m->kernel, sizeof m->kernel, "%s %s %s", u.sysname, u.release, u.machine);
  else
    snprintf(m->kernel, sizeof m->kernel, "unknown");
  time_t now = time(NULL);
  struct tm tm;
  gmtime_r(&now, &tm);
  strftime(m->date, sizeof m->date, "%Y-%m-%d %H:%M UTC", &tm);
  const char *c = getenv("PP_BENCH_COMMIT");
  snprintf(m->commit, sizeof m->commit, "%s", c && *c ? c : "unknown");
}

static void print_table(FILE *f, const size_result_t *sr, int ns, int markdown) {
  if (markdown) {
    fprintf(f,
            "| idle order | path | pooled conns | ns/op (median) | min – max | × vs %d conns |\n",
            sr[0].n);
    fprintf(f, "|---|---|---:|---:|---:|---:|\n");
  } else {
    fprintf(f, "%-10s  %-9s  %6s  %8s  %17s  %7s\n", "idle order", "path", "conns", "ns/op",
            "min - max", "ratio");
  }
  for (int l = 0; l < NLAYOUTS; l++) {
    for (int p = 0; p < NPATHS; p++) {
      for (int i = 0; i < ns; i++) {
        const result_t *r = &sr[i].r[l][p];
        double ratio = r->med / sr[0].r[l][p].med;
        if (markdown)
          fprintf(f, "| %s | %s | %d | %.1f | %.1f – %.1f | %.2f |\n", layout_names[l],
                  path_names[p], sr[i].n, r->med, r->min, r->max, ratio);
        else
          fprintf(f, "%-10s  %-9s  %6d  %8.1f  %7.1f - %7.1f  %6.2fx\n", layout_names[l],
                  path_names[p], sr[i].n, r->med, r->min, r->max, ratio);
      }
    }
  }
}

/* The verdicts on issue 2's targets, for the two synchronous paths in both idle orders.
 * Returns how many were missed. */
static int print_targets(FILE *f, const size_result_t *sr, int ns, int markdown) {
  int missed = 0;
  if (markdown) {
    fprintf(f, "| target | idle order | path | measured | met? |\n|---|---|---|---:|---|\n");
  }
  for (int l = 0; l < NLAYOUTS; l++) {
    for (int p = P_TRY_PEER; p <= P_TRY_ANY; p++) {
      double worst = 0;
      int worst_n = 0;
      for (int i = 0; i < ns; i++)
        if (sr[i].r[l][p].med > worst) worst = sr[i].r[l][p].med, worst_n = sr[i].n;
      double ratio = sr[ns - 1].r[l][p].med / sr[0].r[l][p].med;
      int ok_ns = worst <= 50, ok_ratio = ratio <= 1.5;
      missed += !ok_ns + !ok_ratio;
      if (markdown) {
        fprintf(f, "| ≤ 50 ns/op at every size | %s | %s | %.1f ns (N=%d, the slowest) | %s |\n",
                layout_names[l], path_names[p], worst, worst_n, ok_ns ? "yes" : "**no**");
        fprintf(f, "| %d conns within 1.5× of %d | %s | %s | %.2f× | %s |\n", sr[ns - 1].n, sr[0].n,
                layout_names[l], path_names[p], ratio, ok_ratio ? "yes" : "**no**");
      } else {
        fprintf(f, "<= 50 ns/op:          %-10s %-9s slowest %.1f ns (N=%d): %s\n", layout_names[l],
                path_names[p], worst, worst_n, ok_ns ? "met" : "MISSED");
        fprintf(f, "N=%d within 1.5x of N=%d: %-10s %-9s %.2fx: %s\n", sr[ns - 1].n, sr[0].n,
                layout_names[l], path_names[p], ratio, ok_ratio ? "met" : "MISSED");
      }
    }
  }
  return missed;
}

static char *slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) return NULL;
  size_t cap = 8192, n = 0;
  char *buf = malloc(cap);
  size_t got;
  while (buf && (got = fread(buf + n, 1, cap - n - 1, f)) > 0) {
    n += got;
    if (cap - n - 1 == 0) buf = realloc(buf, cap *= 2);
  }
  fclose(f);
  if (buf == NULL) bench_die("out of memory");
  buf[n] = '\0';
  *len = n;
  return buf;
}

static void write_section(FILE *f, const size_result_t *sr, int ns, const machine_t *m) {
  fprintf(f, "%s\n", MARK_BEGIN);
  fprintf(f, "## Idle acquire + release (C API)\n\n");
  fprintf(f,
          "Written by `bench/bench_idle` (`make bench`, or `sh bench/run.sh build`); do not\n"
          "edit by hand, the next run replaces this section.\n\n");
  fprintf(f, "- date: %s; engine commit: %s\n", m->date, m->commit);
  fprintf(f, "- machine: %s, %ld CPUs online; %s\n", m->cpu, m->ncpu, m->kernel);
  fprintf(f, "- load average (1, 5, 15 min) at start: %s; at end: %s\n", m->load, m->load_end);
  fprintf(f, "- build: %s, %s, libuv %s\n", PP_BENCH_BUILD_TYPE, "gcc " __VERSION__,
          uv_version_string());
  fprintf(f,
          "\nOne pool, one peer (`127.0.0.1`, a `bench_server` child process holding the "
          "conns),\n`max_per_peer = max_total = N`, `client_limit = 1`, other options at "
          "their defaults.\nThe pool is filled with N connected conns, all idle, before "
          "timing. Each figure is\nthe median of %d runs of about %.1f s each (after a "
          "warm-up run), in ns per\nacquire + release pair (`CLOCK_MONOTONIC`).\n\n",
          runs, seconds_per_run);
  fprintf(f, "Paths:\n\n");
  for (int p = 0; p < NPATHS; p++)
    fprintf(f, "- **%s**: %s\n", path_names[p], path_desc[p]);
  fprintf(f,
          "\nIdle orders: the default conn selection lends the conn idle the longest, so "
          "consecutive\nops walk through every idle conn in turn (counted below).\n\n"
          "- **fill order**: the conns were released in the order they were created, so the "
          "walk\n  follows allocation order in memory, the kindest case for the CPU's caches "
          "and\n  prefetcher.\n"
          "- **shuffled**: all N were taken and given back in a random order, as after real "
          "churn,\n  so each op lands on a conn that is likely cold in the cache.\n\n");
  print_table(f, sr, ns, 1);
  fprintf(f, "\nTargets (issue 2), for the synchronous idle acquire + release:\n\n");
  int missed = print_targets(f, sr, ns, 1);
  fprintf(f, "\n%s\n\nAlso seen:\n\n",
          missed ? "Some targets are missed: see the **no** rows."
                 : "Every target is met in both idle orders.");
  for (int i = 0; i < ns; i++)
    fprintf(f,
            "- N=%d: filling took %.0f ms, closing %.0f ms; %d consecutive try/peer ops used "
            "%d distinct conns (try/any: %d)\n",
            sr[i].n, sr[i].fill_ms, sr[i].close_ms, sr[i].n, sr[i].touched_peer, sr[i].touched_any);
  fprintf(f,
          "\nThe async rows are not held to the targets: they show what the deferred "
          "callback\n(a loop iteration) adds on top of the synchronous path.\n");
  fprintf(f, "%s\n", MARK_END);
}

/* Replace our section of `path` (between the markers), or append it, or create the file. */
static void write_doc(const char *path, const size_result_t *sr, int ns, const machine_t *m) {
  size_t len = 0;
  char *old = slurp(path, &len);
  char tmp[4096];
  snprintf(tmp, sizeof tmp, "%s.tmp%ld", path, (long)getpid());
  FILE *f = fopen(tmp, "w");
  if (f == NULL) bench_die("cannot write %s: %s", tmp, strerror(errno));
  if (old == NULL) {
    fprintf(f,
            "# Benchmarks\n\nFigures measured on a real machine by the programs in "
            "`bench/`. Each section is\nrewritten by the benchmark named in it.\n\n");
    write_section(f, sr, ns, m);
  } else {
    char *b = strstr(old, MARK_BEGIN);
    char *e = b ? strstr(b, MARK_END) : NULL;
    if (b && e) {
      e += strlen(MARK_END);
      if (*e == '\n') e++;
      fwrite(old, 1, (size_t)(b - old), f);
      write_section(f, sr, ns, m);
      fputs(e, f);
    } else {
      fputs(old, f);
      if (len > 0 && old[len - 1] != '\n') fputc('\n', f);
      if (len > 0) fputc('\n', f);
      write_section(f, sr, ns, m);
    }
    free(old);
  }
  if (fclose(f) != 0 || rename(tmp, path) != 0) {
    unlink(tmp);
    bench_die("cannot write %s: %s", path, strerror(errno));
  }
}

/* ------------------------------------------------------------------------------------------
 */
static void report_leftover(uv_handle_t *h, void *arg) {
  fprintf(stderr, "bench_idle: handle left on the loop: %s%s\n", uv_handle_type_name(h->type),
          uv_is_closing(h) ? " (closing)" : "");
}

static void guard_closed(uv_handle_t *h) {}

int main(int argc, char **argv) {
  const char *out = NULL, *server = PP_BENCH_SERVER;
  int sizes[MAX_SIZES] = {10, 1000, 16000}, ns = 3;
  const char *size_list = NULL;
  /* The server sees its stdin close when we exit (bench_die too), and stops. */
  bench_start("bench_idle", 120);
  bench_parse_opts(argc, argv,
                   (const bench_opt_t[]){{"--out", 's', &out},
                                         {"--server", 's', &server},
                                         {"--seconds", 'd', &seconds_per_run},
                                         {"--runs", 'i', &runs},
                                         {"--sizes", 's', &size_list},
                                         {NULL, 0, NULL}});
  if (size_list != NULL) {
    char *s = (char *)size_list;
    for (ns = 0; ns < MAX_SIZES && *s; ns++) {
      sizes[ns] = (int)strtol(s, &s, 10);
      if (*s == ',') s++;
    }
  }
  if (!(seconds_per_run > 0 && seconds_per_run <= 5) || runs < 1 || runs > MAX_RUNS || ns < 1)
    bench_die("bad --seconds (0..5], --runs (1..%d) or --sizes", MAX_RUNS);
  for (int i = 0; i < ns; i++)
    if (sizes[i] < 1) bench_die("bad --sizes");

  signal(SIGPIPE, SIG_IGN);
  bench_raise_nofile();
  machine_t m;
  machine_info(&m);

  /* Start the server before the loop exists, so the child inherits nothing of it. */
  int port = start_server(server);
  fprintf(stderr, "bench_server on 127.0.0.1:%d (pid %ld)\n", port, (long)server_pid);

  if (uv_loop_init(loop) != 0) bench_die("uv_loop_init failed");
  uv_timer_init(loop, &guard);

  size_result_t sr[MAX_SIZES];
  memset(sr, 0, sizeof sr);
  for (int i = 0; i < ns; i++) {
    sr[i].n = sizes[i];
    bench_size(port, &sr[i]);
  }

  uv_close((uv_handle_t *)&guard, guard_closed);
  uv_run(loop, UV_RUN_DEFAULT);
  int lc = uv_loop_close(loop);
  if (lc != 0) {
    uv_walk(loop, report_leftover, NULL);
    fprintf(stderr, "bench_idle: uv_loop_close: %s (the pools left handles behind)\n",
            uv_err_name(lc));
  }
  stop_server();
  read_load(m.load_end, sizeof m.load_end);

  printf("\nIdle acquire + release through the C API (median of %d runs, ns per op)\n\n", runs);
  print_table(stdout, sr, ns, 0);
  printf("\n");
  int missed = print_targets(stdout, sr, ns, 0);
  printf("%s\n", missed ? "some targets missed" : "all targets met");
  for (int i = 0; i < ns; i++)
    printf("N=%d: fill %.0f ms, close %.0f ms, %d ops used %d distinct conns (any: %d)\n", sr[i].n,
           sr[i].fill_ms, sr[i].close_ms, sr[i].n, sr[i].touched_peer, sr[i].touched_any);
  if (out) {
    write_doc(out, sr, ns, &m);
    printf("\nwrote %s\n", out);
  }
  return lc != 0;
}
