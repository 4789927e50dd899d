// Templates: the list, and one template's page (its current version, its
// steps, the versions seen, links to edit it, its funnel and its sends).
import { html, useContext } from '../lib.js';
import { get, seg } from '../api.js';
import { Auth, Loaded, Scroll, Time, minutes, useLoad } from '../ui.js';

export function stepsSummary(t) {
  return t.channels.map((c) => c.channel).join(t.config && t.config.sequenceEnabled ? ' → ' : ' + ');
}

export function Templates() {
  const auth = useContext(Auth);
  const list = useLoad(() => get('/v1/templates'), []);
  return html`<h1>Templates</h1>
    ${auth.canEdit ? html`<p><a class="button" href="#/templates/new">New template</a></p>`
      : html`<p class="muted">This key can read templates; editing needs an admin key.</p>`}
    <${Loaded} state=${list} what="templates">${({ templates }) => (templates.length === 0
      ? html`<p>No templates yet.</p>`
      : html`<${Scroll} label="Templates"><table>
        <caption>${templates.length} templates, current versions</caption>
        <thead><tr><th scope="col">id</th><th scope="col">name</th><th scope="col">steps</th>
          <th scope="col">version</th><th scope="col">updated</th><th scope="col"><span class="sr-only">links</span></th></tr></thead>
        <tbody>${templates.map((t) => html`<tr>
          <th scope="row"><a href="#/templates/${seg(t.id)}">${t.id}</a></th><td>${t.name}</td>
          <td>${stepsSummary(t)}</td><td>${t.version}</td><td><${Time} iso=${t.updatedAt} /></td>
          <td class="links"><a href="#/templates/${seg(t.id)}/funnel">funnel</a>
            ${auth.canEdit && html` · <a href="#/templates/${seg(t.id)}/edit">edit</a>`}</td></tr>`)}</tbody>
      </table><//>`)}<//>`;
}

export function RuleList({ config }) {
  const items = [];
  if (config.order === 'engagement') items.push('ordered for each recipient by their engagement with each channel');
  if (config.throttle) items.push(`throttled: at most ${config.throttle.limit} sends per recipient per ${minutes(config.throttle.windowMinutes)}`);
  if (config.quietHours) {
    const q = config.quietHours;
    items.push(`quiet hours ${q.start}–${q.end} (recipient's time zone) for ${(q.channels || ['push', 'email', 'sms']).join(', ')}`);
  }
  return items.length ? html`<ul class="rules">${items.map((i) => html`<li>${i}</li>`)}</ul>` : null;
}

export function StepList({ template }) {
  const seq = template.config && template.config.sequenceEnabled;
  return html`<ol class="steps">${template.channels.map((c, i) => {
    const terminal = i === template.channels.length - 1;
    return html`<li><strong>${c.channel}</strong>
      ${seq && !terminal && html` — waits ${minutes(c.waitMinutes)} for <em>${c.stopCondition}</em>, else the next step fires`}
      ${seq && terminal && ' — terminal: fires last, no window'}
      ${!seq && ' — fires at send time'}
      <pre class="content">${JSON.stringify(c.content || {}, null, 1)}</pre></li>`;
  })}</ol>`;
}

export function TemplatePage({ id }) {
  const auth = useContext(Auth);
  const t = useLoad(() => get(`/v1/templates/${seg(id)}`), [id]);
  return html`<h1>Template <code>${id}</code></h1>
    <${Loaded} state=${t} what="the template">${(tv) => html`
      <p class="actions"><a href="#/templates/${seg(id)}/funnel">Funnel</a>${' · '}<a href="#/sends?template=${seg(id)}">Sends</a>
        ${auth.canEdit && html` · <a href="#/templates/${seg(id)}/edit">Edit</a>`}</p>
      <${Versions} template=${tv} />
      <h2>Steps (${tv.config.sequenceEnabled ? 'a sequence' : 'all at once'})</h2>
      <${RuleList} config=${tv.config} />
      <${StepList} template=${tv} />`}<//>`;
}

// The API answers a template's current version only; older versions are
// named by number (active sends keep theirs, and their views say which).
export function Versions({ template, saved }) {
  return html`<section aria-labelledby="versions"><h2 id="versions">Versions</h2>
    <p class="current-version">Version <strong>${template.version}</strong> is current, since <${Time} iso=${template.updatedAt} />;
      first created <${Time} iso=${template.createdAt} />.
      ${template.version === 2 && ' Version 1 was replaced; sends that started on it finish on it.'}
      ${template.version > 2 && ` Versions 1–${template.version - 1} were replaced; sends that started on them finish on them.`}</p>
    ${saved && saved.length > 0 && html`<${Scroll} label="Versions saved here"><table>
      <caption>Saved from this page</caption>
      <thead><tr><th scope="col">version</th><th scope="col">saved</th><th scope="col">steps</th></tr></thead>
      <tbody>${saved.map((v) => html`<tr><td>${v.version}</td><td><${Time} iso=${v.updatedAt} /></td>
        <td>${stepsSummary(v)}</td></tr>`)}</tbody></table><//>`}
  </section>`;
}
