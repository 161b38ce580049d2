// The Converge run viewer (served at /viewer.js): sign-in, the tenant's runs (filtered by
// status, searched, paged), and one run's timeline, facts with their provenance as a list and
// as an SVG graph and the model exchanges they cite, rejections, approvals and their
// decisions, audit and cancel, following the run live over its server-sent event stream.
//
// Everything shown comes from a run and is untrusted: it reaches the page only as text nodes
// (`textContent`, `append(string)`), never as HTML. The token lives in sessionStorage and
// travels only in the Authorization header, never in a URL.

const TOKEN_KEY = "converge.token";
const RUNS_REFRESH_MS = 3000;
const DETAIL_DEBOUNCE_MS = 250;
const TIMELINE_DEBOUNCE_MS = 50;
const RECONNECT_MS = 1000;
const RUNS_PAGE = 50;
const ROUTE = /^#\/runs\/([^/]+)$/;

const session = { token: null, role: null };
let runsTimer = null;
let openView = null;

// ----------------------------------------------------------------------------------------
// DOM helpers

/** Makes an element. `props`: testid, class, on<event> handlers, other attributes. Children
 *  are nodes or strings (appended as text, so never parsed as HTML). */
function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "testid") node.dataset.testid = value;
    else if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) node.append(child);
  }
  return node;
}

function byId(id) {
  return document.getElementById(id);
}

function showMessage(node, text) {
  node.textContent = text ?? "";
  node.hidden = !text;
}

/** A long hash cut to its first 12 characters, whole in the tooltip. */
function shortHash(hash) {
  if (!hash) return h("span", { class: "muted" }, "—");
  return h("code", { class: "hash", title: hash }, `${hash.slice(0, 12)}…`);
}

function pretty(value) {
  return h("pre", { class: "json" }, JSON.stringify(value, null, 2));
}

/** A definition list from [label, value] pairs, skipping empty values. */
function fields(pairs) {
  const list = h("dl", { class: "fields" });
  for (const [label, value] of pairs) {
    if (value === null || value === undefined || value === "") continue;
    list.append(h("dt", {}, label), h("dd", {}, value));
  }
  return list;
}

function section(title, testid, ...children) {
  return h("section", { class: "block", testid }, h("h3", {}, title), ...children);
}

function words(tag) {
  return String(tag).replaceAll("_", " ");
}

function count(n, noun) {
  return `${n} ${noun}${n === 1 ? "" : "s"}`;
}

function time(ms) {
  return typeof ms === "number" ? new Date(ms).toLocaleString() : "";
}

// ----------------------------------------------------------------------------------------
// Generic rendering of the core's tagged values (stop reasons, rejections, verdicts, traces)

// "reason" comes last: it is the tag of a refused decision, but a plain field of others.
const TAG_FIELDS = ["stop", "kind", "verdict", "type", "reason"];

/** The variant name of a serde-tagged object, whichever field carries it. */
function tagOf(value) {
  if (!value || typeof value !== "object") return null;
  const field = TAG_FIELDS.find((name) => typeof value[name] === "string");
  return field ? { field, tag: value[field] } : null;
}

/** One line for a tagged value: its tag, then its plain fields (`name: value`). */
function describe(value) {
  if (value === null || value === undefined) return "";
  if (typeof value !== "object") return String(value);
  const tagged = tagOf(value);
  const parts = tagged ? [words(tagged.tag)] : [];
  for (const [name, field] of Object.entries(value)) {
    if (tagged && name === tagged.field) continue;
    const text = fieldText(field);
    if (text) parts.push(`${words(name)}: ${text}`);
  }
  return parts.join(" · ");
}

function fieldText(value) {
  if (typeof value === "string" || typeof value === "number" || typeof value === "boolean") {
    return String(value);
  }
  if (Array.isArray(value)) return `${value.length}`;
  if (value && typeof value === "object") {
    if ("key" in value && "id" in value) return factName(value);
    if ("name" in value && "kind" in value) return actorText(value);
    return describe(value);
  }
  return "";
}

function factName(ref) {
  return `${ref.key}/${ref.id}`;
}

function actorText(actor) {
  return `${actor.name} (${actor.kind})`;
}

// ----------------------------------------------------------------------------------------
// The API

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function authHeaders(extra = {}) {
  return { Authorization: `Bearer ${session.token}`, ...extra };
}

/** The API's error message from an error response, `{"error": {"code", "message"}}`. */
async function errorFrom(response) {
  const payload = await response.json().catch(() => null);
  const message = payload?.error?.message ?? `${response.status} ${response.statusText}`.trim();
  return new ApiError(response.status, message);
}

/** Calls the API with the session's token. A 401 ends the session. */
async function api(path, { method = "GET", body, signal } = {}) {
  const headers = authHeaders(body === undefined ? {} : { "Content-Type": "application/json" });
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
    cache: "no-store",
  });
  if (!response.ok) {
    const error = await errorFrom(response);
    if (response.status === 401) signOut(`Signed out: ${error.message}`);
    throw error;
  }
  return response.json();
}

function runPath(runId, ...rest) {
  return ["/v1/runs", runId, ...rest]
    .map((part, index) => (index ? encodeURIComponent(part) : part))
    .join("/");
}

// ----------------------------------------------------------------------------------------
// Session

/** Whether the signed-in token's role may approve or reject (the server's rule). */
function canDecide() {
  return session.role === "approver" || session.role === "admin";
}

/** Whether the signed-in token's role may cancel or resume runs (the server's rule). */
function canDrive() {
  return session.role === "submitter" || session.role === "admin";
}

