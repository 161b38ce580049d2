//! Durable runs: every step is committed to a journal before it counts.
//!
//! A durable run records each step's input (a cycle's outcomes, decisions, a halt) together
//! with the events the core emitted for it, in one journal transaction. Nothing else is
//! stored: resuming, deciding and replaying all re-drive the recorded inputs through a fresh
//! core run and check that it emits exactly the recorded events. Recorded cycles are never
//! executed again; a step that was not committed when a process died is executed afresh.
//!
//! A driver's own reasons to stop — the wall-clock budget, a cancellation — are journaled as
//! halt steps ([`HaltRecord`]), so re-deriving stops the same way without a clock or a
//! cancellation handle. A cycle cut short by a cancellation is an ordinary cycle whose cut-short
//! agents failed; a run awaiting approval is cancelled by resuming it with no decisions and
//! halting it.

use converge_core::{
    AgentId, AgentOutcome, Batch, Context, ConvergeResult, Digest, Engine, EngineError, Event,
    EventBatch, EventRecord, Exhausted, Fact, ObservationId, Retry, RetryRefusal, Run, Step,
    StopReason,
};
use serde::{Deserialize, Serialize};

use crate::activity::ActivityObserver;
use crate::cancel::Cancellation;
use crate::clock::Clock;
use crate::driver::{Executor, Progress, drain};
use crate::observations::{self, RecordedObservation};
use converge_journal::{
    AfterSteps, Journal, JournalError, LEASE_RENEW_MS, Lease, OpenCycle, Packed, PackedEvents,
    PendingStep, PreparedInput, RecordedRun, RecordedStep, RunId, RunSummary,
};
use converge_journal::{JobRecord, OutcomeRecord, RecordError, RunHeader, StepInput};
use std::collections::BTreeSet;

/// Who creates durable runs, as recorded in their header.
const CREATED_BY: &str = concat!("converge-runtime ", env!("CARGO_PKG_VERSION"));

/// Why a durable operation failed. Whatever was committed before stays committed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DurableError {
    /// The engine refused to start or resume.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The journal refused a read or a write; the run stopped at its last committed step.
    #[error("journal: {0}")]
    Journal(#[from] JournalError),
    /// A stored input could not be turned back into core values.
    #[error("run {run}: step {step}: {source}")]
    Record {
        /// The run.
        run: RunId,
        /// The step.
        step: u64,
        /// What was wrong with it.
        source: RecordError,
    },
    /// Re-driving the recorded inputs did not reproduce the recorded events.
    #[error("run {run}: {divergence}")]
    Diverged {
        /// The run.
        run: RunId,
        /// Where and how.
        divergence: Divergence,
    },
    /// The engine's agents are not the ones the run was recorded with.
    #[error(
        "run {run} was recorded with agents {}; this engine has {}: rebuild it from the run's \
         own spec",
        recorded.join(", "),
        actual.join(", ")
    )]
    AgentsChanged {
        /// The run.
        run: RunId,
        /// Agent names in the journal.
        recorded: Vec<String>,
        /// Agent names of this engine.
        actual: Vec<String>,
    },
    /// The run's last committed step left it going: a driver is driving it, or died while
    /// driving it. Cancel a drive through its [`crate::Cancel`]; resume a dead one first.
    #[error(
        "run {run} has not stopped: it is being driven (cancel its drive), or its driver died \
         (resume it first)"
    )]
    NotStopped {
        /// The run.
        run: RunId,
    },
    /// The run has stopped for good; there is nothing to resume.
    #[error("run {run} has already stopped: {reason}")]
    Finished {
        /// The run.
        run: RunId,
        /// Its stop reason, as recorded.
        reason: String,
    },
    /// Decisions were given for a run that is not waiting for any.
    #[error("run {run} is not awaiting approval")]
    NotAwaitingApproval {
        /// The run.
        run: RunId,
    },
    /// A retry of failed agents was refused; nothing was written.
    #[error("run {run} cannot be retried: {refusal}")]
    NotRetryable {
        /// The run.
        run: RunId,
        /// Why.
        refusal: RetryRefusal,
    },
}

/// The first point where a re-driven run differs from its journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Divergence {
    /// The journal step being re-driven.
    pub step: u64,
    /// The event position, when the difference is in an event.
    pub seq: Option<u64>,
    /// The recorded event's hash, if there is one at that position.
    pub expected: Option<Digest>,
    /// The re-derived event's hash, if there is one at that position.
    pub actual: Option<Digest>,
    /// What differs, in words.
    pub detail: String,
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "diverged at step {}", self.step)?;
        if let Some(seq) = self.seq {
            write!(f, ", event {seq}")?;
        }
        write!(f, ": {}", self.detail)
    }
}

