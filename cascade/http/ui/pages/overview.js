// Overview: what the server is doing now (GET /metrics, GET /readyz,
// snapshots) and over the last hour (GET /v1/stats/series).
import { html, useContext, useEffect } from '../lib.js';
import { get, ApiError } from '../api.js';
import { Metrics } from '../prom.js';
import { Auth, CHANNELS, Loaded, Stat, Scroll, num, pct, secs, useLoad, when, ErrorNote } from '../ui.js';
import { TimeChart } from './chart.js';
import { readSeries } from './series.js';

async function loadNow(admin) {
  const [text, ready, snaps] = await Promise.all([
    get('/metrics'),
    get('/readyz').then(() => true, (e) => (e.status === 503 ? false : Promise.reject(e))),
    admin ? get('/v1/admin/snapshots').catch((e) => ({ error: e })) : Promise.resolve(null),
  ]);
  return { m: Metrics.parse(text), ready, snaps };
}

async function loadSeries() {
  try {
    return { body: await get('/v1/stats/series', { minutes: 60, step: 60 }) };
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) return { missing: true };
    throw e;
  }
}

function Now({ m, ready, snaps }) {
  const started = m.sum('cascade_sends_started_total');
  const finished = m.by('cascade_sends_finished_total', 'outcome');
  const sig = (signal, where = {}) => m.sum('cascade_step_signals_total', { signal, ...where });
  const escalated = sig('escalated');
  const stopped = sig('stopped');
  const closed = (escalated || 0) + (stopped || 0);
  const lastSnap = m.sum('cascade_last_snapshot_timestamp_seconds');
  const snapAge = lastSnap ? Date.now() / 1000 - lastSnap : null;
  const snapList = snaps && !snaps.error ? snaps.snapshots : null;
  return html`
    <section aria-labelledby="now-sends">
      <h2 id="now-sends">Sends</h2>
      <dl class="stats">
        <${Stat} label="Active sends" value=${num(m.sum('cascade_active_sends'))} />
        <${Stat} label="Started since the server started" value=${num(started)} />
        ${Object.entries(finished).sort().map(([k, v]) => html`<${Stat} label=${`Finished ${k}`} value=${num(v)} />`)}
        <${Stat} label="Escalation rate" value=${pct(escalated, closed)}
          hint=${`${num(escalated)} windows escalated of ${num(closed)} that ended (escalated or stopped)`} />
      </dl>
    </section>
    <section aria-labelledby="now-channels">
      <h2 id="now-channels">Channels</h2>
      <${Scroll} label="Requests and engagement per channel"><table>
        <caption>Requests and engagement per channel, since the server started</caption>
        <thead><tr><th scope="col">channel</th><th scope="col">requested</th><th scope="col">delivered</th>
          <th scope="col">viewed</th><th scope="col">clicked</th><th scope="col">click rate</th>
          <th scope="col">failed</th><th scope="col">skipped</th><th scope="col">escalated</th></tr></thead>
        <tbody>${CHANNELS.map((c) => {
          const s = (signal) => sig(signal, { channel: c }) || 0;
          return html`<tr><th scope="row">${c}</th><td>${num(s('requested'))}</td><td>${num(s('delivered'))}</td>
            <td>${c === 'push' || c === 'sms' ? '—' : num(s('viewed'))}</td><td>${num(s('clicked'))}</td>
            <td>${pct(s('clicked'), s('requested'))}</td><td>${num(s('failed'))}</td><td>${num(s('skipped'))}</td>
            <td>${num(s('escalated'))}</td></tr>`;
        })}</tbody>
      </table><//>
    </section>
    <section aria-labelledby="now-timers">
      <h2 id="now-timers">Timers</h2>
      <dl class="stats">
        <${Stat} label="Timers pending" value=${num(m.sum('cascade_timers_pending'))} />
        <${Stat} label="Timer lateness p50" value=${secs(m.quantile('cascade_timer_lateness_seconds', 0.5))} />
        <${Stat} label="Timer lateness p99" value=${secs(m.quantile('cascade_timer_lateness_seconds', 0.99))}
          hint=${`${num(m.sum('cascade_timer_lateness_seconds_count'))} timers fired`} />
        <${Stat} label="Window watermark lag" value=${secs(m.sum('cascade_watermark_lag_seconds'))} />
        <${Stat} label="Event loop lag" value=${secs(m.sum('cascade_event_loop_lag_seconds'))} />
      </dl>
    </section>
    <section aria-labelledby="now-health">
      <h2 id="now-health">Journal and snapshots</h2>
      <dl class="stats">
        <${Stat} label="Ready" value=${ready ? 'yes' : 'no (recovering)'} />
        <${Stat} label="Journal records since start" value=${num(m.sum('cascade_journal_records_total'))} />
        <${Stat} label="Journal fsync p99" value=${secs(m.quantile('cascade_journal_fsync_duration_seconds', 0.99))} />
        <${Stat} label="Last snapshot" value=${lastSnap ? `${secs(Math.max(snapAge, 0))} ago` : 'none yet'}
          hint=${lastSnap ? when(new Date(lastSnap * 1000).toISOString()) : ''} />
        <${Stat} label="Last snapshot size" value=${`${num(m.sum('cascade_snapshot_bytes'))} bytes`}
          hint=${`written in ${secs(m.sum('cascade_snapshot_duration_seconds'))}`} />
        <${Stat} label="Recovery at start" value=${secs(m.sum('cascade_recovery_duration_seconds'))}
          hint=${`${num(m.sum('cascade_recovery_records_replayed'))} records replayed`} />
        ${snapList && html`<${Stat} label="Snapshot sets on disk" value=${num(snapList.length)} />`}
      </dl>
      ${snaps && snaps.error && html`<${ErrorNote} error=${snaps.error} title="Snapshots" />`}
    </section>`;
}

