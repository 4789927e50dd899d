// GET /v1/stats/series read into columns for charts. The shape is the one
// docs/api.md documents (points oldest first, each with its interval's start
// and counts); names are read a little leniently so a field renamed while
// the endpoint settles shows as missing rather than breaking the page.
import { CHANNELS } from '../ui.js';

const TIME_KEYS = ['at', 'start', 'from', 't', 'time'];
const LIST_KEYS = ['points', 'intervals', 'buckets', 'series', 'data'];

function pick(obj, keys) {
  for (const k of keys) if (obj && obj[k] !== undefined) return obj[k];
  return undefined;
}

function total(v) {
  if (typeof v === 'number') return v;
  if (v && typeof v === 'object') return Object.values(v).reduce((a, x) => a + (typeof x === 'number' ? x : 0), 0);
  return null;
}

function seconds(t) {
  if (typeof t === 'number') return t > 1e11 ? t / 1000 : t;
  const ms = Date.parse(t);
  return Number.isNaN(ms) ? null : ms / 1000;
}

export function readSeries(body) {
  const list = Array.isArray(body) ? body : pick(body, LIST_KEYS);
  if (!Array.isArray(list)) return null;
  const xs = [];
  const started = [];
  const finished = [];
  const outcomes = {};
  const channels = {};
  const p50 = [];
  const p99 = [];
  list.forEach((pt, i) => {
    const x = seconds(pick(pt, TIME_KEYS));
    xs.push(x === null ? i : x);
    const sends = pt.sends && typeof pt.sends === 'object' ? pt.sends : pt;
    started.push(total(pick(sends, ['started', 'sendsStarted'])) ?? 0);
    const fin = pick(sends, ['finished', 'sendsFinished']);
    finished.push(total(fin) ?? 0);
    if (fin && typeof fin === 'object') {
      for (const [k, v] of Object.entries(fin)) (outcomes[k] = outcomes[k] || new Array(list.length).fill(0))[i] = v;
    }
    const ch = pick(pt, ['channels', 'perChannel']) || {};
    for (const c of CHANNELS) {
      const row = ch[c] || {};
      const target = (channels[c] = channels[c] || { requested: [], delivered: [], engaged: [], failed: [] });
      for (const k of Object.keys(target)) target[k].push(row[k] ?? 0);
    }
    const late = pick(pt, ['lateness', 'timerLateness', 'timerLatenessSeconds']) || {};
    p50.push(pick(late, ['p50', 'p50Seconds']) ?? null);
    p99.push(pick(late, ['p99', 'p99Seconds']) ?? null);
  });
  return { xs, started, finished, outcomes, channels, p50, p99 };
}
