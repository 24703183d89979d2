/* The TLS layer (engine/src/tls.c) against servers nobody here wrote: `redis-server
 * --tls-port` and `openssl s_server` on 127.0.0.1, with a CA and certificates that
 * spec/c/tls_certs.sh makes with the openssl command in a fresh temporary directory.
 *
 * The first tests drive the layer with a small uv_tcp client (tc_*) that plays conn.c's part
 * step by step as the seam at the top of tls.c describes: it connects, feeds what it reads,
 * advances the handshake, decrypts, encrypts, sends the layer's output chunks and hands them
 * back. Its TLS state comes from a real pool's settings (pp__tls_conn_new on a peer of a pool
 * made with pp_options_t.tls and pp_peer_set_tls), so the pool and peer options, the per-peer
 * session cache and the pool's counters are tested through the same path a conn uses. The
 * tls_pool_* tests at the end go through the real pool (pp_acquire, conn.c's TLS section).
 *
 * Servers run as child processes that die with the test (PR_SET_PDEATHSIG) and are stopped at
 * the end of each test; every wait is bounded.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fixtures_multi.h"
#include "internal.h"

#ifndef PP_SPEC_DIR
#error "PP_SPEC_DIR must name spec/c (CMake sets it)"
#endif

/* ------------------------------------------------------------------------------------------
 * The temporary directory, its certificates, and child processes.
 */
typedef struct {
  char dir[256];
  char ca[320], server[320], server_key[320], wrong[320], expired[320], unknown[320];
  char client[320], client_key[320];
} env_t;

static env_t env;

#define MAX_PROCS 4
typedef struct {
  pid_t pid;
  int in; /* its stdin (a pipe we keep open: s_server stops reading its console at EOF) */
  char log[320];
} proc_t;
static proc_t procs[MAX_PROCS];
static int nprocs;

static void need(const char *cmd) {
  char sh[128];
  snprintf(sh, sizeof sh, "command -v %s >/dev/null 2>&1", cmd);
  if (system(sh) != 0) {
    snprintf(sh, sizeof sh, "needs the command %s (make deps installs it)", cmd);
    test_skip(sh);
  }
}

static void env_setup(void) {
  need("openssl");
  const char *tmp = getenv("TMPDIR");
  snprintf(env.dir, sizeof env.dir, "%s/pp-tls.XXXXXX", tmp && *tmp ? tmp : "/tmp");
  ASSERT_NOT_NULL(mkdtemp(env.dir));
#define P(field, name) snprintf(env.field, sizeof env.field, "%s/%s", env.dir, name)
  P(ca, "ca.pem");
  P(server, "server.pem");
  P(server_key, "server.key");
  P(wrong, "wrong.pem");
  P(expired, "expired.pem");
  P(unknown, "unknown.pem");
  P(client, "client.pem");
  P(client_key, "client.key");
#undef P
  char cmd[512];
  snprintf(cmd, sizeof cmd, "sh '%s/tls_certs.sh' '%s'", PP_SPEC_DIR, env.dir);
  ASSERT_MSG(system(cmd) == 0, "making the certificates failed (left in %s)", env.dir);
  /* On success env_teardown removes it; a failed test leaves its certificates and server logs. */
  printf("tls test files: %s\n", env.dir);
  fflush(stdout);
}

static void proc_stop(proc_t *p) {
  if (p->pid <= 0) return;
  kill(p->pid, SIGTERM);
  int status;
  uint64_t end = test_now_ms() + 3000;
  while (waitpid(p->pid, &status, WNOHANG) == 0) {
    if (test_now_ms() > end) {
      kill(p->pid, SIGKILL);
      waitpid(p->pid, &status, 0);
      break;
    }
    usleep(5000);
  }
  p->pid = 0;
  close(p->in);
}

static void env_teardown(void) {
  for (int i = 0; i < nprocs; i++)
    proc_stop(&procs[i]);
  nprocs = 0;
  char cmd[320];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", env.dir);
  ASSERT_EQ(system(cmd), 0);
}

/* Start argv[] with its output in env.dir/<log>. */
static proc_t *spawn(const char *log, char *const argv[]) {
  ASSERT_LT(nprocs, MAX_PROCS);
  proc_t *p = &procs[nprocs++];
  snprintf(p->log, sizeof p->log, "%s/%s", env.dir, log);
  int in[2];
  ASSERT_EQ(pipe2(in, O_CLOEXEC), 0);
  int fd = open(p->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL); /* a test that fails (abort) takes its servers along */
    if (dup2(in[0], 0) < 0 || dup2(fd, 1) < 0 || dup2(fd, 2) < 0 || chdir(env.dir) != 0) _exit(126);
    execvp(argv[0], argv);
    _exit(127);
  }
  close(in[0]);
  close(fd);
  p->pid = pid;
  p->in = in[1];
  return p;
}

static bool proc_alive(proc_t *p) {
  int status;
  return p->pid > 0 && waitpid(p->pid, &status, WNOHANG) == 0;
}

/* The whole log (valid until the next call). */
static const char *log_text(const proc_t *p) {
  static char *buf;
  static size_t cap;
  size_t n = 0;
  FILE *f = fopen(p->log, "r");
  for (;;) {
    if (cap - n < 4096) {
      cap = cap ? cap * 2 : 65536;
      buf = realloc(buf, cap);
      ASSERT_NOT_NULL(buf);
    }
    size_t got = f ? fread(buf + n, 1, cap - n - 1, f) : 0;
    n += got;
    if (got == 0) break;
  }
  if (f) fclose(f);
  buf[n] = '\0';
  return buf;
}

/* The end of a log, for failure messages. */
static const char *log_tail(const proc_t *p) {
  const char *s = log_text(p);
  size_t n = strlen(s);
  return n > 2000 ? s + n - 2000 : s;
}

/* Wait until the log shows `text`; fail after `ms`, or at once if the process died. */
static void wait_log(proc_t *p, const char *text, int ms) {
  uint64_t end = test_now_ms() + (uint64_t)ms;
  while (strstr(log_text(p), text) == NULL) {
    if (test_now_ms() > end)
      FAIL("no \"%s\" in %s within %d ms; it ends:\n%s", text, p->log, ms, log_tail(p));
    usleep(5000);
  }
}

/* Put the string arguments of `ap` (NULL ended) at argv[n...], at most up to argv[max - 2],
 * and a NULL after them. */
static void argv_append(char **argv, int n, int max, va_list ap) {
  for (char *a; (a = va_arg(ap, char *)) != NULL && n < max - 1;)
    argv[n++] = a;
  argv[n] = NULL;
}

/* `openssl s_server` on 127.0.0.1 with `cert` (key: server.key) and more arguments (NULL
 * ended); returns its port. `-msg` makes it log every TLS message it gets (close_notify). */
static int s_server(const char *cert, ...) {
  need("openssl");
  char *argv[32] = {"openssl",    "s_server", "-accept",      "127.0.0.1:0", "-cert",
                    (char *)cert, "-key",     env.server_key, "-msg"};
  va_list ap;
  va_start(ap, cert);
  argv_append(argv, 9, 32, ap);
  va_end(ap);
  proc_t *p = spawn("s_server.log", argv);
  wait_log(p, "ACCEPT 127.0.0.1:", 5000);
  const char *at = strstr(log_text(p), "ACCEPT 127.0.0.1:");
  int port = atoi(at + strlen("ACCEPT 127.0.0.1:"));
  ASSERT_GT(port, 0);
  return port;
}

static proc_t *s_server_proc(void) {
  return &procs[0];
}

