// The job page: status and curves while it trains (polling GET /jobs/{id} and /curves), then the verdict.
import { api, baseModelSection, clear, download, el, fmt, imageFrom, parseCsv, showError, showIdentity, table, when } from "./console.js";

const FINAL = ["succeeded", "blocked", "failed", "cancelled"];
const POLL_MS = 1500;
const jobId = decodeURIComponent(window.location.pathname.split("/").pop());
const charts = {};
let shownPoints = -1;

function fact(list, term, value) {
  list.append(el("dt", { text: term }), el("dd", {}, value));
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.round(seconds);
  return s >= 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s} s`;
}

function renderStatus(job) {
  document.getElementById("title").textContent = `Job ${job.job_id}: ${job.model}`;
  const p = job.progress || {};
  const list = clear(document.getElementById("status"));
  fact(list, "status", el("span", { class: `status ${job.status}`, id: "job-status", text: job.status }));
  fact(list, "phase", el("span", { id: "job-phase", text: p.phase || (job.status === "queued" ? "waiting for a trainer" : "–") }));
  fact(list, "epoch", p.epoch !== undefined ? p.epoch.toFixed(2) : "–");
  if (p.resumed_at_epoch) {
    fact(list, "resumed", el("span", { id: "job-resumed", text: `at epoch ${p.resumed_at_epoch}, after its trainer was lost` }));
  }
  fact(list, "step", p.total_steps ? `${p.step} of ${p.total_steps}` : "–");
  if (!FINAL.includes(job.status)) fact(list, "time left", p.eta_seconds === null || p.eta_seconds === undefined ? "estimating…" : duration(p.eta_seconds));
  if (p.metrics && p.metrics.val_macro_f1 !== undefined) fact(list, "validation macro-F1", fmt(p.metrics.val_macro_f1));
  fact(list, "created", when(job.created_at));
  if (job.ended_at && job.started_at) fact(list, "ran for", duration(job.ended_at - job.started_at));
  const attempt = document.getElementById("attempt");
  attempt.textContent = p.attempts_allowed > 1
    ? `Attempt ${p.attempt} of at most ${p.attempts_allowed}${p.attempt_reason ? `: ${p.attempt_reason}` : ""}`
    : "";
  document.getElementById("cancel").hidden = FINAL.includes(job.status);
}

function renderBatchStatus(job) {
  document.getElementById("title").textContent = `Batch job ${job.job_id}: ${job.model}`;
  document.getElementById("curves").hidden = true;
  const p = job.progress || {};
  const list = clear(document.getElementById("status"));
  fact(list, "status", el("span", { class: `status ${job.status}`, id: "job-status", text: job.status }));
  fact(list, "phase", el("span", { id: "job-phase", text: p.phase || (job.status === "queued" ? "waiting for a trainer" : "–") }));
  fact(list, "version", job.arguments.version);
  const share = p.rows_total ? ` (${((100 * p.rows_done) / p.rows_total).toFixed(1)}%)` : "";
  fact(list, "rows", el("span", { id: "batch-rows", text: p.rows_done === undefined ? "–" : `${p.rows_done.toLocaleString()} of ${p.rows_total ? p.rows_total.toLocaleString() : "…"}${share}` }));
  if (p.rows_with_problems) fact(list, "rows with a problem", p.rows_with_problems.toLocaleString());
  if (p.rows_per_second) fact(list, "rows per second", Math.round(p.rows_per_second).toLocaleString());
  if (p.resumed_at_row) fact(list, "resumed", el("span", { id: "job-resumed", text: `after row ${p.resumed_at_row.toLocaleString()}, which an earlier run had written` }));
  if (!FINAL.includes(job.status)) fact(list, "time left", p.eta_seconds === null || p.eta_seconds === undefined ? "estimating…" : duration(p.eta_seconds));
  fact(list, "created", when(job.created_at));
  if (job.ended_at && job.started_at) fact(list, "ran for", duration(job.ended_at - job.started_at));
  document.getElementById("cancel").hidden = FINAL.includes(job.status);
}

function renderBatchOutcome(job) {
  const section = document.getElementById("batch-outcome");
  section.hidden = false;
  const summary = document.getElementById("batch-summary");
  if (job.status !== "succeeded") {
    summary.textContent = `The job ${job.status}: ${job.reason || ""}`;
    return;
  }
  const r = job.result;
  summary.textContent = `${r.rows.toLocaleString()} rows scored with version ${r.version}; ${r.rows_with_problems.toLocaleString()} could not be scored (their reason is in the file's problem column).`;
  const d = r.drift;
  if (d && d.rows_scored) {
    const shares = Object.keys(d.answer_shares).map((label) => [label, `${(100 * d.answer_shares[label]).toFixed(1)}%`, `${(100 * d.reference_answer_shares[label]).toFixed(1)}%`]);
    clear(document.getElementById("batch-drift")).append(
      table(["answer", "share in this file", "share on validation"], shares, { caption: `Answers vs the validation reference (shift ${d.answer_shift.toFixed(3)}; low-confidence share ${(100 * d.low_confidence_share).toFixed(1)}% vs 5%)`, numeric: [1, 2] }),
    );
  }
  const button = document.getElementById("batch-download");
  button.hidden = false;
  button.onclick = () => download(`/jobs/${encodeURIComponent(jobId)}/output`, `${jobId}-scored.${r.output_format}`).catch((err) => showError(document.getElementById("job-error"), err));
}

