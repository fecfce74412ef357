/* django-tasks-shared: live refresh of the page's [data-slot] parts, without reloading.
 *
 * Every data-every ms: GET the [data-live] URL (an HTML fragment rendered by the same templates),
 * then swap each [data-slot] of the page for the one of the same name in the answer. Forms
 * outside the slots (filters, look-up) are never touched, nor is the scroll position.
 * 503 = the task server does not answer: its answer is the banner's text (plain text, put in
 * with textContent); the last figures stay, dimmed, the server's status pill says
 * "unreachable", and polling goes on; the banner goes when an answer comes back. A finished
 * task's page stops polling and says so in the footer. No other request is made.
 */
(function () {
  "use strict";
  var script = document.currentScript;
  var every = parseInt(script.getAttribute("data-every"), 10) || 2000;
  var live = document.querySelector("[data-live]");
  var banner = document.getElementById("banner");
  var updated = document.getElementById("updated");
  var note = document.getElementById("refresh-note");
  if (!live) { return; }
  // When the figures on the page were last fresh: now, unless the page came without them.
  var lastGood = banner.hidden ? new Date() : null;

  function clock(date) { return date.toLocaleTimeString(); }

  function showBanner(text) {
    if (lastGood) { text += " The figures below are from " + clock(lastGood) + " (browser time)."; }
    banner.textContent = text;
    banner.hidden = false;
    live.classList.add("stale");
  }

  function serverDown() {
    var pill = document.getElementById("server-status");
    if (pill) {
      pill.textContent = "unreachable";
      pill.className = "pill unreachable";
    }
  }

  function swap(html) {
    var doc = new DOMParser().parseFromString(html, "text/html");
    doc.querySelectorAll("[data-slot]").forEach(function (fresh) {
      var name = fresh.getAttribute("data-slot");
      var old = live.querySelector('[data-slot="' + name + '"]');
      if (old) { old.replaceWith(document.importNode(fresh, true)); }
    });
    banner.hidden = true;
    live.classList.remove("stale");
    lastGood = new Date();
    updated.textContent = " · last refresh " + clock(lastGood) + " (browser time)";
  }

  function finished() {
    return live.querySelector("[data-final]") !== null;
  }

  function tick() {
    if (finished()) {  // a finished task's page no longer changes
      if (note) { note.textContent = "this task has finished: the page no longer refreshes"; }
      return;
    }
    fetch(live.getAttribute("data-live"), {credentials: "same-origin", cache: "no-store",
                                           redirect: "manual",
                                           headers: {"X-Requested-With": "fetch"}})
      .then(function (response) {
        if (response.type === "opaqueredirect" || response.status === 401 ||
            response.status === 403) {
          showBanner("Your session has ended: reload the page to log in again.");
          return null;
        }
        return response.text().then(function (text) {
          if (response.ok) { swap(text); }
          else if (response.status === 503) { serverDown(); showBanner(text.trim()); }
          else { showBanner("The page's data failed to load (HTTP " + response.status + ")."); }
        });
      })
      .catch(function () {
        showBanner("The web server does not answer; retrying every " + every / 1000 + " s.");
      })
      .then(function () { setTimeout(tick, every); });
  }
  setTimeout(tick, every);
})();
