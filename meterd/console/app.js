// meterd console: a plain JavaScript module, no build step, no library.
// Data comes from the operator API with the admin token from sessionStorage, sent as the
// Authorization header (never in a URL). Live updates: /v1/console/stream (server-sent
// events read with fetch, so the header can be sent); each tick re-reads the open page.

const TOKEN_KEY = "meterd.token";
const MAX_SNAPSHOTS = 120; // two minutes of ticks on the ingest charts
const state = { snapshots: [], meta: null, page: null, stream: null, busy: false };

// ---- DOM and API helpers ----------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const main = () => document.getElementById("main");
const token = () => sessionStorage.getItem(TOKEN_KEY);

class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message ? `${error.code}: ${error.message}` : `HTTP ${status}`);
    this.status = status;
    this.code = error.code;
  }
}

async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${token()}`, ...(options.headers || {}) };
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method: options.method || "GET",
    headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
  });
  const body = await response.json().catch(() => null);
  if (response.status === 401) {
    logout("The admin token was refused; log in again.");
    throw new ApiError(401, body);
  }
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") search.set(key, value);
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

// One path segment per node name: "root/accounts/sweeper" stays a path.
const actorUrl = (actor) => actor.split("/").map(encodeURIComponent).join("/");

function fmtTime(ms) {
  if (ms === null || ms === undefined) return "—";
  return new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

function fmtBytes(n) {
  if (!n) return "0";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function fmtDuration(ms) {
  if (ms === null || ms === undefined) return "—";
  const s = Math.floor(ms / 1000);
  const parts = [[Math.floor(s / 86400), "d"], [Math.floor(s / 3600) % 24, "h"],
    [Math.floor(s / 60) % 60, "m"], [s % 60, "s"]];
  const shown = parts.filter(([v]) => v).slice(0, 2).map(([v, u]) => `${v}${u}`);
  return shown.length ? shown.join(" ") : "0s";
}

// replaceChildren without the nulls of "condition ? element : null".
function put(el, ...children) {
  el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
}

// A correction's idempotency key (docs/billing.md "Retrying a correction"): one per
// submission, kept while the same submission is sent again after its answer was lost (no
// answer, or 502/503/504), so the daemon records it at most once; a new one otherwise.
// The pending one is kept in sessionStorage (`name`): a reload of the page, or the browser
// restoring the tab, must not turn a resubmission of the same form into a second record.
function correctionKeys(name) {
  const slot = `meterd.pendingCorrection.${name}`;
  const load = () => {
    try { return JSON.parse(sessionStorage.getItem(slot)); } catch { return null; }
  };
  const keep = (pending) => pending ? sessionStorage.setItem(slot, JSON.stringify(pending))
    : sessionStorage.removeItem(slot);
  const fresh = () => "console-" + Array.from(crypto.getRandomValues(new Uint8Array(16)),
    (b) => b.toString(16).padStart(2, "0")).join("");
  return {
    keyFor(request) {
      let pending = load();  // { request, key } of a submission whose answer was lost
      if (!pending || pending.request !== request) {
        pending = { request, key: fresh() };
        keep(pending);  // before the POST: its answer may be lost with the page
      }
      return pending.key;
    },
    answered() { keep(null); },
    failed(error) {
      const lost = !(error instanceof ApiError) || [502, 503, 504].includes(error.status);
      if (!lost) keep(null);
      return lost;
    },
  };
}

// A correction's POST under its key; the status line says whether it was recorded now or
// before (a retry), and a lost answer says that submitting again is safe.
async function postCorrection(out, keys, url, body, done) {
  const request = JSON.stringify([url, body]);
  try {
    const answer = await api(url, { method: "POST", body,
      headers: { "Idempotency-Key": keys.keyFor(request) } });
    keys.answered();
    done(answer, answer.replayed ? "already recorded (this submission was sent before)"
      : "recorded");
  } catch (error) {
    if (keys.failed(error)) {
      out.replaceChildren(h("p", { class: "error", role: "alert", id: "correction-lost" },
        `${error.message || error}. The correction may be recorded: submit the same form`
        + " again to find out; it is sent with the same key and recorded at most once."));
    } else {
      showError(out, error);
    }
  }
}

function showError(where, error) {
  where.replaceChildren(h("p", { class: "error", role: "alert" }, String(error.message || error)));
}

// Exact decimal sums of the API's decimal strings (never floats).
function addDecimal(a, b) {
  const [ai, af = ""] = a.replace("-", "").split(".");
  const [bi, bf = ""] = b.replace("-", "").split(".");
  const places = Math.max(af.length, bf.length);
  const scaled = (neg, i, f) => (neg ? -1n : 1n) * BigInt(i + f.padEnd(places, "0"));
  const sum = scaled(a.startsWith("-"), ai, af) + scaled(b.startsWith("-"), bi, bf);
  const negative = sum < 0n;
  let digits = (negative ? -sum : sum).toString().padStart(places + 1, "0");
  let text = places ? `${digits.slice(0, -places)}.${digits.slice(-places)}` : digits;
  if (places) text = text.replace(/\.?0+$/, "");
  return (negative ? "-" : "") + text;
}

function compareDecimal(a, b) {
  const d = addDecimal(a, b.startsWith("-") ? b.slice(1) : `-${b}`);
  return d.startsWith("-") ? -1 : d === "0" ? 0 : 1;
}

// Dates from the forms: "YYYY-MM-DD" (and "HH:MM") in UTC, to Unix milliseconds.
function utcMillis(day, time = "00:00") {
  const [y, m, d] = day.split("-").map(Number);
  const [hh, mm] = time.split(":").map(Number);
  return Date.UTC(y, m - 1, d, hh, mm);
}

function hashRoute() {
  const [path, search = ""] = location.hash.replace(/^#/, "").split("?");
  return { parts: path.split("/").filter(Boolean).map(decodeURIComponent),
    params: new URLSearchParams(search) };
}

function setParams(base, params) {
  location.hash = `${base}${query(params)}`;
}

function confirmAction(text) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.showModal();
  });
}

// ---- live stream ----------------------------------------------------------------------------

async function openStream() {
  if (state.stream) return;
  const controller = new AbortController();
  state.stream = controller;
  const live = document.getElementById("live");
  try {
    const response = await fetch("/v1/console/stream", {
      headers: { Authorization: `Bearer ${token()}` }, signal: controller.signal,
    });
    if (!response.ok) throw new Error(`stream: HTTP ${response.status}`);
    live.classList.add("on");
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const lines = block.split("\n");
        const event = (lines.find((l) => l.startsWith("event: ")) || "").slice(7);
        const data = lines.filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
        if (event === "tick") onTick(JSON.parse(data));
      }
    }
  } catch (error) {
    if (controller.signal.aborted) return;
  } finally {
    live.classList.remove("on");
    if (state.stream === controller) state.stream = null;
  }
  if (!controller.signal.aborted && token()) setTimeout(openStream, 2000);
}

function onTick(tick) {
  state.snapshots.push(tick.ingest);
  if (state.snapshots.length > MAX_SNAPSHOTS) state.snapshots.shift();
  const page = state.page;
  if (page && page.onTick && !state.busy) {
    state.busy = true;
    Promise.resolve(page.onTick()).catch(() => {}).finally(() => { state.busy = false; });
  }
}

// ---- login ------------------------------------------------------------------------------------

function logout(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  if (state.stream) state.stream.abort();
  state.stream = null;
  state.meta = null;
  renderLogin(message);
}

function renderLogin(message) {
  document.getElementById("nav").hidden = true;
  state.page = null;
  const input = h("input", { type: "password", id: "token", autocomplete: "off", required: true });
  const problem = h("div");
  if (message) problem.append(h("p", { class: "error", role: "alert" }, message));
  const form = h("form", { class: "card", id: "login", onsubmit: async (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    try {
      state.meta = await api("/v1/console/meta");
    } catch (error) {
      sessionStorage.removeItem(TOKEN_KEY);
      showError(problem, error);
      return;
    }
    if (!location.hash || location.hash === "#/login") location.hash = "#/tree";
    start();
  } },
  h("h1", {}, "Log in"),
  h("p", { class: "note" }, "The admin token of [api] in config.toml. It is kept in this tab only"
    + " (sessionStorage) and sent as a header."),
  h("div", { class: "row" }, h("label", {}, "Admin token", input)),
  h("button", { type: "submit" }, "Log in"), problem);
  main().replaceChildren(form);
  input.focus();
}

async function start() {
  document.getElementById("nav").hidden = false;
  if (!state.meta) state.meta = await api("/v1/console/meta");
  document.getElementById("nav-cluster").hidden = !state.meta.cluster_node;
  openStream();
  render();
}

// ---- pages ------------------------------------------------------------------------------------

const PAGES = {
  tree: treePage, actor: actorPage, ingest: ingestPage, accounts: accountsPage,
  account: accountPage, invoice: invoicePage, corrections: correctionsPage,
  quarantine: quarantinePage, cluster: clusterPage,
};

async function render() {
  if (!token()) { renderLogin(); return; }
  const route = hashRoute();
  const name = route.parts[0] || "tree";
  for (const link of document.querySelectorAll("nav a")) {
    link.classList.toggle("active", link.getAttribute("href") === `#/${name}`);
  }
  const page = PAGES[name] || treePage;
  const container = h("section", { id: `page-${name}` });
  main().replaceChildren(container);
  state.page = null;
  try {
    state.page = (await page(container, route)) || null;
  } catch (error) {
    showError(container, error);
  }
}

