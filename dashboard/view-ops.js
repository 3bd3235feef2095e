// Operations, each part shown as the token's scopes allow: the tenant's dead letters with bulk
// re-drive (scope admin); projections with checkpoint, lag and rebuild progress, consumers' pending
// counts, throughput and latency charts from /metrics (scope operator: they concern every tenant).

import { api, hasScope } from './api.js';
import { draw } from './chart.js';
import { h, shortId, time, toast } from './dom.js';
import { Window, parse } from './metrics.js';
import { follow } from './sse.js';

const SCRAPE_MS = 3000;
const POINTS = 60; // three minutes of scrapes

export function render(main) {
  main.append(h('div', { class: 'title' }, h('h1', { tabIndex: -1 }, 'Operations')));
  const admin = hasScope('admin');
  const operator = hasScope('operator');
  if (!admin && !operator) {
    main.append(h('p', { class: 'card' }, 'Operations need a token with the admin scope (this tenant\'s dead letters) or the operator scope (projections, consumers and metrics of the whole deployment).'));
    return () => {};
  }
  const parts = [
    ...(operator ? [projections()] : []),
    ...(admin ? [deadLetters()] : []),
    ...(operator ? [consumers(), charts()] : []),
  ];
  const missing = !operator
    ? 'Projections, consumers and metrics concern every tenant: they need the operator scope.'
    : !admin
      ? 'Dead letters need the admin scope of a tenant.'
      : null;
  if (missing) main.append(h('p', { class: 'hint', 'data-scope-note': '' }, missing));
  main.append(...parts.map((p) => p.el));
  return () => parts.forEach((p) => p.dispose());
}

