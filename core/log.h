/*
 * Structured logging: one JSON object per line on stderr (journald keeps it when run under
 * systemd). Every line has a stable message ID ("EVS-1xxx", like Apache's APLOGNO) so operators
 * can grep and alert on it. Callers never pass secrets, headers or bodies: log paths, codes,
 * counts and names.
 */
#ifndef EVS_CORE_LOG_H
#define EVS_CORE_LOG_H

#include <stdarg.h>

#include "evserver/evs_plugin.h"

void evs__log_set_level(evs_log_level level);
int evs__log_level_from_string(const char *s, evs_log_level *ret);
/* The process role shown in every line: "master", "worker", "evctl". */
void evs__log_set_role(const char *role);
int evs__log_enabled(evs_log_level level);

/* msg_id: stable ID; plugin and request_id may be NULL. */
void evs__logv(evs_log_level level, const char *msg_id, const char *plugin, const char *request_id,
               const char *fmt, va_list ap);
void evs__log(evs_log_level level, const char *msg_id, const char *plugin, const char *request_id,
              const char *fmt, ...) __attribute__((format(printf, 5, 6)));

#define EVS_LOG_ERR(id, ...) evs__log(EVS_LOG_ERROR, id, NULL, NULL, __VA_ARGS__)
#define EVS_LOG_WARN(id, ...) evs__log(EVS_LOG_WARN, id, NULL, NULL, __VA_ARGS__)
#define EVS_LOG_INFO(id, ...) evs__log(EVS_LOG_INFO, id, NULL, NULL, __VA_ARGS__)
#define EVS_LOG_DEBUG(id, ...) evs__log(EVS_LOG_DEBUG, id, NULL, NULL, __VA_ARGS__)

/* Append s as a JSON string body (without quotes) into out[cap]; returns bytes written. */
size_t evs__json_escape(char *out, size_t cap, const char *s, size_t len);

#endif