/// What [`crate::Runtime::replay`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "replay", rename_all = "snake_case")]
pub enum ReplayReport {
    /// Every recorded step re-derived exactly the recorded events.
    Identical {
        /// Steps re-driven.
        steps: u64,
        /// Events re-derived.
        events: u64,
        /// The root hash, recorded and re-derived.
        root_hash: Digest,
    },
    /// The first difference.
    Diverged(Divergence),
}

/// Why a driver halted a run, as journaled (so replay halts the same way).
///
/// Stored as the `reason` of a [`StepInput::Halt`]: `{"halt":"time","limit_ms":…,
/// "elapsed_ms":…}` or `{"halt":"cancelled","by":…,"reason":…}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "halt", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum HaltRecord {
    /// The wall-clock budget ran out.
    Time { limit_ms: u64, elapsed_ms: u64 },
    /// Someone cancelled the run ([`crate::Cancel`], [`crate::Runtime::cancel_durable`]).
    Cancelled { by: String, reason: String },
}

impl HaltRecord {
    pub(crate) fn cancelled(cancellation: &Cancellation) -> HaltRecord {
        HaltRecord::Cancelled {
            by: cancellation.by.clone(),
            reason: cancellation.reason.clone(),
        }
    }

    fn stop_reason(&self) -> StopReason {
        match self {
            &HaltRecord::Time {
                limit_ms,
                elapsed_ms,
            } => StopReason::BudgetExhausted {
                exhausted: Exhausted::Time {
                    limit_ms,
                    elapsed_ms,
                },
            },
            HaltRecord::Cancelled { by, reason } => StopReason::Halted {
                reason: Cancellation::new(by, reason).to_string(),
            },
        }
    }
}

/// Where re-driving the journal left a run.
pub(crate) enum Position<'e> {
    /// Created but its start step was never committed: the run begins afresh.
    Unstarted(Run<'e>),
    /// Still going: more steps can be driven live.
    Running(Run<'e>),
    /// Stopped after the last recorded step.
    Stopped(ConvergeResult),
}

/// Re-drives a recorded run through `engine`, checking every step's events.
pub(crate) fn redrive<'e>(
    engine: &'e Engine,
    recorded: &RecordedRun,
) -> Result<Position<'e>, DurableError> {
    let run_id = &recorded.id;
    check_agents(engine, run_id, &recorded.header)?;
    let mut steps = recorded.steps.iter();
    let mut run = engine.start(Context::new())?;
    let Some(first) = steps.next() else {
        return Ok(Position::Unstarted(run));
    };
    let mut position = if compare(run_id, first, &mut run)? {
        finished(run_id, first, run)?
    } else {
        Position::Running(run)
    };
    for step in steps {
        position = redrive_step(engine, run_id, step, position)?;
    }
    Ok(position)
}

