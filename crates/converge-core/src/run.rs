//! The convergence state machine: decisions without I/O.
//!
//! A [`Run`] says what to execute next ([`Step::Execute`] with a [`Batch`]) and accepts the
//! outcomes ([`Run::submit`]); it never executes anything itself, reads no clock and spawns
//! nothing. Drivers — the synchronous [`crate::Engine::run`], a thread pool, an async runtime —
//! decide how a batch runs. Whatever order outcomes arrive in, they merge in `AgentId` order,
//! then proposal order, so every driver produces the same events and the same root hash.
//!
//! Wake-up is semi-naive: an agent is a candidate only when a key it depends on received a
//! fact since it was last considered (agents without dependencies: whenever anything changed).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use crate::agent::{Agent, panic_message};
use crate::agent_set::AgentSet;
use crate::approval::{Decision, DecisionRefusal, PendingApproval, Verdict};
use crate::authority::{Actor, ActorKind};
use crate::budget::Exhausted;
use crate::context::Context;
use crate::digest::Digest;
use crate::effect::{AgentOutcome, TokenUsage};
use crate::engine::{FailurePolicy, Setup};
use crate::event::{AgentInfo, Chain, EncodingSink, Event, EventBatch, EventRecord, Kept};
use crate::gate::{Proposer, Rejection};
use crate::id::{AgentId, ObservationId, ProposalId};
use crate::invariant::{InvariantClass, InvariantFailure};
use crate::key::ContextKey;
use crate::observation::{Observation, TraceLink};
use crate::proposal::{Draft, FactRef, Proposal, Validated};
use crate::result::{AgentFailure, ConvergeResult, RejectedProposal, RunStats, StopReason};
use crate::retry::{Retry, final_stop};

/// The agents to execute in one cycle, in `AgentId` order, all against the same context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    cycle: u32,
    agents: Vec<AgentId>,
}

impl Batch {
    /// The cycle, from 1.
    pub fn cycle(&self) -> u32 {
        self.cycle
    }

    /// The agents, in id order.
    pub fn agents(&self) -> &[AgentId] {
        &self.agents
    }
}

/// What the driver should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Execute these agents against [`Run::context`] and [`Run::submit`] their outcomes.
    Execute(Batch),
    /// The run is over; see [`Run::stop_reason`] and [`Run::finish`].
    Stopped,
}

/// A driver broke the protocol; the run is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// No batch is outstanding.
    #[error("no batch is outstanding; call next_step() first")]
    NoBatch,
    /// An outcome names an agent that is not in the batch, or names one twice.
    #[error("outcome for {agent} is not expected in this batch (or repeats)")]
    Unexpected {
        /// The agent.
        agent: AgentId,
    },
    /// An agent of the batch has no outcome.
    #[error("outcome for {agent} is missing")]
    Missing {
        /// The agent.
        agent: AgentId,
    },
    /// A batch is outstanding; a run can only be halted between cycles.
    #[error("a batch is outstanding; submit its outcomes before halting")]
    BatchOutstanding,
}

/// A proposal waiting for a human, with what its promotion will need.
#[derive(Debug)]
struct Parked {
    proposal: Proposal<Validated>,
    trace: TraceLink,
}

/// Everything about a run except the context and the engine: what a suspended run keeps.
#[derive(Debug)]
pub(crate) struct RunState {
    agent_names: Vec<Arc<str>>,
    /// `Context::digest` of the context when the run was suspended.
    context_digest: Digest,
    cycle: u32,
    /// Agents to consider next cycle.
    dirty: AgentSet,
    quarantined: AgentSet,
    /// Agents whose last execution failed and that were not retried since: what a retry may
    /// name.
    failed: AgentSet,
    pending: BTreeMap<ProposalId, Parked>,
    pending_by_fact: BTreeMap<FactRef, ProposalId>,
    decided: BTreeSet<ProposalId>,
    rejected_by_human: BTreeMap<Digest, Actor>,
    chain: Chain,
    stats: RunStats,
    rejections: Vec<RejectedProposal>,
    failures: Vec<AgentFailure>,
}

impl RunState {
    pub(crate) fn pending_proposal(&self, id: ProposalId) -> Option<&Proposal<Validated>> {
        self.pending.get(&id).map(|parked| &parked.proposal)
    }

    /// Agents whose last execution failed and that were not retried since, in id order.
    pub(crate) fn failed_agents(&self) -> Vec<AgentId> {
        self.failed.iter_from(0).collect()
    }
}

enum Phase {
    Ready,
    Executing(Batch),
    Stopped(StopReason),
}

/// What happened while merging one cycle (or one set of decisions).
#[derive(Default)]
struct Tally {
    promoted: u32,
    rejected: u32,
    parked: u32,
    touched: BTreeSet<ContextKey>,
    stop: Option<StopReason>,
}

