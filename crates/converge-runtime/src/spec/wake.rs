//! When an agent that talks to the outside world runs: the rule shared by `command` and
//! `llm` agents.
//!
//! An agent with inputs runs when a key it reads has facts (the engine wakes it whenever one
//! gains a fact); one without inputs runs until it has produced a fact. Either way only while
//! its `when` condition holds — or cannot be evaluated, so that `execute` records why.

use std::sync::Arc;

use converge_core::{Context, ContextKey};

use super::expr::{Bindings, Cel, Expression};
use super::view::facts_view;

/// An agent's inputs, outputs and condition, as its spec declares them.
#[derive(Clone)]
pub(crate) struct Wake {
    pub(crate) name: Arc<str>,
    pub(crate) reads: Vec<ContextKey>,
    pub(crate) writes: Vec<ContextKey>,
    pub(crate) when: Option<Expression>,
    pub(crate) cel: Cel,
}

impl Wake {
    /// Whether the agent should run on `ctx`.
    pub(crate) fn accepts(&self, ctx: &Context) -> bool {
        let ready = if self.reads.is_empty() {
            !self.has_produced(ctx)
        } else {
            self.reads.iter().any(|key| ctx.has(*key))
        };
        ready && self.condition(ctx).unwrap_or(true)
    }

    /// Whether `when` holds on `ctx` (true without one); `Err` says why it cannot be told.
    pub(crate) fn condition(&self, ctx: &Context) -> Result<bool, String> {
        let Some(when) = &self.when else {
            return Ok(true);
        };
        let facts = facts_view(ctx, self.reads.iter().copied());
        let bindings = Bindings::new(&self.cel, &[("facts", &facts)])?;
        when.holds(&bindings, &[]).map_err(|e| format!("when: {e}"))
    }

    fn has_produced(&self, ctx: &Context) -> bool {
        self.writes.iter().any(|key| {
            ctx.get(*key)
                .any(|fact| fact.record().agent_name() == &*self.name)
        })
    }
}
