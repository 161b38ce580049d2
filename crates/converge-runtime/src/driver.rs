//! The async driver: runs a cycle's agents concurrently and merges deterministically.
//!
//! Within a batch, async agents run concurrently on the current task (no spawning, so they
//! may borrow the context) under [`DriverConfig::concurrency_max`] and an optional per-agent
//! timeout; synchronous agents run inline. Whatever order they finish in, the core merges
//! their outcomes in `AgentId` order, so the events and root hash equal the sequential
//! driver's. A panic or timeout becomes the agent's recorded failure; nothing unwinds. The
//! wall-clock budget is read from the injected [`Clock`] between cycles, and the runtime's
//! [`Cancel`] handle is checked before every step and raced against every batch: a cancelled
//! run halts with `cancelled by <by>: <reason>`, and agents cut short mid-batch are dropped and
//! recorded as failed with that message.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use converge_core::{
    AgentEffect, AgentId, AgentOutcome, AuthorityScope, Batch, Context, ConvergeResult, Decision,
    Engine, EngineError, EventRecord, Exhausted, Observer, Retry, Run, Step, StopReason,
    execute_isolated,
};
use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};

use crate::activity::{ActivityObserver, EventsOnly};
use crate::agent::{AsyncAgent, AsyncStandIn};
use crate::cancel::{Cancel, Cancellation};
use crate::clock::{Clock, SystemClock};
use crate::durable::{
    Commit, DurableError, HaltRecord, Inspection, Live, Position, ReplayReport, awaiting,
    header_of, inspect, redrive, replay,
};
use converge_journal::{Holder, Journal, Lease, OpenCycle, RecordedRun, RunId, wall_clock_ms};
use converge_journal::{JobRecord, StepInput};

/// How the async driver executes batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriverConfig {
    /// Most async agents in flight at once within a cycle (at least 1).
    pub concurrency_max: usize,
    /// An async agent still running after this long is failed (and quarantined by default).
    pub agent_timeout_ms: Option<u64>,
    /// The run stops with a time budget exhausted once this much time has passed between
    /// cycles, by the driver's clock.
    pub time_budget_ms: Option<u64>,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            concurrency_max: 16,
            agent_timeout_ms: None,
            time_budget_ms: None,
        }
    }
}

/// An engine with async agents, driven concurrently.
///
/// ```
/// use converge_core::agents::{ReactOnceAgent, SeedAgent};
/// use converge_core::{Context, ContextKey, Engine};
/// use converge_runtime::Runtime;
///
/// let mut engine = Engine::new();
/// engine.register(SeedAgent::new("seed-1", "initial data"));
/// engine.register(ReactOnceAgent::new("hyp-1", "derived insight"));
/// let mut runtime = Runtime::new(engine);
/// let tokio = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
/// let result = tokio.block_on(runtime.run(Context::new())).unwrap();
/// assert!(result.converged && result.context.has(ContextKey::Hypotheses));
/// ```
pub struct Runtime {
    engine: Engine,
    async_agents: BTreeMap<AgentId, Arc<dyn AsyncAgent>>,
    observers: Vec<Box<dyn ActivityObserver>>,
    config: DriverConfig,
    clock: Arc<dyn Clock>,
    job: Option<JobRecord>,
    cancel: Cancel,
    holder: Holder,
    /// The agents declared pure ([`Runtime::declare_pure`]).
    pure: BTreeSet<AgentId>,
}

impl Runtime {
    /// Drives `engine` (with its synchronous agents, policies, invariants and budgets) with the
    /// default configuration and the system clock.
    pub fn new(engine: Engine) -> Runtime {
        Runtime {
            engine,
            async_agents: BTreeMap::new(),
            observers: Vec::new(),
            config: DriverConfig::default(),
            clock: Arc::new(SystemClock::new()),
            job: None,
            cancel: Cancel::new(),
            holder: Holder::this_process("converge-runtime"),
            pure: BTreeSet::new(),
        }
    }

    /// Declares that `agent` acts on nothing outside the run: its execution reads only the
    /// context, calls nothing and changes nothing elsewhere, so executing it again gives the
    /// same outcome and no other effect (a rule, a seed, the intent's agent). A durable drive
    /// then holds back the steps of cycles that executed only pure agents and commits them
    /// together with the next step that may not wait — before an agent with side effects
    /// runs, or when the drive ends, with the lease given up in the same transaction (see
    /// `docs/journal.md`, *Steps held back*). Agents are not pure unless declared: a command
    /// or model agent's outcome is committed as soon as it has one.
    pub fn declare_pure(&mut self, agent: AgentId) {
        self.pure.insert(agent);
    }

    /// Whether `agent` was declared pure ([`Runtime::declare_pure`]).
    pub fn is_pure(&self, agent: AgentId) -> bool {
        self.pure.contains(&agent)
    }

    /// With another lease holder: who durable drives say is driving a run (a command line
    /// names its command). See [`Journal::acquire`].
    pub fn with_holder(mut self, holder: Holder) -> Runtime {
        self.holder = holder;
        self
    }

    /// Replaces the lease holder, for the drives that follow.
    pub fn set_holder(&mut self, holder: Holder) {
        self.holder = holder;
    }

    /// Records that this runtime was built from `job`: durable runs it creates keep the spec
    /// in their header ([`crate::RunHeader::job`]) so another process can rebuild it.
    pub fn with_job(mut self, job: JobRecord) -> Runtime {
        self.job = Some(job);
        self
    }

    /// The job spec this runtime was built from, if any.
    pub fn job(&self) -> Option<&JobRecord> {
        self.job.as_ref()
    }

