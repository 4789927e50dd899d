// A reader for the Prometheus text format of GET /metrics: samples by name
// and labels, sums over label sets, and quantiles estimated from histogram
// buckets (linear within a bucket, as Prometheus' histogram_quantile does).

const LINE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

function number(text) {
  if (text === '+Inf') return Infinity;
  if (text === '-Inf') return -Infinity;
  return Number(text);
}

function unescape(v) {
  return v.replace(/\\(.)/g, (_, c) => (c === 'n' ? '\n' : c));
}

export class Metrics {
  constructor(samples) {
    this.samples = samples;
  }

  static parse(text) {
    const samples = [];
    for (const line of text.split('\n')) {
      if (!line || line.startsWith('#')) continue;
      const m = LINE.exec(line);
      if (!m) continue;
      const labels = {};
      for (const [, k, v] of (m[2] || '').matchAll(LABEL)) labels[k] = unescape(v);
      samples.push({ name: m[1], labels, value: number(m[3]) });
    }
    return new Metrics(samples);
  }

  has(name) {
    return this.samples.some((s) => s.name === name);
  }

  select(name, where = {}) {
    return this.samples.filter((s) => s.name === name
      && Object.entries(where).every(([k, v]) => s.labels[k] === v));
  }

  // The sum over every label set (null if the metric is absent).
  sum(name, where = {}) {
    const found = this.select(name, where);
    return found.length ? found.reduce((a, s) => a + s.value, 0) : null;
  }

  // {labelValue: sum} of one label.
  by(name, label, where = {}) {
    const out = {};
    for (const s of this.select(name, where)) out[s.labels[label]] = (out[s.labels[label]] || 0) + s.value;
    return out;
  }

  quantile(name, q, where = {}) {
    const buckets = {};
    for (const s of this.select(`${name}_bucket`, where)) {
      const le = number(s.labels.le);
      buckets[le] = (buckets[le] || 0) + s.value;
    }
    const bounds = Object.keys(buckets).map(Number).sort((a, b) => a - b);
    if (!bounds.length) return null;
    const total = buckets[bounds[bounds.length - 1]];
    if (!total) return null;
    const rank = q * total;
    let lower = 0;
    let below = 0;
    for (const upper of bounds) {
      const count = buckets[upper];
      if (count >= rank) {
        if (upper === Infinity) return lower;
        return lower + (upper - lower) * ((rank - below) / Math.max(count - below, 1e-9));
      }
      lower = upper;
      below = count;
    }
    return lower;
  }
}
