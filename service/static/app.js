// UP-ZeroIR web page: upload → follow the job (SSE + polling) → before/after + download.
// Plain JavaScript on the public API only: POST /restore, GET /jobs/{id}, /jobs/{id}/events,
// /jobs/{id}/result, the checkpoint previews and POST /jobs/{id}/cancel.
// When the service requires a bearer token (UPZIR_API_TOKENS), every one of those calls carries
// `Authorization: Bearer <token>`: the event stream is read with fetch (EventSource cannot send headers)
// and images are fetched as blobs and shown through object URLs (<img src> cannot send headers either).
"use strict";

const $ = (id) => document.getElementById(id);
const TERMINAL = new Set(["succeeded", "failed", "canceled"]);
const POLL_MS = 700;
const SVG = "http://www.w3.org/2000/svg";
const TOKEN_KEY = "upzir.apiToken";
const STREAM_RETRY_MS = 1000; // reconnect delay after a stream ends or fails (SSE `retry:` overrides it)
const STREAM_RETRY_MAX_MS = 30000;

let current = null; // {id, job, token, abort, timer, checkpoints: Map, previews: Map, inputUrl, done}
let objectUrls = []; // blob: URLs shown for the job on screen; revoked when the next job replaces it

// ---- the API token: optional, remembered in localStorage -----------------------------------------

function enteredToken() {
  return $("token").value.trim();
}

function loadToken() {
  try {
    $("token").value = localStorage.getItem(TOKEN_KEY) || "";
  } catch (_) { /* storage unavailable: the field still works for this page */ }
}

function saveToken() {
  try {
    const token = enteredToken();
    if (token) localStorage.setItem(TOKEN_KEY, token);
    else localStorage.removeItem(TOKEN_KEY);
  } catch (_) { /* storage unavailable */ }
}

function authHeaders(token, extra) {
  const headers = { ...(extra || {}) };
  if (token) headers.Authorization = `Bearer ${token}`;
  return headers;
}

// fetch with the bearer token (when there is one); a job is followed with the token that submitted it
function apiFetch(url, token, options) {
  const opts = { ...(options || {}) };
  opts.headers = authHeaders(token, opts.headers);
  return fetch(url, opts);
}

// The message for a 401: the token is missing, or not one the service knows.
async function tokenError(resp, token) {
  await resp.text().catch(() => ""); // the API's own words name the header, not the page's field
  $("token-box").classList.add("needed");
  return token
    ? "The API token was not accepted: check the one entered above."
    : "This service requires an API token: enter it above.";
}

