/*
 * libFuzzer target for core/conf.c: the evserver.conf parser, validation of every section
 * against the host's item tables (plugin sections against a table with every type and flag),
 * the whole settings loader, and the typed value parsers. Besides memory errors it checks one
 * invariant: the value of [store] dsn, a secret, never appears in an error message.
 *
 *   clang -g -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -Icore -Iabi \
 *     core/conf.c fuzz/fuzz_conf.c -o /tmp/fuzz_conf && /tmp/fuzz_conf etc/
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "conf.h"

#define FUZZ_PATH "/fuzz/evserver.conf"

static const evs_config_item plugin_items[] = {
    {"s", EVS_CONFIG_STRING, "x", 0, 0, 0, "string"},
    {"i", EVS_CONFIG_INT, "1", -5, 5, 0, "int"},
    {"b", EVS_CONFIG_BOOL, "on", 0, 0, 0, "bool"},
    {"d", EVS_CONFIG_DURATION, "1s", 1, 60000, 0, "duration"},
    {"z", EVS_CONFIG_SIZE, NULL, 0, 0, 0, "size"},
    {"p", EVS_CONFIG_PATH, NULL, 0, 0, 0, "path"},
    {"r", EVS_CONFIG_STRING, NULL, 0, 0, EVS_CONFIG_REQUIRED, "required"},
    {"k", EVS_CONFIG_INT, NULL, 0, 100, EVS_CONFIG_SECRET, "secret"},
    {NULL, 0, NULL, 0, 0, 0, NULL},
};

/* Aborts if a secret value that occurs once in the input shows up in the error. */
static void check_secret(const uint8_t *data, size_t size, const char *value, const char *err) {
  size_t n = strlen(value);
  const uint8_t *first;
  if (n < 8 || !strstr(err, value)) return;
  first = memmem(data, size, value, n);
  if (first && !memmem(first + 1, size - (size_t)(first + 1 - data), value, n))
    __builtin_trap();
}

static void check_conf(const evs__conf *c, const uint8_t *data, size_t size) {
  char err[512];
  for (size_t i = 0; i < c->nsections; i++) {
    const evs__conf_section *sec = &c->sections[i];
    /* A host section's items are its key table's; any other is read as a plugin's. */
    evs_config_item items[64];
    size_t n = 0;
    const evs__conf_section_def *def = NULL;
    for (const evs__conf_section_def *d = evs__conf_host_sections; d->type; d++)
      if (strcmp(d->type, sec->type) == 0 && d->keys) def = d;
    if (def)
      for (const evs__conf_key *k = def->keys; k->item.key && n < 63; k++) items[n++] = k->item;
    else
      for (const evs_config_item *it = plugin_items; it->key && n < 63; it++) items[n++] = *it;
    items[n] = (evs_config_item){NULL, 0, NULL, 0, 0, 0, NULL};
    err[0] = 0;
    if (evs__conf_validate_section(c, sec, items, err, sizeof err) < 0 &&
        strcmp(sec->type, "store") == 0) {
      const evs__conf_entry *dsn = evs__conf_find_entry(sec, "dsn");
      if (dsn) check_secret(data, size, dsn->value, err);
    }
    for (const evs_config_item *it = items; it->key; it++) {
      const char *v = evs__conf_value(sec, items, it->key);
      if (v && it->type == EVS_CONFIG_PATH) free(evs__conf_resolve_path(c, v));
    }
    (void)evs__conf_find_section(c, sec->type, sec->name);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char err[512], small[80], host[64];
  evs__conf *c = NULL;
  evs__settings *s = NULL;
  int64_t n;
  int b, family;
  uint16_t port;

  if (evs__conf_parse_buffer(FUZZ_PATH, (const char *)data, size, &c, err, sizeof err) == 0) {
    check_conf(c, data, size);
    evs__conf_free(c);
  }

  err[0] = 0;
  if (evs__settings_load_buffer(FUZZ_PATH, (const char *)data, size, &s, err, sizeof err) == 0) {
    if (s->nlisteners == 0 || !s->store_path || !s->state_dir) __builtin_trap();
    for (size_t i = 0; i < s->nlisteners; i++)
      if (evs__conf_parse_address(s->listeners[i].address, host, sizeof host, &family, &port))
        __builtin_trap();
    evs__settings_free(s);
  } else if (evs__conf_parse_buffer(FUZZ_PATH, (const char *)data, size, &c, small, 1) == 0) {
    const evs__conf_section *store = evs__conf_find_section(c, "store", NULL);
    const evs__conf_entry *dsn = evs__conf_find_entry(store, "dsn");
    if (dsn) check_secret(data, size, dsn->value, err);
    evs__conf_free(c);
  }

  /* The typed parsers on a short NUL-terminated prefix. */
  size_t k = size < sizeof small - 1 ? size : sizeof small - 1;
  memcpy(small, data, k);
  small[k] = 0;
  (void)evs__conf_parse_int(small, &n);
  (void)evs__conf_parse_bool(small, &b);
  (void)evs__conf_parse_duration_ms(small, &n);
  (void)evs__conf_parse_size(small, &n);
  (void)evs__conf_parse_address(small, host, sizeof host, &family, &port);
  return 0;
}
