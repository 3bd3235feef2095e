// Small DOM and formatting helpers shared by the views.

/** Creates an element: h('button', {type: 'button', onclick}, 'Cancel'). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (!k.includes('-') && k in el) el[k] = v;
    else if (v !== false) el.setAttribute(k, v === true ? '' : v);
  }
  el.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

let uid = 0;
/** A unique element id, for label/aria wiring. */
export const nextId = (prefix) => `${prefix}-${++uid}`;

/** A labelled form control: the label wraps nothing, it points at the control by id. */
export function field(label, control, hint) {
  control.id ||= nextId('f');
  const parts = [h('label', { htmlFor: control.id }, label), control];
  if (hint) {
    const hintEl = h('small', { id: nextId('hint'), class: 'hint' }, hint);
    control.setAttribute('aria-describedby', hintEl.id);
    parts.push(hintEl);
  }
  return h('div', { class: 'field' }, parts);
}

export function toast(message, kind = 'info') {
  const box = document.getElementById('toasts');
  const el = h('div', { class: `toast ${kind}` }, message);
  box.append(el);
  setTimeout(() => el.remove(), kind === 'error' ? 8000 : 4000);
}

/** Milliseconds as "850 ms", "4.2 s", "3 m 05 s", "2 h 10 m". */
export function duration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return '';
  if (ms < 1000) return `${Math.max(0, Math.round(ms))} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} m ${String(Math.floor(s % 60)).padStart(2, '0')} s`;
  const hr = Math.floor(m / 60);
  if (hr < 48) return `${hr} h ${String(m % 60).padStart(2, '0')} m`;
  return `${Math.floor(hr / 24)} d`;
}

export const ms = (iso) => (iso ? Date.parse(iso) : null);

/** An interval exactly, largest unit first: "30 s", "1 h 30 m", "2 d", "1 s 500 ms". */
export function interval(ms) {
  const units = [['d', 86_400_000], ['h', 3_600_000], ['m', 60_000], ['s', 1000], ['ms', 1]];
  let left = Math.round(ms);
  const parts = [];
  for (const [unit, size] of units) {
    const n = Math.floor(left / size);
    if (n) parts.push(`${n} ${unit}`);
    left -= n * size;
  }
  return parts.join(' ') || '0 ms';
}

/** When a schedule ticks: "0 30 2 * * * (Europe/Paris)" or "every 1 h 30 m". */
export function timing(schedule) {
  if (schedule.cron) return `${schedule.cron} (${schedule.timezone ?? 'UTC'})`;
  if (schedule.every_ms !== undefined && schedule.every_ms !== null) return `every ${interval(schedule.every_ms)}`;
  return '';
}

/** A time relative to `now` (ms since the epoch): "in 5 h 12 m", "3.0 s ago", "now". */
export function relative(iso, now = Date.now()) {
  if (!iso) return '';
  const d = Date.parse(iso) - now;
  if (Math.abs(d) < 1000) return 'now';
  return d > 0 ? `in ${duration(d)}` : `${duration(-d)} ago`;
}

/** A <time> element showing a local time, the full timestamp in its title. */
export function time(iso) {
  if (!iso) return h('span', {}, '');
  const d = new Date(iso);
  return h('time', { dateTime: iso, title: d.toISOString() }, d.toLocaleTimeString());
}

/** A <time> with the local date and time (the time alone when it is today). */
export function when(iso) {
  if (!iso) return h('span', {}, '');
  const d = new Date(iso);
  const today = d.toDateString() === new Date().toDateString();
  return h('time', { dateTime: iso, title: d.toISOString() }, today ? d.toLocaleTimeString() : d.toLocaleString());
}

// UUIDv7s begin with their timestamp: the random tail tells jobs apart.
export const shortId = (id) => (id.length > 13 ? `…${id.slice(-12)}` : id);

/** The CloudEvent type without its prefix: "dev.conveyor.job.started" → "job.started". */
export const eventName = (type) => type.replace(/^dev\.conveyor\./, '');

export const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);
export const STATUSES = ['queued', 'running', 'retry_scheduled', 'succeeded', 'failed', 'cancelled'];

export function statusBadge(status) {
  return h('span', { class: `badge s-${status}` }, status.replace('_', ' '));
}

/** A <progress> for a job: determinate when the total is known, full once succeeded. */
export function progressBar(job, label) {
  const bar = h('progress', { max: 100, 'aria-label': label });
  setProgress(bar, job);
  return bar;
}

export function setProgress(bar, job) {
  const p = job.progress;
  let pct = null;
  if (job.status === 'succeeded') pct = 100;
  else if (p && p.total) pct = Math.min(100, Math.round((100 * p.current) / p.total));
  else if (job.status === 'queued' || job.status === 'retry_scheduled' || TERMINAL.has(job.status)) pct = 0;
  if (pct === null) bar.removeAttribute('value');
  else bar.value = pct;
  const text = pct === null ? 'running' : `${pct}%`;
  bar.textContent = text;
  bar.title = p && p.message ? `${text}: ${p.message}` : text;
  bar.dataset.pct = pct === null ? '' : String(pct);
}

export function pre(value) {
  return h('pre', { class: 'json' }, JSON.stringify(value, null, 2));
}