function retryAfterMs(resp, fallbackMs) {
  const v = resp.headers.get("Retry-After");
  if (!v) return fallbackMs;
  const s = Number(v);
  const ms = Number.isFinite(s) ? s * 1000 : Date.parse(v) - Date.now();
  return Number.isFinite(ms) ? Math.min(Math.max(ms, 250), 5 * 60 * 1000) : fallbackMs;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---- images from protected endpoints: fetched with the token, shown as object URLs ---------------

function keepObjectUrl(blob) {
  const url = URL.createObjectURL(blob);
  objectUrls.push(url);
  return url;
}

function revokeObjectUrls() {
  objectUrls.forEach((u) => URL.revokeObjectURL(u));
  objectUrls = [];
}

async function fetchImage(mine, url) {
  const resp = await apiFetch(url, mine.token, { cache: "no-store" });
  if (!resp.ok) {
    const err = new Error(resp.status === 401 ? await tokenError(resp, mine.token) : await apiError(resp));
    err.status = resp.status;
    throw err;
  }
  const blob = await resp.blob();
  if (current !== mine) return null; // a newer job took the screen: do not keep this one
  return keepObjectUrl(blob);
}

// one fetch per checkpoint preview, shared by its table thumbnail and the large preview
function previewUrl(mine, cp) {
  if (!mine.previews.has(cp.index)) {
    const p = fetchImage(mine, cp.preview_url);
    p.catch(() => mine.previews.delete(cp.index)); // a later call may try again
    mine.previews.set(cp.index, p);
  }
  return mine.previews.get(cp.index);
}

// ---- errors: shown as the API words them ---------------------------------------------------------

async function apiError(resp) {
  let detail = null;
  try {
    const body = await resp.json();
    detail = body && body.detail;
  } catch (_) { /* not JSON */ }
  if (Array.isArray(detail)) detail = detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
  if (detail && typeof detail !== "string") detail = JSON.stringify(detail);
  return detail || `HTTP ${resp.status} ${resp.statusText}`.trim();
}

function showError(message, status) {
  const el = $("error");
  el.textContent = message;
  el.dataset.status = status == null ? "" : String(status);
  el.hidden = !message;
}

// ---- picking a file: input or drag and drop ------------------------------------------------------

function fileChosen() {
  const file = $("file").files[0];
  $("submit").disabled = !file;
  const thumb = $("thumb");
  if (!file) { thumb.hidden = true; return; }
  if (thumb.src) URL.revokeObjectURL(thumb.src);
  thumb.src = URL.createObjectURL(file);
  thumb.hidden = false;
  $("drop-text").innerHTML = "";
  const name = document.createElement("strong");
  name.textContent = file.name;
  $("drop-text").append(name, document.createElement("br"));
  const hint = document.createElement("small");
  hint.textContent = `${(file.size / 1024).toFixed(1)} KiB · drop or click to change`;
  $("drop-text").append(hint);
}

function setupDrop() {
  const drop = $("drop");
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => {
    e.preventDefault();
    drop.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, () => drop.classList.remove("over")));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    if (e.dataTransfer && e.dataTransfer.files.length) {
      $("file").files = e.dataTransfer.files;
      fileChosen();
    }
  });
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("file").click(); }
  });
  $("file").addEventListener("change", fileChosen);
}

// ---- submitting ----------------------------------------------------------------------------------

async function submit(e) {
  e.preventDefault();
  const file = $("file").files[0];
  if (!file) return;
  stopFollowing();
  showError("");
  const form = new FormData();
  form.append("image", file, file.name);
  const fields = new FormData($("upload"));
  for (const [k, v] of fields.entries()) {
    if (k !== "image" && typeof v === "string" && v.trim() !== "") form.append(k, v.trim());
  }
  $("submit").disabled = true;
  const token = enteredToken();
  let resp;
  try {
    resp = await apiFetch("/restore", token, { method: "POST", body: form });
  } catch (err) {
    showError(`the API could not be reached (${err.message})`);
    $("submit").disabled = false;
    return;
  }
  $("submit").disabled = false;
  if (resp.status === 401) {
    showError(await tokenError(resp, token), 401);
    $("token").focus();
    return;
  }
  $("token-box").classList.remove("needed");
  if (!resp.ok) {
    const msg = await apiError(resp);
    const retry = resp.headers.get("Retry-After");
    showError(retry ? `${msg} (retry in ${retry} s)` : msg, resp.status);
    return;
  }
  const job = await resp.json();
  follow(job, URL.createObjectURL(file), token);
}

// ---- following a job -----------------------------------------------------------------------------

function stopFollowing() {
  if (!current) return;
  current.abort.abort();
  clearTimeout(current.timer);
  current = null;
}

function follow(job, inputUrl, token) {
  revokeObjectUrls();
  objectUrls.push(inputUrl);
  current = {
    id: job.id, job, token, abort: new AbortController(), timer: null,
    checkpoints: new Map(), previews: new Map(), inputUrl, done: false,
  };
  $("job").hidden = false;
  $("result").hidden = true;
  $("checkpoints").tBodies[0].innerHTML = "";
  $("preview").hidden = true;
  $("preview").removeAttribute("src");
  $("preview-caption").textContent = "current estimate appears at the first checkpoint";
  $("job").dataset.jobId = job.id;
  render(job);
  drawChart();

  const mine = current;
  streamEvents(mine, job.urls.events, {
    status(data) {
      mine.job = { ...mine.job, status: data.status, error: data.error || mine.job.error };
      render(mine.job);
    },
    checkpoint(data) { addCheckpoint(data); },
    completed(data) { finish(data); },
  });
  poll(mine);
}

