// The page of a playing orchestra: one websocket brings the whole view on connect and on every
// change ({"view": …}, the page redraws from it), the meters ({"levels": […]}, about 20 times a
// second) and, while the page listens, the sound (binary). Nothing else is fetched. Text from
// the orchestra (names, log lines) only ever goes into textContent.
"use strict";

const $ = (id) => document.getElementById(id);
let current = null;
let socket = null;
// The last levels of each host: host → {cpu, blocks: key → {peak, rms}}, drawn again on redraws.
const levelsNow = new Map();

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

// A level bar: RMS filled, peak as a tick; its numbers on the element for whoever reads them.
function meter(key) {
  return el("span", { class: "meter", "data-meter": key, "data-peak": "", "data-rms": "", title: "peak and RMS" },
    el("span", { class: "rms" }), el("span", { class: "peak" }));
}

function listenButton(target) {
  const what = target === "system:playback" ? "the DAC" : target;
  const b = el("button", { type: "button", class: "listen", "data-listen": target, title: `listen to ${what}` }, "listen");
  // Not also a click on the block (which brings its controls into view).
  b.addEventListener("click", (event) => { event.stopPropagation(); listen(target); });
  return b;
}

function blockNode(b) {
  const state = b.pid ? `${b.state} · pid ${b.pid}` : b.state;
  return el("div", { class: "node", "data-block": b.name, "data-state": b.state, "data-pid": b.pid ?? null },
    el("b", {}, b.name), el("span", { class: "module" }, b.module), el("span", { class: "state" }, state),
    el("span", { class: "tap" }, meter(b.name), listenButton(b.name)));
}