    /// With another driver configuration.
    pub fn with_config(mut self, config: DriverConfig) -> Runtime {
        self.config = config;
        self
    }

    /// With another clock (tests inject a [`crate::ManualClock`]).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Runtime {
        self.clock = clock;
        self
    }

    /// With a cancellation handle: every later drive ([`Runtime::run`], [`Runtime::resume`],
    /// [`Runtime::run_durable`], [`Runtime::resume_durable`], [`Runtime::decide_durable`])
    /// halts once it is cancelled. A handle stays cancelled, so give each drive a fresh one
    /// ([`Runtime::set_cancel`]) when the runtime is reused.
    pub fn with_cancel(mut self, cancel: Cancel) -> Runtime {
        self.cancel = cancel;
        self
    }

    /// Replaces the cancellation handle, for the drives that follow.
    pub fn set_cancel(&mut self, cancel: Cancel) {
        self.cancel = cancel;
    }

    /// The engine, to register synchronous agents or set policies, invariants and budgets.
    pub fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Registers an async agent, granting the scope it requests.
    pub fn register_async(&mut self, agent: impl AsyncAgent + 'static) -> AgentId {
        let scope = agent.requested_scope();
        self.register_async_with_scope(agent, scope)
    }

    /// Registers an async agent, granting `scope`.
    pub fn register_async_with_scope(
        &mut self,
        agent: impl AsyncAgent + 'static,
        scope: AuthorityScope,
    ) -> AgentId {
        let agent: Arc<dyn AsyncAgent> = Arc::new(agent);
        let id = self
            .engine
            .register_with_scope(AsyncStandIn::new(agent.clone()), scope);
        self.async_agents.insert(id, agent);
        id
    }

    /// Adds an observer of every event.
    pub fn observe(&mut self, observer: impl Observer + Send + 'static) {
        self.observers.push(Box::new(EventsOnly(observer)));
    }

    /// Adds an observer of every event that is also told when each agent starts and
    /// finishes executing, before its outcome is committed (see [`ActivityObserver`]).
    pub fn observe_activity(&mut self, observer: impl ActivityObserver + 'static) {
        self.observers.push(Box::new(observer));
    }

    /// Runs to a stop.
    pub async fn run(&mut self, ctx: Context) -> Result<ConvergeResult, EngineError> {
        let run = self.engine.start(ctx)?;
        let executor = Executor::new(&self.async_agents, self.config, &*self.clock, &self.cancel);
        Ok(executor.drive(run, &mut Deliver(&mut self.observers)).await)
    }

    /// Resumes a run that stopped awaiting approval and runs it to its next stop.
    pub async fn resume(
        &mut self,
        previous: ConvergeResult,
        decisions: Vec<Decision>,
    ) -> Result<ConvergeResult, EngineError> {
        let run = self.engine.resume_run(previous, decisions)?;
        let executor = Executor::new(&self.async_agents, self.config, &*self.clock, &self.cancel);
        Ok(executor.drive(run, &mut Deliver(&mut self.observers)).await)
    }
}

impl Runtime {
    /// Starts durable run `run_id` from an empty context: every step is committed to
    /// `journal` (input and events, one transaction) before the run goes on. The run is
    /// created leased to this runtime's holder ([`Runtime::with_holder`]) and released when
    /// the drive ends.
    pub async fn run_durable<J: Journal>(
        &mut self,
        journal: &mut J,
        run_id: &RunId,
    ) -> Result<ConvergeResult, DurableError> {
        let header = header_of(&self.engine, self.job.as_ref());
        let lease = journal.create_run(run_id, &header, &self.holder, wall_clock_ms())?;
        let first = Some(StepInput::Start { header });
        let outcome = match self.engine.start(Context::new()) {
            Ok(run) => {
                let parts = Runtime::parts(
                    &self.async_agents,
                    self.config,
                    &*self.clock,
                    &self.cancel,
                    &mut self.observers,
                    &self.pure,
                );
                drive_leased(parts, journal, &lease, 0, None, first, run).await
            }
            Err(error) => Err(error.into()),
        };
        end_drive(journal, &lease, outcome)
    }

    /// Records durable run `run_id` without driving it: created with this runtime's job and
    /// agents and leased to no one ([`Journal::submit_run`], one transaction), so a worker
    /// claims it ([`Journal::claim`]) and drives it with [`Runtime::resume_durable`].
    pub fn submit_durable<J: Journal>(
        &self,
        journal: &mut J,
        run_id: &RunId,
    ) -> Result<(), DurableError> {
        let header = header_of(&self.engine, self.job.as_ref());
        journal.submit_run(run_id, &header, &self.holder, wall_clock_ms())?;
        Ok(())
    }

    /// Continues a durable run after its process died: re-drives every committed step without
    /// executing any agent, checks the events are the recorded ones, then executes the rest —
    /// of a cycle cut short, only the agents whose outcomes were not committed. A run awaiting
    /// approval is returned as it stands; a run that stopped for good is an error, and nothing
    /// is written.
    ///
    /// The run's lease is taken first: a run another live process drives is refused at once
    /// ([`JournalError::Leased`](converge_journal::JournalError::Leased)) and nothing executes.
    pub async fn resume_durable<J: Journal>(
        &mut self,
        journal: &mut J,
        run_id: &RunId,
    ) -> Result<ConvergeResult, DurableError> {
        let lease = journal.acquire(run_id, &self.holder, wall_clock_ms())?;
        let outcome = self.resume_leased(journal, &lease).await;
        end_drive(journal, &lease, outcome)
    }

