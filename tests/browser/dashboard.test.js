// The dashboard in headless Chromium against a real `conveyor dev`: every flow a user has, with
// assertions on what the page shows, a screenshot of each page (target/screenshots/), and no
// console error allowed anywhere.

import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';

import { chromium } from 'playwright-core';

import { Conveyor, ROOT } from './conveyor.js';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const SHOTS = join(ROOT, 'target', 'screenshots');
const WAIT = 30_000;

let conveyor;
let browser;
let page;
let token;
let sleepJob; // the job the first jobs test ran, looked at again later
const problems = []; // console errors and uncaught page errors

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  conveyor = await Conveyor.start();
  token = conveyor.token();
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.setDefaultTimeout(WAIT);
  page.on('console', (m) => m.type() === 'error' && problems.push(`console: ${m.text()}`));
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
});

after(async () => {
  await browser?.close();
  await conveyor?.stop();
});

/** Fails the current test on any console or page error since the last check. */
function noProblems() {
  const seen = problems.splice(0);
  assert.deepEqual(seen, [], 'the page logged errors');
}

async function shot(name) {
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
}

/** Every form control and button on the page has an accessible name. */
async function everyControlNamed() {
  const unnamed = await page.evaluate(() =>
    [...document.querySelectorAll('input, select, textarea, button, progress')]
      .filter((el) => el.offsetParent !== null || el.getClientRects().length)
      .filter((el) => {
        const byLabel = el.labels && [...el.labels].some((l) => l.textContent.trim());
        const byAria = el.getAttribute('aria-label') || el.getAttribute('aria-labelledby');
        const byText = el.tagName === 'BUTTON' && el.textContent.trim();
        return !(byLabel || byAria || byText);
      })
      .map((el) => el.outerHTML.slice(0, 120)),
  );
  assert.deepEqual(unnamed, [], 'controls without an accessible name');
}

/** Polls `fn` until it returns something truthy. */
async function until(fn, what, timeout = WAIT) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const row = (id) => page.locator(`tr[data-job-id="${id}"]`);
const heading = (name) => page.getByRole('heading', { level: 1, name });
const nav = (name) => page.locator('#nav').getByRole('link', { name, exact: true });

async function submitFromForm(kind, payload, maxAttempts) {
  await page.getByLabel('Kind', { exact: true }).first().selectOption(kind);
  await page.getByLabel('Payload (JSON)').fill(JSON.stringify(payload));
  if (maxAttempts) await page.getByLabel('Max attempts').fill(String(maxAttempts));
  const accepted = page.waitForResponse((r) => r.url().endsWith('/v1/jobs') && r.request().method() === 'POST');
  await page.getByRole('button', { name: 'Submit job' }).click();
  const res = await accepted;
  assert.equal(res.status(), 202);
  return (await res.json()).id;
}

/** A page of its own, signed in with a token of `scope` (tenant acme), on Operations. */
async function opsPage(scope) {
  const p = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  p.setDefaultTimeout(WAIT);
  p.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  await p.goto(conveyor.url);
  await p.getByLabel('Bearer token').fill(conveyor.token(scope));
  await p.getByRole('button', { name: 'Sign in' }).click();
  await p.locator('#nav').getByRole('link', { name: 'Operations', exact: true }).click();
  await p.getByRole('heading', { level: 1, name: 'Operations' }).waitFor();
  return p;
}

test('the API process serves the dashboard with strict headers, beside the API', async () => {
  const index = await fetch(`${conveyor.url}/`);
  assert.equal(index.status, 200);
  assert.match(index.headers.get('content-type'), /^text\/html/);
  assert.match(index.headers.get('content-security-policy'), /script-src 'self'/);
  assert.equal(index.headers.get('cache-control'), 'no-cache');
  const html = await index.text();
  const script = html.match(/src="(\/ui\/[0-9a-f]+\/app\.js)"/)[1];
  const js = await fetch(conveyor.url + script);
  assert.match(js.headers.get('content-type'), /^text\/javascript/);
  assert.match(js.headers.get('cache-control'), /immutable/);
  assert.equal((await fetch(`${conveyor.url}/ui/x/nope.js`)).status, 404);
  // The API, health and OpenAPI routes are untouched.
  assert.equal((await fetch(`${conveyor.url}/healthz`)).status, 200);
  assert.equal((await fetch(`${conveyor.url}/openapi.json`)).status, 200);
  assert.equal((await fetch(`${conveyor.url}/v1/jobs`)).status, 401);
});

test('sign in: a bad token is refused inline, a good one opens the jobs page', async () => {
  await page.goto(conveyor.url);
  await heading('Sign in').waitFor();
  await everyControlNamed();
  await page.getByLabel('Bearer token').fill('not-a-token');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('alert').filter({ hasText: 'invalid token' }).waitFor();
  await shot('1-sign-in');
  problems.splice(0); // the refused token's 401 is logged by Chromium as a failed resource load
  await page.getByLabel('Bearer token').fill(token);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await heading('Jobs').waitFor();
  await page.getByText('acme', { exact: false }).first().waitFor();
  noProblems();
});

