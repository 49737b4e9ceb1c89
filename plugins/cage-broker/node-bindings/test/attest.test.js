'use strict';
/*
 * Tests of the Node bindings (node --test): documents made by evserver's own C encoder
 * (cage-attest-tool, the same plugins/cage-broker/attest.c the server signs with) are accepted,
 * and refused when the signature, a PCR, the TLS key, the chain or the bytes are wrong; then the
 * unmodified Evervault SDK's createEnclaveHttpsAgent with these bindings against a real HTTPS
 * server: the right PCRs let a request through, other PCRs or a document for another
 * certificate refuse the connection.
 *
 * Environment: EVS_BUILD_DIR (where cage-attest-tool is; default <repo>/build), EVS_SDK_DIR
 * (node_modules holding @evervault/sdk; default tests/integration/sdk/node_modules). The SDK
 * part is skipped when the SDK is not installed.
 */
const assert = require('assert');
const { execFileSync, spawnSync } = require('child_process');
const crypto = require('crypto');
const fs = require('fs');
const os = require('os');
const path = require('path');
const test = require('node:test');

const { createAttestationBindings, verifyAttestationDocument, decodeCbor } = require('..');

const REPO = path.resolve(__dirname, '..', '..', '..', '..');
const BUILD = process.env.EVS_BUILD_DIR || path.join(REPO, 'build');
const TOOL = path.join(BUILD, 'cage-attest-tool');
const SDK_DIR = process.env.EVS_SDK_DIR ? path.resolve(process.env.EVS_SDK_DIR)
  : path.join(REPO, 'tests', 'integration', 'sdk', 'node_modules');

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'evs-att-node-'));
const other = fs.mkdtempSync(path.join(os.tmpdir(), 'evs-att-node-other-'));
const PCR = { 0: 'a0'.repeat(48), 1: 'a1'.repeat(48), 2: 'a2'.repeat(48), 8: 'a8'.repeat(48) };
const PCRS = { pcr0: PCR[0], pcr1: PCR[1], pcr2: PCR[2], pcr8: PCR[8] };

function openssl(...args) {
  execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

/* A TLS CA and a server certificate for name (P-256), as PEM files in d. */
function tlsCert(d, base, name, ca) {
  const key = path.join(d, base + '.key'), crt = path.join(d, base + '.pem');
  if (!ca) {
    openssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
            '-keyout', key, '-out', crt, '-days', '2', '-subj', '/CN=evs test TLS CA',
            '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=keyCertSign');
    return { key, crt };
  }
  const csr = path.join(d, base + '.csr'), ext = path.join(d, base + '.ext');
  fs.writeFileSync(ext, `subjectAltName=DNS:${name}\nextendedKeyUsage=serverAuth\n`);
  openssl('req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
          '-keyout', key, '-out', csr, '-subj', '/CN=' + name);
  openssl('x509', '-req', '-in', csr, '-CA', ca.crt, '-CAkey', ca.key, '-set_serial', '7',
          '-days', '2', '-out', crt, '-extfile', ext);
  return { key, crt };
}

function makeDoc(d, certPem, pcrs, extra = []) {
  const args = ['doc', d, '--cert-pem', certPem];
  for (const [i, v] of Object.entries(pcrs)) args.push('--pcr', `${i}=${v}`);
  return execFileSync(TOOL, args.concat(extra));
}

let ca, cert, cert2, root, doc;

test.before(() => {
  assert.ok(fs.existsSync(TOOL), `${TOOL} is not built`);
  execFileSync(TOOL, ['ca', dir]);
  execFileSync(TOOL, ['ca', other]);
  ca = tlsCert(dir, 'ca');
  cert = tlsCert(dir, 'server', 'hello-cage.app-test.enclave.test', ca);
  cert2 = tlsCert(dir, 'server2', 'hello-cage.app-test.enclave.test', ca);
  root = fs.readFileSync(path.join(dir, 'root.pem'), 'utf8');
  doc = makeDoc(dir, cert.crt, PCR);
});

test.after(() => {
  fs.rmSync(dir, { recursive: true, force: true });
  fs.rmSync(other, { recursive: true, force: true });
});

const der = (f) => new crypto.X509Certificate(fs.readFileSync(f)).raw;

test('a document from the C encoder verifies, with every PCR set form the SDK passes', () => {
  const b = createAttestationBindings({ root });
  assert.strictEqual(b.attestEnclave(der(cert.crt), [PCRS], doc), true);
  assert.strictEqual(b.attestEnclave(der(cert.crt), [{ pcr8: PCR[8] }], doc), true);
  assert.strictEqual(b.attestEnclave(der(cert.crt), [{ PCR0: PCR[0].toUpperCase() }], doc), true);
  assert.strictEqual(b.attestEnclave(der(cert.crt), [{ pcr0: 'ff'.repeat(48) }, { pcr_2: PCR[2] }],
                                     doc), true);
  const r = verifyAttestationDocument(doc, { root });
  assert.ok(r.ok, r.error);
  assert.strictEqual(r.payload.moduleId, 'evserver-sandbox-test');
  assert.strictEqual(r.payload.pcrs[3], '00'.repeat(48));
  // COSE_Sign1_Tagged too
  const tagged = Buffer.concat([Buffer.from([0xd2]), doc]);
  assert.strictEqual(b.attestEnclave(der(cert.crt), [PCRS], tagged), true);
});

