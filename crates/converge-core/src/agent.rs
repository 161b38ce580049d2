//! The agent contract.
//!
//! Agents read the context and return an [`AgentEffect`]. They never call each other, never
//! write the context, and never decide when the run ends. An agent asks for the keys it may
//! write; the engine grants them at registration, explicitly and visibly.

use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::authority::AuthorityScope;
use crate::context::Context;
use crate::effect::{AgentEffect, AgentOutcome};
use crate::key::ContextKey;

/// A capability that observes the context and suggests facts.
///
/// ```
/// use converge_core::{Agent, AgentEffect, AuthorityScope, Context, ContextKey, Proposal};
///
/// struct Echo;
///
/// impl Agent for Echo {
///     fn name(&self) -> &str { "echo" }
///     fn dependencies(&self) -> &[ContextKey] { &[ContextKey::Seeds] }
///     fn requested_scope(&self) -> AuthorityScope { AuthorityScope::keys([ContextKey::Signals]) }
///     fn accepts(&self, ctx: &Context) -> bool {
///         ctx.has(ContextKey::Seeds) && !ctx.contains(ContextKey::Signals, "echo")
///     }
///     fn execute(&self, ctx: &Context) -> AgentEffect {
///         let seeds = ctx.count(ContextKey::Seeds);
///         AgentEffect::empty().with_proposal(Proposal::new(ContextKey::Signals, "echo", seeds))
///     }
/// }
/// ```
pub trait Agent: Send + Sync {
    /// A name unique within the engine; events, journals and approvals refer to it.
    fn name(&self) -> &str;

    /// The keys whose new facts wake this agent. An agent with no dependencies is considered
    /// on the first cycle and after every cycle that promoted anything. `accepts` must read
    /// only these keys (or the agent must declare none).
    fn dependencies(&self) -> &[ContextKey];

    /// The keys this agent asks to write. [`crate::Engine::register`] grants exactly these;
    /// [`crate::Engine::register_with_scope`] lets the operator grant another scope instead.
    fn requested_scope(&self) -> AuthorityScope;

    /// Whether the agent wants to run now. Pure, deterministic and fast.
    fn accepts(&self, ctx: &Context) -> bool;

    /// Reads the context and returns proposals. May call out (models, tools) in drivers that
    /// allow it; everything obtained from outside belongs in the effect's observations.
    fn execute(&self, ctx: &Context) -> AgentEffect;
}

/// Executes an agent, turning a panic or a [failed effect](AgentEffect::failed) into
/// [`AgentOutcome::Failed`] so it never unwinds through a driver.
pub fn execute_isolated(agent: &dyn Agent, ctx: &Context) -> AgentOutcome {
    match catch_unwind(AssertUnwindSafe(|| agent.execute(ctx))) {
        Ok(effect) => AgentOutcome::from(effect),
        Err(panic) => AgentOutcome::panicked(&*panic),
    }
}

/// The text of a panic payload.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "non-text panic payload".to_owned()
    }
}