// The tree: server-side search, filter, sort and paging (/v1/tree/nodes).
async function treePage(root, { params }) {
  const current = {
    search: params.get("search") || "", status: params.get("status") || "",
    sort: params.get("sort") || "tree", order: params.get("order") || "asc",
    offset: Number(params.get("offset") || 0), limit: 50,
  };
  const go = (changes) => setParams("#/tree", { ...current, ...changes, limit: undefined });
  const search = h("input", { type: "search", id: "tree-search", value: current.search,
    placeholder: "account or node name" });
  let timer;
  search.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => go({ search: search.value.trim(), offset: 0 }), 300);
  });
  const select = (id, value, options, key) => {
    const el = h("select", { id, onchange: (e) => go({ [key]: e.target.value, offset: 0 }) },
      options.map(([v, label]) => h("option", { value: v, selected: v === value }, label)));
    return el;
  };
  const summary = h("p", { class: "note", id: "tree-summary" });
  const table = h("table", { id: "tree-table" });
  const pager = h("div", { class: "pager" });
  root.append(h("h1", {}, "Supervision tree"),
    h("div", { class: "controls" },
      h("label", {}, "Search", search),
      h("label", {}, "Status", select("tree-status", current.status, [["", "any"],
        ["running", "running"], ["restarting", "restarting"], ["stopped", "stopped"],
        ["hibernated", "hibernated"], ["quarantined", "quarantined"]], "status")),
      h("label", {}, "Sort by", select("tree-sort", current.sort, [["tree", "tree order"],
        ["name", "name"], ["mailbox", "mailbox depth"], ["restarts", "restarts"],
        ["memory", "memory"], ["rate", "message rate"]], "sort")),
      h("label", {}, "Order", select("tree-order", current.order,
        [["asc", "ascending"], ["desc", "descending"]], "order"))),
    summary, table, pager);

  async function load() {
    const page = await api(`/v1/tree/nodes${query({ ...current,
      search: current.search || undefined, status: current.status || undefined })}`);
    const indent = current.sort === "tree" && !current.search && !current.status;
    table.replaceChildren(h("thead", {}, h("tr", {},
      ["name", "kind", "status", "restarts", "mailbox", "events/s", "memory", "started"].map(
        (c, i) => h("th", { class: i >= 3 && i <= 6 ? "num" : undefined }, c)))),
    h("tbody", {}, page.nodes.map((node) => {
      const target = node.account || node.path;
      const name = node.depth === 0 ? h("span", {}, node.name)
        : h("a", { href: `#/actor/${actorUrl(target)}` }, node.name);
      return h("tr", { "data-path": node.path },
        h("td", { style: indent ? `padding-left:${0.5 + node.depth * 1.2}rem` : undefined },
          name, node.quarantined ? h("span", { class: "badge" }, " quarantine") : null),
        h("td", {}, node.kind === "supervisor" ? `supervisor (${node.children})` : "actor"),
        h("td", { class: `status-${node.status}` }, node.status),
        h("td", { class: "num" }, node.restarts),
        h("td", { class: "num" }, node.mailbox),
        h("td", { class: "num" }, node.rate),
        h("td", { class: "num" }, node.memory ? fmtBytes(node.memory) : "—"),
        h("td", {}, fmtTime(node.started_at)));
    })));
    const last = Math.min(page.offset + page.nodes.length, page.matched);
    summary.textContent = `${page.matched} matching of ${page.total} live nodes`
      + ` and ${page.asleep} asleep accounts`
      + (current.status || current.search ? "" : " (search or filter to list those)")
      + (page.nodes.length ? `; showing ${page.offset + 1}–${last}` : "");
    pager.replaceChildren(
      h("button", { id: "tree-prev", disabled: current.offset === 0,
        onclick: () => go({ offset: Math.max(0, current.offset - current.limit) }) }, "‹ previous"),
      h("button", { id: "tree-next", disabled: last >= page.matched,
        onclick: () => go({ offset: current.offset + current.limit }) }, "next ›"));
  }
  await load();
  // A big tree costs the daemon a walk per read (linear in the awake actors): with more than
  // 10,000 nodes the page re-reads every 5th tick instead of every tick.
  let ticks = 0;
  return { onTick: () => {
    ticks += 1;
    const big = Number((summary.textContent.match(/of (\d+) live/) || [0, 0])[1]) > 10000;
    return !big || ticks % 5 === 0 ? load() : null;
  } };
}