static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof sa;
  ASSERT_EQ(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
  ASSERT_EQ(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
  close(fd);
  return ntohs(sa.sin_port);
}

/* redis-server on 127.0.0.1 with TLS only (server.pem, trusting ca.pem for clients), asking
 * clients for a certificate when `auth_clients` ("no", "yes"). More arguments may follow
 * (NULL ended). Returns its port. */
static int redis_tls(const char *auth_clients, ...) {
  need("redis-server");
  for (int attempt = 0; attempt < 3; attempt++) {
    char port[16];
    snprintf(port, sizeof port, "%d", free_port());
    char *argv[40] = {"redis-server",
                      "--port",
                      "0",
                      "--tls-port",
                      port,
                      "--bind",
                      "127.0.0.1",
                      "--tls-cert-file",
                      env.server,
                      "--tls-key-file",
                      env.server_key,
                      "--tls-ca-cert-file",
                      env.ca,
                      "--tls-auth-clients",
                      (char *)auth_clients,
                      "--save",
                      "",
                      "--appendonly",
                      "no",
                      "--dir",
                      env.dir};
    va_list ap;
    va_start(ap, auth_clients);
    argv_append(argv, 21, 40, ap);
    va_end(ap);
    proc_t *p = spawn("redis.log", argv);
    uint64_t end = test_now_ms() + 5000;
    while (strstr(log_text(p), "Ready to accept connections") == NULL && proc_alive(p) &&
           test_now_ms() < end)
      usleep(5000);
    if (strstr(log_text(p), "Ready to accept connections")) return atoi(port);
    /* The port was taken meanwhile (or redis failed): try another. */
    fprintf(stderr, "redis-server did not start on %s:\n%s\n", port, log_tail(p));
    proc_stop(p);
    nprocs--;
  }
  FAIL("redis-server with TLS did not start");
}

/* ------------------------------------------------------------------------------------------
 * A pool whose settings the conns take, and its peers.
 */
static pp_pool_t *tls_pool(const pp_tls_options_t *tls) {
  pp_options_t o;
  test_options(&o);
  o.tls = tls;
  return test_pool(&o);
}

static pp_peer_t *peer_at(pp_pool_t *pool, int port) {
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
  return test_peer(pool, addr);
}

static pp_tls_options_t trusting_ca(void) {
  pp_tls_options_t t;
  pp_tls_options_init(&t);
  t.ca_file = env.ca;
  return t;
}

/* trusting_ca() with the changes given as statements on `t`, as a pointer that stays valid for
 * the whole test: CA_TRUSTED(t.verify = 0). */
#define CA_TRUSTED(...)           \
  ({                              \
    static pp_tls_options_t t;    \
    t = trusting_ca();            \
    __VA_ARGS__;                  \
    (const pp_tls_options_t *)&t; \
  })

/* For the tests through the pool: `o` with `tls`, and a handshake timeout with room for TLS. */
static pp_pool_t *tls_pool_with(const pp_tls_options_t *tls, pp_options_t *o) {
  o->tls = tls;
  o->handshake_timeout = 5000; /* TLS counts against it: room for a loaded (sanitizer) run */
  return test_pool(o);
}

/* A test's pool and its one peer, at the TLS server on 127.0.0.1:port. */
typedef struct {
  int port;
  pp_pool_t *pool;
  pp_peer_t *peer;
} tls_fix_t;

/* A pool with `tls`: with test_options() when `opts` is NULL (the tc_* tests, which only take
 * the TLS state from it), else through tls_pool_with on a copy of `opts` (the pool tests). */
static tls_fix_t tls_start(int port, const pp_tls_options_t *tls, const pp_options_t *opts) {
  tls_fix_t f = {.port = port};
  if (opts == NULL) {
    f.pool = tls_pool(tls);
  } else {
    pp_options_t o = *opts;
    f.pool = tls_pool_with(tls, &o);
  }
  f.peer = peer_at(f.pool, port);
  return f;
}

/* The end of a test with a TLS server: the pool closes clean, the servers stop. */
static void tls_end(tls_fix_t *f) {
  test_finish(f->pool);
  env_teardown();
}

/* ------------------------------------------------------------------------------------------
 * The client: one uv_tcp_t and one pp__tls_t, driven as the seam in tls.c says.
 */
typedef struct {
  uv_tcp_t tcp;
  uv_connect_t creq;
  pp__tls_t *tls;
  int hs;      /* UV_EAGAIN while the handshake runs, then 0, PP_ETLS or a socket error */
  ssize_t end; /* 0 while open; then UV_EOF, PP_ETLS or a socket error */
  char in[16384];
  size_t in_len;
  int writes; /* ciphertext chunks in flight */
  int wrote;  /* write callbacks */
  int write_errors;
  bool closed;
} tc_t;

static char read_space[65536];

static void tc_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  buf->base = read_space;
  buf->len = sizeof read_space;
}

static void tc_wrote(uv_write_t *req, int status) {
  pp__tls_out_t *out = (pp__tls_out_t *)req; /* req is the chunk's first member */
  tc_t *c = out->data;
  c->writes--;
  c->wrote++;
  if (status != 0 && status != UV_ECANCELED) c->write_errors++;
  pp__tls_output_done(out);
}

/* Send whatever ciphertext the layer made. */
static void tc_flush(tc_t *c) {
  int err;
  pp__tls_out_t *out;
  while ((out = pp__tls_output(c->tls, &err)) != NULL) {
    out->data = c;
    c->writes++;
    int r = uv_write(&out->req, (uv_stream_t *)&c->tcp, &out->buf, 1, tc_wrote);
    if (r != 0) {
      c->writes--;
      c->write_errors++;
      pp__tls_output_done(out);
    }
  }
  ASSERT_OK(err);
}

static void tc_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  tc_t *c = s->data;
  if (nread == 0) return;
  if (nread < 0) {
    uv_read_stop(s);
    if (c->hs == UV_EAGAIN) c->hs = (int)nread;
    if (c->end == 0) c->end = nread;
    return;
  }
  ASSERT_OK(pp__tls_feed(c->tls, buf->base, (size_t)nread));
  if (c->hs == UV_EAGAIN) {
    c->hs = pp__tls_handshake(c->tls);
    tc_flush(c);
    if (c->hs != 0) return;
  }
  for (;;) {
    ASSERT_LT(c->in_len, sizeof c->in);
    ssize_t n = pp__tls_read(c->tls, c->in + c->in_len, sizeof c->in - 1 - c->in_len);
    if (n <= 0) {
      if (n < 0 && c->end == 0) c->end = n;
      break;
    }
    c->in_len += (size_t)n;
    c->in[c->in_len] = '\0';
  }
  tc_flush(c); /* a key update or an alert may want sending */
}

static void tc_connected(uv_connect_t *req, int status) {
  tc_t *c = req->data;
  if (status < 0) {
    c->hs = status;
    c->end = status;
    return;
  }
  ASSERT_OK(uv_read_start((uv_stream_t *)&c->tcp, tc_alloc, tc_read));
  c->hs = pp__tls_handshake(c->tls); /* the ClientHello */
  ASSERT_EQ(c->hs, UV_EAGAIN);
  tc_flush(c);
}

/* Connect to 127.0.0.1:port with the TLS state `tls` (the conn owns it from here). */
static void tc_open_with(tc_t *c, pp__tls_t *tls, int port) {
  memset(c, 0, sizeof *c);
  c->tls = tls;
  c->hs = UV_EAGAIN;
  ASSERT_OK(uv_tcp_init(test_loop(), &c->tcp));
  c->tcp.data = c;
  c->creq.data = c;
  struct sockaddr_in sa;
  uv_ip4_addr("127.0.0.1", port, &sa);
  ASSERT_OK(uv_tcp_connect(&c->creq, &c->tcp, (const struct sockaddr *)&sa, tc_connected));
}

/* Connect to `peer` (127.0.0.1:port) with the TLS state its pool gives a new conn. */
static void tc_open(tc_t *c, pp_peer_t *peer, int port) {
  pp__tls_t *tls = NULL;
  ASSERT_OK(pp__tls_conn_new(peer, &tls));
  ASSERT_NOT_NULL(tls);
  tc_open_with(c, tls, port);
}

