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
        self.proposals.push(proposal);
        self
    }

    /// Adds a proposal.
    pub fn propose(&mut self, proposal: Proposal<Draft>) {
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
    /// cannot be done (a template that does not render, a program that crashes). It is
    /// recorded exactly like a panicking agent — an `agent_failed` event, quarantine or a stop
    /// per the engine's failure policy — without a panic. Anything proposed or observed on a
    /// failed effect is not merged; the failure message says how much was discarded.
    ///
    /// ```
    /// use converge_core::{AgentEffect, AgentOutcome};
    ///
    /// let effect = AgentEffect::failed("the scorer exited with status 2");
    /// assert_eq!(effect.failure(), Some("the scorer exited with status 2"));
    /// assert_eq!(
    ///     AgentOutcome::from(effect),
    ///     AgentOutcome::Failed("the scorer exited with status 2".to_owned())
    /// );
    /// ```
    pub fn failed(message: impl Into<String>) -> AgentEffect {
        AgentEffect {
            failure: Some(message.into()),
            ..AgentEffect::default()
        }
    }

    /// Why the agent failed, if this effect says it did ([`AgentEffect::failed`]).
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    pub(crate) fn into_parts(self) -> (Vec<Proposal<Draft>>, Vec<Observation>, TokenUsage) {
        (self.proposals, self.observations, self.usage)
    }
}

/// How one execution of an agent ended, as a driver reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentOutcome {
    /// The agent returned an effect.
    Completed(AgentEffect),
    /// The agent panicked, timed out or otherwise failed; the message says how.
    Failed(String),
}

/// An effect is a completed outcome, unless it says the agent failed.
impl From<AgentEffect> for AgentOutcome {
    fn from(effect: AgentEffect) -> AgentOutcome {
        let Some(message) = effect.failure else {
            return AgentOutcome::Completed(effect);
        };
        let (proposals, observations) = (effect.proposals.len(), effect.observations.len());
        if proposals + observations == 0 {
            return AgentOutcome::Failed(message);
        }
        AgentOutcome::Failed(format!(
            "{message} ({proposals} proposals and {observations} observations of the failed \
             effect were discarded)"
        ))
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