// One actor: its figures, restart history, kill / restart, and (accounts) usage and events.
async function actorPage(root, { parts }) {
  const actor = parts.slice(1).join("/");
  const facts = h("dl", { class: "facts", id: "actor-facts" });
  const history = h("table", { id: "actor-history" });
  const message = h("div", { id: "actor-message" });
  const extra = h("div");
  const act = (action) => async () => {
    const what = action === "kill"
      ? `Kill ${actor}? Its supervisor handles it as a crash (a fault drill).`
      : `Restart ${actor}? It stops gracefully and starts again.`;
    if (!(await confirmAction(what))) return;
    try {
      const done = await api(`/v1/actors/${actorUrl(actor)}/${action}`, { method: "POST" });
      message.replaceChildren(h("p", { class: "note", role: "status" },
        `${done.action} of ${done.actor}: ${done.status}`));
    } catch (error) {
      showError(message, error);
    }
    await load();
  };
  root.append(h("h1", {}, `Actor ${actor}`),
    h("div", { class: "controls" },
      h("button", { id: "actor-restart", onclick: act("restart") }, "Restart…"),
      h("button", { id: "actor-kill", class: "danger", onclick: act("kill") }, "Kill…")),
    message, facts, h("h2", {}, "Restart history (kept across daemon restarts)"), history, extra);

  async function load() {
    const s = await api(`/v1/actors/${actorUrl(actor)}/status`);
    const rows = [["path", s.path], ["status", s.status], ["incarnation", s.incarnation],
      ["restarts", s.restarts], ["started", fmtTime(s.started_at)],
      ["uptime", fmtDuration(s.uptime_ms)], ["mailbox depth", s.mailbox],
      ["events/s", s.rate], ["events applied", s.events_applied],
      ["memory (estimate)", fmtBytes(s.memory)], ["windows held", s.windows],
      ["watermark", s.watermark ?? "—"], ["quarantined events", s.quarantined]];
    for (const id of ["actor-restart", "actor-kill"]) {  // an asleep account has no actor
      const button = document.getElementById(id);
      button.disabled = s.status === "hibernated";
      button.title = button.disabled ? "asleep (hibernated): it wakes on its next event" : "";
    }
    facts.replaceChildren(...rows.flatMap(([k, v]) => [h("dt", {}, k),
      h("dd", { "data-fact": k, class: k === "status" ? `status-${v}` : undefined }, v)]));
    history.replaceChildren(h("thead", {}, h("tr", {},
      ["at", "kind", "error", "message"].map((c) => h("th", {}, c)))),
    h("tbody", {}, s.restart_history.length ? s.restart_history.slice().reverse().map((r) =>
      h("tr", {}, h("td", {}, fmtTime(r.at)), h("td", {}, r.kind), h("td", {}, r.error_type || ""),
        h("td", {}, r.message)))
      : h("tr", {}, h("td", { colspan: 4, class: "note" }, "no restarts recorded"))));
    return s;
  }
  const first = await load();
  let quarantine = null;
  if (first.account) {
    quarantine = quarantineSection(first.account, load);
    extra.append(quarantine.el);
    await quarantine.load();
    const recent = "Recent events (the last 50 received in 24 hours, newest first)";
    const eventsTitle = h("h2", { id: "actor-events-title" }, recent);
    extra.append(h("h2", {}, "Usage, last 24 hours"), h("div", { id: "actor-usage" }),
      eventsTitle, findEventsForm(first.account, eventsTitle, recent),
      h("div", { id: "actor-events" }),
      h("p", {}, h("a", { href: `#/account/${encodeURIComponent(first.account)}` },
        "All usage and invoices of this account ›")));
    const now = Date.now();
    // The API aligns `to` down to the window: an hour past now keeps the current hour.
    await usageTables(extra.querySelector("#actor-usage"), first.account,
      now - 86400000, now + 3600000, "hour");
    const events = await api(`/v1/accounts/${encodeURIComponent(first.account)}/events${query({
      from: now - 86400000, limit: 50, order: "desc" })}`);
    extra.querySelector("#actor-events").replaceChildren(eventsTable(events.events));
  }
  return { onTick: async () => { await load(); if (quarantine) await quarantine.load(); } };
}

// Find an account's events by id and/or one property (any time, newest first: the
// daemon filters, GET .../events?id=&property=); "Recent" shows the last day's again.
function findEventsForm(account, title, recent) {
  const id = h("input", { id: "events-id", placeholder: "event id" });
  const property = h("input", { id: "events-property", placeholder: "NAME=VALUE" });
  const out = h("div", { id: "events-message" });
  async function show(params, heading) {
    out.replaceChildren();
    try {
      const found = await api(`/v1/accounts/${encodeURIComponent(account)}/events${query({
        limit: 50, order: "desc", ...params })}`);
      title.textContent = heading;
      document.getElementById("actor-events").replaceChildren(eventsTable(found.events));
    } catch (error) {
      showError(out, error);
    }
  }
  const form = h("form", { class: "controls", id: "events-find", onsubmit: async (event) => {
    event.preventDefault();
    const wanted = { id: id.value.trim(), property: property.value.trim() };
    if (!wanted.id && !wanted.property) {
      out.replaceChildren(h("p", { class: "error", role: "alert" },
        "Give an event id, a property as NAME=VALUE, or both."));
      return;
    }
    const what = [wanted.id && `id ${wanted.id}`, wanted.property].filter(Boolean).join(", ");
    await show(wanted, `Events with ${what} (any time, newest first, at most 50)`);
  } }, h("label", {}, "Find events: id", id), h("label", {}, "property", property),
  h("button", { type: "submit", id: "events-find-submit" }, "Find"),
  h("button", { type: "button", onclick: () => show({ from: Date.now() - 86400000 }, recent) },
    "Recent"));
  return h("div", {}, form, out);
}

