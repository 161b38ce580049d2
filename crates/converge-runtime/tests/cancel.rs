//! Cancellation against real SQLite journals: a run cancelled before a step halts with the
//! canceller's reason; a run cancelled mid-batch drops the agents in flight at once, records
//! them as failed and keeps what finished; a run awaiting approval is cancelled with nobody
//! driving it. Each is journaled so that verify, replay and inspect reproduce it without
//! executing anything, and refusals write nothing.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use converge_core::agents::{ReactOnceAgent, SeedAgent};
use converge_core::{
    Actor, Agent, AgentEffect, AuthorityScope, Context, ContextKey, ConvergeResult, Decision,
    Engine, Proposal, Rejection, StopReason, ValidationPolicy,
};
use converge_runtime::{
    AgentFuture, AsyncAgent, Cancel, Cancellation, DurableError, FailingJournal, Journal,
    JournalError, OutcomeRecord, ReplayReport, RunId, RunStatus, Runtime, SqliteJournal, StepInput,
    Verification,
};
use serde_json::json;
use tempfile::TempDir;
use tokio::sync::Notify;

use support::{Planner, block_on, journal_at, run_id};

const BY: &str = "alice";
const WHY: &str = "wrong input file";
const MESSAGE: &str = "cancelled by alice: wrong input file";

fn halted() -> StopReason {
    StopReason::Halted {
        reason: MESSAGE.to_owned(),
    }
}

fn file_bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

fn kinds(journal: &SqliteJournal) -> Vec<&'static str> {
    journal
        .load(&run_id())
        .unwrap()
        .steps
        .iter()
        .map(|step| step.input.kind())
        .collect()
}

fn assert_intact(journal: &SqliteJournal, result: &ConvergeResult) {
    let Verification::Intact { root_hash, .. } = journal.verify(&run_id()).unwrap() else {
        panic!("broken journal")
    };
    assert_eq!(root_hash, result.root_hash);
}

fn assert_replays(runtime: &Runtime, journal: &SqliteJournal, result: &ConvergeResult) {
    let report = runtime.replay(journal, &run_id()).unwrap();
    let ReplayReport::Identical { root_hash, .. } = report else {
        panic!("replay diverged: {report:?}")
    };
    assert_eq!(root_hash, result.root_hash);
}

/// The run's status says it stopped, halted with the cancellation message.
fn assert_stopped_cancelled(journal: &SqliteJournal) {
    let status = journal.summary(&run_id()).unwrap().status;
    assert_eq!(
        status,
        RunStatus::Stopped {
            reason: json!({"stop": "halted", "reason": MESSAGE})
        }
    );
}

// ---------------------------------------------------------------------------------------------
// A multi-cycle job of synchronous agents.
// ---------------------------------------------------------------------------------------------

/// Proposes six signals, one per cycle, counting its executions; cancels `cancel` (when
/// given) in its execution that sees `cancel_at` signals.
struct Counter {
    runs: Arc<AtomicUsize>,
    cancel: Option<(Cancel, usize)>,
}

impl Agent for Counter {
    fn name(&self) -> &str {
        "counter"
    }

    fn dependencies(&self) -> &[ContextKey] {
        &[ContextKey::Signals]
    }

    fn requested_scope(&self) -> AuthorityScope {
        AuthorityScope::keys([ContextKey::Signals])
    }

    fn accepts(&self, ctx: &Context) -> bool {
        ctx.count(ContextKey::Signals) < 6
    }

    fn execute(&self, ctx: &Context) -> AgentEffect {
        self.runs.fetch_add(1, Ordering::SeqCst);
        let n = ctx.count(ContextKey::Signals);
        if let Some((cancel, at)) = &self.cancel
            && n == *at
        {
            cancel.cancel(BY, WHY);
        }
        AgentEffect::empty().with_proposal(Proposal::new(ContextKey::Signals, format!("s{n}"), n))
    }
}

