// The official Evervault Node.js SDK's Functions calls against evserver: run by
// tests/integration/test_90_functions.py. Environment: EV_API_URL, EVS_APP_ID, EVS_API_KEY (a
// key with function:run and function:create-run-token), EVS_FN (a deployed hello function that
// returns {name}), EVS_THROW_FN (one that throws "boom"), EVS_SLOW_FN (one that outlasts its
// timeout). Prints one JSON object on its last line: the run tokens it created, for the test
// to redeem with curl-like requests. Exits 1 on the first failure.
'use strict';

const assert = require('assert');
const Evervault = require('@evervault/sdk');

(async () => {
  const ev = new Evervault(process.env.EVS_APP_ID, process.env.EVS_API_KEY);
  const name = 'Claude Shannon';
  const encryptedName = await ev.encrypt(name);
  assert.ok(encryptedName.startsWith('ev:'), encryptedName);
  const res = await ev.run(process.env.EVS_FN, { name: encryptedName, plain: 7 });
  assert.strictEqual(res.status, 'success', JSON.stringify(res));
  assert.strictEqual(res.result.name, name, JSON.stringify(res));
  assert.ok(res.id.startsWith('func_run_') && res.runId === res.id, JSON.stringify(res));
  assert.strictEqual(res.appUuid, process.env.EVS_APP_ID);
  console.log('run: the function saw the decrypted name');

  let threw = null;
  try {
    await ev.run(process.env.EVS_THROW_FN, {});
  } catch (e) {
    threw = e;
  }
  assert.ok(threw && threw.constructor.name === 'FunctionRuntimeError', String(threw));
  assert.ok(threw.message.includes('boom'), threw.message);
  assert.ok(threw.stack !== undefined);
  console.log('run: a throwing handler gives FunctionRuntimeError: ' + threw.message);

  let timedOut = null;
  try {
    await ev.run(process.env.EVS_SLOW_FN, {});
  } catch (e) {
    timedOut = e;
  }
  assert.ok(timedOut, 'the slow function did not fail');
  console.log('run: a run past its timeout fails: ' + timedOut.constructor.name + ': ' + timedOut.message);

  const tokens = {};
  tokens.runToken = (await ev.createRunToken(process.env.EVS_FN, { name: encryptedName })).token;
  tokens.bearer = (await ev.createRunToken(process.env.EVS_FN, { name: 'Ada' })).token;
  tokens.mismatch = (await ev.createRunToken(process.env.EVS_FN, { name: 'Ada' })).token;
  tokens.encryptedName = encryptedName;
  assert.ok(tokens.runToken && tokens.bearer && tokens.mismatch, JSON.stringify(tokens));
  console.log('createRunToken: three tokens');
  console.log(JSON.stringify(tokens));
})().catch((e) => {
  console.error('FAILED:', e && e.stack ? e.stack : e);
  process.exit(1);
});
