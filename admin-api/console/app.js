// Watchpost operator console: one hand-written ES module, no dependencies, no build step.
//
// Rules this file keeps (the page's CSP and the stored-XSS test rely on them):
// - every value from the API reaches the page through textContent or setAttribute, never
//   through HTML parsing (no HTML-string sinks anywhere);
// - the bearer token lives in this module's memory only (never in storage or a cookie);
// - API errors are shown as the envelope's message.

const API = '/api/admin';
const SVG = 'http://www.w3.org/2000/svg';
const PAGE_SIZE = 50;
const MAX_ROWS = 1000;
const OVERVIEW_REFRESH_MS = 3000;

// Built-in risk weights (SPEC §3), used for reasons when the gateway config has no `risk`.
const DEFAULT_WEIGHTS = {
  ua_empty: 0.5, ua_cli: 0.4, ua_library: 0.3, ua_bot: 0.5, spoofed_forwarded: 0.6,
  malformed_forwarded: 0.4, rate: 0.9, path_probe: 0.9, header_anomaly: 0.4, country: 0.5,
  denylist: 1, allowlist: 0,
};

const state = {
  token: null,
  me: null,
  page: null,
  gateway: null, // the current gateway config (for the form and the reasons' weights)
};

// ---------------------------------------------------------------------------------------
// DOM helpers

const $ = (id) => document.getElementById(id);

/** Builds an element; props are attributes (set with setAttribute), `class`, `text`,
 *  `dataset` or `on<event>` listeners; children are nodes or text. */
function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  setProps(el, props);
  appendAll(el, children);
  return el;
}

function s(tag, props = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  setProps(el, props);
  appendAll(el, children);
  return el;
}

function setProps(el, props) {
  for (const [k, v] of Object.entries(props)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') el.setAttribute('class', v);
    else if (k === 'text') el.textContent = String(v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
}

function appendAll(el, children) {
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

function clear(el) {
  while (el.firstChild) el.firstChild.remove();
}

function td(label, ...children) {
  return h('td', { 'data-label': label }, ...children);
}

const fmtTime = (ms) => (ms ? new Date(ms).toLocaleTimeString() : '');
const fmtDate = (iso) => {
  if (!iso) return '';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString();
};
const fmtNum = (n, digits = 0) => Number(n || 0).toLocaleString(undefined, {
  minimumFractionDigits: digits, maximumFractionDigits: digits,
});

function badge(decision) {
  const known = ['allow', 'reject', 'flag'].includes(decision);
  return h('span', { class: `badge ${known ? decision : 'off'}`, text: decision });
}

function status(text) {
  $('status').textContent = text;
}

function showError(message) {
  const el = $('error');
  el.textContent = message;
  el.hidden = false;
}

function clearError() {
  const el = $('error');
  el.textContent = '';
  el.hidden = true;
}

// ---------------------------------------------------------------------------------------
// API

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function errorFrom(res) {
  let body = null;
  try {
    body = await res.json();
  } catch {
    // not JSON
  }
  const err = body && body.error;
  if (err && typeof err.message === 'string') {
    return new ApiError(res.status, err.code || '', err.message);
  }
  return new ApiError(res.status, '', `HTTP ${res.status}`);
}

async function api(method, path, body, { token = state.token } = {}) {
  const headers = { Accept: 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let res;
  try {
    res = await fetch(path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'omit', cache: 'no-store',
    });
  } catch (e) {
    throw new ApiError(0, 'NETWORK', `the API did not answer (${e.message})`);
  }
  if (!res.ok) {
    const err = await errorFrom(res);
    if (res.status === 401 && state.token && token === state.token) signedOut(err.message);
    throw err;
  }
  if (res.status === 204) return null;
  const text = await res.text();
  return text ? JSON.parse(text) : null;
}

/** Runs an action, showing its API error (if any) as the envelope's message. */
async function guarded(fn) {
  clearError();
  try {
    return await fn();
  } catch (e) {
    showError(e.message || String(e));
    return undefined;
  }
}

function qs(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== null && v !== undefined && String(v).trim() !== '') q.set(k, String(v).trim());
  }
  const text = q.toString();
  return text ? `?${text}` : '';
}

// ---------------------------------------------------------------------------------------
// Sign-in

async function signIn(token) {
  // A platform admin can read the gateway config; anyone else gets the API's 403 message.
  const gateway = await api('GET', `${API}/gateway/config`, undefined, { token });
  let me = null;
  try {
    me = await api('GET', '/api/me', undefined, { token });
  } catch {
    me = null; // an API key without the `me` scope still runs the console
  }
  state.token = token;
  state.me = me;
  state.gateway = gateway;
  $('password').value = '';
  $('api-key').value = '';
  $('totp').value = '';
  $('mfa-row').hidden = true;
  $('sign-in').hidden = true;
  $('nav').hidden = false;
  $('who').hidden = false;
  $('who-name').textContent = me ? `Signed in as ${me.email}` : 'Signed in with an API key';
  status('');
  route();
}

function signedOut(message) {
  stopLog();
  stopOverview();
  state.token = null;
  state.me = null;
  state.page = null;
  for (const p of document.querySelectorAll('.page')) p.hidden = true;
  $('nav').hidden = true;
  $('who').hidden = true;
  $('sign-in').hidden = false;
  if (message) showError(message);
}

function setupSignIn() {
  $('password-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    guarded(async () => {
      const email = $('email').value.trim();
      const password = $('password').value;
      if (!email || !password) throw new Error('Enter an email and a password.');
      const body = { email, password };
      const code = $('totp').value.trim();
      if (!$('mfa-row').hidden && code) body.totp_code = code;
      let session;
      try {
        session = await api('POST', '/api/auth/sessions', body, { token: null });
      } catch (e) {
        if (e.code === 'MFA_REQUIRED') {
          $('mfa-row').hidden = false;
          $('totp').focus();
        }
        throw e;
      }
      await signIn(session.token);
    });
  });
  $('key-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    guarded(async () => {
      const key = $('api-key').value.trim();
      if (!key) throw new Error('Enter an API key.');
      await signIn(key);
    });
  });
  $('sign-out').addEventListener('click', () => {
    guarded(async () => {
      const token = state.token;
      if (token && token.startsWith('wps_')) {
        try {
          await api('DELETE', '/api/auth/sessions/current');
        } catch {
          // signing out locally is what matters
        }
      }
      signedOut('');
      location.hash = '';
      $('email').focus();
    });
  });
}

