// hlcopy dashboard: one page over the daemon's JSON API and live feed. No build step, nothing
// loaded from elsewhere. Everything that came from the daemon (and so from the exchange) goes
// into the page as text nodes or attribute values: never as markup.
'use strict';

(() => {
  const TOKEN_KEY = 'hlcopy.token';
  const ADDRESS = /^0x[0-9a-f]{40}$/;
  const WINDOWS = ['day', 'week', 'month', 'allTime'];
  const RISK_LEVELS = ['LOW', 'MEDIUM', 'HIGH', 'EXTREME'];
  const STYLES = ['scalper', 'day', 'swing', 'position'];
  const STATE_ORDER = { active: 0, reducing: 1, halted: 2 };
  const REFRESH_MS = { status: 5000, copying: 8000 };
  const DEFAULT_REFRESH_MS = 15000;

  // -- DOM building: text only ---------------------------------------------------------------

  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    setProps(el, props);
    appendAll(el, children);
    return el;
  }

  const SVG_NS = 'http://www.w3.org/2000/svg';
  function s(tag, props, ...children) {
    const el = document.createElementNS(SVG_NS, tag);
    setProps(el, props);
    appendAll(el, children);
    return el;
  }

  function setProps(el, props) {
    if (!props) return;
    for (const [key, value] of Object.entries(props)) {
      if (value === null || value === undefined || value === false) continue;
      if (key === 'class') el.setAttribute('class', value);
      else if (key === 'text') el.textContent = String(value);
      else if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
      else if (key === 'href') el.setAttribute('href', safeHref(value));
      else el.setAttribute(key, value === true ? '' : String(value));
    }
  }

  function appendAll(el, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : String(child)); // a string becomes a text node
    }
  }

  // Links only ever point inside this page.
  function safeHref(value) {
    const text = String(value);
    return /^#\/[A-Za-z0-9/?=&,._-]*$/.test(text) ? text : '#/';
  }

  function traderLink(address, label) {
    if (!ADDRESS.test(String(address))) return h('span', { class: 'mono' }, String(address));
    return h('a', { href: '#/trader/' + address, class: 'mono', title: address },
      label || shortAddress(address));
  }

  function shortAddress(a) {
    const text = String(a);
    return text.length > 14 ? text.slice(0, 6) + '\u2026' + text.slice(-4) : text;
  }

  // -- numbers, for display only (the API's exact decimal strings stay as they are) ---------

  function num(v) {
    if (v === null || v === undefined || v === '') return null;
    const n = Number(v);
    return Number.isFinite(n) ? n : null;
  }

  function fmtUsd(v) {
    const n = num(v);
    if (n === null) return '\u2013';
    const a = Math.abs(n);
    if (a >= 1e9) return (n / 1e9).toFixed(2) + 'B';
    if (a >= 1e6) return (n / 1e6).toFixed(2) + 'M';
    if (a >= 1e4) return n.toLocaleString('en-US', { maximumFractionDigits: 0 });
    return n.toLocaleString('en-US', { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  }

  function fmtPct(fraction, digits = 1) {
    const n = num(fraction);
    return n === null ? '\u2013' : (n * 100).toFixed(digits) + '%';
  }

  function fmtNum(v, digits = 2) {
    const n = num(v);
    return n === null ? '\u2013' : n.toFixed(digits);
  }

  function fmtInt(v) {
    const n = num(v);
    return n === null ? '\u2013' : Math.round(n).toLocaleString('en-US');
  }

  function fmtSz(v) {
    const n = num(v);
    if (n === null) return '\u2013';
    return n.toLocaleString('en-US', { maximumSignificantDigits: 6 });
  }

  function fmtBps(v) {
    const n = num(v);
    return n === null ? '\u2013' : n.toFixed(1);
  }

  function fmtMs(v) {
    const n = num(v);
    return n === null ? '\u2013' : Math.round(n) + ' ms';
  }

  function fmtTime(ms) {
    const n = num(ms);
    if (n === null) return '\u2013';
    const d = new Date(n);
    const today = new Date();
    if (d.toDateString() === today.toDateString()) return d.toLocaleTimeString();
    return d.toLocaleString();
  }

  function fmtDate(ms) {
    const n = num(ms);
    return n === null ? '' : new Date(n).toLocaleDateString();
  }

  function fmtDuration(seconds) {
    const n = num(seconds);
    if (n === null) return '\u2013';
    if (n < 120) return n.toFixed(0) + ' s';
    const trim = (x) => x.toFixed(1).replace(/\.0$/, '');
    if (n < 3600) return (n / 60).toFixed(0) + ' min';
    if (n < 172800) return trim(n / 3600) + ' h';
    return trim(n / 86400) + ' d';
  }

  function signClass(v) {
    const n = num(v);
    if (n === null || n === 0) return null;
    return n > 0 ? 'pos' : 'neg';
  }

  function signed(text, v) {
    return h('span', { class: signClass(v) }, text);
  }

  // -- the API --------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message, detail) {
      super(message);
      this.status = status;
      this.code = code;
      this.detail = detail || {};
    }
  }

  function token() {
    try {
      return sessionStorage.getItem(TOKEN_KEY) || '';
    } catch (_) {
      return '';
    }
  }

  function setToken(value) {
    try {
      if (value) sessionStorage.setItem(TOKEN_KEY, value);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch (_) { /* storage refused (private mode): the token lives until the page closes */ }
    memoryToken = value || '';
    updateTokenButton();
  }
  let memoryToken = '';
  const currentToken = () => token() || memoryToken;

  async function api(method, path, body, retried) {
    const mutating = method !== 'GET';
    let bearer = currentToken();
    if (mutating && !bearer) bearer = await askToken('This action needs the daemon\u2019s bearer token.');
    const headers = { Accept: 'application/json' };
    if (bearer) headers.Authorization = 'Bearer ' + bearer;
    const init = { method, headers, cache: 'no-store', credentials: 'omit' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (_) {
      throw new ApiError(0, 'offline', 'the daemon did not answer (is it running?)');
    }
    let data = null;
    try {
      data = await response.json();
    } catch (_) {
      data = null;
    }
    if (response.status === 401 && !retried) {
      setToken('');
      // A read never asks again once the prompt was dismissed: the header's button does.
      if (!mutating && tokenDismissed) {
        throw new ApiError(401, 'unauthorized', 'this daemon needs its token for reads: press \u201Cset token\u201D');
      }
      await askToken(bearer ? 'The token was refused; enter the current one.'
        : 'The daemon asks for its bearer token (api.read_auth).');
      return api(method, path, body, true);
    }
    if (!response.ok) {
      const err = (data && data.error) || {};
      throw new ApiError(response.status, err.code || 'error',
        err.message || response.statusText || 'request failed', err);
    }
    return data;
  }

  const get = (path) => api('GET', path);

  // Reads that may fail independently: a section shows its own error, the rest still renders.
  async function settle(promise) {
    try {
      return { ok: true, value: await promise };
    } catch (error) {
      return { ok: false, error };
    }
  }

  function errorBox(error) {
    // A part still loading (503) is asked again soon, not at the next regular refresh.
    if (error instanceof ApiError && error.status === 503 && current) current.soon = true;
    const message = error instanceof ApiError ? error.message : 'something went wrong';
    return h('div', { class: 'error-box', role: 'alert' }, message);
  }

  // -- the token, asked once per tab ------------------------------------------------------------

  let tokenAsk = null;
  let tokenDismissed = false;
  function askToken(why) {
    if (tokenAsk) return tokenAsk;
    const dialog = document.getElementById('token-dialog');
    const form = document.getElementById('token-form');
    const input = document.getElementById('token-input');
    document.getElementById('token-why').textContent = why;
    input.value = '';
    tokenAsk = new Promise((resolve, reject) => {
      const done = (value) => {
        form.removeEventListener('submit', onSubmit);
        cancel.removeEventListener('click', onCancel);
        dialog.removeEventListener('cancel', onCancel);
        if (dialog.open) dialog.close();
        tokenAsk = null;
        tokenDismissed = !value;
        if (value) {
          setToken(value);
          connectFeed(true);
          resolve(value);
        } else {
          reject(new ApiError(401, 'unauthorized', 'no token given'));
        }
      };
      const onSubmit = (event) => {
        event.preventDefault();
        const value = input.value.trim();
        if (value) done(value);
      };
      const onCancel = (event) => {
        event.preventDefault();
        done('');
      };
      const cancel = document.getElementById('token-cancel');
      form.addEventListener('submit', onSubmit);
      cancel.addEventListener('click', onCancel);
      dialog.addEventListener('cancel', onCancel);
      dialog.showModal();
      input.focus();
    });
    return tokenAsk;
  }

  function updateTokenButton() {
    const button = document.getElementById('token-button');
    button.textContent = currentToken() ? 'forget token' : 'set token';
  }

  // -- dialogs: a form built from fields, or a confirmation -------------------------------------

  // fields: [{name, label, type: 'text'|'number'|'select', value, options, placeholder, hint}]
  // submit(values) -> throws ApiError to keep the dialog open with the message.
  function formDialog({ title, intro, fields, submitLabel, danger, submit }) {
    const dialog = document.getElementById('form-dialog');
    const error = h('div', { class: 'error-box hidden', role: 'alert' });
    const inputs = {};
    const rows = fields.map((f) => {
      let input;
      if (f.type === 'select') {
        input = h('select', { name: f.name, id: 'f-' + f.name },
          f.options.map(([value, label]) => h('option', { value, selected: String(f.value) === value }, label)));
      } else {
        input = h('input', {
          name: f.name, id: 'f-' + f.name, type: f.type || 'text', placeholder: f.placeholder || '',
          inputmode: f.type === 'number' ? 'decimal' : null, autocomplete: 'off', spellcheck: 'false',
        });
        if (f.type === 'number') input.setAttribute('step', 'any');
        input.value = f.value === null || f.value === undefined ? '' : String(f.value);
      }
      inputs[f.name] = input;
      return h('label', { class: f.className || null }, f.label, input,
        f.hint ? h('span', { class: 'small muted' }, f.hint) : null);
    });
    const cancel = h('button', { type: 'button', class: 'ghost' }, 'Cancel');
    const ok = h('button', { type: 'submit', class: danger ? 'danger' : null, id: 'form-submit' }, submitLabel);
    const form = h('form', { class: 'form', novalidate: true },
      h('h2', null, title), intro ? h('p', { class: 'muted' }, intro) : null, rows, error,
      h('div', { class: 'buttons' }, cancel, ok));
    dialog.replaceChildren(form);
    const close = () => { if (dialog.open) dialog.close(); };
    cancel.addEventListener('click', close);
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      const values = {};
      for (const [name, input] of Object.entries(inputs)) {
        input.classList.remove('invalid');
        values[name] = input.value.trim();
      }
      ok.disabled = true;
      error.classList.add('hidden');
      try {
        await submit(values, inputs);
        close();
      } catch (e) {
        error.textContent = e instanceof ApiError || e instanceof Error ? e.message : 'failed';
        error.classList.remove('hidden');
        const field = e instanceof ApiError ? e.detail.field : null;
        if (field && inputs[field]) inputs[field].classList.add('invalid');
      } finally {
        ok.disabled = false;
      }
    });
    dialog.showModal();
    const first = form.querySelector('input, select');
    if (first) first.focus();
    return { dialog, inputs };
  }

  function confirmAction({ title, message, confirmLabel, danger, reason, run }) {
    const fields = reason ? [{ name: 'reason', label: 'Reason (kept with the event)', value: reason }] : [];
    formDialog({
      title, intro: message, fields, submitLabel: confirmLabel, danger,
      submit: async (values) => {
        if (reason && !values.reason) throw new Error('a reason is required');
        await run(values.reason);
      },
    });
  }

  // -- notices ------------------------------------------------------------------------------------

  let noticeTimer = null;
  function notice(text, isError) {
    const el = document.getElementById('notice');
    el.textContent = text;
    el.classList.toggle('error', Boolean(isError));
    el.hidden = false;
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => { el.hidden = true; }, isError ? 12000 : 6000);
  }

  async function act(label, fn) {
    try {
      const out = await fn();
      refreshHeader();
      scheduleRefresh(50);
      return out;
    } catch (e) {
      if (e instanceof ApiError && e.status === 401 && e.message === 'no token given') return null;
      notice(label + ': ' + (e instanceof Error ? e.message : 'failed'), true);
      return null;
    }
  }

  // -- charts (hand-written SVG) -----------------------------------------------------------------

  // An equity index over time: [[ms, index], ...]. Labels in percent from the first point.
  function lineChart(points, { width = 720, height = 240 } = {}) {
    const pts = points.filter((p) => Array.isArray(p) && num(p[0]) !== null && num(p[1]) !== null)
      .map((p) => [Number(p[0]), Number(p[1])]);
    if (pts.length < 2) return h('p', { class: 'empty' }, 'Not enough points for a chart yet.');
    const pad = { left: 54, right: 12, top: 22, bottom: 24 };
    const t0 = pts[0][0];
    const t1 = pts[pts.length - 1][0];
    let lo = Math.min(...pts.map((p) => p[1]));
    let hi = Math.max(...pts.map((p) => p[1]));
    const base = pts[0][1];
    lo = Math.min(lo, base);
    hi = Math.max(hi, base);
    if (hi - lo < 1e-9) { hi += 0.01; lo -= 0.01; }
    const span = hi - lo;
    hi += span * 0.05;
    lo -= span * 0.05;
    const x = (t) => pad.left + ((t - t0) / Math.max(1, t1 - t0)) * (width - pad.left - pad.right);
    const y = (v) => pad.top + (1 - (v - lo) / (hi - lo)) * (height - pad.top - pad.bottom);
    const line = pts.map((p, i) => (i ? 'L' : 'M') + x(p[0]).toFixed(1) + ' ' + y(p[1]).toFixed(1)).join(' ');
    const floor = (height - pad.bottom).toFixed(1);
    const area = line + ' L' + x(t1).toFixed(1) + ' ' + floor + ' L' + x(t0).toFixed(1) + ' ' + floor + ' Z';
    const label = (v) => {
      if (!(base > 0)) return v.toFixed(3); // an index starts at 1; anything else, as it is
      const pct = (v / base - 1) * 100;
      return (Math.abs(pct) < 0.05 ? 0 : pct).toFixed(1) + '%';
    };
    const ticks = [lo + span * 0.05, (lo + hi) / 2, hi - span * 0.05];
    const svg = s('svg', {
      class: 'chart', viewBox: `0 0 ${width} ${height}`, role: 'img',
      'aria-label': 'equity index', 'data-points': pts.length,
    },
    ticks.map((v) => s('line', { class: 'grid-line', x1: pad.left, x2: width - pad.right, y1: y(v), y2: y(v) })),
    ticks.map((v) => s('text', { class: 'axis', x: pad.left - 6, y: y(v) + 4, 'text-anchor': 'end' }, label(v))),
    s('line', { class: 'base-line', x1: pad.left, x2: width - pad.right, y1: y(base), y2: y(base) }),
    s('path', { class: 'area', d: area }),
    s('path', { class: 'line', d: line }),
    s('text', { class: 'axis', x: pad.left, y: height - 6 }, fmtDate(t0)),
    s('text', { class: 'axis', x: width - pad.right, y: height - 6, 'text-anchor': 'end' }, fmtDate(t1)));
    // A cursor that reads the nearest point under the pointer.
    const cursor = s('line', { class: 'cursor hidden', y1: pad.top, y2: height - pad.bottom });
    const dot = s('circle', { class: 'dot hidden', r: 3.5 });
    const readout = s('text', { class: 'readout', x: pad.left, y: 14 });
    const overlay = s('rect', { class: 'overlay', x: pad.left, y: 0, width: width - pad.left - pad.right, height });
    svg.append(cursor, dot, readout, overlay);
    const show = (event) => {
      const box = svg.getBoundingClientRect();
      if (!box.width) return;
      const px = ((event.clientX - box.left) / box.width) * width;
      let best = pts[0];
      for (const p of pts) if (Math.abs(x(p[0]) - px) < Math.abs(x(best[0]) - px)) best = p;
      cursor.setAttribute('x1', x(best[0]));
      cursor.setAttribute('x2', x(best[0]));
      dot.setAttribute('cx', x(best[0]));
      dot.setAttribute('cy', y(best[1]));
      cursor.classList.remove('hidden');
      dot.classList.remove('hidden');
      readout.textContent = new Date(best[0]).toLocaleString() + '   ' + label(best[1]);
    };
    overlay.addEventListener('pointermove', show);
    overlay.addEventListener('pointerdown', show);
    overlay.addEventListener('pointerleave', () => {
      cursor.classList.add('hidden');
      dot.classList.add('hidden');
      readout.textContent = '';
    });
    return svg;
  }

  // Horizontal bars: [{label, value, max, text, cls}] (value/max in the same unit).
  function barChart(rows, { width = 400 } = {}) {
    const rowH = 24;
    const labelW = 118;
    const valueW = 96;
    const height = rows.length * rowH + 4;
    const trackW = width - labelW - valueW;
    const svg = s('svg', { class: 'chart bars', viewBox: `0 0 ${width} ${height}`, role: 'img' });
    rows.forEach((r, i) => {
      const top = i * rowH + 4;
      const frac = r.max > 0 ? Math.max(0, Math.min(1, r.value / r.max)) : 0;
      svg.append(
        s('text', { class: 'label', x: 0, y: top + 13 }, r.label),
        s('rect', { class: 'track', x: labelW, y: top + 3, width: trackW, height: 12, rx: 3 }),
        s('rect', { class: r.cls || 'bar', x: labelW, y: top + 3, width: (trackW * frac).toFixed(1), height: 12, rx: 3 }),
        s('text', { class: 'value', x: width, y: top + 13, 'text-anchor': 'end' }, r.text));
    });
    return svg;
  }

  // Bars either side of zero: [{label, value, text}].
  function divergingChart(rows, { width = 400 } = {}) {
    const rowH = 24;
    const labelW = 118;
    const valueW = 70;
    const height = rows.length * rowH + 4;
    const trackW = width - labelW - valueW;
    const mid = labelW + trackW / 2;
    const most = Math.max(1e-12, ...rows.map((r) => Math.abs(num(r.value) || 0)));
    const svg = s('svg', { class: 'chart bars', viewBox: `0 0 ${width} ${height}`, role: 'img' },
      s('line', { class: 'base-line', x1: mid, x2: mid, y1: 0, y2: height }));
    rows.forEach((r, i) => {
      const top = i * rowH + 4;
      const v = num(r.value) || 0;
      const w = (Math.abs(v) / most) * (trackW / 2);
      svg.append(
        s('text', { class: 'label', x: 0, y: top + 13 }, r.label),
        s('rect', { class: v < 0 ? 'bar-neg' : 'bar-pos', x: (v < 0 ? mid - w : mid).toFixed(1), y: top + 3, width: w.toFixed(1), height: 12, rx: 2 }),
        s('text', { class: 'value', x: width, y: top + 13, 'text-anchor': 'end' }, r.text));
    });
    return svg;
  }

  // -- tables ---------------------------------------------------------------------------------------

  // columns: [{label, num, opt, cell(row) -> Node|string}]
  function table(columns, rows, { onRow, headCell, empty } = {}) {
    if (!rows.length) return h('p', { class: 'empty' }, empty || 'Nothing yet.');
    const head = h('tr', null, columns.map((c) => h('th', { class: cls(c.num && 'num', c.opt && 'opt') },
      headCell ? headCell(c) : c.label)));
    const body = rows.map((row) => {
      const tr = h('tr', null, columns.map((c) => h('td', { class: cls(c.num && 'num', c.opt && 'opt'), 'data-col': c.key || null }, c.cell(row))));
      if (onRow) {
        tr.classList.add('row-link');
        tr.setAttribute('tabindex', '0');
        tr.addEventListener('click', (event) => {
          if (event.target instanceof Element && event.target.closest('a, button')) return;
          onRow(row);
        });
        tr.addEventListener('keydown', (event) => { if (event.key === 'Enter') onRow(row); });
      }
      return tr;
    });
    return h('div', { class: 'table-wrap' }, h('table', null, h('thead', null, head), h('tbody', null, body)));
  }

  function cls(...names) {
    const out = names.filter(Boolean).join(' ');
    return out || null;
  }

  function badge(text, kind) {
    return h('span', { class: cls('badge', kind) }, text);
  }

  function stateBadge(state) {
    const st = String(state || 'unknown').toLowerCase();
    return h('span', { class: cls('state', STATE_ORDER[st] !== undefined && 'state-' + st) }, st.toUpperCase());
  }

  function riskBadge(level) {
    if (!level) return '\u2013';
    return badge(level, RISK_LEVELS.includes(level) ? 'badge-risk-' + level : null);
  }

  function kv(pairs) {
    return h('dl', { class: 'kv' }, pairs.map(([k, v]) => [h('dt', null, k), h('dd', null, v)]));
  }

  function figure(label, value, signOf) {
    return h('div', { class: 'figure' }, h('span', { class: 'label' }, label),
      h('span', { class: cls('value', signOf !== undefined && signClass(signOf)) }, value));
  }

  // -- routing --------------------------------------------------------------------------------------

  function parseHash() {
    const raw = location.hash.replace(/^#\/?/, '');
    const [path, query] = raw.split('?');
    const parts = path.split('/').filter(Boolean);
    return { name: parts[0] || 'leaderboard', arg: parts[1] || null, params: new URLSearchParams(query || '') };
  }

  function go(name, params) {
    const query = params && [...params.keys()].length ? '?' + params.toString() : '';
    location.hash = '#/' + name + query;
  }

  const VIEWS = {};
  let current = null; // {name, key, refresh, el}

  function mount() {
    const route = parseHash();
    const view = VIEWS[route.name] ? route.name : 'leaderboard';
    for (const a of document.querySelectorAll('#nav a')) {
      a.classList.toggle('active', a.dataset.view === view || (view === 'trader' && a.dataset.view === lastBoard));
    }
    if (view === 'leaderboard' || view === 'losers') lastBoard = view;
    const main = document.getElementById('main');
    const el = h('div', { class: 'view view-' + view });
    main.replaceChildren(el);
    current = { name: view, route, el, refresh: null, busy: false, again: false };
    window.scrollTo(0, 0);
    VIEWS[view](current);
    scheduleRefresh(0);
  }
  let lastBoard = 'leaderboard';

  let refreshTimer = null;
  function scheduleRefresh(delay) {
    clearTimeout(refreshTimer);
    const ms = delay !== undefined ? delay : (REFRESH_MS[current && current.name] || DEFAULT_REFRESH_MS);
    refreshTimer = setTimeout(runRefresh, ms);
  }

  // A burst of live events redraws a view at most every few seconds (the copying view reads
  // the performance report, which is not free).
  const EVENT_GAP_MS = 3000;
  let lastRefreshMs = 0;
  function refreshSoon() {
    const due = lastRefreshMs + EVENT_GAP_MS - Date.now();
    scheduleRefresh(Math.max(300, due));
  }

  // A redraw while a pointer is pressed would replace the button under it between press and
  // release, and the browser then fires no click (a lost Pause or Halt): redraws wait for the
  // release.
  let pointerHeld = false;
  let redrawHeld = false;
  document.addEventListener('pointerdown', () => { pointerHeld = true; }, true);
  const pointerReleased = () => {
    pointerHeld = false;
    if (redrawHeld) { redrawHeld = false; scheduleRefresh(50); }
  };
  document.addEventListener('pointerup', pointerReleased, true);
  document.addEventListener('pointercancel', pointerReleased, true);

  async function runRefresh() {
    const ctx = current;
    if (!ctx || !ctx.refresh) return;
    if (pointerHeld) { redrawHeld = true; return; }
    if (ctx.busy) { ctx.again = true; return; }
    ctx.busy = true;
    lastRefreshMs = Date.now();
    try {
      await ctx.refresh();
    } catch (e) {
      // Views show the API's refusals themselves: what lands here is a fault of the page.
      notice('This view failed to draw: ' + (e instanceof Error ? e.message : 'unknown error'), true);
      console.error(e);
    } finally {
      ctx.busy = false;
      if (ctx === current) {
        ctx.el.dataset.loaded = String(Number(ctx.el.dataset.loaded || 0) + 1);
        scheduleRefresh(ctx.again ? 50 : ctx.soon ? 2000 : undefined);
        ctx.again = false;
        ctx.soon = false;
      }
    }
  }

  // Replace a region's content only when the view is still the one shown.
  function fill(ctx, region, ...children) {
    if (ctx !== current) return;
    if (pointerHeld) { redrawHeld = true; return; } // drawn again after the release
    region.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined));
  }

  // -- leaderboard and losers -------------------------------------------------------------------

  const BOARD_COLUMNS = [
    { key: 'score', label: 'score', num: true, cell: (r) => fmtNum(r.score, 2) },
    { key: 'return', label: 'return', num: true, cell: (r) => signed(fmtPct(r.return), r.return) },
    { key: 'pnl', label: 'PnL', num: true, opt: true, cell: (r) => signed(fmtUsd(r.pnl), r.pnl) },
    { key: 'max_drawdown', label: 'drawdown', num: true, cell: (r) => fmtPct(r.max_drawdown) },
    { key: 'win_rate', label: 'win', num: true, cell: (r) => fmtPct(r.win_rate, 0) },
    { key: 'profit_factor', label: 'PF', num: true, opt: true, cell: (r) => fmtNum(r.profit_factor, 2) },
    { key: 'sharpe', label: 'Sharpe', num: true, opt: true, cell: (r) => fmtNum(r.sharpe, 2) },
    { key: 'trade_count', label: 'trades', num: true, cell: (r) => fmtInt(r.trade_count) },
    { key: 'total_volume_usd', label: 'volume', num: true, opt: true, cell: (r) => fmtUsd(r.total_volume_usd) },
    { key: 'account_value', label: 'account', num: true, opt: true, cell: (r) => fmtUsd(r.account_value) },
    { key: 'risk_level', label: 'risk', cell: (r) => riskBadge(r.risk_level) },
    { key: 'style', label: 'style', opt: true, cell: (r) => r.style || '\u2013' },
  ];
  const LOSER_COLUMNS = [
    { key: 'badness', label: 'badness', num: true, cell: (r) => fmtNum(r.badness, 3) },
    ...BOARD_COLUMNS.filter((c) => c.key !== 'score'),
  ];

  function boardView(kind) {
    return (ctx) => {
      const p = ctx.route.params;
      const losers = kind === 'losers';
      const state = {
        window: WINDOWS.includes(p.get('window')) ? p.get('window') : 'month',
        sort_by: p.get('sort_by') || (losers ? 'badness' : 'score'),
        order: p.get('order') === 'asc' ? 'asc' : 'desc',
        min_trades: Math.max(0, parseInt(p.get('min_trades') || '0', 10) || 0),
        risk: (p.get('risk_level') || '').split(',').filter((v) => RISK_LEVELS.includes(v)),
        style: (p.get('style') || '').split(',').filter((v) => STYLES.includes(v)),
        limit: [25, 50, 100].includes(Number(p.get('limit'))) ? Number(p.get('limit')) : 50,
        offset: Math.max(0, parseInt(p.get('offset') || '0', 10) || 0),
      };
      const columns = losers ? LOSER_COLUMNS : BOARD_COLUMNS;
      const navigate = (changes) => {
        const next = { ...state, offset: 0, ...changes };
        const q = new URLSearchParams();
        q.set('window', next.window);
        q.set('sort_by', next.sort_by);
        q.set('order', next.order);
        if (next.min_trades) q.set('min_trades', String(next.min_trades));
        if (next.risk.length) q.set('risk_level', next.risk.join(','));
        if (next.style.length) q.set('style', next.style.join(','));
        if (next.limit !== 50) q.set('limit', String(next.limit));
        if (next.offset) q.set('offset', String(next.offset));
        go(kind, q);
      };
      const select = (name, value, options, onchange) => {
        const el = h('select', { name, id: 'filter-' + name },
          options.map(([v, label]) => h('option', { value: v, selected: String(value) === String(v) }, label)));
        el.addEventListener('change', () => onchange(el.value));
        return el;
      };
      const checks = (legend, name, values, picked) => h('fieldset', { id: 'filter-' + name },
        h('legend', null, legend),
        values.map((v) => {
          const box = h('input', { type: 'checkbox', value: v, checked: picked.includes(v) });
          box.addEventListener('change', () => {
            const next = box.checked ? [...picked, v] : picked.filter((x) => x !== v);
            navigate({ [name]: values.filter((x) => next.includes(x)) });
          });
          return h('label', null, box, v);
        }));
      const minTrades = h('input', { type: 'number', min: 0, step: 1, id: 'filter-min_trades', name: 'min_trades' });
      minTrades.value = String(state.min_trades);
      minTrades.addEventListener('change', () => navigate({ min_trades: Math.max(0, parseInt(minTrades.value, 10) || 0) }));
      const filters = h('div', { class: 'filters' },
        h('label', null, 'window', select('window', state.window, WINDOWS.map((w) => [w, w]), (v) => navigate({ window: v }))),
        h('label', null, 'min trades', minTrades),
        checks('risk', 'risk', RISK_LEVELS, state.risk),
        checks('style', 'style', STYLES, state.style),
        h('label', null, 'rows', select('limit', state.limit, [[25, '25'], [50, '50'], [100, '100']], (v) => navigate({ limit: Number(v) }))));
      const content = h('div', { class: 'board' });
      ctx.el.append(
        h('div', { class: 'title-row' }, h('h1', null, losers ? 'Losers' : 'Leaderboard'),
          h('span', { class: 'muted small' }, losers
            ? 'the traders who lost with confidence, worst first: candidates to fade'
            : 'traders ranked on deposit-independent return, drawdown and consistency')),
        h('div', { class: 'panel' }, filters, content));

      const headCell = (c) => {
        const sorted = state.sort_by === c.key;
        const arrow = sorted ? (state.order === 'desc' ? ' \u25BC' : ' \u25B2') : '';
        return h('button', {
          type: 'button', class: cls('sort', sorted && 'sorted'), 'data-sort': c.key,
          onclick: () => navigate({ sort_by: c.key, order: sorted && state.order === 'desc' ? 'asc' : 'desc' }),
        }, c.label + arrow);
      };
      const rankCol = { label: '#', num: true, cell: (r) => String(r._rank) };
      const traderCol = { label: 'trader', cell: (r) => traderLink(r.address) };

      const render = (rows, total, note) => {
        const shown = rows.map((r, i) => ({ ...r, _rank: state.offset + i + 1 }));
        const from = total ? state.offset + 1 : 0;
        const to = state.offset + rows.length;
        const prev = h('button', { type: 'button', class: 'ghost small', disabled: state.offset === 0, id: 'page-prev' }, '\u2190 prev');
        const next = h('button', { type: 'button', class: 'ghost small', disabled: to >= total, id: 'page-next' }, 'next \u2192');
        prev.addEventListener('click', () => navigate({ offset: Math.max(0, state.offset - state.limit) }));
        next.addEventListener('click', () => navigate({ offset: state.offset + state.limit }));
        fill(ctx, content,
          table([rankCol, traderCol, ...columns], shown, {
            headCell: (c) => (c.key ? headCell(c) : c.label),
            onRow: (r) => go('trader/' + r.address),
            empty: losers
              ? 'No trader qualifies as a confident loser in this window (yet), or none passes the filters.'
              : 'No trader is ranked in this window yet, or none passes the filters. The board fills as the tracker scores traders (a few minutes after start).',
          }),
          h('div', { class: 'pager' }, prev, h('span', { class: 'muted', id: 'page-info' }, `${from}\u2013${to} of ${total}`), next,
            note ? h('span', { class: 'muted small' }, note) : null));
      };

      ctx.refresh = async () => {
        if (!losers) {
          const q = new URLSearchParams({
            window: state.window, sort_by: state.sort_by, order: state.order,
            min_trades: String(state.min_trades), limit: String(state.limit), offset: String(state.offset),
          });
          if (state.risk.length) q.set('risk_level', state.risk.join(','));
          if (state.style.length) q.set('style', state.style.join(','));
          try {
            const page = await get('/api/v1/leaderboard?' + q.toString());
            render(page.rows, page.total, 'as of ' + fmtTime(page.as_of));
          } catch (e) {
            fill(ctx, content, errorBox(e));
          }
          return;
        }
        // The losers list is short and the API ranks it one way: filter and sort it here.
        try {
          const page = await get('/api/v1/losers?' + new URLSearchParams({ window: state.window, limit: '1000' }).toString());
          let rows = page.rows.filter((r) => (!state.risk.length || state.risk.includes(r.risk_level))
            && (!state.style.length || state.style.includes(r.style))
            && (!state.min_trades || (num(r.trade_count) || 0) >= state.min_trades));
          rows = sortRows(rows, state.sort_by, state.order);
          const total = rows.length;
          rows = rows.slice(state.offset, state.offset + state.limit);
          const note = page.total > page.rows.length ? `the worst ${page.rows.length} of ${page.total}` : 'as of ' + fmtTime(page.as_of);
          render(rows, total, note);
        } catch (e) {
          fill(ctx, content, errorBox(e));
        }
      };
    };
  }

  function sortRows(rows, key, order) {
    const rank = { LOW: 0, MEDIUM: 1, HIGH: 2, EXTREME: 3, scalper: 0, day: 1, swing: 2, position: 3 };
    const value = (r) => {
      const v = r[key];
      if (v === null || v === undefined) return null;
      if (key === 'risk_level' || key === 'style') return rank[v] !== undefined ? rank[v] : null;
      return num(v);
    };
    const sign = order === 'asc' ? 1 : -1;
    return [...rows].sort((a, b) => {
      const va = value(a);
      const vb = value(b);
      if (va === null && vb === null) return a.address < b.address ? -1 : 1;
      if (va === null) return 1; // missing figures last, in either order
      if (vb === null) return -1;
      if (va !== vb) return (va - vb) * sign;
      return a.address < b.address ? -1 : 1;
    });
  }

  VIEWS.leaderboard = boardView('leaderboard');
  VIEWS.losers = boardView('losers');

  // -- one trader --------------------------------------------------------------------------------

  // [field, label, format]
  const METRIC_ROWS = [
    ['return', 'return', (v) => signed(fmtPct(v), v)],
    ['pnl', 'PnL', (v) => signed(fmtUsd(v), v)],
    ['max_drawdown', 'max drawdown', (v) => fmtPct(v)],
    ['win_rate', 'win rate', (v) => fmtPct(v, 0)],
    ['profit_factor', 'profit factor', (v) => fmtNum(v)],
    ['sharpe', 'Sharpe', (v) => fmtNum(v)],
    ['trade_count', 'round trips', (v) => fmtInt(v)],
    ['volume', 'volume', (v) => fmtUsd(v)],
    ['median_hold_s', 'median hold', (v) => fmtDuration(v)],
    ['avg_leverage', 'avg leverage', (v) => fmtNum(v, 1)],
    ['max_leverage', 'max leverage', (v) => fmtNum(v, 1)],
    ['taker_share', 'taker share', (v) => fmtPct(v, 0)],
    ['liquidations', 'liquidations', (v) => fmtInt(v)],
    ['risk_level', 'risk level', (v) => riskBadge(v)],
    ['style', 'style', (v) => v || '\u2013'],
    ['score', 'score', (v) => fmtNum(v)],
    ['excluded', 'not ranked because', (v) => v || '\u2013'],
  ];

  VIEWS.trader = (ctx) => {
    const address = String(ctx.route.arg || '').toLowerCase();
    if (!ADDRESS.test(address)) {
      ctx.el.append(h('div', { class: 'error-box' }, 'Not an address: expected 0x and 40 hex digits.'));
      return;
    }
    ctx.address = address;
    let chartWindow = WINDOWS.includes(ctx.route.params.get('window')) ? ctx.route.params.get('window') : 'month';
    const head = h('div', { class: 'panel' });
    const chartPanel = h('div', { class: 'panel', id: 'trader-chart' });
    const body = h('div');
    const backtestOut = h('div', { id: 'backtest-result' });
    ctx.el.append(head, chartPanel, backtestOut, body);
    let last = null;

    const follow = (mode) => followDialog(address, mode);
    const actions = h('div', { class: 'buttons' },
      h('button', { type: 'button', id: 'btn-follow', onclick: () => follow('copy') }, 'Follow'),
      h('button', { type: 'button', id: 'btn-fade', class: 'warn', onclick: () => follow('inverse') }, 'Fade (inverse)'),
      h('button', { type: 'button', id: 'btn-backtest', class: 'ghost', onclick: () => backtest(address, backtestOut) }, 'Backtest'),
      h('button', {
        type: 'button', id: 'btn-track', class: 'ghost',
        onclick: () => act('Track', async () => {
          await api('POST', `/api/v1/traders/${address}/track`);
          notice('Tracking priority raised: the tracker polls this trader in its own time.');
        }),
      }, 'Track closely'));

    const drawChart = () => {
      if (!last) return;
      const points = last.index_points || {};
      const available = WINDOWS.filter((w) => Array.isArray(points[w]) && points[w].length);
      if (!available.includes(chartWindow) && available.length) chartWindow = available[available.length > 2 ? 2 : 0];
      const tabs = h('div', { class: 'tabs' }, available.map((w) => h('button', {
        type: 'button', class: w === chartWindow ? 'active' : null,
        onclick: () => { chartWindow = w; drawChart(); },
      }, w)));
      // One SVG unit per CSS pixel of the panel, so the labels keep their size on a phone.
      const width = Math.max(280, Math.min(1200, chartPanel.clientWidth - 32 || 720));
      const height = Math.round(Math.max(180, Math.min(300, width * 0.4)));
      fill(ctx, chartPanel, h('h2', null, 'Equity index'),
        h('p', { class: 'muted small' }, 'account value with deposits and withdrawals taken out; 0% is the start of the window'),
        available.length ? [tabs, lineChart(points[chartWindow] || [], { width, height })] : h('p', { class: 'empty' }, 'No equity history stored for this trader yet.'));
    };
    ctx.resize = drawChart;

    ctx.refresh = async () => {
      const [trader, fills] = await Promise.all([
        settle(get(`/api/v1/traders/${address}`)),
        settle(get(`/api/v1/traders/${address}/fills?limit=30`)),
      ]);
      if (!trader.ok) {
        const missing = trader.error instanceof ApiError && trader.error.status === 404;
        fill(ctx, head, h('div', { class: 'title-row' }, h('h1', null, 'Trader'), h('span', { class: 'address' }, address)),
          actions, missing ? h('p', { class: 'empty' }, 'This address has not been seen trading by this daemon.') : errorBox(trader.error));
        chartPanel.classList.add('hidden');
        fill(ctx, body);
        return;
      }
      const t = trader.value;
      last = t;
      chartPanel.classList.remove('hidden');
      const ranks = WINDOWS.filter((w) => t.ranks && t.ranks[w]).map((w) => `#${t.ranks[w]} ${w}`).join(', ');
      fill(ctx, head,
        h('div', { class: 'title-row' }, h('h1', null, 'Trader'), h('span', { class: 'address', id: 'trader-address' }, t.address),
          t.role ? badge(t.role) : null, t.tracked ? badge('tracked') : null),
        h('div', { class: 'figures' },
          figure('account value', fmtUsd(t.account_value)),
          figure('rank', ranks || 'not ranked'),
          figure('trades seen live', fmtInt(t.activity && t.activity.trades)),
          figure('metrics as of', fmtTime(t.metrics_at_ms))),
        t.master ? h('p', { class: 'small muted' }, 'sub-account of ', traderLink(t.master, t.master)) : null,
        actions);
      drawChart();

      const metrics = t.metrics || {};
      const windows = WINDOWS.filter((w) => metrics[w]);
      const metricTable = table(
        [{ label: 'metric', cell: (r) => r[1] }, ...windows.map((w) => ({ label: w, num: true, cell: (r) => r[2](metrics[w][r[0]]) }))],
        METRIC_ROWS, { empty: 'No metrics stored yet: the tracker scores traders within its REST budget.' });
      const positions = table([
        { label: 'coin', cell: (p) => p.coin },
        { label: 'side', cell: (p) => signed((num(p.szi) || 0) >= 0 ? 'long' : 'short', p.szi) },
        { label: 'size', num: true, cell: (p) => fmtSz(Math.abs(num(p.szi) || 0)) },
        { label: 'entry', num: true, cell: (p) => fmtSz(p.entry_px) },
        { label: 'value', num: true, cell: (p) => fmtUsd(p.position_value) },
        { label: 'uPnL', num: true, cell: (p) => signed(fmtUsd(p.unrealized_pnl), p.unrealized_pnl) },
        { label: 'lev', num: true, opt: true, cell: (p) => (p.leverage ? p.leverage + 'x' : '\u2013') },
        { label: 'liq', num: true, opt: true, cell: (p) => fmtSz(p.liquidation_px) },
      ], t.positions || [], { empty: 'Flat (as of the last read).' });
      const events = table([
        { label: 'time', cell: (e) => fmtTime(e.time_ms) },
        { label: 'coin', cell: (e) => e.coin },
        { label: 'kind', cell: (e) => e.kind },
        { label: 'from', num: true, cell: (e) => fmtSz(e.prev_szi) },
        { label: 'to', num: true, cell: (e) => fmtSz(e.new_szi) },
        { label: 'px', num: true, opt: true, cell: (e) => fmtSz(e.px) },
        { label: 'notional', num: true, opt: true, cell: (e) => fmtUsd(e.notional) },
      ], t.events || [], { empty: 'No position change recorded yet.' });
      const fillsTable = fills.ok ? table([
        { label: 'time', cell: (f) => fmtTime(f.time_ms) },
        { label: 'coin', cell: (f) => f.coin },
        { label: 'dir', cell: (f) => f.dir || (f.side === 'B' ? 'buy' : 'sell') },
        { label: 'px', num: true, cell: (f) => fmtSz(f.px) },
        { label: 'size', num: true, cell: (f) => fmtSz(f.sz) },
        { label: 'closed PnL', num: true, cell: (f) => signed(fmtUsd(f.closed_pnl), f.closed_pnl) },
        { label: 'fee', num: true, opt: true, cell: (f) => fmtUsd(f.fee) },
      ], fills.value.fills || [], { empty: 'No fills stored for this trader.' }) : errorBox(fills.error);
      fill(ctx, body,
        h('div', { class: 'panel' }, h('h2', null, 'Metrics per window'), metricTable),
        h('div', { class: 'grid' },
          h('div', { class: 'panel' }, h('h2', null, 'Positions'), h('p', { class: 'muted small' }, 'as of ' + fmtTime(t.positions_at_ms)), positions),
          h('div', { class: 'panel' }, h('h2', null, 'Recent position events'), events)),
        h('div', { class: 'panel' }, h('h2', null, 'Recent fills'), fillsTable));
    };
  };

  function followDialog(address, mode) {
    const fade = mode === 'inverse';
    formDialog({
      title: fade ? 'Fade this trader' : 'Follow this trader',
      intro: (fade ? 'Hold the opposite of ' : 'Mirror the positions of ') + address
        + '. The account\u2019s risk limits apply on top of these.',
      submitLabel: fade ? 'Fade' : 'Follow',
      fields: [
        { name: 'name', label: 'Name (optional)', placeholder: 'letters, digits, . _ -' },
        {
          name: 'sizing', label: 'Sizing', type: 'select', value: fade ? 'fixed_notional' : 'equity',
          options: [['equity', 'by equity: leader size \u00D7 our equity / theirs'], ['ratio', 'by ratio: leader size \u00D7 ratio'], ['fixed_notional', 'fixed notional per position']],
        },
        { name: 'ratio', label: 'Ratio', type: 'number', value: '1', hint: 'for equity and ratio sizing' },
        { name: 'fixed_notional_usd', label: 'Fixed notional (USD)', type: 'number', value: fade ? '500' : '', hint: 'for fixed notional sizing' },
        { name: 'max_notional_per_coin_usd', label: 'Max notional per coin (USD)', type: 'number', placeholder: 'no cap' },
        { name: 'max_total_notional_usd', label: 'Max total notional (USD)', type: 'number', placeholder: 'no cap' },
        {
          name: 'entry', label: 'At the start', type: 'select', value: 'wait',
          options: [['wait', 'wait for the leader\u2019s next change'], ['adopt', 'adopt open positions near their entry']],
        },
      ],
      submit: async (v) => {
        const body = { leader: address, mode, sizing: v.sizing, entry: v.entry };
        if (v.name) body.name = v.name;
        if (v.sizing !== 'fixed_notional' && v.ratio) body.ratio = v.ratio;
        if (v.sizing === 'fixed_notional') body.fixed_notional_usd = v.fixed_notional_usd;
        for (const k of ['max_notional_per_coin_usd', 'max_total_notional_usd']) if (v[k]) body[k] = v[k];
        const follow = await api('POST', '/api/v1/follows', body);
        notice(`${fade ? 'Fading' : 'Following'} ${shortAddress(address)} as \u201C${follow.id}\u201D.`);
        go('copying');
      },
    });
  }

  // POST /api/v1/backtest (issue 13): started here, followed by polling its id.
  async function backtest(address, out) {
    const ctx = current;
    const show = (...children) => out.replaceChildren(h('div', { class: 'panel' }, h('h2', null, 'Backtest'), ...children));
    let started;
    try {
      started = await api('POST', '/api/v1/backtest', { addresses: [address], days: 30 });
    } catch (e) {
      if (e instanceof ApiError && e.status === 404 && e.code === 'not_found') {
        show(h('p', { class: 'error-box', id: 'backtest-missing' },
          'Backtests are not available in this daemon: POST /api/v1/backtest answered 404 (the backtest API is not in this version). Run \u201Chlcopy backtest ' + address + '\u201D on the command line instead.'));
      } else if (!(e instanceof ApiError && e.message === 'no token given')) {
        show(errorBox(e));
      }
      return;
    }
    const id = started && (started.id || started.backtest_id);
    let result = started;
    for (let i = 0; id && i < 600 && ctx === current; i++) { // until done, or the view is left
      show(h('p', { class: 'muted' }, 'running\u2026 ' + (result.progress !== undefined ? fmtPct(result.progress, 0) : '')));
      if (result.result || ['done', 'finished', 'failed', 'error', 'cancelled'].includes(String(result.status || result.state))) break;
      await new Promise((r) => setTimeout(r, 1000));
      try {
        result = await get('/api/v1/backtest/' + encodeURIComponent(String(id)));
      } catch (e) {
        show(errorBox(e));
        return;
      }
    }
    const final = result.result || result;
    const scalars = Object.entries(final).filter(([, v]) => v === null || ['string', 'number', 'boolean'].includes(typeof v)).filter(([k]) => k !== 'svg');
    const svgText = typeof final.svg === 'string' ? final.svg : (typeof result.svg === 'string' ? result.svg : null);
    let img = null;
    if (svgText) {
      // As an image: an SVG in <img> runs no script and reaches nothing.
      img = h('img', { class: 'chart', alt: 'backtest equity curves', src: URL.createObjectURL(new Blob([svgText], { type: 'image/svg+xml' })) });
    }
    show(kv(scalars.map(([k, v]) => [k, String(v)])), img);
  }

  // -- copying ----------------------------------------------------------------------------------

  function effectiveState(scopes, ids) {
    let worst = 'active';
    const why = [];
    for (const id of ids) {
      const st = scopes[id];
      if (!st) continue;
      if ((STATE_ORDER[st.state] || 0) > (STATE_ORDER[worst] || 0)) worst = st.state;
      for (const cause of st.causes || []) why.push({ scope: id, cause });
    }
    return { state: worst, why };
  }

  VIEWS.copying = (ctx) => {
    const account = h('div', { class: 'panel', id: 'account' });
    const followsEl = h('div', { id: 'follows' });
    const positionsEl = h('div', { class: 'panel' });
    const copiesEl = h('div', { class: 'panel', id: 'copies' });
    ctx.el.append(h('div', { class: 'title-row' }, h('h1', null, 'Copying')), account, followsEl, positionsEl, copiesEl);

    ctx.refresh = async () => {
      const [follows, positions, risk, copies, perf] = await Promise.all([
        settle(get('/api/v1/follows')),
        settle(get('/api/v1/positions')),
        settle(get('/api/v1/risk?limit=100')),
        settle(get('/api/v1/copies?limit=50')),
        settle(get('/api/v1/performance')),
      ]);
      const scopes = risk.ok ? risk.value.scopes || {} : {};
      const events = risk.ok ? risk.value.events || [] : [];
      if (risk.ok) setGlobalState(scopes.global ? scopes.global.state : 'active');
      const global = effectiveState(scopes, ['global']);
      const pos = positions.ok ? positions.value : null;
      if (pos) setMode(pos.mode);

      // The account and the account-wide controls.
      const haltAll = h('button', {
        type: 'button', class: 'danger', id: 'btn-halt-all',
        onclick: () => confirmAction({
          title: 'Halt all trading', message: 'No order is sent for any follow until you resume (it survives a restart).',
          confirmLabel: 'Halt all', danger: true, reason: 'halted from the dashboard',
          run: (reason) => api('POST', '/api/v1/halt?' + new URLSearchParams({ scope: 'global', reason })).then(() => {
            notice('All trading halted.');
            setGlobalState('halted');
            refreshHeader();
            scheduleRefresh(50);
          }),
        }),
      }, 'Halt all');
      const resumeAll = h('button', {
        type: 'button', class: 'ghost', id: 'btn-resume-all',
        onclick: () => act('Resume', async () => {
          await api('POST', '/api/v1/resume?' + new URLSearchParams({ scope: 'global', reason: 'resumed from the dashboard' }));
          notice('Trading resumed for the account.');
        }),
      }, 'Resume all');
      const closeAll = h('button', {
        type: 'button', class: 'danger', id: 'btn-close-all',
        onclick: () => confirmAction({
          title: 'Close everything hlcopy opened',
          message: 'The account goes to reduce-only first, then one reduce-only order per coin closes hlcopy\u2019s part of each position. Positions opened outside hlcopy stay. Resume afterwards to trade again.',
          confirmLabel: 'Close all positions', danger: true, reason: 'closed from the dashboard',
          run: async (reason) => {
            const done = await api('POST', '/api/v1/close-all', { confirm: 'close-all', reason });
            const sent = (done.closes || []).filter((c) => c.sent).length;
            notice(`Close-all ${done.request_id}: ${sent} close order(s) sent; the account is ${String(done.state).toUpperCase()}.`);
            refreshHeader();
            scheduleRefresh(50);
          },
        }),
      }, 'Close all\u2026');
      fill(ctx, account,
        h('div', { class: 'title-row' }, h('h2', null, 'Account'), pos ? modeBadge(pos.mode) : null, stateBadge(global.state),
          global.why.length ? h('span', { class: 'muted small', id: 'global-why' }, global.why.map((w) => w.cause).join(', ')
            + (globalDetail(events) ? ' \u2014 ' + globalDetail(events) : '')) : null),
        pos ? h('div', { class: 'figures' },
          figure('equity', fmtUsd(pos.equity)), figure('cash', fmtUsd(pos.cash)),
          figure('realised PnL', fmtUsd(pos.realized_pnl), pos.realized_pnl), figure('fees', fmtUsd(pos.fees)),
          figure('funding', fmtUsd(pos.funding), pos.funding)) : errorBox(positions.error),
        h('div', { class: 'buttons' }, haltAll, resumeAll, closeAll),
        risk.ok ? null : errorBox(risk.error));

      // One card per follow.
      if (!follows.ok) {
        fill(ctx, followsEl, h('div', { class: 'panel' }, errorBox(follows.error)));
      } else {
        const perfBy = {};
        if (perf.ok) for (const p of perf.value.follows || []) perfBy[p.follow] = p;
        const list = follows.value.follows || [];
        fill(ctx, followsEl, list.length
          ? list.map((f) => followCard(f, scopes, events, pos, perfBy[f.id], perf.ok ? null : perf.error))
          : h('div', { class: 'panel' }, h('h2', null, 'Follows'),
            h('p', { class: 'empty' }, 'No follow yet. Open a trader from the leaderboard and press Follow, or Fade one from the losers.')));
      }

      // Every position of the account.
      fill(ctx, positionsEl, h('h2', null, 'Account positions'), pos ? table([
        { label: 'coin', cell: (p) => p.coin },
        { label: 'size', num: true, cell: (p) => signed(fmtSz(p.szi), p.szi) },
        { label: 'entry', num: true, cell: (p) => fmtSz(p.entry_px) },
        { label: 'mid', num: true, opt: true, cell: (p) => fmtSz(p.mid) },
        { label: 'notional', num: true, cell: (p) => fmtUsd(p.notional) },
        { label: 'uPnL', num: true, cell: (p) => signed(fmtUsd(p.unrealized_pnl), p.unrealized_pnl) },
        { label: 'follows', opt: true, cell: (p) => (p.follows || []).map((x) => x.follow).join(', ') },
      ], (pos.positions || []).filter((p) => num(p.szi)), { empty: 'Flat.' }) : errorBox(positions.error));

      // The copy log.
      fill(ctx, copiesEl, h('h2', null, 'Recent copies'),
        h('p', { class: 'muted small' }, 'slippage against the leader\u2019s price (positive: we did worse); delay from the leader\u2019s fill to our decision / send'),
        copies.ok ? copiesTable(copies.value.copies || []) : errorBox(copies.error));
    };
  };

  function globalDetail(events) {
    const last = events.find((e) => e.scope === 'global');
    return last && last.detail ? String(last.detail) : '';
  }

  function copiesTable(rows) {
    return table([
      { label: 'time', cell: (c) => fmtTime(c.intent && c.intent.decided_ms) },
      { label: 'follow', cell: (c) => (c.follows || []).join(', ') },
      { label: 'coin', cell: (c) => c.coin },
      { label: 'side', cell: (c) => (c.intent && c.intent.side === 'B' ? 'buy' : c.intent && c.intent.side === 'A' ? 'sell' : '\u2013') },
      { label: 'size', num: true, cell: (c) => fmtSz(c.intent && c.intent.sz) },
      { label: 'status', cell: (c) => badge(c.status, c.status === 'filled' ? 'badge-hit' : c.status === 'rejected' ? 'badge-miss' : null) },
      { label: 'leader px', num: true, opt: true, cell: (c) => fmtSz(c.leader_fill && c.leader_fill.px) },
      { label: 'our px', num: true, opt: true, cell: (c) => fmtSz(c.fill && c.fill.avg_px) },
      { label: 'slip bps', num: true, cell: (c) => h('span', { class: signClass(-(num(c.slippage_bps) || 0)) }, fmtBps(c.slippage_bps)) },
      { label: 'delay', num: true, cell: (c) => `${fmtMs(c.delay_ms && c.delay_ms.decision)} / ${fmtMs(c.delay_ms && c.delay_ms.send)}` },
      { label: 'fee', num: true, opt: true, cell: (c) => fmtUsd(c.fee) },
      { label: 'why', cell: (c) => c.skip_reason || c.error || (c.intent && c.intent.reason) || '' },
    ], rows, { empty: 'No copy yet: orders and skips appear here as the leaders trade.' });
  }

  const GAP_LABELS = {
    latency_slippage: 'latency & slippage', fees_funding: 'fees & funding', skipped: 'skipped', limits: 'limits', entry: 'entry',
  };

  function followCard(f, scopes, events, pos, perf, perfError) {
    const scopeIds = ['global', 'follow:' + f.id, 'leader:' + f.leader];
    const eff = effectiveState(scopes, scopeIds);
    const lastDetail = {};
    for (const e of events) if (scopeIds.includes(e.scope) && lastDetail[e.scope] === undefined) lastDetail[e.scope] = e.detail;
    const spec = f.spec || {};
    const sizing = spec.sizing === 'fixed_notional' ? `fixed ${fmtUsd(spec.fixed_notional_usd)} USD`
      : `${spec.sizing} \u00D7 ${spec.ratio}`;
    const rows = [];
    for (const p of (pos && pos.positions) || []) {
      for (const part of p.follows || []) if (part.follow === f.id) rows.push({ coin: p.coin, mid: p.mid, ...part });
    }
    // How the copier sees the leader: its own userFills stream or the trades firehose, and
    // whether its book is live (its state read and, via userFills, the stream's snapshot in).
    const book = pos && pos.leaders ? pos.leaders[f.leader] : null;
    const feed = book ? h('span', { class: 'muted leader-feed', 'data-live': book.live ? 'yes' : 'no' },
      ` \u00B7 via ${book.via}` + (book.live ? ', live'
        : book.state_ms == null ? ', waiting for its first state' : ', waiting for the stream\u2019s snapshot')) : null;
    const paused = f.paused;
    const scope = 'follow:' + f.id;
    const followHalted = scopes[scope] && scopes[scope].state !== 'active';
    const buttons = h('div', { class: 'buttons' },
      h('button', {
        type: 'button', class: 'ghost small', 'data-action': paused ? 'unpause' : 'pause',
        onclick: () => act(paused ? 'Resume' : 'Pause', async () => {
          await api('PATCH', '/api/v1/follows/' + encodeURIComponent(f.id), { paused: !paused });
          notice(`${f.id} ${paused ? 'resumed' : 'paused'}.`);
        }),
      }, paused ? 'Resume' : 'Pause'),
      h('button', {
        type: 'button', class: followHalted ? 'ghost small' : 'warn small', 'data-action': followHalted ? 'resume' : 'halt',
        onclick: () => act(followHalted ? 'Resume trading' : 'Halt', async () => {
          const path = followHalted ? '/api/v1/resume?' : '/api/v1/halt?';
          await api('POST', path + new URLSearchParams({ scope, reason: (followHalted ? 'resumed' : 'halted') + ' from the dashboard' }));
          notice(`${f.id}: trading ${followHalted ? 'resumed' : 'halted'}.`);
        }),
      }, followHalted ? 'Resume trading' : 'Halt'),
      h('button', { type: 'button', class: 'ghost small', 'data-action': 'edit', onclick: () => limitsDialog(f) }, 'Edit limits'),
      h('button', {
        type: 'button', class: 'ghost small', 'data-action': 'remove',
        onclick: () => confirmAction({
          title: 'Remove ' + f.id, message: 'The follow is deleted; what it holds stays in the account (close it first if you want it gone).',
          confirmLabel: 'Remove', danger: true,
          run: () => api('DELETE', '/api/v1/follows/' + encodeURIComponent(f.id)).then(() => {
            notice(f.id + ' removed.');
            scheduleRefresh(50);
          }),
        }),
      }, 'Remove'));
    const targets = table([
      { key: 'coin', label: 'coin', cell: (r) => r.coin },
      { key: 'leader', label: 'leader', num: true, opt: true, cell: (r) => fmtSz(r.leader_szi) },
      { key: 'target', label: 'target', num: true, cell: (r) => fmtSz(r.target_szi) },
      { key: 'ours', label: 'ours', num: true, cell: (r) => signed(fmtSz(r.attributed_szi), r.attributed_szi) },
      { key: 'to_go', label: 'to go', num: true, cell: (r) => fmtSz((num(r.target_szi) || 0) - (num(r.attributed_szi) || 0)) },
      { key: 'target_at', label: 'target at', opt: true, cell: (r) => fmtTime(r.target_at) },
    ], rows, { empty: 'Nothing held or targeted yet: the copier acts on the leader\u2019s next change.' });
    let perfEl;
    if (perf) {
      const parts = perf.gap_parts || {};
      perfEl = [
        h('div', { class: 'figures' },
          figure('our PnL', fmtUsd(perf.ours), perf.ours),
          figure('leader, scaled', fmtUsd(perf.leader_scaled), perf.leader_scaled),
          figure('gap', fmtUsd(perf.gap), perf.gap),
          figure('since', fmtTime(perf.since_ms))),
        divergingChart(Object.keys(GAP_LABELS).map((k) => ({ label: GAP_LABELS[k], value: parts[k], text: fmtUsd(parts[k]) }))),
      ];
    } else {
      perfEl = perfError ? errorBox(perfError) : h('p', { class: 'empty' }, 'No performance figures yet.');
    }
    return h('div', { class: 'panel follow-card', 'data-follow': f.id },
      h('div', { class: 'head' }, h('h2', null, f.id), stateBadge(eff.state),
        paused ? badge('PAUSED', 'state-reducing') : null,
        f.winding_down ? badge('WINDING DOWN', 'state-reducing') : null,
        badge(spec.mode === 'inverse' ? 'fade' : 'copy'), badge(f.source)),
      h('p', { class: 'small' }, 'leader ', traderLink(f.leader), h('span', { class: 'muted' }, ' \u00B7 ' + sizing
        + (spec.max_notional_per_coin_usd ? ` \u00B7 max ${fmtUsd(spec.max_notional_per_coin_usd)}/coin` : '')
        + (spec.max_total_notional_usd ? ` \u00B7 max ${fmtUsd(spec.max_total_notional_usd)} total` : '')), feed),
      eff.why.length ? h('ul', { class: 'why' }, eff.why.map((w) => h('li', null,
        `${w.scope}: ${w.cause}` + (lastDetail[w.scope] ? ` \u2014 ${lastDetail[w.scope]}` : '')))) : null,
      buttons,
      h('div', { class: 'grid' },
        h('div', null, h('h3', null, 'Target vs held, per coin'), targets),
        h('div', null, h('h3', null, 'Performance gap by part'), perfEl)));
  }

  function limitsDialog(f) {
    const spec = f.spec || {};
    const fields = [
      ['ratio', 'Ratio'], ['fixed_notional_usd', 'Fixed notional (USD)'],
      ['max_notional_per_coin_usd', 'Max notional per coin (USD)'], ['max_total_notional_usd', 'Max total notional (USD)'],
      ['max_leverage', 'Max leverage (x equity)'], ['daily_loss_limit_usd', 'Daily loss limit (USD)'],
      ['max_drawdown_pct', 'Max drawdown (%)'], ['slippage_bps', 'Slippage cap (bps)'],
    ];
    formDialog({
      title: 'Limits of ' + f.id,
      intro: f.source === 'toml' ? 'This follow is declared in the TOML file: edit the file instead (the daemon refuses edits here).' : 'Empty means no cap (the default).',
      submitLabel: 'Save',
      fields: fields.map(([name, label]) => ({ name, label, type: 'number', value: spec[name], placeholder: 'none' })),
      submit: async (v) => {
        const body = {};
        for (const [name] of fields) {
          const before = spec[name] === null || spec[name] === undefined ? '' : String(spec[name]);
          if (v[name] === before) continue;
          if (name === 'slippage_bps') body[name] = v[name] === '' ? null : Number(v[name]);
          else body[name] = v[name] === '' ? null : v[name];
        }
        if (!Object.keys(body).length) return;
        await api('PATCH', '/api/v1/follows/' + encodeURIComponent(f.id), body);
        notice(f.id + ': limits saved.');
        scheduleRefresh(50);
      },
    });
  }

  // -- opportunities ---------------------------------------------------------------------------

  VIEWS.opportunities = (ctx) => {
    const summary = h('div', { class: 'panel' });
    const list = h('div', { class: 'panel' });
    ctx.el.append(h('div', { class: 'title-row' }, h('h1', null, 'Opportunities'),
      h('span', { class: 'muted small' }, 'each top loser\u2019s open or add, faded, and how the opposite trade went')), summary, list);
    ctx.refresh = async () => {
      let page;
      try {
        page = await get('/api/v1/opportunities?limit=100');
      } catch (e) {
        fill(ctx, summary, errorBox(e));
        fill(ctx, list);
        return;
      }
      fill(ctx, summary, h('h2', null, 'Hit rate per horizon'), table([
        { label: 'horizon', cell: (r) => fmtDuration(r.horizon_s) },
        { label: 'count', num: true, cell: (r) => fmtInt(r.count) },
        { label: 'resolved', num: true, cell: (r) => fmtInt(r.resolved) },
        { label: 'hits', num: true, cell: (r) => fmtInt(r.hits) },
        { label: 'hit rate', num: true, cell: (r) => fmtPct(r.hit_rate, 0) },
        { label: 'mean PnL', num: true, cell: (r) => signed(fmtUsd(r.mean_pnl_usd), r.mean_pnl_usd) },
        { label: 'mean return', num: true, opt: true, cell: (r) => (num(r.mean_return_bps) === null ? '\u2013' : fmtBps(r.mean_return_bps) + ' bps') },
      ], page.summary || [], { empty: 'No opportunity recorded yet.' }));
      const horizons = [...new Set((page.opportunities || []).flatMap((o) => (o.outcomes || []).map((x) => x.horizon_s)))].sort((a, b) => a - b);
      fill(ctx, list, h('h2', null, 'Latest'), table([
        { label: 'time', cell: (o) => fmtTime(o.time_ms) },
        { label: 'trader', cell: (o) => traderLink(o.trader) },
        { label: 'coin', cell: (o) => o.coin },
        { label: 'kind', opt: true, cell: (o) => o.kind },
        { label: 'they', cell: (o) => o.trader_side },
        { label: 'we', cell: (o) => o.our_side },
        { label: 'size', num: true, opt: true, cell: (o) => fmtSz(o.size) },
        { label: 'price', num: true, cell: (o) => fmtSz(o.price) },
        { label: 'rank', num: true, opt: true, cell: (o) => '#' + o.losers_rank },
        ...horizons.map((hz) => ({
          label: fmtDuration(hz), num: true,
          cell: (o) => {
            const out = (o.outcomes || []).find((x) => x.horizon_s === hz);
            if (!out || out.pnl_usd === null) return h('span', { class: 'muted' }, 'due ' + fmtTime(out && out.due_ms));
            return h('span', { class: out.hit ? 'pos' : 'neg' }, fmtUsd(out.pnl_usd));
          },
        })),
      ], page.opportunities || [], { empty: 'None yet: an opportunity is recorded when one of the worst losers opens or adds.' }));
    };
  };

  // -- status ---------------------------------------------------------------------------------

  function leaves(obj, prefix, out) {
    for (const [k, v] of Object.entries(obj || {})) {
      const key = prefix ? prefix + '.' + k : k;
      if (v !== null && typeof v === 'object' && !Array.isArray(v)) leaves(v, key, out);
      else if (!Array.isArray(v)) out.push([key, v === null ? '\u2013' : String(v)]);
    }
    return out;
  }

  const COMPONENT_FIELDS = ['state', 'restarts', 'since_s', 'down_s', 'last_error'];

  VIEWS.status = (ctx) => {
    const top = h('div', { class: 'panel' });
    const grid = h('div', { class: 'grid' });
    const comps = h('div', { class: 'panel', id: 'components' });
    ctx.el.append(h('div', { class: 'title-row' }, h('h1', null, 'Status')), top, comps, grid);
    ctx.refresh = async () => {
      let stats;
      try {
        stats = await get('/api/v1/stats');
      } catch (e) {
        fill(ctx, top, errorBox(e));
        return;
      }
      setMode(stats.mode);
      const components = stats.components || {};
      fill(ctx, top, h('div', { class: 'figures' },
        figure('mode', String(stats.mode || '?').toUpperCase()), figure('network', stats.network || '\u2013'),
        figure('version', stats.version || '\u2013'), figure('uptime', fmtDuration(stats.uptime_s)),
        figure('event-loop lag', fmtMs(stats.loop_lag_ms)),
        figure('components ready', `${Object.values(components).filter((c) => c.state === 'ready').length} / ${Object.keys(components).length}`)));
      fill(ctx, comps, h('h2', null, 'Components'), table([
        { label: 'component', cell: ([name]) => name },
        { label: 'state', cell: ([, c]) => badge(c.state, c.state === 'ready' ? 'badge-ready' : 'badge-bad') },
        { label: 'restarts', num: true, cell: ([, c]) => fmtInt(c.restarts) },
        { label: 'for', num: true, opt: true, cell: ([, c]) => fmtDuration(c.since_s) },
        { label: 'last error', cell: ([, c]) => c.last_error || '' },
      ], Object.entries(components)));

      const budget = stats.budget || {};
      const lanes = Object.entries(budget.lanes || {});
      const limit = num(budget.limit_per_minute) || 1200;
      const budgetPanel = h('div', { class: 'panel', id: 'budget' }, h('h2', null, 'REST weight budget'),
        h('div', { class: 'figures' },
          figure('used, last minute', `${fmtInt(budget.used_last_window)} / ${fmtInt(limit)}`),
          figure('utilisation', fmtPct(budget.utilization, 0)),
          figure('HTTP 429s', fmtInt(budget.rate_limited), -(num(budget.rate_limited) || 0)),
          figure('read back-off', fmtDuration(budget.read_backoff_s))),
        lanes.length ? barChart(lanes.map(([name, l]) => ({
          label: name, value: num(l.used_last_window) || 0, max: limit,
          text: `${fmtInt(l.used_last_window)}${num(l.waiting) ? ` (${fmtInt(l.waiting)} waiting)` : ''}`,
        }))) : h('p', { class: 'empty' }, 'No lane figures.'));
      const queues = Object.entries(stats.queues || {});
      const queuePanel = h('div', { class: 'panel', id: 'queues' }, h('h2', null, 'Queues'),
        queues.length ? barChart(queues.map(([name, q]) => ({
          label: name, value: num(q.depth) || 0, max: num(q.maxsize) || 1,
          cls: (num(q.depth) || 0) > 0.8 * (num(q.maxsize) || 1) ? 'bar-neg' : 'bar',
          text: `${fmtInt(q.depth)} / ${fmtInt(q.maxsize)}`,
        }))) : h('p', { class: 'empty' }, 'No queue.'),
        table([
          { label: 'queue', cell: ([n]) => n },
          { label: 'policy', opt: true, cell: ([, q]) => q.policy || '' },
          { label: 'high water', num: true, cell: ([, q]) => fmtInt(q.high_water) },
          { label: 'dropped', num: true, cell: ([, q]) => fmtInt(q.dropped) },
          { label: 'total in', num: true, opt: true, cell: ([, q]) => fmtInt(q.total_in) },
        ], queues));
      const stream = components.stream || {};
      const drop = new Set(COMPONENT_FIELDS);
      const streamPanel = h('div', { class: 'panel', id: 'stream' }, h('h2', null, 'Exchange stream'),
        h('div', { class: 'title-row' }, badge(stream.state || 'absent', stream.state === 'ready' ? 'badge-ready' : 'badge-bad'),
          h('span', { class: 'muted' }, `${fmtInt(stream.connections_ready)} of ${fmtInt(stream.connections)} connections ready`)),
        kv(leaves(Object.fromEntries(Object.entries(stream).filter(([k]) => !drop.has(k))), '', [])));
      const discovery = components.discovery || {};
      const api = components.api || {};
      const feedPanel = h('div', { class: 'panel', id: 'feeds' }, h('h2', null, 'Discovery and live feed'), kv([
        ['trades per second', fmtNum(discovery.trades_per_s, 1)],
        ['addresses seen', fmtInt(discovery.addresses)],
        ['trades\u2019 users order', discovery.calibration || '\u2013'],
        ['feed clients', fmtInt(api.feed && api.feed.clients)],
        ['feed messages sent', fmtInt(api.feed && api.feed.sent)],
        ['slow clients dropped', fmtInt(api.feed && api.feed.dropped_slow)],
        ['events published', fmtInt(stats.events && stats.events.published)],
      ]));
      fill(ctx, grid, budgetPanel, queuePanel, streamPanel, feedPanel);
    };
  };

  // -- the header: mode and the account's state, everywhere ----------------------------------

  function modeBadge(mode) {
    const m = mode === 'live' ? 'live' : mode === 'paper' ? 'paper' : 'unknown';
    return h('span', { class: 'mode mode-' + m }, m === 'unknown' ? '?' : m.toUpperCase());
  }

  function setMode(mode) {
    const el = document.getElementById('mode');
    const m = mode === 'live' ? 'live' : mode === 'paper' ? 'paper' : 'unknown';
    el.className = 'mode mode-' + m;
    el.textContent = m === 'unknown' ? '?' : m.toUpperCase();
    document.title = (m === 'unknown' ? '' : m.toUpperCase() + ' \u00B7 ') + 'hlcopy';
  }

  function setGlobalState(state) {
    const el = document.getElementById('global-state');
    const st = STATE_ORDER[state] !== undefined ? state : 'unknown';
    el.className = 'state' + (st !== 'unknown' ? ' state-' + st : '');
    el.textContent = st.toUpperCase();
  }

  async function refreshHeader() {
    const [stats, risk] = await Promise.all([settle(get('/api/v1/stats')), settle(get('/api/v1/risk?limit=1'))]);
    if (stats.ok) setMode(stats.value.mode);
    if (risk.ok) setGlobalState(risk.value.scopes && risk.value.scopes.global ? risk.value.scopes.global.state : 'active');
    return stats.ok;
  }

  // -- the live feed --------------------------------------------------------------------------------

  let feed = null;
  let feedRetryMs = 1000;
  let feedTimer = null;

  function setFeedState(on, text) {
    const el = document.getElementById('feed-state');
    el.className = 'feed ' + (on ? 'feed-on' : 'feed-off');
    el.title = 'the live feed (/ws/v1/updates): ' + text;
    el.replaceChildren(h('span', { class: 'feed-text' }, text));
  }

  function connectFeed(restart) {
    if (feed && !restart) return;
    if (feed) {
      const old = feed;
      feed = null;
      old.onclose = null;
      old.close();
    }
    clearTimeout(feedTimer);
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const protocols = ['hlcopy.v1'];
    const bearer = currentToken();
    if (bearer) protocols.push('bearer.' + bearer);
    let ws;
    try {
      ws = new WebSocket(scheme + '//' + location.host + '/ws/v1/updates', protocols);
    } catch (_) {
      setFeedState(false, 'no live feed (polling)');
      return;
    }
    feed = ws;
    setFeedState(false, 'connecting');
    ws.onmessage = (event) => {
      let msg;
      try {
        msg = JSON.parse(event.data);
      } catch (_) {
        return;
      }
      onFeed(msg);
    };
    ws.onclose = () => {
      if (feed !== ws) return;
      feed = null;
      setFeedState(false, 'offline (retrying)');
      feedTimer = setTimeout(() => connectFeed(false), feedRetryMs);
      feedRetryMs = Math.min(30000, feedRetryMs * 2);
    };
  }

  let feedEvents = 0;
  function onFeed(msg) {
    if (!msg || typeof msg !== 'object') return;
    if (msg.type === 'connection') {
      feedRetryMs = 1000;
      setFeedState(true, 'live');
      return;
    }
    feedEvents += 1;
    document.getElementById('feed-state').dataset.events = String(feedEvents);
    const data = msg.data || {};
    const view = current && current.name;
    if (msg.type === 'risk') {
      if (data.scope === 'global' && data.to) setGlobalState(data.to);
      if (view === 'copying') scheduleRefresh(300); // rare, and the operator is waiting for it
    } else if (msg.type === 'copy') {
      if (view === 'copying') refreshSoon();
    } else if (msg.type === 'position') {
      if (view === 'trader' && current.address === data.address) refreshSoon();
    } else if (msg.type === 'opportunity') {
      if (view === 'opportunities') refreshSoon();
    }
  }

  // -- start ------------------------------------------------------------------------------------

  function start() {
    updateTokenButton();
    document.getElementById('token-button').addEventListener('click', () => {
      if (currentToken()) {
        setToken('');
        connectFeed(true);
        notice('Token forgotten for this tab.');
      } else {
        askToken('Set the daemon\u2019s bearer token for this tab.').then(() => {
          refreshHeader();
          scheduleRefresh(0);
        }, () => {});
      }
    });
    window.addEventListener('hashchange', mount);
    let resizeTimer = null;
    window.addEventListener('resize', () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => { if (current && current.resize) current.resize(); }, 200);
    });
    setInterval(refreshHeader, 15000);
    // The feed once reads work: with api.read_auth it waits for the token.
    refreshHeader().then((ok) => { if (ok) connectFeed(false); });
    mount();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
