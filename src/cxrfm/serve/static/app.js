// cxrfm page: upload one image to /v1/analyze and show the result. No build step, no dependencies.
"use strict";

const $ = (id) => document.getElementById(id);
let overlayUrl = null;
let plainUrl = null;
let showHeat = true;
let lastFile = null;  // re-analysed when the projection changes
const SVG = "http://www.w3.org/2000/svg";
let token = readToken();  // the server's bearer token, when it asks for one (kept for this tab only)

function setStatus(text) { $("status").textContent = text; }

function readToken() {
  try { return sessionStorage.getItem("cxrfm-token") || ""; } catch (e) { return ""; }
}

function authHeaders() { return token ? { Authorization: "Bearer " + token } : {}; }

function askForToken(message) {
  $("token-form").hidden = false;
  $("token-error").textContent = token ? message : "";
  $("token").focus();
}

function el(tag, attrs = {}, text = "") {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text) node.textContent = text;  // textContent only: server strings are never parsed as HTML
  return node;
}

async function loadModelLine() {
  try {
    const r = await fetch("/v1/model", { headers: authHeaders() });
    const m = await r.json();
    if (r.status === 401) {
      $("model-line").textContent = "Waiting for the access token.";
      askForToken(m.detail);
      return;
    }
    $("token-form").hidden = true;
    const idx = m.index ? `, ${m.index.n} indexed cases` : ", no retrieval index";
    const anat = m.anatomy && m.anatomy.available ? ` · anatomy model ${m.anatomy.folder}` : " · no anatomy model";
    $("model-line").textContent = `Model ${m.run} · ${m.image_size} px · ${m.findings.length} findings${idx}${anat}`;
  } catch (e) {
    $("model-line").textContent = "Model information unavailable.";
  }
}

function band(p) { return p >= 0.65 ? "likely" : p >= 0.35 ? "possible" : "no"; }

function renderFindings(findings) {
  const list = $("findings");
  list.replaceChildren();
  const sorted = [...findings].sort((a, b) => b.probability - a.probability);
  for (const f of sorted) {
    const pct = Math.round(f.probability * 100);
    const li = el("li", { class: "bar-row " + band(f.probability), title: `answered by ${f.head}` });
    li.append(el("span", { class: "bar-label" }, f.finding));
    const track = el("span", { class: "bar-track", role: "meter", "aria-valuemin": "0", "aria-valuemax": "100",
                              "aria-valuenow": String(pct), "aria-label": `${f.finding} ${pct} percent` });
    const fill = el("span", { class: "bar-fill" });
    fill.style.width = pct + "%";
    track.append(fill);
    li.append(track, el("span", { class: "bar-value" }, pct + "%"));
    list.append(li);
  }
}

// which head answered (the response's `head` and per-finding `head`), and why a saved one was not used
function renderHead(head, findings) {
  const counts = {};
  for (const f of findings) counts[f.head] = (counts[f.head] || 0) + 1;
  const parts = Object.entries(counts).map(([kind, n]) => `${kind} for ${n} finding${n === 1 ? "" : "s"}`);
  const where = Object.entries((head && head.fitted_on) || {}).filter(([, v]) => v !== null && typeof v !== "object");
  const fitted = where.length ? ` (fitted on ${where.map(([k, v]) => `${k} ${v}`).join(", ")})` : "";
  $("head-line").textContent = `Answered by: ${parts.join(", ")}${fitted}.`;
  const note = head && head.note;
  $("head-note").hidden = !note;
  $("head-note").textContent = note ? `The saved findings head was not used: ${note}` : "";
}

function renderNeighbours(items) {
  const list = $("neighbours");
  list.replaceChildren();
  if (!items || !items.length) {
    list.append(el("li", { class: "muted" }, "No retrieval index loaded (start the server with --index)."));
    return;
  }
  for (const n of items) {
    const li = el("li");
    li.append(el("strong", {}, `${n.id} (similarity ${n.similarity.toFixed(2)})`));
    li.append(el("p", {}, n.report || "(no report text)"));
    list.append(li);
  }
}

// the image's strongest sparse-autoencoder concepts, each named from the data (docs/concepts.md)
function renderConcepts(items) {
  const list = $("concepts");
  list.replaceChildren();
  if (!items || !items.length) {
    list.append(el("li", { class: "muted" }, "No concepts for this model (train them with `cxrfm concepts train`)."));
    return;
  }
  for (const c of items) {
    const li = el("li");
    li.append(el("strong", {}, `#${c.feature} ${c.name}`), el("span", { class: "muted" }, ` (activation ${c.activation.toFixed(2)})`));
    if (c.text && c.text.length) li.append(el("p", { class: "small muted" }, `nearest phrases: ${c.text.slice(0, 3).join("; ")}`));
    list.append(li);
  }
}

function renderImage() {
  const img = $("image");
  const useHeat = showHeat && overlayUrl;
  img.src = useHeat ? overlayUrl : plainUrl;
  img.classList.toggle("with-heat", Boolean(useHeat));
  const btn = $("toggle-heat");
  btn.disabled = !overlayUrl;
  btn.setAttribute("aria-pressed", String(Boolean(useHeat)));
  btn.textContent = useHeat ? "Hide heat map" : "Show heat map";
}

