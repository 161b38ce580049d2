//! Durable retries of failed agents: `retry_durable` commits the retry as a decisions step and
//! drives the run on; a fresh runtime re-derives it without executing anything; refusals —
//! a run another live process holds, an agent that did not fail — write nothing.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use converge_core::agents::SeedAgent;
use converge_core::{
    Actor, Agent, AgentEffect, AuthorityScope, Context, ContextKey, Engine, Proposal, Retry,
    RetryRefusal, StopReason,
};
use converge_runtime::{
    DurableError, Holder, Journal, JournalError, ReplayReport, Runtime, SqliteJournal, StepInput,
    Verification, wall_clock_ms,
};
use tempfile::TempDir;

use support::{block_on, journal_at, run_id};

/// Proposes `hypotheses/fetched` once its server is up; fails before.
struct Fetch {
    up: Arc<AtomicBool>,
    runs: Arc<AtomicUsize>,
}

impl Agent for Fetch {
    fn name(&self) -> &str {
        "fetch"
    }

    fn dependencies(&self) -> &[ContextKey] {
        &[ContextKey::Seeds]
    }

    fn requested_scope(&self) -> AuthorityScope {
        AuthorityScope::keys([ContextKey::Hypotheses])
    }

    fn accepts(&self, ctx: &Context) -> bool {
        ctx.has(ContextKey::Seeds) && !ctx.has(ContextKey::Hypotheses)
    }

    fn execute(&self, _: &Context) -> AgentEffect {
        self.runs.fetch_add(1, Ordering::SeqCst);
        if !self.up.load(Ordering::SeqCst) {
            return AgentEffect::failed("connection refused");
        }
        AgentEffect::empty().with_proposal(Proposal::new(ContextKey::Hypotheses, "fetched", "data"))
    }
}

struct Job {
    runtime: Runtime,
    up: Arc<AtomicBool>,
    runs: Arc<AtomicUsize>,
}

fn flaky_job() -> Job {
    let (up, runs) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let mut engine = Engine::new();
    engine.register(SeedAgent::new("seed", "start"));
    engine.register(Fetch {
        up: up.clone(),
        runs: runs.clone(),
    });
    Job {
        runtime: Runtime::new(engine),
        up,
        runs,
    }
}

fn retry(agents: &[&str]) -> Retry {
    Retry::new(
        Actor::human("alice").unwrap(),
        agents.iter().copied(),
        "the server is back",
    )
}

/// A stopped run whose `fetch` failed, in a fresh journal.
fn stopped_run(dir: &TempDir) -> (Job, SqliteJournal) {
    let mut job = flaky_job();
    let mut journal = journal_at(dir);
    let result = block_on(job.runtime.run_durable(&mut journal, &run_id())).unwrap();
    assert_eq!(result.stop_reason, StopReason::Converged);
    assert_eq!(result.failures.len(), 1);
    (job, journal)
}

#[test]
fn a_durable_retry_is_a_decisions_step_and_re_derives_without_executing() {
    let dir = TempDir::new().unwrap();
    let (mut job, mut journal) = stopped_run(&dir);
    job.up.store(true, Ordering::SeqCst);
    // No agent named: every failed agent, recorded by name.
    let result = block_on(
        job.runtime
            .retry_durable(&mut journal, &run_id(), retry(&[])),
    )
    .unwrap();
    assert!(result.converged && result.context.contains(ContextKey::Hypotheses, "fetched"));
    assert_eq!(job.runs.load(Ordering::SeqCst), 2);

    let recorded = journal.load(&run_id()).unwrap();
    let retried: Vec<&StepInput> = recorded
        .steps
        .iter()
        .map(|step| &step.input)
        .filter(|input| input.retry_into_core().is_some())
        .collect();
    assert_eq!(retried.len(), 1);
    assert_eq!(retried[0].retry_into_core(), Some(retry(&["fetch"])));
    assert_eq!(retried[0].kind(), "decisions");

    // Another runtime whose agent would fail re-derives the same run: nothing executes.
    let fresh = flaky_job();
    let replay = fresh.runtime.replay(&journal, &run_id()).unwrap();
    assert!(
        matches!(replay, ReplayReport::Identical { root_hash, .. } if root_hash == result.root_hash),
        "{replay:?}"
    );
    let seen = fresh.runtime.inspect(&journal, &run_id()).unwrap();
    assert_eq!(seen.retries.len(), 1);
    assert_eq!(seen.retries[0].after_cycle, 2);
    assert_eq!(fresh.runs.load(Ordering::SeqCst), 0);
    assert!(matches!(
        journal.verify(&run_id()).unwrap(),
        Verification::Intact { .. }
    ));
}

#[test]
fn refused_retries_write_nothing_and_run_nothing() {
    let dir = TempDir::new().unwrap();
    let (mut job, mut journal) = stopped_run(&dir);
    let before = journal.summary(&run_id()).unwrap();

    let error = block_on(
        job.runtime
            .retry_durable(&mut journal, &run_id(), retry(&["seed"])),
    )
    .unwrap_err();
    let DurableError::NotRetryable { refusal, .. } = &error else {
        panic!("expected a refusal, got {error}");
    };
    assert_eq!(
        *refusal,
        RetryRefusal::NotFailed {
            name: "seed".to_owned(),
            failed: vec!["fetch".to_owned()]
        }
    );
    assert_eq!(
        error.to_string(),
        "run job-1 cannot be retried: agent \"seed\" has not failed (failed: fetch)"
    );

    // A run another live process holds is refused by its lease.
    let mut other = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let holder = Holder {
        pid: other.id(),
        ..Holder::this_process("another converge")
    };
    journal
        .acquire(&run_id(), &holder, wall_clock_ms())
        .unwrap();
    let error = block_on(
        job.runtime
            .retry_durable(&mut journal, &run_id(), retry(&["fetch"])),
    )
    .unwrap_err();
    let _ = other.kill();
    let _ = other.wait();
    assert!(
        matches!(error, DurableError::Journal(JournalError::Leased { .. })),
        "{error}"
    );

    let after = journal.summary(&run_id()).unwrap();
    assert_eq!(
        (after.steps, after.record_hash),
        (before.steps, before.record_hash)
    );
    assert_eq!(job.runs.load(Ordering::SeqCst), 1, "nothing ran again");
}
