/*
 * structure.c: field paths of a request body sample (structure.h).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem */
#endif
#include "structure.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libxml/xmlreader.h>

/* Appends s[0..n) to out unless it is there already (or holds a NUL byte or invalid UTF-8,
 * which jansson refuses). */
static void add_unique(json_t *out, const char *s, size_t n) {
  size_t i;
  if (memchr(s, 0, n)) return;
  json_t *x;
  json_array_foreach(out, i, x) {
    if (json_string_length(x) == n && memcmp(json_string_value(x), s, n) == 0) return;
  }
  json_array_append_new(out, json_stringn(s, n));
}

static int simple_name(const char *k) {
  if (!*k) return 0;
  for (const char *p = k; *p; p++)
    if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
          *p == '_' || *p == '-'))
      return 0;
  return 1;
}

static void walk_paths(json_t *v, char *path, size_t plen, size_t cap, json_t *out, int depth) {
  if (json_array_size(out) >= RELAY_STRUCTURE_MAX_FIELDS || depth > 32) return;
  if (json_is_object(v)) {
    const char *k;
    json_t *c;
    json_object_foreach(v, k, c) {
      int w = simple_name(k) ? snprintf(path + plen, cap - plen, ".%s", k)
                             : snprintf(path + plen, cap - plen, "['%s']", k);
      if (w < 0 || (size_t)w >= cap - plen) continue;
      walk_paths(c, path, plen + (size_t)w, cap, out, depth + 1);
    }
  } else if (json_is_array(v)) {
    int w = snprintf(path + plen, cap - plen, "[*]");
    if (w < 0 || (size_t)w >= cap - plen) return;
    size_t i;
    json_t *c;
    json_array_foreach(v, i, c) walk_paths(c, path, plen + (size_t)w, cap, out, depth + 1);
  } else {
    add_unique(out, path, plen);
  }
}

static void form_names(const char *b, size_t n, json_t *out) {
  size_t i = 0;
  while (i < n && json_array_size(out) < RELAY_STRUCTURE_MAX_FIELDS) {
    size_t j = i;
    while (j < n && b[j] != '&' && b[j] != '=') j++;
    if (j > i) {
      add_unique(out, b + i, j - i);
    }
    while (j < n && b[j] != '&') j++;
    i = j + 1;
  }
}

/* The field paths of an XML sample, as the XML rewriter selects them ($ is the root element,
 * child elements are members, text-only elements are leaves). Parsed with libxml2's reader
 * without network, DTD loading or entity substitution; a sample with a DOCTYPE is skipped
 * (the relay refuses those where it encrypts). */
static void xml_paths(const char *b, size_t n, json_t *out) {
  if (memmem(b, n, "<!DOCTYPE", 9) || memmem(b, n, "<!ENTITY", 8) || n > INT_MAX) return;
  xmlTextReaderPtr r = xmlReaderForMemory(b, (int)n, NULL, "UTF-8", XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
  if (!r) return;
  enum { MAXD = 32 };
  size_t len[MAXD + 1] = {0}; /* path length at each depth */
  unsigned char text[MAXD + 1] = {0}, child[MAXD + 1] = {0};
  char path[512] = "$";
  len[0] = 1;
  int top = -1; /* depth of the innermost open element */
  while (xmlTextReaderRead(r) == 1 && json_array_size(out) < RELAY_STRUCTURE_MAX_FIELDS) {
    int type = xmlTextReaderNodeType(r), d = xmlTextReaderDepth(r);
    if (type == XML_READER_TYPE_ELEMENT) {
      if (d > MAXD) continue;
      if (d > 0) child[d - 1] = 1;
      top = d;
      text[d] = child[d] = 0;
      if (d > 0) {
        const char *name = (const char *)xmlTextReaderConstName(r);
        size_t pl = len[d - 1];
        int w = simple_name(name) ? snprintf(path + pl, sizeof path - pl, ".%s", name)
                                  : snprintf(path + pl, sizeof path - pl, "['%s']", name);
        len[d] = w < 0 || (size_t)w >= sizeof path - pl ? pl : pl + (size_t)w;
      }
      if (xmlTextReaderIsEmptyElement(r)) top = d - 1;
    } else if ((type == XML_READER_TYPE_TEXT || type == XML_READER_TYPE_CDATA) && top >= 0 &&
               top <= MAXD) {
      text[top] = 1;
    } else if (type == XML_READER_TYPE_END_ELEMENT && d <= MAXD) {
      if (text[d] && !child[d]) add_unique(out, path, len[d]);
      top = d - 1;
    }
  }
  xmlFreeTextReader(r);
}

static void multipart_names(const char *b, size_t n, json_t *out) {
  static const char key[] = "name=\"";
  for (size_t i = 0; i + sizeof key < n && json_array_size(out) < RELAY_STRUCTURE_MAX_FIELDS; i++) {
    if (memcmp(b + i, key, sizeof key - 1) != 0 || (i > 0 && b[i - 1] != ' ' && b[i - 1] != ';'))
      continue;
    size_t s = i + sizeof key - 1, j = s;
    while (j < n && b[j] != '"' && b[j] != '\r' && b[j] != '\n') j++;
    if (j >= n || b[j] != '"') continue;
    add_unique(out, b + s, j - s);
  }
}

json_t *relay_structure_fields(const char *kind, const char *sample, size_t len) {
  json_t *fields = json_array();
  if (!fields || !kind || !sample) return fields;
  if (strcmp(kind, "json") == 0) {
    json_t *doc = json_loadb(sample, len, JSON_DECODE_ANY, NULL);
    char path[512] = "$";
    if (doc) walk_paths(doc, path, 1, sizeof path, fields, 0);
    json_decref(doc);
  } else if (strcmp(kind, "form") == 0) {
    form_names(sample, len, fields);
  } else if (strcmp(kind, "multipart") == 0) {
    multipart_names(sample, len, fields);
  } else if (strcmp(kind, "xml") == 0) {
    xml_paths(sample, len, fields);
  }
  return fields;
}
