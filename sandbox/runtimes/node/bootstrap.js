// The Node bootstrap of a function box (docs/functions.md): run by evs-fnbox as
// `node /bootstrap/bootstrap.js <file>.<func> <egress socket or ''>` inside the box. It loads the
// handler from /function, says `ready` (or `fail`) on fd 3, then serves `run` frames one at a
// time: console output goes back as `log` frames (never to fd 1 or 2), context.encrypt/decrypt
// become `call` frames answered by `reply`, the outcome a `result` frame. After each run /tmp is
// emptied and the environment restored. Plain Node, no dependencies.
'use strict';

const { AsyncLocalStorage } = require('async_hooks');
const fs = require('fs');
const net = require('net');
const path = require('path');
const util = require('util');

const MAX_FRAME = 32 * 1024 * 1024;
const handlerSpec = process.argv[2] || '';
const egressPath = process.argv[3] || null; // '' without --egress
const envSnapshot = Object.assign({}, process.env);

const chan = new net.Socket({ fd: 3, readable: true, writable: true });

function send(obj) {
  return sendRaw(Buffer.from(JSON.stringify(obj), 'utf8'));
}

function sendRaw(body) {
  if (body.length > MAX_FRAME) return false;
  const hdr = Buffer.allocUnsafe(4);
  hdr.writeUInt32BE(body.length, 0);
  chan.write(Buffer.concat([hdr, body]));
  return true;
}

function errorOf(e) {
  if (e instanceof Error) return { message: String(e.message), stack: String(e.stack || '') };
  let message;
  try {
    message = typeof e === 'string' ? e : JSON.stringify(e);
  } catch (_) {
    message = String(e);
  }
  return { message: String(message), stack: '' };
}

// ---- console: log frames of the current run ------------------------------------------------
let current = null; // { id, seq, pending: Map(seq -> {resolve, reject}) }
// Which run the code that is running belongs to: a timer or promise left over from an earlier
// run must not write into the current run's log (its output would carry the earlier data).
const als = new AsyncLocalStorage();

function emitLog(stream, text) {
  const run = als.getStore();
  if (!run || run !== current || text === '') return; // outside its run: dropped
  send({ t: 'log', id: run.id, stream, text: String(text) });
}
for (const [name, stream] of [['log', 'stdout'], ['info', 'stdout'], ['debug', 'stdout'],
  ['warn', 'stderr'], ['error', 'stderr'], ['trace', 'stderr']]) {
  console[name] = (...args) => emitLog(stream, util.format(...args) + '\n');
}
console.dir = (obj, opts) => emitLog('stdout', util.inspect(obj, opts) + '\n');
for (const [s, stream] of [[process.stdout, 'stdout'], [process.stderr, 'stderr']]) {
  s.write = (chunk, enc, cb) => {
    emitLog(stream, typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString('utf8'));
    if (typeof enc === 'function') enc(); else if (typeof cb === 'function') cb();
    return true;
  };
}

// ---- egress: HTTP(S) through the CONNECT proxy on a unix socket ----------------------------
function tunnel(host, port, cb) {
  const sock = net.connect({ path: egressPath });
  let buf = Buffer.alloc(0);
  const onData = (d) => {
    buf = Buffer.concat([buf, d]);
    const end = buf.indexOf('\r\n\r\n');
    if (end < 0) {
      if (buf.length > 16384) fail(new Error('egress proxy: response head too long'));
      return;
    }
    sock.removeListener('data', onData);
    sock.removeListener('error', fail);
    const status = /^HTTP\/1\.[01] (\d{3})/.exec(buf.toString('latin1', 0, end));
    if (!status || status[1] !== '200') {
      sock.destroy();
      const why = status ? status[1] : 'bad reply';
      const err = new Error(`egress proxy refused ${host}:${port} (${why})`);
      err.code = 'EEGRESS';
      return cb(err);
    }
    const rest = buf.subarray(end + 4);
    if (rest.length) sock.unshift(rest);
    cb(null, sock);
  };
  const fail = (e) => { sock.destroy(); cb(e); };
  sock.on('data', onData);
  sock.on('error', fail);
  sock.on('connect', () => {
    const hp = net.isIPv6(host) ? `[${host}]:${port}` : `${host}:${port}`;
    sock.write(`CONNECT ${hp} HTTP/1.1\r\nHost: ${hp}\r\n\r\n`);
  });
}

