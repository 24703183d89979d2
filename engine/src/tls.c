/* TLS for conns: OpenSSL 3 on memory BIOs, with settings per pool and per peer, a session cache
 * per peer, and failure reasons a person can act on. See tls.h for the object model.
 *
 * ---- The seam: how conn.c drives this layer (its "TLS" section) ----------------------------
 * A conn holds `pp__tls_t *tls` while its socket lives (NULL: plain TCP).
 * 1. After connect (on_connect): pp__tls_conn_new (PP_ETLS: the attempt fails, reason kept on
 *    the peer), uv_read_start, phase PP_CONN_HANDSHAKE under handshake_timeout, the
 *    ClientHello. When the handshake completes (tls_input), the handshake hook runs (or the
 *    conn is ready) WITHOUT restarting the timer: TLS and the hook share one
 *    handshake_timeout. A failure is attempt_failed(conn, PP_ETLS): a failed connect of the
 *    peer, not retried, whose owner gets PP_ETLS (pp_lease_describe says why). EOF during the
 *    handshake is PP_ETLS too ("protocol: ... unexpected eof"); a reset is a failed attempt.
 * 2. Reading: ciphertext is fed and decrypted whole (one read's worth), each plaintext piece
 *    going through the plain path (deliver: the idle late-reply rule, the reader or kept
 *    bytes), so that rule judges PLAINTEXT only (TLS 1.3 session tickets decrypt to nothing).
 *    close_notify (UV_EOF) and fatal alerts (PP_ETLS; counted against the peer even on an idle
 *    conn) end the conn as I/O errors. bytes_in counts ciphertext, msgs_in plaintext pieces.
 * 3. Writing: pp_conn_write encrypts at once and queues the chunks, the last carrying the
 *    caller's request; a zero-byte write goes the plain way. pp_conn_try_write takes every byte
 *    or fails (records cannot be taken back). Handshake flights and key-update answers are
 *    flushed as the layer makes them.
 * 4. Closing (pp__conn_close): close_notify with a best-effort uv_try_write when no write is
 *    queued, then pp__tls_free; attempt_failed frees without close_notify.
 * Fail fast: while a peer backs off after a TLS failure, its acquires answer
 * PP_ECANNOTCONNECT with lease->cause PP_ETLS (pp__peer_fail_code).
 * ------------------------------------------------------------------------------------------ */
#include "internal.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

uint64_t pp__tls_allocs;

static void *tls_malloc(size_t n) {
  pp__tls_allocs++;
  return malloc(n);
}

static void *tls_realloc(void *p, size_t n) {
  pp__tls_allocs++;
  return realloc(p, n);
}

const char *pp__tls_fail_name(pp__tls_fail_t fail) {
  static const char *const names[] = {PP__TLS_FAIL_MAP(PP__ROW_STRING)};
  return pp__name_of(names, PP__TLS_FAIL_COUNT, (int)fail);
}

/* ---- options --------------------------------------------------------------------------- */

void pp_tls_options_init(pp_tls_options_t *o) {
  memset(o, 0, sizeof(*o));
  o->verify = -1;
}

#define PP__TLS_ALPN_MAX 32

static int version_of(const char *v) {
  if (v == NULL || strcmp(v, "1.2") == 0) return TLS1_2_VERSION;
  if (strcmp(v, "1.3") == 0) return TLS1_3_VERSION;
  return 0;
}

int pp__tls_options_check(const pp_tls_options_t *o, const char **why) {
  if (why) *why = NULL;
  PP__CHECK(o != NULL, "tls options must not be NULL");
  PP__CHECK(o->ca_file == NULL || *o->ca_file, "tls.ca_file must not be empty");
  PP__CHECK(o->ca_path == NULL || *o->ca_path, "tls.ca_path must not be empty");
  PP__CHECK(o->cert_file == NULL || *o->cert_file, "tls.cert_file must not be empty");
  PP__CHECK(o->key_file == NULL || *o->key_file, "tls.key_file must not be empty");
  PP__CHECK(o->key_file == NULL || o->cert_file, "tls.key_file needs tls.cert_file");
  PP__CHECK(o->server_name == NULL || (*o->server_name && strlen(o->server_name) <= 253),
            "tls.server_name must be a host name or IP address of 1..253 bytes");
  PP__CHECK(o->verify >= -1 && o->verify <= 1, "tls.verify must be 1, 0 or -1 (the default)");
  PP__CHECK(version_of(o->min_version) != 0, "tls.min_version must be \"1.2\" or \"1.3\"");
  if (o->alpn) {
    int n = 0;
    for (; o->alpn[n]; n++) {
      size_t len = strlen(o->alpn[n]);
      PP__CHECK(len >= 1 && len <= 255, "tls.alpn entries must be protocol names of 1..255 bytes");
    }
    PP__CHECK(n <= PP__TLS_ALPN_MAX, "tls.alpn must list at most 32 protocols");
  }
  return 0;
}

