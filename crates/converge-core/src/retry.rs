//! Retrying failed agents: a human decision that continues a run its failures stopped.
//!
//! An agent that fails is quarantined (or, under [`crate::FailurePolicy::StopRun`], stops the
//! run), so a run whose model server was down reaches its fixed point without it. Once the
//! cause is fixed, a [`Retry`] names the failed agents to run again, who decided it and why.
//! It is an input like a [`crate::Decision`]: the core applies it to the stopped result
//! ([`crate::Engine::retry_run`]), lifts exactly those agents' quarantine, emits
//! `run_retried`, and continues cycles from the stopped state. Anything the core cannot honour
//! is refused with a [`RetryRefusal`] before anything changes.
//!
//! Retryable stops are the ones failed agents can explain: the fixed point (with or without
//! proposals awaiting approval), an agent failure under the stop-run policy, and an
//! acceptance invariant that failed at the fixed point. A budget that ran out, a halt (a
//! cancellation, the wall-clock budget) and a semantic or structural invariant are final:
//! retrying cannot change why those runs stopped.

use std::fmt;

use serde::Serialize;

use crate::authority::{Actor, ActorKind};
use crate::budget::Exhausted;
use crate::engine::Setup;
use crate::id::AgentId;
use crate::invariant::InvariantClass;
use crate::result::ConvergeResult;
use crate::result::StopReason;

/// A human's decision to run failed agents again.
///
/// Agents are named by their registered names; the core resolves them. Names are kept sorted
/// and without repeats, so two retries of the same agents are the same input.
///
/// ```
/// use converge_core::{Actor, Retry};
///
/// let retry = Retry::new(
///     Actor::human("alice").unwrap(),
///     ["score", "fetch", "score"],
///     "the model server is back",
/// );
/// assert_eq!(retry.agents(), ["fetch", "score"]);
/// assert_eq!(retry.reason(), "the model server is back");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Retry {
    actor: Actor,
    agents: Vec<String>,
    reason: String,
}

impl Retry {
    /// Retries the agents named `agents`, decided by `actor` for `reason`.
    pub fn new<S: Into<String>>(
        actor: Actor,
        agents: impl IntoIterator<Item = S>,
        reason: impl Into<String>,
    ) -> Retry {
        let mut agents: Vec<String> = agents.into_iter().map(Into::into).collect();
        agents.sort();
        agents.dedup();
        Retry {
            actor,
            agents,
            reason: reason.into(),
        }
    }

    /// Who decided.
    pub fn actor(&self) -> &Actor {
        &self.actor
    }

    /// The agents to run again, by name, sorted.
    pub fn agents(&self) -> &[String] {
        &self.agents
    }

    /// Why.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// Why a retry was refused. Nothing changed; the result is handed back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "refusal", rename_all = "snake_case")]
#[non_exhaustive]
pub enum RetryRefusal {
    /// Only a human may decide to retry.
    #[error("only a human may retry agents; {actor} is not one")]
    NotHuman {
        /// Who asked.
        actor: String,
    },
    /// The retry names no agent.
    #[error("name at least one agent to retry (failed: {})", list(failed))]
    NoAgents {
        /// The agents that failed and can be retried.
        failed: Vec<String>,
    },
    /// The run stopped for a reason a retry cannot change.
    #[error("the run {stop}; retrying failed agents cannot change that")]
    FinalStop {
        /// Why it stopped, in words.
        stop: String,
    },
    /// The run stopped without any failed agent.
    #[error("no agent of the run failed; there is nothing to retry")]
    NothingFailed,
    /// No agent of the run has this name.
    #[error("the run has no agent named {name:?} (failed: {})", list(failed))]
    UnknownAgent {
        /// The name given.
        name: String,
        /// The agents that failed and can be retried.
        failed: Vec<String>,
    },
    /// The agent exists but has not failed (or was already retried).
    #[error("agent {name:?} has not failed (failed: {})", list(failed))]
    NotFailed {
        /// The agent.
        name: String,
        /// The agents that failed and can be retried.
        failed: Vec<String>,
    },
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        return "none".to_owned();
    }
    names.join(", ")
}

/// Checks `retry` against a stopped result: a human, a retryable stop, and agents that
/// failed. On refusal the result is handed back unchanged.
pub(crate) fn check(
    setup: &Setup,
    result: ConvergeResult,
    retry: &Retry,
) -> Result<(ConvergeResult, Vec<AgentId>), (ConvergeResult, RetryRefusal)> {
    let failed: Vec<String> = result
        .failed
        .iter()
        .map(|agent| setup.agents[agent.index()].name.to_string())
        .collect();
    let refusal = if retry.actor().kind() != ActorKind::Human {
        Some(RetryRefusal::NotHuman {
            actor: retry.actor().to_string(),
        })
    } else if let Some(stop) = final_stop(&result.stop_reason) {
        Some(RetryRefusal::FinalStop { stop })
    } else if failed.is_empty() {
        Some(RetryRefusal::NothingFailed)
    } else if retry.agents().is_empty() {
        Some(RetryRefusal::NoAgents {
            failed: failed.clone(),
        })
    } else {
        None
    };
    if let Some(refusal) = refusal {
        return Err((result, refusal));
    }
    let mut agents = Vec::with_capacity(retry.agents().len());
    for name in retry.agents() {
        let found = setup.agents.iter().position(|agent| *agent.name == **name);
        let refusal = match found {
            None => RetryRefusal::UnknownAgent {
                name: name.clone(),
                failed,
            },
            Some(_) if !failed.contains(name) => RetryRefusal::NotFailed {
                name: name.clone(),
                failed,
            },
            Some(index) => {
                agents.push(AgentId(index as u32));
                continue;
            }
        };
        return Err((result, refusal));
    }
    agents.sort();
    Ok((result, agents))
}

/// Why a run that stopped for `reason` cannot be retried, or `None` when it can (provided an
/// agent failed).
pub(crate) fn final_stop(reason: &StopReason) -> Option<String> {
    let acceptance = |class: &InvariantClass| *class == InvariantClass::Acceptance;
    match reason {
        StopReason::Converged
        | StopReason::AwaitingApproval { .. }
        | StopReason::AgentFailed { .. } => None,
        StopReason::InvariantViolated { class, .. }
        | StopReason::InvariantUnevaluable { class, .. }
            if acceptance(class) =>
        {
            None
        }
        StopReason::InvariantViolated { invariant, .. } => Some(format!(
            "stopped because invariant {invariant} was violated"
        )),
        StopReason::InvariantUnevaluable { invariant, .. } => Some(format!(
            "stopped because invariant {invariant} could not be evaluated"
        )),
        StopReason::BudgetExhausted { exhausted } => Some(format!(
            "stopped because its {} budget ran out",
            budget_name(exhausted)
        )),
        StopReason::Halted { reason } => Some(format!("was halted ({reason})")),
    }
}

fn budget_name(exhausted: &Exhausted) -> &'static str {
    match exhausted {
        Exhausted::Cycles { .. } => "cycle",
        Exhausted::Facts { .. } => "fact",
        Exhausted::Tokens { .. } => "token",
        Exhausted::Time { .. } => "time",
    }
}

impl fmt::Display for Retry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} retried {}: {}",
            self.actor,
            self.agents.join(", "),
            self.reason
        )
    }
}