/* tc_open and wait for the handshake's outcome, which is returned. */
static int tc_handshake(tc_t *c, pp_peer_t *peer, int port) {
  tc_open(c, peer, port);
  RUN_UNTIL(c->hs != UV_EAGAIN, 5000);
  return c->hs;
}

static void tc_send(tc_t *c, const char *data) {
  uv_buf_t b = uv_buf_init((char *)data, (unsigned int)strlen(data));
  ASSERT_OK(pp__tls_write(c->tls, &b, 1));
  tc_flush(c);
}

/* Send `request` and wait (bounded) until `reply` arrived or the conn ended. */
static bool tc_ask(tc_t *c, const char *request, const char *reply) {
  c->in_len = 0;
  c->in[0] = '\0';
  tc_send(c, request);
  uint64_t end = test_now_ms() + 5000;
  while (strstr(c->in, reply) == NULL && c->end == 0 && test_now_ms() < end)
    test_tick();
  return strstr(c->in, reply) != NULL;
}

static void tc_closed(uv_handle_t *h) {
  ((tc_t *)h->data)->closed = true;
}

/* Close as conn.c will: close_notify first when `notify` (sent with a try_write: the handle
 * closes now), then free the TLS state while writes may still be queued, then the handle. */
static void tc_close(tc_t *c, bool notify) {
  if (notify) {
    pp__tls_close_notify(c->tls);
    pp__tls_out_t *out = pp__tls_output(c->tls, NULL);
    if (out) {
      if (uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) == 0)
        uv_try_write((uv_stream_t *)&c->tcp, &out->buf, 1);
      pp__tls_output_done(out);
    }
  }
  pp__tls_free(c->tls);
  c->tls = NULL;
  uv_close((uv_handle_t *)&c->tcp, tc_closed);
  RUN_UNTIL(c->closed, 2000);
  ASSERT_EQ(c->writes, 0);
}

#define PING "*1\r\n$4\r\nPING\r\n"

static void assert_starts(const char *s, const char *prefix) {
  ASSERT_NOT_NULL(s);
  ASSERT_MSG(strncmp(s, prefix, strlen(prefix)) == 0, "\"%s\" should start with \"%s\"", s, prefix);
}

/* env_setup, a fixture on a `redis-server --tls-port` (tls-auth-clients `auth`) whose pool
 * trusts the test CA, and a client handshake on `c` with it that must succeed. */
static tls_fix_t redis_handshake(tc_t *c, const char *auth) {
  env_setup();
  tls_fix_t f = tls_start(redis_tls(auth, NULL), CA_TRUSTED(), NULL);
  ASSERT_OK(tc_handshake(c, f.peer, f.port));
  return f;
}

/* ------------------------------------------------------------------------------------------
 * The tests.
 */

TEST(tls_redis_ping_pong) {
  tc_t c;
  tls_fix_t f = redis_handshake(&c, "no");
  ASSERT_STREQ(pp__tls_version(c.tls), "TLSv1.3");
  ASSERT(!pp__tls_resumed(c.tls));
  ASSERT(tc_ask(&c, PING, "+PONG\r\n"));
  ASSERT_STREQ(c.in, "+PONG\r\n");
  ASSERT_EQ(c.end, 0);
  pp_stats_t s = test_stats(f.pool);
  ASSERT_EQ(s.tls_full, 1);
  ASSERT_EQ(s.tls_resumed, 0);
  ASSERT_EQ(s.tls_failed, 0);
  ASSERT_NULL(pp_peer_tls_reason(f.peer));
  tc_close(&c, true);
  ASSERT_EQ(c.write_errors, 0);
  tls_end(&f);
}

/* A certificate the pool refuses, and how the refusal reads: its kind, and a reason that starts
 * with the kind's name and says what OpenSSL said (`detail`). */
typedef struct {
  size_t cert; /* offsetof(env_t, ...): the server's certificate */
  int failure;
  const char *prefix, *detail;
  bool exact; /* the reason is prefix and detail and nothing more */
} cert_failure_t;

static const cert_failure_t UNKNOWN_CA = {offsetof(env_t, unknown), PP__TLS_FAIL_UNKNOWN_CA,
                                          "unknown CA: ", "unable to get local issuer certificate",
                                          false};
/* A certificate for wrong.example from 127.0.0.1: the address is checked as an IP. */
static const cert_failure_t NAME_MISMATCH = {offsetof(env_t, wrong), PP__TLS_FAIL_NAME_MISMATCH,
                                             "name mismatch: ", "IP address mismatch", false};
static const cert_failure_t EXPIRED = {offsetof(env_t, expired), PP__TLS_FAIL_EXPIRED,
                                       "expired: ", "certificate has expired", true};

/* The handshake with a server showing `want->cert` fails with PP_ETLS and the reason, for the
 * conn and for its peer; the pool counts one failed handshake and no full one. */
static void check_cert_failure(const cert_failure_t *want) {
  env_setup();
  tls_fix_t f = tls_start(s_server((const char *)&env + want->cert, NULL), CA_TRUSTED(), NULL);
  tc_t c;
  ASSERT_ERR(tc_handshake(&c, f.peer, f.port), PP_ETLS);
  ASSERT_EQ(pp__tls_failure(c.tls), want->failure);
  assert_starts(pp__tls_reason(c.tls), want->prefix);
  ASSERT_CONTAINS(pp__tls_reason(c.tls), want->detail);
  char whole[256];
  snprintf(whole, sizeof whole, "%s%s", want->prefix, want->detail);
  if (want->exact) ASSERT_STREQ(pp__tls_reason(c.tls), whole);
  ASSERT_STREQ(pp_peer_tls_reason(f.peer), pp__tls_reason(c.tls));
  ASSERT_EQ(test_stats(f.pool).tls_failed, 1);
  ASSERT_EQ(test_stats(f.pool).tls_full, 0);
  tc_close(&c, true); /* no close_notify after a failure: nothing to send */
  tls_end(&f);
}

TEST(tls_unknown_ca_fails_with_reason) {
  check_cert_failure(&UNKNOWN_CA);
  ASSERT_STREQ(pp_err_name(PP_ETLS), "tls");
}

TEST(tls_name_mismatch_fails_with_reason) {
  check_cert_failure(&NAME_MISMATCH);
}

TEST(tls_expired_fails_with_reason) {
  check_cert_failure(&EXPIRED);
}

/* server_name given for the peer: checked as a host name (and sent as SNI). */
TEST(tls_server_name_checked_as_host_name) {
  env_setup();
  tls_fix_t f = tls_start(s_server(env.wrong, NULL), CA_TRUSTED(), NULL);
  pp_tls_options_t named = trusting_ca();
  named.server_name = "localhost";
  ASSERT_OK(pp_peer_set_tls(f.peer, &named, NULL));
  tc_t c;
  ASSERT_ERR(tc_handshake(&c, f.peer, f.port), PP_ETLS);
  ASSERT_EQ(pp__tls_failure(c.tls), PP__TLS_FAIL_NAME_MISMATCH);
  assert_starts(pp_peer_tls_reason(f.peer), "name mismatch: ");
  ASSERT_CONTAINS(pp_peer_tls_reason(f.peer), "hostname mismatch");
  tc_close(&c, false);
  tls_end(&f);
}

/* With no ca_file and no ca_path the system's store is used: our test CA is not in it. */
TEST(tls_system_store_by_default) {
  env_setup();
  int port = s_server(env.server, NULL);
  pp_tls_options_t t;
  pp_tls_options_init(&t);
  pp_pool_t *pool = tls_pool(&t);
  pp_peer_t *peer = peer_at(pool, port);
  tc_t c;
  ASSERT_ERR(tc_handshake(&c, peer, port), PP_ETLS);
  assert_starts(pp_peer_tls_reason(peer), "unknown CA: ");
  tc_close(&c, false);
  test_finish(pool);
  env_teardown();
}

