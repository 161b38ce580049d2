//! Converge's journal: durable storage of a run's inputs and its event hash chain.
//!
//! A journal stores, for each run, an ordered list of *steps*. A step is one input to the
//! core ([`StepInput`]: the start, one cycle's agent outcomes, human decisions, a halt) together
//! with the events the core emitted while taking it, each with its chain hash and the exact
//! bytes the hash covers ([`EventRecord::encode`]). A step is written in one transaction: it
//! is entirely present or entirely absent. The chain's head is the run's root hash.
//!
//! Facts are never stored and nothing here deserializes one: a run is re-derived by replaying
//! its recorded inputs through the core, and the replayed events must reproduce the stored
//! hashes. [`Journal`] is the storage contract; [`SqliteJournal`] is the embedded
//! implementation. Reading events from a position on ([`Journal::events`],
//! [`Journal::events_page`]) costs what it returns, so a live reader can follow a run. This
//! crate does not drive runs, replay them or decide when to write: that is the runtime's job
//! (`converge-runtime`).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use converge_core::{Digest, EventBatch, EventRecord};
use serde::{Deserialize, Serialize};
use serde_json::Value;

mod check;
mod copy;
mod failing;
mod forward;
mod lease;
mod link;
mod pack;
mod packer;
pub mod parallel;
mod postgres;
mod record;
mod sqlite;
mod store;
mod wakeups;

pub use copy::{Copied, copy};
pub use failing::FailingJournal;
pub use lease::{Holder, LEASE_RENEW_MS, LEASE_TTL_MS, Lease, wall_clock_ms};
pub use packer::{GROUPS_IN_FLIGHT_MAX, Packed, PackedEvents, PackingSink, packer};
pub use postgres::{PostgresJournal, client_config as postgres_client_config};
pub use record::{
    DecisionRecord, DerivationRecord, EffectRecord, JobRecord, KeyRecord, ObservationRecord,
    OutcomeRecord, ProposalRecord, RecordError, RemoteRecord, ReplayabilityRecord, RetryRecord,
    RunHeader, StepInput, VerdictRecord,
};
pub use sqlite::SqliteJournal;
pub use wakeups::{EVENTS_LOOK, News, SQLITE_POLL, Wakeups};

/// Longest accepted run id, in bytes.
pub const RUN_ID_LEN_MAX: usize = 64;

/// The id of a run in a journal: 1 to 64 ASCII letters, digits, `_` or `-`.
///
/// ```
/// use converge_journal::RunId;
///
/// let id = RunId::new("triage-2025_07").unwrap();
/// assert_eq!(id.as_str(), "triage-2025_07");
/// assert!(RunId::new("no spaces").is_err());
/// assert!(RunId::new("").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RunId(String);