test('jobs: a sleep job submitted from the form runs to 100% and succeeds, live', async () => {
  await page.locator('.conn.live').first().waitFor();
  // Inline validation against the kind's schema, before anything is sent.
  await page.getByLabel('Kind', { exact: true }).first().selectOption('sleep');
  await page.getByLabel('Payload (JSON)').fill('{"ms": "soon"}');
  await page.locator('#payload-errors').getByText('payload.ms must be integer').waitFor();
  await page.getByLabel('Payload (JSON)').fill('{"ms": 10,');
  await page.locator('#payload-errors').getByText('Not valid JSON').waitFor();
  await page.getByLabel('Payload (JSON)').fill('{"ms": 10, "steps": 0}');
  await page.locator('#payload-errors').getByText('payload.steps must be at least 1').waitFor();
  await everyControlNamed();

  // Mark the document: a reload would lose the mark.
  await page.evaluate(() => (window.notReloaded = true));
  const id = await submitFromForm('sleep', { ms: 3000, steps: 4 });
  await row(id).waitFor();
  // Record every value the row's progress bar takes.
  await page.evaluate((id) => {
    const bar = document.querySelector(`tr[data-job-id="${id}"] progress`);
    window.seen = [];
    new MutationObserver(() => window.seen.push(bar.dataset.pct)).observe(bar, { attributes: true, attributeFilter: ['data-pct'] });
  }, id);
  await page.locator(`tr[data-job-id="${id}"][data-status="running"]`).waitFor();
  await shot('2-jobs-running');
  await page.locator(`tr[data-job-id="${id}"][data-status="succeeded"]`).waitFor();
  assert.equal(await row(id).locator('progress').getAttribute('data-pct'), '100');
  assert.equal(await row(id).locator('.pct').textContent(), '100%');
  const seen = await page.evaluate(() => window.seen);
  assert.ok(seen.some((p) => p > 0 && p < 100), `the bar moved through intermediate values: ${seen}`);
  assert.equal(await page.evaluate(() => window.notReloaded), true, 'the page was not reloaded');
  assert.equal(await row(id).locator('td[data-label="Attempt"]').textContent(), '1 / 3');
  await shot('3-jobs');
  noProblems();
  sleepJob = id;
});

test('job page: the timeline of CloudEvents with the time between them', async () => {
  const id = sleepJob;
  await row(id).getByRole('link').click();
  await heading(/^Job /).waitFor();
  const entries = page.locator('.timeline li');
  await until(async () => (await entries.count()) >= 7, 'seven timeline entries');
  const types = await entries.evaluateAll((lis) => lis.map((li) => li.dataset.type));
  assert.deepEqual(types, ['job.submitted', 'job.started', 'job.progressed', 'job.progressed', 'job.progressed', 'job.progressed', 'job.succeeded']);
  const gaps = await page.locator('.timeline .gap').allTextContents();
  assert.equal(gaps[0], 'start');
  assert.ok(gaps.slice(1).every((g) => /^\+\d/.test(g)), `gaps: ${gaps}`);
  const job = (await conveyor.call(token, `/v1/jobs/${id}`)).body;
  await page.getByText(job.trace_id).waitFor();
  assert.match(await page.locator('.facts .pct').textContent(), /^100% step 4 of 4/);
  await page.getByText('"slept_ms": 3000').waitFor();
  await everyControlNamed();
  await shot('4-job-timeline');
  noProblems();
});

test('jobs: cancel a running job from its row', async () => {
  await nav('Jobs').click();
  await heading('Jobs').waitFor();
  await page.locator('.conn.live').first().waitFor();
  const id = await submitFromForm('sleep', { ms: 60000, steps: 60 });
  await page.locator(`tr[data-job-id="${id}"][data-status="running"]`).waitFor();
  await row(id).getByRole('button', { name: /^Cancel job/ }).click();
  await page.locator(`tr[data-job-id="${id}"][data-status="cancelled"]`).waitFor();
  await row(id).getByText('cancelled').waitFor();
  assert.equal(await row(id).getByRole('button').count(), 0, 'an ended job has no cancel button');
  // Filters: only cancelled jobs (the one just cancelled is there even if the read model has
  // not caught up), then only succeeded ones, which a job joins live when it succeeds.
  await page.getByLabel('Status').selectOption('cancelled');
  await until(async () => (await page.locator('tbody tr').count()) === 1, 'one cancelled job listed');
  await row(id).waitFor();
  await page.getByLabel('Status').selectOption('succeeded');
  await page.locator('.conn.live').first().waitFor();
  const later = (await conveyor.call(token, '/v1/jobs', { method: 'POST', body: { kind: 'noop' } })).body.id;
  await page.locator(`tr[data-job-id="${later}"][data-status="succeeded"]`).waitFor();
  assert.equal(await page.locator('tbody tr[data-status="cancelled"]').count(), 0);
  await page.getByLabel('Status').selectOption('');
  noProblems();
});

