/* `peerpool attach PATH`: the client of a host's --repl-socket. On a terminal it edits lines
 * locally (readline when built with it: history, completion asked of the host) and shows the
 * host's prompts; on a pipe it sends stdin's lines, prints the results, and exits 1 if a line
 * failed. The protocol is described in repl.lua (socket_session). */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "host.h"
#include "term.h"

typedef struct {
  char kind;
  char *payload;
  size_t len;
} frame_t;

static int sock = -1;
static int interactive;
static int bye_errors = -1; /* from the host's bye frame; -1: none came */
static int prompted;        /* a prompt came: the terminal's input is taken from now on */
static volatile sig_atomic_t got_sigint, got_sigwinch;
/* bytes from the host not yet parsed */
static char *rbuf;
static size_t rlen, rcap;
/* frames put aside while waiting for completions */
static frame_t *deferred;
static size_t ndeferred;
/* The start of what the host sent outside frames, shown if it closes without a frame: a
 * refusal (too many sessions) comes before the host has read our hello. */
static char unframed[512];
static size_t nunframed;
static int framed; /* a frame came */

static int send_all(const char *s, size_t n) {
  while (n > 0) {
    ssize_t w = send(sock, s, n, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    s += w;
    n -= (size_t)w;
  }
  return 0;
}

/* Take one frame off rbuf: 1 and *f (payload malloc'd), 0 when incomplete. Bytes before a
 * frame's start (a plain greeting sent before our hello was read) are skipped. */
/* The largest frame a host sends (its sessions drop output past 1 MiB): a longer length is no
 * frame, and the client never buffers for it. */
#define ATTACH_FRAME_MAX ((size_t)64 << 20)

static int next_frame(frame_t *f) {
  /* One pass over the buffer, compacted once at the end: a host that sends a long run of
   * bogus markers costs linear time, not a memmove (or a recursion) per marker. */
  size_t off = 0;
  int found = 0;
  for (;;) {
    size_t i = off;
    while (i < rlen && rbuf[i] != '\1')
      i++;
    if (i > off && !framed) {
      size_t room = sizeof(unframed) - 1 - nunframed, n = i - off < room ? i - off : room;
      memcpy(unframed + nunframed, rbuf + off, n);
      nunframed += n;
    }
    off = i;
    if (rlen - off < 4) break;
    size_t p = off + 2, len = 0;
    int too_big = 0;
    while (p < rlen && rbuf[p] >= '0' && rbuf[p] <= '9' && !too_big) {
      len = len * 10 + (size_t)(rbuf[p++] - '0');
      too_big = len > ATTACH_FRAME_MAX;
    }
    if (!too_big && p >= rlen) break; /* the header is not complete yet */
    if (too_big || rbuf[p] != ':') {  /* not a frame: skip the marker */
      off++;
      continue;
    }
    if (rlen - p - 1 < len) break; /* the payload is not complete yet */
    framed = 1;
    f->kind = rbuf[off + 1];
    f->len = len;
    f->payload = malloc(len + 1);
    if (f->payload == NULL) break;
    memcpy(f->payload, rbuf + p + 1, len);
    f->payload[len] = '\0';
    off = p + 1 + len;
    found = 1;
    break;
  }
  memmove(rbuf, rbuf + off, rlen - off);
  rlen -= off;
  return found;
}

/* Read what the host sent into rbuf: 1 read, 0 nothing now, -1 closed. */
static int read_host(void) {
  if (rcap - rlen < 4096) {
    size_t cap = rcap ? rcap * 2 : 16384;
    char *b = realloc(rbuf, cap);
    if (b == NULL) return -1;
    rbuf = b;
    rcap = cap;
  }
  ssize_t n = recv(sock, rbuf + rlen, rcap - rlen, 0);
  if (n < 0) return errno == EINTR || errno == EAGAIN ? 0 : -1;
  if (n == 0) return -1;
  rlen += (size_t)n;
  return 1;
}

static void out(const char *s, size_t n, int to_stderr) {
  if (interactive) {
    term_write(s, n, to_stderr);
  } else {
    FILE *f = to_stderr ? stderr : stdout;
    fwrite(s, 1, n, f);
    fflush(f);
  }
}

static void dispatch(frame_t *f) {
  switch (f->kind) {
    case 'o':
      out(f->payload, f->len, 0);
      break;
    case 'e':
      out(f->payload, f->len, 1);
      break;
    case 'p':
      if (interactive) term_prompt(f->len ? f->payload : NULL);
      prompted |= f->len > 0;
      break;
    case 'w':
      if (interactive) term_watch(f->payload[0] == '1');
      break;
    case 'b':
      bye_errors = atoi(f->payload);
      break;
    default:
      break; /* 'c' outside a completion, or a kind this version does not know */
  }
  free(f->payload);
}

/* ---- the terminal ------------------------------------------------------------------------ */

static void on_line(void *arg, const char *line) {
  if (line == NULL) {
    shutdown(sock, SHUT_WR); /* the host ends the session when its lines are done */
    return;
  }
  term_history_add(line);
  term_prompt(NULL); /* until the host says the line is done */
  if (send_all(line, strlen(line)) != 0 || send_all("\n", 1) != 0) shutdown(sock, SHUT_WR);
}

static void on_key(void *arg) {
  send_all("\1key\n", 5);
}

/* Ask the host for completions and wait for them (other frames wait their turn). */
static char **on_complete(void *arg, const char *word) {
  if (strchr(word, '\n')) return NULL;
  if (send_all("\1complete ", 10) != 0 || send_all(word, strlen(word)) != 0 ||
      send_all("\n", 1) != 0)
    return NULL;
  for (;;) {
    frame_t f;
    while (next_frame(&f)) {
      if (f.kind != 'c') {
        frame_t *d = realloc(deferred, (ndeferred + 1) * sizeof(*d));
        if (d == NULL) {
          free(f.payload);
          continue;
        }
        deferred = d;
        deferred[ndeferred++] = f;
        continue;
      }
      size_t n = 0;
      for (size_t i = 0; i < f.len; i++)
        n += f.payload[i] == '\n';
      char **list = calloc(n + 2, sizeof(*list));
      size_t k = 0;
      char *save = NULL;
      for (char *tok = strtok_r(f.payload, "\n", &save); list && tok;
           tok = strtok_r(NULL, "\n", &save))
        list[k++] = strdup(tok);
      free(f.payload);
      return list;
    }
    struct pollfd p = {sock, POLLIN, 0};
    int r = poll(&p, 1, 5000);
    if (r <= 0) return NULL; /* the host did not answer: no completion */
    if (read_host() < 0) return NULL;
  }
}

static void on_signal(int sig) {
  if (sig == SIGINT) got_sigint = 1;
  if (sig == SIGWINCH) got_sigwinch = 1;
}

/* The host closed the session without its bye: say why if it said so outside frames (it
 * refuses a client over its session limit before reading the hello), else just that. */
static int host_closed(void) {
  frame_t f;
  while (next_frame(&f)) /* moves any text before a frame into unframed */
    dispatch(&f);
  if (rlen > 0 && !framed) { /* text with no frame after it */
    size_t n = rlen < sizeof(unframed) - 1 - nunframed ? rlen : sizeof(unframed) - 1 - nunframed;
    memcpy(unframed + nunframed, rbuf, n);
    nunframed += n;
  }
  while (nunframed > 0 && (unframed[nunframed - 1] == '\n' || unframed[nunframed - 1] == '\r'))
    nunframed--;
  if (!framed && nunframed > 0)
    fprintf(stderr, "peerpool attach: %.*s\n", (int)nunframed, unframed);
  else
    fprintf(stderr, "peerpool attach: the host closed the session\n");
  return 1;
}

/* ---- main -------------------------------------------------------------------------------- */

int host_attach(const char *path) {
  struct sockaddr_un sa;
  if (strlen(path) >= sizeof(sa.sun_path)) {
    fprintf(stderr, "peerpool attach: %s: path too long\n", path);
    return 2;
  }
  sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  memset(&sa, 0, sizeof(sa));
  sa.sun_family = AF_UNIX;
  memcpy(sa.sun_path, path, strlen(path) + 1);
  if (sock < 0 || connect(sock, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
    fprintf(stderr, "peerpool attach: cannot connect to %s: %s\n", path, strerror(errno));
    return 2;
  }
  interactive = isatty(0) && isatty(1);
  int keys = 0;
  if (interactive) {
    term_cbs_t cbs = {on_line, on_key, on_complete, NULL};
    keys = term_open(&cbs, host_history_path(), 1); /* readline: single keys reach us */
  }
  /* tty: a terminal that reports single keys; line: one that sends whole lines; pipe */
  const char *hello = !interactive ? "\1hello 1 pipe\n"
                      : keys       ? "\1hello 1 tty\n"
                                   : "\1hello 1 line\n";
  if (send_all(hello, strlen(hello)) != 0) {
    int err = errno;
    if (interactive) term_close();
    if (err == EPIPE || err == ECONNRESET) { /* closed on us: read what it said first */
      while (read_host() > 0) {
      }
      return host_closed();
    }
    fprintf(stderr, "peerpool attach: %s: %s\n", path, strerror(err));
    return 2;
  }
  if (interactive) {
    struct sigaction act;
    memset(&act, 0, sizeof(act));
    act.sa_handler = on_signal; /* no SA_RESTART: poll() returns and the loop sees the flag */
    sigaction(SIGINT, &act, NULL);
    sigaction(SIGWINCH, &act, NULL);
  }

  int stdin_open = 1, host_open = 1;
  char ibuf[8192];
  while (host_open) {
    if (got_sigint) {
      got_sigint = 0;
      term_cancel_line();
      send_all("\1interrupt\n", 11);
    }
    if (got_sigwinch) {
      got_sigwinch = 0;
      term_resize();
    }
    for (size_t i = 0; i < ndeferred; i++)
      dispatch(&deferred[i]);
    ndeferred = 0;
    int want_stdin = stdin_open && (prompted || !interactive);
    struct pollfd p[2] = {{sock, POLLIN, 0}, {want_stdin ? 0 : -1, POLLIN, 0}};
    int r = poll(p, 2, -1);
    if (r < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (p[0].revents) {
      if (read_host() < 0) host_open = 0;
      frame_t f;
      while (next_frame(&f))
        dispatch(&f);
    }
    if (want_stdin && p[1].revents) {
      if (interactive) {
        if (term_input_ready() < 0) stdin_open = 0;
      } else {
        ssize_t n = read(0, ibuf, sizeof(ibuf));
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (n <= 0) {
          shutdown(sock, SHUT_WR);
          stdin_open = 0;
        } else if (send_all(ibuf, (size_t)n) != 0) {
          stdin_open = 0;
        }
      }
    }
  }
  if (interactive) term_close();
  close(sock);
  int code;
  if (bye_errors >= 0)
    code = bye_errors > 0 && !interactive ? 1 : 0;
  else if (interactive && !stdin_open)
    code = 0; /* we ended it (Ctrl-D) and the host let go */
  else
    code = host_closed();
  free(rbuf);
  free(deferred);
  return code;
}
