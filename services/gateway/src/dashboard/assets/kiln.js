// Kiln's dashboard script: plain JavaScript, no build step, no library.
// Pages are rendered by the gateway; this keeps them live from the REST
// API's Server-Sent Events (EventSource resumes with Last-Event-ID by
// itself) and sends the user's actions with the session's CSRF secret.
// Nothing here polls faster than every 5 s.
"use strict";

const body = document.body;
const csrf = () => document.querySelector('meta[name="csrf-token"]')?.content || "";
// Measurements the browser test reads (and prints): never asserted.
window.kiln = { events: 0, handledMs: 0 };

async function api(method, path, json) {
  const headers = { "x-csrf-token": csrf() };
  if (json !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: json === undefined ? undefined : JSON.stringify(json),
  });
  const text = await response.text();
  const data = text ? JSON.parse(text) : {};
  if (!response.ok) throw new Error(data.error ? data.error.message : response.statusText);
  return data;
}
const getJSON = (path) => api("GET", path);

// Pages a list is read to at most: lists are paged (AIP-158; tasks come
// 1,000 a page, outputs 10,000), so a whole job's list is its pages joined.
const MAX_PAGES = 1000;

// Every item of a paged list (`key`: its array's field), following
// nextPageToken until the last page.
async function getAllPages(path, key) {
  const items = [];
  let token = "";
  for (let page = 0; page < MAX_PAGES; page++) {
    const list = await getJSON(token ? path + (path.includes("?") ? "&" : "?") + "pageToken=" + encodeURIComponent(token) : path);
    for (const item of list[key] || []) items.push(item);
    token = list.nextPageToken || "";
    if (!token) break;
  }
  return { [key]: items };
}

function showError(message) {
  const box = document.getElementById("action-error");
  if (!box) return;
  box.textContent = message;
  box.hidden = !message;
}

const STATE_NAMES = ["unknown", "pending", "running", "succeeded", "failed", "cancelled", "paused"];
const stateName = (s) => typeof s === "string" ? s.replace("JOB_STATE_", "").toLowerCase() : STATE_NAMES[s] || "unknown";
const taskState = (s) => typeof s === "string" ? s.replace("TASK_STATE_", "").toLowerCase() : "pending";
const FINAL = new Set(["succeeded", "failed", "cancelled"]);

function duration(s) {
  s = Math.round(s);
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
  return Math.floor(s / 3600) + "h" + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
}
const etaText = (job) => job.eta ? "~" + duration(job.eta.secondsLeft || 0) + " ± " + duration(job.eta.plusMinusSeconds || 0) : "";

// Applies events in batches, once per animation frame, so a burst of
// thousands costs one layout.
function batched(apply) {
  let queue = [];
  let scheduled = false;
  return (item) => {
    queue.push(item);
    if (scheduled) return;
    scheduled = true;
    requestAnimationFrame(() => {
      const started = performance.now();
      const items = queue;
      queue = [];
      scheduled = false;
      for (const i of items) apply(i);
      window.kiln.handledMs += performance.now() - started;
    });
  };
}

function listen(url, handlers) {
  const source = new EventSource(url);
  for (const [kind, handle] of Object.entries(handlers)) {
    source.addEventListener(kind, (e) => {
      window.kiln.events += 1;
      handle(JSON.parse(e.data));
    });
  }
  return source;
}

document.getElementById("logout")?.addEventListener("click", async () => {
  try { await api("POST", "/logout"); } finally { location.href = "/login"; }
});

