// The status page: reads the coordinator's /status/events stream (server-sent events) with fetch,
// since EventSource cannot send an Authorization header, and redraws the table and the charts on
// every event. Plain browser JavaScript, no build step, nothing loaded from elsewhere.

(() => {
  const KEY_STORE = 'counter-mesh-api-key';
  const EVENTS = '/status/events';
  const SVG = 'http://www.w3.org/2000/svg';
  const $ = (id) => document.getElementById(id);

  const connection = $('connection');
  const keyForm = $('key-form');
  const keyInput = $('key');
  const keyError = $('key-error');
  const tbody = $('counters').tBodies[0];
  const rows = new Map();
  /** id -> state, to announce changes only. */
  const lastStates = new Map();
  let retryMs = 500;
  let controller = null;

  // ---------------------------------------------------------------- the API key

  /** `#key=...` in the URL: taken once, then removed from the address bar (and history). */
  function keyFromFragment() {
    const m = /(?:^#|&)key=([^&]*)/.exec(location.hash);
    if (!m) return;
    sessionStorage.setItem(KEY_STORE, decodeURIComponent(m[1]));
    history.replaceState(null, '', location.pathname + location.search);
  }

  function askForKey(message) {
    keyForm.hidden = false;
    keyError.textContent = message;
    setConnection('down', 'Waiting for the API key');
    keyInput.focus();
  }

  keyForm.addEventListener('submit', (e) => {
    e.preventDefault();
    const key = keyInput.value.trim();
    if (!key) {
      keyError.textContent = 'Enter the API key.';
      return;
    }
    sessionStorage.setItem(KEY_STORE, key);
    keyInput.value = '';
    keyError.textContent = '';
    connect();
  });

  // ---------------------------------------------------------------- the stream

  function setConnection(state, text) {
    const before = connection.dataset.state;
    connection.dataset.state = state;
    connection.textContent = text;
    // announced when it changes (lost, or back after a loss), not on every update
    if (state !== before && (state === 'down' || before === 'down')) announce(state === 'down' ? `Connection to the coordinator: ${text}.` : 'Connection to the coordinator is back.');
  }

  function announce(text) {
    $('announce').textContent = text;
  }

  async function connect() {
    if (controller) controller.abort();
    controller = new AbortController();
    const headers = { accept: 'text/event-stream' };
    const key = sessionStorage.getItem(KEY_STORE);
    if (key) headers.authorization = `Bearer ${key}`;
    let res;
    try {
      res = await fetch(EVENTS, { headers, cache: 'no-store', signal: controller.signal });
    } catch (err) {
      if (err.name !== 'AbortError') retry('Coordinator unreachable');
      return;
    }
    if (res.status === 401) {
      sessionStorage.removeItem(KEY_STORE);
      askForKey(key ? 'The coordinator refused that key. Check it and try again.' : '');
      return;
    }
    if (!res.ok || !res.body) {
      retry(`Coordinator answered ${res.status}`);
      return;
    }
    keyForm.hidden = true;
    retryMs = 500;
    setConnection('live', 'Live');
    try {
      await readEvents(res.body);
      retry('Stream ended');
    } catch (err) {
      if (err.name !== 'AbortError') retry('Connection lost');
    }
  }

  function retry(why) {
    setConnection('down', `${why}; retrying in ${Math.round(retryMs / 1000)} s`);
    setTimeout(connect, retryMs);
    retryMs = Math.min(retryMs * 2, 10000);
  }

  /** Server-sent events: blocks separated by a blank line; `data:` lines carry one JSON object. */
  async function readEvents(body) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let end = buffer.indexOf('\n\n');
      while (end >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = block
          .split('\n')
          .filter((l) => l.startsWith('data:'))
          .map((l) => l.slice(5).trimStart())
          .join('\n');
        if (data) render(JSON.parse(data));
        end = buffer.indexOf('\n\n');
      }
    }
  }

  // ---------------------------------------------------------------- drawing

  function stateOf(c) {
    if (!c.reachable) return ['down', 'Down'];
    if (!c.ready) return ['not-ready', 'Not ready'];
    return ['up', 'Up'];
  }

  const fmtInt = new Intl.NumberFormat();

  function ago(fromIso, nowIso) {
    if (!fromIso) return 'never';
    const s = Math.max(0, (Date.parse(nowIso) - Date.parse(fromIso)) / 1000);
    if (s < 10) return `${s.toFixed(1)} s ago`;
    if (s < 60) return `${Math.round(s)} s ago`;
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    return `${Math.floor(s / 3600)} h ago`;
  }

  function lag(seconds) {
    if (seconds === null || seconds === undefined) return '—';
    return seconds < 60 ? `${seconds.toFixed(1)} s` : `${Math.floor(seconds / 60)} min`;
  }

  function cell(tr, tag, className) {
    const el = document.createElement(tag);
    if (className) el.className = className;
    tr.append(el);
    return el;
  }

  function setText(el, text) {
    if (el.textContent !== text) el.textContent = text;
  }

  function rowFor(id) {
    let row = rows.get(id);
    if (row) return row;
    const tr = document.createElement('tr');
    const name = cell(tr, 'th');
    name.scope = 'row';
    const badge = document.createElement('span');
    badge.className = 'badge';
    cell(tr, 'td').append(badge);
    row = { tr, name, badge, items: cell(tr, 'td', 'num'), heard: cell(tr, 'td', 'num'), lag: cell(tr, 'td', 'num'), address: cell(tr, 'td', 'address') };
    rows.set(id, row);
    tbody.append(tr);
    return row;
  }

  function render(s) {
    setText($('coordinator'), s.coordinatorId);
    const changes = [];
    let up = 0;
    for (const c of s.counters) {
      const row = rowFor(c.id);
      const [state, label] = stateOf(c);
      if (state === 'up') up++;
      row.tr.dataset.counter = c.id;
      row.tr.dataset.state = state;
      setText(row.name, c.id);
      row.badge.dataset.state = state;
      setText(row.badge, label);
      setText(row.items, c.items === null ? '—' : fmtInt.format(c.items));
      setText(row.heard, ago(c.lastHeardAt, s.at));
      setText(row.lag, lag(c.replicationLagSeconds));
      setText(row.address, c.address);
      const before = lastStates.get(c.id);
      if (before !== undefined && before !== state) changes.push(`Counter ${c.id} is ${label.toLowerCase()}.`);
      lastStates.set(c.id, state);
    }
    $('no-counters').hidden = s.counters.length > 0;
    setText($('summary'), `${up} of ${s.counters.length} up`);
    if (changes.length > 0) announce(changes.join(' '));

    $('rates-off').hidden = s.rates !== null;
    for (const fig of document.querySelectorAll('.chart')) {
      fig.hidden = s.rates === null;
      if (s.rates) drawChart(fig, s.rates[fig.dataset.series], s.rates.stepSeconds);
    }
    setConnection('live', `Live · updated ${new Date(s.at).toLocaleTimeString()}`);
  }

  /** A small area chart of the last points; the figure's text says the latest and the peak. */
  function drawChart(fig, points, stepSeconds) {
    const W = 300;
    const H = 100;
    // seconds across the chart: one minute at first, then as much as there is, up to five
    const span = Math.min(300, Math.max(60, points.length * stepSeconds));
    const latest = points.length > 0 ? points[points.length - 1] : 0;
    const peak = points.reduce((a, b) => Math.max(a, b), 0);
    const top = niceMax(peak);
    const label = fig.querySelector('.label').textContent;
    fig.querySelector('[data-latest]').textContent = fmtInt.format(latest);
    fig.dataset.latest = String(latest);

    let svg = fig.querySelector('svg');
    if (!svg) {
      svg = document.createElementNS(SVG, 'svg');
      svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
      svg.setAttribute('preserveAspectRatio', 'none');
      svg.setAttribute('role', 'img');
      for (const cls of ['area', 'line']) {
        const p = document.createElementNS(SVG, 'path');
        p.setAttribute('class', cls);
        svg.append(p);
      }
      const axis = document.createElementNS(SVG, 'line');
      axis.setAttribute('class', 'axis');
      axis.setAttribute('x1', '0');
      axis.setAttribute('x2', String(W));
      axis.setAttribute('y1', String(H));
      axis.setAttribute('y2', String(H));
      svg.append(axis);
      fig.append(svg);
      const ticks = document.createElement('div');
      ticks.className = 'ticks';
      fig.append(ticks);
    }
    svg.setAttribute('aria-label', `${label} per second over the last ${Math.round((points.length * stepSeconds) / 60)} minutes: now ${latest}, peak ${peak}`);
    const x = (i) => W - (points.length - 1 - i) * stepSeconds * (W / span);
    const y = (v) => H - (v / top) * (H - 4);
    let line = '';
    points.forEach((v, i) => {
      line += `${i === 0 ? 'M' : 'L'}${x(i).toFixed(1)},${y(v).toFixed(1)}`;
    });
    const [area, path] = svg.querySelectorAll('path');
    path.setAttribute('d', line);
    area.setAttribute('d', points.length > 0 ? `${line}L${W},${H}L${x(0).toFixed(1)},${H}Z` : '');
    setText(fig.querySelector('.ticks'), `scale 0–${fmtInt.format(top)}/s · last ${span < 120 ? `${span} s` : `${Math.round(span / 60)} min`}`);
  }

  function niceMax(v) {
    if (v <= 5) return 5;
    const p = 10 ** Math.floor(Math.log10(v));
    for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
    return 10 * p;
  }

  keyFromFragment();
  connect();
})();