test('operations: a dead-lettered job is re-driven from the dead letters', async () => {
  // Fails its one attempt, so it is dead-lettered; the second attempt, after a re-drive, succeeds.
  const id = await submitFromForm('flaky', { fail_times: 1 }, 1);
  await page.locator(`tr[data-job-id="${id}"][data-status="failed"]`).waitFor();
  await nav('Operations').click();
  await heading('Operations').waitFor();
  const dead = page.locator(`section[aria-labelledby="dl-h"] tr[data-job-id="${id}"]`);
  await dead.waitFor();
  await dead.getByRole('cell', { name: 'flaky', exact: true }).waitFor();
  await page.locator('[data-projection="jobs"]').first().waitFor();
  await dead.getByRole('checkbox').check();
  await shot('5-operations-dead-letters');
  await page.getByRole('button', { name: 'Re-drive 1 selected' }).click();
  await dead.waitFor({ state: 'detached' });
  await page.getByText('No dead letters.').waitFor();
  // The job's timeline shows the dead letter, the re-drive and the attempt that succeeded.
  await page.goto(`${conveyor.url}/#/jobs/${id}`);
  await page.locator('.timeline li[data-type="job.succeeded"]').waitFor();
  const types = await page.locator('.timeline li').evaluateAll((lis) => lis.map((li) => li.dataset.type));
  assert.deepEqual(types, ['job.submitted', 'job.started', 'job.failed', 'job.dead_lettered', 'job.redriven', 'job.started', 'job.succeeded']);
  await page.locator('.title .badge.s-succeeded').waitFor();
  noProblems();
});

test('job page: re-drive a dead-lettered job from its page', async () => {
  const id = (await conveyor.call(token, '/v1/jobs', { method: 'POST', body: { kind: 'fail', payload: { message: 'still broken' }, max_attempts: 1 } })).body.id;
  await page.goto(`${conveyor.url}/#/jobs/${id}`);
  await page.locator('.timeline li[data-type="job.dead_lettered"]').waitFor();
  await page.locator('.title .badge.s-failed').waitFor();
  await page.getByText('"message": "still broken"').first().waitFor();
  await page.getByRole('button', { name: 'Re-drive' }).click();
  await page.locator('.timeline li[data-type="job.redriven"]').waitFor();
  // Kind `fail` fails again: a second dead letter, and the button is back.
  await until(async () => (await page.locator('.timeline li[data-type="job.dead_lettered"]').count()) === 2, 'a second dead letter');
  await page.getByRole('button', { name: 'Re-drive' }).waitFor();
  await page.locator('.facts').getByText('2 of 2').waitFor();
  await shot('5b-job-dead-lettered');
  noProblems();
});

