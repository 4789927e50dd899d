// Shared pieces: formatting, the data-loading hook, the refresh context
// (bumped after the clock moves, so every page re-reads), and small
// components (errors, fields, stat tiles, tables that scroll on phones).
import { html, useState, useEffect, useContext, createContext, useCallback } from './lib.js';

export const Refresh = createContext({ tick: 0, bump: () => {} });
export const Auth = createContext({ role: 'open', canEdit: true, clock: null });

export const CHANNELS = ['inapp', 'push', 'email', 'sms'];
// API.md, "Channels and the signals they can emit".
export const SIGNALS = {
  inapp: ['delivered', 'viewed', 'clicked'],
  push: ['delivered', 'clicked'],
  email: ['delivered', 'viewed', 'clicked'],
  sms: ['delivered', 'clicked'],
};
export const WINDOWS = [5, 10, 30, 60, 240, 1440];
export const SEND_STATUSES = ['active', 'stopped', 'completed', 'cancelled', 'failed', 'throttled'];

export function num(n) {
  if (n === null || n === undefined) return '—';
  if (typeof n !== 'number') return String(n);
  return Number.isInteger(n) ? n.toLocaleString('en') : n.toLocaleString('en', { maximumFractionDigits: 3 });
}

export function pct(part, whole) {
  if (!whole || part === null || part === undefined) return '—';
  return `${((100 * part) / whole).toFixed(1)}%`;
}

// API times are RFC 3339 UTC with milliseconds; shown as they are, spaced.
export function when(iso) {
  if (!iso) return '—';
  return String(iso).replace('T', ' ').replace(/Z$/, ' UTC');
}

export function Time({ iso }) {
  return iso ? html`<time datetime=${iso}>${when(iso)}</time>` : '—';
}

export function secs(s) {
  if (s === null || s === undefined || Number.isNaN(s)) return '—';
  if (s < 0.001) return `${(s * 1e6).toFixed(0)} µs`;
  if (s < 1) return `${(s * 1000).toFixed(1)} ms`;
  if (s < 120) return `${s.toFixed(1)} s`;
  if (s < 7200) return `${(s / 60).toFixed(1)} min`;
  if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} d`;
}

export function minutes(m) {
  if (m === null || m === undefined) return '—';
  return m >= 60 && m % 60 === 0 ? `${m / 60} h` : `${m} min`;
}

// Load something; re-load when deps change or the refresh tick moves.
export function useLoad(fn, deps) {
  const { tick } = useContext(Refresh);
  const [state, setState] = useState({ data: null, error: null, loading: true });
  const [own, setOwn] = useState(0);
  useEffect(() => {
    let live = true;
    setState((s) => ({ ...s, loading: true }));
    fn().then((data) => live && setState({ data, error: null, loading: false }),
      (error) => live && setState({ data: null, error, loading: false }));
    return () => { live = false; };
  }, [...deps, tick, own]);
  const reload = useCallback(() => setOwn((n) => n + 1), []);
  return { ...state, reload };
}

export function ErrorNote({ error, title, showDetails = true }) {
  if (!error) return null;
  const details = showDetails ? (error.details || []).filter((d) => d && d.message) : [];
  return html`<div class="error" role="alert">
    <p><strong>${title || 'The server refused this'}:</strong> ${error.message}
      ${error.status ? html` <span class="muted">(HTTP ${error.status}${error.code ? `, ${error.code}` : ''})</span>` : ''}</p>
    ${details.length > 0 && html`<ul>${details.map((d) => html`<li><code>${d.path}</code>: ${d.message}</li>`)}</ul>`}
  </div>`;
}

export function Loading({ what }) {
  return html`<p class="muted" aria-live="polite">Loading ${what || ''}…</p>`;
}

export function Loaded({ state, what, children }) {
  if (state.error) return html`<${ErrorNote} error=${state.error} title=${`Could not load ${what}`} />`;
  if (state.data === null) return html`<${Loading} what=${what} />`;
  return html`<div class="loaded">${children(state.data)}</div>`;
}

export function Stat({ label, value, hint }) {
  return html`<div class="stat">
    <dt>${label}</dt>
    <dd><span class="value">${value}</span>${hint && html`<span class="hint">${hint}</span>`}</dd>
  </div>`;
}

export function Scroll({ children, label }) {
  return html`<div class="scroll" role="region" aria-label=${label} tabindex="0">${children}</div>`;
}

export function FieldError({ id, errors }) {
  if (!errors || !errors.length) return null;
  return html`<p class="field-error" id=${id}>${errors.map((e) => html`<span>${e}</span>`)}</p>`;
}

// The JSON path of an API error detail as a form key: "$.channels[1].waitMinutes" -> "channels[1].waitMinutes".
export function pathKey(path) {
  return String(path || '').replace(/^\$\.?/, '');
}

// Give each detail to the form field its path names (the longest field key
// that is the path or a parent of it); the rest go under "".
export function placeErrors(details, keys) {
  const out = {};
  for (const d of details || []) {
    const key = pathKey(d.path);
    let best = '';
    for (const k of keys) {
      if ((key === k || key.startsWith(`${k}.`) || key.startsWith(`${k}[`)) && k.length > best.length) best = k;
    }
    (out[best] = out[best] || []).push(best ? d.message : `${d.path}: ${d.message}`);
  }
  return out;
}

export function StatusBadge({ status }) {
  return html`<span class=${`badge badge-${status}`}>${status}</span>`;
}
