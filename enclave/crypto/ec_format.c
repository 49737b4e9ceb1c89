/*
 * ec_format.c: the byte layouts of Evervault Encryption that need no key: the ev: string
 * (PROTOCOL.md §3.1), the additional authenticated data (§3.4) and the data-role metadata
 * (§3.5, a small MessagePack map). Everything here parses untrusted input and is fuzzed.
 */
#include <string.h>

#include "ec_internal.h"

static const char *const version_tags[4] = {"RFVC", "S0lS", "Tk9D", "QkTC"};

evs_ec_curve evs__ec_version_curve(evs_ec_version v) {
  return (v == EVS_EC_RFVC || v == EVS_EC_S0LS || v == EVS_EC_FILE_V2) ? EVS_EC_SECP256K1
                                                                        : EVS_EC_P256;
}

int evs__ec_version_has_role(evs_ec_version v) {
  return v == EVS_EC_S0LS || v == EVS_EC_QKTC;
}

evs_ec_kdf evs__ec_version_kdf(evs_ec_version v) {
  return (v == EVS_EC_RFVC || v == EVS_EC_FILE_V2) ? EVS_EC_KDF_RAW : EVS_EC_KDF_SHA256;
}

const char *evs__ec_version_tag(evs_ec_version v) {
  return (unsigned)v < 4 ? version_tags[v] : NULL;
}

/* ---- ev: strings ----------------------------------------------------------------------------- */

int evs__ec_parse(const char *s, size_t len, evs_ec_parsed *ret, int validate_ct) {
  const char *field[8];
  size_t flen[8], nf = 0, start = 0, n;
  evs_ec_parsed p;
  int r;
  if (!ret || (!s && len)) return EVS_EC_EINVAL;
  memset(&p, 0, sizeof p);
  /* Split on ':' into at most 7 fields, the last being "$" (memchr: the fields are long). */
  for (;;) {
    const char *c = start < len ? memchr(s + start, ':', len - start) : NULL;
    size_t i = c ? (size_t)(c - s) : len;
    if (nf == 7) return EVS_EC_EFORMAT;
    field[nf] = s + start;
    flen[nf] = i - start;
    nf++;
    if (!c) break;
    start = i + 1;
  }
  if (nf < 6 || flen[0] != 2 || memcmp(field[0], "ev", 2) != 0 || flen[nf - 1] != 1 ||
      field[nf - 1][0] != '$')
    return EVS_EC_EFORMAT;
  if (flen[1] != 4) return EVS_EC_EVERSION;
  for (r = 0; r < 4; r++)
    if (memcmp(field[1], version_tags[r], 4) == 0) break;
  if (r == 4) return EVS_EC_EVERSION;
  p.version = (evs_ec_version)r;
  p.curve = evs__ec_version_curve(p.version);
  p.has_role = evs__ec_version_has_role(p.version);
  size_t f = 2;
  p.type = EVS_EC_STRING;
  if (nf == 7) {
    /* Strings carry no tag; the SDK writes only these two. */
    if (flen[2] == 6 && memcmp(field[2], "number", 6) == 0)
      p.type = EVS_EC_NUMBER;
    else if (flen[2] == 7 && memcmp(field[2], "boolean", 7) == 0)
      p.type = EVS_EC_BOOLEAN;
    else
      return EVS_EC_ETYPE;
    f = 3;
  }
  if ((r = evs__ec_b64_check(field[f], flen[f], &n)) != EVS_EC_OK) return r;
  if (n != EVS_EC_IV_LEN) return EVS_EC_EFORMAT;
  evs__ec_b64_decode_valid(field[f], flen[f], p.iv);
  if ((r = evs__ec_b64_check(field[f + 1], flen[f + 1], &n)) != EVS_EC_OK) return r;
  if (n != EVS_EC_PUB_LEN) return EVS_EC_EFORMAT;
  evs__ec_b64_decode_valid(field[f + 1], flen[f + 1], p.eph);
  p.ct_b64 = field[f + 2];
  p.ct_b64_len = flen[f + 2];
  if (validate_ct) {
    if ((r = evs__ec_b64_check(p.ct_b64, p.ct_b64_len, &p.ct_len)) != EVS_EC_OK) return r;
  } else {
    /* An upper bound until the caller decodes; only the tag-length check uses it. */
    p.ct_len = p.ct_b64_len / 4 * 3 + (p.ct_b64_len % 4 ? p.ct_b64_len % 4 - 1 : 0);
  }
  if (p.ct_len < EVS_EC_TAG_LEN) return EVS_EC_EFORMAT;
  *ret = p;
  return EVS_EC_OK;
}

int evs_ec_parse(const char *s, size_t len, evs_ec_parsed *ret) {
  return evs__ec_parse(s, len, ret, 1);
}

/* ---- AAD ------------------------------------------------------------------------------------- */