fn redrive_step<'e>(
    engine: &'e Engine,
    run_id: &RunId,
    step: &RecordedStep,
    position: Position<'e>,
) -> Result<Position<'e>, DurableError> {
    let record_error = |source| DurableError::Record {
        run: run_id.clone(),
        step: step.step,
        source,
    };
    match (position, &step.input) {
        (Position::Running(mut run), StepInput::Cycle { .. }) => {
            let Step::Execute(batch) = run.next_step() else {
                return Err(diverged(
                    run_id,
                    step.step,
                    "a cycle was recorded but the run stops here",
                ));
            };
            let outcomes = match step.input.outcomes_for(&batch) {
                Ok(outcomes) => outcomes,
                // The run would execute agents whose outcomes the journal does not hold:
                // re-deriving never executes an agent (no program runs, no model is called).
                Err(
                    error @ (RecordError::CycleMismatch { .. }
                    | RecordError::BatchMismatch { .. }
                    | RecordError::Outcome { .. }),
                ) => {
                    let detail = format!(
                        "{error}; re-deriving uses recorded outcomes only and never executes an \
                         agent"
                    );
                    return Err(diverged(run_id, step.step, &detail));
                }
                Err(error) => return Err(record_error(error)),
            };
            if let Err(error) = run.submit(outcomes) {
                return Err(diverged(run_id, step.step, &error.to_string()));
            }
            if compare(run_id, step, &mut run)? {
                // The cycle itself stopped the run (a budget, a failure policy): its step
                // committed the stop, and no stop step follows.
                return finished(run_id, step, run);
            }
            Ok(Position::Running(run))
        }
        (Position::Running(mut run), StepInput::Halt { reason }) => {
            let halt: HaltRecord = serde_json::from_value(reason.clone()).map_err(|error| {
                diverged(run_id, step.step, &format!("unreadable halt: {error}"))
            })?;
            if run.halt(halt.stop_reason()).is_err() {
                return Err(diverged(
                    run_id,
                    step.step,
                    "a halt was recorded while a batch was outstanding",
                ));
            }
            stopped(run_id, step, run)
        }
        (Position::Running(mut run), StepInput::Stop) => match run.next_step() {
            Step::Stopped => stopped(run_id, step, run),
            Step::Execute(batch) => {
                let names: Vec<&str> = batch
                    .agents()
                    .iter()
                    .filter_map(|&agent| run.agent_name(agent))
                    .collect();
                let detail = format!(
                    "a stop was recorded but the run would execute {} here, whose \
                     outcomes the journal does not hold; re-deriving uses recorded outcomes \
                     only and never executes an agent",
                    names.join(", ")
                );
                Err(diverged(run_id, step.step, &detail))
            }
        },
        (Position::Stopped(result), StepInput::Decisions { .. }) => {
            let mut run = match step.input.retry_into_core() {
                Some(retry) => engine.retry_run(result, &retry).map_err(|error| {
                    diverged(run_id, step.step, &format!("the recorded retry: {error}"))
                })?,
                None => engine.resume_run(result, step.input.decisions_into_core())?,
            };
            if compare(run_id, step, &mut run)? {
                return finished(run_id, step, run);
            }
            Ok(Position::Running(run))
        }
        (_, input) => Err(diverged(
            run_id,
            step.step,
            &format!("a {} step is not possible here", input.kind()),
        )),
    }
}

fn stopped<'e>(
    run_id: &RunId,
    step: &RecordedStep,
    mut run: Run<'e>,
) -> Result<Position<'e>, DurableError> {
    compare(run_id, step, &mut run)?;
    finished(run_id, step, run)
}

/// The result of a run whose stop was re-derived at `step`.
fn finished<'e>(
    run_id: &RunId,
    step: &RecordedStep,
    run: Run<'e>,
) -> Result<Position<'e>, DurableError> {
    match run.finish() {
        Ok(result) => Ok(Position::Stopped(result)),
        Err(_) => Err(diverged(run_id, step.step, "the run did not stop")),
    }
}

/// Drains the run's new events and checks them against the step's recorded ones; says
/// whether they stopped the run (a `run_stopped` event).
fn compare(run_id: &RunId, step: &RecordedStep, run: &mut Run<'_>) -> Result<bool, DurableError> {
    let derived = run.take_records();
    match first_difference(step, &derived) {
        None => Ok(derived.iter().any(stops)),
        Some(divergence) => Err(DurableError::Diverged {
            run: run_id.clone(),
            divergence,
        }),
    }
}

/// Whether an event stops the run.
pub(crate) fn stops(record: &EventRecord) -> bool {
    matches!(record.event, Event::RunStopped { .. })
}

fn first_difference(step: &RecordedStep, derived: &[EventRecord]) -> Option<Divergence> {
    let longest = step.hashes.len().max(derived.len());
    (0..longest).find_map(|index| {
        let (stored, actual) = (step.hashes.get(index), derived.get(index));
        let same = matches!(actual, Some(record) if step.recorded(record));
        (!same).then(|| Divergence {
            step: step.step,
            seq: Some(step.first_seq + index as u64),
            expected: stored.copied(),
            actual: actual.map(|record| record.hash),
            detail: match (stored, actual) {
                (Some(_), Some(record)) => format!(
                    "re-derived {} differs from the recorded event",
                    kind_of(record)
                ),
                (Some(_), None) => "a recorded event was not re-derived".to_owned(),
                (None, Some(record)) => {
                    format!("re-derived {} was never recorded", kind_of(record))
                }
                (None, None) => String::new(),
            },
        })
    })
}