impl RunId {
    /// Validates a run id.
    pub fn new(id: &str) -> Result<RunId, RunIdError> {
        let valid = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
        if id.is_empty() || id.len() > RUN_ID_LEN_MAX || !id.chars().all(valid) {
            return Err(RunIdError {
                id: id.chars().take(RUN_ID_LEN_MAX + 1).collect(),
            });
        }
        Ok(RunId(id.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for RunId {
    type Err = RunIdError;

    fn from_str(id: &str) -> Result<Self, Self::Err> {
        RunId::new(id)
    }
}

impl TryFrom<String> for RunId {
    type Error = RunIdError;

    fn try_from(id: String) -> Result<Self, Self::Error> {
        RunId::new(&id)
    }
}

impl From<RunId> for String {
    fn from(id: RunId) -> String {
        id.0
    }
}

/// A run id that is empty, too long or has a character outside `[A-Za-z0-9_-]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("run id {id:?} must be 1 to {RUN_ID_LEN_MAX} ASCII letters, digits, '_' or '-'")]
pub struct RunIdError {
    id: String,
}

/// Where a journal lives: a SQLite file, or a PostgreSQL database named by a
/// `postgresql://` (or `postgres://`) URL.
///
/// ```
/// use converge_journal::Location;
///
/// let file = Location::parse("runs/journal.db");
/// assert!(matches!(file, Location::Sqlite(_)));
/// let shared = Location::parse("postgresql://converge:secret@db.internal:5432/runs");
/// assert!(matches!(shared, Location::Postgres(_)));
/// // Shown without its password.
/// assert_eq!(shared.to_string(), "postgresql://converge@db.internal:5432/runs");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A SQLite file (created when opened for writing if it does not exist).
    Sqlite(PathBuf),
    /// A PostgreSQL database, by its URL.
    Postgres(String),
}

impl Location {
    /// A URL starting with `postgresql://` or `postgres://` names a database; anything else
    /// is a file path.
    pub fn parse(text: &str) -> Location {
        if text.starts_with("postgresql://") || text.starts_with("postgres://") {
            Location::Postgres(text.to_owned())
        } else {
            Location::Sqlite(PathBuf::from(text))
        }
    }

    /// Opens the journal for reading and writing, creating it if it does not exist.
    pub fn open(&self) -> Result<Box<dyn Journal + Send>, JournalError> {
        Ok(match self {
            Location::Sqlite(path) => Box::new(SqliteJournal::open(path)?),
            Location::Postgres(url) => Box::new(PostgresJournal::open(url)?),
        })
    }

    /// Opens an existing journal for reading only; creates nothing.
    pub fn open_read_only(&self) -> Result<Box<dyn Journal + Send>, JournalError> {
        Ok(match self {
            Location::Sqlite(path) => Box::new(SqliteJournal::open_read_only(path)?),
            Location::Postgres(url) => Box::new(PostgresJournal::open_read_only(url)?),
        })
    }

    /// Whether a journal may be there to read: a file that exists, or any database (whose
    /// journal, if any, only opening tells).
    pub fn may_exist(&self) -> bool {
        match self {
            Location::Sqlite(path) => path.exists(),
            Location::Postgres(_) => true,
        }
    }
}

impl From<PathBuf> for Location {
    /// A file path, as given: never read as a URL.
    fn from(path: PathBuf) -> Location {
        Location::Sqlite(path)
    }
}

impl From<&str> for Location {
    /// As [`Location::parse`] reads it.
    fn from(text: &str) -> Location {
        Location::parse(text)
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Sqlite(path) => write!(f, "{}", path.display()),
            Location::Postgres(url) => f.write_str(&postgres::redact(url)),
        }
    }
}

/// Where a run stands after its last committed step.
///
/// The status is a summary for listing and resuming, committed with the step that causes it
/// and derived from that step's events (a `run_stopped` event stops the run, awaiting
/// approval or for good); `verify` checks it against them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum RunStatus {
    /// Created or still being driven (or interrupted by a crash).
    Running,
    /// Stopped waiting for human decisions; can be resumed.
    AwaitingApproval,
    /// Stopped for good.
    Stopped {
        /// The stop reason, as the core serialized it.
        reason: Value,
    },
}

impl RunStatus {
    /// The status of a run that stopped for `reason`: awaiting approval, or stopped for good.
    pub fn after(reason: &converge_core::StopReason) -> RunStatus {
        match reason {
            converge_core::StopReason::AwaitingApproval { .. } => RunStatus::AwaitingApproval,
            reason => RunStatus::Stopped {
                reason: serde_json::to_value(reason).unwrap_or_default(),
            },
        }
    }

    /// Its name: `running`, `awaiting_approval` or `stopped`.
    pub fn name(&self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::AwaitingApproval => "awaiting_approval",
            RunStatus::Stopped { .. } => "stopped",
        }
    }
}

/// One run as [`Journal::runs`] lists it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RunSummary {
    /// The run.
    pub id: RunId,
    /// Its status.
    pub status: RunStatus,
    /// Committed steps (the next step's number).
    pub steps: u64,
    /// Committed events (the next event's seq).
    pub events: u64,
    /// The head of its event chain: the hash of its last event ([`Digest::zero`] when it has
    /// none), the core's root hash.
    pub root_hash: Digest,
    /// The head of its record chain: binds its header, every input and outcome, and the
    /// event chain after each step. Publish this to detect any later edit of the record.
    pub record_hash: Digest,
    /// Who holds its lease, and until when (milliseconds since the Unix epoch), if anyone.
    pub lease: Option<(Holder, u64)>,
}

impl RunSummary {
    /// Who drives the run, if another live process holds its lease as of `now_ms`: what
    /// [`Journal::acquire`] by `me` would refuse with. A command can say so before reading
    /// anything else.
    pub fn driven_by(&self, me: &Holder, now_ms: u64) -> Option<JournalError> {
        let (holder, expires_ms) = self.lease.as_ref()?;
        (*expires_ms > now_ms && !holder.yields_to(me)).then(|| JournalError::Leased {
            run: self.id.clone(),
            holder: holder.clone(),
            expires_in_ms: expires_ms - now_ms,
        })
    }
}

/// One stored event: its position, step, hash and the exact bytes the hash covers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoredEvent {
    /// Position in the run, from 0.
    pub seq: u64,
    /// The step that emitted it.
    pub step: u64,
    /// The hash chaining it to its predecessor.
    pub hash: Digest,
    /// [`EventRecord::encode`] of the event: compact JSON.
    pub body: Vec<u8>,
}

