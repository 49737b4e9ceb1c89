// The official Evervault Node.js SDK against evserver: run by tests/integration/test_71_sdk.py.
// Environment: EV_API_URL (set before the SDK is required: it reads it once), EVS_APP_ID,
// EVS_API_KEY (a key with api:decrypt), EVS_BAD_KEY (a revoked or forged key).
// Encrypts strings, numbers, booleans, nested objects and a file with both curves, with and
// without a data role (one client per combination: the SDK fixes its derived key on the first
// encrypt), and the largest file the SDK allows (25 MiB), then decrypt() through evserver must
// give back the originals. Prints one line per check; exits 1 on the first failure.
'use strict';

if (!process.env.EV_API_URL) {
  console.error('EV_API_URL is not set');
  process.exit(2);
}
const assert = require('assert');
const Evervault = require('@evervault/sdk');

const appId = process.env.EVS_APP_ID;
const apiKey = process.env.EVS_API_KEY;
const badKey = process.env.EVS_BAD_KEY;

const VALUES = {
  string: 'Hello, evserver',
  emptyish: ' padded ',
  number: 42,
  float: 1.5,
  negative: -7,
  yes: true,
  no: false,
  nested: { card: { number: '4242424242424242', cvc: 123, ok: true }, list: ['a', 2, false] },
};

async function checkCombination(curve, role) {
  const ev = new Evervault(appId, apiKey, { curve });
  const label = `${curve}${role ? ' role=' + role : ''}`;
  for (const [name, value] of Object.entries(VALUES)) {
    const enc = await ev.encrypt(value, role);
    if (typeof value !== 'object') assert.ok(typeof enc === 'string' && enc.startsWith('ev:'), enc);
    const dec = await ev.decrypt(enc);
    // The SDK trims strings before encrypting them.
    const want = typeof value === 'string' ? value.trim() : value;
    assert.deepStrictEqual(dec, want, `${label} ${name}`);
    console.log(`ok ${label} ${name}`);
  }
  if (role) return; // the SDK refuses data roles for files
  const file = Buffer.from(Array.from({ length: 3000 }, (_, i) => i % 251));
  const encFile = await ev.encrypt(file, role);
  assert.ok(Buffer.isBuffer(encFile) && encFile.subarray(0, 6).toString() === '%EVENC');
  const decFile = await ev.decrypt(encFile);
  assert.ok(Buffer.compare(Buffer.from(decFile), file) === 0, `${label} file`);
  console.log(`ok ${label} file`);
}

// The largest file the SDK encrypts (EV_MAX_FILE_SIZE_IN_MB = 25, counted as 25 * 1024 * 1024
// bytes) decrypts through evserver; one byte more the SDK itself refuses.
async function checkLargestFile(curve) {
  const ev = new Evervault(appId, apiKey, { curve });
  const max = 25 * 1024 * 1024;
  const file = require('crypto').randomBytes(max);
  const enc = await ev.encrypt(file);
  assert.ok(Buffer.isBuffer(enc) && enc.length === max + 75, `${curve} largest file: ${enc.length}`);
  const dec = await ev.decrypt(enc);
  assert.ok(Buffer.compare(Buffer.from(dec), file) === 0, `${curve} largest file`);
  await assert.rejects(ev.encrypt(Buffer.alloc(max + 1)), /25MB/);
  console.log(`ok ${curve} largest file (25 MiB)`);
}

async function main() {
  for (const curve of ['secp256k1', 'prime256v1']) {
    for (const role of [null, 'test-role']) await checkCombination(curve, role);
  }
  for (const curve of ['secp256k1', 'prime256v1']) await checkLargestFile(curve);
  // A wrong key is refused, and the SDK surfaces the server's detail.
  const good = new Evervault(appId, apiKey);
  const enc = await good.encrypt('secret');
  const bad = new Evervault(appId, badKey);
  await assert.rejects(bad.decrypt(enc), (e) => {
    assert.ok(!String(e.message).includes('secret'), e.message);
    return true;
  });
  console.log('ok wrong key refused');
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error('FAIL', e && e.stack ? e.stack : e);
    process.exit(1);
  }
);