// ---------------------------------------------------------------------------------------
// Routing

const PAGES = ['log', 'overview', 'gateway', 'platform'];

function route() {
  if (!state.token) return;
  const wanted = location.hash.replace(/^#/, '');
  const page = PAGES.includes(wanted) ? wanted : 'log';
  if (page === state.page) return;
  clearError();
  status('');
  if (state.page === 'log') stopLog();
  if (state.page === 'overview') stopOverview();
  state.page = page;
  for (const p of PAGES) $(`page-${p}`).hidden = p !== page;
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.dataset.page === page) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  ({ log: startLog, overview: startOverview, gateway: startGateway, platform: startPlatform })[page]();
}

// ---------------------------------------------------------------------------------------
// Live access log

const log = {
  gen: 0, // bumps on every (re)start: stale loops and answers notice and stop
  abort: null,
  paused: false,
  pending: [],
  newest: null, // the newest stream id shown or buffered (the tail resumes after it)
  older: null, // cursor for "load older"
  items: new Map(),
  selected: null,
  connected: false,
};

const FILTERS = ['ip', 'country', 'status', 'decision', 'ua_type', 'risk_min', 'path'];
const filterInput = (name) => document.querySelector(`#log-filters [name="${name}"]`);

function logFilters() {
  const f = {};
  for (const name of FILTERS) f[name] = filterInput(name).value;
  return f;
}

/** Opens the live log with these filters (others cleared). */
function openLog(filters) {
  for (const name of FILTERS) filterInput(name).value = filters[name] ?? '';
  if (state.page === 'log') {
    startLog();
  } else {
    location.hash = '#log';
  }
}

function stopLog() {
  log.gen += 1;
  if (log.abort) log.abort.abort();
  log.abort = null;
}

function logState() {
  const shown = $('log-rows').children.length;
  const parts = [`${shown} entr${shown === 1 ? 'y' : 'ies'} shown`];
  if (log.paused) parts.push(`paused, ${log.pending.length} new waiting`);
  else parts.push(log.connected ? 'live' : 'connecting…');
  $('log-state').textContent = parts.join(' · ');
}

function entryRow(item) {
  const query = item.query ? (item.query.startsWith('?') ? item.query : `?${item.query}`) : '';
  const request = `${item.method} ${item.host}${item.path}${query}`;
  const open = h('button', {
    type: 'button', class: 'link open-entry', 'aria-label': `Details: ${request}`,
    onclick: () => showEntry(entryKey(item)),
  }, request);
  const tr = h('tr', { dataset: { id: entryKey(item), decision: item.decision } },
    h('td', { 'data-label': 'Time', class: 'nowrap' }, fmtTime(item.ts)),
    h('td', { 'data-label': 'Request', class: 'wide' }, open),
    h('td', { 'data-label': 'Status', class: 'num nowrap' }, String(item.status)),
    h('td', { 'data-label': 'Decision', class: 'nowrap' }, badge(item.decision)),
    h('td', { 'data-label': 'Risk', class: 'num nowrap' }, Number(item.risk).toFixed(3)),
    h('td', { 'data-label': 'IP', class: 'nowrap' }, item.ip),
    h('td', { 'data-label': 'Country', class: 'nowrap' }, item.country || '—'),
    h('td', { 'data-label': 'UA type', class: 'nowrap' }, item.ua_type));
  if (log.selected === entryKey(item)) tr.classList.add('selected');
  return tr;
}

function addEntries(items, where) {
  const body = $('log-rows');
  if (where === 'top') {
    // items are oldest first here: each goes on top
    for (const item of items) {
      if (log.items.has(entryKey(item))) continue;
      log.items.set(entryKey(item), item);
      const tr = entryRow(item);
      tr.classList.add('fresh');
      setTimeout(() => tr.classList.remove('fresh'), 1500);
      body.prepend(tr);
    }
    while (body.children.length > MAX_ROWS) {
      const last = body.lastElementChild;
      log.items.delete(last.dataset.id);
      last.remove();
      log.older = body.lastElementChild ? body.lastElementChild.dataset.id : log.older;
    }
  } else {
    for (const item of items) {
      if (log.items.has(entryKey(item))) continue;
      log.items.set(entryKey(item), item);
      body.append(entryRow(item));
    }
  }
  logState();
}

// An entry's name: its stream id, with `~<shard>` when the log is sharded (ids repeat across
// shards); the API takes it as a cursor and as the id of `GET /access-log/{id}`.
const entryKey = (item) => (item.shard === undefined ? item.id : `${item.id}~${item.shard}`);

// Order of entry names: by id, then shard (`-`, the unsharded stream, first).
const keyParts = (k) => {
  const [id, shard] = k.split('~');
  const [ms, seq] = id.split('-').map(Number);
  return [ms, seq, shard === undefined || shard === '-' ? -1 : Number(shard)];
};
const idNewer = (a, b) => {
  if (!b) return true;
  const [am, as, ash] = keyParts(a);
  const [bm, bs, bsh] = keyParts(b);
  return am > bm || (am === bm && (as > bs || (as === bs && ash > bsh)));
};

