'use strict';
/*
 * Attestation bindings for the Evervault Node SDK's enableEnclaves / createEnclaveHttpsAgent,
 * for cages served by evserver (docs/cages.md, "Attestation"; README.md beside this file).
 *
 * The SDK calls bindings.attestEnclave(certDER, pcrsList, attestationDocBytes) on every TLS
 * connection to a host under EV_ENCLAVES_HOSTNAME; false or a throw fails the handshake. This
 * checks, in order: the document is a COSE_Sign1 with ES384 over a Nitro-format payload; its
 * certificate chains (through cabundle's intermediates, never its root) to the evserver
 * attestation root given at creation; the signature; public_key is the SubjectPublicKeyInfo of
 * the certificate of this very connection; and at least one entry of pcrsList matches (every PCR
 * an entry names must equal the document's). Plain JavaScript on Node's crypto; the CBOR
 * decoder is this file's own, strict (definite lengths, bounded nesting, no length larger than
 * the bytes left), for the few types a document uses.
 */
const crypto = require('crypto');

const MAX_DOC = 64 * 1024;
const MAX_DEPTH = 6;

class AttestationFailure extends Error {}

function fail(msg) {
  throw new AttestationFailure(msg);
}

/* ---- CBOR (RFC 8949), decoding only ---------------------------------------------------------- */

function decodeCbor(buf) {
  let pos = 0;
  function need(n) {
    if (n > buf.length - pos) fail('truncated CBOR');
  }
  function arg(ai) {
    if (ai < 24) return ai;
    if (ai === 24) { need(1); return buf[pos++]; }
    if (ai === 25) { need(2); const v = buf.readUInt16BE(pos); pos += 2; return v; }
    if (ai === 26) { need(4); const v = buf.readUInt32BE(pos); pos += 4; return v; }
    if (ai === 27) {
      need(8);
      const v = buf.readBigUInt64BE(pos);
      pos += 8;
      return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
    }
    fail('indefinite or reserved CBOR length');
  }
  function item(depth) {
    if (depth > MAX_DEPTH) fail('CBOR nested too deep');
    need(1);
    const b = buf[pos++];
    const major = b >> 5;
    const v = arg(b & 0x1f);
    const count = () => {
      if (typeof v !== 'number' || v > buf.length - pos) fail('CBOR length beyond the input');
      return v;
    };
    switch (major) {
      case 0: return v;
      case 1: return typeof v === 'number' ? -1 - v : -1n - v;
      case 2: { const n = count(); const s = buf.subarray(pos, pos + n); pos += n; return s; }
      case 3: {
        const n = count();
        const s = buf.subarray(pos, pos + n).toString('utf8');
        pos += n;
        return s;
      }
      case 4: {
        const n = count();
        const a = [];
        for (let i = 0; i < n; i++) a.push(item(depth + 1));
        return a;
      }
      case 5: {
        const n = count();
        const m = new Map();
        for (let i = 0; i < n; i++) {
          const k = item(depth + 1);
          if (m.has(k)) fail('a CBOR map key twice');
          m.set(k, item(depth + 1));
        }
        return m;
      }
      case 6: return { tag: v, value: item(depth + 1) };
      default:
        if (v === 20) return false;
        if (v === 21) return true;
        if (v === 22) return null;
        fail('unsupported CBOR simple value');
    }
  }
  const out = item(0);
  if (pos !== buf.length) fail('bytes after the CBOR item');
  return out;
}

/* The few encodings a Sig_structure needs. */
function cborHead(major, n) {
  if (n < 24) return Buffer.from([(major << 5) | n]);
  if (n < 0x100) return Buffer.from([(major << 5) | 24, n]);
  if (n < 0x10000) {
    const b = Buffer.alloc(3);
    b[0] = (major << 5) | 25;
    b.writeUInt16BE(n, 1);
    return b;
  }
  const b = Buffer.alloc(5);
  b[0] = (major << 5) | 26;
  b.writeUInt32BE(n, 1);
  return b;
}
const bstr = (b) => Buffer.concat([cborHead(2, b.length), b]);
const tstr = (s) => {
  const b = Buffer.from(s, 'utf8');
  return Buffer.concat([cborHead(3, b.length), b]);
};