    /// Continues a run under the lease [`Journal::claim`] handed this runtime's holder, as
    /// [`Runtime::resume_durable`] does under a lease it takes itself, and releases it at
    /// the next stop. `recorded` is the run as [`Journal::load`] read it once claimed (a
    /// worker reads it to build the runtime from its header). A worker's slot drives what
    /// it claimed this way: taking the lease a second time, or reading the run twice, would
    /// cost a transaction for nothing.
    ///
    /// A `recorded` read before the claim may be stale: the first commit then finds the
    /// run's steps moved on and refuses it ([`JournalError::OutOfOrder`](converge_journal::JournalError::OutOfOrder)), writing nothing.
    pub async fn resume_claimed<J: Journal>(
        &mut self,
        journal: &mut J,
        lease: &Lease,
        recorded: RecordedRun,
    ) -> Result<ConvergeResult, DurableError> {
        let outcome = self.resume_recorded(journal, lease, recorded).await;
        end_drive(journal, lease, outcome)
    }

    async fn resume_leased<J: Journal>(
        &mut self,
        journal: &mut J,
        lease: &Lease,
    ) -> Result<(ConvergeResult, LeaseAfter), DurableError> {
        let recorded = journal.load(lease.run())?;
        self.resume_recorded(journal, lease, recorded).await
    }

    async fn resume_recorded<J: Journal>(
        &mut self,
        journal: &mut J,
        lease: &Lease,
        recorded: RecordedRun,
    ) -> Result<(ConvergeResult, LeaseAfter), DurableError> {
        let run_id = lease.run();
        let next_step = recorded.steps.len() as u64;
        let (run, first) = match redrive(&self.engine, &recorded)? {
            // The process died before the start step committed: begin afresh.
            Position::Unstarted(run) => (
                run,
                Some(StepInput::Start {
                    header: recorded.header,
                }),
            ),
            Position::Running(run) => (run, None),
            Position::Stopped(result) => {
                return awaiting(run_id, result).map(|result| (result, LeaseAfter::Held));
            }
        };
        let parts = Runtime::parts(
            &self.async_agents,
            self.config,
            &*self.clock,
            &self.cancel,
            &mut self.observers,
            &self.pure,
        );
        drive_leased(parts, journal, lease, next_step, recorded.open, first, run).await
    }

    /// Applies human decisions to a durable run awaiting approval, possibly in another process
    /// than the one that ran it, and runs it to its next stop. Agents that already ran are not
    /// executed again. Takes the run's lease first, like [`Runtime::resume_durable`].
    pub async fn decide_durable<J: Journal>(
        &mut self,
        journal: &mut J,
        run_id: &RunId,
        decisions: Vec<Decision>,
    ) -> Result<ConvergeResult, DurableError> {
        let lease = journal.acquire(run_id, &self.holder, wall_clock_ms())?;
        let outcome = self.decide_leased(journal, &lease, decisions).await;
        end_drive(journal, &lease, outcome)
    }

    async fn decide_leased<J: Journal>(
        &mut self,
        journal: &mut J,
        lease: &Lease,
        decisions: Vec<Decision>,
    ) -> Result<(ConvergeResult, LeaseAfter), DurableError> {
        let (next_step, result) = parked_run(&self.engine, journal, lease.run())?;
        let input = StepInput::decisions(&decisions);
        let run = self.engine.resume_run(result, decisions)?;
        let parts = Runtime::parts(
            &self.async_agents,
            self.config,
            &*self.clock,
            &self.cancel,
            &mut self.observers,
            &self.pure,
        );
        drive_leased(parts, journal, lease, next_step, None, Some(input), run).await
    }

    /// Applies human decisions to a durable run awaiting approval and commits them as one
    /// step, without driving the run on: its lease is released at once, so a worker claims
    /// it ([`Journal::claim`]) and continues with [`Runtime::resume_durable`]. This is how a
    /// server whose runs workers drive decides: the decision is exactly once (the run's
    /// lease and its step order make a second decision on the same parked run fail with
    /// [`DurableError::NotAwaitingApproval`] or a lease refusal), and no agent executes here.
    pub fn record_decisions<J: Journal>(
        &mut self,
        journal: &mut J,
        run_id: &RunId,
        decisions: Vec<Decision>,
    ) -> Result<(), DurableError> {
        let lease = journal.acquire(run_id, &self.holder, wall_clock_ms())?;
        let outcome = self.record_decisions_leased(journal, &lease, decisions);
        release(journal, &lease, outcome)
    }

    fn record_decisions_leased<J: Journal>(
        &mut self,
        journal: &mut J,
        lease: &Lease,
        decisions: Vec<Decision>,
    ) -> Result<(), DurableError> {
        let (next_step, result) = parked_run(&self.engine, journal, lease.run())?;
        let input = StepInput::decisions(&decisions);
        let run = self.engine.resume_run(result, decisions)?;
        commit_alone(
            &mut self.observers,
            &*self.clock,
            journal,
            lease,
            next_step,
            input,
            run,
        )
    }

