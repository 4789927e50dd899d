// Sends: search (GET /v1/sends: recipient, template, campaign, status, with
// the cursor for older pages) and one send as a timeline: its steps (fired,
// window, deadline, signals) and, when the server gives it, its `history`.
import { html, useState, useContext } from '../lib.js';
import { get, del, seg } from '../api.js';
import { Auth, Refresh, ErrorNote, Loaded, Scroll, SEND_STATUSES, SIGNALS, StatusBadge, Time, minutes, useLoad, when } from '../ui.js';

const FILTERS = ['recipient', 'template', 'campaign', 'status'];

export function Sends({ query }) {
  const initial = Object.fromEntries(FILTERS.map((f) => [f, query.get(f) || '']));
  const [draft, setDraft] = useState(initial);
  const [filters, setFilters] = useState(initial);
  const [cursors, setCursors] = useState([null]); // the `before` of each page seen; last is the current page
  const before = cursors[cursors.length - 1];
  const page = useLoad(() => get('/v1/sends', { ...filters, before, limit: 25 }), [JSON.stringify(filters), before]);
  const search = (ev) => {
    ev.preventDefault();
    setFilters(draft);
    setCursors([null]);
    const q = new URLSearchParams(Object.entries(draft).filter(([, v]) => v)).toString();
    history.replaceState(null, '', `#/sends${q ? `?${q}` : ''}`);
  };
  const field = (name, label, extra = {}) => html`<div class="row">
    <label for=${`f-${name}`}>${label}</label>
    <input id=${`f-${name}`} value=${draft[name]} autocomplete="off" spellcheck="false" ...${extra}
      onInput=${(e) => setDraft({ ...draft, [name]: e.target.value })} />
  </div>`;
  return html`<h1>Sends</h1>
    <form class="filters" onSubmit=${search} role="search" aria-label="Search sends">
      ${field('recipient', 'Recipient id')}
      ${field('template', 'Template id')}
      ${field('campaign', 'Campaign id')}
      <div class="row">
        <label for="f-status">Status</label>
        <select id="f-status" value=${draft.status} onChange=${(e) => setDraft({ ...draft, status: e.target.value })}>
          <option value="">any</option>
          ${SEND_STATUSES.map((s) => html`<option value=${s}>${s}</option>`)}
        </select>
      </div>
      <div class="row"><button type="submit">Search</button></div>
    </form>
    <${Loaded} state=${page} what="sends">${({ sends, next }) => html`
      ${sends.length === 0 ? html`<p role="status">No sends match.</p>` : html`<${Scroll} label="Sends"><table class="sends">
        <caption>Sends, newest first${cursors.length > 1 ? ` (page ${cursors.length})` : ''}</caption>
        <thead><tr><th scope="col">send</th><th scope="col">status</th><th scope="col">template</th>
          <th scope="col">recipient</th><th scope="col">created</th><th scope="col">finished</th></tr></thead>
        <tbody>${sends.map((s) => html`<tr>
          <th scope="row"><a href="#/sends/${seg(s.id)}"><code>${s.id}</code></a></th>
          <td><${StatusBadge} status=${s.status} /></td>
          <td><a href="#/templates/${seg(s.template)}">${s.template}</a> v${s.templateVersion}</td>
          <td><a href="#/recipients/${seg(s.recipient)}">${s.recipient}</a></td>
          <td><${Time} iso=${s.createdAt} /></td><td><${Time} iso=${s.finishedAt} /></td></tr>`)}</tbody>
      </table><//>`}
      <p class="pager">
        ${cursors.length > 1 && html`<button type="button" class="secondary" onClick=${() => setCursors(cursors.slice(0, -1))}>Newer</button>`}
        ${next && html`<button type="button" class="secondary" onClick=${() => setCursors([...cursors, next])}>Older</button>`}
      </p>`}<//>`;
}

const AFTER = {
  start: () => 'at the start of the send',
  window_ended: (d) => `because step ${d.previousStep}'s window ended without ${d.stopCondition}`,
  skipped: (d) => `because step ${d.previousStep} was skipped (${d.reason})`,
  delivery_failed: (d) => `because step ${d.previousStep} failed (${d.reason})`,
};