if (egressPath) {
  const http = require('http');
  const https = require('https');
  const tls = require('tls');
  class HttpAgent extends http.Agent {
    createConnection(opts, cb) {
      tunnel(opts.host || 'localhost', opts.port || 80, cb);
    }
  }
  class HttpsAgent extends https.Agent {
    createConnection(opts, cb) {
      tunnel(opts.host || 'localhost', opts.port || 443, (err, sock) => {
        if (err) return cb(err);
        const servername = opts.servername || (net.isIP(opts.host) ? undefined : opts.host);
        const t = tls.connect(Object.assign({}, opts, { socket: sock, servername }));
        cb(null, t);
      });
    }
  }
  http.globalAgent = new HttpAgent({ keepAlive: false });
  https.globalAgent = new HttpsAgent({ keepAlive: false });
  // fetch (undici): Node 20 does not export its Agent, but the global dispatcher is one.
  try {
    const sym = Symbol.for('undici.globalDispatcher.1');
    const install = () => {
      const d = globalThis[sym];
      if (!d || d.__evsEgress) return !!d;
      const Agent = d.constructor;
      const a = new Agent({
        connect: (o, cb) => {
          const port = Number(o.port) || (o.protocol === 'https:' ? 443 : 80);
          tunnel(o.hostname, port, (err, sock) => {
            if (err) return cb(err);
            if (o.protocol !== 'https:') return cb(null, sock);
            const t = tls.connect({ socket: sock, servername: o.servername || o.hostname,
              ALPNProtocols: ['http/1.1'] });
            t.once('secureConnect', () => cb(null, t));
            t.once('error', (e) => cb(e));
          });
        },
      });
      a.__evsEgress = true;
      globalThis[sym] = a;
      return true;
    };
    if (typeof fetch === 'function' && !install()) {
      const realFetch = globalThis.fetch;
      globalThis.fetch = async function (...args) {
        // The first call creates the dispatcher: make it (a data: URL needs no network), swap.
        if (!globalThis[sym]) { try { await realFetch('data:,'); } catch (_) { } }
        install();
        return realFetch.apply(this, args);
      };
    }
  } catch (_) { /* fetch keeps its default: no network in the box */ }
}

// ---- calls: context.encrypt / decrypt -------------------------------------------------------
function call(run, op, data) {
  if (run !== current) return Promise.reject(new Error(`context.${op} called after its run`));
  const seq = ++run.seq;
  return new Promise((resolve, reject) => {
    run.pending.set(seq, { resolve, reject });
    if (!send({ t: 'call', id: run.id, seq, op, data: data === undefined ? null : data })) {
      run.pending.delete(seq);
      reject(new Error(`context.${op}: value too large`));
    }
  });
}

// ---- after a run ----------------------------------------------------------------------------
// Removes everything under dir. The box has no capability, so a directory the function made
// unreadable or unwritable is opened up first.
function removeTree(dir) {
  let names;
  try {
    fs.chmodSync(dir, dir === '/tmp' ? 0o1777 : 0o700);
    names = fs.readdirSync(dir);
  } catch (_) { return; }
  for (const n of names) {
    const p = path.join(dir, n);
    let st;
    try { st = fs.lstatSync(p); } catch (_) { continue; }
    if (st.isDirectory()) {
      removeTree(p);
      try { fs.rmdirSync(p); } catch (_) { }
    } else {
      try { fs.unlinkSync(p); } catch (_) { }
    }
  }
}

// Whether /tmp is empty afterwards: if not, the box must not serve another run.
function cleanTmp() {
  removeTree('/tmp');
  try { return fs.readdirSync('/tmp').length === 0; } catch (_) { return false; }
}

function restoreEnv() {
  for (const k of Object.keys(process.env)) if (!(k in envSnapshot)) delete process.env[k];
  for (const [k, v] of Object.entries(envSnapshot)) if (process.env[k] !== v) process.env[k] = v;
}