/* ---- the document ---------------------------------------------------------------------------- */

function parseDocument(docBytes) {
  const doc = Buffer.isBuffer(docBytes) ? docBytes : Buffer.from(docBytes || []);
  if (doc.length === 0 || doc.length > MAX_DOC) fail('no attestation document, or too large');
  let top = decodeCbor(doc);
  if (top && typeof top === 'object' && 'tag' in top && !Array.isArray(top)) {
    if (top.tag !== 18) fail('not a COSE_Sign1');
    top = top.value;
  }
  if (!Array.isArray(top) || top.length !== 4) fail('not a COSE_Sign1');
  const [prot, , payloadBytes, sig] = top;
  if (!Buffer.isBuffer(prot) || !(top[1] instanceof Map) || !Buffer.isBuffer(payloadBytes) ||
      !Buffer.isBuffer(sig))
    fail('not a COSE_Sign1');
  const ph = decodeCbor(prot);
  if (!(ph instanceof Map) || ph.size !== 1 || ph.get(1) !== -35) fail('not signed with ES384');
  if (sig.length !== 96) fail('not a P-384 signature');
  const m = decodeCbor(payloadBytes);
  if (!(m instanceof Map)) fail('the payload is not a map');
  const known = ['module_id', 'digest', 'timestamp', 'pcrs', 'certificate', 'cabundle',
                 'public_key', 'user_data', 'nonce'];
  for (const k of m.keys()) if (!known.includes(k)) fail('unknown payload field');
  const p = {};
  p.moduleId = m.get('module_id');
  if (typeof p.moduleId !== 'string' || !p.moduleId) fail('module_id');
  if (m.get('digest') !== 'SHA384') fail('digest');
  p.timestamp = m.get('timestamp');
  if (typeof p.timestamp !== 'number' && typeof p.timestamp !== 'bigint') fail('timestamp');
  const pcrs = m.get('pcrs');
  if (!(pcrs instanceof Map) || pcrs.size === 0 || pcrs.size > 32) fail('pcrs');
  p.pcrs = {};
  for (const [k, v] of pcrs) {
    if (typeof k !== 'number' || k < 0 || k > 31 || !Buffer.isBuffer(v) || v.length !== 48)
      fail('pcrs');
    p.pcrs[k] = v.toString('hex');
  }
  p.certificate = m.get('certificate');
  if (!Buffer.isBuffer(p.certificate) || !p.certificate.length) fail('certificate');
  p.cabundle = m.get('cabundle');
  if (!Array.isArray(p.cabundle) || !p.cabundle.length || p.cabundle.length > 8 ||
      !p.cabundle.every((c) => Buffer.isBuffer(c) && c.length))
    fail('cabundle');
  for (const k of ['public_key', 'user_data', 'nonce']) {
    const v = m.has(k) ? m.get(k) : null;
    if (v !== null && (!Buffer.isBuffer(v) || v.length > 1024)) fail(k);
    p[k === 'public_key' ? 'publicKey' : k === 'user_data' ? 'userData' : 'nonce'] = v;
  }
  return { prot, payloadBytes, sig, payload: p };
}

function validNow(x509, now) {
  return new Date(x509.validFrom) <= now && now <= new Date(x509.validTo);
}

function checkChain(leaf, bundle, root, now) {
  let cur = leaf;
  for (let hops = 0; hops <= bundle.length; hops++) {
    if (!validNow(cur, now)) fail('a certificate in the chain is not valid now');
    if (cur.checkIssued(root) && cur.verify(root.publicKey)) {
      if (!validNow(root, now)) fail('the attestation root is not valid now');
      return;
    }
    const next = bundle.find((c) => c.ca && cur.checkIssued(c) && cur.verify(c.publicKey));
    if (!next) break;
    cur = next;
  }
  fail('the signing certificate does not chain to the evserver attestation root');
}

