// The page of a playing orchestra: one websocket brings the whole view (JSON) on connect and
// on every change; the page redraws from it. Nothing else is fetched. Text from the orchestra
// (names, log lines) only ever goes into textContent.
"use strict";

const $ = (id) => document.getElementById(id);
let current = null;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "class") e.className = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(typeof c === "string" ? document.createTextNode(c) : c);
  }
  return e;
}

// What an edge's end is drawn as: a block, a link end, the DAC or the ADC.
function endKey(owner, port) {
  if (owner === "system") return port.startsWith("playback") ? "system:playback" : "system:capture";
  return owner;
}

function portLabel(key, host, links) {
  if (key === "system:playback") return "DAC (system playback)";
  if (key === "system:capture") return "ADC (system capture)";
  const link = links.find((l) => l.id === key);
  if (link) return link.from_host === host ? `link → ${link.to_host}` : `link ← ${link.from_host}`;
  return key;
}

// Columns by depth: sources on the left, the DAC on the right.
function columnsOf(host, links) {
  const nodes = new Map();
  for (const b of host.blocks) nodes.set(b.name, { key: b.name, block: b });
  const edges = [];
  for (const c of host.connections) {
    const from = endKey(c.from, c.from_port), to = endKey(c.to, c.to_port);
    for (const k of [from, to]) if (!nodes.has(k)) nodes.set(k, { key: k, label: portLabel(k, host.name, links) });
    if (!edges.some((e) => e[0] === from && e[1] === to)) edges.push([from, to]);
  }
  const depth = new Map([...nodes.keys()].map((k) => [k, 0]));
  for (let round = 0; round < nodes.size; round++) {
    let moved = false;
    for (const [a, b] of edges) {
      if (depth.get(b) < depth.get(a) + 1) { depth.set(b, depth.get(a) + 1); moved = true; }
    }
    if (!moved) break;
  }
  const columns = [];
  for (const [k, n] of nodes) (columns[depth.get(k)] ||= []).push(n);
  return { columns: columns.filter(Boolean), edges };
}

function blockNode(b) {
  const state = b.pid ? `${b.state} · pid ${b.pid}` : b.state;
  return el("div", { class: "node", "data-block": b.name, "data-state": b.state, "data-pid": b.pid ?? null },
    el("b", {}, b.name), el("span", { class: "module" }, b.module), el("span", { class: "state" }, state));
}

function drawHost(host, links) {
  const over = host.load > host.cores;
  const pct = host.cores ? Math.min(100, (100 * host.load) / host.cores) : 0;
  const { columns, edges } = columnsOf(host, links);
  const region = el("div", { class: "host", "data-host": host.name, "data-state": host.state },
    el("h2", {}, host.name, el("small", {}, host.address), host.state === "down" ? el("span", { class: "down" }, "down") : null),
    el("div", { class: "load", "data-over": String(over), title: "cores its blocks take (the script's cpu)" },
      `${host.load} of ${host.cores} cores`, el("span", { class: "bar" }, el("span", { style: `width:${pct}%` }))),
    el("div", { class: "columns" }, ...columns.map((col) => el("div", { class: "column" },
      ...col.map((n) => {
        const e = n.block ? blockNode(n.block) : el("div", { class: "node port", "data-port": n.key }, n.label);
        e.dataset.node = n.key;
        return e;
      })))));
  region._edges = edges;
  return region;
}

function drawWires() {
  const svg = $("wires");
  const box = $("graph").getBoundingClientRect();
  const paths = [];
  for (const region of $("hosts").children) {
    const nodes = new Map([...region.querySelectorAll("[data-node]")].map((e) => [e.dataset.node, e]));
    for (const [from, to] of region._edges || []) {
      const a = nodes.get(from)?.getBoundingClientRect(), b = nodes.get(to)?.getBoundingClientRect();
      if (!a || !b) continue;
      const x1 = a.right - box.left, y1 = a.top + a.height / 2 - box.top;
      const x2 = b.left - box.left, y2 = b.top + b.height / 2 - box.top;
      const dx = Math.max(20, (x2 - x1) / 2);
      const p = document.createElementNS("http://www.w3.org/2000/svg", "path");
      p.setAttribute("d", `M${x1},${y1} C${x1 + dx},${y1} ${x2 - dx},${y2} ${x2},${y2}`);
      p.dataset.from = from;
      p.dataset.to = to;
      paths.push(p);
    }
  }
  svg.replaceChildren(...paths);
}

function drawLinks(links) {
  const list = $("links");
  if (!links.length) {
    list.replaceChildren(el("li", { class: "none" }, "none: every block plays on one host"));
    return;
  }
  list.replaceChildren(...links.map((l) => el("li", { "data-link": l.id, "data-state": l.state },
    `${l.from_host} → ${l.to_host} `, el("span", { class: "state" }, l.state),
    ` ${l.wires} of ${l.channels} channels`,
    l.rtt_ms === null ? "" : ` · round trip ${l.rtt_ms.toFixed(2)} ms`, ` (${l.id})`)));
}

function drawLog(log) {
  const list = $("log");
  const atEnd = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
  list.replaceChildren(...log.map((line) => el("li", { "data-kind": line.kind },
    el("time", {}, line.at), line.text)));
  if (atEnd) list.scrollTop = list.scrollHeight;
}

function draw(view) {
  current = view;
  $("orchestra").textContent = view.orchestra || "cloud-orchestra";
  document.title = `${view.orchestra || "orchestra"} · cloud-orchestra`;
  $("hosts").replaceChildren(...view.hosts.map((h) => drawHost(h, view.links)));
  drawLinks(view.links);
  drawLog(view.log);
  requestAnimationFrame(drawWires);
  drawControls(view, send); // controls.js
}

// --- The page's controls (controls.js): what it sends, and the answers it gets. ---
let openSocket = null;

// Whether it went: not while the page is disconnected.
function send(message) {
  if (!openSocket || openSocket.readyState !== WebSocket.OPEN) return false;
  openSocket.send(JSON.stringify(message));
  return true;
}

// A message is {"view": …}, {"answer": …} (to a change this page sent), or a bare view.
function receive(data) {
  if (typeof data !== "string") return;
  const message = JSON.parse(data);
  if (message.view) draw(message.view);
  else if (message.answer) controlAnswer(message.answer);
  else draw(message);
}
// --- end of the controls' part ---

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/ws${location.search}`);
  const status = $("connection");
  openSocket = socket;
  socket.onopen = () => { status.dataset.state = "live"; status.textContent = "live"; };
  socket.onmessage = (message) => receive(message.data);
  socket.onclose = () => {
    status.dataset.state = "lost";
    status.textContent = "not connected (the run ended?); trying again…";
    setTimeout(connect, 1000);
  };
}

window.addEventListener("resize", () => current && drawWires());
connect();