/// One committed step: its input and the hashes of the events it produced.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RecordedStep {
    /// The step number, from 0.
    pub step: u64,
    /// What was fed to the core.
    pub input: StepInput,
    /// The seq of its first event (of the next event, when it emitted none).
    pub first_seq: u64,
    /// The chain hashes of the events the core emitted for it, in seq order.
    pub hashes: Vec<Digest>,
}

impl RecordedStep {
    /// Whether `record` is the stored event at its position: same seq, same chain hash.
    /// The hash covers the predecessor's hash and the event's exact bytes, so an equal hash
    /// at an equal position is an identical event in an identical chain.
    pub fn recorded(&self, record: &EventRecord) -> bool {
        record
            .seq
            .checked_sub(self.first_seq)
            .and_then(|index| usize::try_from(index).ok())
            .and_then(|index| self.hashes.get(index))
            == Some(&record.hash)
    }
}

/// A whole run's inputs and event hashes as stored, checked for completeness.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RecordedRun {
    /// The run.
    pub id: RunId,
    /// What it was created with.
    pub header: RunHeader,
    /// Its last recorded status.
    pub status: RunStatus,
    /// The head of its event chain.
    pub root_hash: Digest,
    /// The head of its record chain.
    pub record_hash: Digest,
    /// Every committed step, in order.
    pub steps: Vec<RecordedStep>,
    /// Outcomes committed for the next step, a cycle whose step was not committed yet (its
    /// process died mid-cycle): resuming uses them and executes only the other agents.
    pub open: Option<OpenCycle>,
    /// Who held its lease when it was read, and until when.
    pub lease: Option<(Holder, u64)>,
}

/// A run leased by [`Journal::claim_loaded`], with what re-deriving it needs, read under the
/// claim.
#[derive(Debug)]
pub struct ClaimedRun {
    /// The run's lease, held by the claimer.
    pub lease: Lease,
    /// The run as [`Journal::load`] reads it, or why it cannot be read (a broken run: its
    /// lease is held all the same, for the claimer to release).
    pub recorded: Result<RecordedRun, JournalError>,
}

/// One step for [`Journal::append_steps`]: its input and the events the core emitted taking
/// it.
///
/// ```
/// use converge_core::{Context, Engine};
/// use converge_journal::{PendingStep, PreparedInput, RunHeader, StepInput};
///
/// let engine = Engine::new();
/// let mut run = engine.start(Context::new())?;
/// let header = RunHeader {
///     agents: Vec::new(),
///     created_by: "example".to_owned(),
///     intent: None,
///     job: None,
/// };
/// let step = PendingStep::new(StepInput::Start { header }, run.take_events());
/// assert_eq!(step.input().kind(), "start");
/// // The same step, its input encoded ahead of the commit (on any thread):
/// let prepared = PreparedInput::new(step.input().clone())?;
/// let again = PendingStep::prepared(prepared, step.events().clone());
/// assert_eq!(again.input(), step.input());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct PendingStep {
    input: StepInput,
    events: EventBatch,
    /// `input` encoded for storage, when it was prepared ahead.
    encoded: Option<std::sync::Arc<store::EncodedInput>>,
    /// The packed groups of the encodings `events` handed over ([`EventBatch::handed`]).
    packed: PackedEvents,
}

impl PendingStep {
    /// A step: `input` as the driver fed it to the core, and the `events` the core emitted
    /// for it. Its input is encoded when it is committed.
    pub fn new(input: StepInput, events: EventBatch) -> PendingStep {
        PendingStep {
            input,
            events,
            encoded: None,
            packed: PackedEvents::default(),
        }
    }

    /// A step whose input was encoded ahead of its commit.
    pub fn prepared(input: PreparedInput, events: EventBatch) -> PendingStep {
        PendingStep {
            input: input.input,
            events,
            encoded: Some(std::sync::Arc::new(input.encoded)),
            packed: PackedEvents::default(),
        }
    }

    /// What the driver fed the core.
    pub fn input(&self) -> &StepInput {
        &self.input
    }

    /// What the core emitted for it.
    pub fn events(&self) -> &EventBatch {
        &self.events
    }
}

/// A step's input encoded for storage ahead of its commit: outcomes encoded, digested and
/// compressed. What [`Journal::append_steps`] would otherwise do while the journal waits, a
/// driver can do on another core while the core merges the same outcomes; the stored bytes
/// are the same either way.
#[derive(Debug, Clone)]
pub struct PreparedInput {
    input: StepInput,
    encoded: store::EncodedInput,
}

impl PreparedInput {
    /// Encodes `input` for storage; fails as its commit would on an outcome that cannot be
    /// stored.
    pub fn new(input: StepInput) -> Result<PreparedInput, JournalError> {
        let encoded = store::EncodedInput::of(&input)?;
        Ok(PreparedInput { input, encoded })
    }

