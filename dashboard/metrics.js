// Prometheus text format, read in the browser: rates from counter deltas and quantiles from
// histogram bucket deltas between two scrapes, as `rate()` and `histogram_quantile()` would.

/** Parses the text format into samples [{name, labels, value}] (comments and blank lines skipped). */
export function parse(text) {
  const samples = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    for (const [, k, v] of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[k] = v.replace(/\\n/g, '\n').replace(/\\"/g, '"').replace(/\\\\/g, '\\');
    }
    const value = m[3] === '+Inf' ? Infinity : m[3] === '-Inf' ? -Infinity : Number(m[3]);
    samples.push({ name: m[1], labels, value });
  }
  return samples;
}

const key = (s) => `${s.name}{${Object.entries(s.labels).sort().map(([k, v]) => `${k}=${v}`).join(',')}}`;

/** Two consecutive scrapes and what can be computed from them. */
export class Window {
  constructor(prev, cur, seconds) {
    this.prev = new Map(prev.map((s) => [key(s), s.value]));
    this.cur = cur;
    this.seconds = seconds;
  }

  /**
   * Increase of one series. A series appears at its first increment, so one new since the last
   * scrape counts from zero; a counter that went down was reset, so all of it is new.
   */
  delta(s) {
    const before = this.prev.get(key(s)) ?? 0;
    return s.value >= before ? s.value - before : s.value;
  }

  /** Per-second rate of a counter, summed over the series that `where` accepts. */
  rate(name, where = () => true) {
    let sum = 0;
    for (const s of this.cur) if (s.name === name && where(s.labels)) sum += this.delta(s);
    return sum / this.seconds;
  }

  /** The q-quantile of a histogram's observations in this window, or null without any. */
  quantile(name, q, where = () => true) {
    const buckets = new Map(); // le → increase
    for (const s of this.cur) {
      if (s.name !== `${name}_bucket` || !where(s.labels)) continue;
      const le = s.labels.le === '+Inf' ? Infinity : Number(s.labels.le);
      buckets.set(le, (buckets.get(le) ?? 0) + this.delta(s));
    }
    const sorted = [...buckets].sort((a, b) => a[0] - b[0]);
    const total = sorted.length ? sorted[sorted.length - 1][1] : 0;
    if (!total) return null;
    const rank = q * total;
    let lower = 0;
    let below = 0;
    for (const [le, count] of sorted) {
      if (count >= rank) {
        if (le === Infinity) return lower; // beyond the last finite bucket: its bound is the best guess
        return lower + ((le - lower) * (rank - below)) / Math.max(count - below, 1e-12);
      }
      lower = le;
      below = count;
    }
    return lower;
  }

  /** Current value of a gauge, summed over the series that `where` accepts. */
  gauge(name, where = () => true) {
    let sum = 0;
    for (const s of this.cur) if (s.name === name && where(s.labels)) sum += s.value;
    return sum;
  }
}