// A job lost its access (401): say so once and stop following it.
async function unauthorized(mine, resp) {
  if (current !== mine) return;
  showError(await tokenError(resp, mine.token), 401);
  stopFollowing();
}

// ---- server-sent events over fetch ---------------------------------------------------------------
// The job's event stream, read with fetch so it can carry the Authorization header. Events are parsed as
// EventSource does (`event:`/`data:`/`id:`/`retry:` fields, dispatch on a blank line, `:` lines are
// comments such as the keep-alive pings). A stream that ends before `completed` (the server closes
// streams after a maximum duration, or the connection broke) is reopened with Last-Event-ID, so nothing
// is missed or repeated; 429/503 answers are retried after their Retry-After. Polling keeps the page
// current meanwhile.

async function streamEvents(mine, url, handlers) {
  const signal = mine.abort.signal;
  const state = { lastId: "", retryMs: STREAM_RETRY_MS, completed: false };
  let failures = 0;
  while (current === mine && !mine.done && !signal.aborted) {
    let waitMs;
    try {
      const headers = { Accept: "text/event-stream" };
      if (state.lastId) headers["Last-Event-ID"] = state.lastId;
      const resp = await apiFetch(url, mine.token, { headers, cache: "no-store", signal });
      if (resp.status === 401) { await unauthorized(mine, resp); return; }
      if (resp.status === 404) return; // unknown or expired: polling reports it
      if (resp.status === 429 || resp.status === 503) {
        waitMs = retryAfterMs(resp, state.retryMs);
      } else if (!resp.ok || !resp.body) {
        failures += 1;
      } else {
        await readEvents(resp.body, state, (type, data) => {
          if (current !== mine || mine.done) return;
          const handler = handlers[type];
          if (!handler) return;
          let parsed;
          try { parsed = JSON.parse(data); } catch (_) { return; }
          handler(parsed);
        }, signal);
        if (state.completed) return;
        failures = 0; // ended cleanly (the server's maximum duration): reconnect after the retry delay
      }
    } catch (_) {
      if (signal.aborted) return;
      failures += 1; // network error or a broken stream: try again
    }
    if (waitMs == null) {
      waitMs = failures ? Math.min(state.retryMs * 2 ** (failures - 1), STREAM_RETRY_MAX_MS) : state.retryMs;
    }
    await sleep(waitMs);
  }
}

// Reads one response body to its end (or its `completed` event); returns how many events it dispatched.
async function readEvents(body, state, dispatch, signal) {
  const reader = body.getReader();
  const decoder = new TextDecoder("utf-8");
  const onAbort = () => reader.cancel().catch(() => {});
  signal.addEventListener("abort", onAbort);
  let buf = "";
  let type = "", data = [], count = 0;
  const line = (text) => {
    if (text === "") { // blank line: dispatch the event gathered so far
      if (data.length) {
        count += 1;
        const t = type || "message";
        if (t === "completed") state.completed = true;
        dispatch(t, data.join("\n"));
      }
      type = ""; data = [];
      return;
    }
    if (text[0] === ":") return; // a comment: keep-alive ping
    const colon = text.indexOf(":");
    const field = colon < 0 ? text : text.slice(0, colon);
    let value = colon < 0 ? "" : text.slice(colon + 1);
    if (value[0] === " ") value = value.slice(1);
    if (field === "event") type = value;
    else if (field === "data") data.push(value);
    else if (field === "id") { if (!value.includes("\0")) state.lastId = value; }
    else if (field === "retry") { if (/^\d+$/.test(value)) state.retryMs = Number(value); }
  };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      buf += done ? decoder.decode() : decoder.decode(value, { stream: true });
      let m;
      const eol = /\r\n|\r|\n/g;
      let start = 0;
      while ((m = eol.exec(buf)) !== null) {
        // a lone CR at the end of what arrived may be the first half of CRLF: wait for more
        if (!done && m[0] === "\r" && m.index === buf.length - 1) break;
        line(buf.slice(start, m.index));
        start = eol.lastIndex;
        if (state.completed) return count;
      }
      buf = buf.slice(start);
      if (done) return count; // an event without its blank line is dropped, as EventSource does
    }
  } finally {
    signal.removeEventListener("abort", onAbort);
    try { reader.releaseLock(); } catch (_) { /* already released */ }
  }
}

