// The npm WebSocket clients against a running server, each checking what its user would see:
// graphql-ws (graphql-transport-ws) for 4403, 4409, `error` messages and the subscription cap,
// subscriptions-transport-ws (legacy graphql-ws) for a refused connection_init and a stream.
// Usage: NODE_PATH=<node_modules with graphql-ws ws graphql subscriptions-transport-ws>
//   node npm_ws_clients.cjs <ws://host:port/graphql> <token> <uploadId of an unfinished upload> <subscription cap>
const assert = require('node:assert/strict');
const { createClient } = require('graphql-ws');
const { SubscriptionClient } = require('subscriptions-transport-ws');
const WebSocket = require('ws');

const [url, token, uploadId, cap] = process.argv.slice(2);
const Q = 'subscription($t: String!, $id: String!) { uploadProgress(tenantId: $t, uploadId: $id) { status } }';
const live = { t: 'demo', id: uploadId };
const unknown = { t: 'demo', id: '0198e3b2-0000-7000-8000-000000000000' };
const auth = { Authorization: `Bearer ${token}` };

/// Everything one subscription produced, until its error or complete.
function run(client, variables, query = Q) {
  return new Promise((resolve) => {
    const seen = [];
    client.subscribe({ query, variables }, {
      next: (value) => seen.push({ next: value }),
      error: (error) => resolve([...seen, { error: error && error.code ? { code: error.code, reason: error.reason } : error }]),
      complete: () => resolve([...seen, 'complete']),
    });
  });
}

function first(client, variables) {
  return new Promise((resolve, reject) => {
    client.subscribe({ query: Q, variables }, { next: resolve, error: reject, complete: () => {} });
  });
}

const transportWs = (options) => createClient({ url, webSocketImpl: WebSocket, retryAttempts: 0, ...options });

// A hang is a failure, reported before the test's own hang guard.
setTimeout(() => {
  console.error('npm clients: no answer within 30 s');
  process.exit(1);
}, 30_000).unref();

(async () => {
  // No token: the connection is refused with 4403 Forbidden.
  let client = transportWs({});
  assert.deepEqual(await run(client, live), [{ error: { code: 4403, reason: 'Forbidden' } }]);
  await client.dispose();

  // A resolver error is a `next` with errors then `complete`; a validation error an `error`.
  client = transportWs({ connectionParams: auth });
  const notFound = await run(client, unknown);
  assert.equal(notFound[0].next.errors[0].extensions.code, 'UPLOAD_NOT_FOUND');
  assert.equal(notFound[1], 'complete');
  const invalid = await run(client, {}, 'subscription { nope }');
  assert.equal(invalid.length, 1);
  assert.equal(invalid[0].error[0].extensions.code, 'GRAPHQL_VALIDATION_FAILED');

  // The subscription cap: the one too many gets an `error` with the typed code.
  for (let i = 0; i < Number(cap); i++) await first(client, live);
  const refused = await run(client, live);
  assert.equal(refused.length, 1);
  assert.equal(refused[0].error[0].extensions.code, 'TOO_MANY_SUBSCRIPTIONS');
  await client.dispose();

  // Two subscriptions under one id: 4409.
  client = transportWs({ connectionParams: auth, generateID: () => 'same' });
  await first(client, live);
  assert.deepEqual(await run(client, live), [{ error: { code: 4409, reason: 'Subscriber for same already exists' } }]);
  await client.dispose();

  // subscriptions-transport-ws: a refused connection_init reaches connectionCallback.
  const refusal = await new Promise((resolve) => {
    const legacy = new SubscriptionClient(url, { reconnect: false, connectionCallback: (error) => error && resolve(error) }, WebSocket);
    legacy.onDisconnected(() => resolve('disconnected without connection_error'));
  });
  assert.equal(refusal.extensions.code, 'UNAUTHENTICATED');
  // … and with a token, a subscription streams.
  const legacy = new SubscriptionClient(url, { reconnect: false, connectionParams: { authToken: token } }, WebSocket);
  const event = await new Promise((resolve, reject) => {
    legacy.request({ query: Q, variables: live }).subscribe({ next: resolve, error: reject });
  });
  assert.equal(event.data.uploadProgress.status, 'QUEUED');
  legacy.close();
  console.log('npm clients: every check passed');
  process.exit(0);
})().catch((error) => {
  console.error(error);
  process.exit(1);
});
