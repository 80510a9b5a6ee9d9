// The operator console: sign in, upload a CSV, follow it live, page its results, retry,
// cancel. Plain JavaScript against the public GraphQL API (HTTP for queries and mutations,
// graphql-transport-ws for uploadProgress); no build step.
(function () {
  'use strict';

  var FINAL = ['COMPLETED', 'COMPLETED_WITH_ERRORS', 'FAILED', 'CANCELLED'];
  var PAGE = 50;
  var PROGRESS = 'uploadId status totalRows processedRows succeeded failed percentage rowsPerSecond etaSeconds ' +
    'recentErrors { rowNumber deviceUid errorCode message }';
  var UPLOAD = 'id tenantId targetWorkspaceId status assignActionId workflowId declaredRowCount totalRows ' +
    'processedRows succeeded failed failureReason createdAt finishedAt';

  var $ = function (id) { return document.getElementById(id); };
  var state = { token: null, root: null, user: null, current: null, cursors: [null], page: 0, ws: null,
    watching: new Map(), currentSub: null };

  // ---- errors: every failure ends up here as "CODE: message" ----
  function ApiError(code, message) { this.code = code; this.message = message; }
  function showError(err) {
    var box = $('alert');
    var text = err instanceof ApiError ? err.code + ': ' + err.message : 'CLIENT_ERROR: ' + (err && err.message || err);
    box.textContent = text;
    box.hidden = false;
  }
  function clearError() { $('alert').hidden = true; $('alert').textContent = ''; }
  function guard(fn) {
    return function () {
      clearError();
      return Promise.resolve().then(fn.bind(this, arguments[0])).catch(showError);
    };
  }
  function firstError(errors) {
    var e = errors[0] || {};
    var ext = e.extensions || {};
    return new ApiError(ext.code || ext.errorType || 'GRAPHQL_ERROR', e.message || 'unknown error');
  }

  // ---- GraphQL over HTTP and WebSocket ----
  function gql(query, variables) {
    return fetch('/graphql', {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: 'Bearer ' + state.token },
      body: JSON.stringify({ query: query, variables: variables || {} }),
    }).then(function (r) {
      return r.json().catch(function () { throw new ApiError('BAD_RESPONSE', 'HTTP ' + r.status); });
    }).then(function (body) {
      if (body.errors && body.errors.length) throw firstError(body.errors);
      return body.data;
    });
  }

  function ws() {
    if (!state.ws) {
      state.ws = graphqlWs.createClient({
        url: new URL('/graphql', location.href).toString().replace(/^http/, 'ws'),
        connectionParams: { Authorization: 'Bearer ' + state.token },
        lazy: true,
        retryAttempts: 3,
      });
    }
    return state.ws;
  }

  // Calls onData with each uploadProgress; returns a function that stops it.
  function watch(tenantId, uploadId, onData) {
    return ws().subscribe({
      query: 'subscription($t: String!, $id: String!) { uploadProgress(tenantId: $t, uploadId: $id) { ' + PROGRESS + ' } }',
      variables: { t: tenantId, id: uploadId },
    }, {
      next: function (msg) {
        if (msg.errors && msg.errors.length) showError(firstError(msg.errors));
        else onData(msg.data.uploadProgress);
      },
      error: function (err) {
        if (Array.isArray(err)) showError(firstError(err));
        else showError(new ApiError('SUBSCRIPTION_FAILED', 'WebSocket closed' + (err && err.code ? ' (' + err.code + ' ' + (err.reason || '') + ')' : '')));
      },
      complete: function () {},
    });
  }

  // ---- sign in ----
  function claims(token) {
    var part = token.split('.')[1];
    if (!part) throw new ApiError('BAD_USER_INPUT', 'this is not a JWT (three dot-separated parts)');
    try {
      var json = atob(part.replace(/-/g, '+').replace(/_/g, '/'));
      return JSON.parse(decodeURIComponent(escape(json)));
    } catch (e) { throw new ApiError('BAD_USER_INPUT', 'the token\'s claims are not readable JSON'); }
  }

  function signIn(token) {
    token = token.trim().replace(/^Bearer\s+/i, '');
    var c = claims(token);
    var root = c.tenant_id || c['custom:tenant_id'];
    if (!root) throw new ApiError('BAD_USER_INPUT', 'the token names no tenant (tenant_id)');
    state.token = token;
    // The server decides: a token it refuses shows its UNAUTHENTICATED here.
    return gql('query($t: String!) { tenants(tenantId: $t) { id name parentId } }', { t: root }).then(function (data) {
      state.root = root;
      state.user = c.username || c['cognito:username'] || c.sub;
      try { localStorage.setItem('fleetload.token', token); } catch (e) { /* storage off */ }
      $('who').textContent = 'Signed in as ' + state.user + ' · tenant ' + root;
      $('sign-out').hidden = false;
      $('sign-in').hidden = true;
      $('workspace').hidden = false;
      fillTenants(data.tenants);
      return Promise.all([loadCatalog(), loadUploads()]);
    }).catch(function (err) { state.token = null; throw err; });
  }

  function signOut() {
    try { localStorage.removeItem('fleetload.token'); } catch (e) { /* storage off */ }
    location.reload();
  }

  function loadDevUsers() {
    return fetch('/ui/dev-sign-in').then(function (r) { return r.json(); }).then(function (body) {
      if (!body.enabled) return;
      $('dev-sign-in').hidden = false;
      var box = $('dev-users');
      body.users.forEach(function (u) {
        var b = document.createElement('button');
        b.type = 'button';
        b.textContent = 'Sign in as ' + u.user + ' (tenant ' + u.tenant + ', ' + u.permissions.join('+') + ')';
        b.dataset.user = u.user;
        b.addEventListener('click', guard(function () {
          return fetch('/ui/dev-sign-in', {
            method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ user: u.user }),
          }).then(function (r) { return r.json(); }).then(function (res) {
            if (res.errors) throw firstError(res.errors);
            return signIn(res.token);
          });
        }));
        box.appendChild(b);
      });
    });
  }

  // ---- catalog ----
  function option(select, value, label) {
    var o = document.createElement('option');
    o.value = value; o.textContent = label; select.appendChild(o);
  }
  function fillTenants(tenants) {
    var sel = $('tenant'); sel.textContent = '';
    tenants.forEach(function (t) { option(sel, t.id, (t.parentId ? '↳ ' : '') + t.name + ' (' + t.id + ')'); });
  }
  function loadCatalog() {
    var t = $('tenant').value || state.root;
    return gql('query($t: String!) { actions(tenantId: $t) { id name kind targetServiceType } workflows(tenantId: $t) { id name serviceType } }', { t: t })
      .then(function (data) {
        var a = $('action'); a.textContent = '';
        data.actions.forEach(function (x) { option(a, x.id, x.name + ' (' + x.id + ', ' + x.kind + ')'); });
        var w = $('workflow'); w.textContent = '';
        option(w, '', '— none —');
        data.workflows.forEach(function (x) { option(w, x.id, x.name + ' (service type ' + x.serviceType + ')'); });
      });
  }

  function download(name, blob) {
    var a = document.createElement('a');
    a.href = URL.createObjectURL(blob); a.download = name;
    document.body.appendChild(a); a.click(); a.remove();
    setTimeout(function () { URL.revokeObjectURL(a.href); }, 10000);
  }

  function template() {
    var d = Number($('device-type').value);
    return gql('query($d: Int!) { batchUploadTemplate(deviceType: $d) }', { d: d }).then(function (data) {
      download('devices-template-' + d + '.csv', new Blob([data.batchUploadTemplate], { type: 'text/csv' }));
    });
  }

  // ---- the file ----
  function chosenFile() { return $('file').files[0] || null; }
  function describeFile() {
    var f = chosenFile();
    $('file-info').textContent = f ? f.name + ' · ' + f.size.toLocaleString() + ' bytes' : '';
  }
  // Data rows: records after the header, counted as the server will (quoted newlines included).
  function countRows(text) {
    var rows = 0, quoted = false, content = false;
    for (var i = 0; i < text.length; i++) {
      var ch = text.charCodeAt(i);
      if (ch === 34) { quoted = !quoted; content = true; }
      else if (ch === 10 && !quoted) { if (content) rows++; content = false; }
      else if (ch !== 13) content = true;
    }
    if (content) rows++;
    return Math.max(rows - 1, 0);
  }

  function postFile(fileUpload, file) {
    return new Promise(function (resolve, reject) {
      var form = new FormData();
      var fields = JSON.parse(fileUpload.fields);
      Object.keys(fields).forEach(function (k) { form.append(k, fields[k]); });
      form.append('file', file, file.name);
      var xhr = new XMLHttpRequest();
      xhr.open('POST', fileUpload.url);
      xhr.upload.onprogress = function (e) {
        if (!e.lengthComputable) return;
        var pct = Math.round(e.loaded * 100 / e.total);
        $('transfer').value = pct;
        $('transfer-text').textContent = pct + ' % of ' + e.total.toLocaleString() + ' bytes';
      };
      xhr.onload = function () {
        if (xhr.status >= 200 && xhr.status < 300) { $('transfer').value = 100; resolve(); return; }
        var code = /<Code>([^<]*)<\/Code>/.exec(xhr.responseText || '');
        var msg = /<Message>([^<]*)<\/Message>/.exec(xhr.responseText || '');
        reject(new ApiError('UPLOAD_FAILED', 'the store refused the file: HTTP ' + xhr.status +
          (code ? ' ' + code[1] : '') + (msg ? ': ' + msg[1] : '')));
      };
      xhr.onerror = function () { reject(new ApiError('UPLOAD_FAILED', 'the file could not be sent')); };
      xhr.send(form);
    });
  }

  function startUpload(event) {
    event.preventDefault();
    var file = chosenFile();
    if (!file) throw new ApiError('BAD_USER_INPUT', 'choose a CSV file first');
    var tenant = $('tenant').value;
    var workflow = $('workflow').value || null;
    $('start').disabled = true;
    $('transfer').value = 0; $('transfer-text').textContent = '';
    return file.text().then(function (text) {
      return gql('mutation($t: String!, $a: String!, $n: Int!, $d: Int!, $w: String) { prepareBatchUpload(tenantId: $t, assignActionId: $a, rowCount: $n, deviceType: $d, workflowId: $w) { uploadId fileUpload { url fields } } }',
        { t: tenant, a: $('action').value, n: countRows(text), d: Number($('device-type').value), w: workflow });
    }).then(function (data) {
      var p = data.prepareBatchUpload;
      return postFile(p.fileUpload, file).then(function () {
        return gql('mutation($t: String!, $id: String!, $w: String) { finalizeBatchUpload(tenantId: $t, uploadId: $id, workflowId: $w) }',
          { t: tenant, id: p.uploadId, w: workflow });
      }).then(function () { return openUpload(tenant, p.uploadId); });
    }).then(loadUploads).finally(function () { $('start').disabled = false; });
  }

  // ---- one upload: live figures, actions, results ----
  function fmt(n) { return n === null || n === undefined ? '–' : Number(n).toLocaleString('en-US'); }
  function chip(el, status) { el.textContent = status; el.className = 'chip ' + status; }

  function showProgress(p) {
    if (!state.current || p.uploadId !== state.current.id) return;
    state.current.status = p.status;
    chip($('cur-status'), p.status);
    var pct = p.percentage || 0;
    $('bar').value = pct;
    $('cur-pct').textContent = (Math.round(pct * 10) / 10) + ' %';
    $('f-processed').textContent = fmt(p.processedRows) + ' / ' + fmt(p.totalRows);
    $('f-succeeded').textContent = fmt(p.succeeded);
    $('f-failed').textContent = fmt(p.failed);
    $('f-rate').textContent = p.rowsPerSecond === null ? '–' : fmt(Math.round(p.rowsPerSecond));
    $('f-eta').textContent = p.etaSeconds === null ? '–' : Math.round(p.etaSeconds) + ' s';
    var list = $('recent-errors'); list.textContent = '';
    p.recentErrors.forEach(function (e) {
      var li = document.createElement('li');
      li.textContent = 'row ' + e.rowNumber + ' · ' + e.deviceUid + ' · ' + e.errorCode + ': ' + e.message;
      list.appendChild(li);
    });
    var done = FINAL.indexOf(p.status) >= 0;
    $('cancel').disabled = done;
    $('retry').disabled = !done || !p.failed;
    $('report').disabled = !done || !p.failed;
    $('cur-final').textContent = done ? 'Finished: ' + p.status + ' — ' + fmt(p.succeeded) + ' succeeded, ' + fmt(p.failed) + ' failed of ' + fmt(p.totalRows) + ' rows.' : '';
    if (done) { loadResults(); updateRow(p); }
  }

  function openUpload(tenantId, uploadId) {
    if (state.currentSub) state.currentSub();
    state.current = { id: uploadId, tenantId: tenantId, status: null };
    state.cursors = [null]; state.page = 0;
    $('current').hidden = false;
    $('cur-id').textContent = uploadId;
    $('cur-final').textContent = '';
    chip($('cur-status'), '…');
    $('bar').value = 0;
    $('cur-pct').textContent = '0 %';
    ['f-processed', 'f-succeeded', 'f-failed', 'f-rate', 'f-eta'].forEach(function (id) { $(id).textContent = '–'; });
    $('recent-errors').textContent = '';
    $('results').querySelector('tbody').textContent = '';
    state.currentSub = watch(tenantId, uploadId, showProgress);
    return loadResults();
  }

  function cancel() {
    var c = state.current;
    return gql('mutation($t: String!, $id: String!) { cancelBatchUpload(tenantId: $t, uploadId: $id) { id status } }', { t: c.tenantId, id: c.id })
      .then(function (data) { chip($('cur-status'), data.cancelBatchUpload.status); return loadUploads(); });
  }

  function retry() {
    var c = state.current;
    return gql('mutation($t: String!, $id: String!) { retryFailedRows(tenantId: $t, uploadId: $id) { uploadId } }', { t: c.tenantId, id: c.id })
      .then(function (data) {
        var id = data.retryFailedRows.uploadId;
        return gql('mutation($t: String!, $id: String!) { finalizeBatchUpload(tenantId: $t, uploadId: $id) }', { t: c.tenantId, id: id })
          .then(function () { return openUpload(c.tenantId, id); });
      }).then(loadUploads);
  }

  function report() {
    var c = state.current;
    return gql('query($t: String!, $id: String!) { upload(tenantId: $t, uploadId: $id) { errorReport { url } } }', { t: c.tenantId, id: c.id })
      .then(function (data) {
        var r = data.upload && data.upload.errorReport;
        if (!r) throw new ApiError('NO_ERROR_REPORT', 'no error report: the upload has not finished or no row failed');
        return fetch(r.url).then(function (res) {
          if (!res.ok) throw new ApiError('REPORT_DOWNLOAD_FAILED', 'HTTP ' + res.status);
          return res.blob();
        }).then(function (blob) { download(c.id + '-errors.csv', blob); });
      });
  }

  function loadResults() {
    var c = state.current;
    if (!c) return Promise.resolve();
    var outcome = $('outcome').value || null;
    var code = $('error-code').value.trim() || null;
    return gql('query($t: String!, $id: String!, $n: Int, $after: String, $o: Outcome, $e: String) { upload(tenantId: $t, uploadId: $id) { ' +
      'results(first: $n, after: $after, outcome: $o, errorCode: $e) { totalCount pageInfo { hasNextPage endCursor } nodes { rowNumber deviceUid outcome errorCode message } } } }',
      { t: c.tenantId, id: c.id, n: PAGE, after: state.cursors[state.page], o: outcome, e: code })
      .then(function (data) {
        if (!data.upload) throw new ApiError('UPLOAD_NOT_FOUND', 'the upload is gone');
        var r = data.upload.results;
        var body = $('results').querySelector('tbody'); body.textContent = '';
        r.nodes.forEach(function (n) {
          var tr = document.createElement('tr');
          [n.rowNumber, n.deviceUid, n.outcome, n.errorCode || '', n.message || ''].forEach(function (v) {
            var td = document.createElement('td'); td.textContent = v; tr.appendChild(td);
          });
          body.appendChild(tr);
        });
        state.cursors[state.page + 1] = r.pageInfo.endCursor;
        $('results-caption').textContent = fmt(r.totalCount) + ' results · page ' + (state.page + 1);
        $('next-page').disabled = !r.pageInfo.hasNextPage;
        $('prev-page').disabled = state.page === 0;
      });
  }

  // ---- recent uploads, chips live ----
  function updateRow(p) {
    var row = document.querySelector('#uploads tr[data-id="' + p.uploadId + '"]');
    if (!row) return;
    chip(row.querySelector('.chip'), p.status);
    row.cells[4].textContent = fmt(p.totalRows);
    row.cells[5].textContent = fmt(p.failed);
  }

  function loadUploads() {
    return gql('query($t: String!) { uploads(tenantId: $t, first: 15) { nodes { ' + UPLOAD + ' } } }', { t: state.root }).then(function (data) {
      var body = $('uploads').querySelector('tbody'); body.textContent = '';
      data.uploads.nodes.forEach(function (u) {
        var tr = document.createElement('tr'); tr.dataset.id = u.id;
        var link = document.createElement('a');
        link.href = '#' + u.id; link.textContent = u.id.slice(0, 13) + '…'; link.className = 'upload-link';
        link.title = u.id;
        link.addEventListener('click', guard(function (e) { e.preventDefault(); return openUpload(u.tenantId, u.id); }));
        var cells = [link, null, u.targetWorkspaceId, u.assignActionId, fmt(u.totalRows === null ? u.declaredRowCount : u.totalRows), fmt(u.failed), new Date(u.createdAt).toLocaleString()];
        cells.forEach(function (v, i) {
          var td = document.createElement('td');
          if (i === 1) { var s = document.createElement('span'); chip(s, u.status); td.appendChild(s); }
          else if (v instanceof Node) td.appendChild(v);
          else td.textContent = v;
          tr.appendChild(td);
        });
        body.appendChild(tr);
        if (FINAL.indexOf(u.status) < 0 && u.status !== 'PREPARED' && !state.watching.has(u.id)) {
          state.watching.set(u.id, watch(u.tenantId, u.id, function (p) {
            updateRow(p);
            if (FINAL.indexOf(p.status) >= 0) state.watching.delete(u.id);
          }));
        }
      });
    });
  }

  // ---- wiring ----
  $('token-form').addEventListener('submit', guard(function (e) { e.preventDefault(); return signIn($('token-input').value); }));
  $('sign-out').addEventListener('click', signOut);
  $('tenant').addEventListener('change', guard(loadCatalog));
  $('template').addEventListener('click', guard(template));
  $('file').addEventListener('change', describeFile);
  $('upload-form').addEventListener('submit', guard(startUpload));
  $('cancel').addEventListener('click', guard(cancel));
  $('retry').addEventListener('click', guard(retry));
  $('report').addEventListener('click', guard(report));
  $('refresh').addEventListener('click', guard(loadUploads));
  $('results-filter').addEventListener('submit', guard(function (e) { e.preventDefault(); state.cursors = [null]; state.page = 0; return loadResults(); }));
  $('next-page').addEventListener('click', guard(function () { state.page++; return loadResults(); }));
  $('prev-page').addEventListener('click', guard(function () { state.page = Math.max(0, state.page - 1); return loadResults(); }));
  var drop = $('drop');
  ['dragenter', 'dragover'].forEach(function (t) { drop.addEventListener(t, function (e) { e.preventDefault(); drop.classList.add('over'); }); });
  ['dragleave', 'drop'].forEach(function (t) { drop.addEventListener(t, function () { drop.classList.remove('over'); }); });
  drop.addEventListener('drop', function (e) {
    e.preventDefault();
    if (e.dataTransfer && e.dataTransfer.files.length) { $('file').files = e.dataTransfer.files; describeFile(); }
  });

  guard(function () {
    var saved = null;
    try { saved = localStorage.getItem('fleetload.token'); } catch (e) { /* storage off */ }
    return loadDevUsers().then(function () {
      if (!saved) return undefined;
      // A saved token that expired (or a server with another secret) is forgotten.
      return signIn(saved).catch(function (err) {
        try { localStorage.removeItem('fleetload.token'); } catch (e) { /* storage off */ }
        throw err;
      });
    });
  })();
})();
