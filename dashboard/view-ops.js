// Operations, each part shown as the token's scopes allow: the kinds paused for the tenant and its
// schedules, with pause, resume and delete (scope jobs:read to see, jobs:write to change); the
// tenant's dead letters with bulk re-drive (scope admin); every tenant's pauses, projections with
// checkpoint, lag and rebuild progress, consumers' pending counts, throughput and latency charts
// from /metrics (scope operator: they concern every tenant).

import { api, hasScope } from './api.js';
import { draw } from './chart.js';
import { field, h, relative, shortId, time, timing, toast, when } from './dom.js';
import { Window, parse } from './metrics.js';
import { follow } from './sse.js';

const SCRAPE_MS = 3000;
const POINTS = 60; // three minutes of scrapes

export function render(main) {
  main.append(h('div', { class: 'title' }, h('h1', { tabIndex: -1 }, 'Operations')));
  const read = hasScope('jobs:read') || hasScope('jobs:write');
  const write = hasScope('jobs:write');
  const admin = hasScope('admin');
  const operator = hasScope('operator');
  if (!read && !admin && !operator) {
    main.append(h('p', { class: 'card' }, 'Operations need a token with the jobs:read scope (this tenant\'s schedules and paused kinds), the admin scope (its dead letters) or the operator scope (pauses, projections, consumers and metrics of the whole deployment).'));
    return () => {};
  }
  const parts = [
    ...(operator ? [projections()] : []),
    ...(admin ? [deadLetters()] : []),
    ...(read || operator ? [pauses({ read, write, operator })] : []),
    ...(read ? [schedules(write)] : []),
    ...(operator ? [consumers(), charts()] : []),
  ];
  const missing = [
    !operator && 'Projections, consumers and metrics concern every tenant: they need the operator scope.',
    !admin && 'Dead letters need the admin scope of a tenant.',
    !read && 'Schedules need the jobs:read scope of a tenant.',
  ].filter(Boolean);
  if (missing.length) main.append(h('p', { class: 'hint', 'data-scope-note': '' }, missing.join(' ')));
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

/**
 * Table rows kept by key and updated in place, so a periodic refresh never replaces a button
 * under the pointer or the keyboard focus. `create(item)` returns {tr, update(item)}.
 */
function keyedRows(tbody, empty, key, create) {
  const rows = new Map();
  return {
    /** Shows exactly `items`, in their order. */
    set(items) {
      const keys = new Set(items.map(key));
      for (const [k, row] of rows) {
        if (!keys.has(k)) {
          row.tr.remove();
          rows.delete(k);
        }
      }
      items.forEach((item) => this.put(item));
      const order = items.map((item) => rows.get(key(item)).tr);
      if (order.some((tr, i) => tbody.rows[i] !== tr)) tbody.append(...order);
      empty.hidden = rows.size > 0;
    },
    /** Adds or updates one item (a new one goes last until the next `set`). */
    put(item) {
      let row = rows.get(key(item));
      if (!row) {
        row = create(item);
        rows.set(key(item), row);
        tbody.append(row.tr);
      }
      row.update(item);
      empty.hidden = true;
    },
    remove(k) {
      rows.get(k)?.tr.remove();
      rows.delete(k);
      empty.hidden = rows.size > 0;
    },
  };
}

/**
 * Listings that a change supersedes: `changed()` once a change is answered, and a listing read
 * while it was under way is dropped (it could bring back a row just deleted, or undo a pause).
 */
function generations() {
  let gen = 0;
  return {
    changed: () => ++gen,
    /** Calls `apply(await read())` unless something changed while it read. */
    async load(read, apply) {
      const at = gen;
      const value = await read();
      if (at === gen) apply(value);
    },
  };
}

function pauses({ read, write, operator }) {
  const tbody = h('tbody');
  const empty = h('p', { class: 'empty', hidden: true }, 'No kind is paused.');
  const status = h('p', { class: 'hint', role: 'status' });
  let mine = null; // the caller's tenant, once a pause names it
  // An operator's pause (for every tenant, or for one) and a tenant's own are apart: neither
  // lifts the other. Servers before `by_operator` only had operators' pauses for every tenant.
  const byOperator = (p) => p.tenant === null || Boolean(p.by_operator);
  const own = (p) => p.tenant !== null && p.tenant === mine && !byOperator(p);
  const keyOf = (p) => `${p.kind}\u0000${p.tenant ?? ''}\u0000${byOperator(p) ? 'operator' : 'tenant'}`;
  const rows = keyedRows(tbody, empty, keyOf, row);
  const gens = generations();
  const form = write || operator ? pauseForm() : null;
  const el = h(
    'section',
    { class: 'card', 'aria-labelledby': 'pauses-h' },
    h('h2', { id: 'pauses-h' }, 'Paused kinds'),
    h(
      'p',
      { class: 'hint' },
      'A paused kind\'s waiting jobs stay queued and none starts; running ones finish.',
      operator
        ? ' As an operator you see every tenant\'s pauses, and lift the operators\' ones; a tenant\'s own pause is its to resume.'
        : ' An operator\'s pause, for every tenant or for yours, holds your jobs too; only an operator lifts it.',
    ),
    h(
      'div',
      { class: 'table-wrap' },
      h(
        'table',
        { class: 'ops' },
        h('caption', { class: 'visually-hidden' }, 'Paused kinds'),
        h('thead', {}, h('tr', {}, ['Kind', 'Paused for', 'Since', 'By', h('span', { class: 'visually-hidden' }, 'Actions')].map((c) => h('th', { scope: 'col' }, c)))),
        tbody,
      ),
    ),
    empty,
    status,
    form?.el ?? h('p', { class: 'hint' }, 'Pausing and resuming kinds need the jobs:write scope.'),
  );
  const stop = every(5000, refresh);
  return { el, dispose: stop };

  async function refresh() {
    try {
      await gens.load(
        async () => {
          const holding = read ? (await api('/v1/pauses')).items : [];
          const all = operator ? (await api('/v1/admin/pauses')).items : holding;
          return { holding, all };
        },
        ({ holding, all }) => {
          // What holds the caller's jobs names no tenant but its own.
          mine = holding.find((p) => p.tenant !== null)?.tenant ?? mine;
          rows.set(all);
          status.textContent = '';
        },
      );
    } catch (e) {
      status.textContent = e.status === 404 ? 'Not available on this server.' : `Unavailable: ${e.message}`;
    }
  }

  /** Who a pause holds, as the reader sees it. */
  function holds(p) {
    if (p.tenant === null) return 'every tenant';
    return p.tenant === mine ? `${p.tenant} (this tenant)` : `tenant ${p.tenant}`;
  }

  function row(first) {
    const cells = { for: h('td', { 'data-label': 'Paused for' }), since: h('td', { 'data-label': 'Since' }), by: h('td', { 'data-label': 'By' }), actions: h('td', { class: 'actions' }) };
    const tr = h(
      'tr',
      { 'data-pause-kind': first.kind, 'data-pause-tenant': first.tenant ?? '*', 'data-pause-by': byOperator(first) ? 'operator' : 'tenant' },
      h('td', {}, first.kind),
      cells.for,
      cells.since,
      cells.by,
      cells.actions,
    );
    return {
      tr,
      update(p) {
        cells.for.textContent = holds(p);
        cells.since.replaceChildren(when(p.since));
        cells.by.textContent = `${p.by ?? ''}${byOperator(p) ? ' (operator)' : ''}`;
        // The tenant lifts its own pauses, an operator the operators' ones.
        const kind = encodeURIComponent(p.kind);
        const path = own(p) && write
          ? `/v1/kinds/${kind}/resume`
          : byOperator(p) && operator
            ? `/v1/admin/kinds/${kind}/resume${p.tenant === null ? '' : `?tenant=${encodeURIComponent(p.tenant)}`}`
            : null;
        const label = `Resume ${p.kind}${own(p) ? '' : p.tenant === null ? ' for every tenant' : ` for tenant ${p.tenant}`}`;
        if (!path) {
          const why = byOperator(p) ? 'held by an operator' : own(p) ? '' : 'the tenant\'s own';
          cells.actions.replaceChildren(why ? h('span', { class: 'hint' }, why) : '');
        } else if (cells.actions.firstChild?.dataset?.path !== path) {
          const button = h('button', { type: 'button', class: 'small', 'aria-label': label, 'data-path': path, onclick: () => resume(p, path, button) }, 'Resume');
          cells.actions.replaceChildren(button);
        }
      },
    };
  }

  async function resume(p, path, button) {
    button.disabled = true;
    try {
      await api(path, { method: 'POST' });
      gens.changed();
      rows.remove(keyOf(p));
      toast(`Resumed ${p.kind} for ${holds(p)}: its waiting jobs start again`);
    } catch (e) {
      toast(`Could not resume ${p.kind}: ${e.message}`, 'error');
      button.disabled = false;
    }
  }

  function pauseForm() {
    // The kinds to pick from need jobs:read; an operator without it types the kind's name.
    const kind = read ? h('select', { name: 'kind', required: true }) : h('input', { type: 'text', name: 'kind', required: true, autocomplete: 'off', size: 16 });
    const scopes = [...(write ? [['own', 'this tenant\'s jobs']] : []), ...(operator ? [['all', 'every tenant']] : [])];
    const scope = h('select', { name: 'scope' }, scopes.map(([value, text]) => h('option', { value }, text)));
    const button = h('button', { type: 'submit' }, 'Pause kind');
    const errors = h('p', { class: 'error', 'aria-live': 'polite' });
    if (read) {
      api('/v1/kinds').then(
        ({ items }) => kind.replaceChildren(...items.map((k) => h('option', { value: k.kind }, k.kind))),
        (e) => toast(`Could not load the job kinds: ${e.message}`, 'error'),
      );
    }
    const el = h(
      'form',
      { class: 'inline', onsubmit: submit, 'aria-labelledby': 'pause-form-h', novalidate: true },
      h('h3', { id: 'pause-form-h' }, 'Pause a kind'),
      field('Kind to pause', kind),
      scopes.length > 1 ? field('Pause for', scope) : h('p', { class: 'hint' }, `For ${scopes[0][1]}.`),
      button,
      errors,
    );
    return { el };

    async function submit(e) {
      e.preventDefault();
      const name = kind.value.trim();
      if (!name) {
        errors.textContent = 'Choose a kind.';
        kind.focus();
        return;
      }
      const all = scope.value === 'all';
      const path = `/v1${all ? '/admin' : ''}/kinds/${encodeURIComponent(name)}/pause`;
      button.disabled = true;
      errors.textContent = '';
      try {
        const p = await api(path, { method: 'POST' });
        gens.changed();
        if (!all) mine = p.tenant;
        rows.put(p);
        toast(`Paused ${p.kind} for ${holds(p)}: its waiting jobs stay queued`);
      } catch (err) {
        errors.textContent = err.message;
      } finally {
        button.disabled = false;
      }
    }
  }
}

function schedules(write) {
  const tbody = h('tbody');
  const empty = h('p', { class: 'empty', hidden: true }, 'No schedules.');
  const status = h('p', { class: 'hint', role: 'status' });
  const rows = keyedRows(tbody, empty, (s) => s.id, row);
  const gens = generations();
  const el = h(
    'section',
    { class: 'card', 'aria-labelledby': 'sched-h' },
    h('h2', { id: 'sched-h' }, 'Schedules'),
    h(
      'p',
      { class: 'hint' },
      'Each tick of a schedule submits one job. Create them with ',
      h('code', {}, 'conveyor schedules create'),
      ' or ',
      h('code', {}, 'POST /v1/schedules'),
      write ? '.' : '; pausing, resuming and deleting them need the jobs:write scope.',
    ),
    h(
      'div',
      { class: 'table-wrap' },
      h(
        'table',
        { class: 'ops' },
        h('caption', { class: 'visually-hidden' }, 'Schedules, by id'),
        h('thead', {}, h('tr', {}, ['Schedule', 'Kind', 'Timing', 'Next run', 'Last run', 'State', ...(write ? [h('span', { class: 'visually-hidden' }, 'Actions')] : [])].map((c) => h('th', { scope: 'col' }, c)))),
        tbody,
      ),
    ),
    empty,
    status,
  );
  const stop = every(5000, refresh);
  return { el, dispose: stop };

  async function refresh() {
    try {
      await gens.load(
        () => api('/v1/schedules'),
        ({ items }) => {
          rows.set(items);
          status.textContent = '';
        },
      );
    } catch (e) {
      status.textContent = e.status === 404 ? 'Not available on this server.' : `Unavailable: ${e.message}`;
    }
  }

  function row(first) {
    const id = first.id;
    const cells = {
      kind: h('td', { 'data-label': 'Kind' }),
      timing: h('td', { class: 'code', 'data-label': 'Timing' }),
      next: h('td', { 'data-label': 'Next run' }),
      last: h('td', { 'data-label': 'Last run' }),
      state: h('td', { 'data-label': 'State' }),
    };
    const toggle = h('button', { type: 'button', class: 'small', onclick: () => setPaused(toggle.dataset.paused !== 'true') });
    const remove = h('button', { type: 'button', class: 'small danger', 'aria-label': `Delete schedule ${id}`, onclick: del }, 'Delete');
    const tr = h(
      'tr',
      { 'data-schedule': id },
      h('td', { class: 'id' }, id),
      cells.kind,
      cells.timing,
      cells.next,
      cells.last,
      cells.state,
      write ? h('td', { class: 'actions' }, toggle, ' ', remove) : null,
    );
    return {
      tr,
      update(s) {
        tr.dataset.paused = String(s.paused);
        cells.kind.textContent = s.kind;
        cells.timing.textContent = timing(s);
        cells.next.replaceChildren(...(s.next_run_at ? [when(s.next_run_at), ' ', h('span', { class: 'hint' }, relative(s.next_run_at))] : [h('span', { class: 'hint' }, s.paused ? 'none while paused' : '')]));
        cells.last.replaceChildren(...(s.last_run_at ? [when(s.last_run_at), ' ', h('span', { class: 'hint' }, relative(s.last_run_at))] : [h('span', { class: 'hint' }, 'not yet')]));
        cells.state.replaceChildren(h('span', { class: `badge ${s.paused ? 'paused' : 'active'}` }, s.paused ? 'paused' : 'active'));
        toggle.dataset.paused = String(s.paused);
        toggle.textContent = s.paused ? 'Resume' : 'Pause';
        toggle.setAttribute('aria-label', `${s.paused ? 'Resume' : 'Pause'} schedule ${id}`);
      },
    };

    async function setPaused(paused) {
      toggle.disabled = true;
      try {
        const s = await api(`/v1/schedules/${encodeURIComponent(id)}/${paused ? 'pause' : 'resume'}`, { method: 'POST' });
        gens.changed();
        rows.put(s);
        toast(paused ? `Paused schedule ${id}: no tick fires until it is resumed` : `Resumed schedule ${id}: it goes on from its next tick`);
      } catch (e) {
        toast(`Could not ${paused ? 'pause' : 'resume'} schedule ${id}: ${e.message}`, 'error');
      } finally {
        toggle.disabled = false;
      }
    }

    async function del() {
      if (!window.confirm(`Delete schedule ${id}? No tick fires after this; jobs it already submitted run on.`)) return;
      remove.disabled = true;
      try {
        await api(`/v1/schedules/${encodeURIComponent(id)}`, { method: 'DELETE' });
        gens.changed();
        rows.remove(id);
        toast(`Deleted schedule ${id}`);
      } catch (e) {
        toast(`Could not delete schedule ${id}: ${e.message}`, 'error');
        remove.disabled = false;
      }
    }
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
