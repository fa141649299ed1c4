"""The live dashboard the status endpoint serves at `GET /`: one self-contained HTML page
(inline CSS and JS, nothing fetched from elsewhere) that polls `/status` every two
seconds and draws runs, agents, and per-experience accuracy and transfer curves.

The page holds no data, only code, so it is served to anyone; the data it reads
(`/status`) needs the admin token beyond loopback. A browser cannot attach a bearer
token to a page load, so the page takes it from a password field or from the URL
fragment (`#token=...`, which browsers never send to the server), removes the fragment
from the address bar and history at once, keeps the token in the page's memory only,
and sends it as `Authorization: Bearer` with each `/status` request. Everything a run
reports (run ids, reasons) goes into the page as text, never as markup; the Content
Security Policy admits only the page's own inline script and style (by hash) and
connections to the page's origin.
"""

from __future__ import annotations

import base64
import hashlib

# Seconds between two polls of /status.
POLL_SECONDS = 2

_STYLE = """
body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; background: #fafafa; }
h1 { font-size: 1.3em; margin: 0 0 .3em; }
h2 { font-size: 1.1em; margin: 1.2em 0 .3em; }
.muted { color: #777; }
.error { color: #b00020; }
table { border-collapse: collapse; margin: .4em 0; background: #fff; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.charts { display: flex; flex-wrap: wrap; gap: 1em; }
.chart { background: #fff; border: 1px solid #ddd; }
#auth { margin: .5em 0; }
#auth[hidden] { display: none; }
"""

