/*
 * A tiny DNS server for the engine tests: UDP on 127.0.0.1 (ephemeral port), on the test's
 * loop, answering A and AAAA questions for names the test sets, with chosen TTLs; it can answer
 * NXDOMAIN or SERVFAIL, stay silent, or answer with many addresses. A name it does not know
 * answers NXDOMAIN. Point a pool at it with opts.dns_servers = dns_srv_addr(srv).
 */
#ifndef PP_DNS_SERVER_H
#define PP_DNS_SERVER_H

typedef struct dns_srv_s dns_srv_t;

enum { DNS_ANSWER = 0, DNS_NXDOMAIN = 3, DNS_SERVFAIL = 2, DNS_SILENT = 100 };

dns_srv_t *dns_srv_start(void);
/* Answer `name` (lowercase, no trailing dot) with `mode`; for DNS_ANSWER, the comma-separated
 * addresses in `a` and `aaaa` (either may be NULL or "") with `ttl` seconds. Replaces any
 * earlier answer. */
void dns_srv_set(dns_srv_t *srv, const char *name, int mode, const char *a, const char *aaaa,
                 unsigned ttl);
/* Questions asked for `name` (A and AAAA apart); NULL: for every name. */
int dns_srv_queries(const dns_srv_t *srv, const char *name);
/* "127.0.0.1:port". */
const char *dns_srv_addr(const dns_srv_t *srv);
/* Close its socket (the loop frees it); call before test_finish. */
void dns_srv_stop(dns_srv_t *srv);

#endif
