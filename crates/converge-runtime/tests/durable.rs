//! Durable runs against real SQLite files: the journaled run equals the in-memory one, a run
//! interrupted at any journal write resumes to the same root hash, approvals are decided in a
//! fresh runtime without re-executing agents, replay calls nothing and names divergences, and
//! bad resumes are clear errors that modify nothing.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use converge_core::agents::{ReactOnceAgent, SeedAgent};
use converge_core::{
    Actor, Agent, AgentEffect, AuthorityScope, Context, ContextKey, ConvergeResult, Decision,
    Engine, Proposal, StopReason, ValidationPolicy,
};
use converge_runtime::{
    DurableError, FailingJournal, Journal, JournalError, LEASE_RENEW_MS, ManualClock, ReplayReport,
    RunId, Runtime, SqliteJournal, Verification,
};
use tempfile::TempDir;

use support::{Planner, block_on, journal_at, run_id};

/// Proposes `count` signals, one per cycle, counting its executions.
struct Counter {
    name: String,
    count: usize,
    runs: Arc<AtomicUsize>,
}

impl Agent for Counter {
    fn name(&self) -> &str {
        &self.name
    }

    fn dependencies(&self) -> &[ContextKey] {
        &[ContextKey::Signals]
    }

    fn requested_scope(&self) -> AuthorityScope {
        AuthorityScope::keys([ContextKey::Signals])
    }

    fn accepts(&self, ctx: &Context) -> bool {
        ctx.count(ContextKey::Signals) < self.count
    }

    fn execute(&self, ctx: &Context) -> AgentEffect {
        self.runs.fetch_add(1, Ordering::SeqCst);
        let n = ctx.count(ContextKey::Signals);
        AgentEffect::empty().with_proposal(Proposal::new(ContextKey::Signals, format!("s{n}"), n))
    }
}

/// A multi-cycle job: seeds, a reacting agent, a counter running several cycles, and a
/// planner whose strategies need approval when `approval` is set.
fn job(approval: bool) -> (Runtime, Arc<AtomicUsize>) {
    let runs = Arc::new(AtomicUsize::new(0));
    let mut engine = Engine::new();
    engine.register(SeedAgent::new("seed-1", "initial data"));
    engine.register(ReactOnceAgent::new("hyp-1", "derived insight"));
    engine.register(Counter {
        name: "counter".into(),
        count: 6,
        runs: runs.clone(),
    });
    if approval {
        engine.set_policy(
            ContextKey::Strategies,
            ValidationPolicy::new().requiring_approval(),
        );
        engine.register(Planner);
    }
    (Runtime::new(engine), runs)
}

fn reference() -> ConvergeResult {
    let (mut runtime, _) = job(false);
    block_on(runtime.run(Context::new())).unwrap()
}

#[test]
fn a_durable_run_equals_the_in_memory_run_and_verifies() {
    let dir = TempDir::new().unwrap();
    let mut journal = journal_at(&dir);
    let (mut runtime, _) = job(false);
    let result = block_on(runtime.run_durable(&mut journal, &run_id())).unwrap();
    let expected = reference();
    assert!(result.converged);
    assert_eq!(result.root_hash, expected.root_hash);
    assert_eq!(result.context.digest(), expected.context.digest());
    let Verification::Intact { root_hash, .. } = journal.verify(&run_id()).unwrap() else {
        panic!("broken journal")
    };
    assert_eq!(root_hash, expected.root_hash);
    let summary = journal.summary(&run_id()).unwrap();
    assert!(matches!(
        summary.status,
        converge_runtime::RunStatus::Stopped { .. }
    ));
}

