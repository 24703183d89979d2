/*
 * What the bench programs (bench_*.c, server.c, ping/, pipeline/) do alike: name themselves
 * in their messages and die with one, end a hang with an alarm, raise the open-file limit,
 * read a monotonic clock and read their "--name value" options. Header-only (static inline):
 * each program is one .c file and uses what it needs.
 */
#ifndef BENCH_UTIL_H
#define BENCH_UTIL_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

/* The program's name: the first word of every message (bench_start sets it). */
static const char *bench_prog = "bench";

/* Print "PROG: message" on stderr and exit(1). */
__attribute__((format(printf, 1, 2), noreturn)) static inline void bench_die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "%s: ", bench_prog);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(1);
}

static inline void bench_on_alarm(int sig) {
  static const char msg[] = ": took too long (alarm); giving up\n";
  ssize_t w = write(2, bench_prog, strlen(bench_prog));
  w = write(2, msg, sizeof msg - 1);
  (void)w;
  (void)sig;
  _exit(3);
}

/* Name the program (`prog` must outlive it) and, when alarm_s > 0, end it with exit code 3
 * after alarm_s seconds: a bench that hangs fails instead of holding up the run. */
static inline void bench_start(const char *prog, unsigned alarm_s) {
  bench_prog = prog;
  if (alarm_s > 0) {
    signal(SIGALRM, bench_on_alarm);
    alarm(alarm_s);
  }
}

/* Raise the soft open-file limit to the hard one (benches with many conns); a failure is
 * reported and the run goes on with the limit it has. */
static inline void bench_raise_nofile(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
      fprintf(stderr, "%s: setrlimit(RLIMIT_NOFILE): %s\n", bench_prog, strerror(errno));
  }
}

/* CLOCK_MONOTONIC in ns. */
static inline uint64_t bench_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* One "--name value" option: `value` points at a const char * ('s'), an int ('i'), a long
 * ('l') or a double ('d'), which keeps its default when the option is not given. */
typedef struct {
  const char *name; /* with its dashes: "--calls" */
  char type;
  void *value;
} bench_opt_t;

/* Read argv's "--name value" pairs into `opts` (ended by an entry whose name is NULL). An
 * unknown name or a name without its value ends the program with a usage line (exit 2). */
static inline void bench_parse_opts(int argc, char **argv, const bench_opt_t *opts) {
  for (int i = 1; i < argc; i += 2) {
    const bench_opt_t *o = opts;
    while (o->name != NULL && strcmp(o->name, argv[i]) != 0)
      o++;
    if (o->name == NULL || i + 1 >= argc) {
      fprintf(stderr, "%s: %s '%s'; options:", bench_prog,
              o->name == NULL ? "unknown option" : "no value for", argv[i]);
      for (o = opts; o->name != NULL; o++)
        fprintf(stderr, " %s %s", o->name, o->type == 's' ? "TEXT" : "N");
      fputc('\n', stderr);
      exit(2);
    }
    if (o->type == 's')
      *(const char **)o->value = argv[i + 1];
    else if (o->type == 'i')
      *(int *)o->value = atoi(argv[i + 1]);
    else if (o->type == 'l')
      *(long *)o->value = atol(argv[i + 1]);
    else
      *(double *)o->value = atof(argv[i + 1]);
  }
}

#endif
