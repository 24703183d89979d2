/* Peer addresses: parse, validate and canonicalise, so that spellings of one address are
 * one peer. A host name is checked and lowercased here; dns.c resolves it. */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

static int parse_port(const char *s, int *port) {
  if (*s == '\0') return -1;
  long v = 0;
  for (; *s; s++) {
    if (*s < '0' || *s > '9') return -1;
    v = v * 10 + (*s - '0');
    if (v > 65535) return -1;
  }
  if (v < 1) return -1;
  *port = (int)v;
  return 0;
}

/* Whether `host` is a host name (RFC 1123 labels, '_' allowed for service names): labels of
 * 1..63 letters, digits, '-' or '_', not starting or ending with '-', dot-separated, at most 253
 * bytes, with a trailing dot allowed; and not all digits and dots (a malformed IPv4 address). */
static bool is_host_name(const char *host) {
  size_t len = strlen(host), label = 0;
  bool numeric = true;
  if (len == 0 || len > 254 || (len == 254 && host[253] != '.')) return false;
  for (size_t i = 0; i < len; i++) {
    char c = host[i];
    if (c == '.') {
      if (label == 0 || host[i - 1] == '-') return false;
      label = 0;
      continue;
    }
    bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    if (!alnum && c != '-' && c != '_') return false;
    if (c == '-' && label == 0) return false;
    if (!(c >= '0' && c <= '9')) numeric = false;
    if (++label > 63) return false;
  }
  if (label > 0 && host[len - 1] == '-') return false;
  return !numeric;
}

#define BAD_HOST "host must be an IPv4 address or a host name (letters, digits, '-', '_', dots)"

int pp__addr_parse(const char *addr, char **canonical, struct sockaddr_storage *sa, bool *is_pipe,
                   const char **why) {
  char host[256], out[272];
  int port;
  if (addr == NULL || *addr == '\0') PP__INVALID("address must be a non-empty string");
  if (strncmp(addr, "unix:", 5) == 0 || addr[0] == '/' || strncmp(addr, "./", 2) == 0) {
    const char *path = strncmp(addr, "unix:", 5) == 0 ? addr + 5 : addr;
    if (*path == '\0') PP__INVALID("unix socket path must not be empty");
    /* A relative path after "unix:" is spelled "./path", so that the canonical spelling reads
     * back as a unix path and not as host:port ("unix:x.sock" and "./x.sock" are one peer). */
    const char *dot = path[0] != '/' && strncmp(path, "./", 2) != 0 ? "./" : "";
    size_t len = strlen(dot) + strlen(path);
    _Static_assert(sizeof(((struct sockaddr_un *)0)->sun_path) <= PP_ADDR_MAX, "PP_ADDR_MAX");
    if (len >= sizeof(((struct sockaddr_un *)0)->sun_path))
      PP__INVALID(
          "unix socket path is too long (at most 107 bytes, with ./ before a relative path)");
    *is_pipe = true;
    *canonical = malloc(len + 1);
    if (*canonical == NULL) return UV_ENOMEM;
    snprintf(*canonical, len + 1, "%s%s", dot, path);
    return 0;
  }
  *is_pipe = false;
  memset(sa, 0, sizeof(*sa));
  if (strlen(addr) > 300) PP__INVALID("address is too long (at most 300 bytes)");
  if (addr[0] == '[') {
    const char *close = strchr(addr, ']');
    if (close == NULL) PP__INVALID("IPv6 address must be written [addr]:port");
    size_t len = (size_t)(close - addr - 1);
    if (len == 0 || len >= sizeof(host)) PP__INVALID("IPv6 address inside [] is malformed");
    memcpy(host, addr + 1, len);
    host[len] = '\0';
    /* The canonical spelling has no zone, so two zones would be one peer with the wrong one. */
    if (strchr(host, '%')) PP__INVALID("IPv6 zone ids ([addr%zone]) are not supported");
    if (close[1] != ':') PP__INVALID("IPv6 address must be followed by :port");
    if (parse_port(close + 2, &port) != 0) PP__INVALID("port must be an integer in 1..65535");
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)sa;
    if (uv_ip6_addr(host, port, a6) != 0) PP__INVALID("IPv6 address inside [] is malformed");
    char name[INET6_ADDRSTRLEN];
    if (uv_ip6_name(a6, name, sizeof(name)) != 0)
      PP__INVALID("IPv6 address inside [] is malformed");
    snprintf(out, sizeof(out), "[%s]:%d", name, port);
  } else {
    const char *colon = strrchr(addr, ':');
    if (colon == NULL) PP__INVALID("address must be host:port, [ipv6]:port or a unix socket path");
    size_t len = (size_t)(colon - addr);
    if (len == 0 || len >= sizeof(host)) PP__INVALID(BAD_HOST);
    memcpy(host, addr, len);
    host[len] = '\0';
    if (strchr(host, ':')) PP__INVALID("IPv6 addresses must be written [addr]:port");
    if (parse_port(colon + 1, &port) != 0) PP__INVALID("port must be an integer in 1..65535");
    struct sockaddr_in *a4 = (struct sockaddr_in *)sa;
    if (uv_ip4_addr(host, port, a4) == 0) {
      char name[INET_ADDRSTRLEN];
      if (uv_ip4_name(a4, name, sizeof(name)) != 0) PP__INVALID(BAD_HOST);
      snprintf(out, sizeof(out), "%s:%d", name, port);
    } else {
      /* A host name: the peer keeps it (lowercased, without a trailing dot) as its address,
       * and its sockaddr stays AF_UNSPEC until dns.c resolves it. */
      if (!is_host_name(host)) PP__INVALID(BAD_HOST);
      memset(sa, 0, sizeof(*sa));
      if (host[len - 1] == '.') host[--len] = '\0';
      for (size_t i = 0; i < len; i++)
        if (host[i] >= 'A' && host[i] <= 'Z') host[i] = (char)(host[i] - 'A' + 'a');
      /* "UNIX:80" would be spelled "unix:80", which reads back as a unix socket path. */
      if (strcmp(host, "unix") == 0)
        PP__INVALID("a host named \"unix\" would read as the unix: prefix");
      snprintf(out, sizeof(out), "%s:%d", host, port);
    }
  }
  *canonical = strdup(out);
  return *canonical ? 0 : UV_ENOMEM;
}

int pp_addr_canonical(const char *addr, char *out, size_t n, const char **why) {
  char *canonical;
  struct sockaddr_storage sa;
  bool is_pipe;
  int err = pp__addr_parse(addr, &canonical, &sa, &is_pipe, why);
  if (err) return err;
  size_t len = strlen(canonical);
  if (len >= n)
    err = UV_ENOBUFS;
  else
    memcpy(out, canonical, len + 1);
  free(canonical);
  return err;
}
