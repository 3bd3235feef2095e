// Server-sent events over fetch(): EventSource cannot send an Authorization header.
//
// Parses the stream as the HTML spec does (`id:`, `event:`, `data:`, comments), remembers the
// last id, and reconnects with `Last-Event-ID` when the stream ends: when the server says
// `resume` (this client fell behind, or the server is shutting down), when the connection drops,
// or when the server closes it. Each event reaches `onEvent` once, in order.

import { authHeaders, failure } from './api.js';

/**
 * Follows `path`. Returns {close(), lastId()}.
 * onEvent({id, event, data}) gets each event, data parsed as JSON;
 * onState(state, detail) hears 'connecting', 'live', 'reconnecting' and 'error' (no more
 * retries: a 4xx); nothing after close().
 */
export function follow(path, { onEvent, onState = () => {}, lastId = null }) {
  const abort = new AbortController();
  let last = lastId;
  let delay = 500;
  let attempt = 0;

  const dispatch = (ev) => {
    if (ev.event === 'resume') {
      // The server ends the stream after this; continue from the id it names.
      try {
        last = JSON.parse(ev.data).last_event_id ?? last;
      } catch {
        // Keep the last id seen.
      }
      return;
    }
    if (ev.id !== undefined) last = ev.id;
    let data;
    try {
      data = JSON.parse(ev.data);
    } catch {
      data = ev.data;
    }
    onEvent({ id: last, event: ev.event || 'message', data });
  };

  const run = async () => {
    while (!abort.signal.aborted) {
      onState(attempt++ === 0 ? 'connecting' : 'reconnecting');
      try {
        const headers = authHeaders({ Accept: 'text/event-stream' });
        if (last !== null) headers['Last-Event-ID'] = String(last);
        const res = await fetch(path, { headers, signal: abort.signal, cache: 'no-store' });
        if (!res.ok) {
          const err = await failure(res);
          if (res.status < 500 && res.status !== 429) {
            onState('error', err.message);
            return;
          }
          throw err;
        }
        onState('live');
        delay = 500;
        await read(res.body, dispatch);
        // The server ended the stream (resume hint, restart): continue after a breath.
        await new Promise((r) => setTimeout(r, 250));
      } catch (e) {
        if (abort.signal.aborted) break;
        onState('reconnecting', e.message);
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(delay * 2, 15000);
        continue;
      }
    }
  };
  run();
  return { close: () => abort.abort(), lastId: () => last };
}

/** Reads an event stream body, calling `dispatch({id, event, data})` per event. */
export async function read(body, dispatch) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  let ev = { data: [] };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    // A trailing "\r" may be half of a "\r\n" split across chunks: keep it for the next one.
    const cut = buffer.endsWith('\r') ? buffer.length - 1 : buffer.length;
    const lines = buffer.slice(0, cut).split(/\r\n|\r|\n/);
    buffer = lines.pop() + buffer.slice(cut); // an incomplete line waits for the next chunk
    for (const line of lines) {
      if (line === '') {
        if (ev.data.length) dispatch({ id: ev.id, event: ev.event, data: ev.data.join('\n') });
        ev = { data: [] };
        continue;
      }
      if (line.startsWith(':')) continue; // a comment: keep-alive
      const colon = line.indexOf(':');
      const name = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (name === 'data') ev.data.push(value);
      else if (name === 'event') ev.event = value;
      else if (name === 'id' && !value.includes('\0')) ev.id = value;
    }
  }
}
