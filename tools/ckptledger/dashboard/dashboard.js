// The ckptledger dashboard's script (index.html says what the page shows; docs/serve.md the API).
// Plain ES2017, no build step; Chart.js 3 is the global `Chart` from /static/chart.js.
//
// Data flow: GET `history` (the kinds the page shows), then an EventSource on
// `events?since=<last seq>` with the same kinds; every row, from either, goes through handle(),
// which drops rows already seen (seq <= lastSeq), so a reconnect never counts an event twice.
//
// Test hooks: window.ckptDashboard = {charts: {metric: Chart}, validations: {metric: count of
// validated events reporting it}, best: {metric: {score, step}} (the newest best_updated since the
// last run that started without resume, as the `best` endpoint), lastSeq, ready}. Each chart's
// canvas has data-metric, data-points (finite points drawn), data-best-score, data-best-step; the
// datasets carry ckptRole 'curve' (one per run) or 'best'. Rows: tr[data-seq][data-kind] in the
// timeline, tr[data-run-id][data-ended] in the runs table; #verify has data-state and data-ok.
'use strict';

(function () {
  const ALL_KINDS = ['run_started', 'save_begun', 'save_committed', 'save_failed', 'pruned',
    'best_updated', 'published', 'resumed', 'recovered', 'run_finished', 'validated',
    'config_changed', 'save_prepared'];
  // What the page reads; `history` and `events` are asked for these only (a big ledger is mostly
  // save_begun/save_committed pairs). The same filter on both keeps the seq cursor exact.
  const SHOWN_KINDS = ['run_started', 'run_finished', 'save_committed', 'pruned', 'best_updated',
    'published', 'recovered', 'validated'];
  const TIMELINE_KINDS = {save_committed: 'saved', pruned: 'pruned', best_updated: 'new best',
    published: 'published', recovered: 'recovered'};
  const TIMELINE_MAX_ROWS = 300;
  const VERIFY_MIN_INTERVAL_MS = 2000;
  const RETRY_MS = 3000;
  const COLORS = ['#1f77b4', '#2ca02c', '#9467bd', '#ff7f0e', '#17becf', '#8c564b', '#e377c2'];

  const D = window.ckptDashboard = {charts: {}, validations: {}, best: {}, lastSeq: 0, ready: false};

  const token = new URLSearchParams(location.search).get('token');
  // Relative to the page's directory: `/` or `/w/<id>/` (also when the trailing slash is missing).
  const base = location.pathname.replace(/index\.html$/, '').replace(/([^/])$/, '$1/');
  const $ = (id) => document.getElementById(id);

  let workDir = '';
  const runColors = {};          // run_id -> color, in the order runs appear
  let bulk = false;              // applying the initial history: draw once at the end
  let pendingTimeline = [];      // rows collected while bulk
  const dirtyCharts = new Set();
  let redrawTimer = null;

  // ---- API -------------------------------------------------------------------------------------

  function apiUrl(path, query) {
    const q = new URLSearchParams(query || []);
    if (token && path === 'events') q.set('token', token);  // EventSource cannot send headers
    const s = q.toString();
    return base + path + (s ? '?' + s : '');
  }

  async function getJson(path, query) {
    const headers = token ? {Authorization: 'Bearer ' + token} : {};
    const r = await fetch(apiUrl(path, query), {headers: headers, cache: 'no-store'});
    let body = null;
    try { body = await r.json(); } catch (e) { body = null; }
    if (!r.ok) {
      throw new Error(path + ': HTTP ' + r.status + (body && body.error ? ' ' + body.error : ''));
    }
    return body;
  }

  const kindQuery = SHOWN_KINDS.map((k) => ['kind', k]);

  // ---- small helpers ---------------------------------------------------------------------------

  function showError(msg) {
    const e = $('error');
    e.textContent = msg || '';
    e.hidden = !msg;
  }

  // 2026-12-06T21:01:43.226228Z -> 12-06 21:01:43 (UTC; the full time is the cell's title).
  function shortTime(t) { return t ? String(t).slice(5, 19).replace('T', ' ') : ''; }

  // Run ids are <start us>-<pid>-<random hex>: the random part tells runs apart.
  function shortRun(id) {
    const s = String(id);
    return s.indexOf('-') >= 0 ? s.slice(s.lastIndexOf('-') + 1) : s.slice(0, 8);
  }

  function relPath(p) {
    if (!p) return '';
    return workDir && p.indexOf(workDir + '/') === 0 ? p.slice(workDir.length + 1) : p;
  }

  function stepOf(row) {
    if (row.step !== null && row.step !== undefined) return row.step;
    return row.iter !== null && row.iter !== undefined ? row.iter : row.epoch;
  }

  function cell(tr, text, cls, title) {
    const td = tr.insertCell();
    td.textContent = text === null || text === undefined ? '' : String(text);
    if (cls) td.className = cls;
    if (title) td.title = title;
    return td;
  }

  function colorOf(runId) {
    if (!(runId in runColors)) {
      runColors[runId] = COLORS[Object.keys(runColors).length % COLORS.length];
    }
    return runColors[runId];
  }

  // ---- charts ----------------------------------------------------------------------------------

  function chartFor(metric) {
    if (D.charts[metric]) return D.charts[metric];
    $('no-charts').hidden = true;
    const box = document.createElement('div');
    box.className = 'chart';
    const canvas = document.createElement('canvas');
    canvas.dataset.metric = metric;
    box.appendChild(canvas);
    $('charts').appendChild(box);
    const chart = new Chart(canvas, {
      type: 'line',
      data: {datasets: [{
        ckptRole: 'best', label: 'best', data: [], showLine: false, order: 0,
        pointStyle: 'star', pointRadius: 9, pointHoverRadius: 11, borderWidth: 2,
        borderColor: '#d62728', backgroundColor: '#d62728',
      }]},
      options: {
        animation: false,
        maintainAspectRatio: false,
        interaction: {mode: 'nearest', intersect: false},
        scales: {
          x: {type: 'linear', title: {display: true, text: 'step'}},
          y: {title: {display: true, text: metric}},
        },
        plugins: {
          title: {display: true, text: metric},
          // No "best" entry for a metric without a best (e.g. loss with save_best: acc).
          legend: {labels: {boxWidth: 12, filter: (item, data) =>
            data.datasets[item.datasetIndex].data.length > 0}},
        },
      },
    });
    chart.ckptRuns = {};  // run_id -> its curve dataset
    D.charts[metric] = chart;
    if (!(metric in D.validations)) D.validations[metric] = 0;
    return chart;
  }

  function curveFor(chart, runId) {
    if (!chart.ckptRuns[runId]) {
      const color = colorOf(runId);
      const ds = {ckptRole: 'curve', label: 'run ' + shortRun(runId), data: [], order: 1,
        borderColor: color, backgroundColor: color, pointRadius: 2, borderWidth: 1.5, tension: 0};
      chart.ckptRuns[runId] = ds;
      chart.data.datasets.push(ds);
    }
    return chart.ckptRuns[runId];
  }

  function bestSet(chart) { return chart.data.datasets.find((d) => d.ckptRole === 'best'); }

  function markDirty(chart) {
    dirtyCharts.add(chart);
    if (bulk || redrawTimer) return;
    redrawTimer = setTimeout(redraw, 0);  // one redraw per burst of events
  }

  function redraw() {
    redrawTimer = null;
    dirtyCharts.forEach((chart) => {
      const canvas = chart.canvas;
      const metric = canvas.dataset.metric;
      const points = chart.data.datasets.filter((d) => d.ckptRole === 'curve')
        .reduce((n, d) => n + d.data.length, 0);
      canvas.dataset.points = String(points);
      const b = D.best[metric];
      canvas.dataset.bestScore = b ? String(b.score) : '';
      canvas.dataset.bestStep = b ? String(b.step) : '';
      chart.update('none');
    });
    dirtyCharts.clear();
  }

  function onValidated(row) {
    const metrics = (row.detail && row.detail.metrics) || {};
    const step = stepOf(row);
    Object.keys(metrics).forEach((metric) => {
      const chart = chartFor(metric);
      D.validations[metric] = (D.validations[metric] || 0) + 1;
      const v = metrics[metric];
      // "None", "nan", "inf", "-inf" are strings in the ledger: nothing to draw.
      if (typeof v !== 'number' || !isFinite(v) || step === null || step === undefined) return;
      curveFor(chart, row.run_id).data.push({x: step, y: v});
      markDirty(chart);
    });
  }

  function onBestUpdated(row) {
    if (!row.metric || typeof row.score !== 'number') return;
    const chart = chartFor(row.metric);
    const step = stepOf(row);
    D.best[row.metric] = {score: row.score, step: step};
    bestSet(chart).data.push({x: step, y: row.score});
    markDirty(chart);
  }

  // A run that starts without resume starts an empty hub: the bests so far no longer count.
  function onRunStarted(row) {
    const d = row.detail || {};
    if (d.work_dir) {
      workDir = String(d.work_dir).replace(/\/+$/, '');
      $('work-dir').textContent = workDir;
    }
    colorOf(row.run_id);
    if (d.resume === false) {
      Object.keys(D.best).forEach((m) => { delete D.best[m]; });
      Object.keys(D.charts).forEach((m) => {
        bestSet(D.charts[m]).data.length = 0;
        markDirty(D.charts[m]);
      });
    }
  }

  // ---- timeline --------------------------------------------------------------------------------

  function timelineRow(row) {
    const tr = document.createElement('tr');
    tr.dataset.seq = String(row.seq);
    tr.dataset.kind = row.kind;
    let label = TIMELINE_KINDS[row.kind];
    if (row.kind === 'recovered') label = row.detail.finding;
    if (row.kind === 'pruned' && row.detail && row.detail.reason === 'best_replaced') {
      label = 'best replaced';
    }
    cell(tr, shortTime(row.time), 'time', row.time);
    cell(tr, label, 'kind', row.kind + ' #' + row.seq);
    cell(tr, stepOf(row), 'step');
    cell(tr, relPath(row.path), 'path', row.path);
    cell(tr, row.summary, 'summary');
    return tr;
  }

  function onTimeline(row) {
    if (row.kind === 'recovered') {
      const finding = row.detail && row.detail.finding;
      if (finding !== 'lost' && finding !== 'corrupt') return;  // repairs are not checkpoints' story
    }
    if (bulk) {
      pendingTimeline.push(row);
      if (pendingTimeline.length > 2 * TIMELINE_MAX_ROWS) {
        pendingTimeline = pendingTimeline.slice(-TIMELINE_MAX_ROWS);
      }
      return;
    }
    const body = $('timeline-body');
    body.insertBefore(timelineRow(row), body.firstChild);
    while (body.rows.length > TIMELINE_MAX_ROWS) body.deleteRow(-1);
  }

  function flushTimeline() {
    const body = $('timeline-body');
    pendingTimeline.slice(-TIMELINE_MAX_ROWS).reverse()
      .forEach((row) => body.appendChild(timelineRow(row)));
    pendingTimeline = [];
  }

  // ---- runs ------------------------------------------------------------------------------------

  let runsTimer = null;

  async function loadRuns() {
    clearTimeout(runsTimer);
    runsTimer = null;
    let runs;
    try {
      runs = await getJson('runs');
    } catch (e) {
      showError(e.message);
      runsTimer = setTimeout(loadRuns, RETRY_MS);
      return;
    }
    const body = $('runs-body');
    body.textContent = '';
    runs.slice().reverse().forEach((r) => {
      const tr = body.insertRow();
      tr.dataset.runId = r.run_id;
      tr.dataset.ended = r.ended;
      cell(tr, shortRun(r.run_id), 'run', r.run_id);
      cell(tr, shortTime(r.started_at), 'time', r.started_at);
      cell(tr, shortTime(r.ended_at), 'time', r.ended_at);
      cell(tr, r.ended, r.ended);
      cell(tr, relPath(r.resumed_from), 'path', r.resumed_from);
    });
    // A process that dies appends nothing: re-ask while a run looks alive.
    if (runs.some((r) => r.ended === 'running' || r.ended === 'unknown')) {
      runsTimer = setTimeout(loadRuns, 15000);
    }
  }

  // ---- verify ----------------------------------------------------------------------------------

  let verifyTimer = null;
  let verifyStartedAt = 0;
  let verifyGeneration = 0;

  // After saves and prunes: at most one verify per VERIFY_MIN_INTERVAL_MS.
  function scheduleVerify() {
    if (verifyTimer) return;
    const wait = Math.max(0, verifyStartedAt + VERIFY_MIN_INTERVAL_MS - Date.now());
    verifyTimer = setTimeout(() => { verifyTimer = null; loadVerify(); }, wait);
  }

  async function loadVerify() {
    const generation = ++verifyGeneration;
    verifyStartedAt = Date.now();
    const panel = $('verify');
    panel.dataset.state = 'checking';
    let v;
    try {
      v = await getJson('verify');
    } catch (e) {
      if (generation !== verifyGeneration) return;
      panel.dataset.state = 'error';
      delete panel.dataset.ok;
      $('verify-result').textContent = e.message;
      return;
    }
    if (generation !== verifyGeneration) return;  // a newer check is under way
    panel.dataset.state = 'done';
    panel.dataset.ok = String(!!v.ok);
    panel.dataset.chainOk = String(!!v.chain_ok);
    panel.dataset.eventsChecked = String(v.events_checked);
    panel.dataset.liveFilesChecked = String(v.live_files_checked);
    const problems = v.file_problems || [];
    panel.dataset.problems = String(problems.length);
    $('verify-result').textContent = v.ok ? 'OK' : 'PROBLEMS';
    $('verify-when').textContent = 'checked ' + new Date().toLocaleTimeString();
    $('verify-counts').textContent =
      'chain ' + (v.chain_ok ? 'ok' : 'BROKEN at seq ' + v.first_bad_seq + ': ' + v.chain_problem) +
      ', ' + v.events_checked + ' events; ' + v.live_files_checked + ' live files, ' +
      problems.length + ' with problems';
    const list = $('verify-problems');
    list.textContent = '';
    problems.forEach((p) => {
      const li = document.createElement('li');
      li.textContent = relPath(p.path) + ': ' + p.problem + ' (' + p.kind + ')';
      list.appendChild(li);
    });
  }

  // ---- events ----------------------------------------------------------------------------------

  function handle(row) {
    if (!row || typeof row.seq !== 'number' || row.seq <= D.lastSeq) return;  // seen already
    D.lastSeq = row.seq;
    document.body.dataset.lastSeq = String(row.seq);
    switch (row.kind) {
      case 'validated':
        onValidated(row);
        break;
      case 'best_updated':
        onBestUpdated(row);
        onTimeline(row);
        break;
      case 'run_started':
        onRunStarted(row);
        if (!bulk) loadRuns();
        break;
      case 'run_finished':
        if (!bulk) loadRuns();
        break;
      case 'save_committed':
      case 'pruned':
        onTimeline(row);
        if (!bulk) scheduleVerify();
        break;
      case 'published':
      case 'recovered':
        onTimeline(row);
        break;
      default:
        break;
    }
  }

  function setConnection(state, text) {
    const c = $('connection');
    c.dataset.state = state;
    c.textContent = text || state;
  }

  function follow() {
    const source = new EventSource(apiUrl('events', [['since', String(D.lastSeq)]].concat(kindQuery)));
    const onEvent = (message) => {
      let row;
      try { row = JSON.parse(message.data); } catch (e) { return; }
      handle(row);
    };
    // Named events (`event: validated`) reach only their own listeners, never onmessage.
    source.onmessage = onEvent;
    ALL_KINDS.forEach((k) => source.addEventListener(k, onEvent));
    source.onopen = () => { setConnection('live'); showError(''); };
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) {
        // The browser gave up (an HTTP error): start again from the cursor.
        setConnection('closed', 'disconnected, retrying');
        setTimeout(follow, RETRY_MS);
      } else {
        setConnection('reconnecting');  // the browser retries with Last-Event-ID
      }
    };
  }

  // ---- start -----------------------------------------------------------------------------------

  async function start() {
    if (typeof Chart === 'undefined') {
      showError('/static/chart.js did not load');
      return;
    }
    let rows;
    try {
      rows = await getJson('history', kindQuery);
    } catch (e) {
      showError(e.message + ' (retrying)');  // e.g. no ledger yet: training has not started
      setTimeout(start, RETRY_MS);
      return;
    }
    showError('');
    bulk = true;
    rows.forEach(handle);
    bulk = false;
    flushTimeline();
    redraw();
    follow();
    $('verify-again').addEventListener('click', loadVerify);
    await Promise.all([loadRuns(), loadVerify()]);
    D.ready = true;
    document.body.dataset.ready = 'true';
  }

  start();
}());
