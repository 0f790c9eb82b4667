// stagecast producer console. Plain JS, no dependencies; talks only to the
// producer API of the origin it came from. Data never goes through innerHTML.
'use strict';

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = 'stagecast-producer-token';
const st = {
  token: sessionStorage.getItem(TOKEN_KEY) || '',
  event: null,
  map: null,        // the stored stage map (parsed), or null
  mapText: '',      // its pretty text
  current: null,    // {stage, v, ts} or null
  series: null,     // {v, stage, points: [{t, sent, acked}]}
  prev: null,       // the previous change's series
  pollTimer: null,
  refreshTimer: null,
};

class APIError extends Error {
  constructor(msg, status, data) { super(msg); this.status = status; this.data = data; }
}

async function api(method, path, body, headers) {
  const h = Object.assign({ Authorization: 'Bearer ' + st.token }, headers || {});
  const init = { method, headers: h, cache: 'no-store' };
  if (body !== undefined) {
    h['Content-Type'] = 'application/json';
    init.body = typeof body === 'string' ? body : JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { /* not JSON */ }
  if (!resp.ok) {
    const msg = data && data.error ? `${data.error.code}: ${data.error.msg}` : `HTTP ${resp.status}`;
    throw new APIError(msg, resp.status, data);
  }
  return data;
}

function el(tag, text, attrs) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

function row(cells) {
  const tr = document.createElement('tr');
  for (const c of cells) tr.appendChild(c instanceof Node ? wrapTd(c) : el('td', c));
  return tr;
}
function wrapTd(node) { const td = document.createElement('td'); td.appendChild(node); return td; }
function fmtTime(ms) { return ms ? new Date(ms).toLocaleTimeString() : ''; }
function fmtMS(v) { return v === null || v === undefined ? '—' : `${v} ms`; }
function enc(s) { return encodeURIComponent(s); }
function list(s) { return s.split(',').map((x) => x.trim()).filter(Boolean); }

// ---- sign in ----

async function signIn(tok) {
  st.token = tok;
  $('signin-error').textContent = '';
  try {
    const me = await api('GET', '/v1/whoami');
    sessionStorage.setItem(TOKEN_KEY, tok);
    $('who').textContent = `Signed in as ${me.producer}` + (me.events && me.events.length ? ` (events ${me.events.join(', ')})` : '');
    $('signin').hidden = true;
    $('app').hidden = false;
    $('signout').hidden = false;
    await refreshEvents();
    clearInterval(st.refreshTimer);
    st.refreshTimer = setInterval(() => { refreshEvents(); if (st.event) { refreshCurrent(); refreshAudit(); } }, 3000);
  } catch (e) {
    st.token = '';
    sessionStorage.removeItem(TOKEN_KEY);
    $('signin-error').textContent = e.status === 401 ? 'Sign-in failed: the token was refused.' : `Sign-in failed: ${e.message}`;
  }
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  location.reload();
}

// ---- events ----

async function refreshEvents() {
  try {
    const data = await api('GET', '/v1/events?limit=50');
    const body = $('event-rows');
    body.replaceChildren();
    for (const ev of data.events) {
      const cur = ev.current;
      const tr = row([ev.event, cur ? cur.key : '—', cur ? cur.v : '—', ev.devices, ev.live ? 'on' : 'off']);
      tr.className = 'clickable';
      tr.tabIndex = 0;
      tr.dataset.event = ev.event;
      tr.addEventListener('click', () => openEvent(ev.event));
      tr.addEventListener('keydown', (k) => { if (k.key === 'Enter') openEvent(ev.event); });
      body.appendChild(tr);
    }
    $('events-error').textContent = '';
  } catch (e) {
    $('events-error').textContent = `Events: ${e.message}`;
  }
}

async function openEvent(name) {
  st.event = name;
  st.series = null;
  st.prev = null;
  $('event').hidden = false;
  $('event-h').textContent = `Event ${name}`;
  $('change-result').textContent = '';
  $('change-error').textContent = '';
  $('map-error').textContent = '';
  $('map-diff-out').replaceChildren();
  await Promise.all([loadMap(), refreshCurrent(), refreshAudit()]);
  if (st.current) startConvergence(st.current.v, st.current.stage);
  else drawChart();
}

async function refreshCurrent() {
  if (!st.event) return;
  try {
    const cur = await api('GET', `/v1/events/${enc(st.event)}`);
    st.current = { stage: cur.stage, v: cur.v, ts: cur.ts };
    $('current').textContent = `Current stage: ${cur.stage} (v${cur.v}, ${fmtTime(cur.ts)})`;
  } catch (e) {
    if (e.status !== 404) { $('current').textContent = `Current stage unknown: ${e.message}`; return; }
    st.current = null;
    $('current').textContent = 'No stage yet.';
  }
  renderButtons();
}

// ---- stage map ----

async function loadMap() {
  try {
    const m = await api('GET', `/v1/events/${enc(st.event)}/stages`);
    st.map = m.map;
    st.mapText = JSON.stringify(m.map, null, 2);
    $('map-info').textContent = `Stored map version ${m.version}, updated ${fmtTime(m.updated)}.`;
  } catch (e) {
    st.map = null;
    st.mapText = '';
    $('map-info').textContent = e.status === 404 ? 'No stage map stored yet.' : `Stage map: ${e.message}`;
  }
  $('map-text').value = st.mapText;
  $('map-save').disabled = true;
  renderButtons();
}

function stageKeys() {
  return st.map && st.map.stages ? Object.keys(st.map.stages) : [];
}

// lineOf returns the 1-based line of character offset pos in text.
function lineOf(text, pos) { return text.slice(0, pos).split('\n').length; }

function checkMap() {
  const text = $('map-text').value;
  $('map-error').textContent = '';
  const out = $('map-diff-out');
  out.replaceChildren();
  let parsed;
  try {
    parsed = JSON.parse(text);
  } catch (e) {
    const m = /position (\d+)/.exec(e.message);
    const pos = m ? Number(m[1]) : jsonErrorAt(text);
    const line = pos >= 0 ? lineOf(text, pos) : null;
    $('map-error').textContent = (line ? `Line ${line}: ` : '') + e.message;
    if (line) selectLine(line);
    $('map-save').disabled = true;
    return null;
  }
  const next = JSON.stringify(parsed, null, 2);
  const diff = lineDiff(st.mapText ? st.mapText.split('\n') : [], next.split('\n'));
  if (!diff.some((d) => d.op !== ' ')) out.appendChild(el('span', 'No change from the stored map.'));
  for (const d of diff) {
    if (d.op === ' ') continue;
    out.appendChild(el('span', `${d.op} ${d.line}\n`, { class: d.op === '+' ? 'add' : 'del' }));
  }
  $('map-save').disabled = false;
  return text;
}

// jsonErrorAt returns the offset of the first JSON syntax error in text (-1 if
// none): browsers do not all say where JSON.parse failed.
function jsonErrorAt(text) {
  let i = 0;
  const ws = () => { while (i < text.length && ' \t\r\n'.includes(text[i])) i++; };
  const fail = () => { throw i; };
  const lit = (w) => { if (text.startsWith(w, i)) i += w.length; else fail(); };
  const str = () => {
    i++;
    while (i < text.length && text[i] !== '"') { if (text[i] === '\\') i++; else if (text.charCodeAt(i) < 0x20) fail(); i++; }
    if (i >= text.length) fail();
    i++;
  };
  const num = () => { const m = /^-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/.exec(text.slice(i)); if (!m) fail(); i += m[0].length; };
  const value = () => {
    ws();
    const c = text[i];
    if (c === '{') {
      i++; ws();
      if (text[i] === '}') { i++; return; }
      for (;;) { ws(); if (text[i] !== '"') fail(); str(); ws(); if (text[i] !== ':') fail(); i++; value(); ws(); if (text[i] === ',') { i++; continue; } if (text[i] === '}') { i++; return; } fail(); }
    } else if (c === '[') {
      i++; ws();
      if (text[i] === ']') { i++; return; }
      for (;;) { value(); ws(); if (text[i] === ',') { i++; continue; } if (text[i] === ']') { i++; return; } fail(); }
    } else if (c === '"') str();
    else if (c === 't') lit('true');
    else if (c === 'f') lit('false');
    else if (c === 'n') lit('null');
    else num();
  };
  try { value(); ws(); if (i < text.length) fail(); return -1; } catch (pos) { return typeof pos === 'number' ? pos : -1; }
}

function selectLine(n) {
  const ta = $('map-text');
  const lines = ta.value.split('\n');
  let start = 0;
  for (let i = 0; i < n - 1 && i < lines.length; i++) start += lines[i].length + 1;
  ta.focus();
  ta.setSelectionRange(start, start + (lines[n - 1] || '').length);
}

// lineDiff is a longest-common-subsequence line diff (maps are small).
function lineDiff(a, b) {
  const n = a.length, m = b.length;
  if (n * m > 4e6) return [...a.map((l) => ({ op: '-', line: l })), ...b.map((l) => ({ op: '+', line: l }))];
  const dp = Array.from({ length: n + 1 }, () => new Int32Array(m + 1));
  for (let i = n - 1; i >= 0; i--) for (let j = m - 1; j >= 0; j--) dp[i][j] = a[i] === b[j] ? dp[i + 1][j + 1] + 1 : Math.max(dp[i + 1][j], dp[i][j + 1]);
  const out = [];
  let i = 0, j = 0;
  while (i < n && j < m) {
    if (a[i] === b[j]) { out.push({ op: ' ', line: a[i] }); i++; j++; }
    else if (dp[i + 1][j] >= dp[i][j + 1]) out.push({ op: '-', line: a[i++] });
    else out.push({ op: '+', line: b[j++] });
  }
  while (i < n) out.push({ op: '-', line: a[i++] });
  while (j < m) out.push({ op: '+', line: b[j++] });
  return out;
}

async function saveMap() {
  const text = checkMap();
  if (text === null) return;
  $('map-save').disabled = true;
  try {
    await api('PUT', `/v1/events/${enc(st.event)}/stages`, text);
    await loadMap();
    $('map-diff-out').replaceChildren(el('span', 'Saved.', { class: 'ok' }));
    refreshAudit();
    refreshEvents();
  } catch (e) {
    // Point at the line the server's message names, where it names a stage.
    let msg = e.message;
    const m = /stage "?([a-z0-9][a-z0-9._-]*)"?/.exec(msg);
    if (m) {
      const idx = text.indexOf(`"${m[1]}"`);
      if (idx >= 0) { const line = lineOf(text, idx); msg = `Line ${line}: ${msg}`; selectLine(line); }
    }
    $('map-error').textContent = msg;
    $('map-save').disabled = false;
  }
}

// ---- go live ----

function renderButtons() {
  const box = $('stage-buttons');
  const keys = stageKeys();
  const have = [...box.querySelectorAll('button')].map((b) => b.dataset.stage);
  if (have.length && have.join('\n') === keys.join('\n')) {
    // Same buttons: only the highlight moves (focus and pending clicks stay).
    for (const b of box.querySelectorAll('button')) b.setAttribute('aria-pressed', String(!!st.current && st.current.stage === b.dataset.stage));
    return;
  }
  box.replaceChildren();
  if (!keys.length) box.appendChild(el('p', 'Store a stage map to get one button per stage.', { class: 'hint' }));
  keys.forEach((key, i) => {
    const b = el('button', key, { type: 'button', 'data-stage': key, 'aria-pressed': String(!!st.current && st.current.stage === key) });
    if (i < 9) b.appendChild(el('span', `key ${i + 1}`, { class: 'k' }));
    b.addEventListener('click', () => goLive(key));
    box.appendChild(b);
  });
}

function target() {
  const t = {};
  const p = list($('platforms').value), s = list($('segments').value);
  if (p.length) t.platforms = p;
  if (s.length) t.segments = s;
  return Object.keys(t).length ? t : undefined;
}

async function goLive(stage) {
  const tgt = target();
  const critical = $('critical').checked;
  // One key per intent: the stage, its targeting and the version the producer
  // saw. A second press before the reply has the same key; a press on the stage
  // this console just made live reuses that change's key. Either way a double
  // press or a retry replays the change: never a second version.
  const intent = [stage, JSON.stringify(tgt || {}), critical ? 'c' : ''].join(':');
  const seen = st.current ? st.current.v : 0;
  let key = ['console', st.event, seen, intent].join(':');
  if (st.last && st.last.event === st.event && st.last.intent === intent && st.current && st.current.v === st.last.v) key = st.last.key;
  key = key.replace(/[^\x21-\x7e]/g, '').slice(0, 200);
  $('change-error').textContent = '';
  try {
    const body = { stage };
    if (tgt) body.target = tgt;
    if (critical) body.priority = 'critical';
    const r = await api('POST', `/v1/events/${enc(st.event)}/stage`, body, { 'Idempotency-Key': key });
    st.current = { stage: r.stage, v: r.v, ts: r.ts };
    st.last = { event: st.event, intent, v: r.v, key };
    $('change-result').textContent = `${r.stage} is live: v${r.v}`;
    $('current').textContent = `Current stage: ${r.stage} (v${r.v}, ${fmtTime(r.ts)})`;
    renderButtons();
    startConvergence(r.v, r.stage);
    refreshAudit();
  } catch (e) {
    $('change-error').textContent = `Not changed: ${e.message}` + (e.status === 503 ? ' (press again: the same key never makes a second version)' : '');
  }
}

// ---- convergence ----

function startConvergence(v, stage) {
  if (st.series && st.series.v === v) return;
  if (st.series) st.prev = st.series;
  st.series = { v, stage, points: [], done: 0 };
  clearInterval(st.pollTimer);
  const started = Date.now();
  const poll = async () => {
    const s = st.series;
    if (!s || s.v !== v) return;
    try {
      const rep = await api('GET', `/v1/events/${enc(st.event)}/report?v=${v}`);
      const t = Math.max(0, (Date.now() - rep.ts) / 1000);
      s.points.push({ t, sent: rep.sent_pct, acked: rep.acked_pct });
      s.last = rep;
      renderConvergence(rep);
      s.done = rep.sent_pct >= 100 && rep.acked_pct >= 100 ? s.done + 1 : 0;
    } catch (e) {
      $('conv-summary').textContent = `Report: ${e.message}`;
    }
    // Every 500 ms while it moves; stop once everyone acked for 3 s, or after 2 minutes.
    if (s.done >= 6 || Date.now() - started > 120000) clearInterval(st.pollTimer);
  };
  poll();
  st.pollTimer = setInterval(poll, 500);
}

function renderConvergence(rep) {
  const p = rep.sent_ms || {};
  $('conv-summary').textContent = `v${rep.v} (${rep.stage}): ${rep.sent_pct.toFixed(1)}% sent, ${rep.acked_pct.toFixed(1)}% acked of ${rep.devices} connected devices; ` +
    `sent to 50% in ${fmtMS(p.p50)}, 99% in ${fmtMS(p.p99)}, 100% in ${fmtMS(p.p100)}`;
  const body = $('proxy-rows');
  body.replaceChildren();
  for (const pr of rep.per_proxy || []) {
    const q = pr.sent_ms || {};
    body.appendChild(row([pr.proxy + (pr.stale ? ' (stale)' : ''), pr.devices, pr.sent, pr.acked, fmtMS(q.p50), fmtMS(q.p99), fmtMS(q.p100)]));
  }
  drawChart();
}

const SVGNS = 'http://www.w3.org/2000/svg';
function svg(tag, attrs, text) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function drawChart() {
  const c = $('chart');
  const title = $('chart-title');
  c.replaceChildren(title);
  const L = 40, R = 410, T = 10, B = 190;
  const pts = st.series ? st.series.points : [];
  const prev = st.prev ? st.prev.points : [];
  const tmax = Math.max(5, ...pts.map((p) => p.t), ...prev.map((p) => p.t));
  const x = (t) => L + (R - L) * (t / tmax);
  const y = (pct) => B - (B - T) * (pct / 100);
  for (const pct of [0, 25, 50, 75, 100]) {
    c.appendChild(svg('line', { x1: L, x2: R, y1: y(pct), y2: y(pct), class: pct ? 'grid' : 'axis' }));
    c.appendChild(svg('text', { x: 4, y: y(pct) + 3 }, `${pct}%`));
  }
  c.appendChild(svg('line', { x1: L, x2: L, y1: T, y2: B, class: 'axis' }));
  for (let i = 0; i <= 5; i++) {
    const t = (tmax * i) / 5;
    c.appendChild(svg('text', { x: x(t) - 8, y: B + 14 }, `${t.toFixed(t < 10 ? 1 : 0)}s`));
  }
  c.appendChild(svg('text', { x: R - 140, y: B + 28 }, 'seconds since the change'));
  const line = (points, key, cls) => {
    if (!points.length) return;
    c.appendChild(svg('polyline', { points: points.map((p) => `${x(p.t).toFixed(1)},${y(p[key]).toFixed(1)}`).join(' '), class: cls }));
  };
  line(pts, 'sent', 'sent');
  line(pts, 'acked', 'acked');
  line(prev, 'sent', 'prev');
  const last = pts[pts.length - 1];
  c.dataset.sent = last ? String(last.sent) : '0';
  c.dataset.acked = last ? String(last.acked) : '0';
  c.dataset.v = st.series ? String(st.series.v) : '';
}

// ---- audit ----

async function refreshAudit() {
  if (!st.event) return;
  try {
    const data = await api('GET', `/v1/events/${enc(st.event)}/audit?limit=50`);
    const body = $('audit-rows');
    body.replaceChildren();
    for (const a of data.audit) body.appendChild(row([fmtTime(a.at), a.producer, a.action, a.stage || '', a.v || '', a.result, a.detail || '']));
  } catch (_) { /* the next refresh tries again */ }
}

// ---- notifications ----

async function sendNote(ev) {
  ev.preventDefault();
  const btn = ev.submitter || $('note-form').querySelector('button');
  $('note-error').textContent = '';
  let payload;
  try { payload = JSON.parse($('note-payload').value || 'null'); } catch (e) { $('note-error').textContent = `Payload: ${e.message}`; return; }
  const body = { to: { members: list($('note-members').value), devices: list($('note-devices').value) },
    type: $('note-type').value.trim(), priority: $('note-priority').value, payload };
  btn.disabled = true;
  try {
    const r = await api('POST', '/v1/notifications', body, { 'Idempotency-Key': 'console-' + crypto.randomUUID() });
    $('note-result').textContent = `Notification ${r.id} (${r.priority}) stored in ${r.stored} inboxes, pushed to ${r.pushes} proxy registrations.`;
    let n = 0;
    const t = setInterval(async () => {
      try { $('note-report').textContent = JSON.stringify(await api('GET', `/v1/notifications/${enc(r.id)}/report`), null, 2); } catch (_) { /* next tick */ }
      if (++n >= 10) clearInterval(t);
    }, 1000);
  } catch (e) {
    $('note-error').textContent = `Not sent: ${e.message}`;
  } finally {
    btn.disabled = false;
  }
}

// ---- wiring ----

document.addEventListener('DOMContentLoaded', () => {
  $('signin-form').addEventListener('submit', (e) => { e.preventDefault(); signIn($('token').value.trim()); });
  $('signout').addEventListener('click', signOut);
  $('open-form').addEventListener('submit', (e) => { e.preventDefault(); const v = $('open-event').value.trim(); if (v) openEvent(v); });
  $('other-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const s = $('other-stage').value.trim();
    if (!s) return;
    if (!stageKeys().includes(s) && !confirm(`"${s}" is not in the stage map: devices will not find a payload for it. Go live anyway?`)) return;
    goLive(s);
  });
  $('map-diff').addEventListener('click', checkMap);
  $('map-save').addEventListener('click', saveMap);
  $('map-text').addEventListener('input', () => { $('map-save').disabled = true; });
  $('map-file').addEventListener('change', async (e) => {
    const f = e.target.files[0];
    if (f) { $('map-text').value = await f.text(); checkMap(); }
  });
  $('note-form').addEventListener('submit', sendNote);
  document.addEventListener('keydown', (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey || /^(INPUT|TEXTAREA|SELECT)$/.test(e.target.tagName)) return;
    if (/^[1-9]$/.test(e.key) && st.event) {
      const b = $('stage-buttons').querySelectorAll('button')[Number(e.key) - 1];
      if (b) { e.preventDefault(); b.click(); }
    }
  });
  if (st.token) signIn(st.token);
});
