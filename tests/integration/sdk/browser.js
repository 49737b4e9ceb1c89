// tests/integration/test_85_browser.py drives this: the browser SDK and the Inputs iframe in
// Debian's headless Chromium (puppeteer-core), against a running evserver. Environment:
//   EVS_API       evserver's API origin (http://127.0.0.1:<port>)
//   EVS_PAGE      the test page's URL at an allowed origin (http://127.0.0.1:<port>/page.html)
//   EVS_BAD_PAGE  the same page at an origin the app does not allow (http://localhost:<port>/...)
//   EVS_APP_ID, EVS_API_KEY (api:decrypt), CHROMIUM (default /usr/bin/chromium)
//   EVS_REFERENCES  directory of the theme screenshots; EVS_UPDATE_REFERENCES=1 rewrites them
// Prints one line per check; exits non-zero at the first failure.
'use strict';
const assert = require('assert');
const fs = require('fs');
const path = require('path');
const puppeteer = require('puppeteer-core');
const {PNG} = require('pngjs');
const pixelmatch = require('pixelmatch');

const API = process.env.EVS_API, PAGE = process.env.EVS_PAGE, BAD_PAGE = process.env.EVS_BAD_PAGE;
const APP = process.env.EVS_APP_ID, KEY = process.env.EVS_API_KEY;
const BASIC = 'Basic ' + Buffer.from(APP + ':' + KEY).toString('base64');
const EV_RE = /^ev:Tk9D(:number|:boolean)?:[A-Za-z0-9+/]{16}:[A-Za-z0-9+/]{44}:[A-Za-z0-9+/]+:\$$/;
// The screenshots must match their references within this: pixelmatch's per-pixel colour
// threshold 0.2 (anti-aliasing noise) and at most 1.5% of pixels different. Reruns on one
// machine differ by 0 pixels; a theme change (another theme, a moved label) differs by 5-30%.
const PIXEL_THRESHOLD = 0.2, MAX_DIFF_RATIO = 0.015;

function ok(what) { console.log('ok - ' + what); }

async function apiDecrypt(data) {
  const r = await fetch(API + '/decrypt', {method: 'POST', headers: {authorization: BASIC, 'content-type': 'application/json'},
                                         body: JSON.stringify({data})});
  const j = await r.json();
  assert.strictEqual(r.status, 200, JSON.stringify(j));
  return j.data;
}
async function apiDecryptFile(buf) {
  const r = await fetch(API + '/decrypt', {method: 'POST', headers: {authorization: BASIC, 'content-type': 'application/octet-stream'}, body: buf});
  assert.strictEqual(r.status, 200);
  return Buffer.from(await r.arrayBuffer());
}
function luhnOk(d) {
  let s = 0, dbl = false;
  for (let i = d.length - 1; i >= 0; i--) { let n = +d[i]; if (dbl) { n *= 2; if (n > 9) n -= 9; } s += n; dbl = !dbl; }
  return s % 10 === 0;
}

async function newPage(browser, url, record) {
  const page = await browser.newPage();
  await page.setViewport({width: 480, height: 400, deviceScaleFactor: 1});
  page.on('request', (req) => record.push({url: req.url(), body: req.postData() || ''}));
  page.on('console', (m) => { if (m.type() === 'error') console.log('# console: ' + m.text()); });
  await page.goto(url + '?api=' + encodeURIComponent(API), {waitUntil: 'load'});
  await page.waitForFunction(() => window.__sdkLoaded === true, {timeout: 10000});
  return page;
}
async function mount(page, config) {
  await page.evaluate((app, config) => {
    document.getElementById('card').innerHTML = '';
    window.__changes = [];
    window.__ready = false;
    const ev = new Evervault('team_evserver', app);
    window.__inputs = ev.inputs('#card', config);
    window.__inputs.on('change', (c) => window.__changes.push(c));
    window.__inputs.isInputsLoaded.then(() => { window.__ready = true; });
  }, APP, config);
  await page.waitForFunction(() => window.__ready === true, {timeout: 10000});
  const handle = await page.$('#card iframe');
  const frame = await handle.contentFrame();
  await frame.waitForSelector('#number');
  return {frame, handle};
}
async function lastChange(page, pred, what) {
  await page.waitForFunction((p) => { const c = window.__changes[window.__changes.length - 1]; return c && new Function('c', 'return ' + p)(c); },
                             {timeout: 10000}, pred).catch(async () => {
    const c = await page.evaluate(() => window.__changes[window.__changes.length - 1]);
    throw new Error(what + ': last change ' + JSON.stringify(c));
  });
  return page.evaluate(() => window.__changes[window.__changes.length - 1]);
}
async function clearType(frame, sel, text) {
  await frame.$eval(sel, (e) => { e.value = ''; e.dispatchEvent(new Event('input', {bubbles: true})); });
  await frame.type(sel, text);
}

