// The tenant's event stream, live: filter by type, pause, and resume exactly where it paused
// (the stream sequence of the last event is the SSE id; the server replays what came since).

import { eventName, field, h, shortId, time } from './dom.js';
import { summary } from './jobfold.js';
import { follow } from './sse.js';

const TYPES = ['submitted', 'started', 'progressed', 'succeeded', 'failed', 'retry_scheduled', 'dead_lettered', 'cancel_requested', 'cancelled', 'redriven', 'waiting'];
/** Rows kept on the page; older ones drop off the bottom. */
const MAX_ROWS = 200;

export function render(main) {
  let stream = null;
  let lastId = null;
  let paused = false;
  let count = 0;

  const conn = h('span', { class: 'conn', role: 'status' });
  const boxes = TYPES.map((t) => h('input', { type: 'checkbox', value: t, checked: true, id: `type-${t}` }));
  const kind = h('input', { type: 'text', name: 'kind', placeholder: 'any', autocomplete: 'off', size: 12 });
  const pause = h('button', { type: 'button', 'aria-pressed': 'false', onclick: toggle }, 'Pause');
  const counter = h('span', { class: 'hint', 'aria-live': 'off' });
  const tbody = h('tbody');

  main.append(
    h('div', { class: 'title' }, h('h1', { tabIndex: -1 }, 'Event stream'), conn),
    h(
      'section',
      { class: 'card' },
      h(
        'fieldset',
        { class: 'types' },
        h('legend', {}, 'Types'),
        boxes.map((b) => h('span', { class: 'check' }, b, h('label', { htmlFor: b.id }, b.value.replace('_', ' ')))),
        h('span', { class: 'check' }, h('button', { type: 'button', class: 'small quiet', onclick: () => setAll(true) }, 'All'), h('button', { type: 'button', class: 'small quiet', onclick: () => setAll(false) }, 'None')),
      ),
      h('div', { class: 'filters' }, field('Kind', kind), pause, counter),
      h(
        'div',
        { class: 'table-wrap' },
        h(
          'table',
          { class: 'events' },
          h('caption', { class: 'visually-hidden' }, 'Events, newest first'),
          h('thead', {}, h('tr', {}, ['Seq', 'Time', 'Type', 'Job', 'Kind', 'Details'].map((c) => h('th', { scope: 'col' }, c)))),
          tbody,
        ),
      ),
    ),
  );

  for (const b of boxes) b.addEventListener('change', connect);
  kind.addEventListener('change', connect);
  connect();
  return () => stream?.close();

  function setAll(on) {
    boxes.forEach((b) => (b.checked = on));
    connect();
  }

  function toggle() {
    paused = !paused;
    pause.textContent = paused ? 'Resume' : 'Pause';
    pause.setAttribute('aria-pressed', String(paused));
    if (paused) {
      lastId = stream?.lastId() ?? lastId;
      stream?.close();
      stream = null;
      conn.textContent = lastId ? `paused after #${lastId}` : 'paused';
      conn.className = 'conn paused';
    } else {
      connect();
    }
  }

  function connect() {
    lastId = stream?.lastId() ?? lastId;
    stream?.close();
    stream = null;
    if (paused) return;
    const chosen = boxes.filter((b) => b.checked).map((b) => b.value);
    if (!chosen.length) {
      conn.textContent = 'no types chosen';
      conn.className = 'conn paused';
      return;
    }
    const q = new URLSearchParams();
    if (chosen.length < TYPES.length) q.set('type', chosen.map((t) => `job.${t}`).join(','));
    if (kind.value.trim()) q.set('kind', kind.value.trim());
    stream = follow(`/v1/events${q.size ? `?${q}` : ''}`, {
      lastId,
      onEvent: add,
      onState: (s, detail) => {
        conn.textContent = s === 'live' ? '● live' : s === 'error' ? `not live: ${detail}` : `${s}…`;
        conn.className = `conn ${s}`;
      },
    });
  }

  function add({ id, event, data: ce }) {
    if (!ce?.subject) return;
    count += 1;
    counter.textContent = `${count} event${count === 1 ? '' : 's'} received`;
    tbody.prepend(
      h(
        'tr',
        { 'data-seq': id, 'data-type': event },
        h('td', { class: 'num', 'data-label': 'Seq' }, id),
        h('td', { 'data-label': 'Time' }, time(ce.time)),
        h('td', { 'data-label': 'Type' }, h('span', { class: `badge t-${event.replace('job.', '')}` }, eventName(ce.type))),
        h('td', { 'data-label': 'Job' }, h('a', { href: `#/jobs/${ce.subject}`, title: ce.subject }, shortId(ce.subject))),
        h('td', { 'data-label': 'Kind' }, ce.jobkind),
        h('td', { 'data-label': 'Details', class: 'what' }, summary(ce)),
      ),
    );
    while (tbody.rows.length > MAX_ROWS) tbody.lastElementChild.remove();
  }
}
