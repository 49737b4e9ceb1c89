/*
 * Unit tests for the enclave's key hierarchy (enclave/proc/keys.c) and the ops that use it
 * (ops.c): APP_CREATE then APP_UNLOCK round trips and yields the same public keys; a wrong,
 * malformed or missing token is refused with EVS_EP_E_BAD_TOKEN; a tampered, swapped or
 * foreign sealed blob is refused; the credentials-directory token unlocks with an empty token
 * item; LOCK removes the keys (ENCRYPT / DECRYPT then answer EVS_EP_E_NO_APP); and ENCRYPT /
 * DECRYPT / the file ops round-trip values with their types through the protocol.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "enclave.h"

static evs_ep_item items[EVS_EP_MAX_ITEMS];

static evs_enclave *new_enclave(uint8_t fill) {
  uint8_t key[EVS_SEAL_KEY_LEN];
  memset(key, fill, sizeof key);
  evs_enclave *e = NULL;
  assert_int_equal(evs__enclave_new(key, &e), EVS_EP_OK);
  return e;
}

#define ID(s) (const uint8_t *)(s), strlen(s)

static int unlock(evs_enclave *e, const char *id, const char *token, const evs_app_created *c) {
  uint8_t pub[2][EVS_EC_PUB_LEN];
  int r = evs__app_unlock(e, ID(id), (const uint8_t *)token, strlen(token), c->share1,
                          sizeof c->share1, c->share2, sizeof c->share2, c->wrapped,
                          sizeof c->wrapped, pub);
  if (r == EVS_EP_OK) {
    assert_memory_equal(pub[0], c->pub[0], EVS_EC_PUB_LEN);
    assert_memory_equal(pub[1], c->pub[1], EVS_EC_PUB_LEN);
  }
  return r;
}

static void test_create_unlock(void **state) {
  (void)state;
  evs_enclave *e = new_enclave(1);
  evs_app_created c;
  assert_int_equal(evs__app_create(e, ID("app_one"), &c), EVS_EP_OK);
  assert_int_equal(strlen(c.token), EVS_APP_TOKEN_LEN);
  assert_memory_equal(c.token, "evt_", 4);
  assert_true(c.pub[0][0] == 2 || c.pub[0][0] == 3);
  assert_true(c.pub[1][0] == 2 || c.pub[1][0] == 3);
  /* The created app is unlocked right away. */
  evs_app *a = evs__app_find(e, ID("app_one"));
  assert_non_null(a);
  assert_memory_equal(a->pub[0], c.pub[0], EVS_EC_PUB_LEN);

  /* A fresh enclave with the same sealing key (a restart) unlocks it with the token. */
  evs_enclave *e2 = new_enclave(1);
  assert_null(evs__app_find(e2, ID("app_one")));
  assert_int_equal(unlock(e2, "app_one", c.token, &c), EVS_EP_OK);
  a = evs__app_find(e2, ID("app_one"));
  assert_non_null(a);
  assert_memory_equal(a->pub[1], c.pub[1], EVS_EC_PUB_LEN);
  assert_int_equal(evs__enclave_unlocked(e2), 1);
  /* Unlocking again replaces, not duplicates. */
  assert_int_equal(unlock(e2, "app_one", c.token, &c), EVS_EP_OK);
  assert_int_equal(evs__enclave_unlocked(e2), 1);

  /* Two apps get different keys and tokens. */
  evs_app_created d;
  assert_int_equal(evs__app_create(e, ID("app_two"), &d), EVS_EP_OK);
  assert_memory_not_equal(c.pub[0], d.pub[0], EVS_EC_PUB_LEN);
  assert_string_not_equal(c.token, d.token);
  evs__app_created_done(&c);
  evs__app_created_done(&d);
  evs__enclave_free(e);
  evs__enclave_free(e2);
}

