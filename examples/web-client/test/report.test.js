// End to end: the Python report worker (report.jobs_csv), the web client's server, and the page
// in headless Chromium against a real `conveyor dev`. Run by examples/test.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';

import { chromium } from 'playwright-core';

import { Conveyor, EXAMPLES, Proc, ROOT, WAIT, shotsDir, until } from '../../tests/conveyor.mjs';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const PYTHON = process.env.EXAMPLES_PYTHON ?? join(ROOT, '.cache', 'examples-venv', 'bin', 'python');
const HEADER = 'id,kind,status,attempt,created_at,finished_at';

let conveyor;
let worker;
let web;
let webUrl;
let browser;
let page;
let userToken; // what a user pastes: jobs:write jobs:read events:read
const problems = [];
const SHOTS = shotsDir();

before(async () => {
  conveyor = await Conveyor.start();
  userToken = conveyor.token('jobs:write jobs:read events:read');
  worker = new Proc('report-worker', PYTHON, [join(EXAMPLES, 'python-report-worker', 'report_worker.py')], {
    env: {
      ...process.env,
      CONVEYOR_URL: conveyor.url,
      CONVEYOR_WORKER_TOKEN: conveyor.token('worker', { kinds: 'report.jobs_csv' }),
      CONVEYOR_READ_TOKEN: conveyor.token('jobs:read'),
      REPORT_PAGE_SIZE: '2', // several pages even for a few jobs: progress per page
      REPORT_PAGE_DELAY_MS: '50',
      LOG_LEVEL: process.env.TEST_LOG ? 'INFO' : 'WARNING',
    },
  });
  // The worker registered its kind (with the payload schema) once the API lists it.
  await until(async () => {
    if (worker.child.exitCode !== null) throw Object.assign(new Error(`the worker exited:\n${worker.output}`));
    const r = await conveyor.call(userToken, '/v1/kinds');
    return r.status === 200 && r.body.items.some((k) => k.kind === 'report.jobs_csv');
  }, `the worker to register report.jobs_csv\n${worker.output}`);
  web = new Proc('web-client', process.execPath, [join(EXAMPLES, 'web-client', 'server.js')], {
    env: { ...process.env, PORT: '0', CONVEYOR_URL: '' },
  });
  webUrl = (await web.waitFor(/web client on (http:\/\/127\.0\.0\.1:\d+\/)/, 'the server listening'))[1];
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
  page = await browser.newPage({ viewport: { width: 1100, height: 900 }, acceptDownloads: true });
  page.setDefaultTimeout(WAIT);
  page.on('console', (m) => m.type() === 'error' && problems.push(`console: ${m.text()}`));
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
});

after(async () => {
  await browser?.close();
  await web?.stop();
  await worker?.stop();
  await conveyor?.stop();
});

async function shot(name) {
  await page.screenshot({ path: join(SHOTS, `examples-${name}.png`), fullPage: true });
}

/** Submits `n` noop jobs (one batch) and waits until every one succeeded. */
async function noops(n) {
  const r = await conveyor.call(userToken, '/v1/jobs/batch', {
    method: 'POST',
    body: { jobs: Array.from({ length: n }, () => ({ kind: 'noop' })) },
  });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.equal(r.body.accepted, n);
  const ids = r.body.items.map((i) => i.job.id);
  for (const id of ids) assert.equal((await conveyor.waitEnded(userToken, id)).status, 'succeeded');
  return ids;
}

/** Every job of the tenant, as the API lists them. */
async function allJobs() {
  const jobs = [];
  let cursor = '';
  for (;;) {
    const r = await conveyor.call(userToken, `/v1/jobs?limit=500${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`);
    assert.equal(r.status, 200);
    jobs.push(...r.body.items);
    if (!r.body.next_cursor) return jobs;
    cursor = r.body.next_cursor;
  }
}

/** Parses our CSV (no field of it holds a comma, quote or line break). */
function parseCsv(text) {
  assert.ok(text.endsWith('\r\n'), 'RFC 4180 line ends');
  const lines = text.slice(0, -2).split('\r\n');
  const header = lines.shift();
  return { header, rows: lines.map((l) => Object.fromEntries(l.split(',').map((v, i) => [HEADER.split(',')[i], v]))) };
}

/** Fills the form, clicks Generate; resolves with the id of the job the page submitted. */
async function generate() {
  await page.getByLabel('API URL').fill(conveyor.url);
  await page.getByLabel('Token').fill(userToken);
  const submitted = page.waitForResponse((r) => r.url().endsWith('/v1/jobs') && r.request().method() === 'POST');
  await page.getByRole('button', { name: 'Generate report' }).click();
  const res = await submitted;
  assert.equal(res.status(), 202, await res.text());
  return (await res.json()).id;
}

/** Clicks "Download CSV" and returns the downloaded file's name and text. */
async function download() {
  const link = page.getByRole('link', { name: 'Download CSV' });
  await link.waitFor();
  const href = await link.getAttribute('href');
  assert.match(href, /^blob:/);
  const [file] = await Promise.all([page.waitForEvent('download'), link.click()]);
  const path = await file.path();
  return { name: file.suggestedFilename(), text: readFileSync(path, 'utf8') };
}