async function main() {
  const browser = await puppeteer.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium', headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--font-render-hinting=none', '--hide-scrollbars',
           '--disable-features=IsolateOrigins,site-per-process', '--disable-dev-shm-usage'],
  });
  const requests = [];
  try {
    const page = await newPage(browser, PAGE, requests);

    // ---- 1. encrypt in the page, decrypt through evserver, compare with the Node SDK ----------
    const out = await page.evaluate(async (app) => {
      const ev = new Evervault('team_evserver', app);
      const bytes = new Uint8Array(300); for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 7) & 255;
      const enc = await ev.encrypt({s: '  hello browser ', n: 1.5, i: 42, t: true, f: false, nested: {a: ['x', 2, null]}, nul: null});
      const file = await ev.encrypt(new File([bytes], 'f.bin'));
      const fb = new Uint8Array(await file.arrayBuffer());
      let bin = ''; fb.forEach((b) => { bin += String.fromCharCode(b); });
      return {enc, file: btoa(bin), str: await ev.encrypt('abc'), num: await ev.encrypt(7), bool: await ev.encrypt(true)};
    }, APP);
    for (const v of [out.enc.s, out.enc.n, out.enc.t, out.str, out.num, out.bool]) assert.match(v, EV_RE);
    assert.ok(out.enc.n.startsWith('ev:Tk9D:number:') && out.enc.t.startsWith('ev:Tk9D:boolean:'));
    assert.strictEqual(out.enc.nul, null);
    const dec = await apiDecrypt(out.enc);
    assert.deepStrictEqual(dec, {s: 'hello browser', n: 1.5, i: 42, t: true, f: false, nested: {a: ['x', 2, null]}, nul: null});
    assert.deepStrictEqual(await apiDecrypt([out.str, out.num, out.bool]), ['abc', 7, true]);
    const fileBytes = Buffer.from(out.file, 'base64');
    const plainFile = await apiDecryptFile(fileBytes);
    assert.deepStrictEqual([...plainFile], Array.from({length: 300}, (_, i) => (i * 7) & 255));
    ok('ev.encrypt: strings, numbers, booleans, objects, a file; evserver decrypts them typed');
    // For test_85_browser.py: the Inbound Relay decrypts these in a destination's response.
    if (process.env.EVS_OUT) fs.writeFileSync(process.env.EVS_OUT, JSON.stringify(out.enc));

    // Byte formats against the Node SDK with prime256v1 (PROTOCOL.md §3, §4).
    process.env.EV_API_URL = API;
    const Evervault = require('@evervault/sdk');
    const node = new Evervault(APP, KEY, {curve: 'prime256v1'});
    const nStr = await node.encrypt('abc'), nNum = await node.encrypt(7), nFile = await node.encrypt(Buffer.alloc(300, 1));
    const fields = (s) => s.split(':');
    for (const [b, n] of [[out.str, nStr], [out.num, nNum]]) {
      const fb = fields(b), fn = fields(n);
      assert.strictEqual(fb.length, fn.length);
      assert.deepStrictEqual(fb.map((x) => x.length), fn.map((x) => x.length), b + ' vs ' + n);
      assert.strictEqual(fb[1], fn[1]);
      const eb = Buffer.from(fb[fb.length - 3], 'base64'), en = Buffer.from(fn[fn.length - 3], 'base64');
      assert.strictEqual(eb.length, 33); assert.ok(eb[0] === 2 || eb[0] === 3); assert.strictEqual(en.length, 33);
    }
    assert.strictEqual(fileBytes.length, nFile.length);
    assert.deepStrictEqual([...fileBytes.subarray(0, 9)], [...nFile.subarray(0, 9)]);
    assert.strictEqual(fileBytes[54], nFile[54]);
    assert.deepStrictEqual(await apiDecrypt([nStr, nNum]), ['abc', 7]);
    ok('byte formats equal the Node SDK\'s (prime256v1): field lengths, version tags, %EVENC header');

    // The Node SDK's own vectors (/work/shared/interop/vectors.json, copied as
    // tests/integration/data/browser/p256-vectors.json): every intermediate of the browser's
    // derivation (point decompression, ECDH, explicit-parameter SPKI, KDF, AAD) equals the Node
    // SDK's, byte for byte, and the browser opens the SDK's ciphertexts; then the browser's own
    // output opens with a reference derivation written here with Node's crypto.
    const vec = JSON.parse(fs.readFileSync(path.join(process.env.EVS_REFERENCES, 'p256-vectors.json')));
    const got = await page.evaluate(async (vec) => {
      const P = Evervault._p256, subtle = crypto.subtle;
      const hex = (b) => Array.from(new Uint8Array(b), (x) => x.toString(16).padStart(2, '0')).join('');
      const unhex = (h) => new Uint8Array(h.match(/../g).map((x) => parseInt(x, 16)));
      const b64u = (b) => btoa(String.fromCharCode(...b)).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
      const out = [];
      for (const v of vec.vectors) {
        const appPub = Evervault._unb64(v.appPublicKey), u = P.decompress(appPub);
        const priv = await subtle.importKey('jwk', {kty: 'EC', crv: 'P-256', d: b64u(unhex(v.appPrivateKey)), x: b64u(u.subarray(1, 33)), y: b64u(u.subarray(33))},
                                            {name: 'ECDH', namedCurve: 'P-256'}, false, ['deriveBits']);
        const ephU = P.decompress(unhex(v.intermediate.ephemeralPublicKeyHex));
        const eph = await subtle.importKey('raw', ephU, {name: 'ECDH', namedCurve: 'P-256'}, false, []);
        const z = new Uint8Array(await subtle.deriveBits({name: 'ECDH', public: eph}, priv, 256));
        const spki = new Uint8Array([...P.SPKI_PREFIX, ...ephU]);
        const aes = new Uint8Array(await subtle.digest('SHA-256', new Uint8Array([...z, 0, 0, 0, 1, ...spki])));
        const f = v.ciphertext.split(':');
        const key = await subtle.importKey('raw', aes, 'AES-GCM', false, ['decrypt']);
        const plain = await subtle.decrypt({name: 'AES-GCM', iv: Evervault._unb64(f[f.length - 4]), additionalData: appPub}, key, Evervault._unb64(f[f.length - 2]));
        const mine = await new Evervault._Keys(appPub).encryptText(v.plaintext, v.datatype === 'string' ? null : v.datatype);
        out.push({name: v.name, z: hex(z), spki: hex(spki), aes: hex(aes), plain: new TextDecoder().decode(plain),
                  ephCompressed: hex(P.compress(ephU)), mine});
      }
      return out;
    }, vec);
    const nodeCrypto = require('crypto');
    for (let i = 0; i < vec.vectors.length; i++) {
      const v = vec.vectors[i], g = got[i], im = v.intermediate;
      assert.strictEqual(g.z, im.sharedSecretHex, v.name + ' ECDH');
      assert.strictEqual(g.spki, im.spkiHex, v.name + ' SPKI');
      assert.strictEqual(g.aes, im.aesKeyHex, v.name + ' AES key');
      assert.strictEqual(g.plain, v.plaintext, v.name + ' plaintext');
      assert.strictEqual(g.ephCompressed, im.ephemeralPublicKeyHex, v.name + ' compression');
      assert.strictEqual(im.aadHex, Buffer.from(v.appPublicKey, 'base64').toString('hex'));
      // The browser's ciphertext, opened with Node's crypto and the vector's private key.
      const f = g.mine.split(':');
      assert.strictEqual(f.length, v.ciphertext.split(':').length, g.mine);
      const ecdh = nodeCrypto.createECDH('prime256v1');
      ecdh.setPrivateKey(Buffer.from(v.appPrivateKey, 'hex'));
      const ephC = Buffer.from(f[f.length - 3], 'base64');
      const z = ecdh.computeSecret(ephC);
      const ephUn = nodeCrypto.ECDH.convertKey(ephC, 'prime256v1', undefined, undefined, 'uncompressed');
      const spki = Buffer.concat([Buffer.from(im.spkiHex, 'hex').subarray(0, 270), ephUn]);
      const aes = nodeCrypto.createHash('sha256').update(Buffer.concat([z, Buffer.from([0, 0, 0, 1]), spki])).digest();
      const ct = Buffer.from(f[f.length - 2], 'base64');
      const d = nodeCrypto.createDecipheriv('aes-256-gcm', aes, Buffer.from(f[f.length - 4], 'base64'));
      d.setAAD(Buffer.from(v.appPublicKey, 'base64'));
      d.setAuthTag(ct.subarray(ct.length - 16));
      assert.strictEqual(Buffer.concat([d.update(ct.subarray(0, ct.length - 16)), d.final()]).toString(), v.plaintext);
      assert.strictEqual(f[1], v.version);
      if (v.datatype !== 'string') assert.strictEqual(f[2], v.datatype);
    }
    ok('the Node SDK\'s ' + vec.vectors.length + ' P-256 vectors: ECDH, SPKI, KDF, AAD and compression byte for byte; the browser\'s output opens with a reference derivation');

    // ---- 2. client-side tokens: bound to the payload, single use --------------------------------
    const mk = async (payload, expiry) => {
      const r = await fetch(API + '/client-side-tokens', {method: 'POST', headers: {authorization: BASIC, 'content-type': 'application/json'},
                                                        body: JSON.stringify(Object.assign({action: 'api:decrypt', payload}, expiry !== undefined ? {expiry} : {}))});
      assert.strictEqual(r.status, 200);
      return r.json();
    };
    const tok = await mk(out.enc, 123);
    assert.match(tok.token, /^[0-9a-f]{64}$/); assert.match(tok.id, /^cst_/);
    assert.ok(tok.expiry > Date.now() && tok.expiry - tok.createdAt === 5 * 60 * 1000);
    const tryDecrypt = (token, data) => page.evaluate(async (app, token, data) => {
      try { return {ok: await new Evervault('team_evserver', app).decrypt(token, data)}; }
      catch (e) { return {status: e.status, code: e.code}; }
    }, APP, token, data);
    assert.deepStrictEqual(await tryDecrypt(tok.token, out.str), {status: 403, code: 'payload-verification-error'});
    const first = await tryDecrypt(tok.token, out.enc);
    assert.deepStrictEqual(first.ok, dec);
    assert.deepStrictEqual(await tryDecrypt(tok.token, out.enc), {status: 401, code: 'token-used'});
    assert.deepStrictEqual(await tryDecrypt('0'.repeat(64), out.enc), {status: 401, code: 'unauthorized'});
    const sdkTok = await node.createClientSideDecryptToken(out.str);
    assert.ok(new Date(sdkTok.expiry).getTime() > Date.now());
    assert.deepStrictEqual(await tryDecrypt(sdkTok.token, out.str), {ok: 'abc'});
    ok('client-side tokens: bound to the payload, decrypt once in the page, then token-used; the Node SDK\'s createClientSideDecryptToken');

    // ---- 3. Inputs: each brand valid and invalid, the emitted JSON --------------------------
    const cards = [
      ['visa', '4242424242424242', '123'], ['mastercard', '5555555555554444', '321'],
      ['american_express', '378282246310005', '1234'], ['discover', '6011111111111117', '456'],
      ['diners_club', '36227206271667', '789'], ['jcb', '3530111333300000', '246'],
      ['unionpay', '6200000000000005', '135'], ['maestro', '6759649826438453', '975'],
      ['mastercard', '2223003122003222', '864'],
    ];
    for (const c of cards) assert.ok(luhnOk(c[1]), c[1]);
    const {frame} = await mount(page, {theme: 'default'});
    const plaintexts = [];
    for (const [type, pan, cvc] of cards) {
      plaintexts.push(pan);
      // Empty every field first, so that no state of the previous card can look valid.
      for (const sel of ['#number', '#expiry', '#cvc']) await clearType(frame, sel, '');
      await lastChange(page, 'c.isEmpty === true', 'cleared');
      await clearType(frame, '#number', pan);
      await clearType(frame, '#expiry', '12/34');
      await clearType(frame, '#cvc', cvc);
      const ch = await lastChange(page, 'c.isValid === true && c.card.cvc !== null', type);
      assert.strictEqual(ch.card.type, type);
      assert.match(ch.card.number, EV_RE); assert.match(ch.card.cvc, EV_RE);
      assert.strictEqual(ch.card.expMonth, '12'); assert.strictEqual(ch.card.expYear, '34');
      assert.strictEqual(ch.isPotentiallyValid, true); assert.strictEqual(ch.isEmpty, false);
      assert.strictEqual(ch.error, undefined);
      assert.deepStrictEqual(await apiDecrypt([ch.card.number, ch.card.cvc]), [pan, cvc]);
      // The same number with its last digit changed fails Luhn: after leaving the field it is invalid.
      const bad = pan.slice(0, -1) + String((+pan.slice(-1) + 1) % 10);
      plaintexts.push(bad);
      await clearType(frame, '#number', bad);
      await frame.focus('#expiry');
      const chb = await lastChange(page, 'c.isValid === false && c.error && c.error.type === "invalid_pan"', type + ' invalid');
      assert.strictEqual(chb.card.number, null);
      assert.strictEqual(chb.error.message, 'The credit card number you entered was invalid');
    }
    ok('Inputs: ' + cards.length + ' valid cards of 8 brands (type, ev: number and CVC, expiry) and each made invalid');
    await clearType(frame, '#number', '1234');
    let ch = await lastChange(page, 'c.isPotentiallyValid === false', 'unknown prefix');
    assert.strictEqual(ch.error.type, 'invalid_pan');
    await clearType(frame, '#number', '4242424242424242');
    await clearType(frame, '#expiry', '13');
    // (after "1" the field, left before, is already reported incomplete: wait for "13" itself)
    ch = await lastChange(page, 'c.error && c.error.type === "invalid_expiry" && c.isPotentiallyValid === false', 'month 13');
    assert.strictEqual(ch.card.expMonth, '13');
    await clearType(frame, '#expiry', '01/20');
    ch = await lastChange(page, 'c.error && c.error.type === "invalid_expiry" && c.card.expYear === "20"', 'past expiry');
    await clearType(frame, '#expiry', '12/34');
    await clearType(frame, '#cvc', '12345');
    ch = await lastChange(page, 'c.isValid === true', 'cvc cut to 3');
    await clearType(frame, '#cvc', '1');
    await frame.focus('#number');
    ch = await lastChange(page, 'c.error && c.error.type === "invalid_cvc"', 'short cvc');
    for (const sel of ['#number', '#expiry', '#cvc']) await clearType(frame, sel, '');
    ch = await lastChange(page, 'c.isEmpty === true', 'empty');
    assert.strictEqual(ch.isValid, false);
    ok('Inputs: unknown prefix, bad and past expiry, CVC length, empty');

    // disableCVV: no CVC field, valid without it.
    const m2 = await mount(page, {disableCVV: true, height: '120px'});
    assert.strictEqual(await m2.frame.$eval('#cvc-field', (e) => getComputedStyle(e).display), 'none');
    assert.strictEqual(await page.$eval('#card iframe', (e) => e.getBoundingClientRect().height), 120);
    await m2.frame.type('#number', '4242424242424242');
    await m2.frame.type('#expiry', '1234');
    ch = await lastChange(page, 'c.isValid === true', 'no cvc');
    assert.strictEqual(ch.card.cvc, null);
    ok('Inputs: disableCVV hides the CVC and a card is valid without it; height sizes the iframe');

    // Labels at start and with setLabels; the expiry placeholder.
    const m3 = await mount(page, {cardNumberLabel: 'Numéro de carte', expirationDatePlaceholder: 'MM / AA'});
    assert.strictEqual(await m3.frame.$eval('#number-label', (e) => e.textContent), 'Numéro de carte');
    assert.strictEqual(await m3.frame.$eval('#expiry', (e) => e.placeholder), 'MM / AA');
    await page.evaluate(() => window.__inputs.setLabels({cardNumberLabel: 'Kartennummer', securityCodeLabel: 'Prüfnummer',
                                                          invalidCardNumberLabel: 'Ungültige Kartennummer'}));
    await m3.frame.waitForFunction(() => document.getElementById('number-label').textContent === 'Kartennummer');
    assert.strictEqual(await m3.frame.$eval('#cvc-label', (e) => e.textContent), 'Prüfnummer');
    await m3.frame.type('#number', '1234');
    ch = await lastChange(page, 'c.error && c.error.message === "Ungültige Kartennummer"', 'localised error');
    ok('Inputs: labels at start, setLabels, a localised error message');

    // ---- 4. themes: screenshots against committed references -----------------------------------
    const refs = process.env.EVS_REFERENCES;
    const shots = {};
    for (const theme of ['default', 'minimal', 'material']) {
      const m = await mount(page, {theme, primaryColor: '#0a7d4f', inputBorderRadius: '4px'});
      await m.frame.type('#number', '4242');
      await m.frame.$eval('#number', (e) => e.blur());
      await new Promise((r) => setTimeout(r, 200));
      const png = PNG.sync.read(await m.handle.screenshot({type: 'png'}));
      shots[theme] = png;
      const ref = path.join(refs, 'theme-' + theme + '.png');
      if (process.env.EVS_UPDATE_REFERENCES === '1' || !fs.existsSync(ref)) {
        fs.writeFileSync(ref, PNG.sync.write(png));
        console.log('# wrote ' + ref);
        continue;
      }
      const want = PNG.sync.read(fs.readFileSync(ref));
      assert.strictEqual(png.width, want.width); assert.strictEqual(png.height, want.height);
      const diff = pixelmatch(png.data, want.data, null, png.width, png.height, {threshold: PIXEL_THRESHOLD});
      const ratio = diff / (png.width * png.height);
      console.log('# theme ' + theme + ': ' + diff + ' pixels differ (' + (100 * ratio).toFixed(2) + '%)');
      assert.ok(ratio <= MAX_DIFF_RATIO, theme + ' differs from its reference by ' + (100 * ratio).toFixed(2) + '%');
    }
    for (const [a, b] of [['default', 'minimal'], ['default', 'material'], ['minimal', 'material']]) {
      if (shots[a].width !== shots[b].width || shots[a].height !== shots[b].height) continue; // differ already
      const d = pixelmatch(shots[a].data, shots[b].data, null, shots[a].width, shots[a].height, {threshold: 0.01});
      assert.ok(d / (shots[a].width * shots[a].height) > 2 * MAX_DIFF_RATIO, a + ' and ' + b + ' look the same');
    }
    ok('themes default, minimal, material render as their references (and differ from each other)');

    // ---- 5. the plaintext never left the iframe ---------------------------------------------
    const msgs = await page.evaluate(() => window.__msgs);
    assert.ok(msgs.length > 20);
    for (const m of msgs) {
      assert.strictEqual(m.origin, new URL(API).origin);
      for (const p of plaintexts) assert.ok(!m.data.includes(p) && !m.data.includes(p.replace(/(\d{4})/g, '$1 ').trim()), 'plaintext in a message');
    }
    for (const r of requests)
      for (const p of plaintexts) assert.ok(!r.url.includes(p) && !r.body.includes(p), 'plaintext in a request to ' + r.url);
    ok('no card number in any of ' + msgs.length + ' messages to the page or ' + requests.length + ' requests');
    await page.close();

    // ---- 6. a page at an origin the app does not allow --------------------------------------
    const bad = await newPage(browser, BAD_PAGE, []);
    const statuses = [];
    bad.on('response', (r) => { if (r.url().includes('/inputs.html')) statuses.push(r.status()); });
    await bad.evaluate((app) => {
      window.__ready = false;
      const inp = new Evervault('team_evserver', app).inputs('#card', {});
      inp.isInputsLoaded.then(() => { window.__ready = true; });
    }, APP);
    // ... and one that forges the allowed origin in the URL: the CSP's frame-ancestors refuses it.
    const allowed = new URL(PAGE).origin;
    await bad.evaluate((api, app, origin) => {
      const f = document.createElement('iframe');
      f.id = 'forged';
      f.src = api + '/browser/inputs.html?app=' + app + '&origin=' + encodeURIComponent(origin);
      document.body.appendChild(f);
    }, API, APP, allowed);
    await new Promise((r) => setTimeout(r, 2000));
    assert.strictEqual(await bad.evaluate(() => window.__ready), false);
    assert.ok(statuses.includes(403), 'the SDK\'s iframe request was not refused: ' + statuses);
    assert.strictEqual((await bad.evaluate(() => window.__msgs)).length, 0);
    const forged = await (await bad.$('#forged')).contentFrame();
    const hasForm = forged ? await forged.evaluate(() => !!document.getElementById('number')).catch(() => false) : false;
    assert.strictEqual(hasForm, false, 'the iframe rendered inside a page at a forbidden origin');
    ok('Inputs refuse to run embedded from a non-allowed origin (403 for its own origin; frame-ancestors for a forged one)');
  } finally {
    await browser.close();
  }
}

main().catch((e) => { console.error('FAIL: ' + (e && e.stack || e)); process.exit(1); });
