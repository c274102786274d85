// lorapipe web page: talks to the same A1111 routes every other client uses.
"use strict";
const $ = (id) => document.getElementById(id);
const api = (path, options) => lorapipeAuth.fetch(path, options).then(async (r) => {
  const body = await r.json().catch(() => null);
  if (!r.ok) {
    const detail = body && (typeof body.detail === "string" ? body.detail
      : Array.isArray(body.detail) ? body.detail.map((d) => `${d.loc.slice(-1)}: ${d.msg}`).join("; ") : "");
    throw new Error(`${r.status} ${detail || r.statusText}`);
  }
  return body;
});

function option(select, value, label) {
  const o = document.createElement("option");
  o.value = value; o.textContent = label || value; select.appendChild(o);
}

async function loadCatalogue() {
  const [samplers, schedulers, loras, models] = await Promise.all([
    api("/sdapi/v1/samplers"), api("/sdapi/v1/schedulers"), api("/sdapi/v1/loras"), api("/sdapi/v1/sd-models")]);
  samplers.forEach((s) => option($("sampler"), s.name));
  $("sampler").value = samplers.some((s) => s.name === "DPM++ 2M") ? "DPM++ 2M" : samplers[0].name;
  schedulers.forEach((s) => option($("scheduler"), s.name, s.label));
  $("model").textContent = models.length ? models[0].title : "";
  const box = $("loras");
  box.textContent = "";
  if (!loras.length) { box.innerHTML = '<span class="muted">no LoRAs in --lora-dir</span>'; }
  loras.forEach((l) => {
    const row = document.createElement("label");
    row.className = "lora";
    const check = document.createElement("input");
    check.type = "checkbox"; check.dataset.name = l.name;
    const name = document.createElement("span");
    name.textContent = l.alias && l.alias !== l.name ? `${l.name} (${l.alias})` : l.name;  // text, never HTML
    name.title = name.textContent;
    const weight = document.createElement("input");
    weight.type = "number"; weight.step = "0.05"; weight.value = "0.8"; weight.dataset.weightFor = l.name;
    row.append(check, name, weight);
    box.appendChild(row);
  });
}

function loraTags() {
  return [...document.querySelectorAll(".lora input[type=checkbox]:checked")].map((c) => {
    const weight = document.querySelector(`input[data-weight-for="${CSS.escape(c.dataset.name)}"]`).value || "1";
    return ` <lora:${c.dataset.name}:${weight}>`;
  }).join("");
}

function setProgress(fraction) {
  const pct = Math.round(Math.max(0, Math.min(1, fraction)) * 100);
  $("bar").style.width = `${pct}%`;
  $("bar").setAttribute("aria-valuenow", String(pct));
}

function status(text, isError) { $("status").textContent = text; $("status").className = isError ? "error" : "muted"; }

function showResults(response) {
  const info = JSON.parse(response.info);
  const grid = $("results");
  // Newest request first, and within it the images in seed order.
  [...response.images].reverse().forEach((b64, j) => {
    const i = response.images.length - 1 - j;
    const card = document.createElement("figure");
    card.className = "result";
    card.style.margin = "0";
    const img = document.createElement("img");
    img.src = `data:image/png;base64,${b64}`;
    img.alt = `seed ${info.all_seeds[i]}`;
    const text = document.createElement("pre");
    text.className = "infotext";
    text.textContent = info.infotexts[i] + (info.comments ? `\n${info.comments}` : "");
    card.append(img, text);
    grid.prepend(card);
  });
}

async function generate(event) {
  event.preventDefault();
  const taskId = `task(page-${Math.random().toString(16).slice(2, 14)})`;
  const body = {
    prompt: $("prompt").value + loraTags(), negative_prompt: $("negative").value,
    sampler_name: $("sampler").value, scheduler: $("scheduler").value,
    steps: +$("steps").value, cfg_scale: +$("cfg").value, width: +$("width").value, height: +$("height").value,
    seed: +$("seed").value, batch_size: +$("batch").value, force_task_id: taskId,
  };
  $("generate").disabled = true; $("interrupt").disabled = false;
  setProgress(0.01); status("Queued…");
  const poll = setInterval(async () => {
    try {
      const p = await api("/internal/progress", { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ id_task: taskId }) });
      if (p.active) { setProgress(p.progress); status(p.textinfo || "Generating…"); }
    } catch (e) { /* progress is best effort */ }
  }, 300);
  $("interrupt").onclick = () => api(`/sdapi/v1/interrupt?id_task=${encodeURIComponent(taskId)}`, { method: "POST" });
  try {
    const started = performance.now();
    const response = await api("/sdapi/v1/txt2img", { method: "POST",
      headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    setProgress(1);
    showResults(response);
    status(`Done in ${((performance.now() - started) / 1000).toFixed(1)} s`);
    document.body.dataset.generated = String(+(document.body.dataset.generated || 0) + response.images.length);
  } catch (e) {
    status(e.message, true);
  } finally {
    clearInterval(poll);
    $("generate").disabled = false; $("interrupt").disabled = true;
  }
}

// The studio's "use this checkpoint" opens this page with the LoRA tag in the prompt.
const given = new URLSearchParams(location.search).get("prompt");
if (given) $("prompt").value = given;

// One GPU, two jobs: while a training run holds it, generation is refused (503), held or shared, as the server's
// --studio-busy-policy says; say which up front, in the server's words.
async function showTraining() {
  const device = await api("/studio/api/device").catch(() => null);
  const run = device && device.training_run;
  $("busy").hidden = !run;
  $("busy").textContent = run ? `Training run ${run} is using the GPU: ${device.generation} ` +
    `(about ${device.retry_after_s} s; see the studio).` : "";
}

$("form").addEventListener("submit", generate);
loadCatalogue().catch((e) => status(`Could not load the catalogue: ${e.message}`, true)).then(showTraining);
setInterval(() => document.visibilityState === "visible" && showTraining(), 10000);  // a hidden tab asks nothing