/* verify = 0 accepts any certificate (here one by an unknown CA). */
TEST(tls_verify_off_accepts_any_certificate) {
  env_setup();
  tls_fix_t f = tls_start(s_server(env.unknown, NULL), CA_TRUSTED(t.verify = 0), NULL);
  tc_t c;
  ASSERT_OK(tc_handshake(&c, f.peer, f.port));
  tc_close(&c, true);
  tls_end(&f);
}

/* A peer's own server_name over the pool's settings: SNI carries it (the server answers
 * wrong.example with its second certificate only when asked for that name) and the
 * certificate is checked against it; the pool's ca_file still applies. */
TEST(tls_peer_server_name_over_pool_options) {
  env_setup();
  tls_fix_t f = tls_start(s_server(env.unknown, "-servername", "wrong.example", "-cert2", env.wrong,
                                   "-key2", env.server_key, NULL),
                          CA_TRUSTED(), NULL);
  pp_tls_options_t mine;
  pp_tls_options_init(&mine);
  mine.server_name = "wrong.example";
  ASSERT_OK(pp_peer_set_tls(f.peer, &mine, NULL));
  tc_t c;
  ASSERT_OK(tc_handshake(&c, f.peer, f.port));
  tc_close(&c, true);
  /* Dropping the peer's options: the pool's apply (IP check against a wrong.example cert:
   * no SNI is sent for an IP, so the server shows its default, unknown-CA certificate). */
  ASSERT_OK(pp_peer_set_tls(f.peer, NULL, NULL));
  ASSERT_ERR(tc_handshake(&c, f.peer, f.port), PP_ETLS);
  assert_starts(pp_peer_tls_reason(f.peer), "unknown CA: ");
  tc_close(&c, false);
  tls_end(&f);
}

/* min_version 1.3 against a server that speaks 1.2 at most. */
TEST(tls_min_version_fails_as_protocol) {
  env_setup();
  tls_fix_t f =
      tls_start(s_server(env.server, "-tls1_2", NULL), CA_TRUSTED(t.min_version = "1.3"), NULL);
  tc_t c;
  ASSERT_ERR(tc_handshake(&c, f.peer, f.port), PP_ETLS);
  ASSERT_EQ(pp__tls_failure(c.tls), PP__TLS_FAIL_PROTOCOL);
  assert_starts(pp_peer_tls_reason(f.peer), "protocol: ");
  tc_close(&c, false);
  /* The same server is fine with the default minimum (1.2). */
  pp_tls_options_t v12;
  pp_tls_options_init(&v12);
  v12.min_version = "1.2";
  ASSERT_OK(pp_peer_set_tls(f.peer, &v12, NULL));
  ASSERT_OK(tc_handshake(&c, f.peer, f.port));
  ASSERT_STREQ(pp__tls_version(c.tls), "TLSv1.2");
  tc_close(&c, true);
  tls_end(&f);
}

/* redis with tls-auth-clients yes, and no client certificate: in TLS 1.3 the client's side of
 * the handshake completes before the server judges its (missing) certificate, so the refusal
 * arrives as an alert on the first read. */
TEST(tls_client_cert_required_without_one) {
  tc_t c;
  tls_fix_t f = redis_handshake(&c, "yes");
  ASSERT(!tc_ask(&c, PING, "+PONG"));
  ASSERT_ERR(c.end, PP_ETLS);
  ASSERT_STREQ(pp_peer_tls_reason(f.peer),
               "other: the peer asked for a client certificate and none is configured "
               "(tls.cert_file): tlsv13 alert certificate required");
  ASSERT_EQ(test_stats(f.pool).tls_failed, 1);
  tc_close(&c, false);
  tls_end(&f);
}

/* The same over TLS 1.2, where the server refuses within the handshake. */
TEST(tls_client_cert_required_tls12) {
  env_setup();
  tls_fix_t f = tls_start(s_server(env.server, "-tls1_2", "-Verify", "1", "-CAfile", env.ca, NULL),
                          CA_TRUSTED(), NULL);
  tc_t c;
  ASSERT_ERR(tc_handshake(&c, f.peer, f.port), PP_ETLS);
  assert_starts(pp_peer_tls_reason(f.peer),
                "other: the peer asked for a client certificate and none is configured");
  tc_close(&c, false);
  tls_end(&f);
}

/* A client certificate given for the peer (its CA from the pool's options). */
TEST(tls_client_cert_required_with_one) {
  env_setup();
  tls_fix_t f = tls_start(redis_tls("yes", NULL), CA_TRUSTED(), NULL);
  pp_tls_options_t mine;
  pp_tls_options_init(&mine);
  mine.cert_file = env.client;
  mine.key_file = env.client_key;
  ASSERT_OK(pp_peer_set_tls(f.peer, &mine, NULL));
  tc_t c;
  ASSERT_OK(tc_handshake(&c, f.peer, f.port));
  ASSERT(tc_ask(&c, PING, "+PONG\r\n"));
  ASSERT_NULL(pp_peer_tls_reason(f.peer));
  tc_close(&c, true);
  tls_end(&f);
}

/* The second conn to a peer resumes the session of the first (a TLS 1.3 ticket that came after
 * the first handshake), and the pool counts one full and one resumed handshake. */
TEST(tls_second_conn_resumes) {
  env_setup();
  tls_fix_t f = tls_start(redis_tls("no", NULL), CA_TRUSTED(), NULL);
  tc_t a, b;
  ASSERT_OK(tc_handshake(&a, f.peer, f.port));
  ASSERT(tc_ask(&a, PING, "+PONG\r\n")); /* reads the tickets too */
  ASSERT(!pp__tls_resumed(a.tls));
  tc_close(&a, true);
  ASSERT_OK(tc_handshake(&b, f.peer, f.port));
  ASSERT(pp__tls_resumed(b.tls));
  ASSERT(tc_ask(&b, PING, "+PONG\r\n"));
  tc_close(&b, true);
  pp_stats_t s = test_stats(f.pool);
  ASSERT_EQ(s.tls_full, 1);
  ASSERT_EQ(s.tls_resumed, 1);
  /* Sessions are per peer: another peer's first conn is a full handshake. */
  int port2 = redis_tls("no", NULL);
  pp_peer_t *other = peer_at(f.pool, port2);
  ASSERT_OK(tc_handshake(&a, other, port2));
  ASSERT(!pp__tls_resumed(a.tls));
  tc_close(&a, true);
  ASSERT_EQ(test_stats(f.pool).tls_full, 2);
  tls_end(&f);
}

/* Sessions whose lifetime ended are not offered: redis gives its tickets a 1 s lifetime. */
TEST(tls_expired_sessions_are_dropped) {
  env_setup();
  tls_fix_t f =
      tls_start(redis_tls("no", "--tls-session-cache-timeout", "1", NULL), CA_TRUSTED(), NULL);
  tc_t a;
  ASSERT_OK(tc_handshake(&a, f.peer, f.port));
  ASSERT(tc_ask(&a, PING, "+PONG\r\n"));
  tc_close(&a, true);
  pp__tls_counts_t n;
  ASSERT_NOT_NULL(pp__tls_peer_cache(f.peer));
  pp__tls_cache_counts(pp__tls_peer_cache(f.peer), &n);
  ASSERT_GE(n.sessions, 1);
  test_run_for(2100);
  ASSERT_OK(tc_handshake(&a, f.peer, f.port));
  ASSERT(!pp__tls_resumed(a.tls));
  tc_close(&a, true);
  pp_stats_t s = test_stats(f.pool);
  ASSERT_EQ(s.tls_full, 2);
  ASSERT_EQ(s.tls_resumed, 0);
  tls_end(&f);
}

