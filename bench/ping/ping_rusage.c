/*
 * ping_rusage — run a command and report the CPU time and wall time its whole process used.
 *
 *   ping_rusage [--timeout SECONDS] CMD [ARGS...]
 *
 * Runs CMD as a child (stdout and stderr pass through), waits for it with wait4() and then
 * prints one line on stdout:
 *   RUSAGE cpu_user_s=U cpu_sys_s=S wall_s=W status=N
 * (status: the exit code, or 128 + the signal). The bench uses it for redis-benchmark, whose
 * CPU time cannot be read from inside, and for every other client too, as a whole-process
 * cross-check of their own timed-phase figures. A child still running after --timeout seconds
 * (60 by default) is killed, so nothing outlives the bench.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile pid_t child = -1;

static void on_alarm(int sig) {
  static const char msg[] = "ping_rusage: timeout; killing the command\n";
  ssize_t w = write(2, msg, sizeof msg - 1);
  (void)w;
  (void)sig;
  if (child > 0) kill(child, SIGKILL);
}

static void forward(int sig) {
  if (child > 0) kill(child, sig);
}

int main(int argc, char **argv) {
  int timeout = 60, first = 1;
  if (argc > 2 && strcmp(argv[1], "--timeout") == 0) {
    timeout = atoi(argv[2]);
    first = 3;
  }
  if (first >= argc || timeout <= 0) {
    fprintf(stderr, "usage: ping_rusage [--timeout SECONDS] CMD [ARGS...]\n");
    return 2;
  }
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  fflush(stdout);
  pid_t pid = fork();
  if (pid < 0) {
    perror("ping_rusage: fork");
    return 1;
  }
  if (pid == 0) {
    execvp(argv[first], argv + first);
    fprintf(stderr, "ping_rusage: cannot run %s: %s\n", argv[first], strerror(errno));
    _exit(127);
  }
  child = pid;
  signal(SIGALRM, on_alarm);
  signal(SIGTERM, forward);
  signal(SIGINT, forward);
  signal(SIGHUP, forward);
  alarm((unsigned)timeout);
  int status;
  struct rusage ru;
  pid_t got;
  do {
    got = wait4(pid, &status, 0, &ru);
  } while (got < 0 && errno == EINTR);
  if (got < 0) {
    perror("ping_rusage: wait4");
    return 1;
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  printf("RUSAGE cpu_user_s=%.6f cpu_sys_s=%.6f wall_s=%.6f status=%d\n",
         (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6,
         (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6,
         (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9, code);
  return code;
}