// An account's quarantined events, each with Release / Discard (who and why in the form
// above them, a confirmation before anything is written; POST /v1/quarantine/{account}/...).
function quarantineSection(account, after) {
  const table = h("table", { id: "actor-quarantine" });
  const out = h("div", { id: "quarantine-message" });
  const by = h("input", { id: "quarantine-by", placeholder: "who" });
  const reason = h("input", { id: "quarantine-reason", size: 40,
    placeholder: "why: the fix deployed, or why it must never count" });
  let shown = null;
  async function decide(action, ids) {
    if (!by.value.trim() || !reason.value.trim()) {
      out.replaceChildren(h("p", { class: "error", role: "alert" },
        "Say who you are and why: both are kept in the quarantine log."));
      return;
    }
    const which = ids ? `event ${ids.join(", ")}` : "every quarantined event";
    const text = action === "release"
      ? `Release ${which} of account ${account}? It is appended to the journal again and`
        + " counted once; if it crashes the actor again it goes back to quarantine."
      : `Discard ${which} of account ${account}? It will never count; this is recorded and`
        + " cannot be undone.";
    if (!(await confirmAction(`${text} By ${by.value}: ${reason.value}`))) return;
    try {
      const body = { by: by.value, reason: reason.value };
      if (ids) body.ids = ids;
      const done = await api(`/v1/quarantine/${encodeURIComponent(account)}/${action}`,
        { method: "POST", body });
      const names = done.events.map((e) => e.event_id).join(", ") || "nothing";
      const same = done.unchanged.map((u) => `${u.event_id} was already ${u.action}`);
      out.replaceChildren(h("p", { class: "note", role: "status" },
        `${action === "release" ? "Released" : "Discarded"}: ${names}`
        + (done.batch_id ? ` (journal batch ${done.batch_id})` : "")
        + (same.length ? `; ${same.join("; ")}` : "") + "."));
    } catch (error) {
      showError(out, error);
    }
    shown = null;
    await load();
    await after();
  }
  async function load() {
    const q = await api(`/v1/quarantine${query({ account })}`);
    const key = JSON.stringify(q.events);
    if (key === shown) return; // unchanged: keep the rows (and their buttons) in place
    shown = key;
    const button = (action, id, label) => h("button", { type: "button", "data-action": action,
      "data-event": id, class: action === "discard" ? "danger" : undefined,
      onclick: () => decide(action, [id]) }, label);
    table.replaceChildren(h("thead", {}, h("tr", {}, ["quarantined", "event", "batch", "error",
      ""].map((c) => h("th", {}, c)))), h("tbody", {}, q.events.length ? q.events.map((e) =>
      h("tr", { "data-event": e.event_id }, h("td", {}, fmtTime(e.at)), h("td", {}, e.event_id),
        h("td", { class: "num" }, e.batch_id), h("td", {}, e.error),
        h("td", {}, button("release", e.event_id, "Release…"), " ",
          button("discard", e.event_id, "Discard…"))))
      : h("tr", {}, h("td", { colspan: 5, class: "note" }, "nothing in quarantine"))));
  }
  const el = h("section", { id: "actor-quarantine-section" }, h("h2", {}, "Quarantine"),
    h("p", { class: "note" }, "Events that crashed this account's actor, set aside with the"
      + " error they raised. Fix the cause (a meter's configuration, a code fix), then"
      + " release them: re-applied and counted once. Or discard them: never counted. Both"
      + " are recorded with who and why (docs/accounts.md, quarantine runbook)."),
    h("div", { class: "controls" }, h("label", {}, "By (who)", by), h("label", {}, "Reason",
      reason), h("button", { type: "button", id: "quarantine-release-all",
      onclick: () => decide("release", null) }, "Release all…")), out, table);
  return { el, load };
}

function eventsTable(events) {
  return h("table", {}, h("thead", {}, h("tr", {},
    ["id", "meter", "quantity", "time", "properties", "producer", "status"]
      .map((c) => h("th", {}, c)))),
  h("tbody", {}, events.length ? events.map((e) => h("tr", { "data-event": e.id },
    h("td", {}, e.id),
    h("td", {}, e.meter), h("td", { class: "num" }, e.quantity), h("td", {}, fmtTime(e.time)),
    h("td", {}, Object.entries(e.properties).map(([k, v]) => `${k}=${v}`).join(" ")),
    h("td", {}, e.producer), h("td", {}, e.status || "counted")))
    : h("tr", {}, h("td", { colspan: 7, class: "note" }, "no events"))));
}

// Usage of every meter of an account, with a total (sum, count), peak (max) per meter.
async function usageTables(where, account, from, to, window) {
  const meters = state.meta.meters;
  const results = await Promise.all(meters.map((m) => api(
    `/v1/accounts/${encodeURIComponent(account)}/usage${query({ meter: m.name, from, to, window })}`)
    .catch((error) => ({ error }))));
  const body = [];
  meters.forEach((meter, i) => {
    const result = results[i];
    if (result.error) {
      body.push(h("tr", {}, h("td", {}, meter.name), h("td", { colspan: 2, class: "error" },
        result.error.message)));
      return;
    }
    if (!result.rows.length) return;
    for (const row of result.rows) {
      body.push(h("tr", {}, h("td", {}, meter.name), h("td", {}, fmtTime(row.start)),
        h("td", { class: "num" }, row.value)));
    }
    let total = null;
    let label = "total";
    if (meter.aggregation === "sum" || meter.aggregation === "count") {
      total = result.rows.reduce((acc, row) => addDecimal(acc, row.value), "0");
    } else if (meter.aggregation === "max") {
      label = "peak";
      total = result.rows.reduce((acc, row) => (compareDecimal(row.value, acc) > 0
        ? row.value : acc), result.rows[0].value);
    }
    if (total !== null) {
      body.push(h("tr", { class: "total", "data-meter": meter.name }, h("td", {}, meter.name),
        h("td", {}, label), h("td", { class: "num" }, total)));
    }
  });
  where.replaceChildren(h("table", { class: "usage" }, h("thead", {}, h("tr", {},
    h("th", {}, "meter"), h("th", {}, `${window} from`), h("th", { class: "num" }, "value"))),
  h("tbody", {}, body.length ? body
    : h("tr", {}, h("td", { colspan: 3, class: "note" }, "no usage in this range")))));
}

// Ingest at a glance: live charts from the stream's snapshots.
function rates(key) {
  const s = state.snapshots;
  const points = [];
  for (let i = 1; i < s.length; i += 1) {
    const dt = (s[i].at - s[i - 1].at) / 1000;
    if (dt > 0) points.push([s[i].at, (key(s[i]) - key(s[i - 1])) / dt]);
  }
  return points;
}

function quantile(counts, bounds, q) {
  const n = counts.reduce((a, b) => a + b, 0);
  if (!n) return null;
  let running = 0;
  for (let i = 0; i < counts.length; i += 1) {
    running += counts[i];
    if (running >= q * n && counts[i]) return i < bounds.length ? bounds[i] * 1000 : Infinity;
  }
  return null;
}