/// One run of an engine over a context: the sans-I/O state machine.
///
/// ```
/// use converge_core::{Engine, Context, Step, execute_isolated};
/// use converge_core::agents::SeedAgent;
///
/// let mut engine = Engine::new();
/// engine.register(SeedAgent::new("s1", "hello"));
/// let mut run = engine.start(Context::new()).unwrap();
/// while let Step::Execute(batch) = run.next_step() {
///     let outcomes = batch.agents().iter()
///         .map(|&id| (id, execute_isolated(run.agent(id), run.context())))
///         .collect();
///     run.submit(outcomes).unwrap();
/// }
/// let result = run.finish().ok().unwrap();
/// assert!(result.converged);
/// ```
pub struct Run<'e> {
    setup: &'e Setup,
    ctx: Context,
    state: RunState,
    phase: Phase,
    /// Emitted events not yet taken.
    events: VecDeque<EventRecord>,
    /// The encodings of the newest of them, when kept. Kept apart from the records so that
    /// taking them moves both buffers instead of copying them.
    kept: Kept,
    /// The hash of the last event taken (the chain's head when none is pending).
    taken_head: Digest,
    /// Whether sealing keeps each event's encoding for [`Run::take_events`].
    keep_encoded: bool,
    /// Where full groups of kept encodings go, if anywhere.
    sink: Option<Box<dyn EncodingSink>>,
}

impl<'e> Run<'e> {
    pub(crate) fn start(setup: &'e Setup, ctx: Context) -> Run<'e> {
        let state = RunState {
            agent_names: setup
                .agents
                .iter()
                .map(|agent| agent.name.clone())
                .collect(),
            context_digest: Digest::zero(),
            cycle: 0,
            dirty: AgentSet::default(),
            quarantined: AgentSet::default(),
            failed: AgentSet::default(),
            pending: BTreeMap::new(),
            pending_by_fact: BTreeMap::new(),
            decided: BTreeSet::new(),
            rejected_by_human: BTreeMap::new(),
            chain: Chain::new(),
            stats: RunStats::default(),
            rejections: Vec::new(),
            failures: Vec::new(),
        };
        let mut run = Run {
            setup,
            ctx,
            state,
            phase: Phase::Ready,
            events: VecDeque::new(),
            kept: Kept::default(),
            taken_head: Digest::zero(),
            keep_encoded: false,
            sink: None,
        };
        run.begin();
        run
    }

    fn begin(&mut self) {
        let agents = self
            .setup
            .agents
            .iter()
            .enumerate()
            .map(|(index, agent)| AgentInfo {
                id: AgentId(index as u32),
                name: agent.name.to_string(),
                dependencies: agent.dependencies.clone(),
                grant: agent.grant.scope().clone(),
            });
        let initial_facts = self.ctx.len();
        let budget = self.setup.budget;
        self.emit(Event::RunStarted {
            agents: agents.collect(),
            initial_facts,
            budget,
        });
        for index in 0..self.setup.agents.len() {
            self.state.dirty.insert(AgentId(index as u32));
        }
        let classes = [InvariantClass::Structural, InvariantClass::Semantic];
        if let Some(reason) = self.check_invariants(&classes) {
            self.stop(reason);
        }
    }

    /// Splits a result that stopped awaiting approval into what a resumed run needs, if it
    /// was produced by an engine with the same agents and its context is untouched.
    pub(crate) fn suspended(
        setup: &Setup,
        result: ConvergeResult,
    ) -> Result<(Context, Box<RunState>), (ConvergeResult, &'static str)> {
        if !matches!(result.stop_reason, StopReason::AwaitingApproval { .. }) {
            return Err((result, "the run did not stop awaiting approval"));
        }
        Run::kept_state(setup, result)
    }

    /// The state a stopped result kept, if it was produced by an engine with the same agents
    /// and its context is untouched.
    pub(crate) fn kept_state(
        setup: &Setup,
        mut result: ConvergeResult,
    ) -> Result<(Context, Box<RunState>), (ConvergeResult, &'static str)> {
        let Some(mut state) = result.suspended.take() else {
            return Err((result, "the run cannot be continued"));
        };
        let same_agents = state.agent_names.len() == setup.agents.len()
            && state
                .agent_names
                .iter()
                .zip(&setup.agents)
                .all(|(name, agent)| *name == agent.name);
        let problem = if !same_agents {
            Some("the engine's agents differ from the suspended run's")
        } else if state.context_digest != result.context.digest() {
            Some("the context differs from the suspended run's")
        } else {
            None
        };
        if let Some(problem) = problem {
            result.suspended = Some(state);
            return Err((result, problem));
        }
        state.rejections = result.rejections;
        state.failures = result.failures;
        Ok((result.context, state))
    }

    /// A stopped run, ready to take its next input: its chain goes on from where it stood.
    fn continuing(setup: &'e Setup, ctx: Context, state: Box<RunState>) -> Run<'e> {
        let taken_head = state.chain.head;
        Run {
            setup,
            ctx,
            state: *state,
            phase: Phase::Ready,
            events: VecDeque::new(),
            kept: Kept::default(),
            taken_head,
            keep_encoded: false,
            sink: None,
        }
    }

    /// Continues a suspended run: applies `decisions`, then behaves like any run.
    pub(crate) fn resume(
        setup: &'e Setup,
        ctx: Context,
        state: Box<RunState>,
        decisions: Vec<Decision>,
    ) -> Run<'e> {
        let mut run = Run::continuing(setup, ctx, state);
        let cycle = run.state.cycle;
        run.emit(Event::RunResumed {
            cycle,
            decisions: decisions.len(),
        });
        let mut tally = Tally::default();
        for decision in decisions {
            run.decide(decision, &mut tally);
        }
        run.settle(tally);
        run
    }

    /// Continues a stopped run whose failed `agents` a human decided to retry: lifts their
    /// quarantine, wakes exactly them, and behaves like any run from there.
    pub(crate) fn retried(
        setup: &'e Setup,
        ctx: Context,
        state: Box<RunState>,
        retry: &Retry,
        agents: Vec<AgentId>,
    ) -> Run<'e> {
        let mut run = Run::continuing(setup, ctx, state);
        let mut lifted = AgentSet::default();
        for &agent in &agents {
            lifted.insert(agent);
        }
        run.state.quarantined.subtract(&lifted);
        run.state.failed.subtract(&lifted);
        run.state.dirty.union_with(&lifted);
        let cycle = run.state.cycle;
        run.emit(Event::RunRetried {
            cycle,
            actor: retry.actor().clone(),
            agents,
            reason: retry.reason().to_owned(),
        });
        run
    }

