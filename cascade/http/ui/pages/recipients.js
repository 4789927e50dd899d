// Recipients: look one up (addresses, preferences, its sends), preview its
// in-app inbox and follow it live. Listing an inbox marks the listed
// messages delivered (API: In-app inbox), so the preview is loaded only
// when asked for; the live view is the inbox stream (SSE over fetch, with
// the API key in the header), shown as "not available" if the server lacks it.
import { html, useState, useEffect } from '../lib.js';
import { get, seg, stream } from '../api.js';
import { ErrorNote, Loaded, Scroll, Time, useLoad } from '../ui.js';

function Inbox({ id }) {
  const [page, setPage] = useState(null);
  const [error, setError] = useState(null);
  const load = async () => {
    setError(null);
    try { setPage(await get(`/v1/recipients/${seg(id)}/inbox`, { limit: 20 })); } catch (e) { setError(e); }
  };
  return html`<section aria-labelledby="inbox"><h2 id="inbox">Inbox</h2>
    <p class="note">Listing the inbox marks the listed messages <em>delivered</em>, as the recipient's own app would:
      that counts in metrics and stops a chain whose in-app step waits for <code>delivered</code>.</p>
    <p><button type="button" class="secondary" onClick=${load}>${page ? 'List again' : 'List the inbox'}</button></p>
    <${ErrorNote} error=${error} title="Inbox not listed" />
    ${page && html`<p role="status">${page.messages.length} message${page.messages.length === 1 ? '' : 's'} shown, ${page.unseen} unseen.</p>
      <${Scroll} label="Inbox"><table><thead><tr><th scope="col">created</th><th scope="col">template</th>
        <th scope="col">content</th><th scope="col">viewed</th><th scope="col">clicked</th></tr></thead>
      <tbody>${page.messages.map((m) => html`<tr><td><${Time} iso=${m.createdAt} /></td>
        <td><a href="#/sends/${seg(m.sendId)}">${m.template}</a></td>
        <td>${m.content.title && html`<strong>${m.content.title}</strong> `}${m.content.body || (!m.content.title && JSON.stringify(m.content))}</td>
        <td><${Time} iso=${m.viewedAt} /></td><td><${Time} iso=${m.clickedAt} /></td></tr>`)}</tbody></table><//>`}
  </section>`;
}

function Live({ id }) {
  const [on, setOn] = useState(false);
  const [state, setState] = useState({ unseen: null, events: [], error: null, open: false });
  useEffect(() => {
    if (!on) return undefined;
    const abort = new AbortController();
    setState({ unseen: null, events: [], error: null, open: true });
    stream(`/v1/recipients/${seg(id)}/inbox/stream`, (event, data) => {
      let value = data;
      try { value = JSON.parse(data); } catch { /* plain text */ }
      setState((s) => (event === 'unseen'
        ? { ...s, unseen: typeof value === 'object' && value !== null ? value.unseen : value }
        : { ...s, events: [{ event, value, at: new Date().toISOString() }, ...s.events].slice(0, 20) }));
    }, abort.signal).then(() => setState((s) => ({ ...s, open: false })),
      (error) => setState((s) => ({ ...s, error, open: false })));
    return () => abort.abort();
  }, [on, id]);
  const missing = state.error && state.error.status === 404;
  return html`<section aria-labelledby="live"><h2 id="live">Live inbox</h2>
    <p><button type="button" class="secondary" aria-pressed=${on ? 'true' : 'false'} onClick=${() => setOn(!on)}>
      ${on ? 'Stop following' : 'Follow live'}</button>
      ${on && state.open && html` <span role="status">connected; unseen: <strong>${state.unseen ?? '…'}</strong></span>`}</p>
    ${missing ? html`<p class="note" role="status">Live updates are not available: this server does not answer${' '}
        <code>GET /v1/recipients/{id}/inbox/stream</code>.</p>`
      : html`<${ErrorNote} error=${state.error} title="Live inbox stopped" />`}
    ${state.events.length > 0 && html`<ol class="history">${state.events.map((e) => html`<li>
      <${Time} iso=${e.at} /> <span class="pill">${e.event}</span>
      <span>${typeof e.value === 'object' ? (e.value.content && e.value.content.title) || e.value.messageId || JSON.stringify(e.value) : e.value}</span></li>`)}</ol>`}
  </section>`;
}

function Recipient({ id }) {
  const r = useLoad(() => get(`/v1/recipients/${seg(id)}`), [id]);
  return html`<${Loaded} state=${r} what="the recipient">${(v) => html`
    <dl class="kv summary">
      <dt>Email</dt><dd>${v.email || '—'}</dd>
      <dt>Phone</dt><dd>${v.phone || '—'}</dd>
      <dt>Push tokens</dt><dd>${v.pushTokens && v.pushTokens.length ? v.pushTokens.join(', ') : '—'}</dd>
      ${v.webPush && html`<dt>Web Push subscriptions</dt><dd>${v.webPush.length}</dd>`}
      ${v.timezone && html`<dt>Time zone</dt><dd>${v.timezone}</dd>`}
      <dt>Preferences</dt><dd>${Object.keys(v.preferences || {}).length
        ? Object.entries(v.preferences).map(([k, on]) => `${k}: ${on ? 'on' : 'opted out'}`).join(', ') : 'every channel on'}</dd>
    </dl>
    <p><a href="#/sends?recipient=${seg(id)}">Sends to ${id}</a></p>`}<//>
    <${Inbox} id=${id} key=${`inbox-${id}`} />
    <${Live} id=${id} key=${`live-${id}`} />`;
}

export function Recipients({ id }) {
  const [draft, setDraft] = useState(id || '');
  const go = (ev) => {
    ev.preventDefault();
    if (draft.trim()) location.hash = `#/recipients/${seg(draft.trim())}`;
  };
  return html`<h1>Recipients${id ? html` · <code>${id}</code>` : ''}</h1>
    <form class="filters" role="search" aria-label="Find a recipient" onSubmit=${go}>
      <div class="row"><label for="r-id">Recipient id</label>
        <input id="r-id" value=${draft} autocomplete="off" spellcheck="false" onInput=${(e) => setDraft(e.target.value)} /></div>
      <div class="row"><button type="submit">Look up</button></div>
    </form>
    ${id && html`<${Recipient} id=${id} key=${id} />`}`;
}
