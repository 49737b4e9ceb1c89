'use strict';
/*
 * One run of the unmodified Evervault SDK (6.4.0) against a real HTTPS server, for
 * attest.test.js: the server serves /.well-known/attestation with a given document and every
 * other path with "hello from the cage"; the SDK's createEnclaveHttpsAgent, given these
 * bindings and the expected PCRs, must let the request through or refuse the connection.
 *
 * Environment (set by the parent, before the SDK reads it): EV_ENCLAVES_HOSTNAME=enclave.test,
 * NODE_EXTRA_CA_CERTS (the test CA), and EVS_SDK_DIR, ATT_ROOT (attestation root PEM),
 * ATT_DOC (document file), TLS_CERT, TLS_KEY, ATT_PCRS (JSON, the SDK's pcrs value), ATT_MODE
 * ("agent": createEnclaveHttpsAgent, the default; "enable": enableEnclaves, which patches
 * tls.checkServerIdentity for the whole process, and a request through Node's global agent).
 * The cage's name resolves without /etc/hosts: tls.connect is wrapped so that hosts under
 * enclave.test go to this process's server (the SDK's own checkServerIdentity still runs on
 * the real host name). Prints one JSON line: {ok, status, body} or {ok: false, error}.
 */
const fs = require('fs');
const https = require('https');
const path = require('path');
const tls = require('tls');
const { createAttestationBindings } = require('..');

const doc = fs.readFileSync(process.env.ATT_DOC);
const server = https.createServer(
  { cert: fs.readFileSync(process.env.TLS_CERT), key: fs.readFileSync(process.env.TLS_KEY) },
  (req, res) => {
    if (req.url === '/.well-known/attestation') {
      res.setHeader('Content-Type', 'application/json');
      res.end(JSON.stringify({ attestation_doc: doc.toString('base64') }));
    } else {
      res.end('hello from the cage');
    }
  });

server.listen(0, '127.0.0.1', async () => {
  const port = server.address().port;
  const connect = tls.connect;
  tls.connect = function (...args) {
    const o = args.find((a) => a && typeof a === 'object');
    if (o && typeof o.host === 'string' && o.host.endsWith('.enclave.test')) {
      o.servername = o.servername || o.host;
      o.host = '127.0.0.1';
      o.port = port;
    }
    return connect.apply(this, args);
  };
  const Evervault = require(path.join(process.env.EVS_SDK_DIR, '@evervault', 'sdk'));
  const ev = new Evervault('app_test', 'test-api-key');
  const failures = [];
  const bindings = createAttestationBindings({
    root: fs.readFileSync(process.env.ATT_ROOT, 'utf8'),
    onFailure: (why) => failures.push(why),
  });
  let out;
  try {
    const data = { 'hello-cage': JSON.parse(process.env.ATT_PCRS) };
    let agent;
    if (process.env.ATT_MODE === 'enable') await ev.enableEnclaves(data, bindings);
    else agent = await ev.createEnclaveHttpsAgent(data, bindings);
    out = await new Promise((resolve) => {
      /* enable: a plain agent of its own. Node's global agent keeps alive the connection the SDK
       * opened to fetch the document, before its check was installed, and would reuse it. */
      const opts = { agent: agent || new https.Agent() };
      const req = https.get('https://hello-cage.app-test.enclave.test/hello', opts, (res) => {
        let body = '';
        res.on('data', (c) => { body += c; });
        res.on('end', () => resolve({ ok: true, status: res.statusCode, body }));
      });
      req.on('error', (e) => resolve({ ok: false, error: e.message, failures }));
    });
  } catch (e) {
    out = { ok: false, error: String(e && e.message), failures };
  }
  ev.disableEnclaves();
  console.log(JSON.stringify(out));
  server.close();
  process.exit(0);
});