    /// What to do next. Calling it again before submitting returns the same batch.
    pub fn next_step(&mut self) -> Step {
        match &self.phase {
            Phase::Stopped(_) => return Step::Stopped,
            Phase::Executing(batch) => return Step::Execute(batch.clone()),
            Phase::Ready => {}
        }
        let upcoming = self.state.cycle + 1;
        let batch = self.accepting_agents(upcoming);
        if let Phase::Stopped(_) = self.phase {
            return Step::Stopped;
        }
        if batch.is_empty() {
            let reason = self.fixed_point_reason();
            self.stop(reason);
            return Step::Stopped;
        }
        let limit = self.setup.budget.cycles.limit();
        if self.state.cycle >= limit {
            self.stop(StopReason::BudgetExhausted {
                exhausted: Exhausted::Cycles { limit },
            });
            return Step::Stopped;
        }
        self.state.cycle = upcoming;
        self.state.stats.cycles += 1;
        self.emit(Event::CycleStarted {
            cycle: upcoming,
            agents: batch.clone(),
        });
        let batch = Batch {
            cycle: upcoming,
            agents: batch,
        };
        self.phase = Phase::Executing(batch.clone());
        Step::Execute(batch)
    }

    /// Asks every woken, unquarantined agent whether it accepts, in id order. One unwind guard
    /// covers the whole scan; after a panic the scan resumes with the next agent.
    fn accepting_agents(&mut self, cycle: u32) -> Vec<AgentId> {
        let mut candidates = self.state.dirty.take();
        candidates.subtract(&self.state.quarantined);
        let mut batch = Vec::new();
        let mut next = 0;
        loop {
            let (agents, ctx) = (&self.setup.agents, &self.ctx);
            let scan = catch_unwind(AssertUnwindSafe(|| {
                for agent in candidates.iter_from(next) {
                    next = agent.index() + 1;
                    if agents[agent.index()].agent.accepts(ctx) {
                        batch.push(agent);
                    }
                }
            }));
            let Err(panic) = scan else { return batch };
            let agent = AgentId(next.saturating_sub(1) as u32);
            let message = format!("panicked in accepts: {}", panic_message(&*panic));
            if let Some(reason) = self.fail(cycle, agent, message, TokenUsage::default()) {
                self.stop(reason);
                return Vec::new();
            }
        }
    }

    fn fixed_point_reason(&mut self) -> StopReason {
        if !self.state.pending.is_empty() {
            let pending = self
                .state
                .pending
                .values()
                .map(|parked| pending_approval(&parked.proposal));
            return StopReason::AwaitingApproval {
                pending: pending.collect(),
            };
        }
        self.check_invariants(&[InvariantClass::Acceptance])
            .unwrap_or(StopReason::Converged)
    }

    /// The context agents read. Immutable for the whole of a batch.
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// A registered agent.
    ///
    /// # Panics
    /// If `agent` was not issued by this run's engine (every [`Batch`] id is).
    pub fn agent(&self, agent: AgentId) -> &dyn Agent {
        &*self.setup.agents[agent.index()].agent
    }

    /// The agent's registered name.
    pub fn agent_name(&self, agent: AgentId) -> Option<&str> {
        self.setup
            .agents
            .get(agent.index())
            .map(|agent| &*agent.name)
    }

    /// Why the run stopped, once it has.
    pub fn stop_reason(&self) -> Option<&StopReason> {
        match &self.phase {
            Phase::Stopped(reason) => Some(reason),
            _ => None,
        }
    }

    /// The next event not yet taken, in order.
    pub fn poll_event(&mut self) -> Option<EventRecord> {
        // Encodings are kept for the newest pending events: the oldest has one when all do.
        // A handed one stays with the sink's group.
        let all_kept = self.kept.len() == self.events.len();
        let record = self.events.pop_front()?;
        if self.kept.handed > 0 {
            self.kept.handed -= 1;
        } else if all_kept {
            self.kept.pop_front();
        }
        self.taken_head = record.hash;
        Some(record)
    }

    /// Takes every event not yet taken, without their encodings: what a driver re-deriving a
    /// recorded step compares with the record. Nothing is encoded or copied.
    ///
    /// ```
    /// use converge_core::agents::SeedAgent;
    /// use converge_core::{Context, Engine, Event};
    ///
    /// let mut engine = Engine::new();
    /// engine.register(SeedAgent::new("seed-1", "hello"));
    /// let mut run = engine.start(Context::new())?;
    /// let records = run.take_records();
    /// assert!(matches!(records[0].event, Event::RunStarted { .. }));
    /// assert!(run.take_records().is_empty());
    /// assert_eq!(run.take_events().previous(), records.last().unwrap().hash);
    /// # Ok::<(), converge_core::EngineError>(())
    /// ```
    pub fn take_records(&mut self) -> Vec<EventRecord> {
        self.kept = Kept::default();
        let records = Vec::from(std::mem::take(&mut self.events));
        if let Some(last) = records.last() {
            self.taken_head = last.hash;
        }
        records
    }