static void test_wrong_token(void **state) {
  (void)state;
  evs_enclave *e = new_enclave(2);
  evs_app_created c, d;
  assert_int_equal(evs__app_create(e, ID("app_a"), &c), EVS_EP_OK);
  assert_int_equal(evs__app_create(e, ID("app_b"), &d), EVS_EP_OK);
  evs_enclave *e2 = new_enclave(2);

  /* One character changed, in every position of the base64url part. */
  char t[EVS_APP_TOKEN_LEN + 1];
  for (size_t i = 4; i < EVS_APP_TOKEN_LEN - 1; i++) {
    strcpy(t, c.token);
    t[i] = t[i] == 'A' ? 'B' : 'A';
    assert_int_equal(unlock(e2, "app_a", t, &c), EVS_EP_E_BAD_TOKEN);
  }
  /* Another app's token, malformed tokens. */
  assert_int_equal(unlock(e2, "app_a", d.token, &c), EVS_EP_E_BAD_TOKEN);
  static const char *bad[] = {"evt_", "nope", "evt_!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!",
                              "EVT_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                              "evt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA+"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    assert_int_equal(unlock(e2, "app_a", bad[i], &c), EVS_EP_E_BAD_TOKEN);
  /* An empty token without a credential. */
  assert_int_equal(unlock(e2, "app_a", "", &c), EVS_EP_E_BAD_TOKEN);
  assert_null(evs__app_find(e2, ID("app_a")));
  assert_int_equal(evs__enclave_unlocked(e2), 0);

  /* A failed unlock leaves an earlier unlock in place. */
  assert_int_equal(unlock(e2, "app_a", c.token, &c), EVS_EP_OK);
  assert_int_equal(unlock(e2, "app_a", d.token, &c), EVS_EP_E_BAD_TOKEN);
  assert_non_null(evs__app_find(e2, ID("app_a")));

  evs__app_created_done(&c);
  evs__app_created_done(&d);
  evs__enclave_free(e);
  evs__enclave_free(e2);
}

static void test_tampered(void **state) {
  (void)state;
  evs_enclave *e = new_enclave(3);
  evs_app_created c, d;
  assert_int_equal(evs__app_create(e, ID("app_t"), &c), EVS_EP_OK);
  assert_int_equal(evs__app_create(e, ID("app_u"), &d), EVS_EP_OK);
  evs_enclave *e2 = new_enclave(3);

  /* Every bit of each sealed share. */
  for (int which = 0; which < 2; which++) {
    for (size_t i = 0; i < EVS_SEALED_SHARE_LEN * 8; i++) {
      evs_app_created x = c;
      uint8_t *blob = which ? x.share2 : x.share1;
      blob[i / 8] ^= (uint8_t)(1u << (i % 8));
      assert_int_equal(unlock(e2, "app_t", c.token, &x), EVS_EP_E_INVALID);
    }
  }
  /* The sealed offset (magic and IV/ciphertext/tag) is refused as invalid; the wrapped private
   * keys under the AMK cannot be told from a wrong token, so they give BAD_TOKEN. */
  for (size_t i = 0; i < EVS_WRAPPED_KEYS_LEN; i++) {
    evs_app_created x = c;
    x.wrapped[i] ^= 0x01;
    int r = unlock(e2, "app_t", c.token, &x);
    if (i < 4 + 60) assert_int_equal(r, EVS_EP_E_INVALID);
    else assert_true(r == EVS_EP_E_INVALID || r == EVS_EP_E_BAD_TOKEN);
  }
  /* Shares swapped, shares of another app, blobs under another app id, truncated blobs. */
  evs_app_created x = c;
  memcpy(x.share1, c.share2, sizeof x.share1);
  memcpy(x.share2, c.share1, sizeof x.share2);
  assert_int_equal(unlock(e2, "app_t", c.token, &x), EVS_EP_E_INVALID);
  x = c;
  memcpy(x.share1, d.share1, sizeof x.share1);
  assert_int_equal(unlock(e2, "app_t", c.token, &x), EVS_EP_E_INVALID);
  x = c;
  memcpy(x.wrapped, d.wrapped, sizeof x.wrapped);
  assert_int_equal(unlock(e2, "app_t", c.token, &x), EVS_EP_E_INVALID);
  assert_int_equal(unlock(e2, "app_u", c.token, &c), EVS_EP_E_INVALID);
  uint8_t pub[2][EVS_EC_PUB_LEN];
  assert_int_equal(evs__app_unlock(e2, ID("app_t"), (const uint8_t *)c.token, EVS_APP_TOKEN_LEN,
                                   c.share1, sizeof c.share1 - 1, c.share2, sizeof c.share2,
                                   c.wrapped, sizeof c.wrapped, pub),
                   EVS_EP_E_INVALID);
  assert_int_equal(evs__app_unlock(e2, ID("app_t"), (const uint8_t *)c.token, EVS_APP_TOKEN_LEN,
                                   c.share1, sizeof c.share1, c.share2, sizeof c.share2,
                                   c.wrapped, 0, pub),
                   EVS_EP_E_INVALID);
  /* Another sealing key (a lost or replaced seal key file) opens nothing. */
  evs_enclave *e3 = new_enclave(4);
  assert_int_equal(unlock(e3, "app_t", c.token, &c), EVS_EP_E_INVALID);
  /* The untouched blobs still work. */
  assert_int_equal(unlock(e2, "app_t", c.token, &c), EVS_EP_OK);
  evs__app_created_done(&c);
  evs__app_created_done(&d);
  evs__enclave_free(e);
  evs__enclave_free(e2);
  evs__enclave_free(e3);
}

static void test_credentials(void **state) {
  (void)state;
  evs_enclave *e = new_enclave(5);
  evs_app_created c;
  assert_int_equal(evs__app_create(e, ID("app_c"), &c), EVS_EP_OK);
  evs_enclave *e2 = new_enclave(5);
  assert_int_equal(evs__enclave_add_credential(e2, "bad/id", 6, c.token, strlen(c.token)),
                   EVS_EP_E_INVALID);
  assert_int_equal(evs__enclave_add_credential(e2, "app_c", 5, "evt_wrong", 9), EVS_EP_OK);
  assert_int_equal(unlock(e2, "app_c", "", &c), EVS_EP_E_BAD_TOKEN);
  /* A later credential for the same app replaces the first. */
  assert_int_equal(evs__enclave_add_credential(e2, "app_c", 5, c.token, strlen(c.token)),
                   EVS_EP_OK);
  assert_int_equal(evs__enclave_credentials(e2), 1);
  assert_int_equal(unlock(e2, "app_c", "", &c), EVS_EP_OK);
  /* A token in the request wins over the credential. */
  assert_int_equal(unlock(e2, "app_c", "evt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", &c),
                   EVS_EP_E_BAD_TOKEN);
  evs__app_created_done(&c);
  evs__enclave_free(e);
  evs__enclave_free(e2);
}

/* ---- through the protocol ------------------------------------------------------------------ */

typedef struct msgbuf {
  uint8_t *p;
  size_t len, cap;
  uint32_t n;
} msgbuf;

static void msg_begin(msgbuf *m, uint16_t op) {
  m->cap = 1 << 16;
  m->p = calloc(1, m->cap);
  assert_non_null(m->p);
  evs_ep_put_u32(m->p + 4, EVS_EP_MAGIC);
  evs_ep_put_u16(m->p + 8, EVS_EP_VERSION);
  evs_ep_put_u16(m->p + 10, op);
  evs_ep_put_u32(m->p + 12, 77);
  m->len = EVS_EP_HEADER_LEN;
  m->n = 0;
}

static void msg_add(msgbuf *m, const void *data, size_t len) {
  while (m->len + 4 + len > m->cap) {
    m->cap *= 2;
    m->p = realloc(m->p, m->cap);
    assert_non_null(m->p);
  }
  evs_ep_put_u32(m->p + m->len, (uint32_t)len);
  if (len) memcpy(m->p + m->len + 4, data, len);
  m->len += 4 + len;
  m->n++;
}
#define ADD(m, s) msg_add(m, s, strlen(s))

/* Sends m through evs__ep_handle, frees it, parses the response into r. */
static int32_t call(evs_enclave *e, msgbuf *m, evs_ep_buf *out, evs_ep_msg *r) {
  evs_ep_put_u32(m->p, (uint32_t)(m->len - 4));
  evs_ep_put_u32(m->p + 20, m->n);
  evs__ep_handle(e, m->p + 4, m->len - 4, out);
  free(m->p);
  m->p = NULL;
  assert_int_equal(evs_ep_get_u32(out->p), out->len - 4);
  assert_int_equal(evs__ep_parse(out->p + 4, out->len - 4, r, items), EVS_EP_OK);
  assert_int_equal(r->request_id, 77);
  return r->status;
}

static void test_ops_round_trip(void **state) {
  (void)state;
  evs_enclave *e = new_enclave(6);
  evs_ep_buf out = {0};
  evs_ep_msg r;
  msgbuf m;

  msg_begin(&m, EVS_EP_APP_CREATE);
  ADD(&m, "app_ops");
  assert_int_equal(call(e, &m, &out, &r), 0);
  assert_int_equal(r.nitems, 6);
  uint8_t saved[6][256];
  size_t saved_len[6];
  for (int i = 0; i < 6; i++) {
    assert_true(r.items[i].len <= 256);
    memcpy(saved[i], r.items[i].p, r.items[i].len);
    saved_len[i] = r.items[i].len;
  }
  evs_enclave *e2 = new_enclave(6);
  msg_begin(&m, EVS_EP_APP_UNLOCK);
  ADD(&m, "app_ops");
  for (int i = 0; i < 6; i++)
    if (i != 1 && i != 2) msg_add(&m, saved[i], saved_len[i]);
  assert_int_equal(call(e2, &m, &out, &r), 0);
  assert_int_equal(r.nitems, 2);
  assert_memory_equal(r.items[0].p, saved[1], EVS_EC_PUB_LEN);
  assert_memory_equal(r.items[1].p, saved[2], EVS_EC_PUB_LEN);

  msg_begin(&m, EVS_EP_APP_STATUS);
  ADD(&m, "app_ops");
  assert_int_equal(call(e2, &m, &out, &r), 0);
  assert_int_equal(r.nitems, 3);
  assert_int_equal(r.items[0].p[0], 1);
  assert_memory_equal(r.items[2].p, saved[2], EVS_EC_PUB_LEN);

  /* Encrypt in e (the creator), decrypt in e2 (unlocked from the blobs). */
  /* "s:" is trimmed like the SDK's strings; "r:" (the relay's) is kept exactly. */
  static const char *values[] = {"s:  padded  ", "s:", "n:-12.5e3", "b:false",
                                 "s:\xc3\xa9t\xc3\xa9", "r: \t p4ss word \n", "x:bad", "n:NaN",
                                 "b:yes", "s"};
  static const char *expect[] = {"padded", "", "-12.5e3", "false", "\xc3\xa9t\xc3\xa9",
                                 " \t p4ss word \n"};
  static const int types[] = {0, 0, 1, 2, 0, 0};
  for (int curve = 0; curve < 2; curve++) {
    for (int role = 0; role < 2; role++) {
      msg_begin(&m, EVS_EP_ENCRYPT);
      ADD(&m, "app_ops");
      ADD(&m, curve ? "prime256v1" : "secp256k1");
      ADD(&m, role ? "permit-all" : "");
      for (size_t i = 0; i < 10; i++) ADD(&m, values[i]);
      assert_int_equal(call(e, &m, &out, &r), 0);
      assert_int_equal(r.nitems, 10);
      msgbuf dm;
      msg_begin(&dm, EVS_EP_DECRYPT);
      ADD(&dm, "app_ops");
      for (size_t i = 0; i < 10; i++) {
        int32_t st = (int32_t)evs_ep_get_u32(r.items[i].p);
        if (i >= 6) {
          assert_int_equal(st, EVS_EP_E_INVALID);
          assert_int_equal(r.items[i].len, 4);
          continue;
        }
        assert_int_equal(st, 0);
        const char *ev = (const char *)r.items[i].p + 4;
        const char *tag = curve ? (role ? "ev:QkTC" : "ev:Tk9D") : (role ? "ev:S0lS" : "ev:RFVC");
        assert_memory_equal(ev, tag, 7);
        msg_add(&dm, ev, r.items[i].len - 4);
      }
      ADD(&dm, "ev:garbage");
      assert_int_equal(call(e2, &dm, &out, &r), 0);
      assert_int_equal(r.nitems, 7);
      for (size_t i = 0; i < 6; i++) {
        assert_int_equal((int32_t)evs_ep_get_u32(r.items[i].p), 0);
        assert_int_equal(r.items[i].p[4], types[i]);
        assert_int_equal(r.items[i].len - 5, strlen(expect[i]));
        assert_memory_equal(r.items[i].p + 5, expect[i], strlen(expect[i]));
      }
      assert_true((int32_t)evs_ep_get_u32(r.items[6].p) < 0);

      /* DECRYPT_ROLE: the same, with the data role of role versions. */
      msg_begin(&dm, EVS_EP_ENCRYPT);
      ADD(&dm, "app_ops");
      ADD(&dm, curve ? "prime256v1" : "secp256k1");
      ADD(&dm, role ? "permit-all" : "");
      ADD(&dm, "n:42");
      assert_int_equal(call(e, &dm, &out, &r), 0);
      char ev[512];
      size_t evlen = r.items[0].len - 4;
      assert_true(evlen < sizeof ev);
      memcpy(ev, r.items[0].p + 4, evlen);
      msg_begin(&dm, EVS_EP_DECRYPT_ROLE);
      ADD(&dm, "app_ops");
      msg_add(&dm, ev, evlen);
      ADD(&dm, "ev:garbage");
      assert_int_equal(call(e2, &dm, &out, &r), 0);
      assert_int_equal(r.nitems, 2);
      const uint8_t *it = r.items[0].p;
      assert_int_equal((int32_t)evs_ep_get_u32(it), 0);
      assert_int_equal(it[4], 1);
      size_t rl = role ? strlen("permit-all") : 0;
      assert_int_equal(it[5], rl);
      assert_memory_equal(it + 6, "permit-all", rl);
      assert_int_equal(r.items[0].len, 6 + rl + 2);
      assert_memory_equal(it + 6 + rl, "42", 2);
      assert_int_equal(r.items[1].len, 4);
    }
  }

  /* Bad curve and role. */
  msg_begin(&m, EVS_EP_ENCRYPT);
  ADD(&m, "app_ops");
  ADD(&m, "ed25519");
  ADD(&m, "");
  ADD(&m, "s:x");
  assert_int_equal(call(e, &m, &out, &r), EVS_EP_E_INVALID);
  msg_begin(&m, EVS_EP_ENCRYPT);
  ADD(&m, "app_ops");
  ADD(&m, "secp256k1");
  ADD(&m, "Not A Role");
  ADD(&m, "s:x");
  assert_int_equal(call(e, &m, &out, &r), EVS_EP_E_INVALID);

  /* Files, both curves. */
  for (int curve = 0; curve < 2; curve++) {
    uint8_t file[3000];
    for (size_t i = 0; i < sizeof file; i++) file[i] = (uint8_t)(i * 7);
    msg_begin(&m, EVS_EP_ENCRYPT_FILE);
    ADD(&m, "app_ops");
    ADD(&m, curve ? "prime256v1" : "secp256k1");
    msg_add(&m, file, sizeof file);
    assert_int_equal(call(e, &m, &out, &r), 0);
    assert_int_equal(r.nitems, 1);
    assert_int_equal(r.items[0].len, sizeof file + EVS_EC_FILE_OVERHEAD);
    assert_memory_equal(r.items[0].p, "%EVENC", 6);
    msgbuf dm;
    msg_begin(&dm, EVS_EP_DECRYPT_FILE);
    ADD(&dm, "app_ops");
    msg_add(&dm, r.items[0].p, r.items[0].len);
    assert_int_equal(call(e2, &dm, &out, &r), 0);
    assert_int_equal(r.items[0].len, sizeof file);
    assert_memory_equal(r.items[0].p, file, sizeof file);
  }
  msg_begin(&m, EVS_EP_DECRYPT_FILE);
  ADD(&m, "app_ops");
  ADD(&m, "%EVENC short");
  assert_int_equal(call(e2, &m, &out, &r), EVS_EP_E_INVALID);

  /* LOCK wipes the keys: the app is gone until unlocked again; LOCK is idempotent. */
  for (int i = 0; i < 2; i++) {
    msg_begin(&m, EVS_EP_APP_LOCK);
    ADD(&m, "app_ops");
    assert_int_equal(call(e2, &m, &out, &r), 0);
  }
  assert_null(evs__app_find(e2, ID("app_ops")));
  assert_int_equal(evs__enclave_unlocked(e2), 0);
  msg_begin(&m, EVS_EP_DECRYPT);
  ADD(&m, "app_ops");
  ADD(&m, "ev:x");
  assert_int_equal(call(e2, &m, &out, &r), EVS_EP_E_NO_APP);
  msg_begin(&m, EVS_EP_ENCRYPT);
  ADD(&m, "app_ops");
  ADD(&m, "secp256k1");
  ADD(&m, "");
  ADD(&m, "s:x");
  assert_int_equal(call(e2, &m, &out, &r), EVS_EP_E_NO_APP);
  msg_begin(&m, EVS_EP_APP_STATUS);
  ADD(&m, "app_ops");
  assert_int_equal(call(e2, &m, &out, &r), 0);
  assert_int_equal(r.items[0].p[0], 0);
  assert_int_equal(r.items[1].len, 0);

  /* Wrong token through the protocol. */
  msg_begin(&m, EVS_EP_APP_UNLOCK);
  ADD(&m, "app_ops");
  ADD(&m, "evt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
  for (int i = 3; i < 6; i++) msg_add(&m, saved[i], saved_len[i]);
  assert_int_equal(call(e2, &m, &out, &r), EVS_EP_E_BAD_TOKEN);
  assert_int_equal(r.nitems, 0);

  evs__ep_buf_done(&out);
  evs__enclave_free(e);
  evs__enclave_free(e2);
}

/* DECRYPT refuses a value whose plaintext is not of its type tag: RFVC and Tk9D do not
 * authenticate the tag, so a relabelled string would otherwise come back as a "number" or
 * "boolean" that is neither (and the relay splices those into JSON as they are). */
static void test_decrypt_typed_plaintext(void **state) {
  (void)state;
  evs_enclave *e = new_enclave(7);
  evs_ep_buf out = {0};
  evs_ep_msg r;
  msgbuf m;
  evs_app_created c;
  assert_int_equal(evs__app_create(e, ID("app_typed"), &c), EVS_EP_OK);
  evs__app_created_done(&c);
  static const struct {
    const char *text, *type;
    int ok;
  } cases[] = {
      {"12", "number", 1},        {"-1.5e+3", "number", 1}, {"null", "number", 1},
      {"0", "number", 1},         {"abc", "number", 0},     {"", "number", 0},
      {"01", "number", 0},        {"0x10", "number", 0},    {"NaN", "number", 0},
      {"1.", "number", 0},        {"true", "number", 0},    {"true", "boolean", 1},
      {"false", "boolean", 1},    {"True", "boolean", 0},   {"1", "boolean", 0},
      {"", "boolean", 0},         {"null", "boolean", 0},   {"truex", "boolean", 0},
  };
  const size_t n = sizeof cases / sizeof cases[0];
  for (int curve = 0; curve < 2; curve++) {
    msg_begin(&m, EVS_EP_ENCRYPT);
    ADD(&m, "app_typed");
    ADD(&m, curve ? "prime256v1" : "secp256k1");
    ADD(&m, "");
    for (size_t i = 0; i < n; i++) {
      char item[32];
      snprintf(item, sizeof item, "s:%s", cases[i].text);
      ADD(&m, item);
    }
    assert_int_equal(call(e, &m, &out, &r), 0);
    assert_int_equal(r.nitems, n);
    msgbuf dm;
    msg_begin(&dm, EVS_EP_DECRYPT);
    ADD(&dm, "app_typed");
    for (size_t i = 0; i < n; i++) {
      assert_int_equal((int32_t)evs_ep_get_u32(r.items[i].p), 0);
      /* ev:RFVC:<iv>... -> ev:RFVC:<type>:<iv>... */
      char ev[512];
      const char *s = (const char *)r.items[i].p + 4;
      size_t len = r.items[i].len - 4;
      int k = snprintf(ev, sizeof ev, "%.8s%s:%.*s", s, cases[i].type, (int)(len - 8), s + 8);
      assert_true(k > 0 && (size_t)k < sizeof ev);
      ADD(&dm, ev);
    }
    assert_int_equal(call(e, &dm, &out, &r), 0);
    assert_int_equal(r.nitems, n);
    for (size_t i = 0; i < n; i++) {
      int32_t st = (int32_t)evs_ep_get_u32(r.items[i].p);
      if (!cases[i].ok) {
        assert_int_equal(st, EVS_EP_E_DECRYPT);
        assert_int_equal(r.items[i].len, 4); /* no plaintext */
        continue;
      }
      assert_int_equal(st, 0);
      assert_int_equal(r.items[i].p[4], strcmp(cases[i].type, "number") == 0 ? 1 : 2);
      assert_int_equal(r.items[i].len - 5, strlen(cases[i].text));
      assert_memory_equal(r.items[i].p + 5, cases[i].text, strlen(cases[i].text));
    }
  }
  evs__ep_buf_done(&out);
  evs__enclave_free(e);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_create_unlock), cmocka_unit_test(test_wrong_token),
      cmocka_unit_test(test_tampered),      cmocka_unit_test(test_credentials),
      cmocka_unit_test(test_ops_round_trip), cmocka_unit_test(test_decrypt_typed_plaintext),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