test('job page: a held job shows why it waits and its priority, live; once it runs, the reason goes', async () => {
  const call = (path, opts) => conveyor.call(token, path, opts);
  assert.equal((await call('/v1/kinds/noop/pause', { method: 'POST' })).status, 200);
  let paused = true;
  try {
    const id = (await call('/v1/jobs', { method: 'POST', body: { kind: 'noop', priority: 5 } })).body.id;
    // The scheduler tells a job held by a gate at once (it tells every second).
    const held = await until(async () => {
      const job = (await call(`/v1/jobs/${id}`)).body;
      return job?.waiting?.reason === 'paused' && job;
    }, 'the job to be told it waits for its paused kind', 10_000);
    assert.deepEqual([held.status, held.priority, held.waiting.attempt, held.waiting.key], ['queued', 5, 1, undefined]);

    // Queued jobs are listed in start order, each with its priority and why it waits.
    await nav('Jobs').click();
    await heading('Jobs').waitFor();
    await page.getByLabel('Status').selectOption('queued');
    await page.getByText('In the order they will start: highest priority first, then the oldest.', { exact: true }).waitFor();
    await row(id).locator('.badge.priority').getByText('priority 5', { exact: true }).waitFor();
    await row(id).locator('td[data-label="Status"] .waiting').getByText('kind paused', { exact: true }).waitFor();
    await shot('4b-jobs-queued-in-start-order');
    await page.getByLabel('Status').selectOption('');

    await page.goto(`${conveyor.url}/#/jobs/${id}`);
    await heading(/^Job /).waitFor();
    const facts = () => page.locator('.facts').evaluate((dl) => Object.fromEntries([...dl.querySelectorAll('dt')].map((dt) => [dt.textContent, dt.nextElementSibling.textContent])));
    const reason = page.locator('.facts .waiting[data-reason="paused"]');
    await reason.waitFor();
    const shown = await facts();
    assert.match(shown.Waiting, /^kind paused \(since .+\)$/);
    assert.equal(shown.Priority, '5');
    assert.equal(shown.Status, 'queued');
    const told = page.locator('.timeline li[data-type="job.waiting"]');
    await told.waitFor();
    assert.equal(await told.locator('.what').textContent(), 'attempt 1: kind paused');
    await shot('4c-job-waiting');

    // Resumed: it starts, succeeds, and no longer says it waits (live, no reload).
    await page.evaluate(() => (window.notReloaded = true));
    assert.equal((await call('/v1/kinds/noop/resume', { method: 'POST' })).status, 200);
    paused = false;
    await page.locator('.title .badge.s-succeeded').waitFor();
    await reason.waitFor({ state: 'detached' });
    const after = await facts();
    assert.equal(after.Waiting, undefined, 'the waiting line is gone');
    assert.equal(after.Priority, '5');
    assert.equal(await page.evaluate(() => window.notReloaded), true, 'the page was not reloaded');
    const types = await page.locator('.timeline li').evaluateAll((lis) => lis.map((li) => li.dataset.type));
    assert.deepEqual(types, ['job.submitted', 'job.waiting', 'job.started', 'job.succeeded']);
    // The read model agrees.
    const done = await until(async () => {
      const job = (await call(`/v1/jobs/${id}`)).body;
      return job.status === 'succeeded' && job;
    }, 'the job to succeed');
    assert.equal('waiting' in done, false);
    noProblems();
  } finally {
    if (paused) await call('/v1/kinds/noop/resume', { method: 'POST' });
  }
});

test("job page: a batch shows its members' progress live, a member links to its batch, a dependent to its dependencies", async () => {
  const call = (path, opts) => conveyor.call(token, path, opts);
  // An open batch: its callback waits for the seal and for every member.
  const made = await call('/v1/batches', { method: 'POST', body: { jobs: [{ kind: 'noop' }, { kind: 'noop' }], seal: false } });
  assert.equal(made.status, 202, JSON.stringify(made.body));
  const { id, jobs: [first] } = made.body;
  const dependent = (await call('/v1/jobs', { method: 'POST', body: { kind: 'noop', depends_on: [first] } })).body.id;
  await page.goto(`${conveyor.url}/#/jobs/${id}`);
  await heading(/^Job /).waitFor();
  const facts = () => page.locator('.facts').evaluate((dl) => Object.fromEntries([...dl.querySelectorAll('dt')].map((dt) => [dt.textContent, dt.nextElementSibling.textContent])));
  await page.locator('.facts .members').getByText('2 succeeded, 0 failed, 0 cancelled of 2 (open: more may come)', { exact: true }).waitFor({ timeout: WAIT });
  await page.locator('.facts .waiting[data-reason="batch"]').waitFor({ timeout: WAIT });
  await shot('4d-batch-open');
  assert.equal((await call(`/v1/batches/${id}/seal`, { method: 'POST' })).status, 200);
  await page.locator('.title .badge.s-succeeded').waitFor({ timeout: WAIT });
  await page.locator('.facts .members').getByText('2 succeeded, 0 failed, 0 cancelled of 2', { exact: true }).waitFor({ timeout: WAIT });
  const types = await page.locator('.timeline li').evaluateAll((lis) => lis.map((li) => li.dataset.type));
  assert.deepEqual(types.filter((t) => t !== 'job.waiting'), ['job.submitted', 'job.sealed', 'job.started', 'job.succeeded']);

  await page.goto(`${conveyor.url}/#/jobs/${dependent}`);
  await heading(/^Job /).waitFor();
  await page.locator('.facts .depends-on a').waitFor();
  assert.equal((await facts())['Depends on'], `…${first.slice(-12)}`);
  await page.locator('.facts .depends-on a').click();
  await page.locator('.facts dt', { hasText: 'Batch' }).waitFor();
  assert.equal((await facts()).Batch, `…${id.slice(-12)}`);
  noProblems();
});

test('operations: projections rebuild with progress; consumers; charts from /metrics', async () => {
  await nav('Operations').click();
  await heading('Operations').waitFor();
  const before = (await conveyor.call(token, '/v1/admin/projections')).body.items[0].version;
  await page.getByRole('button', { name: 'Rebuild read models' }).click();
  await page.getByText(/Rebuilding the read models into version/).waitFor();
  await page.locator(`[data-projection="jobs"][data-state="live"] td:nth-child(2)`, { hasText: String(before + 1) }).waitFor();
  await page.locator('[data-consumer]').first().waitFor();
  // Charts need scrapes with traffic between them: jobs submitted now show up as a rate and a
  // latency, drawn as lines once there are two points.
  for (let i = 0; i < 3; i++) await conveyor.call(token, '/v1/jobs', { method: 'POST', body: { kind: 'noop' } });
  await page.locator('.legend li', { hasText: /^submitted: (?!0\/s)\S+\/s$/ }).waitFor();
  await page.locator('.legend li', { hasText: /^latency p50: \d\S*s$/ }).waitFor();
  await until(async () => (await page.locator('svg.chart path[d*="L"]').count()) > 0, 'a line on a chart');
  await everyControlNamed();
  await shot('6-operations');
  noProblems();
});

