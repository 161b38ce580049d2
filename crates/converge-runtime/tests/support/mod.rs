//! What the durable-run test files share: a journal in a temporary directory, a run id, a
//! blocking driver, and the planner agent that waits for six signals.

use converge_core::{Agent, AgentEffect, AuthorityScope, Context, ContextKey, Proposal};
use converge_runtime::{RunId, SqliteJournal};
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
