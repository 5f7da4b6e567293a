// The models page: try a model (POST /predict), each model's versions, promote and roll back, drift.
import { api, clear, el, fmt, showError, showIdentity, table, when } from "./console.js";

let versions = [];
const params = new URLSearchParams(window.location.search);

function byModel() {
  const models = new Map();
  for (const v of versions) {
    if (!models.has(v.model)) models.set(v.model, []);
    models.get(v.model).push(v);
  }
  return models;
}

function fillTryPickers() {
  const modelSelect = document.getElementById("try-model");
  const chosen = modelSelect.value || params.get("model");
  const models = [...byModel().keys()];
  clear(modelSelect).append(...models.map((m) => el("option", { value: m, selected: m === chosen, text: m })));
  fillVersions(params.get("version"));
}

function fillVersions(preferred) {
  const model = document.getElementById("try-model").value;
  const select = clear(document.getElementById("try-version"));
  for (const v of (byModel().get(model) || []).slice().reverse()) {
    select.append(el("option", { value: v.version, selected: preferred ? v.version === preferred : v.current, text: `${v.version}${v.current ? " (serving)" : ""}` }));
  }
}

async function tryIt(event) {
  event.preventDefault();
  const error = document.getElementById("try-error");
  const out = clear(document.getElementById("try-result"));
  showError(error, null);
  const text = document.getElementById("try-text").value;
  const model = document.getElementById("try-model").value;
  if (!model) return showError(error, "no model to try yet: fine-tune one first");
  if (!text.trim()) return showError(error, "type a text to classify");
  try {
    const answer = await api("/predict", { method: "POST", json: { texts: [text], model, version: document.getElementById("try-version").value || null } });
    const p = answer.predictions[0];
    if (p.labels) {  // a multi-label model: every label at or above its threshold
      const answered = new Set(p.labels);
      out.append(
        el("p", { class: "answer" }, p.labels.length ? "Labels " : "No label reached its threshold", el("strong", { id: "try-labels", text: p.labels.join(", ") }), ` with confidence `, el("strong", { id: "try-confidence", text: p.confidence.toFixed(3) }),
          ` (${answer.model}, version ${answer.version})`, p.truncated ? "; the text was cut at the model's max_length" : ""),
        table(["label", "probability", "answered"], Object.entries(p.probabilities).sort((a, b) => b[1] - a[1]).map(([label, prob]) => [label, fmt(prob), answered.has(label) ? "yes" : ""]), { caption: "Label probabilities", numeric: [1] }),
      );
      return;
    }
    out.append(
      el("p", { class: "answer" }, "Label ", el("strong", { id: "try-label", text: p.label }), ` with confidence `, el("strong", { id: "try-confidence", text: p.confidence.toFixed(3) }),
        ` (${answer.model}, version ${answer.version})`, p.truncated ? "; the text was cut at the model's max_length" : ""),
      table(["class", "probability"], Object.entries(p.probabilities).sort((a, b) => b[1] - a[1]).map(([label, prob]) => [label, fmt(prob)]), { caption: "Class probabilities", numeric: [1] }),
    );
  } catch (err) {
    showError(error, err);
  }
}

async function change(model, action, body, question) {
  if (!window.confirm(question)) return;
  const [team, name] = model.split("/");
  try {
    await api(`/models/${encodeURIComponent(team)}/${encodeURIComponent(name)}/${action}`, { method: "POST", json: body });
    await refresh();
  } catch (err) {
    showError(document.getElementById("models-error"), err);
  }
}

async function driftOf(model) {
  const [team, name] = model.split("/");
  const node = el("div", { class: "drift" });
  try {
    const drift = await api(`/models/${encodeURIComponent(team)}/${encodeURIComponent(name)}/drift`);
    if (!drift.version) {
      node.append(el("p", { class: "hint", text: "Drift: this server worker has not served the model yet, so its detectors have seen nothing." }));
    } else {
      node.append(table(
        ["drift detector", "statistic", "threshold", "state", "alarms", "predictions seen"],
        Object.entries(drift.detectors).map(([d, s]) => [d, fmt(s.statistic), fmt(s.threshold), s.detected ? "drift detected" : "no drift", s.alarms, s.predictions_seen]),
        { caption: `Drift of the served version ${drift.version} (this worker)`, numeric: [1, 2, 4, 5] },
      ));
    }
  } catch (err) {
    node.append(el("p", { class: "error", text: err.message }));
  }
  return node;
}

async function renderModels() {
  const node = clear(document.getElementById("models"));
  if (!versions.length) node.append(el("p", { class: "hint", text: "No model has passed the gate yet." }));
  for (const [model, list] of byModel()) {
    const rows = list.slice().reverse().map((v) => [
      v.version,
      v.current ? el("strong", { text: "serving" }) : "",
      v.verdict || "–",
      fmt(v.metrics ? v.metrics.validation_macro_f1 : null),
      fmt(v.metrics ? v.metrics.macro_f1 : null),
      v.metrics ? v.metrics.evaluated_on || "–" : "–",
      when(v.created_at),
      v.current ? "" : el("button", { type: "button", class: "promote", "data-version": v.version, onclick: () => change(model, "promote", { version: v.version }, `Promote version ${v.version} of ${model}? Every worker switches to it within seconds.`), text: `Promote ${v.version}` }),
    ]);
    node.append(el("article", { class: "model", "data-model": model },
      el("h3", { text: model }),
      table(["version", "", "verdict", "validation macro-F1", "macro-F1", "scored on", "registered", ""], rows, { numeric: [3, 4] }),
      el("button", { type: "button", class: "rollback", onclick: () => change(model, "rollback", undefined, `Roll ${model} back to the version that served before the current one?`), text: `Roll back ${model}` }),
      await driftOf(model),
    ));
  }
}

async function refresh() {
  const error = document.getElementById("models-error");
  try {
    versions = await api("/models");
    showError(error, null);
    fillTryPickers();
    await renderModels();
  } catch (err) {
    showError(error, err);
  }
}

async function scoreFile(event) {
  event.preventDefault();
  const error = document.getElementById("score-error");
  showError(error, null);
  const file = document.getElementById("score-file").files[0];
  const model = document.getElementById("try-model").value;
  if (!model) return showError(error, "no model to score with yet: fine-tune one first");
  if (!file) return showError(error, "choose a file to score");
  const parameters = {};
  const textColumn = document.getElementById("score-text-column").value.trim();
  if (textColumn) parameters.text_column = textColumn;
  const format = document.getElementById("score-format").value;
  if (format) parameters.output_format = format;
  const form = new FormData();
  form.append("file", file);
  form.append("model", model);
  const version = document.getElementById("try-version").value;
  if (version) form.append("version", version);
  form.append("parameters", JSON.stringify(parameters));
  try {
    const accepted = await api("/batch", { method: "POST", form });
    window.location.assign(`/console/jobs/${encodeURIComponent(accepted.job_id)}`);
  } catch (err) {
    showError(error, err);
  }
}

document.getElementById("try-form").addEventListener("submit", tryIt);
document.getElementById("score-form").addEventListener("submit", scoreFile);
document.getElementById("try-model").addEventListener("change", () => fillVersions(null));
showIdentity();
refresh();
