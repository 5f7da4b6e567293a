// The start page: sign in, check a file before training (POST /finetune/validate), start, list jobs.
import { api, baseModelSection, clear, el, fmt, setToken, showError, showIdentity, table, token, when } from "./console.js";

// options the dry run depends on: changing one reads the file again
const RECHECK = new Set(["base_model", "task", "label_separator", "allow_empty_labels", "long_texts", "max_length"]);
const OPTIONS = ["task", "label_separator", "allow_empty_labels", "base_model", "long_texts", "num_train_epochs", "learning_rate", "per_device_train_batch_size", "max_length", "class_weighting", "label_audit", "remedy_attempts", "clean_flagged_rows"];
const FINAL = ["succeeded", "blocked", "failed", "cancelled"];
let schema = {};
let columns = { text_column: null, label_column: null };

async function refreshIdentity() {
  const me = await showIdentity();
  const mode = document.getElementById("mode");
  if (me && me.mode === "loopback") {
    mode.textContent = "This server has no API tokens configured (loopback mode): no sign-in is needed from the server's own machine, and other machines may only predict.";
  } else {
    mode.textContent = "Paste an API token your operators gave you.";
  }
  const name = document.getElementById("model-name");
  name.placeholder = me && me.team ? `${me.team}/name` : "team/name, e.g. demo/spam";
  return me;
}

function optionInput(name) {
  const spec = schema[name] || {};
  const id = `opt-${name}`;
  const label = el("label", { for: id, text: name });
  let input;
  const enumValues = spec.enum || (spec.anyOf || []).flatMap((s) => s.enum || []);
  const type = spec.type || (spec.anyOf || []).map((s) => s.type).find((t) => t && t !== "null");
  if (enumValues.length) {
    const automatic = spec.default === null ? el("option", { value: "", selected: true, text: "choose the one that reads my text" }) : null;
    input = el("select", { id, name, onchange: RECHECK.has(name) ? () => checkFile() : null }, automatic, enumValues.map((v) => el("option", { value: v, selected: v === spec.default, text: v })));
  } else if (type === "boolean") {
    input = el("input", { id, name, type: "checkbox", checked: spec.default === true, onchange: RECHECK.has(name) ? () => checkFile() : null });
  } else {
    input = el("input", {
      id, name, type: "text", inputmode: type === "integer" || type === "number" ? "decimal" : null,
      value: spec.default === null || spec.default === undefined ? "" : String(spec.default),
      placeholder: spec.default === null ? "server default" : null,
      onchange: RECHECK.has(name) ? () => checkFile() : null,
    });
  }
  input.dataset.type = type || "string";
  const hint = el("small", { id: `${id}-hint`, class: "hint", text: spec.description || "" });
  input.setAttribute("aria-describedby", hint.id);
  return el("div", { class: "field" }, label, input, hint);
}

function chosenParameters() {
  const parameters = {};
  for (const name of OPTIONS) {
    const input = document.getElementById(`opt-${name}`);
    if (!input) continue;
    const spec = schema[name] || {};
    let value;
    if (input.type === "checkbox") value = input.checked;
    else if (input.value.trim() === "") continue; // an emptied field asks for its default, as the page says
    else if (input.dataset.type === "integer") value = Number.parseInt(input.value, 10);
    else if (input.dataset.type === "number") value = Number(input.value);
    else value = input.value;
    if (value !== (spec.default ?? null)) parameters[name] = Number.isNaN(value) ? input.value : value;
  }
  for (const [name, value] of Object.entries(columns)) if (value) parameters[name] = value;
  return parameters;
}

function columnPicker(role, found, chosen) {
  const id = `${role}-column`;
  return el(
    "div",
    { class: "field" },
    el("label", { for: id, text: `${role} column` }),
    el(
      "select",
      { id, onchange: (event) => { columns[`${role}_column`] = event.target.value || null; checkFile(); } },
      el("option", { value: "", text: "detect automatically" }),
      found.map((c) => el("option", { value: c, selected: c === chosen, text: c })),
    ),
  );
}

