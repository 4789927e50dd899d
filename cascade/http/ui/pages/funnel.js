// A template's funnel (GET /v1/templates/{id}/metrics), also used for a
// campaign's metrics block: per step requested → delivered → viewed →
// clicked as bars scaled to the largest figure, the way each window ended
// (stopped by engagement, or escalated to the next step), and the numbers
// in a table. A template ordered by engagement is counted per channel
// (rows with "step": null), and is shown so.
import { html } from '../lib.js';
import { get, seg } from '../api.js';
import { Loaded, Scroll, Stat, num, pct, secs, useLoad } from '../ui.js';

const STAGES = ['requested', 'delivered', 'viewed', 'clicked'];
const COLUMNS = ['requested', 'delivered', 'viewed', 'clicked', 'stopped', 'escalated', 'failed', 'skipped'];
const stepName = (s) => (s.step === null || s.step === undefined ? s.channel : `Step ${s.step} · ${s.channel}`);
// Rows of a per-channel template are found by channel, the others by step number.
const rowKey = (s) => (s.step === null || s.step === undefined ? `channel:${s.channel}` : `step:${s.step}`);

function Bar({ label, value, max, kind }) {
  const width = value === null || !max ? 0 : Math.max((100 * value) / max, value ? 0.5 : 0);
  return html`<div class="bar-row">
    <span class="bar-label">${label}</span>
    <span class="bar-track"><span class=${`bar bar-${kind || label}`} style=${{ width: `${width}%` }}></span></span>
    <span class="bar-value">${value === null ? 'n/a' : num(value)}</span>
  </div>`;
}

// Time from a step firing to its first view or click, per step number, over
// the newest sends (GET /v1/sends, one page): the metrics block has counts only.
export function useEngagementTimes(query) {
  return useLoad(async () => {
    const { sends } = await get('/v1/sends', { ...query, limit: 200 });
    const bySteps = {};
    for (const s of sends) {
      for (const st of s.steps) {
        const at = [st.signals.viewed, st.signals.clicked].filter(Boolean).map(Date.parse);
        if (!st.firedAt || !at.length) continue;
        const took = (Math.min(...at) - Date.parse(st.firedAt)) / 1000;
        for (const key of [`step:${st.step}`, `channel:${st.channel}`]) (bySteps[key] = bySteps[key] || []).push(took);
      }
    }
    const out = {};
    for (const [step, xs] of Object.entries(bySteps)) {
      xs.sort((a, b) => a - b);
      const q = (f) => xs[Math.max(0, Math.ceil(f * xs.length) - 1)]; // nearest rank
      out[step] = { n: xs.length, p50: q(0.5), p90: q(0.9) };
    }
    return { sends: sends.length, steps: out };
  }, [JSON.stringify(query)]);
}

function EngagementTimes({ state, steps }) {
  if (!state.data) return null;
  const { sends, steps: times } = state.data;
  return html`<${Scroll} label="Time to engagement"><table class="numbers">
    <caption>Time from firing to the first view or click, over the newest ${num(sends)} sends</caption>
    <thead><tr><th scope="col">step</th><th scope="col">channel</th><th scope="col">engaged</th>
      <th scope="col">median</th><th scope="col">90th percentile</th></tr></thead>
    <tbody>${steps.map((s) => {
      const t = times[rowKey(s)];
      return html`<tr><th scope="row">${s.step ?? '—'}</th><td>${s.channel}</td><td>${t ? num(t.n) : 0}</td>
        <td>${t ? secs(t.p50) : '—'}</td><td>${t ? secs(t.p90) : '—'}</td></tr>`;
    })}</tbody></table><//>`;
}

export function FunnelChart({ metrics, times }) {
  const steps = metrics.steps || [];
  const columns = steps.some((s) => typeof s.deferred === 'number') ? [...COLUMNS, 'deferred'] : COLUMNS;
  const max = Math.max(1, ...steps.flatMap((s) => STAGES.map((k) => s[k] || 0)));
  const sends = metrics.sends || {};
  return html`
    <dl class="stats">
      ${Object.entries(sends).map(([k, v]) => html`<${Stat} label=${`Sends ${k}`} value=${num(v)} />`)}
    </dl>
    ${steps.length === 0 ? html`<p>No sends yet.</p>` : html`<div class="funnel">${steps.map((s) => {
      const ended = (s.stopped || 0) + (s.escalated || 0);
      return html`<section class="funnel-step" aria-label=${stepName(s).replace(' · ', ', ')}>
        <h3>${stepName(s)}</h3>
        ${STAGES.map((k) => html`<${Bar} label=${k} value=${s[k]} max=${max} />`)}
        ${ended === 0 ? html`<p class="split-caption">No window has ended on this step (a terminal step has none).</p>` : html`
        <p class="split-caption">Windows that ended: ${num(ended)} — stopped ${num(s.stopped)} (${pct(s.stopped, ended)}),
          escalated ${num(s.escalated)} (${pct(s.escalated, ended)})</p>
        <div class="split" aria-hidden="true">
          <span class="bar-stopped" style=${{ flexGrow: s.stopped || 0 }}></span>
          <span class="bar-escalated" style=${{ flexGrow: s.escalated || 0 }}></span>
        </div>`}
      </section>`;
    })}</div>
    <${Scroll} label="Funnel numbers"><table class="numbers">
      <caption>Funnel numbers per ${steps.every((s) => s.step === null) ? 'channel (ordered by engagement, so step numbers differ from send to send)' : 'step'} (viewed is n/a for channels that cannot emit it)</caption>
      <thead><tr><th scope="col">step</th><th scope="col">channel</th>${columns.map((c) => html`<th scope="col">${c}</th>`)}</tr></thead>
      <tbody>${steps.map((s) => html`<tr><th scope="row">${s.step ?? '—'}</th><td>${s.channel}</td>
        ${columns.map((c) => html`<td data-col=${c}>${s[c] === null || s[c] === undefined ? 'n/a' : num(s[c])}</td>`)}</tr>`)}</tbody>
    </table><//>
    ${times && html`<${EngagementTimes} state=${times} steps=${steps} />`}`}`;
}

export function Funnel({ id }) {
  const m = useLoad(() => get(`/v1/templates/${seg(id)}/metrics`), [id]);
  const times = useEngagementTimes({ template: id });
  return html`<h1>Funnel of <code>${id}</code></h1>
    <p class="actions"><a href="#/templates/${seg(id)}">Template</a> · <a href="#/sends?template=${seg(id)}">Sends</a></p>
    <${Loaded} state=${m} what="the funnel">${(metrics) => html`<${FunnelChart} metrics=${metrics} times=${times} />`}<//>`;
}