// ---------------------------------------------------------------- jobs list
function jobsPage() {
  const rows = new Map();
  for (const row of document.querySelectorAll("#jobs tbody tr")) rows.set(row.dataset.job, row);
  const unseen = new Set();
  const update = batched((job) => {
    const row = rows.get(job.id);
    if (!row) {
      if (body.dataset.firstPage === "true" && !FINAL.has(stateName(job.state))) {
        unseen.add(job.id);
        const notice = document.getElementById("new-jobs");
        notice.hidden = false;
        notice.firstChild.textContent = unseen.size + " new job(s): show them";
      }
      return;
    }
    const state = stateName(job.state);
    const badge = row.querySelector(".badge");
    badge.className = "badge s-" + state;
    badge.textContent = state;
    const total = Math.max(job.tasksTotal || 0, 1);
    row.querySelector("progress").max = total;
    row.querySelector("progress").value = job.tasksSucceeded || 0;
    row.querySelector(".count").textContent = (job.tasksSucceeded || 0) + "/" + total;
    row.querySelector(".eta").textContent = etaText(job);
    row.querySelector(".priority").textContent = job.priority;
  });
  window.kiln.inject = (job) => update(job);
  listen("/v1/events", { job_changed: (e) => update(e.jobChanged) });
  window.kiln.ready = performance.now();
}

