// A small line chart in inline SVG: a few series over the last minutes, y from zero.

const NS = 'http://www.w3.org/2000/svg';
const W = 320;
const H = 120;
const PAD = { l: 38, r: 6, t: 8, b: 16 };
/** Distinct, AA-contrast colours on white. */
export const COLOURS = ['#1f4fbf', '#0b7a3e', '#b3261e', '#8a4b00', '#6a3fb5'];

function svg(tag, attrs, ...children) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  el.append(...children);
  return el;
}

/** Compact numbers: 1530 → "1.5k"; below one, seconds as "4.2m" (ms) and rates as "0.42". */
export function compact(v, unit = '') {
  if (v === 0) return '0';
  const a = Math.abs(v);
  if (a >= 1e6) return `${+(v / 1e6).toFixed(1)}M`;
  if (a >= 1e3) return `${+(v / 1e3).toFixed(1)}k`;
  if (a >= 1) return `${+v.toFixed(a >= 10 ? 0 : 1)}`;
  if (unit !== 's') return `${+v.toFixed(2)}`;
  if (a >= 1e-3) return `${+(v * 1e3).toFixed(a >= 0.01 ? 0 : 1)}m`;
  return `${+(v * 1e6).toFixed(0)}µ`;
}

/**
 * Draws `series` ([{name, points: [number|null]}], one point per scrape, oldest first) into
 * `figure`, replacing what was there. `unit` is appended to values in the legend.
 */
export function draw(figure, { title, unit, series, capacity }) {
  const values = series.flatMap((s) => s.points).filter((v) => v !== null && Number.isFinite(v));
  const max = Math.max(...values, 0) || 1;
  const x = (i) => PAD.l + ((W - PAD.l - PAD.r) * i) / Math.max(capacity - 1, 1);
  const y = (v) => PAD.t + (H - PAD.t - PAD.b) * (1 - v / max);
  const lines = series.map((s, n) => {
    const offset = capacity - s.points.length;
    let d = '';
    s.points.forEach((v, i) => {
      if (v === null || !Number.isFinite(v)) return;
      d += `${d && s.points[i - 1] !== null ? 'L' : 'M'}${x(i + offset).toFixed(1)},${y(v).toFixed(1)}`;
    });
    return svg('path', { d, fill: 'none', stroke: COLOURS[n % COLOURS.length], 'stroke-width': 2, 'stroke-linejoin': 'round' });
  });
  // The newest point of each series as a dot, so a series with one point shows too.
  const dots = series.flatMap((s, n) => {
    const i = s.points.length - 1;
    const v = s.points[i];
    if (v === null || v === undefined || !Number.isFinite(v)) return [];
    return [svg('circle', { cx: x(i + capacity - s.points.length).toFixed(1), cy: y(v).toFixed(1), r: 2.5, fill: COLOURS[n % COLOURS.length] })];
  });
  const latest = (s) => [...s.points].reverse().find((v) => v !== null && Number.isFinite(v));
  const label = series.map((s) => `${s.name} ${latest(s) === undefined ? 'no data' : `${compact(latest(s), unit)}${unit}`}`).join(', ');
  const chart = svg(
    'svg',
    { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': `${title}: ${label}`, class: 'chart' },
    svg('line', { x1: PAD.l, x2: W - PAD.r, y1: y(0), y2: y(0), class: 'axis' }),
    svg('line', { x1: PAD.l, x2: W - PAD.r, y1: y(max), y2: y(max), class: 'grid' }),
    svg('text', { x: PAD.l - 4, y: y(max) + 4, 'text-anchor': 'end', class: 'tick' }, `${compact(max, unit)}${unit}`),
    svg('text', { x: PAD.l - 4, y: y(0) + 4, 'text-anchor': 'end', class: 'tick' }, '0'),
    svg('text', { x: W - PAD.r, y: H - 2, 'text-anchor': 'end', class: 'tick' }, 'now'),
    ...lines,
    ...dots,
  );
  const legend = document.createElement('ul');
  legend.className = 'legend';
  series.forEach((s, n) => {
    const li = document.createElement('li');
    const sw = document.createElement('span');
    sw.className = `swatch c${n % COLOURS.length}`;
    const v = latest(s);
    li.append(sw, `${s.name}: ${v === undefined ? '–' : `${compact(v, unit)}${unit}`}`);
    legend.append(li);
  });
  const caption = document.createElement('figcaption');
  caption.textContent = title;
  figure.replaceChildren(caption, chart, legend);
}