// ---- the handler ----------------------------------------------------------------------------
let handler = null;
// CommonJS first (require), an ES module (`export const handler`, .mjs) through import().
async function load() {
  const dot = handlerSpec.lastIndexOf('.');
  if (dot <= 0) throw new Error(`handler must be <file>.<func>, got '${handlerSpec}'`);
  const file = handlerSpec.slice(0, dot);
  const func = handlerSpec.slice(dot + 1);
  const base = path.resolve('/function', file);
  let mod;
  try {
    mod = require(base);
  } catch (e) {
    const mjs = fs.existsSync(base + '.mjs') ? base + '.mjs' : null;
    if (e.code !== 'ERR_REQUIRE_ESM' && !(e.code === 'MODULE_NOT_FOUND' && mjs)) throw e;
    mod = await import(require('url').pathToFileURL(mjs || require.resolve(base)).href);
  }
  const fn = mod && mod[func];
  if (typeof fn !== 'function') throw new Error(`${file} does not export a function '${func}'`);
  handler = fn;
}

const queue = [];
let busy = false;

async function serve(frame) {
  current = { id: String(frame.id), seq: 0, pending: new Map() };
  const run = current;
  const context = {
    runId: run.id,
    encrypt: (v) => call(run, 'encrypt', v),
    decrypt: (v) => call(run, 'decrypt', v),
  };
  let out;
  try {
    const payload = frame.payload === undefined ? null : frame.payload;
    const value = await als.run(run, () => handler(payload, context));
    out = { t: 'result', id: run.id, ok: true, result: value === undefined ? null : value };
    try { out = JSON.stringify(out); } catch (e) {
      const err = new Error(`result is not JSON: ${e.message}`);
      out = { t: 'result', id: run.id, ok: false, error: errorOf(err) };
    }
    if (typeof out === 'string' && Buffer.byteLength(out) > MAX_FRAME)
      out = { t: 'result', id: run.id, ok: false, 
              error: { message: 'result too large', stack: '' } };
  } catch (e) {
    out = { t: 'result', id: run.id, ok: false, error: errorOf(e) };
  }
  finish(run, out);
}

// out: the result frame, or its JSON already made.
function finish(run, out) {
  if (current !== run) return;
  current = null;
  for (const p of run.pending.values()) p.reject(new Error('the run is over'));
  if (typeof out === 'string') sendRaw(Buffer.from(out, 'utf8'));
  else send(out);
  // Nothing of this run may reach the next: /tmp, the environment, the working directory.
  // What cannot be undone ends the box (the plugin starts a fresh one).
  if (!cleanTmp()) return chan.end(() => process.exit(1));
  restoreEnv();
  try { process.chdir('/function'); } catch (_) { }
  busy = false;
  next();
}

function next() {
  if (busy || !queue.length) return;
  busy = true;
  serve(queue.shift());
}

// A throw outside the handler's promise chain fails the current run, not the box.
function failCurrent(e) {
  if (current) finish(current, { t: 'result', id: current.id, ok: false, error: errorOf(e) });
}
process.on('uncaughtException', failCurrent);
process.on('unhandledRejection', failCurrent);

function onFrame(obj) {
  if (!obj || typeof obj !== 'object') return protocolError();
  if (obj.t === 'run') {
    queue.push(obj);
    next();
  } else if (obj.t === 'reply') {
    const p = current && current.pending.get(obj.seq);
    if (!p) return;
    current.pending.delete(obj.seq);
    if (obj.ok) p.resolve(obj.data);
    else p.reject(new Error(String(obj.error || `context call failed`)));
  }
}

function protocolError() {
  chan.destroy();
  process.exit(1);
}

let inbuf = Buffer.alloc(0);
chan.on('data', (d) => {
  inbuf = inbuf.length ? Buffer.concat([inbuf, d]) : d;
  while (inbuf.length >= 4) {
    const len = inbuf.readUInt32BE(0);
    if (len > MAX_FRAME) return protocolError();
    if (inbuf.length < 4 + len) break;
    const body = inbuf.subarray(4, 4 + len);
    inbuf = inbuf.subarray(4 + len);
    let obj;
    try { obj = JSON.parse(body.toString('utf8')); } catch (_) { return protocolError(); }
    onFrame(obj);
  }
});
chan.on('end', () => process.exit(0));
chan.on('error', () => process.exit(1));

load().then(() => send({ t: 'ready' }), (e) => {
  send({ t: 'fail', error: errorOf(e) });
  chan.end(() => process.exit(1));
});