fn kind_of(record: &EventRecord) -> String {
    serde_json::to_value(&record.event)
        .ok()
        .and_then(|value| {
            value
                .get("event")
                .and_then(|kind| kind.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "event".to_owned())
}

fn diverged(run_id: &RunId, step: u64, detail: &str) -> DurableError {
    let divergence = Divergence {
        step,
        seq: None,
        expected: None,
        actual: None,
        detail: detail.to_owned(),
    };
    DurableError::Diverged {
        run: run_id.clone(),
        divergence,
    }
}

fn check_agents(engine: &Engine, run_id: &RunId, header: &RunHeader) -> Result<(), DurableError> {
    let actual: Vec<String> = engine.agent_names().map(str::to_owned).collect();
    if actual == header.agents {
        return Ok(());
    }
    Err(DurableError::AgentsChanged {
        run: run_id.clone(),
        recorded: header.agents.clone(),
        actual,
    })
}

/// The header a new durable run of `engine`, built from `job` if given, is created with.
pub(crate) fn header_of(engine: &Engine, job: Option<&JobRecord>) -> RunHeader {
    RunHeader {
        agents: engine.agent_names().map(str::to_owned).collect(),
        created_by: CREATED_BY.to_owned(),
        // What the run is for, readable without parsing the job's spec (a runtime built by
        // hand has an intent but no spec).
        intent: engine
            .intent()
            .and_then(|intent| serde_json::to_value(intent).ok()),
        job: job.cloned(),
    }
}

/// Most steps a drive holds back before it commits them (see [`Live::take`]): a run of pure
/// agents that goes on for long still commits every this many steps.
pub(crate) const PENDING_STEPS_MAX: usize = 64;

/// Whether a step may wait to be committed with the ones after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Commit {
    /// It waits, and is committed with the next step that may not wait, or when the drive
    /// ends. A cycle of agents that act outside the run waits only until the next batch
    /// executes ([`Live::drive`]); a step of pure agents (or of none) may wait longer.
    Deferred,
    /// It is committed now, with every step held back before it.
    Now,
}

/// Drives a run live from journal step `next_step`, committing each step before going on,
/// under the run's lease.
///
/// Steps that executed only pure agents (agents that act on nothing outside the run:
/// re-executing one gives the same outcome and does nothing else) are held back and
/// committed together with the next step that may not wait: a step of an agent with side
/// effects is committed before that agent runs, and the drive's last step commits with the
/// lease given up. A cycle of agents with side effects is held back only while the core
/// decides what follows it: it commits before any agent executes again, or with the stop step
/// of a run it ended. What a crash leaves is still a prefix of the run's steps; the pure
/// steps it loses are executed again on resume, with the same outcomes and events.
pub(crate) struct Live<'a, J: Journal> {
    pub(crate) journal: &'a mut J,
    pub(crate) lease: Lease,
    /// The step the run's next input will be (steps held back included).
    pub(crate) next_step: u64,
    pub(crate) observer: &'a mut dyn ActivityObserver,
    /// Outcomes committed ahead of step `next_step` before a crash.
    pub(crate) open: Option<OpenCycle>,
    pub(crate) clock: &'a dyn Clock,
    /// When the lease was last renewed, by `clock`.
    pub(crate) renewed_ms: u64,
    /// Whether a step taken held the run's `run_stopped` event.
    pub(crate) stop_committed: bool,
    /// The agents that act on nothing outside the run.
    pub(crate) pure: &'a BTreeSet<AgentId>,
    /// Steps taken and not committed yet, in order: they end at `next_step`.
    pub(crate) pending: Vec<PendingStep>,
    /// Where the run's encodings are packed while it goes on, when they are.
    pub(crate) packed: Option<Packed>,
}

/// The agents of a run driven for one commit, which executes none.
static NO_AGENTS: BTreeSet<AgentId> = BTreeSet::new();

impl<'a, J: Journal> Live<'a, J> {
    /// Drives a run from step `next_step` under `lease`: no cycle open, every agent
    /// treated as acting outside the run, nothing held back, encodings kept by the run.
    pub(crate) fn new(
        journal: &'a mut J,
        lease: &Lease,
        next_step: u64,
        observer: &'a mut dyn ActivityObserver,
        clock: &'a dyn Clock,
    ) -> Live<'a, J> {
        Live {
            journal,
            lease: lease.clone(),
            next_step,
            observer,
            open: None,
            clock,
            renewed_ms: clock.now_ms(),
            stop_committed: false,
            pure: &NO_AGENTS,
            pending: Vec::new(),
            packed: None,
        }
    }

    /// Hands the run's encodings to a packer while it goes on, so a wide cycle's are
    /// compressed on another core as the core merges it ([`converge_journal::packer`]).
    pub(crate) fn pack_while_running(&mut self, run: &mut Run<'_>) {
        let (sink, packed) = converge_journal::packer();
        run.hand_encoded_events_to(Box::new(sink));
        self.packed = Some(packed);
    }
}

