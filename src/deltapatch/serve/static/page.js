// deltapatch serve: the page at /. Plain JavaScript, no dependencies; talks to /v1 on this origin.
"use strict";
(() => {
  const BASE = "__base__";
  const SVG = "http://www.w3.org/2000/svg";
  const info = document.body.dataset;  // backbone, stages, classes, size (filled by the server)
  const stageNames = info.stages ? info.stages.split(",") : [];
  const $ = (id) => document.getElementById(id);
  let patches = [];
  const unchecked = new Set();  // tasks the user turned off (new patches start checked)
  let previewUrl = null;

  // ---------------------------------------------------------------- small helpers
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v; else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c);
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function say(text) { $("status").textContent = text; }

  function showError(text) {
    $("error").textContent = text;
    $("error").hidden = false;
    say("");
  }

  function clearError() { $("error").hidden = true; $("error").textContent = ""; }

  function bytes(n) {
    if (n < 1024) return `${n} B`;
    if (n < 1 << 20) return `${(n / 1024).toFixed(1)} KiB`;
    return `${(n / (1 << 20)).toFixed(2)} MiB`;
  }

  function stageLabel(s) { return stageNames[s] !== undefined ? stageNames[s] : `stage ${s}`; }

  // One request to this server; an HTTP error or no answer is thrown as words.
  async function api(method, path, body, admin) {
    const headers = {};
    const key = $("key").value.trim();
    if (admin && key) headers.Authorization = `Bearer ${key}`;
    let answer;
    try {
      answer = await fetch(path, { method, headers, body, cache: "no-store" });
    } catch (err) {
      throw new Error(`cannot reach the server (${err.message}); is deltapatch serve running?`);
    }
    const text = await answer.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
    if (!answer.ok) {
      const why = data && typeof data.error === "string" ? data.error
        : (text || answer.statusText);
      throw new Error(`${method} ${path} failed (${answer.status}): ${why}`);
    }
    return data;
  }

  // Run an action with its button disabled; any error is shown in words.
  async function guarded(button, action) {
    clearError();
    button.disabled = true;
    try { await action(); } catch (err) { showError(err.message || String(err)); }
    finally { button.disabled = false; }
  }

  // ---------------------------------------------------------------- backbone, patches, tasks
  async function refresh() {
    const data = await api("GET", "/v1/patches");
    patches = data.patches;
    $("backbone").textContent = `${info.backbone}: ${info.classes}-class base task ` +
      `("${BASE}"), stages ${stageNames.join(", ")}, input ${info.size}×${info.size} px; ` +
      `${patches.length} patch${patches.length === 1 ? "" : "es"} loaded.`;
    const rows = $("patches").tBodies[0];
    rows.replaceChildren();
    for (const p of patches) {
      const drop = el("button", { type: "button", class: "secondary",
        "aria-label": `Delete patch ${p.name}`, "data-delete": p.name }, "delete");
      drop.addEventListener("click", () => guarded(drop, () => remove(p.name)));
      rows.append(el("tr", { "data-patch": p.name },
        el("td", {}, p.name), el("td", { class: "num" }, String(p.num_classes)),
        el("td", {}, p.stages.length ? p.stages.map(stageLabel).join(", ") : "— (head only)"),
        el("td", {}, p.method), el("td", { class: "num" }, bytes(p.bytes)), el("td", {}, drop)));
    }
    if (!patches.length) {
      rows.append(el("tr", {}, el("td", { colspan: "6", class: "muted" },
        "No patches loaded: only the base task answers.")));
    }
    const list = $("task-list");
    list.replaceChildren();
    for (const name of [...patches.map((p) => p.name), BASE]) {
      const id = `task-${name}`;
      const box = el("input", { type: "checkbox", id, value: name });
      box.checked = !unchecked.has(name);
      box.addEventListener("change", () => {
        if (box.checked) unchecked.delete(name); else unchecked.add(name);
      });
      list.append(el("label", { for: id }, box, ` ${name === BASE ? `${BASE} (base)` : name}`));
    }
  }

  function setAll(on) {
    for (const box of $("task-list").querySelectorAll("input[type=checkbox]")) {
      box.checked = on;
      if (on) unchecked.delete(box.value); else unchecked.add(box.value);
    }
  }

  // ---------------------------------------------------------------- image
  function chooseImage(file) {
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = null;
    const img = $("preview");
    if (!file) { img.hidden = true; return; }
    previewUrl = URL.createObjectURL(file);
    img.src = previewUrl;
    img.alt = `chosen image: ${file.name}`;
    img.hidden = false;
  }

  function dropZone() {
    const zone = $("drop");
    for (const type of ["dragenter", "dragover"]) {
      zone.addEventListener(type, (e) => { e.preventDefault(); zone.classList.add("over"); });
    }
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      zone.classList.remove("over");
      if (e.dataTransfer && e.dataTransfer.files.length) {
        $("image").files = e.dataTransfer.files;
        chooseImage($("image").files[0]);
      }
    });
    $("image").addEventListener("change", () => chooseImage($("image").files[0]));
  }

  // ---------------------------------------------------------------- predict: one fan-out request
  async function predict() {
    const file = $("image").files[0];
    if (!file) throw new Error("Choose an image first (or drop one on the box).");
    const tasks = [...$("task-list").querySelectorAll("input:checked")].map((b) => b.value);
    if (!tasks.length) throw new Error("Pick at least one task.");
    const form = new FormData();
    form.append("image", file);
    form.append("patches", JSON.stringify(tasks));
    form.append("top_k", $("top-k").value || "5");
    form.append("return_lambdas", "true");
    say(`Asking ${tasks.length} task${tasks.length === 1 ? "" : "s"}…`);
    const t0 = performance.now();
    const data = await api("POST", "/v1/predict", form);
    const ms = performance.now() - t0;
    const out = $("results");
    out.replaceChildren();
    for (const [name, result] of Object.entries(data.results)) out.append(card(name, result));
    say(`${file.name}: ${tasks.length} task${tasks.length === 1 ? "" : "s"} answered in one ` +
      `fan-out request (${ms.toFixed(0)} ms).`);
  }

  function card(name, result) {
    const table = el("table", {}, el("caption", { class: "sr-only" }, `top classes of ${name}`));
    for (const [rank, t] of result.top_k.entries()) {
      const bar = el("span", { class: "bar" });
      bar.style.width = `${Math.max(0, Math.min(1, t.score)) * 100}%`;
      table.append(el("tr", {}, el("td", { class: "num" }, `${rank + 1}.`),
        el("td", {}, t.label), el("td", { class: "num" }, `${(t.score * 100).toFixed(1)}%`),
        el("td", { class: "barcell" }, bar)));
    }
    const box = el("article", { class: "card", "data-task": name },
      el("h3", {}, name === BASE ? `${BASE} (base task)` : name), table);
    if (result.lambdas) box.append(lambdaMaps(name, result.lambdas, result.lambda_stages || {}));
    return box;
  }

  // ---------------------------------------------------------------- Λ heat maps
  const LOW = [247, 251, 255];
  const HIGH = [8, 48, 107];

  function shade(v) {
    const t = Math.max(0, Math.min(1, v));
    const c = LOW.map((lo, i) => Math.round(lo + (HIGH[i] - lo) * t));
    return `rgb(${c[0]}, ${c[1]}, ${c[2]})`;
  }

  function lambdaMaps(task, lambdas, stages) {
    const wrap = el("div", { class: "lambdas" });
    const maps = el("div", { class: "maps" });
    for (const [stage, rows] of Object.entries(lambdas)) {
      const values = rows[0];
      const meta = stages[stage] || {};
      const k = meta.k || Math.round((Math.sqrt(8 * values.length + 1) - 1) / 2);
      const name = meta.name || stageLabel(Number(stage));
      maps.append(el("figure", { class: "map", "data-stage": stage },
        heatMap(task, name, k, values), el("figcaption", {}, `${name} · k = ${k}`)));
    }
    wrap.append(el("h4", { class: "sr-only" }, `Λ of ${task}`), maps,
      el("div", { class: "legend", "aria-hidden": "true" }, "Λ 0", el("span", { class: "ramp" }),
        "1"));
    return wrap;
  }

  // Lower-triangular k×k grid: row h_j (j = 1..k), column h_i (i = 0..k-1), cell i < j holds
  // λ_{i→j}, at position (j-1)j/2 + i of Λ (skips into h_1 first, then into h_2, ...).
  function heatMap(task, stage, k, values) {
    const cell = k <= 6 ? 30 : 16;
    const left = 24;
    const top = 14;
    const size = left + k * cell + 2;
    const pic = svg("svg", { width: size, height: top + k * cell + 2, role: "img",
      viewBox: `0 0 ${size} ${top + k * cell + 2}`, class: "heat",
      "aria-label": `Λ of ${task} at ${stage}: ${values.length} skip weights` });
    pic.append(svg("title", {}, `Λ of ${task} at ${stage} (row: into h_j, column: from h_i)`));
    for (let i = 0; i < k; i += 1) {
      pic.append(svg("text", { x: left + i * cell + cell / 2, y: top - 4,
        "text-anchor": "middle" }, `h${i}`));
    }
    for (let j = 1; j <= k; j += 1) {
      const y = top + (j - 1) * cell;
      pic.append(svg("text", { x: left - 4, y: y + cell / 2 + 3, "text-anchor": "end" },
        `h${j}`));
      for (let i = 0; i < j; i += 1) {
        const v = values[((j - 1) * j) / 2 + i];
        const x = left + i * cell;
        const rect = svg("rect", { x, y, width: cell - 1, height: cell - 1, fill: shade(v),
          class: "cell", "data-value": v });
        rect.append(svg("title", {}, `λ h${i}→h${j} = ${v.toFixed(3)}` +
          (i === j - 1 ? " (the backbone's own shortcut)" : "")));
        pic.append(rect);
        if (cell >= 24) {
          pic.append(svg("text", { x: x + cell / 2 - 0.5, y: y + cell / 2 + 3,
            "text-anchor": "middle", class: v > 0.5 ? "in" : "in light",
            "aria-hidden": "true" }, v.toFixed(2).replace(/^0/, "")));
        }
      }
    }
    return pic;
  }

  // ---------------------------------------------------------------- admin
  async function upload() {
    const files = [...$("patch-files").files];
    const form = new FormData();
    for (const f of files) {
      if (f.name.endsWith(".json")) form.append("config.json", f, "config.json");
      else if (f.name.endsWith(".safetensors")) form.append("patch.safetensors", f,
        "patch.safetensors");
      else throw new Error(`'${f.name}' is not part of a patch folder (config.json, ` +
        "patch.safetensors).");
    }
    if (files.length !== 2 || !form.has("config.json") || !form.has("patch.safetensors")) {
      throw new Error("Choose a patch folder's two files: config.json and patch.safetensors.");
    }
    say("Uploading…");
    const data = await api("POST", "/v1/patches", form, true);
    $("patch-files").value = "";
    await refresh();
    say(`Patch '${data.name}' uploaded and loaded.`);
  }

  async function remove(name) {
    say(`Deleting '${name}'…`);
    await api("DELETE", `/v1/patches/${encodeURIComponent(name)}`, undefined, true);
    unchecked.delete(name);
    $("results").querySelector(`[data-task="${CSS.escape(name)}"]`)?.remove();
    await refresh();
    say(`Patch '${name}' deleted.`);
  }

  // ---------------------------------------------------------------- start
  window.addEventListener("error", (e) => showError(`The page hit an error: ${e.message}`));
  window.addEventListener("unhandledrejection", (e) =>
    showError(`The page hit an error: ${e.reason && e.reason.message ? e.reason.message
      : e.reason}`));

  dropZone();
  $("all-tasks").addEventListener("click", () => setAll(true));
  $("no-tasks").addEventListener("click", () => setAll(false));
  $("predict-form").addEventListener("submit", (e) => {
    e.preventDefault();
    guarded($("run"), predict);
  });
  $("admin-form").addEventListener("submit", (e) => {
    e.preventDefault();
    guarded($("upload"), upload);
  });
  refresh().then(() => say("Ready: choose an image and press Predict."),
    (err) => showError(`Could not load the patch list: ${err.message}`));
})();