/* Closing sends close_notify: s_server logs the alert it got and ends the session cleanly
 * ("DONE"); a conn closed without it is an error to the server ("ERROR": an unexpected EOF,
 * or a reset when the close finds bytes unread). Each conn first reads the server's two
 * session tickets, so that its close is a FIN, not a reset that could overtake the alert. */
TEST(tls_close_sends_close_notify) {
  env_setup();
  int port = s_server(env.server, "-naccept", "2", NULL);
  proc_t *srv = s_server_proc();
  pp_tls_options_t t = trusting_ca();
  pp_pool_t *pool = tls_pool(&t);
  pp_peer_t *peer = peer_at(pool, port);
  pp__tls_counts_t n;
  tc_t c;
  ASSERT_OK(tc_handshake(&c, peer, port));
  RUN_UNTIL((pp__tls_cache_counts(pp__tls_peer_cache(peer), &n), n.sessions >= 2), 3000);
  tc_close(&c, true);
  wait_log(srv, "DONE", 3000);
  ASSERT_CONTAINS(log_text(srv), "<<< TLS 1.3, Alert [length 0002], warning close_notify");
  ASSERT(strstr(log_text(srv), "ERROR") == NULL);
  ASSERT_OK(tc_handshake(&c, peer, port));
  RUN_UNTIL((pp__tls_cache_counts(pp__tls_peer_cache(peer), &n), n.sessions >= 2),
            3000);     /* one used, one new */
  tc_close(&c, false); /* the control: no close_notify */
  wait_log(srv, "ERROR", 3000);
  const char *log = log_text(srv);
  ASSERT(strstr(strstr(log, "DONE") + 4, "DONE") == NULL);
  test_finish(pool);
  env_teardown();
}

TEST(tls_alpn_result) {
  env_setup();
  int port = s_server(env.server, "-alpn", "redis,h2", "-naccept", "2", NULL);
  const char *protos[] = {"h2", NULL};
  pp_tls_options_t t = trusting_ca();
  t.alpn = protos;
  pp_pool_t *pool = tls_pool(&t);
  pp_peer_t *peer = peer_at(pool, port);
  tc_t c;
  ASSERT_OK(tc_handshake(&c, peer, port));
  size_t len = 0;
  ASSERT_STREQ(pp__tls_alpn(c.tls, &len), "h2");
  ASSERT_EQ(len, 2);
  tc_close(&c, true);
  /* A peer that offers none gets none. */
  const char *none[] = {NULL};
  pp_tls_options_t mine;
  pp_tls_options_init(&mine);
  mine.alpn = none;
  ASSERT_OK(pp_peer_set_tls(peer, &mine, NULL));
  ASSERT_OK(tc_handshake(&c, peer, port));
  ASSERT_NULL(pp__tls_alpn(c.tls, &len));
  ASSERT_EQ(len, 0);
  tc_close(&c, true);
  test_finish(pool);
  env_teardown();
}

/* Once warm, a conn that writes and reads in a steady rhythm makes no allocation of the
 * layer's own (OpenSSL's are its business). */
TEST(tls_steady_state_allocates_nothing) {
  tc_t c;
  tls_fix_t f = redis_handshake(&c, "no");
  for (int i = 0; i < 10; i++)
    ASSERT(tc_ask(&c, PING, "+PONG\r\n"));
  uint64_t before = pp__tls_allocs;
  for (int i = 0; i < 200; i++)
    ASSERT(tc_ask(&c, PING, "+PONG\r\n"));
  ASSERT_EQ(pp__tls_allocs, before);
  tc_close(&c, true);
  tls_end(&f);
}

/* The state may be freed while its ciphertext is still queued in libuv: the chunks stay valid
 * until their callbacks hand them back (ASan watches), and the last one frees the rest. */
TEST(tls_free_with_writes_in_flight) {
  tc_t c;
  tls_fix_t f = redis_handshake(&c, "no");
  static char big[4 << 20];
  memset(big, 'x', sizeof big);
  uv_buf_t b[2] = {uv_buf_init(PING, 14), uv_buf_init(big, sizeof big)};
  ASSERT_OK(pp__tls_write(c.tls, b, 2));
  tc_flush(&c);
  ASSERT_GT(c.writes, 0);
  ASSERT_GT(uv_stream_get_write_queue_size((uv_stream_t *)&c.tcp), 0);
  tc_close(&c, true); /* frees the state first, then closes: the writes end cancelled */
  ASSERT_GT(c.wrote, 0);
  tls_end(&f);
}

/* ------------------------------------------------------------------------------------------
 * Options: checked before any file is read, files loaded when the pool (or peer) takes them.
 */
TEST(tls_options_checked) {
  pp_options_t o;
  pp_options_init(&o);
  ASSERT_NULL(o.tls);
  pp_tls_options_t t;
  pp_tls_options_init(&t);
  ASSERT_EQ(t.verify, -1);
  ASSERT_NULL(t.ca_file);
  o.tls = &t;
  const char *why = NULL;
  ASSERT_OK(pp_options_validate(&o, &why));
  t.min_version = "1.1";
  ASSERT_ERR(pp_options_validate(&o, &why), PP_EINVAL);
  ASSERT_STREQ(why, "tls.min_version must be \"1.2\" or \"1.3\"");
  t.min_version = "1.3";
  t.verify = 2;
  ASSERT_ERR(pp_options_validate(&o, &why), PP_EINVAL);
  ASSERT_STREQ(why, "tls.verify must be 1, 0 or -1 (the default)");
  t.verify = 1;
  t.key_file = "k.pem";
  ASSERT_ERR(pp_options_validate(&o, &why), PP_EINVAL);
  ASSERT_STREQ(why, "tls.key_file needs tls.cert_file");
  t.key_file = NULL;
  const char *bad_alpn[] = {"h2", "", NULL};
  t.alpn = bad_alpn;
  ASSERT_ERR(pp_options_validate(&o, &why), PP_EINVAL);
  ASSERT_STREQ(why, "tls.alpn entries must be protocol names of 1..255 bytes");
  t.alpn = NULL;
  t.server_name = "";
  ASSERT_ERR(pp_options_validate(&o, &why), PP_EINVAL);
  ASSERT_CONTAINS(why, "tls.server_name");
  t.server_name = NULL;
  t.ca_file = "/nonexistent/ca.pem";
  ASSERT_OK(pp_options_validate(&o, &why)); /* no file is read here */
  pp_pool_t *pool = NULL;
  ASSERT_ERR(pp_pool_new(test_loop(), &o, &pool, &why), PP_EINVAL);
  ASSERT_NULL(pool);
  ASSERT_CONTAINS(why, "tls.ca_file could not be loaded");
  /* The pool keeps its own copy: the caller's options may go at once. */
  char name[] = "localhost";
  t.ca_file = NULL;
  t.server_name = name;
  pool = test_pool(&o);
  name[0] = 'X';
  ASSERT_NOT_NULL(pp_pool_options(pool)->tls);
  ASSERT_PTR_NE(pp_pool_options(pool)->tls, &t);
  ASSERT_STREQ(pp_pool_options(pool)->tls->server_name, "localhost");
  ASSERT_STREQ(pp_pool_options(pool)->tls->min_version, "1.3");
  pp_peer_t *peer = test_peer(pool, "127.0.0.1:1");
  pp_tls_options_t mine;
  pp_tls_options_init(&mine);
  mine.cert_file = "/nonexistent/client.pem";
  ASSERT_ERR(pp_peer_set_tls(peer, &mine, &why), PP_EINVAL);
  ASSERT_CONTAINS(why, "tls.cert_file could not be loaded");
  mine.cert_file = NULL;
  mine.verify = 7;
  ASSERT_ERR(pp_peer_set_tls(peer, &mine, &why), PP_EINVAL);
  ASSERT_CONTAINS(why, "tls.verify");
  ASSERT_ERR(pp_peer_set_tls(NULL, &mine, &why), PP_EINVAL);
  test_finish(pool);
}

