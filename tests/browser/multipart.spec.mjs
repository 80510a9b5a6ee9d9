// A page on another origin uploads a file in parts as a frontend would, in Debian's Chromium
// with every request to a third origin blocked: prepareMultipartUpload, a cross-origin PUT
// of each part but the last reading its ETag, uploadParts (the stored parts and a URL for the
// missing one), that part, completeMultipartUpload, finalizeBatchUpload, and the upload
// completes with one result per row. Run by tests/api/browser.rs:
//   node multipart.spec.mjs <server url> <token> <csv file>
import { readFileSync } from 'node:fs';
import { chromium } from 'playwright-core';

const [base, token, csvPath] = process.argv.slice(2);
const api = new URL(base);
// The same server under another host name: another origin, so every call is CORS.
const pageOrigin = `http://localhost:${api.port}`;
const csv = readFileSync(csvPath, 'utf8');
const rows = csv.trim().split('\n').length - 1;

function check(ok, what) {
  if (!ok) throw new Error('FAILED: ' + what);
  console.log('ok   ' + what);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
    '--disable-sync', '--no-first-run'],
});
const blocked = [];
try {
  const context = await browser.newContext();
  await context.route('**/*', (route) => {
    const { origin } = new URL(route.request().url());
    if (origin === api.origin || origin === pageOrigin) return route.continue();
    blocked.push(route.request().url());
    return route.abort();
  });
  const page = await context.newPage();
  page.setDefaultTimeout(60_000);
  await page.goto(pageOrigin + '/healthz');
  check(new URL(page.url()).origin !== api.origin, `the page (${pageOrigin}) is not the API's origin (${api.origin})`);

  const got = await page.evaluate(async ({ graphql, token, csv, rows }) => {
    const gql = async (query, variables) => {
      const response = await fetch(graphql, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: token },
        body: JSON.stringify({ query, variables }),
      });
      const body = await response.json();
      if (body.errors) throw new Error(JSON.stringify(body.errors));
      return body.data;
    };
    const file = new Blob([csv]);
    const prepared = (await gql(
      `mutation($n: Int!, $size: Int!) { prepareMultipartUpload(tenantId: "demo", assignActionId: "register-prepaid",
         rowCount: $n, deviceType: 1, fileSize: $size, partSize: 1024) { uploadId partSize parts { partNumber url expiresAt } } }`,
      { n: rows, size: file.size },
    )).prepareMultipartUpload;
    const { uploadId, partSize, parts } = prepared;
    const put = async (part) => {
      const start = (part.partNumber - 1) * partSize;
      const response = await fetch(part.url, { method: 'PUT', body: file.slice(start, start + partSize) });
      return { status: response.status, etag: response.headers.get('etag') };
    };
    const sent = {};
    for (const part of parts.slice(0, -1)) sent[part.partNumber] = await put(part);
    const state = (await gql(
      `query($id: String!) { uploadParts(tenantId: "demo", uploadId: $id) {
         completed { partNumber size etag } missing { partNumber url } } }`,
      { id: uploadId },
    )).uploadParts;
    for (const part of state.missing) sent[part.partNumber] = await put(part);
    const completed = (await gql(
      `mutation($id: String!) { completeMultipartUpload(tenantId: "demo", uploadId: $id) }`, { id: uploadId },
    )).completeMultipartUpload;
    const finalized = (await gql(
      `mutation($id: String!) { finalizeBatchUpload(tenantId: "demo", uploadId: $id) }`, { id: uploadId },
    )).finalizeBatchUpload;
    let upload;
    for (let i = 0; i < 600; i++) {
      upload = (await gql(
        `query($id: String!) { upload(tenantId: "demo", uploadId: $id) { status succeeded failed } }`, { id: uploadId },
      )).upload;
      if (!['QUEUED', 'PROCESSING'].includes(upload.status)) break;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    return { parts: parts.length, sent, state, completed, finalized, upload };
  }, { graphql: `${api.origin}/graphql`, token: `Bearer ${token}`, csv, rows });

  check(got.parts >= 3, `the file went up in ${got.parts} parts`);
  const numbers = Object.keys(got.sent).map(Number).sort((a, b) => a - b);
  check(numbers.length === got.parts && numbers.every((n, i) => n === i + 1), 'every part was sent once');
  check(Object.values(got.sent).every((p) => p.status === 200), 'every cross-origin part PUT answered 200');
  check(Object.values(got.sent).every((p) => /^"[0-9a-f]{32}"$/.test(p.etag || '')),
    'the page read each part\'s ETag (exposed by CORS)');
  check(JSON.stringify(got.state.missing.map((p) => p.partNumber)) === JSON.stringify([got.parts]),
    'uploadParts named the one part not sent as missing');
  check(got.state.completed.every((p) => p.etag === got.sent[p.partNumber].etag),
    'uploadParts lists the stored parts with the ETags the PUTs answered');
  check(got.completed === 'PREPARED' && got.finalized === 'QUEUED', `complete → ${got.completed}, finalize → ${got.finalized}`);
  check(got.upload.status === 'COMPLETED' && got.upload.succeeded === rows && got.upload.failed === 0,
    `the upload completed with ${rows} rows: ${JSON.stringify(got.upload)}`);
  check(blocked.length === 0, 'no request left the two origins: ' + blocked.join(', '));
} finally {
  await browser.close();
}
