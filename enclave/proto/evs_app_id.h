/*
 * evs_app_id.h: the one rule for an app id, for every component that takes one: the enclave
 * process (enclave/proc, which keys apps by it), the enclave plugin (plugins/enclave: the admin
 * and SDK APIs, the store records, node messages) and evctl (core/evctl: `evctl app ...`,
 * `evctl key ...`). Header-only and standard C alone, like evs_enclave_proto.h next to it, so
 * that including it adds no dependency: the enclave still depends on nothing of core/, plugins
 * still link nothing but what abi/ gives them (docs/ARCHITECTURE.md, dependency rules).
 *
 * An app id is "app_" followed by 1 to 27 lower-case letters or digits: what the enclave plugin
 * generates ("app_" and 12 hex digits) and what Evervault's own ids look like, with room. Only
 * these bytes, so that an id is safe in store keys, file names (credentials), URL paths and log
 * lines without escaping, and one id never has two spellings (no case folding anywhere).
 */
#ifndef EVS_APP_ID_H
#define EVS_APP_ID_H

#include <stddef.h>

#define EVS_APP_ID_PREFIX "app_"
#define EVS_APP_ID_MAX_LEN 31 /* bytes, the prefix included; a buffer of 32 holds one with NUL */

/* 1 if id[0..len) is a valid app id (not NUL-terminated; a NUL inside makes it invalid), else
 * 0. id may be NULL (invalid). */
static inline int evs_app_id_valid(const void *id, size_t len) {
  const unsigned char *s = (const unsigned char *)id;
  if (!s || len <= 4 || len > EVS_APP_ID_MAX_LEN) return 0;
  if (s[0] != 'a' || s[1] != 'p' || s[2] != 'p' || s[3] != '_') return 0;
  for (size_t i = 4; i < len; i++)
    if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9'))) return 0;
  return 1;
}

#endif
