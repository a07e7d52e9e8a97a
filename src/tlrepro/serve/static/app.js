// The tlrepro page: pick a model, drop or choose an image, see the label, probabilities and Grad-CAM.
// Plain DOM code, no build step, no external resources; every text from the API goes in via textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { models: new Map(), file: null, previewUrl: null, busy: false };

function percent(p) {
  // One decimal, never rounded to a certainty a model cannot give: above 99.9 % and below 0.1 % say so.
  if (p > 0.999) return "> 99.9%";
  if (p < 0.001) return "< 0.1%";
  return `${(100 * p).toFixed(1)}%`;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function setStatus(message, { quiet = false } = {}) {
  // The live region is always read out; once a result is on screen it is only for screen readers.
  const status = $("status");
  status.textContent = message;
  status.classList.toggle("visually-hidden", quiet);
}

async function apiError(response) {
  // `message` is written for the person at this page; `error` is for programs (it may name server settings).
  try {
    const body = await response.json();
    if (body && typeof body.message === "string") return body.message;
    if (body && typeof body.error === "string") return body.error;
  } catch (_) { /* not JSON */ }
  return `the server answered ${response.status} ${response.statusText}`;
}

function addField(list, term, value) {
  const dt = document.createElement("dt");
  dt.textContent = term;
  const dd = document.createElement("dd");
  dd.textContent = value === null || value === undefined || value === "" ? "—" : String(value);
  list.append(dt, dd);
}

function showCard(model) {
  const list = $("card-fields");
  list.replaceChildren();
  if (!model) {
    $("card").hidden = true;
    return;
  }
  const m = model.metrics || {};
  addField(list, "Study", model.study);
  addField(list, "Row", model.row);
  addField(list, "Backbone", model.backbone);
  addField(list, "Weights", model.weights === "random" ? "random (not ImageNet)" : model.weights);
  addField(list, "Input", model.image_size ? `${model.image_size}×${model.image_size} px` : null);
  addField(list, "Classes", (model.classes || []).join(", "));
  let accuracy = null;
  if (typeof m.accuracy === "number") {
    accuracy = percent(m.accuracy);
    if (typeof m.accuracy_ci_low === "number" && typeof m.accuracy_ci_high === "number") {
      accuracy += ` (95% CI ${percent(m.accuracy_ci_low)}–${percent(m.accuracy_ci_high)})`;
    }
    if (m.n) accuracy += `, n\u00a0=\u00a0${m.n}`;
  }
  addField(list, `${m.side ? m.side[0].toUpperCase() + m.side.slice(1) : "Test"} accuracy`, accuracy);
  addField(list, "F1", typeof m.f1 === "number" ? m.f1.toFixed(3) : null);
  addField(list, "ROC AUC", typeof m.roc_auc === "number" ? m.roc_auc.toFixed(3) : null);
  addField(list, "Threshold", typeof model.threshold === "number" ? model.threshold.toFixed(3) : null);
  const report = $("card-report");
  report.replaceChildren();
  if (model.report) {
    const link = document.createElement("a");
    link.href = model.report;
    link.textContent = `Read the ${model.study} report`;
    report.append(link);
  } else {
    report.textContent = "No report has been built for this study yet.";
  }
  $("card").hidden = false;
}

async function loadModels() {
  const select = $("model");
  try {
    const response = await fetch("/v1/models", { headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(await apiError(response));
    const body = await response.json();
    select.replaceChildren();
    for (const model of body.models) {
      state.models.set(model.name, model);
      const option = document.createElement("option");
      option.value = model.name;
      option.textContent = `${model.name} (${model.backbone || "?"})${model.default ? " (default)" : ""}`;
      option.selected = model.name === body.default;
      select.append(option);
    }
    select.disabled = false;
    showCard(state.models.get(select.value));
  } catch (error) {
    select.replaceChildren(new Option("No models available"));
    showError(`Cannot list the models: ${error.message}`);
  }
}

function renderResult(body) {
  $("label").textContent = body.predicted_label;
  const bars = $("bars");
  bars.replaceChildren();
  for (const [name, p] of Object.entries(body.probabilities)) {
    const item = document.createElement("li");
    item.className = name === body.predicted_label ? "bar chosen" : "bar";
    item.dataset.cls = name;
    const label = document.createElement("span");
    label.className = "bar-name";
    label.textContent = name;
    const track = document.createElement("span");
    track.className = "bar-track";
    track.setAttribute("role", "meter");
    track.setAttribute("aria-valuemin", "0");
    track.setAttribute("aria-valuemax", "100");
    track.setAttribute("aria-valuenow", (100 * p).toFixed(1));
    track.setAttribute("aria-valuetext", percent(p));
    track.setAttribute("aria-label", `P(${name})`);
    const fill = document.createElement("span");
    fill.className = "bar-fill";
    fill.style.width = `${Math.max(0, Math.min(100, 100 * p))}%`;
    track.append(fill);
    const value = document.createElement("span");
    value.className = "bar-value";
    value.textContent = percent(p);
    item.append(label, track, value);
    bars.append(item);
  }
  $("threshold").textContent = typeof body.threshold === "number"
    ? `Decision threshold ${body.threshold.toFixed(3)} on P(${Object.keys(body.probabilities).slice(-1)[0]}); model ${body.model}.`
    : `Model ${body.model}.`;
  $("seen").hidden = !body.seen_in_training;
  $("seen-distance").textContent = `perceptual-hash distance ${body.nearest_training_distance} bits`;
  $("overlay").src = `data:image/png;base64,${body.overlay_png}`;
  const size = state.models.get(body.model)?.image_size;
  $("overlay-caption").textContent = `Grad-CAM of “${body.predicted_label}”${size ? ` at the model's ${size}×${size} input` : ""} (red: most evidence)`;
  $("result").hidden = false;
  const probs = Object.entries(body.probabilities).map(([n, p]) => `${n} ${percent(p)}`).join(", ");
  setStatus(`Predicted ${body.predicted_label} (${probs}).${body.seen_in_training ? " Warning: this image nearly matches a training image." : ""}`,
    { quiet: true });
}

async function classify() {
  if (!state.file || state.busy) return;
  state.busy = true;
  showError("");
  $("again").disabled = true;
  document.body.setAttribute("aria-busy", "true");
  setStatus(`Classifying ${state.file.name}…`);
  const form = new FormData();
  form.append("file", state.file, state.file.name);
  const model = $("model").value;
  if (state.models.has(model)) form.append("model", model);
  try {
    const response = await fetch("/v1/explain", { method: "POST", body: form, headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(await apiError(response));
    renderResult(await response.json());
  } catch (error) {
    $("result").hidden = true;
    showError(`Could not classify ${state.file.name}: ${error.message}`);
    setStatus("No result: see the error above.");
  } finally {
    state.busy = false;
    $("again").disabled = !state.file;
    document.body.removeAttribute("aria-busy");
  }
}

function useFile(file) {
  if (!file) return;
  state.file = file;
  $("drop-file").textContent = `Chosen: ${file.name}`;
  if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
  state.previewUrl = URL.createObjectURL(file);
  $("preview").src = state.previewUrl;
  classify();
}

function init() {
  const drop = $("drop");
  const input = $("file");
  drop.addEventListener("click", () => input.click());
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      input.click();
    }
  });
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => {
      event.preventDefault();
      drop.classList.add("dragging");
    });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, () => drop.classList.remove("dragging"));
  }
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = event.dataTransfer?.files?.[0];
    if (file) useFile(file);
  });
  input.addEventListener("change", () => {
    useFile(input.files[0]);
    input.value = ""; // choosing the same file again still classifies it
  });
  $("model").addEventListener("change", () => {
    showCard(state.models.get($("model").value));
    if (state.file) classify();
  });
  $("form").addEventListener("submit", (event) => {
    event.preventDefault();
    classify();
  });
  loadModels();
}

document.addEventListener("DOMContentLoaded", init);
