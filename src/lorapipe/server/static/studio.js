// lorapipe studio: photos -> dataset prepare -> captions -> a pipeline run -> a checkpoint -> the generate page.
// Talks only to /studio/api (documented at /docs); no framework, no network beyond this server.
"use strict";
const $ = (id) => document.getElementById(id);
const API = "/studio/api";
const UPLOAD_BATCH_BYTES = 32 * 1024 * 1024;  // below the server's request body cap
const FINISHED = new Set(["succeeded", "failed", "cancelled"]);
// Following a run: a poll a second while the tab is visible, one every 15 s while hidden, each sending the last
// ETag back so an unchanged run costs a 304 with no body (what the server answers 20 such pages with, cheaply).
const POLL_VISIBLE_MS = 1000;
const POLL_HIDDEN_MS = 15000;
const saved = JSON.parse(localStorage.getItem("lorapipe.studio") || "{}");
const state = { dataset: saved.dataset || null, run: saved.run || null, tomlEdited: false, following: null };
// What the server's busy policy does to image generation while a run trains (GET /studio/api/device says it).
let generationWhileBusy = "image generation is held back until it finishes";

function remember() { localStorage.setItem("lorapipe.studio", JSON.stringify({ dataset: state.dataset, run: state.run })); }

async function api(path, options = {}) {
  const response = await lorapipeAuth.fetch(path, options);
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json().catch(() => null) : await response.text();
  if (!response.ok) {
    const detail = body && (typeof body.detail === "string" ? body.detail
      : Array.isArray(body.detail) ? body.detail.map((d) => `${d.loc.slice(-1)}: ${d.msg}`).join("; ") : "");
    throw new Error(`${response.status} ${detail || response.statusText}`);
  }
  return body;
}
const json = (method, body) => ({ method, headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
function say(id, text, isError) { $(id).textContent = text; $(id).className = isError ? "error" : "muted"; }
function element(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}
const number = (id) => ($(id).value === "" ? null : Number($(id).value));

// -- 1. photos ------------------------------------------------------------------------------------------------
async function ensureDataset() {
  if (state.dataset) return state.dataset;
  const created = await api(`${API}/datasets`, json("POST", {
    trigger: $("trigger").value.trim(), class_name: $("class-name").value.trim() || null }));
  state.dataset = created.id; remember();
  return state.dataset;
}

async function upload(files) {
  try {
    const dataset = await ensureDataset();
    let batch = new FormData(), bytes = 0, count = 0, sent = 0;
    const send = async () => {
      if (!count) return;
      say("photo-status", `Uploading ${sent + count} of ${files.length}…`);
      await api(`${API}/datasets/${dataset}/photos`, { method: "POST", body: batch });
      sent += count; batch = new FormData(); bytes = 0; count = 0;
    };
    for (const file of files) {
      if (bytes + file.size > UPLOAD_BATCH_BYTES) await send();
      batch.append("files", file, file.name); bytes += file.size; count += 1;
    }
    await send();
    await prepare();
  } catch (e) {
    say("photo-status", e.message, true);
    await showPhotos().catch(() => {});
  }
}

async function prepare() {
  say("photo-status", "Preparing the dataset (checking and converting every photo)…");
  const meta = await api(`${API}/datasets/${state.dataset}/prepare`, json("POST", { preset: $("preset").value }));
  const p = meta.prepared;
  say("photo-status", `${p.kept.length} photos ready, ${p.skipped.length} left out; ${p.repeats} repeats x ` +
    `${p.epochs} epochs = ${p.expected_steps} steps for the ${p.preset} preset.`);
  await Promise.all([showPhotos(), showCaptions(), showToml()]);
  $("start").disabled = false;
  document.body.dataset.prepared = "1";
}

async function showPhotos() {
  if (!state.dataset) return;
  const dataset = await api(`${API}/datasets/${state.dataset}`);
  $("trigger").value = dataset.trigger; $("class-name").value = dataset.class_name || "";
  $("trigger").disabled = $("class-name").disabled = true;
  const report = dataset.prepared ? await api(`${API}/datasets/${state.dataset}/check`) : null;
  const box = $("photos");
  box.textContent = "";
  for (const photo of dataset.photos) {
    const findings = element("ul", { className: "findings" });
    const found = report ? report.photos[photo.name] || [] : [];
    if (report && !found.length) findings.append(element("li", { className: "ok", textContent: "✓ no findings" }));
    for (const f of found) findings.append(element("li", { className: f.severity, textContent: f.reason }));
    const img = element("img", { alt: photo.label, loading: "lazy" });
    lorapipeAuth.showImage(img, `${API}/datasets/${state.dataset}/photos/${photo.name}`);
    box.append(element("figure", { className: "photo" }, img, element("div", {},
      element("div", { className: "label", textContent: photo.label, title: photo.label }),
      element("div", { className: "muted", textContent: `${photo.width}×${photo.height} ${photo.format}` }),
      findings)));
  }
  if (report) {
    for (const g of report.general) box.append(element("p", { className: g.severity, textContent: g.reason }));
    document.body.dataset.checked = String(dataset.photos.length);
  }
}

// -- 2. captions ----------------------------------------------------------------------------------------------
async function showCaptions(list) {
  const captions = list || await api(`${API}/datasets/${state.dataset}/captions`);
  const box = $("captions");
  box.textContent = "";
  for (const entry of captions) {
    const text = element("textarea", { value: entry.caption || "", placeholder: entry.problem || "no caption yet" });
    text.dataset.image = entry.image;
    const thumb = element("img", { alt: entry.image });
    lorapipeAuth.showImage(thumb, `${API}/datasets/${state.dataset}/images/${entry.image.split("/").map(encodeURIComponent).join("/")}`);
    const row = element("div", { className: "caption" }, thumb, text);
    text.addEventListener("change", async () => {
      row.classList.remove("saved", "failed");
      try {
        await api(`${API}/datasets/${state.dataset}/captions/${entry.image.split("/").map(encodeURIComponent).join("/")}`,
          json("PUT", { caption: text.value }));
        row.classList.add("saved");
      } catch (e) { row.classList.add("failed"); say("caption-status", e.message, true); }
    });
    box.append(row);
  }
  const missing = captions.filter((c) => !c.caption).length;
  say("caption-status", `${captions.length} images, ${missing} without a caption. Edit any caption in place.`);
  $("caption-all").disabled = false;
  document.body.dataset.captioned = String(captions.length - missing);
}

async function captionAll() {
  $("caption-all").disabled = true;
  say("caption-status", "Captioning…");
  try {
    const result = await api(`${API}/datasets/${state.dataset}/caption`, json("POST", { overwrite: $("overwrite").checked }));
    await showCaptions(result.captions);
    await showPhotos();
  } catch (e) { say("caption-status", e.message, true); $("caption-all").disabled = false; }
}

// -- 3. training ----------------------------------------------------------------------------------------------
function settings() {
  return { steps: number("steps"), rank: number("rank"), learning_rate: number("lr"),
    checkpoints: number("checkpoints-count") || 4, config_toml: state.tomlEdited ? $("toml").value : null };
}

async function showToml() {
  if (!state.dataset) return;
  try {
    $("toml").value = await api(`${API}/datasets/${state.dataset}/config`, json("POST", settings()));
    say("train-status", "");
  } catch (e) { say("train-status", e.message, true); }
}

async function startRun() {
  $("start").disabled = true;
  say("train-status", "Checking the config and starting…");
  try {
    const run = await api(`${API}/runs`, json("POST", { dataset: state.dataset, ...settings() }));
    state.run = run.id; remember();
    say("train-status", run.warnings.length ? `Started with warnings: ${run.warnings.join("; ")}` : `Run ${run.id} started.`);
    follow(run.id);
  } catch (e) { say("train-status", e.message, true); $("start").disabled = false; }
}

// -- 4. the run -----------------------------------------------------------------------------------------------
function follow(runId) {
  if (state.following) clearTimeout(state.following.timer);
  const following = { runId, etag: null, timer: null };
  state.following = following;
  following.poll = async () => {
    clearTimeout(following.timer);
    if (state.following !== following) return;
    try {
      const response = await lorapipeAuth.fetch(`${API}/runs/${runId}`,
        { headers: following.etag ? { "If-None-Match": following.etag } : {} });
      if (response.status === 200) {
        following.etag = response.headers.get("ETag");
        const run = await response.json();
        if (state.following !== following) return;
        render(run);
        if (FINISHED.has(run.status)) { state.following = null; return; }
      } else if (response.status !== 304) {
        const body = await response.json().catch(() => null);
        say("run-status", `${response.status} ${(body && body.detail) || response.statusText}`, true);
        state.following = null;
        return;
      }
    } catch (e) { say("run-status", `Lost the server (${e.message}); trying again…`, true); }
    if (state.following !== following) return;
    following.timer = setTimeout(following.poll, document.visibilityState === "hidden" ? POLL_HIDDEN_MS : POLL_VISIBLE_MS);
  };
  following.poll();
}
document.addEventListener("visibilitychange", () => {  // back on the tab: look now, not at the slow hidden pace
  if (document.visibilityState === "visible" && state.following) state.following.poll();
});

function render(run) {
  const p = run.progress;
  const eta = p.eta_s != null && !FINISHED.has(run.status) ? `, about ${Math.round(p.eta_s)} s left` : "";
  const loss = p.loss != null ? `, loss ${p.loss.toFixed(4)}` : "";
  const lr = p.lr != null ? `, lr ${p.lr.toExponential(2)}` : "";
  const step = p.total_steps ? `step ${p.step}/${p.total_steps}` : `step ${p.step}`;
  const current = run.steps.find((s) => s.status === "running");
  say("run-status", `Run ${run.id}: ${run.status}${current ? ` (${current.name})` : ""}, ${step}${loss}${lr}${eta}` +
    (run.error ? ` — ${run.error}` : ""), run.status === "failed");
  $("run-status").dataset.status = run.status;
  const pct = p.total_steps ? Math.round((100 * p.step) / p.total_steps) : 0;
  $("run-bar").style.width = `${pct}%`;
  $("run-bar").setAttribute("aria-valuenow", String(pct));
  drawLoss(p.losses);
  showCheckpoints(run);
  const active = !FINISHED.has(run.status);
  $("cancel").disabled = !active;
  $("resume").disabled = run.status !== "cancelled" && run.status !== "failed";
  $("start").disabled = active || !document.body.dataset.prepared;
  $("banner").hidden = !active;
  $("banner").textContent = active ? `Training run ${run.id} is using the GPU: ${generationWhileBusy}.` : "";
}

function drawLoss(points) {
  const canvas = $("loss-chart");
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 36;
  ctx.clearRect(0, 0, w, h);
  ctx.font = "12px system-ui"; ctx.fillStyle = "#6b7385";
  if (!points.length) { ctx.fillText("loss appears here once training steps run", pad, h / 2); return; }
  const steps = points.map((q) => q[0]), losses = points.map((q) => q[1]);
  const x0 = Math.min(...steps), x1 = Math.max(...steps, x0 + 1);
  const y0 = Math.min(...losses), y1 = Math.max(...losses, y0 + 1e-6);
  const x = (s) => pad + ((s - x0) / (x1 - x0)) * (w - 2 * pad);
  const y = (l) => h - pad + ((y0 - l) / (y1 - y0)) * (h - 2 * pad);
  ctx.strokeStyle = "#dde1e8"; ctx.strokeRect(pad, pad, w - 2 * pad, h - 2 * pad);
  ctx.fillText(y1.toFixed(3), 2, pad + 4); ctx.fillText(y0.toFixed(3), 2, h - pad);
  ctx.fillText(`step ${x0}`, pad, h - 10); ctx.fillText(`step ${x1}`, w - pad - 50, h - 10);
  const line = (values, color) => {
    ctx.strokeStyle = color; ctx.lineWidth = 1.5; ctx.beginPath();
    values.forEach((l, i) => (i ? ctx.lineTo(x(steps[i]), y(l)) : ctx.moveTo(x(steps[i]), y(l))));
    ctx.stroke();
  };
  line(losses, "#aab7e8");
  let smooth = losses[0];
  line(losses.map((l) => (smooth = 0.9 * smooth + 0.1 * l)), "#3b5bdb");  // the trend, as TensorBoard smooths
}

function showCheckpoints(run) {
  const box = $("checkpoints");
  const key = JSON.stringify(run.checkpoints);
  if (box.dataset.key === key) return;  // unchanged: keep images and buttons as they are
  box.dataset.key = key;
  box.textContent = "";
  const final = run.checkpoints.find((c) => c.final);
  // sd-scripts also writes a step file at the last step; it is the final LoRA, shown once
  for (const c of run.checkpoints.filter((k) => k.final || !final || k.step !== final.step)) {
    const title = c.final ? `final (step ${c.step ?? "?"})` : c.step != null ? `step ${c.step}` : `epoch ${c.epoch}`;
    const column = element("div", { className: "checkpoint" }, element("h3", { textContent: title }));
    column.dataset.name = c.name;
    for (const sample of c.samples) {
      const img = element("img", { alt: `${title} sample`, className: "sample" });
      lorapipeAuth.showImage(img, `${API}/runs/${run.id}/files/${sample}`);
      column.append(img);
    }
    if (!c.samples.length) column.append(element("p", { className: "muted", textContent: "no sample images" }));
    const use = element("button", { type: "button", className: "use", textContent: "Use this checkpoint" });
    use.addEventListener("click", () => useCheckpoint(run.id, c.name, use));
    const download = element("a", { textContent: "download" });
    lorapipeAuth.downloadLink(download, `${API}/runs/${run.id}/files/${c.name}`, c.name);
    column.append(use, download);
    box.append(column);
  }
}

async function useCheckpoint(runId, name, button) {
  button.disabled = true;
  try {
    const published = await api(`${API}/runs/${runId}/publish`, json("POST", { checkpoint: name }));
    const subject = `${$("trigger").value} ${$("class-name").value}`.trim();
    location.href = `/ui/?prompt=${encodeURIComponent(`photo of ${subject}, ${published.tag}`)}`;
  } catch (e) { button.disabled = false; say("run-status", e.message, true); }
}

// -- wiring ---------------------------------------------------------------------------------------------------
const drop = $("drop");
["dragenter", "dragover"].forEach((n) => drop.addEventListener(n, (e) => { e.preventDefault(); drop.classList.add("over"); }));
["dragleave", "drop"].forEach((n) => drop.addEventListener(n, () => drop.classList.remove("over")));
drop.addEventListener("drop", (e) => { e.preventDefault(); upload([...e.dataTransfer.files]); });
$("files").addEventListener("change", (e) => { upload([...e.target.files]); e.target.value = ""; });
$("caption-all").addEventListener("click", captionAll);
$("start").addEventListener("click", startRun);
$("cancel").addEventListener("click", () => api(`${API}/runs/${state.run}/cancel`, { method: "POST" })
  .then(() => follow(state.run)).catch((e) => say("train-status", e.message, true)));
$("resume").addEventListener("click", () => api(`${API}/runs/${state.run}/resume`, { method: "POST" })
  .then((run) => { state.run = run.id; remember(); follow(run.id); })
  .catch((e) => say("train-status", e.message, true)));
$("preset").addEventListener("change", () => state.dataset && prepare().catch((e) => say("photo-status", e.message, true)));
["steps", "rank", "lr", "checkpoints-count"].forEach((id) => $(id).addEventListener("change", showToml));
$("toml").addEventListener("input", () => { state.tomlEdited = true; });

(async function start() {
  try {
    generationWhileBusy = (await api(`${API}/device`)).generation;
    const presets = await api(`${API}/presets`);
    presets.forEach((name) => $("preset").append(element("option", { value: name, textContent: name })));
    if (state.dataset) {
      const meta = await api(`${API}/datasets/${state.dataset}`).catch(() => null);
      if (!meta) { state.dataset = null; remember(); }
      else {
        if (meta.prepared) {
          $("preset").value = meta.prepared.preset;
          document.body.dataset.prepared = "1";
          $("start").disabled = false;
          await Promise.all([showCaptions(), showToml()]);
        }
        await showPhotos();
      }
    }
    const runs = await api(`${API}/runs?limit=5`);
    const active = runs.find((r) => !FINISHED.has(r.status));
    if (active) { state.run = active.id; follow(active.id); }
    else if (state.run && runs.some((r) => r.id === state.run)) follow(state.run);
  } catch (e) { say("photo-status", `Could not reach the studio API: ${e.message}`, true); }
}());