    /// Takes every event not yet taken, with the exact bytes the chain hashed: what a journal
    /// stores. Events emitted before [`Run::keep_encoded_events`] are encoded here.
    pub fn take_events(&mut self) -> EventBatch {
        let first_seq = self
            .events
            .front()
            .map_or(self.state.chain.next_seq, |record| record.seq);
        let batch = EventBatch::new(
            self.taken_head,
            first_seq,
            Vec::from(std::mem::take(&mut self.events)),
            std::mem::take(&mut self.kept),
        );
        self.taken_head = batch.head();
        batch
    }

    /// From now on, keeps each event's encoding until it is taken, so that
    /// [`Run::take_events`] need not encode it again. Drivers that journal every event call
    /// this once after starting a run; it changes no event and no hash.
    pub fn keep_encoded_events(&mut self) {
        if !self.keep_encoded && self.kept.len() == 0 {
            self.adopt_last_encoding();
        }
        self.keep_encoded = true;
    }

    /// From now on, keeps each event's encoding and hands them to `sink` in groups as they
    /// fill ([`EncodingSink`]), while the run goes on; the rest are taken with the events
    /// ([`Run::take_events`], whose batch says how many were handed:
    /// [`EventBatch::handed`]). It changes no event and no hash. A driver that uses a sink
    /// takes events only with [`Run::take_events`]: an event polled or taken as a record
    /// leaves its encoding with the group it was handed in.
    ///
    /// ```
    /// use converge_core::agents::SeedAgent;
    /// use converge_core::{Context, EncodingSink, Encodings, Engine, Step, execute_isolated};
    ///
    /// /// Groups of at most two encodings, counted.
    /// struct Pairs(std::sync::Arc<std::sync::Mutex<Vec<usize>>>);
    ///
    /// impl EncodingSink for Pairs {
    ///     fn fits(&self, count: usize, _bytes: usize, _len: usize) -> bool {
    ///         count < 2
    ///     }
    ///     fn take(&mut self, group: Encodings) -> Vec<u8> {
    ///         self.0.lock().unwrap().push(group.len());
    ///         group.into_buffer()
    ///     }
    /// }
    ///
    /// let mut engine = Engine::new();
    /// for seed in 0..3 {
    ///     engine.register(SeedAgent::new(format!("seed-{seed}"), "hello"));
    /// }
    /// let mut run = engine.start(Context::new())?;
    /// let groups = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    /// run.hand_encoded_events_to(Box::new(Pairs(groups.clone())));
    /// let _start = run.take_events();
    /// let Step::Execute(batch) = run.next_step() else { unreachable!() };
    /// let outcomes = batch.agents().iter()
    ///     .map(|&id| (id, execute_isolated(run.agent(id), run.context())))
    ///     .collect();
    /// run.submit(outcomes)?;
    /// // The cycle's start, three agents, three facts and the cycle's end: three pairs
    /// // handed over, the rest taken with the batch.
    /// let cycle = run.take_events();
    /// assert_eq!(*groups.lock().unwrap(), [2, 2, 2]);
    /// assert_eq!((cycle.len(), cycle.handed()), (8, 6));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn hand_encoded_events_to(&mut self, sink: Box<dyn EncodingSink>) {
        self.keep_encoded_events();
        self.sink = Some(sink);
    }

    /// Keeps the encoding the chain hashed last when it is the newest pending event's (a
    /// run's `run_started` names every agent: a wide run need not encode it twice).
    fn adopt_last_encoding(&mut self) {
        let Some(last) = self.events.back() else {
            return;
        };
        if let Some(encoding) = self.state.chain.take_encoding_of(last.seq) {
            self.kept = Kept::of_one(encoding);
        }
    }

    /// Hands back the outcomes of the outstanding batch, in any order. They are merged in
    /// `AgentId` order. On error nothing changes.
    pub fn submit(
        &mut self,
        mut outcomes: Vec<(AgentId, AgentOutcome)>,
    ) -> Result<(), SubmitError> {
        let Phase::Executing(batch) = &self.phase else {
            return Err(SubmitError::NoBatch);
        };
        outcomes.sort_by_key(|(agent, _)| *agent);
        check_complete(batch, &outcomes)?;
        let cycle = batch.cycle;
        let mut tally = Tally::default();
        // Growing the event queue and the context once, not as outcomes come, keeps a wide
        // cycle from copying them over and over.
        let (events, facts) = room_for(&outcomes, self.setup.config.proposals_per_effect_max);
        self.events.reserve(events.saturating_add(1));
        if self.keep_encoded {
            self.kept
                .reserve(events.saturating_add(1), self.sink.is_none());
        }
        let facts_left = self
            .setup
            .budget
            .facts
            .limit()
            .saturating_sub(self.state.stats.facts_promoted);
        self.ctx
            .reserve(facts.min(usize::try_from(facts_left).unwrap_or(usize::MAX)));
        for (agent, outcome) in outcomes {
            self.merge(cycle, agent, outcome, &mut tally);
        }
        let (promoted, rejected, parked) = (tally.promoted, tally.rejected, tally.parked);
        self.phase = Phase::Ready;
        self.emit(Event::CycleFinished {
            cycle,
            promoted,
            rejected,
            parked,
        });
        self.settle(tally);
        Ok(())
    }

    /// Stops the run between cycles, for a reason the driver owns (a wall-clock budget, a
    /// cancellation).
    pub fn halt(&mut self, reason: StopReason) -> Result<(), SubmitError> {
        match self.phase {
            Phase::Executing(_) => Err(SubmitError::BatchOutstanding),
            Phase::Stopped(_) => Ok(()),
            Phase::Ready => {
                self.stop(reason);
                Ok(())
            }
        }
    }

    /// The result, once stopped; otherwise the run is handed back unchanged.
    pub fn finish(self) -> Result<ConvergeResult, Run<'e>> {
        match self.phase {
            Phase::Stopped(_) => Ok(self.into_result()),
            _ => Err(self),
        }
    }

    /// Ends the run now. A run that has not stopped stops with `reason`; an outstanding batch
    /// is abandoned (its outcomes are never merged) and the stop event records the reason.
    pub fn abandon(mut self, reason: StopReason) -> ConvergeResult {
        if !matches!(self.phase, Phase::Stopped(_)) {
            self.phase = Phase::Ready;
            self.stop(reason);
        }
        self.into_result()
    }

    pub(crate) fn into_result(self) -> ConvergeResult {
        let reason = match self.phase {
            Phase::Stopped(reason) => reason,
            _ => StopReason::Halted {
                reason: "run finished before it stopped".to_owned(),
            },
        };
        let mut state = self.state;
        let root_hash = state.chain.head;
        let stats = state.stats;
        let rejections = std::mem::take(&mut state.rejections);
        let failures = std::mem::take(&mut state.failures);
        let failed = state.failed_agents();
        // A run awaiting approval can be resumed, and one its failures stopped retried: both
        // keep what continuing needs.
        let resumable = matches!(reason, StopReason::AwaitingApproval { .. })
            || (!state.failed.is_empty() && final_stop(&reason).is_none());
        if resumable {
            state.context_digest = self.ctx.digest();
        }
        ConvergeResult {
            context: self.ctx,
            converged: reason == StopReason::Converged,
            cycles: stats.cycles,
            stop_reason: reason,
            stats,
            root_hash,
            rejections,
            failures,
            failed,
            suspended: resumable.then(|| Box::new(state)),
        }
    }

    fn merge(&mut self, cycle: u32, agent: AgentId, outcome: AgentOutcome, tally: &mut Tally) {
        let effect = match outcome {
            AgentOutcome::Completed(effect) => effect,
            AgentOutcome::Failed(message) => {
                if let Some(reason) = self.fail(cycle, agent, message, TokenUsage::default()) {
                    tally.stop.get_or_insert(reason);
                }
                return;
            }
        };
        let failure = effect.failure_message();
        let (proposals, observations, usage) = effect.into_parts();
        self.record_usage(usage);
        if let Some(message) = failure {
            // What a failed agent observed and spent happened; what it proposed is discarded.
            self.record_observations(cycle, agent, &observations);
            if let Some(reason) = self.fail(cycle, agent, message, usage) {
                tally.stop.get_or_insert(reason);
            }
            return;
        }
        self.state.stats.agents_executed += 1;
        self.emit(Event::AgentExecuted {
            cycle,
            agent,
            proposals: count_u32(proposals.len()),
            observations: count_u32(observations.len()),
            usage,
        });
        let observation_ids = self.record_observations(cycle, agent, &observations);
        let limit = self.setup.config.proposals_per_effect_max;
        for (seq, draft) in proposals.into_iter().enumerate() {
            let id = ProposalId::new(cycle, agent, count_u32(seq));
            self.state.stats.proposals += 1;
            if seq >= limit {
                self.reject_draft(id, draft, Rejection::TooManyProposals { limit }, tally);
                continue;
            }
            self.consider(id, draft, &observation_ids, &observations, tally);
        }
    }

    fn record_usage(&mut self, usage: TokenUsage) {
        let tokens = &mut self.state.stats.tokens;
        tokens.input = tokens.input.saturating_add(usage.input);
        tokens.output = tokens.output.saturating_add(usage.output);
    }

    fn record_observations(
        &mut self,
        cycle: u32,
        agent: AgentId,
        observations: &[Observation],
    ) -> Vec<ObservationId> {
        let mut ids = Vec::with_capacity(observations.len());
        for (seq, observation) in observations.iter().enumerate() {
            let id = ObservationId::new(cycle, agent, count_u32(seq));
            ids.push(id);
            self.emit(Event::ObservationRecorded {
                observation: id,
                kind: observation.kind().to_owned(),
                trace: observation.trace(id),
                replayability: observation.replayability(),
                payload_hash: observation.payload_hash(),
            });
        }
        ids
    }

    fn consider(
        &mut self,
        id: ProposalId,
        draft: Proposal<Draft>,
        observation_ids: &[ObservationId],
        observations: &[Observation],
        tally: &mut Tally,
    ) {
        let setup = self.setup;
        let registered = &setup.agents[id.agent().index()];
        let proposer = Proposer {
            grant: &registered.grant,
            name: &registered.name,
            observations: observation_ids,
        };
        let gate = setup.gate();
        let pending = &self.state.pending_by_fact;
        let validated = match gate.validate(id, draft, &proposer, &self.ctx, |fact| {
            pending.get(fact).copied()
        }) {
            Ok(validated) => validated,
            Err((draft, rejection)) => return self.reject_draft(id, draft, rejection, tally),
        };
        let rejected_before = match self.state.rejected_by_human.is_empty() {
            true => None,
            false => self.state.rejected_by_human.get(&validated.hash()),
        };
        if let Some(actor) = rejected_before {
            let rejection = Rejection::RejectedByApprover {
                actor: actor.clone(),
                reason: "identical to a proposal this approver already rejected".to_owned(),
            };
            return self.reject_validated(validated, rejection, tally);
        }
        let trace = trace_of(&validated, observation_ids, observations);
        if gate.requires_approval(validated.key()) {
            // A human is never asked to approve what the structural invariants would refuse.
            if let Some((invariant, failure)) = self.would_violate(&validated, &trace) {
                let rejection = rejection_of(invariant, failure);
                return self.reject_validated(validated, rejection, tally);
            }
            self.park(validated, trace, tally);
        } else {
            self.commit(validated, trace, None, tally);
        }
    }

    /// The structural invariant `proposal` would violate if it were promoted now, checked
    /// with a copy of it tentatively in the context (and taken out again).
    fn would_violate(
        &mut self,
        proposal: &Proposal<Validated>,
        trace: &TraceLink,
    ) -> Option<(String, InvariantFailure)> {
        let has_structural = self
            .setup
            .invariants
            .iter()
            .any(|invariant| invariant.class() == InvariantClass::Structural);
        if !has_structural {
            return None;
        }
        let setup = self.setup;
        let registered = &setup.agents[proposal.agent().index()];
        let fact = setup.gate().promote(
            proposal.clone(),
            &self.ctx,
            trace.clone(),
            self.state.cycle,
            registered.name.clone(),
            None,
        );
        let undo = self.ctx.insert(fact);
        let violated = self.violated(InvariantClass::Structural);
        let _ = self.ctx.undo(undo);
        violated
    }

    fn park(&mut self, proposal: Proposal<Validated>, trace: TraceLink, tally: &mut Tally) {
        let id = proposal.proposal_id();
        let fact = FactRef {
            key: proposal.key(),
            id: proposal.id().clone(),
        };
        let (cycle, hash) = (self.state.cycle, proposal.hash());
        self.emit(Event::ApprovalRequested {
            cycle,
            proposal: id,
            fact: fact.clone(),
            hash,
        });
        self.state.pending_by_fact.insert(fact, id);
        self.state.pending.insert(id, Parked { proposal, trace });
        self.state.stats.approvals_requested += 1;
        tally.parked += 1;
    }

    /// Promotes a validated proposal, unless the fact budget or a structural invariant forbids.
    fn commit(
        &mut self,
        proposal: Proposal<Validated>,
        trace: TraceLink,
        approver: Option<Actor>,
        tally: &mut Tally,
    ) {
        let limit = self.setup.budget.facts.limit();
        if self.state.stats.facts_promoted >= limit {
            tally.stop.get_or_insert(StopReason::BudgetExhausted {
                exhausted: Exhausted::Facts { limit },
            });
            return self.reject_validated(
                proposal,
                Rejection::FactBudgetExhausted { limit },
                tally,
            );
        }
        let setup = self.setup;
        let registered = &setup.agents[proposal.agent().index()];
        let cycle = self.state.cycle;
        let fact = setup.gate().promote(
            proposal,
            &self.ctx,
            trace,
            cycle,
            registered.name.clone(),
            approver,
        );
        let undo = self.ctx.insert(fact);
        if let Some((invariant, failure)) = self.violated(InvariantClass::Structural) {
            if let Some(fact) = self.ctx.undo(undo) {
                let rejection = rejection_of(invariant, failure);
                self.record_rejection(
                    fact.record().proposal(),
                    rejected_fact(fact, rejection),
                    tally,
                );
            }
            return;
        }
        let Some(fact) = self.ctx.history().last() else {
            return;
        };
        let event = Event::FactPromoted {
            cycle,
            fact: FactRef {
                key: fact.key(),
                id: fact.id().clone(),
            },
            version: fact.version(),
            content_hash: fact.content_hash(),
            proposal: fact.record().proposal(),
            approver: fact.record().approver().cloned(),
        };
        tally.touched.insert(fact.key());
        tally.promoted += 1;
        self.state.stats.facts_promoted += 1;
        self.emit(event);
    }

    fn decide(&mut self, decision: Decision, tally: &mut Tally) {
        let id = decision.proposal();
        let refusal = if decision.actor().kind() != ActorKind::Human {
            Some(DecisionRefusal::NotHuman)
        } else {
            match self.state.pending.get(&id) {
                None if self.state.decided.contains(&id) => Some(DecisionRefusal::AlreadyDecided),
                None => Some(DecisionRefusal::UnknownProposal),
                Some(parked) if parked.proposal.hash() != decision.hash() => {
                    Some(DecisionRefusal::StaleHash {
                        expected: parked.proposal.hash(),
                    })
                }
                Some(_) => None,
            }
        };
        let actor = decision.actor().clone();
        if let Some(refusal) = refusal {
            return self.emit(Event::DecisionRefused {
                proposal: id,
                actor,
                refusal,
            });
        }
        let Some(parked) = self.state.pending.remove(&id) else {
            return;
        };
        let fact = FactRef {
            key: parked.proposal.key(),
            id: parked.proposal.id().clone(),
        };
        self.state.pending_by_fact.remove(&fact);
        self.state.decided.insert(id);
        self.state.stats.decisions += 1;
        let verdict = decision.verdict().clone();
        self.emit(Event::ApprovalDecided {
            proposal: id,
            actor: actor.clone(),
            verdict: verdict.clone(),
        });
        match verdict {
            Verdict::Approve => match self.setup.gate().recheck(&parked.proposal, &self.ctx) {
                Ok(()) => self.commit(parked.proposal, parked.trace, Some(actor), tally),
                Err(rejection) => self.reject_validated(parked.proposal, rejection, tally),
            },
            Verdict::Reject { reason } => {
                self.state
                    .rejected_by_human
                    .insert(parked.proposal.hash(), actor.clone());
                self.reject_validated(
                    parked.proposal,
                    Rejection::RejectedByApprover { actor, reason },
                    tally,
                );
            }
        }
    }

    /// Wakes dependents of what changed, checks semantic invariants and budgets.
    fn settle(&mut self, mut tally: Tally) {
        if !tally.touched.is_empty() {
            for key in &tally.touched {
                if let Some(dependents) = self.setup.dependents.get(key) {
                    self.state.dirty.union_with(dependents);
                }
            }
            self.state.dirty.union_with(&self.setup.independents);
            if let Some(reason) = self.check_invariants(&[InvariantClass::Semantic]) {
                tally.stop = Some(reason);
            }
        }
        if let Some(limit) = self.setup.budget.tokens.map(|budget| budget.limit()) {
            let used = self.state.stats.tokens.total();
            if used > limit {
                tally.stop.get_or_insert(StopReason::BudgetExhausted {
                    exhausted: Exhausted::Tokens { limit, used },
                });
            }
        }
        if let Some(reason) = tally.stop {
            self.stop(reason);
        }
    }

    /// Records a failure; returns a stop reason when the policy stops the run.
    fn fail(
        &mut self,
        cycle: u32,
        agent: AgentId,
        message: String,
        usage: TokenUsage,
    ) -> Option<StopReason> {
        let quarantine = self.setup.config.failure_policy == FailurePolicy::Quarantine;
        if quarantine {
            self.state.quarantined.insert(agent);
        }
        self.state.failed.insert(agent);
        self.state.stats.agent_failures += 1;
        self.state.failures.push(AgentFailure {
            cycle,
            agent,
            message: message.clone(),
        });
        self.emit(Event::AgentFailed {
            cycle,
            agent,
            message: message.clone(),
            usage,
            quarantined: quarantine,
        });
        (!quarantine).then_some(StopReason::AgentFailed { agent, message })
    }

    fn violated(&self, class: InvariantClass) -> Option<(String, InvariantFailure)> {
        self.setup
            .invariants
            .iter()
            .filter(|invariant| invariant.class() == class)
            .find_map(|invariant| {
                invariant
                    .check(&self.ctx)
                    .err()
                    .map(|detail| (invariant.name().to_owned(), detail))
            })
    }

    /// Checks the classes in order; records and returns the first violation, or the first
    /// invariant that could not be evaluated.
    fn check_invariants(&mut self, classes: &[InvariantClass]) -> Option<StopReason> {
        let (class, (invariant, failure)) = classes
            .iter()
            .find_map(|&class| self.violated(class).map(|violation| (class, violation)))?;
        let cycle = self.state.cycle;
        match failure {
            InvariantFailure::Unevaluable(detail) => {
                self.emit(Event::InvariantUnevaluable {
                    cycle,
                    invariant: invariant.clone(),
                    class,
                    detail: detail.clone(),
                });
                Some(StopReason::InvariantUnevaluable {
                    invariant,
                    class,
                    detail,
                })
            }
            InvariantFailure::Violated(detail) => {
                self.emit(Event::InvariantViolated {
                    cycle,
                    invariant: invariant.clone(),
                    class,
                    detail: detail.clone(),
                });
                Some(StopReason::InvariantViolated {
                    invariant,
                    class,
                    detail,
                })
            }
        }
    }

    fn reject_draft(
        &mut self,
        id: ProposalId,
        draft: Proposal<Draft>,
        rejection: Rejection,
        tally: &mut Tally,
    ) {
        let state = draft.state;
        let cycle = self.state.cycle;
        let rejected = RejectedProposal {
            proposal: id,
            cycle,
            key: state.key.to_string(),
            id: state.id,
            content: state.content,
            confidence: state.confidence,
            rejection,
        };
        self.record_rejection(id, rejected, tally);
    }

    fn reject_validated(
        &mut self,
        proposal: Proposal<Validated>,
        rejection: Rejection,
        tally: &mut Tally,
    ) {
        let id = proposal.proposal_id();
        let state = proposal.state;
        let rejected = RejectedProposal {
            proposal: id,
            cycle: self.state.cycle,
            key: state.key.to_string(),
            id: state.id.to_string(),
            content: state.content,
            confidence: state.confidence.value(),
            rejection,
        };
        self.record_rejection(id, rejected, tally);
    }

    fn record_rejection(&mut self, id: ProposalId, rejected: RejectedProposal, tally: &mut Tally) {
        self.emit(Event::ProposalRejected {
            cycle: rejected.cycle,
            proposal: id,
            key: rejected.key.clone(),
            id: rejected.id.clone(),
            rejection: rejected.rejection.clone(),
        });
        self.state.stats.rejections += 1;
        tally.rejected += 1;
        self.state.rejections.push(rejected);
    }

    fn stop(&mut self, reason: StopReason) {
        if !matches!(reason, StopReason::AwaitingApproval { .. }) {
            // A stopped run cannot be resumed, so parked proposals can no longer be decided:
            // record them as rejections rather than let them vanish.
            let pending = std::mem::take(&mut self.state.pending);
            self.state.pending_by_fact.clear();
            let mut tally = Tally::default();
            for parked in pending.into_values() {
                self.reject_validated(parked.proposal, Rejection::UndecidedAtStop, &mut tally);
            }
        }
        let (cycles, facts) = (self.state.cycle, self.ctx.len());
        self.emit(Event::RunStopped {
            cycles,
            facts,
            reason: reason.clone(),
        });
        self.phase = Phase::Stopped(reason);
    }

    fn emit(&mut self, event: Event) {
        let kept = self.keep_encoded.then_some(&mut self.kept);
        let record = self.state.chain.seal(event, kept);
        self.events.push_back(record);
        // Handing over needs every pending event's encoding kept or handed, so that the
        // batch's handed records are its first.
        if let Some(sink) = self.sink.as_deref_mut()
            && self.kept.handed + self.kept.len() == self.events.len()
        {
            self.kept.hand_over_full(sink, self.state.chain.next_seq);
        }
    }
}

