// crosszone dashboard: polls the monitor's /api/status once a second and redraws.
// No framework and no network beyond the monitor, so it works offline.
"use strict";

const POLL_MS = 1000;
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const child of children) {
    if (child !== null && child !== undefined) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }
  return node;
}

const fmt = {
  num: (v, digits = 1) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits)),
  pct: (v) => (v === null || v === undefined ? "–" : (100 * v).toFixed(1) + "%"),
  ms: (v) => (v === null || v === undefined ? "–" : Number(v).toFixed(1) + " ms"),
  time: (t) => new Date(t * 1000).toLocaleTimeString(),
};

function sparkline(values) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", "0 0 100 30");
  svg.setAttribute("preserveAspectRatio", "none");
  if (values.length > 1) {
    const max = Math.max(1, ...values);
    const points = values.map((v, i) =>
      `${(100 * i) / (values.length - 1)},${30 - (28 * v) / max - 1}`);
    const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    line.setAttribute("points", points.join(" "));
    svg.append(line);
  }
  return svg;
}

function zoneCard(zone, history) {
  const rps = history.map((h) => (h.zones[zone.name] || {}).rps || 0);
  const starting = (zone.workers_starting || []).map((name) =>
    el("li", { "data-node": name, "data-up": "starting", title: "starting (joined its group)" },
      el("span", { class: "dot starting" }), name.replace(zone.name + "/", "")));
  const nodes = el("ul", { class: "nodes" }, ...zone.nodes.map((n) =>
    el("li", { "data-node": n.name, "data-up": String(n.up), title: n.detail },
      el("span", { class: "dot" + (n.up ? "" : " down") }),
      n.name.replace(zone.name + "/", ""))), ...starting);
  const share = el("div", { class: "share", title: "traffic share" },
    el("div", { style: "" }));
  share.firstChild.style.width = (100 * zone.weight).toFixed(0) + "%";
  return el("section", { class: "zone", "data-zone": zone.name, "data-status": zone.status },
    el("h3", {}, zone.name, el("span", { class: "badge" }, zone.status)),
    el("div", { class: "reasons" }, zone.reasons.join("; ")),
    el("div", { class: "metrics" },
      el("div", {}, el("span", {}, "traffic"), el("span", {}, fmt.pct(zone.weight))),
      el("div", {}, el("span", {}, "requests/s"), el("span", {}, fmt.num(zone.requests_per_second))),
      el("div", {}, el("span", {}, "errors"), el("span", {}, fmt.pct(zone.error_rate))),
      el("div", {}, el("span", {}, "p95"), el("span", {}, fmt.ms(zone.p95_ms))),
      el("div", {}, el("span", {}, "LB"), el("span", {},
        zone.lb_available === null ? "–" : zone.lb_available ? "in" : "out")),
      el("div", {}, el("span", {}, "controller"), el("span", {}, zone.controller_status || "–")),
      el("div", {}, el("span", {}, "workers wanted"),
        el("span", {}, zone.workers_desired == null ? "–" : String(zone.workers_desired)))),
    share, sparkline(rps), nodes);
}

function fillRows(table, rows) {
  const body = table.tBodies[0];
  body.replaceChildren(...(rows.length ? rows : [[el("span", { class: "empty" }, "none")]])
    .map((cells) => el("tr", {}, ...cells.map((c) => el("td", {}, c)))));
}

function fillList(list, items) {
  list.replaceChildren(...(items.length ? items : [el("li", { class: "empty" }, "none")]));
}

function drawTimeline(svg, failovers, now) {
  const NS = "http://www.w3.org/2000/svg";
  const span = 3600;
  svg.replaceChildren();
  const axis = document.createElementNS(NS, "line");
  Object.entries({ x1: 0, y1: 40, x2: 600, y2: 40, stroke: "#bbb" })
    .forEach(([k, v]) => axis.setAttribute(k, v));
  svg.append(axis);
  for (const f of failovers) {
    const age = now - f.time;
    if (age > span) continue;
    const x = 590 - (580 * age) / span;  // 10 px margins: markers stay whole
    const mark = document.createElementNS(NS, "circle");
    Object.entries({ cx: x, cy: 40, r: 6, fill: f.success ? "#1f9d55" : "#d23c3c" })
      .forEach(([k, v]) => mark.setAttribute(k, v));
    const tip = document.createElementNS(NS, "title");
    tip.textContent = `${f.kind} ${f.from_zone} → ${f.to_zone} (${f.reason})`;
    mark.append(tip);
    svg.append(mark);
  }
}

function render(doc) {
  const snap = doc.snapshot;
  $("monitor").textContent = `${doc.zone}${doc.notifier === doc.zone ? " (notifier)" : ""}`;
  $("updated").textContent = fmt.time(doc.time);
  if (!snap) return;
  const zones = Object.values(snap.zones);
  const up = zones.filter((z) => z.status !== "unhealthy").length;
  const service = $("service");
  const lbUp = snap.lb && snap.lb.up;
  service.dataset.state = !lbUp || up === 0 ? "down" : up < zones.length ? "degraded" : "up";
  service.textContent = `${up}/${zones.length} zones up` + (lbUp ? "" : " · load balancer down");
  $("leader").textContent = snap.leader || "none";
  $("term").textContent = snap.term === null ? "–" : snap.term;
  $("rps").textContent = fmt.num(snap.service_requests_per_second);
  $("errors").textContent = fmt.pct(snap.service_error_rate);
  $("burn").textContent = Object.entries(snap.burn).map(([w, v]) => `${w} ${fmt.num(v, 2)}x`)
    .join(" · ") || "–";
  $("zones").replaceChildren(...zones.map((z) => zoneCard(z, doc.history)));
  fillRows($("lag"), snap.lag.map((l) => [l.zone, l.peer_zone, fmt.num(l.seconds, 2), l.records]));
  fillRows($("prepared"), snap.prepared.map((p) => [p.zone, p.count,
    fmt.num(p.oldest_age_seconds, 1)]));
  const names = doc.zones_order;
  const matrix = {};
  for (const [z, p, avg] of doc.latency_matrix || []) (matrix[z] = matrix[z] || {})[p] = avg;
  $("latency").tHead.replaceChildren(el("tr", {}, el("th", {}, "from \\ to"),
    ...names.map((n) => el("th", {}, n))));
  fillRows($("latency"), names.map((z) => [z, ...names.map((p) =>
    z === p ? "·" : fmt.num((matrix[z] || {})[p], 2))]));
  fillList($("alerts"), doc.alerts.filter((a) => a.state === "firing").map((a) =>
    el("li", { "data-alert": a.alertname },
      el("span", { class: "sev-" + a.severity }, a.alertname), " ", a.summary)));
  fillList($("chaos"), snap.chaos.map((e) =>
    el("li", {}, `${e.kind} ${e.uid}: ${e.description}`)));
  drawTimeline($("timeline"), doc.failovers, doc.time);
  fillList($("failovers"), doc.failovers.slice(0, 10).map((f) =>
    el("li", {}, `${fmt.time(f.time)} ${f.kind} ${f.from_zone} → ${f.to_zone} `,
      f.success ? "ok" : "FAILED", ` · RTO ${fmt.ms(f.rto_ms)} · ${f.reason}`)));
}

async function poll() {
  try {
    const resp = await fetch("/api/status", { cache: "no-store" });
    if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
    render(await resp.json());
  } catch (err) {
    const service = $("service");
    service.dataset.state = "unknown";
    service.textContent = `monitor unreachable (${err.message})`;
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();