    /// Continues a durable run that its failed agents stopped, once the cause is fixed: re-drives
    /// the run without executing anything, records `retry` (who, which agents, why) as a
    /// `decisions` step, lifts those agents' quarantine and runs the run to its next stop.
    /// Only the retried agents execute again (and whatever their new facts wake). A retry
    /// naming no agent retries every failed agent; the step records them by name.
    ///
    /// Refused, with nothing written: a run whose last committed step left it going
    /// ([`DurableError::NotStopped`]), and every [`converge_core::RetryRefusal`]
    /// ([`DurableError::NotRetryable`]) — a stop a retry cannot change (a budget, a halt, a
    /// semantic invariant), no failed agent, an agent that did not fail or does not exist, an
    /// actor who is not human. Takes the run's lease first, like
    /// [`Runtime::resume_durable`]: a run another live process drives is refused at once.
    ///
    /// ```
    /// use converge_core::agents::SeedAgent;
    /// use converge_core::{Actor, Engine, Retry, RetryRefusal};
    /// use converge_runtime::{DurableError, RunId, Runtime, SqliteJournal};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let mut journal = SqliteJournal::open(dir.path().join("journal.db")).unwrap();
    /// let mut engine = Engine::new();
    /// engine.register(SeedAgent::new("seed", "hello"));
    /// let mut runtime = Runtime::new(engine);
    /// let run = RunId::new("greet-1").unwrap();
    /// let tokio = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    /// tokio.block_on(runtime.run_durable(&mut journal, &run)).unwrap();
    ///
    /// // Nothing failed, so nothing is retried and nothing is written.
    /// let retry = Retry::new(Actor::human("alice").unwrap(), ["seed"], "again");
    /// let refused = tokio.block_on(runtime.retry_durable(&mut journal, &run, retry));
    /// assert!(matches!(
    ///     refused,
    ///     Err(DurableError::NotRetryable { refusal: RetryRefusal::NothingFailed, .. })
    /// ));
    /// ```
    pub async fn retry_durable<J: Journal>(
        &mut self,
        journal: &mut J,
        run_id: &RunId,
        retry: Retry,
    ) -> Result<ConvergeResult, DurableError> {
        let lease = journal.acquire(run_id, &self.holder, wall_clock_ms())?;
        let outcome = self.retry_leased(journal, &lease, retry).await;
        end_drive(journal, &lease, outcome)
    }

    async fn retry_leased<J: Journal>(
        &mut self,
        journal: &mut J,
        lease: &Lease,
        retry: Retry,
    ) -> Result<(ConvergeResult, LeaseAfter), DurableError> {
        let (next_step, result) = stopped_run(&self.engine, journal, lease.run())?;
        let (input, run) = retried(&self.engine, lease.run(), result, retry)?;
        let parts = Runtime::parts(
            &self.async_agents,
            self.config,
            &*self.clock,
            &self.cancel,
            &mut self.observers,
            &self.pure,
        );
        drive_leased(parts, journal, lease, next_step, None, Some(input), run).await
    }

    /// Records a retry as [`Runtime::retry_durable`] does, without driving the run on: the
    /// step is committed and the lease released, so a worker claims the run and executes the
    /// retried agents. This is how a server whose runs workers drive retries.
    pub fn record_retry<J: Journal>(
        &mut self,
        journal: &mut J,
        run_id: &RunId,
        retry: Retry,
    ) -> Result<(), DurableError> {
        let lease = journal.acquire(run_id, &self.holder, wall_clock_ms())?;
        let outcome = stopped_run(&self.engine, journal, run_id).and_then(|(next, result)| {
            let (input, run) = retried(&self.engine, run_id, result, retry)?;
            commit_alone(
                &mut self.observers,
                &*self.clock,
                journal,
                &lease,
                next,
                input,
                run,
            )
        });
        release(journal, &lease, outcome)
    }

    /// Cancels a durable run that is stopped awaiting approval — nobody is driving it — so it
    /// stops for good, possibly in another process than the one that ran it. No agent
    /// executes.
    ///
    /// Two steps are committed: the run resumes with no decisions (a `decisions` step holding
    /// none, whose event is `run_resumed`), then halts with `cancelled by <by>: <reason>` (a
    /// `halt` step: its parked proposals are recorded as undecided, then `run_stopped`, and
    /// the status it commits is stopped). Replay, resume and inspect re-derive exactly that.
    ///
    /// A run that stopped for good is [`DurableError::Finished`]; a run whose last committed
    /// step left it going (its driver died) is [`DurableError::NotStopped`]; a run another
    /// live process holds is refused by its lease — a drive is cancelled through its
    /// [`Cancel`] handle instead. Either way nothing is written.
    pub fn cancel_durable<J: Journal>(
        &mut self,
        journal: &mut J,
        run_id: &RunId,
        by: &str,
        reason: &str,
    ) -> Result<ConvergeResult, DurableError> {
        let lease = journal.acquire(run_id, &self.holder, wall_clock_ms())?;
        let outcome = self.cancel_leased(journal, &lease, by, reason);
        release(journal, &lease, outcome)
    }

    fn cancel_leased<J: Journal>(
        &mut self,
        journal: &mut J,
        lease: &Lease,
        by: &str,
        reason: &str,
    ) -> Result<ConvergeResult, DurableError> {
        let run_id = lease.run();
        let recorded = journal.load(run_id)?;
        let next_step = recorded.steps.len() as u64;
        let result = match redrive(&self.engine, &recorded)? {
            Position::Stopped(result) => awaiting(run_id, result)?,
            Position::Running(_) | Position::Unstarted(_) => {
                return Err(DurableError::NotStopped {
                    run: run_id.clone(),
                });
            }
        };
        let mut run = self.engine.resume_run(result, Vec::new())?;
        run.keep_encoded_events();
        let mut observer = Deliver(&mut self.observers);
        let mut live = Live::new(journal, lease, next_step, &mut observer, &*self.clock);
        live.commit(StepInput::decisions(&[]), &mut run)?;
        let halt = HaltRecord::cancelled(&Cancellation::new(by, reason));
        live.halt(&halt, &mut run)?;
        Ok(live.close(run))
    }