function toX509(v) {
  if (v instanceof crypto.X509Certificate) return v;
  const raw = Buffer.isBuffer(v) || typeof v === 'string' ? v : Buffer.from(v);
  return new crypto.X509Certificate(raw);
}

/* One entry of the SDK's pcrsList: {pcr0, pcr1, pcr2, pcr8} hex strings (also PCR0, pcr_0). */
function entryMatches(entry, pcrs) {
  if (!entry || typeof entry !== 'object') return false;
  let named = 0;
  for (const [k, v] of Object.entries(entry)) {
    const mm = /^pcr_?(\d{1,2})$/i.exec(k);
    if (!mm || v === undefined || v === null) continue;
    named++;
    const got = pcrs[Number(mm[1])];
    if (typeof v !== 'string' || !got || got !== v.toLowerCase()) return false;
  }
  return named > 0;
}

/*
 * Verifies a document; returns {ok: true, payload} or {ok: false, error}. opts: root (the
 * attestation root: PEM string, DER Buffer or X509Certificate; required), certDER (the TLS
 * certificate the document must name), pcrsList (as the SDK passes it), nonce (Buffer), now.
 */
function verifyAttestationDocument(docBytes, opts) {
  try {
    const root = toX509(opts.root);
    const now = opts.now || new Date();
    const d = parseDocument(docBytes);
    const leaf = toX509(d.payload.certificate);
    const key = leaf.publicKey;
    if (key.asymmetricKeyType !== 'ec' || key.asymmetricKeyDetails.namedCurve !== 'secp384r1')
      fail('the signing key is not P-384');
    checkChain(leaf, d.payload.cabundle.map(toX509), root, now);
    const tbs = Buffer.concat([Buffer.from([0x84]), tstr('Signature1'), bstr(d.prot),
                               bstr(Buffer.alloc(0)), bstr(d.payloadBytes)]);
    if (!crypto.verify('sha384', tbs, { key, dsaEncoding: 'ieee-p1363' }, d.sig))
      fail('the signature does not verify');
    if (opts.certDER !== undefined) {
      const spki = toX509(opts.certDER).publicKey.export({ type: 'spki', format: 'der' });
      if (!d.payload.publicKey || !spki.equals(d.payload.publicKey))
        fail('the document is for another TLS key than this connection\'s');
    }
    if (opts.pcrsList !== undefined) {
      const list = Array.isArray(opts.pcrsList) ? opts.pcrsList : [opts.pcrsList];
      if (!list.some((e) => entryMatches(e, d.payload.pcrs)))
        fail('no expected PCR set matches the document');
    }
    if (opts.nonce !== undefined &&
        (!d.payload.nonce || !Buffer.from(opts.nonce).equals(d.payload.nonce)))
      fail('the nonce differs');
    return { ok: true, payload: d.payload };
  } catch (e) {
    const error = e instanceof AttestationFailure ? e.message : String(e.message || e);
    return { ok: false, error };
  }
}

/*
 * The bindings object for enableEnclaves / createEnclaveHttpsAgent. options.root: the evserver
 * attestation root (PEM string, DER Buffer or X509Certificate), e.g. the body of
 * GET https://<api>/attestation-root.pem saved when the cluster was set up. options.onFailure
 * (optional): called with the reason when a connection is refused.
 */
function createAttestationBindings(options) {
  if (!options || !options.root)
    throw new TypeError('createAttestationBindings: options.root is required');
  const root = toX509(options.root);
  if (!root.ca) throw new TypeError('createAttestationBindings: root is not a CA certificate');
  return {
    attestEnclave(certDER, pcrsList, attestationDocBytes) {
      const r = verifyAttestationDocument(attestationDocBytes, {
        root, certDER, pcrsList: pcrsList || [],
      });
      if (!r.ok && options.onFailure) options.onFailure(r.error);
      return r.ok;
    },
  };
}

module.exports = { createAttestationBindings, verifyAttestationDocument, decodeCbor };