// Quantile q (ms, a bucket's upper bound) of each second's observations of a histogram
// kept as counts per bucket since start (ack latency, store commit latency).
function latencies(q, name = "ack_latency") {
  const s = state.snapshots;
  const points = [];
  for (let i = 1; i < s.length; i += 1) {
    const now = s[i][`${name}_counts`];
    const before = s[i - 1][`${name}_counts`];
    if (!now || !before || now.length !== before.length) continue;
    const counts = now.map((c, j) => c - before[j]);
    const value = quantile(counts, s[i][`${name}_bounds`], q);
    if (value !== null && Number.isFinite(value)) points.push([s[i].at, value]);
  }
  return points;
}

const COLORS = ["#2563eb", "#17803d", "#c0362c", "#b7791f", "#7c3aed", "#0e7490", "#be185d"];

function chart(title, series, unit, id) {
  const width = 360;
  const height = 120;
  const all = series.flatMap((s) => s.points);
  const top = Math.max(1e-9, ...all.map(([, v]) => v));
  const t0 = all.length ? Math.min(...all.map(([t]) => t)) : Date.now() - 10000;
  const t1 = Math.max(...all.map(([t]) => t), t0 + 10000);
  const x = (t) => ((t - t0) / (t1 - t0)) * (width - 40) + 38;
  const y = (v) => height - 14 - (v / top) * (height - 24);
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const text = (tx, ty, value) => {
    const el = document.createElementNS(ns, "text");
    el.setAttribute("x", tx); el.setAttribute("y", ty); el.setAttribute("font-size", "9");
    el.setAttribute("fill", "#667085"); el.textContent = value; svg.append(el);
  };
  text(0, 12, `${+top.toPrecision(3)} ${unit}`);
  text(0, height - 14, `0`);
  const axis = document.createElementNS(ns, "path");
  axis.setAttribute("d", `M38 ${height - 14} H${width}`);
  axis.setAttribute("stroke", "#d0d5dd");
  svg.append(axis);
  series.forEach((s, i) => {
    if (!s.points.length) return;
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", s.points.map(([t, v]) => `${x(t)},${y(v)}`).join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", COLORS[i % COLORS.length]);
    line.setAttribute("stroke-width", "1.5");
    svg.append(line);
  });
  const latest = (s) => (s.points.length ? +s.points[s.points.length - 1][1].toPrecision(3) : "—");
  return h("div", { class: "chart", id }, h("h3", {}, title), svg,
    h("div", { class: "legend" }, series.map((s, i) => h("span", {
      style: `color:${COLORS[i % COLORS.length]}` }, `${s.name}: ${latest(s)}`))));
}

async function ingestPage(root) {
  const grid = h("div", { class: "grid", id: "ingest-charts" });
  const producers = h("table", { id: "ingest-producers" });
  root.append(h("h1", {}, "Ingest at a glance"),
    h("p", { class: "note" }, "Live, one point a second (the last two minutes)."),
    grid, h("h2", {}, "Producers"), producers);
  if (!state.snapshots.length) state.snapshots.push(await api("/v1/console/ingest"));
  function draw() {
    const last = state.snapshots[state.snapshots.length - 1];
    const codes = [...new Set(state.snapshots.flatMap((s) => Object.keys(s.rejected)))].sort();
    const names = [...new Set(state.snapshots.flatMap((s) => s.producers.map((p) => p.producer)))];
    const conn = (name) => state.snapshots.map((s) => [s.at,
      (s.producers.find((p) => p.producer === name) || { connections: 0 }).connections]);
    grid.replaceChildren(
      chart("Events per second", [
        { name: "accepted", points: rates((s) => s.accepted) },
        { name: "duplicate", points: rates((s) => s.duplicates) },
        ...codes.map((code) => ({ name: `rejected ${code}`,
          points: rates((s) => s.rejected[code] || 0) })),
      ], "/s", "chart-events"),
      chart("Ack latency (bucket upper bound)", [
        { name: "p50", points: latencies(0.5) }, { name: "p99", points: latencies(0.99) },
      ], "ms", "chart-latency"),
      chart("Connections per producer", names.map((name) => ({ name, points: conn(name) })),
        "", "chart-connections"),
      chart("Store", [
        { name: "commits/s", points: rates((s) => s.store_commits) },
        { name: "pending ops", points: state.snapshots.map((s) => [s.at, s.store_pending]) },
      ], "", "chart-store"),
      chart("Store commit latency (bucket upper bound)", [
        { name: "p50", points: latencies(0.5, "commit_latency") },
        { name: "p99", points: latencies(0.99, "commit_latency") },
      ], "ms", "chart-commit-latency"),
      chart("Checkpoint latency (mean)", [{ name: "ms", points: (() => {
        const s = state.snapshots;
        const out = [];
        for (let i = 1; i < s.length; i += 1) {
          const n = s[i].checkpoint_count - s[i - 1].checkpoint_count;
          if (n > 0) out.push([s[i].at,
            ((s[i].checkpoint_seconds - s[i - 1].checkpoint_seconds) / n) * 1000]);
        }
        return out;
      })() }], "ms", "chart-checkpoints"),
      chart("Process memory (resident)", [{ name: "MiB", points: state.snapshots.map((s) =>
        [s.at, s.resident_bytes / 1048576]) }], "MiB", "chart-process"),
      chart("Awake actors", [{ name: "actors", points: state.snapshots.map((s) =>
        [s.at, s.live_actors]) }], "", "chart-actors"));
    producers.replaceChildren(h("thead", {}, h("tr", {},
      ["producer", "connections", "acks", "accepted", "duplicates", "rejected"].map((c, i) =>
        h("th", { class: i ? "num" : undefined }, c)))),
    h("tbody", {}, last.producers.map((p) => h("tr", {}, h("td", {}, p.producer),
      h("td", { class: "num" }, p.connections), h("td", { class: "num" }, p.acks),
      h("td", { class: "num" }, p.accepted), h("td", { class: "num" }, p.duplicates),
      h("td", { class: "num" }, p.rejected)))));
  }
  draw();
  return { onTick: draw };
}

// Billing support: find an account (through the tree query), its usage, its invoices.
async function accountsPage(root, { params }) {
  const search = h("input", { type: "search", id: "account-search",
    value: params.get("search") || "", placeholder: "part of an account id" });
  const results = h("div", { id: "account-results" });
  const run = async () => {
    const text = search.value.trim();
    if (!text) { results.replaceChildren(); return; }
    const page = await api(`/v1/tree/nodes${query({ search: text, limit: 50, sort: "name" })}`);
    const accounts = page.nodes.filter((n) => n.account);
    results.replaceChildren(h("table", {}, h("thead", {}, h("tr", {},
      ["account", "status", ""].map((c) => h("th", {}, c)))),
    h("tbody", {}, accounts.length ? accounts.map((n) => h("tr", { "data-account": n.account },
      h("td", {}, h("a", { href: `#/account/${encodeURIComponent(n.account)}` }, n.account)),
      h("td", { class: `status-${n.status}` }, n.status),
      h("td", {}, h("a", { href: `#/actor/${encodeURIComponent(n.account)}` }, "actor"))))
      : h("tr", {}, h("td", { colspan: 3, class: "note" }, "no account matches")))));
  };
  root.append(h("h1", {}, "Accounts"), h("form", { class: "controls", onsubmit: (e) => {
    e.preventDefault(); setParams("#/accounts", { search: search.value.trim() });
  } }, h("label", {}, "Search", search), h("button", { type: "submit" }, "Search")), results);
  await run();
}

