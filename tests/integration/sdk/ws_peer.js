// ws_peer.js: drives Node's `ws` (npm), an independent WebSocket implementation, for
// tests/integration/test_83_relay_websocket.py. It adds no protocol logic of its own.
//   node ws_peer.js server            listen on a kernel-assigned port, print {"port":N}; echo
//                                     every message back and print it as a JSON line
//   node ws_peer.js client URL HOST   read a JSON list of messages on stdin, send them (strings
//                                     as text, {"binary":b64} as binary, {"fragments":[...]}
//                                     fragmented), print each reply and the close as JSON lines
'use strict';
const WebSocket = require('ws');

function show(data, isBinary) {
  return isBinary ? { binary: Buffer.from(data).toString('base64') } : { text: data.toString() };
}

if (process.argv[2] === 'server') {
  const wss = new WebSocket.WebSocketServer({
    host: '127.0.0.1', port: 0, perMessageDeflate: true,
    handleProtocols: (protocols) => (protocols.size ? protocols.values().next().value : false),
  });
  wss.on('listening', () => console.log(JSON.stringify({ port: wss.address().port })));
  wss.on('connection', (ws, req) => {
    console.log(JSON.stringify({ connection: req.url, protocol: ws.protocol,
                                 extensions: req.headers['sec-websocket-extensions'] || null }));
    ws.on('message', (data, isBinary) => {
      console.log(JSON.stringify(show(data, isBinary)));
      ws.send(data, { binary: isBinary });
    });
  });
} else if (process.argv[2] === 'client') {
  const [url, host] = process.argv.slice(3);
  let input = '';
  process.stdin.on('data', (d) => { input += d; });
  process.stdin.on('end', () => {
    const msgs = JSON.parse(input);
    const ws = new WebSocket(url, ['chat.v1'], { headers: { Host: host }, perMessageDeflate: true });
    let replies = 0;
    ws.on('open', () => {
      console.log(JSON.stringify({ open: true, protocol: ws.protocol, extensions: ws.extensions }));
      for (const m of msgs) {
        if (typeof m === 'string') ws.send(m);
        else if (m.binary !== undefined) ws.send(Buffer.from(m.binary, 'base64'));
        else if (m.fragments) m.fragments.forEach((f, i) => ws.send(f, { fin: i === m.fragments.length - 1 }));
      }
    });
    ws.on('message', (data, isBinary) => {
      console.log(JSON.stringify(show(data, isBinary)));
      if (++replies === msgs.length) ws.close(1000, 'done');
    });
    ws.on('unexpected-response', (req, res) => {
      console.log(JSON.stringify({ status: res.statusCode }));
      process.exit(0);
    });
    ws.on('close', (code, reason) => {
      console.log(JSON.stringify({ close: code, reason: reason.toString() }));
      process.exit(0);
    });
    ws.on('error', (e) => console.log(JSON.stringify({ error: e.message })));
  });
}
