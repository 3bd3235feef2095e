// One job: its state (and, while it waits to start, why), priority, payload, result or error,
// trace id, and the timeline of its CloudEvents with the time between them, live; cancel while it
// runs, re-drive once dead-lettered.

import { api, hasScope } from './api.js';
import { TERMINAL, duration, eventName, h, ms, pre, progressBar, setProgress, shortId, statusBadge, time, toast } from './dom.js';
import { apply, summary, waitingReason } from './jobfold.js';
import { follow } from './sse.js';

/** Timeline entries kept in the page (a job that reports progress often can have many). */
const MAX_EVENTS = 2000;

export function render(main, { id }) {
  let job = null;
  let stream = null;
  let previous = null; // time of the last timeline entry
  const seen = new Set(); // CloudEvent ids: a resumed stream never repeats one, a re-read might

  const heading = h('h1', { tabIndex: -1 }, `Job ${shortId(id)}`);
  const badge = h('span');
  const facts = h('dl', { class: 'facts' });
  const actions = h('div', { class: 'job-actions' });
  const output = h('div');
  const timeline = h('ol', { class: 'timeline', 'aria-live': 'polite', 'aria-relevant': 'additions' });
  const conn = h('span', { class: 'conn', role: 'status' });
  // A batch's members by status (its callback is this job), read while it has not ended.
  const members = h('span', { class: 'members' }, '…');
  // The jobs its handler submitted, with their statuses, read while any has not ended.
  const childList = h('ul', { class: 'children' });
  const childCard = h('section', { class: 'card', 'aria-labelledby': 'children-h', hidden: true },
    h('h2', { id: 'children-h' }, 'Children'), childList);
  let childrenOpen = true;
  async function readChildren() {
    try {
      const page = await api(`/v1/jobs/${id}/children?limit=100`);
      childCard.hidden = page.items.length === 0;
      childList.replaceChildren(...page.items.map((c) => h('li', { 'data-id': c.id }, jobLink(c.id), ' ', c.kind, ' ', statusBadge(c.status))));
      childrenOpen = page.items.some((c) => !TERMINAL.has(c.status)) || !TERMINAL.has(job?.status);
    } catch (e) {
      toast(`Could not load the children: ${e.message}`, 'error');
    }
  }
  let membersRead = 0;
  let childrenRead = 0;
  let membersFinal = false; // read once the batch ended: its counts no longer change
  const jobLink = (other) => h('a', { href: `#/jobs/${other}` }, h('code', {}, shortId(other)));
  async function readMembers() {
    try {
      const b = await api(`/v1/batches/${id}`);
      const m = b.members;
      members.textContent = `${m.succeeded} succeeded, ${m.failed} failed, ${m.cancelled} cancelled of ${m.total}`
        + (b.sealed ? '' : ' (open: more may come)');
    } catch (e) {
      members.textContent = `unavailable: ${e.message}`;
    }
  }

  main.append(
    h('p', { class: 'crumbs' }, h('a', { href: '#/jobs' }, '← Jobs')),
    h('div', { class: 'title' }, heading, badge),
    h('section', { class: 'card', 'aria-label': 'Job' }, facts, actions),
    childCard,
    output,
    h('section', { class: 'card', 'aria-labelledby': 'timeline-h' }, h('div', { class: 'title' }, h('h2', { id: 'timeline-h' }, 'Timeline'), conn), timeline),
  );

  const bar = progressBar({ status: 'queued' }, 'Progress');
  const barText = h('span', { class: 'pct' });

  load();
  const ticker = setInterval(() => {
    if (job && !job.finished_at && job.started_at) drawFacts();
    // Children and a batch's members progress on their own streams: read again every two seconds
    // until they (and the job) have ended.
    if (job && childrenOpen && Date.now() - childrenRead > 2000) {
      childrenRead = Date.now();
      readChildren();
    }
    if (job?.is_batch && !membersFinal && Date.now() - membersRead > 2000) {
      membersRead = Date.now();
      membersFinal = TERMINAL.has(job.status);
      readMembers();
    }
  }, 1000);
  return () => {
    clearInterval(ticker);
    stream?.close();
  };

  async function load() {
    try {
      job = await api(`/v1/jobs/${id}`);
    } catch (e) {
      main.append(h('p', { class: 'error', role: 'alert' }, e.message));
      return;
    }
    draw();
    if (hasScope('events:read')) {
      // The job's whole history from the log, then live (never ends at a terminal event, so a
      // re-drive shows up too).
      stream = follow(`/v1/events?job=${id}&after=0`, {
        onEvent: ({ id, data }) => onEvent(data, Number(id)),
        onState: (s, detail) => {
          conn.textContent = s === 'live' ? '● live' : s === 'error' ? `not live: ${detail}` : `${s}…`;
          conn.className = `conn ${s}`;
        },
      });
    } else {
      // Without events:read: the timeline as it stands, not live.
      conn.textContent = 'not live (the token lacks events:read)';
      // In stream order, without their sequences.
      api(`/v1/jobs/${id}/events`).then((list) => list.forEach((ce) => onEvent(ce)), (e) => toast(`Could not load the timeline: ${e.message}`, 'error'));
    }
  }

  /** `ce` is the event at stream sequence `seq` (when known). */
  function onEvent(ce, seq) {
    if (!ce?.id || seen.has(ce.id)) return;
    seen.add(ce.id);
    addEntry(ce);
    if (apply(job, ce, seq)) draw();
  }

  function addEntry(ce) {
    const at = ms(ce.time);
    const gap = previous === null ? null : at - previous;
    previous = at;
    const name = eventName(ce.type);
    timeline.append(
      h(
        'li',
        { class: `ev e-${name.replace('job.', '')}`, 'data-type': name },
        h('span', { class: 'when' }, time(ce.time), h('span', { class: 'gap', title: 'since the previous event' }, gap === null ? 'start' : `+${duration(gap)}`)),
        h('strong', {}, name),
        h('span', { class: 'what' }, summary(ce)),
      ),
    );
    if (timeline.children.length > MAX_EVENTS) timeline.firstElementChild.remove();
  }

  function draw() {
    badge.replaceChildren(statusBadge(job.status));
    drawFacts();
    drawActions();
    drawOutput();
  }

  function drawFacts() {
    setProgress(bar, job);
    barText.textContent = (bar.dataset.pct ? `${bar.dataset.pct}%` : '') + (job.progress?.message ? ` ${job.progress.message}` : '');
    const run = job.started_at ? (ms(job.finished_at) ?? Date.now()) - ms(job.started_at) : null;
    const rows = [
      ['ID', h('code', {}, job.id)],
      ['Kind', job.kind],
      ['Status', job.status.replace('_', ' ')],
      // Only while the scheduler holds it back (a job that just waits for a free worker is not told).
      job.waiting && ['Waiting', h('span', { class: 'waiting', 'data-reason': job.waiting.reason }, waitingReason(job.waiting), ' (since ', time(job.waiting.since), ')')],
      job.priority ? ['Priority', h('span', { title: 'higher starts first (-100 to 100)' }, String(job.priority))] : null,
      job.depends_on?.length ? ['Depends on', h('span', { class: 'depends-on' }, ...job.depends_on.flatMap((d, i) => [i ? ', ' : '', jobLink(d)]))] : null,
      job.batch ? ['Batch', jobLink(job.batch)] : null,
      job.parent ? ['Parent', jobLink(job.parent)] : null,
      job.is_batch ? ['Members', members] : null,
      ['Attempt', `${job.attempt} of ${job.max_attempts}`],
      ['Progress', h('span', { class: 'progress' }, bar, barText)],
      ['Created', time(job.created_at)],
      ['Started', job.started_at ? time(job.started_at) : '–'],
      ['Finished', job.finished_at ? time(job.finished_at) : '–'],
      ['Run time', run === null ? '–' : duration(run)],
      ['Trace id', job.trace_id ? h('code', { class: 'trace' }, job.trace_id) : '–'],
    ];
    if (job.run_at && !TERMINAL.has(job.status)) rows.push(['Runs at', time(job.run_at)]);
    facts.replaceChildren(...rows.filter(Boolean).flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
  }

  function drawActions() {
    const canCancel = !TERMINAL.has(job.status) && hasScope('jobs:write');
    const canRedrive = job.status === 'failed' && hasScope('admin');
    // Rebuilt only when what is allowed changes, so focus stays on a button while progress ticks.
    const key = `${canCancel}/${canRedrive}`;
    if (actions.dataset.key === key) return;
    actions.dataset.key = key;
    const buttons = [];
    if (canCancel) buttons.push(h('button', { type: 'button', onclick: (e) => act(e.currentTarget, 'cancel', `/v1/jobs/${id}/cancel`) }, 'Cancel job'));
    if (canRedrive) buttons.push(h('button', { type: 'button', onclick: (e) => act(e.currentTarget, 're-drive', `/v1/admin/dead-letters/${id}/redrive`) }, 'Re-drive'));
    actions.replaceChildren(...buttons);
  }

  function drawOutput() {
    const parts = [h('h2', {}, 'Payload'), pre(job.payload ?? {})];
    if (job.status === 'succeeded') {
      parts.push(h('h2', {}, 'Result'));
      if (job.result_url) {
        const holder = h('div', {}, h('button', { type: 'button', onclick: loadResult }, 'Load the stored result'));
        parts.push(holder);
        async function loadResult() {
          try {
            holder.replaceChildren(pre(await api(job.result_url)));
          } catch (e) {
            toast(e.message, 'error');
          }
        }
      } else {
        parts.push(pre(job.result));
      }
    }
    if (job.error) parts.push(h('h2', {}, job.status === 'failed' ? 'Error' : 'Last error'), pre(job.error));
    output.replaceChildren(h('section', { class: 'card', 'aria-label': 'Input and output' }, parts));
  }

  async function act(button, what, path) {
    // Stays disabled until the job's new state replaces it.
    button.disabled = true;
    try {
      await api(path, { method: 'POST' });
      toast(what === 'cancel' ? 'Cancellation requested' : 'Queued again');
    } catch (e) {
      toast(`Could not ${what}: ${e.message}`, 'error');
      button.disabled = false;
    }
  }
}