async function signIn(token) {
  session.token = token;
  let me;
  try {
    me = await api("/v1/whoami");
  } catch (error) {
    signOut(error.status === 401 ? "That token was not accepted." : error.message);
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  session.role = me.role;
  byId("whoami").textContent = `${me.name} · ${me.tenant} · ${me.role}`;
  byId("account").hidden = false;
  byId("sign-in-view").hidden = true;
  byId("app-view").hidden = false;
  startRunsRefresh();
  route();
}

function signOut(message) {
  session.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  stopRunsRefresh();
  closeRun();
  forgetRuns();
  byId("runs").replaceChildren();
  byId("runs-more").hidden = true;
  byId("account").hidden = true;
  byId("app-view").hidden = true;
  byId("sign-in-view").hidden = false;
  byId("token").value = "";
  showMessage(byId("sign-in-message"), message);
  byId("token").focus();
}

// ----------------------------------------------------------------------------------------
// The runs list

function startRunsRefresh() {
  stopRunsRefresh();
  refreshRuns();
  runsTimer = setInterval(() => {
    if (document.visibilityState === "visible") refreshRuns();
  }, RUNS_REFRESH_MS);
}

function stopRunsRefresh() {
  clearInterval(runsTimer);
  runsTimer = null;
}

/** The runs read so far: the newest page, re-read every few seconds, then the older pages
 *  loaded on request, and the cursor of the page after them. */
const runsList = { newest: [], older: [], next: null };

async function refreshRuns() {
  if (!session.token) return;
  try {
    const page = await api(`/v1/runs?limit=${RUNS_PAGE}`);
    if (!session.token) return;
    runsList.newest = page.runs;
    if (!runsList.older.length) runsList.next = page.next ?? null;
    renderRuns();
    showMessage(byId("runs-error"), "");
    byId("runs-updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    if (session.token) showMessage(byId("runs-error"), `Could not list runs: ${error.message}`);
  }
}

/** Reads the page of runs after the last one loaded (the API's `next` cursor). */
async function loadOlderRuns() {
  if (!session.token || !runsList.next) return;
  const button = byId("runs-more");
  button.disabled = true;
  try {
    const page = await api(`/v1/runs?limit=${RUNS_PAGE}&after=${encodeURIComponent(runsList.next)}`);
    runsList.older.push(...page.runs);
    runsList.next = page.next ?? null;
    renderRuns();
  } catch (error) {
    if (session.token) showMessage(byId("runs-error"), `Could not list older runs: ${error.message}`);
  } finally {
    button.disabled = false;
  }
}

function forgetRuns() {
  runsList.newest = [];
  runsList.older = [];
  runsList.next = null;
}

/** Every run loaded, newest first, each once (a run can move between pages meanwhile). */
function loadedRuns() {
  const seen = new Set();
  return [...runsList.newest, ...runsList.older].filter((run) => !seen.has(run.id) && seen.add(run.id));
}

/** Whether a run passes the status filter and the search (its id, job or objective). */
function runMatches(run, status, search) {
  if (status && run.status !== status) return false;
  if (!search) return true;
  return [run.id, run.job, run.objective].some((text) => text && text.toLowerCase().includes(search));
}

function renderRuns() {
  const list = byId("runs");
  const runs = loadedRuns();
  byId("runs-more").hidden = !runsList.next;
  if (!runs.length) {
    byId("runs-count").textContent = "";
    list.replaceChildren(h("li", { class: "muted" }, "No runs yet. Submit one with POST /v1/runs."));
    return;
  }
  const status = byId("runs-status").value;
  const search = byId("runs-search").value.trim().toLowerCase();
  const shown = runs.filter((run) => runMatches(run, status, search));
  byId("runs-count").textContent =
    shown.length === runs.length ? count(runs.length, "run") : `${shown.length} of ${count(runs.length, "run")}`;
  if (!shown.length) {
    list.replaceChildren(h("li", { class: "muted", testid: "runs-none" }, "No run matches."));
    return;
  }
  const now = Date.now();
  list.replaceChildren(...shown.map((run) => runRow(run, now)));
  markSelectedRun();
}

function runRow(run, now) {
  return h(
    "li",
    {},
    h(
      "a",
      {
        class: "run-row",
        href: `#/runs/${encodeURIComponent(run.id)}`,
        testid: "run-row",
        "data-run-id": run.id,
      },
      h("span", { class: "run-id" }, run.id),
      statusBadge(run.status, "run-row-status"),
      run.objective ? h("span", { class: "run-objective", testid: "run-row-objective" }, run.objective) : null,
      h(
        "span",
        { class: "muted small" },
        run.job ? h("span", { class: "run-job", testid: "run-row-job" }, run.job) : null,
        run.job ? " · " : null,
        `by ${run.submitted_by} · `,
        h("time", { datetime: new Date(run.submitted_at_ms).toISOString(), title: time(run.submitted_at_ms) }, age(now - run.submitted_at_ms)),
      ),
    ),
  );
}

/** How long ago, in the largest whole unit: "just now", "5 min ago", "3 h ago", "2 d ago". */
function age(ms) {
  const minutes = Math.floor(ms / 60_000);
  if (minutes < 1) return "just now";
  if (minutes < 60) return `${minutes} min ago`;
  const hours = Math.floor(minutes / 60);
  if (hours < 48) return `${hours} h ago`;
  return `${Math.floor(hours / 24)} d ago`;
}

function statusBadge(status, testid) {
  return h("span", { class: `status status-${status}`, testid, "data-status": status }, words(status));
}

function markSelectedRun() {
  for (const row of document.querySelectorAll(".run-row")) {
    row.classList.toggle("selected", row.dataset.runId === openView?.runId);
  }
}

// ----------------------------------------------------------------------------------------
// Routing: #/runs/<id> opens a run, so a reload keeps the view

function route() {
  if (!session.token) return;
  const runId = routedRun();
  if (runId === openView?.runId) return;
  closeRun();
  if (runId) {
    openView = new RunView(runId, byId("run-pane"));
    openView.start();
  } else {
    byId("run-pane").replaceChildren(h("p", { class: "placeholder muted" }, "Pick a run on the left."));
  }
  markSelectedRun();
}

/** The run named by the location's hash, if any. */
function routedRun() {
  const match = ROUTE.exec(location.hash);
  try {
    return match ? decodeURIComponent(match[1]) : null;
  } catch {
    return null;
  }
}

function closeRun() {
  openView?.close();
  openView = null;
}

// ----------------------------------------------------------------------------------------
// Server-sent events over fetch (EventSource cannot send the Authorization header)

/** Splits a text/event-stream into messages `{id, event, data}` as chunks arrive. */
class SseParser {
  constructor(onMessage) {
    this.onMessage = onMessage;
    this.buffer = "";
    this.clear();
  }

  clear() {
    this.id = null;
    this.event = "";
    this.data = [];
  }

  push(text) {
    this.buffer += text;
    // A trailing "\r" may be the first half of "\r\n": keep it until the next chunk.
    const end = this.buffer.endsWith("\r") ? this.buffer.length - 1 : this.buffer.length;
    const lines = this.buffer.slice(0, end).split(/\r\n|\r|\n/);
    this.buffer = lines.pop() + this.buffer.slice(end);
    for (const line of lines) this.line(line);
  }

  line(line) {
    if (line === "") {
      this.dispatch();
      return;
    }
    if (line.startsWith(":")) return;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "id") this.id = value;
    else if (field === "event") this.event = value;
    else if (field === "data") this.data.push(value);
  }

  dispatch() {
    if (this.event || this.data.length) {
      this.onMessage({ id: this.id, event: this.event || "message", data: this.data.join("\n") });
    }
    this.clear();
  }
}

// ----------------------------------------------------------------------------------------
// The timeline, folded from the event stream

const SEGMENT_OPENERS = {
  run_started: "start",
  cycle_started: "cycle",
  run_resumed: "resume",
  run_retried: "retry",
  run_stopped: "stop",
};

/** Groups events into segments: the start, each cycle, each resume, each retry, each stop. Events that
 *  open no segment belong to the one before them (the stream starts with run_started). */
function segmentsOf(records) {
  const segments = [];
  for (const { event } of records) {
    const kind = SEGMENT_OPENERS[event.event];
    if (kind) segments.push({ kind, head: event, events: [] });
    segments.at(-1)?.events.push(event);
  }
  return segments;
}

function renderSegment(segment, agentName) {
  const render = {
    start: startSegment,
    cycle: cycleSegment,
    resume: resumeSegment,
    retry: retrySegment,
    stop: stopSegment,
  }[segment.kind];
  const box = render(segment, agentName);
  box.append(notes(segment.events));
  return box;
}

function startSegment({ head }, agentName) {
  const agents = (head.agents ?? []).map((agent) => agentName(agent.id));
  return h(
    "li",
    { class: "segment segment-start", testid: "run-started" },
    h("h4", {}, "Run started"),
    h("p", {}, `${count(agents.length, "agent")}: ${agents.join(", ")}`),
    h("p", { class: "muted small" }, `${count(head.initial_facts ?? 0, "fact")} in the initial context`),
  );
}

function cycleSegment({ head, events }, agentName) {
  const finished = events.find((event) => event.event === "cycle_finished");
  const agents = h("ul", { class: "agents" });
  for (const id of head.agents ?? []) agents.append(agentLine(id, events, agentName));
  const counts = finished
    ? `${finished.promoted} promoted · ${finished.rejected} rejected · ${finished.parked} parked`
    : "running…";
  return h(
    "li",
    {
      class: `segment segment-cycle${finished ? "" : " in-progress"}`,
      testid: "cycle",
      "data-cycle": head.cycle,
    },
    h("h4", {}, `Cycle ${head.cycle}`),
    agents,
    h("p", { class: "counts", testid: "cycle-counts" }, counts),
  );
}

function agentLine(id, events, agentName) {
  const outcome = events.find(
    (event) => (event.event === "agent_executed" || event.event === "agent_failed") && event.agent === id,
  );
  let text = "running…";
  let status = "pending";
  if (outcome?.event === "agent_executed") {
    const effect = [count(outcome.proposals, "proposal"), count(outcome.observations, "observation")];
    text = effect.join(", ") + tokensText(outcome.usage);
    status = "ok";
  } else if (outcome) {
    text = `failed: ${outcome.message}${outcome.quarantined ? " (quarantined)" : ""}`;
    status = "failed";
  }
  return h(
    "li",
    { class: `agent agent-${status}` },
    h("strong", {}, agentName(id)),
    " ",
    h("span", { class: "muted" }, text),
  );
}

function tokensText(usage) {
  return usage && (usage.input || usage.output) ? `, ${usage.input} + ${usage.output} tokens` : "";
}

function resumeSegment({ head }) {
  return h(
    "li",
    { class: "segment segment-resume", testid: "resumed" },
    h("h4", {}, "Resumed"),
    h("p", {}, `after cycle ${head.cycle} with ${count(head.decisions, "decision")}`),
  );
}

/** A person ran failed agents again: who, which, after which cycle, and why. */
function retrySegment({ head }, agentName) {
  const agents = (head.agents ?? []).map((id) => agentName(id));
  return h(
    "li",
    { class: "segment segment-retry", testid: "retried" },
    h("h4", {}, "Retried"),
    h("p", {}, `${head.actor?.name ?? "someone"} ran ${agents.join(", ")} again after cycle ${head.cycle}`),
    h("p", { class: "muted small" }, head.reason ?? ""),
  );
}

function stopSegment({ head }) {
  const tag = tagOf(head.reason)?.tag ?? "stopped";
  return h(
    "li",
    { class: `segment segment-stop stop-${tag}`, testid: "run-stopped", "data-reason": tag },
    h("h4", {}, `Stopped: ${words(tag)}`),
    h("p", {}, `${count(head.cycles, "cycle")} · ${count(head.facts, "fact")}`),
    h("p", { class: "muted small" }, describe(head.reason)),
  );
}

/** One line for each event of a segment worth reading beyond the segment's heading. */
function notes(events) {
  const list = h("ul", { class: "notes" });
  for (const event of events) {
    const text = noteText(event);
    if (text) list.append(h("li", { class: `note note-${event.event}` }, text));
  }
  return list;
}

function noteText(event) {
  switch (event.event) {
    case "fact_promoted": {
      const version = event.version ? ` v${event.version}` : "";
      const approver = event.approver ? `, approved by ${event.approver.name}` : "";
      return `promoted ${factName(event.fact)}${version}${approver}`;
    }
    case "proposal_rejected":
      return `rejected ${event.proposal} (${event.key}/${event.id}): ${describe(event.rejection)}`;
    case "approval_requested":
      return `awaiting approval: ${event.proposal} → ${factName(event.fact)}`;
    case "approval_decided": {
      const verdict = event.verdict?.verdict === "approve" ? "approved" : "rejected";
      const reason = event.verdict?.reason ? `: ${event.verdict.reason}` : "";
      return `${event.actor?.name} ${verdict} ${event.proposal}${reason}`;
    }
    case "decision_refused":
      return `refused a decision by ${event.actor?.name} on ${event.proposal}: ${describe(event.refusal)}`;
    case "invariant_violated":
      return `invariant ${event.invariant} (${event.class}) violated: ${event.detail}`;
    case "invariant_unevaluable":
      return `invariant ${event.invariant} (${event.class}) could not be evaluated: ${event.detail}`;
    case "observation_recorded":
      return `observation ${event.observation}: ${event.kind}`;
    default:
      return null;
  }
}

// ----------------------------------------------------------------------------------------
// A fact's provenance as a graph: an inline SVG, one row per depth of derivation

const SVG_NS = "http://www.w3.org/2000/svg";
const GRAPH_DEPTH_MAX = 6;
const GRAPH_NODES_MAX = 40;
const NODE_WIDTH = 150;
const NODE_HEIGHT = 44;
const NODE_GAP = 16;
const ROW_GAP = 40;
const LABEL_CHARS_MAX = 20;
// A depth with more nodes wraps onto further lines, so the drawing stays narrow enough to be
// read at its size rather than shrunk to fit.
const LINE_NODES_MAX = 3;

function svg(tag, attributes = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "testid") node.dataset.testid = value;
    else node.setAttribute(name, String(value));
  }
  node.append(...children);
  return node;
}