test('operations: schedules with their next run, refreshed; pause, resume and delete (confirmed) from the page', async () => {
  await nav('Operations').click();
  await heading('Operations').waitFor();
  const id = 'browser-nightly';
  const created = await conveyor.call(token, '/v1/schedules', { method: 'POST', body: { id, kind: 'noop', cron: '0 30 2 * * *', timezone: 'Europe/Paris' } });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  assert.ok(created.body.next_run_at, 'the API gives a next run');
  const hourly = await conveyor.call(token, '/v1/schedules', { method: 'POST', body: { id: 'browser-every', kind: 'sleep', payload: { ms: 1 }, every: '1h 30m' } });
  assert.equal(hourly.status, 201, JSON.stringify(hourly.body));
  // Created behind the page's back: the periodic refresh lists them.
  const nightly = page.locator(`tr[data-schedule="${id}"]`);
  await nightly.waitFor();
  assert.equal(await nightly.locator('td[data-label="Kind"]').textContent(), 'noop');
  assert.equal(await nightly.locator('td[data-label="Timing"]').textContent(), '0 30 2 * * * (Europe/Paris)');
  assert.equal(await nightly.locator('td[data-label="Next run"] time').getAttribute('datetime'), created.body.next_run_at);
  await nightly.locator('td[data-label="Next run"]').getByText(/^in \d/).waitFor();
  await nightly.locator('td[data-label="Last run"]').getByText('not yet').waitFor();
  await nightly.locator('td[data-label="State"]').getByText('active', { exact: true }).waitFor();
  const every = page.locator('tr[data-schedule="browser-every"]');
  assert.equal(await every.locator('td[data-label="Timing"]').textContent(), 'every 1 h 30 m');
  assert.equal(await every.locator('td[data-label="Next run"] time').getAttribute('datetime'), hourly.body.next_run_at);
  assert.equal(await page.getByText('No schedules.').isVisible(), false);
  await everyControlNamed();
  await shot('6c-operations-schedules');

  // Pause: the API says paused, and a paused schedule has no next run.
  await nightly.getByRole('button', { name: `Pause schedule ${id}` }).click();
  await page.locator(`tr[data-schedule="${id}"][data-paused="true"]`).waitFor();
  const paused = await conveyor.call(token, `/v1/schedules/${id}`);
  assert.equal(paused.body.paused, true);
  assert.equal(paused.body.next_run_at, undefined);
  await nightly.locator('td[data-label="Next run"]').getByText('none while paused').waitFor();
  await nightly.locator('td[data-label="State"]').getByText('paused', { exact: true }).waitFor();
  // Resume: active again, with a next run.
  await nightly.getByRole('button', { name: `Resume schedule ${id}` }).click();
  await page.locator(`tr[data-schedule="${id}"][data-paused="false"]`).waitFor();
  const resumed = (await conveyor.call(token, `/v1/schedules/${id}`)).body;
  assert.equal(resumed.paused, false);
  assert.ok(resumed.next_run_at, 'a resumed schedule has a next run');
  await nightly.locator('td[data-label="Next run"] time').waitFor();

  // Delete asks first: dismissed, nothing happens; accepted, the schedule is gone.
  const remove = nightly.getByRole('button', { name: `Delete schedule ${id}` });
  let asked = page.waitForEvent('dialog');
  let clicked = remove.click();
  let dialog = await asked;
  assert.equal(dialog.type(), 'confirm');
  assert.match(dialog.message(), new RegExp(`^Delete schedule ${id}\\?`));
  await dialog.dismiss();
  await clicked;
  assert.equal((await conveyor.call(token, `/v1/schedules/${id}`)).status, 200, 'kept when the confirmation is dismissed');
  assert.equal(await nightly.count(), 1);
  asked = page.waitForEvent('dialog');
  clicked = remove.click();
  dialog = await asked;
  await dialog.accept();
  await clicked;
  await nightly.waitFor({ state: 'detached' });
  assert.equal((await conveyor.call(token, `/v1/schedules/${id}`)).status, 404);
  // Deleted behind the page's back: the refresh drops it.
  assert.equal((await conveyor.call(token, '/v1/schedules/browser-every', { method: 'DELETE' })).status, 204);
  await every.waitFor({ state: 'detached' });
  await page.getByText('No schedules.').waitFor();
  noProblems();
});

