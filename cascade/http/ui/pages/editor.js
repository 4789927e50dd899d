// The sequence editor. It offers only valid choices: one step per channel,
// a stop condition its channel can emit, one of the six windows, and no
// condition or window on the terminal step. What it cannot know (the id's
// spelling, a one-step sequence, ...) the API answers with 422, and each
// problem is shown at the field its JSON path names.
import { html, useState, useEffect, useContext } from '../lib.js';
import { get, put, seg, ApiError } from '../api.js';
import { Auth, CHANNELS, SIGNALS, WINDOWS, ErrorNote, FieldError, Loading, minutes, placeErrors } from '../ui.js';
import { Versions } from './templates.js';

let nextKey = 1;

function defaultCondition(channel) {
  return SIGNALS[channel].includes('viewed') ? 'viewed' : 'clicked';
}

function newStep(channel) {
  return { key: nextKey++, channel, stopCondition: defaultCondition(channel), waitMinutes: 30,
    contentText: JSON.stringify({ title: '', body: '' }, null, 1) };
}

const QUIET_CHANNELS = ['push', 'email', 'sms']; // in-app is never deferred (API: rule 12)

function rules(config) {
  const { order, throttle, quietHours } = config;
  return {
    order: order === 'engagement' ? 'engagement' : 'template',
    throttle: throttle ? { on: true, limit: String(throttle.limit), windowMinutes: String(throttle.windowMinutes) }
      : { on: false, limit: '3', windowMinutes: '60' },
    quiet: quietHours ? { on: true, start: quietHours.start, end: quietHours.end,
      channels: quietHours.channels || QUIET_CHANNELS }
      : { on: false, start: '22:00', end: '08:00', channels: QUIET_CHANNELS },
  };
}

function fromTemplate(t) {
  const { sequenceEnabled, order, throttle, quietHours, ...otherConfig } = t.config || {};
  return {
    ...rules({ order, throttle, quietHours }),
    id: t.id, name: t.name, sequence: Boolean(sequenceEnabled), otherConfig,
    steps: t.channels.map((c) => ({ key: nextKey++, channel: c.channel,
      stopCondition: c.stopCondition || defaultCondition(c.channel), waitMinutes: c.waitMinutes || 30,
      contentText: JSON.stringify(c.content || {}, null, 1) })),
  };
}

const BLANK = () => ({ ...rules({}), id: '', name: '', sequence: true, otherConfig: {}, steps: [newStep('inapp'), newStep('push')] });

function fieldKeys(steps) {
  const keys = ['id', 'name', 'config', 'channels', 'config.order', 'config.throttle', 'config.throttle.limit',
    'config.throttle.windowMinutes', 'config.quietHours', 'config.quietHours.start', 'config.quietHours.end',
    'config.quietHours.channels'];
  steps.forEach((_, i) => {
    for (const f of ['', '.channel', '.stopCondition', '.waitMinutes', '.content']) keys.push(`channels[${i}]${f}`);
  });
  return keys;
}

// Which steps carry a stop condition and a window: in a sequence every step
// but the terminal one; ordered by engagement, every step (the one that ends
// up last for a recipient ignores them).
function windowed(form, terminal) {
  return form.sequence && (!terminal || form.order === 'engagement');
}

function body(form) {
  const last = form.steps.length - 1;
  const problems = [];
  const channels = form.steps.map((s, i) => {
    const out = { channel: s.channel };
    if (windowed(form, i === last)) {
      out.stopCondition = s.stopCondition;
      out.waitMinutes = Number(s.waitMinutes);
    }
    try {
      const content = JSON.parse(s.contentText || '{}');
      if (content === null || typeof content !== 'object' || Array.isArray(content)) throw new Error('it is not an object');
      out.content = content;
    } catch (e) {
      problems.push({ path: `$.channels[${i}].content`, message: `content must be a JSON object: ${e.message}` });
    }
    return out;
  });
  const config = { ...form.otherConfig, sequenceEnabled: form.sequence };
  if (form.order === 'engagement') config.order = 'engagement';
  if (form.throttle.on) config.throttle = { limit: Number(form.throttle.limit), windowMinutes: Number(form.throttle.windowMinutes) };
  if (form.quiet.on) config.quietHours = { start: form.quiet.start, end: form.quiet.end, channels: form.quiet.channels };
  const b = { channels, config };
  if (form.name.trim()) b.name = form.name.trim();
  return { b, problems };
}