function chartWidth(node) {
  return Math.max(260, Math.min(560, node.clientWidth || 560));
}

window.addEventListener("resize", () => {
  for (const [id, plot] of Object.entries(charts)) plot.setSize({ width: chartWidth(document.getElementById(id)), height: 240 });
});

function chart(id, title, series, data) {
  const node = document.getElementById(id);
  const width = chartWidth(node);
  if (!charts[id]) {
    charts[id] = new window.uPlot(
      {
        title, width, height: 240,
        scales: { x: { time: false } },
        axes: [{ label: "epoch" }, {}],
        series: [{ label: "epoch" }, ...series],
      },
      data,
      node,
    );
  } else {
    charts[id].setData(data);
  }
}

function renderCurves(curves) {
  const pts = curves.points;
  if (pts.length === shownPoints) return;
  shownPoints = pts.length;
  document.getElementById("point-count").textContent = String(pts.length);
  const epochs = pts.map((p) => p.epoch);
  chart("loss-chart", "loss", [
    { label: "train (eval mode)", stroke: "#1f6feb", width: 2 },
    { label: "validation", stroke: "#d1242f", width: 2 },
    { label: "train objective (running)", stroke: "#8c959f", dash: [4, 4] },
  ], [epochs, pts.map((p) => p.train_eval_loss), pts.map((p) => p.val_loss), pts.map((p) => p.train_loss)]);
  chart("f1-chart", "macro-F1", [
    { label: "train", stroke: "#1f6feb", width: 2 },
    { label: "validation", stroke: "#d1242f", width: 2 },
  ], [epochs, pts.map((p) => p.train_macro_f1), pts.map((p) => p.val_macro_f1)]);
  clear(document.getElementById("points")).append(table(
    ["step", "epoch", "train loss (eval)", "validation loss", "train macro-F1", "validation macro-F1", "best so far"],
    pts.map((p) => [p.step, fmt(p.epoch, 2), fmt(p.train_eval_loss), fmt(p.val_loss), fmt(p.train_macro_f1), fmt(p.val_macro_f1), p.step === curves.best_step ? "✓" : ""]),
    { numeric: [0, 1, 2, 3, 4, 5] },
  ));
}

function renderFindings(diagnosis, job) {
  const verdict = document.getElementById("verdict");
  if (job.status === "succeeded") {
    verdict.textContent = `Passed the gate: version ${job.result.version} was registered${job.result.promoted ? " and now serves" : " (not promoted)"}.`;
    verdict.className = "verdict passed";
  } else if (job.status === "blocked") {
    verdict.textContent = `Blocked: ${job.reason}`;
    verdict.className = "verdict blocked";
  } else {
    verdict.textContent = `${job.status === "failed" ? "Failed" : "Cancelled"}: ${job.reason || "no reason recorded"}`;
    verdict.className = "verdict blocked";
  }
  const node = clear(document.getElementById("findings"));
  if (!diagnosis) return;
  if (!diagnosis.findings.length) {
    node.append(el("p", { text: "No findings: the curves and validation predictions show no overfitting, underfitting or degenerate class." }));
    return;
  }
  node.append(el("h3", { text: "Findings" }), el("ul", { class: "findings" }, diagnosis.findings.map((f) => el(
    "li", { class: f.blocking ? "blocking" : "warning" },
    el("strong", { text: `${f.verdict} (${f.blocking ? "blocks export" : "warning"})` }), ": ", f.message,
    el("dl", { class: "evidence" }, Object.entries(f.evidence).flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: typeof v === "object" ? JSON.stringify(v) : fmt(v) })])),
    el("p", {}, el("em", { text: "Remedy: " }), f.remedy),
  ))));
}