function monthOf(ms) {
  return new Date(ms).toISOString().slice(0, 7);
}

async function accountPage(root, { parts, params }) {
  const account = parts[1];
  const today = new Date().toISOString().slice(0, 10);
  const from = params.get("from") || `${today.slice(0, 7)}-01`;
  const tomorrow = new Date(Date.now() + 86400000).toISOString().slice(0, 10);
  const to = params.get("to") || tomorrow;
  const window = params.get("window") || "day";
  const fromInput = h("input", { type: "date", id: "usage-from", value: from });
  const toInput = h("input", { type: "date", id: "usage-to", value: to });
  const windowSelect = h("select", { id: "usage-window" }, ["minute", "hour", "day"].map((w) =>
    h("option", { value: w, selected: w === window }, w)));
  const period = h("input", { type: "month", id: "invoice-period", value: monthOf(Date.now()) });
  const usage = h("div", { id: "account-usage" });
  root.append(h("h1", {}, `Account ${account}`),
    h("form", { class: "controls", onsubmit: (e) => {
      e.preventDefault();
      setParams(`#/account/${encodeURIComponent(account)}`,
        { from: fromInput.value, to: toInput.value, window: windowSelect.value });
    } }, h("label", {}, "From (UTC)", fromInput), h("label", {}, "To (UTC, exclusive)", toInput),
    h("label", {}, "Window", windowSelect), h("button", { type: "submit" }, "Show")),
    h("h2", {}, "Usage, all meters"), usage,
    h("h2", {}, "Invoice"),
    h("form", { class: "controls", onsubmit: (e) => {
      e.preventDefault();
      location.hash = `#/invoice/${encodeURIComponent(account)}/${period.value}`;
    } }, h("label", {}, "Month", period), h("button", { type: "submit", id: "open-invoice" },
      "Open invoice")),
    h("p", {}, h("a", { href: `#/corrections?account=${encodeURIComponent(account)}` },
      "Corrections and voids for this account ›"), " · ",
    h("a", { href: `#/actor/${encodeURIComponent(account)}` }, "Its actor ›")));
  await usageTables(usage, account, utcMillis(from), utcMillis(to), window);
}

async function invoicePage(root, { parts }) {
  const [, account, period] = parts;
  const body = h("div", { id: "invoice" });
  const explanation = h("div", { id: "explanation" });
  root.append(h("h1", {}, `Invoice ${account} ${period}`), body, explanation);
  async function load() {
    const inv = await api(`/v1/accounts/${encodeURIComponent(account)}/invoices/${period}`);
    put(body,
      h("p", {}, `Status: ${inv.status}`, inv.closed ? ` (closed by ${inv.closed.by} at `
        + `${fmtTime(inv.closed.at)})` : ""),
      h("table", { id: "invoice-lines" }, h("thead", {}, h("tr", {},
        ["#", "meter", "dimensions", "from", "usage", "adjusted", "billed", "unit price",
          "amount", "rule", ""].map((c) => h("th", {}, c)))),
      h("tbody", {}, inv.lines.map((line) => h("tr", { "data-line": line.number },
        h("td", {}, line.number), h("td", {}, line.meter),
        h("td", {}, Object.entries(line.dimensions).map(([k, v]) => `${k}=${v}`).join(" ")),
        h("td", {}, fmtTime(line.start).slice(0, 10)),
        h("td", { class: "num" }, line.usage), h("td", { class: "num", "data-col": "adjusted" },
          line.adjusted), h("td", { class: "num", "data-col": "quantity" },
          line.quantity + (line.capped ? " (capped)" : "")),
        h("td", { class: "num" }, line.unit_price), h("td", { class: "num" }, line.amount),
        h("td", {}, line.rule),
        h("td", {}, h("button", { type: "button", onclick: () => explain(line.number) },
          "explain")))),
      h("tr", { class: "total" }, h("td", { colspan: 8 }, `total (${inv.currency})`),
        h("td", { class: "num", id: "invoice-total" }, inv.total), h("td", { colspan: 2 })))),
      inv.unpriced.length ? h("p", { class: "note" },
        `${inv.unpriced.length} usage figures have no price.`) : null,
      (inv.restatements || []).length ? h("div", {}, h("h2", {}, "Restatements"),
        h("ul", {}, inv.restatements.map((r) => h("li", {}, `${fmtTime(r.at)}: ${r.old_total} → `
          + `${r.new_total} (${r.causes.join("; ")})`)))) : null,
      h("p", {}, h("a", { href: `#/corrections?account=${encodeURIComponent(account)}` },
        "Enter a correction or a void ›")));
  }
  async function explain(number) {
    try {
      const e = await api(`/v1/accounts/${encodeURIComponent(account)}/invoices/${period}`
        + `/lines/${number}/explanation?limit=20`);
      // Events in time order (the API pages them in journal order).
      const events = e.events.slice().sort((a, b) => a.time - b.time || (a.id < b.id ? -1 : 1));
      put(explanation, h("h2", {}, `Line ${number} explained`),
        h("p", {}, `${e.meter} ${Object.entries(e.filter).map(([k, v]) => `${k}=${v}`).join(" ")}`
          + ` from ${fmtTime(e.start)} to ${fmtTime(e.end)} (UTC, end excluded)`),
        h("ul", { id: "explanation-words" }, figureInWords(e).map((t) => h("li", {}, t))),
        e.notes.length ? h("ul", {}, e.notes.map((n) => h("li", {}, n))) : null,
        e.adjustments.length ? h("div", {}, h("h2", {}, "Adjustments"), h("ul", {},
          e.adjustments.map((a) => h("li", {}, `#${a.id} ${a.kind} ${a.quantity} ${e.unit} on `
            + `${fmtTime(a.start)} by ${a.by}: ${a.reason}`)))) : null,
        e.voids.length ? h("div", {}, h("h2", {}, "Voids"), h("ul", {},
          e.voids.map((v) => h("li", {}, `#${v.id} event ${v.event_id} (${v.quantity} ${e.unit}`
            + ` at ${fmtTime(v.time)}) by ${v.by}: ${v.reason}`)))) : null,
        h("h2", {}, `Events (${events.length} of the first page, in time order)`),
        h("table", {}, h("thead", {}, h("tr", {}, ["time", "id", "quantity", "status"].map((c) =>
          h("th", {}, c)))), h("tbody", {}, events.map((ev) => h("tr", {},
          h("td", {}, fmtTime(ev.time)), h("td", {}, ev.id),
          h("td", { class: "num" }, `${ev.quantity} ${e.unit}`), h("td", {}, ev.status))))),
        e.next_cursor ? h("p", { class: "note" }, "More events: meterd explain "
          + `${account} --period ${period} --line ${number} --limit 1000`) : null);
    } catch (error) {
      showError(explanation, error);
    }
  }
  await load();
}