function clip(text) {
  return text.length > LABEL_CHARS_MAX ? `${text.slice(0, LABEL_CHARS_MAX - 1)}…` : text;
}

/** The graph's nodes and edges, breadth first from the fact: the facts it was derived from
 *  (each once, down to GRAPH_DEPTH_MAX), the agent that proposed each and any approver.
 *  An actor appears once per row, one row below the facts it acted on. Stops adding nodes
 *  at GRAPH_NODES_MAX and says so. */
function provenanceLayout(fact) {
  const nodes = new Map();
  const edges = [];
  let truncated = false;
  const add = (id, node) => {
    if (nodes.has(id)) return true;
    if (nodes.size >= GRAPH_NODES_MAX) {
      truncated = true;
      return false;
    }
    nodes.set(id, { id, ...node });
    return true;
  };
  let row = [fact];
  add(`fact ${factName(fact)}`, { kind: "fact", fact, depth: 0 });
  for (let depth = 0; depth < GRAPH_DEPTH_MAX && row.length; depth += 1) {
    const next = [];
    for (const current of row) {
      const from = `fact ${factName(current)}`;
      const actors = [
        ["agent", current.agent === undefined ? null : String(current.agent), "proposed"],
        ["approver", current.approver?.name ?? null, "approved"],
      ];
      for (const [kind, name, edge] of actors) {
        const id = `${kind} ${name} ${depth + 1}`;
        if (name !== null && add(id, { kind, name, depth: depth + 1 })) edges.push({ from, to: id, kind: edge });
      }
      for (const source of current.sources ?? []) {
        const id = `fact ${factName(source)}`;
        const known = nodes.has(id);
        if (!add(id, { kind: "fact", fact: source, depth: depth + 1 })) continue;
        edges.push({ from, to: id, kind: "derived" });
        if (!known && !source.missing && !source.shown_above) next.push(source);
      }
    }
    row = next;
  }
  if (row.length) truncated = true;
  return { nodes: [...nodes.values()], edges, truncated };
}

