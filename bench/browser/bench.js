// bench/browser/run's driver (see there). Prints one line per figure.
'use strict';
const path = require('path');
const SDK_MODULES = path.join(process.env.EVS_SOURCE_DIR, 'tests', 'integration', 'sdk', 'node_modules');
const puppeteer = require(path.join(SDK_MODULES, 'puppeteer-core'));
const API = process.env.EVS_API, PAGE = process.env.EVS_PAGE, APP = process.env.EVS_APP_ID, KEY = process.env.EVS_API_KEY;
const RUNS = +process.env.BENCH_RUNS || 7, N = 1000;
const median = (a) => { const s = [...a].sort((x, y) => x - y); return s[Math.floor(s.length / 2)]; };
const field = (i) => ('4242 4242 4242 ' + String(1000 + i)).slice(0, 19);

async function nodeSdk(curve) {
  process.env.EV_API_URL = API;
  const Evervault = require(path.join(SDK_MODULES, '@evervault', 'sdk'));
  const ev = new Evervault(APP, KEY, {curve});
  const obj = {};
  for (let i = 0; i < N; i++) obj['f' + i] = field(i);
  await ev.encrypt('warm-up');
  const one = [], many = [];
  for (let r = 0; r < RUNS; r++) {
    let t = process.hrtime.bigint();
    await ev.encrypt(obj);
    one.push(Number(process.hrtime.bigint() - t) / 1e6);
    t = process.hrtime.bigint();
    for (let i = 0; i < N; i++) await ev.encrypt(field(i));
    many.push(Number(process.hrtime.bigint() - t) / 1e6);
  }
  return {one: median(one), many: median(many)};
}

async function main() {
  const browser = await puppeteer.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium', headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
  });
  try {
    const page = await browser.newPage();
    await page.goto(PAGE + '?api=' + encodeURIComponent(API));
    await page.waitForFunction(() => window.__sdkLoaded === true);
    const b = await page.evaluate(async (app, N, RUNS) => {
      const field = (i) => ('4242 4242 4242 ' + String(1000 + i)).slice(0, 19);
      const median = (a) => { const s = [...a].sort((x, y) => x - y); return s[Math.floor(s.length / 2)]; };
      const ev = new Evervault('team_bench', app);
      await ev.encrypt('warm-up');
      const obj = {};
      for (let i = 0; i < N; i++) obj['f' + i] = field(i);
      const one = [], many = [];
      for (let r = 0; r < RUNS; r++) {
        let t = performance.now();
        await ev.encrypt(obj);
        one.push(performance.now() - t);
        t = performance.now();
        for (let i = 0; i < N; i++) await ev.encrypt(field(i));
        many.push(performance.now() - t);
      }
      return {one: median(one), many: median(many)};
    }, APP, N, RUNS);
    const p256 = await nodeSdk('prime256v1');
    const k1 = await nodeSdk('secp256k1');
    const fps = (ms) => Math.round(N / (ms / 1000));
    console.log('ev.encrypt, %d fields, median of %d runs (fields/s):', N, RUNS);
    console.log('  %s %s %s', 'who'.padEnd(34), 'one object'.padStart(12), '1,000 calls'.padStart(12));
    for (const [who, r] of [['browser SDK (Chromium, P-256)', b], ['Node SDK 6.4.0, prime256v1', p256], ['Node SDK 6.4.0, secp256k1', k1]])
      console.log('  %s %s %s', who.padEnd(34), String(fps(r.one)).padStart(12), String(fps(r.many)).padStart(12));
    console.log('  browser / Node (prime256v1): %sx one object, %sx calls',
                (p256.one / b.one).toFixed(2), (p256.many / b.many).toFixed(2));

    // Inputs: time from ev.inputs() to the iframe's ready message.
    const tti = async (ctxPage) => ctxPage.evaluate(async (app) => {
      document.getElementById('card').innerHTML = '';
      const t = performance.now();
      const inp = new Evervault('team_bench', app).inputs('#card', {theme: 'default'});
      await inp.isInputsLoaded;
      return performance.now() - t;
    }, APP);
    const cold = [], warm = [];
    for (let r = 0; r < RUNS; r++) {
      const ctx = await browser.createBrowserContext();
      const p = await ctx.newPage();
      await p.goto(PAGE + '?api=' + encodeURIComponent(API));
      await p.waitForFunction(() => window.__sdkLoaded === true);
      cold.push(await tti(p));
      warm.push(await tti(p));
      await ctx.close();
    }
    console.log('Inputs time to interactive (ev.inputs() to ready), median of %d: cold %s ms, warm %s ms',
                RUNS, median(cold).toFixed(1), median(warm).toFixed(1));
  } finally {
    await browser.close();
  }
}
main().catch((e) => { console.error(e); process.exit(1); });