async function poll(mine) {
  if (current !== mine) return;
  try {
    const resp = await apiFetch(`/jobs/${encodeURIComponent(mine.id)}`, mine.token, { cache: "no-store" });
    if (current !== mine) return;
    if (resp.status === 401) {
      await unauthorized(mine, resp);
      return;
    }
    if (resp.ok) {
      const job = await resp.json();
      mine.job = job;
      (job.progress.checkpoints || []).forEach(addCheckpoint);
      if (TERMINAL.has(job.status)) { finish(job); return; }
      render(job);
    } else if (resp.status === 404) {
      showError(await apiError(resp), 404);
      return;
    }
  } catch (_) { /* transient: try again */ }
  mine.timer = setTimeout(() => poll(mine), POLL_MS);
}

function render(job) {
  const status = $("status");
  status.textContent = job.status;
  status.className = `badge s-${job.status}`;
  $("job").dataset.status = job.status;
  $("queue").textContent = job.status === "queued" && job.queue_position != null
    ? `position ${job.queue_position + 1} in the queue` : "";
  const p = { ...(job.progress || {}) };
  const cp = latestCheckpoint();
  // an SSE checkpoint can be ahead of the last poll: show whichever is further along
  if (cp && (p.round == null || cp.round > p.round || (cp.round === p.round && cp.step > (p.step || 0)))) {
    Object.assign(p, { round: cp.round, step: cp.step, total_steps: cp.total_steps, last_score: cp.score });
  }
  const parts = [];
  if (p.round != null) parts.push(`round ${p.round}`);
  if (p.step != null) parts.push(`step ${p.step}${p.total_steps ? ` / ${p.total_steps}` : ""}`);
  if (p.last_score != null) parts.push(`score ${p.last_score.toFixed(3)}`);
  $("position").textContent = parts.join(" · ");
  const bar = $("bar");
  if (p.total_steps) {
    bar.max = p.total_steps;
    bar.value = TERMINAL.has(job.status) ? p.total_steps : (p.step || 0);
  } else if (job.status === "queued") {
    bar.removeAttribute("value"); // indeterminate while waiting
  }
  $("cancel").hidden = TERMINAL.has(job.status);
}

function latestCheckpoint() {
  if (!current || !current.checkpoints.size) return null;
  return current.checkpoints.get(Math.max(...current.checkpoints.keys()));
}

function addCheckpoint(cp) {
  if (!current || current.checkpoints.has(cp.index)) return;
  current.checkpoints.set(cp.index, cp);
  const row = document.createElement("tr");
  row.className = `cp d-${cp.decision}`;
  row.dataset.index = cp.index;
  const cells = [
    cp.index,
    cp.round,
    `${cp.step}${cp.total_steps ? ` / ${cp.total_steps}` : ""}`,
    cp.score == null ? "–" : cp.score.toFixed(4),
  ];
  for (const text of cells) {
    const td = document.createElement("td");
    td.textContent = text;
    row.append(td);
  }
  const dec = document.createElement("td");
  const tag = document.createElement("span");
  tag.className = `decision d-${cp.decision}`;
  tag.textContent = cp.decision;
  dec.append(tag);
  row.append(dec);
  const cell = document.createElement("td");
  const mine = current;
  if (cp.preview_url) {
    const img = document.createElement("img");
    img.className = "thumb";
    img.alt = `estimate at checkpoint ${cp.index}`;
    cell.append(img);
    previewUrl(mine, cp).then((url) => { if (url && current === mine) img.src = url; }).catch(() => {});
  }
  row.append(cell);
  // keep rows in index order even if polling and SSE interleave
  const rows = [...$("checkpoints").tBodies[0].rows];
  const after = rows.find((r) => Number(r.dataset.index) > cp.index);
  $("checkpoints").tBodies[0].insertBefore(row, after || null);

  const latest = Math.max(...current.checkpoints.keys());
  if (cp.index === latest && cp.preview_url) {
    previewUrl(mine, cp).then((url) => {
      // a later checkpoint may have arrived while this one loaded: only the latest is shown
      if (!url || current !== mine || cp.index !== Math.max(...mine.checkpoints.keys())) return;
      $("preview").src = url;
      $("preview").hidden = false;
      $("preview-caption").textContent =
        `estimate at checkpoint ${cp.index} (round ${cp.round}, step ${cp.step}) · ${cp.decision}`;
    }).catch((err) => { if (err.status === 401) showError(err.message, 401); });
  }
  drawChart();
  render(current.job);
}

