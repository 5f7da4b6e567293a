// Shared by every console page: the token, calls to the JSON API, and building the DOM safely.
// Everything shown comes from users (labels, texts, file and model names), so nothing is ever
// parsed as HTML here: elements are created with createElement and filled with textContent.

const TOKEN_KEY = "fitgate.token";

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

export class ApiError extends Error {
  constructor(message, status, type) {
    super(message);
    this.status = status;
    this.type = type;
  }
}

/** Call the API with the session's token; resolve to JSON (or the Response with raw), reject with the API's message. */
export async function api(path, { method = "GET", json, form, raw = false } = {}) {
  const headers = {};
  if (token()) headers.authorization = `Bearer ${token()}`;
  let body;
  if (json !== undefined) {
    headers["content-type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = form;
  }
  let response;
  try {
    response = await fetch(path, { method, headers, body });
  } catch (err) {
    throw new ApiError("the server cannot be reached; check that fitgate is running, then try again", 0, "network");
  }
  if (!response.ok) {
    let message = `the server answered ${response.status}`;
    let type = "error";
    try {
      const parsed = await response.json();
      if (parsed && parsed.error) {
        message = parsed.error.message;
        type = parsed.error.type;
      }
    } catch (err) {
      // not JSON: keep the generic message
    }
    throw new ApiError(message, response.status, type);
  }
  return raw ? response : response.json();
}

/** el("td", {class: "num"}, "text", child): attributes set as attributes, children as text or nodes. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "text") node.textContent = String(value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function clear(node) {
  node.replaceChildren();
  return node;
}

export function showError(node, err) {
  node.textContent = err ? (err instanceof ApiError ? err.message : String(err.message || err)) : "";
}

export function table(headers, rows, { caption, numeric = [] } = {}) {
  return el(
    "div",
    { class: "scroll" },
    el(
      "table",
      {},
      caption ? el("caption", { text: caption }) : null,
      el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col", text: h })))),
      el(
        "tbody",
        {},
        rows.map((row) =>
          el("tr", {}, row.map((cell, i) => el("td", { class: numeric.includes(i) ? "num" : null }, cell))),
        ),
      ),
    ),
  );
}

export function fmt(value, digits = 3) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toFixed(digits);
  return String(value);
}

export function when(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleString() : "–";
}

/** Fetch a file with the token and let the browser save it (a plain link cannot send the bearer header). */
export async function download(path, fileName) {
  const response = await api(path, { raw: true });
  const url = URL.createObjectURL(await response.blob());
  const link = el("a", { href: url, download: fileName });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

/** An image the API serves behind the token, as a blob URL. */
export async function imageFrom(path, alt) {
  const response = await api(path, { raw: true });
  return el("img", { src: URL.createObjectURL(await response.blob()), alt });
}

/** Who is signed in, in the page header; resolves to the caller (or null when the token is refused). */
export async function showIdentity() {
  const node = document.getElementById("identity");
  try {
    const me = await api("/whoami");
    if (me.mode === "loopback") {
      node.textContent = me.roles.includes("finetune")
        ? "No tokens configured: loopback mode (this machine only)"
        : "No tokens configured: fine-tuning is accepted from the server's own machine only";
    } else {
      const predictions = me.predict_needs_token
        ? "predictions need a token"
        : "predictions open to callers without a token (FITGATE_PREDICT_REQUIRES_TOKEN=false)";
      node.textContent = `Signed in: team ${me.team} (${me.roles.join(", ")}); ${predictions}`;
    }
    return me;
  } catch (err) {
    node.textContent = token() ? `Not signed in: ${err.message}` : "Not signed in";
    return null;
  }
}

/** A small RFC 4180 CSV reader for the label issues file (quoted fields, doubled quotes, newlines inside quotes). */
export function parseCsv(text) {
  const rows = [];
  let row = [];
  let field = "";
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') {
        field += '"';
        i++;
      } else if (c === '"') quoted = false;
      else field += c;
    } else if (c === '"') quoted = true;
    else if (c === ",") {
      row.push(field);
      field = "";
    } else if (c === "\n" || c === "\r") {
      if (c === "\r" && text[i + 1] === "\n") i++;
      row.push(field);
      rows.push(row);
      row = [];
      field = "";
    } else field += c;
  }
  if (field || row.length) {
    row.push(field);
    rows.push(row);
  }
  return rows;
}

const percent = (share) => `${(100 * share).toFixed(1)}%`;

/** The base model a job trains on, why, and how each candidate read the upload (training/base_models.py). */
export function baseModelSection(choice) {
  const how = choice.chosen_by === "request" ? "as requested" : "chosen automatically";
  const rows = choice.readings.map((r) => [
    r.model,
    r.readable ? "yes" : "no",
    percent(r.unknown_share),
    percent(r.mostly_unknown_share),
    r.pieces_per_word ? r.pieces_per_word.toFixed(2) : "–",
    percent(r.single_letter_share),
    Object.entries(r.scripts).slice(0, 3).map(([name, share]) => `${name} ${percent(share)}`).join(", ") || "–",
  ]);
  const chosen = choice.readings.find((r) => r.model === choice.name) || choice.readings[0];
  const example = chosen && chosen.examples.length ? chosen.examples[0] : null;
  return el(
    "section",
    { id: "base-model", "aria-label": "Base model" },
    el("p", {}, "Base model ", el("strong", { id: "base-model-name", text: choice.name }), ` (${how}): `, el("span", { id: "base-model-reason", text: choice.reason })),
    table(["model", "reads it", "unknown pieces", "texts mostly unknown", "pieces per word", "single letters", "scripts"], rows, { caption: "How each base model reads this text", numeric: [2, 3, 4, 5] }),
    example ? el("p", { class: "hint", id: "base-model-example" }, "As the model sees a text: ", el("code", { text: example.pieces.join(" ") })) : null,
  );
}