    /// Cancels a durable run that is going — whichever process drives it, on whichever
    /// machine — so it stops for good. The run's lease is taken from its holder
    /// ([`Journal::preempt`]): the holder's next commit or renewal is refused, so it stops
    /// within a lease renewal period and commits nothing more. The run is then re-derived
    /// here, and halted `cancelled by <by>: <reason>` before anything executes. Outcomes the
    /// holder committed ahead of an unfinished cycle are left unused.
    ///
    /// A run parked for approval is [`Runtime::cancel_durable`]'s; one that stopped for good
    /// is [`DurableError::Finished`].
    pub async fn cancel_going_durable<J: Journal>(
        &mut self,
        journal: &mut J,
        run_id: &RunId,
        by: &str,
        reason: &str,
    ) -> Result<ConvergeResult, DurableError> {
        let cancel = Cancel::new();
        cancel.cancel(by, reason);
        self.cancel = cancel;
        let lease = journal.preempt(run_id, &self.holder, wall_clock_ms())?;
        let outcome = self.resume_leased(journal, &lease).await;
        end_drive(journal, &lease, outcome)
    }

    /// Re-derives a recorded run up to its last committed step without executing any agent:
    /// its facts with their provenance, rejections, failures and pending approvals.
    pub fn inspect<J: Journal + ?Sized>(
        &self,
        journal: &J,
        run_id: &RunId,
    ) -> Result<Inspection, DurableError> {
        inspect(&self.engine, journal.load(run_id)?)
    }

    /// Re-derives a recorded run from its journal without executing any agent and reports
    /// whether every event is identical, or the first that is not.
    pub fn replay<J: Journal + ?Sized>(
        &self,
        journal: &J,
        run_id: &RunId,
    ) -> Result<ReplayReport, DurableError> {
        let recorded = journal.load(run_id)?;
        replay(&self.engine, &recorded)
    }

    /// What a durable drive borrows from the runtime, field by field, while its engine is
    /// borrowed too.
    fn parts<'r>(
        async_agents: &'r BTreeMap<AgentId, Arc<dyn AsyncAgent>>,
        config: DriverConfig,
        clock: &'r dyn Clock,
        cancel: &'r Cancel,
        observers: &'r mut Vec<Box<dyn ActivityObserver>>,
        pure: &'r BTreeSet<AgentId>,
    ) -> Parts<'r> {
        Parts {
            executor: Executor::new(async_agents, config, clock, cancel),
            observer: Deliver(observers),
            clock,
            pure,
        }
    }
}

/// What a durable drive borrows from its runtime.
struct Parts<'r> {
    executor: Executor<'r>,
    observer: Deliver<'r>,
    clock: &'r dyn Clock,
    pure: &'r BTreeSet<AgentId>,
}

/// Whether a drive's last commit gave its lease up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LeaseAfter {
    Held,
    Released,
}

/// The run `run_id`, parked awaiting approval, re-derived from its journal, and the step
/// its next input will be; a run that is going is [`DurableError::NotAwaitingApproval`], one
/// that stopped for good [`DurableError::Finished`].
fn parked_run<J: Journal>(
    engine: &Engine,
    journal: &mut J,
    run_id: &RunId,
) -> Result<(u64, ConvergeResult), DurableError> {
    match stopped_run(engine, journal, run_id) {
        Ok((next_step, result)) => Ok((next_step, awaiting(run_id, result)?)),
        Err(DurableError::NotStopped { run }) => Err(DurableError::NotAwaitingApproval { run }),
        Err(error) => Err(error),
    }
}

/// The stopped run `run_id` re-derived from its journal, and the step its next input will
/// be; a run whose last committed step left it going is [`DurableError::NotStopped`].
fn stopped_run<J: Journal>(
    engine: &Engine,
    journal: &mut J,
    run_id: &RunId,
) -> Result<(u64, ConvergeResult), DurableError> {
    let recorded = journal.load(run_id)?;
    let next_step = recorded.steps.len() as u64;
    match redrive(engine, &recorded)? {
        Position::Stopped(result) => Ok((next_step, result)),
        Position::Running(_) | Position::Unstarted(_) => Err(DurableError::NotStopped {
            run: run_id.clone(),
        }),
    }
}

/// The run `retry` continues, and the step input that records it: a retry naming no agent
/// is recorded with every failed agent's name.
fn retried<'e>(
    engine: &'e Engine,
    run_id: &RunId,
    result: ConvergeResult,
    retry: Retry,
) -> Result<(StepInput, Run<'e>), DurableError> {
    let retry = match retry.agents().is_empty() {
        true => {
            let names: Vec<&str> = engine.agent_names().collect();
            let failed = result.failed_agents();
            let failed = failed.iter().map(|agent| names[agent.index()]);
            Retry::new(retry.actor().clone(), failed, retry.reason())
        }
        false => retry,
    };
    match engine.retry_run(result, &retry) {
        Ok(run) => Ok((StepInput::retry(&retry), run)),
        Err(EngineError::NotRetryable { refusal, .. }) => Err(DurableError::NotRetryable {
            run: run_id.clone(),
            refusal,
        }),
        Err(other) => Err(other.into()),
    }
}

/// Commits `input` as one step under `lease` with what `run` emitted taking it, and drives
/// nothing further: the run goes on in whichever process claims it next.
fn commit_alone<J: Journal>(
    observers: &mut Vec<Box<dyn ActivityObserver>>,
    clock: &dyn Clock,
    journal: &mut J,
    lease: &Lease,
    next_step: u64,
    input: StepInput,
    mut run: Run<'_>,
) -> Result<(), DurableError> {
    run.keep_encoded_events();
    let mut observer = Deliver(observers);
    Live::new(journal, lease, next_step, &mut observer, clock).commit(input, &mut run)
}