// anatomy: outlines (polygons in the original image's pixel edges) and the CTR's two widths, drawn in an
// SVG whose viewBox is the original image's size, laid over the displayed image
function svgEl(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  return node;
}

function widthLine(svg, line, size) {
  if (!line) return;
  const [row, x0, x1] = line;
  const y = row + 0.5, tick = Math.max(3, size.height * 0.012);
  svg.append(svgEl("line", { class: "width", x1: x0, y1: y, x2: x1 + 1, y2: y, "vector-effect": "non-scaling-stroke" }));
  for (const x of [x0, x1 + 1]) {
    svg.append(svgEl("line", { class: "width tick", x1: x, y1: y - tick, x2: x, y2: y + tick, "vector-effect": "non-scaling-stroke" }));
  }
}

function renderAnatomy(a) {
  const svg = $("anatomy-overlay");
  svg.replaceChildren();
  const line = $("ctr-line");
  const toggle = $("toggle-anatomy");
  line.className = "ctr";
  if (!a || !a.available) {
    toggle.disabled = true;
    line.classList.add("refused");
    line.textContent = a ? a.summary : "No anatomy in this answer.";
    $("anatomy-legend").hidden = true;
    svg.toggleAttribute("hidden", true);
    return;
  }
  const size = a.image_size;
  svg.setAttribute("viewBox", `0 0 ${size.width} ${size.height}`);
  for (const [name, s] of Object.entries(a.structures)) {
    for (const poly of s.outline) {
      const points = poly.map(([x, y]) => `${x},${y}`).join(" ");
      const shape = svgEl("polygon", { class: `outline ${name}`, points, "vector-effect": "non-scaling-stroke" });
      shape.append(svgEl("title", {}));
      shape.lastChild.textContent = name.replace("_", " ");
      svg.append(shape);
    }
  }
  if (a.ctr && a.ctr.ratio !== null) {
    widthLine(svg, a.ctr.heart_line, size);
    widthLine(svg, a.ctr.thorax_line, size);
  }
  line.textContent = a.summary;
  if (a.ctr && a.ctr.enlarged) line.classList.add("enlarged");
  if (!a.ctr || a.ctr.ratio === null) line.classList.add("refused");
  toggle.disabled = false;
  $("anatomy-legend").hidden = false;
  svg.toggleAttribute("hidden", !toggle.checked);
}

function showRefusal(message) {
  $("results").hidden = true;
  $("refusal").hidden = false;
  $("refusal-text").textContent = message;
}

async function analyze(file) {
  if (!file) return;
  setStatus(`Analysing ${file.name}…`);
  $("refusal").hidden = true;
  lastFile = file;
  const body = new FormData();
  body.append("file", file);
  if ($("view").value) body.append("view", $("view").value);
  let r, data;
  try {
    r = await fetch("/v1/analyze", { method: "POST", body, headers: authHeaders() });
    data = await r.json();
  } catch (e) {
    setStatus("");
    showRefusal("The server did not answer. Is it still running?");
    return;
  }
  if (!r.ok) {
    setStatus("");
    const detail = typeof data.detail === "string" ? data.detail : "The upload was not accepted.";
    if (r.status === 401) askForToken(detail);
    showRefusal(r.status === 503 ? `The server is busy: ${detail}` : detail);
    return;
  }
  plainUrl = data.image_png;
  overlayUrl = data.heatmap ? data.heatmap.overlay_png : null;
  $("heat-caption").textContent = data.heatmap
    ? `Heat map (Grad-CAM) for the top finding: ${data.heatmap.finding}. A saliency aid, not a segmentation.`
    : "No heat map.";
  renderImage();
  renderAnatomy(data.anatomy);
  renderFindings(data.findings);
  renderHead(data.head, data.findings);
  $("report").textContent = data.report;
  renderNeighbours(data.neighbours);
  renderConcepts(data.concepts);
  $("results").hidden = false;
  setStatus(`Done in ${Math.round(data.elapsed_ms)} ms (OOD score ${data.ood.score.toFixed(2)} ≥ ${data.ood.threshold.toFixed(2)}).`);
}

document.addEventListener("DOMContentLoaded", () => {
  loadModelLine();
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    token = $("token").value.trim();
    try { sessionStorage.setItem("cxrfm-token", token); } catch (err) { /* private mode: memory only */ }
    loadModelLine();
  });
  $("file").addEventListener("change", (e) => analyze(e.target.files[0]));
  $("toggle-heat").addEventListener("click", () => { showHeat = !showHeat; renderImage(); });
  $("toggle-anatomy").addEventListener("change", (e) => { $("anatomy-overlay").toggleAttribute("hidden", !e.target.checked); });
  $("view").addEventListener("change", () => { if (lastFile) analyze(lastFile); });
  $("copy-report").addEventListener("click", async () => {
    try { await navigator.clipboard.writeText($("report").textContent); setStatus("Report copied."); }
    catch (e) { setStatus("Copy failed: select the text and copy it by hand."); }
  });
  const drop = $("drop");
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
  drop.addEventListener("drop", (e) => analyze(e.dataTransfer.files[0]));
});
