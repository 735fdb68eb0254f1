// Flotilla's live view: sweeps, a sweep's trials (sortable), its plots, and the agents.
// Plain JavaScript; everything comes from this coordinator's /api.
//
// A coordinator started with --http-tokens answers the API only with a bearer token (read
// scope). The page takes one from `?token=` (then drops it from the address bar) or from the
// form it shows when the API refuses, and keeps it in this tab's sessionStorage only.
"use strict";

const TOKEN_KEY = "flotilla-read-token";
(function takeTokenFromAddress() {
  const params = new URLSearchParams(location.search);
  if (!params.has("token")) return;
  sessionStorage.setItem(TOKEN_KEY, params.get("token"));
  params.delete("token");
  const rest = params.toString();
  history.replaceState(null, "", location.pathname + (rest ? "?" + rest : "") + location.hash);
})();

function authorization() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: "Bearer " + token } : {};
}

class NeedsToken extends Error {}

const view = document.getElementById("view");
const status = document.getElementById("status");
const REFRESH_MS = 3000;
let timer = null;
let sort = { key: "rank", desc: false };

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (name === "onclick") node.onclick = value;
    else if (value !== undefined && value !== null) node.setAttribute(name, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(typeof child === "string" || typeof child === "number" ? String(child) : child);
  }
  return node;
}

function number(value) {
  if (value === null || value === undefined) return "-";
  const magnitude = Math.abs(value);
  if (magnitude !== 0 && (magnitude < 1e-3 || magnitude >= 1e5)) return value.toExponential(3);
  return value.toFixed(5).replace(/0+$/, "").replace(/\.$/, "");
}

// Replaces the view's content (absent parts are skipped).
function show(...parts) {
  view.replaceChildren(...parts.flat().filter((part) => part !== null && part !== undefined));
}

async function api(path) {
  const response = await fetch(path, { cache: "no-store", headers: authorization() });
  if (response.status === 401 || response.status === 403) {
    const body = await response.json().catch(() => ({}));
    throw new NeedsToken(body.error || response.statusText);
  }
  const body = await response.json();
  if (!response.ok) {
    const leader = body.leader ? ` (leader: ${body.leader})` : "";
    throw new Error((body.error || response.statusText) + leader);
  }
  return body;
}

function route() {
  const [path, query] = (location.hash.slice(1) || "/").split("?");
  const params = new URLSearchParams(query || "");
  if (params.has("sort")) sort = { key: params.get("sort"), desc: params.get("desc") === "1" };
  const match = path.match(/^\/sweep\/(s?\d+)$/);
  return match ? { sweep: match[1] } : {};
}

async function render() {
  clearTimeout(timer);
  const where = route();
  try {
    if (where.sweep) await renderSweep(where.sweep);
    else await renderHome();
    status.textContent = "updated " + new Date().toLocaleTimeString();
    document.body.dataset.ready = "1";
  } catch (error) {
    if (error instanceof NeedsToken) {
      askForToken(error.message);
      return;
    }
    view.replaceChildren(el("p", { class: "error", id: "error" }, error.message));
    status.textContent = "error";
  }
  timer = setTimeout(render, REFRESH_MS);
}

// The API refused: a form for a token (nothing refreshes until one is given).
function askForToken(message) {
  const input = el("input", { type: "password", id: "token", autocomplete: "off", size: "50" });
  const form = el("form", { id: "token-form" },
    el("p", { class: "error" }, message),
    el("label", {}, "Bearer token (read scope): ", input),
    el("button", { type: "submit" }, "Use token"));
  form.onsubmit = (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    render();
  };
  view.replaceChildren(form);
  status.textContent = "needs a token";
  document.body.dataset.ready = "token";
}

// Plots are fetched with the token (an <img src> could not send it) and shown as blobs.
async function loadPlot(img, path) {
  try {
    const response = await fetch(path, { cache: "no-store", headers: authorization() });
    if (!response.ok) return;
    const url = URL.createObjectURL(await response.blob());
    img.onload = () => URL.revokeObjectURL(url);
    img.src = url;
  } catch (_) {
    // The next refresh tries again.
  }
}

async function renderHome() {
  const [sweeps, agents] = await Promise.all([api("/api/sweeps"), api("/api/agents")]);
  const rows = sweeps.map((sweep) => {
    const c = sweep.counts;
    const done = c.succeeded + c.failed + c.stopped;
    return el("tr", { "data-sweep": sweep.id },
      el("td", {}, el("a", { href: `#/sweep/${sweep.id}` }, sweep.id)),
      el("td", {}, sweep.name),
      el("td", {}, sweep.state),
      el("td", {}, `${done}/${sweep.max_trials} (${c.running} running, ${c.failed} failed)`),
      el("td", {}, `${sweep.direction} ${sweep.objective}`),
      el("td", {}, sweep.best ? `${number(sweep.best.objective)} (${sweep.best.id})` : "-"));
  });
  show(
    el("h2", {}, "Sweeps"),
    sweeps.length === 0 ? el("p", { class: "muted" }, "No sweeps yet.") :
      el("table", { id: "sweeps" },
        el("thead", {}, el("tr", {}, ["sweep", "name", "state", "trials", "objective", "best"].map((h) => el("th", {}, h)))),
        el("tbody", {}, rows)),
    ...agentsTable(agents));
}

