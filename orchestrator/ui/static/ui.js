// orchestrator dashboard: the only script the pages load (CSP script-src 'self').
// Everything works without it except two conveniences: live refresh of the runs table and
// confirmation in a <dialog> instead of a confirmation page.
(function () {
  "use strict";

  var REFRESH_MS = 2000;

  // Live refresh: an element with data-live="URL" is replaced by what URL returns (an HTML
  // fragment rendered by the server) every 2 s while the tab is visible and the toggle is on.
  function startLive(box) {
    var toggle = document.getElementById("live-toggle");
    var busy = false;
    function tick() {
      if (busy || document.visibilityState !== "visible") return;
      if (toggle && !toggle.checked) return;
      busy = true;
      fetch(box.getAttribute("data-live"), {
        credentials: "same-origin",
        headers: { "Accept": "text/html" },
        redirect: "manual"
      }).then(function (response) {
        if (response.status !== 200) {  // logged out, or the server is gone: stop polling
          throw new Error("live refresh stopped: HTTP " + response.status);
        }
        return response.text();
      }).then(function (html) {
        box.innerHTML = html;
        box.setAttribute("data-refreshed", String(Date.now()));
      }).catch(function () {
        window.clearInterval(timer);
        if (toggle) { toggle.checked = false; }
      }).then(function () { busy = false; });
    }
    var timer = window.setInterval(tick, REFRESH_MS);
    document.addEventListener("visibilitychange", tick);
  }

  // Confirmation: a form with data-confirm="text" opens the page's <dialog> first. Confirming
  // adds confirmed=yes and submits; without this script the server shows a confirmation page.
  function guard(form, dialog) {
    form.addEventListener("submit", function (event) {
      if (form.getAttribute("data-confirmed") === "yes") return;
      event.preventDefault();
      dialog.querySelector(".message").textContent = form.getAttribute("data-confirm");
      dialog.returnValue = "";
      dialog.onclose = function () {
        if (dialog.returnValue !== "ok") return;
        var flag = document.createElement("input");
        flag.type = "hidden";
        flag.name = "confirmed";
        flag.value = "yes";
        form.appendChild(flag);
        form.setAttribute("data-confirmed", "yes");
        form.submit();
      };
      dialog.showModal();
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var live = document.querySelectorAll("[data-live]");
    for (var i = 0; i < live.length; i++) startLive(live[i]);
    var dialog = document.getElementById("confirm-dialog");
    if (dialog && typeof dialog.showModal === "function") {
      var forms = document.querySelectorAll("form[data-confirm]");
      for (var j = 0; j < forms.length; j++) guard(forms[j], dialog);
    }
  });
})();
