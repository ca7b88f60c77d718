/* Follow an evaluation on its model page: poll the status URL (data-status-url on #status) every
   second until the submission is finished, failed or cancelled, then reload to show the results.
   A static file rather than an inline script, so that the Content-Security-Policy can forbid
   inline scripts (script-src 'self'). */
(function () {
  "use strict";
  var box = document.getElementById("status");
  if (!box || box.dataset.terminal === "1") { return; }
  function poll() {
    fetch(box.dataset.statusUrl, {credentials: "same-origin"}).then(function (r) { return r.json(); }).then(function (s) {
      document.getElementById("state").textContent = s.state_display;
      document.getElementById("progress").value = s.progress;
      document.getElementById("stage").textContent = s.queue_text || s.stage;
      if (s.terminal) { window.location.reload(); } else { setTimeout(poll, 1000); }
    }).catch(function () { setTimeout(poll, 3000); });
  }
  setTimeout(poll, 1000);
})();