/** Places the nodes: rows by depth (wrapped at LINE_NODES_MAX), facts before actors, each
 *  line centred. */
function placeNodes(nodes) {
  const rows = [];
  for (const node of nodes) (rows[node.depth] ??= []).push(node);
  const widest = Math.min(LINE_NODES_MAX, Math.max(...rows.map((row) => row?.length ?? 0)));
  const width = widest * (NODE_WIDTH + NODE_GAP) + NODE_GAP;
  let y = NODE_GAP;
  for (const row of rows) {
    if (!row) continue;
    row.sort((a, b) => Number(a.kind !== "fact") - Number(b.kind !== "fact"));
    for (let start = 0; start < row.length; start += LINE_NODES_MAX) {
      const line = row.slice(start, start + LINE_NODES_MAX);
      const left = (width - line.length * (NODE_WIDTH + NODE_GAP) + NODE_GAP) / 2;
      line.forEach((node, index) => {
        node.x = left + index * (NODE_WIDTH + NODE_GAP);
        node.y = y;
      });
      y += NODE_HEIGHT + NODE_GAP;
    }
    y += ROW_GAP - NODE_GAP;
  }
  return { width, height: y - ROW_GAP + 2 * NODE_GAP };
}

function graphNode(node) {
  const [title, subtitle] =
    node.kind === "fact"
      ? [factName(node.fact), node.depth === 0 ? "this fact" : node.fact.missing ? "no longer in the context" : "derived from"]
      : [node.name, node.kind === "agent" ? "agent, proposed" : "approver, approved"];
  const attributes = { class: `node node-${node.kind}`, "data-node": node.kind, "data-depth": node.depth };
  if (node.kind === "fact") Object.assign(attributes, { "data-key": node.fact.key, "data-id": node.fact.id });
  else attributes["data-name"] = node.name;
  return svg(
    "g",
    { ...attributes, testid: "graph-node", transform: `translate(${node.x} ${node.y})` },
    svg("title", {}, `${title} (${subtitle})`),
    svg("rect", { width: NODE_WIDTH, height: NODE_HEIGHT, rx: 6 }),
    svg("text", { x: 10, y: 19, class: "node-title" }, clip(title)),
    svg("text", { x: 10, y: 35, class: "node-subtitle" }, subtitle),
  );
}

function graphEdge(edge, byId) {
  const from = byId.get(edge.from);
  const to = byId.get(edge.to);
  const x1 = from.x + NODE_WIDTH / 2;
  const y1 = from.y + NODE_HEIGHT;
  const x2 = to.x + NODE_WIDTH / 2;
  const y2 = to.y;
  const bend = (y2 - y1) / 2;
  return svg("path", {
    class: `edge edge-${edge.kind}`,
    "data-edge": edge.kind,
    d: `M ${x1} ${y1} C ${x1} ${y1 + bend}, ${x2} ${y2 - bend}, ${x2} ${y2}`,
  });
}

/** The SVG of why a fact is true, with a legend; built from the fact's detail (its `sources`
 *  tree), so it needs no further request. */
function provenanceGraph(fact) {
  const { nodes, edges, truncated } = provenanceLayout(fact);
  const { width, height } = placeNodes(nodes);
  const byId = new Map(nodes.map((node) => [node.id, node]));
  const label = `Provenance of ${factName(fact)}: ${count(nodes.length, "node")}`;
  const drawing = svg(
    "svg",
    { class: "graph", role: "img", "aria-label": label, viewBox: `0 0 ${width} ${height}`, width, height },
    svg("title", {}, label),
    ...edges.map((edge) => graphEdge(edge, byId)),
    ...nodes.map(graphNode),
  );
  return h(
    "figure",
    { class: "provenance-graph", testid: "provenance-graph" },
    h("div", { class: "graph-scroll" }, drawing),
    h(
      "figcaption",
      { class: "muted small" },
      h("span", { class: "legend legend-derived" }, "derived from"),
      h("span", { class: "legend legend-proposed" }, "proposed by"),
      h("span", { class: "legend legend-approved" }, "approved by"),
      truncated ? ` Cut at ${GRAPH_DEPTH_MAX} levels or ${GRAPH_NODES_MAX} nodes; the list below has the rest.` : null,
    ),
  );
}

// ----------------------------------------------------------------------------------------
// The observations a fact cites: a model exchange as its provider, models, tokens, latency,
// prompts and answer; any other observation as its kind and payload

const EXCHANGE_KIND = "llm.exchange";
// A prompt this long or longer starts folded; the answer always starts open.
const TEXT_OPEN_CHARS_MAX = 600;

/** The observations a fact's evidence names, each readable; nothing when it cites none. */
function observationsView(observations) {
  if (!observations?.length) return null;
  return h(
    "div",
    { class: "observations" },
    observations.map((observed) =>
      observed.kind === EXCHANGE_KIND ? exchangeView(observed) : otherObservation(observed),
    ),
  );
}

/** One exchange with a model, read from its recorded payload (never recomputed). */
function exchangeView(observed) {
  const payload = observed.payload;
  const box = h(
    "section",
    { class: "exchange", testid: "exchange", "data-observation": observed.id },
    h("h5", {}, `Model exchange ${observed.id}`, h("span", { class: "muted small" }, ` by ${observed.agent}`)),
  );
  if (payload === null || payload === undefined) {
    box.append(h("p", { class: "muted small" }, "Its payload was withheld (audit only)."));
    return box;
  }
  const answer = payload.answer ?? null;
  box.append(
    fields([
      ["provider", h("span", { testid: "exchange-provider" }, providerText(payload))],
      ["model asked", h("span", { testid: "exchange-model" }, payload.model ?? "unrecorded")],
      ["answered by", h("span", { testid: "exchange-served" }, servedText(payload))],
      ["tokens", h("span", { testid: "exchange-tokens" }, exchangeTokens(payload))],
      ["latency", h("span", { testid: "exchange-latency" }, latencyText(payload))],
      ["attempt", payload.attempt && payload.attempt > 1 ? String(payload.attempt) : ""],
      ["finish", answer?.finish ?? ""],
      ["error", payload.error ? h("span", { class: "exchange-error" }, exchangeError(payload.error)) : ""],
    ]),
    textBlock("System prompt", "exchange-system", payload.system, false),
    textBlock("User prompt", "exchange-prompt", payload.prompt, false),
    typeof answer?.text === "string"
      ? textBlock("Answer", "exchange-answer", readableAnswer(answer.text), true)
      : h("p", { class: "muted small", testid: "exchange-answer" }, "No answer came."),
  );
  return box;
}

