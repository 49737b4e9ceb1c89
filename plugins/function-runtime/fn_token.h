/*
 * fn_token: the strings a Function Run request carries that this plugin parses itself: the
 * Authorization header (Basic appId:apiKey, RunToken <t>, Bearer <t>), run tokens, and the
 * payload digest a run token is bound to. No plugin state, no logging; fuzzed
 * (fuzz/fuzz_fn_token.c).
 *
 * A run token is "rt_" followed by 43 base64url characters (32 random bytes). The store never
 * sees it: records are keyed by the hex SHA-256 of the token's text.
 */
#ifndef EVS_FN_TOKEN_H
#define EVS_FN_TOKEN_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#define FN_TOKEN_LEN 46 /* "rt_" + 43 */
#define FN_APP_MAX 64
#define FN_KEY_MAX 512

typedef enum fn_auth_kind { FN_AUTH_NONE = 0, FN_AUTH_BASIC, FN_AUTH_TOKEN } fn_auth_kind;

typedef struct fn_auth {
  fn_auth_kind kind;
  char app_id[FN_APP_MAX + 1];  /* BASIC */
  char key[FN_KEY_MAX + 1];     /* BASIC: the API key (secret: wipe it) */
  char token[FN_TOKEN_LEN + 1]; /* TOKEN: RunToken or Bearer */
} fn_auth;

/* Parses an Authorization header value (not NUL-terminated). Returns 0 with *ret filled, or
 * -EINVAL (malformed: unknown scheme, bad base64, no ':', a token of the wrong shape, too long). A
 * token of the wrong shape is -EBADMSG so the caller can answer run-token-validation-error. */
int evs__fn_auth_parse(const char *value, size_t len, fn_auth *ret);

/* 1 if s[0..len) has the shape of a run token. */
int evs__fn_token_valid(const char *s, size_t len);

/* A new random token into out (FN_TOKEN_LEN + 1 bytes). 0 or -EIO. */
int evs__fn_token_new(char *out);

/* Hex SHA-256 (64 characters + NUL) of the token's text: its store key. */
void evs__fn_token_digest(const char *token, char out[65]);

/* Hex SHA-256 of the payload's canonical JSON (keys sorted, compact, numbers as jansson prints
 * them): what a run token is bound to. 0 or -ENOMEM. */
int evs__fn_payload_digest(const json_t *payload, char out[65]);



/* Standard base64 (padding optional, no whitespace) of s[0..n) into a malloc'd buffer. 0 with
 * *ret and *ret_len, -EINVAL or -ENOMEM. */
int evs__fn_b64_decode(const char *s, size_t n, uint8_t **ret, size_t *ret_len);

#endif
