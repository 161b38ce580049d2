//! The root intent: a job's objective, frame, success criteria and budget, as plain data.
//!
//! A [`RootIntent`] is input, not authority: it is deserializable, and it acts only through an
//! ordinary agent (which proposes the objective and constraints through the gate) and through
//! acceptance invariants (its success criteria).

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::agent::Agent;
use crate::authority::AuthorityScope;
use crate::budget::Budget;
use crate::context::Context;
use crate::effect::AgentEffect;
use crate::id::FactId;
use crate::invariant::{Invariant, InvariantClass, InvariantFailure};
use crate::key::ContextKey;
use crate::proposal::Proposal;

/// What a job is for.
///
/// ```
/// use converge_core::RootIntent;
///
/// let intent: RootIntent = serde_json::from_str(r#"{
///     "objective": "rank expansion markets",
///     "frame": { "scope": ["EU"], "constraints": ["no new headcount"] },
///     "success_criteria": [{ "kind": "min_facts", "key": "strategies", "count": 2 }]
/// }"#).unwrap();
/// assert_eq!(intent.frame.constraints.len(), 1);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootIntent {
    /// The objective, in words.
    pub objective: String,
    /// Scope and constraints.
    #[serde(default)]
    pub frame: Frame,
    /// What must hold at the fixed point for the run to have succeeded.
    #[serde(default)]
    pub success_criteria: Vec<SuccessCriterion>,
    /// Budgets; the engine's defaults when absent.
    #[serde(default)]
    pub budget: Option<Budget>,
}

/// The boundaries of a job.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Frame {
    /// What is in scope, in words.
    #[serde(default)]
    pub scope: Vec<String>,
    /// Rules the outcome must respect, in words; each becomes a fact in `Constraints`.
    #[serde(default)]
    pub constraints: Vec<String>,
}

/// A condition on the final context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SuccessCriterion {
    /// The key holds at least one fact.
    KeyNotEmpty {
        /// The key.
        key: ContextKey,
    },
    /// The key holds at least `count` facts.
    MinFacts {
        /// The key.
        key: ContextKey,
        /// The minimum.
        count: usize,
    },
    /// A specific fact exists.
    FactPresent {
        /// The key.
        key: ContextKey,
        /// The fact id.
        id: FactId,
    },
}

impl SuccessCriterion {
    fn describe(&self) -> String {
        match self {
            SuccessCriterion::KeyNotEmpty { key } => format!("success: {key} not empty"),
            SuccessCriterion::MinFacts { key, count } => {
                format!("success: {key} has at least {count} facts")
            }
            SuccessCriterion::FactPresent { key, id } => format!("success: {key}/{id} present"),
        }
    }
}

/// A success criterion checked as an acceptance invariant.
pub(crate) struct CriterionInvariant {
    name: String,
    criterion: SuccessCriterion,
}

impl CriterionInvariant {
    pub(crate) fn new(criterion: SuccessCriterion) -> Self {
        CriterionInvariant {
            name: criterion.describe(),
            criterion,
        }
    }
}

impl Invariant for CriterionInvariant {
    fn name(&self) -> &str {
        &self.name
    }

    fn class(&self) -> InvariantClass {
        InvariantClass::Acceptance
    }

    fn check(&self, ctx: &Context) -> Result<(), InvariantFailure> {
        let (holds, found) = match &self.criterion {
            SuccessCriterion::KeyNotEmpty { key } => (ctx.has(*key), ctx.count(*key)),
            SuccessCriterion::MinFacts { key, count } => {
                (ctx.count(*key) >= *count, ctx.count(*key))
            }
            SuccessCriterion::FactPresent { key, id } => (
                ctx.contains(*key, id.as_str()),
                usize::from(ctx.contains(*key, id.as_str())),
            ),
        };
        if holds {
            Ok(())
        } else {
            Err(InvariantFailure::Violated(format!(
                "not met ({found} found)"
            )))
        }
    }
}

/// Proposes the intent's objective and scope into `Seeds` and its constraints into
/// `Constraints`, through the gate like any agent.
pub(crate) struct IntentAgent {
    intent: RootIntent,
}

impl IntentAgent {
    pub(crate) fn new(intent: RootIntent) -> Self {
        IntentAgent { intent }
    }

    fn proposals(&self) -> Vec<Proposal<crate::proposal::Draft>> {
        let frame = &self.intent.frame;
        let objective = json!({ "objective": self.intent.objective, "scope": frame.scope });
        let mut proposals = vec![Proposal::new(
            ContextKey::Seeds,
            "intent.objective",
            objective,
        )];
        for (index, constraint) in frame.constraints.iter().enumerate() {
            let id = format!("intent.constraint.{index}");
            proposals.push(Proposal::new(
                ContextKey::Constraints,
                id,
                constraint.as_str(),
            ));
        }
        proposals
    }
}

impl Agent for IntentAgent {
    fn name(&self) -> &str {
        "intent"
    }

    fn dependencies(&self) -> &[ContextKey] {
        &[]
    }

    fn requested_scope(&self) -> AuthorityScope {
        AuthorityScope::keys([ContextKey::Seeds, ContextKey::Constraints])
    }

    fn accepts(&self, ctx: &Context) -> bool {
        !ctx.contains(ContextKey::Seeds, "intent.objective")
    }

    fn execute(&self, _ctx: &Context) -> AgentEffect {
        let mut effect = AgentEffect::empty();
        for proposal in self.proposals() {
            effect.propose(proposal);
        }
        effect
    }
}