/* A key that does not belong to the certificate is refused when the options are taken. */
TEST(tls_key_must_match_cert) {
  env_setup();
  pp_tls_options_t t = trusting_ca();
  t.cert_file = env.client;
  t.key_file = env.server_key;
  pp_options_t o;
  test_options(&o);
  o.tls = &t;
  pp_pool_t *pool = NULL;
  const char *why = NULL;
  ASSERT_ERR(pp_pool_new(test_loop(), &o, &pool, &why), PP_EINVAL);
  ASSERT_STREQ(why, "tls.key_file does not match tls.cert_file");
  t.key_file = env.client_key;
  pool = test_pool(&o);
  test_finish(pool);
  env_teardown();
}

/* Peers of a pool without TLS speak plain TCP; a unix socket peer has no host name to check, so
 * with verification on it needs a server_name. */
TEST(tls_which_peers_speak_tls) {
  pp_pool_t *pool = test_pool(NULL);
  ASSERT_NULL(pp_pool_options(pool)->tls);
  pp_peer_t *plain = test_peer(pool, "127.0.0.1:1");
  pp__tls_t *tls = (pp__tls_t *)1;
  ASSERT_OK(pp__tls_conn_new(plain, &tls));
  ASSERT_NULL(tls);
  pp_peer_t *sock = test_peer(pool, "./x.sock");
  pp_tls_options_t mine;
  pp_tls_options_init(&mine);
  mine.ca_path = "/etc/ssl/certs";
  ASSERT_OK(pp_peer_set_tls(sock, &mine, NULL));
  ASSERT_ERR(pp__tls_conn_new(sock, &tls), PP_ETLS);
  ASSERT_NULL(tls);
  assert_starts(pp_peer_tls_reason(sock), "other: no host name to verify");
  ASSERT_EQ(test_stats(pool).tls_failed, 1);
  mine.server_name = "redis.internal";
  ASSERT_OK(pp_peer_set_tls(sock, &mine, NULL));
  ASSERT_OK(pp__tls_conn_new(sock, &tls));
  ASSERT_NOT_NULL(tls);
  pp__tls_free(tls);
  /* Dropping the peer's options in a pool without TLS: plain again. */
  ASSERT_OK(pp_peer_set_tls(sock, NULL, NULL));
  ASSERT_OK(pp__tls_conn_new(sock, &tls));
  ASSERT_NULL(tls);
  test_finish(pool);
}

/* ------------------------------------------------------------------------------------------
 * Through the pool: conns speak TLS (conn.c's TLS section), lent only after the handshake.
 */
/* Send `request` on a leased conn and read until `reply` arrived (or the conn ended). Returns
 * the reader's end status (0 while open). */
static ssize_t lease_ask(pp_lease_t *l, const char *request, const char *reply, test_reader_t *r) {
  memset(r, 0, sizeof *r);
  ASSERT_OK(pp_conn_read_start(l->conn, test_reader_cb, r));
  ASSERT_OK(test_write(l->conn, request, strlen(request)));
  uint64_t end = test_now_ms() + 5000;
  while ((r->buf == NULL || r->len < strlen(reply) ||
          memmem(r->buf, r->len, reply, strlen(reply)) == NULL) &&
         r->ended == 0 && test_now_ms() < end)
    test_tick();
  if (r->ended == 0) pp_conn_read_stop(l->conn);
  return r->ended ? r->end_status : 0;
}

static bool got(const test_reader_t *r, const char *text) {
  return r->buf && memmem(r->buf, r->len, text, strlen(text)) != NULL;
}

/* Start reading `l` into `r` (from empty), then send `n` buffers with pp_conn_try_write;
 * returns what that returned. */
static int lease_try_send(pp_lease_t *l, const uv_buf_t *bufs, unsigned int n, test_reader_t *r) {
  memset(r, 0, sizeof *r);
  ASSERT_OK(pp_conn_read_start(l->conn, test_reader_cb, r));
  return pp_conn_try_write(l->conn, bufs, n);
}

/* env_setup, a pool (test options) on a `redis-server --tls-port` with tls-auth-clients `auth`,
 * and a lease `l` (recorded in `rec`) granted on its peer. */
static tls_fix_t redis_pool_lease(pp_lease_t *l, test_rec_t *rec, const char *auth) {
  env_setup();
  tls_fix_t f = tls_start(redis_tls(auth, NULL), CA_TRUSTED(), TEST_OPTS());
  ASSERT_OK(test_acquire_wait(f.pool, l, rec, f.peer, NULL));
  return f;
}

/* acquire -> PING/+PONG over redis --tls-port; a second conn to the peer resumes the first's
 * session (a TLS 1.3 ticket read with the first reply), and stats count both handshakes. */
TEST(tls_pool_redis_ping_and_resume) {
  pp_lease_t a, b;
  test_rec_t ra, rb;
  tls_fix_t f = redis_pool_lease(&a, &ra, "no");
  test_reader_t r;
  ASSERT_NULL(pp_conn_tls_alpn(a.conn)); /* none offered */
  ASSERT_EQ(lease_ask(&a, PING, "+PONG\r\n", &r), 0);
  ASSERT(got(&r, "+PONG\r\n"));
  ASSERT_EQ(r.len, 7); /* plaintext only: the tickets decrypted to nothing */
  test_reader_free(&r);
  pp_stats_t s = test_stats(f.pool);
  ASSERT_EQ(s.tls_full, 1);
  ASSERT_EQ(s.tls_resumed, 0);
  /* a is held: b gets a new conn, which resumes. */
  ASSERT_OK(test_acquire_wait(f.pool, &b, &rb, f.peer, NULL));
  ASSERT_PTR_NE(a.conn, b.conn);
  ASSERT_EQ(lease_ask(&b, PING, "+PONG\r\n", &r), 0);
  test_reader_free(&r);
  s = test_stats(f.pool);
  ASSERT_EQ(s.tls_full, 1);
  ASSERT_EQ(s.tls_resumed, 1);
  ASSERT_EQ(s.tls_failed, 0);
  /* bytes_in counts the wire (ciphertext), bigger than the 14 bytes of plaintext. */
  pp_conn_info_t info;
  pp_conn_info(b.conn, &info);
  ASSERT_GT(info.bytes_in, 7);
  ASSERT_OK(pp_release(&a, 0));
  ASSERT_OK(pp_release(&b, 0));
  /* Idle TLS conns stay clean while tickets arrive: both are lent again. */
  test_run_for(100);
  ASSERT_EQ(test_stats(f.pool).closed[PP_CLOSE_REMOTE], 0);
  ASSERT_OK(test_acquire_wait(f.pool, &a, &ra, f.peer, NULL));
  ASSERT_EQ(lease_ask(&a, PING, "+PONG\r\n", &r), 0);
  test_reader_free(&r);
  ASSERT_OK(pp_release(&a, 0));
  ASSERT_EQ(test_stats(f.pool).connects_ok, 2);
  tls_end(&f);
}

/* Wrong name: the acquire answers PP_ETLS promptly (no retry), the lease says why, the peer
 * backs off and later acquires fail fast with the TLS cause. */
