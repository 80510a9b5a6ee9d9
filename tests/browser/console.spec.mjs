// Drives GraphiQL (/) and the operator console (/ui) in Debian's Chromium, headless, with
// every request to another origin blocked. Run by tests/api/browser.rs against a real server:
//   node console.spec.mjs <base url> <dir with the CSV files> <screenshot dir>
// The CSV dir holds upload.csv (its good and bad row counts in upload.json) and cancel.csv.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const [base, csvDir, shots] = process.argv.slice(2);
const expected = JSON.parse(readFileSync(join(csvDir, 'upload.json'), 'utf8'));
const origin = new URL(base).origin;
const FINAL = ['COMPLETED', 'COMPLETED_WITH_ERRORS', 'FAILED', 'CANCELLED'];

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
const problems = [];
try {
  const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1280, height: 900 } });
  await context.route('**/*', (route) => {
    const url = route.request().url();
    if (url.startsWith('data:') || url.startsWith('blob:') || new URL(url).origin === origin) return route.continue();
    blocked.push(url);
    return route.abort();
  });
  const page = await context.newPage();
  page.setDefaultTimeout(60_000);
  page.on('pageerror', (err) => problems.push('page error: ' + err.message));
  page.on('console', (msg) => {
    if (msg.type() === 'error' && /Content Security Policy|Refused to/.test(msg.text())) problems.push('console: ' + msg.text());
  });

  // ---- /ui: sign in ----
  const response = await page.goto(base + '/ui');
  const csp = response.headers()['content-security-policy'] || '';
  check(csp.includes("default-src 'none'") && csp.includes("script-src 'self'") && csp.includes("connect-src 'self'"), '/ui has a strict Content-Security-Policy');
  // A malformed token is refused with a readable, coded message; nothing breaks.
  await page.fill('#token-input', 'not-a-token');
  await page.getByRole('button', { name: 'Sign in with this token' }).click();
  check((await page.locator('#alert').textContent()).startsWith('BAD_USER_INPUT'), 'a malformed token shows BAD_USER_INPUT');
  await page.fill('#token-input', 'eyJhbGciOiJIUzI1NiJ9.eyJ0ZW5hbnRfaWQiOiJkZW1vIn0.AAAA');
  await page.getByRole('button', { name: 'Sign in with this token' }).click();
  await page.locator('#alert', { hasText: 'UNAUTHENTICATED' }).waitFor();
  check(true, 'a forged token shows UNAUTHENTICATED');


  await page.getByRole('button', { name: /Sign in as alice/ }).click();
  await page.locator('#workspace').waitFor({ state: 'visible' });
  check((await page.locator('#who').textContent()).includes('alice'), 'dev sign-in as alice');
  check(await page.locator('#tenant option[value="demo-east"]').count() === 1, 'workspaces from tenants()');

  // ---- the template, and a file dropped on the drop zone ----
  const [template] = await Promise.all([page.waitForEvent('download'), page.click('#template')]);
  check(readFileSync(await template.path(), 'utf8').startsWith('imei,imei2'), 'the template downloads');
  await page.evaluate(() => {
    const data = new DataTransfer();
    data.items.add(new File(['imei\n490154203237518\n'], 'dropped.csv', { type: 'text/csv' }));
    document.getElementById('drop').dispatchEvent(new DragEvent('drop', { dataTransfer: data, bubbles: true, cancelable: true }));
  });
  check((await page.locator('#file-info').textContent()).startsWith('dropped.csv'), 'a dropped file is chosen');

  // ---- upload 20,000 rows with bad ones ----
  await page.selectOption('#action', 'register-prepaid');
  await page.selectOption('#workflow', '68a5ae7a4cb9e87b88b7d344');
  await page.setInputFiles('#file', join(csvDir, 'upload.csv'));
  await page.click('#start');
  // A screenshot of the running upload, as soon as rows are being processed.
  let shotTaken = false;
  for (let i = 0; i < 600; i++) {
    const status = await page.locator('#cur-status').textContent().catch(() => '');
    const pct = Number(await page.locator('#bar').getAttribute('value').catch(() => 0));
    if (!shotTaken && status === 'PROCESSING' && pct > 0 && pct < 100) {
      await page.screenshot({ path: join(shots, 'console-upload-20000.png') });
      shotTaken = true;
    }
    if (FINAL.includes(status)) break;
    await page.waitForTimeout(50);
  }
  console.log(shotTaken ? 'ok   screenshot of the 20,000-row upload while it runs' : 'note: the 20,000-row upload finished before a screenshot of it running');
  await page.locator('#cur-status', { hasText: 'COMPLETED_WITH_ERRORS' }).waitFor();
  check(await page.locator('#bar').getAttribute('value') === '100', 'the bar reaches 100 %');
  await page.locator('#cur-pct', { hasText: '100 %' }).waitFor();
  const n = (s) => s.toLocaleString('en-US');
  check(await page.locator('#f-processed').textContent() === `${n(expected.rows)} / ${n(expected.rows)}`, `processed ${expected.rows} / ${expected.rows}`);
  check(await page.locator('#f-succeeded').textContent() === n(expected.good), `succeeded ${expected.good}`);
  check(await page.locator('#f-failed').textContent() === n(expected.bad), `failed ${expected.bad}`);
  check(await page.locator('#recent-errors li').count() > 0, 'latest errors listed');
  await page.screenshot({ path: join(shots, 'console-finished-upload.png'), fullPage: true });
  const firstId = await page.locator('#cur-id').textContent();

  // ---- error rows in the results table ----
  await page.selectOption('#outcome', 'FAIL');
  await page.getByRole('button', { name: 'Filter' }).click();
  await page.locator('#results-caption', { hasText: `${n(expected.bad)} results` }).waitFor();
  const failRows = await page.locator('#results tbody tr').allTextContents();
  check(failRows.length === Math.min(expected.bad, 50) && failRows.every((r) => r.includes('FAIL')), `the table shows the ${expected.bad} error rows`);
  check(failRows[0].includes(String(expected.firstBadRow)), `first error row is row ${expected.firstBadRow}`);
  await page.fill('#error-code', 'NO_SUCH_CODE');
  await page.getByRole('button', { name: 'Filter' }).click();
  await page.locator('#results-caption', { hasText: '0 results' }).waitFor();
  check(true, 'the error-code filter narrows to 0 results');
  await page.fill('#error-code', '');
  await page.selectOption('#outcome', '');
  await page.getByRole('button', { name: 'Filter' }).click();
  await page.locator('#results-caption', { hasText: `${n(expected.rows)} results · page 1` }).waitFor();
  await page.click('#next-page');
  await page.locator('#results-caption', { hasText: 'page 2' }).waitFor();
  check((await page.locator('#results tbody tr').first().textContent()).startsWith('51'), 'keyset paging: page 2 starts at row 51');

  // ---- error report download ----
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('#report')]);
  const report = readFileSync(await download.path(), 'utf8').trim().split(/\r?\n/);
  check(report.length === expected.bad + 1 && report[0].endsWith('rowNumber,errorCode,message'), `the error report has the header and ${expected.bad} rows`);

  // ---- retry the failed rows: a new upload of just those, failing again ----
  await page.click('#retry');
  await page.waitForFunction((id) => document.getElementById('cur-id').textContent !== id, firstId);
  await page.locator('#cur-status', { hasText: 'COMPLETED_WITH_ERRORS' }).waitFor();
  check(await page.locator('#f-processed').textContent() === `${n(expected.bad)} / ${n(expected.bad)}`, `the retry processed the ${expected.bad} failed rows`);
  const retryId = await page.locator('#cur-id').textContent();

  // ---- cancel a large upload while it runs ----
  await page.selectOption('#outcome', '');
  await page.setInputFiles('#file', join(csvDir, 'cancel.csv'));
  await page.click('#start');
  await page.waitForFunction((id) => document.getElementById('cur-id').textContent !== id, retryId);
  // The README's screenshot: a large upload while it runs.
  await page.waitForFunction(() => document.getElementById('cur-status').textContent === 'PROCESSING' &&
    Number(document.getElementById('bar').value) > 0);
  await page.screenshot({ path: join(shots, 'console-running-upload.png'), fullPage: true });
  await page.click('#cancel');
  await page.locator('#cur-status', { hasText: 'CANCELLED' }).waitFor();
  check(true, 'cancel: the upload is CANCELLED');
  const cancelId = await page.locator('#cur-id').textContent();
  await page.locator(`#uploads tr[data-id="${cancelId}"] .chip`, { hasText: 'CANCELLED' }).waitFor();
  check(true, 'the recent uploads list shows the cancelled upload');
  await page.screenshot({ path: join(shots, 'console-cancelled.png'), fullPage: true });

  // ---- GraphiQL: renders (with the console's token), runs a query and a subscription ----
  const g = await page.goto(base + '/');
  check((g.headers()['content-security-policy'] || '').includes("script-src 'self'"), 'GraphiQL has a strict Content-Security-Policy');
  await page.locator('.graphiql-container').waitFor();
  await page.locator('.graphiql-query-editor .CodeMirror').waitFor();
  const run = async (query) => {
    await page.evaluate((q) => document.querySelector('.graphiql-query-editor .CodeMirror').CodeMirror.setValue(q), query);
    // GraphiQL reads the operation name from the editor after a short debounce.
    await page.waitForTimeout(500);
    await page.click('.graphiql-execute-button');
  };
  const result = () => page.locator('.result-window').textContent();
  await run('query Tenants { tenants(tenantId: "demo") { id name } }');
  await page.locator('.result-window', { hasText: 'demo-east' }).waitFor();
  check(true, 'GraphiQL runs a query');
  await run(`subscription Progress { uploadProgress(tenantId: "demo", uploadId: "${firstId}") { status processedRows failed } }`);
  await page.locator('.result-window', { hasText: 'COMPLETED_WITH_ERRORS' }).waitFor();
  check((await result()).includes(`"failed": ${expected.bad}`), 'GraphiQL runs a subscription over graphql-transport-ws');
  await page.screenshot({ path: join(shots, 'graphiql-subscription.png') });

  check(blocked.length === 0, 'no request left the origin' + (blocked.length ? ': ' + blocked.join(', ') : ''));
  check(problems.length === 0, 'no page errors or CSP violations' + (problems.length ? ': ' + problems.join(' | ') : ''));
  console.log('browser test passed');
} finally {
  await browser.close();
}