    /// The input.
    pub fn input(&self) -> &StepInput {
        &self.input
    }
}

/// One run's steps for [`Journal::append_steps_of_runs`]: what [`Journal::append_steps`]
/// takes.
#[derive(Debug, Clone)]
pub struct RunSteps {
    /// The lease the steps are written under.
    pub lease: Lease,
    /// The first step's number.
    pub first: u64,
    /// The steps, in order.
    pub steps: Vec<PendingStep>,
    /// Whether the lease is given up with them.
    pub after: AfterSteps,
}

/// What [`Journal::append_steps_of_runs_and_claim`] did.
#[derive(Debug)]
#[non_exhaustive]
pub struct GroupAndClaim {
    /// Each run's outcome, in the order the runs were given.
    pub committed: Vec<Result<(), JournalError>>,
    /// The runs claimed, each read under the claim, or why the claim failed.
    pub claimed: Result<Vec<ClaimedRun>, JournalError>,
}

/// What happens to the lease once [`Journal::append_steps`] has committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterSteps {
    /// The writer keeps driving the run.
    KeepLease,
    /// The drive ends: the lease is given up in the same transaction.
    Release,
}

/// Agent outcomes committed ahead of their cycle's step ([`Journal::commit_outcomes`]).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct OpenCycle {
    /// The step the cycle will be.
    pub step: u64,
    /// The cycle number.
    pub cycle: u32,
    /// Each agent's outcome, by agent index, in increasing index order.
    pub outcomes: Vec<(u32, OutcomeRecord)>,
}

impl RecordedRun {
    /// How many events the run's steps emitted.
    pub fn event_count(&self) -> u64 {
        self.steps.iter().map(|step| step.hashes.len() as u64).sum()
    }

    /// The run's summary as it was read.
    pub fn summary(&self) -> RunSummary {
        RunSummary {
            id: self.id.clone(),
            status: self.status.clone(),
            steps: self.steps.len() as u64,
            events: self.event_count(),
            root_hash: self.root_hash,
            record_hash: self.record_hash,
            lease: self.lease.clone(),
        }
    }
}

/// What [`Journal::verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// Every step and event is present, every hash chains, and the chain ends at the run's
    /// recorded root hash.
    Intact {
        /// Committed steps.
        steps: u64,
        /// Events in the chain.
        events: u64,
        /// The head of the event chain.
        root_hash: Digest,
        /// The head of the record chain.
        record_hash: Digest,
    },
    /// The first entry that is missing, altered or out of place.
    Broken {
        /// Where, in record order: the header, then each step's input, events and link.
        at: Place,
        /// What is wrong.
        reason: BreakReason,
    },
}

/// A place in a run's record, in the order the record chain binds them: the header, then for
/// each step its input (with its outcomes), its events and the link that closes it, then the
/// run's heads and status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Place {
    /// The run's header (the job spec and agents it was created with).
    Header,
    /// A step's input, with its agents' outcomes.
    Input {
        /// The step.
        step: u64,
    },
    /// An event.
    Event {
        /// The step that holds (or should hold) it, when the steps say.
        step: Option<u64>,
        /// Its seq.
        seq: u64,
    },
    /// The link that closes a step.
    Step {
        /// The step.
        step: u64,
    },
    /// The run's row: its heads and status.
    Run,
}

impl Place {
    /// The order of places in the record: a place with a smaller key comes first.
    pub(crate) fn order(&self) -> (u64, u8, u64) {
        match *self {
            Place::Header => (0, 0, 0),
            Place::Input { step } => (step.saturating_add(1), 0, 0),
            Place::Event { step, seq } => {
                (step.map_or(u64::MAX, |step| step.saturating_add(1)), 1, seq)
            }
            Place::Step { step } => (step.saturating_add(1), 2, 0),
            Place::Run => (u64::MAX, 3, 0),
        }
    }

    /// The event seq, for a place that is an event.
    pub fn seq(&self) -> Option<u64> {
        match *self {
            Place::Event { seq, .. } => Some(seq),
            _ => None,
        }
    }

    /// The step the place belongs to, when known.
    pub fn step(&self) -> Option<u64> {
        match *self {
            Place::Input { step } | Place::Step { step } => Some(step),
            Place::Event { step, .. } => step,
            Place::Header | Place::Run => None,
        }
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Place::Header => f.write_str("the run header"),
            Place::Input { step } => write!(f, "the input of step {step}"),
            Place::Event {
                step: Some(step),
                seq,
            } => write!(f, "event {seq} (step {step})"),
            Place::Event { step: None, seq } => write!(f, "event {seq}"),
            Place::Step { step } => write!(f, "the link closing step {step}"),
            Place::Run => f.write_str("the run's heads and status"),
        }
    }
}

