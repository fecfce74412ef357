/* django-tasks-shared: live refresh of the page's [data-slot] parts, without reloading.
 *
 * Every data-every ms: GET the [data-live] URL (an HTML fragment rendered by the same templates),
 * then swap each [data-slot] of the page for the one of the same name in the answer. Forms
 * outside the slots (filters, look-up) are never touched, nor is the scroll position.
 * 503 = the task server does not answer: show the server's message in the banner, keep the last
 * figures and keep polling; the banner goes when an answer comes back. No other request is made.
 */
(function () {
  "use strict";
  var script = document.currentScript;
  var every = parseInt(script.getAttribute("data-every"), 10) || 2000;
  var live = document.querySelector("[data-live]");
  var banner = document.getElementById("banner");
  var updated = document.getElementById("updated");
  if (!live) { return; }

  function showBanner(text) {
    banner.textContent = text;
    banner.hidden = false;
    live.classList.add("stale");
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
    updated.textContent = "last refresh " + new Date().toLocaleTimeString() + " (browser time)";
  }

  function finished() {
    return live.querySelector("[data-final]") !== null;
  }

  function tick() {
    if (finished()) { return; }  // a finished task's page no longer changes
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
          else if (response.status === 503) { showBanner(text.trim()); }
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
