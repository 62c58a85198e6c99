// Jetpack's dashboard: keeps the numbers on the page live. Every two seconds
// it reads the counts (and every five the last hour's activity, and a task
// page's task) and writes them into the elements that carry them.
"use strict";
(function () {
  const base = document.body.dataset.base || "";
  const get = (path) => fetch(base + path, { headers: { accept: "application/json" } })
    .then((r) => (r.ok ? r.json() : Promise.reject(r.status)));

  function counts() {
    const cells = document.querySelectorAll("[data-count], [data-total]");
    if (!cells.length) return;
    get("/api/counts").then(({ counts, estimated }) => {
      if (!counts) return;
      const of = (kind, state) => ((counts[kind] || {})[state] || 0);
      // An estimate (a big table's sample) is shown as such.
      const about = (state) => ((estimated || []).includes(state) ? "≈" : "");
      document.querySelectorAll("[data-count]").forEach((el) => {
        const [kind, state] = el.dataset.count.split("|");
        // A diagram's "ready" includes the scheduled, as its box says.
        const n = of(kind, state) + (state === "ready" && el.tagName === "tspan" ? of(kind, "scheduled") : 0);
        el.textContent = about(state) + n;
        if (state === "parked") {
          const box = el.closest("[data-step], td");
          if (box) box.classList.toggle("parked", n > 0);
        }
      });
      document.querySelectorAll("[data-total]").forEach((el) => {
        const [machine, state] = el.dataset.total.split("|");
        let n = 0;
        for (const kind in counts) if (kind.split(".")[0] === machine) n += counts[kind][state] || 0;
        const link = el.querySelector("a");
        (link || el).textContent = about(state) + n;
        if (state === "parked") el.classList.toggle("parked", n > 0);
      });
    }).catch(() => {});
  }

  function activity() {
    const chart = document.getElementById("activity");
    const moves = document.querySelectorAll("[data-move]");
    if (!chart && !moves.length) return;
    get("/api/activity").then(({ now, minutes, moves: edges }) => {
      if (!minutes) return;
      moves.forEach((el) => {
        const [from, to] = el.dataset.move.split("|");
        const edge = edges.find((e) => e[0] === from && e[1] === to);
        el.textContent = edge ? edge[2] : 0;
      });
      if (!chart) return;
      const bars = Array.from({ length: 60 }, () => [0, 0]);
      for (const [at, moved, finished, failed] of minutes) {
        const i = 59 - (Math.floor(now / 60) - Math.floor(at / 60));
        if (i >= 0 && i < 60) bars[i] = [moved + finished, failed];
      }
      const most = Math.max(1, ...bars.map(([ok, bad]) => ok + bad));
      const h = (n) => Math.floor((n * 100) / most);
      const rects = chart.querySelectorAll("rect");
      bars.forEach(([ok, bad], i) => {
        const [good, failed] = [rects[2 * i], rects[2 * i + 1]];
        if (!good || !failed) return;
        good.setAttribute("y", 105 - h(ok) - h(bad));
        good.setAttribute("height", h(ok));
        failed.setAttribute("y", 105 - h(bad));
        failed.setAttribute("height", h(bad));
      });
      const done = document.getElementById("done-hour");
      const bad = document.getElementById("failed-hour");
      if (done) done.textContent = bars.reduce((n, b) => n + b[0], 0);
      if (bad) bad.textContent = bars.reduce((n, b) => n + b[1], 0);
    }).catch(() => {});
  }

  function task() {
    const badge = document.querySelector("[data-task]");
    if (!badge) return;
    get("/api/tasks/" + badge.dataset.task).then((t) => {
      if (badge.textContent !== t.state) {
        badge.textContent = t.state;
        badge.className = "state " + t.state;
      }
      const tried = document.getElementById("task-tried");
      if (tried && t.tried !== undefined) tried.textContent = t.tried;
    }).catch(() => {});
  }

  counts(); activity();
  setInterval(() => { counts(); task(); }, 2000);
  setInterval(activity, 5000);
})();
