// The page's controls: a panel per block with a control per param of its module (a slider for
// numbers, a checkbox for booleans, a select where there are choices, a text field otherwise),
// showing the value the block plays with now. A change is sent as {"set": {block, param,
// value}} (a slider's when it is released, not while it is dragged: every set restarts the
// block) and goes the way /orchestra/set does; its answer comes back as {"answer": …} and is
// shown beside the control, which returns to what plays when the change was refused.
// Text from the orchestra only ever goes into textContent (page.js's `el` puts it there).
// Wrapped so that its names cannot clash with page.js's; drawControls and controlAnswer are
// what page.js calls.
"use strict";

(() => {
  // block → { shape, panel, rows: param → row }, a row holding its control's elements.
  const panels = new Map();
  let sendToServer = () => false;
  let shown = null;
  let controlIds = 0;

  function section() {
    let controls = document.getElementById("controls");
    if (!controls) {
      controls = el("section", { id: "controls", "aria-label": "controls" },
        el("h2", {}, "Controls"), el("div", { id: "panels" }));
      const graph = document.getElementById("graph");
      graph.after(controls);
    }
    return document.getElementById("panels");
  }

  function withUnit(value, unit) {
    const text = typeof value === "string" ? value : JSON.stringify(value);
    return unit ? `${text} ${unit}` : text;
  }

  // A slider with no step declared moves freely; what it sends is rounded to the power of ten
  // nearest below a ten-thousandth of its range (0–20000 Hz: 1 Hz; 0–1: 0.0001), not 16 digits.
  function rounded(value, input, param) {
    if (param.step !== null) return value;
    const [min, max] = [Number(input.min), Number(input.max)];
    const digits = Math.floor(Math.log10((max - min) / 10000));
    const unit = 10 ** digits;
    const near = Math.round(value / unit) * unit;
    // Rounding may not leave the slider's range (from 0.01 in tenths would give 0).
    const within = Math.min(max, Math.max(min, near));
    return Number(digits < 0 && within === near ? near.toFixed(-digits) : within);
  }

  // The value a control holds, as the param's kind wants it.
  function valueOf(row) {
    const { input, param } = row;
    if (param.kind === "boolean") return input.checked;
    if (param.kind === "number" || param.kind === "integer") return rounded(Number(input.value), input, param);
    return input.value;
  }

  function show(row, value) {
    const { input, param, value: shownValue } = row;
    if (param.kind === "boolean") input.checked = value === true;
    else input.value = typeof value === "string" ? value : String(value);
    shownValue.textContent = withUnit(value, param.unit);
  }

  function controlFor(param) {
    const id = `control-${++controlIds}`;
    if (param.kind === "number" || param.kind === "integer") {
      return el("input", { id, type: "range", min: param.min, max: param.max, step: param.step ?? "any" });
    }
    if (param.kind === "boolean") return el("input", { id, type: "checkbox" });
    if (param.choices) {
      return el("select", { id }, ...param.choices.map((c) => el("option", { value: c }, c)));
    }
    return el("input", { id, type: "text", spellcheck: "false", autocomplete: "off" });
  }

  function drawRow(block, param) {
    const input = controlFor(param);
    const row = {
      param,
      input,
      value: el("span", { class: "value" }),
      answer: el("output", { class: "answer", for: input.id }),
      element: null,
      pending: false,
      dragging: false,
    };
    row.element = el("div", { class: "param", "data-param": param.name, "data-kind": param.kind },
      el("label", { for: input.id }, param.name), row.value, input, row.answer);
    // A slider shows where it is while dragged, and is sent when released.
    input.addEventListener("input", () => {
      if (input.type === "range") {
        row.dragging = true;
        row.value.textContent = withUnit(valueOf(row), param.unit);
      }
    });
    input.addEventListener("change", () => {
      row.dragging = false;
      if (!sendToServer({ set: { block, param: param.name, value: valueOf(row) } })) {
        window.controlAnswer({ block, param: param.name, ok: false, text: "not sent: the page is not connected" });
        return;
      }
      row.pending = true;
      row.answer.dataset.ok = "pending";
      row.answer.textContent = "sending…";
      row.value.textContent = withUnit(valueOf(row), param.unit);
    });
    return row;
  }

  function drawPanel(block) {
    const rows = new Map(block.params.map((p) => [p.name, drawRow(block.name, p)]));
    const panel = el("div", { class: "panel", "data-panel": block.name },
      el("h3", {}, block.name, el("small", {}, block.module)),
      ...[...rows.values()].map((r) => r.element));
    return { panel, rows };
  }

  // What a panel is built from, its values left out: when only values change, the controls
  // stay (a slider being dragged or a field being typed in is not redrawn under the hand).
  function shapeOf(block) {
    return JSON.stringify([block.module, block.params.map((p) => ({ ...p, value: null }))]);
  }

  // Draw a panel for every block with params, from the view.
  window.drawControls = (view, send) => {
    sendToServer = send;
    shown = view;
    const list = section();
    const blocks = view.hosts.flatMap((h) => h.blocks).filter((b) => b.params && b.params.length);
    const seen = new Set();
    const order = [];
    for (const block of blocks) {
      seen.add(block.name);
      let drawn = panels.get(block.name);
      const shape = shapeOf(block);
      if (!drawn || drawn.shape !== shape) {
        drawn = { shape, ...drawPanel(block) };
        panels.set(block.name, drawn);
      }
      drawn.panel.dataset.state = block.state;
      for (const param of block.params) {
        const row = drawn.rows.get(param.name);
        const editing = row.dragging || (row.input.type === "text" && document.activeElement === row.input);
        if (!row.pending && !editing) show(row, param.value);
      }
      order.push(drawn.panel);
    }
    for (const name of [...panels.keys()]) if (!seen.has(name)) panels.delete(name);
    if (!order.length) {
      list.replaceChildren(el("p", { class: "none" }, "no block has params to change"));
      return;
    }
    // Moved, not recreated: a control keeps its focus and state across redraws.
    if (order.some((p, i) => list.children[i] !== p) || list.children.length !== order.length) {
      list.replaceChildren(...order);
    }
  };

  // The answer to a set this page sent: shown beside its control; a refusal puts the control
  // back to what plays.
  window.controlAnswer = (answer) => {
    const row = panels.get(answer.block)?.rows.get(answer.param);
    if (!row) return;
    row.pending = false;
    row.answer.dataset.ok = String(answer.ok);
    row.answer.textContent = answer.text;
    if (!answer.ok) {
      const block = shown?.hosts.flatMap((h) => h.blocks).find((b) => b.name === answer.block);
      const param = block?.params.find((p) => p.name === answer.param);
      if (param) show(row, param.value);
    }
  };

  // A block tapped in the graph brings its panel into view.
  document.addEventListener("click", (event) => {
    const node = event.target.closest?.("[data-block]");
    const drawn = node && panels.get(node.dataset.block);
    if (!drawn) return;
    drawn.panel.scrollIntoView({ behavior: "smooth", block: "nearest" });
    drawn.panel.classList.remove("flash");
    void drawn.panel.offsetWidth;
    drawn.panel.classList.add("flash");
  });
})();