function renderCheck(check) {
  const node = clear(document.getElementById("check"));
  node.append(el("h3", { text: `What fitgate read from ${check.file_name}` }));
  if (check.columns.length) {
    node.append(el("div", { class: "row" }, columnPicker("text", check.columns, check.text_column), columnPicker("label", check.columns, check.label_column)));
  }
  if (!check.accepted) {
    node.append(el("p", { class: "error", role: "alert", id: "refusal" }, `This file would be refused: ${check.refusal.message}`));
    document.getElementById("start").disabled = true;
    return;
  }
  document.getElementById("start").disabled = false;
  node.append(
    el("p", { id: "detected" }, `Text column `, el("strong", { text: check.text_column }), `, label column `, el("strong", { text: check.label_column }),
      `: ${check.rows_kept} of ${check.rows_read} rows kept; splits ${check.splits.train} train / ${check.splits.validation} validation / ${check.splits.test} test.`),
    el("ul", {},
      el("li", { text: `${check.empty_texts_dropped} empty texts dropped` }),
      el("li", { text: `${check.duplicate_texts} duplicate texts (each kept in one split only)` }),
      el("li", { text: `${check.conflicting_texts} texts with conflicting labels` }),
    ),
  );
  if (check.conflicting_examples.length) {
    node.append(el("p", { class: "hint" }, "Conflicting: ", check.conflicting_examples.join(" · ")));
  }
  if (check.base_model) node.append(baseModelSection(check.base_model));
  if (check.long_texts) node.append(longTextSection(check.long_texts));
  if (check.task === "multi_label") {
    node.append(multiLabelSection(check));
    return;
  }
  const total = Object.values(check.class_counts).reduce((a, b) => a + b, 0);
  node.append(table(["class", "rows", "share"], Object.entries(check.class_counts).map(([label, n]) => [label, n, `${((100 * n) / total).toFixed(1)}%`]), { caption: "Class distribution", numeric: [1, 2] }));
}

function longTextSection(l) {
  const share = `${(100 * l.share_over_window).toFixed(1)}%`;
  const over = l.texts_over_window
    ? `${l.texts_over_window} training texts (${share}) are longer than the model's ${l.window_tokens}-token window, by ${l.median_tokens_over} tokens at the median (${l.p90_tokens_over} at the 90th percentile). `
    : `Every training text fits the model's ${l.window_tokens}-token window. `;
  const how = { truncate: "their first tokens are read", head_tail: "their head and tail are read", chunks: "they are read whole, in overlapping windows whose answers are pooled" }[l.long_texts];
  return el("p", { id: "long-texts" }, over, el("strong", { text: `Long texts: ${l.long_texts}` }), l.texts_over_window ? ` (${how}; ${l.chosen_by === "request" ? "as requested" : l.reason})` : "");
}

function multiLabelSection(check) {
  const rows = check.rows_kept;
  const notLearnable = new Set(check.labels_not_learnable);
  const notValidated = new Set(check.labels_not_validated);
  const status = (label) => (notLearnable.has(label) ? "too rare to learn well; kept, shared threshold, not judged by the gate" : notValidated.has(label) ? "too few validation rows: shared threshold, not judged by the gate" : "learned and validated");
  return el("section", { id: "multi-label" },
    el("p", { id: "label-cardinality" }, "Multi-label: ", el("strong", { text: `${check.label_cardinality.toFixed(2)} labels per text` }),
      ` on average; ${check.rows_without_labels} texts with no label; ${Object.keys(check.class_counts).length} labels.`),
    table(["label", "texts", "share of texts", "status"], Object.entries(check.class_counts).map(([label, n]) => [label, n, `${((100 * n) / rows).toFixed(1)}%`, status(label)]), { caption: "Labels", numeric: [1, 2] }),
    check.label_co_occurrence.length
      ? table(["labels together", "texts"], check.label_co_occurrence.map((pair) => [pair.labels.join(" + "), pair.rows]), { caption: "Most frequent label pairs", numeric: [1] })
      : el("p", { class: "hint", text: "No text carries two labels." }),
  );
}