_SCRIPT = """
"use strict";
const POLL_MS = __POLL_MS__;
const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
  "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"];
let token = "";
const hash = new URLSearchParams(location.hash.slice(1));
if (hash.has("token")) {
  token = hash.get("token");
  history.replaceState(null, "", location.pathname + location.search);
}
const $ = (id) => document.getElementById(id);
function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}
function svg(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  return node;
}
const pct = (v) => (v === undefined || v === null) ? "" : (100 * v).toFixed(1) + "%";
function bytes(n) {
  if (!n) return "0 B";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return n.toFixed(i ? 1 : 0) + " " + units[i];
}
function ago(t) {
  if (!t) return "never";
  const s = Math.max(0, Date.now() / 1000 - t);
  return s < 60 ? s.toFixed(0) + " s ago" : (s / 60).toFixed(0) + " min ago";
}
function chart(run, title, series) {
  // series: [{name, head, dash}]; one line per agent and series, x = experience.
  const W = 380, H = 220, L = 40, R = 10, T = 24, B = 30;
  const n = Math.max(run.experiences, 1);
  const x = (e) => L + (n === 1 ? 0 : e * (W - L - R) / (n - 1));
  const y = (v) => T + (1 - v) * (H - T - B);
  const root = svg("svg", {width: W, height: H, class: "chart", role: "img",
    "data-run": run.run_id, "data-chart": title});
  const label = svg("text", {x: L, y: 16, "font-size": 13});
  label.textContent = title;
  root.appendChild(label);
  for (const v of [0, 0.25, 0.5, 0.75, 1]) {
    root.appendChild(svg("line", {x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: "#eee"}));
    const t = svg("text", {x: L - 4, y: y(v) + 4, "font-size": 10, "text-anchor": "end"});
    t.textContent = (100 * v) + "%";
    root.appendChild(t);
  }
  for (let e = 0; e < n; e++) {
    const t = svg("text", {x: x(e), y: H - B + 14, "font-size": 10, "text-anchor": "middle"});
    t.textContent = String(e);
    root.appendChild(t);
  }
  const xl = svg("text", {x: (L + W - R) / 2, y: H - 4, "font-size": 10,
    "text-anchor": "middle"});
  xl.textContent = "experience";
  root.appendChild(xl);
  let legendY = T;
  run.agents.forEach((agent, i) => {
    const color = COLORS[i % COLORS.length];
    for (const s of series) {
      const points = (agent.history || []).filter((h) => s.name in h.metrics)
        .map((h) => [h.experience, h.metrics[s.name]]);
      if (!points.length) continue;
      root.appendChild(svg("polyline", {
        points: points.map(([e, v]) => x(e) + "," + y(v)).join(" "),
        fill: "none", stroke: color, "stroke-width": 2,
        "stroke-dasharray": s.dash ? "5,3" : "none"}));
      for (const [e, v] of points) {
        const dot = svg("circle", {cx: x(e), cy: y(v), r: 3, fill: color,
          "data-agent": agent.agent_id, "data-experience": e, "data-metric": s.name,
          "data-value": v});
        const tip = svg("title", {});
        tip.textContent = "agent " + agent.agent_id + " " + s.head + " e" + e + ": " + pct(v);
        dot.appendChild(tip);
        root.appendChild(dot);
      }
    }
  });
  series.forEach((s) => {
    root.appendChild(svg("line", {x1: W - R - 70, x2: W - R - 50, y1: legendY, y2: legendY,
      stroke: "#444", "stroke-width": 2, "stroke-dasharray": s.dash ? "5,3" : "none"}));
    const t = svg("text", {x: W - R - 46, y: legendY + 4, "font-size": 10});
    t.textContent = s.head;
    root.appendChild(t);
    legendY += 14;
  });
  return root;
}
function agentRow(run, agent, i) {
  // The newest value of each metric: a report that starts an experience carries none.
  const m = Object.assign({}, ...(agent.history || []).map((h) => h.metrics), agent.metrics);
  let fetched = 0;
  for (const h of agent.history || []) fetched += h.metrics.bytes_fetched || 0;
  const row = el("tr", {"data-run": run.run_id, "data-agent": agent.agent_id});
  const swatch = el("td", {}, "\\u25A0 " + agent.agent_id);
  swatch.setAttribute("data-color", COLORS[i % COLORS.length]);
  swatch.style.color = COLORS[i % COLORS.length];
  row.appendChild(swatch);
  row.appendChild(el("td", {class: "state"}, agent.state || "-"));
  row.appendChild(el("td", {class: "num"}, String(agent.experience)));
  for (const name of ["acc_all_cl", "acc_all_st", "transfer_st"]) {
    row.appendChild(el("td", {class: "num", "data-metric": name}, pct(m[name])));
  }
  row.appendChild(el("td", {class: "num"}, bytes(agent.payload_bytes)));
  row.appendChild(el("td", {class: "num"}, bytes(fetched)));
  row.appendChild(el("td", {}, ago(agent.last_seen)));
  row.appendChild(el("td", {class: "reason"}, agent.reason || ""));
  return row;
}
function renderRun(run) {
  const section = el("section", {"data-run": run.run_id});
  section.appendChild(el("h2", {}, "run " + run.run_id));
  section.appendChild(el("div", {class: "muted"},
    run.state + " \\u00b7 at experience " + run.current_experience + " of 0\\u2013" +
    (run.experiences - 1) + " \\u00b7 " + run.agents.length + " of " +
    run.expected_agents + " agents \\u00b7 " + run.prediction_sets + " prediction sets, " +
    bytes(run.payload_bytes) + " published"));
  const table = el("table", {});
  const head = el("tr", {});
  for (const h of ["agent", "state", "experience", "acc cl", "acc st", "transfer st",
    "published", "fetched", "last seen", "reason"]) head.appendChild(el("th", {}, h));
  table.appendChild(head);
  run.agents.forEach((agent, i) => table.appendChild(agentRow(run, agent, i)));
  section.appendChild(table);
  if (run.agents_not_shown) {
    section.appendChild(el("div", {class: "muted"}, run.agents_not_shown + " more agents"));
  }
  const charts = el("div", {class: "charts"});
  charts.appendChild(chart(run, "accuracy, all classes",
    [{name: "acc_all_cl", head: "cl"}, {name: "acc_all_st", head: "st", dash: true}]));
  charts.appendChild(chart(run, "transfer (classes never trained on)",
    [{name: "transfer_cl", head: "cl"}, {name: "transfer_st", head: "st", dash: true}]));
  section.appendChild(charts);
  return section;
}
function render(doc) {
  $("summary").textContent = "relay " + doc.version + " \\u00b7 up " +
    Math.round(doc.uptime_seconds) + " s \\u00b7 " + doc.totals.runs + " runs \\u00b7 " +
    doc.totals.prediction_sets + " prediction sets \\u00b7 " +
    bytes(doc.totals.payload_bytes) + " stored";
  const runs = $("runs");
  runs.replaceChildren();
  if (!doc.runs.length) runs.appendChild(el("p", {class: "muted"}, "no runs yet"));
  for (const run of doc.runs.slice().reverse()) runs.appendChild(renderRun(run));
  if (doc.runs_not_shown) {
    runs.appendChild(el("p", {class: "muted"}, doc.runs_not_shown + " older runs"));
  }
}
async function poll() {
  try {
    const headers = token ? {Authorization: "Bearer " + token} : {};
    const response = await fetch("status", {headers, cache: "no-store"});
    if (response.status === 401) {
      $("auth").hidden = false;
      $("message").textContent = "this relay needs its admin token to show its status";
    } else if (!response.ok) {
      $("message").textContent = "/status answered " + response.status;
    } else {
      $("auth").hidden = true;
      $("message").textContent = "";
      render(await response.json());
      $("updated").textContent = "updated " + new Date().toLocaleTimeString();
    }
  } catch (err) {
    $("message").textContent = "cannot reach the relay: " + err;
  }
  setTimeout(poll, POLL_MS);
}
$("auth").addEventListener("submit", (event) => {
  event.preventDefault();
  token = $("token").value;
  $("token").value = "";
});
poll();
"""

_BODY = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>DKT relay</title>
<style>__STYLE__</style>
</head>
<body>
<h1>DKT relay</h1>
<div id="summary" class="muted">loading /status ...</div>
<div id="updated" class="muted"></div>
<div id="message" class="error"></div>
<form id="auth" hidden>
<label>admin token <input id="token" type="password" autocomplete="off"></label>
<button type="submit">show</button>
</form>
<div id="runs"></div>
<script>__SCRIPT__</script>
</body>
</html>
"""

SCRIPT = _SCRIPT.replace("__POLL_MS__", str(POLL_SECONDS * 1000))
PAGE = _BODY.replace("__STYLE__", _STYLE).replace("__SCRIPT__", SCRIPT).encode()


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


# The page may run its own script and style and talk to its own origin, nothing else.
HEADERS = {
    "Content-Security-Policy": (
        f"default-src 'none'; script-src {_sha256(SCRIPT)}; style-src {_sha256(_STYLE)}; "
        "connect-src 'self'; img-src 'none'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
