// Stepline dashboard: local times, confirmations, and live updates over server-sent events.
// No build step; plain ES2017 for current browsers.
(function () {
  "use strict";

  // Times are written in one format (2026-01-01 12:00:03Z, UTC); the tooltip is the browser's local time.
  function localTimes(root) {
    root.querySelectorAll("time[data-ms]").forEach(function (el) {
      var d = new Date(Number(el.dataset.ms));
      if (isNaN(d.getTime())) return;
      el.title = d.toLocaleString(undefined, {
        year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit",
        second: "2-digit", fractionalSecondDigits: 3, timeZoneName: "short",
      }) + " (local time)";
    });
  }

  // Every action form asks before it posts; the server also asks when this script did not run.
  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    if (!(form instanceof HTMLFormElement) || !form.classList.contains("action")) return;
    var question = form.dataset.confirm;
    if (question && !window.confirm(question)) {
      ev.preventDefault();
      return;
    }
    if (!form.querySelector("input[name=confirmed]")) {
      var input = document.createElement("input");
      input.type = "hidden";
      input.name = "confirmed";
      input.value = "1";
      form.appendChild(input);
    }
  });

  // Live: one EventSource per page; on "change", fetch this page's live part and swap it in.
  var live = document.getElementById("live");
  var status = document.getElementById("live-status");
  var body = document.body;
  var busy = false, again = false, lastAt = 0, timer = null;

  function setStatus(on) {
    if (!status) return;
    status.classList.toggle("on", on);
    status.classList.toggle("off", !on);
    status.title = on ? "Live updates on" : "Live updates reconnecting";
  }

  function refresh() {
    if (document.hidden) { again = true; return; }
    if (busy) { again = true; return; }
    var wait = 400 - (Date.now() - lastAt);
    if (wait > 0) {
      if (!timer) timer = setTimeout(function () { timer = null; refresh(); }, wait);
      return;
    }
    busy = true; again = false; lastAt = Date.now();
    fetch(window.location.href, { headers: { "X-Stepline-Fragment": "live" }, credentials: "same-origin" })
      .then(function (resp) {
        if (resp.status === 401) { window.location.reload(); return null; }
        return resp.ok ? resp.text() : null;
      })
      .then(function (html) {
        if (html === null || html === undefined) return;
        var open = {};
        live.querySelectorAll("details[id]").forEach(function (d) { open[d.id] = d.open; });
        live.innerHTML = html;
        live.querySelectorAll("details[id]").forEach(function (d) { if (d.id in open) d.open = open[d.id]; });
        localTimes(live);
        copyButtons(live);
        body.dataset.refreshed = String(Number(body.dataset.refreshed || "0") + 1);
      })
      .catch(function () { /* the next change retries */ })
      .then(function () { busy = false; if (again) refresh(); });
  }

  function connect() {
    if (!live || body.dataset.livePage !== "yes" || !window.EventSource) return;
    var source = new EventSource(body.dataset.stream);
    source.addEventListener("hello", function () { setStatus(true); });
    source.addEventListener("change", function () { refresh(); });
    source.onerror = function () { setStatus(false); };
    source.onopen = function () { setStatus(true); };
    window.addEventListener("pagehide", function () { source.close(); });
  }

  // Copy buttons (hidden without this script): the text of the element their data-copy names.
  function copyButtons(root) {
    root.querySelectorAll("button.copy[data-copy]").forEach(function (b) { b.hidden = false; });
  }
  document.addEventListener("click", function (ev) {
    var button = ev.target instanceof Element ? ev.target.closest("button.copy[data-copy]") : null;
    if (!button) return;
    var source = document.querySelector(button.dataset.copy);
    if (!source) return;
    var done = function () { button.textContent = "Copied"; setTimeout(function () { button.textContent = "Copy"; }, 1500); };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(source.textContent).then(done, function () {});
    } else {
      var range = document.createRange();
      range.selectNodeContents(source);
      var sel = window.getSelection();
      sel.removeAllRanges(); sel.addRange(range);
      if (document.execCommand("copy")) done();
    }
  });

  document.addEventListener("visibilitychange", function () { if (!document.hidden && again) refresh(); });
  localTimes(document);
  copyButtons(document);
  connect();
})();
