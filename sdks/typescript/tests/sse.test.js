// The event-stream parser, on its own.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { SseParser } from '../dist/index.js';

test('parses ids, event names, multi-line data and comments, across chunk boundaries', () => {
  const p = new SseParser();
  const text = '\uFEFF: keep-alive\n\nid: 7\nevent: job.started\ndata: {"a":\ndata: 1}\n\nid: 8\r\nevent: job.succeeded\r\ndata: {}\r\n\r\n';
  const out = [];
  // Feed byte by byte: every split point must work, a CR LF split in two included.
  for (const ch of text) out.push(...p.push(ch));
  assert.deepEqual(
    out.map(({ id, event, data }) => ({ id, event, data })),
    [
      { id: '7', event: 'job.started', data: '{"a":\n1}' },
      { id: '8', event: 'job.succeeded', data: '{}' },
    ],
  );
});

test('a message without data is not dispatched, and the default event is `message`', () => {
  const p = new SseParser();
  assert.deepEqual(p.push('id: 1\n\n'), []);
  const [m] = p.push('data:x\n\n');
  assert.equal(m.event, 'message');
  assert.equal(m.data, 'x');
  assert.equal(m.id, undefined);
});

test('a lone CR ends a line once the next character shows it is not CR LF', () => {
  const p = new SseParser();
  assert.deepEqual(p.push('data: a\r'), []);
  assert.deepEqual(p.push('\r'), []);
  assert.deepEqual(p.push('data: b\n\n').map((m) => m.data), ['a', 'b']);
});
