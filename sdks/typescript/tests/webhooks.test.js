// Webhook verification: against the official Standard Webhooks library, and against a real
// delivery from conveyor to a loopback receiver.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import { after, before, describe, test } from 'node:test';

import { Webhook } from 'standardwebhooks';

import { Client, signWebhook, verifyWebhook, WebhookVerificationError } from '../dist/index.js';
import { Conveyor, waitFor } from './helpers/conveyor.js';

const secret = `whsec_${randomBytes(32).toString('base64')}`;
const body = JSON.stringify({ specversion: '1.0', id: 'evt-1', type: 'dev.conveyor.job.succeeded', data: { ok: 'ünïcode' } });
const now = () => Math.floor(Date.now() / 1000);

function headersOf(id, ts, signature) {
  return { 'webhook-id': id, 'webhook-timestamp': String(ts), 'webhook-signature': signature };
}

describe('verifyWebhook agrees with the official library', () => {
  const official = new Webhook(secret);

  test('a signature made by the official library verifies', () => {
    const ts = now();
    const sig = official.sign('msg_1', new Date(ts * 1000), body);
    const headers = headersOf('msg_1', ts, sig);
    assert.deepEqual(verifyWebhook(secret, headers, body), JSON.parse(body));
    assert.deepEqual(verifyWebhook(secret, new Headers(headers), Buffer.from(body)), JSON.parse(body));
    assert.equal(signWebhook(secret, 'msg_1', ts, body), sig);
  });

  test('a signature made here verifies with the official library', () => {
    const ts = now();
    const headers = headersOf('msg_2', ts, signWebhook(secret, 'msg_2', ts, body));
    assert.deepEqual(official.verify(body, headers), JSON.parse(body));
  });

  test('one valid signature among several is enough, for both', () => {
    const ts = now();
    const other = new Webhook(`whsec_${randomBytes(32).toString('base64')}`).sign('msg_3', new Date(ts * 1000), body);
    const headers = headersOf('msg_3', ts, `v2,abc ${other} ${signWebhook(secret, 'msg_3', ts, body)}`);
    assert.ok(official.verify(body, headers));
    assert.ok(verifyWebhook(secret, headers, body));
  });

  const refusals = {
    'a tampered body': () => {
      const ts = now();
      return [headersOf('m', ts, signWebhook(secret, 'm', ts, body)), body.replace('ünïcode', 'unicode')];
    },
    'another message id': () => {
      const ts = now();
      return [headersOf('m2', ts, signWebhook(secret, 'm', ts, body)), body];
    },
    'another secret': () => {
      const ts = now();
      return [headersOf('m', ts, signWebhook(`whsec_${randomBytes(32).toString('base64')}`, 'm', ts, body)), body];
    },
    'a timestamp six minutes old': () => {
      const ts = now() - 360;
      return [headersOf('m', ts, signWebhook(secret, 'm', ts, body)), body];
    },
    'a timestamp six minutes ahead': () => {
      const ts = now() + 360;
      return [headersOf('m', ts, signWebhook(secret, 'm', ts, body)), body];
    },
    'a missing signature header': () => [{ 'webhook-id': 'm', 'webhook-timestamp': String(now()) }, body],
    'an unknown signature version': () => {
      const ts = now();
      return [headersOf('m', ts, signWebhook(secret, 'm', ts, body).replace('v1,', 'v2,')), body];
    },
  };
  for (const [name, make] of Object.entries(refusals)) {
    test(`${name} is refused by both`, () => {
      const [headers, payload] = make();
      assert.throws(() => official.verify(payload, headers));
      assert.throws(() => verifyWebhook(secret, headers, payload), WebhookVerificationError);
    });
  }

  test('the tolerance is five minutes by default, and can be set', () => {
    const ts = now() - 290;
    const headers = headersOf('m', ts, signWebhook(secret, 'm', ts, body));
    assert.ok(official.verify(body, headers));
    assert.ok(verifyWebhook(secret, headers, body));
    assert.throws(() => verifyWebhook(secret, headers, body, { toleranceSecs: 60 }), WebhookVerificationError);
    assert.ok(verifyWebhook(secret, headers, body, { now: new Date((ts + 10) * 1000), toleranceSecs: 60 }));
  });
});

describe('a real delivery from conveyor', () => {
  let conveyor;
  let receiver;
  const deliveries = [];

  before(async () => {
    conveyor = await Conveyor.start({ CONVEYOR_ALLOW_PRIVATE_WEBHOOKS: 'true' });
    receiver = createServer((req, res) => {
      const chunks = [];
      req.on('data', (c) => chunks.push(c));
      req.on('end', () => {
        deliveries.push({ url: req.url, headers: req.headers, body: Buffer.concat(chunks) });
        res.writeHead(204).end();
      });
    });
    await new Promise((r) => receiver.listen(0, '127.0.0.1', r));
  });

  after(async () => {
    receiver?.close();
    await conveyor?.stop();
  });

  test('verifies with verifyWebhook and the official library; a tampered copy does not', async () => {
    const client = new Client(conveyor.url, conveyor.token());
    const hookUrl = `http://127.0.0.1:${receiver.address().port}/hooks/conveyor?case=1`;
    const job = await client.submit('noop', { echo: { hello: 'webhook' } }, { webhook: { url: hookUrl } });
    const delivery = await waitFor(() => deliveries.find((d) => d.url === '/hooks/conveyor?case=1'), {
      what: 'the webhook delivery',
    });
    const whsec = await client.webhookSecret();
    assert.match(whsec, /^whsec_/);

    const event = verifyWebhook(whsec, delivery.headers, delivery.body);
    assert.equal(event.type, 'dev.conveyor.job.succeeded');
    assert.equal(event.subject, job.id);
    assert.equal(delivery.headers['webhook-id'], event.id);
    assert.deepEqual(new Webhook(whsec).verify(delivery.body.toString('utf8'), delivery.headers), event);

    const tampered = Buffer.from(delivery.body.toString('utf8').replace('webhook', 'webhooK'));
    assert.notDeepEqual(tampered, delivery.body);
    assert.throws(() => verifyWebhook(whsec, delivery.headers, tampered), WebhookVerificationError);
    assert.throws(() => new Webhook(whsec).verify(tampered.toString('utf8'), delivery.headers));
  });
});