test('wrong PCRs, an empty PCR list, a tampered signature or PCR byte are refused', () => {
  const b = createAttestationBindings({ root });
  const wrong = [{ ...PCRS, pcr2: 'b2'.repeat(48) }];
  assert.strictEqual(b.attestEnclave(der(cert.crt), wrong, doc), false);
  assert.strictEqual(b.attestEnclave(der(cert.crt), [], doc), false);
  assert.strictEqual(b.attestEnclave(der(cert.crt), [{}], doc), false);
  const sig = Buffer.from(doc);
  sig[sig.length - 3] ^= 1;
  assert.strictEqual(b.attestEnclave(der(cert.crt), [PCRS], sig), false);
  const pcr = Buffer.from(doc);
  const at = pcr.indexOf(Buffer.from(PCR[8], 'hex'));
  assert.ok(at > 0);
  pcr[at] ^= 1;
  assert.match(verifyAttestationDocument(pcr, { root }).error, /signature/);
});

test('a document for another certificate, or under another root, is refused', () => {
  const b = createAttestationBindings({ root });
  assert.strictEqual(b.attestEnclave(der(cert2.crt), [PCRS], doc), false);
  const foreign = makeDoc(other, cert.crt, PCR);
  assert.match(verifyAttestationDocument(foreign, { root }).error, /chain/);
  assert.strictEqual(b.attestEnclave(der(cert.crt), [PCRS], foreign), false);
});

test('malformed bytes are refused without throwing', () => {
  const b = createAttestationBindings({ root });
  const cases = [Buffer.alloc(0),
                 Buffer.from([0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
                 Buffer.from([0x9f, 0x40, 0xff]), doc.subarray(0, doc.length - 1),
                 Buffer.concat([doc, Buffer.from([0])]), Buffer.from('not cbor'), undefined];
  for (const c of cases) assert.strictEqual(b.attestEnclave(der(cert.crt), [PCRS], c), false);
  assert.throws(() => decodeCbor(Buffer.from([0x81, 0x81, 0x81, 0x81, 0x81, 0x81, 0x81, 0x81, 0])));
  assert.throws(() => createAttestationBindings({}));
});

function sdkRun(docFile, pcrs, mode = 'agent') {
  const r = spawnSync(process.execPath, [path.join(__dirname, 'sdk_agent.js')], {
    env: { ...process.env, EV_ENCLAVES_HOSTNAME: 'enclave.test', NODE_EXTRA_CA_CERTS: ca.crt,
           EVS_SDK_DIR: SDK_DIR, ATT_ROOT: path.join(dir, 'root.pem'), ATT_DOC: docFile,
           TLS_CERT: cert.crt, TLS_KEY: cert.key, ATT_PCRS: JSON.stringify(pcrs),
           ATT_MODE: mode },
    encoding: 'utf8', timeout: 60000,
  });
  const line = r.stdout.trim().split('\n').pop();
  assert.ok(line && line.startsWith('{'), `sdk_agent.js: ${r.status}\n${r.stdout}\n${r.stderr}`);
  return JSON.parse(line);
}

const sdk = fs.existsSync(path.join(SDK_DIR, '@evervault', 'sdk')) ? test : test.skip;

sdk('the SDK agent: right PCRs pass, other PCRs and another certificate are refused', () => {
  const good = path.join(dir, 'good.cbor');
  fs.writeFileSync(good, doc);
  let r = sdkRun(good, [PCRS]);
  assert.deepStrictEqual([r.ok, r.status, r.body], [true, 200, 'hello from the cage'],
                         JSON.stringify(r));
  r = sdkRun(good, { pcr0: PCR[0] }); // a single object, as the SDK also accepts
  assert.strictEqual(r.ok, true, JSON.stringify(r));
  r = sdkRun(good, [{ pcr0: 'c0'.repeat(48) }]);
  assert.strictEqual(r.ok, false, JSON.stringify(r));
  assert.match(r.failures.join(), /PCR/);
  const forOther = path.join(dir, 'other-cert.cbor');
  fs.writeFileSync(forOther, makeDoc(dir, cert2.crt, PCR));
  r = sdkRun(forOther, [PCRS]);
  assert.strictEqual(r.ok, false, JSON.stringify(r));
  assert.match(r.failures.join(), /another TLS key/);
});

sdk('the SDK\'s enableEnclaves: right PCRs pass, other PCRs are refused', () => {
  const good = path.join(dir, 'good-enable.cbor');
  fs.writeFileSync(good, doc);
  let r = sdkRun(good, [PCRS], 'enable');
  assert.deepStrictEqual([r.ok, r.status], [true, 200], JSON.stringify(r));
  r = sdkRun(good, [{ pcr8: 'c8'.repeat(48) }], 'enable');
  assert.strictEqual(r.ok, false, JSON.stringify(r));
  assert.match(r.failures.join(), /PCR/);
});