function providerText(payload) {
  const parts = [payload.provider ?? "unrecorded"];
  if (payload.wire) parts.push(`${payload.wire} wire`);
  if (payload.base_url) parts.push(payload.base_url);
  return parts.join(" · ");
}

/** The model that answered; older records name it only inside the answer. */
function servedText(payload) {
  const served = payload.served_model ?? payload.answer?.model ?? null;
  if (served) return served === payload.model ? `${served} (the model asked for)` : served;
  return payload.answer ? "not named in the answer" : "no answer came";
}

function exchangeTokens(payload) {
  const usage = (payload.answer ? payload.answer.usage : payload.error?.usage) ?? null;
  if (typeof usage?.input !== "number" || typeof usage?.output !== "number") return "none reported";
  const cached = payload.answer?.cached;
  const cache =
    cached && (typeof cached.read === "number" || typeof cached.written === "number")
      ? ` (${cached.read ?? 0} read from the prompt cache, ${cached.written ?? 0} written to it)`
      : "";
  return `${usage.input} in${cache}, ${usage.output} out`;
}

function latencyText(payload) {
  return typeof payload.latency_ms === "number" ? `${payload.latency_ms} ms` : "not recorded";
}

function exchangeError(error) {
  if (!error?.kind) return "";
  const status = typeof error.status === "number" ? ` (HTTP ${error.status})` : "";
  return `${words(error.kind)}${status}: ${error.message ?? ""}`;
}

/** An answer that is a JSON object or array, indented; anything else as written. */
function readableAnswer(text) {
  try {
    const value = JSON.parse(text);
    if (value && typeof value === "object") return JSON.stringify(value, null, 2);
  } catch {
    // Not JSON: shown as the model wrote it.
  }
  return text;
}

/** A long text, folded under its title and length, scrolling inside its box. */
function textBlock(title, testid, text, open) {
  if (typeof text !== "string" || !text) {
    return h("p", { class: "muted small", testid }, `${title}: none recorded.`);
  }
  return h(
    "details",
    { class: "exchange-text", testid, open: open || text.length < TEXT_OPEN_CHARS_MAX },
    h("summary", {}, title, h("span", { class: "muted small" }, ` ${count(text.length, "character")}`)),
    h("pre", { class: "exchange-body" }, text),
  );
}

/** An observation that is not a model exchange: its kind and payload. */
function otherObservation(observed) {
  return h(
    "section",
    { class: "exchange", testid: "observation", "data-observation": observed.id },
    h("h5", {}, `Observation ${observed.id}`, h("span", { class: "muted small" }, ` ${observed.kind} by ${observed.agent}`)),
    h("details", {}, h("summary", {}, "payload"), pretty(observed.payload)),
  );
}

// ----------------------------------------------------------------------------------------
// One run

class RunView {
  constructor(runId, pane) {
    this.runId = runId;
    this.pane = pane;
    this.abort = new AbortController();
    this.records = [];
    this.lastEventId = null;
    this.ended = false;
    this.selectedFact = null;
    this.agentNames = new Map();
    this.rendered = new Map();
    this.approvalCards = new Map(); // by proposal: its pending card, then its decision card
    this.timers = {};
    this.build();
  }

  get closed() {
    return this.abort.signal.aborted;
  }

  close() {
    this.abort.abort();
    Object.values(this.timers).forEach(clearTimeout);
  }

  /** Follows the event stream; its events trigger the other reads, so that agent names
   *  (from the first event) are known when approvals and rejections are drawn. */
  start() {
    this.follow();
  }

  path(...rest) {
    return runPath(this.runId, ...rest);
  }

  agentName(id) {
    return this.agentNames.get(id) ?? String(id);
  }

  // The skeleton: filled section by section as data arrives.
  build() {
    this.el = {
      status: statusBadge("loading", "run-status"),
      reason: h("span", { class: "stop-reason", testid: "stop-reason" }),
      stats: h("div", { class: "run-stats" }),
      live: h("span", { class: "live muted small", testid: "live" }, "connecting…"),
      error: h("p", { class: "error", testid: "error", role: "alert", hidden: true }),
      audit: h("pre", { class: "json audit-result", testid: "audit-result", hidden: true }),
      approvals: h("div", { class: "approvals" }),
      timeline: h("ol", { class: "timeline", testid: "timeline" }),
      facts: h("div", { class: "facts", testid: "facts" }),
      detail: h("div", { class: "fact-detail-slot" }),
      rejections: h("div", { class: "rejections" }),
    };
    const audit = h(
      "div",
      { class: "audit" },
      h(
        "button",
        { type: "button", testid: "verify", onclick: () => this.runAudit("verify") },
        "Verify chain",
      ),
      h("button", { type: "button", testid: "replay", onclick: () => this.runAudit("replay") }, "Replay"),
      // Only the roles that may cancel are offered it; the server refuses others.
      canDrive() ? this.cancelControls() : null,
    );
    const header = h(
      "header",
      { class: "run-header" },
      h(
        "div",
        { class: "run-title" },
        h("h2", { testid: "run-id" }, this.runId),
        this.el.status,
        this.el.reason,
        this.el.live,
      ),
      this.el.stats,
      audit,
      this.el.audit,
    );
    this.approvalsBlock = section("Approvals", "approvals", this.el.approvals);
    this.approvalsBlock.hidden = true;
    this.pane.replaceChildren(
      header,
      this.el.error,
      h(
        "div",
        { class: "run-body" },
        h("div", { class: "column" }, section("Timeline", "timeline-block", this.el.timeline)),
        h(
          "div",
          { class: "column" },
          this.approvalsBlock,
          section("Facts by key", "facts-block", this.el.facts),
          section("Rejections", "rejections-block", this.el.rejections),
        ),
      ),
    );
  }

  /** Cancel, then a reason and a confirmation; hidden once the run has stopped. */
  cancelControls() {
    const reason = h("input", {
      type: "text",
      testid: "cancel-reason",
      placeholder: "Why cancel it? (optional)",
      "aria-label": "Reason for cancelling",
    });
    const confirm = h("button", { type: "button", class: "danger", testid: "cancel-confirm" }, "Cancel the run");
    const keep = h("button", { type: "button", class: "link" }, "keep it");
    const form = h("span", { class: "cancel-form", hidden: true }, reason, confirm, keep);
    const open = h("button", { type: "button", testid: "cancel-run" }, "Cancel run…");
    open.addEventListener("click", () => {
      form.hidden = false;
      reason.focus();
    });
    keep.addEventListener("click", () => {
      form.hidden = true;
    });
    confirm.addEventListener("click", async () => {
      confirm.disabled = true;
      const text = reason.value.trim();
      try {
        const run = await api(this.path("cancel"), {
          method: "POST",
          body: text ? { reason: text } : {},
          signal: this.abort.signal,
        });
        form.hidden = true;
        this.renderSummary(run);
        this.scheduleRefresh();
      } catch (error) {
        if (!this.closed) this.showError(`Could not cancel: ${error.message}`);
      } finally {
        confirm.disabled = false;
      }
    });
    this.el.cancel = h("span", { class: "cancel", hidden: true }, open, form);
    return this.el.cancel;
  }

