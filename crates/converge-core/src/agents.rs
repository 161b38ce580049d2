//! Built-in agents: the smallest useful building blocks, and the Quick Start's cast.
//!
//! They are ordinary [`Agent`]s with no privileges: they ask for one key and go through the
//! same gate as every other agent.

use serde_json::Value;

use crate::agent::Agent;
use crate::authority::AuthorityScope;
use crate::context::Context;
use crate::effect::AgentEffect;
use crate::key::ContextKey;
use crate::proposal::Proposal;

/// Proposes one fact into [`ContextKey::Seeds`] once, when it is absent.
///
/// ```
/// use converge_core::{Agent, Context};
/// use converge_core::agents::SeedAgent;
///
/// let seed = SeedAgent::new("seed-1", "initial data");
/// assert!(seed.accepts(&Context::new()));
/// ```
#[derive(Debug, Clone)]
pub struct SeedAgent {
    id: String,
    content: Value,
}

impl SeedAgent {
    /// A seed agent named `id` that proposes `content` as fact `id`.
    pub fn new(id: impl Into<String>, content: impl Into<Value>) -> SeedAgent {
        SeedAgent {
            id: id.into(),
            content: content.into(),
        }
    }
}

impl Agent for SeedAgent {
    fn name(&self) -> &str {
        &self.id
    }

    fn dependencies(&self) -> &[ContextKey] {
        &[]
    }

    fn requested_scope(&self) -> AuthorityScope {
        AuthorityScope::keys([ContextKey::Seeds])
    }

    fn accepts(&self, ctx: &Context) -> bool {
        !ctx.contains(ContextKey::Seeds, &self.id)
    }

    fn execute(&self, _ctx: &Context) -> AgentEffect {
        AgentEffect::empty().with_proposal(Proposal::new(
            ContextKey::Seeds,
            self.id.clone(),
            self.content.clone(),
        ))
    }
}

/// Once any seed exists, proposes one fact into [`ContextKey::Hypotheses`], derived from the
/// first seed.
#[derive(Debug, Clone)]
pub struct ReactOnceAgent {
    id: String,
    content: Value,
}

impl ReactOnceAgent {
    /// A reacting agent named `id` that proposes `content` as hypothesis `id`.
    pub fn new(id: impl Into<String>, content: impl Into<Value>) -> ReactOnceAgent {
        ReactOnceAgent {
            id: id.into(),
            content: content.into(),
        }
    }
}

impl Agent for ReactOnceAgent {
    fn name(&self) -> &str {
        &self.id
    }

    fn dependencies(&self) -> &[ContextKey] {
        &[ContextKey::Seeds]
    }

    fn requested_scope(&self) -> AuthorityScope {
        AuthorityScope::keys([ContextKey::Hypotheses])
    }

    fn accepts(&self, ctx: &Context) -> bool {
        ctx.has(ContextKey::Seeds) && !ctx.contains(ContextKey::Hypotheses, &self.id)
    }

    fn execute(&self, ctx: &Context) -> AgentEffect {
        let mut proposal = Proposal::new(
            ContextKey::Hypotheses,
            self.id.clone(),
            self.content.clone(),
        );
        if let Some(seed) = ctx.get(ContextKey::Seeds).next() {
            proposal = proposal.derived_from(ContextKey::Seeds, seed.id().as_str());
        }
        AgentEffect::empty().with_proposal(proposal)
    }
}
