// Jobs: a live table (rows updated in place from the tenant's event stream, no polling),
// filters, keyset paging, a submit form with inline validation, and cancel. Newest first, except
// queued jobs, which the API lists in the order they will start (highest priority, then oldest).

import { ApiError, api, hasScope } from './api.js';
import { STATUSES, TERMINAL, duration, eventName, field, h, ms, progressBar, setProgress, shortId, statusBadge, toast } from './dom.js';
import { apply, fromSubmitted, waitingReason } from './jobfold.js';
import { describe, template, validate } from './schema.js';
import { follow } from './sse.js';

const PAGE = 25;
/** Live-added rows beyond a page are counted, not drawn: memory stays bounded. */
const MAX_ROWS = 3 * PAGE;
/** The status an event leaves a job in; the others (`job.progressed`, `job.waiting`, …) leave it be. */
const LEADS_TO = { 'job.started': 'running', 'job.retry_scheduled': 'retry_scheduled', 'job.succeeded': 'succeeded', 'job.dead_lettered': 'failed', 'job.cancelled': 'cancelled', 'job.redriven': 'queued' };

export function render(main) {
  const rows = new Map(); // job id → {job, tr, cells}
  const cursors = [null]; // cursors of the pages from the newest one to this one
  let next = null;
  let kinds = [];
  let hidden = 0; // newer jobs not drawn
  let stream = null;
  let buffered = null; // [event, stream sequence] pairs that arrive while a page loads
  let loadToken = 0;
  const fetching = new Set(); // jobs being read because an event made them match the filter

  const state = h('span', { class: 'conn', role: 'status' }, 'connecting…');
  const statusFilter = h('select', { name: 'status' }, h('option', { value: '' }, 'any'), STATUSES.map((s) => h('option', { value: s }, s.replace('_', ' '))));
  const kindFilter = h('select', { name: 'kind' }, h('option', { value: '' }, 'any'));
  const tbody = h('tbody');
  const empty = h('p', { class: 'empty', hidden: true }, 'No jobs match.');
  const newer = h('button', { type: 'button', class: 'banner', hidden: true, onclick: () => reload() });
  const olderBtn = h('button', { type: 'button', onclick: () => page(+1) }, 'Older');
  const newerBtn = h('button', { type: 'button', onclick: () => page(-1) }, 'Newer');
  const pageInfo = h('span', { class: 'hint' });
  const caption = h('caption', { class: 'visually-hidden' });
  const order = h('p', { class: 'hint', hidden: true }, 'In the order they will start: highest priority first, then the oldest.');

  const form = submitForm();
  main.append(
    h('div', { class: 'title' }, h('h1', { tabIndex: -1 }, 'Jobs'), state),
    hasScope('jobs:write') ? form.el : null,
    h(
      'section',
      { class: 'card', 'aria-labelledby': 'jobs-list-h' },
      h('h2', { id: 'jobs-list-h', class: 'visually-hidden' }, 'Job list'),
      h('div', { class: 'filters' }, field('Status', statusFilter), field('Kind', kindFilter)),
      order,
      newer,
      h(
        'div',
        { class: 'table-wrap' },
        h(
          'table',
          { class: 'jobs' },
          caption,
          h('thead', {}, h('tr', {}, ['Job', 'Kind', 'Status', 'Attempt', 'Progress', 'Age', 'Duration', h('span', { class: 'visually-hidden' }, 'Actions')].map((c) => h('th', { scope: 'col' }, c)))),
          tbody,
        ),
      ),
      empty,
      h('nav', { class: 'pager', 'aria-label': 'Pages' }, newerBtn, pageInfo, olderBtn),
    ),
  );

  statusFilter.addEventListener('change', () => reload());
  kindFilter.addEventListener('change', () => reload({ resubscribe: true }));

  // Age and duration tick once a second, in place.
  const ticker = setInterval(() => rows.forEach(tick), 1000);

  loadKinds();
  reload({ resubscribe: true });

  return () => {
    clearInterval(ticker);
    stream?.close();
  };

  /** Queued jobs are listed in start order; any other listing newest first. */
  function startOrder() {
    return statusFilter.value === 'queued';
  }

  /** Whether job `a` is listed before job `b`. */
  function listedBefore(a, b) {
    if (!startOrder()) return a.id > b.id; // UUIDv7: newest first
    const [pa, pb] = [a.priority ?? 0, b.priority ?? 0];
    return pa !== pb ? pa > pb : a.id < b.id;
  }

  function matches(job) {
    return (!statusFilter.value || job.status === statusFilter.value) && (!kindFilter.value || job.kind === kindFilter.value);
  }

  function subscribe() {
    stream?.close();
    const q = kindFilter.value ? `?kind=${encodeURIComponent(kindFilter.value)}` : '';
    stream = follow(`/v1/events${q}`, {
      onEvent: ({ id, data }) => (buffered ? buffered.length < 1000 && buffered.push([data, Number(id)]) : onEvent(data, Number(id))),
      onState: (s, detail) => {
        state.textContent = s === 'live' ? '● live' : s === 'error' ? `not live: ${detail}` : `${s}…`;
        state.className = `conn ${s}`;
      },
    });
  }

  /** `ce` is the event at stream sequence `seq`. */
  function onEvent(ce, seq) {
    if (!ce || !ce.subject) return;
    const row = rows.get(ce.subject);
    if (row) {
      if (ce.type.endsWith('.submitted')) row.job.max_attempts ??= ce.data?.max_attempts;
      if (apply(row.job, ce, seq) || ce.type.endsWith('.submitted')) update(row);
      return;
    }
    if (cursors.length !== 1) return;
    if (ce.type.endsWith('.submitted')) {
      place(fromSubmitted(ce, seq));
    } else if (statusFilter.value && LEADS_TO[eventName(ce.type)] === statusFilter.value && !fetching.has(ce.subject)) {
      // A job that has just come to match the status filter: read it, bring it up to this event.
      fetching.add(ce.subject);
      api(`/v1/jobs/${ce.subject}`)
        .then((job) => {
          apply(job, ce, seq);
          place(job);
        }, () => {})
        .finally(() => fetching.delete(ce.subject));
    }
  }

  /** Adds a job to the first page in the list's order, if it belongs there. */
  function place(job) {
    if (rows.has(job.id) || cursors.length !== 1 || !matches(job)) return;
    const before = [...tbody.rows].find((tr) => listedBefore(job, rows.get(tr.dataset.jobId)?.job ?? { id: tr.dataset.jobId }));
    if (!before && next && rows.size >= PAGE) return; // after this page's last: it is on a later one
    if (rows.size >= MAX_ROWS) {
      hidden += 1;
      newer.hidden = false;
      newer.textContent = `${hidden} ${startOrder() ? 'more' : 'newer'} job${hidden === 1 ? '' : 's'}: show`;
      return;
    }
    tbody.insertBefore(makeRow(job).tr, before ?? null);
    empty.hidden = true;
  }

  async function reload({ resubscribe = false } = {}) {
    cursors.length = 1;
    hidden = 0;
    newer.hidden = true;
    if (resubscribe) subscribe();
    await load();
  }

  async function page(delta) {
    if (delta > 0 && next) cursors.push(next);
    if (delta < 0 && cursors.length > 1) cursors.pop();
    await load();
  }

  async function load() {
    const mine = ++loadToken;
    buffered = [];
    const q = new URLSearchParams({ limit: PAGE });
    if (statusFilter.value) q.set('status', statusFilter.value);
    if (kindFilter.value) q.set('kind', kindFilter.value);
    const cursor = cursors[cursors.length - 1];
    if (cursor) q.set('cursor', cursor);
    order.hidden = !startOrder();
    caption.textContent = startOrder() ? 'Queued jobs, in the order they will start; updates live' : 'Jobs, newest first; updates live';
    try {
      const res = await api(`/v1/jobs?${q}`);
      if (mine !== loadToken) return;
      // The read model trails the event stream by a moment: what this page already saw live
      // is merged in.
      const seen = [...rows.values()].map((r) => r.job);
      rows.clear();
      tbody.replaceChildren(...res.items.map((j) => makeRow(j).tr));
      next = res.next_cursor;
      seen.forEach(place);
      empty.hidden = rows.size > 0;
    } catch (e) {
      if (mine === loadToken) toast(`Could not list jobs: ${e.message}`, 'error');
    } finally {
      if (mine === loadToken) {
        const pending = buffered;
        buffered = null;
        pending.forEach(([ce, seq]) => onEvent(ce, seq));
        olderBtn.disabled = !next;
        newerBtn.disabled = cursors.length === 1;
        olderBtn.textContent = startOrder() ? 'Later' : 'Older';
        newerBtn.textContent = startOrder() ? 'Sooner' : 'Newer';
        pageInfo.textContent = cursors.length > 1 ? `page ${cursors.length}` : startOrder() ? 'next to start' : 'newest';
      }
    }
  }

  function makeRow(job) {
    const link = h('a', { href: `#/jobs/${job.id}`, title: job.id }, shortId(job.id));
    const cells = {
      priority: h('span', { class: 'badge priority', title: 'Priority: higher starts first' }),
      kind: h('td', { 'data-label': 'Kind' }),
      status: h('td', { 'data-label': 'Status', class: 'status' }),
      waiting: h('div', { class: 'hint waiting' }),
      attempt: h('td', { 'data-label': 'Attempt', class: 'num' }),
      bar: progressBar(job, `Progress of job ${shortId(job.id)}`),
      pct: h('span', { class: 'pct' }),
      age: h('td', { 'data-label': 'Age', class: 'num' }),
      duration: h('td', { 'data-label': 'Duration', class: 'num' }),
      action: h('td', { class: 'actions' }),
    };
    const tr = h(
      'tr',
      { 'data-job-id': job.id },
      h('td', { 'data-label': 'Job', class: 'id' }, link, ' ', cells.priority),
      cells.kind,
      cells.status,
      cells.attempt,
      h('td', { 'data-label': 'Progress', class: 'progress' }, cells.bar, cells.pct),
      cells.age,
      cells.duration,
      cells.action,
    );
    const row = { job, tr, cells };
    rows.set(job.id, row);
    update(row);
    return row;
  }

  function update(row) {
    const { job, cells, tr } = row;
    tr.dataset.status = job.status;
    cells.kind.textContent = job.kind;
    // 0, the default, goes without saying.
    cells.priority.textContent = job.priority ? `priority ${job.priority}` : '';
    cells.priority.hidden = !job.priority;
    // Why it waits to start, while the scheduler holds it back.
    cells.waiting.textContent = job.waiting ? waitingReason(job.waiting) : '';
    cells.waiting.hidden = !job.waiting;
    cells.status.replaceChildren(statusBadge(job.status), cells.waiting);
    cells.attempt.textContent = `${job.attempt} / ${job.max_attempts ?? '?'}`;
    setProgress(cells.bar, job);
    cells.pct.textContent = cells.bar.dataset.pct ? `${cells.bar.dataset.pct}%` : '';
    const canCancel = !TERMINAL.has(job.status) && hasScope('jobs:write');
    const current = cells.action.firstChild;
    if (canCancel && !current) {
      cells.action.append(h('button', { type: 'button', class: 'small', 'aria-label': `Cancel job ${shortId(job.id)}`, onclick: (e) => cancel(job, e.currentTarget) }, 'Cancel'));
    } else if (!canCancel && current) {
      current.remove();
    }
    tick(row);
  }

  function tick({ job, cells }) {
    const now = Date.now();
    cells.age.textContent = duration(now - ms(job.created_at));
    const start = ms(job.started_at);
    cells.duration.textContent = start ? duration((ms(job.finished_at) ?? now) - start) : '';
  }

  async function cancel(job, button) {
    button.disabled = true;
    button.textContent = 'Cancelling…';
    try {
      await api(`/v1/jobs/${job.id}/cancel`, { method: 'POST' });
      toast(`Cancellation of ${shortId(job.id)} requested`);
    } catch (e) {
      toast(`Could not cancel: ${e.message}`, 'error');
      button.disabled = false;
      button.textContent = 'Cancel';
    }
  }

  async function loadKinds() {
    try {
      kinds = (await api('/v1/kinds')).items;
    } catch (e) {
      toast(`Could not load the job kinds: ${e.message}`, 'error');
      return;
    }
    kindFilter.append(...kinds.map((k) => h('option', { value: k.kind }, k.kind)));
    form.setKinds(kinds);
  }

  function submitForm() {
    const kind = h('select', { name: 'kind', required: true });
    const payload = h('textarea', { name: 'payload', rows: 4, spellcheck: false, class: 'code', 'aria-describedby': 'payload-fields payload-errors' }, '{}');
    const attempts = h('input', { name: 'max_attempts', type: 'number', min: 1, max: 100, inputMode: 'numeric', placeholder: '3' });
    const errors = h('ul', { id: 'payload-errors', class: 'errors', 'aria-live': 'polite' });
    const fields = h('ul', { id: 'payload-fields', class: 'hint fields' });
    const button = h('button', { type: 'submit' }, 'Submit job');
    const el = h(
      'section',
      { class: 'card', 'aria-labelledby': 'submit-h' },
      h('h2', { id: 'submit-h' }, 'Submit a job'),
      h(
        'form',
        { class: 'submit', onsubmit: submit, novalidate: true },
        h('div', { class: 'row' }, field('Kind', kind), field('Max attempts', attempts)),
        field('Payload (JSON)', payload),
        fields,
        errors,
        button,
      ),
    );
    const schemaOf = () => kinds.find((k) => k.kind === kind.value)?.schema;
    kind.addEventListener('change', () => {
      payload.value = JSON.stringify(template(schemaOf()), null, 1).replace(/\n\s*/g, ' ');
      fields.replaceChildren(...describe(schemaOf()).map((line) => h('li', {}, line)));
      check();
    });
    payload.addEventListener('input', check);

    function show(messages) {
      errors.replaceChildren(...messages.map((m) => h('li', {}, m)));
      payload.setAttribute('aria-invalid', messages.length ? 'true' : 'false');
    }

    /** Client-side checks; returns the parsed payload, or undefined when invalid. */
    function check() {
      let value;
      try {
        value = payload.value.trim() ? JSON.parse(payload.value) : {};
      } catch (e) {
        show([`Not valid JSON: ${e.message}`]);
        return undefined;
      }
      const problems = validate(schemaOf(), value).map((p) => p.message);
      show(problems);
      return problems.length ? undefined : value;
    }

    async function submit(e) {
      e.preventDefault();
      const value = check();
      if (value === undefined) {
        payload.focus();
        return;
      }
      const body = { kind: kind.value, payload: value };
      if (attempts.value) body.max_attempts = Number(attempts.value);
      button.disabled = true;
      try {
        const res = await api('/v1/jobs', { method: 'POST', body });
        toast(`Submitted ${res.kind} job ${shortId(res.id)}`);
        const job = { id: res.id, kind: res.kind, status: res.status, attempt: 0, max_attempts: body.max_attempts, created_at: res.created_at, updated_at: res.created_at, progress: null };
        place(job);
      } catch (err) {
        // The server's word, inline: an unknown kind, a payload its handler refuses, a quota.
        show([err instanceof ApiError ? err.message : String(err)]);
      } finally {
        button.disabled = false;
      }
    }

    return {
      el,
      setKinds(list) {
        kind.replaceChildren(...list.map((k) => h('option', { value: k.kind }, k.kind)));
        const preferred = list.find((k) => k.kind === 'sleep') ?? list[0];
        if (preferred) {
          kind.value = preferred.kind;
          kind.dispatchEvent(new Event('change'));
        }
      },
    };
  }
}
