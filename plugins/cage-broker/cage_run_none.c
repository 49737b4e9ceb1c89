/*
 * cage_run_none.c: a stand-in for the runner (cage_run.h) while it is not built: every start
 * is refused, so the plugin loads and its control side works, but no cage runs.
 */
#include <errno.h>

#include "cage_run.h"

int cage_run_start(evs_plugin *p, const evs_host *host, const cage_run_spec *spec,
                   const cage_run_callbacks *cb, void *arg, cage_instance **ret_ci) {
  (void)p, (void)host, (void)spec, (void)cb, (void)arg, (void)ret_ci;
  return -ENOTSUP;
}
const char *cage_run_app_socket(const cage_instance *ci) { return (void)ci, NULL; }
const char *cage_run_backend(const cage_instance *ci) { return (void)ci, "none"; }
void cage_api_reply(cage_api_call *call, int status, const char *content_type,
                    const uint8_t *body, size_t len) {
  (void)call, (void)status, (void)content_type, (void)body, (void)len;
}
void cage_run_stop(cage_instance *ci) { (void)ci; }
