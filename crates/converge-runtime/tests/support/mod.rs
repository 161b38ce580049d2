//! What the runtime's test files share: a journal in a temporary directory, a run id, a
//! blocking driver, the planner agent that waits for six signals, and the llm stand-in that
//! only renders its prompt (for specs run without a model).

#![allow(dead_code)] // each test file uses what it needs

use converge_core::{Agent, AgentEffect, AuthorityScope, Context, ContextKey, Proposal};
use converge_runtime::spec::{LlmAgentSpec, LlmFactory};
use converge_runtime::{AgentFuture, AsyncAgent, RunId, SqliteJournal};
use tempfile::TempDir;

/// Runs a future on a fresh single-threaded runtime.
pub(crate) fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
        .block_on(future)
}

/// The run every test drives.
pub(crate) fn run_id() -> RunId {
    RunId::new("job-1").unwrap()
}

/// The journal file in `dir`.
pub(crate) fn journal_at(dir: &TempDir) -> SqliteJournal {
    SqliteJournal::open(dir.path().join("journal.db")).unwrap()
}

/// Once six signals exist, proposes a strategy.
pub(crate) struct Planner;

impl Agent for Planner {
    fn name(&self) -> &str {
        "planner"
    }

    fn dependencies(&self) -> &[ContextKey] {
        &[ContextKey::Signals]
    }

    fn requested_scope(&self) -> AuthorityScope {
        AuthorityScope::keys([ContextKey::Strategies])
    }

    fn accepts(&self, ctx: &Context) -> bool {
        ctx.count(ContextKey::Signals) == 6 && !ctx.has(ContextKey::Strategies)
    }

    fn execute(&self, _ctx: &Context) -> AgentEffect {
        AgentEffect::empty().with_proposal(Proposal::new(ContextKey::Strategies, "go", "expand"))
    }
}

/// A model agent that renders its prompt and fails with what rendering said.
pub(crate) struct Renderer(pub(crate) LlmAgentSpec);

impl AsyncAgent for Renderer {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn dependencies(&self) -> &[ContextKey] {
        self.0.reads()
    }

    fn requested_scope(&self) -> AuthorityScope {
        AuthorityScope::keys(self.0.writes().iter().copied())
    }

    fn accepts(&self, ctx: &Context) -> bool {
        self.0.accepts(ctx)
    }

    fn execute<'a>(&'a self, ctx: &'a Context) -> AgentFuture<'a> {
        Box::pin(async move {
            match self.0.render(ctx) {
                Ok(_) => AgentEffect::failed("the prompt rendered"),
                Err(error) => AgentEffect::failed(error),
            }
        })
    }
}

/// The `LlmFactory` whose agents are [`Renderer`]s: runs llm agents with no model.
pub(crate) struct Rendering;

impl LlmFactory for Rendering {
    fn create(&self, spec: &LlmAgentSpec) -> Result<Box<dyn AsyncAgent>, String> {
        Ok(Box::new(Renderer(spec.clone())))
    }
}