test('operations: a kind paused from the page holds its jobs, others run on; resumed, they run', async () => {
  await nav('Operations').click();
  await heading('Operations').waitFor();
  const status = async (id) => (await conveyor.call(token, `/v1/jobs/${id}`)).body?.status;
  await page.getByText('No kind is paused.').waitFor();
  await page.getByLabel('Kind to pause').selectOption('noop');
  await page.getByLabel('Pause for').selectOption({ label: 'this tenant\'s jobs' });
  await page.getByRole('button', { name: 'Pause kind' }).click();
  const paused = page.locator('tr[data-pause-kind="noop"][data-pause-tenant="acme"][data-pause-by="tenant"]');
  await paused.waitFor();
  assert.equal(await page.getByText('No kind is paused.').isVisible(), false);
  const listed = (await conveyor.call(token, '/v1/pauses')).body.items;
  assert.deepEqual(listed.map((p) => [p.kind, p.tenant, p.paused, p.by, p.by_operator]), [['noop', 'acme', true, 'browser-test', false]]);

  // A noop job waits; a sleep job submitted after it runs.
  const held = (await conveyor.call(token, '/v1/jobs', { method: 'POST', body: { kind: 'noop' } })).body.id;
  const other = (await conveyor.call(token, '/v1/jobs', { method: 'POST', body: { kind: 'sleep', payload: { ms: 1 } } })).body.id;
  await until(async () => (await status(other)) === 'succeeded', 'the sleep job to succeed');
  assert.equal(await status(held), 'queued');
  // Besides job.submitted, at most the scheduler's word on why it waits (job.waiting).
  const types = (await conveyor.call(token, `/v1/jobs/${held}/events`)).body.map((ce) => ce.type).filter((t) => t !== 'dev.conveyor.job.waiting');
  assert.deepEqual(types, ['dev.conveyor.job.submitted'], 'the paused kind\'s job never started');
  await paused.locator('td[data-label="Paused for"]').getByText('acme (this tenant)').waitFor();
  await paused.locator('td[data-label="By"]').getByText('browser-test').waitFor();
  await everyControlNamed();
  await shot('6d-operations-paused-kind');

  // Resumed from the page: the held job runs.
  await paused.getByRole('button', { name: 'Resume noop', exact: true }).click();
  await paused.waitFor({ state: 'detached' });
  await page.getByText('No kind is paused.').waitFor();
  assert.deepEqual((await conveyor.call(token, '/v1/pauses')).body.items, []);
  await until(async () => (await status(held)) === 'succeeded', 'the held noop job to succeed');
  noProblems();
});

