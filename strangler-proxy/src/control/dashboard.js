// The operator dashboard's script: reads GET /dashboard/data every two seconds and acts
// through the admin API. No framework; every text from the server goes in as text, never HTML.
"use strict";

const REFRESH_MS = 2000;
const PHASES = ["monolith", "shadow", "canary", "extracted", "retired"];
const panels = new Map();
let timer = null;

const $ = (selector, root = document) => root.querySelector(selector);

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const percent = (x) => (x == null ? "–" : `${(x * 100).toFixed(2)} %`);
const millis = (x) => (x == null ? "–" : `${x.toFixed(1)} ms`);
const json = (x) => (x === null || x === undefined ? "absent" : JSON.stringify(x));

function say(text, bad = false) {
  const message = $("#message");
  message.textContent = text;
  message.className = bad ? "bad" : "good";
}

async function api(method, path, body) {
  const response = await fetch(path, {
    method,
    credentials: "same-origin",
    headers: { "content-type": "application/json", "x-strangler-csrf": "1" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401 && path !== "/dashboard/session") {
    showSignIn();
    throw new Error("sign in first");
  }
  const text = await response.text();
  let parsed = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch (_) {
    parsed = null;
  }
  if (!response.ok) {
    throw new Error(parsed && parsed.detail ? parsed.detail : `${response.status} ${text}`);
  }
  return parsed;
}

function showSignIn() {
  clearTimeout(timer);
  timer = null;
  $("#signin").hidden = false;
  $("#board").hidden = true;
  $("#signout").hidden = true;
}

function showBoard() {
  $("#signin").hidden = true;
  $("#board").hidden = false;
  $("#signout").hidden = false;
}

async function refresh() {
  try {
    const data = await api("GET", "/dashboard/data");
    showBoard();
    render(data);
    $("#updated").textContent = new Date().toLocaleTimeString();
  } catch (err) {
    if (err.message !== "sign in first") say(err.message, true);
  }
  if (!$("#board").hidden) timer = setTimeout(refresh, REFRESH_MS);
}

function render(data) {
  $("#replica").textContent = data.replica;
  const list = $("#carveouts");
  for (const carveout of data.carveouts) {
    const name = carveout.status.name;
    if (!panels.has(name)) {
      const panel = buildPanel(name);
      panels.set(name, panel);
      list.append(panel);
    }
    fill(panels.get(name), carveout);
  }
  const rows = data.audit.map((entry) =>
    el("tr", {}, el("td", {}, entry.at), el("td", {}, entry.carveout), el("td", {}, entry.actor),
      el("td", {}, entry.from), el("td", {}, entry.to),
      el("td", {}, entry.forced ? `${entry.reason} (forced)` : entry.reason)));
  $("#audit tbody").replaceChildren(...rows);
}

function field(name) {
  return el("span", { "data-field": name }, "–");
}

function buildPanel(name) {
  const sides = el("table", {},
    el("thead", {}, el("tr", {}, el("th", {}, "side"), el("th", {}, "requests"),
      el("th", {}, "5xx"), el("th", {}, "p99"))),
    el("tbody", {},
      el("tr", {}, el("td", {}, "monolith"), el("td", { class: "num" }, field("monolith-requests")),
        el("td", { class: "num" }, field("monolith-errors")), el("td", { class: "num" }, field("monolith-p99"))),
      el("tr", {}, el("td", {}, "service"), el("td", { class: "num" }, field("service-requests")),
        el("td", { class: "num" }, field("service-errors")), el("td", { class: "num" }, field("service-p99")))));
  const phase = el("select", { name: "phase" }, ...PHASES.map((p) => el("option", { value: p }, p)));
  const form = el("form", { class: "act", "data-carveout": name },
    el("label", {}, "phase ", phase),
    el("label", {}, "% ", el("input", { name: "percent", type: "number", min: "0", max: "100", step: "0.01", size: "6" })),
    el("input", { name: "reason", placeholder: "reason (recorded in the audit log)", required: "" }),
    el("button", { type: "submit", name: "change" }, "Change phase"),
    el("button", { type: "button", name: "pause" }, "Pause rollout"),
    el("button", { type: "button", name: "resume" }, "Resume rollout"),
    el("button", { type: "button", name: "abort" }, "Abort rollout"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    changePhase(form, name);
  });
  for (const action of ["pause", "resume", "abort"]) {
    $(`button[name=${action}]`, form).addEventListener("click", () => rolloutAction(form, name, action));
  }
  return el("section", { class: "carveout", "data-carveout": name },
    el("h2", {}, name, el("span", { class: "phase", "data-field": "phase" }, "–"),
      el("small", { "data-field": "split" }, "")),
    el("div", { class: "grid" },
      el("div", {}, el("strong", {}, "Traffic (this replica)"), sides,
        el("div", {}, "fallbacks ", field("fallbacks"))),
      el("div", {}, el("strong", {}, "Shadow"),
        el("div", {}, "compared ", field("compared"), " · mismatched ", field("mismatched"), " (", field("mismatch-rate"), ")"),
        el("div", { class: "diff", "data-field": "samples" })),
      el("div", {}, el("strong", {}, "Data sync"), el("div", { "data-field": "sync" }, "–")),
      el("div", {}, el("strong", {}, "Rollout"), el("div", { "data-field": "rollout" }, "–"),
        el("div", {}, "replicas ", field("replicas")))),
    form);
}

function set(panel, name, value) {
  $(`[data-field="${name}"]`, panel).textContent = value;
}

function fill(panel, carveout) {
  const status = carveout.status;
  const phaseName = status.phase.split(" ")[0];
  const badge = $('[data-field="phase"]', panel);
  badge.textContent = status.phase;
  badge.className = `phase ${phaseName}`;
  let split;
  if (carveout.percent != null) split = `${carveout.percent} % of callers to the service`;
  else if (phaseName === "extracted" || phaseName === "retired") split = "all to the service";
  else if (phaseName === "shadow") split = "all to the monolith, reads copied to the service";
  else split = "all to the monolith";
  set(panel, "split", status.fenced_until ? `${split} · writes fenced until ${status.fenced_until}` : split);
  set(panel, "monolith-requests", carveout.monolith.requests);
  set(panel, "monolith-errors", percent(carveout.monolith.error_rate));
  set(panel, "monolith-p99", millis(carveout.monolith.p99_ms));
  set(panel, "service-requests", carveout.service.requests);
  set(panel, "service-errors", percent(carveout.service.error_rate));
  set(panel, "service-p99", millis(carveout.service.p99_ms));
  set(panel, "fallbacks", status.traffic.fallbacks);
  const mismatches = carveout.mismatches;
  set(panel, "compared", mismatches.compared);
  set(panel, "mismatched", mismatches.mismatched);
  set(panel, "mismatch-rate", percent(mismatches.rate));
  const samples = mismatches.samples.map((sample) =>
    el("div", {}, `${sample.method} ${sample.path}: `,
      ...sample.differences.map((d) => el("div", {}, `  ${d.path}: monolith ${json(d.expected)} · service ${json(d.actual)}`))));
  $('[data-field="samples"]', panel).replaceChildren(...samples);
  const sync = status.sync;
  set(panel, "sync", sync
    ? `${sync.direction}: lag ${sync.lag[0]} changes, ${sync.lag[1].toFixed(1)} s · parked ${sync.parked}` +
      ` · relay ${sync.relay_running ? "running" : "not seen"}${sync.error ? ` · ${sync.error}` : ""}`
    : "no data sync");
  const rollout = status.rollout;
  set(panel, "rollout", rollout
    ? `${rollout.state.replaceAll("_", " ")} · step ${rollout.step[0]}/${rollout.step[1]} (${rollout.step_text})` +
      (rollout.failing.length ? ` · failing: ${rollout.failing.join(", ")}` : " · checks passing")
    : "none");
  set(panel, "replicas", `${status.replicas[0]} live of ${status.replicas[1]}`);
}

function reasonOf(form) {
  const reason = $("input[name=reason]", form).value.trim();
  if (!reason) {
    say("a reason is required: it goes in the audit log", true);
    return null;
  }
  return reason;
}

async function changePhase(form, name) {
  const reason = reasonOf(form);
  if (reason === null) return;
  const phase = $("select[name=phase]", form).value;
  const raw = $("input[name=percent]", form).value;
  const body = { phase, reason };
  if (phase === "canary") body.percent = Number(raw);
  const target = phase === "canary" ? `canary ${raw} %` : phase;
  if (!window.confirm(`Move ${name} to ${target}?\nReason: ${reason}`)) return;
  try {
    const shown = await api("POST", `/carveouts/${encodeURIComponent(name)}/phase`, body);
    say(`${name} is now ${shown.phase}`);
    $("input[name=reason]", form).value = "";
    refresh();
  } catch (err) {
    say(`${name}: ${err.message}`, true);
  }
}

async function rolloutAction(form, name, action) {
  const reason = reasonOf(form);
  if (reason === null) return;
  if (!window.confirm(`${action} the rollout of ${name}?\nReason: ${reason}`)) return;
  try {
    await api("POST", `/carveouts/${encodeURIComponent(name)}/rollout/${action}`, { reason });
    say(`${name}: rollout ${{ pause: "paused", resume: "resumed", abort: "aborted" }[action]}`);
    $("input[name=reason]", form).value = "";
    refresh();
  } catch (err) {
    say(`${name}: ${err.message}`, true);
  }
}

$("#signin").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    await api("POST", "/dashboard/session", { token: $("#token").value });
    $("#token").value = "";
    say("signed in");
    refresh();
  } catch (err) {
    say(err.message, true);
  }
});

$("#signout").addEventListener("click", async () => {
  await fetch("/dashboard/session", { method: "DELETE", credentials: "same-origin" });
  panels.clear();
  $("#carveouts").replaceChildren();
  showSignIn();
});

refresh();