function renderAttempts(result) {
  const node = clear(document.getElementById("attempts"));
  if (!result || !result.attempts || result.attempts.length < 2) return;
  node.append(el("h3", { text: "Attempts" }), table(
    ["attempt", "why it ran", "verdicts", "validation macro-F1", "training rows left out", "what the search made of it", "seconds"],
    result.attempts.map((a) => [
      a.number + (a.number === result.exported_attempt ? " (exported)" : ""),
      a.reason || "the upload's own arguments",
      a.passed ? "passed" : a.verdicts.join(", "),
      fmt(a.validation_macro_f1),
      a.rows_dropped || 0,
      a.remedy ? `${a.remedy.seen}. ${a.remedy.retry ? "Next: " : ""}${a.remedy.reason}` : "",
      fmt(a.seconds, 0),
    ]),
    { numeric: [3, 4, 6] },
  ));
  if (result.stop_reason) node.append(el("p", { class: "hint" }, "Why no further attempt: ", result.stop_reason));
}

function renderMetrics(report) {
  const node = clear(document.getElementById("metrics"));
  const choice = report.data_report && report.data_report.base_model;
  if (choice && choice.name) node.append(baseModelSection(choice));
  for (const split of ["test", "validation"]) {
    const scores = report[split];
    if (!scores || !scores.per_class) continue;
    if (report.task === "multi_label") {
      node.append(multiLabelScores(report, split, scores));
      break;
    }
    node.append(
      el("h3", { text: `Per class, on the ${split} split` }),
      table(["class", "precision", "recall", "F1", "rows"], scores.per_class.map((c) => [c.label, fmt(c.precision), fmt(c.recall), fmt(c.f1), c.support]), { numeric: [1, 2, 3, 4] }),
      el("p", { id: `${split}-summary` }, `macro-F1 ${fmt(scores.macro_f1)}, accuracy ${fmt(scores.accuracy)}; calibration error (ECE) ${fmt(scores.ece_before_calibration)} before, ${fmt(scores.ece_after_calibration)} after temperature scaling.`),
    );
    break; // the test split when it was scored, else validation
  }
}

function multiLabelScores(report, split, scores) {
  const thresholds = report.thresholds || [];
  const ece = scores.ece_per_label || [];
  return el("section", { id: "per-label" },
    el("h3", { text: `Per label, on the ${split} split` }),
    table(["label", "precision", "recall", "F1", "texts", "threshold", "ECE"], scores.per_class.map((c, i) => [c.label, fmt(c.precision), fmt(c.recall), fmt(c.f1), c.support, thresholds[i] === undefined ? "" : fmt(thresholds[i]), ece[i] === undefined ? "" : fmt(ece[i])]), { numeric: [1, 2, 3, 4, 5, 6] }),
    el("p", { id: `${split}-summary` }, `macro-F1 ${fmt(scores.macro_f1)} over labels, micro-F1 ${fmt(scores.micro_f1)}, subset accuracy ${fmt(scores.accuracy)}, Hamming loss ${fmt(scores.hamming_loss)}; mean calibration error (ECE) per label ${fmt(scores.ece_before_calibration)} before, ${fmt(scores.ece_after_calibration)} after calibration. A label is answered when its probability reaches its threshold, tuned on validation.`),
  );
}

async function renderPlots() {
  const node = clear(document.getElementById("plots"));
  for (const [file, alt] of [["learning_curves.png", "Learning curves, selected checkpoint marked"], ["confusion_matrix.png", "Confusion matrix"]]) {
    try {
      node.append(el("figure", {}, await imageFrom(`/jobs/${encodeURIComponent(jobId)}/${file}`, alt), el("figcaption", { text: alt })));
    } catch (err) {
      // a job that failed before training ended has no plots
    }
  }
}

