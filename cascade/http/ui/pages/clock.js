// The engine's clock in the header; under the manual clock (admin keys),
// a control that advances it (POST /v1/admin/clock {"advanceSeconds": N})
// and then makes every page read again.
import { html, useState, useContext } from '../lib.js';
import { post } from '../api.js';
import { Refresh, Time, ErrorNote } from '../ui.js';

const STEPS = [[60, '1 minute'], [300, '5 minutes'], [600, '10 minutes'], [1800, '30 minutes'],
  [3600, '1 hour'], [14400, '4 hours'], [86400, '1 day']];

export function ClockControl({ initial }) {
  const { bump } = useContext(Refresh);
  const [clock, setClock] = useState(initial);
  const [by, setBy] = useState('300');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const advance = async (ev) => {
    ev.preventDefault();
    setBusy(true);
    setError(null);
    try {
      setClock(await post('/v1/admin/clock', { advanceSeconds: Number(by) }));
      bump();
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  };
  return html`<section class="clock" aria-label="Clock">
    <p><span class="muted">Clock (${clock.mode})</span> <output id="clock-now" aria-live="polite"><${Time} iso=${clock.now} /></output></p>
    ${clock.mode === 'manual' && html`<form onSubmit=${advance} class="inline">
      <label for="advance-by">Advance by</label>
      <select id="advance-by" value=${by} onChange=${(e) => setBy(e.target.value)}>
        ${STEPS.map(([s, label]) => html`<option value=${String(s)}>${label}</option>`)}
      </select>
      <button type="submit" disabled=${busy}>${busy ? 'Advancing…' : 'Advance clock'}</button>
    </form>`}
    <${ErrorNote} error=${error} title="Clock not moved" />
  </section>`;
}
