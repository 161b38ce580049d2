//! Async agents: agents whose work waits on the outside world (models, tools, HTTP).
//!
//! An [`AsyncAgent`] has the same contract as the core's `Agent` — it reads the context and
//! returns an effect, never writes — but its `execute` is a future, so the async driver can
//! run many of them concurrently within one cycle. The core never sees the future: it sees a
//! registered stand-in with the same name, dependencies, scope and `accepts`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use converge_core::{Agent, AgentEffect, AuthorityScope, Context, ContextKey};

/// The future an async agent's execution returns; it may borrow the agent and the context.
pub type AgentFuture<'a> = Pin<Box<dyn Future<Output = AgentEffect> + Send + 'a>>;

/// An agent whose execution is asynchronous.
///
/// ```
/// use converge_core::{AgentEffect, AuthorityScope, Context, ContextKey, Proposal};
/// use converge_runtime::{AgentFuture, AsyncAgent};
///
/// struct Lookup;
///
/// impl AsyncAgent for Lookup {
///     fn name(&self) -> &str { "lookup" }
///     fn dependencies(&self) -> &[ContextKey] { &[] }
///     fn requested_scope(&self) -> AuthorityScope { AuthorityScope::keys([ContextKey::Signals]) }
///     fn accepts(&self, ctx: &Context) -> bool { !ctx.has(ContextKey::Signals) }
///     fn execute<'a>(&'a self, _ctx: &'a Context) -> AgentFuture<'a> {
///         Box::pin(async {
///             // await an HTTP call, a model, a tool…
///             AgentEffect::empty().with_proposal(Proposal::new(ContextKey::Signals, "s1", "up"))
///         })
///     }
/// }
/// ```
pub trait AsyncAgent: Send + Sync {
    /// A name unique within the engine.
    fn name(&self) -> &str;

    /// The keys whose new facts wake this agent (see the core's `Agent::dependencies`).
    fn dependencies(&self) -> &[ContextKey];

    /// The keys this agent asks to write.
    fn requested_scope(&self) -> AuthorityScope;

    /// Whether the agent wants to run now. Pure, deterministic and fast.
    fn accepts(&self, ctx: &Context) -> bool;

    /// Reads the context and produces an effect. Everything obtained from outside belongs in
    /// the effect's observations.
    fn execute<'a>(&'a self, ctx: &'a Context) -> AgentFuture<'a>;
}

/// What the core registers for an async agent: everything but a synchronous `execute`.
pub(crate) struct AsyncStandIn {
    name: String,
    dependencies: Vec<ContextKey>,
    scope: AuthorityScope,
    agent: Arc<dyn AsyncAgent>,
}

impl AsyncStandIn {
    pub(crate) fn new(agent: Arc<dyn AsyncAgent>) -> AsyncStandIn {
        AsyncStandIn {
            name: agent.name().to_owned(),
            dependencies: agent.dependencies().to_vec(),
            scope: agent.requested_scope(),
            agent,
        }
    }
}

impl Agent for AsyncStandIn {
    fn name(&self) -> &str {
        &self.name
    }

    fn dependencies(&self) -> &[ContextKey] {
        &self.dependencies
    }

    fn requested_scope(&self) -> AuthorityScope {
        self.scope.clone()
    }

    fn accepts(&self, ctx: &Context) -> bool {
        self.agent.accepts(ctx)
    }

    /// Only reached when a synchronous driver runs an engine holding async agents: a misuse,
    /// reported as this agent's failure (the core isolates the panic and records it).
    fn execute(&self, _ctx: &Context) -> AgentEffect {
        panic!(
            "async agent {:?} can only be executed by the async driver",
            self.name
        )
    }
}
