// GraphiQL on this server: queries and mutations over HTTP POST /graphql, subscriptions over
// graphql-transport-ws on the same path, with the Headers tab's Authorization sent as the
// connection params (the server checks the token at connection_init).
(function () {
  'use strict';

  var httpUrl = new URL('/graphql', window.location.href).toString();
  var wsUrl = httpUrl.replace(/^http/, 'ws');
  var httpFetcher = GraphiQL.createFetcher({ url: httpUrl });

  // One WebSocket per Authorization value: a changed header opens a new connection instead of
  // reusing one authenticated as someone else.
  var clients = new Map();
  function wsClient(authorization) {
    var key = authorization || '';
    if (!clients.has(key)) {
      clients.set(key, graphqlWs.createClient({
        url: wsUrl,
        lazy: true,
        retryAttempts: 0,
        connectionParams: authorization ? { Authorization: authorization } : {},
      }));
    }
    return clients.get(key);
  }

  function headerValue(headers, name) {
    if (!headers) return undefined;
    for (var key in headers) {
      if (key.toLowerCase() === name) return headers[key];
    }
    return undefined;
  }

  function isSubscription(params, opts) {
    var doc = opts && opts.documentAST;
    if (!doc) {
      try { doc = GraphiQL.GraphQL.parse(params.query); } catch (e) { return false; }
    }
    return doc.definitions.some(function (d) {
      return d.kind === 'OperationDefinition' && d.operation === 'subscription' &&
        (!params.operationName || (d.name && d.name.value === params.operationName));
    });
  }

  function closeMessage(event) {
    if (event && typeof event.code === 'number') {
      return 'WebSocket closed: ' + event.code + (event.reason ? ' ' + event.reason : '') +
        (event.code === 4403 ? ' (put a valid token in the Headers tab: {"Authorization": "Bearer <token>"})' : '');
    }
    return event && event.message ? event.message : String(event);
  }

  function fetcher(params, opts) {
    if (!isSubscription(params, opts)) return httpFetcher(params, opts);
    var client = wsClient(headerValue(opts && opts.headers, 'authorization'));
    return {
      subscribe: function (observer) {
        var dispose = client.subscribe(params, {
          next: function (value) { observer.next(value); },
          error: function (err) {
            // Refused operations arrive as GraphQL errors; show them like any other result.
            if (Array.isArray(err)) { observer.next({ errors: err }); observer.complete(); }
            else observer.error(new Error(closeMessage(err)));
          },
          complete: function () { observer.complete(); },
        });
        return { unsubscribe: dispose };
      },
    };
  }

  // The console (/ui) keeps the signed-in token here; GraphiQL starts with it.
  var token = null;
  try { token = window.localStorage.getItem('fleetload.token'); } catch (e) { /* storage off */ }
  var defaultHeaders = JSON.stringify({ Authorization: 'Bearer ' + (token || '<token>') }, null, 2);

  var defaultQuery = [
    '# fleetload GraphiQL — every script of this page is served by the server itself.',
    '#',
    '# Put a token in the Headers tab below: {"Authorization": "Bearer <token>"}.',
    '# On the embedded default: `fleetload token --user alice --tenant demo`, or sign in at',
    '# /ui with the dev sign-in and reload this page (it starts with the console\'s token).',
    '# Subscriptions (uploadProgress) run over graphql-transport-ws on /graphql with that header.',
    '',
    'query Catalog {',
    '  tenants(tenantId: "demo") { id name parentId }',
    '  actions(tenantId: "demo") { id name kind }',
    '  workflows(tenantId: "demo") { id name serviceType }',
    '}',
    '',
  ].join('\n');

  var root = ReactDOM.createRoot(document.getElementById('graphiql'));
  root.render(React.createElement(GraphiQL, {
    fetcher: fetcher,
    defaultQuery: defaultQuery,
    defaultHeaders: defaultHeaders,
    defaultEditorToolsVisibility: 'headers',
    isHeadersEditorEnabled: true,
    shouldPersistHeaders: true,
  }));
})();
