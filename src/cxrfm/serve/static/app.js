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

// the structured report: sections of sentences, each pointing to evidence entries (ids) shown on hover / focus
let evidenceById = {};
let reportText = "";
let imageSize = null;

function pct(p) { return `${Math.round(p * 100)}%`; }

function sentenceNode(s) {
  const downgraded = s.evidence.some((id) => evidenceById[id] && evidenceById[id].downgraded);
  const node = el("span", { class: `sentence ${s.status}${downgraded ? " downgraded" : ""}`, tabindex: "0",
                            "data-evidence": s.evidence.join(" "), "aria-describedby": "evidence-box" }, s.text);
  const show = () => showEvidence(s, node);
  node.addEventListener("mouseenter", show);
  node.addEventListener("focus", show);
  return node;
}

function renderReport(report, structured, evidence) {
  const box = $("report");
  box.replaceChildren();
  evidenceById = {};
  for (const e of evidence || []) evidenceById[e.id] = e;
  reportText = report;
  if (!structured) { box.textContent = report; return; }
  for (const sec of structured.sections) {
    box.append(el("div", { class: "rs-title" }, `${sec.title.toUpperCase()}:`));
    if (!sec.sentences.length) box.append(el("span", { class: "sentence" }, "Not assessed."));
    for (const s of sec.sentences) box.append(sentenceNode(s));
  }
  box.append(el("div", { class: "rs-title" }, "IMPRESSION:"));
  for (const s of structured.impression) box.append(sentenceNode(s));
  const last = report.split("\n").pop();
  box.append(el("p", { class: "disclaimer" }, last));
  $("evidence-box").hidden = true;
}

function evidenceDetails(e) {
  const li = el("li");
  li.append(el("h3", {}, `${e.finding}: ${e.status} (probability ${e.probability.toFixed(2)}, ${e.head})`));
  const op = e.operating_point;
  const items = el("ul");
  items.append(el("li", {}, `Operating point: possible from ${op.possible.toFixed(2)}, likely from ${op.likely.toFixed(2)}` +
                          (op.calibrated ? "" : " (uncalibrated head: read the bands with care)")));
  if (e.downgraded) items.append(el("li", { class: "reason" }, `Not stated as present: ${e.downgraded}`));
  const r = e.region;
  if (r) items.append(el("li", {}, r.peak && r.where ? `Grad-CAM peak in ${r.where}` +
                                   (r.supports ? ` (where it is seen: ${r.expected})` : ` (not in ${r.expected})`)
                                   : `Grad-CAM: ${r.note || "no peak"}`));
  for (const c of e.concepts || []) items.append(el("li", {}, `Concept #${c.feature} '${c.name}' (${c.link})`));
  if (e.ctr && e.ctr.ratio !== null && e.ctr.ratio !== undefined) {
    items.append(el("li", {}, `CTR ${e.ctr.ratio.toFixed(2)}${e.ctr.enlarged ? " (enlarged)" : " (not enlarged)"}`));
  }
  for (const n of e.neighbours || []) items.append(el("li", {}, `Training study ${n.id}: “${n.sentences.join(" ")}”`));
  if (e.trace) items.append(el("li", { class: "trace" }, `Trace: ${e.trace}`));
  li.append(items);
  return li;
}

function drawPeaks(entries) {
  const svg = $("evidence-overlay");
  svg.replaceChildren();
  if (!imageSize) return;
  svg.setAttribute("viewBox", `0 0 ${imageSize.width} ${imageSize.height}`);
  const rad = Math.max(6, 0.04 * Math.max(imageSize.width, imageSize.height));
  for (const e of entries) {
    const p = e.region && e.region.peak;
    if (!p) continue;
    svg.append(svgEl("circle", { class: "peak", cx: p.x + 0.5, cy: p.y + 0.5, r: rad, "vector-effect": "non-scaling-stroke" }));
    svg.append(svgEl("circle", { class: "peak-dot", cx: p.x + 0.5, cy: p.y + 0.5, r: rad / 5 }));
  }
}

function showEvidence(sentence, node) {
  for (const other of document.querySelectorAll("#report .sentence.active")) other.classList.remove("active");
  node.classList.add("active");
  const entries = sentence.evidence.map((id) => evidenceById[id]).filter(Boolean);
  const box = $("evidence-box");
  box.replaceChildren();
  box.append(el("p", { class: "small muted" }, `Evidence for: “${sentence.text}”`));
  if (!entries.length) box.append(el("p", {}, "No evidence entry (a general statement)."));
  const list = el("ul");
  for (const e of entries.slice(0, 6)) list.append(evidenceDetails(e));
  if (entries.length > 6) list.append(el("li", { class: "muted" }, `and ${entries.length - 6} more findings, all absent`));
  box.append(list);
  box.hidden = false;
  drawPeaks(entries);
}

function renderTraces(evidence) {
  const list = $("traces");
  list.replaceChildren();
  const stated = (evidence || []).filter((e) => e.trace).sort((a, b) => b.probability - a.probability);
  if (!stated.length) {
    list.append(el("li", { class: "muted" }, "No finding is stated as present or possible."));
    return;
  }
  for (const e of stated) {
    const li = el("li", { "data-evidence": e.id });
    li.append(el("span", { class: "status" }, `${e.finding} (${e.status}${e.downgraded ? ", downgraded" : ""}): `),
              el("span", {}, e.trace));
    list.append(li);
  }
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
  imageSize = data.image_size;
  $("evidence-overlay").replaceChildren();
  renderReport(data.report, data.structured_report, data.evidence);
  renderTraces(data.evidence);
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
    try { await navigator.clipboard.writeText(reportText); setStatus("Report copied."); }
    catch (e) { setStatus("Copy failed: select the text and copy it by hand."); }
  });
  const drop = $("drop");
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
  drop.addEventListener("drop", (e) => analyze(e.dataTransfer.files[0]));
});
