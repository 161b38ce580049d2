//! The shapes of the JSON that the core, the runtime and `view.rs` serialize, described for the
//! OpenAPI document: events, stop reasons, facts, rejections, verifications and replays.
//!
//! These types are never built. The server sends the core's own values (or `view.rs`'s JSON of
//! them), whose owners must not depend on an HTTP documentation crate; each type here is a
//! deliberate copy of one shape at the HTTP boundary. The schemathesis test checks every
//! response against the document, so a shape that drifts from what is sent fails it. Fields
//! whose shape belongs to the core and may grow (an event's body, a trace) are left open.

#![allow(
    dead_code,
    reason = "documentation shapes: described, never constructed"
)]

use serde_json::Value;
use utoipa::ToSchema;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{RefOr, Schema};

/// An event's position in its run, as a query parameter or header: any integer from 0 to
/// 2⁶⁴ − 1. Written by hand because a derived schema would say `int64`, whose range stops at
/// 2⁶³ − 1, and a client would then never send the larger seqs the server takes.
pub(crate) struct Seq;

impl utoipa::PartialSchema for Seq {
    fn schema() -> RefOr<Schema> {
        let largest = usize::try_from(u64::MAX).unwrap_or(usize::MAX);
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(0usize))
            .maximum(Some(largest))
            .description(Some("An event's seq: from 0 to 2^64 - 1"))
            .into()
    }
}

impl ToSchema for Seq {}

/// Why a run stopped: `stop` names the reason, the other fields are those of that reason.
#[derive(ToSchema)]
pub(crate) struct StopReason {
    stop: StopKind,
    /// `awaiting_approval`: the parked proposals, in id order.
    pending: Option<Vec<ParkedProposal>>,
    /// `budget_exhausted`: which budget (`{"budget": "cycles" | "facts" | "tokens", "limit"}`).
    exhausted: Option<Value>,
    /// `invariant_violated`: the invariant's name.
    invariant: Option<String>,
    /// `invariant_violated`: its class.
    class: Option<String>,
    /// `invariant_violated`: its reason.
    detail: Option<String>,
    /// `agent_failed`: the agent's id.
    agent: Option<u32>,
    /// `agent_failed`: what happened.
    message: Option<String>,
    /// `halted`: why.
    reason: Option<String>,
}

/// The kinds of stop reason.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub(crate) enum StopKind {
    Converged,
    AwaitingApproval,
    BudgetExhausted,
    InvariantViolated,
    AgentFailed,
    Halted,
}

/// A parked proposal as the core records it in a stop reason.
#[derive(ToSchema)]
pub(crate) struct ParkedProposal {
    /// The proposal's id, like `c2.a3.p0`.
    proposal: String,
    /// The hash a decision must name (64 hex digits).
    hash: String,
    /// The fact it would become.
    fact: FactRef,
    /// The hash of its content.
    content_hash: String,
    /// Its confidence, from 0 to 1.
    confidence: f64,
    /// The proposing agent's id.
    agent: u32,
}

/// A fact named by key and id.
#[derive(ToSchema)]
pub(crate) struct FactRef {
    key: String,
    id: String,
}

/// One journaled event: its position, journal step, chain hash and the core's event.
#[derive(ToSchema)]
pub(crate) struct EventEntry {
    /// The event's position in the run, from 0.
    seq: u64,
    /// The journal step that committed it.
    step: u64,
    /// The chain hash after this event (64 hex digits).
    hash: String,
    /// The core's event exactly as it was hashed.
    event: Event,
}

/// An event of the core: `event` names its kind; the other fields are that kind's.
#[derive(ToSchema)]
pub(crate) struct Event {
    event: EventKind,
}

/// The kinds of event.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub(crate) enum EventKind {
    RunStarted,
    RunResumed,
    RunRetried,
    CycleStarted,
    AgentExecuted,
    AgentFailed,
    ObservationRecorded,
    ProposalRejected,
    ApprovalRequested,
    ApprovalDecided,
    DecisionRefused,
    FactPromoted,
    InvariantViolated,
    CycleFinished,
    RunStopped,
}

