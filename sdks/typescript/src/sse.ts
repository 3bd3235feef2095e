/**
 * A parser of `text/event-stream` (the WHATWG server-sent events format): lines ending in CR,
 * LF or CRLF, `field: value` pairs, comments (`:`), messages ended by a blank line.
 */

/** One server-sent message. */
export interface SseMessage {
  /** The `id:` field of this message, if it had one. */
  id: string | undefined;
  /** The `event:` field (`message` when absent). */
  event: string;
  /** The `data:` lines, joined with `\n`. */
  data: string;
  /** The `retry:` field, in ms, if any. */
  retry: number | undefined;
}

/** Incremental parser: feed it text, it returns the messages completed so far. */
export class SseParser {
  private buffer = '';
  private started = false;
  private id: string | undefined;
  private event = '';
  private data: string[] = [];
  private hasData = false;
  private retry: number | undefined;
  /** Time of the last byte fed in (comments included): for idle detection. */
  lastActivity = Date.now();

  /** Feeds a chunk of text; returns the messages it completes. */
  push(chunk: string): SseMessage[] {
    this.lastActivity = Date.now();
    if (!this.started) {
      if (chunk.length === 0) return [];
      if (chunk.charCodeAt(0) === 0xfeff) chunk = chunk.slice(1);
      this.started = true;
    }
    this.buffer += chunk;
    const out: SseMessage[] = [];
    let start = 0;
    for (let i = 0; i < this.buffer.length; i++) {
      const c = this.buffer[i];
      if (c !== '\n' && c !== '\r') continue;
      if (c === '\r') {
        // A CR at the end of the chunk may be the first half of a CRLF: wait for more.
        if (i + 1 === this.buffer.length) break;
        const line = this.buffer.slice(start, i);
        if (this.buffer[i + 1] === '\n') i++;
        start = i + 1;
        this.line(line, out);
      } else {
        this.line(this.buffer.slice(start, i), out);
        start = i + 1;
      }
    }
    this.buffer = this.buffer.slice(start);
    return out;
  }

  private line(line: string, out: SseMessage[]): void {
    if (line === '') {
      // A message without data is not dispatched (the format's rule).
      if (this.hasData) {
        out.push({ id: this.id, event: this.event || 'message', data: this.data.join('\n'), retry: this.retry });
      }
      this.id = undefined;
      this.event = '';
      this.data = [];
      this.hasData = false;
      this.retry = undefined;
      return;
    }
    if (line.startsWith(':')) return;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    switch (field) {
      case 'data':
        this.data.push(value);
        this.hasData = true;
        break;
      case 'event':
        this.event = value;
        break;
      case 'id':
        if (!value.includes('\0')) this.id = value;
        break;
      case 'retry':
        if (/^\d+$/.test(value)) this.retry = Number(value);
        break;
      default:
        break;
    }
  }
}

/**
 * The messages of an event-stream body. Ends when the body ends (a message not yet ended by a
 * blank line is dropped, as the format says). `onActivity` is called on every chunk.
 */
export async function* readSse(
  body: ReadableStream<Uint8Array>,
  onActivity?: () => void,
): AsyncGenerator<SseMessage, void, undefined> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  const parser = new SseParser();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) {
        const tail = decoder.decode();
        if (tail) yield* parser.push(tail);
        return;
      }
      onActivity?.();
      const messages = parser.push(decoder.decode(value, { stream: true }));
      for (const m of messages) yield m;
    }
  } finally {
    reader.cancel().catch(() => {});
    try {
      reader.releaseLock();
    } catch {
      // Already released.
    }
  }
}
