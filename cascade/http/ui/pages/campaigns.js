// Campaigns: the list, creation from a CSV upload (with upload progress and
// the rows the server rejected), and one campaign: status, fan-out progress
// and the funnel of its sends (its metrics block).
import { html, useState, useEffect, useContext } from '../lib.js';
import { get, del, seg, upload } from '../api.js';
import { Auth, Refresh, ErrorNote, FieldError, Loaded, Scroll, StatusBadge, Time, num, placeErrors, useLoad } from '../ui.js';
import { FunnelChart, useEngagementTimes } from './funnel.js';

function Create({ templates }) {
  const { bump } = useContext(Refresh);
  const [template, setTemplate] = useState(templates[0] ? templates[0].id : '');
  const [name, setName] = useState('');
  const [at, setAt] = useState('');
  const [file, setFile] = useState(null);
  const [progress, setProgress] = useState(null);
  const [error, setError] = useState(null);
  const [errors, setErrors] = useState({});
  const [created, setCreated] = useState(null);
  const submit = async (ev) => {
    ev.preventDefault();
    setError(null);
    setErrors({});
    setCreated(null);
    if (!file) { setErrors({ file: ['choose a CSV file'] }); return; }
    setProgress({ loaded: 0, total: file.size });
    try {
      const scheduledAt = at ? new Date(`${at}Z`).toISOString() : undefined;
      const answer = await upload('/v1/campaigns', { template, name: name.trim(), scheduledAt }, file, 'text/csv',
        (loaded, total) => setProgress({ loaded, total }));
      setCreated(answer);
      bump();
    } catch (e) {
      setErrors(placeErrors(e.details, ['template', 'name', 'scheduledAt']));
      setError(e);
    } finally {
      setProgress(null);
    }
  };
  return html`<section aria-labelledby="new-campaign"><h2 id="new-campaign">New campaign from a CSV</h2>
    <form class="campaign-form" onSubmit=${submit} novalidate>
      <p class="hint">A header row with <code>recipient</code> and optional <code>email</code>, <code>phone</code>,${' '}
        <code>push_token</code>; every other column becomes that row's data (<code>order.id</code> nests).</p>
      <div class="row"><label for="c-template">Template</label>
        <select id="c-template" value=${template} onChange=${(e) => setTemplate(e.target.value)}>
          ${templates.map((t) => html`<option value=${t.id}>${t.id} (v${t.version})</option>`)}
        </select><${FieldError} id="c-template-error" errors=${errors.template} /></div>
      <div class="row"><label for="c-name">Name</label>
        <input id="c-name" value=${name} onInput=${(e) => setName(e.target.value)} />
        <${FieldError} id="c-name-error" errors=${errors.name} /></div>
      <div class="row"><label for="c-at">Start at (UTC; empty: now)</label>
        <input id="c-at" type="datetime-local" step="1" value=${at} onInput=${(e) => setAt(e.target.value)} />
        <${FieldError} id="c-at-error" errors=${errors.scheduledAt} /></div>
      <div class="row"><label for="c-file">CSV file</label>
        <input id="c-file" type="file" accept=".csv,text/csv" onChange=${(e) => setFile(e.target.files[0] || null)} />
        <${FieldError} id="c-file-error" errors=${errors.file} /></div>
      <p><button type="submit" disabled=${progress !== null || !template}>Upload and create</button></p>
      ${progress && html`<p class="progress-line"><label for="c-progress">Uploading</label>
        <progress id="c-progress" max=${progress.total || 1} value=${progress.loaded}></progress>
        ${num(progress.loaded)} of ${num(progress.total)} bytes</p>`}
      <${ErrorNote} error=${error} title="No campaign created" />
      ${created && html`<div class="ok" role="status">
        <p>Created <a href="#/campaigns/${seg(created.id)}"><code>${created.id}</code></a>: ${created.status},
          ${num(created.recipients)} recipients, ${num(created.rejectedRows)} rows rejected.</p>
        ${created.errors.length > 0 && html`<ul>${created.errors.map((r) => html`<li>row ${r.row}: ${r.message}</li>`)}</ul>`}
      </div>`}
    </form></section>`;
}

