//! The `latency` scenario: I/O-bound async agents under the concurrent driver.
//!
//! Each agent sleeps 50 ms on a real timer (standing in for a model or tool call) and proposes
//! one signal. Layer `l` accepts once `Signals` holds `l × N` facts, so the run takes exactly
//! [`LAYERS`] cycles; with every agent of a layer in flight at once, the ideal wall time is
//! `LAYERS × 50 ms`.

use std::time::{Duration, Instant};

use converge_core::{
    AgentEffect, AuthorityScope, Context, ContextKey, ConvergeResult, Engine, Proposal,
};
use converge_runtime::{AgentFuture, AsyncAgent, DriverConfig, RunId, Runtime, SqliteJournal};

use crate::BenchError;

/// Layers, and so cycles, of the scenario.
pub(crate) const LAYERS: usize = 8;

/// Simulated I/O time of every agent.
const IO_MS: u64 = 50;

struct IoAgent {
    name: String,
    id: String,
    index: usize,
    threshold: usize,
    dependencies: &'static [ContextKey],
}

impl AsyncAgent for IoAgent {
    fn name(&self) -> &str {
        &self.name
    }

    fn dependencies(&self) -> &[ContextKey] {
        self.dependencies
    }

    fn requested_scope(&self) -> AuthorityScope {
        AuthorityScope::keys([ContextKey::Signals])
    }

    fn accepts(&self, ctx: &Context) -> bool {
        ctx.count(ContextKey::Signals) >= self.threshold
            && !ctx.contains(ContextKey::Signals, &self.id)
    }

    fn execute<'a>(&'a self, _ctx: &'a Context) -> AgentFuture<'a> {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(IO_MS)).await;
            AgentEffect::empty().with_proposal(Proposal::new(
                ContextKey::Signals,
                self.id.clone(),
                self.index,
            ))
        })
    }
}

/// Registers `LAYERS × n` agents on `engine`'s runtime and times the concurrent run.
pub(crate) fn run(engine: Engine, n: usize) -> Result<(ConvergeResult, Duration), BenchError> {
    let mut runtime = runtime(engine, n);
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(BenchError::Runtime)?;
    let start = Instant::now();
    let result = tokio.block_on(runtime.run(Context::new()));
    let elapsed = start.elapsed();
    Ok((result?, elapsed))
}

/// What the journaled latency run measured.
pub(crate) struct Journaled {
    pub(crate) result: ConvergeResult,
    pub(crate) elapsed: Duration,
    pub(crate) bytes: u64,
}

/// The same run, durable: every agent's outcome is committed as it finishes (together with
/// those finishing at about the same time), every cycle after its batch, to a SQLite journal
/// in a fresh directory (removed afterwards).
pub(crate) fn run_journaled(engine: Engine, n: usize) -> Result<Journaled, BenchError> {
    let dir = crate::journal::fresh_dir("latency")?;
    let outcome = (|| {
        let path = dir.join("journal.db");
        let durable = |error: &dyn std::fmt::Display| BenchError::Durable(error.to_string());
        let mut journal = SqliteJournal::open(&path).map_err(|error| durable(&error))?;
        let run_id = RunId::new("latency").map_err(|error| durable(&error))?;
        let mut runtime = runtime(engine, n);
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(BenchError::Runtime)?;
        let start = Instant::now();
        let result = tokio
            .block_on(runtime.run_durable(&mut journal, &run_id))
            .map_err(|error| durable(&error))?;
        let elapsed = start.elapsed();
        drop(journal);
        Ok(Journaled {
            result,
            elapsed,
            bytes: crate::journal::file_bytes(&path),
        })
    })();
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

/// `engine`'s runtime with `LAYERS × n` I/O-bound agents, `n` in flight at once.
fn runtime(engine: Engine, n: usize) -> Runtime {
    let config = DriverConfig {
        concurrency_max: n,
        ..DriverConfig::default()
    };
    let mut runtime = Runtime::new(engine).with_config(config);
    for layer in 0..LAYERS {
        for j in 0..n {
            let index = layer * n + j;
            runtime.register_async(IoAgent {
                name: format!("io-{index}"),
                id: format!("s{index}"),
                index,
                threshold: layer * n,
                dependencies: if layer == 0 {
                    &[]
                } else {
                    &[ContextKey::Signals]
                },
            });
        }
    }
    runtime
}