int evs_ec_aad(evs_ec_version version, evs_ec_type type, const uint8_t eph[EVS_EC_PUB_LEN],
               const uint8_t app_pub[EVS_EC_PUB_LEN], uint8_t *out, size_t *ret_len) {
  if (!out || !ret_len || (unsigned)type > EVS_EC_BOOLEAN) return EVS_EC_EINVAL;
  switch (version) {
    case EVS_EC_RFVC:
    case EVS_EC_FILE_V2:
      *ret_len = 0;
      return EVS_EC_OK;
    case EVS_EC_TK9D:
    case EVS_EC_FILE_V3:
      if (!app_pub) return EVS_EC_EINVAL;
      memcpy(out, app_pub, EVS_EC_PUB_LEN);
      *ret_len = EVS_EC_PUB_LEN;
      return EVS_EC_OK;
    case EVS_EC_S0LS:
    case EVS_EC_QKTC:
      if (!app_pub || !eph) return EVS_EC_EINVAL;
      /* (datatype << 4) | version number; the "debug" bit the SDK mentions is never set. */
      out[0] = (uint8_t)(((unsigned)type << 4) | (version == EVS_EC_QKTC ? 1u : 0u));
      memcpy(out + 1, eph, EVS_EC_PUB_LEN);
      memcpy(out + 1 + EVS_EC_PUB_LEN, app_pub, EVS_EC_PUB_LEN);
      *ret_len = EVS_EC_AAD_MAX;
      return EVS_EC_OK;
  }
  return EVS_EC_EINVAL;
}

/* ---- data roles and metadata ----------------------------------------------------------------- */

int evs_ec_role_valid(const char *role, size_t len) {
  if (!role || len < 1 || len > EVS_EC_ROLE_MAX) return 0;
  for (size_t i = 0; i < len; i++) {
    char c = role[i];
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-')) return 0;
  }
  return 1;
}

static uint8_t *put_uint(uint8_t *o, uint64_t v) {
  if (v <= 0x7f) {
    *o++ = (uint8_t)v;
  } else if (v <= 0xff) {
    *o++ = 0xcc;
    *o++ = (uint8_t)v;
  } else if (v <= 0xffff) {
    *o++ = 0xcd;
    *o++ = (uint8_t)(v >> 8);
    *o++ = (uint8_t)v;
  } else if (v <= 0xffffffffu) {
    *o++ = 0xce;
    for (int s = 24; s >= 0; s -= 8) *o++ = (uint8_t)(v >> s);
  } else {
    *o++ = 0xcf;
    for (int s = 56; s >= 0; s -= 8) *o++ = (uint8_t)(v >> s);
  }
  return o;
}

int evs_ec_metadata_encode(const char *role, uint64_t origin, uint32_t time, uint8_t *out) {
  size_t rl = role ? strlen(role) : 0;
  if (!out) return EVS_EC_EINVAL;
  if (!evs_ec_role_valid(role, rl)) return EVS_EC_EROLE;
  uint8_t *o = out;
  *o++ = 0x83; /* fixmap, 3 entries, in the SDK's order */
  *o++ = 0xa2;
  *o++ = 'd';
  *o++ = 'r';
  *o++ = (uint8_t)(0xa0 | rl);
  memcpy(o, role, rl);
  o += rl;
  *o++ = 0xa2;
  *o++ = 'e';
  *o++ = 'o';
  o = put_uint(o, origin);
  *o++ = 0xa2;
  *o++ = 'e';
  *o++ = 't';
  *o++ = 0xce; /* the SDK always writes uint32 */
  for (int s = 24; s >= 0; s -= 8) *o++ = (uint8_t)(time >> s);
  return (int)(o - out);
}

/* A cursor over the metadata bytes. */
struct mp {
  const uint8_t *p, *end;
};

static int mp_need(struct mp *m, size_t n) {
  return (size_t)(m->end - m->p) >= n;
}

static uint64_t mp_be(const uint8_t *p, size_t n) {
  uint64_t v = 0;
  for (size_t i = 0; i < n; i++) v = v << 8 | p[i];
  return v;
}

/* Reads a string header; returns its bytes or NULL if the next item is not a string. */
static const uint8_t *mp_str(struct mp *m, size_t *ret_len) {
  size_t hl, n;
  if (!mp_need(m, 1)) return NULL;
  uint8_t t = m->p[0];
  if ((t & 0xe0) == 0xa0) {
    hl = 1;
    n = t & 0x1f;
  } else if (t == 0xd9 && mp_need(m, 2)) {
    hl = 2;
    n = m->p[1];
  } else if (t == 0xda && mp_need(m, 3)) {
    hl = 3;
    n = (size_t)mp_be(m->p + 1, 2);
  } else {
    return NULL;
  }
  if (!mp_need(m, hl + n)) return NULL;
  const uint8_t *s = m->p + hl;
  m->p += hl + n;
  *ret_len = n;
  return s;
}