async function startLog() {
  stopLog();
  const gen = log.gen;
  log.items.clear();
  log.pending = [];
  log.newest = null;
  log.older = null;
  log.connected = false;
  clear($('log-rows'));
  hideEntry();
  $('log-older').disabled = true;
  logState();
  const filters = logFilters();
  // The tail is opened first and the first page read after it is positioned: an entry written
  // in between shows up in both (and once on the page), never in neither.
  let ready;
  const positioned = new Promise((resolve) => { ready = resolve; });
  tail(gen, filters, ready);
  await positioned;
  if (gen !== log.gen) return;
  try {
    const page = await api('GET', `${API}/access-log${qs({ ...filters, limit: PAGE_SIZE })}`);
    if (gen !== log.gen) return;
    addEntries(page.items, 'bottom');
    if (page.items.length && idNewer(entryKey(page.items[0]), log.newest)) log.newest = entryKey(page.items[0]);
    log.older = page.next_cursor;
    $('log-older').disabled = !log.older;
  } catch (e) {
    if (gen === log.gen) showError(e.message);
  }
}

function onTailEntry(item) {
  if (idNewer(entryKey(item), log.newest)) log.newest = entryKey(item);
  if (log.paused) {
    log.pending.push(item);
    logState();
  } else {
    addEntries([item], 'top');
  }
}

async function tail(gen, filters, ready) {
  while (gen === log.gen) {
    const controller = new AbortController();
    log.abort = controller;
    try {
      const res = await fetch(`${API}/access-log/tail${qs({ ...filters, since: log.newest })}`, {
        headers: { Authorization: `Bearer ${state.token}`, Accept: 'text/event-stream' },
        signal: controller.signal, credentials: 'omit', cache: 'no-store',
      });
      if (!res.ok) {
        const err = await errorFrom(res);
        ready();
        if (gen !== log.gen) return;
        showError(err.message);
        if (res.status === 401) signedOut(err.message);
        if (res.status === 400 || res.status === 401 || res.status === 403) return;
      } else {
        log.connected = true;
        logState();
        ready();
        await readEvents(res, gen);
      }
    } catch (e) {
      ready();
      if (gen !== log.gen || e.name === 'AbortError') return;
    }
    if (gen !== log.gen) return;
    log.connected = false;
    logState();
    await new Promise((r) => setTimeout(r, 1000));
  }
}

async function readEvents(res, gen) {
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done || gen !== log.gen) return;
    buffer = (buffer + value).replace(/\r\n?/g, '\n');
    let end = buffer.indexOf('\n\n');
    while (end >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      handleEvent(block);
      end = buffer.indexOf('\n\n');
    }
  }
}

function handleEvent(block) {
  let event = 'message';
  const data = [];
  for (const line of block.split('\n')) {
    if (!line || line.startsWith(':')) continue;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') event = value;
    else if (field === 'data') data.push(value);
  }
  if (!data.length) return;
  let payload;
  try {
    payload = JSON.parse(data.join('\n'));
  } catch {
    return;
  }
  if (event === 'entry') onTailEntry(payload);
  else if (event === 'error') showError(payload?.error?.message || payload?.message || 'the live tail stopped');
}

async function loadOlder() {
  if (!log.older) return;
  const gen = log.gen;
  await guarded(async () => {
    const page = await api('GET', `${API}/access-log${qs({ ...logFilters(), limit: PAGE_SIZE, before: log.older })}`);
    if (gen !== log.gen) return;
    addEntries(page.items, 'bottom');
    log.older = page.next_cursor;
    $('log-older').disabled = !log.older;
    if (!page.items.length && log.older) status('No matching entries in that stretch; load older again to keep looking.');
  });
}

function togglePause() {
  log.paused = !log.paused;
  const button = $('log-pause');
  button.textContent = log.paused ? 'Resume' : 'Pause';
  button.setAttribute('aria-pressed', String(log.paused));
  if (!log.paused && log.pending.length) {
    const waiting = log.pending;
    log.pending = [];
    addEntries(waiting, 'top');
  }
  logState();
}

function weightOf(reason) {
  const configured = state.gateway?.risk?.weights;
  if (configured && typeof configured[reason] === 'number') return configured[reason];
  return DEFAULT_WEIGHTS[reason];
}

function showEntry(id) {
  const item = log.items.get(id);
  if (!item) return;
  log.selected = id;
  for (const tr of $('log-rows').children) tr.classList.toggle('selected', tr.dataset.id === id);
  const dl = $('detail-fields');
  clear(dl);
  const fields = [
    ['id', entryKey(item)], ['time', new Date(item.ts).toISOString()], ['method', item.method],
    ['host', item.host], ['path', item.path], ['query', item.query], ['status', item.status],
    ['decision', item.decision], ['risk', Number(item.risk).toFixed(3)],
    ['reasons', (item.reasons || []).join(', ')], ['ip', item.ip], ['ip_source', item.ip_source],
    ['peer', item.peer], ['country', item.country], ['ua', item.ua], ['ua_type', item.ua_type],
    ['latency', `${fmtNum(item.latency_us)} µs`], ['bytes_out', fmtNum(item.bytes_out)],
    ['upstream', item.upstream], ['rule', item.rule], ['proto', item.proto],
    ['request_id', item.request_id], ['proxy_id', item.proxy_id],
  ];
  for (const [k, v] of fields) {
    dl.append(h('dt', {}, k), h('dd', { dataset: { field: k } }, v === '' || v === undefined ? '—' : String(v)));
  }
  const tbody = $('detail-reasons').querySelector('tbody');
  clear(tbody);
  const reasons = item.reasons || [];
  const contributions = reasons.map((r) => {
    const w = weightOf(r);
    return typeof w === 'number' && w < 1 ? -Math.log(1 - w) : (w >= 1 ? Infinity : 0);
  });
  const total = contributions.reduce((a, b) => a + b, 0);
  reasons.forEach((r, i) => {
    const w = weightOf(r);
    const c = contributions[i];
    const share = total > 0 && Number.isFinite(total) ? (c / total) * Number(item.risk)
      : (Number.isFinite(c) ? 0 : Number(item.risk));
    tbody.append(h('tr', {},
      td('Reason', r),
      h('td', { 'data-label': 'Weight', class: 'num' }, typeof w === 'number' ? w.toFixed(2) : '?'),
      h('td', { 'data-label': 'Est. contribution', class: 'num' }, `${(share * 100).toFixed(1)} pts`)));
  });
  if (!reasons.length) tbody.append(h('tr', {}, h('td', { colspan: '3', 'data-label': 'Reason' }, 'No reason fired.')));
  $('log-detail').hidden = false;
  $('log-detail').closest('.split').classList.add('with-detail');
  $('detail-title').textContent = `Entry ${entryKey(item)}`;
  $('detail-title').focus();
}

