// The page: submit `report.jobs_csv`, follow the job live over SSE, offer the CSV.
//
// The API sends no CORS headers, so the page never calls it cross-origin: every request goes to
// this page's own server (`/v1/...`, same origin), which forwards it to the API whose URL the user
// pasted (header `X-Conveyor-Api`; the server accepts only loopback addresses). Types come
// from the TypeScript SDK as type-only imports: they vanish at compile time, so the browser
// loads nothing of the SDK (whose runtime is written for Node).

import type { AcceptedJob, CloudEvent, Job, JobStatus } from '@conveyor/sdk';

import { eventStream, problemText } from './sse.js';

const KIND = 'report.jobs_csv';
const TERMINAL = new Set(['job.succeeded', 'job.dead_lettered', 'job.cancelled']);

interface Report {
  filename: string;
  rows: number;
  csv: string;
}
interface Progressed {
  current: number;
  total?: number | null;
  message?: string | null;
}

const $ = <T extends HTMLElement>(id: string): T => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`#${id} is missing`);
  return el as T;
};

const form = $<HTMLFormElement>('report-form');
const apiInput = $<HTMLInputElement>('api-url');
const tokenInput = $<HTMLTextAreaElement>('token');
const statusSelect = $<HTMLSelectElement>('status-filter');
const kindInput = $<HTMLInputElement>('kind-filter');
const button = $<HTMLButtonElement>('generate');
const jobLine = $<HTMLParagraphElement>('job');
const bar = $<HTMLProgressElement>('progress');
const barLabel = $<HTMLSpanElement>('progress-label');
const log = $<HTMLOListElement>('log');
const outcome = $<HTMLDivElement>('outcome');

let download: string | undefined; // the Blob URL of the last CSV, revoked when replaced
let running: AbortController | undefined;

apiInput.value = sessionStorage.getItem('conveyor.api') ?? '';
tokenInput.value = sessionStorage.getItem('conveyor.token') ?? '';

form.addEventListener('submit', (e) => {
  e.preventDefault();
  void generate();
});

function headers(): Record<string, string> {
  return {
    Authorization: `Bearer ${tokenInput.value.trim()}`,
    'X-Conveyor-Api': apiInput.value.trim().replace(/\/+$/, ''),
  };
}

async function api(path: string, init: RequestInit = {}): Promise<unknown> {
  const res = await fetch(path, { ...init, headers: { ...headers(), ...(init.headers as Record<string, string>) }, cache: 'no-store' });
  if (!res.ok) throw new Error(await problemText(res));
  return res.json();
}

function say(text: string, kind: 'info' | 'error' = 'info'): void {
  const li = document.createElement('li');
  li.textContent = text;
  li.className = kind;
  log.append(li);
  log.scrollTop = log.scrollHeight;
}

function setProgress(p: Progressed): void {
  if (typeof p.total === 'number' && p.total > 0) {
    bar.max = p.total;
    bar.value = Math.min(p.current, p.total);
    barLabel.textContent = `${p.current} of ${p.total}`;
  } else if (p.total === 0) {
    bar.max = 1;
    bar.value = 1;
    barLabel.textContent = '0 of 0';
  } else {
    bar.removeAttribute('value'); // indeterminate: the total is not known yet
    barLabel.textContent = `${p.current} so far`;
  }
  bar.dataset.current = String(p.current);
}

async function generate(): Promise<void> {
  running?.abort();
  const controller = new AbortController();
  running = controller;
  sessionStorage.setItem('conveyor.api', apiInput.value.trim());
  sessionStorage.setItem('conveyor.token', tokenInput.value.trim());
  if (download) URL.revokeObjectURL(download);
  download = undefined;
  outcome.replaceChildren();
  log.replaceChildren();
  bar.value = 0;
  bar.max = 1;
  barLabel.textContent = '';
  button.disabled = true;
  try {
    const payload: Record<string, string> = {};
    if (statusSelect.value) payload.status = statusSelect.value;
    if (kindInput.value.trim()) payload.kind = kindInput.value.trim();
    const job = (await api('/v1/jobs', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ kind: KIND, payload }),
    })) as AcceptedJob;
    jobLine.textContent = `Job ${job.id}: ${job.status}`;
    jobLine.dataset.jobId = job.id;
    say(`submitted ${KIND} as ${job.id}`);
    const end = await follow(job.id, controller.signal);
    await finish(job.id, end);
  } catch (e) {
    if (!controller.signal.aborted) show(`Failed: ${(e as Error).message}`, 'error');
  } finally {
    if (running === controller) button.disabled = false;
  }
}