/// Seeds, a reacting agent and the counter; with `approval`, a planner whose strategy needs a
/// human. With `cancel_at`, the counter cancels the runtime's handle.
fn job(approval: bool, cancel_at: Option<usize>) -> (Runtime, Arc<AtomicUsize>, Cancel) {
    let runs = Arc::new(AtomicUsize::new(0));
    let cancel = Cancel::new();
    let mut engine = Engine::new();
    engine.register(SeedAgent::new("seed-1", "initial data"));
    engine.register(ReactOnceAgent::new("hyp-1", "derived insight"));
    engine.register(Counter {
        runs: runs.clone(),
        cancel: cancel_at.map(|at| (cancel.clone(), at)),
    });
    if approval {
        engine.set_policy(
            ContextKey::Strategies,
            ValidationPolicy::new().requiring_approval(),
        );
        engine.register(Planner);
    }
    (
        Runtime::new(engine).with_cancel(cancel.clone()),
        runs,
        cancel,
    )
}

#[test]
fn a_run_cancelled_before_it_starts_halts_with_the_reason_and_replays() {
    let dir = TempDir::new().unwrap();
    let mut journal = journal_at(&dir);
    let (mut runtime, runs, cancel) = job(false, None);
    assert!(cancel.cancel(BY, WHY));
    let result = block_on(runtime.run_durable(&mut journal, &run_id())).unwrap();
    assert_eq!(result.stop_reason, halted());
    assert_eq!(result.cycles, 0);
    assert!(result.context.is_empty());
    assert_eq!(runs.load(Ordering::SeqCst), 0, "no agent ran");

    assert_eq!(kinds(&journal), ["start", "halt"]);
    let loaded = journal.load(&run_id()).unwrap();
    assert_eq!(
        loaded.steps[1].input,
        StepInput::Halt {
            reason: json!({"halt": "cancelled", "by": BY, "reason": WHY})
        }
    );
    assert_intact(&journal, &result);
    assert_stopped_cancelled(&journal);

    // Replay and inspect reproduce it with a runtime that was never cancelled.
    let (viewer, viewer_runs, _) = job(false, None);
    assert_replays(&viewer, &journal, &result);
    let seen = viewer.inspect(&journal, &run_id()).unwrap();
    assert!(seen.stopped);
    assert_eq!(seen.result.stop_reason, halted());
    assert_eq!(seen.result.root_hash, result.root_hash);
    assert_eq!(
        viewer_runs.load(Ordering::SeqCst),
        0,
        "replay executes nothing"
    );

    // The in-memory driver halts the same way, event for event.
    let (mut memory, _, cancel) = job(false, None);
    cancel.cancel(BY, WHY);
    let in_memory = block_on(memory.run(Context::new())).unwrap();
    assert_eq!(in_memory.stop_reason, halted());
    assert_eq!(in_memory.root_hash, result.root_hash);
}

#[test]
fn a_run_cancelled_between_cycles_halts_before_its_next_step() {
    let dir = TempDir::new().unwrap();
    let mut journal = journal_at(&dir);
    // The counter cancels in the execution that sees two signals: that cycle completes (every
    // agent of it had finished), then the run halts instead of starting another.
    let (mut runtime, runs, _) = job(false, Some(2));
    let result = block_on(runtime.run_durable(&mut journal, &run_id())).unwrap();
    assert_eq!(result.stop_reason, halted());
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    assert_eq!(result.context.count(ContextKey::Signals), 3);
    assert!(result.failures.is_empty(), "{:?}", result.failures);

    let kinds = kinds(&journal);
    assert_eq!(kinds.first(), Some(&"start"));
    assert_eq!(kinds.last(), Some(&"halt"));
    assert_eq!(kinds.iter().filter(|kind| **kind == "cycle").count(), 3);
    assert_intact(&journal, &result);
    assert_stopped_cancelled(&journal);

    let (viewer, viewer_runs, _) = job(false, None);
    assert_replays(&viewer, &journal, &result);
    let seen = viewer.inspect(&journal, &run_id()).unwrap();
    assert_eq!(seen.result.stop_reason, halted());
    assert_eq!(
        seen.result.context.digest(),
        result.context.digest(),
        "the same facts"
    );
    assert_eq!(
        viewer_runs.load(Ordering::SeqCst),
        0,
        "replay executes nothing"
    );
    let mut resumer = job(false, None).0;
    let error = block_on(resumer.resume_durable(&mut journal, &run_id())).unwrap_err();
    assert!(matches!(error, DurableError::Finished { .. }), "{error}");

    let (mut memory, _, _) = job(false, Some(2));
    let in_memory = block_on(memory.run(Context::new())).unwrap();
    assert_eq!(in_memory.root_hash, result.root_hash);
}

