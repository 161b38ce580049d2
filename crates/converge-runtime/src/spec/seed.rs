//! The `seed` agent: facts written in the spec, proposed through the gate like any other.
//!
//! Top-level `seeds:` become one such agent named `seeds`; a `kind: seed` agent carries its
//! own. A seed agent proposes, in spec order, each of its facts that does not exist yet, so
//! it runs until all of them are facts (or refused).

use std::sync::Arc;

use converge_core::{Agent, AgentEffect, AuthorityScope, Context, ContextKey, Proposal};
use serde_json::Value;

/// One fact written in the spec, already checked (valid id, confidence and content).
#[derive(Debug, Clone)]
pub(crate) struct SeedFact {
    pub(crate) key: ContextKey,
    pub(crate) id: String,
    pub(crate) content: Value,
    pub(crate) confidence: f64,
}

/// A seed agent, ready to register.
#[derive(Clone)]
pub(crate) struct SeedFactsAgent {
    pub(crate) name: Arc<str>,
    pub(crate) writes: Vec<ContextKey>,
    pub(crate) facts: Arc<[SeedFact]>,
}

impl SeedFactsAgent {
    fn missing<'a>(&'a self, ctx: &'a Context) -> impl Iterator<Item = &'a SeedFact> + 'a {
        self.facts
            .iter()
            .filter(|fact| !ctx.contains(fact.key, &fact.id))
    }
}

impl Agent for SeedFactsAgent {
    fn name(&self) -> &str {
        &self.name
    }

    fn dependencies(&self) -> &[ContextKey] {
        &[]
    }

    fn requested_scope(&self) -> AuthorityScope {
        AuthorityScope::keys(self.writes.iter().copied())
    }

    fn accepts(&self, ctx: &Context) -> bool {
        self.missing(ctx).next().is_some()
    }

    fn execute(&self, ctx: &Context) -> AgentEffect {
        let mut effect = AgentEffect::empty();
        for fact in self.missing(ctx) {
            let proposal = Proposal::new(fact.key, fact.id.clone(), fact.content.clone())
                .with_confidence(fact.confidence);
            effect.propose(proposal);
        }
        effect
    }
}
