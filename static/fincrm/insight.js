/* Reports and the dashboard (数据驾驶舱): clients of the JSON API with the browser session.

   - The report page (/reports/<name>) runs the report through /api/v1/reports/<name> with the
     parameter form's values (no page reload), draws the table (option labels in the page's
     language, numbers right-aligned with thousands separators) and the report's ECharts chart,
     keeps the export links and the address bar in step with the parameters, and — for users
     who may configure the report — edits its columns and filter conditions and saves the whole
     document with PUT /api/v1/meta/reports/<name> (CSRF header), showing a 422's pointers.
   - The dashboard (/dashboard/) fills each card from its API: reports with a `dashboard`
     entry as charts, channel efficiency, churn risk (masked names linking to the customer-360
     page), NPS trend, RFM segments, complaint keywords per period, and KPI tiles. A card whose
     API answers 403 or 404 removes itself, so each role sees what it may read.

   Every value from the server is written with textContent (or as ECharts text), never as HTML.
   Charts resize with the window and with their card. */
(function () {
  'use strict';
  var block = document.getElementById('insight-data');
  if (!block) {
    return;
  }
  var data = JSON.parse(block.textContent);
  var L = data.labels || {};
  var lang = data.lang === 'en' ? 'en' : 'zh';
  var locale = lang === 'en' ? 'en-US' : 'zh-CN';
  var COLORS = ['#1f5fa8', '#d19a1a', '#2e9d8f', '#c0504d', '#7a5ea8', '#4aa3df', '#8c8c8c', '#6b8e23'];
  var charts = [];

  // ------------------------------------------------------------------ small helpers

  function byId(id) { return document.getElementById(id); }

  function show(el, visible) { if (el) { el.classList.toggle('hidden', !visible); } }

  function clear(el) { while (el && el.firstChild) { el.removeChild(el.firstChild); } }

  function text(tag, value, className) {
    var el = document.createElement(tag);
    el.textContent = value === null || value === undefined ? '' : String(value);
    if (className) { el.className = className; }
    return el;
  }

  function format(template, values) {
    return String(template || '').replace(/\{(\w+)\}/g, function (all, name) { return name in values ? String(values[name]) : all; });
  }

  function pick(label) {
    if (label === null || label === undefined) { return ''; }
    if (typeof label !== 'object') { return String(label); }
    return label[lang] || label.zh || label.en || '';
  }

  function has(obj, key) { return obj !== null && typeof obj === 'object' && Object.prototype.hasOwnProperty.call(obj, key); }

  var intFormat = new Intl.NumberFormat(locale, { maximumFractionDigits: 0 });
  var numFormat = new Intl.NumberFormat(locale, { maximumFractionDigits: 2 });
  var compactEn = new Intl.NumberFormat('en-US', { notation: 'compact', maximumFractionDigits: 2 });

  function toNumber(value) {
    if (value === null || value === undefined || value === '') { return null; }
    var n = typeof value === 'number' ? value : Number(String(value));
    return isFinite(n) ? n : null;
  }

  // an exact decimal string with thousands separators, kept to its digits (no float rounding)
  function groupDecimal(value, scale) {
    var s = String(value).trim();
    if (!/^-?\d+(\.\d+)?$/.test(s)) { return s; }
    var sign = s.charAt(0) === '-' ? '-' : '';
    if (sign) { s = s.slice(1); }
    var parts = s.split('.');
    var frac = parts[1] || '';
    if (scale !== undefined) {
      if (frac.length > scale) { return sign + numFormat.format(Number(s)); }
      while (frac.length < scale) { frac += '0'; }
    }
    return sign + parts[0].replace(/\B(?=(\d{3})+(?!\d))/g, ',') + (frac ? '.' + frac : '');
  }

  // a large CNY amount as a manager reads it: 1.23亿 / 4,567.8万 in Chinese, 1.23B in English
  function shortMoney(value) {
    var n = toNumber(value);
    if (n === null) { return ''; }
    var abs = Math.abs(n);
    if (lang === 'en') { return abs >= 10000 ? compactEn.format(n) : numFormat.format(n); }
    if (abs >= 1e8) { return numFormat.format(Math.round(n / 1e6) / 100) + '亿'; }
    if (abs >= 1e4) { return numFormat.format(Math.round(n / 100) / 100) + '万'; }
    return numFormat.format(n);
  }

  function shortCount(value) {
    var n = toNumber(value);
    if (n === null) { return ''; }
    if (Math.abs(n) >= 1e4) { return lang === 'en' ? compactEn.format(n) : (Math.abs(n) >= 1e8 ? numFormat.format(n / 1e8) + '亿' : numFormat.format(n / 1e4) + '万'); }
    return numFormat.format(n);
  }

  function percent(rate) {
    var n = toNumber(rate);
    return n === null ? '—' : numFormat.format(Math.round(n * 1000) / 10) + '%';
  }

  // a stored instant (UTC, ISO 8601) as Beijing time: China keeps no daylight saving
  function moment(value, withTime) {
    if (typeof value !== 'string' || !value) { return value === null || value === undefined ? '' : String(value); }
    var t = Date.parse(/Z$|[+-]\d\d:\d\d$/.test(value) ? value : value + 'Z');
    if (isNaN(t)) { return value; }
    var iso = new Date(t + 8 * 3600 * 1000).toISOString();
    return withTime === false ? iso.slice(0, 10) : iso.slice(0, 16).replace('T', ' ');
  }

  // tooltips built by a formatter are HTML: every value in them is escaped first
  function esc(value) {
    return String(value === null || value === undefined ? '' : value).replace(/[&<>"']/g, function (ch) {
      return { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[ch];
    });
  }

  function todayBeijing() { return new Date(Date.now() + 8 * 3600 * 1000).toISOString().slice(0, 10); }

  function request(url, options) {
    var opts = options || {};
    var headers = { 'Accept': 'application/json' };
    if (opts.body !== undefined) { headers['Content-Type'] = 'application/json'; }
    if (opts.csrf) { headers['X-CSRFToken'] = opts.csrf; }
    return fetch(url, {
      method: opts.method || 'GET', credentials: 'same-origin', headers: headers,
      body: opts.body === undefined ? undefined : JSON.stringify(opts.body)
    }).then(function (resp) {
      return resp.json().catch(function () { return null; }).then(function (body) { return { status: resp.status, ok: resp.ok, body: body }; });
    }, function () { return { status: 0, ok: false, body: null }; });
  }

  function makeChart(el, option) {
    if (!window.echarts || !el) { return null; }
    var chart = window.echarts.getInstanceByDom(el) || window.echarts.init(el, null, { renderer: 'canvas' });
    chart.setOption(option, true);
    if (charts.indexOf(chart) < 0) {
      charts.push(chart);
      if (window.ResizeObserver) { new window.ResizeObserver(function () { chart.resize(); }).observe(el); }
    }
    el.setAttribute('data-rendered', '1');
    return chart;
  }

  window.addEventListener('resize', function () { charts.forEach(function (c) { c.resize(); }); });

  // ------------------------------------------------------------------ report cells and charts

  var NUMERIC = { integer: true, decimal: true, number: true };

  function optionLabels(col) {
    var out = {};
    (col.options || []).forEach(function (o) { out[o.value] = pick(o.label); });
    return out;
  }

  function cellText(col, value, labels) {
    if (value === null || value === undefined || value === '') { return ''; }
    var opts = labels || optionLabels(col);
    if (Array.isArray(value)) {
      return value.map(function (v) { return has(opts, v) ? opts[v] : String(v); }).join(lang === 'en' ? ', ' : '、');
    }
    if (has(opts, value)) { return opts[value]; }
    if (typeof value === 'boolean') { return value ? L.yes : L.no; }
    var type = col.type;
    if (type === 'integer' && typeof value === 'number') { return intFormat.format(value); }
    if (type === 'decimal') {
      if (typeof value === 'string' && value.indexOf('*') < 0) { return groupDecimal(value, 2); }
      if (typeof value === 'number') { return numFormat.format(value); }
    }
    if (type === 'number' && typeof value === 'number') { return numFormat.format(value); }
    if (type === 'datetime' && typeof value === 'string') { return moment(value); }
    return String(value);
  }

  function columnKind(col) {
    if (col.type === 'decimal') { return 'money'; }
    if (col.type === 'integer') { return 'count'; }
    return 'number';
  }

  function axisFormatter(kind) {
    return kind === 'money' ? shortMoney : kind === 'count' ? shortCount : function (v) { return numFormat.format(v); };
  }

  function valueFormatter(col) {
    return function (v) {
      if (v === null || v === undefined || v === '-') { return '—'; }
      return col.type === 'decimal' ? groupDecimal(String(Math.round(Number(v) * 100) / 100), 2) : numFormat.format(v);
    };
  }

  function reportOption(result, opts) {
    var chart = result.chart;
    var rows = result.rows || [];
    if (!chart || !chart.type || chart.type === 'table' || !chart.x || !chart.y || !chart.y.length || !rows.length) { return null; }
    var cols = result.columns || [];
    var index = {};
    cols.forEach(function (c, i) { index[c.name] = i; });
    if (!has(index, chart.x)) { return null; }
    var xCol = cols[index[chart.x]];
    var xLabels = optionLabels(xCol);
    if (xCol.type === 'bucket' && xCol.options) {
      // value ranges are ordinal: chart them in their defined order, whatever the report's sort
      var rank = {};
      xCol.options.forEach(function (o, i) { rank[o.value] = i; });
      var xi = index[chart.x];
      rows = rows.slice().sort(function (a, b) { return (has(rank, a[xi]) ? rank[a[xi]] : 999) - (has(rank, b[xi]) ? rank[b[xi]] : 999); });
    }
    var categories = rows.map(function (r) { return cellText(xCol, r[index[chart.x]], xLabels) || (lang === 'en' ? '(none)' : '（空）'); });
    var ys = chart.y.filter(function (y) { return has(index, y); }).map(function (y) { return cols[index[y]]; });
    if (!ys.length) { return null; }
    var points = rows.length;
    var base = { color: COLORS, animation: false, textStyle: { fontFamily: 'inherit' } };
    if (chart.type === 'pie' || chart.type === 'funnel') {
      var y = ys[0];
      var items = rows.map(function (r, i) { return { name: categories[i], value: toNumber(r[index[y.name]]) || 0 }; });
      var series = chart.type === 'pie'
        ? { type: 'pie', radius: ['42%', '70%'], center: ['50%', '54%'], avoidLabelOverlap: true, data: items, name: pick(y.label),
            label: { formatter: '{b}\n{d}%' }, tooltip: { valueFormatter: valueFormatter(y) } }
        : { type: 'funnel', left: '10%', width: '80%', top: 30, bottom: 10, data: items, name: pick(y.label), sort: 'descending',
            label: { formatter: '{b}' }, tooltip: { valueFormatter: valueFormatter(y) } };
      return { option: Object.assign(base, { tooltip: { trigger: 'item' }, legend: { top: 0, type: 'scroll' }, series: [series] }), points: points };
    }
    // bar / line: one axis per kind of value (amounts, counts, other numbers)
    var kinds = [];
    ys.forEach(function (c) { if (kinds.indexOf(columnKind(c)) < 0) { kinds.push(columnKind(c)); } });
    kinds = kinds.slice(0, 2);
    var yAxis = kinds.map(function (k, i) {
      return { type: 'value', position: i ? 'right' : 'left', minInterval: k === 'count' ? 1 : 0, splitLine: { show: i === 0, lineStyle: { color: '#eef0f3' } },
               axisLabel: { formatter: axisFormatter(k), color: '#6b7280' } };
    });
    var manyBars = points > 24;
    var series2 = ys.map(function (c) {
      var k = kinds.indexOf(columnKind(c));
      return {
        name: pick(c.label), type: chart.type === 'line' ? 'line' : 'bar', yAxisIndex: k < 0 ? 0 : k,
        data: rows.map(function (r) { return toNumber(r[index[c.name]]); }),
        smooth: chart.type === 'line', symbolSize: 6, barMaxWidth: 36,
        tooltip: { valueFormatter: valueFormatter(c) }
      };
    });
    var option = Object.assign(base, {
      tooltip: { trigger: 'axis', axisPointer: { type: chart.type === 'line' ? 'line' : 'shadow' } },
      legend: { top: 0, type: 'scroll' },
      grid: { left: 12, right: kinds.length > 1 ? 12 : 20, top: 36, bottom: manyBars && opts && opts.zoom ? 34 : 12, containLabel: true },
      xAxis: { type: 'category', data: categories, axisLabel: { rotate: manyBars || categories.some(function (c) { return c.length > 8; }) ? 35 : 0, color: '#4b5563', hideOverlap: true },
               axisTick: { alignWithLabel: true } },
      yAxis: yAxis,
      series: series2
    });
    if (manyBars && opts && opts.zoom) {
      option.dataZoom = [{ type: 'inside', startValue: 0, endValue: 19 }, { type: 'slider', startValue: 0, endValue: 19, height: 18, bottom: 8 }];
    }
    return { option: option, points: points };
  }

  function drawReportChart(el, result, opts) {
    var built = reportOption(result, opts);
    if (!built) { return null; }
    var chart = makeChart(el, built.option);
    el.setAttribute('data-points', String(built.points));
    return chart;
  }

  function renderTable(table, result) {
    var thead = table.querySelector('thead');
    var tbody = table.querySelector('tbody');
    clear(thead);
    clear(tbody);
    var cols = result.columns || [];
    var head = document.createElement('tr');
    cols.forEach(function (c) {
      var th = text('th', pick(c.label) || c.name, NUMERIC[c.type] ? 'text-right' : '');
      th.setAttribute('data-column', c.name);
      if (c.masked) {
        th.appendChild(text('i', '', 'fa fa-user-shield fincrm-masked-mark'));
        th.title = L.masked || '';
      }
      head.appendChild(th);
    });
    thead.appendChild(head);
    var labels = cols.map(optionLabels);
    (result.rows || []).forEach(function (row) {
      var tr = document.createElement('tr');
      cols.forEach(function (c, i) {
        var td = text('td', cellText(c, row[i], labels[i]), NUMERIC[c.type] ? 'text-right fincrm-num' : '');
        td.setAttribute('data-column', c.name);
        tr.appendChild(td);
      });
      tbody.appendChild(tr);
    });
  }

  // ------------------------------------------------------------------ messages

  function translate(messages) {
    if (lang === 'en' || !data.messages || !messages.length) { return Promise.resolve(messages); }
    return request(data.messages, { method: 'POST', body: { messages: messages }, csrf: csrfToken() }).then(function (r) {
      return r.ok && r.body && Array.isArray(r.body.messages) ? r.body.messages : messages;
    });
  }

  function csrfToken() {
    var input = document.querySelector('input[name=csrf_token]');
    return input ? input.value : '';
  }

  function problemTitle(status) {
    return { 0: L.network, 400: L.bad_request, 403: L.forbidden, 404: L.not_found, 422: L.invalid }[status] || L.failed_request;
  }

  // ================================================================== the report page

  function reportPage() {
    var info = data.report;
    var form = byId('report-params');
    var els = {
      status: byId('report-status'), problems: byId('report-problems'), problemsTitle: byId('report-problems-title'),
      problemsMessage: byId('report-problems-message'), problemsList: byId('report-problems-list'), truncated: byId('report-truncated'),
      chartPanel: byId('report-chart-panel'), chart: byId('report-chart'), table: byId('report-table'), saved: byId('report-saved'),
      csv: byId('report-export-csv'), xlsx: byId('report-export-xlsx')
    };
    var paramNames = (info.params || []).map(function (p) { return p.name; });
    var seq = 0;

    function paramQuery() {
      var q = new URLSearchParams();
      paramNames.forEach(function (name) {
        var input = form.elements[name];
        if (input && input.value !== '') { q.set(name, input.value); }
      });
      return q;
    }

    function showProblems(title, message, details) {
      els.problemsTitle.textContent = title;
      els.problemsMessage.textContent = message || '';
      clear(els.problemsList);
      details.forEach(function (d) {
        var li = document.createElement('li');
        if (d.field) {
          li.setAttribute('data-field', d.field);
          li.appendChild(text('strong', d.label || d.field));
          li.appendChild(document.createTextNode(lang === 'en' ? ': ' : '：'));
        }
        li.appendChild(document.createTextNode(d.message || ''));
        els.problemsList.appendChild(li);
      });
      show(els.problems, true);
    }

    function paramLabel(name) {
      var p = (info.params || []).filter(function (x) { return x.name === name; })[0];
      return p ? pick(p.label) : name;
    }

    function clearParamErrors() {
      form.querySelectorAll('[data-error-for]').forEach(function (el) { el.textContent = ''; show(el, false); });
      form.querySelectorAll('.form-group.has-error').forEach(function (el) { el.classList.remove('has-error'); });
    }

    function showHttpError(r) {
      var err = r.body && r.body.error ? r.body.error : { message: r.status ? 'HTTP ' + r.status : '', details: [] };
      var details = err.details || [];
      var texts = [err.message || ''].concat(details.map(function (d) { return d.message || ''; }));
      return translate(texts).then(function (shown) {
        var listed = details.map(function (d, i) {
          var field = d.field || d.pointer || '';
          var errEl = d.field ? form.querySelector('[data-error-for="' + CSS.escape(d.field) + '"]') : null;
          if (errEl) {
            errEl.textContent = shown[i + 1];
            show(errEl, true);
            errEl.parentNode.classList.add('has-error');
          }
          return { field: field, label: d.field ? paramLabel(d.field) : field, message: shown[i + 1] };
        });
        // the details name the parameters; the summary (English from the engine) only when there are none
        showProblems(problemTitle(r.status), r.status === 0 || listed.length ? '' : shown[0], listed);
      });
    }

    function syncLinks(q) {
      ['csv', 'xlsx'].forEach(function (fmt) {
        var link = els[fmt];
        if (!link) { return; }
        var lq = new URLSearchParams(q);
        lq.set('format', fmt);
        lq.set('lang', lang);
        link.setAttribute('href', data.api + '?' + lq.toString());
      });
      var qs = q.toString();
      window.history.replaceState(null, '', window.location.pathname + (qs ? '?' + qs : ''));
    }

    function run() {
      var q = paramQuery();
      var mine = ++seq;
      clearParamErrors();
      show(els.problems, false);
      els.status.textContent = L.loading;
      form.setAttribute('data-state', 'loading');
      syncLinks(q);
      return request(data.api + (q.toString() ? '?' + q.toString() : '')).then(function (r) {
        if (mine !== seq) { return; }
        if (!r.ok) {
          // no stale figures beside an error: the table and the chart are for the last good run only
          els.status.textContent = '';
          renderTable(els.table, { columns: [], rows: [] });
          els.table.setAttribute('data-rows', '0');
          show(els.chartPanel, false);
          show(els.truncated, false);
          // the state says "error" once the (translated) messages are on the page, not before
          return showHttpError(r).then(function () { if (mine === seq) { form.setAttribute('data-state', 'error'); } });
        }
        form.setAttribute('data-state', 'done');
        var result = r.body;
        els.status.textContent = (result.rows || []).length ? format(L.rows, { n: intFormat.format(result.rows.length) }) : L.no_rows;
        els.truncated.textContent = format(L.truncated, { n: intFormat.format((result.rows || []).length) });
        show(els.truncated, !!result.truncated);
        renderTable(els.table, result);
        var built = reportOption(result, { zoom: true });
        show(els.chartPanel, !!built);
        if (built) {
          makeChart(els.chart, built.option);
          els.chart.setAttribute('data-points', String(built.points));
        } else if (window.echarts && window.echarts.getInstanceByDom(els.chart)) {
          window.echarts.getInstanceByDom(els.chart).clear();
          els.chart.removeAttribute('data-rendered');
        }
        els.table.setAttribute('data-rows', String((result.rows || []).length));
      });
    }

    form.addEventListener('submit', function (ev) { ev.preventDefault(); show(els.saved, false); run(); });
    form.querySelectorAll('select').forEach(function (s) { s.addEventListener('change', function () { run(); }); });
    run();
    if (data.editor) { reportEditor(info, run); }
  }

  // ------------------------------------------------------------------ the report editor

  function reportEditor(info, rerun) {
    var ed = data.editor;
    var fields = {};
    ed.fields.forEach(function (f) { fields[f.name] = f; });
    var panel = byId('report-editor');
    var toggle = byId('report-edit-toggle');
    var els = {
      columns: byId('editor-columns'), field: byId('editor-field'), agg: byId('editor-agg'), bucket: byId('editor-bucket'),
      bucketGroup: byId('editor-bucket-group'), labelZh: byId('editor-label-zh'), labelEn: byId('editor-label-en'),
      note: byId('editor-field-note'), add: byId('editor-add'), filters: byId('editor-filters'), addFilter: byId('editor-add-filter'),
      problems: byId('editor-problems'), problemsTitle: byId('editor-problems-title'), problemsMessage: byId('editor-problems-message'),
      problemsList: byId('editor-problems-list'), save: byId('editor-save'), cancel: byId('editor-cancel'), dirty: byId('editor-dirty'),
      saved: byId('report-saved')
    };
    var state = { doc: null, columns: [], filters: [], labelsEdited: false, loading: null };

    function fieldLabel(name, which) {
      var f = fields[name];
      if (!f) { return name; }
      return which ? (f.label[which] || f.label.zh) : pick(f.label);
    }

    function columnTitle(c) {
      if (c.label) { return pick(c.label); }
      if (c.field) { return fieldLabel(c.field); }
      return c.name;
    }

    function columnDetail(c) {
      var parts = [];
      if (c.agg) { parts.push(pick(ed.aggs[c.agg]) + (c.field ? ' · ' + fieldLabel(c.field) : '')); }
      else if (c.related) { parts.push(c.related.relation + ' · ' + (c.related.fn || '')); }
      else if (c.duration) { parts.push(fieldLabel(c.duration.from) + ' → ' + fieldLabel(c.duration.to)); }
      else if (c.field) { parts.push(fieldLabel(c.field)); }
      if (typeof c.bucket === 'string' && ed.buckets[c.bucket]) { parts.push(pick(ed.buckets[c.bucket])); }
      return parts.join(' · ');
    }

    function markDirty() { show(els.dirty, true); show(els.saved, false); }

    // ---- columns

    function renderColumns() {
      clear(els.columns);
      state.columns.forEach(function (c, i) {
        var li = document.createElement('li');
        li.className = 'list-group-item fincrm-editor-column';
        li.setAttribute('data-column', c.name);
        li.appendChild(text('span', columnTitle(c), 'fincrm-editor-column-title'));
        li.appendChild(text('span', columnDetail(c), 'text-muted fincrm-editor-column-detail'));
        var remove = text('button', '×', 'btn btn-link btn-xs fincrm-editor-remove');
        remove.type = 'button';
        remove.title = L.remove;
        remove.setAttribute('aria-label', L.remove + ' ' + columnTitle(c));
        remove.setAttribute('data-remove-column', c.name);
        remove.addEventListener('click', function () { state.columns.splice(i, 1); renderColumns(); markDirty(); });
        li.appendChild(remove);
        els.columns.appendChild(li);
      });
    }

    function fillFieldSelect() {
      clear(els.field);
      var none = text('option', L.no_field);
      none.value = '';
      els.field.appendChild(none);
      ed.fields.forEach(function (f) {
        var o = text('option', pick(f.label) + (f.clear ? '' : ' (' + L.masked_field + ')'));
        o.value = f.name;
        els.field.appendChild(o);
      });
    }

    function fillAggSelect() {
      var f = fields[els.field.value];
      var before = els.agg.value;
      clear(els.agg);
      var choices = f ? [''].concat(f.aggs) : ['count'];
      choices.forEach(function (a) {
        var o = text('option', a ? pick(ed.aggs[a]) : L.plain);
        o.value = a;
        els.agg.appendChild(o);
      });
      if (choices.indexOf(before) >= 0) { els.agg.value = before; }
      var buckets = f && !els.agg.value ? f.buckets : [];
      clear(els.bucket);
      var nb = text('option', L.no_bucket);
      nb.value = '';
      els.bucket.appendChild(nb);
      buckets.forEach(function (b) { var o = text('option', pick(ed.buckets[b])); o.value = b; els.bucket.appendChild(o); });
      show(els.bucketGroup, buckets.length > 0);
      els.note.textContent = f && !f.clear ? L.masked_field : '';
      if (!state.labelsEdited) { suggestLabels(); }
    }

    function suggestLabels() {
      var name = els.field.value;
      var agg = els.agg.value;
      var bucket = els.bucket.value;
      var zh = name ? fieldLabel(name, 'zh') : L.count_label;
      var en = name ? fieldLabel(name, 'en') : 'Records';
      if (!name) { zh = lang === 'en' ? '记录数' : L.count_label; en = 'Records'; }
      if (agg && name) {
        zh = zh + ed.aggs[agg].zh;
        en = ed.aggs[agg].en + ' of ' + en;
      }
      if (bucket) {
        zh = zh + '（' + ed.buckets[bucket].zh + '）';
        en = en + ' (' + ed.buckets[bucket].en + ')';
      }
      els.labelZh.value = zh;
      els.labelEn.value = en;
    }

    function newColumnName(field, agg, bucket) {
      var base = (field ? field.replace(/\./g, '_') : 'records') + (agg ? '_' + agg : '') + (bucket ? '_' + bucket : '');
      base = base.toLowerCase().replace(/[^a-z0-9_]/g, '_').replace(/^[^a-z]+/, '') || 'column';
      base = base.slice(0, 56);
      var taken = {};
      state.columns.forEach(function (c) { taken[c.name] = true; });
      var name = base;
      for (var k = 2; taken[name]; k++) { name = base + '_' + k; }
      return name;
    }

    function addColumn() {
      var field = els.field.value;
      var agg = field ? els.agg.value : 'count';
      var bucket = field && !agg ? els.bucket.value : '';
      var column = { name: newColumnName(field, agg, bucket) };
      var zh = els.labelZh.value.trim();
      var en = els.labelEn.value.trim();
      if (zh || en) { column.label = { zh: zh || en, en: en || zh }; }
      if (field) { column.field = field; }
      if (agg) { column.agg = agg; }
      if (bucket) { column.bucket = bucket; }
      state.columns.push(column);
      state.labelsEdited = false;
      renderColumns();
      markDirty();
    }

    // ---- filters

    function isEditable(cond) {
      return cond && typeof cond === 'object' && typeof cond.field === 'string' && typeof cond.op === 'string' && has(fields, cond.field) &&
        fields[cond.field].clear && fields[cond.field].ops.indexOf(cond.op) >= 0 &&
        !(cond.value !== null && typeof cond.value === 'object' && !Array.isArray(cond.value));
    }

    function conditionsOf(filter) {
      if (!filter) { return []; }
      if (Array.isArray(filter.and)) { return filter.and.slice(); }
      return [filter];
    }

    function describeFixed(cond) {
      if (cond && typeof cond.field === 'string') {
        var v = cond.value;
        var shown = v !== null && typeof v === 'object' && has(v, 'param')
          ? '{' + L.param_ref + ': ' + paramTitle(v.param) + '}' : JSON.stringify(v);
        return fieldLabel(cond.field) + ' ' + (ed.ops[cond.op] || cond.op) + ' ' + shown;
      }
      return JSON.stringify(cond);
    }

    function paramTitle(name) {
      var p = (info.params || []).filter(function (x) { return x.name === name; })[0];
      return p ? pick(p.label) : name;
    }

    function valueInput(f, op, value) {
      var input;
      if (op === 'is_null' || (f.type === 'boolean' && (op === 'eq' || op === 'ne'))) {
        input = document.createElement('select');
        [['true', L.yes], ['false', L.no]].forEach(function (pair) { var o = text('option', pair[1]); o.value = pair[0]; input.appendChild(o); });
        input.value = value === false ? 'false' : 'true';
      } else if (f.options && (op === 'eq' || op === 'ne' || op === 'in' || op === 'nin' || op === 'has')) {
        input = document.createElement('select');
        if (op === 'in' || op === 'nin') { input.multiple = true; }
        var chosen = Array.isArray(value) ? value : [value];
        f.options.forEach(function (opt) {
          var o = text('option', pick(opt.label));
          o.value = opt.value;
          o.selected = chosen.indexOf(opt.value) >= 0;
          input.appendChild(o);
        });
      } else {
        input = document.createElement('input');
        var days = op === 'within_last_days' || op === 'within_next_days' || op === 'older_than_days';
        var list = op === 'in' || op === 'nin' || op === 'between';
        input.type = days || (!list && (f.type === 'integer' || f.type === 'decimal')) ? 'number'
          : !list && (f.type === 'date' || f.type === 'datetime') ? 'date' : 'text';
        if (input.type === 'number') { input.step = days || f.type === 'integer' ? '1' : 'any'; }
        if (days) { input.min = '0'; }
        if (list) { input.placeholder = op === 'between' ? L.between_hint : L.list_hint; }
        input.value = value === null || value === undefined ? '' : Array.isArray(value) ? value.join(',') : String(value);
      }
      input.className = 'form-control input-sm fincrm-filter-value';
      input.setAttribute('data-role', 'value');
      return input;
    }

    function readValue(row) {
      var f = fields[row.querySelector('[data-role=field]').value];
      var op = row.querySelector('[data-role=op]').value;
      var input = row.querySelector('[data-role=value]');
      if (input.tagName === 'SELECT' && input.multiple) {
        return Array.prototype.filter.call(input.options, function (o) { return o.selected; }).map(function (o) { return o.value; });
      }
      var raw = input.value.trim();
      if (op === 'is_null' || (f.type === 'boolean' && (op === 'eq' || op === 'ne'))) { return raw === 'true'; }
      if (raw === '') { return undefined; }
      function typed(v) { return f.type === 'integer' && /^-?\d+$/.test(v) ? parseInt(v, 10) : v; }
      if (op === 'within_last_days' || op === 'within_next_days' || op === 'older_than_days') { return /^\d+$/.test(raw) ? parseInt(raw, 10) : raw; }
      if (op === 'in' || op === 'nin' || op === 'between') {
        return raw.split(/[,，、]/).map(function (s) { return s.trim(); }).filter(function (s) { return s; }).map(typed);
      }
      return typed(raw);
    }

    function filterRow(cond) {
      var row = document.createElement('div');
      row.className = 'form-inline fincrm-editor-filter';
      if (!isEditable(cond) && cond) {
        row.setAttribute('data-fixed', '1');
        row.appendChild(text('span', L.fixed_condition, 'label label-default'));
        row.appendChild(text('span', ' ' + describeFixed(cond), 'fincrm-editor-fixed'));
        row.fincrmCondition = cond;
      } else {
        var fieldSel = document.createElement('select');
        fieldSel.className = 'form-control input-sm';
        fieldSel.setAttribute('data-role', 'field');
        ed.fields.filter(function (f) { return f.clear && f.ops.length; }).forEach(function (f) {
          var o = text('option', pick(f.label));
          o.value = f.name;
          fieldSel.appendChild(o);
        });
        var opSel = document.createElement('select');
        opSel.className = 'form-control input-sm';
        opSel.setAttribute('data-role', 'op');
        var valueSlot = document.createElement('span');
        var fillOps = function (op, value) {
          var f = fields[fieldSel.value];
          clear(opSel);
          f.ops.forEach(function (name) { var o = text('option', ed.ops[name] || name); o.value = name; opSel.appendChild(o); });
          opSel.value = op && f.ops.indexOf(op) >= 0 ? op : f.ops[0];
          clear(valueSlot);
          valueSlot.appendChild(valueInput(f, opSel.value, value));
        };
        if (cond) { fieldSel.value = cond.field; }
        fillOps(cond ? cond.op : null, cond ? cond.value : null);
        fieldSel.addEventListener('change', function () { fillOps(null, null); markDirty(); });
        opSel.addEventListener('change', function () {
          var f = fields[fieldSel.value];
          clear(valueSlot);
          valueSlot.appendChild(valueInput(f, opSel.value, null));
          markDirty();
        });
        valueSlot.addEventListener('change', markDirty);
        valueSlot.addEventListener('input', markDirty);
        row.appendChild(fieldSel);
        row.appendChild(opSel);
        row.appendChild(valueSlot);
      }
      var remove = text('button', '×', 'btn btn-link btn-xs fincrm-editor-remove');
      remove.type = 'button';
      remove.title = L.remove;
      remove.setAttribute('aria-label', L.remove);
      remove.setAttribute('data-remove-filter', '1');
      remove.addEventListener('click', function () { row.parentNode.removeChild(row); markDirty(); });
      row.appendChild(remove);
      return row;
    }

    function renderFilters() {
      clear(els.filters);
      state.filters.forEach(function (cond) { els.filters.appendChild(filterRow(cond)); });
    }

    function collectFilter() {
      var conditions = [];
      var problems = [];
      els.filters.querySelectorAll('.fincrm-editor-filter').forEach(function (row, i) {
        if (row.getAttribute('data-fixed')) { conditions.push(row.fincrmCondition); return; }
        var value = readValue(row);
        var field = row.querySelector('[data-role=field]').value;
        if (value === undefined || (Array.isArray(value) && !value.length)) {
          problems.push({ field: fieldLabel(field), message: L.empty_value });
          return;
        }
        conditions.push({ field: field, op: row.querySelector('[data-role=op]').value, value: value });
      });
      return { filter: conditions.length === 0 ? null : conditions.length === 1 ? conditions[0] : { and: conditions }, problems: problems };
    }

    // ---- load, save

    function reset(doc) {
      state.doc = doc;
      state.columns = JSON.parse(JSON.stringify(doc.columns || []));
      state.filters = conditionsOf(doc.filter ? JSON.parse(JSON.stringify(doc.filter)) : null);
      renderColumns();
      renderFilters();
      show(els.dirty, false);
      show(els.problems, false);
    }

    function load() {
      if (!state.loading) {
        state.loading = request(data.meta_api).then(function (r) {
          if (!r.ok) {
            state.loading = null;
            return showEditorProblems(r);
          }
          reset(r.body);
        });
      }
      return state.loading;
    }

    function pointerLabel(pointer) {
      var m = /\/columns\/(\d+)(\/.*)?$/.exec(pointer || '');
      if (m && state.columns[Number(m[1])]) { return pointer + ' (' + columnTitle(state.columns[Number(m[1])]) + ')'; }
      return pointer;
    }

    function showEditorProblems(r, local) {
      var err = local ? { message: '', details: local } : (r.body && r.body.error ? r.body.error : { message: 'HTTP ' + r.status, details: [] });
      var details = err.details || [];
      var texts = [err.message || ''].concat(details.map(function (d) { return d.message || ''; }));
      return (local ? Promise.resolve(texts) : translate(texts)).then(function (shown) {
        els.problemsTitle.textContent = local ? L.save_failed : L.save_failed + problemTitle(r.status);
        els.problemsMessage.textContent = shown[0];
        clear(els.problemsList);
        details.forEach(function (d, i) {
          var li = document.createElement('li');
          var where = d.pointer ? pointerLabel(d.pointer) : (d.field || '');
          if (d.pointer) { li.setAttribute('data-pointer', d.pointer); }
          if (where) {
            li.appendChild(text('code', where));
            li.appendChild(document.createTextNode(lang === 'en' ? ': ' : '：'));
          }
          li.appendChild(document.createTextNode(shown[i + 1]));
          els.problemsList.appendChild(li);
        });
        show(els.problems, true);
      });
    }

    function cleanReferences(doc) {
      var names = doc.columns.map(function (c) { return c.name; });
      if (Array.isArray(doc.sort)) {
        doc.sort = doc.sort.filter(function (s) { return names.indexOf(s.replace(/^-/, '')) >= 0; });
        if (!doc.sort.length) { delete doc.sort; }
      }
      if (doc.chart) {
        if (doc.chart.x && names.indexOf(doc.chart.x) < 0) { delete doc.chart.x; }
        if (Array.isArray(doc.chart.y)) {
          doc.chart.y = doc.chart.y.filter(function (y) { return names.indexOf(y) >= 0; });
          if (!doc.chart.y.length) { delete doc.chart.y; }
        }
      }
      return doc;
    }

    function save() {
      var collected = collectFilter();
      if (collected.problems.length) { return showEditorProblems(null, collected.problems); }
      var doc = JSON.parse(JSON.stringify(state.doc));
      doc.columns = state.columns;
      if (collected.filter) { doc.filter = collected.filter; } else { delete doc.filter; }
      cleanReferences(doc);
      els.save.disabled = true;
      show(els.problems, false);
      return request(data.meta_api, { method: 'PUT', body: doc, csrf: csrfToken() }).then(function (r) {
        els.save.disabled = false;
        if (!r.ok) { return showEditorProblems(r); }
        reset(r.body);
        return rerun().then(function () { show(els.saved, true); });
      });
    }

    fillFieldSelect();
    fillAggSelect();
    els.field.addEventListener('change', function () { state.labelsEdited = false; fillAggSelect(); });
    els.agg.addEventListener('change', function () { fillAggSelect(); });
    els.bucket.addEventListener('change', function () { if (!state.labelsEdited) { suggestLabels(); } });
    [els.labelZh, els.labelEn].forEach(function (input) { input.addEventListener('input', function () { state.labelsEdited = true; }); });
    els.add.addEventListener('click', addColumn);
    els.addFilter.addEventListener('click', function () {
      els.filters.appendChild(filterRow(null));
      markDirty();
    });
    els.save.addEventListener('click', save);
    els.cancel.addEventListener('click', function () { if (state.doc) { reset(state.doc); } });
    toggle.addEventListener('click', function () {
      var open = panel.classList.contains('hidden');
      show(panel, open);
      toggle.setAttribute('aria-expanded', open ? 'true' : 'false');
      if (open) { load(); }
    });
  }

  // ================================================================== the dashboard

  function dashboardPage() {
    var grid = byId('dash-grid');
    var asOf = byId('dash-as-of');
    asOf.textContent = format(L.as_of, { date: todayBeijing() });

    function tile(key, value, sub) {
      var el = document.querySelector('[data-kpi="' + key + '"]');
      if (!el) { return; }
      el.querySelector('[data-value]').textContent = value;
      el.querySelector('[data-sub]').textContent = sub || '';
      show(el, true);
    }

    function cardParts(card) {
      return {
        card: card, chart: card.querySelector('[data-chart]'), extra: card.querySelector('[data-extra]'),
        note: card.querySelector('[data-note]'), status: card.querySelector('[data-status]'), period: card.querySelector('[data-period-select]')
      };
    }

    function finish(parts, state, message) {
      parts.card.setAttribute('data-state', state);
      parts.status.textContent = message || '';
      show(parts.status, !!message);
    }

    function table(headers, rows, numeric) {
      var t = document.createElement('table');
      t.className = 'table table-condensed fincrm-dash-table';
      var thead = document.createElement('thead');
      var tr = document.createElement('tr');
      headers.forEach(function (h, i) { tr.appendChild(text('th', h, numeric[i] ? 'text-right' : '')); });
      thead.appendChild(tr);
      t.appendChild(thead);
      var tbody = document.createElement('tbody');
      rows.forEach(function (cells) {
        var row = document.createElement('tr');
        cells.forEach(function (c, i) {
          var td = document.createElement('td');
          if (c instanceof window.Node) { td.appendChild(c); } else { td.textContent = c === null || c === undefined ? '' : String(c); }
          if (numeric[i]) { td.className = 'text-right fincrm-num'; }
          row.appendChild(td);
        });
        tbody.appendChild(row);
      });
      t.appendChild(tbody);
      return t;
    }

    // ---- renderers, one per card kind

    var render = {
      report: function (parts, body, cfg) {
        var rows = body.rows || [];
        if (!rows.length) { show(parts.chart, false); return finish(parts, 'empty', L.no_data); }
        var chart = drawReportChart(parts.chart, body, { zoom: true });
        if (!chart) {
          show(parts.chart, false);
          var wrap = document.createElement('div');
          wrap.className = 'table-responsive fincrm-dash-report-table';
          var t = document.createElement('table');
          t.className = 'table table-condensed table-striped';
          t.appendChild(document.createElement('thead'));
          t.appendChild(document.createElement('tbody'));
          renderTable(t, body);
          wrap.appendChild(t);
          parts.extra.appendChild(wrap);
        }
        if (cfg.report === 'aum_tiers') { aumTiles(body); }
        finish(parts, 'done');
      },

      channels: function (parts, body) {
        var items = body.channels || body.items || [];
        items = items.filter(function (c) { return c.acquired || c.converted || toNumber(c.cost); });
        if (!items.length) { show(parts.chart, false); return finish(parts, 'empty', L.no_data); }
        var names = items.map(function (c) { return pick(c.label) || String(c.channel); });
        var withCost = items.some(function (c) { return toNumber(c.cost) !== null; });
        makeChart(parts.chart, {
          color: COLORS, animation: false,
          tooltip: { trigger: 'axis', axisPointer: { type: 'shadow' } },
          legend: { top: 0 },
          grid: { left: 12, right: 12, top: 36, bottom: 8, containLabel: true },
          xAxis: { type: 'category', data: names, axisLabel: { color: '#4b5563', hideOverlap: true } },
          yAxis: [
            { type: 'value', axisLabel: { formatter: shortCount, color: '#6b7280' }, splitLine: { lineStyle: { color: '#eef0f3' } } },
            { type: 'value', min: 0, max: 1, axisLabel: { formatter: function (v) { return Math.round(v * 100) + '%'; }, color: '#6b7280' }, splitLine: { show: false } }
          ],
          series: [
            { name: L.acquired, type: 'bar', barMaxWidth: 28, data: items.map(function (c) { return c.acquired; }), tooltip: { valueFormatter: function (v) { return intFormat.format(v); } } },
            { name: L.converted, type: 'bar', barMaxWidth: 28, data: items.map(function (c) { return c.converted; }), tooltip: { valueFormatter: function (v) { return intFormat.format(v); } } },
            { name: L.conversion_rate, type: 'line', yAxisIndex: 1, symbolSize: 7, data: items.map(function (c) { return toNumber(c.conversion_rate); }), tooltip: { valueFormatter: percent } }
          ]
        });
        parts.chart.setAttribute('data-points', String(items.length));
        var headers = [L.channel, L.acquired, L.conversion_rate].concat(withCost ? [L.cost, L.cost_per_acquired] : []);
        var rows = items.concat(body.total ? [body.total] : []).map(function (c) {
          var row = [pick(c.label) || c.channel, intFormat.format(c.acquired || 0), percent(c.conversion_rate)];
          if (withCost) {
            var per = c.cost_per_acquired !== undefined ? c.cost_per_acquired : c.cost_per_customer;
            row.push(c.cost === null || c.cost === undefined ? '—' : shortMoney(c.cost), per === null || per === undefined ? '—' : '¥' + groupDecimal(per, 2));
          }
          return row;
        });
        var t = table(headers, rows, headers.map(function (h, i) { return i > 0; }));
        if (body.total) { t.querySelector('tbody tr:last-child').className = 'fincrm-dash-total'; }
        parts.extra.appendChild(t);
        parts.note.textContent = body.cost_note ? pick(body.cost_note) : withCost ? '' : L.no_cost;
        finish(parts, 'done');
      },

      churn: function (parts, body) {
        var items = body.items || body.top || [];
        var count = toNumber(body.count) || 0;
        var p = body.params || {};
        tile('churn', intFormat.format(count), format(L.churn_sub, { days: p.days === undefined ? 90 : p.days, score: p.score === undefined ? 4 : p.score }));
        show(parts.chart, false);
        if (!count) { return finish(parts, 'empty', L.churn_none); }
        parts.note.textContent = format(L.churn_count, { n: intFormat.format(count), k: items.length });
        var withAum = items.some(function (c) { return has(c, 'aum'); });
        var headers = [L.customer, L.last_transaction, L.days_since, L.last_score].concat(withAum ? [L.aum] : []);
        var rows = items.map(function (c) {
          var link = text('a', c.name || '#' + c.customer, 'fincrm-churn-name');
          link.href = data.c360 + encodeURIComponent(c.customer);
          link.setAttribute('data-customer', String(c.customer));
          var row = [link, c.last_transaction_at ? moment(c.last_transaction_at, false) : L.never,
                     c.days_since === null || c.days_since === undefined ? '—' : intFormat.format(c.days_since),
                     c.last_score === null || c.last_score === undefined ? '—' : String(c.last_score)];
          if (withAum) { row.push(c.aum === null || c.aum === undefined ? '—' : shortMoney(c.aum)); }
          return row;
        });
        parts.extra.appendChild(table(headers, rows, headers.map(function (h, i) { return i >= 2; })));
        finish(parts, 'done');
      },

      nps: function (parts, body) {
        var items = body.items || [];
        var answered = items.filter(function (i) { return i.responses; });
        if (!answered.length) { show(parts.chart, false); return finish(parts, 'empty', L.no_data); }
        var last = answered[answered.length - 1];
        var total = body.total && body.total.responses ? body.total : null;
        var overall = total ? total.nps : last.nps;
        tile('nps', overall === null || overall === undefined ? '—' : numFormat.format(overall),
             format(L.nps_sub, { n: intFormat.format(total ? total.responses : last.responses), period: last.period,
                                 last: last.nps === null || last.nps === undefined ? '—' : numFormat.format(last.nps) }));
        makeChart(parts.chart, {
          color: ['#1f5fa8', '#c9d6e8'], animation: false,
          tooltip: { trigger: 'axis' },
          legend: { top: 0 },
          grid: { left: 12, right: 12, top: 36, bottom: 8, containLabel: true },
          xAxis: { type: 'category', data: items.map(function (i) { return i.period; }), axisLabel: { color: '#4b5563' } },
          yAxis: [
            { type: 'value', min: -100, max: 100, interval: 50, axisLabel: { color: '#6b7280' }, splitLine: { lineStyle: { color: '#eef0f3' } } },
            { type: 'value', minInterval: 1, axisLabel: { formatter: shortCount, color: '#6b7280' }, splitLine: { show: false } }
          ],
          series: [
            { name: L.nps, type: 'line', smooth: true, symbolSize: 7, z: 3, connectNulls: true, data: items.map(function (i) { return i.nps === undefined ? null : i.nps; }),
              markLine: { silent: true, symbol: 'none', lineStyle: { color: '#9ca3af', type: 'dashed' }, label: { show: false }, data: [{ yAxis: 0 }] } },
            { name: L.responses, type: 'bar', yAxisIndex: 1, barMaxWidth: 22, data: items.map(function (i) { return i.responses; }) }
          ]
        });
        parts.chart.setAttribute('data-points', String(items.length));
        finish(parts, 'done');
      },

      rfm: function (parts, body) {
        var segments = (body.segments || []).slice();
        var total = toNumber(body.total) || 0;
        if (!total) { show(parts.chart, false); return finish(parts, 'empty', L.no_data); }
        parts.note.textContent = format(L.rfm_sub, { date: body.as_of || '', n: intFormat.format(total) });
        segments.reverse();  // the first segment on top of the horizontal bars
        makeChart(parts.chart, {
          animation: false,
          tooltip: {
            trigger: 'axis', axisPointer: { type: 'shadow' },
            formatter: function (ps) {
              var s = segments[ps[0].dataIndex];
              return esc(pick(s.label)) + '<br>' + esc(L.segment_customers) + ': ' + esc(intFormat.format(s.count)) + '<br>' + esc(L.monetary) + ': ' + esc(shortMoney(s.monetary));
            }
          },
          grid: { left: 12, right: 40, top: 8, bottom: 8, containLabel: true },
          xAxis: { type: 'value', axisLabel: { formatter: shortCount, color: '#6b7280' }, splitLine: { lineStyle: { color: '#eef0f3' } } },
          yAxis: { type: 'category', data: segments.map(function (s) { return pick(s.label); }), axisLabel: { color: '#374151' } },
          series: [{
            type: 'bar', barMaxWidth: 18, name: L.segment_customers,
            data: segments.map(function (s) {
              var important = /^important/.test(s.segment || '');
              return { value: s.count, itemStyle: { color: important ? '#d19a1a' : '#1f5fa8' } };
            }),
            label: { show: true, position: 'right', color: '#374151', formatter: function (p) { return intFormat.format(p.value); } }
          }]
        });
        parts.chart.setAttribute('data-points', String(segments.length));
        finish(parts, 'done');
      },

      keywords: function (parts, body) {
        var items = body.items || [];
        var withWords = items.filter(function (i) { return (i.keywords || []).length; });
        if (!withWords.length) { show(parts.chart, false); return finish(parts, 'empty', L.no_data); }
        var select = parts.period;
        clear(select);
        items.forEach(function (i, k) {
          var o = text('option', i.period + (i.tickets ? ' (' + intFormat.format(i.tickets) + ')' : ''));
          o.value = String(k);
          select.appendChild(o);
        });
        select.value = String(items.indexOf(withWords[withWords.length - 1]));
        show(select, true);
        function draw() {
          var period = items[Number(select.value)] || {};
          var words = (period.keywords || []).slice(0, 15).reverse();
          parts.note.textContent = format(L.keywords_sub, { n: intFormat.format(period.tickets || 0), a: intFormat.format(period.analysed || 0) });
          makeChart(parts.chart, {
            animation: false,
            tooltip: {
              trigger: 'axis', axisPointer: { type: 'shadow' },
              formatter: function (ps) {
                var w = words[ps[0].dataIndex];
                return esc(w.word) + '<br>' + esc(L.weight) + ': ' + esc(numFormat.format(w.weight)) + '<br>' + esc(L.tickets) + ': ' + esc(intFormat.format(w.tickets || 0));
              }
            },
            grid: { left: 12, right: 30, top: 8, bottom: 8, containLabel: true },
            xAxis: { type: 'value', axisLabel: { color: '#6b7280' }, splitLine: { lineStyle: { color: '#eef0f3' } } },
            yAxis: { type: 'category', data: words.map(function (w) { return w.word; }), axisLabel: { color: '#374151' } },
            series: [{ type: 'bar', barMaxWidth: 16, name: L.weight, itemStyle: { color: '#c0504d' }, data: words.map(function (w) { return w.weight; }) }]
          });
          parts.chart.setAttribute('data-points', String(words.length));
        }
        select.onchange = draw;
        draw();
        finish(parts, 'done');
      }
    };

    function aumTiles(body) {
      var cols = (body.columns || []).map(function (c) { return c.name; });
      var ci = cols.indexOf('customers');
      var ai = cols.indexOf('total_aum');
      if (ci >= 0) { tile('customers', intFormat.format((body.rows || []).reduce(function (s, r) { return s + (toNumber(r[ci]) || 0); }, 0))); }
      if (ai >= 0) {
        var sum = (body.rows || []).reduce(function (s, r) { return s + (toNumber(r[ai]) || 0); }, 0);
        tile('aum_total', '¥' + shortMoney(sum));
      }
    }

    function loadKpis() {
      return request(data.kpis).then(function (r) {
        if (!r.ok || !r.body) { return; }
        var k = r.body;
        var retention = has(k, 'retention') ? k.retention.rate : k.retention_rate;
        var cross = has(k, 'cross_sell') ? k.cross_sell.rate : k.cross_sell_rate;
        var complaints = k.complaints || k.complaint_handling_hours || {};
        if (retention !== undefined) { tile('retention', percent(retention), L.retention_sub); }
        if (cross !== undefined) { tile('cross_sell', percent(cross), L.cross_sell_sub); }
        var avg = toNumber(has(complaints, 'avg_hours') ? complaints.avg_hours : complaints.avg);
        if (avg !== null || has(complaints, 'avg_hours')) {
          var median = toNumber(has(complaints, 'median_hours') ? complaints.median_hours : complaints.median);
          tile('complaint_hours', avg === null ? '—' : numFormat.format(Math.round(avg * 10) / 10) + ' ' + L.hours,
               format(L.complaint_sub, { median: median === null ? '—' : numFormat.format(Math.round(median * 10) / 10), n: intFormat.format(complaints.resolved || 0) }));
        }
      });
    }

    function loadCard(cfg) {
      var card = grid.querySelector('[data-card="' + CSS.escape(cfg.key) + '"]');
      if (!card) { return Promise.resolve(); }
      var parts = cardParts(card);
      clear(parts.extra);
      parts.note.textContent = '';
      show(parts.chart, true);
      finish(parts, 'loading', L.loading);
      return request(cfg.api).then(function (r) {
        if (r.status === 403 || r.status === 404) {
          // not for this role, or not (yet) in this installation: the card goes
          card.parentNode.removeChild(card);
          return;
        }
        if (!r.ok || !r.body) {
          show(parts.chart, false);
          return finish(parts, 'error', L.failed);
        }
        try {
          render[cfg.kind](parts, r.body, cfg);
        } catch (e) {
          show(parts.chart, false);
          finish(parts, 'error', L.failed);
          throw e;
        }
      });
    }

    function loadAll() {
      return Promise.all([loadKpis()].concat(data.cards.map(loadCard))).then(function () {
        byId('dashboard').setAttribute('data-loaded', '1');
      });
    }

    byId('dash-refresh').addEventListener('click', function () {
      byId('dashboard').removeAttribute('data-loaded');
      loadAll();
    });
    loadAll();
  }

  if (data.page === 'report') {
    reportPage();
  } else if (data.page === 'dashboard') {
    dashboardPage();
  }
}());