/// One fact with its provenance.
#[derive(ToSchema)]
pub(crate) struct Fact {
    key: String,
    id: String,
    /// 1 for the first version; a correction adds one.
    version: u32,
    /// The fact's content, any JSON value.
    content: Value,
    /// From 0 to 1.
    confidence: f64,
    content_hash: String,
    /// The name of the agent that proposed it.
    agent: String,
    /// The cycle it was promoted in.
    cycle: u32,
    /// The proposal it came from, like `c2.a3.p0`.
    proposal: String,
    proposal_hash: String,
    /// The facts it was derived from.
    derived_from: Vec<FactRef>,
    /// The observations it cites.
    evidence: Vec<String>,
    /// The structural checks it passed.
    structural_checks: Vec<String>,
    /// The validators it passed.
    validators: Vec<String>,
    policy_version: u32,
    /// The human who approved it, when its key needs approval; else null.
    approver: Option<Value>,
    /// The correction it made, if it corrects an earlier version; else null.
    correction: Option<Value>,
    /// Where it came from (a local trace or a remote reference).
    trace: Value,
}

/// A fact and why it is true: the fact's fields and its `sources`.
#[derive(ToSchema)]
pub(crate) struct FactWhy {
    key: String,
    id: String,
    version: u32,
    content: Value,
    confidence: f64,
    agent: String,
    cycle: u32,
    proposal: String,
    derived_from: Vec<FactRef>,
    /// Each source explained the same way (with its own fields and `sources`), or only named
    /// with `shown_above` (explained earlier in this answer) or `missing` (no longer current).
    sources: Vec<FactSource>,
    /// The recorded observations the fact's `evidence` names, payloads included: for an `llm`
    /// agent's fact, the exchange with its model (`id`, `agent`, `kind`, `remote`,
    /// `replayability`, `payload` with the model asked for and the one that answered, the
    /// rendered prompts, the answer, tokens and `latency_ms`; see `docs/llm-agents.md`).
    observations: Vec<Value>,
    /// The retry that made the fact possible, when its agent failed first and a person ran it
    /// again (`step`, `after_cycle`, and `retry`: `actor`, `agents`, `reason`); else null.
    retried: Option<Value>,
}

/// A source of a fact: named by key and id, and explained like the fact unless it is marked
/// `shown_above` or `missing`.
#[derive(ToSchema)]
pub(crate) struct FactSource {
    key: String,
    id: String,
    shown_above: Option<bool>,
    missing: Option<bool>,
}

/// A proposal the gate rejected, kept whole.
#[derive(ToSchema)]
pub(crate) struct RejectedProposal {
    proposal: String,
    cycle: u32,
    /// The key as proposed.
    key: String,
    /// The fact id as proposed.
    id: String,
    /// The content as proposed.
    content: Value,
    /// The confidence as proposed.
    confidence: f64,
    rejection: Rejection,
}

/// Why a proposal was rejected: `kind`, and that kind's fields.
#[derive(ToSchema)]
pub(crate) struct Rejection {
    kind: RejectionKind,
}

/// The gate's reasons.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub(crate) enum RejectionKind {
    InvalidKey,
    Unauthorized,
    InvalidId,
    InvalidConfidence,
    EmptyContent,
    ContentTooLarge,
    UnknownEvidence,
    UnknownDerivation,
    Duplicate,
    Conflict,
    AwaitingApproval,
    UnknownCorrectionTarget,
    ValidatorFailed,
    InvariantViolated,
    FactBudgetExhausted,
    TooManyProposals,
    UndecidedAtStop,
    RejectedByApprover,
}

/// An agent execution that failed.
#[derive(ToSchema)]
pub(crate) struct AgentFailure {
    cycle: u32,
    /// The agent's id.
    agent: u32,
    message: String,
}

/// What a check of the stored chains found.
#[derive(ToSchema)]
pub(crate) struct Verification {
    /// Whether both chains recompute from the stored bytes.
    intact: bool,
    /// Intact: journal steps.
    steps: Option<u64>,
    /// Intact: events.
    events: Option<u64>,
    /// Intact: the head of the event chain.
    root_hash: Option<String>,
    /// Intact: the head of the journal's record chain.
    record_hash: Option<String>,
    /// Broken: the first bad place, in words.
    at: Option<String>,
    /// Broken: its journal step.
    step: Option<u64>,
    /// Broken: its event seq, when it is an event.
    first_bad_seq: Option<u64>,
    /// Broken: what is wrong there.
    reason: Option<String>,
}