function hideEntry() {
  log.selected = null;
  $('log-detail').hidden = true;
  $('log-detail').closest('.split').classList.remove('with-detail');
}

function setupLog() {
  $('log-filters').addEventListener('submit', (ev) => {
    ev.preventDefault();
    clearError();
    startLog();
  });
  $('log-clear').addEventListener('click', () => openLog({}));
  $('log-pause').addEventListener('click', togglePause);
  $('log-older').addEventListener('click', loadOlder);
  $('detail-close').addEventListener('click', () => {
    const id = log.selected;
    hideEntry();
    const back = id && document.querySelector(`#log-rows tr[data-id="${CSS.escape(id)}"] .open-entry`);
    if (back) back.focus();
  });
}

// ---------------------------------------------------------------------------------------
// Overview

const overview = { timer: null, gen: 0 };

function stopOverview() {
  overview.gen += 1;
  if (overview.timer) clearInterval(overview.timer);
  overview.timer = null;
}

function startOverview() {
  stopOverview();
  refreshOverview();
  overview.timer = setInterval(refreshOverview, OVERVIEW_REFRESH_MS);
}

async function refreshOverview() {
  const gen = overview.gen;
  const win = $('o-window').value;
  try {
    const sum = await api('GET', `${API}/access-log/summary${qs({ window: win })}`);
    if (gen !== overview.gen) return;
    renderOverview(sum);
    $('overview-updated').textContent = `Updated ${new Date().toLocaleTimeString()}; refreshes every ${OVERVIEW_REFRESH_MS / 1000} s.`;
    clearError();
  } catch (e) {
    if (gen === overview.gen) showError(e.message);
  }
}

function kpi(label, value) {
  return h('div', { class: 'kpi' }, h('div', { class: 'v' }, value), h('div', { class: 'l' }, label));
}

/** A bar chart: one keyboard-usable button per bar, each drawing its bar as inline SVG. */
function barChart(title, rows, toFilters) {
  const max = Math.max(1, ...rows.map((r) => r.count));
  const list = h('ul', {});
  for (const row of rows) {
    const width = Math.max(0, Math.min(100, (row.count / max) * 100));
    const svg = s('svg', { viewBox: '0 0 100 10', preserveAspectRatio: 'none', 'aria-hidden': 'true', focusable: 'false' },
      s('rect', { class: 'track', x: '0', y: '0', width: '100', height: '10' }),
      s('rect', { class: 'fill', x: '0', y: '0', width: width.toFixed(2), height: '10' }));
    const button = h('button', {
      type: 'button', class: 'bar', title: `Show these requests in the live log`,
      onclick: () => openLog(toFilters(row)),
    }, h('span', { class: 'label' }, row.label), svg, h('span', { class: 'count' }, fmtNum(row.count)));
    list.append(h('li', {}, button));
  }
  const id = `chart-${title.toLowerCase().replace(/[^a-z]+/g, '-')}`;
  return h('section', { class: 'card chart', 'aria-labelledby': id },
    h('h3', { id }, title),
    rows.length ? list : h('p', { class: 'empty' }, 'Nothing in this window.'));
}

const fromMap = (m) => Object.entries(m || {}).map(([label, count]) => ({ label, count }))
  .sort((a, b) => b.count - a.count);
const fromCounts = (list) => (list || []).map((c) => ({ label: c.value === '' ? '(none)' : c.value, value: c.value, count: c.count }));

function renderOverview(sum) {
  const secs = Math.max(1, sum.window_secs || 1);
  const rejects = (sum.by_decision || {}).reject || 0;
  const flags = (sum.by_decision || {}).flag || 0;
  const more = sum.truncated ? '≥ ' : '';
  const kpis = $('kpis');
  clear(kpis);
  kpis.append(
    kpi('requests/s', `${more}${fmtNum(sum.scanned / secs, 2)}`),
    kpi('rejects/s', `${more}${fmtNum(rejects / secs, 2)}`),
    kpi('requests in window', `${more}${fmtNum(sum.scanned)}`),
    kpi('rejected / flagged', `${fmtNum(rejects)} / ${fmtNum(flags)}`));
  const hist = (sum.risk_histogram || []).map((count, i) => ({
    label: `${(i / 10).toFixed(1)}–${((i + 1) / 10).toFixed(1)}`, min: (i / 10).toFixed(1), count,
  }));
  const charts = $('charts');
  // Keep keyboard focus on the same bar across refreshes.
  const focused = document.activeElement && document.activeElement.closest
    ? document.activeElement.closest('#charts .bar') : null;
  const focusKey = focused
    ? [focused.closest('section').getAttribute('aria-labelledby'), focused.querySelector('.label').textContent]
    : null;
  clear(charts);
  charts.append(
    barChart('Decisions', fromMap(sum.by_decision), (r) => ({ decision: r.label })),
    barChart('Top IPs', fromCounts(sum.top_ips), (r) => ({ ip: r.value })),
    barChart('Countries', fromCounts(sum.top_countries), (r) => ({ country: r.value })),
    barChart('Top paths', fromCounts(sum.top_paths), (r) => ({ path: r.value })),
    barChart('UA types', fromMap(sum.by_ua_type), (r) => ({ ua_type: r.label })),
    barChart('Risk histogram (click: risk ≥ bucket)', hist, (r) => ({ risk_min: r.min })));
  if (focusKey) {
    const again = [...charts.querySelectorAll(`section[aria-labelledby="${focusKey[0]}"] .bar`)]
      .find((b) => b.querySelector('.label').textContent === focusKey[1]);
    if (again) again.focus();
  }
}