impl<J: Journal> Live<'_, J> {
    /// The run being driven.
    fn run_id(&self) -> RunId {
        self.lease.run().clone()
    }

    /// Commits one step with the run's pending events, and every step held back before it;
    /// the events reach observers only once committed.
    pub(crate) fn commit(
        &mut self,
        input: StepInput,
        run: &mut Run<'_>,
    ) -> Result<(), DurableError> {
        self.take(input, run, Commit::Now)
    }

    /// Takes one step with the run's pending events: held back if `when` allows it (up to
    /// [`PENDING_STEPS_MAX`]), else committed with the steps held back before it.
    pub(crate) fn take(
        &mut self,
        input: StepInput,
        run: &mut Run<'_>,
        when: Commit,
    ) -> Result<(), DurableError> {
        self.take_step(run, when, |events| PendingStep::new(input, events))
    }

    /// [`Live::take`] of a step made of the run's pending events by `step`.
    fn take_step(
        &mut self,
        run: &mut Run<'_>,
        when: Commit,
        step: impl FnOnce(EventBatch) -> PendingStep,
    ) -> Result<(), DurableError> {
        let events = run.take_events();
        let packed = match &mut self.packed {
            Some(packed) => packed.take(&events).map_err(|detail| {
                DurableError::Journal(JournalError::ChainMismatch {
                    run: self.lease.run().clone(),
                    seq: events.first_seq(),
                    detail,
                })
            })?,
            None => PackedEvents::default(),
        };
        self.stop_committed |= events.records().iter().any(stops);
        self.pending.push(step(events).with_packed(packed));
        self.next_step += 1;
        if when == Commit::Now || self.pending.len() >= PENDING_STEPS_MAX {
            self.flush(AfterSteps::KeepLease)?;
        }
        Ok(())
    }

    /// Commits the steps held back, in one transaction (giving the lease up in it with
    /// [`AfterSteps::Release`]), then hands their events to the observer.
    pub(crate) fn flush(&mut self, after: AfterSteps) -> Result<(), DurableError> {
        if self.pending.is_empty() && after == AfterSteps::KeepLease {
            return Ok(());
        }
        let first = self.next_step - self.pending.len() as u64;
        self.journal
            .append_steps(&self.lease, first, &self.pending, after)?;
        for step in self.pending.drain(..) {
            for record in step.events().records() {
                self.observer.on_event(record);
            }
        }
        Ok(())
    }

    /// Whether every agent of `batch` acts on nothing outside the run.
    fn all_pure(&self, batch: &Batch) -> bool {
        batch.agents().iter().all(|agent| self.pure.contains(agent))
    }

    /// Halts the run for `halt` and commits the halt step (its `run_stopped` event).
    pub(crate) fn halt(
        &mut self,
        halt: &HaltRecord,
        run: &mut Run<'_>,
    ) -> Result<(), DurableError> {
        let _ = run.halt(halt.stop_reason());
        let reason = serde_json::to_value(halt).unwrap_or_default();
        self.commit(StepInput::Halt { reason }, run)
    }

    /// Renews the lease once a third of its time to live has passed.
    fn renew_if_due(&mut self) -> Result<(), DurableError> {
        if self.renewal_due() {
            self.journal
                .renew(&mut self.lease, converge_journal::wall_clock_ms())?;
            self.renewed_ms = self.clock.now_ms();
        }
        Ok(())
    }

    /// Whether the lease is due for renewal: when goes by the drive's clock; the new expiry
    /// by the wall clock leases are reckoned in.
    fn renewal_due(&self) -> bool {
        self.clock.now_ms().saturating_sub(self.renewed_ms) >= LEASE_RENEW_MS
    }

    /// The outcomes committed ahead of this cycle before a crash, checked against the batch
    /// the re-derived run asks for (they are used once).
    fn known_outcomes(
        &mut self,
        batch: &Batch,
    ) -> Result<Vec<(AgentId, AgentOutcome)>, DurableError> {
        let Some(open) = self.open.take() else {
            return Ok(Vec::new());
        };
        let run_id = self.run_id();
        let agents: Vec<u32> = batch
            .agents()
            .iter()
            .map(|agent| u32::try_from(agent.index()).unwrap_or(u32::MAX))
            .collect();
        let fits = open.step == self.next_step
            && open.cycle == batch.cycle()
            && open
                .outcomes
                .iter()
                .all(|(agent, _)| agents.binary_search(agent).is_ok());
        if !fits {
            let detail = format!(
                "outcomes committed for cycle {} at step {} do not fit the cycle {} the run \
                 re-derives at step {}",
                open.cycle,
                open.step,
                batch.cycle(),
                self.next_step
            );
            return Err(diverged(&run_id, self.next_step, &detail));
        }
        open.outcomes
            .into_iter()
            .map(|(agent, record)| {
                // A batch's agents are in id order: a wide cycle's outcomes are found by halves.
                let id = batch
                    .agents()
                    .binary_search_by_key(&agent, |id| {
                        u32::try_from(id.index()).unwrap_or(u32::MAX)
                    })
                    .map(|at| batch.agents()[at])
                    .map_err(|_| diverged(&run_id, self.next_step, "an outcome of no agent"))?;
                let outcome = record.into_core().map_err(|source| DurableError::Record {
                    run: run_id.clone(),
                    step: self.next_step,
                    source,
                })?;
                Ok((id, outcome))
            })
            .collect()
    }

    /// Executes and commits steps until the run stops.
    ///
    /// Before each step the cancellation handle, then the wall-clock budget, may halt the
    /// run (a journaled halt step). Within a cycle, outcomes that finish while other agents
    /// still run are committed together as they come ([`Journal::commit_outcomes`]), and
    /// the lease is renewed while agents run. A batch cut short by a cancellation is
    /// committed like any cycle, with the outcomes it has (agents cut short recorded as
    /// failed), so re-deriving it never executes anything; the halt follows unless the cycle
    /// itself stopped the run.
    pub(crate) async fn drive(
        &mut self,
        executor: &Executor<'_>,
        mut run: Run<'_>,
    ) -> Result<ConvergeResult, DurableError> {
        executor.start();
        // Whether a step held back records agents that act outside the run: it may wait only
        // while the core decides what comes next (no agent executes meanwhile), so a cycle
        // that ends the run commits with its stop, in one transaction.
        let mut outside_held = false;
        loop {
            if outside_held && self.renewal_due() {
                // A renewal that fails must not cost those outcomes: they are committed first.
                self.flush(AfterSteps::KeepLease)?;
                outside_held = false;
            }
            self.renew_if_due()?;
            // A run the last cycle stopped is not halted again: its stop step follows.
            if run.stop_reason().is_none() {
                let halt = match executor.cancellation() {
                    Some(cancellation) => Some(HaltRecord::cancelled(cancellation)),
                    None => match executor.time_exhausted() {
                        Some(Exhausted::Time {
                            limit_ms,
                            elapsed_ms,
                        }) => Some(HaltRecord::Time {
                            limit_ms,
                            elapsed_ms,
                        }),
                        _ => None,
                    },
                };
                if let Some(halt) = halt {
                    self.halt(&halt, &mut run)?;
                    break;
                }
            }
            // No deadline here: whether an agent accepts decides the batch, which replay
            // re-derives without a clock, so it must not depend on time (the cost limit bounds
            // it). Inside an agent's execution a deadline is safe: its outcome is recorded.
            let Step::Execute(batch) = run.next_step() else {
                // A stop not yet committed (the fixed point) is a step of its own; a cycle
                // that stopped the run committed its stop with it.
                if !self.stop_committed {
                    self.take(StepInput::Stop, &mut run, Commit::Deferred)?;
                }
                break;
            };
            let pure = self.all_pure(&batch);
            if !pure || outside_held {
                // What this batch's agents do outside the run follows every step before it,
                // and no agent executes before the outcomes of those that act outside it are
                // committed.
                self.flush(AfterSteps::KeepLease)?;
                outside_held = false;
            }
            let known = self.known_outcomes(&batch)?;
            let mut progress = Commits {
                live: self,
                ahead: !pure,
            };
            let outcomes = executor
                .execute_with(&run, &batch, known, &mut progress)
                .await?;
            let input = StepInput::cycle(&batch, &outcomes);
            let (submitted, input) = merge_beside(input, || run.submit(outcomes));
            if let Err(error) = submitted {
                let _ = run.halt(StopReason::Halted {
                    reason: error.to_string(),
                });
                drain(&mut run, self.observer);
                break;
            }
            outside_held |= !pure;
            match input? {
                Input::Plain(input) => self.take(input, &mut run, Commit::Deferred)?,
                Input::Prepared(input) => {
                    self.take_step(&mut run, Commit::Deferred, |events| {
                        PendingStep::prepared(input, events)
                    })?;
                }
            }
        }
        // The drive ends here: its last steps commit with the lease given up.
        self.flush(AfterSteps::Release)?;
        Ok(self.close(run))
    }

    /// Ends a run whose stop has been committed (its status was committed with it).
    pub(crate) fn close(&mut self, run: Run<'_>) -> ConvergeResult {
        run.finish().unwrap_or_else(|run| {
            run.abandon(StopReason::Halted {
                reason: "the driver ended before the run stopped".to_owned(),
            })
        })
    }
}

