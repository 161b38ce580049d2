//! Converge runtime: executes and remembers what the core decides.
//!
//! The core (`converge-core`) is a sans-I/O state machine. This crate drives it: an async
//! driver runs I/O-bound agents concurrently within a cycle under a concurrency limit, a
//! per-agent timeout and a wall-clock budget read from an injected [`Clock`], and halts a run
//! when its [`Cancel`] handle is cancelled (journaled, so replay reproduces it); a journal stores
//! every input of a run and its event hash chain in SQLite so a run can be resumed after a
//! crash, replayed without calling any agent, and verified. An [`ActivityObserver`] is told,
//! besides the committed events, when each agent starts and finishes executing. A [`Worker`]
//! claims the runs no one drives from a shared journal and drives them, any number of
//! workers on one database.

mod activity;
mod agent;
mod cancel;
mod clock;
mod driver;
mod durable;
mod group_commit;
pub mod limits;
mod observations;
pub mod spec;
mod worker;

pub use activity::ActivityObserver;
pub use agent::{AgentFuture, AsyncAgent};
pub use cancel::{Cancel, Cancellation};
pub use clock::{Clock, ManualClock, SystemClock};
pub use converge_journal::{
    AfterSteps, BreakReason, ClaimedRun, Copied, FailingJournal, GroupAndClaim, Holder, Journal,
    JournalError, LEASE_RENEW_MS, LEASE_TTL_MS, Lease, Location, News, OpenCycle, PendingStep,
    Place, PostgresJournal, PreparedInput, RUN_ID_LEN_MAX, RecordedRun, RecordedStep, RunId,
    RunIdError, RunStatus, RunSteps, RunSummary, SQLITE_POLL, SqliteJournal, StoredEvent,
    Verification, Wakeups, copy, postgres_client_config, wall_clock_ms,
};
pub use converge_journal::{
    DecisionRecord, DerivationRecord, EffectRecord, JobRecord, KeyRecord, ObservationRecord,
    OutcomeRecord, ProposalRecord, RecordError, RemoteRecord, ReplayabilityRecord, RunHeader,
    StepInput, VerdictRecord,
};
pub use driver::{DriverConfig, Runtime};
pub use durable::{Divergence, DurableError, Inspection, RecordedRetry, ReplayReport};
pub use observations::RecordedObservation;
pub use worker::{
    Build, Control, DRIVER_STACK_BYTES, IDLE_LOOK, LISTENED_LOOK, RETRY_AFTER, Report, Reporter,
    Worker, WorkerConfig, WorkerError,
};