TEST(tls_pool_wrong_name_answers_tls) {
  env_setup();
  tls_fix_t f = tls_start(s_server(env.wrong, NULL), CA_TRUSTED(), TEST_OPTS(o.retries = 3));
  pp_lease_t l;
  test_rec_t r;
  uint64_t t0 = test_now_ms();
  ASSERT_ERR(test_acquire_wait(f.pool, &l, &r, f.peer, NULL), PP_ETLS);
  ASSERT_LT(test_now_ms() - t0, 1500);
  ASSERT_EQ(test_peer_info(f.peer).attempts, 1);
  assert_starts(pp_peer_tls_reason(f.peer), "name mismatch: ");
  char why[512];
  ASSERT_GT(pp_lease_describe(&l, why, sizeof why), 0);
  ASSERT_CONTAINS(why, "TLS with 127.0.0.1:");
  ASSERT_CONTAINS(why, "name mismatch");
  ASSERT_EQ(test_stats(f.pool).tls_failed, 1);
  ASSERT_EQ(test_stats(f.pool).connects_ok, 0);
  memset(&l, 0, sizeof l);
  ASSERT_ERR(pp_acquire(f.pool, &l, f.peer, NULL, test_acquire_cb), PP_ECANNOTCONNECT);
  ASSERT_ERR(l.cause, PP_ETLS);
  tls_end(&f);
}

/* A peer's own server_name over the pool's options: the wrong.example certificate passes. */
TEST(tls_pool_peer_server_name) {
  env_setup();
  tls_fix_t f = tls_start(s_server(env.wrong, NULL), CA_TRUSTED(), TEST_OPTS());
  pp_tls_options_t mine;
  pp_tls_options_init(&mine);
  mine.server_name = "wrong.example";
  ASSERT_OK(pp_peer_set_tls(f.peer, &mine, NULL));
  pp_lease_t l;
  test_rec_t r;
  ASSERT_OK(test_acquire_wait(f.pool, &l, &r, f.peer, NULL));
  ASSERT_OK(pp_release(&l, 0));
  ASSERT_EQ(test_stats(f.pool).tls_full, 1);
  tls_end(&f);
}

/* The late-reply rule judges plaintext: a reply that arrives on an idle TLS conn closes it
 * ("remote"); with keep_idle_bytes it waits, decrypted, for the next holder. */
static void late_wrote(pp_write_t *w, int status) {
  (void)w;
  ASSERT_OK(status);
}

static void late_reply(int keep) {
  env_setup();
  int port = redis_tls("no", NULL);
  pp_tls_options_t t = trusting_ca();
  pp_options_t o;
  test_options(&o);
  o.keep_idle_bytes = keep;
  pp_pool_t *pool = tls_pool_with(&t, &o);
  pp_peer_t *peer = peer_at(pool, port);
  pp_lease_t l;
  test_rec_t rec;
  test_reader_t r;
  ASSERT_OK(test_acquire_wait(pool, &l, &rec, peer, NULL));
  ASSERT_EQ(lease_ask(&l, PING, "+PONG\r\n", &r), 0); /* the tickets come first */
  test_reader_free(&r);
  pp_conn_t *conn = l.conn;
  static pp_write_t w;
  uv_buf_t b = uv_buf_init(PING, 14);
  ASSERT_OK(pp_conn_write(&w, conn, &b, 1, late_wrote));
  ASSERT_OK(pp_release(&l, 0)); /* before the reply, before the loop runs again */
  test_run_for(200);
  if (!keep) {
    ASSERT_EQ(test_stats(pool).closed[PP_CLOSE_REMOTE], 1);
  } else {
    ASSERT_EQ(test_stats(pool).closed[PP_CLOSE_REMOTE], 0);
    ASSERT_OK(test_acquire_wait(pool, &l, &rec, peer, NULL));
    ASSERT_PTR_EQ(l.conn, conn);
    memset(&r, 0, sizeof r);
    ASSERT_OK(pp_conn_read_start(l.conn, test_reader_cb, &r));
    RUN_UNTIL(r.len >= 7, 2000);
    ASSERT_EQ(r.len, 7);
    ASSERT(got(&r, "+PONG\r\n"));
    pp_conn_read_stop(l.conn);
    test_reader_free(&r);
    ASSERT_OK(pp_release(&l, 0));
  }
  test_finish(pool);
  env_teardown();
}

TEST(tls_pool_late_reply_closes_idle_conn) {
  late_reply(0);
}

TEST(tls_pool_keep_idle_bytes_after_decryption) {
  late_reply(1);
}

/* pp_conn_try_write on a TLS conn takes every byte; big writes go whole through the layer. */
TEST(tls_pool_try_write_and_big_write) {
  pp_lease_t l;
  test_rec_t rec;
  tls_fix_t f = redis_pool_lease(&l, &rec, "no");
  test_reader_t r;
  uv_buf_t b[2] = {uv_buf_init("*1\r\n$4\r\n", 8), uv_buf_init("PING\r\n", 6)};
  ASSERT_EQ(lease_try_send(&l, b, 2, &r), 14);
  RUN_UNTIL(got(&r, "+PONG\r\n"), 3000);
  pp_conn_read_stop(l.conn);
  test_reader_free(&r);
  /* SET k <1 MiB> then GET k: megabytes each way through the layer. */
  static char cmd[(1 << 20) + 64];
  int hdr = snprintf(cmd, sizeof cmd, "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\n", 1 << 20);
  memset(cmd + hdr, 'v', 1 << 20);
  memcpy(cmd + hdr + (1 << 20), "\r\n", 2);
  cmd[hdr + (1 << 20) + 2] = '\0';
  ASSERT_EQ(lease_ask(&l, cmd, "+OK\r\n", &r), 0);
  test_reader_free(&r);
  ASSERT_EQ(lease_ask(&l, "*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", "vvvv\r\n", &r), 0);
  ASSERT_EQ(r.len, (size_t)(1 << 20) + 2 + 10); /* "$1048576\r\n" + value + "\r\n" */
  test_reader_free(&r);
  ASSERT_OK(pp_release(&l, 0));
  tls_end(&f);
}

/* TLS 1.3 and a client certificate required: the refusal arrives after the handshake, on the
 * first read, as PP_ETLS with the reason; with a certificate it works. */
TEST(tls_pool_client_cert_required) {
  pp_lease_t l;
  test_rec_t rec;
  tls_fix_t f = redis_pool_lease(&l, &rec, "yes");
  /* The alert, unless the server's reset to our request overtakes it (then the kernel drops
   * the alert unread): either way the conn ends and the peer is blamed. */
  test_reader_t r;
  uv_buf_t b = uv_buf_init(PING, 14);
  lease_try_send(&l, &b, 1, &r);
  RUN_UNTIL(r.ended, 3000);
  ASSERT_MSG(r.end_status == PP_ETLS || r.end_status == UV_ECONNRESET, "ended with %s",
             pp_err_name((int)r.end_status));
  if (r.end_status == PP_ETLS) {
    ASSERT_CONTAINS(pp_peer_tls_reason(f.peer), "asked for a client certificate");
    ASSERT_EQ(test_stats(f.pool).tls_failed, 1);
  }
  test_reader_free(&r);
  pp_release(&l, (int)r.end_status);
  pp_tls_options_t mine;
  pp_tls_options_init(&mine);
  mine.cert_file = env.client;
  mine.key_file = env.client_key;
  ASSERT_OK(pp_peer_set_tls(f.peer, &mine, NULL));
  RUN_UNTIL(!pp__ahead(f.pool, (uint64_t)test_peer_info(f.peer).retry_at), 5000);
  ASSERT_OK(test_acquire_wait(f.pool, &l, &rec, f.peer, NULL));
  ASSERT_EQ(lease_ask(&l, PING, "+PONG\r\n", &r), 0);
  test_reader_free(&r);
  ASSERT_OK(pp_release(&l, 0));
  tls_end(&f);
}