  showError(text) {
    showMessage(this.el.error, text);
  }

  // Re-reads the summary, facts, rejections and approvals; coalesces calls made meanwhile.
  scheduleRefresh() {
    clearTimeout(this.timers.refresh);
    this.timers.refresh = setTimeout(() => this.refresh(), DETAIL_DEBOUNCE_MS);
  }

  async refresh() {
    if (this.refreshing) {
      this.refreshAgain = true;
      return;
    }
    this.refreshing = true;
    try {
      const signal = this.abort.signal;
      const [summary, facts, rejections, approvals] = await Promise.all([
        api(this.path(), { signal }),
        api(this.path("facts"), { signal }),
        api(this.path("rejections"), { signal }),
        api(this.path("approvals"), { signal }),
      ]);
      if (this.closed) return;
      this.renderSummary(summary);
      this.renderIfChanged("facts", facts.facts, () => this.renderFacts(facts.facts));
      this.renderIfChanged("rejections", rejections.rejections, () =>
        this.renderRejections(rejections.rejections),
      );
      this.renderApprovals(approvals.pending);
      if (this.selectedFact) await this.showFact(this.selectedFact);
      this.showError("");
    } catch (error) {
      if (!this.closed && error.name !== "AbortError") {
        this.showError(error.status === 404 ? `Run ${this.runId} was not found.` : error.message);
      }
    } finally {
      this.refreshing = false;
      if (this.refreshAgain && !this.closed) {
        this.refreshAgain = false;
        this.refresh();
      }
    }
  }

  renderIfChanged(name, value, render) {
    const text = JSON.stringify(value);
    if (this.rendered.get(name) === text) return;
    this.rendered.set(name, text);
    render();
  }

  renderSummary(run) {
    if (run.status !== this.el.status.dataset.status) refreshRuns();
    if (this.el.cancel) this.el.cancel.hidden = run.status === "stopped";
    const status = statusBadge(run.status, "run-status");
    this.el.status.replaceWith(status);
    this.el.status = status;
    const tagged = tagOf(run.stop_reason);
    this.el.reason.textContent = run.stop_reason ? describe(run.stop_reason) : "";
    this.el.reason.dataset.reason = tagged?.tag ?? "";
    const stats = [
      ["objective", run.objective],
      ["submitted by", `${run.submitted_by}, ${time(run.submitted_at_ms)}`],
      ["steps", h("span", { testid: "run-steps" }, String(run.steps))],
      ["events", h("span", { testid: "run-events" }, String(run.events))],
      ["root hash", shortHash(run.root_hash)],
      ["driver", run.driving ? "running on this server" : "idle"],
    ];
    this.el.stats.replaceChildren(
      ...stats
        .filter(([, value]) => value !== undefined)
        .map(([label, value]) =>
          h("span", { class: "stat" }, h("span", { class: "muted" }, label), " ", value),
        ),
    );
  }

  // ---- live events

  /** Reads the event stream until the run ends, reconnecting after `Last-Event-ID`. */
  async follow() {
    while (!this.closed && !this.ended) {
      try {
        await this.readStream();
      } catch (error) {
        if (this.closed || error.name === "AbortError") return;
        if (error instanceof ApiError && error.status < 500) {
          this.setLive("not following");
          if (error.status !== 401) this.showError(`Event stream: ${error.message}`);
          return;
        }
      }
      if (this.ended || this.closed) return;
      this.setLive("reconnecting…");
      await new Promise((resolve) => {
        this.timers.reconnect = setTimeout(resolve, RECONNECT_MS);
      });
    }
  }

