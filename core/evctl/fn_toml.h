/*
 * fn_toml: reads function.toml (the Functions product's configuration file) for evctl. A small
 * subset of TOML, which is all function.toml uses: comments, one-level tables ([function]),
 * and key = value with basic "strings" (\" \\ \n \t \uXXXX escapes), 'literal strings',
 * integers, booleans and one-line arrays of strings. Anything else is refused with the line
 * number. Separate from evctl's commands so that a fuzz target (fuzz/fuzz_fn_toml.c) drives it.
 */
#ifndef EVS_EVCTL_FN_TOML_H
#define EVS_EVCTL_FN_TOML_H

#include <stddef.h>

#include <jansson.h>

#define EVCTL_TOML_MAX (64u * 1024) /* bytes of function.toml */

/* Parses text[0..len) and returns 0 with *ret = {"<table>": {key: value}, ...} (keys before any
 * table go under ""), or -1 with "line N: why" in err. */
int evctl_toml_parse(const char *text, size_t len, json_t **ret, char *err, size_t errlen);

#endif
