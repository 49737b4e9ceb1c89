/*
 * error_body: the one builder of the JSON body every error a client sees carries (the
 * documented shape, docs/ARCHITECTURE.md "Errors, logs, secrets"):
 *
 *   {"status":404,"code":"relay-not-found","title":"Not Found","detail":"...","message":"...",
 *    "evervault-error-code":"relay-not-found"}
 *
 * message repeats detail and evervault-error-code repeats code, for the clients that read those.
 * Used by evs__respond_error (server.c; plugins reach it through respond_error) and by the
 * answers given before a request exists (server.c conn_fail). The bytes are exactly what jansson's
 * compact dump of that object gives (tests/unit/test_error_body.c holds the two side by side):
 * '"', '\\' and control characters escaped (\b \f \n \r \t, else \u00XX), everything else as is;
 * a byte sequence that is not UTF-8 becomes U+FFFD, so the body is always valid JSON.
 */
#ifndef EVS_CORE_ERROR_BODY_H
#define EVS_CORE_ERROR_BODY_H

#include <stddef.h>

/* Writes the body for status (its title is evs__status_text(status)), code and detail (NULL
 * reads as "") into buf[0..cap), NUL-terminated when cap > 0, and returns its length without the
 * NUL; like snprintf, a return >= cap means buf holds a cut body and cap must grow. */
size_t evs__error_body(char *buf, size_t cap, int status, const char *code, const char *detail);

#endif
