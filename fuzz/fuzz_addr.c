/*
 * libFuzzer target for the peer address parser (engine/src/addr.c): pp__addr_parse() and
 * pp_addr_canonical() on any string up to 300 bytes ("host:port", "[v6]:port", "unix:path",
 * "/path", "./path" and everything else). Beyond "no crash, no undefined behaviour" (it is
 * built with ASan and UBSan), every input checks:
 *   - the answer is 0 or PP_EINVAL, and a refusal always says why;
 *   - the canonical spelling is a fixed point: it parses, and to itself;
 *   - it names the same endpoint as the input: the same kind (unix socket or TCP), the same
 *     socket address for TCP, the same file for a unix path;
 *   - pp_addr_canonical() needs exactly strlen + 1 bytes: UV_ENOBUFS with one byte less.
 * A broken property prints the input and aborts, which libFuzzer reports as a crash.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define CHECK(cond, in)                                                 \
  do {                                                                  \
    if (!(cond)) {                                                      \
      fprintf(stderr, "fuzz_addr: %s fails for \"%s\"\n", #cond, (in)); \
      abort();                                                          \
    }                                                                   \
  } while (0)

typedef struct {
  char *canonical;
  struct sockaddr_storage sa;
  bool is_pipe;
  const char *why;
  int rc;
} parsed_t;

static parsed_t parse(const char *addr) {
  parsed_t p;
  memset(&p, 0, sizeof p);
  p.rc = pp__addr_parse(addr, &p.canonical, &p.sa, &p.is_pipe, &p.why);
  return p;
}

static bool same_endpoint(const struct sockaddr_storage *a, const struct sockaddr_storage *b) {
  if (a->ss_family != b->ss_family) return false;
  size_t len = a->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
  return memcmp(a, b, len) == 0;
}

/* The path a unix address names: what follows "unix:", or the address itself. */
static const char *unix_path(const char *addr) {
  return strncmp(addr, "unix:", 5) == 0 ? addr + 5 : addr;
}

/* `canonical` names the file `path` names: the same string, or "./" in front of a relative
 * path. */
static bool same_file(const char *path, const char *canonical) {
  if (strcmp(path, canonical) == 0) return true;
  return strncmp(canonical, "./", 2) == 0 && strcmp(canonical + 2, path) == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char in[301];
  if (size >= sizeof in) return 0;
  memcpy(in, data, size);
  in[size] = '\0'; /* an embedded NUL ends the string, as it would for a caller */

  parsed_t first = parse(in);
  if (first.rc != 0) {
    CHECK(first.rc == PP_EINVAL, in);
    CHECK(first.why != NULL && first.why[0] != '\0', in);
    char out[8];
    CHECK(pp_addr_canonical(in, out, sizeof out, NULL) == PP_EINVAL, in);
    return 0;
  }
  parsed_t again = parse(first.canonical);
  CHECK(again.rc == 0, in);
  CHECK(strcmp(again.canonical, first.canonical) == 0, in);
  CHECK(again.is_pipe == first.is_pipe, in);
  if (first.is_pipe)
    CHECK(same_file(unix_path(in), first.canonical), in);
  else
    CHECK(same_endpoint(&first.sa, &again.sa), in);

  size_t len = strlen(first.canonical);
  char out[512];
  CHECK(len < sizeof out, in);
  CHECK(pp_addr_canonical(in, out, len + 1, NULL) == 0, in);
  CHECK(strcmp(out, first.canonical) == 0, in);
  CHECK(pp_addr_canonical(in, out, len, NULL) == UV_ENOBUFS, in);
  free(first.canonical);
  free(again.canonical);
  return 0;
}
