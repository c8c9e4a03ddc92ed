/* The import page: posts the file to the import API (session cookie + CSRF header), follows
   the job (polling every second) with a progress bar, shows the dry run's column mapping (one
   select per column, "ignore" included: the edited mapping goes with the next run), counts,
   masked preview and file-level errors, and refreshes the list of recent jobs.
   Every value that comes from a file or the server is written with textContent, never as HTML;
   the only HTML inserted is the job list the server renders (autoescaped) for this page. */
(function () {
  'use strict';
  var block = document.getElementById('import-data');
  var form = document.getElementById('import-form');
  if (!block || !form) {
    return;
  }
  var data = JSON.parse(block.textContent);
  var L = data.labels;
  var csrf = form.querySelector('input[name=csrf_token]').value;
  var byId = function (id) { return document.getElementById(id); };
  var els = {
    entity: byId('import-entity'), file: byId('import-file'), mode: byId('import-mode'), key: byId('import-key'),
    dedupe: byId('import-dedupe'), onError: byId('import-on-error'), dryRun: byId('import-dry-run'), run: byId('import-run'),
    problems: byId('import-problems'), problemsTitle: byId('import-problems-title'), problemsMessage: byId('import-problems-message'),
    problemsList: byId('import-problems-list'), result: byId('import-result'), resultTitle: byId('import-result-title'),
    resultFile: byId('import-result-file'), bar: byId('import-progress'), progressText: byId('import-progress-text'),
    message: byId('import-message'), errorsLink: byId('import-errors-link'), mapping: byId('import-mapping'),
    mappingBody: document.querySelector('#import-mapping-table tbody'), mappingEdited: byId('import-mapping-edited'),
    preview: byId('import-preview'), previewHead: document.querySelector('#import-preview-table thead'),
    previewBody: document.querySelector('#import-preview-table tbody'), previewEmpty: byId('import-preview-empty'),
    jobs: document.querySelector('#import-jobs tbody')
  };
  var state = { mappingFor: null, busy: false };

  function show(el, visible) { el.classList.toggle('hidden', !visible); }

  function clear(el) { while (el.firstChild) { el.removeChild(el.firstChild); } }

  function text(tag, value, className) {
    var el = document.createElement(tag);
    el.textContent = value === null || value === undefined ? '' : String(value);
    if (className) { el.className = className; }
    return el;
  }

  function format(template, values) {
    return template.replace(/\{(\w+)\}/g, function (all, name) { return name in values ? String(values[name]) : all; });
  }

  function entitySpec() {
    var name = els.entity.value;
    for (var i = 0; i < data.entities.length; i++) {
      if (data.entities[i].name === name) { return data.entities[i]; }
    }
    return { name: name, label: name, fields: [] };
  }

  function fieldLabel(name) {
    var columns = entitySpec().columns || {};
    if (name === 'id') { return entitySpec().fields[0].label; }
    return Object.prototype.hasOwnProperty.call(columns, name) ? columns[name] : null;
  }

  function chosenFile() { return els.file.files && els.file.files[0] ? els.file.files[0] : null; }

  // a mapping belongs to one file of one entity: choosing another forgets it
  function fileKey() {
    var f = chosenFile();
    return f ? [els.entity.value, f.name, f.size, f.lastModified].join('\u0000') : null;
  }

  function setBusy(busy) {
    state.busy = busy;
    els.dryRun.disabled = busy;
    els.run.disabled = busy;
  }

  // ------------------------------------------------------------------ messages

  function translate(messages) {
    if (data.lang === 'en' || !messages.length) {
      return Promise.resolve(messages);
    }
    return fetch(data.messages, {
      method: 'POST', credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json', 'Accept': 'application/json', 'X-CSRFToken': csrf },
      body: JSON.stringify({ messages: messages })
    }).then(function (resp) {
      return resp.ok ? resp.json().then(function (body) { return body.messages; }) : messages;
    }).catch(function () { return messages; });
  }

  function namedField(field) {
    if (!field) { return ''; }
    if (field.indexOf('mapping.') === 0) { return L.field_mapping + ' · ' + field.slice(8); }
    var own = { file: L.field_file, mapping: L.field_mapping, mode: L.field_mode, dedupe: L.field_dedupe, on_error: L.field_on_error, key: L.field_key };
    if (Object.prototype.hasOwnProperty.call(own, field)) { return own[field]; }
    var label = fieldLabel(field);
    return label ? label + ' (' + field + ')' : field;  // else a column header of the file
  }

  function showProblems(title, message, details) {
    els.problemsTitle.textContent = title;
    els.problemsMessage.textContent = message || '';
    clear(els.problemsList);
    details.forEach(function (d) {
      var li = document.createElement('li');
      li.setAttribute('data-field', d.field || '');
      if (d.field) {
        li.appendChild(text('strong', namedField(d.field)));
        li.appendChild(document.createTextNode(data.lang === 'en' ? ': ' : '：'));
      }
      li.appendChild(document.createTextNode(d.message || ''));
      els.problemsList.appendChild(li);
    });
    show(els.problems, true);
  }

  function showHttpError(status, body) {
    var err = body && body.error ? body.error : { message: 'HTTP ' + status, details: [] };
    var details = err.details || [];
    var title = { 400: L.file_problem, 401: L.failed_request, 403: L.forbidden, 404: L.not_found, 413: L.too_large }[status] || L.failed_request;
    var texts = [err.message || ''].concat(details.map(function (d) { return d.message || ''; }));
    return translate(texts).then(function (shown) {
      showProblems(title, shown[0], details.map(function (d, i) { return { field: d.field || d.pointer || '', message: shown[i + 1] }; }));
    });
  }

  // ------------------------------------------------------------------ the job

  function renderJob(job) {
    var dry = !!(job.options && job.options.dry_run);
    var status = job.status;
    var finished = status === 'done' || status === 'failed';
    var total = job.total_rows;
    var done = job.rows_done || 0;
    var percent = finished ? 100 : (total ? Math.min(100, Math.floor(done * 100 / total)) : 0);
    els.result.setAttribute('data-status', status);
    els.result.setAttribute('data-job', job.id);
    els.result.setAttribute('data-dry-run', dry ? '1' : '0');
    els.resultTitle.textContent = status === 'done' ? (dry ? L.dry_done : L.done)
      : status === 'failed' ? (dry ? L.dry_failed : L.failed)
      : status === 'queued' ? L.queued : (dry ? L.dry_running : L.running);
    els.resultFile.textContent = job.filename || '';
    els.bar.style.width = percent + '%';
    els.bar.setAttribute('aria-valuenow', String(percent));
    els.bar.textContent = percent + '%';
    els.bar.className = 'progress-bar' + (status === 'done' ? ' progress-bar-success' : status === 'failed' ? ' progress-bar-danger' : ' progress-bar-striped active');
    els.progressText.textContent = total === null || total === undefined ? (finished ? '' : L.counting) : format(L.progress, { done: done, total: total });
    var counts = job.counts || {};
    els.result.querySelectorAll('[data-count]').forEach(function (cell) {
      cell.textContent = String(counts[cell.getAttribute('data-count')] || 0);
    });
    var errors = counts.errors || 0;
    show(els.errorsLink, finished && errors > 0);
    if (finished && errors > 0) {
      els.errorsLink.href = job.errors_url;
      els.errorsLink.querySelector('span').textContent = format(L.errors_link, { n: errors });
    }
    show(els.result, true);
    if (job.message) {
      translate([job.message]).then(function (shown) { els.message.textContent = shown[0]; show(els.message, true); });
    } else {
      show(els.message, false);
    }
  }

  function follow(job) {
    renderJob(job);
    if (job.status === 'queued' || job.status === 'running') {
      window.setTimeout(function () { poll(job.id); }, 1000);
      return;
    }
    finished(job);
  }

  function poll(id) {
    fetch('/api/v1/import/jobs/' + encodeURIComponent(id), { credentials: 'same-origin', headers: { 'Accept': 'application/json' } })
      .then(function (resp) {
        return resp.json().then(function (body) {
          if (!resp.ok) { throw { status: resp.status, body: body }; }
          return body;
        });
      })
      .then(follow)
      .catch(function (problem) {
        if (problem && problem.status) {
          setBusy(false);
          return showHttpError(problem.status, problem.body);
        }
        window.setTimeout(function () { poll(id); }, 3000);  // a dropped connection: keep following
        return null;
      });
  }

  function finished(job) {
    renderPreview(job.preview || []);
    var dry = !!(job.options && job.options.dry_run);
    var done = dry ? loadColumns(job) : Promise.resolve();
    done.then(function () {
      setBusy(false);
      refreshJobs();
    });
  }

  function send(dryRun) {
    if (state.busy) { return; }
    var file = chosenFile();
    show(els.problems, false);
    if (!file) {
      showProblems(L.choose_file, '', []);
      return;
    }
    var body = new FormData();
    body.append('file', file, file.name);
    body.append('mode', els.mode.value);
    body.append('dedupe', els.dedupe.value);
    body.append('on_error', els.onError.value);
    if (els.key.value) { body.append('key', els.key.value); }
    body.append('dry_run', dryRun ? '1' : '0');
    if (state.mappingFor !== null && state.mappingFor === fileKey()) {
      body.append('mapping', JSON.stringify(currentMapping()));
      show(els.mappingEdited, false);  // the edited mapping goes with this run
    }
    setBusy(true);
    renderJob({ status: 'queued', filename: file.name, options: { dry_run: dryRun }, counts: {}, rows_done: 0, total_rows: null });
    fetch(data.api + encodeURIComponent(els.entity.value), {
      method: 'POST', credentials: 'same-origin', body: body,
      headers: { 'Accept': 'application/json', 'X-CSRFToken': csrf }
    }).then(function (resp) {
      return resp.json().catch(function () { return null; }).then(function (json) {
        if (resp.status === 201 || resp.status === 202) {
          follow(json);
          return null;
        }
        show(els.result, false);
        setBusy(false);
        return showHttpError(resp.status, json);
      });
    }).catch(function () {
      show(els.result, false);
      setBusy(false);
      showProblems(L.failed_request, L.network, []);
    });
  }

  // ------------------------------------------------------------------ mapping and preview

  function fieldOptions(select, current) {
    var fields = entitySpec().fields;
    select.appendChild(text('option', '— ' + L.ignore + ' —')).value = '';
    var known = false;
    fields.forEach(function (f) {
      var option = text('option', f.label + ' (' + f.name + ')' + (f.required ? ' · ' + L.required : ''));
      option.value = f.name;
      select.appendChild(option);
      known = known || f.name === current;
    });
    if (current && !known) {
      var extra = text('option', current);
      extra.value = current;
      select.appendChild(extra);
    }
    select.value = current || '';
  }

  function loadColumns(job) {
    var url = data.columns.replace('{id}', encodeURIComponent(job.id));
    return fetch(url, { credentials: 'same-origin', headers: { 'Accept': 'application/json' } })
      .then(function (resp) { return resp.ok ? resp.json() : null; })
      .then(function (body) {
        if (!body) { return; }
        clear(els.mappingBody);
        body.columns.forEach(function (col) {
          var tr = document.createElement('tr');
          tr.setAttribute('data-header', col.header);
          tr.appendChild(text('td', col.header, 'fincrm-import-header'));
          var td = document.createElement('td');
          var select = document.createElement('select');
          select.className = 'form-control input-sm';
          select.setAttribute('aria-label', col.header);
          select.setAttribute('data-header', col.header);
          fieldOptions(select, col.field);
          select.setAttribute('data-detected', col.field || '');
          select.addEventListener('change', function () {
            tr.classList.toggle('warning', select.value !== select.getAttribute('data-detected'));
            show(els.mappingEdited, true);
          });
          td.appendChild(select);
          tr.appendChild(td);
          els.mappingBody.appendChild(tr);
        });
        state.mappingFor = fileKey();
        show(els.mappingEdited, false);
        show(els.mapping, true);
      })
      .catch(function () { /* the mapping stays automatic; the dry run's result is shown */ });
  }

  function currentMapping() {
    var mapping = {};
    els.mappingBody.querySelectorAll('select[data-header]').forEach(function (select) {
      mapping[select.getAttribute('data-header')] = select.value || null;
    });
    return mapping;
  }

  function cellText(name, value) {
    var options = (entitySpec().options || {})[name] || {};
    var label = function (v) { return Object.prototype.hasOwnProperty.call(options, v) ? options[v] : String(v); };
    if (value === null || value === undefined) { return ''; }
    if (Array.isArray(value)) { return value.map(label).join('、'); }
    if (typeof value === 'boolean') { return value ? L.yes : L.no; }
    return label(value);
  }

  function renderPreview(rows) {
    clear(els.previewHead);
    clear(els.previewBody);
    var names = [];
    rows.forEach(function (row) {
      Object.keys(row).forEach(function (name) {
        if (name.charAt(0) !== '_' && names.indexOf(name) < 0) { names.push(name); }
      });
    });
    var head = document.createElement('tr');
    head.appendChild(text('th', L.row));
    head.appendChild(text('th', L.action));
    names.forEach(function (name) { head.appendChild(text('th', fieldLabel(name) || name)).setAttribute('data-field', name); });
    els.previewHead.appendChild(head);
    rows.forEach(function (row) {
      var tr = document.createElement('tr');
      tr.setAttribute('data-row', row._row);
      tr.appendChild(text('td', row._row));
      tr.appendChild(text('td', row._action === 'update' ? L.action_update : L.action_insert));
      names.forEach(function (name) { tr.appendChild(text('td', cellText(name, row[name]))).setAttribute('data-field', name); });
      els.previewBody.appendChild(tr);
    });
    show(els.previewEmpty, rows.length === 0);
    show(els.preview, true);
  }

  function refreshJobs() {
    fetch(data.jobs, { credentials: 'same-origin' })
      .then(function (resp) { return resp.ok ? resp.text() : null; })
      .then(function (html) {
        if (html !== null) { els.jobs.innerHTML = html; }  // the server's own autoescaped rows
      })
      .catch(function () { /* the list is refreshed on the next run */ });
  }

  // ------------------------------------------------------------------ the form

  function fillKeys() {
    clear(els.key);
    els.key.appendChild(text('option', L.key_auto)).value = '';
    entitySpec().fields.forEach(function (f) {
      if (f.unique) { els.key.appendChild(text('option', f.label + ' (' + f.name + ')')).value = f.name; }
    });
  }

  function forget() {
    state.mappingFor = null;
    clear(els.mappingBody);
    show(els.mapping, false);
    show(els.preview, false);
    show(els.result, false);
    show(els.problems, false);
  }

  els.entity.addEventListener('change', function () { fillKeys(); forget(); });
  els.file.addEventListener('change', forget);
  els.dryRun.addEventListener('click', function () { send(true); });
  els.run.addEventListener('click', function () { send(false); });
  form.addEventListener('submit', function (event) { event.preventDefault(); });
  fillKeys();
}());