export function describe(h) {
  const d = h.detail || {};
  switch (h.what) {
    case 'fired': return `fired on ${d.channel} ${(AFTER[d.after] || (() => d.after || ''))(d)}`.trim();
    case 'signal': return `${d.signal} received`;
    case 'window_ended': return `window ended without ${d.stopCondition}`;
    case 'skipped': return d.reason === 'throttled'
      ? `not started: throttled (at most ${d.limit} in ${minutes(d.windowMinutes)})`
      : `skipped on ${d.channel}: ${d.reason}`;
    case 'deferred': return `deferred until ${when(d.until)} (${d.reason})`;
    case 'delivery_retried': return `delivered after ${d.attempts} attempts (retries are in the server's log)`;
    case 'delivery_failed': return `delivery on ${d.channel} failed: ${d.reason}`;
    case 'stopped': return `chain stopped by ${d.signal}`;
    case 'cancelled': return 'send cancelled';
    case 'completed': return `send ${d.status || 'completed'}`;
    default: return h.detail ? `${h.what}: ${JSON.stringify(h.detail)}` : h.what;
  }
}

function StepCard({ s }) {
  const signals = Object.entries(s.signals || {}).filter(([k]) => !SIGNALS[s.channel] || SIGNALS[s.channel].includes(k));
  return html`<li class=${`tl-step tl-${s.status}`} data-step=${s.step}>
    <h3>Step ${s.step} · ${s.channel} <${StatusBadge} status=${s.status} /></h3>
    <dl class="kv">
      ${s.stopCondition && html`<dt>Waits for</dt><dd>${s.stopCondition} for ${minutes(s.waitMinutes)}</dd>`}
      <dt>Fired</dt><dd data-field="firedAt"><${Time} iso=${s.firedAt} /></dd>
      ${s.deadline && html`<dt>Deadline</dt><dd data-field="deadline"><${Time} iso=${s.deadline} /></dd>`}
      ${s.deferredUntil && html`<dt>Deferred until</dt><dd><${Time} iso=${s.deferredUntil} /></dd>`}
      ${s.reason && html`<dt>Reason</dt><dd>${s.reason}</dd>`}
      ${s.score !== undefined && s.score !== null && html`<dt>Score</dt><dd>${s.score}</dd>`}
      ${signals.map(([k, v]) => html`<dt>${k}</dt><dd data-field=${k}>${v ? html`<${Time} iso=${v} />` : 'not yet'}</dd>`)}
    </dl>
    <p class="muted">message <code>${s.messageId}</code></p>
  </li>`;
}

export function SendPage({ id }) {
  const auth = useContext(Auth);
  const { bump } = useContext(Refresh);
  const send = useLoad(() => get(`/v1/sends/${seg(id)}`), [id]);
  const [error, setError] = useState(null);
  const cancel = async () => {
    setError(null);
    try { await del(`/v1/sends/${seg(id)}`); bump(); } catch (e) { setError(e); }
  };
  return html`<h1>Send <code>${id}</code></h1>
    <${Loaded} state=${send} what="the send">${(v) => html`
      <dl class="kv summary">
        <dt>Status</dt><dd><${StatusBadge} status=${v.status} />${v.stoppedBy && ` by step ${v.stoppedBy.step}'s ${v.stoppedBy.signal}`}</dd>
        <dt>Template</dt><dd><a href="#/templates/${seg(v.template)}">${v.template}</a> version ${v.templateVersion}</dd>
        <dt>Recipient</dt><dd><a href="#/recipients/${seg(v.recipient)}">${v.recipient}</a></dd>
        ${v.campaign && html`<dt>Campaign</dt><dd><a href="#/campaigns/${seg(v.campaign)}">${v.campaign}</a></dd>`}
        ${v.order && html`<dt>Order</dt><dd>${v.order}</dd>`}
        <dt>Created</dt><dd><${Time} iso=${v.createdAt} /></dd>
        <dt>Finished</dt><dd><${Time} iso=${v.finishedAt} /></dd>
      </dl>
      ${auth.canEdit && v.status === 'active' && html`<p><button type="button" class="secondary" onClick=${cancel}>Cancel this send</button></p>`}
      <${ErrorNote} error=${error} title="Not cancelled" />
      <h2>Steps</h2>
      <ol class="timeline">${v.steps.map((s) => html`<${StepCard} s=${s} />`)}</ol>
      ${Array.isArray(v.history) && html`<h2>History</h2>
        <ol class="history">${v.history.map((h) => html`<li data-what=${h.what}>
          <${Time} iso=${h.at} /> ${h.step !== null && h.step !== undefined && html`<span class="pill">step ${h.step}</span>`}${' '}
          <span class="what">${describe(h)}</span></li>`)}</ol>`}`}<//>`;
}