  async readStream() {
    const headers = authHeaders({ Accept: "text/event-stream" });
    if (this.lastEventId !== null) headers["Last-Event-ID"] = this.lastEventId;
    const response = await fetch(this.path("events"), {
      headers,
      signal: this.abort.signal,
      cache: "no-store",
    });
    if (!response.ok) {
      const error = await errorFrom(response);
      if (response.status === 401) signOut(`Signed out: ${error.message}`);
      throw error;
    }
    this.setLive("live");
    const parser = new SseParser((message) => this.onMessage(message));
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      parser.push(value);
    }
  }

  setLive(text) {
    this.el.live.textContent = text;
    this.el.live.dataset.state = text;
  }

  onMessage({ id, event, data }) {
    if (id !== null && id !== "") this.lastEventId = id;
    if (event === "end") {
      this.ended = true;
      this.setLive("run finished");
      this.scheduleRefresh();
      return;
    }
    let record;
    try {
      record = JSON.parse(data);
    } catch {
      return;
    }
    if (!record?.event || (this.records.length && record.seq <= this.records.at(-1).seq)) return;
    this.records.push(record);
    if (record.event.event === "run_started") {
      for (const agent of record.event.agents ?? []) this.agentNames.set(agent.id, agent.name);
    }
    clearTimeout(this.timers.timeline);
    this.timers.timeline = setTimeout(() => this.renderTimeline(), TIMELINE_DEBOUNCE_MS);
    this.scheduleRefresh();
  }

  renderTimeline() {
    const name = (id) => this.agentName(id);
    this.el.timeline.replaceChildren(
      ...segmentsOf(this.records).map((segment) => renderSegment(segment, name)),
    );
  }

  // ---- facts and provenance

  renderFacts(facts) {
    if (!facts.length) {
      this.el.facts.replaceChildren(h("p", { class: "muted" }, "No facts yet."));
      return;
    }
    const byKey = new Map();
    for (const fact of facts) {
      if (!byKey.has(fact.key)) byKey.set(fact.key, []);
      byKey.get(fact.key).push(fact);
    }
    const groups = [...byKey.keys()].sort().map((key) =>
      h(
        "div",
        { class: "fact-key", testid: "fact-key", "data-key": key },
        h("h4", {}, key, h("span", { class: "muted small" }, ` ${byKey.get(key).length}`)),
        h(
          "ul",
          {},
          byKey.get(key).map((fact) => h("li", {}, this.factButton(fact))),
        ),
      ),
    );
    this.el.facts.replaceChildren(...groups);
    this.placeDetail();
  }

  /** Puts the details right under the selected fact, in its list item (inline expansion). */
  placeDetail() {
    let owner = null;
    for (const button of this.el.facts.querySelectorAll(".fact")) {
      const selected =
        button.dataset.key === this.selectedFact?.key && button.dataset.id === this.selectedFact?.id;
      button.classList.toggle("selected", selected);
      button.setAttribute("aria-expanded", String(selected));
      if (selected) owner = button.parentElement;
    }
    if (owner) owner.append(this.el.detail);
    else if (this.selectedFact) this.el.facts.append(this.el.detail); // a fact no longer listed
    else this.el.detail.remove();
  }

  factButton(fact) {
    const selected =
      this.selectedFact && this.selectedFact.key === fact.key && this.selectedFact.id === fact.id;
    return h(
      "button",
      {
        type: "button",
        class: `fact${selected ? " selected" : ""}`,
        testid: "fact",
        "aria-expanded": String(selected),
        "data-key": fact.key,
        "data-id": fact.id,
        onclick: () => this.selectFact(fact),
      },
      h("span", { class: "fact-id" }, fact.id),
      fact.version ? h("span", { class: "muted small" }, ` v${fact.version}`) : null,
      fact.approver
        ? h("span", { class: "approved", testid: "fact-approver" }, `approved by ${fact.approver.name}`)
        : null,
      h("span", { class: "preview muted small" }, JSON.stringify(fact.content)),
    );
  }

  async selectFact(ref) {
    if (this.selectedFact?.key === ref.key && this.selectedFact?.id === ref.id && this.el.detail.isConnected) {
      this.closeFact();
      return;
    }
    this.selectedFact = { key: ref.key, id: ref.id };
    this.rendered.delete("detail");
    this.el.detail.replaceChildren(h("p", { class: "muted small" }, "Reading why it is true…"));
    this.placeDetail();
    try {
      await this.showFact(this.selectedFact);
      this.el.detail.scrollIntoView({ block: "nearest" });
    } catch (error) {
      if (!this.closed)
        this.el.detail.replaceChildren(h("p", { class: "error", testid: "error" }, error.message));
    }
  }

  async showFact(ref) {
    const fact = await api(this.path("facts", ref.key, ref.id), { signal: this.abort.signal });
    if (this.closed || this.selectedFact?.key !== ref.key || this.selectedFact?.id !== ref.id) return;
    this.renderIfChanged("detail", fact, () => {
      const close = h("button", { type: "button", class: "link", onclick: () => this.closeFact() }, "close");
      this.el.detail.replaceChildren(
        h(
          "div",
          { class: "fact-detail", testid: "fact-detail", "data-key": fact.key, "data-id": fact.id },
          close,
          provenanceGraph(fact),
          this.provenance(fact, true),
        ),
      );
    });
  }

  closeFact() {
    this.selectedFact = null;
    this.rendered.delete("detail");
    this.el.detail.replaceChildren();
    this.placeDetail();
  }

  /** Why a fact is true: its promotion record, then the facts it was derived from, each
   *  with its own record (folded), down to facts derived from nothing. */
  provenance(fact, top) {
    const box = h(
      "div",
      { class: "provenance", testid: top ? "provenance" : "provenance-source" },
      h("h4", {}, factName(fact), fact.version ? ` v${fact.version}` : ""),
      fields([
        ["agent", h("span", { testid: "provenance-agent" }, String(fact.agent))],
        ["cycle", fact.cycle],
        ["proposal", fact.proposal],
        ["confidence", fact.confidence],
        [
          "approver",
          h(
            "span",
            { testid: "provenance-approver" },
            fact.approver ? actorText(fact.approver) : "none required",
          ),
        ],
        [
          "validators",
          (fact.validators ?? []).map((v) => (typeof v === "string" ? v : describe(v))).join(", ") || "none",
        ],
        ["policy", fact.policy_version === undefined ? "" : `version ${fact.policy_version}`],
        ["correction", fact.correction ? describe(fact.correction) : ""],
        ["trace", fact.trace ? describe(fact.trace) : ""],
        ["evidence", (fact.evidence ?? []).join(", ")],
        ["content hash", shortHash(fact.content_hash)],
      ]),
      pretty(fact.content),
      observationsView(fact.observations),
    );
    const sources = fact.sources ?? [];
    if (sources.length) {
      box.append(
        h("h5", {}, "Derived from"),
        h(
          "ul",
          { class: "sources" },
          sources.map((source) => this.sourceItem(source)),
        ),
      );
    }
    return box;
  }

  sourceItem(source) {
    const open = h(
      "button",
      { type: "button", class: "link", testid: "derived-from", onclick: () => this.selectFact(source) },
      factName(source),
    );
    if (source.missing)
      return h("li", {}, open, h("span", { class: "muted" }, " (no longer in the context)"));
    if (source.shown_above) return h("li", {}, open, h("span", { class: "muted" }, " (shown above)"));
    return h(
      "li",
      {},
      open,
      h("details", {}, h("summary", {}, "why it is true"), this.provenance(source, false)),
    );
  }

  // ---- rejections

  renderRejections(rejections) {
    if (!rejections.length) {
      this.el.rejections.replaceChildren(h("p", { class: "muted" }, "None."));
      return;
    }
    this.el.rejections.replaceChildren(...rejections.map((rejection) => this.rejectionCard(rejection)));
  }

  rejectionCard(rejection) {
    return h(
      "div",
      { class: "card rejection", testid: "rejection", "data-proposal": rejection.proposal },
      h(
        "div",
        {},
        h("strong", {}, `${rejection.key}/${rejection.id}`),
        h("span", { class: "muted small" }, ` ${rejection.proposal}`),
      ),
      h("p", { class: "reason" }, describe(rejection.rejection ?? rejection.reason)),
      fields([
        ["agent", rejection.agent === undefined ? "" : this.agentName(rejection.agent)],
        ["cycle", rejection.cycle],
      ]),
      rejection.content === undefined
        ? null
        : h("details", {}, h("summary", {}, "content"), pretty(rejection.content)),
    );
  }

  // ---- approvals

  /** What the event stream says of decisions: each proposal's request (the fact it would
   *  become), the decision on it, and whether it was promoted. */
  decisionsSeen() {
    const requested = new Map();
    const decided = new Map();
    const promoted = new Set();
    for (const { event } of this.records) {
      if (event.event === "approval_requested") requested.set(event.proposal, event.fact);
      else if (event.event === "approval_decided") decided.set(event.proposal, event);
      else if (event.event === "fact_promoted") promoted.add(event.proposal);
    }
    return { requested, decided, promoted };
  }

  /** Keeps each pending proposal's card (and any reason being typed) across refreshes; once
   *  a proposal is decided its card gives way to the decision: who, which verdict, why, and
   *  whether the proposal became a fact. */
  renderApprovals(pending) {
    const seen = this.decisionsSeen();
    const { decided } = seen;
    const wanted = new Map(pending.map((item) => [item.proposal, item]));
    for (const [proposal, card] of this.approvalCards) {
      if (wanted.has(proposal) && !card.dataset.verdict) continue;
      const event = decided.get(proposal);
      if (event) {
        this.showDecision(proposal, decisionOf(event, seen));
      } else if (!card.dataset.verdict && !wanted.has(proposal)) {
        card.remove();
        this.approvalCards.delete(proposal);
      }
    }
    for (const [proposal, event] of decided) {
      if (this.approvalCards.has(proposal)) continue;
      this.approvalCards.set(proposal, h("div"));
      this.el.approvals.append(this.approvalCards.get(proposal));
      this.showDecision(proposal, decisionOf(event, seen));
    }
    for (const [proposal, item] of wanted) {
      if (this.approvalCards.has(proposal)) continue;
      const card = this.approvalCard(item);
      this.approvalCards.set(proposal, card);
      this.el.approvals.append(card);
    }
    this.approvalsBlock.hidden = this.approvalCards.size === 0;
  }

  /** Replaces a proposal's card by its decision card, unless it already says the same. */
  showDecision(proposal, decision) {
    const old = this.approvalCards.get(proposal);
    const state = JSON.stringify(decision);
    if (old.dataset.decision === state) return;
    const card = decisionCard(proposal, decision);
    card.dataset.decision = state;
    old.replaceWith(card);
    this.approvalCards.set(proposal, card);
  }

  approvalCard(item) {
    const message = h("p", { class: "error", testid: "error", role: "alert", hidden: true });
    const reason = h("input", {
      type: "text",
      testid: "reject-reason",
      placeholder: "Why reject it? (required)",
      "aria-label": "Reason for rejecting",
    });
    const approve = h("button", { type: "button", class: "primary", testid: "approve" }, "Approve");
    const reject = h("button", { type: "button", testid: "reject" }, "Reject");
    const confirm = h(
      "button",
      { type: "button", class: "danger", testid: "reject-confirm" },
      "Reject with this reason",
    );
    const cancel = h("button", { type: "button", class: "link" }, "cancel");
    const rejectForm = h("div", { class: "reject-form", hidden: true }, reason, confirm, cancel);
    const card = h(
      "div",
      { class: "card approval", testid: "approval", "data-proposal": item.proposal },
      h(
        "div",
        {},
        h("strong", {}, `${item.key}/${item.id}`),
        h("span", { class: "muted small" }, ` ${item.proposal}`),
      ),
      fields([
        ["agent", item.agent === undefined ? "" : this.agentName(item.agent)],
        ["confidence", item.confidence],
        ["hash", shortHash(item.hash)],
      ]),
      h("div", { testid: "approval-content" }, pretty(item.content)),
      // Only the roles that may decide are offered the buttons; the server refuses others.
      canDecide()
        ? h("div", { class: "actions" }, approve, reject)
        : h(
            "p",
            { class: "muted small", testid: "decide-not-allowed" },
            `An approver decides this; your token's role is ${session.role}.`,
          ),
      rejectForm,
      message,
    );
    const buttons = [approve, reject, confirm];
    const decide = async (verdict, body) => {
      buttons.forEach((button) => (button.disabled = true));
      showMessage(message, "");
      try {
        const { decision } = await api(this.path("approvals", item.proposal, verdict), {
          method: "POST",
          body,
        });
        if (this.closed) return;
        this.showDecision(item.proposal, {
          fact: { key: item.key, id: item.id },
          actor: decision.actor,
          verdict: decision.verdict,
          reason: decision.reason,
          outcome: verdict === "reject" ? "refused" : "pending",
        });
        this.scheduleRefresh();
      } catch (error) {
        showMessage(message, error.message);
        buttons.forEach((button) => (button.disabled = false));
      }
    };
    approve.addEventListener("click", () => decide("approve", { hash: item.hash }));
    reject.addEventListener("click", () => {
      rejectForm.hidden = false;
      reason.focus();
    });
    cancel.addEventListener("click", () => {
      rejectForm.hidden = true;
      showMessage(message, "");
    });
    confirm.addEventListener("click", () => {
      const text = reason.value.trim();
      if (!text) {
        showMessage(message, "Say why you reject it.");
        reason.focus();
        return;
      }
      decide("reject", { hash: item.hash, reason: text });
    });
    return card;
  }

  // ---- audit

  async runAudit(kind) {
    const out = this.el.audit;
    out.hidden = false;
    out.textContent = `${kind}…`;
    try {
      const result = await api(this.path(kind), { signal: this.abort.signal });
      out.dataset.kind = kind;
      out.dataset.ok = String(kind === "verify" ? result.intact === true : result.replay === "identical");
      out.textContent = auditSentence(kind, result);
    } catch (error) {
      if (!this.closed) out.textContent = `${kind} failed: ${error.message}`;
    }
  }
}