// ---- the DQR score curve (inline SVG) ------------------------------------------------------------

function svgEl(name, attrs, text) {
  const el = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text != null) el.textContent = text;
  return el;
}

function drawChart() {
  const svg = $("chart");
  svg.innerHTML = "";
  const W = 560, H = 240, R = 12, T = 12, B = 32;
  let L = 48; // widened below to fit the tick labels
  const cps = current ? [...current.checkpoints.values()].sort((a, b) => a.index - b.index) : [];
  const xOf = (cp) => (cp.steps_run != null ? cp.steps_run : cp.index + 1);
  const scored = cps.filter((c) => c.score != null);
  const xs = cps.map(xOf);
  const ys = scored.map((c) => c.score);
  const last = cps.length ? cps[cps.length - 1] : null;
  const xmin = 0, xmax = Math.max(1, ...xs, last && last.round === 1 && last.total_steps ? last.total_steps : 0);
  let ymin = ys.length ? Math.min(...ys) : 0, ymax = ys.length ? Math.max(...ys) : 1;
  if (ymax - ymin < 1e-6) { ymin -= 0.5; ymax += 0.5; }
  const pad = (ymax - ymin) * 0.1;
  ymin -= pad; ymax += pad;
  const decimals = Math.min(6, Math.max(2, Math.ceil(-Math.log10((ymax - ymin) / 4)) + 1));
  const longest = Math.max(ymin.toFixed(decimals).length, ymax.toFixed(decimals).length);
  L = Math.max(L, 12 + 6.5 * longest);
  const X = (x) => L + ((x - xmin) / (xmax - xmin)) * (W - L - R);
  const Y = (y) => H - B - ((y - ymin) / (ymax - ymin)) * (H - T - B);

  svg.append(svgEl("rect", { x: L, y: T, width: W - L - R, height: H - T - B, class: "plot" }));
  for (let i = 0; i <= 4; i++) {
    const v = ymin + ((ymax - ymin) * i) / 4;
    svg.append(svgEl("line", { x1: L, x2: W - R, y1: Y(v), y2: Y(v), class: "grid" }));
    svg.append(svgEl("text", { x: L - 6, y: Y(v) + 4, class: "tick", "text-anchor": "end" }, v.toFixed(decimals)));
  }
  svg.append(svgEl("text", { x: (L + W - R) / 2, y: H - 6, class: "axis", "text-anchor": "middle" },
    "steps run"));
  svg.append(svgEl("text", { x: L, y: H - B + 16, class: "tick", "text-anchor": "middle" }, "0"));
  svg.append(svgEl("text", { x: W - R, y: H - B + 16, class: "tick", "text-anchor": "end" }, String(xmax)));
  if (!cps.length) {
    svg.append(svgEl("text", { x: (L + W - R) / 2, y: (T + H - B) / 2, class: "empty", "text-anchor": "middle" },
      "waiting for the first checkpoint…"));
    return;
  }
  // round boundaries: a dashed line where DQR re-noised
  for (const c of cps.filter((c) => c.decision === "renoise")) {
    svg.append(svgEl("line", { x1: X(xOf(c)), x2: X(xOf(c)), y1: T, y2: H - B, class: "round" }));
  }
  if (scored.length > 1) {
    const d = scored.map((c, i) => `${i ? "L" : "M"}${X(xOf(c)).toFixed(1)},${Y(c.score).toFixed(1)}`).join(" ");
    svg.append(svgEl("path", { d, class: "curve" }));
  }
  for (const c of cps) {
    const y = c.score == null ? H - B : Y(c.score);
    const g = svgEl("g", { class: `point d-${c.decision}`, "data-index": c.index });
    g.append(svgEl("circle", { cx: X(xOf(c)), cy: y, r: c.decision === "exit" || c.decision === "renoise" ? 7 : 5 }));
    g.append(svgEl("title", {}, `#${c.index} round ${c.round} step ${c.step}: ` +
      `${c.score == null ? "not scored" : c.score.toFixed(3)} → ${c.decision}`));
    svg.append(g);
    if (c.decision !== "continue" && c.decision !== "refine") {
      svg.append(svgEl("text", { x: X(xOf(c)), y: y - 11, class: "label", "text-anchor": "middle" }, c.decision));
    }
  }
}