function Series({ body, missing }) {
  if (missing) {
    return html`<p class="note" role="status">Time series are not available: this server does not answer${' '}
      <code>GET /v1/stats/series</code> (404). The figures below come from <code>/metrics</code>.</p>`;
  }
  const s = readSeries(body);
  if (!s) return html`<p class="note" role="status">Time series: the server's answer has no points this page can read.</p>`;
  const latest = (vals) => `latest ${secs(vals.filter((v) => v !== null).slice(-1)[0] ?? null)}`;
  return html`<div class="charts">
    <${TimeChart} title="Sends started and finished per minute" xs=${s.xs}
      series=${[{ label: 'started', values: s.started },
        ...Object.entries(s.outcomes).filter(([, v]) => v.some((x) => x)).map(([k, v]) => ({ label: k, values: v }))]} />
    <${TimeChart} title="Requests per channel per minute" xs=${s.xs}
      series=${CHANNELS.map((c) => ({ label: c, values: s.channels[c].requested }))} />
    <${TimeChart} title="Engagement per channel per minute" xs=${s.xs}
      series=${CHANNELS.map((c) => ({ label: c, values: s.channels[c].engaged }))} />
    <${TimeChart} title="Timer lateness of the timers that fired (seconds)" xs=${s.xs}
      series=${[{ label: 'p50', values: s.p50, summary: latest(s.p50), points: true },
        { label: 'p99', values: s.p99, summary: latest(s.p99), points: true }]} />
  </div>`;
}

export function Overview() {
  const auth = useContext(Auth);
  const now = useLoad(() => loadNow(auth.canEdit), []);
  const series = useLoad(loadSeries, []);
  useEffect(() => { // figures move on their own under a real clock: read again every 10 s
    const timer = setInterval(() => { now.reload(); series.reload(); }, 10000);
    return () => clearInterval(timer);
  }, []);
  return html`<h1>Overview</h1>
    <p class="muted">Counters since this server process started (<code>/metrics</code>); charts over the last hour; read again every 10 s.${' '}
      <button type="button" class="link" onClick=${() => { now.reload(); series.reload(); }}>Refresh</button></p>
    <section aria-labelledby="hour"><h2 id="hour">The last hour</h2>
      <${Loaded} state=${series} what="time series">${(d) => html`<${Series} ...${d} />`}<//>
    </section>
    <${Loaded} state=${now} what="metrics">${(d) => html`<${Now} ...${d} />`}<//>`;
}