/** Calls `fn` now and every `ms` (while the page shows), never overlapping itself. */
function every(ms, fn) {
  let timer = null;
  let stopped = false;
  const run = async () => {
    await fn();
    if (!stopped) timer = setTimeout(run, typeof ms === 'function' ? ms() : ms);
  };
  run();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

function unavailable(body, e) {
  body.replaceChildren(h('p', { class: 'hint' }, e.status === 404 ? 'Not available on this server.' : `Unavailable: ${e.message}`));
}

function projections() {
  const body = h('div', { class: 'table-wrap' });
  const progress = h('div', { class: 'rebuild', 'aria-live': 'polite' });
  const button = h('button', { type: 'button', onclick: rebuild }, 'Rebuild read models');
  let building = false;
  const el = h(
    'section',
    { class: 'card', 'aria-labelledby': 'proj-h' },
    h('div', { class: 'title' }, h('h2', { id: 'proj-h' }, 'Projections'), button),
    body,
    progress,
  );
  const stop = every(() => (building ? 1000 : 5000), refresh);
  return { el, dispose: stop };

  async function refresh() {
    let items;
    try {
      ({ items } = await api('/v1/admin/projections'));
    } catch (e) {
      unavailable(body, e);
      return;
    }
    body.replaceChildren(
      h(
        'table',
        { class: 'ops' },
        h('thead', {}, h('tr', {}, ['Projection', 'Version', 'State', 'Checkpoint', 'Stream end', 'Lag', 'Updated'].map((c) => h('th', { scope: 'col' }, c)))),
        h(
          'tbody',
          {},
          items.map((p) =>
            h(
              'tr',
              { 'data-projection': p.name, 'data-state': p.state },
              h('td', {}, p.name),
              h('td', { class: 'num' }, p.version),
              h('td', {}, p.state),
              h('td', { class: 'num' }, p.checkpoint),
              h('td', { class: 'num' }, p.stream_last_seq),
              h('td', { class: `num ${p.lag > 0 ? 'warn' : ''}` }, p.lag),
              h('td', {}, time(p.updated_at)),
            ),
          ),
        ),
      ),
    );
    // A rebuild: the new version's rows, filling up towards the stream's end.
    const rows = items.filter((p) => p.state === 'building');
    const wasBuilding = building;
    building = rows.length > 0;
    button.disabled = building;
    if (building) {
      const done = Math.min(...rows.map((p) => p.checkpoint));
      const end = Math.max(...rows.map((p) => p.stream_last_seq), 1);
      const pct = Math.min(100, Math.floor((100 * done) / end));
      progress.replaceChildren(
        h('label', { htmlFor: 'rebuild-bar' }, `Rebuilding version ${rows[0].version}: ${done} of ${end} events`),
        h('progress', { id: 'rebuild-bar', max: 100, value: pct }, `${pct}%`),
      );
    } else if (wasBuilding) {
      progress.replaceChildren(h('p', {}, 'Rebuild finished: reads now come from the new version.'));
    }
  }

  async function rebuild() {
    button.disabled = true;
    try {
      const res = await api('/v1/admin/projections/jobs/rebuild', { method: 'POST' });
      toast(`Rebuilding the read models into version ${res.version}`);
      building = true;
      progress.replaceChildren(h('p', {}, `Rebuild of version ${res.version} requested; waiting for the projector…`));
    } catch (e) {
      toast(`Could not rebuild: ${e.message}`, 'error');
      button.disabled = false;
    }
  }
}

function deadLetters() {
  const tbody = h('tbody');
  const all = h('input', { type: 'checkbox', id: 'dl-all', 'aria-label': 'Select every dead letter shown' });
  const redrive = h('button', { type: 'button', onclick: redriveSelected, disabled: true }, 'Re-drive selected');
  const older = h('button', { type: 'button', onclick: () => load(next), hidden: true }, 'More');
  const empty = h('p', { class: 'empty' }, 'No dead letters.');
  let next = null;
  const el = h(
    'section',
    { class: 'card', 'aria-labelledby': 'dl-h' },
    h('div', { class: 'title' }, h('h2', { id: 'dl-h' }, 'Dead letters'), redrive),
    h(
      'div',
      { class: 'table-wrap' },
      h(
        'table',
        { class: 'ops' },
        h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, all), ['Job', 'Kind', 'Attempts', 'Error', 'Failed at'].map((c) => h('th', { scope: 'col' }, c)))),
        tbody,
      ),
    ),
    empty,
    older,
  );
  all.addEventListener('change', () => {
    tbody.querySelectorAll('input[type=checkbox]').forEach((b) => (b.checked = all.checked));
    selection();
  });
  load(null);
  // New dead letters appear, re-driven ones leave, as they happen.
  const stream = follow('/v1/events?type=job.dead_lettered,job.redriven', {
    onEvent: ({ data: ce }) => {
      if (ce.type.endsWith('.redriven')) remove(ce.subject);
      else api(`/v1/jobs/${ce.subject}`).then((job) => job.status === 'failed' && add(job, true), () => {});
    },
  });
  return { el, dispose: () => stream.close() };

  async function load(cursor) {
    try {
      const res = await api(`/v1/admin/dead-letters?limit=50${cursor ? `&cursor=${cursor}` : ''}`);
      if (!cursor) tbody.replaceChildren();
      res.items.forEach((j) => add(j, false));
      next = res.next_cursor;
      older.hidden = !next;
    } catch (e) {
      toast(`Could not list dead letters: ${e.message}`, 'error');
    }
    selection();
  }

  function add(job, first) {
    if (tbody.querySelector(`tr[data-job-id="${job.id}"]`)) return;
    const box = h('input', { type: 'checkbox', value: job.id, 'aria-label': `Select job ${shortId(job.id)}`, onchange: selection });
    const tr = h(
      'tr',
      { 'data-job-id': job.id },
      h('td', {}, box),
      h('td', { class: 'id' }, h('a', { href: `#/jobs/${job.id}`, title: job.id }, shortId(job.id))),
      h('td', {}, job.kind),
      h('td', { class: 'num' }, `${job.attempt} / ${job.max_attempts}`),
      h('td', { class: 'what' }, job.error?.message ?? ''),
      h('td', {}, time(job.finished_at)),
    );
    if (first) tbody.prepend(tr);
    else tbody.append(tr);
    selection();
  }

  function remove(id) {
    tbody.querySelector(`tr[data-job-id="${id}"]`)?.remove();
    selection();
  }

  function selection() {
    const boxes = [...tbody.querySelectorAll('input[type=checkbox]')];
    const n = boxes.filter((b) => b.checked).length;
    redrive.disabled = n === 0;
    redrive.textContent = n ? `Re-drive ${n} selected` : 'Re-drive selected';
    all.checked = n > 0 && n === boxes.length;
    all.disabled = boxes.length === 0;
    empty.hidden = boxes.length > 0;
  }

  async function redriveSelected() {
    const ids = [...tbody.querySelectorAll('input[type=checkbox]:checked')].map((b) => b.value);
    redrive.disabled = true;
    const results = await Promise.allSettled(ids.map((id) => api(`/v1/admin/dead-letters/${id}/redrive`, { method: 'POST' })));
    const failed = results.filter((r) => r.status === 'rejected');
    ids.forEach((id, i) => results[i].status === 'fulfilled' && remove(id));
    if (failed.length) toast(`${failed.length} not re-driven: ${failed[0].reason.message}`, 'error');
    else toast(`Re-drove ${ids.length} job${ids.length === 1 ? '' : 's'}`);
    selection();
  }
}