/// Fewest outcomes in a cycle for its input to be encoded on a thread of its own while the
/// core merges them: below it, starting the thread costs more than it overlaps.
const ENCODE_BESIDE_MIN: usize = 512;

/// A cycle's input, ready to be taken as a step.
enum Input {
    /// Encoded when it is committed.
    Plain(StepInput),
    /// Encoded already ([`merge_beside`]).
    Prepared(PreparedInput),
}

/// Runs `merge` (the core merging a cycle's outcomes) while `input`, the same outcomes as
/// the journal stores them, is encoded on another thread: for a wide cycle the two take
/// about as long and neither needs the other, so a second core halves the wait. A narrow
/// cycle, or one whose thread cannot start, is encoded when it is committed instead. An
/// input that cannot be encoded is the error its commit would have been.
fn merge_beside<T>(
    input: StepInput,
    merge: impl FnOnce() -> T,
) -> (T, Result<Input, DurableError>) {
    let wide = match &input {
        StepInput::Cycle { outcomes, .. } => outcomes.len() >= ENCODE_BESIDE_MIN,
        _ => false,
    };
    if !wide {
        return (merge(), Ok(Input::Plain(input)));
    }
    // The thread takes the input out of `slot`; one that cannot start leaves it there.
    let mut slot = Some(input);
    let mut encoded = None;
    let merged = std::thread::scope(|scope| {
        let (from, into) = (&mut slot, &mut encoded);
        let encoder = std::thread::Builder::new()
            .name("converge-encode".to_owned())
            .spawn_scoped(scope, move || {
                *into = from.take().map(PreparedInput::new);
            });
        let merged = merge();
        if let Ok(encoder) = encoder
            && let Err(panic) = encoder.join()
        {
            std::panic::resume_unwind(panic);
        }
        merged
    });
    let input = match (encoded, slot) {
        (Some(prepared), _) => prepared.map(Input::Prepared).map_err(DurableError::from),
        (None, Some(input)) => Ok(Input::Plain(input)),
        (None, None) => Err(DurableError::from(JournalError::Corrupt {
            detail: "a cycle's input was neither encoded nor kept".to_owned(),
        })),
    };
    (merged, input)
}

