/*
 * structure.h: the shape of a request body sample for request structures (`evctl relay
 * structures`): its field paths, never its values. JSON and XML give JSONPath-style paths as the
 * relay's selectors address them (arrays as [*]; for XML, $ is the root element and child
 * elements are members), form and multipart bodies their field names. At most
 * RELAY_STRUCTURE_MAX_FIELDS paths, nesting beyond 32 levels ignored.
 */
#ifndef RELAY_STRUCTURE_H
#define RELAY_STRUCTURE_H

#include <stddef.h>

#include <jansson.h>

#define RELAY_STRUCTURE_MAX_FIELDS 200

/* kind: "json", "xml", "form" or "multipart" (anything else: no fields). Returns a new array of
 * distinct path strings in first-seen order (empty when the sample does not parse), or NULL
 * when out of memory. */
json_t *relay_structure_fields(const char *kind, const char *sample, size_t len);

#endif