function Step({ step, index, count, form, errors, set, move, remove, disabled }) {
  const terminal = index === count - 1;
  const taken = new Set(form.steps.filter((s) => s.key !== step.key).map((s) => s.channel));
  const p = `channels[${index}]`;
  const id = (f) => `step-${step.key}-${f}`;
  const err = (f) => errors[`${p}${f}`];
  const described = (f) => (err(f) ? id(`${f}-error`) : undefined);
  const byEngagement = form.sequence && form.order === 'engagement';
  return html`<fieldset class="step" aria-invalid=${errors[p] ? 'true' : undefined}>
    <legend>Step ${index + 1}${form.sequence && terminal && !byEngagement ? ' (terminal)' : ''}</legend>
    <${FieldError} id=${id('-error')} errors=${errors[p]} />
    <div class="row">
      <label for=${id('channel')}>Channel</label>
      <select id=${id('channel')} value=${step.channel} disabled=${disabled} aria-invalid=${err('.channel') ? 'true' : undefined}
        aria-describedby=${described('.channel')}
        onChange=${(e) => {
          const channel = e.target.value;
          set({ channel, stopCondition: SIGNALS[channel].includes(step.stopCondition) ? step.stopCondition : defaultCondition(channel) });
        }}>
        ${CHANNELS.filter((c) => c === step.channel || !taken.has(c)).map((c) => html`<option value=${c}>${c}</option>`)}
      </select>
      <${FieldError} id=${id('.channel-error')} errors=${err('.channel')} />
    </div>
    ${windowed(form, terminal) && html`<div class="row">
      <label for=${id('stop')}>Stop when</label>
      <select id=${id('stop')} value=${step.stopCondition} disabled=${disabled}
        aria-invalid=${err('.stopCondition') ? 'true' : undefined} aria-describedby=${described('.stopCondition')}
        onChange=${(e) => set({ stopCondition: e.target.value })}>
        ${SIGNALS[step.channel].map((s) => html`<option value=${s}>${s} (or stronger)</option>`)}
      </select>
      <${FieldError} id=${id('.stopCondition-error')} errors=${err('.stopCondition')} />
    </div>
    <div class="row">
      <label for=${id('wait')}>Wait</label>
      <select id=${id('wait')} value=${String(step.waitMinutes)} disabled=${disabled}
        aria-invalid=${err('.waitMinutes') ? 'true' : undefined} aria-describedby=${described('.waitMinutes')}
        onChange=${(e) => set({ waitMinutes: Number(e.target.value) })}>
        ${WINDOWS.map((w) => html`<option value=${String(w)}>${minutes(w)}</option>`)}
      </select>
      <${FieldError} id=${id('.waitMinutes-error')} errors=${err('.waitMinutes')} />
    </div>`}
    ${form.sequence && terminal && !byEngagement && html`<p class="muted">The terminal step fires last: no stop condition, no window.</p>`}
    ${!form.sequence && html`<p class="muted">Without a sequence every step fires at send time.</p>`}
    <div class="row wide">
      <label for=${id('content')}>Content (JSON object; <code>{{order.id}}</code> placeholders)</label>
      <textarea id=${id('content')} rows="3" value=${step.contentText} disabled=${disabled}
        aria-invalid=${err('.content') ? 'true' : undefined} aria-describedby=${described('.content')}
        onInput=${(e) => set({ contentText: e.target.value })}></textarea>
      <${FieldError} id=${id('.content-error')} errors=${err('.content')} />
    </div>
    ${!disabled && html`<div class="step-actions">
      <button type="button" class="secondary" disabled=${index === 0} onClick=${() => move(-1)}>Move up<span class="sr-only"> step ${index + 1}</span></button>
      <button type="button" class="secondary" disabled=${terminal} onClick=${() => move(1)}>Move down<span class="sr-only"> step ${index + 1}</span></button>
      <button type="button" class="secondary" disabled=${count === 1} onClick=${remove}>Remove<span class="sr-only"> step ${index + 1}</span></button>
    </div>`}
  </fieldset>`;
}

