/*
 * The plugin loader, the only file that uses libltdl (the evs_host table plugins call is in
 * host.c). The descriptor is checked before any plugin code runs; a rejected plugin is
 * logged with one line saying which file, what was wanted, what was found and what to do, and
 * the host carries on without it.
 */
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <jansson.h>
#include <ltdl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "host.h"
#include "log.h"
#include "metrics.h"
#include "plugin.h"
#include "route.h"
#include "tls.h"
#include "worker.h"

/* The size of the ABI 1.0 descriptor: anything shorter is truncated. */
#define DESCRIPTOR_1_0_SIZE (offsetof(evs_plugin_descriptor, fini) + sizeof(void (*)(void *)))

static int ltdl_ready;
/* Rejections are logged once per node: by the master when it validates (descriptor, config) and
 * by the first worker of a generation for init failures. Other scans stay quiet. */
static int log_rejections = 1;

static int cmp_names(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static void reject(evs__plugin_rec *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void reject(evs__plugin_rec *r, const char *fmt, ...) {
  char msg[768];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  free(r->reason);
  r->reason = strdup(msg);
  r->loaded = 0;
  if (log_rejections)
    evs__log(EVS_LOG_ERROR, "EVS-1401", r->name, NULL, "plugin %s rejected: %s", r->file, msg);
}

/* Open one file and check its descriptor. On success r->desc and r->handle are set. */
static void check_one(const evs__settings *s, evs__plugin_rec *r) {
  lt_dlhandle h = lt_dlopen(r->file);
  if (!h) {
    /* libltdl reports most dlopen failures as "file not found"; dlerror() says why. */
    const char *why = lt_dlerror();
    void *dh = dlopen(r->file, RTLD_NOW | RTLD_LOCAL);
    if (dh) dlclose(dh);
    else why = dlerror();
    reject(r, "cannot be opened (%s); wanted an ELF shared object built against evs_plugin.h; "
              "rebuild it or remove it from %s", why, s->plugins_dir);
    return;
  }
  r->handle = h;
  const evs_plugin_descriptor *d = lt_dlsym(h, EVS_PLUGIN_DESCRIPTOR_SYMBOL);
  if (!d) {
    reject(r, "no '%s' symbol; wanted a plugin declared with EVS_PLUGIN_DEFINE; "
              "this file is not an evserver plugin: remove it from %s",
           EVS_PLUGIN_DESCRIPTOR_SYMBOL, s->plugins_dir);
    return;
  }
  if (d->magic != EVS_PLUGIN_MAGIC) {
    reject(r, "wrong magic: wanted 0x%08x, found 0x%08x; the file is not an evserver plugin or "
              "is corrupt: rebuild it", EVS_PLUGIN_MAGIC, d->magic);
    return;
  }
  if (d->abi_major != EVS_ABI_MAJOR) {
    reject(r, "ABI major mismatch: wanted %d, found %d; rebuild the plugin against this "
              "evserver's evs_plugin.h (ABI %d.%d)", EVS_ABI_MAJOR, d->abi_major,
           EVS_ABI_MAJOR, EVS_ABI_MINOR);
    return;
  }
  if (d->abi_minor > EVS_ABI_MINOR) {
    reject(r, "built for a newer ABI: wanted minor <= %d, found %d.%d; upgrade evserver or "
              "rebuild the plugin against ABI %d.%d", EVS_ABI_MINOR, d->abi_major, d->abi_minor,
           EVS_ABI_MAJOR, EVS_ABI_MINOR);
    return;
  }
  if (d->size < DESCRIPTOR_1_0_SIZE) {
    reject(r, "truncated descriptor: wanted at least %zu bytes, found %u; rebuild the plugin "
              "with EVS_PLUGIN_DEFINE", (size_t)DESCRIPTOR_1_0_SIZE, d->size);
    return;
  }
  if (!d->name || !d->name[0] || strspn(d->name, "abcdefghijklmnopqrstuvwxyz0123456789-") != strlen(d->name) ||
      strlen(d->name) > 48) {
    reject(r, "invalid name: wanted [a-z0-9-]{1,48}; fix the plugin's descriptor");
    return;
  }
  if (!d->init) {
    reject(r, "descriptor has no init function; fix the plugin's descriptor");
    return;
  }
  free(r->name);
  r->name = strdup(d->name);
  r->desc = d;
  r->loaded = 1;
}

int evs__plugins_scan(const evs__settings *s, evs__plugin_rec **ret, size_t *ret_n) {
  if (!ltdl_ready) {
    if (lt_dlinit() != 0) return -1;
    ltdl_ready = 1;
  }
  DIR *dir = opendir(s->plugins_dir);
  if (!dir) {
    if (errno == ENOENT) {
      EVS_LOG_WARN("EVS-1402", "plugins directory %s does not exist: no plugins loaded", s->plugins_dir);
      *ret = NULL;
      *ret_n = 0;
      return 0;
    }
    EVS_LOG_ERR("EVS-1403", "cannot read plugins directory %s: %s", s->plugins_dir, strerror(errno));
    return -1;
  }
  char **names = NULL;
  size_t n = 0, cap = 0;
  struct dirent *de;
  while ((de = readdir(dir)) != NULL) {
    size_t l = strlen(de->d_name);
    if (l < 4 || strcmp(de->d_name + l - 3, ".so") != 0 || de->d_name[0] == '.') continue;
    if (n == cap) {
      cap = cap ? cap * 2 : 8;
      char **nn = realloc(names, cap * sizeof *names);
      if (!nn) break;
      names = nn;
    }
    names[n++] = strdup(de->d_name);
  }
  closedir(dir);
  if (n) qsort(names, n, sizeof *names, cmp_names);
  evs__plugin_rec *recs = calloc(n ? n : 1, sizeof *recs);
  if (!recs) return -1;
  for (size_t i = 0; i < n; i++) {
    evs__plugin_rec *r = &recs[i];
    size_t fl = strlen(s->plugins_dir) + strlen(names[i]) + 2;
    r->file = malloc(fl);
    snprintf(r->file, fl, "%s/%s", s->plugins_dir, names[i]);
    r->name = strndup(names[i], strlen(names[i]) - 3);
    free(names[i]);
    check_one(s, r);
    if (!r->loaded) continue;
    for (size_t j = 0; j < i; j++) {
      if (recs[j].loaded && strcmp(recs[j].name, r->name) == 0) {
        reject(r, "a plugin named '%s' is already loaded from %s; remove one of them", r->name,
               recs[j].file);
        break;
      }
    }
    if (!r->loaded) continue;
    for (size_t k = 0; k < s->nplugins; k++)
      if (strcmp(s->plugins[k].name, r->name) == 0) r->section = s->plugins[k].section;
    char err[1024];
    if (r->section && evs__conf_validate_section(s->conf, r->section, r->desc->config_items, err,
                                                 sizeof err) < 0) {
      reject(r, "configuration: %s", err);
      continue;
    }
    if (!r->section && r->desc->config_items) {
      /* No section: required items make that an error. */
      for (const evs_config_item *it = r->desc->config_items; it->key; it++) {
        if ((it->flags & EVS_CONFIG_REQUIRED) && !it->default_value) {
          reject(r, "configuration: [plugin \"%s\"] is missing and key '%s' is required; add "
                    "the section to %s", r->name, it->key, s->conf->path);
          break;
        }
      }
    }
  }
  free(names);
  *ret = recs;
  *ret_n = n;
  return (int)n;
}

int evs__plugins_check_sections(const evs__settings *s, const evs__plugin_rec *p, size_t n,
                                char *err, size_t errlen) {
  for (size_t k = 0; k < s->nplugins; k++) {
    int found = 0;
    for (size_t i = 0; i < n; i++)
      if (p[i].name && strcmp(p[i].name, s->plugins[k].name) == 0) found = 1;
    if (!found) {
      snprintf(err, errlen, "%s:%u: [plugin \"%s\"]: no loadable plugin of that name in %s",
               s->conf->path, s->plugins[k].section->line, s->plugins[k].name, s->plugins_dir);
      return -1;
    }
  }
  for (size_t i = 0; i < n; i++) {
    if (!p[i].loaded && p[i].reason) {
      snprintf(err, errlen, "plugin %s rejected: %s", p[i].file, p[i].reason);
      return -1;
    }
  }
  return 0;
}

void evs__plugins_free(evs__plugin_rec *p, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (p[i].handle) lt_dlclose(p[i].handle);
    evs__host_forget(&p[i]);
    free(p[i].file);
    free(p[i].name);
    free(p[i].reason);
  }
  free(p);
}

/* ---- load into a worker ------------------------------------------------------------------ */

int evs__plugins_load(evs__worker *w) {
  log_rejections = 0; /* the master already logged descriptor and configuration rejections */
  int rc = evs__plugins_scan(w->settings, &w->plugins, &w->nplugins);
  log_rejections = w->first_of_generation;
  if (rc < 0) return -1;
  for (size_t i = 0; i < w->nplugins; i++) {
    evs__plugin_rec *r = &w->plugins[i];
    if (!r->loaded) continue;
    size_t hooks_before = w->nhooks;
    r->in_init = 1;
    int irc = r->desc->init(evs__host_table(), (evs_plugin *)r, &r->state);
    r->in_init = 0;
    if (irc != 0) {
      w->nhooks = hooks_before; /* registrations of a failed init are void */
      evs__route_drop_plugin(w->routes, &w->nroutes, r);
      evs__tls_provider_drop(r);
      evs__host_forget(r);
      w->plugin_init_failures++;
      reject(r, "init failed (%d: %s); see the plugin's log lines above and its README", irc,
             irc < 0 ? strerror(-irc) : "error");
      continue;
    }
    evs__log(EVS_LOG_INFO, "EVS-1404", r->name, NULL, "plugin %s %s loaded from %s", r->name,
             r->desc->version ? r->desc->version : "?", r->file);
  }
  return 0;
}

void evs__plugins_unload(evs__worker *w) {
  for (size_t i = w->nplugins; i-- > 0;) {
    evs__plugin_rec *r = &w->plugins[i];
    if (r->loaded && r->desc->fini) r->desc->fini(r->state);
    r->loaded = 0;
  }
  evs__host_done();
  free(w->hooks);
  w->hooks = NULL;
  w->nhooks = 0;
  evs__route_table_free(&w->routes, &w->nroutes);
  evs__plugins_free(w->plugins, w->nplugins);
  w->plugins = NULL;
  w->nplugins = 0;
}