export function Campaigns() {
  const auth = useContext(Auth);
  const list = useLoad(() => get('/v1/campaigns'), []);
  const templates = useLoad(() => (auth.canEdit ? get('/v1/templates') : Promise.resolve(null)), [auth.canEdit]);
  return html`<h1>Campaigns</h1>
    ${auth.canEdit ? html`<${Loaded} state=${templates} what="templates">${(t) => (t.templates.length
      ? html`<${Create} templates=${t.templates} />` : html`<p>Create a template first.</p>`)}<//>`
      : html`<p class="muted">Creating a campaign needs an admin key here.</p>`}
    <section aria-labelledby="campaign-list"><h2 id="campaign-list">Campaigns, newest first</h2>
    <${Loaded} state=${list} what="campaigns">${({ campaigns }) => (campaigns.length === 0 ? html`<p>No campaigns yet.</p>`
      : html`<${Scroll} label="Campaigns"><table>
        <thead><tr><th scope="col">campaign</th><th scope="col">name</th><th scope="col">status</th><th scope="col">template</th>
          <th scope="col">started / recipients</th><th scope="col">scheduled</th></tr></thead>
        <tbody>${campaigns.map((c) => html`<tr><th scope="row"><a href="#/campaigns/${seg(c.id)}"><code>${c.id}</code></a></th>
          <td>${c.name || '—'}</td><td><${StatusBadge} status=${c.status} /></td><td>${c.template} v${c.templateVersion}</td>
          <td>${num(c.sendsStarted)} / ${num(c.recipients)}</td><td><${Time} iso=${c.scheduledAt} /></td></tr>`)}</tbody>
      </table><//>`)}<//></section>`;
}

export function CampaignPage({ id }) {
  const auth = useContext(Auth);
  const { bump } = useContext(Refresh);
  const c = useLoad(() => get(`/v1/campaigns/${seg(id)}`), [id]);
  const times = useEngagementTimes({ campaign: id });
  const [error, setError] = useState(null);
  const running = c.data && c.data.status === 'running';
  useEffect(() => {
    if (!running) return undefined;
    const timer = setTimeout(c.reload, 1000); // fan-out progress while it runs
    return () => clearTimeout(timer);
  }, [running, c.data]);
  const cancel = async () => {
    setError(null);
    try { await del(`/v1/campaigns/${seg(id)}`); bump(); } catch (e) { setError(e); }
  };
  return html`<h1>Campaign <code>${id}</code></h1>
    <${Loaded} state=${c} what="the campaign">${(v) => html`
      <dl class="kv summary">
        <dt>Status</dt><dd><${StatusBadge} status=${v.status} />${v.problem && ` — ${v.problem}`}</dd>
        <dt>Name</dt><dd>${v.name || '—'}</dd>
        <dt>Template</dt><dd><a href="#/templates/${seg(v.template)}">${v.template}</a> version ${v.templateVersion}</dd>
        <dt>Scheduled</dt><dd><${Time} iso=${v.scheduledAt} /></dd>
        <dt>Finished</dt><dd><${Time} iso=${v.finishedAt} /></dd>
        <dt>Rejected rows</dt><dd>${num(v.rejectedRows)}</dd>
      </dl>
      <p class="progress-line"><label for="fanout">Sends started</label>
        <progress id="fanout" max=${v.recipients || 1} value=${v.sendsStarted}></progress>
        <span>${num(v.sendsStarted)} of ${num(v.recipients)}</span></p>
      <p><a href="#/sends?campaign=${seg(v.id)}">Its sends</a></p>
      ${auth.canEdit && v.status !== 'cancelled' && html`<p><button type="button" class="secondary" onClick=${cancel}>Cancel campaign</button></p>`}
      <${ErrorNote} error=${error} title="Not cancelled" />
      <h2>Funnel</h2>
      <${FunnelChart} metrics=${v.metrics} times=${times} />`}<//>`;
}