// ---------------------------------------------------------------------------------------
// Gateway

const gw = { versions: [], cursor: null, users: new Map() };

function fillGatewayForm(cfg) {
  state.gateway = cfg;
  $('gw-version').textContent = `(version ${cfg.version})`;
  $('gw-ip-mode').value = cfg.ip_mode;
  $('gw-cidrs').value = (cfg.trusted_cidrs || []).join('\n');
  setThreshold(cfg.risk_reject_threshold);
  $('gw-mode').value = cfg.risk_mode || 'enforce';
}

function setThreshold(value) {
  const v = Number(value);
  $('gw-threshold').value = String(v);
  $('gw-threshold-num').value = String(v);
  $('gw-threshold-out').textContent = v.toFixed(3);
}

function gatewayBody() {
  const cfg = state.gateway || {};
  return {
    ip_mode: $('gw-ip-mode').value,
    trusted_cidrs: $('gw-cidrs').value.split(/[\n,]/).map((x) => x.trim()).filter(Boolean),
    risk_reject_threshold: Number($('gw-threshold-num').value),
    cdn_headers: cfg.cdn_headers,
    client_ip_header: cfg.client_ip_header,
    cdn_cidrs: cfg.cdn_cidrs || [],
    risk: cfg.risk ?? null,
    risk_mode: $('gw-mode').value,
    version: cfg.version,
  };
}

async function startGateway() {
  await guarded(async () => {
    fillGatewayForm(await api('GET', `${API}/gateway/config`));
    gw.versions = [];
    gw.cursor = null;
    await loadVersions();
  });
}

async function loadVersions() {
  const page = await api('GET', `${API}/gateway/config/versions${qs({ limit: 20, cursor: gw.cursor })}`);
  gw.versions.push(...page.items);
  gw.cursor = page.next_cursor;
  $('gw-versions-more').hidden = !gw.cursor;
  renderVersions();
}

const CONFIG_FIELDS = ['ip_mode', 'trusted_cidrs', 'risk_reject_threshold', 'risk_mode',
  'client_ip_header', 'cdn_headers', 'cdn_cidrs', 'risk'];

function describe(v) {
  if (v === null || v === undefined) return 'none';
  if (Array.isArray(v)) return v.length ? v.join(', ') : '[]';
  if (typeof v === 'object') return JSON.stringify(v);
  return String(v);
}

function renderVersions() {
  const tbody = $('gw-versions').querySelector('tbody');
  clear(tbody);
  gw.versions.forEach((v, i) => {
    const before = gw.versions[i + 1];
    const what = h('ul', { class: 'changes' });
    if (v.change) what.append(h('li', {}, v.change));
    if (before) {
      for (const f of CONFIG_FIELDS) {
        const a = JSON.stringify(before.config[f] ?? null);
        const b = JSON.stringify(v.config[f] ?? null);
        if (a !== b) what.append(h('li', {}, `${f}: ${describe(before.config[f])} → ${describe(v.config[f])}`));
      }
    } else if (!gw.cursor) {
      what.append(h('li', {}, `first version: threshold ${v.config.risk_reject_threshold}, ip_mode ${v.config.ip_mode}`));
    }
    const who = h('span', {}, v.created_by || '—');
    if (v.created_by) userLabel(v.created_by).then((label) => { who.textContent = label; });
    tbody.append(h('tr', {},
      h('td', { 'data-label': 'Version', class: 'num' }, String(v.version)),
      td('When', fmtDate(v.created_at)),
      td('Who', who),
      td('What changed', what)));
  });
  if (!gw.versions.length) tbody.append(h('tr', {}, h('td', { colspan: '4', 'data-label': 'Version' }, 'No version saved yet: the built-in defaults apply.')));
}

async function userLabel(id) {
  if (!gw.users.has(id)) {
    gw.users.set(id, api('GET', `${API}/users/${encodeURIComponent(id)}`)
      .then((u) => `${u.email} (${id})`).catch(() => id));
  }
  return gw.users.get(id);
}

