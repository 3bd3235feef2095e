// Server-sent events over fetch: EventSource cannot send an Authorization header, so the page
// reads `text/event-stream` from a fetch's ReadableStream and parses it here (the WHATWG format:
// `field: value` lines, comments starting with `:`, a message ended by a blank line).

export interface SseMessage {
  id: string | undefined;
  event: string;
  data: string;
}

/** Incremental parser: feed it text as it arrives; it returns the messages completed. */
export class SseParser {
  private buffer = '';
  private id: string | undefined;
  private event = '';
  private data: string[] = [];

  push(chunk: string): SseMessage[] {
    this.buffer += chunk;
    const out: SseMessage[] = [];
    // Lines end in LF, CRLF or CR; a CR at the very end may be half of a CRLF: keep it.
    const lines = this.buffer.split(/\r\n|\n|\r(?!$)/);
    this.buffer = lines.pop() ?? '';
    for (const line of lines) {
      if (line === '') {
        if (this.data.length) out.push({ id: this.id, event: this.event || 'message', data: this.data.join('\n') });
        this.id = undefined;
        this.event = '';
        this.data = [];
      } else if (!line.startsWith(':')) {
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? '' : line.slice(colon + 1);
        if (value.startsWith(' ')) value = value.slice(1);
        if (field === 'data') this.data.push(value);
        else if (field === 'event') this.event = value;
        else if (field === 'id') this.id = value;
      }
    }
    return out;
  }
}

/**
 * GETs `url` as an event stream with the given headers and yields its messages until the
 * server ends the stream (or `signal` aborts). Throws on a non-2xx answer, with the problem's
 * detail when the API sent one.
 */
export async function* eventStream(url: string, headers: Record<string, string>, signal: AbortSignal): AsyncGenerator<SseMessage> {
  const res = await fetch(url, { headers: { ...headers, Accept: 'text/event-stream' }, signal, cache: 'no-store' });
  if (!res.ok || !res.body) throw new Error(await problemText(res));
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  const parser = new SseParser();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      yield* parser.push(value);
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

/** "401 Unauthorized: invalid token", from an RFC 9457 problem when there is one. */
export async function problemText(res: Response): Promise<string> {
  let detail = '';
  try {
    const text = await res.text();
    try {
      const p = JSON.parse(text) as { title?: string; detail?: string };
      detail = [p.title, p.detail].filter(Boolean).join(': ');
    } catch {
      detail = text.slice(0, 200);
    }
  } catch {
    // no body
  }
  return `${res.status}${detail ? ` ${detail}` : ` ${res.statusText}`}`;
}
