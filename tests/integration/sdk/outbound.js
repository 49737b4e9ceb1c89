// The official Evervault Node.js SDK through evserver's Outbound Relay: run by
// tests/integration/test_82_outbound_proxy.py, one mode per process (the SDK patches
// https.request for the whole process and caches GET /v2/relay-outbound module-wide).
// Environment: EV_API_URL, EV_TUNNEL_HOSTNAME (https://127.0.0.1:<outbound listener>),
// EV_CERT_HOSTNAME (the full URL of /relay-ca.pem), NODE_EXTRA_CA_CERTS (the listener's CA),
// EVS_APP_ID, EVS_API_KEY (relay:outbound-proxy), EVS_DEST_PORT (the destination on localhost).
// Modes (argv[2]):
//   agent    createRelayHttpsAgent(): the key on the CONNECT
//   domains  enableOutboundRelay({decryptionDomains: ['localhost']}): the key inside the tunnel
//   config   enableOutboundRelay(): the domains from GET /v2/relay-outbound
// Each encrypts a value with evervault.encrypt, POSTs it as JSON to
// https://localhost:<EVS_DEST_PORT>/sdk-<mode>, and prints the destination's answer as one JSON
// line ({"status": ..., "body": ...}); exits 1 on failure.
'use strict';

const https = require('https');
const Evervault = require('@evervault/sdk');

const mode = process.argv[2];
const port = Number(process.env.EVS_DEST_PORT);

function post(body, agent) {
  return new Promise((resolve, reject) => {
    const opts = {
      hostname: 'localhost', port, path: `/sdk-${mode}`, method: 'POST',
      headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
    };
    if (agent) opts.agent = agent;
    const req = https.request(opts, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks).toString() }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

async function main() {
  const ev = new Evervault(process.env.EVS_APP_ID, process.env.EVS_API_KEY);
  const enc = await ev.encrypt({ ssn: '123-45-6789', n: 42, ok: true, mode });
  let agent = null;
  if (mode === 'agent') agent = ev.createRelayHttpsAgent();
  else if (mode === 'domains') await ev.enableOutboundRelay({ decryptionDomains: ['localhost'] });
  else if (mode === 'config') await ev.enableOutboundRelay();
  else throw new Error(`unknown mode ${mode}`);
  const res = await post(JSON.stringify(enc), agent);
  console.log(JSON.stringify(res));
  ev.disableOutboundRelay();
}

main().then(() => process.exit(0), (e) => {
  console.error(e && e.stack ? e.stack : e);
  process.exit(1);
});