function setupGateway() {
  $('gw-threshold').addEventListener('input', () => setThreshold($('gw-threshold').value));
  $('gw-threshold-num').addEventListener('input', () => {
    const v = $('gw-threshold-num').value;
    if (v !== '' && Number.isFinite(Number(v))) {
      $('gw-threshold').value = v;
      $('gw-threshold-out').textContent = Number(v).toFixed(3);
    }
  });
  $('gw-reset').addEventListener('click', () => {
    if (state.gateway) fillGatewayForm(state.gateway);
    $('gw-message').textContent = '';
  });
  $('gw-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const message = $('gw-message');
    message.textContent = 'Saving…';
    message.className = '';
    guarded(async () => {
      try {
        const saved = await api('PUT', `${API}/gateway/config`, gatewayBody());
        fillGatewayForm(saved);
        message.textContent = `Saved: version ${saved.version}, reject threshold ${saved.risk_reject_threshold}.`;
        gw.versions = [];
        gw.cursor = null;
        await loadVersions();
      } catch (e) {
        message.textContent = e.message;
        message.className = 'error';
        throw e;
      }
    });
  });
  $('gw-preview').addEventListener('click', () => {
    const out = $('gw-preview-out');
    clear(out);
    out.append(h('p', { class: 'hint' }, 'Replaying…'));
    guarded(async () => {
      const entries = Number($('gw-entries').value) || 1000;
      let p;
      try {
        p = await api('POST', `${API}/gateway/config/preview`, { ...gatewayBody(), entries });
      } catch (e) {
        clear(out);
        out.append(h('p', { class: 'error' }, e.message));
        throw e;
      }
      clear(out);
      out.append(
        h('p', { id: 'gw-preview-summary' },
          `Of the last ${fmtNum(p.examined)} entries, this config would reject ${fmtNum(p.would_reject)}, `
          + `flag ${fmtNum(p.would_flag)} and allow ${fmtNum(p.would_allow)}: `
          + `${fmtNum(p.newly_rejected)} newly rejected, ${fmtNum(p.no_longer_rejected)} no longer rejected.`),
        p.skipped ? h('p', { class: 'hint' }, `${fmtNum(p.skipped)} entries could not be replayed.`) : null);
      const top = (label, list) => (list && list.length
        ? h('div', {}, h('h4', {}, label), h('ul', {}, list.map((c) => h('li', {}, `${c.value || '(none)'}: ${fmtNum(c.count)}`))))
        : null);
      out.append(top('Top IPs it would reject', p.top_ips), top('Top paths', p.top_paths), top('Top countries', p.top_countries));
    });
  });
  $('gw-versions-more').addEventListener('click', () => guarded(loadVersions));
}

// ---------------------------------------------------------------------------------------
// Platform: cursor-paged tables

/** A cursor-paged table of `GET path` (`{items, next_cursor}`) in `container`. */
function pagedTable(container, { caption, path, params = {}, columns, pageSize = 20 }) {
  const tbody = h('tbody');
  const more = h('button', { type: 'button', class: 'secondary', hidden: true }, 'Load more');
  const table = h('table', { class: 'data' },
    h('caption', { class: 'sr-only' }, caption),
    h('thead', {}, h('tr', {}, columns.map((c) => h('th', { scope: 'col' }, c.label)))),
    tbody);
  container.append(h('div', { class: 'table-wrap' }, table), more);
  let cursor = null;
  let loaded = 0;
  async function load() {
    const page = await api('GET', `${path}${qs({ ...params, limit: pageSize, cursor })}`);
    for (const item of page.items) {
      tbody.append(h('tr', { dataset: { id: item.id || item.code || '' } },
        columns.map((c) => td(c.label, c.value(item)))));
    }
    loaded += page.items.length;
    if (!loaded) tbody.append(h('tr', {}, h('td', { colspan: String(columns.length), 'data-label': columns[0].label }, 'Nothing here.')));
    cursor = page.next_cursor;
    more.hidden = !cursor;
  }
  more.addEventListener('click', () => guarded(load));
  return guarded(load);
}

const yesNo = (b) => (b ? 'yes' : 'no');
const short = (v, n = 160) => {
  const text = typeof v === 'string' ? v : JSON.stringify(v);
  return text && text.length > n ? `${text.slice(0, n)}…` : (text ?? '');
};

const TABS = {
  users: renderUsers,
  orgs: renderOrgs,
  codes: renderCodes,
  credits: renderCredits,
  audit: renderAudit,
};

function startPlatform() {
  const current = document.querySelector('#platform-tabs [aria-selected="true"]');
  selectTab(current ? current.dataset.tab : 'users');
}

function selectTab(name) {
  for (const tab of document.querySelectorAll('#platform-tabs [role="tab"]')) {
    const on = tab.dataset.tab === name;
    tab.setAttribute('aria-selected', String(on));
    tab.tabIndex = on ? 0 : -1;
    if (on) $('panel').setAttribute('aria-labelledby', tab.id);
  }
  const panel = $('panel');
  clear(panel);
  clearError();
  TABS[name](panel);
}

function setupPlatform() {
  const tabs = [...document.querySelectorAll('#platform-tabs [role="tab"]')];
  for (const tab of tabs) {
    tab.addEventListener('click', () => selectTab(tab.dataset.tab));
    tab.addEventListener('keydown', (ev) => {
      const i = tabs.indexOf(tab);
      let next = null;
      if (ev.key === 'ArrowRight') next = tabs[(i + 1) % tabs.length];
      if (ev.key === 'ArrowLeft') next = tabs[(i - 1 + tabs.length) % tabs.length];
      if (ev.key === 'Home') [next] = tabs;
      if (ev.key === 'End') next = tabs[tabs.length - 1];
      if (next) {
        ev.preventDefault();
        selectTab(next.dataset.tab);
        next.focus();
      }
    });
  }
}

function renderUsers(panel) {
  const form = h('form', { class: 'toolbar', id: 'users-search', novalidate: true },
    h('div', {}, h('label', { for: 'users-q' }, 'Search users'), h('input', { id: 'users-q', type: 'search', autocomplete: 'off' })),
    h('div', {}, h('label', { for: 'users-status' }, 'Status'),
      h('select', { id: 'users-status' }, h('option', { value: '' }, 'any'), h('option', {}, 'active'), h('option', {}, 'disabled'))),
    h('button', { type: 'submit', id: 'users-go' }, 'Search'));
  const list = h('div', { id: 'users-list' });
  const sub = h('div', { class: 'sub', id: 'users-sub', 'aria-live': 'polite' });
  panel.append(form, list, sub);
  const load = () => {
    clear(list);
    clear(sub);
    pagedTable(list, {
      caption: 'Users, newest first',
      path: `${API}/users`,
      params: { q: $('users-q').value, status: $('users-status').value },
      columns: [
        { label: 'Email', value: (u) => u.email },
        { label: 'Username', value: (u) => u.username },
        { label: 'Role', value: (u) => u.role },
        { label: 'Status', value: (u) => h('span', { class: 'user-status' }, u.status) },
        { label: 'MFA', value: (u) => yesNo(u.mfa_enrolled) },
        { label: 'Created', value: (u) => fmtDate(u.created_at) },
        { label: 'Actions', value: (u) => userActions(u, sub) },
      ],
    });
  };
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    load();
  });
  load();
}