/// Drives `run` from journal step `next_step` under `lease`, committing `first` (a start or
/// decisions step whose events the run already emitted) before anything executes; the
/// drive's last commit gives the lease up.
async fn drive_leased<J: Journal>(
    parts: Parts<'_>,
    journal: &mut J,
    lease: &Lease,
    next_step: u64,
    open: Option<OpenCycle>,
    first: Option<StepInput>,
    mut run: Run<'_>,
) -> Result<(ConvergeResult, LeaseAfter), DurableError> {
    let Parts {
        executor,
        mut observer,
        clock,
        pure,
    } = parts;
    let mut live = Live::new(journal, lease, next_step, &mut observer, clock);
    live.open = open;
    live.pure = pure;
    // The journal stores the bytes the core hashed, packed as the run goes on: keeping them
    // spares encoding twice, and packing them then spares the commit most of its work.
    live.pack_while_running(&mut run);
    match first {
        // A start executed nothing: it waits for the first step that may not.
        Some(start @ StepInput::Start { .. }) => live.take(start, &mut run, Commit::Deferred)?,
        // A person's decisions are committed as soon as they are taken.
        Some(input) => live.commit(input, &mut run)?,
        None => {}
    }
    let result = live.drive(&executor, run).await?;
    Ok((result, LeaseAfter::Released))
}

/// Gives the lease up once a drive ends, unless its last commit did; the drive's own error
/// wins over a failure to release (an unreleased lease expires, or dies with this process).
fn end_drive<J: Journal, T>(
    journal: &mut J,
    lease: &Lease,
    outcome: Result<(T, LeaseAfter), DurableError>,
) -> Result<T, DurableError> {
    match outcome {
        Ok((value, LeaseAfter::Released)) => Ok(value),
        Ok((value, LeaseAfter::Held)) => release(journal, lease, Ok(value)),
        Err(error) => release(journal, lease, Err(error)),
    }
}

/// Gives the lease up once a drive ends, whatever its outcome; the drive's own error wins
/// over a failure to release (an unreleased lease expires, or dies with this process).
fn release<J: Journal, T>(
    journal: &mut J,
    lease: &Lease,
    outcome: Result<T, DurableError>,
) -> Result<T, DurableError> {
    let released = journal.release(lease);
    let value = outcome?;
    released?;
    Ok(value)
}

/// Delivers each event, and each agent's start and finish, to every observer.
struct Deliver<'a>(&'a mut Vec<Box<dyn ActivityObserver>>);

impl Observer for Deliver<'_> {
    fn on_event(&mut self, record: &EventRecord) {
        for observer in self.0.iter_mut() {
            observer.on_event(record);
        }
    }
}

impl ActivityObserver for Deliver<'_> {
    fn agent_started(&mut self, cycle: u32, agent: &str) {
        for observer in self.0.iter_mut() {
            observer.agent_started(cycle, agent);
        }
    }

    fn agent_finished(&mut self, cycle: u32, agent: &str) {
        for observer in self.0.iter_mut() {
            observer.agent_finished(cycle, agent);
        }
    }
}

/// What executing a batch needs: the async agents, limits, the clock and the cancellation
/// handle.
pub(crate) struct Executor<'a> {
    pub(crate) async_agents: &'a BTreeMap<AgentId, Arc<dyn AsyncAgent>>,
    pub(crate) config: DriverConfig,
    pub(crate) clock: &'a dyn Clock,
    pub(crate) cancel: &'a Cancel,
    /// When the drive started, by `clock`: the start of the run's time budget
    /// ([`NOT_STARTED`] before it starts).
    pub(crate) started_ms: std::sync::atomic::AtomicU64,
}