/// A cycle wide enough for its agents to execute over several cores and for its input to be
/// encoded on another thread while the core merges it stores what the core alone derives,
/// one agent after the other: the same root hash, an intact journal, and a replay identical
/// to it.
#[test]
fn a_wide_cycle_executed_and_encoded_in_parallel_equals_the_core_run() {
    let engine = || {
        let mut engine = Engine::new();
        for index in 0..4500 {
            engine.register(SeedAgent::new(format!("seed-{index}"), index));
        }
        engine.register(ReactOnceAgent::new("hyp-1", "derived insight"));
        engine
    };
    let wide = || Runtime::new(engine());
    let expected = engine().run(Context::new()).unwrap();
    let in_memory = block_on(wide().run(Context::new())).unwrap();
    assert_eq!(in_memory.root_hash, expected.root_hash);
    let dir = TempDir::new().unwrap();
    let mut journal = journal_at(&dir);
    let mut runtime = wide();
    let result = block_on(runtime.run_durable(&mut journal, &run_id())).unwrap();
    assert_eq!(result.context.len(), 4501);
    assert_eq!(result.root_hash, expected.root_hash);
    let Verification::Intact { root_hash, .. } = journal.verify(&run_id()).unwrap() else {
        panic!("broken journal")
    };
    assert_eq!(root_hash, expected.root_hash);
    let replayed = wide().replay(&journal, &run_id()).unwrap();
    assert!(
        matches!(replayed, ReplayReport::Identical { .. }),
        "{replayed:?}"
    );
}

#[test]
fn a_run_interrupted_at_any_journal_write_resumes_to_the_same_root_hash() {
    let expected = reference();
    let (steps, writes) = {
        let dir = TempDir::new().unwrap();
        let mut journal = FailingJournal::new(journal_at(&dir), u64::MAX);
        block_on(job(false).0.run_durable(&mut journal, &run_id())).unwrap();
        let steps = journal.inner().summary(&run_id()).unwrap().steps;
        (steps, journal.writes())
    };
    assert!(steps > 5, "a multi-cycle job ({steps} steps)");
    // A write commits one step, or several held back together (the last cycle with its stop).
    assert!(writes < steps, "{writes} writes for {steps} steps");
    let mut committed_before = 0;
    for k in 0..writes {
        for committed in [false, true] {
            let dir = TempDir::new().unwrap();
            let inner = journal_at(&dir);
            let mut failing = if committed {
                FailingJournal::after_write(inner, k)
            } else {
                FailingJournal::new(inner, k)
            };
            let error = block_on(job(false).0.run_durable(&mut failing, &run_id())).unwrap_err();
            assert!(
                matches!(error, DurableError::Journal(JournalError::Injected { .. })),
                "{error}"
            );
            drop(failing);
            let mut journal = journal_at(&dir);
            let acknowledged = journal.summary(&run_id()).unwrap().steps;
            if committed {
                assert!(
                    acknowledged > committed_before,
                    "write {k} commits at least one step"
                );
                committed_before = acknowledged;
            } else {
                assert_eq!(
                    acknowledged, committed_before,
                    "write {k}, failed before its commit, leaves the steps before it"
                );
            }
            assert!(matches!(
                journal.verify(&run_id()).unwrap(),
                Verification::Intact { .. }
            ));
            let (mut runtime, runs) = job(false);
            match block_on(runtime.resume_durable(&mut journal, &run_id())) {
                Ok(result) => {
                    assert_eq!(
                        result.root_hash, expected.root_hash,
                        "k={k} committed={committed}"
                    );
                    assert_eq!(result.context.digest(), expected.context.digest());
                }
                Err(DurableError::Finished { .. }) => {
                    assert_eq!(
                        acknowledged, steps,
                        "only a fully committed run is finished"
                    );
                    let summary = journal.summary(&run_id()).unwrap();
                    assert!(
                        matches!(summary.status, converge_runtime::RunStatus::Stopped { .. }),
                        "status repaired"
                    );
                }
                Err(error) => panic!("k={k} committed={committed}: {error}"),
            }
            let replayed_cycles = acknowledged.saturating_sub(1) as usize;
            assert_eq!(
                runs.load(Ordering::SeqCst),
                6 - replayed_cycles.min(6),
                "committed cycles are not executed again (k={k} committed={committed})"
            );
            let Verification::Intact { root_hash, .. } = journal.verify(&run_id()).unwrap() else {
                panic!()
            };
            assert_eq!(root_hash, expected.root_hash);
        }
    }
    assert_eq!(
        committed_before, steps,
        "the last write commits the last step"
    );
}