test('the API sends no CORS headers: the page goes through its own server', async () => {
  const r = await fetch(`${conveyor.url}/v1/jobs`, { headers: { Origin: webUrl.slice(0, -1), Authorization: `Bearer ${userToken}` } });
  assert.equal(r.headers.get('access-control-allow-origin'), null);
  // The server forwards /v1/* to a loopback API only, and serves the page.
  const bad = await fetch(`${webUrl}v1/jobs`, { headers: { 'X-Conveyor-Api': 'http://example.com' } });
  assert.equal(bad.status, 400);
  const proxied = await fetch(`${webUrl}v1/jobs?limit=1`, { headers: { 'X-Conveyor-Api': conveyor.url, Authorization: `Bearer ${userToken}` } });
  assert.equal(proxied.status, 200);
  assert.equal((await fetch(`${webUrl}../../package.json`)).status, 404);
  // The worker declared its payload schema: the API refuses another payload before any job exists.
  const refused = await conveyor.call(userToken, '/v1/jobs', { method: 'POST', body: { kind: 'report.jobs_csv', payload: { status: 'nope' } } });
  assert.equal(refused.status, 422, JSON.stringify(refused.body));
});

test('Generate report: live progress, then a CSV with a row per job of the tenant', async () => {
  const ids = await noops(5);
  await page.goto(webUrl);
  await page.getByRole('heading', { name: 'Jobs report' }).waitFor();
  // Records every progress value the bar shows, to see it move.
  await page.evaluate(() => {
    window.progressSeen = [];
    const bar = document.getElementById('progress');
    new MutationObserver(() => window.progressSeen.push(Number(bar.dataset.current))).observe(bar, {
      attributes: true,
      attributeFilter: ['data-current'],
    });
  });
  await page.getByLabel('API URL').fill(conveyor.url);
  await page.getByLabel('Token').fill(userToken);
  await shot('report-form');
  const jobId = await generate();
  await page.locator('#log li', { hasText: /^page 1: 2 jobs listed$/ }).waitFor();
  await shot('report-progress');
  const { name, text } = await download();
  await shot('report-done');

  // The progress moved page by page: 2, 4, then 6 of 6 (5 noop jobs and the report itself).
  const seen = await page.evaluate(() => window.progressSeen);
  const distinct = [...new Set(seen)];
  assert.deepEqual(distinct, [2, 4, 6], `progress values shown: ${seen}`);
  assert.equal(await page.locator('#progress').getAttribute('value'), '6');
  assert.equal(await page.locator('#progress').getAttribute('max'), '6');
  const messages = await page.locator('#log li').allTextContents();
  for (const m of ['page 1: 2 jobs listed', 'page 2: 4 jobs listed', 'page 3: 6 jobs listed, done']) {
    assert.ok(messages.includes(m), `messages: ${messages.join(' | ')}`);
  }
  await page.getByText(/^Job .*: succeeded$/).waitFor();

  // The CSV: a header, then one row per job the tenant had while the report ran.
  assert.match(name, /^jobs-acme-all-\d{8}T\d{6}Z\.csv$/);
  const csv = parseCsv(text);
  assert.equal(csv.header, HEADER);
  const jobs = await allJobs();
  assert.equal(jobs.length, 6);
  assert.deepEqual(csv.rows.map((r) => r.id).sort(), jobs.map((j) => j.id).sort());
  assert.deepEqual(new Set(csv.rows.map((r) => r.id)), new Set([...ids, jobId]));
  const byId = Object.fromEntries(jobs.map((j) => [j.id, j]));
  for (const row of csv.rows.filter((r) => r.id !== jobId)) {
    const j = byId[row.id];
    assert.deepEqual(row, { id: j.id, kind: 'noop', status: 'succeeded', attempt: String(j.attempt), created_at: j.created_at, finished_at: j.finished_at });
  }
  // The report job saw itself running (no finish time yet).
  const self = csv.rows.find((r) => r.id === jobId);
  assert.ok(['queued', 'running'].includes(self.status) && self.finished_at === '', JSON.stringify(self));

  // The same result through the API: inline (small), with the declared shape.
  const job = await conveyor.waitEnded(userToken, jobId);
  assert.equal(job.status, 'succeeded');
  assert.equal(job.result.rows, 6);
  assert.equal(job.result.filename, name);
  assert.equal(job.result.csv, text);
  assert.deepEqual(problems.splice(0), [], 'the page logged errors');
});

test('a large report is stored aside by the server and still downloads whole', async () => {
  await noops(150); // 156 jobs now: a CSV well over the 16 KiB inline limit
  const jobId = await generate();
  const { text } = await download();
  const csv = parseCsv(text);
  assert.equal(csv.header, HEADER);
  const jobs = await allJobs();
  assert.equal(jobs.length, 157);
  // 5 + 150 noop jobs and two reports: every job the tenant had, this report included.
  assert.equal(csv.rows.length, 157);
  assert.deepEqual(csv.rows.map((r) => r.id).sort(), jobs.map((j) => j.id).sort());
  const job = await conveyor.waitEnded(userToken, jobId);
  assert.equal(job.result, null, 'the result is not inline');
  assert.equal(job.result_url, `/v1/jobs/${jobId}/result`);
  assert.ok(Buffer.byteLength(text) > 16_384);
  await shot('report-large');
  assert.deepEqual(problems.splice(0), [], 'the page logged errors');
});

test('the worker stops on SIGTERM and exits 0', async () => {
  const { code, signal } = await worker.stop('SIGTERM');
  assert.equal(signal, null, worker.output);
  assert.equal(code, 0, worker.output);
});
