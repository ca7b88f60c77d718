/* Draw the figures built by the server (JSON in <script type="application/json">) with plotly.js,
   and make every point that carries a model page URL (customdata[0]) a link to it. */
(function () {
  "use strict";
  if (!window.Plotly) { return; }
  var config = {responsive: true, displaylogo: false, modeBarButtonsToRemove: ["select2d", "lasso2d"]};
  document.querySelectorAll("[data-figure]").forEach(function (div) {
    var source = document.getElementById(div.dataset.figure);
    if (!source) { return; }
    var figure = JSON.parse(source.textContent);
    Plotly.newPlot(div, figure.data, figure.layout, config).then(function () {
      div.on("plotly_click", function (event) {
        var point = event && event.points && event.points[0];
        var url = point && point.customdata && point.customdata[0];
        if (typeof url === "string" && url.charAt(0) === "/") { window.location.href = url; }
      });
      div.dataset.ready = "1";
    });
  });
})();