async function checkFile() {
  const file = document.getElementById("file").files[0];
  const error = document.getElementById("upload-error");
  showError(error, null);
  if (!file) return;
  const form = new FormData();
  form.append("file", file);
  form.append("parameters", JSON.stringify(chosenParameters()));
  const node = document.getElementById("check");
  // a re-read keeps the last answer in place, dimmed, until the new one arrives: clearing it would move the Start
  // button under the pointer of a user whose click is what ended the edit that asked for the re-read
  if (node.childElementCount) node.setAttribute("aria-busy", "true");
  else node.append(el("p", { text: `Reading ${file.name}…` }));
  try {
    renderCheck(await api("/finetune/validate", { method: "POST", form }));
  } catch (err) {
    clear(node);
    showError(error, err);
  } finally {
    node.removeAttribute("aria-busy");
  }
}

async function start(event) {
  event.preventDefault();
  const error = document.getElementById("upload-error");
  showError(error, null);
  const file = document.getElementById("file").files[0];
  const name = document.getElementById("model-name").value.trim();
  if (!file) return showError(error, "choose a file with labelled data first");
  if (!name) return showError(error, "name the model as team/name, e.g. support/intents");
  const form = new FormData();
  form.append("file", file);
  form.append("model_name", name);
  form.append("parameters", JSON.stringify(chosenParameters()));
  try {
    const accepted = await api("/finetune", { method: "POST", form });
    window.location.assign(`/console/jobs/${encodeURIComponent(accepted.job_id)}`);
  } catch (err) {
    showError(error, err);
  }
}

async function refreshJobs() {
  const error = document.getElementById("jobs-error");
  try {
    const jobs = await api("/jobs");
    showError(error, null);
    const node = clear(document.getElementById("jobs"));
    if (!jobs.length) {
      node.append(el("p", { class: "hint", text: "No jobs yet." }));
    } else {
      node.append(table(
        ["job", "kind", "model", "status", "phase", "created", "validation macro-F1"],
        jobs.slice().reverse().map((job) => [
          el("a", { href: `/console/jobs/${encodeURIComponent(job.job_id)}`, text: job.job_id }),
          job.kind === "batch" ? "batch" : "fine-tune",
          job.model,
          el("span", { class: `status ${job.status}`, text: job.status }),
          job.progress ? job.progress.phase : "–",
          when(job.created_at),
          fmt(job.result && job.result.metrics ? job.result.metrics.validation_macro_f1 : job.progress && job.progress.metrics ? job.progress.metrics.val_macro_f1 : null),
        ]),
      ));
    }
    if (jobs.some((job) => !FINAL.includes(job.status))) setTimeout(refreshJobs, 3000);
  } catch (err) {
    showError(error, err);
  }
}

async function main() {
  document.getElementById("signin").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = document.getElementById("token");
    setToken(input.value.trim());
    input.value = "";
    const me = await refreshIdentity();
    showError(document.getElementById("signin-error"), me || !token() ? null : "that token was refused: check it and paste it again");
    if (!me) setToken("");
    refreshJobs();
  });
  document.getElementById("signout").addEventListener("click", () => {
    setToken("");
    refreshIdentity();
    clear(document.getElementById("jobs"));
  });
  document.getElementById("file").addEventListener("change", checkFile);
  document.getElementById("upload").addEventListener("submit", start);
  try {
    schema = await api("/finetune/arguments");
  } catch (err) {
    showError(document.getElementById("upload-error"), err);
  }
  document.getElementById("option-fields").append(...OPTIONS.filter((n) => schema[n]).map(optionInput));
  await refreshIdentity();
  refreshJobs();
}

main();
