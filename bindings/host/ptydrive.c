/* pp_ptydrive: run a command on a new pseudo-terminal for the REPL specs. What arrives on our
 * stdin is typed into the terminal; what the command writes to the terminal comes out on our
 * stdout. Exits with the command's status (128 + signal if it was killed). No line discipline
 * tricks: the specs see what a user would see, escape sequences and all.
 *   pp_ptydrive [-c COLS] [-r ROWS] -- command [args...] */
#define _XOPEN_SOURCE 600
#define _DEFAULT_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

static int write_all(int fd, const char *s, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, s, n);
    if (w < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return -1;
    }
    s += w;
    n -= (size_t)w;
  }
  return 0;
}

int main(int argc, char **argv) {
  int cols = 80, rows = 24, i = 1;
  for (; i < argc; i++) {
    if (strcmp(argv[i], "-c") == 0 && i + 1 < argc)
      cols = atoi(argv[++i]);
    else if (strcmp(argv[i], "-r") == 0 && i + 1 < argc)
      rows = atoi(argv[++i]);
    else if (strcmp(argv[i], "--") == 0) {
      i++;
      break;
    } else
      break;
  }
  if (i >= argc) {
    fprintf(stderr, "usage: %s [-c COLS] [-r ROWS] -- command [args...]\n", argv[0]);
    return 2;
  }
  int master = posix_openpt(O_RDWR | O_NOCTTY);
  if (master < 0 || grantpt(master) != 0 || unlockpt(master) != 0) {
    perror("pp_ptydrive: posix_openpt");
    return 2;
  }
  const char *slave_name = ptsname(master);
  struct winsize ws = {(unsigned short)rows, (unsigned short)cols, 0, 0};
  pid_t pid = fork();
  if (pid < 0) {
    perror("pp_ptydrive: fork");
    return 2;
  }
  if (pid == 0) {
    setsid();
    int slave = open(slave_name, O_RDWR);
    if (slave < 0) _exit(127);
    ioctl(slave, TIOCSCTTY, 0);
    ioctl(slave, TIOCSWINSZ, &ws);
    dup2(slave, 0);
    dup2(slave, 1);
    dup2(slave, 2);
    if (slave > 2) close(slave);
    close(master);
    execvp(argv[i], argv + i);
    fprintf(stderr, "pp_ptydrive: %s: %s\n", argv[i], strerror(errno));
    _exit(127);
  }
  signal(SIGPIPE, SIG_IGN);
  int in_open = 1;
  char buf[8192];
  for (;;) {
    struct pollfd p[2] = {{master, POLLIN, 0}, {in_open ? 0 : -1, POLLIN, 0}};
    if (poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (p[0].revents) {
      ssize_t n = read(master, buf, sizeof(buf));
      if (n <= 0) break; /* EIO: every holder of the terminal has gone */
      if (write_all(1, buf, (size_t)n) != 0) break;
    }
    if (in_open && p[1].revents) {
      ssize_t n = read(0, buf, sizeof(buf));
      if (n <= 0)
        in_open = 0; /* keep the terminal open: the command decides when it is done */
      else if (write_all(master, buf, (size_t)n) != 0)
        break;
    }
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return WEXITSTATUS(status);
}