async function renderLabelIssues(result) {
  const node = clear(document.getElementById("label-issues"));
  const audit = result && result.label_audit;
  if (!audit) return false;
  node.append(el("h3", { text: "Label issues" }), el("p", {}, `${audit.flagged} of ${audit.rows_audited} rows look mislabelled (estimated label noise ${(100 * audit.estimated_noise_share).toFixed(1)}%).`));
  if (!audit.flagged) return true;
  await appendCsvTable(node, "label_issues.csv", [0, 5]);
  return true;
}

// The first 20 rows of one of the job's CSV files (most doubtful first), or the API's error.
async function appendCsvTable(node, file, numeric) {
  try {
    const response = await api(`/jobs/${encodeURIComponent(jobId)}/${file}`, { raw: true });
    const [header, ...rows] = parseCsv(await response.text()).filter((r) => r.length > 1);
    node.append(table(header.map((h) => h.replaceAll("_", " ")), rows.slice(0, 20), { caption: rows.length > 20 ? `The 20 most doubtful of ${rows.length}` : null, numeric }));
  } catch (err) {
    node.append(el("p", { class: "error", text: err.message }));
  }
}

async function renderDroppedRows(result) {
  const node = clear(document.getElementById("dropped-rows"));
  const cleaned = result && result.attempts && result.attempts.find((a) => a.rows_dropped > 0);
  if (!cleaned) return false;
  node.append(el("h3", { text: "Training rows left out" }), el("p", {}, `Attempt ${cleaned.number} trained without ${cleaned.rows_dropped} training rows whose labels the audit doubted (validation and test rows were kept as uploaded).`));
  await appendCsvTable(node, "dropped_rows.csv", [0, 4]);
  return true;
}

function renderDownloads(hasIssues, hasReport, hasDropped) {
  const node = clear(document.getElementById("downloads"));
  const files = [];
  if (hasReport) files.push(["report", "report.json"], ["learning_curves.png", "learning_curves.png"], ["confusion_matrix.png", "confusion_matrix.png"]);
  if (hasIssues) files.push(["label_issues.csv", "label_issues.csv"]);
  if (hasDropped) files.push(["dropped_rows.csv", "dropped_rows.csv"]);
  for (const [path, name] of files) {
    node.append(el("li", {}, el("button", { type: "button", onclick: () => download(`/jobs/${encodeURIComponent(jobId)}/${path}`, `${jobId}-${name}`).catch((err) => showError(document.getElementById("job-error"), err)), text: `Download ${name}` })));
  }
}

async function renderOutcome(job) {
  document.getElementById("outcome").hidden = false;
  let report = null;
  try {
    report = await api(`/jobs/${encodeURIComponent(jobId)}/report`);
  } catch (err) {
    // no report: the job ended before training did
  }
  renderFindings(report ? report.diagnosis : null, job);
  renderAttempts(job.result);
  if (report) renderMetrics(report.report);
  await renderPlots();
  const hasIssues = await renderLabelIssues(job.result);
  const hasDropped = await renderDroppedRows(job.result);
  renderDownloads(hasIssues, report !== null, hasDropped);
  if (job.status === "succeeded") {
    document.getElementById("verdict").append(" ", el("a", { href: `/console/models?model=${encodeURIComponent(job.model)}&version=${encodeURIComponent(job.result.version)}#try`, text: "Try this model" }));
  }
}

async function poll() {
  const error = document.getElementById("job-error");
  try {
    const job = await api(`/jobs/${encodeURIComponent(jobId)}`);
    showError(error, null);
    if (job.kind === "batch") {
      renderBatchStatus(job);
      if (FINAL.includes(job.status)) return renderBatchOutcome(job);
      setTimeout(poll, POLL_MS);
      return;
    }
    renderStatus(job);
    try {
      renderCurves(await api(`/jobs/${encodeURIComponent(jobId)}/curves`));
    } catch (err) {
      if (err.status !== 404) throw err; // 404: no evaluation yet
    }
    if (FINAL.includes(job.status)) return renderOutcome(job);
  } catch (err) {
    showError(error, err);
    if (err.status === 401 || err.status === 403 || err.status === 404) return;
  }
  setTimeout(poll, POLL_MS);
}

document.getElementById("cancel").addEventListener("click", async () => {
  if (!window.confirm("Cancel this job? A fine-tune exports nothing; a batch job keeps the rows scored so far, and a retry resumes after them.")) return;
  try {
    await api(`/jobs/${encodeURIComponent(jobId)}/cancel`, { method: "POST" });
  } catch (err) {
    showError(document.getElementById("job-error"), err);
  }
});
showIdentity();
poll();