/// The events merging `outcomes` emits, and the facts it can promote at most: an agent's
/// event, one per observation and one per proposal considered.
fn room_for(outcomes: &[(AgentId, AgentOutcome)], proposals_max: usize) -> (usize, usize) {
    outcomes
        .iter()
        .fold((0usize, 0usize), |(events, facts), (_, outcome)| {
            let (proposals, observations) = match outcome {
                AgentOutcome::Completed(effect) if effect.failure().is_none() => (
                    effect.proposals().len().min(proposals_max),
                    effect.observations().len(),
                ),
                AgentOutcome::Completed(effect) => (0, effect.observations().len()),
                AgentOutcome::Failed(_) => (0, 0),
            };
            (
                events
                    .saturating_add(1)
                    .saturating_add(observations)
                    .saturating_add(proposals),
                facts.saturating_add(proposals),
            )
        })
}

fn check_complete(batch: &Batch, sorted: &[(AgentId, AgentOutcome)]) -> Result<(), SubmitError> {
    let mut expected = batch.agents.iter();
    for (agent, _) in sorted {
        match expected.next() {
            Some(next) if next == agent => {}
            Some(next) if next < agent => return Err(SubmitError::Missing { agent: *next }),
            _ => return Err(SubmitError::Unexpected { agent: *agent }),
        }
    }
    match expected.next() {
        Some(agent) => Err(SubmitError::Missing { agent: *agent }),
        None => Ok(()),
    }
}