function userActions(u, sub) {
  const toggle = h('button', { type: 'button', class: u.status === 'active' ? 'danger' : '', dataset: { action: 'toggle-status', id: u.id } },
    u.status === 'active' ? 'Disable' : 'Enable');
  toggle.setAttribute('aria-label', `${u.status === 'active' ? 'Disable' : 'Enable'} ${u.email}`);
  toggle.addEventListener('click', () => guarded(async () => {
    const next = u.status === 'active' ? 'disabled' : 'active';
    const saved = await api('PATCH', `${API}/users/${encodeURIComponent(u.id)}`, { status: next });
    Object.assign(u, saved);
    const row = toggle.closest('tr');
    row.querySelector('.user-status').textContent = saved.status;
    const label = saved.status === 'active' ? 'Disable' : 'Enable';
    toggle.textContent = label;
    toggle.setAttribute('aria-label', `${label} ${u.email}`);
    toggle.className = saved.status === 'active' ? 'danger' : '';
    status(`${u.email} is now ${saved.status}.`);
  }));
  const sessions = h('button', { type: 'button', class: 'secondary', 'aria-label': `Sessions of ${u.email}`, dataset: { action: 'sessions', id: u.id } }, 'Sessions');
  sessions.addEventListener('click', () => showSessions(u, sub));
  const impersonate = h('button', { type: 'button', class: 'secondary', 'aria-label': `Impersonate ${u.email}`, dataset: { action: 'impersonate', id: u.id } }, 'Impersonate');
  impersonate.addEventListener('click', () => showImpersonate(u, sub));
  return h('div', { class: 'row-actions' }, toggle, sessions, impersonate);
}

function showSessions(u, sub) {
  clear(sub);
  const heading = h('h3', { tabindex: '-1' }, `Active sessions of ${u.email}`);
  const list = h('div');
  const revokeAll = h('button', { type: 'button', class: 'danger' }, 'Revoke all sessions');
  sub.append(heading, revokeAll, list);
  const reload = () => {
    clear(list);
    return pagedTable(list, {
      caption: `Sessions of ${u.email}`,
      path: `${API}/users/${encodeURIComponent(u.id)}/sessions`,
      columns: [
        { label: 'Started', value: (x) => fmtDate(x.created_at) },
        { label: 'Last seen', value: (x) => fmtDate(x.last_seen_at) },
        { label: 'Expires', value: (x) => fmtDate(x.expires_at) },
        { label: 'IP', value: (x) => x.ip || '' },
        { label: 'User agent', value: (x) => x.user_agent || '' },
        { label: 'Impersonated by', value: (x) => person(x.impersonated_by) },
        {
          label: 'Revoke',
          value: (x) => h('button', {
            type: 'button', class: 'danger', 'aria-label': `Revoke session ${x.id}`,
            onclick: () => guarded(async () => {
              await api('DELETE', `${API}/users/${encodeURIComponent(u.id)}/sessions/${encodeURIComponent(x.id)}`);
              status(`Session ${x.id} revoked.`);
              await reload();
            }),
          }, 'Revoke'),
        },
      ],
    });
  };
  revokeAll.addEventListener('click', () => guarded(async () => {
    let revoked = 0;
    for (;;) {
      const page = await api('GET', `${API}/users/${encodeURIComponent(u.id)}/sessions?limit=100`);
      if (!page.items.length) break;
      for (const x of page.items) {
        await api('DELETE', `${API}/users/${encodeURIComponent(u.id)}/sessions/${encodeURIComponent(x.id)}`);
        revoked += 1;
      }
    }
    status(`${revoked} session${revoked === 1 ? '' : 's'} of ${u.email} revoked.`);
    await reload();
  }));
  reload();
  heading.focus();
}

function showImpersonate(u, sub) {
  clear(sub);
  const out = h('div', { 'aria-live': 'polite' });
  const form = h('form', { class: 'card', novalidate: true },
    h('h3', { tabindex: '-1' }, `Impersonate ${u.email}`),
    h('p', { class: 'hint' }, 'Issues a short-lived session token acting as this user; the reason goes to the audit log.'),
    h('label', { for: 'imp-reason' }, 'Reason'),
    h('input', { id: 'imp-reason', required: true, maxlength: '500', autocomplete: 'off' }),
    h('label', { for: 'imp-expires' }, 'Lifetime'),
    h('select', { id: 'imp-expires' }, h('option', { value: '15m' }, '15 minutes'), h('option', { value: '1h', selected: true }, '1 hour'), h('option', { value: '4h' }, '4 hours')),
    h('button', { type: 'submit' }, 'Issue token'),
    out);
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    guarded(async () => {
      const t = await api('POST', `${API}/users/impersonate`, {
        user_id: u.id, reason: $('imp-reason').value, expires_in: $('imp-expires').value,
      });
      clear(out);
      out.append(
        h('p', {}, `Token for ${u.email}, valid until ${fmtDate(t.expires_at)} (shown once; audit entry ${t.audit_id}):`),
        h('output', { class: 'token' }, t.access_token));
    });
  });
  sub.append(form);
  form.querySelector('h3').focus();
}