/* Reads a non-negative integer. */
static int mp_uint(struct mp *m, uint64_t *ret) {
  if (!mp_need(m, 1)) return 0;
  uint8_t t = m->p[0];
  size_t n;
  if (t <= 0x7f) {
    *ret = t;
    m->p++;
    return 1;
  }
  switch (t) {
    case 0xcc: n = 1; break;
    case 0xcd: n = 2; break;
    case 0xce: n = 4; break;
    case 0xcf: n = 8; break;
    /* Signed encodings of non-negative values are legal MessagePack. */
    case 0xd0: n = 1; break;
    case 0xd1: n = 2; break;
    case 0xd2: n = 4; break;
    case 0xd3: n = 8; break;
    default: return 0;
  }
  if (!mp_need(m, 1 + n)) return 0;
  uint64_t v = mp_be(m->p + 1, n);
  if (t >= 0xd0 && (v >> (8 * n - 1)) & 1) return 0; /* negative */
  *ret = v;
  m->p += 1 + n;
  return 1;
}

/* Skips one scalar of an unknown key (nil, bool, integers, floats, strings, bin). Containers and
 * extension types are refused: metadata has no use for them. */
static int mp_skip_scalar(struct mp *m) {
  size_t n;
  uint64_t u;
  if (!mp_need(m, 1)) return 0;
  uint8_t t = m->p[0];
  if (t <= 0x7f || t >= 0xe0 || t == 0xc0 || t == 0xc2 || t == 0xc3) {
    m->p++;
    return 1;
  }
  if (mp_str(m, &n)) return 1;
  if (mp_uint(m, &u)) return 1;
  switch (t) {
    case 0xd0: n = 1; break;
    case 0xd1: n = 2; break;
    case 0xd2: case 0xca: n = 4; break;
    case 0xd3: case 0xcb: n = 8; break;
    case 0xc4:
      if (!mp_need(m, 2)) return 0;
      n = 1 + (size_t)m->p[1];
      break;
    case 0xc5:
      if (!mp_need(m, 3)) return 0;
      n = 2 + (size_t)mp_be(m->p + 1, 2);
      break;
    default: return 0;
  }
  if (!mp_need(m, 1 + n)) return 0;
  m->p += 1 + n;
  return 1;
}

int evs_ec_metadata_parse(const uint8_t *in, size_t len, evs_ec_metadata *ret_meta,
                          size_t *ret_consumed) {
  evs_ec_metadata md;
  size_t entries, klen, slen;
  int have_dr = 0, have_eo = 0, have_et = 0;
  if ((!in && len) || !ret_meta || !ret_consumed) return EVS_EC_EINVAL;
  if (len < 2) return EVS_EC_EMETADATA;
  size_t mlen = (size_t)in[0] | (size_t)in[1] << 8;
  if (mlen > len - 2) return EVS_EC_EMETADATA;
  struct mp m = {in + 2, in + 2 + mlen};
  memset(&md, 0, sizeof md);
  if (!mp_need(&m, 1)) return EVS_EC_EMETADATA;
  if ((m.p[0] & 0xf0) == 0x80) {
    entries = m.p[0] & 0x0f;
    m.p++;
  } else if (m.p[0] == 0xde && mp_need(&m, 3)) {
    entries = (size_t)mp_be(m.p + 1, 2);
    m.p += 3;
  } else {
    return EVS_EC_EMETADATA;
  }
  for (size_t i = 0; i < entries; i++) {
    const uint8_t *k = mp_str(&m, &klen);
    if (!k) return EVS_EC_EMETADATA;
    if (klen == 2 && k[0] == 'd' && k[1] == 'r') {
      const uint8_t *s = mp_str(&m, &slen);
      if (have_dr || !s || !evs_ec_role_valid((const char *)s, slen)) return EVS_EC_EMETADATA;
      memcpy(md.role, s, slen);
      md.role[slen] = '\0';
      have_dr = 1;
    } else if (klen == 2 && k[0] == 'e' && k[1] == 'o') {
      if (have_eo || !mp_uint(&m, &md.origin)) return EVS_EC_EMETADATA;
      have_eo = 1;
    } else if (klen == 2 && k[0] == 'e' && k[1] == 't') {
      if (have_et || !mp_uint(&m, &md.time)) return EVS_EC_EMETADATA;
      have_et = 1;
    } else if (!mp_skip_scalar(&m)) {
      return EVS_EC_EMETADATA;
    }
  }
  /* The map must fill the declared length exactly, and carry the role. */
  if (m.p != m.end || !have_dr) return EVS_EC_EMETADATA;
  *ret_meta = md;
  *ret_consumed = 2 + mlen;
  return EVS_EC_OK;
}
