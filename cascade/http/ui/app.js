// The dashboard's shell: sign-in, the header (navigation, the clock and
// its manual control), and hash routing to one page module each.
import { html, render, useState, useEffect, useCallback } from './lib.js';
import { session, signIn, signOut, whoami } from './api.js';
import { Auth, Refresh, ErrorNote } from './ui.js';
import { ClockControl } from './pages/clock.js';
import { Overview } from './pages/overview.js';
import { Templates, TemplatePage } from './pages/templates.js';
import { Editor } from './pages/editor.js';
import { Funnel } from './pages/funnel.js';
import { Sends, SendPage } from './pages/sends.js';
import { Campaigns, CampaignPage } from './pages/campaigns.js';
import { Recipients } from './pages/recipients.js';

const NAV = [
  ['overview', 'Overview'], ['templates', 'Templates'], ['sends', 'Sends'],
  ['campaigns', 'Campaigns'], ['recipients', 'Recipients'],
];

function parseHash() {
  const raw = decodeURI(location.hash.replace(/^#\/?/, ''));
  const [path, query] = raw.split('?');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  return { parts: parts.length ? parts : ['overview'], query: new URLSearchParams(query || '') };
}

function useRoute() {
  const [route, setRoute] = useState(parseHash);
  useEffect(() => {
    const on = () => setRoute(parseHash());
    addEventListener('hashchange', on);
    return () => removeEventListener('hashchange', on);
  }, []);
  return route;
}

function page(route) {
  const [name, id, sub] = route.parts;
  if (name === 'templates' && id === 'new') return html`<${Editor} />`;
  if (name === 'templates' && id && sub === 'edit') return html`<${Editor} id=${id} />`;
  if (name === 'templates' && id && sub === 'funnel') return html`<${Funnel} id=${id} />`;
  if (name === 'templates' && id) return html`<${TemplatePage} id=${id} />`;
  if (name === 'templates') return html`<${Templates} />`;
  if (name === 'sends' && id) return html`<${SendPage} id=${id} />`;
  if (name === 'sends') return html`<${Sends} query=${route.query} />`;
  if (name === 'campaigns' && id) return html`<${CampaignPage} id=${id} />`;
  if (name === 'campaigns') return html`<${Campaigns} />`;
  if (name === 'recipients') return html`<${Recipients} id=${id} />`;
  if (name === 'overview') return html`<${Overview} />`;
  return html`<h1>Not found</h1><p>No page <code>#/${route.parts.join('/')}</code>. <a href="#/overview">Overview</a></p>`;
}

function SignIn({ error, onKey }) {
  const [key, setKey] = useState('');
  const submit = (ev) => { ev.preventDefault(); if (key.trim()) onKey(key.trim()); };
  return html`<main class="signin" id="main">
    <h1>cascade</h1>
    <form onSubmit=${submit} aria-describedby="signin-help">
      <p id="signin-help">Sign in with an API key. A <code>read</code> key sees everything;
        an <code>admin</code> key also edits templates and moves a manual clock. The key is kept
        in this tab only (sessionStorage).</p>
      <label for="api-key">API key</label>
      <input id="api-key" type="password" autocomplete="current-password" value=${key}
        onInput=${(e) => setKey(e.target.value)} required />
      <button type="submit">Sign in</button>
      <${ErrorNote} error=${error} title="Not signed in" />
    </form>
  </main>`;
}

function Shell({ auth, onSignOut, signedIn }) {
  const route = useRoute();
  useEffect(() => { // the sign-in form is gone: put keyboard focus at the start of the content
    if (signedIn) document.getElementById('main').focus();
  }, []);
  const [tick, setTick] = useState(0);
  const bump = useCallback(() => setTick((n) => n + 1), []);
  const current = route.parts[0];
  useEffect(() => {
    const h = document.querySelector('main h1');
    document.title = h ? `${h.textContent} · cascade` : 'cascade';
  });
  return html`<${Auth.Provider} value=${auth}><${Refresh.Provider} value=${{ tick, bump }}>
    <a class="skip" href="#main" onClick=${(e) => { e.preventDefault(); document.getElementById('main').focus(); }}>Skip to content</a>
    <header class="top">
      <div class="brand"><a href="#/overview">cascade</a></div>
      <nav aria-label="Main">
        <ul>${NAV.map(([id, label]) => html`<li><a href="#/${id}" aria-current=${current === id ? 'page' : undefined}>${label}</a></li>`)}</ul>
      </nav>
      <div class="who">
        <span class="role">${{ open: 'no keys configured', admin: 'admin key', read: 'read-only key' }[auth.role]}</span>
        ${auth.role !== 'open' && html`<button type="button" class="link" onClick=${onSignOut}>Sign out</button>`}
      </div>
      ${auth.clock && html`<${ClockControl} initial=${auth.clock} />`}
    </header>
    <main id="main" tabindex="-1">${page(route)}</main>
  <//><//>`;
}

function App() {
  const [state, setState] = useState({ auth: null, error: null, checking: true });
  const check = useCallback(() => {
    setState((s) => ({ ...s, checking: true }));
    whoami().then((auth) => setState({ auth, error: null, checking: false }),
      (error) => {
        const hadKey = Boolean(session.key);
        if (error.status === 401 && hadKey) signOut();
        // No key yet and the server wants one: just the sign-in form, no error.
        setState({ auth: null, error: error.status === 401 && !hadKey ? null : error, checking: false });
      });
  }, []);
  useEffect(check, []);
  if (state.checking && !state.auth) return html`<p class="muted">Connecting…</p>`;
  if (!state.auth) {
    return html`<${SignIn} error=${state.error} onKey=${(key) => {
      signIn(key);
      whoami().then((auth) => setState({ auth, error: null, checking: false, signedIn: true }), (error) => {
        signOut();
        setState({ auth: null, error, checking: false });
      });
    }} />`;
  }
  return html`<${Shell} auth=${state.auth} signedIn=${Boolean(state.signedIn)} onSignOut=${() => { signOut(); setState({ auth: null, error: null, checking: false }); }} />`;
}

render(html`<${App} />`, document.getElementById('app'));