fn rejected_fact(fact: crate::fact::Fact, rejection: Rejection) -> RejectedProposal {
    RejectedProposal {
        proposal: fact.record().proposal(),
        cycle: fact.record().cycle(),
        key: fact.key().to_string(),
        id: fact.id().to_string(),
        confidence: fact.confidence().value(),
        content: fact.into_content(),
        rejection,
    }
}

fn pending_approval(proposal: &Proposal<Validated>) -> PendingApproval {
    PendingApproval {
        proposal: proposal.proposal_id(),
        hash: proposal.hash(),
        fact: FactRef {
            key: proposal.key(),
            id: proposal.id().clone(),
        },
        content_hash: proposal.content_hash(),
        confidence: proposal.confidence(),
        agent: proposal.agent(),
    }
}

/// A remote observation cited by the proposal makes it a remote fact; otherwise it is local.
fn trace_of(
    proposal: &Proposal<Validated>,
    ids: &[ObservationId],
    observations: &[Observation],
) -> TraceLink {
    let remote = proposal.evidence().iter().find_map(|cited| {
        let index = ids.iter().position(|id| id == cited)?;
        let trace = observations[index].trace(*cited);
        matches!(trace, TraceLink::RemoteRef { .. }).then_some(trace)
    });
    let id = proposal.proposal_id();
    remote.unwrap_or(TraceLink::LocalTrace {
        agent: id.agent(),
        cycle: id.cycle(),
    })
}

fn count_u32(count: usize) -> u32 {
    u32::try_from(count).unwrap_or(u32::MAX)
}

/// The rejection of a proposal that a structural invariant refuses.
fn rejection_of(invariant: String, failure: InvariantFailure) -> Rejection {
    match failure {
        InvariantFailure::Unevaluable(detail) => {
            Rejection::InvariantUnevaluable { invariant, detail }
        }
        InvariantFailure::Violated(detail) => Rejection::InvariantViolated { invariant, detail },
    }
}