// ---------------------------------------------------------------------------------------------
// A batch with an agent that would take ten seconds.
// ---------------------------------------------------------------------------------------------

/// What the slow agent reports about its executions.
#[derive(Default)]
struct Probes {
    started: Notify,
    executions: AtomicUsize,
    finished: AtomicBool,
    dropped: AtomicBool,
}

/// Sets `dropped` when the execution it guards is dropped before it finished.
struct DropGuard(Arc<Probes>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        if !self.0.finished.load(Ordering::SeqCst) {
            self.0.dropped.store(true, Ordering::SeqCst);
        }
    }
}

/// Sleeps ten seconds, then proposes a signal.
struct Sleeper(Arc<Probes>);

/// Proposes a signal at once.
struct Quick;

impl AsyncAgent for Sleeper {
    fn name(&self) -> &str {
        "sleeper"
    }

    fn dependencies(&self) -> &[ContextKey] {
        &[]
    }

    fn requested_scope(&self) -> AuthorityScope {
        AuthorityScope::keys([ContextKey::Signals])
    }

    fn accepts(&self, ctx: &Context) -> bool {
        !ctx.contains(ContextKey::Signals, "slow")
    }

    fn execute<'a>(&'a self, _ctx: &'a Context) -> AgentFuture<'a> {
        let probes = self.0.clone();
        Box::pin(async move {
            probes.executions.fetch_add(1, Ordering::SeqCst);
            let _guard = DropGuard(probes.clone());
            probes.started.notify_one();
            tokio::time::sleep(Duration::from_secs(10)).await;
            probes.finished.store(true, Ordering::SeqCst);
            AgentEffect::empty().with_proposal(Proposal::new(ContextKey::Signals, "slow", 1))
        })
    }
}

impl AsyncAgent for Quick {
    fn name(&self) -> &str {
        "quick"
    }

    fn dependencies(&self) -> &[ContextKey] {
        &[]
    }

    fn requested_scope(&self) -> AuthorityScope {
        AuthorityScope::keys([ContextKey::Signals])
    }

    fn accepts(&self, ctx: &Context) -> bool {
        !ctx.contains(ContextKey::Signals, "quick")
    }

    fn execute<'a>(&'a self, _ctx: &'a Context) -> AgentFuture<'a> {
        Box::pin(async {
            AgentEffect::empty().with_proposal(Proposal::new(ContextKey::Signals, "quick", 2))
        })
    }
}

/// A seed (synchronous), the slow agent and a quick one, all in cycle 1.
fn slow_job() -> (Runtime, Arc<Probes>, Cancel) {
    let probes = Arc::new(Probes::default());
    let cancel = Cancel::new();
    let mut engine = Engine::new();
    engine.register(SeedAgent::new("seed-1", "initial data"));
    let mut runtime = Runtime::new(engine);
    runtime.register_async(Sleeper(probes.clone()));
    runtime.register_async(Quick);
    runtime.set_cancel(cancel.clone());
    (runtime, probes, cancel)
}

/// Drives `drive` while cancelling once the slow agent has started (and the quick one has
/// long finished); returns what it returned and how long it took.
fn cancel_mid_batch<T>(
    probes: &Probes,
    cancel: &Cancel,
    drive: impl std::future::Future<Output = T>,
) -> (T, Duration) {
    let began = Instant::now();
    let output = block_on(async {
        let canceller = async {
            probes.started.notified().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert!(cancel.cancel(BY, WHY));
        };
        let (output, ()) = tokio::join!(drive, canceller);
        output
    });
    (output, began.elapsed())
}