/* One allocation holding a copy of `o` and every string it points at. */
static pp_tls_options_t *options_dup(const pp_tls_options_t *o) {
  const char *const *strs[] = {&o->ca_file,  &o->ca_path,     &o->cert_file,
                               &o->key_file, &o->server_name, &o->min_version};
  size_t nstr = sizeof(strs) / sizeof(strs[0]);
  size_t nalpn = 0, size = sizeof(pp_tls_options_t);
  for (size_t i = 0; i < nstr; i++)
    if (*strs[i]) size += strlen(*strs[i]) + 1;
  if (o->alpn) {
    while (o->alpn[nalpn])
      size += strlen(o->alpn[nalpn++]) + 1;
    size += (nalpn + 1) * sizeof(char *);
  }
  pp_tls_options_t *c = tls_malloc(size);
  if (c == NULL) return NULL;
  *c = *o;
  char *p = (char *)(c + 1);
  if (o->alpn) {
    const char **list = (const char **)p;
    p += (nalpn + 1) * sizeof(char *);
    for (size_t i = 0; i < nalpn; i++) {
      size_t len = strlen(o->alpn[i]) + 1;
      list[i] = memcpy(p, o->alpn[i], len);
      p += len;
    }
    list[nalpn] = NULL;
    c->alpn = list;
  }
  const char **dst[] = {&c->ca_file,  &c->ca_path,     &c->cert_file,
                        &c->key_file, &c->server_name, &c->min_version};
  for (size_t i = 0; i < nstr; i++) {
    if (*strs[i] == NULL) continue;
    size_t len = strlen(*strs[i]) + 1;
    *dst[i] = memcpy(p, *strs[i], len);
    p += len;
  }
  return c;
}

/* A peer's options over the pool's: a field the peer left unset takes the pool's. The result
 * points into both. */
static pp_tls_options_t options_merge(const pp_tls_options_t *pool, const pp_tls_options_t *peer) {
  pp_tls_options_t m;
  if (pool == NULL) return *peer;
  m = *pool;
#define TAKE(f) \
  if (peer->f) m.f = peer->f
  TAKE(ca_file);
  TAKE(ca_path);
  TAKE(cert_file);
  TAKE(key_file);
  TAKE(server_name);
  TAKE(alpn);
  TAKE(min_version);
#undef TAKE
  if (peer->cert_file && !peer->key_file) m.key_file = NULL; /* the key is in cert_file */
  if (peer->verify != -1) m.verify = peer->verify;
  return m;
}

static bool str_eq(const char *a, const char *b) {
  return a == b || (a && b && strcmp(a, b) == 0);
}

/* Whether two sets of options make the same context (server_name is per conn, not per
 * context). */
static bool same_context(const pp_tls_options_t *a, const pp_tls_options_t *b) {
  if (!str_eq(a->ca_file, b->ca_file) || !str_eq(a->ca_path, b->ca_path) ||
      !str_eq(a->cert_file, b->cert_file) || !str_eq(a->key_file, b->key_file) ||
      (a->verify != 0) != (b->verify != 0) ||
      version_of(a->min_version) != version_of(b->min_version))
    return false;
  const char *const *x = a->alpn, *const *y = b->alpn;
  if (x == NULL || y == NULL) return x == y || (x ? x[0] : y[0]) == NULL;
  for (; *x && *y; x++, y++)
    if (strcmp(*x, *y) != 0) return false;
  return *x == NULL && *y == NULL;
}

/* ---- contexts -------------------------------------------------------------------------- */

struct pp__tls_ctx_s {
  SSL_CTX *ssl_ctx;
  int refs;
  bool verify;
};

static int on_new_session(SSL *ssl, SSL_SESSION *sess);
static int on_client_cert(SSL *ssl, X509 **x509, EVP_PKEY **pkey);

/* Whether OpenSSL refused a private key because it is not the certificate's. */
static bool key_mismatch(unsigned long e) {
  return ERR_GET_LIB(e) == ERR_LIB_X509 && (ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH ||
                                            ERR_GET_REASON(e) == X509_R_KEY_TYPE_MISMATCH);
}