function drawHost(host, links) {
  const over = host.load > host.cores;
  const pct = host.cores ? Math.min(100, (100 * host.load) / host.cores) : 0;
  const { columns, edges } = columnsOf(host, links);
  const region = el("div", { class: "host", "data-host": host.name, "data-state": host.state },
    el("h2", {}, host.name, el("small", {}, host.address), host.state === "down" ? el("span", { class: "down" }, "down") : null),
    el("div", { class: "load", "data-over": String(over), title: "cores its blocks take (the script's cpu)" },
      `${host.load} of ${host.cores} cores`, el("span", { class: "bar" }, el("span", { style: `width:${pct}%` }))),
    el("div", { class: "taps-cpu", title: "CPU of this host's meters (their JACK client)" }),
    el("div", { class: "columns" }, ...columns.map((col) => el("div", { class: "column" },
      ...col.map((n) => {
        const e = n.block ? blockNode(n.block) : el("div", { class: "node port", "data-port": n.key }, n.label,
          n.key === "system:playback" ? el("span", { class: "tap" }, meter("system:playback"), listenButton("system:playback")) : null);
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
  for (const host of levelsNow.keys()) drawLevels(host);
  drawControls(view, send); // controls.js
}

// A report of each host whose taps measured since the last: its blocks' levels (the loudest
// port of each block) and its taps' CPU.
function takeLevels(reports) {
  for (const r of reports) {
    const blocks = new Map();
    for (const l of r.levels) {
      const had = blocks.get(l.block);
      blocks.set(l.block, { peak: Math.max(l.peak, had?.peak ?? 0), rms: Math.max(l.rms, had?.rms ?? 0) });
    }
    levelsNow.set(r.host, { cpu: r.cpu_percent, blocks });
    drawLevels(r.host);
  }
}

// Bars in dB from -60 to 0.
function barWidth(x) {
  if (!(x > 0)) return 0;
  return Math.max(0, Math.min(100, (100 * (20 * Math.log10(x) + 60)) / 60));
}

function drawLevels(host) {
  const region = document.querySelector(`.host[data-host="${CSS.escape(host)}"]`);
  const now = levelsNow.get(host);
  if (!region || !now) return;
  region.querySelector(".taps-cpu").textContent = `meters ${now.cpu.toFixed(2)} % of a core`;
  for (const m of region.querySelectorAll("[data-meter]")) {
    const level = now.blocks.get(m.dataset.meter);
    if (!level) continue;
    m.dataset.peak = level.peak.toFixed(4);
    m.dataset.rms = level.rms.toFixed(4);
    m.querySelector(".rms").style.width = `${barWidth(level.rms)}%`;
    m.querySelector(".peak").style.left = `${barWidth(level.peak)}%`;
  }
}

// Listening: the sound comes in pieces (16-bit mono with the time its first sample was heard at
// the synth); each is played right after the one before, a tenth of a second behind the
// newest, so that pieces arriving unevenly still join up. The delay from the synth to this
// page's speaker is shown.
const LEAD = 0.1;
let player = null;

function listen(target) {
  if (!player) {
    const ctx = new AudioContext({ latencyHint: "interactive" });
    const analyser = ctx.createAnalyser();
    analyser.fftSize = 8192;
    analyser.connect(ctx.destination);
    player = { ctx, analyser, cursor: 0, target: null, samples: 0, delayMs: null };
  }
  player.ctx.resume();
  player.target = target;
  player.samples = 0;
  player.delayMs = null;
  send({ listen: target });
  showListening();
}

function stopListening() {
  if (!player) return;
  player.target = null;
  send({ listen: null });
  showListening();
}

function playPiece(data) {
  if (!player || !player.target) return;
  const view = new DataView(data);
  const atMs = view.getFloat64(0, true), rate = view.getUint32(8, true);
  const n = (data.byteLength - 12) >> 1;
  if (n <= 0 || !rate) return;
  const buffer = player.ctx.createBuffer(1, n, rate);
  const samples = buffer.getChannelData(0);
  for (let i = 0; i < n; i++) samples[i] = view.getInt16(12 + 2 * i, true) / 32768;
  const source = player.ctx.createBufferSource();
  source.buffer = buffer;
  source.connect(player.analyser);
  const now = player.ctx.currentTime;
  // Too late (a gap) or too far ahead (a burst after a stall): start again a lead behind.
  if (player.cursor < now + 0.01 || player.cursor > now + 4 * LEAD) player.cursor = now + LEAD;
  source.start(player.cursor);
  const heardAt = performance.timeOrigin + performance.now() + (player.cursor - now + (player.ctx.outputLatency || 0)) * 1000;
  player.delayMs = heardAt - atMs;
  player.cursor += n / rate;
  player.samples += n;
  showListening();
}

// The loudest frequency the page hears, in Hz (what a listener can check against the score).
function heardPeakHz() {
  if (!player) return null;
  const bins = new Float32Array(player.analyser.frequencyBinCount);
  player.analyser.getFloatFrequencyData(bins);
  let best = 0;
  for (let i = 1; i < bins.length; i++) if (bins[i] > bins[best]) best = i;
  return bins[best] > -100 ? (best * player.ctx.sampleRate) / player.analyser.fftSize : null;
}

function showListening() {
  const bar = $("listening");
  bar.hidden = !player?.target;
  if (!player?.target) return;
  bar.dataset.target = player.target;
  bar.dataset.samples = String(player.samples);
  bar.dataset.delayMs = player.delayMs === null ? "" : player.delayMs.toFixed(0);
  const delay = player.delayMs === null ? "waiting for sound…" : `${player.delayMs.toFixed(0)} ms behind the synth`;
  const what = player.target === "system:playback" ? "the DAC" : player.target;
  $("listening-what").textContent = `listening to ${what}: ${delay}`;
}

// For whoever checks what the page hears (the tests): what it listens to and what it decoded.
window.listening = () => player && ({
  target: player.target, samples: player.samples, delayMs: player.delayMs,
  peakHz: heardPeakHz(), state: player.ctx.state,
});

// What the page sends (what it listens to, its controls' changes); whether it went: not while
// the page is disconnected.
function send(message) {
  if (!socket || socket.readyState !== WebSocket.OPEN) return false;
  socket.send(JSON.stringify(message));
  return true;
}

// A message is sound (binary), {"view": …}, {"levels": […]}, or {"answer": …} (to a change
// this page sent, see controls.js).
function receive(data) {
  if (data instanceof ArrayBuffer) return playPiece(data);
  const message = JSON.parse(data);
  if (message.view) draw(message.view);
  else if (message.levels) takeLevels(message.levels);
  else if (message.answer) controlAnswer(message.answer);
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${scheme}://${location.host}/ws${location.search}`);
  socket.binaryType = "arraybuffer";
  const status = $("connection");
  socket.onopen = () => {
    status.dataset.state = "live";
    status.textContent = "live";
    // A page that reconnects (the run was restarted) goes on listening.
    if (player?.target) send({ listen: player.target });
  };
  socket.onmessage = (message) => receive(message.data);
  socket.onclose = () => {
    status.dataset.state = "lost";
    status.textContent = "not connected (the run ended?); trying again…";
    setTimeout(connect, 1000);
  };
}

window.addEventListener("resize", () => current && drawWires());
$("listen-stop").addEventListener("click", stopListening);
connect();