/// Proposes one seed, moving the drive's clock past the lease's renewal time as it does.
struct SlowSeed(Arc<ManualClock>);

impl Agent for SlowSeed {
    fn name(&self) -> &str {
        "slow-seed"
    }

    fn dependencies(&self) -> &[ContextKey] {
        &[]
    }

    fn requested_scope(&self) -> AuthorityScope {
        AuthorityScope::keys([ContextKey::Seeds])
    }

    fn accepts(&self, ctx: &Context) -> bool {
        ctx.count(ContextKey::Seeds) == 0
    }

    fn execute(&self, _ctx: &Context) -> AgentEffect {
        self.0.advance_ms(LEASE_RENEW_MS);
        AgentEffect::empty().with_proposal(Proposal::new(ContextKey::Seeds, "slow", "done"))
    }
}

#[test]
fn a_cycle_of_agents_with_side_effects_is_committed_before_a_renewal_that_fails() {
    let dir = TempDir::new().unwrap();
    let clock = Arc::new(ManualClock::new());
    let mut engine = Engine::new();
    engine.register(SlowSeed(clock.clone()));
    let mut runtime = Runtime::new(engine).with_clock(clock);
    let mut journal = FailingJournal::refusing_renewals(journal_at(&dir));
    let error = block_on(runtime.run_durable(&mut journal, &run_id())).unwrap_err();
    assert!(
        matches!(error, DurableError::Journal(JournalError::Injected { .. })),
        "{error}"
    );
    // The agent acted outside the run: its cycle was committed before the renewal failed,
    // so resuming does not execute it again.
    let summary = journal.inner().summary(&run_id()).unwrap();
    assert_eq!(summary.steps, 2, "the start and the agent's cycle");
}

#[test]
fn approvals_are_decided_in_a_fresh_runtime_without_re_executing_agents() {
    let dir = TempDir::new().unwrap();
    let mut journal = journal_at(&dir);
    let (mut first, _) = job(true);
    let parked = block_on(first.run_durable(&mut journal, &run_id())).unwrap();
    let StopReason::AwaitingApproval { pending } = &parked.stop_reason else {
        panic!("{:?}", parked.stop_reason)
    };
    let pending = pending[0].clone();
    drop(first);
    drop(journal);

    let mut journal = journal_at(&dir);
    let (mut second, runs) = job(true);
    let alice = Actor::human("alice").unwrap();
    let decision = Decision::approve(pending.proposal, pending.hash, alice.clone());
    let result = block_on(second.decide_durable(&mut journal, &run_id(), vec![decision])).unwrap();
    assert!(result.converged, "{:?}", result.stop_reason);
    assert_eq!(runs.load(Ordering::SeqCst), 0, "no agent ran again");
    let fact = result.context.fact(ContextKey::Strategies, "go").unwrap();
    assert_eq!(fact.record().approver(), Some(&alice));
    let ReplayReport::Identical { root_hash, .. } = second.replay(&journal, &run_id()).unwrap()
    else {
        panic!()
    };
    assert_eq!(root_hash, result.root_hash);
    let again = Decision::approve(pending.proposal, pending.hash, alice);
    let error = block_on(second.decide_durable(&mut journal, &run_id(), vec![again])).unwrap_err();
    assert!(matches!(error, DurableError::Finished { .. }), "{error}");
}