/// What is wrong with the first bad entry of a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakReason {
    /// The stored hash is not the hash of the stored body chained to its predecessor: the
    /// body or the hash was altered.
    HashMismatch,
    /// No event is stored at this position.
    Missing,
    /// An event is stored beyond the run's recorded head.
    Unexpected,
    /// The event is filed under another step than the one whose range holds it.
    WrongStep {
        /// The step it is filed under.
        filed_under: u64,
    },
    /// The stored chain is consistent but does not end at the run's recorded root hash.
    RootMismatch,
    /// A step is missing, or a step is stored beyond the run's recorded head.
    StepMissing,
    /// A step's range of events disagrees with the steps before it or with the run's head.
    StepRange,
    /// A step's input cannot be read back.
    StepUnreadable {
        /// Why.
        detail: String,
    },
    /// A stored group of events cannot be split into events (its hashes, offsets and bodies
    /// do not fit together).
    Malformed {
        /// Why.
        detail: String,
    },
    /// The stored bytes do not hash to the link the record chain stored for them: the header,
    /// the input or one of its outcomes was altered (or the stored link was).
    LinkMismatch,
    /// A step's outcomes do not match its batch (missing, extra, repeated or unreadable).
    Outcomes {
        /// Why.
        detail: String,
    },
    /// The run's stored record hash is not the link of its last step.
    RecordMismatch,
    /// The run's stored status disagrees with its last event.
    StatusMismatch {
        /// What the events say.
        detail: String,
    },
}

impl fmt::Display for BreakReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BreakReason::HashMismatch => {
                f.write_str("the stored hash does not chain over the stored body (altered entry)")
            }
            BreakReason::Missing => f.write_str("no event is stored at this position"),
            BreakReason::Unexpected => f.write_str("an event is stored beyond the run's head"),
            BreakReason::WrongStep { filed_under } => {
                write!(f, "the event is filed under step {filed_under}")
            }
            BreakReason::RootMismatch => {
                f.write_str("the chain does not end at the run's recorded root hash")
            }
            BreakReason::StepMissing => f.write_str("the step is missing or beyond the run's head"),
            BreakReason::StepRange => {
                f.write_str("the step's event range disagrees with the steps before it")
            }
            BreakReason::StepUnreadable { detail } => {
                write!(f, "the step's input cannot be read: {detail}")
            }
            BreakReason::Malformed { detail } => {
                write!(f, "the stored events cannot be read: {detail}")
            }
            BreakReason::LinkMismatch => f.write_str(
                "the stored bytes do not hash to the link stored for them (altered entry)",
            ),
            BreakReason::Outcomes { detail } => write!(f, "the step's outcomes: {detail}"),
            BreakReason::RecordMismatch => {
                f.write_str("the record chain does not end at the run's recorded record hash")
            }
            BreakReason::StatusMismatch { detail } => {
                write!(f, "the stored status disagrees with the events: {detail}")
            }
        }
    }
}