#[test]
fn a_run_cancelled_mid_batch_drops_the_agents_in_flight_and_replays_without_them() {
    let dir = TempDir::new().unwrap();
    let mut journal = journal_at(&dir);
    let (mut runtime, probes, cancel) = slow_job();
    let (result, took) = cancel_mid_batch(
        &probes,
        &cancel,
        runtime.run_durable(&mut journal, &run_id()),
    );
    let result = result.unwrap();
    // Generous: the slow agent alone would take ten seconds.
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(
        probes.dropped.load(Ordering::SeqCst),
        "its future was dropped"
    );
    assert!(!probes.finished.load(Ordering::SeqCst), "it did not run on");

    assert_eq!(result.stop_reason, halted());
    assert_eq!(result.cycles, 1);
    // What finished is kept; what was cut short failed with the cancellation message.
    assert!(result.context.contains(ContextKey::Seeds, "seed-1"));
    assert!(result.context.contains(ContextKey::Signals, "quick"));
    assert!(!result.context.contains(ContextKey::Signals, "slow"));
    let sleeper = runtime
        .engine()
        .agent_names()
        .position(|name| name == "sleeper");
    assert_eq!(result.failures.len(), 1, "{:?}", result.failures);
    assert_eq!(Some(result.failures[0].agent.index()), sleeper);
    assert_eq!(result.failures[0].message, MESSAGE);

    // Journaled: the cycle with its outcomes as they were, then the halt.
    assert_eq!(kinds(&journal), ["start", "cycle", "halt"]);
    let loaded = journal.load(&run_id()).unwrap();
    let StepInput::Cycle {
        cycle,
        batch,
        outcomes,
    } = &loaded.steps[1].input
    else {
        panic!("{:?}", loaded.steps[1].input)
    };
    assert_eq!((*cycle, batch.len()), (1, 3));
    let sleeper = sleeper.unwrap() as u32;
    for (agent, outcome) in outcomes {
        match outcome {
            OutcomeRecord::Failed { message } => {
                assert_eq!((*agent, message.as_str()), (sleeper, MESSAGE));
            }
            OutcomeRecord::Completed(_) => assert_ne!(*agent, sleeper),
        }
    }
    assert_intact(&journal, &result);
    assert_stopped_cancelled(&journal);

    // Replay feeds the recorded outcomes: nothing executes, nothing waits.
    let (viewer, viewer_probes, _) = slow_job();
    let began = Instant::now();
    assert_replays(&viewer, &journal, &result);
    let seen = viewer.inspect(&journal, &run_id()).unwrap();
    assert!(began.elapsed() < Duration::from_secs(5));
    assert_eq!(seen.result.stop_reason, halted());
    assert_eq!(seen.result.failures.len(), 1);
    assert_eq!(viewer_probes.executions.load(Ordering::SeqCst), 0);

    // The in-memory driver, cut at the same point, emits the same events.
    let (mut memory, probes, cancel) = slow_job();
    let (in_memory, took) = cancel_mid_batch(&probes, &cancel, memory.run(Context::new()));
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let in_memory = in_memory.unwrap();
    assert_eq!(in_memory.stop_reason, halted());
    assert_eq!(in_memory.root_hash, result.root_hash);
    assert!(probes.dropped.load(Ordering::SeqCst));
}

#[test]
fn a_drive_spawned_on_another_thread_is_cancelled_through_a_clone() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("journal.db");
    let (mut runtime, probes, cancel) = slow_job();
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    let began = Instant::now();
    // What a server does: the drive is a spawned task; a request handler holds a clone.
    let drive = tokio.spawn({
        let path = path.clone();
        async move {
            let mut journal = SqliteJournal::open(&path).unwrap();
            runtime.run_durable(&mut journal, &run_id()).await
        }
    });
    tokio.block_on(probes.started.notified());
    assert!(cancel.cancel(BY, WHY));
    let result = tokio.block_on(drive).unwrap().unwrap();
    assert!(began.elapsed() < Duration::from_secs(5));
    assert_eq!(result.stop_reason, halted());
    assert!(probes.dropped.load(Ordering::SeqCst));
    let journal = SqliteJournal::open(&path).unwrap();
    assert_intact(&journal, &result);
    assert_replays(&slow_job().0, &journal, &result);
}

