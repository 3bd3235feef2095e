// Push kinds: conveyor's workers POST each job of a push kind to an endpoint, signed per Standard
// Webhooks with the kind's secret. The endpoint here is a loopback server of the test's that
// verifies every request with the official `standardwebhooks` library and with verifyWebhook,
// and answers by path: /ok echoes, /flaky fails attempt 1 with a 500, /bad answers 400, /slow
// answers later than the kind's timeout; a request that does not verify gets a 401. A job that
// waited for others (a dependent, a batch's callback) carries `upstream` in its body.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import { after, before, describe, test } from 'node:test';

import { Webhook } from 'standardwebhooks';

import { Client, verifyWebhook } from '../dist/index.js';
import { Conveyor, settledTimeline, types, waitFor } from './helpers/conveyor.js';

const otherSecret = () => `whsec_${randomBytes(32).toString('base64')}`;

/** Registers `kind` as a push kind (`PUT /v1/admin/kinds/{kind}`, scope `operator`): the answer. */
async function register(conveyor, kind, body) {
  const res = await fetch(`${conveyor.url}/v1/admin/kinds/${encodeURIComponent(kind)}`, {
    method: 'PUT',
    headers: { authorization: `Bearer ${conveyor.token('operator', { tenant: 'ops' })}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {
    // not JSON: kept as text below
  }
  return { status: res.status, body: json ?? text };
}

/**
 * The push endpoint. Requests go to `/<kind>/<mode>`; the kind picks the secret the endpoint
 * checks with (`secrets`, filled in as kinds are registered). Every request is recorded with
 * what each verifier said.
 */
function startEndpoint() {
  const secrets = new Map();
  const requests = [];
  const server = createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const raw = Buffer.concat(chunks);
      const [, kind, mode] = req.url.split('/');
      const secret = secrets.get(kind);
      const record = { kind, mode, headers: req.headers, raw, official: null, sdk: null };
      requests.push(record);
      try {
        record.official = new Webhook(secret).verify(raw.toString('utf8'), req.headers);
      } catch (e) {
        record.officialError = String(e);
      }
      try {
        record.sdk = verifyWebhook(secret, req.headers, raw);
      } catch (e) {
        record.sdkError = String(e);
      }
      if (!record.official || !record.sdk) {
        res.writeHead(401, { 'content-type': 'text/plain' }).end('signature does not verify');
        return;
      }
      const job = record.sdk;
      record.job = job;
      const json = (status, value) =>
        res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(value));
      switch (mode) {
        case 'ok':
          return json(200, { echo: job.payload });
        case 'flaky':
          return job.attempt === 1 ? json(500, { error: 'not yet' }) : json(200, { attempt: job.attempt });
        case 'bad':
          return json(400, { error: 'no such account' });
        case 'slow': {
          // Far longer than the kind's timeout; given up when conveyor hangs up.
          const timer = setTimeout(() => json(200, { late: true }), 10_000);
          res.on('close', () => clearTimeout(timer));
          return undefined;
        }
        default:
          return json(404, { error: 'no such path' });
      }
    });
  });
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () =>
      resolve({ server, secrets, requests, base: `http://127.0.0.1:${server.address().port}` }),
    ),
  );
}

describe('push kinds against a loopback endpoint', () => {
  let conveyor;
  let client;
  let endpoint;
  const kindSecrets = new Map();

  /** Registers `kind` to `/<kind>/<mode>`; the endpoint checks with the kind's secret (or `endpointSecret`). */
  async function registerPush(kind, mode, { timeoutMs = 5_000, endpointSecret } = {}) {
    const answer = await register(conveyor, kind, {
      url: `${endpoint.base}/${kind}/${mode}`,
      timeout_ms: timeoutMs,
      schema: { type: 'object' },
    });
    assert.equal(answer.status, 200, JSON.stringify(answer.body));
    assert.match(answer.body.secret, /^whsec_/);
    assert.equal(answer.body.push?.timeout_ms, timeoutMs, JSON.stringify(answer.body));
    kindSecrets.set(kind, answer.body.secret);
    endpoint.secrets.set(kind, endpointSecret ?? answer.body.secret);
    return answer.body.secret;
  }

  /** The job once terminal. */
  async function terminal(id) {
    return waitFor(
      async () => {
        const job = await client.get(id);
        return ['succeeded', 'failed', 'cancelled'].includes(job.status) ? job : undefined;
      },
      { timeoutMs: 60_000, what: `job ${id} to end` },
    );
  }

  /** Submits a job of a push kind. */
  const submit = (kind, payload, options) => client.submit(kind, payload, options);

  const requestsOf = (id) => endpoint.requests.filter((r) => r.job?.id === id || jobIdOf(r) === id);
  const jobIdOf = (r) => {
    try {
      return JSON.parse(r.raw.toString('utf8')).id;
    } catch {
      return undefined;
    }
  };

  before(async () => {
    conveyor = await Conveyor.start({ CONVEYOR_ALLOW_PRIVATE_WEBHOOKS: 'true' });
    client = new Client(conveyor.url, conveyor.token());
    endpoint = await startEndpoint();
  });

  after(async () => {
    endpoint?.server.closeAllConnections();
    endpoint?.server.close();
    await conveyor?.stop();
  });

  test('a 200 with JSON is the result', async () => {
    await registerPush('push.ok', 'ok');
    const job = await submit('push.ok', { n: 1, text: 'ünïcode' }, { maxAttempts: 3 });
    const done = await terminal(job.id);
    assert.equal(done.status, 'succeeded', JSON.stringify(done));
    assert.deepEqual(done.result, { echo: { n: 1, text: 'ünïcode' } });
    assert.deepEqual(await client.result(job.id), { echo: { n: 1, text: 'ünïcode' } });
    assert.deepEqual(types(await settledTimeline(client, job.id)), ['job.submitted', 'job.started', 'job.succeeded']);

    const [request, ...more] = requestsOf(job.id);
    assert.equal(more.length, 0, 'delivered once');
    assert.equal(request.headers['webhook-id'], `${job.id}.1`);
    assert.match(request.headers['content-type'], /^application\/json/);
    assert.deepEqual(request.sdk, request.official);
    assert.deepEqual(request.sdk, {
      id: job.id,
      tenant: 'acme',
      kind: 'push.ok',
      payload: { n: 1, text: 'ünïcode' },
      attempt: 1,
      max_attempts: 3,
    });
  });

  test('a 500 is retried, and the next attempt succeeds', async () => {
    await registerPush('push.flaky', 'flaky');
    const job = await submit('push.flaky', { n: 2 }, { maxAttempts: 3 });
    const done = await terminal(job.id);
    assert.equal(done.status, 'succeeded', JSON.stringify(done));
    assert.equal(done.attempt, 2, JSON.stringify(done));
    assert.deepEqual(done.result, { attempt: 2 });
    assert.deepEqual(types(await settledTimeline(client, job.id)), [
      'job.submitted',
      'job.started',
      'job.failed',
      'job.retry_scheduled',
      'job.started',
      'job.succeeded',
    ]);
    assert.deepEqual(
      requestsOf(job.id).map((r) => r.headers['webhook-id']),
      [`${job.id}.1`, `${job.id}.2`],
    );
  });

  test('a 400 fails the job for good: dead-lettered, error class fatal', async () => {
    await registerPush('push.bad', 'bad');
    const job = await submit('push.bad', { n: 3 }, { maxAttempts: 3 });
    const done = await terminal(job.id);
    assert.equal(done.status, 'failed', JSON.stringify(done));
    assert.equal(done.attempt, 1, JSON.stringify(done));
    assert.equal(done.error?.class, 'fatal', JSON.stringify(done));
    assert.match(done.error?.message ?? '', /400/);
    assert.deepEqual(types(await settledTimeline(client, job.id)), [
      'job.submitted',
      'job.started',
      'job.failed',
      'job.dead_lettered',
    ]);
    assert.equal(requestsOf(job.id).length, 1);
  });

  test('an endpoint slower than timeout_ms fails the attempt; after max_attempts the job fails', async () => {
    await registerPush('push.slow', 'slow', { timeoutMs: 300 });
    const job = await submit('push.slow', { n: 4 }, { maxAttempts: 2 });
    const done = await terminal(job.id);
    assert.equal(done.status, 'failed', JSON.stringify(done));
    assert.equal(done.attempt, 2, `timed out twice: ${JSON.stringify(done)}`);
    assert.notEqual(done.error?.class, 'fatal', JSON.stringify(done));
    const timeline = types(await settledTimeline(client, job.id));
    assert.equal(timeline.filter((t) => t === 'job.started').length, 2, timeline.join(' '));
    assert.equal(timeline.at(-1), 'job.dead_lettered', timeline.join(' '));
    assert.deepEqual(
      requestsOf(job.id).map((r) => r.headers['webhook-id']),
      [`${job.id}.1`, `${job.id}.2`],
    );
  });

  test('an endpoint checking with another secret answers 401: the job is dead-lettered', async () => {
    const wrong = otherSecret();
    const real = await registerPush('push.wrong', 'ok', { endpointSecret: wrong });
    const job = await submit('push.wrong', { n: 5 }, { maxAttempts: 3 });
    const done = await terminal(job.id);
    assert.equal(done.status, 'failed', JSON.stringify(done));
    assert.equal(done.error?.class, 'fatal', JSON.stringify(done));
    assert.match(done.error?.message ?? '', /401/);
    assert.deepEqual(types(await settledTimeline(client, job.id)), [
      'job.submitted',
      'job.started',
      'job.failed',
      'job.dead_lettered',
    ]);
    const [request, ...more] = requestsOf(job.id);
    assert.equal(more.length, 0);
    // Both verifiers refused it with the wrong secret...
    assert.equal(request.official, null);
    assert.equal(request.sdk, null);
    assert.ok(request.officialError && request.sdkError);
    // ...and both accept the very same request with the kind's real secret.
    assert.equal(new Webhook(real).verify(request.raw.toString('utf8'), request.headers).id, job.id);
    assert.equal(verifyWebhook(real, request.headers, request.raw).id, job.id);
  });

  test('a job that waited for others gets `upstream` in its body: its dependencies, or a batch callback’s members', async () => {
    await registerPush('push.after', 'ok');
    const first = await client.submit('noop', { echo: { rows: 3 } });
    const job = await submit('push.after', { n: 6 }, { dependsOn: [first.id] });
    assert.equal((await terminal(job.id)).status, 'succeeded');
    const [request] = requestsOf(job.id);
    assert.deepEqual(request.sdk.upstream, { dependencies: [{ id: first.id, status: 'succeeded', result: { rows: 3 } }] });

    const batch = await client.createBatch(
      [
        { kind: 'noop', payload: { echo: 1 } },
        { kind: 'fail', payload: { fatal: true } },
      ],
      { callback: { kind: 'push.after', payload: { n: 7 } } },
    );
    assert.equal((await terminal(batch.id)).status, 'succeeded');
    const [callback] = requestsOf(batch.id);
    assert.deepEqual(callback.sdk.payload, { n: 7 });
    assert.deepEqual(callback.sdk.upstream, {
      members: {
        total: 2,
        succeeded: 1,
        failed: 1,
        cancelled: 0,
        jobs: [
          { id: batch.jobs[0], status: 'succeeded' },
          { id: batch.jobs[1], status: 'failed' },
        ],
      },
    });
  });

  test('all the requests: both verifiers agreed on every one', async () => {
    // A request of its own, so the check never runs on nothing; then every request so far.
    await registerPush('push.ok', 'ok');
    const job = await submit('push.ok', { n: 2 });
    assert.equal((await terminal(job.id)).status, 'succeeded');
    assert.ok(endpoint.requests.length > 0, 'the endpoint recorded no request');
    for (const r of endpoint.requests) {
      assert.equal(r.official === null, r.sdk === null, `${r.kind}/${r.mode}: ${r.officialError} | ${r.sdkError}`);
      if (r.kind !== 'push.wrong') {
        assert.ok(r.sdk, `${r.kind}/${r.mode} did not verify: ${r.sdkError}`);
        assert.deepEqual(r.sdk, r.official);
        assert.equal(r.headers['webhook-id'], `${r.sdk.id}.${r.sdk.attempt}`);
        assert.equal(r.sdk.kind, r.kind);
      }
    }
  });
});

describe('push kinds: endpoints are vetted like webhook targets', () => {
  let conveyor;

  before(async () => {
    conveyor = await Conveyor.start({ CONVEYOR_ALLOW_PRIVATE_WEBHOOKS: 'false' });
  });

  after(async () => {
    await conveyor?.stop();
  });

  test('without CONVEYOR_ALLOW_PRIVATE_WEBHOOKS a loopback endpoint is refused with 422', async () => {
    const answer = await register(conveyor, 'push.ssrf', { url: 'http://127.0.0.1:9/x', timeout_ms: 1_000 });
    assert.equal(answer.status, 422, JSON.stringify(answer.body));
    // Nothing was registered.
    const kinds = await new Client(conveyor.url, conveyor.token()).kinds();
    assert.ok(!kinds.some((k) => k.kind === 'push.ssrf'), JSON.stringify(kinds));
  });
});