fn file_bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[test]
fn bad_resumes_are_clear_errors_and_modify_nothing() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("journal.db");
    let mut journal = SqliteJournal::open(&path).unwrap();
    block_on(job(false).0.run_durable(&mut journal, &run_id())).unwrap();
    drop(journal);
    let before = file_bytes(&path);

    let mut journal = SqliteJournal::open(&path).unwrap();
    let error = block_on(job(false).0.resume_durable(&mut journal, &run_id())).unwrap_err();
    assert!(matches!(error, DurableError::Finished { .. }), "{error}");
    let unknown = RunId::new("nope").unwrap();
    let error = block_on(job(false).0.resume_durable(&mut journal, &unknown)).unwrap_err();
    assert!(
        matches!(
            error,
            DurableError::Journal(JournalError::UnknownRun { .. })
        ),
        "{error}"
    );
    let mut other = Runtime::new(Engine::new());
    other
        .engine_mut()
        .register(SeedAgent::new("someone-else", "x"));
    let error = block_on(other.resume_durable(&mut journal, &run_id())).unwrap_err();
    assert!(
        matches!(error, DurableError::AgentsChanged { .. }),
        "{error}"
    );
    drop(journal);
    assert_eq!(file_bytes(&path), before, "nothing was written");
}

#[test]
fn replay_names_the_first_divergence_when_the_rules_changed() {
    let dir = TempDir::new().unwrap();
    let mut journal = journal_at(&dir);
    block_on(job(false).0.run_durable(&mut journal, &run_id())).unwrap();
    let (same, _) = job(false);
    assert!(matches!(
        same.replay(&journal, &run_id()).unwrap(),
        ReplayReport::Identical { .. }
    ));

    let (mut stricter, runs) = job(false);
    stricter.engine_mut().set_policy(
        ContextKey::Signals,
        ValidationPolicy::new().with_check("small", |c| match c.content.as_u64() {
            Some(n) if n < 3 => Ok(()),
            _ => Err("too large".into()),
        }),
    );
    let ReplayReport::Diverged(divergence) = stricter.replay(&journal, &run_id()).unwrap() else {
        panic!("a stricter policy must diverge")
    };
    assert!(
        divergence.seq.is_some() && divergence.expected.is_some(),
        "{divergence}"
    );
    assert!(divergence.detail.contains("differs"), "{divergence}");
    assert_eq!(runs.load(Ordering::SeqCst), 0, "replay executes no agent");
}

/// Opens `path` as a tamperer would: the append-only triggers dropped.
fn tamper(path: &Path, sql: &str) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(
        "DROP TRIGGER events_append_only_update; DROP TRIGGER events_append_only_delete;",
    )
    .unwrap();
    conn.execute_batch(sql).unwrap();
}

#[test]
fn an_altered_stored_hash_is_named_by_replay_and_refused_by_resume() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("journal.db");
    let mut journal = SqliteJournal::open(&path).unwrap();
    block_on(job(true).0.run_durable(&mut journal, &run_id())).unwrap();
    let events = journal.events(&run_id(), 0).unwrap();
    let target = &events[events.len() / 2];
    drop(journal);
    // Flip the first byte of the target event's stored hash (not the last event's, so the
    // stored hashes still end at the run's root hash and `load` accepts them).
    tamper(
        &path,
        &format!(
            "UPDATE events SET hashes = CAST(substr(hashes, 1, 32 * ({seq} - first_seq)) \
             || x'{flipped:02x}' || substr(hashes, 32 * ({seq} - first_seq) + 2) AS BLOB) \
             WHERE first_seq = (SELECT max(first_seq) FROM events WHERE first_seq <= {seq})",
            seq = target.seq,
            flipped = target.hash.as_bytes()[0] ^ 0x01,
        ),
    );

    let journal = SqliteJournal::open(&path).unwrap();
    let (runtime, runs) = job(true);
    let ReplayReport::Diverged(divergence) = runtime.replay(&journal, &run_id()).unwrap() else {
        panic!("an altered hash must not replay as identical")
    };
    assert_eq!(divergence.seq, Some(target.seq), "{divergence}");
    assert_eq!(divergence.actual, Some(target.hash), "{divergence}");
    assert_ne!(divergence.expected, Some(target.hash), "{divergence}");
    assert!(matches!(
        journal.verify(&run_id()).unwrap(),
        Verification::Broken { at, .. } if at.seq() == Some(target.seq)
    ));
    let mut journal = journal;
    let (mut resumer, _) = job(true);
    let error = block_on(resumer.resume_durable(&mut journal, &run_id())).unwrap_err();
    assert!(
        matches!(&error, DurableError::Diverged { divergence, .. } if divergence.seq == Some(target.seq)),
        "{error}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 0, "nothing executed");
}