// ---------------------------------------------------------------------------------------------
// Cancelling a run nobody drives.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_run_awaiting_approval_is_cancelled_for_good_without_executing_anything() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("journal.db");
    let mut journal = SqliteJournal::open(&path).unwrap();
    let parked = block_on(job(true, None).0.run_durable(&mut journal, &run_id())).unwrap();
    let StopReason::AwaitingApproval { pending } = &parked.stop_reason else {
        panic!("{:?}", parked.stop_reason)
    };
    let pending = pending[0].clone();
    let steps_before = journal.summary(&run_id()).unwrap().steps;
    drop(journal);

    // Another process: a fresh runtime and journal handle.
    let mut journal = SqliteJournal::open(&path).unwrap();
    let (mut canceller, runs, _) = job(true, None);
    let result = canceller
        .cancel_durable(&mut journal, &run_id(), BY, WHY)
        .unwrap();
    assert_eq!(result.stop_reason, halted());
    assert_eq!(runs.load(Ordering::SeqCst), 0, "no agent ran");
    assert!(!result.context.has(ContextKey::Strategies));
    assert!(
        result
            .rejections
            .iter()
            .any(|rejected| rejected.proposal == pending.proposal
                && rejected.rejection == Rejection::UndecidedAtStop),
        "the parked proposal is recorded as undecided: {:?}",
        result.rejections
    );
    let loaded = journal.load(&run_id()).unwrap();
    assert_eq!(loaded.steps.len() as u64, steps_before + 2);
    let added: Vec<_> = loaded.steps[steps_before as usize..]
        .iter()
        .map(|step| step.input.clone())
        .collect();
    assert_eq!(
        added,
        [
            StepInput::Decisions {
                decisions: Vec::new(),
                retry: None,
            },
            StepInput::Halt {
                reason: json!({"halt": "cancelled", "by": BY, "reason": WHY})
            },
        ]
    );
    assert_intact(&journal, &result);
    assert_stopped_cancelled(&journal);

    let (viewer, viewer_runs, _) = job(true, None);
    assert_replays(&viewer, &journal, &result);
    let seen = viewer.inspect(&journal, &run_id()).unwrap();
    assert!(seen.stopped);
    assert_eq!(seen.result.stop_reason, halted());
    assert_eq!(seen.result.rejections, result.rejections);
    assert_eq!(viewer_runs.load(Ordering::SeqCst), 0);
    drop(journal);

    // Stopped for good: a decision, another cancellation and a resume are refused, and
    // nothing is written.
    let before = file_bytes(&path);
    let mut journal = SqliteJournal::open(&path).unwrap();
    let (mut late, late_runs, _) = job(true, None);
    let approve = Decision::approve(pending.proposal, pending.hash, Actor::human("bob").unwrap());
    let error = block_on(late.decide_durable(&mut journal, &run_id(), vec![approve])).unwrap_err();
    assert!(matches!(error, DurableError::Finished { .. }), "{error}");
    let error = late
        .cancel_durable(&mut journal, &run_id(), "bob", "again")
        .unwrap_err();
    assert!(matches!(error, DurableError::Finished { .. }), "{error}");
    let error = block_on(late.resume_durable(&mut journal, &run_id())).unwrap_err();
    assert!(matches!(error, DurableError::Finished { .. }), "{error}");
    assert_eq!(late_runs.load(Ordering::SeqCst), 0);
    drop(journal);
    assert_eq!(file_bytes(&path), before, "nothing was written");
}