int pp__tls_ctx_new(const pp_tls_options_t *o, pp__tls_ctx_t **out, const char **why) {
  int err = pp__tls_options_check(o, why);
  if (err) return err;
  pp__tls_ctx_t *ctx = tls_malloc(sizeof(*ctx));
  if (ctx == NULL) return UV_ENOMEM;
  ctx->refs = 1;
  ctx->verify = o->verify != 0;
  ctx->ssl_ctx = SSL_CTX_new(TLS_client_method());
  if (ctx->ssl_ctx == NULL) {
    free(ctx);
    ERR_clear_error();
    return UV_ENOMEM;
  }
  SSL_CTX *c = ctx->ssl_ctx;
  const char *bad = NULL;
  /* Renegotiation would let the server make a write wait for a read; nobody needs it. */
  SSL_CTX_set_options(c, SSL_OP_NO_RENEGOTIATION);
  SSL_CTX_set_min_proto_version(c, version_of(o->min_version));
  SSL_CTX_set_verify(c, ctx->verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
  /* The sessions live in each peer's cache (on_new_session), never in OpenSSL's own. */
  SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
  SSL_CTX_sess_set_new_cb(c, on_new_session);
  /* Called only when the server asks for a certificate and none is set: noted, so that a
   * refusal can say what is missing. */
  SSL_CTX_set_client_cert_cb(c, on_client_cert);
  if (o->ca_file || o->ca_path) {
    if (SSL_CTX_load_verify_locations(c, o->ca_file, o->ca_path) != 1)
      bad = o->ca_file ? "tls.ca_file could not be loaded (a PEM file of CA certificates)"
                       : "tls.ca_path could not be loaded (a directory of hashed CA certificates)";
  } else if (ctx->verify && SSL_CTX_set_default_verify_paths(c) != 1) {
    bad = "tls: the system's trusted CA store could not be loaded (set tls.ca_file)";
  }
  if (!bad && o->cert_file) {
    if (SSL_CTX_use_certificate_chain_file(c, o->cert_file) != 1)
      bad = "tls.cert_file could not be loaded (a PEM certificate chain)";
    else if (SSL_CTX_use_PrivateKey_file(c, o->key_file ? o->key_file : o->cert_file,
                                         SSL_FILETYPE_PEM) != 1)
      bad = key_mismatch(ERR_peek_last_error()) ? "tls.key_file does not match tls.cert_file"
            : o->key_file ? "tls.key_file could not be loaded (a PEM private key)"
                          : "tls.cert_file holds no private key (set tls.key_file)";
    else if (SSL_CTX_check_private_key(c) != 1)
      bad = "tls.key_file does not match tls.cert_file";
  }
  if (!bad && o->alpn && o->alpn[0]) {
    unsigned char wire[PP__TLS_ALPN_MAX * 256];
    size_t len = 0;
    for (const char *const *p = o->alpn; *p; p++) {
      size_t n = strlen(*p);
      wire[len++] = (unsigned char)n;
      memcpy(wire + len, *p, n);
      len += n;
    }
    if (SSL_CTX_set_alpn_protos(c, wire, (unsigned int)len) != 0) bad = "tls.alpn was refused";
  }
  ERR_clear_error();
  if (bad) {
    if (why) *why = bad;
    SSL_CTX_free(c);
    free(ctx);
    return PP_EINVAL;
  }
  *out = ctx;
  return 0;
}

void pp__tls_ctx_ref(pp__tls_ctx_t *ctx) {
  ctx->refs++;
}

void pp__tls_ctx_unref(pp__tls_ctx_t *ctx) {
  if (ctx == NULL || --ctx->refs > 0) return;
  SSL_CTX_free(ctx->ssl_ctx);
  free(ctx);
}

bool pp__tls_ctx_verifies(const pp__tls_ctx_t *ctx) {
  return ctx->verify;
}

/* ---- session caches -------------------------------------------------------------------- */

struct pp__tls_cache_s {
  SSL_SESSION *sessions[PP__TLS_SESSIONS]; /* oldest first */
  int n;
  int cap; /* sessions kept at most (<= PP__TLS_SESSIONS) */
  pp__tls_counts_t counts;
  pp_stats_t *stats;
  char reason[PP__TLS_REASON_MAX];
};

pp__tls_cache_t *pp__tls_cache_new(pp_stats_t *stats) {
  pp__tls_cache_t *cache = tls_malloc(sizeof(*cache));
  if (cache == NULL) return NULL;
  memset(cache, 0, sizeof(*cache));
  cache->stats = stats;
  cache->cap = PP__TLS_SESSIONS_MIN;
  return cache;
}

static void cache_drop(pp__tls_cache_t *cache, int i) {
  SSL_SESSION_free(cache->sessions[i]);
  memmove(&cache->sessions[i], &cache->sessions[i + 1],
          (size_t)(cache->n - i - 1) * sizeof(cache->sessions[0]));
  cache->n--;
}

/* Drop the sessions whose lifetime (the server's ticket lifetime hint, or the session
 * timeout) has run out: offering one would only cost a full handshake anyway. */
static void cache_prune(pp__tls_cache_t *cache) {
  time_t now = time(NULL);
  for (int i = 0; i < cache->n;) {
    SSL_SESSION *s = cache->sessions[i];
    if ((time_t)SSL_SESSION_get_time(s) + (time_t)SSL_SESSION_get_timeout(s) <= now)
      cache_drop(cache, i);
    else
      i++;
  }
}

/* The newest live session, with a reference for the caller. A TLS 1.3 ticket leaves the
 * cache (each is meant for one use, RFC 8446 C.4; the resumed conn brings new ones); a TLS 1.2
 * session stays for the next conn. */
static SSL_SESSION *cache_take(pp__tls_cache_t *cache) {
  cache_prune(cache);
  if (cache->n == 0) return NULL;
  SSL_SESSION *s = cache->sessions[cache->n - 1];
  if (SSL_SESSION_get_protocol_version(s) >= TLS1_3_VERSION) {
    cache->n--;
  } else {
    SSL_SESSION_up_ref(s);
  }
  return s;
}

/* Drop `s` if the cache still holds it (the server would not resume it). */
static void cache_forget(pp__tls_cache_t *cache, SSL_SESSION *s) {
  for (int i = 0; i < cache->n; i++) {
    if (cache->sessions[i] == s) {
      cache_drop(cache, i);
      return;
    }
  }
}

/* Keep `s` (the cache takes the caller's reference), evicting the oldest when full. */
static void cache_put(pp__tls_cache_t *cache, SSL_SESSION *s) {
  cache_prune(cache);
  while (cache->n >= cache->cap)
    cache_drop(cache, 0);
  cache->sessions[cache->n++] = s;
}

void pp__tls_cache_set_capacity(pp__tls_cache_t *cache, int n) {
  cache->cap = n < PP__TLS_SESSIONS_MIN ? PP__TLS_SESSIONS_MIN
               : n > PP__TLS_SESSIONS   ? PP__TLS_SESSIONS
                                        : n;
  while (cache->n > cache->cap)
    cache_drop(cache, 0);
}

void pp__tls_cache_clear(pp__tls_cache_t *cache) {
  while (cache->n > 0)
    cache_drop(cache, cache->n - 1);
}

void pp__tls_cache_free(pp__tls_cache_t *cache) {
  if (cache == NULL) return;
  pp__tls_cache_clear(cache);
  free(cache);
}

void pp__tls_cache_counts(const pp__tls_cache_t *cache, pp__tls_counts_t *out) {
  *out = cache->counts;
  out->sessions = cache->n;
}

const char *pp__tls_cache_reason(const pp__tls_cache_t *cache) {
  return cache->reason;
}

/* ---- conns ----------------------------------------------------------------------------- */

struct pp__tls_s {
  SSL *ssl;
  BIO *rbio; /* ciphertext from the socket, which OpenSSL reads */
  BIO *wbio; /* ciphertext OpenSSL wrote, to be sent */
  pp__tls_ctx_t *ctx;
  pp__tls_cache_t *cache;
  SSL_SESSION *offered; /* the session offered for resumption (a reference), or NULL */
  pp__tls_out_t *spare; /* chunks handed back, for reuse */
  int nspare;
  int lent;   /* chunks handed out and not yet back */
  bool freed; /* pp__tls_free ran: the last chunk back frees the rest */
  bool done, failed, shut;
  bool resumed;
  bool cert_asked; /* the server asked for a client certificate and we had none */
  int end;         /* UV_EOF or PP_ETLS met by pp__tls_read, returned when no bytes */
  pp__tls_fail_t fail;
  char reason[PP__TLS_REASON_MAX];
  char alpn[256];
  size_t alpn_len;
};

/* Spare chunks kept per conn, and the largest one kept: a burst of big writes does not pin
 * its memory for the conn's whole life. */
#define PP__TLS_SPARES 4
#define PP__TLS_SPARE_MAX (256 * 1024)
#define PP__TLS_CHUNK_MIN (16 * 1024 + 512)
#define PP__TLS_CHUNK_MAX (64 * 1024 * 1024)

static bool is_ip(const char *host) {
  unsigned char buf[16];
  return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

int pp__tls_new(pp__tls_ctx_t *ctx, pp__tls_cache_t *cache, const char *host, pp__tls_t **out) {
  if (ctx->verify && (host == NULL || *host == '\0')) return PP_EINVAL;
  pp__tls_t *t = tls_malloc(sizeof(*t));
  if (t == NULL) return UV_ENOMEM;
  memset(t, 0, sizeof(*t));
  t->ssl = SSL_new(ctx->ssl_ctx);
  t->rbio = BIO_new(BIO_s_mem());
  t->wbio = BIO_new(BIO_s_mem());
  if (t->ssl == NULL || t->rbio == NULL || t->wbio == NULL) {
    SSL_free(t->ssl);
    BIO_free(t->rbio);
    BIO_free(t->wbio);
    ERR_clear_error();
    free(t);
    return UV_ENOMEM;
  }
  /* An empty read BIO means "more later", not the end of the stream. */
  BIO_set_mem_eof_return(t->rbio, -1);
  SSL_set_bio(t->ssl, t->rbio, t->wbio); /* the SSL owns both from here */
  SSL_set_connect_state(t->ssl);
  SSL_set_app_data(t->ssl, t);
  if (host && *host) {
    if (is_ip(host)) {
      /* An IP address is checked against the certificate's IP entries, and is never sent as
       * SNI (RFC 6066 allows host names only). */
      if (ctx->verify && X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(t->ssl), host) != 1)
        goto nomem;
    } else {
      if (SSL_set_tlsext_host_name(t->ssl, host) != 1) goto nomem;
      if (ctx->verify) {
        SSL_set_hostflags(t->ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        if (SSL_set1_host(t->ssl, host) != 1) goto nomem;
      }
    }
  }
  if (cache) {
    SSL_SESSION *s = cache_take(cache);
    if (s) {
      if (SSL_set_session(t->ssl, s) == 1)
        t->offered = s; /* our reference, kept until the handshake ends */
      else
        SSL_SESSION_free(s);
    }
  }
  ERR_clear_error();
  t->ctx = ctx;
  t->cache = cache;
  pp__tls_ctx_ref(ctx);
  *out = t;
  return 0;
nomem:
  SSL_free(t->ssl); /* and its BIOs */
  ERR_clear_error();
  free(t);
  return UV_ENOMEM;
}

static void free_chunk(pp__tls_out_t *out) {
  free(out->mem);
  free(out);
}

static void release_offered(pp__tls_t *t) {
  if (t->offered) {
    SSL_SESSION_free(t->offered);
    t->offered = NULL;
  }
}

void pp__tls_free(pp__tls_t *t) {
  if (t == NULL) return;
  release_offered(t);
  if (t->ssl) {
    SSL_free(t->ssl);
    t->ssl = NULL;
  }
  while (t->spare) {
    pp__tls_out_t *o = t->spare;
    t->spare = o->next;
    free_chunk(o);
  }
  pp__tls_ctx_unref(t->ctx);
  t->ctx = NULL;
  t->freed = true;
  if (t->lent == 0) free(t);
}

int pp__tls_feed(pp__tls_t *t, const char *data, size_t len) {
  while (len > 0) {
    int n = len > INT32_MAX ? INT32_MAX : (int)len;
    int w = BIO_write(t->rbio, data, n);
    if (w <= 0) {
      ERR_clear_error();
      return UV_ENOMEM;
    }
    data += w;
    len -= (size_t)w;
  }
  return 0;
}

/* ---- failure reasons ------------------------------------------------------------------- */

static pp__tls_fail_t verify_class(long v) {
  switch (v) {
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_CERT_UNTRUSTED:
      return PP__TLS_FAIL_UNKNOWN_CA;
    case X509_V_ERR_HOSTNAME_MISMATCH:
    case X509_V_ERR_IP_ADDRESS_MISMATCH:
    case X509_V_ERR_EMAIL_MISMATCH:
      return PP__TLS_FAIL_NAME_MISMATCH;
    case X509_V_ERR_CERT_HAS_EXPIRED:
    case X509_V_ERR_CERT_NOT_YET_VALID:
    case X509_V_ERR_ERROR_IN_CERT_NOT_BEFORE_FIELD:
    case X509_V_ERR_ERROR_IN_CERT_NOT_AFTER_FIELD:
      return PP__TLS_FAIL_EXPIRED;
    default:
      return PP__TLS_FAIL_OTHER;
  }
}

/* Alerts by which the server refuses the certificate we sent (or did not send). */
static bool refuses_our_cert(int reason) {
  switch (reason) {
    case SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED:
    case SSL_R_SSLV3_ALERT_BAD_CERTIFICATE:
    case SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN:
    case SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED:
    case SSL_R_SSLV3_ALERT_CERTIFICATE_REVOKED:
    case SSL_R_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE:
    case SSL_R_TLSV1_ALERT_UNKNOWN_CA:
    case SSL_R_TLSV1_ALERT_ACCESS_DENIED:
      return true;
    default:
      return false;
  }
}

/* Record why the conn failed (once), count it, and keep the reason in the peer's cache. */
static void fail(pp__tls_t *t, int ssl_error) {
  if (t->failed) return;
  t->failed = true;
  long v = SSL_get_verify_result(t->ssl);
  unsigned long e = ERR_peek_last_error();
  const char *detail = NULL;
  char buf[128];
  pp__tls_fail_t cls = PP__TLS_FAIL_OTHER;
  const char *prefix = "";
  if (t->ctx->verify && v != X509_V_OK) {
    cls = verify_class(v);
    detail = X509_verify_cert_error_string(v);
  } else if (e != 0) {
    int r = ERR_GET_REASON(e);
    if (ERR_GET_LIB(e) == ERR_LIB_SSL && t->cert_asked &&
        (refuses_our_cert(r) || r == SSL_R_SSLV3_ALERT_HANDSHAKE_FAILURE)) {
      /* TLS 1.2 servers answer a missing certificate with a bare handshake_failure alert. */
      prefix = "the peer asked for a client certificate and none is configured (tls.cert_file): ";
    } else if (ERR_GET_LIB(e) == ERR_LIB_SSL && refuses_our_cert(r)) {
      prefix = "the peer refused our client certificate: ";
    } else if (ERR_GET_LIB(e) == ERR_LIB_SSL) {
      cls = PP__TLS_FAIL_PROTOCOL;
    }
    detail = ERR_reason_error_string(e);
    if (detail == NULL) {
      ERR_error_string_n(e, buf, sizeof(buf));
      detail = buf;
    }
  } else if (ssl_error == SSL_ERROR_SYSCALL) {
    cls = PP__TLS_FAIL_PROTOCOL;
    detail = "the stream ended in the middle of a record";
  } else {
    snprintf(buf, sizeof(buf), "SSL error %d", ssl_error);
    detail = buf;
  }
  t->fail = cls;
  if (snprintf(t->reason, sizeof(t->reason), "%s: %s%s", pp__tls_fail_name(cls), prefix, detail) >=
      (int)sizeof(t->reason))
    memcpy(t->reason + sizeof(t->reason) - 4, "...", 4); /* cut short, visibly */
  ERR_clear_error();
  pp__tls_cache_t *cache = t->cache;
  if (cache) {
    cache->counts.failed++;
    if (cache->stats) cache->stats->tls_failed++;
    memcpy(cache->reason, t->reason, sizeof(cache->reason));
    if (t->offered) cache_forget(cache, t->offered);
  }
  release_offered(t);
}

/* ---- the handshake, reading, writing --------------------------------------------------- */

static void handshake_finished(pp__tls_t *t) {
  t->done = true;
  t->resumed = SSL_session_reused(t->ssl) == 1;
  const unsigned char *p = NULL;
  unsigned int len = 0;
  SSL_get0_alpn_selected(t->ssl, &p, &len);
  if (p && len > 0 && len < sizeof(t->alpn)) {
    memcpy(t->alpn, p, len);
    t->alpn[len] = '\0';
    t->alpn_len = len;
  }
  pp__tls_cache_t *cache = t->cache;
  if (cache) {
    if (t->resumed) {
      cache->counts.resumed++;
      if (cache->stats) cache->stats->tls_resumed++;
    } else {
      cache->counts.full++;
      if (cache->stats) cache->stats->tls_full++;
      if (t->offered) cache_forget(cache, t->offered); /* the server would not resume it */
    }
  }
  release_offered(t);
}

int pp__tls_handshake(pp__tls_t *t) {
  if (t->failed) return PP_ETLS;
  if (t->done) return 0;
  ERR_clear_error();
  int r = SSL_do_handshake(t->ssl);
  if (r == 1) {
    handshake_finished(t);
    return 0;
  }
  int e = SSL_get_error(t->ssl, r);
  if (e == SSL_ERROR_WANT_READ) return UV_EAGAIN;
  fail(t, e);
  return PP_ETLS;
}

void pp__tls_feed_eof(pp__tls_t *t) {
  BIO_set_mem_eof_return(t->rbio, 0); /* what is fed is all there will be */
}

bool pp__tls_done(const pp__tls_t *t) {
  return t->done;
}

ssize_t pp__tls_read(pp__tls_t *t, char *buf, size_t len) {
  if (!t->done) return t->failed ? PP_ETLS : 0;
  size_t total = 0;
  while (t->end == 0 && total < len) {
    size_t got = 0;
    ERR_clear_error();
    int r = SSL_read_ex(t->ssl, buf + total, len - total, &got);
    if (r == 1) {
      total += got;
      continue;
    }
    int e = SSL_get_error(t->ssl, r);
    if (e == SSL_ERROR_WANT_READ) break;
    if (e == SSL_ERROR_ZERO_RETURN) {
      t->end = UV_EOF; /* close_notify */
    } else {
      fail(t, e);
      t->end = PP_ETLS;
    }
  }
  return total > 0 ? (ssize_t)total : t->end;
}

static int write_all(pp__tls_t *t, const char *p, size_t len) {
  size_t written = 0;
  ERR_clear_error();
  /* A memory BIO takes everything, so a write never waits (and renegotiation is off). */
  int r = SSL_write_ex(t->ssl, p, len, &written);
  if (r == 1 && written == len) return 0;
  fail(t, SSL_get_error(t->ssl, r));
  return PP_ETLS;
}

int pp__tls_write(pp__tls_t *t, const uv_buf_t bufs[], unsigned int nbufs) {
  if (t->failed) return PP_ETLS;
  if (!t->done || t->shut) return PP_ESTATE;
  size_t total = 0;
  for (unsigned int i = 0; i < nbufs; i++)
    total += bufs[i].len;
  /* Small pieces go out as one record: fewer bytes on the wire and fewer cipher calls. */
  char small[4096];
  if (nbufs > 1 && total <= sizeof(small)) {
    size_t off = 0;
    for (unsigned int i = 0; i < nbufs; i++) {
      memcpy(small + off, bufs[i].base, bufs[i].len);
      off += bufs[i].len;
    }
    return total ? write_all(t, small, total) : 0;
  }
  for (unsigned int i = 0; i < nbufs; i++) {
    if (bufs[i].len == 0) continue;
    int err = write_all(t, bufs[i].base, bufs[i].len);
    if (err) return err;
  }
  return 0;
}

void pp__tls_close_notify(pp__tls_t *t) {
  if (!t->done || t->failed || t->shut) return;
  t->shut = true;
  ERR_clear_error();
  SSL_shutdown(t->ssl); /* sends ours; the peer's answer is not waited for */
  ERR_clear_error();
}

size_t pp__tls_pending(const pp__tls_t *t) {
  return t->ssl ? BIO_ctrl_pending(t->wbio) : 0;
}

pp__tls_out_t *pp__tls_output(pp__tls_t *t, int *err) {
  if (err) *err = 0;
  size_t n = pp__tls_pending(t);
  if (n == 0) return NULL;
  if (n > PP__TLS_CHUNK_MAX) n = PP__TLS_CHUNK_MAX; /* the rest comes in the next chunk */
  /* A spare that is big enough, else the biggest spare grown, else a new chunk. */
  pp__tls_out_t **best = NULL;
  for (pp__tls_out_t **pp = &t->spare; *pp; pp = &(*pp)->next) {
    if ((*pp)->cap >= n) {
      best = pp;
      break;
    }
    if (best == NULL || (*pp)->cap > (*best)->cap) best = pp;
  }
  pp__tls_out_t *out;
  if (best) {
    out = *best;
    *best = out->next;
    t->nspare--;
  } else {
    out = tls_malloc(sizeof(*out));
    if (out == NULL) goto nomem;
    memset(out, 0, sizeof(*out));
    out->tls = t;
  }
  if (out->cap < n) {
    size_t cap = n < PP__TLS_CHUNK_MIN ? PP__TLS_CHUNK_MIN : n;
    char *mem = tls_realloc(out->mem, cap);
    if (mem == NULL) {
      free_chunk(out);
      goto nomem;
    }
    out->mem = mem;
    out->cap = cap;
  }
  int got = BIO_read(t->wbio, out->mem, (int)n);
  out->buf = uv_buf_init(out->mem, got > 0 ? (unsigned int)got : 0);
  out->data = NULL;
  out->next = NULL;
  t->lent++;
  return out;
nomem:
  if (err) *err = UV_ENOMEM;
  return NULL;
}

void pp__tls_output_done(pp__tls_out_t *out) {
  pp__tls_t *t = out->tls;
  t->lent--;
  if (t->freed || t->nspare >= PP__TLS_SPARES || out->cap > PP__TLS_SPARE_MAX) {
    free_chunk(out);
  } else {
    out->next = t->spare;
    t->spare = out;
    t->nspare++;
  }
  if (t->freed && t->lent == 0) free(t);
}

const char *pp__tls_reason(const pp__tls_t *t) {
  return t->reason;
}

pp__tls_fail_t pp__tls_failure(const pp__tls_t *t) {
  return t->fail;
}

const char *pp__tls_alpn(const pp__tls_t *t, size_t *len) {
  if (len) *len = t->alpn_len;
  return t->alpn_len ? t->alpn : NULL;
}

bool pp__tls_resumed(const pp__tls_t *t) {
  return t->resumed;
}

const char *pp__tls_version(const pp__tls_t *t) {
  return t->ssl ? SSL_get_version(t->ssl) : "";
}

/* OpenSSL has a new session for us (TLS 1.2: at the end of the handshake; TLS 1.3: a ticket
 * that arrived after it, read by pp__tls_read). Returns 1 when the cache kept it. */
static int on_new_session(SSL *ssl, SSL_SESSION *sess) {
  pp__tls_t *t = SSL_get_app_data(ssl);
  if (t == NULL || t->cache == NULL || t->failed || !SSL_SESSION_is_resumable(sess)) return 0;
  cache_put(t->cache, sess);
  return 1;
}

static int on_client_cert(SSL *ssl, X509 **x509, EVP_PKEY **pkey) {
  pp__tls_t *t = SSL_get_app_data(ssl);
  if (t) t->cert_asked = true;
  return 0; /* none: the handshake goes on without one */
}

/* ---- the pool and its peers ------------------------------------------------------------ */

/* A peer's TLS: its context (the pool's, shared, unless its own options change a setting that
 * lives in the context), the name its certificates must carry, and its sessions. */
struct pp__tls_peer_s {
  pp__link_t link; /* pool->tls->peers */
  pp__tls_ctx_t *ctx;
  char *server_name; /* NULL: the host of the peer's address */
  pp__tls_cache_t *cache;
  bool refused; /* its own options were refused: it gets no conn at all (fail closed) */
};

struct pp__tls_pool_s {
  pp_tls_options_t *opts; /* the pool's (a copy), or NULL */
  pp__tls_ctx_t *ctx;     /* made from opts, or NULL */
  pp__link_t peers;
};

int pp__tls_pool_init(pp_pool_t *pool, const pp_tls_options_t *opts, const char **why) {
  pool->tls = NULL;
  pool->opts.tls = NULL;
  if (opts == NULL) return 0;
  struct pp__tls_pool_s *tp = tls_malloc(sizeof(*tp));
  if (tp == NULL) return UV_ENOMEM;
  memset(tp, 0, sizeof(*tp));
  pp__list_init(&tp->peers);
  int err = pp__tls_ctx_new(opts, &tp->ctx, why);
  if (err == 0 && (tp->opts = options_dup(opts)) == NULL) err = UV_ENOMEM;
  if (err) {
    pp__tls_ctx_unref(tp->ctx);
    free(tp);
    return err;
  }
  pool->tls = tp;
  pool->opts.tls = tp->opts; /* the caller's copy may go now */
  return 0;
}

static void peer_tls_free(struct pp__tls_peer_s *pt) {
  pp__list_remove(&pt->link);
  pp__tls_ctx_unref(pt->ctx);
  pp__tls_cache_free(pt->cache);
  free(pt->server_name);
  free(pt);
}

void pp__tls_peer_free(pp_peer_t *peer) {
  if (peer->tls == NULL) return;
  peer_tls_free(peer->tls);
  peer->tls = NULL;
}

void pp__tls_pool_free(pp_pool_t *pool) {
  struct pp__tls_pool_s *tp = pool->tls;
  if (tp == NULL) return;
  while (!pp__list_empty(&tp->peers))
    peer_tls_free(PP__CONTAINER(tp->peers.next, struct pp__tls_peer_s, link));
  pp__tls_ctx_unref(tp->ctx);
  free(tp->opts);
  free(tp);
  pool->tls = NULL;
}

static int pool_tls_get(pp_pool_t *pool, struct pp__tls_pool_s **out) {
  if (pool->tls == NULL) {
    struct pp__tls_pool_s *tp = tls_malloc(sizeof(*tp));
    if (tp == NULL) return UV_ENOMEM;
    memset(tp, 0, sizeof(*tp));
    pp__list_init(&tp->peers);
    pool->tls = tp;
  }
  *out = pool->tls;
  return 0;
}

static char *str_dup(const char *s) {
  if (s == NULL) return NULL;
  size_t n = strlen(s) + 1;
  char *c = tls_malloc(n);
  return c ? memcpy(c, s, n) : NULL;
}

/* Give `peer` a TLS entry with `ctx` (a new reference is taken) and `server_name`. */
static int peer_tls_set(pp_peer_t *peer, pp__tls_ctx_t *ctx, const char *server_name) {
  struct pp__tls_pool_s *tp;
  int err = pool_tls_get(peer->pool, &tp);
  if (err) return err;
  struct pp__tls_peer_s *pt = peer->tls;
  char *name = NULL;
  if (server_name && (name = str_dup(server_name)) == NULL) return UV_ENOMEM;
  if (pt == NULL) {
    pt = tls_malloc(sizeof(*pt));
    pp__tls_cache_t *cache = pp__tls_cache_new(&peer->pool->stats);
    /* as many sessions as the peer may have conns dialling at once */
    if (cache) pp__tls_cache_set_capacity(cache, peer->pool->opts.max_per_peer);
    if (pt == NULL || cache == NULL) {
      free(pt);
      pp__tls_cache_free(cache);
      free(name);
      return UV_ENOMEM;
    }
    memset(pt, 0, sizeof(*pt));
    pt->cache = cache;
    pp__list_push(&tp->peers, &pt->link);
    peer->tls = pt;
  } else {
    pp__tls_cache_clear(pt->cache); /* made under other settings */
  }
  if (ctx) pp__tls_ctx_ref(ctx);
  pp__tls_ctx_unref(pt->ctx);
  pt->ctx = ctx;
  pt->refused = false;
  free(pt->server_name);
  pt->server_name = name;
  return 0;
}

static int peer_set_tls(pp_peer_t *peer, const pp_tls_options_t *tls, const char **why);

/* Options that were refused leave the peer failing closed: a caller that goes on without
 * checking must not get conns in the clear (or under the pool's settings). */
int pp_peer_set_tls(pp_peer_t *peer, const pp_tls_options_t *tls, const char **why) {
  const char *w = NULL;
  int err = peer_set_tls(peer, tls, &w);
  if (why) *why = w;
  if (err == 0 || peer == NULL || tls == NULL || err == PP_ECLOSED) return err;
  if (peer_tls_set(peer, NULL, NULL) == 0) {
    pp__tls_cache_t *c = peer->tls->cache;
    peer->tls->refused = true;
    snprintf(c->reason, sizeof(c->reason), "%s: the peer's TLS options were refused (%s)",
             pp__tls_fail_name(PP__TLS_FAIL_OTHER), w ? w : pp_strerror(err));
  }
  return err;
}

static int peer_set_tls(pp_peer_t *peer, const pp_tls_options_t *tls, const char **why) {
  if (why) *why = NULL;
  if (peer == NULL) {
    if (why) *why = "peer must not be NULL";
    return PP_EINVAL;
  }
  pp_pool_t *pool = peer->pool;
  if (pool->closing) return PP_ECLOSED;
  const pp_tls_options_t *pool_opts = pool->tls ? pool->tls->opts : NULL;
  pp__tls_ctx_t *pool_ctx = pool->tls ? pool->tls->ctx : NULL;
  if (tls == NULL) {
    /* Back to the pool's settings (plain TCP if the pool has none). */
    if (peer->tls == NULL) return 0;
    return peer_tls_set(peer, pool_ctx, pool_opts ? pool_opts->server_name : NULL);
  }
  int err = pp__tls_options_check(tls, why);
  if (err) return err;
  pp_tls_options_t merged = options_merge(pool_opts, tls);
  if (pool_ctx && same_context(&merged, pool_opts))
    return peer_tls_set(peer, pool_ctx, merged.server_name);
  pp__tls_ctx_t *ctx;
  err = pp__tls_ctx_new(&merged, &ctx, why);
  if (err) return err;
  err = peer_tls_set(peer, ctx, merged.server_name);
  pp__tls_ctx_unref(ctx);
  return err;
}

pp__tls_cache_t *pp__tls_peer_cache(const pp_peer_t *peer) {
  return peer->tls ? peer->tls->cache : NULL;
}

const char *pp_peer_tls_reason(const pp_peer_t *peer) {
  const struct pp__tls_peer_s *pt = peer->tls;
  return pt && pt->cache->reason[0] ? pt->cache->reason : NULL;
}

/* The host part of a canonical TCP address: "[::1]:6379" -> "::1", "10.0.0.5:6380" ->
 * "10.0.0.5", "redis.internal:6379" -> "redis.internal". */
static bool host_of(const char *addr, char *out, size_t n) {
  const char *start = addr, *end;
  if (*addr == '[') {
    start = addr + 1;
    end = strchr(start, ']');
  } else {
    end = strrchr(addr, ':');
  }
  if (end == NULL || end == start || (size_t)(end - start) >= n) return false;
  memcpy(out, start, (size_t)(end - start));
  out[end - start] = '\0';
  return true;
}

int pp__tls_conn_new(pp_peer_t *peer, pp__tls_t **out) {
  *out = NULL;
  pp_pool_t *pool = peer->pool;
  if (peer->tls == NULL) {
    if (pool->tls == NULL || pool->tls->ctx == NULL) return 0;
    int err = peer_tls_set(peer, pool->tls->ctx, pool->tls->opts->server_name);
    if (err) return err;
  }
  struct pp__tls_peer_s *pt = peer->tls;
  if (pt->refused) {
    pt->cache->counts.failed++;
    pool->stats.tls_failed++;
    return PP_ETLS;
  }
  if (pt->ctx == NULL) return 0;
  char host[256];
  const char *name = pt->server_name;
  if (name == NULL && !peer->is_pipe && host_of(peer->addr, host, sizeof(host))) name = host;
  if (name == NULL && pt->ctx->verify) {
    pp__tls_cache_t *c = pt->cache;
    snprintf(c->reason, sizeof(c->reason), "%s: %s", pp__tls_fail_name(PP__TLS_FAIL_OTHER),
             "no host name to verify the certificate against (a unix socket peer needs "
             "tls.server_name, or tls.verify = 0)");
    c->counts.failed++;
    pool->stats.tls_failed++;
    return PP_ETLS;
  }
  return pp__tls_new(pt->ctx, pt->cache, name, out);
}