function agentsTable(agents) {
  return [
    el("h2", {}, "Agents"),
    el("table", { id: "agents" },
      el("thead", {}, el("tr", {}, ["agent", "host", "state", "slots", "gpus", "running", "last seen"].map((h) => el("th", {}, h)))),
      el("tbody", {}, agents.map((agent) => el("tr", { "data-agent": agent.id },
        el("td", {}, agent.id),
        el("td", {}, agent.hostname),
        el("td", {}, !agent.connected ? "disconnected" : agent.draining ? "draining" : "connected"),
        el("td", {}, `${agent.busy_slots}/${agent.slots}`),
        el("td", {}, agent.gpus),
        el("td", {}, agent.running.join(", ")),
        el("td", {}, `${(agent.last_seen_ms_ago / 1000).toFixed(1)} s ago`))))),
  ];
}

// Rank: succeeded and feasible by objective, then succeeded infeasible, then the rest.
function rankKey(trial, direction) {
  const group = trial.state === "succeeded" && trial.objective !== null ? (trial.feasible ? 0 : 1) : 2;
  const value = trial.objective === null ? 0 : (direction === "maximize" ? -trial.objective : trial.objective);
  return [group, group === 2 ? trial.number : value];
}

function compare(a, b) {
  for (let i = 0; i < a.length; i++) {
    if (a[i] < b[i]) return -1;
    if (a[i] > b[i]) return 1;
  }
  return 0;
}

function sortKey(trial, key, direction) {
  switch (key) {
    case "rank": return rankKey(trial, direction);
    case "number": return [trial.number];
    case "objective": return [trial.objective === null ? Infinity : trial.objective];
    case "state": return [trial.state, trial.number];
    case "duration": return [trial.duration_s === null ? Infinity : trial.duration_s];
    default: {
      const raw = trial.params[key];
      const parsed = Number(raw);
      return raw === undefined ? [Infinity] : [Number.isNaN(parsed) ? raw : parsed];
    }
  }
}

async function renderSweep(id) {
  const detail = await api(`/api/sweeps/${id}`);
  const summary = detail.summary;
  const params = [...new Set(detail.trials.flatMap((trial) => Object.keys(trial.params)))].sort();
  const ranked = [...detail.trials].sort((a, b) => compare(rankKey(a, summary.direction), rankKey(b, summary.direction)));
  const rankOf = new Map(ranked.map((trial, index) => [trial.id, index + 1]));
  const best = ranked.find((trial) => trial.state === "succeeded" && trial.feasible && trial.objective !== null);
  const trials = [...detail.trials].sort((a, b) => {
    const order = compare(sortKey(a, sort.key, summary.direction), sortKey(b, sort.key, summary.direction));
    return sort.desc ? -order : order;
  });
  const columns = [["rank", "rank"], ["number", "trial"], ["objective", summary.objective], ["state", "state"],
    ...params.map((name) => [name, name]), ["duration", "time (s)"]];
  const header = el("tr", {}, columns.map(([key, label]) => el("th", {
    class: "sortable" + (sort.key === key ? (sort.desc ? " sorted-desc" : " sorted-asc") : ""),
    "data-key": key,
    onclick: () => {
      sort = { key, desc: sort.key === key ? !sort.desc : false };
      render();
    },
  }, label)));
  const rows = trials.map((trial) => el("tr", {
    "data-trial": trial.id,
    class: best && trial.id === best.id ? "best" : null,
  },
    el("td", {}, rankOf.get(trial.id)),
    el("td", {}, trial.id),
    el("td", {}, number(trial.objective) + (trial.objective !== null && !trial.feasible ? " (infeasible)" : "")),
    el("td", { class: `state-${trial.state}`, title: trial.message || "" }, trial.state),
    params.map((name) => el("td", {}, trial.params[name] ?? "-")),
    el("td", {}, trial.duration_s === null ? "-" : trial.duration_s.toFixed(1))));
  const c = summary.counts;
  const stamp = Date.now();
  show(
    el("p", {}, el("a", { href: "#/" }, "← all sweeps")),
    el("h2", { id: "sweep-title" }, `${summary.name} (${summary.id}) — ${summary.state}`),
    el("p", {}, `${c.succeeded} succeeded, ${c.stopped} stopped, ${c.failed} failed, ${c.running} running, ${c.pending} pending of at most ${summary.max_trials}. ` +
      (best ? `Best ${summary.objective}: ${number(best.objective)} (${best.id}).` : "No feasible result yet.")),
    summary.phases.length > 1 ? el("p", {}, "Phases: " + summary.phases.map((phase) =>
      `${phase.name} ${phase.trials}/${phase.max_trials}${phase.winner !== null ? ` (winner t${phase.winner})` : ""}`).join(" · ")) : null,
    el("div", { class: "plots" }, detail.plots.map((plot) => {
      const img = el("img", { class: "plot", "data-plot": plot, alt: plot });
      loadPlot(img, `/api/sweeps/${summary.id}/plots/${plot}.svg?t=${stamp}`);
      return img;
    })),
    el("h2", {}, "Trials"),
    el("table", { id: "trials" }, el("thead", {}, header), el("tbody", {}, rows)));
}

window.addEventListener("hashchange", render);
render();