test('operations: an operator pauses a kind for every tenant; the operators\' pauses and the tenant\'s own stay apart; a reader changes nothing', async () => {
  await page.getByLabel('Kind to pause').selectOption('fail');
  await page.getByLabel('Pause for').selectOption({ label: 'every tenant' });
  await page.getByRole('button', { name: 'Pause kind' }).click();
  const pauseRow = (tenant, by) => page.locator(`tr[data-pause-kind="fail"][data-pause-tenant="${tenant}"][data-pause-by="${by}"]`);
  const everyone = pauseRow('*', 'operator');
  await everyone.getByText('every tenant').waitFor();
  assert.deepEqual((await conveyor.call(token, '/v1/admin/pauses')).body.items.map((p) => [p.kind, p.tenant, p.by_operator]), [['fail', null, true]]);
  // Beside it, an operator's pause of the kind for this tenant, and the tenant's own.
  assert.equal((await conveyor.call(token, '/v1/admin/kinds/fail/pause?tenant=acme', { method: 'POST' })).status, 200);
  assert.equal((await conveyor.call(token, '/v1/kinds/fail/pause', { method: 'POST' })).status, 200);
  const holding = (await conveyor.call(token, '/v1/pauses')).body.items;
  assert.deepEqual(holding.map((p) => [p.tenant, p.by_operator]), [[null, true], ['acme', false], ['acme', true]]);
  const forAcme = pauseRow('acme', 'operator');
  const own = pauseRow('acme', 'tenant');
  await forAcme.getByRole('button', { name: 'Resume fail for tenant acme', exact: true }).waitFor();
  await own.getByRole('button', { name: 'Resume fail', exact: true }).waitFor();
  await everyone.getByRole('button', { name: 'Resume fail for every tenant', exact: true }).waitFor();
  await forAcme.locator('td[data-label="Paused for"]').getByText('acme (this tenant)').waitFor();
  await forAcme.locator('td[data-label="By"]').getByText('browser-test (operator)').waitFor();
  const schedule = await conveyor.call(token, '/v1/schedules', { method: 'POST', body: { id: 'browser-read-only', kind: 'noop', every: '6h' } });
  assert.equal(schedule.status, 201, JSON.stringify(schedule.body));
  await shot('6e-operations-operator-pauses');
  noProblems();

  // A reader of the tenant: the pauses that hold its jobs and the schedule, and no button.
  const reader = await opsPage('jobs:read');
  const readerRow = (tenant, by) => reader.locator(`tr[data-pause-kind="fail"][data-pause-tenant="${tenant}"][data-pause-by="${by}"]`);
  await readerRow('*', 'operator').getByText('held by an operator').waitFor();
  await readerRow('acme', 'operator').getByText('held by an operator').waitFor();
  await readerRow('acme', 'tenant').getByText('acme (this tenant)').waitFor();
  await reader.locator('tr[data-schedule="browser-read-only"]').getByText('every 6 h').waitFor();
  assert.equal(await reader.locator('section[aria-labelledby="pauses-h"] button, section[aria-labelledby="sched-h"] button').count(), 0);
  assert.equal(await reader.getByRole('button', { name: 'Pause kind' }).count(), 0);
  await reader.getByText('Pausing and resuming kinds need the jobs:write scope.').waitFor();
  await reader.getByText('pausing, resuming and deleting them need the jobs:write scope').waitFor();
  await reader.screenshot({ path: join(SHOTS, '6f-operations-tenant-reader.png'), fullPage: true });
  await reader.close();
  problems.splice(0); // the reader's jobs page, first after sign-in, is refused the event stream

  // The tenant's resume lifts its own pause only; the operators' ones are lifted one by one.
  await own.getByRole('button', { name: 'Resume fail', exact: true }).click();
  await own.waitFor({ state: 'detached' });
  assert.deepEqual((await conveyor.call(token, '/v1/pauses')).body.items.map((p) => [p.tenant, p.by_operator]), [[null, true], ['acme', true]]);
  await forAcme.getByRole('button', { name: 'Resume fail for tenant acme' }).click();
  await forAcme.waitFor({ state: 'detached' });
  await everyone.getByRole('button', { name: 'Resume fail for every tenant' }).click();
  await everyone.waitFor({ state: 'detached' });
  await page.getByText('No kind is paused.').waitFor();
  assert.deepEqual((await conveyor.call(token, '/v1/admin/pauses')).body.items, []);
  assert.equal((await conveyor.call(token, '/v1/schedules/browser-read-only', { method: 'DELETE' })).status, 204);
  noProblems();
});

test('operations: the page shows what the token\'s scopes allow (admin per tenant, operator for the platform)', async () => {
  const ops = opsPage;
  // A tenant's admin: its dead letters, and no projection, consumer or metric of the platform.
  const admin = await ops('jobs:read admin');
  await admin.locator('section[aria-labelledby="dl-h"]').waitFor();
  await admin.getByText('they need the operator scope').waitFor();
  assert.equal(await admin.locator('section[aria-labelledby="proj-h"]').count(), 0);
  assert.equal(await admin.locator('[data-consumer]').count(), 0);
  // and the tenant's pauses and schedules (admin stands for jobs:write: it changes them).
  await admin.locator('section[aria-labelledby="sched-h"]').waitFor();
  await admin.locator('section[aria-labelledby="pauses-h"]').getByRole('button', { name: 'Pause kind' }).waitFor();
  await admin.screenshot({ path: join(SHOTS, '6b-operations-tenant-admin.png'), fullPage: true });
  await admin.close();
  // An operator: projections and consumers, and no tenant's dead letters.
  const operator = await ops('operator');
  await operator.locator('[data-projection="jobs"]').first().waitFor();
  await operator.locator('[data-consumer]').first().waitFor();
  await operator.getByText('Dead letters need the admin scope').waitFor();
  assert.equal(await operator.locator('section[aria-labelledby="dl-h"]').count(), 0);
  // Every tenant's pauses, and pausing for all (the kind typed: listing kinds needs jobs:read);
  // no tenant's schedules.
  await operator.getByText('Schedules need the jobs:read scope').waitFor();
  assert.equal(await operator.locator('section[aria-labelledby="sched-h"]').count(), 0);
  await operator.locator('section[aria-labelledby="pauses-h"]').getByText('For every tenant.').waitFor();
  assert.equal(await operator.getByLabel('Kind to pause').evaluate((el) => el.tagName), 'INPUT');
  await operator.close();
  problems.splice(0); // an operator token's 403 on /v1/jobs at sign-in is logged as a failed load
});

