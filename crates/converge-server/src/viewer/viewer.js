// The Converge run viewer (served at /viewer.js): sign-in, the tenant's runs, and one run's
// timeline, facts with provenance, rejections, pending approvals and audit, following the run
// live over its server-sent event stream.
//
// Everything shown comes from a run and is untrusted: it reaches the page only as text nodes
// (`textContent`, `append(string)`), never as HTML. The token lives in sessionStorage and
// travels only in the Authorization header, never in a URL.

const TOKEN_KEY = "converge.token";
const RUNS_REFRESH_MS = 3000;
const DETAIL_DEBOUNCE_MS = 250;
const TIMELINE_DEBOUNCE_MS = 50;
const RECONNECT_MS = 1000;
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
  byId("runs").replaceChildren();
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

async function refreshRuns() {
  if (!session.token) return;
  try {
    const { runs } = await api("/v1/runs");
    if (!session.token) return;
    renderRuns(runs);
    showMessage(byId("runs-error"), "");
    byId("runs-updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    if (session.token) showMessage(byId("runs-error"), `Could not list runs: ${error.message}`);
  }
}

function renderRuns(runs) {
  const list = byId("runs");
  if (!runs.length) {
    list.replaceChildren(h("li", { class: "muted" }, "No runs yet. Submit one with POST /v1/runs."));
    return;
  }
  list.replaceChildren(...runs.map(runRow));
  markSelectedRun();
}

function runRow(run) {
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
      h("span", { class: "muted small" }, [run.job, `by ${run.submitted_by}`].filter(Boolean).join(" · ")),
      h(
        "span",
        { class: "muted small" },
        `${run.steps} steps · ${run.events} events · ${time(run.submitted_at_ms)}`,
      ),
    ),
  );
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
  run_stopped: "stop",
};

/** Groups events into segments: the start, each cycle, each resume, each stop. Events that
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
  const render = { start: startSegment, cycle: cycleSegment, resume: resumeSegment, stop: stopSegment }[
    segment.kind
  ];
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
    this.approvalCards = new Map();
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
          section("Facts by key", "facts-block", this.el.facts, this.el.detail),
          section("Rejections", "rejections-block", this.el.rejections),
        ),
      ),
    );
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
    const status = statusBadge(run.status, "run-status");
    this.el.status.replaceWith(status);
    this.el.status = status;
    const tagged = tagOf(run.stop_reason);
    this.el.reason.textContent = run.stop_reason ? describe(run.stop_reason) : "";
    this.el.reason.dataset.reason = tagged?.tag ?? "";
    const stats = [
      ["job", run.job],
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
    this.selectedFact = { key: ref.key, id: ref.id };
    for (const button of this.el.facts.querySelectorAll(".fact")) {
      button.classList.toggle("selected", button.dataset.key === ref.key && button.dataset.id === ref.id);
    }
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
          this.provenance(fact, true),
        ),
      );
    });
  }

  closeFact() {
    this.selectedFact = null;
    this.rendered.delete("detail");
    this.el.detail.replaceChildren();
    for (const button of this.el.facts.querySelectorAll(".fact.selected"))
      button.classList.remove("selected");
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

  /** Keeps each pending proposal's card (and any reason being typed) across refreshes, and
   *  the cards that say what became of a decision made here. */
  renderApprovals(pending) {
    const wanted = new Map(pending.map((item) => [`${item.proposal} ${item.hash}`, item]));
    for (const [key, card] of this.approvalCards) {
      if (wanted.has(key)) continue;
      if (card.dataset.outcome) {
        card.classList.add("decided");
        card.querySelectorAll("button").forEach((button) => (button.disabled = true));
      } else {
        card.remove();
        this.approvalCards.delete(key);
      }
    }
    for (const [key, item] of wanted) {
      if (!this.approvalCards.has(key)) {
        const card = this.approvalCard(item);
        this.approvalCards.set(key, card);
        this.el.approvals.append(card);
      }
    }
    this.approvalsBlock.hidden = this.approvalCards.size === 0;
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
        await api(this.path("approvals", item.proposal, verdict), { method: "POST", body });
        card.dataset.outcome = verdict;
        card.classList.add("decided");
        rejectForm.hidden = true;
        card.append(
          h(
            "p",
            { class: "ok", testid: "decision" },
            verdict === "approve" ? "Approved: the run continues." : "Rejected: the run continues.",
          ),
        );
        this.scheduleRefresh();
      } catch (error) {
        card.dataset.outcome = "refused";
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
  window.addEventListener("hashchange", route);
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible" && session.token) refreshRuns();
  });
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) signIn(saved);
  else signOut("");
}

init();
