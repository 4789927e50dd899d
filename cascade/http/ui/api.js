// Every call to the server goes through here: the API key (kept in
// sessionStorage, sent as `Authorization: Bearer <key>`), JSON in and out,
// and the API's error body decoded into an ApiError that keeps `details`
// (each {path, message}) so forms can show a problem at its field.

const KEY = 'cascade.apiKey';

export const session = { key: sessionStorage.getItem(KEY) || '' };

export function signIn(key) {
  session.key = key;
  sessionStorage.setItem(KEY, key);
}

export function signOut() {
  session.key = '';
  sessionStorage.removeItem(KEY);
}

export class ApiError extends Error {
  constructor(status, code, message, details = []) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

function headers(extra = {}) {
  const h = { ...extra };
  if (session.key) h.Authorization = `Bearer ${session.key}`;
  return h;
}

async function decodeError(res) {
  let body = null;
  try { body = await res.json(); } catch { /* not JSON: described by its status below */ }
  const e = body && body.error;
  if (e && typeof e.message === 'string') return new ApiError(res.status, e.code, e.message, e.details || []);
  return new ApiError(res.status, `http_${res.status}`, `the server answered HTTP ${res.status} ${res.statusText}`);
}

export function qs(params) {
  if (!params) return '';
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  const s = q.toString();
  return s ? `?${s}` : '';
}

export async function request(method, path, { json, body, contentType, query, signal } = {}) {
  const init = { method, headers: headers(), signal };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers['Content-Type'] = 'application/json';
  } else if (body !== undefined) {
    init.body = body;
    init.headers['Content-Type'] = contentType;
  }
  let res;
  for (let attempt = 0; ; attempt += 1) {
    try {
      res = await fetch(path + qs(query), init);
    } catch (err) {
      if (err.name === 'AbortError') throw err;
      throw new ApiError(0, 'network', `cannot reach the server (${err.message})`);
    }
    // 503 means nothing was done: a read is tried again after Retry-After (at most twice, 2 s at most).
    if (res.status !== 503 || method !== 'GET' || attempt >= 2) break;
    const wait = Math.min(Number(res.headers.get('Retry-After')) || 1, 2);
    await new Promise((done) => { setTimeout(done, wait * 1000); });
  }
  if (!res.ok) throw await decodeError(res);
  if (res.status === 204) return null;
  const type = res.headers.get('Content-Type') || '';
  return type.includes('json') ? res.json() : res.text();
}

export const get = (path, query, opts = {}) => request('GET', path, { ...opts, query });
export const put = (path, json) => request('PUT', path, { json });
export const post = (path, json, query) => request('POST', path, { json, query });
export const del = (path) => request('DELETE', path);
export const seg = encodeURIComponent;

// Who is signed in: admin (edits), read (sees: a read or send key), or open (no keys configured:
// the server checks nothing, like the API). Admin is the one scope that may
// read the clock, so its answer tells the scopes apart without side effects.
export async function whoami() {
  try {
    const clock = await get('/v1/admin/clock');
    return { role: session.key ? 'admin' : 'open', canEdit: true, clock };
  } catch (e) {
    if (e.status !== 403) throw e;
  }
  await get('/v1/templates');
  return { role: 'read', canEdit: false, clock: null };
}

// A body upload with progress (fetch cannot report upload progress).
export function upload(path, query, file, contentType, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('POST', path + qs(query));
    for (const [k, v] of Object.entries(headers({ 'Content-Type': contentType }))) xhr.setRequestHeader(k, v);
    xhr.upload.onprogress = (ev) => { if (ev.lengthComputable) onProgress(ev.loaded, ev.total); };
    xhr.onerror = () => reject(new ApiError(0, 'network', 'the upload could not reach the server'));
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { /* described below */ }
      if (xhr.status >= 200 && xhr.status < 300) return resolve(body);
      const e = body && body.error;
      reject(e ? new ApiError(xhr.status, e.code, e.message, e.details || [])
        : new ApiError(xhr.status, `http_${xhr.status}`, `the server answered HTTP ${xhr.status}`));
    };
    xhr.send(file);
  });
}

// Server-sent events over fetch, so the API key travels in the header
// (EventSource cannot set one). Calls onEvent(name, data) per event; resolves
// when the stream ends, rejects with an ApiError if it is refused.
export async function stream(path, onEvent, signal) {
  let res;
  try {
    res = await fetch(path, { headers: headers({ Accept: 'text/event-stream' }), signal });
  } catch (err) {
    if (err.name === 'AbortError') return;
    throw new ApiError(0, 'network', `cannot reach the server (${err.message})`);
  }
  if (!res.ok) throw await decodeError(res);
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  let event = 'message';
  let data = [];
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += value;
      let at;
      while ((at = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, at).replace(/\r$/, '');
        buf = buf.slice(at + 1);
        if (line === '') {
          if (data.length) onEvent(event, data.join('\n'));
          event = 'message';
          data = [];
        } else if (!line.startsWith(':')) {
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          let v = colon < 0 ? '' : line.slice(colon + 1);
          if (v.startsWith(' ')) v = v.slice(1);
          if (field === 'event') event = v;
          else if (field === 'data') data.push(v);
        }
      }
    }
  } catch (err) {
    if (err.name !== 'AbortError') throw err;
  }
}