test('event stream: a live tail with type filters, paused and resumed from the last id', async () => {
  await nav('Events').click();
  await heading('Event stream').waitFor();
  await page.locator('.conn.live').waitFor();
  const submit = async () => (await conveyor.call(token, '/v1/jobs', { method: 'POST', body: { kind: 'noop' } })).body.id;
  const rowsOf = (id) => page.locator(`tbody tr:has(a[href="#/jobs/${id}"])`);

  const first = await submit();
  await rowsOf(first).filter({ hasText: 'job.succeeded' }).waitFor();
  assert.ok((await rowsOf(first).count()) >= 3, 'submitted, started, succeeded');

  await page.getByRole('button', { name: 'Pause' }).click();
  await page.getByText(/^paused after #\d+/).waitFor();
  const whilePaused = await submit();
  await conveyor.call(token, `/v1/jobs/${whilePaused}`); // it exists, and ran
  await until(async () => (await conveyor.call(token, `/v1/jobs/${whilePaused}`)).body.status === 'succeeded', 'the job to succeed');
  assert.equal(await rowsOf(whilePaused).count(), 0, 'nothing arrives while paused');
  await page.getByRole('button', { name: 'Resume' }).click();
  await rowsOf(whilePaused).filter({ hasText: 'job.succeeded' }).waitFor();
  await rowsOf(whilePaused).filter({ hasText: 'job.submitted' }).waitFor();

  // Only succeeded events.
  await page.getByRole('button', { name: 'None' }).click();
  await page.getByLabel('succeeded').check();
  await page.locator('.conn.live').waitFor();
  const filtered = await submit();
  await rowsOf(filtered).filter({ hasText: 'job.succeeded' }).waitFor();
  assert.equal(await rowsOf(filtered).count(), 1, 'only job.succeeded');
  await everyControlNamed();
  await shot('7-events');
  noProblems();
});

test('jobs: filter by kind and page through older jobs', async () => {
  const ids = [];
  for (let i = 0; i < 30; i++) ids.push((await conveyor.call(token, '/v1/jobs', { method: 'POST', body: { kind: 'noop' } })).body.id);
  // Lists come from the read model: wait until it has every one of them.
  const listed = async () => (await conveyor.call(token, '/v1/jobs?kind=noop&limit=500')).body.items.map((j) => j.id);
  const total = (await until(async () => {
    const all = await listed();
    return ids.every((id) => all.includes(id)) && all;
  }, 'the projector to list the new jobs')).length;
  await nav('Jobs').click();
  await heading('Jobs').waitFor();
  await page.getByLabel('Kind', { exact: true }).nth(1).selectOption('noop');
  const rows = page.locator('table.jobs tbody tr');
  await until(async () => (await rows.count()) === 25, 'a first page of 25 noop jobs');
  assert.deepEqual([...new Set(await rows.locator('td[data-label="Kind"]').allTextContents())], ['noop']);
  const newest = await rows.first().getAttribute('data-job-id');
  await page.getByRole('button', { name: 'Older' }).click();
  await page.getByText('page 2', { exact: true }).waitFor();
  await until(async () => (await rows.count()) === Math.min(25, total - 25), 'the second page');
  assert.equal(await page.locator(`table.jobs tr[data-job-id="${newest}"]`).count(), 0, 'page 2 holds other jobs');
  await page.getByRole('button', { name: 'Newer' }).click();
  await page.getByText('newest', { exact: true }).waitFor();
  await row(newest).waitFor();
  await page.getByLabel('Kind', { exact: true }).nth(1).selectOption('');
  noProblems();
});

test('phone width: the jobs page fits 390 px and stays usable', async () => {
  await page.setViewportSize({ width: 390, height: 844 });
  await nav('Jobs').click();
  await heading('Jobs').waitFor();
  await page.locator('tbody tr').first().waitFor();
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `the page is ${overflow} px wider than the screen`);
  await page.getByRole('button', { name: 'Submit job' }).waitFor();
  await shot('8-jobs-phone');
  await page.goto(`${conveyor.url}/#/jobs/${sleepJob}`);
  await page.locator('.timeline li').first().waitFor();
  assert.ok((await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth)) <= 0, 'job page fits');
  await shot('9-job-phone');
  noProblems();
});

test('keyboard: the navigation and the submit form work without a mouse', async () => {
  await page.setViewportSize({ width: 1280, height: 900 });
  await page.goto(`${conveyor.url}/#/events`);
  await heading('Event stream').waitFor();
  await page.locator('#nav a[href="#/jobs"]').focus();
  await page.keyboard.press('Enter');
  await heading('Jobs').waitFor();
  assert.equal(await page.evaluate(() => document.activeElement.tagName), 'H1', 'focus moves to the new page');
  await page.getByLabel('Payload (JSON)').focus();
  await page.keyboard.press('Control+A');
  await page.keyboard.type('{"ms": 1}');
  await page.keyboard.press('Tab'); // to the submit button
  const accepted = page.waitForResponse((r) => r.url().endsWith('/v1/jobs') && r.request().method() === 'POST');
  await page.keyboard.press('Enter');
  assert.equal((await accepted).status(), 202);
  noProblems();
});
