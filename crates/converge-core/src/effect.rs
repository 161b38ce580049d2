//! Agent effects: the only thing an agent hands back.
//!
//! An [`AgentEffect`] carries draft proposals, observations and token usage. It has no way to
//! hold a fact: facts exist only after the promotion gate.

use serde::{Deserialize, Serialize};

use crate::observation::Observation;
use crate::proposal::{Draft, Proposal};

/// Tokens an agent spent on external models during one execution.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    /// Tokens sent.
    pub input: u64,
    /// Tokens received.
    pub output: u64,
}

impl TokenUsage {
    /// Input plus output, saturating.
    pub fn total(&self) -> u64 {
        self.input.saturating_add(self.output)
    }
}

/// What one execution of an agent produced.
///
/// ```
/// use converge_core::{AgentEffect, ContextKey, Proposal};
///
/// let effect = AgentEffect::empty()
///     .with_proposal(Proposal::new(ContextKey::Signals, "s1", "churn rising"));
/// assert_eq!(effect.proposals().len(), 1);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentEffect {
    proposals: Vec<Proposal<Draft>>,
    observations: Vec<Observation>,
    usage: TokenUsage,
    failure: Option<String>,
}

impl AgentEffect {
    /// An effect with nothing in it.
    pub fn empty() -> AgentEffect {
        AgentEffect::default()
    }

    /// An effect with one proposal.
    pub fn with_proposal(mut self, proposal: Proposal<Draft>) -> AgentEffect {
        self.propose(proposal);
        self
    }

    /// Adds a proposal.
    pub fn propose(&mut self, proposal: Proposal<Draft>) {
        // Most effects carry one proposal: the first gets room for itself alone, not the
        // four a growing vector starts with (a cycle of many agents holds every effect).
        if self.proposals.is_empty() {
            self.proposals.reserve_exact(1);
        }
        self.proposals.push(proposal);
    }

    /// Records an observation and returns its index, for [`Proposal::citing`].
    pub fn observe(&mut self, observation: Observation) -> u32 {
        self.observations.push(observation);
        u32::try_from(self.observations.len() - 1).unwrap_or(u32::MAX)
    }

    /// Adds token usage.
    pub fn with_usage(mut self, usage: TokenUsage) -> AgentEffect {
        self.usage.input = self.usage.input.saturating_add(usage.input);
        self.usage.output = self.usage.output.saturating_add(usage.output);
        self
    }

    /// The draft proposals, in the agent's order.
    pub fn proposals(&self) -> &[Proposal<Draft>] {
        &self.proposals
    }

    /// The observations, in the agent's order.
    pub fn observations(&self) -> &[Observation] {
        &self.observations
    }

    /// The token usage.
    pub fn usage(&self) -> TokenUsage {
        self.usage
    }

    /// An effect saying the agent failed, with why: the value an agent returns when its work
    /// cannot be done (a template that does not render, a program that crashes, a model that
    /// keeps answering nonsense). It is recorded like a panicking agent — an `agent_failed`
    /// event, quarantine or a stop per the engine's failure policy — without a panic.
    ///
    /// What the agent observed and the tokens it spent before failing happened all the same:
    /// its observations are recorded and its usage counts against the token budget. Its
    /// proposals are discarded, and the failure message says how many.
    ///
    /// ```
    /// use converge_core::{AgentEffect, Observation, TokenUsage};
    ///
    /// let mut effect = AgentEffect::failed("the model answered 500 three times")
    ///     .with_usage(TokenUsage { input: 120, output: 0 });
    /// effect.observe(Observation::remote("llm.exchange", "openai:gpt-4o", "attempt-1", serde_json::json!({"status": 500})));
    /// assert_eq!(effect.failure(), Some("the model answered 500 three times"));
    /// assert_eq!(effect.observations().len(), 1);
    /// ```
    pub fn failed(message: impl Into<String>) -> AgentEffect {
        AgentEffect::empty().into_failed(message)
    }

    /// This effect, turned into a failure: keeps its observations and usage (recorded), and
    /// its proposals (discarded when merged; the message counts them).
    pub fn into_failed(mut self, message: impl Into<String>) -> AgentEffect {
        self.failure = Some(message.into());
        self
    }

    /// Why the agent failed, if this effect says it did ([`AgentEffect::failed`]).
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// The failure message as the engine records it: the effect's own message, plus how many
    /// of its proposals were discarded.
    pub(crate) fn failure_message(&self) -> Option<String> {
        let message = self.failure.as_deref()?;
        Some(match self.proposals.len() {
            0 => message.to_owned(),
            discarded => {
                format!("{message} ({discarded} proposals of the failed effect were discarded)")
            }
        })
    }

    pub(crate) fn into_parts(self) -> (Vec<Proposal<Draft>>, Vec<Observation>, TokenUsage) {
        (self.proposals, self.observations, self.usage)
    }
}

/// How one execution of an agent ended, as a driver reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentOutcome {
    /// The agent returned an effect (which may say it failed: [`AgentEffect::failed`]).
    Completed(AgentEffect),
    /// The agent panicked, timed out or otherwise failed; the message says how.
    Failed(String),
}

/// An effect is a completed outcome, even one that says the agent failed: the engine records
/// a failed effect's observations and usage before the failure ([`AgentEffect::failed`]).
impl From<AgentEffect> for AgentOutcome {
    fn from(effect: AgentEffect) -> AgentOutcome {
        AgentOutcome::Completed(effect)
    }
}

impl AgentOutcome {
    /// The outcome of an `execute` that panicked with `payload` (as caught by
    /// `catch_unwind`), so every driver records panics the same way.
    pub fn panicked(payload: &(dyn std::any::Any + Send)) -> AgentOutcome {
        AgentOutcome::Failed(format!(
            "panicked in execute: {}",
            crate::agent::panic_message(payload)
        ))
    }
}
