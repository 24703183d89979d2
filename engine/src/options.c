/* Pool options: defaults and validation. Every message names its field. */
#include "internal.h"
#include "dns.h"
#include "tls.h"

void pp_options_init(pp_options_t *o) {
#define DEFAULT(type, name, dflt, min, max, unit, rule, doc) o->name = dflt;
  PP_OPTIONS_MAP(DEFAULT)
#undef DEFAULT
  o->tls = NULL;
  o->dns_servers = NULL;
  o->framing = NULL;
}

int pp_options_validate(const pp_options_t *o, const char **why) {
  if (why) *why = NULL;
  if (o == NULL) PP__INVALID("options must not be NULL");
#define RANGE(type, name, dflt, min, max, unit, rule, doc) \
  if (o->name < (min) || o->name > (max)) PP__INVALID(#name " must be " rule);
  PP_OPTIONS_MAP(RANGE)
#undef RANGE
  if (o->eject_max < o->eject_time) PP__INVALID("eject_max must be a number of ms >= eject_time");
  if (o->dns_ttl_max < o->dns_ttl_min)
    PP__INVALID("dns_ttl_max must be a number of ms >= dns_ttl_min");
  if (o->min_idle > o->max_per_peer) PP__INVALID("min_idle must be an integer in 0..max_per_peer");
  if (o->dns_servers && pp__dns_servers_check(o->dns_servers, why) != 0) return PP_EINVAL;
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