function consumers() {
  const body = h('div', { class: 'table-wrap' });
  const el = h('section', { class: 'card', 'aria-labelledby': 'cons-h' }, h('h2', { id: 'cons-h' }, 'Consumers'), body);
  const stop = every(5000, async () => {
    try {
      const { items } = await api('/v1/admin/consumers');
      body.replaceChildren(
        h(
          'table',
          { class: 'ops' },
          h('thead', {}, h('tr', {}, ['Stream', 'Consumer', 'Pending', 'Ack pending', 'Redelivered', 'Waiting'].map((c) => h('th', { scope: 'col' }, c)))),
          h(
            'tbody',
            {},
            items.map((c) =>
              h(
                'tr',
                { 'data-consumer': c.consumer },
                h('td', {}, c.stream),
                h('td', {}, c.consumer),
                h('td', { class: `num ${c.pending > 0 ? 'warn' : ''}` }, c.pending),
                h('td', { class: 'num' }, c.ack_pending),
                h('td', { class: 'num' }, c.redelivered),
                h('td', { class: 'num' }, c.waiting),
              ),
            ),
          ),
        ),
      );
    } catch (e) {
      unavailable(body, e);
    }
  });
  return { el, dispose: stop };
}

function charts() {
  const figures = {
    throughput: h('figure', { class: 'chart-box' }),
    latency: h('figure', { class: 'chart-box' }),
    http: h('figure', { class: 'chart-box' }),
    backlog: h('figure', { class: 'chart-box' }),
  };
  const status = h('p', { class: 'hint' }, 'Collecting: charts fill as /metrics is scraped every few seconds.');
  const el = h('section', { class: 'card', 'aria-labelledby': 'charts-h' }, h('h2', { id: 'charts-h' }, 'Throughput and latency'), status, h('div', { class: 'charts' }, Object.values(figures)));
  const series = new Map(); // name → points
  const push = (name, v) => {
    const points = series.get(name) ?? [];
    points.push(v);
    if (points.length > POINTS) points.shift();
    series.set(name, points);
  };
  let prev = null;
  const stop = every(SCRAPE_MS, async () => {
    let samples;
    try {
      const res = await fetch('/metrics', { cache: 'no-store' });
      if (!res.ok) throw Object.assign(new Error(`${res.status} ${res.statusText}`), { status: res.status });
      samples = parse(await res.text());
    } catch (e) {
      status.textContent = e.status === 404 ? 'This server does not expose /metrics.' : `Metrics unavailable: ${e.message}`;
      return;
    }
    const now = performance.now();
    if (prev) {
      const w = new Window(prev.samples, samples, (now - prev.at) / 1000);
      const outcome = (o) => (l) => l.outcome === o;
      push('submitted', w.rate('conveyor_jobs_submitted_total'));
      push('succeeded', w.rate('conveyor_job_attempts_total', outcome('succeeded')));
      push('failed', w.rate('conveyor_job_attempts_total', (l) => l.outcome === 'failed' || l.outcome === 'timed_out'));
      push('cancelled', w.rate('conveyor_job_attempts_total', outcome('cancelled')));
      push('latency p50', w.quantile('conveyor_job_latency_seconds', 0.5));
      push('latency p95', w.quantile('conveyor_job_latency_seconds', 0.95));
      push('run time p95', w.quantile('conveyor_job_duration_seconds', 0.95));
      push('requests', w.rate('conveyor_http_requests_total'));
      push('errors (5xx)', w.rate('conveyor_http_requests_total', (l) => String(l.status).startsWith('5')));
      push('running', w.gauge('conveyor_jobs_running'));
      push('consumer pending', w.gauge('conveyor_consumer_pending'));
      push('projection lag', w.gauge('conveyor_projection_lag_events'));
      const pick = (...names) => names.map((name) => ({ name, points: series.get(name) }));
      draw(figures.throughput, { title: 'Jobs per second', unit: '/s', capacity: POINTS, series: pick('submitted', 'succeeded', 'failed', 'cancelled') });
      draw(figures.latency, { title: 'Job latency and run time', unit: 's', capacity: POINTS, series: pick('latency p50', 'latency p95', 'run time p95') });
      draw(figures.http, { title: 'HTTP requests', unit: '/s', capacity: POINTS, series: pick('requests', 'errors (5xx)') });
      draw(figures.backlog, { title: 'Backlog', unit: '', capacity: POINTS, series: pick('running', 'consumer pending', 'projection lag') });
      status.textContent = `Scraped /metrics every ${SCRAPE_MS / 1000} s; the last ${POINTS} scrapes are shown.`;
    }
    prev = { samples, at: now };
  });
  return { el, dispose: stop };
}