// ---- the end: before/after and download ----------------------------------------------------------

async function finish(job) {
  if (!current || current.done) return;
  const mine = current;
  mine.done = true;
  mine.job = job;
  mine.abort.abort(); // the event stream, if still open
  clearTimeout(mine.timer);
  (job.progress.checkpoints || []).forEach(addCheckpoint);
  render(job);
  if (job.status === "succeeded") {
    let resultUrl;
    try {
      resultUrl = await fetchImage(mine, job.urls.result);
    } catch (err) {
      if (current === mine) showError(`the result could not be loaded: ${err.message}`, err.status);
      return;
    }
    if (!resultUrl || current !== mine) return;
    $("before").src = mine.inputUrl;
    $("after").src = resultUrl;
    $("download").href = resultUrl; // the fetched PNG itself: a link cannot send the token
    $("download").dataset.url = job.urls.result;
    $("download").setAttribute("download", `${job.id}.png`);
    const m = job.metrics || {};
    const bits = [];
    if (m.steps_run != null) bits.push(`${m.steps_run} steps`);
    if (m.rounds != null) bits.push(`${m.rounds} round${m.rounds === 1 ? "" : "s"}`);
    if (job.early_exit) bits.push("early exit");
    if (job.progress.last_score != null) bits.push(`final score ${job.progress.last_score.toFixed(3)}`);
    if (m.run_s != null) bits.push(`${m.run_s.toFixed(1)} s`);
    $("summary").textContent = bits.join(" · ");
    $("result").hidden = false;
    setSplit($("slider").value);
  } else {
    showError(job.error || `the job ended: ${job.status}`);
  }
}

function setSplit(v) {
  $("after").style.clipPath = `inset(0 0 0 ${v}%)`;
  $("compare").style.setProperty("--split", `${v}%`);
}

async function cancel() {
  if (!current) return;
  const mine = current;
  let resp;
  try {
    resp = await apiFetch(`/jobs/${encodeURIComponent(mine.id)}/cancel`, mine.token, { method: "POST" });
  } catch (err) {
    showError(`the API could not be reached (${err.message})`);
    return;
  }
  if (current !== mine) return;
  if (resp.status === 401) showError(await tokenError(resp, mine.token), 401);
  else if (!resp.ok) showError(await apiError(resp), resp.status);
  else render(await resp.json());
}

document.addEventListener("DOMContentLoaded", () => {
  loadToken();
  $("token").addEventListener("input", () => {
    saveToken();
    $("token-box").classList.remove("needed");
  });
  setupDrop();
  $("upload").addEventListener("submit", submit);
  $("slider").addEventListener("input", (e) => setSplit(e.target.value));
  $("cancel").addEventListener("click", cancel);
  setSplit($("slider").value);
  drawChart();
});