function Rules({ form, errors, disabled, update }) {
  const t = form.throttle;
  const q = form.quiet;
  const err = (k) => errors[`config.${k}`];
  const inv = (k) => (err(k) ? 'true' : undefined);
  const desc = (k) => (err(k) ? `tpl-${k.replace('.', '-')}-error` : undefined);
  const fe = (k) => html`<${FieldError} id=${`tpl-${k.replace('.', '-')}-error`} errors=${err(k)} />`;
  return html`<fieldset class="rules">
    <legend>Delivery rules</legend>
    <div class="row">
      <label for="tpl-order">Order of the steps</label>
      <select id="tpl-order" value=${form.order} disabled=${disabled} aria-invalid=${inv('order')} aria-describedby=${desc('order')}
        onChange=${(e) => update({ order: e.target.value })}>
        <option value="template">as listed below</option>
        <option value="engagement" disabled=${!form.sequence}>by each recipient's engagement (sequences only)</option>
      </select>${fe('order')}
    </div>
    <div class="row check">
      <input id="tpl-throttle" type="checkbox" checked=${t.on} disabled=${disabled}
        onChange=${(e) => update({ throttle: { ...t, on: e.target.checked } })} />
      <label for="tpl-throttle">Throttle: at most a number of sends per recipient per window</label>${fe('throttle')}
    </div>
    ${t.on && html`<div class="pair">
      <div class="row"><label for="tpl-throttle-limit">Sends (1–1000)</label>
        <input id="tpl-throttle-limit" type="number" inputmode="numeric" min="1" max="1000" value=${t.limit} disabled=${disabled}
          aria-invalid=${inv('throttle.limit')} aria-describedby=${desc('throttle.limit')}
          onInput=${(e) => update({ throttle: { ...t, limit: e.target.value } })} />${fe('throttle.limit')}</div>
      <div class="row"><label for="tpl-throttle-window">Window in minutes (1–10080)</label>
        <input id="tpl-throttle-window" type="number" inputmode="numeric" min="1" max="10080" value=${t.windowMinutes} disabled=${disabled}
          aria-invalid=${inv('throttle.windowMinutes')} aria-describedby=${desc('throttle.windowMinutes')}
          onInput=${(e) => update({ throttle: { ...t, windowMinutes: e.target.value } })} />${fe('throttle.windowMinutes')}</div>
    </div>`}
    <div class="row check">
      <input id="tpl-quiet" type="checkbox" checked=${q.on} disabled=${disabled}
        onChange=${(e) => update({ quiet: { ...q, on: e.target.checked } })} />
      <label for="tpl-quiet">Quiet hours: defer steps due inside them, in the recipient's time zone</label>${fe('quietHours')}
    </div>
    ${q.on && html`<div class="pair">
      <div class="row"><label for="tpl-quiet-start">From</label>
        <input id="tpl-quiet-start" type="time" value=${q.start} disabled=${disabled} aria-invalid=${inv('quietHours.start')}
          aria-describedby=${desc('quietHours.start')} onInput=${(e) => update({ quiet: { ...q, start: e.target.value } })} />${fe('quietHours.start')}</div>
      <div class="row"><label for="tpl-quiet-end">Until</label>
        <input id="tpl-quiet-end" type="time" value=${q.end} disabled=${disabled} aria-invalid=${inv('quietHours.end')}
          aria-describedby=${desc('quietHours.end')} onInput=${(e) => update({ quiet: { ...q, end: e.target.value } })} />${fe('quietHours.end')}</div>
      <fieldset class="row"><legend>Channels deferred (in-app never is)</legend>
        ${QUIET_CHANNELS.map((c) => html`<span class="check-item"><input id=${`tpl-quiet-${c}`} type="checkbox" disabled=${disabled}
          checked=${q.channels.includes(c)} onChange=${(e) => update({ quiet: { ...q,
            channels: e.target.checked ? QUIET_CHANNELS.filter((x) => x === c || q.channels.includes(x)) : q.channels.filter((x) => x !== c) } })} />
          <label for=${`tpl-quiet-${c}`}>${c}</label></span>`)}
        ${fe('quietHours.channels')}
      </fieldset>
    </div>`}
  </fieldset>`;
}