// A line's figure in words, as `meterd explain` says it: usage, corrections, the cap's
// arithmetic, the price and its rule by name, and the event that set a max/min/latest.
const DECIDED = { max: "The peak was set by", min: "The low was set by",
  latest: "The value is that of the latest event," };

function capWords(cap, unit) {
  let limit = cap.daily !== null && cap.daily !== undefined
    ? `at most ${cap.daily} ${unit} a day x ${cap.days} days = ${cap.cap} ${unit}`
    : `at most ${cap.cap} ${unit} a month`;
  if (cap.used_before && cap.used_before !== "0") {
    limit += `, of which ${cap.used_before} were billed on this line's earlier dates`;
  }
  return limit;
}

function figureInWords(e) {
  const unit = e.unit || e.meter;
  const line = e.line;
  const out = [];
  if (!line) {
    out.push(`${e.value} ${unit}.`);
  } else {
    out.push(`Usage ${line.usage} ${unit}` + (line.adjusted !== "0"
      ? `, corrections ${line.adjusted} (adjustments below).` : "."));
    if (line.capped) {
      out.push(`Billed ${line.quantity} ${unit}: capped` + (e.cap ? `, ${capWords(e.cap, unit)}.`
        : "."));
    } else {
      const net = addDecimal(line.usage, line.adjusted);
      const rounded = compareDecimal(net, line.quantity) !== 0 ? " (rounded by the price rule)"
        : "";
      out.push(`Billed ${line.quantity} ${unit}${rounded}.`);
      if (e.cap) out.push(`(Under its cap: ${capWords(e.cap, unit)}.)`);
    }
    out.push(`${line.quantity} x ${line.unit_price} per unit = ${line.amount} ${e.currency},`
      + ` priced by "${line.rule}".`);
  }
  const decided = e.decided_by;
  if (decided) {
    out.push(`${DECIDED[e.aggregation] || "Set by"} event ${decided.id}: ${decided.quantity}`
      + ` ${unit} at ${fmtTime(decided.time)}.`);
  }
  return out;
}

// Corrections: dates in the form, epoch milliseconds to the API (as it takes today).
async function correctionsPage(root, { params }) {
  const account = params.get("account") || "";
  const summed = state.meta.meters.filter((m) => m.aggregation === "sum"
    || m.aggregation === "count");
  const out = h("div", { id: "corrections-result" });
  const adjustKeys = correctionKeys("adjust");
  const voidKeys = correctionKeys("void");
  const field = (label, el) => h("label", {}, label, el);
  const input = (id, attrs = {}) => h("input", { id, required: true, ...attrs });

  const a = {
    account: input("adj-account", { value: account }),
    meter: h("select", { id: "adj-meter" }, summed.map((m) => h("option", { value: m.name },
      m.name))),
    day: input("adj-day", { type: "date", value: new Date().toISOString().slice(0, 10) }),
    hour: h("input", { id: "adj-hour", type: "time", value: "00:00", step: 3600 }),
    window: h("select", { id: "adj-window" }, ["day", "hour"].map((w) => h("option", { value: w },
      w))),
    kind: h("select", { id: "adj-kind" }, ["credit", "debit"].map((k) => h("option", { value: k },
      k))),
    quantity: input("adj-quantity", { inputmode: "decimal", pattern: "[0-9]+(\\.[0-9]+)?" }),
    by: input("adj-by"), reason: input("adj-reason"),
  };
  const dims = h("div", { class: "row", id: "adj-dimensions" });
  const drawDims = () => {
    const meter = summed.find((m) => m.name === a.meter.value);
    dims.replaceChildren(...(meter ? meter.dimensions : []).map((d) => field(d,
      h("input", { "data-dimension": d, id: `adj-dim-${d}`, placeholder: "(any: leave empty)" }))));
  };
  a.meter.addEventListener("change", drawDims);
  drawDims();
  const adjust = h("form", { class: "card", id: "adjust-form", onsubmit: async (event) => {
    event.preventDefault();
    const start = a.window.value === "day" ? utcMillis(a.day.value)
      : utcMillis(a.day.value, a.hour.value);
    const dimensions = {};
    for (const el of dims.querySelectorAll("input")) {
      if (el.value.trim()) dimensions[el.dataset.dimension] = el.value.trim();
    }
    const when = a.window.value === "day" ? `${a.day.value} (the whole UTC day)`
      : `${a.day.value} ${a.hour.value} UTC (one hour)`;
    const dimText = Object.entries(dimensions).map(([k, v]) => `${k}=${v}`).join(", ");
    const text = `${a.kind.value === "credit" ? "Credit" : "Debit"} ${a.quantity.value} `
      + `${a.meter.value}${dimText ? ` (${dimText})` : ""} on ${when} for account `
      + `${a.account.value}. Adjustments are append-only: this cannot be edited later.`;
    if (!(await confirmAction(text))) return;
    const body = { meter: a.meter.value, start, window: a.window.value, dimensions,
      kind: a.kind.value, quantity: a.quantity.value, by: a.by.value, reason: a.reason.value };
    const url = `/v1/accounts/${encodeURIComponent(a.account.value)}/adjustments`;
    await postCorrection(out, adjustKeys, url, body, (done, recorded) => {
      const month = monthOf(start);
      out.replaceChildren(h("p", { role: "status" },
        `Adjustment #${done.adjustment.id} ${recorded}`
        + (done.restatement ? ` (restatement #${done.restatement.id})` : "") + ". ",
        h("a", { href: `#/invoice/${encodeURIComponent(a.account.value)}/${month}`,
          id: "adj-invoice-link" }, `Invoice ${month} ›`)));
    });
  } },
  h("h2", {}, "Credit or debit usage"),
  h("div", { class: "row" }, field("Account", a.account), field("Meter", a.meter),
    field("Kind", a.kind), field("Quantity", a.quantity)),
  h("div", { class: "row" }, field("Day (UTC)", a.day), field("Window", a.window),
    field("Hour (hour window)", a.hour)),
  dims,
  h("div", { class: "row" }, field("By (who)", a.by), field("Reason", a.reason)),
  h("button", { type: "submit", id: "adj-submit" }, "Review and record…"));

  const v = { account: input("void-account", { value: account }), event: input("void-event"),
    period: h("input", { id: "void-period", type: "month" }), by: input("void-by"),
    reason: input("void-reason") };
  const voidForm = h("form", { class: "card", id: "void-form", onsubmit: async (event) => {
    event.preventDefault();
    const text = `Void event ${v.event.value} of account ${v.account.value}? It stays in the`
      + " journal and leaves billed usage; a closed month is restated.";
    if (!(await confirmAction(text))) return;
    const body = { by: v.by.value, reason: v.reason.value };
    if (v.period.value) body.period = v.period.value;
    const url = `/v1/accounts/${encodeURIComponent(v.account.value)}/events/`
      + `${encodeURIComponent(v.event.value)}/void`;
    await postCorrection(out, voidKeys, url, body, (done, recorded) => {
      out.replaceChildren(h("p", { role: "status" }, `Void #${done.void.id} ${recorded}.`));
    });
  } },
  h("h2", {}, "Void an event"),
  h("div", { class: "row" }, field("Account", v.account), field("Event id", v.event),
    field("Month (optional)", v.period)),
  h("div", { class: "row" }, field("By (who)", v.by), field("Reason", v.reason)),
  h("button", { type: "submit", id: "void-submit" }, "Review and void…"));

  const c = { period: input("close-period", { type: "month" }), by: input("close-by") };
  const closeForm = h("form", { class: "card", id: "close-form", onsubmit: async (event) => {
    event.preventDefault();
    if (!(await confirmAction(`Close ${c.period.value} for every account? Its figures become`
      + " final; later changes are restatements."))) return;
    try {
      const done = await api(`/v1/periods/${c.period.value}/close`, { method: "POST",
        body: { by: c.by.value } });
      out.replaceChildren(h("p", { role: "status" },
        `${done.period} closed by ${done.by}: ${done.accounts} accounts.`));
    } catch (error) {
      showError(out, error);
    }
  } },
  h("h2", {}, "Close a month"),
  h("div", { class: "row" }, field("Month", c.period), field("By (who)", c.by)),
  h("button", { type: "submit", id: "close-submit" }, "Review and close…"));

  root.append(h("h1", {}, "Corrections"), out, adjust, voidForm, closeForm);
}