#[test]
fn inspect_re_derives_pending_approvals_and_unfinished_runs_without_executing() {
    let dir = TempDir::new().unwrap();
    let mut journal = journal_at(&dir);
    let (mut first, _) = job(true);
    let parked = block_on(first.run_durable(&mut journal, &run_id())).unwrap();
    let (viewer, runs) = job(true);
    let seen = viewer.inspect(&journal, &run_id()).unwrap();
    assert!(seen.stopped);
    assert_eq!(
        seen.summary.status,
        converge_runtime::RunStatus::AwaitingApproval
    );
    assert_eq!(seen.summary.root_hash, parked.root_hash);
    assert_eq!(seen.result.root_hash, parked.root_hash);
    assert_eq!(seen.result.stop_reason, parked.stop_reason);
    assert_eq!(seen.result.context.digest(), parked.context.digest());
    assert_eq!(
        seen.header.agents,
        ["seed-1", "hyp-1", "counter", "planner"]
    );
    assert_eq!(runs.load(Ordering::SeqCst), 0, "inspect executes no agent");

    // A run whose process died after its second step: not stopped, state as committed.
    let dir = TempDir::new().unwrap();
    let mut broken = FailingJournal::new(journal_at(&dir), 2);
    let (mut interrupted, _) = job(false);
    block_on(interrupted.run_durable(&mut broken, &run_id())).unwrap_err();
    let journal = broken.into_inner();
    let seen = job(false).0.inspect(&journal, &run_id()).unwrap();
    assert!(!seen.stopped);
    assert_eq!(seen.summary.steps, 2);
    assert_eq!(seen.summary.status, converge_runtime::RunStatus::Running);
    assert!(matches!(seen.result.stop_reason, StopReason::Halted { .. }));
    assert!(seen.result.context.len() < reference().context.len());
    assert!(matches!(
        job(false)
            .0
            .inspect(&journal, &RunId::new("ghost").unwrap()),
        Err(DurableError::Journal(JournalError::UnknownRun { .. }))
    ));
}

#[test]
fn the_job_a_runtime_was_built_from_is_kept_in_the_run_header() {
    let dir = TempDir::new().unwrap();
    let mut journal = journal_at(&dir);
    let job_record = converge_runtime::JobRecord {
        path: "/jobs/triage.yaml".to_owned(),
        source: "version: 1\n".to_owned(),
    };
    let mut runtime = job(false).0.with_job(job_record.clone());
    assert_eq!(runtime.job(), Some(&job_record));
    block_on(runtime.run_durable(&mut journal, &run_id())).unwrap();
    drop(journal);
    let journal = journal_at(&dir);
    let seen = job(false).0.inspect(&journal, &run_id()).unwrap();
    assert_eq!(seen.header.job, Some(job_record));
    assert!(matches!(
        journal.verify(&run_id()).unwrap(),
        Verification::Intact { .. }
    ));
}

#[test]
fn the_intent_a_runtime_was_built_with_is_kept_in_the_run_header() {
    let dir = TempDir::new().unwrap();
    let mut journal = journal_at(&dir);
    let (mut runtime, _) = job(false);
    let intent: converge_core::RootIntent =
        serde_json::from_value(serde_json::json!({"objective": "plan the inventory"})).unwrap();
    runtime.engine_mut().set_intent(intent.clone());
    block_on(runtime.run_durable(&mut journal, &run_id())).unwrap();

    // No job spec: the header alone says what the run is for.
    let header = journal.header(&run_id()).unwrap();
    assert_eq!(header.job, None);
    assert_eq!(header.objective(), Some("plan the inventory"));
    let recorded: converge_core::RootIntent =
        serde_json::from_value(header.intent.clone().unwrap()).unwrap();
    assert_eq!(recorded, intent);
    assert_eq!(
        converge_runtime::spec::JobSpec::objective_of_run(&header).as_deref(),
        Some("plan the inventory")
    );
}
