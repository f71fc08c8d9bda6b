// shoal dashboard: live updates over server-sent events. Pages work without it; it only
// re-fetches each page's live region when the cluster changes and follows logs.
(function () {
  'use strict';
  var regions = [];
  var pending = false;
  var conn = null;

  function busy(el) {
    var a = document.activeElement;
    return a && el.contains(a) && a.matches('input, select, textarea, button');
  }

  function refresh(el) {
    if (busy(el)) { el.dataset.stale = '1'; return; }
    fetch(el.dataset.fragment, { credentials: 'same-origin', headers: { 'X-Requested-With': 'fetch' } })
      .then(function (r) {
        if (r.status === 401) { location.reload(); return null; }
        return r.ok ? r.text() : null;
      })
      .then(function (html) {
        if (html === null || html === undefined) return;
        if (busy(el)) { el.dataset.stale = '1'; return; }
        el.innerHTML = html;
        delete el.dataset.stale;
        el.dispatchEvent(new CustomEvent('shoal:updated', { bubbles: true }));
      })
      .catch(function () { el.dataset.stale = '1'; });
  }

  function refreshAll() {
    if (pending) return;
    pending = true;
    setTimeout(function () { pending = false; regions.forEach(refresh); }, 50);
  }

  function status(text) { if (conn) conn.textContent = text; }

  function live() {
    regions = Array.prototype.slice.call(document.querySelectorAll('[data-fragment]'));
    if (!regions.length || !window.EventSource) return;
    regions.forEach(function (el) {
      el.addEventListener('focusout', function () {
        setTimeout(function () { if (el.dataset.stale && !busy(el)) refresh(el); }, 0);
      });
    });
    // Changes between rendering this page and connecting are announced at once by the server.
    var es = new EventSource('/live?since=' + encodeURIComponent(document.body.dataset.generation || ''));
    var opened = false;
    es.addEventListener('open', function () {
      status('Live');
      // After a reconnect something may have been missed; the first open follows the page load.
      if (opened) refreshAll();
      opened = true;
    });
    es.addEventListener('update', refreshAll);
    es.addEventListener('logout', function () { es.close(); location.reload(); });
    es.addEventListener('error', function () { status('Reconnecting…'); });
  }

  function logs() {
    Array.prototype.forEach.call(document.querySelectorAll('pre[data-logs]'), function (pre) {
      if (!window.EventSource) return;
      var es = new EventSource(pre.dataset.logs);
      var max = 2000;
      es.addEventListener('line', function (ev) {
        var d;
        try { d = JSON.parse(ev.data); } catch (e) { return; }
        var stick = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
        var line = document.createElement('div');
        if (d.stream === 2) line.className = 'stderr';
        if (d.task) {
          var t = document.createElement('span');
          t.className = 'task-name';
          t.textContent = d.task + ' | ';
          line.appendChild(t);
        }
        line.appendChild(document.createTextNode(d.text));
        pre.appendChild(line);
        while (pre.childNodes.length > max) pre.removeChild(pre.firstChild);
        if (stick) pre.scrollTop = pre.scrollHeight;
      });
    });
  }

  function confirms() {
    document.addEventListener('submit', function (ev) {
      var msg = ev.target.getAttribute('data-confirm');
      if (msg && !window.confirm(msg)) ev.preventDefault();
    }, true);
  }

  document.addEventListener('DOMContentLoaded', function () {
    conn = document.getElementById('conn');
    live();
    logs();
    confirms();
  });
})();