#[test]
fn cancelling_a_finished_or_a_running_run_is_refused_and_writes_nothing() {
    // Finished: converged.
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("journal.db");
    let mut journal = SqliteJournal::open(&path).unwrap();
    let done = block_on(job(false, None).0.run_durable(&mut journal, &run_id())).unwrap();
    assert!(done.converged);
    drop(journal);
    let before = file_bytes(&path);
    let mut journal = SqliteJournal::open(&path).unwrap();
    let error = job(false, None)
        .0
        .cancel_durable(&mut journal, &run_id(), BY, WHY)
        .unwrap_err();
    assert!(
        matches!(&error, DurableError::Finished { reason, .. } if reason.contains("converged")),
        "{error}"
    );
    let unknown = RunId::new("ghost").unwrap();
    let error = job(false, None)
        .0
        .cancel_durable(&mut journal, &unknown, BY, WHY)
        .unwrap_err();
    assert!(
        matches!(
            error,
            DurableError::Journal(JournalError::UnknownRun { .. })
        ),
        "{error}"
    );
    drop(journal);
    assert_eq!(file_bytes(&path), before, "nothing was written");

    // Running: its driver died after two steps (or is still driving it).
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("journal.db");
    let mut failing = FailingJournal::new(SqliteJournal::open(&path).unwrap(), 2);
    block_on(job(false, None).0.run_durable(&mut failing, &run_id())).unwrap_err();
    drop(failing);
    let before = file_bytes(&path);
    let mut journal = SqliteJournal::open(&path).unwrap();
    let (mut canceller, runs, _) = job(false, None);
    let error = canceller
        .cancel_durable(&mut journal, &run_id(), BY, WHY)
        .unwrap_err();
    assert!(matches!(error, DurableError::NotStopped { .. }), "{error}");
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    assert_eq!(
        journal.summary(&run_id()).unwrap().status,
        RunStatus::Running
    );
    drop(journal);
    assert_eq!(file_bytes(&path), before, "nothing was written");
}

// ---------------------------------------------------------------------------------------------
// The handle.
// ---------------------------------------------------------------------------------------------

#[test]
fn the_first_cancellation_wins_and_later_ones_change_nothing() {
    fn shareable<T: Clone + Send + Sync + std::fmt::Debug + 'static>() {}
    fn send<T: Send>(_: &T) {}
    shareable::<Cancel>();

    let cancel = Cancel::new();
    assert!(!cancel.is_cancelled());
    assert_eq!(cancel.cancellation(), None);
    let clone = cancel.clone();
    let waiter = cancel.cancelled();
    send(&waiter);
    // A waiter registered before the cancellation wakes; so does one created after.
    block_on(async {
        let cancelling = async {
            tokio::task::yield_now().await;
            assert!(clone.cancel(BY, WHY));
        };
        tokio::join!(waiter, cancelling);
    });
    block_on(cancel.cancelled());
    assert!(cancel.is_cancelled() && clone.is_cancelled());
    assert!(!cancel.cancel("bob", "second thoughts"));
    assert!(!clone.cancel("carol", "third"));
    assert_eq!(cancel.cancellation(), Some(&Cancellation::new(BY, WHY)));
    assert_eq!(cancel.cancellation().unwrap().to_string(), MESSAGE);

    // A drive after the later calls records the first reason.
    let dir = TempDir::new().unwrap();
    let mut journal = journal_at(&dir);
    let (mut runtime, runs, _) = job(false, None);
    runtime.set_cancel(cancel.clone());
    let result = block_on(runtime.run_durable(&mut journal, &run_id())).unwrap();
    assert_eq!(result.stop_reason, halted());
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    let last = journal.load(&run_id()).unwrap().steps.pop().unwrap();
    assert_eq!(
        last.input,
        StepInput::Halt {
            reason: json!({"halt": "cancelled", "by": BY, "reason": WHY})
        }
    );

    // A handle stays cancelled; a fresh one lets the same runtime run to the end.
    runtime.set_cancel(Cancel::new());
    let fresh = block_on(runtime.run(Context::new())).unwrap();
    assert!(fresh.converged, "{:?}", fresh.stop_reason);
}