/// Why a journal operation failed. A failed write wrote nothing and is never retried.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// The file exists but is not a Converge journal; it was not modified.
    #[error("{path} is not a Converge journal: {detail}")]
    NotAJournal {
        /// The file.
        path: PathBuf,
        /// What it is instead.
        detail: String,
    },
    /// The journal was written by a newer Converge; it was not modified.
    #[error(
        "{path} has journal schema version {found}, but this build supports up to {supported}; \
         use a newer Converge"
    )]
    NewerSchema {
        /// The file.
        path: PathBuf,
        /// The file's schema version.
        found: i64,
        /// The newest version this build reads.
        supported: i64,
    },
    /// The journal is a first edition, whose chain did not cover inputs; it was not modified.
    #[error(
        "{path} is a first-edition Converge journal (schema version {found}); this build reads \
         only version {supported}, whose chain covers every stored byte. Read it with the \
         Converge release that wrote it, or start a new journal file"
    )]
    OlderSchema {
        /// The file.
        path: PathBuf,
        /// The file's schema version.
        found: i64,
        /// The version this build reads.
        supported: i64,
    },
    /// No run has this id.
    #[error("no run \"{run}\" in the journal")]
    UnknownRun {
        /// The run.
        run: RunId,
    },
    /// A run with this id already exists.
    #[error("run \"{run}\" already exists in the journal")]
    RunExists {
        /// The run.
        run: RunId,
    },
    /// The step is not the run's next step.
    #[error("run \"{run}\": expected step {expected}, got step {got}")]
    OutOfOrder {
        /// The run.
        run: RunId,
        /// The next step number.
        expected: u64,
        /// The step number given.
        got: u64,
    },
    /// The step's input does not fit its position (a start that is not step 0, or step 0
    /// that is not the run's start).
    #[error("run \"{run}\", step {step}: {detail}")]
    InvalidStep {
        /// The run.
        run: RunId,
        /// The step number given.
        step: u64,
        /// What is wrong.
        detail: &'static str,
    },
    /// An event does not continue the stored chain (wrong seq, or a hash that does not chain
    /// from the stored head).
    #[error("run \"{run}\": event {seq} does not continue the chain: {detail}")]
    ChainMismatch {
        /// The run.
        run: RunId,
        /// The offending event's seq.
        seq: u64,
        /// What is wrong.
        detail: String,
    },
    /// Another live process holds the run's lease: it is driving the run. Nothing was done.
    #[error(
        "run \"{run}\" is being driven by {holder}; its lease runs for {expires_in_ms} ms more \
         unless renewed. Wait for it to stop, or stop that process (a killed holder's lease is \
         freed at once on its host)"
    )]
    Leased {
        /// The run.
        run: RunId,
        /// Who holds it.
        holder: Holder,
        /// How long until the lease expires unless renewed.
        expires_in_ms: u64,
    },
    /// The lease named by a write is no longer the run's (it expired and another process took
    /// the run over). Nothing was written; stop driving the run.
    #[error(
        "run \"{run}\": this process no longer holds its lease (another took the run over); \
         nothing was written"
    )]
    LeaseLost {
        /// The run.
        run: RunId,
    },
    /// The run stopped for good; nothing more can be appended or changed.
    #[error("run \"{run}\" has stopped; its journal is closed")]
    RunStopped {
        /// The run.
        run: RunId,
    },
    /// The stored run is incomplete or altered; [`Journal::verify`] names the first bad entry.
    #[error("run \"{run}\" is broken at {at}: {reason}")]
    Broken {
        /// The run.
        run: RunId,
        /// The first bad place.
        at: Place,
        /// What is wrong.
        reason: BreakReason,
    },
    /// Stored data that cannot be read back (a damaged header, status or hash).
    #[error("corrupt journal: {detail}")]
    Corrupt {
        /// What is wrong.
        detail: String,
    },
    /// The storage cannot provide what a journal needs (for example WAL mode).
    #[error("unsupported storage: {detail}")]
    Unsupported {
        /// What is missing.
        detail: String,
    },
    /// The storage failed. If this was a write, nothing is known to be written and this
    /// handle refuses further writes ([`JournalError::Poisoned`]).
    #[error("journal storage failed while {context}: {source}")]
    Storage {
        /// What the journal was doing.
        context: String,
        /// The storage's own error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The file could not be inspected.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// An earlier write failed in storage; this handle refuses writes. Reopen the journal: it
    /// holds every step that committed.
    #[error("an earlier journal write failed ({detail}); reopen the journal to continue")]
    Poisoned {
        /// The earlier failure.
        detail: String,
    },
    /// The journal was opened for reading only ([`SqliteJournal::open_read_only`]).
    #[error("{path} was opened for reading only; nothing was written")]
    ReadOnly {
        /// The file.
        path: PathBuf,
    },
    /// A failure injected by [`FailingJournal`].
    #[error("injected failure of write call {call}")]
    Injected {
        /// The 0-based write call that failed.
        call: u64,
    },
}

/// Durable storage of runs: their headers, steps, outcomes and chains, and who drives them.
///
/// Writes are all-or-nothing. [`Journal::append`] is the unit of durability: when it returns
/// `Ok`, the step, its outcomes and events and the run's new status are committed; when it
/// returns `Err`, nothing of it is known to be written and it must not be retried blindly
/// (resume from what [`Journal::load`] returns instead). Every write of a run names the lease
/// its writer holds ([`Journal::acquire`]); a write under a lease that is no longer the run's
/// is refused ([`JournalError::LeaseLost`]).
pub trait Journal {
    /// Creates a run, leased to `holder` from `now_ms`. Refuses an existing id.
    fn create_run(
        &mut self,
        run: &RunId,
        header: &RunHeader,
        holder: &Holder,
        now_ms: u64,
    ) -> Result<Lease, JournalError>;

    /// Takes the run's lease for `holder`: refused ([`JournalError::Leased`]) while another
    /// holder's lease is live — unexpired, and its holder not known to be gone.
    fn acquire(&mut self, run: &RunId, holder: &Holder, now_ms: u64)
    -> Result<Lease, JournalError>;

    /// Takes the run's lease for `holder` from whoever holds it, live or not: how a run
    /// another process drives is stopped (a cancellation from another machine). From then
    /// on the previous holder's commits, renewals and releases are refused
    /// ([`JournalError::LeaseLost`]), so it stops at its next write, and nothing it had not
    /// committed is kept.
    fn preempt(&mut self, run: &RunId, holder: &Holder, now_ms: u64)
    -> Result<Lease, JournalError>;

