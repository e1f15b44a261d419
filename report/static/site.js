// quantmatrix report: charts (Vega bundle vendored, no network), sortable tables, the machine filter,
// and `?selftest` checks the browser test reads back from the DOM.
(function () {
  "use strict";

  function renderCharts() {
    const pending = [];
    document.querySelectorAll("div.chart").forEach(function (div) {
      const spec = JSON.parse(document.getElementById(div.id + "-spec").textContent);
      pending.push(
        vegaEmbed(div, spec, { actions: false, renderer: "svg" }).catch(function (err) {
          div.textContent = "chart failed: " + err;
          window.qmErrors.push("chart " + div.id + ": " + err);
        })
      );
    });
    return Promise.all(pending);
  }

  // A cell sorts by its data-sort attribute when present, else by its text; numbers before text.
  function sortKey(row, index) {
    const cell = row.cells[index];
    if (!cell) return "";
    const raw = cell.dataset.sort !== undefined ? cell.dataset.sort : cell.textContent.trim();
    const num = Number(raw);
    return raw !== "" && !isNaN(num) ? num : raw.toLowerCase();
  }

  function compare(x, y) {
    if (typeof x === "number" && typeof y === "number") return x - y;
    if (typeof x === "number") return -1;
    if (typeof y === "number") return 1;
    return x.localeCompare(y);
  }

  function sortTable(table, index, ascending) {
    const body = table.tBodies[0];
    const rows = Array.from(body.rows);
    rows.sort(function (a, b) {
      const c = compare(sortKey(a, index), sortKey(b, index));
      return ascending ? c : -c;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  }

  document.querySelectorAll("table.sortable").forEach(function (table) {
    const heads = table.tHead ? Array.from(table.tHead.rows[0].cells) : [];
    heads.forEach(function (th, index) {
      th.tabIndex = 0;
      th.addEventListener("click", function () {
        const ascending = th.dataset.dir !== "asc";
        heads.forEach(function (other) { delete other.dataset.dir; });
        th.dataset.dir = ascending ? "asc" : "desc";
        sortTable(table, index, ascending);
      });
    });
  });

  const filter = document.getElementById("machine-filter");
  function applyFilter() {
    document.querySelectorAll("main [data-machine]").forEach(function (el) {
      el.hidden = filter.value !== "" && el.dataset.machine !== filter.value;
    });
  }
  if (filter) {
    try { filter.value = localStorage.getItem("qm-machine") || ""; } catch (e) { /* storage may be off */ }
    if (filter.selectedIndex < 0) filter.value = "";
    filter.addEventListener("change", function () {
      try { localStorage.setItem("qm-machine", filter.value); } catch (e) { /* storage may be off */ }
      applyFilter();
    });
    applyFilter();
  }

  // Sorts the first sortable table by its p50 column through real clicks and checks the order.
  function selftestSort() {
    const th = document.querySelector("table.sortable th[data-key='p50']");
    if (!th) return "no p50 column";
    const table = th.closest("table");
    const index = Array.from(th.parentNode.cells).indexOf(th);
    const values = function () {
      return Array.from(table.tBodies[0].rows).map(function (r) { return sortKey(r, index); })
        .filter(function (v) { return typeof v === "number"; });
    };
    th.click();
    const up = values();
    th.click();
    const down = values();
    for (let i = 1; i < up.length; i++) if (up[i - 1] > up[i]) return "ascending order broken at row " + i;
    for (let i = 1; i < down.length; i++) if (down[i - 1] < down[i]) return "descending order broken at row " + i;
    return up.length > 1 ? "ok" : "too few rows";
  }

  renderCharts().then(function () {
    if (!/[?&]selftest\b/.test(location.search)) return;
    const root = document.documentElement;
    root.dataset.chartsRendered = String(document.querySelectorAll("div.chart svg, div.chart canvas").length);
    root.dataset.sortTest = document.querySelector("table.sortable th[data-key='p50']") ? selftestSort() : "n/a";
    root.dataset.errors = JSON.stringify(window.qmErrors);
  });
})();