/// What re-deriving a run found.
#[derive(ToSchema)]
pub(crate) struct Replay {
    replay: ReplayOutcome,
    /// Identical: steps re-driven.
    steps: Option<u64>,
    /// Identical: events re-derived.
    events: Option<u64>,
    /// Identical: the root hash, recorded and re-derived.
    root_hash: Option<String>,
    /// Diverged: the journal step.
    step: Option<u64>,
    /// Diverged: the event position, when the difference is in an event.
    seq: Option<u64>,
    /// Diverged: the recorded event's hash.
    expected: Option<String>,
    /// Diverged: the re-derived event's hash.
    actual: Option<String>,
    /// Diverged: what differs, in words.
    detail: Option<String>,
}

/// Whether a replay re-derived the journal exactly.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub(crate) enum ReplayOutcome {
    Identical,
    Diverged,
}

/// `approve` or `reject`.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub(crate) enum DecisionVerdict {
    Approve,
    Reject,
}

/// Whether a decision attempt was applied.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub(crate) enum DecisionOutcome {
    Accepted,
    Refused,
}

/// Why a decision attempt was refused.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub(crate) enum DecisionRefusal {
    /// The proposal is not pending (already decided, or never parked).
    NotPending,
    /// The hash is not the pending proposal's.
    HashMismatch,
    /// The run is not awaiting approval.
    NotAwaitingApproval,
    /// The approver submitted the run.
    SelfApproval,
    /// The run was being driven.
    RunBusy,
    /// The server was driving or queueing its most runs.
    ServerBusy,
    /// The run had stopped.
    Stopped,
    /// The core refused the decision.
    Invalid,
    /// The run was not found.
    NotFound,
    /// An internal error.
    Internal,
}

/// A job spec as JSON: the same fields as its YAML (docs/job-specs.md).
#[derive(ToSchema)]
pub(crate) struct JobSpec {
    /// The spec format's version: 1.
    #[schema(minimum = 1, maximum = 1)]
    version: u32,
    /// The objective, scope, constraints, success criteria and budgets.
    intent: Value,
    /// Custom context keys, with their schemas and whether they need approval.
    keys: Option<Vec<Value>>,
    /// The facts the run starts from.
    seeds: Option<Vec<Value>>,
    /// The agents (`rule`, `llm`; `command` only on a server started with `--allow-commands`).
    agents: Option<Vec<Value>>,
    /// Invariants checked as facts are promoted and at the end.
    invariants: Option<Vec<Value>>,
    /// Runtime settings.
    runtime: Option<Value>,
}

/// A run's current facts.
#[derive(ToSchema)]
pub(crate) struct FactList {
    facts: Vec<Fact>,
}

/// A run's rejected proposals and agent failures.
#[derive(ToSchema)]
pub(crate) struct RejectionList {
    rejections: Vec<RejectedProposal>,
    failures: Vec<AgentFailure>,
}

/// The proposals waiting for a human.
#[derive(ToSchema)]
pub(crate) struct PendingList {
    pending: Vec<PendingApproval>,
}

/// A proposal waiting for a human: what it would become and the hash a decision must name.
#[derive(ToSchema)]
pub(crate) struct PendingApproval {
    /// Its id, like `c2.a3.p0`: the `{proposal}` of approve and reject.
    proposal: String,
    /// The hash a decision must name (64 hex digits).
    hash: String,
    /// The fact's key.
    key: String,
    /// The fact's id.
    id: String,
    /// The content it would have.
    content: Value,
    /// From 0 to 1.
    confidence: f64,
    /// The proposing agent's id.
    agent: u32,
    /// The proposing agent's name.
    agent_name: Option<String>,
}

/// A page of a run's events.
#[derive(ToSchema)]
pub(crate) struct EventPage {
    events: Vec<EventEntry>,
    /// The `from` of the next page.
    next: u64,
    /// Whether the run has stopped for good and this page reaches its last event.
    stopped: bool,
}

/// The audit proof: the chain's head and a page of its entries.
#[derive(ToSchema)]
pub(crate) struct AuditPage {
    /// The head of the event chain.
    root_hash: String,
    /// Committed journal steps.
    steps: u64,
    /// Committed events.
    events: u64,
    /// The `from` of the next page.
    next: u64,
    /// Each entry's hash is SHA-256 over the previous hash, the seq and the event's bytes.
    entries: Vec<EventEntry>,
}
