'use strict';
/*
 * The unmodified Evervault SDK attesting a cage served by evserver (test_97, test_99): the
 * SDK's createEnclaveHttpsAgent with the repository's bindings (plugins/cage-broker/node-
 * bindings) and the PCRs given must let GET /hello through or refuse the connection.
 * Environment: EV_ENCLAVES_HOSTNAME (the cages domain), NODE_EXTRA_CA_CERTS (the node CA),
 * EVS_SDK_DIR, EVS_BINDINGS, ATT_ROOT (the attestation root PEM), CAGE_HOST, CAGE_PORT,
 * CAGE_NAME, CAGE_APP (the SDK names the host with it), CAGE_KEY (api-key), ATT_PCRS (JSON). The cage's host resolves to 127.0.0.1:
 * tls.connect is wrapped (the SDK's own host-name check still runs on the real name).
 * Prints one JSON line: {ok, status, body} or {ok: false, error, failures}.
 */
const fs = require('fs');
const https = require('https');
const path = require('path');
const tls = require('tls');
const { createAttestationBindings } = require(process.env.EVS_BINDINGS);

const port = Number(process.env.CAGE_PORT);
const connect = tls.connect;
tls.connect = function (...args) {
  const o = args.find((a) => a && typeof a === 'object');
  if (o && typeof o.host === 'string' && o.host.endsWith('.' + process.env.EV_ENCLAVES_HOSTNAME)) {
    o.servername = o.servername || o.host;
    o.host = '127.0.0.1';
    o.port = port;
  }
  return connect.apply(this, args);
};

(async () => {
  const Evervault = require(path.join(process.env.EVS_SDK_DIR, '@evervault', 'sdk'));
  const ev = new Evervault(process.env.CAGE_APP, process.env.CAGE_KEY);
  const failures = [];
  const bindings = createAttestationBindings({
    root: fs.readFileSync(process.env.ATT_ROOT, 'utf8'),
    onFailure: (why) => failures.push(String(why)),
  });
  let out;
  try {
    const agent = await ev.createEnclaveHttpsAgent(
      { [process.env.CAGE_NAME]: JSON.parse(process.env.ATT_PCRS) }, bindings);
    out = await new Promise((resolve) => {
      const req = https.get(`https://${process.env.CAGE_HOST}/hello`,
        { agent, headers: { 'api-key': process.env.CAGE_KEY } }, (res) => {
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
  process.exit(0);
})();