// ---------------------------------------------------------------- one job
function jobPage() {
  const jobId = body.dataset.job;
  const grid = document.getElementById("grid");
  const other = document.getElementById("other-tasks");
  const cellsByTask = new Map();
  const tasks = new Map();
  const thumbByFrame = new Map();
  let selected = null;
  let logAbort = null;
  const RANK = { pending: 0, waiting_retry: 1, dispatched: 2, running: 3, succeeded: 4, failed: 4, cancelled: 4 };

  const legend = document.getElementById("legend");
  for (const s of ["pending", "dispatched", "running", "succeeded", "failed", "waiting_retry"]) {
    const span = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.className = "cell t-" + s;
    span.append(swatch, s.replace("_", " "));
    legend.append(span);
  }

  function paint(taskId) {
    const task = tasks.get(taskId);
    for (const cell of cellsByTask.get(taskId) || []) cell.className = "cell t-" + task.state + (cell === selected ? " selected" : "");
  }

  // A change applies only if it is newer than what the cell shows: events
  // buffered while the task list loaded may be older than it.
  function applyChange(change) {
    const task = tasks.get(change.taskId);
    if (!task) return;
    const state = taskState(change.state);
    const attempt = change.attempt || task.attempts;
    const newer = attempt > task.attempts || (attempt === task.attempts && (RANK[state] >= RANK[task.state] || state === "pending"));
    if (!newer) return;
    task.attempts = attempt;
    task.state = state;
    if (change.workerId) task.workerId = change.workerId;
    paint(change.taskId);
    if (selected && selected.dataset.task === change.taskId) showTask(change.taskId, false);
  }

  function thumbnailFor(cell) {
    const path = thumbByFrame.get(cell.dataset.task + "/" + cell.dataset.frame);
    if (!path || cell.firstChild) return;
    const img = document.createElement("img");
    img.loading = "lazy";
    img.alt = "frame " + cell.dataset.frame;
    img.src = "/v1/jobs/" + jobId + "/outputs/" + path.split("/").map(encodeURIComponent).join("/");
    cell.append(img);
  }

  const showThumbs = document.getElementById("show-thumbs");
  showThumbs.addEventListener("change", () => {
    grid.classList.toggle("thumbs", showThumbs.checked);
    if (showThumbs.checked) for (const cell of grid.children) thumbnailFor(cell);
    else for (const cell of grid.children) cell.replaceChildren();
  });

  const outputs = new Map();
  function noteOutput(output) {
    outputs.set(output.path, output);
    if (output.kind === "thumbnail") {
      const framePath = output.path.replace(/^thumbnails\//, "");
      const frameOutput = outputs.get(framePath);
      const task = tasks.get(output.taskId);
      if (task && task.frames.length) {
        // The task's frame files in path order are its frames in order.
        const own = [...outputs.values()].filter((o) => o.taskId === output.taskId && !o.kind && /\.(png|jpe?g|exr|tiff?)$/i.test(o.path))
          .map((o) => o.path).sort();
        const index = own.indexOf(framePath);
        const frame = index >= 0 ? task.frames.slice().sort((a, b) => a - b)[index] : undefined;
        if (frame !== undefined) {
          thumbByFrame.set(output.taskId + "/" + frame, output.path);
          if (showThumbs.checked) for (const cell of cellsByTask.get(output.taskId) || []) if (Number(cell.dataset.frame) === frame) thumbnailFor(cell);
        }
      }
      void frameOutput;
      showSheet();
    }
    if (!output.kind && /\.(mp4|mov)$/i.test(output.path)) showVideo(output.path);
  }

  function showVideo(path) {
    const box = document.getElementById("video-box");
    if (box.querySelector("video")) return;
    const h = document.createElement("h2");
    h.textContent = "Video";
    const video = document.createElement("video");
    video.id = "video";
    video.controls = true;
    video.preload = "metadata";
    video.src = "/v1/jobs/" + jobId + "/outputs/" + path.split("/").map(encodeURIComponent).join("/");
    box.append(h, video);
  }

  let sheetShown = false;
  function showSheet() {
    if (sheetShown || !FINAL.has(jobState)) return;
    sheetShown = true;
    const box = document.getElementById("sheet-box");
    const h = document.createElement("h2");
    h.textContent = "Contact sheet";
    const img = document.createElement("img");
    img.id = "contact-sheet";
    img.alt = "contact sheet";
    img.src = "/v1/jobs/" + jobId + "/contact-sheet";
    box.append(h, img);
  }

  let jobState = body.dataset.final === "true" ? "succeeded" : "running";
  function updateHeader(job) {
    jobState = stateName(job.state);
    const badge = document.getElementById("job-state");
    badge.className = "badge s-" + jobState;
    badge.textContent = jobState;
    const total = Math.max(job.tasksTotal || 0, 1);
    const bar = document.getElementById("job-progress");
    bar.max = total;
    bar.value = job.tasksSucceeded || 0;
    document.getElementById("job-count").textContent = (job.tasksSucceeded || 0) + "/" + total + " tasks";
    document.getElementById("job-failed").textContent = job.tasksFailed || 0;
    document.getElementById("job-eta").textContent = etaText(job);
    document.getElementById("job-priority").textContent = job.priority;
    document.getElementById("job-message").textContent = job.message || "";
    if (FINAL.has(jobState)) {
      showSheetIfThumbs();
      document.getElementById("waiting").hidden = true;
    } else refreshWaiting();
  }
  function showSheetIfThumbs() {
    if ([...outputs.values()].some((o) => o.kind === "thumbnail")) showSheet();
  }

  // Why tasks wait: asked again at most every 5 s while the job changes.
  let waitingAsked = 0;
  let waitingTimer = null;
  function refreshWaiting() {
    if (FINAL.has(jobState)) return;
    const due = waitingAsked + 5000 - Date.now();
    if (due > 0) {
      if (!waitingTimer) waitingTimer = setTimeout(() => { waitingTimer = null; refreshWaiting(); }, due);
      return;
    }
    waitingAsked = Date.now();
    getJSON("/v1/jobs/" + jobId + "/waiting").then((answer) => {
      const section = document.getElementById("waiting");
      const list = document.getElementById("waiting-reasons");
      list.replaceChildren();
      for (const task of answer.tasks || []) {
        const item = document.createElement("li");
        const reasons = (task.reasons || []).map((r) => r.message).join("; ");
        const more = task.similarTasks ? " (and " + task.similarTasks + " more like it)" : "";
        item.textContent = task.stepName + " #" + (task.index || 0) + more + ": " + reasons;
        item.dataset.cause = (task.reasons || []).map((r) => r.cause).join(" ");
        list.append(item);
      }
      section.hidden = list.children.length === 0;
    }).catch(() => {});
  }

  async function showTask(taskId, withLog = true) {
    const history = await getJSON("/v1/jobs/" + jobId + "/tasks/" + taskId);
    const task = history.task;
    const panel = document.getElementById("task-panel");
    panel.hidden = false;
    document.getElementById("task-title").textContent =
      task.stepName + " #" + (task.index || 0) + (task.frames?.length ? " · frames " + task.frames[0] + "–" + task.frames[task.frames.length - 1] : "") +
      " · " + taskState(task.state) + (task.message ? " · " + task.message : "");
    const table = document.getElementById("attempts");
    table.replaceChildren();
    const head = table.insertRow();
    for (const h of ["Attempt", "Worker", "Dispatched", "Started", "Ended", "Took", "State", "Message"]) {
      const th = document.createElement("th");
      th.textContent = h;
      head.append(th);
    }
    const time = (t) => t ? new Date(t).toLocaleTimeString() : "";
    for (const a of history.attempts || []) {
      const row = table.insertRow();
      const took = a.startedAt && a.endedAt ? duration((new Date(a.endedAt) - new Date(a.startedAt)) / 1000) : "";
      for (const v of [a.attempt, a.workerId, time(a.dispatchedAt), time(a.startedAt), time(a.endedAt), took, taskState(a.state), a.message || ""]) {
        row.insertCell().textContent = v;
      }
    }
    if (withLog) followLog(taskId, taskState(task.state), task.attempts);
  }

  async function followLog(taskId, state, attempts) {
    if (logAbort) logAbort.abort();
    const pre = document.getElementById("task-log");
    pre.textContent = "";
    pre.dataset.task = taskId;
    pre.dataset.done = "false";
    const live = state === "running" || state === "dispatched";
    if (!live && !attempts) {
      pre.textContent = "(not run yet)";
      pre.dataset.done = "true";
      return;
    }
    logAbort = new AbortController();
    const path = "/v1/jobs/" + jobId + "/tasks/" + taskId + (live ? "/log/live" : "/log");
    try {
      const response = await fetch(path, { signal: logAbort.signal, credentials: "same-origin" });
      if (!response.ok) {
        pre.textContent = "(no log: " + response.status + ")";
        return;
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        pre.textContent += decoder.decode(value, { stream: true });
        // Keep the page bounded: the last 200 KB of a long log.
        if (pre.textContent.length > 200000) pre.textContent = pre.textContent.slice(-200000);
        pre.scrollTop = pre.scrollHeight;
      }
      pre.dataset.done = "true";
    } catch (e) {
      if (e.name !== "AbortError") pre.textContent += "\n(log ended: " + e.message + ")";
    }
  }

  function cellClicked(event) {
    const cell = event.target.closest(".cell");
    if (!cell || !cell.dataset.task) return;
    if (selected) selected.classList.remove("selected");
    selected = cell;
    cell.classList.add("selected");
    showTask(cell.dataset.task).catch((e) => showError(e.message));
  }
  grid.addEventListener("click", cellClicked);
  other.addEventListener("click", cellClicked);

  // Actions (shown only to roles that may use them; the API checks anyway).
  document.getElementById("actions")?.addEventListener("click", async (event) => {
    const action = event.target.dataset?.action;
    if (!action) return;
    const base = "/v1/jobs/" + jobId;
    try {
      let job;
      if (action === "unblock") job = await api("DELETE", base + "/blocklist");
      else if (action === "priority") job = await api("PUT", base + "/priority", { priority: Number(document.getElementById("priority-level").value) });
      else job = await api("POST", base + "/" + action);
      showError("");
      updateHeader(job);
    } catch (e) { showError(e.message); }
  });

  // Live first, so nothing between the list and the stream is missed;
  // changes arriving while the list loads wait for it.
  const pending = [];
  let loaded = false;
  const started = performance.now();
  const onChange = batched((change) => loaded ? applyChange(change) : pending.push(change));
  const source = listen("/v1/jobs/" + jobId + "/events", {
    job_changed: (e) => {
      updateHeader(e.jobChanged);
      if (FINAL.has(stateName(e.jobChanged.state))) source.close();
    },
    task_state_changed: (e) => onChange(e.taskStateChanged),
    output_added: (e) => loaded ? noteOutput(e.outputAdded.output) : pending.push({ output: e.outputAdded.output }),
  });
  if (body.dataset.final === "true") source.close();
  window.kiln.inject = (change) => onChange(change);

  Promise.all([getAllPages("/v1/jobs/" + jobId + "/tasks", "tasks"), getAllPages("/v1/jobs/" + jobId + "/outputs", "outputs")]).then(([taskList, outputList]) => {
    const frameCells = document.createDocumentFragment();
    const otherCells = document.createDocumentFragment();
    for (const t of taskList.tasks || []) {
      const task = { state: taskState(t.state), attempts: t.attempts || 0, frames: (t.frames || []).map(Number), workerId: t.workerId };
      tasks.set(t.id, task);
      const cells = [];
      const frames = task.frames.length ? task.frames : [null];
      for (const frame of frames) {
        const cell = document.createElement("div");
        cell.className = "cell t-" + task.state;
        cell.dataset.task = t.id;
        if (frame !== null) cell.dataset.frame = frame;
        cell.title = frame !== null ? "frame " + frame : t.stepName + " #" + (t.index || 0);
        cells.push(cell);
        (frame !== null ? frameCells : otherCells).append(cell);
      }
      cellsByTask.set(t.id, cells);
    }
    grid.append(frameCells);
    other.append(otherCells);
    grid.setAttribute("aria-busy", "false");
    for (const o of outputList.outputs || []) outputs.set(o.path, o);
    for (const o of outputList.outputs || []) noteOutput(o);
    loaded = true;
    for (const item of pending.splice(0)) item.output ? noteOutput(item.output) : applyChange(item);
    if (FINAL.has(jobState)) showSheetIfThumbs();
    else refreshWaiting();
    window.kiln.gridMs = performance.now() - started;
    window.kiln.ready = performance.now();
  }).catch((e) => showError(e.message));
}

// ---------------------------------------------------------------- workers
function workersPage() {
  const admin = body.dataset.role === "admin";
  const table = document.querySelector("#workers tbody");
  let last = 0;
  let timer = null;
  // Worker rows change with their tasks and an admin's actions: the list
  // is read again after such events, at most every 5 s, and every 10 s for usage.
  function refresh() {
    const due = last + 5000 - Date.now();
    if (due > 0) {
      if (!timer) timer = setTimeout(() => { timer = null; refresh(); }, due);
      return;
    }
    last = Date.now();
    getJSON("/v1/workers").then((list) => {
      for (const w of list.workers || []) renderWorker(w);
    }).catch(() => {});
  }
  function renderWorker(w) {
    let row = table.querySelector('tr[data-worker="' + CSS.escape(w.id) + '"]');
    if (!row) return refreshPage();
    const state = (w.state || "").replace("WORKER_STATE_", "").toLowerCase();
    const badge = row.querySelector(".badge");
    badge.className = "badge w-" + state;
    badge.textContent = state;
    const running = row.querySelector(".running");
    running.replaceChildren();
    for (const t of w.running || []) {
      const a = document.createElement("a");
      a.href = "/jobs/" + t.jobId;
      a.textContent = t.stepName + " #" + (t.index || 0) + " ";
      running.append(a);
      // A task held queued (lookahead) waits for a slot: not running yet.
      if (!t.started) running.append("(waiting) ");
    }
    if (w.hiddenRunning) running.append(" (+" + w.hiddenRunning + " of other users)");
    row.querySelector(".tags").textContent = (w.tags || []).join(", ");
  }
  let reloading = false;
  function refreshPage() {
    if (reloading) return;
    reloading = true;
    setTimeout(() => location.reload(), 5000);
  }
  listen("/v1/events", { worker_changed: refresh, task_state_changed: refresh });
  setInterval(refresh, 10000);
  if (admin) table.addEventListener("click", async (event) => {
    const action = event.target.dataset?.workerAction;
    if (!action) return;
    const row = event.target.closest("tr");
    const path = "/v1/workers/" + encodeURIComponent(row.dataset.worker);
    try {
      const worker = action === "tags"
        ? await api("PUT", path + "/tags", { tags: row.querySelector(".tags-input").value.split(",").map((t) => t.trim()).filter(Boolean) })
        : await api("POST", path + "/" + action);
      renderWorker(worker);
    } catch (e) { alert(e.message); }
  });
  window.kiln.ready = performance.now();
}

// ---------------------------------------------------------------- timeline
function timelinePage() {
  const canvas = document.getElementById("gantt");
  const context = canvas.getContext("2d");
  const spans = new Map();
  const windowSelect = document.getElementById("window");
  const colour = (id) => {
    let h = 0;
    for (const c of id) h = (h * 31 + c.charCodeAt(0)) >>> 0;
    return "hsl(" + (h % 360) + ", 60%, 45%)";
  };
  const key = (s) => s.taskId + "/" + s.attempt;
  function draw() {
    const now = Date.now();
    const seconds = Number(windowSelect.value);
    const from = now - seconds * 1000;
    const workers = [...new Set([...spans.values()].map((s) => s.workerId))].filter(Boolean).sort();
    const lane = 22, left = 140, width = Math.max(canvas.parentElement.clientWidth, 600);
    canvas.width = width;
    canvas.height = Math.max(60, 30 + workers.length * lane);
    context.clearRect(0, 0, canvas.width, canvas.height);
    context.font = "12px system-ui, sans-serif";
    context.fillStyle = "#6b6b66";
    for (let i = 0; i <= 6; i++) {
      const x = left + ((width - left - 10) * i) / 6;
      const ago = Math.round((seconds * (6 - i)) / 6);
      context.fillText(ago ? "-" + duration(ago) : "now", x - 10, 14);
      context.fillRect(x, 18, 1, canvas.height);
    }
    const x = (t) => left + ((t - from) / (seconds * 1000)) * (width - left - 10);
    workers.forEach((w, i) => { context.fillStyle = "#1c1c1a"; context.fillText(w, 4, 36 + i * lane); });
    for (const s of spans.values()) {
      const i = workers.indexOf(s.workerId);
      if (i < 0) continue;
      const start = Date.parse(s.startedAt);
      const end = s.endedAt ? Date.parse(s.endedAt) : now;
      if (end < from) continue;
      const state = taskState(s.state);
      context.fillStyle = state === "failed" || state === "waiting_retry" ? "#b91c1c" : colour(s.jobId);
      context.globalAlpha = s.endedAt ? 0.85 : 1;
      context.fillRect(Math.max(x(start), left), 24 + i * lane, Math.max(x(end) - Math.max(x(start), left), 2), lane - 6);
      context.globalAlpha = 1;
    }
    canvas.dataset.spans = String(spans.size);
    canvas.dataset.workers = String(workers.length);
  }
  canvas.addEventListener("mousemove", (event) => {
    const rect = canvas.getBoundingClientRect();
    const hover = document.getElementById("gantt-hover");
    const workers = [...new Set([...spans.values()].map((s) => s.workerId))].filter(Boolean).sort();
    const lane = Math.floor((event.clientY - rect.top - 24) / 22);
    const seconds = Number(windowSelect.value);
    const t = Date.now() - seconds * 1000 + ((event.clientX - rect.left - 140) / (canvas.width - 150)) * seconds * 1000;
    const hit = [...spans.values()].find((s) => s.workerId === workers[lane] && Date.parse(s.startedAt) <= t && (!s.endedAt || Date.parse(s.endedAt) >= t));
    hover.textContent = hit ? (hit.jobName || hit.jobId) + " · " + hit.stepName + " #" + (hit.index || 0) + " on " + hit.workerId + " · " + taskState(hit.state) : "";
  });
  windowSelect.addEventListener("change", draw);
  getJSON("/v1/timeline").then((answer) => {
    for (const s of answer.spans || []) spans.set(key(s), s);
    draw();
    window.kiln.ready = performance.now();
    listen("/v1/events?after=" + (answer.farmSeq || 0), {
      task_state_changed: (e) => {
        const c = e.taskStateChanged;
        const k = c.taskId + "/" + (c.attempt || 0);
        const state = taskState(c.state);
        const span = spans.get(k);
        if (state === "dispatched" || state === "running") {
          if (!span) spans.set(k, { jobId: e.jobId, taskId: c.taskId, attempt: c.attempt || 0, workerId: c.workerId, stepName: c.stepName, index: c.index, startedAt: e.at || new Date().toISOString(), state: c.state });
          else span.state = c.state;
        } else if (span && !span.endedAt) {
          span.endedAt = e.at || new Date().toISOString();
          span.state = c.state;
        }
      },
    });
  }).catch((e) => { document.getElementById("gantt-hover").textContent = e.message; });
  // The time axis slides: redraw once a second (drawing only, no requests).
  setInterval(draw, 1000);
}

// ---------------------------------------------------------------- submit
function submitPage() {
  const form = document.getElementById("submit-form");
  const status = document.getElementById("submit-status");
  const say = (text) => { status.textContent = text; };
  const hex = (buffer) => [...new Uint8Array(buffer)].map((b) => b.toString(16).padStart(2, "0")).join("");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const file = document.getElementById("scene").files[0];
    if (!file) return;
    document.getElementById("submit").disabled = true;
    try {
      let digest = null;
      // Deduplication: hash here, ask the asset API, upload only if missing
      // (crypto.subtle needs a secure context: https, or localhost).
      if (window.crypto?.subtle && file.size <= 1 << 30) {
        say("Hashing " + file.name + "…");
        digest = hex(await crypto.subtle.digest("SHA-256", await file.arrayBuffer()));
        const stat = await getJSON("/v1/assets/" + digest + "/stat");
        if (stat.exists) {
          status.dataset.dedup = "true";
          say("Already stored (" + file.size + " bytes): not uploaded again.");
        } else digest = null;
      }
      if (!digest) {
        say("Uploading " + file.size + " bytes…");
        const response = await fetch("/v1/assets", {
          method: "POST", credentials: "same-origin", body: file,
          headers: { "x-csrf-token": csrf(), "content-type": "application/octet-stream" },
        });
        const info = await response.json();
        if (!response.ok) throw new Error(info.error ? info.error.message : response.statusText);
        digest = info.digest;
        status.dataset.dedup = "false";
      }
      const tags = document.getElementById("tags").value.split(",").map((t) => t.trim()).filter(Boolean);
      const job = await api("POST", "/v1/jobs", {
        builtinTemplate: "blender",
        name: document.getElementById("name").value || file.name,
        priority: Number(document.getElementById("priority").value),
        tags,
        parameters: {
          Frames: document.getElementById("frames").value,
          ChunkSize: document.getElementById("chunk").value,
          FrameRate: document.getElementById("fps").value,
          Codec: document.getElementById("codec").value,
        },
        inputs: [{ path: "scene.blend", digest }],
      });
      say("Submitted.");
      location.href = "/jobs/" + job.id;
    } catch (e) {
      say("Failed: " + e.message);
      status.classList.add("error");
      document.getElementById("submit").disabled = false;
    }
  });
}

const pages = { jobs: jobsPage, job: jobPage, workers: workersPage, timeline: timelinePage, submit: submitPage };
pages[body.dataset.page]?.();