/** Follows the job's events until its terminal one, which it returns. */
async function follow(id: string, signal: AbortSignal): Promise<CloudEvent> {
  const seen = new Set<string>();
  for (let attempt = 0; ; attempt++) {
    try {
      // The job's SSE replays its timeline from the start, then goes on live, and ends after
      // the terminal event. After a dropped connection it replays again: skip what was seen.
      for await (const msg of eventStream(`/v1/jobs/${id}/events`, headers(), signal)) {
        if (msg.event === 'resume' || (msg.id && seen.has(msg.id))) continue;
        if (msg.id) seen.add(msg.id);
        const ev = JSON.parse(msg.data) as CloudEvent;
        onEvent(msg.event, ev);
        if (TERMINAL.has(msg.event)) return ev;
        attempt = 0;
      }
    } catch (e) {
      if (signal.aborted || /^4\d\d /.test((e as Error).message)) throw e;
      if (attempt >= 5) throw e;
    }
    // The stream ended before the terminal event (a server restart, a resume hint): reconnect.
    say('stream interrupted, reconnecting', 'error');
    await new Promise((r) => setTimeout(r, 250 * 2 ** attempt));
  }
}

function onEvent(type: string, ev: CloudEvent): void {
  const data = (ev.data ?? {}) as Record<string, unknown>;
  const status: Partial<Record<string, JobStatus>> = {
    'job.started': 'running',
    'job.retry_scheduled': 'retry_scheduled',
    'job.succeeded': 'succeeded',
    'job.dead_lettered': 'failed',
    'job.cancelled': 'cancelled',
  };
  if (status[type]) jobLine.textContent = `Job ${ev.subject}: ${status[type]}`;
  if (type === 'job.progressed') {
    const p = data as unknown as Progressed;
    setProgress(p);
    say(p.message ?? `${p.current}${p.total != null ? ` of ${p.total}` : ''}`);
  } else if (type === 'job.started') {
    say(`started (attempt ${String(data.attempt)})`);
  } else if (type === 'job.failed') {
    const err = data.error as { message?: string } | undefined;
    say(`attempt ${String(data.attempt)} failed: ${err?.message ?? 'error'}`, 'error');
  } else if (type !== 'job.submitted') {
    say(type.replace(/^job\./, ''));
  }
}

async function finish(id: string, end: CloudEvent): Promise<void> {
  if (end.type.endsWith('job.succeeded')) {
    // The result: inline in the event when small; the result endpoint serves it either way
    // (from the object store when it was too large to inline).
    const report = await result(id);
    download = URL.createObjectURL(new Blob([report.csv], { type: 'text/csv' }));
    const a = document.createElement('a');
    a.href = download;
    a.download = report.filename;
    a.textContent = 'Download CSV';
    a.id = 'download';
    const summary = document.createElement('p');
    summary.textContent = `${report.rows} jobs in ${report.filename} (${new Blob([report.csv]).size} bytes)`;
    outcome.replaceChildren(summary, a);
    setProgress({ current: report.rows, total: report.rows });
  } else {
    const data = (end.data ?? {}) as { error?: { message?: string } };
    show(`The job ended ${end.type.replace(/^.*job\./, '')}${data.error?.message ? `: ${data.error.message}` : ''}`, 'error');
  }
}

/**
 * GET /v1/jobs/{id}/result. The read model follows the event log: right after the SSE stream
 * delivered `job.succeeded`, the API may still see the job running and answer the result with
 * 404 ("has no result (status running)"). So first wait, with GET /v1/jobs/{id}, until the read
 * model has the job succeeded.
 */
async function result(id: string): Promise<Report> {
  const deadline = Date.now() + 30_000;
  for (let delay = 25; ; delay = Math.min(delay * 2, 1000)) {
    const job = (await api(`/v1/jobs/${id}`)) as Job;
    if (job.status === 'succeeded') break;
    if (Date.now() > deadline) throw new Error(`the job's result is not readable yet (status ${job.status})`);
    await new Promise((r) => setTimeout(r, delay));
  }
  return (await api(`/v1/jobs/${id}/result`)) as Report;
}

function show(text: string, kind: 'info' | 'error'): void {
  const p = document.createElement('p');
  p.textContent = text;
  if (kind === 'error') p.setAttribute('role', 'alert');
  outcome.replaceChildren(p);
}