/// A durable drive's view of a running batch: commits outcomes that finish early, renews
/// the lease while agents run.
struct Commits<'l, 'a, J: Journal> {
    live: &'l mut Live<'a, J>,
    /// Whether outcomes are committed ahead of their cycle: not for a batch of pure agents,
    /// whose step may be held back (executing them again costs nothing).
    ahead: bool,
}

impl<J: Journal> Progress for Commits<'_, '_, J> {
    type Error = DurableError;

    fn finished(
        &mut self,
        cycle: u32,
        outcomes: &[(AgentId, AgentOutcome)],
    ) -> Result<(), DurableError> {
        if outcomes.is_empty() || !self.ahead {
            return Ok(());
        }
        let records: Vec<(u32, OutcomeRecord)> = outcomes
            .iter()
            .map(|(agent, outcome)| {
                (
                    u32::try_from(agent.index()).unwrap_or(u32::MAX),
                    OutcomeRecord::from_core(outcome),
                )
            })
            .collect();
        let live = &mut *self.live;
        live.journal
            .commit_outcomes(&live.lease, live.next_step, cycle, &records)?;
        Ok(())
    }

    fn waiting_every(&self) -> Option<std::time::Duration> {
        Some(std::time::Duration::from_millis(LEASE_RENEW_MS))
    }

    fn waiting(&mut self) -> Result<(), DurableError> {
        self.live.renew_if_due()
    }

    fn agent_started(&mut self, cycle: u32, agent: &str) {
        self.live.observer.agent_started(cycle, agent);
    }

    fn agent_finished(&mut self, cycle: u32, agent: &str) {
        self.live.observer.agent_finished(cycle, agent);
    }
}

/// Re-derives the recorded run and reports whether it is identical to its journal. No agent
/// executes: every cycle is fed its recorded outcomes.
pub(crate) fn replay(
    engine: &Engine,
    recorded: &RecordedRun,
) -> Result<ReplayReport, DurableError> {
    match redrive(engine, recorded) {
        Ok(_) => Ok(ReplayReport::Identical {
            steps: recorded.steps.len() as u64,
            events: recorded.event_count(),
            root_hash: recorded.root_hash,
        }),
        Err(DurableError::Diverged { divergence, .. }) => Ok(ReplayReport::Diverged(divergence)),
        Err(other) => Err(other),
    }
}

