// A webhook receiver: verifies each delivery with the tenant's secret, on the raw body.
import { createServer } from 'node:http';

import { verifyWebhook, WebhookVerificationError, type CloudEvent } from '@conveyor/sdk';

const seen = new Set<string>();

createServer((req, res) => {
  const chunks: Buffer[] = [];
  req.on('data', (c: Buffer) => chunks.push(c));
  req.on('end', () => {
    try {
      const event = verifyWebhook<CloudEvent>(process.env.CONVEYOR_WEBHOOK_SECRET ?? '', req.headers, Buffer.concat(chunks));
      if (!seen.has(event.id)) {
        seen.add(event.id); // delivery is at least once
        console.log(event.type, event.subject);
      }
      res.writeHead(204).end();
    } catch (e) {
      res.writeHead(e instanceof WebhookVerificationError ? 400 : 500).end();
    }
  });
}).listen(3000);