impl<'a> Executor<'a> {
    fn new(
        async_agents: &'a BTreeMap<AgentId, Arc<dyn AsyncAgent>>,
        config: DriverConfig,
        clock: &'a dyn Clock,
        cancel: &'a Cancel,
    ) -> Executor<'a> {
        Executor {
            async_agents,
            config,
            clock,
            cancel,
            started_ms: std::sync::atomic::AtomicU64::new(NOT_STARTED),
        }
    }

    /// Who cancelled the drive and why, once cancelled.
    pub(crate) fn cancellation(&self) -> Option<&Cancellation> {
        self.cancel.cancellation()
    }

    /// Drives a run to its stop, delivering every event, and each agent's start and finish,
    /// to `observer`.
    pub(crate) async fn drive(
        &self,
        mut run: Run<'_>,
        observer: &mut dyn ActivityObserver,
    ) -> ConvergeResult {
        self.start();
        loop {
            if let Some(cancellation) = self.cancellation() {
                let _ = run.halt(StopReason::Halted {
                    reason: cancellation.to_string(),
                });
            } else if let Some(exhausted) = self.time_exhausted() {
                let _ = run.halt(StopReason::BudgetExhausted { exhausted });
            }
            let step = run.next_step();
            drain(&mut run, observer);
            let Step::Execute(batch) = step else { break };
            let outcomes = self.execute(&run, &batch, observer).await;
            if let Err(error) = run.submit(outcomes) {
                // Cannot happen for a complete batch; stop honestly rather than loop.
                let _ = run.halt(StopReason::Halted {
                    reason: error.to_string(),
                });
            }
            drain(&mut run, observer);
        }
        drain(&mut run, observer);
        run.finish().unwrap_or_else(|run| {
            run.abandon(StopReason::Halted {
                reason: "the driver ended before the run stopped".to_owned(),
            })
        })
    }

    /// Records that the drive starts now, by the clock: the start of the run's time budget.
    pub(crate) fn start(&self) {
        self.started_ms
            .store(self.clock.now_ms(), std::sync::atomic::Ordering::Relaxed);
    }

    /// Time since the drive started, by the clock (0 before it starts).
    fn elapsed_ms(&self) -> u64 {
        let now_ms = self.clock.now_ms();
        match self.started_ms.load(std::sync::atomic::Ordering::Relaxed) {
            NOT_STARTED => 0,
            started_ms => now_ms.saturating_sub(started_ms),
        }
    }

    /// When an agent run inline must stop evaluating: its timeout from now, or the end of
    /// the run's time budget, whichever comes first (`None`: neither is set).
    fn deadline(&self) -> Option<std::time::Instant> {
        let budget_left =
            (self.config.time_budget_ms).map(|limit_ms| limit_ms.saturating_sub(self.elapsed_ms()));
        let left_ms = match (budget_left, self.config.agent_timeout_ms) {
            (Some(budget), Some(timeout)) => budget.min(timeout),
            (Some(left), None) | (None, Some(left)) => left,
            (None, None) => return None,
        };
        std::time::Instant::now().checked_add(Duration::from_millis(left_ms))
    }

    /// The run's time budget, once the drive has used it up.
    pub(crate) fn time_exhausted(&self) -> Option<Exhausted> {
        let limit_ms = self.config.time_budget_ms?;
        let elapsed_ms = self.elapsed_ms();
        (elapsed_ms >= limit_ms).then_some(Exhausted::Time {
            limit_ms,
            elapsed_ms,
        })
    }

    /// Executes one batch: async agents concurrently (bounded), synchronous ones inline.
    ///
    /// The batch races the cancellation handle. Once cancelled, no further agent starts, the
    /// futures in flight are dropped, and every agent of the batch without an outcome gets
    /// `AgentOutcome::Failed("cancelled by <by>: <reason>")`; the outcomes of agents that
    /// finished are kept. The result always holds one outcome per agent of the batch.
    pub(crate) async fn execute(
        &self,
        run: &Run<'_>,
        batch: &Batch,
        observer: &mut dyn ActivityObserver,
    ) -> Vec<(AgentId, AgentOutcome)> {
        // `Watching` never fails.
        self.execute_with(run, batch, Vec::new(), &mut Watching(observer))
            .await
            .unwrap_or_default()
    }

    /// [`Executor::execute`], starting from outcomes already known (`known`, committed before
    /// a crash: those agents are not executed again) and reporting progress: outcomes that
    /// finish while other agents of the batch still run are handed to `progress` together
    /// (whatever finished since the last hand-over), and `progress` is called at least every
    /// [`Progress::waiting_every`] while agents run. An error from `progress` ends the batch:
    /// the agents still running are dropped and the error is returned.
    pub(crate) async fn execute_with<P: Progress>(
        &self,
        run: &Run<'_>,
        batch: &Batch,
        known: Vec<(AgentId, AgentOutcome)>,
        progress: &mut P,
    ) -> Result<Vec<(AgentId, AgentOutcome)>, P::Error> {
        let ctx = run.context();
        let cycle = batch.cycle();
        let name = |id: AgentId| run.agent_name(id).unwrap_or("agent");
        let done: BTreeSet<AgentId> = known.iter().map(|(id, _)| *id).collect();
        let mut outcomes = known;
        outcomes.reserve(batch.agents().len().saturating_sub(outcomes.len()));
        // Outcomes not yet handed to `progress`: from `outcomes[handed..]`.
        let mut handed = outcomes.len();
        // Agents started and not yet finished, so each one started is finished once.
        let mut running = BTreeSet::new();
        let mut in_flight = FuturesUnordered::new();
        let mut queue = batch
            .agents()
            .iter()
            .copied()
            .filter(|id| !done.contains(id))
            .peekable();
        let limit = self.config.concurrency_max.max(1);
        let every = progress.waiting_every();
        let ended = loop {
            while in_flight.len() < limit && !self.cancel.is_cancelled() {
                let Some(id) = queue.next() else { break };
                if let Some(agent) = self.async_agents.get(&id) {
                    progress.agent_started(cycle, name(id));
                    running.insert(id);
                    in_flight.push(self.execute_async(id, &**agent, ctx));
                    continue;
                }
                // This synchronous agent and those right after it execute together, spread
                // over the cores: each reads the same context and nothing else.
                let mut sync = vec![(id, run.agent(id))];
                while sync.len() < SYNC_GROUP_MAX
                    && let Some(&next) = queue.peek()
                    && !self.async_agents.contains_key(&next)
                {
                    sync.push((next, run.agent(next)));
                    queue.next();
                }
                for &(id, _) in &sync {
                    progress.agent_started(cycle, name(id));
                }
                let deadline = self.deadline();
                let executed =
                    converge_journal::parallel::map(sync, SYNC_PER_THREAD_MIN, |(id, agent)| {
                        let outcome =
                            crate::spec::with_deadline(deadline, || execute_isolated(agent, ctx));
                        (id, outcome)
                    });
                for (id, outcome) in executed {
                    outcomes.push((id, admit(run, id, outcome)));
                    progress.agent_finished(cycle, name(id));
                }
            }
            if in_flight.is_empty() {
                break Ok(());
            }
            let next = tokio::select! {
                // An agent that finished is kept even when the cancellation arrived with it.
                biased;
                next = in_flight.next() => next,
                () = self.cancel.cancelled() => None,
                () = wait(every) => match progress.waiting() {
                    Ok(()) => continue,
                    Err(error) => break Err(error),
                },
            };
            let Some((id, outcome)) = next else {
                break Ok(());
            };
            let mut finished = vec![(id, outcome)];
            // Whatever else has finished by now is committed with it.
            while let Some(Some(more)) = in_flight.next().now_or_never() {
                finished.push(more);
            }
            for (id, outcome) in finished {
                outcomes.push((id, admit(run, id, outcome)));
                running.remove(&id);
                progress.agent_finished(cycle, name(id));
            }
            let more_to_come = !in_flight.is_empty() || queue.peek().is_some();
            if more_to_come && !self.cancel.is_cancelled() {
                if let Err(error) = progress.finished(cycle, &outcomes[handed..]) {
                    break Err(error);
                }
                handed = outcomes.len();
            }
        };
        // Agents cut short are never polled again: dropping their futures ends them (a
        // command agent's process is killed on drop).
        drop(in_flight);
        for id in running {
            progress.agent_finished(cycle, name(id));
        }
        ended?;
        if let Some(cancellation) = self.cancellation()
            && outcomes.len() < batch.agents().len()
        {
            let finished: BTreeSet<AgentId> = outcomes.iter().map(|(id, _)| *id).collect();
            for &id in batch.agents() {
                if !finished.contains(&id) {
                    outcomes.push((id, AgentOutcome::Failed(cancellation.to_string())));
                }
            }
        }
        Ok(outcomes)
    }

    async fn execute_async(
        &self,
        id: AgentId,
        agent: &dyn AsyncAgent,
        ctx: &Context,
    ) -> (AgentId, AgentOutcome) {
        let guarded = AssertUnwindSafe(agent.execute(ctx)).catch_unwind();
        let finished = match self.config.agent_timeout_ms {
            Some(ms) => tokio::time::timeout(Duration::from_millis(ms), guarded)
                .await
                .map_err(|_| format!("timed out after {ms} ms")),
            None => Ok(guarded.await),
        };
        let outcome = match finished {
            Ok(Ok(effect)) => AgentOutcome::from(effect),
            Ok(Err(panic)) => AgentOutcome::panicked(&*panic),
            Err(timeout) => AgentOutcome::Failed(timeout),
        };
        (id, outcome)
    }
}