/// A durable run as its journal re-derives it, without executing any agent: what a command
/// line or a server shows of a run.
#[derive(Debug)]
#[non_exhaustive]
pub struct Inspection {
    /// The journal's summary: status, committed steps and events, root hash.
    pub summary: RunSummary,
    /// What the run was created with.
    pub header: RunHeader,
    /// The re-derived state: context (every fact with its provenance), rejections, failures,
    /// statistics, and the pending approvals of a run awaiting them. For a run whose last
    /// committed step left it going (its process died, or another is driving it), `stopped`
    /// is false and this is the state after that step, ended with a `Halted` stop reason that
    /// is not in the journal (so its root hash is not the journal's).
    pub result: ConvergeResult,
    /// Whether the committed steps end with the run stopped (for good or awaiting approval).
    pub stopped: bool,
    /// Every observation of the committed steps, payload included, in id order: what facts
    /// cite as evidence (a model's prompt and answer, a command's output).
    pub observations: Vec<RecordedObservation>,
    /// Every retry of failed agents, in the order they were applied.
    pub retries: Vec<RecordedRetry>,
}

/// A retry of failed agents as the journal recorded it: who, which agents, why, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct RecordedRetry {
    /// The journal step that holds it.
    pub step: u64,
    /// The cycles the run had executed before it (the retried agents ran from the next one).
    pub after_cycle: u32,
    /// The retry: actor, agents by name, reason.
    pub retry: Retry,
}

/// The retries recorded among `steps`, each with the cycles executed before it.
fn retries<'s>(steps: impl IntoIterator<Item = &'s RecordedStep>) -> Vec<RecordedRetry> {
    let mut cycle = 0;
    let mut found = Vec::new();
    for step in steps {
        if let StepInput::Cycle { cycle: number, .. } = &step.input {
            cycle = *number;
        }
        if let Some(retry) = step.input.retry_into_core() {
            found.push(RecordedRetry {
                step: step.step,
                after_cycle: cycle,
                retry,
            });
        }
    }
    found
}

impl Inspection {
    /// The recorded observation `id`, if the run has one.
    pub fn observation(&self, id: ObservationId) -> Option<&RecordedObservation> {
        let found = self
            .observations
            .binary_search_by_key(&id, |observed| observed.id);
        found.ok().map(|index| &self.observations[index])
    }

    /// The retry that made `fact` possible: the latest one, before the fact's cycle, that ran
    /// its agent again after the agent had failed. `None` for a fact whose agent never needed
    /// one.
    pub fn retry_behind(&self, fact: &Fact) -> Option<&RecordedRetry> {
        let record = fact.record();
        self.retries.iter().rev().find(|recorded| {
            recorded.after_cycle < record.cycle()
                && recorded
                    .retry
                    .agents()
                    .iter()
                    .any(|agent| agent.as_str() == record.agent_name())
        })
    }
}

/// Re-derives the recorded run up to its last committed step.
pub(crate) fn inspect(engine: &Engine, recorded: RecordedRun) -> Result<Inspection, DurableError> {
    let summary = recorded.summary();
    let (result, stopped) = match redrive(engine, &recorded)? {
        Position::Stopped(result) => (result, true),
        Position::Running(run) | Position::Unstarted(run) => (
            run.abandon(StopReason::Halted {
                reason: "the run has not stopped: resume it to go on".to_owned(),
            }),
            false,
        ),
    };
    let retries = retries(&recorded.steps);
    let inputs = recorded.steps.into_iter().map(|step| step.input);
    let observations = observations::recorded(inputs, &recorded.header.agents);
    Ok(Inspection {
        summary,
        header: recorded.header,
        result,
        stopped,
        observations,
        retries,
    })
}

/// A stopped run's result, for callers that want to resume it: an error unless it awaits
/// approval.
pub(crate) fn awaiting(
    run_id: &RunId,
    result: ConvergeResult,
) -> Result<ConvergeResult, DurableError> {
    match result.stop_reason {
        StopReason::AwaitingApproval { .. } => Ok(result),
        ref reason => Err(DurableError::Finished {
            run: run_id.clone(),
            reason: serde_json::to_string(reason).unwrap_or_default(),
        }),
    }
}