/* ALPN through the pool, and close_notify when the pool closes the conn. */
TEST(tls_pool_alpn_and_close_notify) {
  env_setup();
  int port = s_server(env.server, "-alpn", "redis,h2", "-naccept", "1", NULL);
  proc_t *srv = s_server_proc();
  const char *protos[] = {"h2", NULL};
  pp_tls_options_t t = trusting_ca();
  t.alpn = protos;
  pp_options_t o;
  test_options(&o);
  pp_pool_t *pool = tls_pool_with(&t, &o);
  pp_peer_t *peer = peer_at(pool, port);
  pp_lease_t l;
  test_rec_t rec;
  ASSERT_OK(test_acquire_wait(pool, &l, &rec, peer, NULL));
  ASSERT_STREQ(pp_conn_tls_alpn(l.conn), "h2");
  pp__tls_counts_t n;
  RUN_UNTIL((pp__tls_cache_counts(pp__tls_peer_cache(peer), &n), n.sessions >= 2), 3000);
  ASSERT_OK(pp_release(&l, PP_ENOREUSE)); /* closes it */
  wait_log(srv, "DONE", 3000);
  ASSERT_CONTAINS(log_text(srv), "warning close_notify");
  ASSERT(strstr(log_text(srv), "ERROR") == NULL);
  test_finish(pool);
  env_teardown();
}

/* The handshake hook runs after the TLS handshake, and speaks plaintext through the layer. */
static void hs_pong(pp_conn_t *conn, ssize_t nread, const char *buf, void *arg) {
  int *state = arg;
  if (nread > 0 && memmem(buf, (size_t)nread, "+PONG", 5)) {
    pp_conn_read_stop(conn);
    *state = 2;
    ASSERT_OK(pp_conn_handshake_done(conn, 0));
  }
}
static void hs_wrote(pp_write_t *w, int status) {
  ASSERT_OK(status);
  free(w);
}
static void hs_ping_hook(void *data, pp_conn_t *conn) {
  int *state = data;
  *state = 1;
  pp_write_t *w = malloc(sizeof *w);
  uv_buf_t b = uv_buf_init(PING, 14);
  ASSERT_OK(pp_conn_read_start(conn, hs_pong, state));
  ASSERT_OK(pp_conn_write(w, conn, &b, 1, hs_wrote));
}

TEST(tls_pool_handshake_hook_after_tls) {
  env_setup();
  int port = redis_tls("no", NULL);
  pp_tls_options_t t = trusting_ca();
  pp_options_t o;
  test_options(&o);
  pp_pool_t *pool = tls_pool_with(&t, &o);
  static int state;
  pp_policy_t pol;
  memset(&pol, 0, sizeof pol);
  pol.data = &state;
  pol.handshake = hs_ping_hook;
  pp_pool_set_policy(pool, &pol);
  pp_peer_t *peer = peer_at(pool, port);
  pp_lease_t l;
  test_rec_t rec;
  ASSERT_OK(test_acquire_wait(pool, &l, &rec, peer, NULL));
  ASSERT_EQ(state, 2);
  ASSERT_EQ(test_stats(pool).tls_full, 1);
  ASSERT_OK(pp_release(&l, 0));
  test_finish(pool);
  env_teardown();
}

/* A listener in the test's loop: `hangup` closes each conn at once, else it accepts and never
 * answers (the ClientHello goes unread). */
typedef struct {
  uv_tcp_t srv;
  uv_tcp_t conns[8];
  int n;
  bool hangup;
} mute_t;

static void mute_closed(uv_handle_t *h) {
  (void)h;
}

static void mute_conn(uv_stream_t *s, int status) {
  mute_t *m = s->data;
  ASSERT_OK(status);
  ASSERT_LT(m->n, 8);
  uv_tcp_t *c = &m->conns[m->n++];
  ASSERT_OK(uv_tcp_init(test_loop(), c));
  ASSERT_OK(uv_accept(s, (uv_stream_t *)c));
  if (m->hangup) uv_close((uv_handle_t *)c, mute_closed);
}

static int mute_start(mute_t *m, bool hangup) {
  memset(m, 0, sizeof *m);
  m->hangup = hangup;
  ASSERT_OK(uv_tcp_init(test_loop(), &m->srv));
  m->srv.data = m;
  struct sockaddr_in sa;
  uv_ip4_addr("127.0.0.1", 0, &sa);
  ASSERT_OK(uv_tcp_bind(&m->srv, (const struct sockaddr *)&sa, 0));
  ASSERT_OK(uv_listen((uv_stream_t *)&m->srv, 8, mute_conn));
  int len = sizeof sa;
  ASSERT_OK(uv_tcp_getsockname(&m->srv, (struct sockaddr *)&sa, &len));
  return ntohs(sa.sin_port);
}

static void mute_stop(mute_t *m) {
  for (int i = 0; i < m->n; i++)
    if (!uv_is_closing((uv_handle_t *)&m->conns[i]))
      uv_close((uv_handle_t *)&m->conns[i], mute_closed);
  uv_close((uv_handle_t *)&m->srv, mute_closed);
  test_run_nowait();
}

/* A server that accepts and never answers: the TLS handshake times out within
 * handshake_timeout; one that hangs up at once fails as PP_ETLS ("protocol", unexpected EOF). */
TEST(tls_pool_handshake_timeout_and_eof) {
  static mute_t mute, hangup;
  int port = mute_start(&mute, false);
  int port2 = mute_start(&hangup, true);
  pp_tls_options_t t;
  pp_tls_options_init(&t);
  t.verify = 0;
  pp_options_t o;
  test_options(&o);
  o.tls = &t;
  o.handshake_timeout = 300;
  pp_pool_t *pool = test_pool(&o);
  pp_peer_t *peer = peer_at(pool, port);
  pp_lease_t l;
  test_rec_t rec;
  uint64_t t0 = test_now_ms();
  ASSERT_ERR(test_acquire_wait(pool, &l, &rec, peer, NULL), PP_ECANNOTCONNECT);
  ASSERT_ERR(test_peer_info(peer).last_error, PP_ETIMEDOUT);
  ASSERT_GE(test_now_ms() - t0, 250);
  ASSERT_LT(test_now_ms() - t0, 1500);
  pp_peer_t *peer2 = peer_at(pool, port2);
  ASSERT_ERR(test_acquire_wait(pool, &l, &rec, peer2, NULL), PP_ETLS);
  assert_starts(pp_peer_tls_reason(peer2), "protocol: ");
  ASSERT_CONTAINS(pp_peer_tls_reason(peer2), "eof");
  mute_stop(&mute);
  mute_stop(&hangup);
  test_finish(pool);
}

/* A burst of new conns to one peer resumes in full: the peer keeps as many sessions as it may
 * have conns dialling at once (max_per_peer, at least 8), and TLS 1.3 tickets are used once. */
TEST(tls_pool_burst_of_new_conns_resumes) {
  env_setup();
  tls_fix_t f = tls_start(redis_tls("no", NULL), CA_TRUSTED(), TEST_OPTS(o.max_per_peer = 16));
  enum { N = 16 };
  static pp_lease_t l[N];
  static test_rec_t rec[N];
  test_reader_t r;
  for (int round = 0; round < 2; round++) {
    test_acquire_start_n(f.pool, f.peer, l, rec, N);
    for (int i = 0; i < N; i++)
      test_wait_ok(&rec[i]);
    for (int i = 0; i < N; i++) { /* each reply comes after the conn's tickets */
      ASSERT_EQ(lease_ask(&l[i], PING, "+PONG\r\n", &r), 0);
      test_reader_free(&r);
    }
    for (int i = 0; i < N; i++)
      ASSERT_OK(pp_release(&l[i], PP_ENOREUSE));
  }
  pp_stats_t s = test_stats(f.pool);
  ASSERT_EQ(s.tls_full, N);    /* the first burst: no session yet */
  ASSERT_EQ(s.tls_resumed, N); /* the second: every conn resumed */
  pp__tls_counts_t n;
  pp__tls_cache_counts(pp__tls_peer_cache(f.peer), &n);
  ASSERT_GE(n.sessions, N - 1);
  tls_end(&f);
}
