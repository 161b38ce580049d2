//! The `rule` agent: when a CEL condition holds, propose a fact built from templates.
//!
//! A rule sees the facts of the keys it reads (see [`super::facts_view`]) as `facts`. With
//! `for_each: <key>` it is evaluated once per fact of that key, bound as `fact`, and each
//! proposal records that it was derived from that fact. A rule only wants to run while some
//! proposal it would make names a fact that does not exist yet, so a run converges: it fires
//! once per distinct fact id. A condition or template that fails to evaluate is the agent's
//! recorded failure. Like a command, a rule that reads keys waits until one of them holds a
//! fact. Rules are pure functions of the context, so they are synchronous agents.

use std::sync::Arc;

use converge_core::{Agent, AgentEffect, AuthorityScope, Context, ContextKey, Draft, Proposal};
use serde_json::Value;

use super::expr::{Bindings, Cel, Expression};
use super::template::{ContentTemplate, Templates, template_value, variables};
use super::view::{fact_json, facts_read, facts_view};

/// What a rule proposes.
#[derive(Clone)]
pub(crate) struct Propose {
    pub(crate) key: ContextKey,
    pub(crate) id: ContentTemplate,
    pub(crate) content: ContentTemplate,
    pub(crate) confidence: f64,
}

/// A rule, ready to register.
#[derive(Clone)]
pub(crate) struct RuleAgent {
    pub(crate) name: Arc<str>,
    pub(crate) reads: Vec<ContextKey>,
    pub(crate) writes: Vec<ContextKey>,
    pub(crate) for_each: Option<ContextKey>,
    pub(crate) when: Option<Expression>,
    pub(crate) propose: Propose,
    pub(crate) templates: Arc<Templates>,
    pub(crate) cel: Cel,
}

impl RuleAgent {
    /// Every proposal the rule would make now, in fact order.
    fn candidates(&self, ctx: &Context) -> Result<Vec<Proposal<Draft>>, String> {
        let facts = facts_view(ctx, self.reads.iter().copied());
        let bindings = Bindings::new(&self.cel, &[("facts", &facts)])?;
        let facts_value = template_value(&facts);
        let Some(key) = self.for_each else {
            return Ok(self
                .candidate(&bindings, &facts_value, None)?
                .into_iter()
                .collect());
        };
        let mut proposals = Vec::new();
        for fact in ctx.get(key) {
            let bound = Some((key, fact.id().as_str(), fact_json(fact)));
            if let Some(proposal) = self.candidate(&bindings, &facts_value, bound)? {
                proposals.push(proposal);
            }
        }
        Ok(proposals)
    }

    /// The proposal for one binding, if the condition holds.
    fn candidate(
        &self,
        bindings: &Bindings,
        facts: &minijinja::Value,
        fact: Option<(ContextKey, &str, Value)>,
    ) -> Result<Option<Proposal<Draft>>, String> {
        let extra: Vec<(&str, &Value)> = fact.iter().map(|(_, _, json)| ("fact", json)).collect();
        if let Some(when) = &self.when {
            let holds = when
                .holds(bindings, &extra)
                .map_err(|e| format!("when: {e}"))?;
            if !holds {
                return Ok(None);
            }
        }
        let fact_value = fact.as_ref().map(|(_, _, json)| template_value(json));
        let mut pairs = vec![("facts", facts)];
        if let Some(value) = &fact_value {
            pairs.push(("fact", value));
        }
        let variables = variables(&pairs);
        let propose = &self.propose;
        let id = match propose.id.render(&self.templates, &variables)? {
            Value::String(id) => id,
            other => other.to_string(),
        };
        let content = propose.content.render(&self.templates, &variables)?;
        let mut proposal =
            Proposal::new(propose.key, id, content).with_confidence(propose.confidence);
        if let Some((key, id, _)) = fact {
            proposal = proposal.derived_from(key, id);
        }
        Ok(Some(proposal))
    }

    fn is_new(&self, ctx: &Context, proposal: &Proposal<Draft>) -> bool {
        !ctx.contains(self.propose.key, proposal.id())
    }
}

impl Agent for RuleAgent {
    fn name(&self) -> &str {
        &self.name
    }

    fn dependencies(&self) -> &[ContextKey] {
        &self.reads
    }

    fn requested_scope(&self) -> AuthorityScope {
        AuthorityScope::keys(self.writes.iter().copied())
    }

    /// True once a key the rule reads holds a fact (at once for a rule that reads nothing),
    /// while some proposal would name a new fact — or when the rule cannot be evaluated, so
    /// that `execute` records the failure.
    fn accepts(&self, ctx: &Context) -> bool {
        let has_input = self.reads.is_empty() || self.reads.iter().any(|key| ctx.has(*key));
        if !has_input {
            return false;
        }
        match self.candidates(ctx) {
            Ok(proposals) => proposals.iter().any(|p| self.is_new(ctx, p)),
            Err(_) => true,
        }
    }

    fn execute(&self, ctx: &Context) -> AgentEffect {
        match self.candidates(ctx) {
            Ok(proposals) => {
                // A rule over whole keys read every fact in them: each is a derivation. (A
                // `for_each` proposal is derived from its own fact.)
                let read = match self.for_each {
                    None => facts_read(ctx, self.reads.iter().copied()),
                    Some(_) => Vec::new(),
                };
                let mut effect = AgentEffect::empty();
                for proposal in proposals.into_iter().filter(|p| self.is_new(ctx, p)) {
                    effect.propose(read.iter().fold(proposal, |proposal, (key, id)| {
                        proposal.derived_from(*key, id.clone())
                    }));
                }
                effect
            }
            Err(error) => AgentEffect::failed(format!("rule {:?}: {error}", &*self.name)),
        }
    }
}