function renderOrgs(panel) {
  const form = h('form', { class: 'toolbar', novalidate: true },
    h('div', {}, h('label', { for: 'orgs-q' }, 'Search organizations'), h('input', { id: 'orgs-q', type: 'search', autocomplete: 'off' })),
    h('button', { type: 'submit' }, 'Search'));
  const list = h('div');
  const sub = h('div', { class: 'sub', 'aria-live': 'polite' });
  panel.append(form, list, sub);
  const load = () => {
    clear(list);
    clear(sub);
    pagedTable(list, {
      caption: 'Organizations, newest first',
      path: `${API}/organizations`,
      params: { q: $('orgs-q').value },
      columns: [
        { label: 'Name', value: (o) => o.name },
        { label: 'Display name', value: (o) => o.display_name },
        { label: 'Plan', value: (o) => o.plan },
        { label: 'Enabled', value: (o) => yesNo(o.enabled) },
        { label: 'Credits balance', value: (o) => fmtNum(o.credits_balance) },
        { label: 'Created', value: (o) => fmtDate(o.created_at) },
        {
          label: 'Members',
          value: (o) => h('button', {
            type: 'button', class: 'secondary', 'aria-label': `Members of ${o.name}`,
            onclick: () => {
              clear(sub);
              const heading = h('h3', { tabindex: '-1' }, `Members of ${o.display_name || o.name}`);
              sub.append(heading);
              pagedTable(sub, {
                caption: `Members of ${o.name}`,
                path: `${API}/organizations/${encodeURIComponent(o.id)}/users`,
                columns: [
                  { label: 'Email', value: (m) => m.email },
                  { label: 'Username', value: (m) => m.username },
                  { label: 'Role', value: (m) => m.organization_role },
                  { label: 'Status', value: (m) => m.status },
                  { label: 'Joined', value: (m) => fmtDate(m.joined_at) },
                ],
              });
              heading.focus();
            },
          }, 'Members'),
        },
      ],
    });
  };
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    load();
  });
  load();
}

function renderCodes(panel) {
  const inv = h('section', { 'aria-labelledby': 'inv-title' }, h('h3', { id: 'inv-title' }, 'Invitation codes'));
  const red = h('section', { 'aria-labelledby': 'red-title', class: 'sub' }, h('h3', { id: 'red-title' }, 'Redemption codes'));
  panel.append(inv, red);
  pagedTable(inv, {
    caption: 'Invitation codes',
    path: `${API}/invitation-codes`,
    columns: [
      { label: 'Code', value: (c) => c.code },
      { label: 'Owner', value: (c) => c.user_id },
      { label: 'Uses', value: (c) => `${c.uses} / ${c.max_uses}` },
      { label: 'Active', value: (c) => yesNo(c.is_active) },
      { label: 'Created', value: (c) => fmtDate(c.created_at) },
    ],
  });
  pagedTable(red, {
    caption: 'Redemption codes',
    path: `${API}/redemption-codes`,
    columns: [
      { label: 'Code', value: (c) => c.code },
      { label: 'Batch', value: (c) => c.batch_id },
      { label: 'Type', value: (c) => c.code_type },
      { label: 'Value', value: (c) => fmtNum(c.value) },
      { label: 'Uses', value: (c) => `${c.uses} / ${c.max_uses}` },
      { label: 'Active', value: (c) => yesNo(c.is_active) },
      { label: 'Expires', value: (c) => fmtDate(c.expires_at) },
    ],
  });
}

function renderCredits(panel) {
  pagedTable(panel, {
    caption: 'Credit transactions, newest first',
    path: `${API}/credits/transactions`,
    columns: [
      { label: 'When', value: (t) => fmtDate(t.created_at) },
      { label: 'Organization', value: (t) => t.organization_id },
      { label: 'Type', value: (t) => t.transaction_type },
      { label: 'Amount', value: (t) => fmtNum(t.credits_amount) },
      { label: 'Balance after', value: (t) => fmtNum(t.balance_after) },
      { label: 'Description', value: (t) => t.description },
      { label: 'Actor', value: (t) => t.actor_id || '' },
    ],
  });
}

// A person named by the API as {id, email}: the email when it is known (null once erased),
// else the id.
function person(p) {
  if (!p) return '';
  return p.email || p.id || '';
}

function renderAudit(panel) {
  const form = h('form', { class: 'toolbar', novalidate: true },
    h('div', {}, h('label', { for: 'audit-action' }, 'Action'), h('input', { id: 'audit-action', autocomplete: 'off', placeholder: 'user.updated' })),
    h('div', {}, h('label', { for: 'audit-actor' }, 'Actor id'), h('input', { id: 'audit-actor', autocomplete: 'off' })),
    h('button', { type: 'submit' }, 'Filter'));
  const list = h('div');
  panel.append(form, list);
  const load = () => {
    clear(list);
    pagedTable(list, {
      caption: 'Audit log, newest first',
      path: `${API}/audit-logs`,
      params: { action: $('audit-action').value, actor_id: $('audit-actor').value },
      columns: [
        { label: 'When', value: (a) => fmtDate(a.created_at) },
        {
          label: 'Actor',
          value: (a) => {
            const who = a.actor && a.actor.type === 'system' ? 'system' : person(a.actor);
            return a.impersonated_by ? `${who} (by ${person(a.impersonated_by)})` : who;
          },
        },
        { label: 'Action', value: (a) => a.action },
        { label: 'Resource', value: (a) => `${a.resource_type} ${a.resource_id || ''}` },
        { label: 'Changes', value: (a) => short(a.changes) },
        { label: 'IP', value: (a) => a.ip || '' },
        { label: 'Request', value: (a) => a.request_id || '' },
      ],
    });
  };
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    load();
  });
  load();
}

// ---------------------------------------------------------------------------------------

function main() {
  setupSignIn();
  setupLog();
  setupGateway();
  setupPlatform();
  $('o-window').addEventListener('change', () => {
    if (state.page === 'overview') startOverview();
  });
  window.addEventListener('hashchange', route);
  $('email').focus();
}

main();
