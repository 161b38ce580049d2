//! What a run leaves behind: the result, its statistics, and why it stopped.
//!
//! A [`ConvergeResult`] always carries the context (complete or partial), the stop reason,
//! statistics, every rejected proposal and agent failure, and the run's root hash. A run that
//! stopped awaiting approval also carries, privately, what is needed to resume it.

use serde::Serialize;
use serde_json::Value;

use crate::approval::PendingApproval;
use crate::budget::Exhausted;
use crate::context::Context;
use crate::digest::Digest;
use crate::effect::TokenUsage;
use crate::gate::Rejection;
use crate::id::{AgentId, ProposalId};
use crate::invariant::InvariantClass;
use crate::proposal::{Proposal, Validated};
use crate::run::RunState;

/// Why a run stopped. Every run ends with exactly one.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "stop", rename_all = "snake_case")]
pub enum StopReason {
    /// A fixed point: no agent wants to run, nothing is pending, acceptance invariants hold.
    Converged,
    /// A fixed point except for proposals waiting for a human.
    AwaitingApproval {
        /// The parked proposals, in id order.
        pending: Vec<PendingApproval>,
    },
    /// A budget ran out.
    BudgetExhausted {
        /// Which one.
        exhausted: Exhausted,
    },
    /// A semantic or acceptance invariant, or a structural one on the initial context, failed.
    InvariantViolated {
        /// The invariant's name.
        invariant: String,
        /// Its class.
        class: InvariantClass,
        /// Its reason.
        detail: String,
    },
    /// A semantic or acceptance invariant, or a structural one on the initial context, could
    /// not be evaluated (its check failed on these facts, or reached a limit): nothing is
    /// known to be violated, but the run cannot go on without knowing.
    InvariantUnevaluable {
        /// The invariant's name.
        invariant: String,
        /// Its class.
        class: InvariantClass,
        /// Why it could not be evaluated.
        detail: String,
    },
    /// An agent failed and the engine's failure policy stops the run.
    AgentFailed {
        /// The agent.
        agent: AgentId,
        /// What happened.
        message: String,
    },
    /// The driver halted the run (a cancellation or a driver-level failure).
    Halted {
        /// Why.
        reason: String,
    },
}

/// Counters of a run, cumulative across resumes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RunStats {
    /// Cycles executed.
    pub cycles: u32,
    /// Agent executions that returned an effect.
    pub agents_executed: u64,
    /// Agent executions (or `accepts` calls) that failed.
    pub agent_failures: u64,
    /// Proposals received.
    pub proposals: u64,
    /// Facts promoted (corrections included).
    pub facts_promoted: u64,
    /// Proposals rejected.
    pub rejections: u64,
    /// Proposals parked for approval.
    pub approvals_requested: u64,
    /// Decisions accepted (approvals and rejections).
    pub decisions: u64,
    /// Tokens spent.
    pub tokens: TokenUsage,
}

/// A proposal that was not promoted, kept whole so nothing is lost.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RejectedProposal {
    /// The proposal.
    pub proposal: ProposalId,
    /// The cycle it was decided in.
    pub cycle: u32,
    /// The key as proposed.
    pub key: String,
    /// The fact id as proposed.
    pub id: String,
    /// The content as proposed.
    pub content: Value,
    /// The confidence as proposed (may be invalid; that may be why it was rejected).
    pub confidence: f64,
    /// Why it was rejected.
    pub rejection: Rejection,
}

/// An agent failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentFailure {
    /// The cycle.
    pub cycle: u32,
    /// The agent.
    pub agent: AgentId,
    /// What happened.
    pub message: String,
}

/// The outcome of a run.
#[derive(Debug)]
pub struct ConvergeResult {
    /// The context at the stop, complete or partial.
    pub context: Context,
    /// Whether the run reached a fixed point with every acceptance invariant holding.
    pub converged: bool,
    /// Cycles executed.
    pub cycles: u32,
    /// Why the run stopped.
    pub stop_reason: StopReason,
    /// Counters.
    pub stats: RunStats,
    /// The head of the event hash chain.
    pub root_hash: Digest,
    /// Every proposal that was not promoted, in decision order.
    pub rejections: Vec<RejectedProposal>,
    /// Every agent failure, in order.
    pub failures: Vec<AgentFailure>,
    /// Agents whose last execution failed and that were not retried since, in id order.
    pub(crate) failed: Vec<AgentId>,
    pub(crate) suspended: Option<Box<RunState>>,
}

impl ConvergeResult {
    /// Whether the run can be resumed with decisions (it stopped awaiting approval).
    pub fn is_resumable(&self) -> bool {
        self.suspended.is_some() && matches!(self.stop_reason, StopReason::AwaitingApproval { .. })
    }

    /// Agents whose last execution failed and that were not retried since, in id order,
    /// whatever the stop. (Earlier failures stay in [`ConvergeResult::failures`].)
    pub fn failed_agents(&self) -> &[AgentId] {
        &self.failed
    }

    /// Whether a [`crate::Retry`] can continue the run: some agents failed, and it stopped in
    /// a way they can explain (not a budget, a halt or a semantic or structural invariant).
    ///
    /// ```
    /// use converge_core::{Context, Engine};
    /// use converge_core::agents::SeedAgent;
    ///
    /// let mut engine = Engine::new();
    /// engine.register(SeedAgent::new("seed", "hello"));
    /// let result = engine.run(Context::new()).unwrap();
    /// assert!(result.failed_agents().is_empty() && !result.is_retryable());
    /// ```
    pub fn is_retryable(&self) -> bool {
        self.suspended.is_some() && !self.failed.is_empty()
    }

    /// A parked proposal, to show an approver exactly what they approve.
    pub fn pending_proposal(&self, id: ProposalId) -> Option<&Proposal<Validated>> {
        self.suspended.as_ref()?.pending_proposal(id)
    }
}
