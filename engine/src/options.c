/* Pool options: defaults and validation. Every message names its field. */
#include "peerpool.h"
#include "tls.h"

void pp_options_init(pp_options_t *o) {
  o->max_per_peer = 4;
  o->max_total = 256;
  o->client_limit = 1;
  o->connect_timeout = 5000;
  o->retries = 3;
  o->acquire_timeout = 30000;
  o->backlog = 1024;
  o->idle_timeout = 300000;
  o->max_lifespan = 3600000;
  o->lifespan_jitter = 10;
  o->handshake_timeout = 5000;
  o->max_address_age = 3 * 3600 * 1000;
  o->ping_after = 0;
  o->keepalive = 0;
  o->target_peers = 0;
  o->maintenance_interval = 1000;
  o->seed_interval = 10000;
  o->eject_after = 5;
  o->eject_time = 10000;
  o->eject_max = 300000;
  o->eject_max_percent = 50;
  o->probe_interval = 500;
  o->keep_idle_bytes = 0;
  o->leak_threshold = 0;
  o->tls = NULL;
  o->framing = NULL;
}

/* One year in ms: no sane timeout is longer, and it keeps deadline arithmetic far from
 * overflow. */
#define PP_MS_MAX ((int64_t)365 * 24 * 3600 * 1000)

#define CHECK(cond, msg)   \
  do {                     \
    if (!(cond)) {         \
      if (why) *why = msg; \
      return PP_EINVAL;    \
    }                      \
  } while (0)

int pp_options_validate(const pp_options_t *o, const char **why) {
  if (why) *why = NULL;
  CHECK(o != NULL, "options must not be NULL");
  CHECK(o->max_per_peer >= 1 && o->max_per_peer <= 1000000,
        "max_per_peer must be an integer in 1..1000000");
  CHECK(o->max_total >= 1 && o->max_total <= 10000000,
        "max_total must be an integer in 1..10000000");
  CHECK(o->client_limit >= 1 && o->client_limit <= 65536,
        "client_limit must be an integer in 1..65536");
  CHECK(o->connect_timeout >= 1 && o->connect_timeout <= PP_MS_MAX,
        "connect_timeout must be a positive number of ms (at most one year)");
  CHECK(o->retries >= 0 && o->retries <= 100, "retries must be an integer in 0..100");
  CHECK(o->acquire_timeout >= 0 && o->acquire_timeout <= PP_MS_MAX,
        "acquire_timeout must be a number of ms >= 0 (0 = no deadline)");
  CHECK(o->backlog >= 0 && o->backlog <= 10000000, "backlog must be an integer in 0..10000000");
  CHECK(o->idle_timeout >= 0 && o->idle_timeout <= PP_MS_MAX,
        "idle_timeout must be a number of ms >= 0 (0 = never)");
  CHECK(o->max_lifespan >= 0 && o->max_lifespan <= PP_MS_MAX,
        "max_lifespan must be a number of ms >= 0 (0 = never)");
  CHECK(o->lifespan_jitter >= 0 && o->lifespan_jitter <= 50,
        "lifespan_jitter must be a percentage in 0..50");
  CHECK(o->handshake_timeout >= 1 && o->handshake_timeout <= PP_MS_MAX,
        "handshake_timeout must be a positive number of ms");
  CHECK(o->max_address_age >= 0 && o->max_address_age <= PP_MS_MAX * 100,
        "max_address_age must be a number of ms >= 0 (0 = no limit)");
  CHECK(o->ping_after >= 0 && o->ping_after <= PP_MS_MAX,
        "ping_after must be a number of ms >= 0 (0 = never)");
  CHECK(o->keepalive >= 0 && o->keepalive <= PP_MS_MAX,
        "keepalive must be a number of ms >= 0 (0 = never)");
  CHECK(o->target_peers >= 0 && o->target_peers <= 1000000,
        "target_peers must be an integer in 0..1000000");
  CHECK(o->maintenance_interval >= 1 && o->maintenance_interval <= PP_MS_MAX,
        "maintenance_interval must be a positive number of ms");
  CHECK(o->seed_interval >= 0 && o->seed_interval <= PP_MS_MAX,
        "seed_interval must be a number of ms >= 0");
  CHECK(o->eject_after >= 0 && o->eject_after <= 1000000,
        "eject_after must be an integer >= 0 (0 = never)");
  CHECK(o->eject_time >= 1 && o->eject_time <= PP_MS_MAX,
        "eject_time must be a positive number of ms");
  CHECK(o->eject_max >= o->eject_time && o->eject_max <= PP_MS_MAX,
        "eject_max must be a number of ms >= eject_time");
  CHECK(o->eject_max_percent >= 0 && o->eject_max_percent <= 100,
        "eject_max_percent must be a percentage in 0..100");
  CHECK(o->probe_interval >= 0 && o->probe_interval <= PP_MS_MAX,
        "probe_interval must be a number of ms >= 0 (0 = no probes)");
  CHECK(o->keep_idle_bytes == 0 || o->keep_idle_bytes == 1, "keep_idle_bytes must be 0 or 1");
  CHECK(o->leak_threshold >= 0 && o->leak_threshold <= PP_MS_MAX,
        "leak_threshold must be a number of ms >= 0 (0 = off)");
  if (o->framing && pp_framing_validate(o->framing, why) != 0) return PP_EINVAL;
  if (o->tls) return pp__tls_options_check(o->tls, why);
  return 0;
}

void pp_acquire_opts_init(pp_acquire_opts_t *opts) {
  opts->busy = PP_BUSY_WAIT;
  opts->timeout = -1;
  opts->priority = 0;
  opts->key = NULL;
}