/// Most synchronous agents executed together (see [`Executor::execute_with`]): a
/// cancellation waits for at most this many.
const SYNC_GROUP_MAX: usize = 1024;

/// Fewest synchronous agents worth a thread of their own: most take microseconds.
const SYNC_PER_THREAD_MIN: usize = 128;

/// `Executor::started_ms` before the drive starts.
const NOT_STARTED: u64 = u64::MAX;

/// What a batch reports while it runs: outcomes finished early (a durable drive commits
/// them), and the passing of time (a durable drive renews its lease).
pub(crate) trait Progress {
    /// What stops the batch.
    type Error;

    /// Outcomes that finished while other agents of the batch still run.
    fn finished(
        &mut self,
        cycle: u32,
        outcomes: &[(AgentId, AgentOutcome)],
    ) -> Result<(), Self::Error>;

    /// At most this long passes between calls to [`Progress::waiting`] while agents run;
    /// `None`: never call it.
    fn waiting_every(&self) -> Option<Duration>;

    /// Time passed while agents run.
    fn waiting(&mut self) -> Result<(), Self::Error>;

    /// An agent of the batch starts executing.
    fn agent_started(&mut self, cycle: u32, agent: &str);

    /// An agent of the batch stopped executing (finished, or cut short by a cancellation or
    /// an error from this progress); its outcome is not committed yet.
    fn agent_finished(&mut self, cycle: u32, agent: &str);
}

/// The in-memory driver's progress: only its observers follow it, told each agent's start
/// and finish.
struct Watching<'o>(&'o mut dyn ActivityObserver);

impl Progress for Watching<'_> {
    type Error = std::convert::Infallible;

    fn finished(&mut self, _: u32, _: &[(AgentId, AgentOutcome)]) -> Result<(), Self::Error> {
        Ok(())
    }

    fn waiting_every(&self) -> Option<Duration> {
        None
    }

    fn waiting(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }

    fn agent_started(&mut self, cycle: u32, agent: &str) {
        self.0.agent_started(cycle, agent);
    }

    fn agent_finished(&mut self, cycle: u32, agent: &str) {
        self.0.agent_finished(cycle, agent);
    }
}

/// Sleeps `every`, or forever when there is nothing to wait for.
async fn wait(every: Option<Duration>) {
    match every {
        Some(every) => tokio::time::sleep(every).await,
        None => std::future::pending().await,
    }
}

/// An outcome as the journal may take it: an effect past the record limits
/// ([`crate::limits`]) becomes the agent's failure, so nothing committed is unreadable.
fn admit(run: &Run<'_>, id: AgentId, outcome: AgentOutcome) -> AgentOutcome {
    let AgentOutcome::Completed(effect) = &outcome else {
        return outcome;
    };
    match crate::limits::check_effect(effect) {
        Ok(()) => outcome,
        Err(exceeded) => {
            let name = run.agent_name(id).unwrap_or("agent");
            let message = format!(
                "agent {name}'s answer was refused: {exceeded}; nothing of it was recorded"
            );
            // The work happened: its token usage still counts.
            AgentOutcome::Completed(AgentEffect::failed(message).with_usage(effect.usage()))
        }
    }
}

pub(crate) fn drain(run: &mut Run<'_>, observer: &mut dyn Observer) {
    while let Some(record) = run.poll_event() {
        observer.on_event(&record);
    }
}