export function Editor({ id }) {
  const auth = useContext(Auth);
  const [form, setForm] = useState(id ? null : BLANK());
  const [loadError, setLoadError] = useState(null);
  const [current, setCurrent] = useState(null);
  const [saved, setSaved] = useState([]);
  const [error, setError] = useState(null);
  const [errors, setErrors] = useState({});
  const [busy, setBusy] = useState(false);
  const [notice, setNotice] = useState('');
  useEffect(() => {
    if (!id) { setForm(BLANK()); setCurrent(null); return; }
    get(`/v1/templates/${seg(id)}`).then((t) => { setForm(fromTemplate(t)); setCurrent(t); }, setLoadError);
  }, [id]);
  if (loadError) return html`<h1>Edit template</h1><${ErrorNote} error=${loadError} title="Could not load the template" />`;
  if (!form) return html`<h1>Edit template</h1><${Loading} what="the template" />`;
  const disabled = !auth.canEdit;
  const update = (patch) => setForm((f) => ({ ...f, ...patch }));
  const setStep = (key, patch) => setForm((f) => ({ ...f, steps: f.steps.map((s) => (s.key === key ? { ...s, ...patch } : s)) }));
  const moveStep = (i, by) => setForm((f) => {
    const steps = [...f.steps];
    [steps[i], steps[i + by]] = [steps[i + by], steps[i]];
    return { ...f, steps };
  });
  const free = CHANNELS.filter((c) => !form.steps.some((s) => s.channel === c));
  const submit = async (ev) => {
    ev.preventDefault();
    setError(null);
    setNotice('');
    const { b, problems } = body(form);
    const keys = fieldKeys(form.steps);
    if (problems.length) {
      setErrors(placeErrors(problems, keys));
      return;
    }
    setBusy(true);
    try {
      const tid = form.id.trim();
      const view = await put(`/v1/templates/${seg(tid)}`, b);
      setErrors({});
      setCurrent(view);
      setSaved((s) => [...s, view]);
      setNotice(`Saved: version ${view.version} of ${view.id}.`);
      if (!id) history.replaceState(null, '', `#/templates/${seg(view.id)}/edit`);
      setForm((f) => ({ ...f, id: view.id }));
    } catch (e) {
      if (e instanceof ApiError && e.details && e.details.length) setErrors(placeErrors(e.details, keys));
      else setErrors({});
      setError(e);
    } finally {
      setBusy(false);
    }
  };
  const idKnown = Boolean(id || current);
  return html`<h1>${idKnown ? html`Edit template <code>${form.id}</code>` : 'New template'}</h1>
    ${disabled && html`<p class="note">This key can read templates but not change them (an admin key can).</p>`}
    <form class="editor" onSubmit=${submit} novalidate>
      <${ErrorNote} error=${error} title="Not saved" showDetails=${false} />
      ${errors[''] && html`<${FieldError} id="form-error" errors=${errors['']} />`}
      <div class="row">
        <label for="tpl-id">Template id</label>
        <input id="tpl-id" value=${form.id} disabled=${disabled || idKnown} autocomplete="off" spellcheck="false"
          aria-invalid=${errors.id ? 'true' : undefined} aria-describedby=${errors.id ? 'tpl-id-error' : 'tpl-id-hint'}
          onInput=${(e) => update({ id: e.target.value })} />
        <p class="hint" id="tpl-id-hint">Lower-case letters, digits, <code>_</code> and <code>-</code>; up to 64.</p>
        <${FieldError} id="tpl-id-error" errors=${errors.id} />
      </div>
      <div class="row">
        <label for="tpl-name">Name</label>
        <input id="tpl-name" value=${form.name} disabled=${disabled} aria-invalid=${errors.name ? 'true' : undefined}
          aria-describedby=${errors.name ? 'tpl-name-error' : undefined} onInput=${(e) => update({ name: e.target.value })} />
        <${FieldError} id="tpl-name-error" errors=${errors.name} />
      </div>
      <div class="row check">
        <input id="tpl-seq" type="checkbox" checked=${form.sequence} disabled=${disabled}
          onChange=${(e) => update({ sequence: e.target.checked, order: e.target.checked ? form.order : 'template' })} />
        <label for="tpl-seq">A sequence: each step waits for its stop condition before the next fires</label>
        <${FieldError} id="tpl-config-error" errors=${errors.config} />
      </div>
      <${Rules} form=${form} errors=${errors} disabled=${disabled} update=${update} />
      <fieldset class="steps-box" aria-describedby=${errors.channels ? 'tpl-channels-error' : undefined}>
        <legend>Steps</legend>
        <${FieldError} id="tpl-channels-error" errors=${errors.channels} />
        ${form.steps.map((s, i) => html`<${Step} key=${s.key} step=${s} index=${i} count=${form.steps.length} form=${form}
          errors=${errors} disabled=${disabled} set=${(patch) => setStep(s.key, patch)}
          move=${(by) => moveStep(i, by)} remove=${() => update({ steps: form.steps.filter((x) => x.key !== s.key) })} />`)}
        ${!disabled && html`<button type="button" class="secondary" disabled=${free.length === 0}
          onClick=${() => update({ steps: [...form.steps, newStep(free[0])] })}>Add step</button>`}
      </fieldset>
      ${!disabled && html`<p><button type="submit" disabled=${busy}>${busy ? 'Saving…' : 'Save template'}</button></p>`}
      <p role="status" class="ok">${notice}</p>
    </form>
    ${current && html`<${Versions} template=${current} saved=${saved} />`}`;
}