async function quarantinePage(root) {
  const table = h("table", { id: "quarantine-table" });
  root.append(h("h1", {}, "Quarantine"), h("p", { class: "note" },
    "Events that crashed their account's actor, set aside. Release or discard them on"
    + " their account's actor page (follow the account)."), table);
  async function load() {
    const q = await api("/v1/quarantine");
    table.replaceChildren(h("thead", {}, h("tr", {}, ["at", "account", "event", "batch", "error"]
      .map((c) => h("th", {}, c)))), h("tbody", {}, q.events.length ? q.events.map((e) =>
      h("tr", {}, h("td", {}, fmtTime(e.at)), h("td", {}, h("a", {
        href: `#/actor/${encodeURIComponent(e.account)}` }, e.account)), h("td", {}, e.event_id),
      h("td", { class: "num" }, e.batch_id), h("td", {}, e.error)))
      : h("tr", {}, h("td", { colspan: 5, class: "note" }, "nothing in quarantine"))));
  }
  await load();
  return { onTick: load };
}

// ---- start ------------------------------------------------------------------------------------

window.addEventListener("hashchange", () => { if (token()) render(); });
document.getElementById("logout").addEventListener("click", () => logout());
if (token()) start().catch((error) => renderLogin(String(error.message || error)));
else renderLogin();

// A cluster (a node with [cluster]): its nodes, which node owns which partitions at what
// epoch, and the partitions whose owner has not applied its log to the end (GET /v1/cluster;
// the figures are at most a placement round old). This tree page shows this node only.
async function clusterPage(root) {
  const nodes = h("table", { id: "cluster-nodes" });
  const owners = h("table", { id: "cluster-owners" });
  const lagging = h("div", { id: "cluster-lagging" });
  const out = h("div");
  root.append(h("h1", {}, `Cluster (this node: ${state.meta.cluster_node})`),
    h("p", { class: "note" }, "Live nodes take the partitions they rank first for; a node"
      + " that is down keeps its partitions until its leases expire and another takes them"
      + " over. The Tree page shows this node's own supervision tree."),
    out, h("h2", {}, "Nodes"), nodes, h("h2", {}, "Partitions by owner"), owners,
    h("h2", {}, "Partitions behind their log"), lagging);
  const head = (...names) => h("thead", {}, h("tr", {}, names.map((c) => h("th", {}, c))));
  async function load() {
    let doc;
    try {
      doc = await api("/v1/cluster");
    } catch (error) {
      showError(out, error);
      return;
    }
    out.replaceChildren();
    nodes.replaceChildren(head("node", "status", "partitions"), h("tbody", {},
      doc.nodes.map((n) => h("tr", { "data-node": n.name },
        h("td", {}, n.name + (n.name === state.meta.cluster_node ? " (this node)" : "")),
        h("td", { class: `status-${n.status}` }, n.status), h("td", { class: "num" },
          n.partitions)))));
    const by = new Map();
    for (const p of doc.partitions) {
      const owner = p.owner ?? "(none: free)";
      const row = by.get(owner) || { partitions: 0, epochs: new Set(), lag: 0 };
      row.partitions += 1;
      if (p.epoch !== null && p.epoch !== undefined) row.epochs.add(p.epoch);
      row.lag += p.lag || 0;
      by.set(owner, row);
    }
    owners.replaceChildren(head("owner", "partitions", "epochs", "slices not applied"),
      h("tbody", {}, [...by.entries()].sort().map(([owner, r]) => h("tr",
        { "data-owner": owner }, h("td", {}, owner), h("td", { class: "num" }, r.partitions),
        h("td", {}, [...r.epochs].sort((a, b) => a - b).join(", ") || "—"),
        h("td", { class: "num" }, r.lag)))));
    const behind = doc.partitions.filter((p) => p.lag > 0);
    lagging.replaceChildren(behind.length ? h("table", {}, head("partition", "owner",
      "applied seq", "lag"), h("tbody", {}, behind.slice(0, 100).map((p) => h("tr", {},
      h("td", {}, p.partition), h("td", {}, p.owner ?? "—"),
      h("td", { class: "num" }, p.applied_seq ?? "—"), h("td", { class: "num" }, p.lag)))))
      : h("p", { class: "note", id: "cluster-none-behind" }, "none: every owner is at the"
        + " end of its log"));
  }
  await load();
  let ticks = 0;
  return { onTick: () => { ticks += 1; return ticks % 3 === 0 ? load() : null; } };
}
