/*
 * JSON-lines logger (see log.h). One write(2) per line so lines from several worker processes
 * sharing stderr never interleave.
 */
#include "log.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static evs_log_level log_level = EVS_LOG_INFO;
static const char *log_role = "evserver";
static const char *const level_names[] = {"error", "warn", "info", "debug"};

void evs__log_set_level(evs_log_level level) { log_level = level; }
void evs__log_set_role(const char *role) { log_role = role; }
int evs__log_enabled(evs_log_level level) { return level <= log_level; }

int evs__log_level_from_string(const char *s, evs_log_level *ret) {
  for (int i = 0; i < 4; i++) {
    if (strcasecmp(s, level_names[i]) == 0) {
      *ret = (evs_log_level)i;
      return 0;
    }
  }
  return -1;
}

size_t evs__json_escape(char *out, size_t cap, const char *s, size_t len) {
  static const char hex[] = "0123456789abcdef";
  size_t o = 0;
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
    char esc[7];
    size_t n;
    if (c == '"' || c == '\\') {
      esc[0] = '\\'; esc[1] = (char)c; n = 2;
    } else if (c == '\n') {
      esc[0] = '\\'; esc[1] = 'n'; n = 2;
    } else if (c < 0x20 || c == 0x7f) {
      memcpy(esc, "\\u00", 4); esc[4] = hex[c >> 4]; esc[5] = hex[c & 15]; n = 6;
    } else {
      esc[0] = (char)c; n = 1;
    }
    if (o + n >= cap) break;
    memcpy(out + o, esc, n);
    o += n;
  }
  if (cap) out[o < cap ? o : cap - 1] = '\0';
  return o;
}

void evs__logv(evs_log_level level, const char *msg_id, const char *plugin, const char *request_id,
               const char *fmt, va_list ap) {
  if (level > log_level) return;
  char msg[1024], line[3072];
  int m = vsnprintf(msg, sizeof msg, fmt, ap);
  if (m < 0) return;
  size_t mlen = (size_t)m < sizeof msg ? (size_t)m : sizeof msg - 1;

  struct timeval tv;
  gettimeofday(&tv, NULL);
  struct tm tm;
  gmtime_r(&tv.tv_sec, &tm);
  size_t o = (size_t)snprintf(line, sizeof line,
                              "{\"ts\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03dZ\",\"level\":\"%s\","
                              "\"id\":\"%s\",\"role\":\"%s\",\"pid\":%d",
                              tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                              tm.tm_sec, (int)(tv.tv_usec / 1000), level_names[level], msg_id,
                              log_role, (int)getpid());
  if (plugin) {
    o += (size_t)snprintf(line + o, sizeof line - o, ",\"plugin\":\"");
    o += evs__json_escape(line + o, sizeof line - o, plugin, strlen(plugin));
    o += (size_t)snprintf(line + o, sizeof line - o, "\"");
  }
  if (request_id) o += (size_t)snprintf(line + o, sizeof line - o, ",\"request_id\":\"%s\"", request_id);
  o += (size_t)snprintf(line + o, sizeof line - o, ",\"msg\":\"");
  o += evs__json_escape(line + o, sizeof line - o - 4, msg, mlen);
  o += (size_t)snprintf(line + o, sizeof line - o, "\"}\n");
  if (o > sizeof line) o = sizeof line;
  ssize_t w = write(STDERR_FILENO, line, o);
  (void)w;
}

void evs__log(evs_log_level level, const char *msg_id, const char *plugin, const char *request_id,
              const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  evs__logv(level, msg_id, plugin, request_id, fmt, ap);
  va_end(ap);
}