    /// Extends a held lease to `now_ms` plus its time to live.
    fn renew(&mut self, lease: &mut Lease, now_ms: u64) -> Result<(), JournalError>;

    /// Leases to `holder` at most `limit` runs that are running and that no one drives — a
    /// run submitted and not started, one whose driver released it, or one whose lease
    /// expired as of `now_ms` (its driver died or was cut off) — oldest first: the runs a
    /// worker should drive next. Concurrent claims never receive the same run. One call
    /// leases at most 256 runs that no one holds, whatever `limit` says.
    fn claim(
        &mut self,
        holder: &Holder,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<Lease>, JournalError>;

    /// Claims as [`Journal::claim`] does and loads each claimed run as [`Journal::load`]
    /// does: what a worker needs to drive them. A backend does both in one transaction
    /// (the runs' rows are locked by the claim, so no one writes them meanwhile); this
    /// default claims, then loads each.
    ///
    /// A run that cannot be loaded (broken, or its header unreadable) is claimed all the
    /// same, with its error; a storage failure fails the whole claim.
    fn claim_loaded(
        &mut self,
        holder: &Holder,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<ClaimedRun>, JournalError> {
        let leases = self.claim(holder, now_ms, limit)?;
        Ok(leases
            .into_iter()
            .map(|lease| {
                let recorded = self.load(lease.run());
                ClaimedRun { lease, recorded }
            })
            .collect())
    }

    /// Gives a held lease up; a lease already lost is not an error.
    fn release(&mut self, lease: &Lease) -> Result<(), JournalError>;

    /// Records a new run that no one drives yet, for any worker to claim: what
    /// [`Journal::create_run`] and then [`Journal::release`] leave, written by a backend in
    /// one transaction, the run's row inserted once and never leased (this default makes
    /// both calls, as `holder` at `now_ms`). An existing id is refused
    /// ([`JournalError::RunExists`]).
    fn submit_run(
        &mut self,
        run: &RunId,
        header: &RunHeader,
        holder: &Holder,
        now_ms: u64,
    ) -> Result<(), JournalError> {
        let lease = self.create_run(run, header, holder, now_ms)?;
        self.release(&lease)
    }

    /// Commits outcomes of the cycle that will be step `step`, ahead of the step itself, so
    /// that a crash before the step commits loses only the agents that had not finished.
    /// `step` must be the run's next step; an agent's outcome is committed at most once.
    fn commit_outcomes(
        &mut self,
        lease: &Lease,
        step: u64,
        cycle: u32,
        outcomes: &[(u32, OutcomeRecord)],
    ) -> Result<(), JournalError>;

    /// Commits one step atomically: its input (and the outcomes of a cycle not committed
    /// ahead), its events, and the run's status after them.
    ///
    /// Steps are numbered from 0 without gaps, step 0 is the run's [`StepInput::Start`] (with
    /// the header the run was created with) and no other step is a start. The events must
    /// continue the stored chain: the batch's first seq is the run's next seq and its first
    /// event chains from the run's root hash. (Within a batch, the core has chained every
    /// event over the bytes it carries; a store keeps those bytes as they are.) Anything else
    /// is refused with nothing written.
    fn append(
        &mut self,
        lease: &Lease,
        step: u64,
        input: &StepInput,
        events: &EventBatch,
    ) -> Result<(), JournalError>;

    /// Commits consecutive steps of one run, from step `first` on, in one transaction: all
    /// of them or none. Each is checked as [`Journal::append`] checks it, against the record
    /// the steps before it leave; the run's heads and status are those after the last. With
    /// [`AfterSteps::Release`] the lease is given up in the same transaction
    /// ([`Journal::release`]), so a drive that ends costs one commit. No steps and
    /// [`AfterSteps::Release`] only releases.
    ///
    /// This is how a driver commits the steps of agents that act on nothing outside the run
    /// together: what a crash leaves is still a prefix of the run's steps, whole.
    fn append_steps(
        &mut self,
        lease: &Lease,
        first: u64,
        steps: &[PendingStep],
        after: AfterSteps,
    ) -> Result<(), JournalError>;

    /// Commits the steps of several runs, each exactly as [`Journal::append_steps`] would,
    /// and returns each run's outcome in order: how a worker commits the runs its slots
    /// finished at about the same time with one transaction, one commit and one flush.
    ///
    /// A backend writes them all in one transaction, each run's row locked (in the order of
    /// the runs' ids, so two such transactions never wait on each other in a cycle) and its
    /// lease checked in it; a crash leaves all of them or none. When any run is refused
    /// (its lease lost, its steps out of order), nothing of the group is kept and each run
    /// is committed on its own, so one refusal costs the others nothing but a retry. This
    /// default commits each on its own.
    fn append_steps_of_runs(&mut self, runs: &[RunSteps]) -> Vec<Result<(), JournalError>> {
        runs.iter()
            .map(|run| self.append_steps(&run.lease, run.first, &run.steps, run.after))
            .collect()
    }

    /// Commits the steps of several runs as [`Journal::append_steps_of_runs`] does and claims
    /// up to `limit` runs for `holder` as [`Journal::claim_loaded`] does, in the same
    /// transaction when the group commits together: how a worker whose slots end their
    /// drives takes their next runs with the commit that ends them, one transaction and one
    /// flush instead of one for the steps and one per claim.
    ///
    /// The claim runs after the group's writes, under the locks they took, so a run the
    /// group let go while it runs may be claimed again at once. When the group is committed
    /// run by run (one of its runs was refused), the claim is a transaction of its own after
    /// them. This default commits, then claims, each on its own.
    fn append_steps_of_runs_and_claim(
        &mut self,
        runs: &[RunSteps],
        holder: &Holder,
        now_ms: u64,
        limit: usize,
    ) -> GroupAndClaim {
        let committed = self.append_steps_of_runs(runs);
        let claimed = match limit {
            0 => Ok(Vec::new()),
            _ => self.claim_loaded(holder, now_ms, limit),
        };
        GroupAndClaim { committed, claimed }
    }

    /// Every run, in creation order.
    fn runs(&self) -> Result<Vec<RunSummary>, JournalError>;

    /// One run's summary.
    fn summary(&self, run: &RunId) -> Result<RunSummary, JournalError>;

    /// The summaries of `runs`, in their order, `None` for a run the journal does not hold:
    /// what a listing shows. A backend reads them all in one read (one snapshot, one trip
    /// to its storage's thread) rather than one read per run; this default asks each.
    fn summaries(&self, runs: &[RunId]) -> Result<Vec<Option<RunSummary>>, JournalError> {
        runs.iter()
            .map(|run| match self.summary(run) {
                Ok(summary) => Ok(Some(summary)),
                Err(JournalError::UnknownRun { .. }) => Ok(None),
                Err(error) => Err(error),
            })
            .collect()
    }

    /// What one run was created with, without reading its steps.
    fn header(&self, run: &RunId) -> Result<RunHeader, JournalError>;

    /// One run's inputs and event hashes, every step in order, and the outcomes committed
    /// ahead of a step that was not: what re-deriving the run needs. Refuses a run whose
    /// stored header, inputs or outcomes do not hash to their stored links, or whose steps or
    /// hashes are incomplete, out of place or do not end at the run's heads
    /// ([`JournalError::Broken`]). It reads no event body: re-deriving the run checks every
    /// stored event hash against the event the core emits, and [`Journal::verify`] checks the
    /// stored bodies.
    fn load(&self, run: &RunId) -> Result<RecordedRun, JournalError>;

    /// The stored events of a run from seq `from` on (none when `from` is at or beyond its
    /// head), each checked to chain from the stored hash before it and to be filed under the
    /// step whose range holds it, and the last to end at the run's root hash. Refuses an
    /// altered, missing or misplaced event among those returned ([`JournalError::Broken`]).
    ///
    /// Its cost follows the events returned, not the run: events before `from` are neither
    /// read nor checked (the first returned chains from the stored hash of event `from - 1`,
    /// taken as stored), so a reader that follows a run with a growing `from` pays for each
    /// event once. [`Journal::verify`] checks the whole run.
    fn events(&self, run: &RunId, from: u64) -> Result<Vec<StoredEvent>, JournalError>;

    /// At most `limit` of the events [`Journal::events`] returns from `from`, checked the same
    /// way (the root hash only when the page reaches the run's head): a page of the run.
    ///
    /// The provided implementation reads all of [`Journal::events`] and keeps the first
    /// `limit`; a store overrides it to read only the page ([`SqliteJournal`] does).
    fn events_page(
        &self,
        run: &RunId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, JournalError> {
        let mut events = self.events(run, from)?;
        events.truncate(limit);
        Ok(events)
    }

    /// Recomputes the run's whole record from the stored bytes — the header link, each
    /// step's input link over its input and outcomes, every event hash over its body, each
    /// step's closing link, the heads and the status — and names the first entry that does
    /// not hold.
    fn verify(&self, run: &RunId) -> Result<Verification, JournalError>;
}

impl<J: Journal + ?Sized> Journal for &mut J {
    forward_journal!(all through deref);
}

impl<J: Journal + ?Sized> Journal for Box<J> {
    forward_journal!(all through deref);
}