/** A decision as its card shows it, from its approval_decided event. */
function decisionOf(event, { requested, promoted }) {
  const verdict = event.verdict?.verdict;
  return {
    fact: requested.get(event.proposal),
    actor: event.actor?.name,
    verdict,
    reason: event.verdict?.reason,
    outcome: promoted.has(event.proposal) ? "promoted" : verdict === "reject" ? "refused" : "pending",
  };
}

const OUTCOME_TEXT = {
  promoted: "Promoted: it is now a fact.",
  refused: "Refused: it did not become a fact.",
  pending: "The run goes on to promote it.",
};

/** What became of a parked proposal: who decided, approve or reject, why, and the outcome. */
function decisionCard(proposal, { fact, actor, verdict, reason, outcome }) {
  const approved = verdict === "approve";
  return h(
    "div",
    {
      class: `card decision decision-${approved ? "approve" : "reject"}`,
      testid: "decision-card",
      "data-proposal": proposal,
      "data-verdict": verdict,
      "data-actor": actor,
      "data-outcome": outcome,
    },
    h(
      "div",
      {},
      h("strong", {}, fact ? factName(fact) : proposal),
      h("span", { class: "muted small" }, ` ${proposal}`),
    ),
    h(
      "p",
      { testid: "decision" },
      h("strong", {}, approved ? "Approved" : "Rejected"),
      ` by ${actor ?? "someone"}`,
      reason ? `: “${reason}”` : ".",
    ),
    h("p", { class: outcome === "refused" ? "muted" : "ok", testid: "decision-outcome" }, OUTCOME_TEXT[outcome]),
  );
}

/** What a verification or a replay found, in sentences a person reads (with the hashes). */
function auditSentence(kind, result) {
  const steps = (n) => `${n} step${n === 1 ? "" : "s"}`;
  const events = (n) => `${n} event${n === 1 ? "" : "s"}`;
  if (kind === "verify") {
    return result.intact
      ? `Intact: every stored byte of the run checks out — ${steps(result.steps)}, ` +
          `${events(result.events)}. Root hash ${result.root_hash}; record hash ${result.record_hash}.`
      : `Broken at ${result.at}: ${result.reason}.`;
  }
  if (result.replay === "identical") {
    return (
      `Identical: ${steps(result.steps)} and ${events(result.events)} re-derived without ` +
      `calling any agent, to the recorded root hash ${result.root_hash}.`
    );
  }
  const where = result.seq === null || result.seq === undefined ? "" : `, event ${result.seq}`;
  return `Diverged at step ${result.step}${where}: ${result.detail}.`;
}

// ----------------------------------------------------------------------------------------
// Start

function init() {
  byId("sign-in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = byId("token").value.trim();
    byId("token").value = "";
    if (token) signIn(token);
  });
  byId("sign-out").addEventListener("click", () => signOut("Signed out."));
  byId("runs-filter").addEventListener("submit", (event) => event.preventDefault());
  byId("runs-search").addEventListener("input", renderRuns);
  byId("runs-status").addEventListener("change", renderRuns);
  byId("runs-more").addEventListener("click", loadOlderRuns);
  window.addEventListener("hashchange", route);
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible" && session.token) refreshRuns();
  });
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) signIn(saved);
  else signOut("");
}

init();
