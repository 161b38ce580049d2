//! One conformance suite, two backends: every case runs against a SQLite file and against a
//! PostgreSQL database (a throwaway cluster started here, or the server
//! `CONVERGE_TEST_POSTGRES` names). Round trips, reads from any position, chunks, refusals
//! that write nothing, leases, outcomes committed ahead of their step, injected write
//! failures in both modes, concurrent writers, racing takeovers, and edits made behind the
//! journal's back. The same run recorded in both stores has the same root and record hashes:
//! the two backends store one format.
//!
//! A harness of its own (`harness = false`) so the cluster is started once and stopped at
//! the end whatever fails.

#[path = "support/cluster.rs"]
mod cluster;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use converge_core::agents::{ReactOnceAgent, SeedAgent};
use converge_core::{
    Actor, Agent, AgentEffect, AgentId, AgentOutcome, AuthorityScope, Context, ContextKey,
    ConvergeResult, Decision, Digest, Engine, EventBatch, Retry, Run, Step, StopReason,
    ValidationPolicy, execute_isolated,
};
use converge_journal::{
    AfterSteps, FailingJournal, GroupAndClaim, Holder, Journal, JournalError, LEASE_TTL_MS, Lease,
    Location, News, OutcomeRecord, PackedEvents, PendingStep, Place, PostgresJournal,
    PreparedInput, RunHeader, RunId, RunStatus, RunSteps, SQLITE_POLL, SqliteJournal, StepInput,
    Verification, Wakeups, wall_clock_ms,
};
use serde_json::json;

use cluster::Cluster;

/// Where a case's journal lives.
enum Store {
    Sqlite(PathBuf),
    Postgres(String),
}

impl Store {
    fn open(&self) -> Box<dyn Journal + Send> {
        match self {
            Store::Sqlite(path) => Box::new(SqliteJournal::open(path).expect("SQLite opens")),
            Store::Postgres(url) => Box::new(PostgresJournal::open(url).expect("PostgreSQL opens")),
        }
    }

    /// Runs `sql` behind the journal's back, its append-only triggers bypassed: a tamperer.
    fn tamper(&self, sql: &str) {
        match self {
            Store::Sqlite(path) => {
                let conn = rusqlite::Connection::open(path).expect("raw open");
                conn.execute_batch(
                    "PRAGMA foreign_keys = OFF;
                     DROP TRIGGER IF EXISTS steps_append_only_update;
                     DROP TRIGGER IF EXISTS events_append_only_update;
                     DROP TRIGGER IF EXISTS outcomes_append_only_update;",
                )
                .expect("triggers dropped");
                conn.execute_batch(sql).expect("tampered");
            }
            Store::Postgres(url) => {
                let mut client = postgres::Client::connect(url, postgres::NoTls).expect("raw");
                client
                    .batch_execute(&format!(
                        "SET session_replication_role = replica; SET search_path = converge; {sql}"
                    ))
                    .expect("tampered");
            }
        }
    }

    /// Run `run`'s stored event chunks, read behind the journal's back: each one's first seq,
    /// count, end offsets and compressed bodies, in seq order.
    fn chunks(&self, run: &str) -> Vec<(i64, i64, Vec<u8>, Vec<u8>)> {
        let sql = "SELECT first_seq, count, ends, bodies FROM events WHERE run = $1 \
                   ORDER BY first_seq";
        match self {
            Store::Sqlite(path) => {
                let conn = rusqlite::Connection::open(path).expect("raw open");
                let mut statement = conn.prepare(sql).expect("prepared");
                statement
                    .query_map([run], |row| {
                        Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
                    })
                    .expect("read")
                    .collect::<Result<_, _>>()
                    .expect("rows")
            }
            Store::Postgres(url) => {
                let mut client = postgres::Client::connect(url, postgres::NoTls).expect("raw");
                client
                    .batch_execute("SET search_path = converge")
                    .expect("schema");
                client
                    .query(sql, &[&run])
                    .expect("read")
                    .iter()
                    .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3)))
                    .collect()
            }
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }
}

/// Makes a fresh store for each case.
struct Stores {
    dir: tempfile::TempDir,
    cluster: Cluster,
}

impl Stores {
    fn fresh(&self, backend: &str, case: &str) -> Store {
        match backend {
            "sqlite" => Store::Sqlite(self.dir.path().join(format!("{case}.journal"))),
            _ => Store::Postgres(self.cluster.database(case).expect("a database")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A real run: two seeds, a reacting agent, and a key that needs a human's approval.
// ---------------------------------------------------------------------------------------------

fn engine() -> Engine {
    let mut engine = Engine::new();
    engine.register(SeedAgent::new("seed-1", json!({"sales": [3, 5, 8]})));
    engine.register(SeedAgent::new("seed-2", "second seed"));
    engine.register(ReactOnceAgent::new("hyp-1", "demand is seasonal"));
    engine
}

fn gated_engine() -> Engine {
    let mut engine = engine();
    engine.set_policy(
        ContextKey::Hypotheses,
        ValidationPolicy::new().requiring_approval(),
    );
    engine
}

fn header() -> RunHeader {
    RunHeader {
        agents: vec!["seed-1".into(), "seed-2".into(), "hyp-1".into()],
        created_by: "tests/conformance.rs".to_owned(),
        intent: Some(json!({"objective": "plan inventory"})),
        job: None,
    }
}

fn holder() -> Holder {
    Holder::this_process("tests/conformance.rs")
}

fn elsewhere() -> Holder {
    Holder {
        name: "converge worker".to_owned(),
        host: "another-machine".to_owned(),
        pid: 4242,
    }
}

fn run_id(id: &str) -> RunId {
    RunId::new(id).expect("valid run id")
}

/// What a recording appended, and how the run ended.
struct Recording {
    steps: Vec<(StepInput, EventBatch)>,
    result: Option<ConvergeResult>,
}

impl Recording {
    /// The recorded steps, as a driver hands them to [`Journal::append_steps`].
    fn pending(&self) -> Vec<PendingStep> {
        self.steps
            .iter()
            .map(|(input, events)| PendingStep::new(input.clone(), events.clone()))
            .collect()
    }
}

/// Runs created under the names `names`, each with every one of `steps` to commit from its
/// start, its lease given up with them.
fn created_with(journal: &mut dyn Journal, names: &[&str], steps: &[PendingStep]) -> Vec<RunSteps> {
    names
        .iter()
        .map(|name| RunSteps {
            lease: journal
                .create_run(&run_id(name), &header(), &holder(), 0)
                .expect("created"),
            first: 0,
            steps: steps.to_vec(),
            after: AfterSteps::Release,
        })
        .collect()
}

/// Drives `engine` sequentially, appending every step under `lease`; a run that parks is
/// approved by a human and continued. Stops at the first journal error.
fn record_with(
    journal: &mut dyn Journal,
    engine: &Engine,
    lease: &Lease,
) -> (Recording, Result<(), JournalError>) {
    let mut recording = Recording {
        steps: Vec::new(),
        result: None,
    };
    let mut next = 0;
    let mut commit = |recording: &mut Recording, input: StepInput, events: EventBatch| {
        journal.append(lease, next, &input, &events)?;
        next += 1;
        recording.steps.push((input, events));
        Ok::<(), JournalError>(())
    };
    let outcome = (|| {
        let mut run = engine.start(Context::new()).expect("valid agents");
        let events = run.take_events();
        commit(
            &mut recording,
            StepInput::Start { header: header() },
            events,
        )?;
        loop {
            drive(&mut run, &mut |input, events| {
                commit(&mut recording, input, events)
            })?;
            let result = run.finish().ok().expect("stopped");
            let StopReason::AwaitingApproval { pending } = &result.stop_reason else {
                recording.result = Some(result);
                return Ok(());
            };
            let alice = Actor::human("alice").expect("valid actor");
            let decisions: Vec<Decision> = pending
                .iter()
                .map(|pending| Decision::approve(pending.proposal, pending.hash, alice.clone()))
                .collect();
            run = engine
                .resume_run(result, decisions.clone())
                .expect("resumable");
            let events = run.take_events();
            commit(&mut recording, StepInput::decisions(&decisions), events)?;
        }
    })();
    (recording, outcome)
}

fn drive(
    run: &mut Run<'_>,
    commit: &mut dyn FnMut(StepInput, EventBatch) -> Result<(), JournalError>,
) -> Result<(), JournalError> {
    loop {
        match run.next_step() {
            Step::Execute(batch) => {
                let outcomes: Vec<_> = batch
                    .agents()
                    .iter()
                    .map(|&agent| (agent, execute_isolated(run.agent(agent), run.context())))
                    .collect();
                let input = StepInput::cycle(&batch, &outcomes);
                run.submit(outcomes).expect("a complete batch");
                commit(input, run.take_events())?;
            }
            Step::Stopped => {
                let events = run.take_events();
                if !events.is_empty() {
                    commit(StepInput::Stop, events)?;
                }
                return Ok(());
            }
        }
    }
}

/// Creates run `id` and records the gated scenario into it.
fn record(journal: &mut dyn Journal, id: &RunId) -> (Recording, Result<(), JournalError>) {
    let lease = match journal.create_run(id, &header(), &holder(), 0) {
        Ok(lease) => lease,
        Err(error) => {
            let recording = Recording {
                steps: Vec::new(),
                result: None,
            };
            return (recording, Err(error));
        }
    };
    record_with(journal, &gated_engine(), &lease)
}

fn intact(journal: &dyn Journal, id: &RunId) -> (u64, Digest) {
    match journal.verify(id).expect("verify reads") {
        Verification::Intact {
            events, root_hash, ..
        } => (events, root_hash),
        Verification::Broken { at, reason } => panic!("broken at {at}: {reason}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The cases
// ---------------------------------------------------------------------------------------------

fn round_trip(store: &Store) {
    let mut journal = store.open();
    let id = run_id("run-1");
    let (recording, outcome) = record(journal.as_mut(), &id);
    outcome.expect("recorded");
    let result = recording.result.as_ref().expect("finished");
    assert!(result.converged, "the approved run converges");

    let loaded = journal.load(&id).expect("loads");
    assert_eq!(loaded.steps.len(), recording.steps.len());
    for (step, (input, events)) in loaded.steps.iter().zip(&recording.steps) {
        assert_eq!(&step.input, input, "step {} input round-trips", step.step);
        let hashes: Vec<Digest> = events.records().iter().map(|record| record.hash).collect();
        assert_eq!(step.hashes, hashes, "step {} hashes round-trip", step.step);
    }
    assert_eq!(loaded.root_hash, result.root_hash);
    let (events, root) = intact(journal.as_ref(), &id);
    assert_eq!(root, result.root_hash);

    // A fresh handle reads the same, and every event's exact bytes.
    drop(journal);
    let journal = store.open();
    assert_eq!(journal.load(&id).expect("reloads"), loaded);
    let stored = journal.events(&id, 0).expect("events read");
    let bytes: Vec<Vec<u8>> = recording
        .steps
        .iter()
        .flat_map(|(_, events)| events.iter().map(|(_, body)| body.to_vec()))
        .collect();
    assert_eq!(stored.len() as u64, events);
    assert_eq!(
        stored
            .iter()
            .map(|event| event.body.clone())
            .collect::<Vec<_>>(),
        bytes
    );
    for from in 0..=events + 1 {
        let tail = journal.events(&id, from).expect("a tail reads");
        let expected = usize::try_from(from).unwrap().min(stored.len());
        assert_eq!(tail, stored[expected..], "events from {from}");
        let page = journal.events_page(&id, from, 2).expect("a page reads");
        assert_eq!(page, stored[expected..(expected + 2).min(stored.len())]);
    }
    let runs = journal.runs().expect("lists");
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].record_hash, loaded.record_hash);
    assert_eq!(journal.header(&id).expect("header"), header());
}

/// A cycle of 5,000 agents emits more events than one stored chunk holds, and more outcomes
/// than one stored part holds: both are packed (and read back) in several groups.
fn many_events_span_chunks(store: &Store) {
    let mut journal = store.open();
    let mut engine = Engine::new();
    for index in 0..5000 {
        engine.register(SeedAgent::new(format!("seed-{index}"), index));
    }
    let id = run_id("wide");
    let lease = journal
        .create_run(&id, &header(), &holder(), 0)
        .expect("created");
    let (recording, outcome) = record_with(journal.as_mut(), &engine, &lease);
    outcome.expect("recorded");
    let (events, root) = intact(journal.as_ref(), &id);
    assert!(events > 10_000, "two events per agent at least");
    assert_eq!(root, recording.result.expect("finished").root_hash);
    let all = journal.events(&id, 0).expect("reads");
    for from in [4095, 4096, 4097, 8191, 8192, events - 1] {
        let tail = journal.events(&id, from).expect("reads");
        assert_eq!(tail, all[usize::try_from(from).unwrap()..], "from {from}");
    }
    let loaded = journal.load(&id).expect("loads");
    let cycle = loaded
        .steps
        .iter()
        .find_map(|step| match &step.input {
            StepInput::Cycle { outcomes, .. } => Some(outcomes),
            _ => None,
        })
        .expect("a cycle step");
    let agents: Vec<u32> = cycle.iter().map(|(agent, _)| *agent).collect();
    assert_eq!(
        agents,
        (0..5000).collect::<Vec<u32>>(),
        "every outcome, in agent order"
    );
    let recorded = recording.steps.iter().find_map(|(input, _)| match input {
        StepInput::Cycle { outcomes, .. } => Some(outcomes),
        _ => None,
    });
    assert_eq!(Some(cycle), recorded, "outcomes read back as appended");
}

/// A wide cycle's encodings packed while the run merges it (`converge_journal::packer`) are
/// stored byte for byte as packing the whole batch at the commit stores them; a step whose
/// batch handed encodings over is refused, writing nothing, without its packed groups or
/// with another step's.
fn packed_while_running(store: &Store) {
    let mut journal = store.open();
    let mut engine = Engine::new();
    for index in 0..5000 {
        engine.register(SeedAgent::new(format!("seed-{index}"), index));
    }
    let plain = run_id("plain");
    let lease = journal
        .create_run(&plain, &header(), &holder(), 0)
        .expect("created");
    let (_, outcome) = record_with(journal.as_mut(), &engine, &lease);
    outcome.expect("recorded");

    let id = run_id("packed");
    let lease = journal
        .create_run(&id, &header(), &holder(), 0)
        .expect("created");
    let (steps, groups) = packed_steps(&engine);
    let handed: Vec<usize> = steps.iter().map(|(_, events)| events.handed()).collect();
    assert!(
        handed.iter().sum::<usize>() >= 8192,
        "the cycle's encodings went to the packer: {handed:?}"
    );
    let pending: Vec<PendingStep> = steps
        .iter()
        .zip(&groups)
        .map(|((input, events), packed)| {
            PendingStep::new(input.clone(), events.clone()).with_packed(packed.clone())
        })
        .collect();
    let (cycle, wide) = steps
        .iter()
        .enumerate()
        .max_by_key(|(_, (_, events))| events.handed())
        .expect("steps");
    // A narrower run's groups for its own wide step: fewer than this one's.
    let mut narrower = Engine::new();
    for index in 0..3000 {
        narrower.register(SeedAgent::new(format!("seed-{index}"), index));
    }
    let (_, other) = packed_steps(&narrower);
    let other = other
        .into_iter()
        .max_by_key(PackedEvents::events)
        .expect("groups");
    assert!(other.events() > 0 && other.events() < wide.1.handed());

    // Without its packed groups, or with another step's, the wide step is refused.
    let committed = |journal: &dyn Journal| journal.summary(&id).expect("summary").steps;
    journal
        .append_steps(&lease, 0, &pending[..cycle], AfterSteps::KeepLease)
        .expect("the steps before the wide one");
    let before = committed(journal.as_ref());
    let unpacked = journal.append(&lease, cycle as u64, &wide.0, &wide.1);
    assert!(
        matches!(&unpacked, Err(JournalError::ChainMismatch { seq, .. }) if *seq == wide.1.first_seq()),
        "{unpacked:?}"
    );
    let wrong = PendingStep::new(wide.0.clone(), wide.1.clone()).with_packed(other);
    let refused = journal.append_steps(&lease, cycle as u64, &[wrong], AfterSteps::KeepLease);
    assert!(
        matches!(&refused, Err(JournalError::ChainMismatch { seq, .. }) if *seq > wide.1.first_seq()),
        "{refused:?}"
    );
    assert_eq!(
        committed(journal.as_ref()),
        before,
        "a refusal writes nothing"
    );

    journal
        .append_steps(&lease, cycle as u64, &pending[cycle..], AfterSteps::Release)
        .expect("the packed steps commit");
    let (events, root) = intact(journal.as_ref(), &id);
    assert_eq!((events, root), intact(journal.as_ref(), &plain));
    let bodies = |id: &RunId| -> Vec<Vec<u8>> {
        journal
            .events(id, 0)
            .expect("events read")
            .into_iter()
            .map(|event| event.body)
            .collect()
    };
    assert_eq!(bodies(&id), bodies(&plain), "the same bytes stored");
    let chunks = store.chunks("packed");
    assert!(
        chunks.len() >= 3,
        "the wide cycle spans chunks: {}",
        chunks.len()
    );
    assert!(
        chunks == store.chunks("plain"),
        "the same chunks stored, compressed to the same bytes"
    );
}

/// Drives `engine` with its encodings handed to a packer, taking each step's packed groups.
fn packed_steps(engine: &Engine) -> (Vec<(StepInput, EventBatch)>, Vec<PackedEvents>) {
    let mut run = engine.start(Context::new()).expect("valid agents");
    let (sink, mut packed) = converge_journal::packer();
    run.hand_encoded_events_to(Box::new(sink));
    let mut steps = vec![(StepInput::Start { header: header() }, run.take_events())];
    drive(&mut run, &mut |input, events| {
        steps.push((input, events));
        Ok(())
    })
    .expect("driven");
    let groups = steps
        .iter()
        .map(|(_, events)| {
            let groups = packed.take(events).expect("packed");
            assert_eq!(groups.events(), events.handed());
            groups
        })
        .collect();
    (steps, groups)
}

fn refusals_write_nothing(store: &Store) {
    let mut journal = store.open();
    let id = run_id("run-1");
    let (recording, outcome) = record(journal.as_mut(), &id);
    outcome.expect("recorded");
    // The run's own holder takes its lease again (a refusal must not change even that).
    let lease = journal
        .acquire(&id, &holder(), 1)
        .expect("the run's own holder");
    let before = journal.summary(&id).expect("summary");

    let exists = journal.create_run(&id, &header(), &holder(), 0);
    assert!(matches!(exists, Err(JournalError::RunExists { .. })));
    let unknown = journal.load(&run_id("nope"));
    assert!(matches!(unknown, Err(JournalError::UnknownRun { .. })));

    // A stopped run accepts nothing more, whatever the step.
    let (input, events) = recording.steps.last().expect("steps").clone();
    let again = journal.append(&lease, before.steps, &input, &events);
    assert!(matches!(again, Err(JournalError::RunStopped { .. })));

    // Out of order, a misplaced start, a chain that does not continue.
    let other = run_id("run-2");
    let lease = journal
        .create_run(&other, &header(), &holder(), 0)
        .expect("created");
    let (start, start_events) = recording.steps[0].clone();
    let skipped = journal.append(&lease, 1, &start, &start_events);
    assert!(matches!(skipped, Err(JournalError::OutOfOrder { .. })));
    let (cycle, cycle_events) = recording.steps[1].clone();
    let not_start = journal.append(&lease, 0, &cycle, &cycle_events);
    assert!(matches!(not_start, Err(JournalError::InvalidStep { .. })));
    journal
        .append(&lease, 0, &start, &start_events)
        .expect("the start");
    let (_, later_events) = recording.steps[2].clone();
    let unchained = journal.append(&lease, 1, &cycle, &later_events);
    assert!(matches!(unchained, Err(JournalError::ChainMismatch { .. })));

    assert_eq!(journal.summary(&id).expect("summary"), before);
    assert_eq!(journal.summary(&other).expect("summary").steps, 1);
    intact(journal.as_ref(), &id);
    intact(journal.as_ref(), &other);
}

/// An agent whose server is down: it always fails.
struct Down;

impl Agent for Down {
    fn name(&self) -> &str {
        "down"
    }

    fn dependencies(&self) -> &[ContextKey] {
        &[]
    }

    fn requested_scope(&self) -> AuthorityScope {
        AuthorityScope::keys([ContextKey::Signals])
    }

    fn accepts(&self, ctx: &Context) -> bool {
        !ctx.has(ContextKey::Signals)
    }

    fn execute(&self, _: &Context) -> AgentEffect {
        AgentEffect::failed("connection refused")
    }
}

fn a_stopped_run_takes_only_a_retry(store: &Store) {
    let mut journal = store.open();
    let id = run_id("run-1");
    let lease = journal
        .create_run(&id, &header(), &holder(), 0)
        .expect("created");
    let mut engine = engine();
    engine.register(Down);
    let (recording, outcome) = record_with(journal.as_mut(), &engine, &lease);
    outcome.expect("recorded");
    let result = recording.result.expect("stopped");
    assert_eq!(result.failures.len(), 1, "{:?}", result.stop_reason);
    let before = journal.summary(&id).expect("summary");
    assert!(matches!(before.status, RunStatus::Stopped { .. }));

    // Decisions without a retry are refused: a stopped run is closed but for a retry.
    let mut parked = engine.start(Context::new()).expect("valid agents");
    let unrelated = journal.append(
        &lease,
        before.steps,
        &StepInput::Stop,
        &parked.take_events(),
    );
    assert!(matches!(unrelated, Err(JournalError::RunStopped { .. })));

    let retry = Retry::new(
        Actor::human("alice").expect("valid"),
        ["down"],
        "server is up",
    );
    let mut run = engine.retry_run(result, &retry).expect("retryable");
    let events = run.take_events();
    journal
        .append(&lease, before.steps, &StepInput::retry(&retry), &events)
        .expect("a retry continues a stopped run");
    assert_eq!(
        journal.summary(&id).expect("summary").status,
        RunStatus::Running
    );
    let mut next = before.steps + 1;
    drive(&mut run, &mut |input, events| {
        journal.append(&lease, next, &input, &events)?;
        next += 1;
        Ok(())
    })
    .expect("the retried run goes on");
    intact(journal.as_ref(), &id);
    let recorded = journal.load(&id).expect("loads");
    let retried = &recorded.steps[before.steps as usize].input;
    assert_eq!(retried.retry_into_core(), Some(retry));
}

fn leases(store: &Store) {
    let mut mine = store.open();
    let mut theirs = store.open();
    let id = run_id("leased");
    let lease = mine
        .create_run(&id, &header(), &holder(), 1_000)
        .expect("created");
    let summary = theirs.summary(&id).expect("summary");
    assert_eq!(
        summary.lease.as_ref().map(|(holder, _)| holder),
        Some(&holder())
    );

    // Refused while live, naming the holder.
    match theirs.acquire(&id, &elsewhere(), 2_000) {
        Err(JournalError::Leased { holder: named, .. }) => assert_eq!(named, holder()),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Renewed, it stays live past its first expiry.
    let mut lease = lease;
    mine.renew(&mut lease, 20_000).expect("renewed");
    assert_eq!(lease.expires_ms(), 20_000 + LEASE_TTL_MS);
    assert!(
        theirs
            .acquire(&id, &elsewhere(), 1_000 + LEASE_TTL_MS + 1)
            .is_err()
    );

    // Expired, it is taken over; the old holder's writes are refused and write nothing.
    let taken = theirs
        .acquire(&id, &elsewhere(), 20_000 + LEASE_TTL_MS + 1)
        .expect("taken over after expiry");
    let engine = gated_engine();
    let mut run = engine.start(Context::new()).expect("valid");
    let events = run.take_events();
    let start = StepInput::Start { header: header() };
    let lost = mine.append(&lease, 0, &start, &events);
    assert!(
        matches!(lost, Err(JournalError::LeaseLost { .. })),
        "{lost:?}"
    );
    assert!(matches!(
        mine.renew(&mut lease, 30_000),
        Err(JournalError::LeaseLost { .. })
    ));
    mine.release(&lease)
        .expect("releasing a lost lease is no error");
    assert_eq!(theirs.summary(&id).expect("summary").steps, 0);
    theirs
        .append(&taken, 0, &start, &events)
        .expect("the new holder writes");
    theirs.release(&taken).expect("released");
    assert_eq!(theirs.summary(&id).expect("summary").lease, None);
    mine.acquire(&id, &holder(), 0).expect("free again");
}

fn a_live_lease_is_preempted(store: &Store) {
    let mut mine = store.open();
    let mut theirs = store.open();
    let id = run_id("preempted");
    let mut lease = mine
        .create_run(&id, &header(), &holder(), 1_000)
        .expect("created");
    let engine = gated_engine();
    let mut run = engine.start(Context::new()).expect("valid");
    let events = run.take_events();
    let start = StepInput::Start { header: header() };
    mine.append(&lease, 0, &start, &events)
        .expect("the holder writes");
    // Live and unexpired, yet taken: a cancellation from elsewhere.
    let taken = theirs
        .preempt(&id, &elsewhere(), 2_000)
        .expect("preempted while live");
    let summary = theirs.summary(&id).expect("summary");
    assert_eq!(
        summary.lease.as_ref().map(|(holder, _)| holder),
        Some(&elsewhere())
    );
    // The previous holder's commits and renewals are refused and write nothing.
    let halt = StepInput::Halt {
        reason: serde_json::json!({"halt": "cancelled"}),
    };
    let _ = run.halt(converge_core::StopReason::Halted {
        reason: "cancelled".to_owned(),
    });
    let halted = run.take_events();
    assert!(matches!(
        mine.append(&lease, 1, &halt, &halted),
        Err(JournalError::LeaseLost { .. })
    ));
    assert!(matches!(
        mine.renew(&mut lease, 3_000),
        Err(JournalError::LeaseLost { .. })
    ));
    assert_eq!(theirs.summary(&id).expect("summary").steps, 1);
    theirs.release(&taken).expect("released");
    assert_eq!(theirs.summary(&id).expect("summary").lease, None);
    // A run that does not exist cannot be preempted.
    assert!(matches!(
        theirs.preempt(&run_id("nowhere"), &elsewhere(), 2_000),
        Err(JournalError::UnknownRun { .. })
    ));
}

/// A run of `engine` created as `name` with its start appended, and its first cycle executed
/// but neither submitted nor appended: its id, lease, the run, the cycle's input and outcomes.
fn first_cycle<'e>(
    journal: &mut dyn Journal,
    engine: &'e Engine,
    name: &str,
) -> (
    RunId,
    Lease,
    Run<'e>,
    StepInput,
    Vec<(AgentId, AgentOutcome)>,
) {
    let id = run_id(name);
    let lease = journal
        .create_run(&id, &header(), &holder(), 0)
        .expect("created");
    let mut run = engine.start(Context::new()).expect("valid");
    let start = StepInput::Start { header: header() };
    journal
        .append(&lease, 0, &start, &run.take_events())
        .expect("start");
    let Step::Execute(batch) = run.next_step() else {
        panic!("a first cycle");
    };
    let outcomes: Vec<_> = batch
        .agents()
        .iter()
        .map(|&agent| (agent, execute_isolated(run.agent(agent), run.context())))
        .collect();
    let input = StepInput::cycle(&batch, &outcomes);
    (id, lease, run, input, outcomes)
}

/// The cycle and the outcome records of a cycle's input.
fn cycle_of(input: &StepInput) -> (u32, &[(u32, OutcomeRecord)]) {
    let StepInput::Cycle {
        cycle, outcomes, ..
    } = input
    else {
        panic!("a cycle");
    };
    (*cycle, outcomes)
}

fn outcomes_ahead_of_their_step(store: &Store) {
    let mut journal = store.open();
    let engine = engine();
    let (id, lease, mut run, input, outcomes) = first_cycle(journal.as_mut(), &engine, "ahead");
    let (cycle, records) = cycle_of(&input);
    journal
        .commit_outcomes(&lease, 1, cycle, &records[..1])
        .expect("the first agent's outcome");
    journal
        .commit_outcomes(&lease, 1, cycle, &records[..1])
        .expect("committed at most once");
    let open = journal
        .load(&id)
        .expect("loads")
        .open
        .expect("an open cycle");
    assert_eq!(open.outcomes, records[..1].to_vec());
    assert!(journal.commit_outcomes(&lease, 2, cycle, records).is_err());

    run.submit(outcomes).expect("complete");
    journal
        .append(&lease, 1, &input, &run.take_events())
        .expect("the cycle");
    let loaded = journal.load(&id).expect("loads");
    assert_eq!(loaded.open, None);
    assert_eq!(loaded.steps[1].input, input);
    intact(journal.as_ref(), &id);
}

/// Outcomes committed ahead of their step count when the step is committed with other runs'
/// (`append_steps_of_runs`, which reads them with the rows it locks): each is stored once,
/// the step's input is whole, and the runs verify.
fn outcomes_ahead_in_a_group(store: &Store) {
    let mut journal = store.open();
    let engine = engine();
    let mut group = Vec::new();
    let mut inputs = Vec::new();
    for (index, name) in ["group-ahead-b", "group-ahead-a"].into_iter().enumerate() {
        let (id, lease, mut run, input, outcomes) = first_cycle(journal.as_mut(), &engine, name);
        // One run has its first outcome committed ahead, the other none.
        if index == 0 {
            let (cycle, records) = cycle_of(&input);
            journal
                .commit_outcomes(&lease, 1, cycle, &records[..1])
                .expect("the first agent's outcome");
        }
        run.submit(outcomes).expect("complete");
        group.push(RunSteps {
            lease,
            first: 1,
            steps: vec![PendingStep::new(input.clone(), run.take_events())],
            after: AfterSteps::Release,
        });
        inputs.push((id, input));
    }
    let answers = journal.append_steps_of_runs(&group);
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    for (id, input) in &inputs {
        let loaded = journal.load(id).expect("loads");
        assert_eq!(loaded.open, None, "{id}");
        assert_eq!(&loaded.steps[1].input, input, "{id}: every outcome once");
        intact(journal.as_ref(), id);
    }
}

/// Every write failing, before or after it commits, leaves a run that loads and verifies.
fn injected_failures(store: &Store) {
    let mut writes = None;
    for after in [false, true] {
        for k in 0.. {
            if writes.is_some_and(|writes| k >= writes) {
                break;
            }
            let id = run_id(&format!("fail-{after}-{k}"));
            let inner = store.open();
            let mut failing = if after {
                FailingJournal::after_write(inner, k)
            } else {
                FailingJournal::new(inner, k)
            };
            let (recording, outcome) = record(&mut failing, &id);
            let journal = failing.into_inner();
            match outcome {
                Ok(()) => {
                    writes = Some(k);
                    break;
                }
                Err(JournalError::Injected { .. }) => {}
                Err(other) => panic!("write {k}: {other}"),
            }
            let stored = journal.load(&id).expect("loads after a failed write");
            let committed = recording.steps.len() + usize::from(after);
            assert_eq!(stored.steps.len(), committed, "write {k}, after: {after}");
            intact(journal.as_ref(), &id);
        }
    }
    assert!(
        writes.is_some_and(|writes| writes >= 4),
        "the scenario writes several steps"
    );
}

/// Steps committed together ([`Journal::append_steps`]): the same record as one by one, all
/// or nothing, fenced by the lease, and the lease given up in the same transaction.
fn steps_commit_together(store: &Store) {
    let mut journal = store.open();
    let one_by_one = run_id("one-by-one");
    let (recording, outcome) = record(journal.as_mut(), &one_by_one);
    outcome.expect("recorded");
    let steps = recording.pending();
    assert!(steps.len() >= 4, "the scenario has several steps");

    let id = run_id("together");
    let lease = journal
        .create_run(&id, &header(), &holder(), 0)
        .expect("created");
    // Out of place (the second step first), or a step out of order in the middle: refused,
    // nothing written.
    let refused = journal.append_steps(&lease, 1, &steps[1..], AfterSteps::KeepLease);
    assert!(
        matches!(refused, Err(JournalError::OutOfOrder { .. })),
        "{refused:?}"
    );
    let mut shuffled: Vec<PendingStep> = steps
        .iter()
        .map(|step| PendingStep::new(step.input().clone(), step.events().clone()))
        .collect();
    shuffled.swap(1, 2);
    let refused = journal.append_steps(&lease, 0, &shuffled, AfterSteps::KeepLease);
    assert!(refused.is_err(), "a step that does not continue the chain");
    assert_eq!(journal.summary(&id).expect("summary").steps, 0);

    // The first two alone, then the rest with the lease given up: the record of the run
    // appended step by step.
    journal
        .append_steps(&lease, 0, &steps[..2], AfterSteps::KeepLease)
        .expect("two steps");
    assert_eq!(journal.summary(&id).expect("summary").steps, 2);
    journal
        .append_steps(&lease, 2, &steps[2..], AfterSteps::Release)
        .expect("the rest");
    let together = journal.load(&id).expect("loads");
    let reference = journal.load(&one_by_one).expect("loads");
    assert_eq!(together.steps, reference.steps, "the same steps");
    assert_eq!(together.root_hash, reference.root_hash);
    let (events, root) = intact(journal.as_ref(), &id);
    assert_eq!((events, root), intact(journal.as_ref(), &one_by_one));
    let summary = journal.summary(&id).expect("summary");
    assert_eq!(summary.lease, None, "given up with the last steps");
    assert!(
        matches!(summary.status, RunStatus::Stopped { .. }),
        "{:?}",
        summary.status
    );

    // Inputs encoded ahead of their commit store exactly what plain ones do.
    let prepared_id = run_id("prepared");
    let lease = journal
        .create_run(&prepared_id, &header(), &holder(), 0)
        .expect("created");
    let prepared: Vec<PendingStep> = steps
        .iter()
        .map(|step| {
            let input = PreparedInput::new(step.input().clone()).expect("encodes");
            PendingStep::prepared(input, step.events().clone())
        })
        .collect();
    journal
        .append_steps(&lease, 0, &prepared, AfterSteps::Release)
        .expect("prepared steps");
    let stored = journal.load(&prepared_id).expect("loads");
    assert_eq!(stored.steps, reference.steps, "the same steps");
    assert_eq!(
        intact(journal.as_ref(), &prepared_id),
        intact(journal.as_ref(), &one_by_one)
    );

    // A writer whose lease was taken commits nothing, however many steps it holds.
    let fenced = run_id("fenced");
    let mut theirs = store.open();
    let lost = journal
        .create_run(&fenced, &header(), &holder(), 0)
        .expect("created");
    let taken = theirs.preempt(&fenced, &elsewhere(), 0).expect("preempted");
    let refused = journal.append_steps(&lost, 0, &steps, AfterSteps::Release);
    assert!(
        matches!(refused, Err(JournalError::LeaseLost { .. })),
        "{refused:?}"
    );
    let summary = theirs.summary(&fenced).expect("summary");
    assert_eq!(summary.steps, 0);
    assert_eq!(
        summary.lease.map(|(holder, _)| holder),
        Some(elsewhere()),
        "the lost lease's release let nothing go"
    );
    // No steps and a release: only the lease is given up.
    theirs
        .append_steps(&taken, 0, &[], AfterSteps::Release)
        .expect("released");
    assert_eq!(theirs.summary(&fenced).expect("summary").lease, None);
    journal
        .acquire(&fenced, &holder(), 0)
        .expect("free once given up");

    // A failed write of several steps is one write, and leaves all of them or none.
    for after in [false, true] {
        let id = run_id(&format!("failing-{after}"));
        let inner = store.open();
        let mut failing = if after {
            FailingJournal::after_write(inner, 0)
        } else {
            FailingJournal::new(inner, 0)
        };
        let lease = failing
            .create_run(&id, &header(), &holder(), 0)
            .expect("created");
        let failed = failing.append_steps(&lease, 0, &steps, AfterSteps::Release);
        assert!(matches!(failed, Err(JournalError::Injected { call: 0 })));
        assert_eq!(failing.writes(), 1);
        let journal = failing.into_inner();
        let stored = journal.summary(&id).expect("summary");
        let committed = if after { steps.len() as u64 } else { 0 };
        assert_eq!(stored.steps, committed, "after: {after}");
        intact(journal.as_ref(), &id);
    }
}

/// Several runs' steps commit in one group, each exactly as `append_steps` commits it; a
/// run refused in a group (its lease taken) costs the others nothing: they commit, and the
/// refused one writes nothing.
fn runs_commit_together(store: &Store) {
    let mut journal = store.open();
    let reference = run_id("reference");
    let (recording, outcome) = record(journal.as_mut(), &reference);
    outcome.expect("recorded");
    let steps = recording.pending();
    let check = |journal: &(dyn Journal + Send), name: &str| {
        let id = run_id(name);
        let loaded = journal.load(&id).expect("loads");
        let expected = journal.load(&reference).expect("loads");
        assert_eq!(loaded.steps, expected.steps, "{name}: the same steps");
        assert_eq!(intact(journal, &id), intact(journal, &reference));
        assert_eq!(journal.summary(&id).expect("summary").lease, None, "{name}");
    };

    // Given in any order: each run is locked in the order of the ids.
    let runs = created_with(journal.as_mut(), &["group-c", "group-a", "group-b"], &steps);
    let answers = journal.append_steps_of_runs(&runs);
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    for name in ["group-a", "group-b", "group-c"] {
        check(journal.as_ref(), name);
    }

    // One lease taken by another process: that run is refused and writes nothing, the
    // others commit.
    let runs = created_with(journal.as_mut(), &["mixed-a", "mixed-b", "mixed-c"], &steps);
    let mut theirs = store.open();
    theirs
        .preempt(&run_id("mixed-b"), &elsewhere(), 0)
        .expect("preempted");
    let answers = journal.append_steps_of_runs(&runs);
    assert!(answers[0].is_ok() && answers[2].is_ok(), "{answers:?}");
    assert!(
        matches!(answers[1], Err(JournalError::LeaseLost { .. })),
        "{answers:?}"
    );
    check(journal.as_ref(), "mixed-a");
    check(journal.as_ref(), "mixed-c");
    let refused = journal.summary(&run_id("mixed-b")).expect("summary");
    assert_eq!(refused.steps, 0);
    assert_eq!(refused.lease.map(|(holder, _)| holder), Some(elsewhere()));

    // The same run twice: the first commits and gives the lease up, so the second is
    // refused.
    let runs = created_with(journal.as_mut(), &["twice"], &steps);
    let twice = [runs[0].clone(), runs[0].clone()];
    let answers = journal.append_steps_of_runs(&twice);
    assert!(answers[0].is_ok(), "{answers:?}");
    assert!(
        matches!(answers[1], Err(JournalError::LeaseLost { .. })),
        "{answers:?}"
    );
    check(journal.as_ref(), "twice");
}

/// The steps of runs that end and the claim of the next runs commit together: the ending
/// runs are committed and let go, the oldest runnable runs are leased and read as
/// `claim_loaded` reads them, and on PostgreSQL every row changed carries one transaction's
/// id. A refused run sends the group run by run, and the claim still happens.
fn runs_end_and_begin_together(store: &Store) {
    let mut journal = store.open();
    let reference = run_id("reference");
    let (recording, outcome) = record(journal.as_mut(), &reference);
    outcome.expect("recorded");
    let steps = recording.pending();
    for name in ["waiting-1", "waiting-2", "waiting-3", "waiting-4"] {
        let lease = journal
            .create_run(&run_id(name), &header(), &holder(), 0)
            .expect("created");
        journal.release(&lease).expect("released: submitted");
    }
    let worker = elsewhere();
    let runs = created_with(journal.as_mut(), &["ending-b", "ending-a"], &steps);
    let GroupAndClaim {
        committed, claimed, ..
    } = journal.append_steps_of_runs_and_claim(&runs, &worker, 2_000, 2);
    assert!(committed.iter().all(Result::is_ok), "{committed:?}");
    let expected = journal.load(&reference).expect("loads");
    for name in ["ending-a", "ending-b"] {
        let id = run_id(name);
        assert_eq!(journal.load(&id).expect("loads").steps, expected.steps);
        assert_eq!(journal.summary(&id).expect("summary").lease, None, "{name}");
    }
    if let Store::Postgres(url) = store {
        let mut client = postgres::Client::connect(url, postgres::NoTls).expect("raw");
        let ids = ["ending-a", "ending-b", "waiting-1", "waiting-2"];
        let transactions: i64 = client
            .query_one(
                "SELECT count(DISTINCT xmin::text) FROM converge.runs WHERE id = ANY($1)",
                &[&&ids[..]],
            )
            .and_then(|row| row.try_get(0))
            .expect("counted");
        assert_eq!(transactions, 1, "one transaction");
    }
    let claimed = claimed.expect("claimed");
    let names: Vec<&str> = claimed
        .iter()
        .map(|claim| claim.lease.run().as_str())
        .collect();
    assert_eq!(names, ["waiting-1", "waiting-2"], "oldest first, at most 2");
    for claim in &claimed {
        let recorded = claim.recorded.as_ref().expect("loaded");
        assert_eq!(recorded, &journal.load(claim.lease.run()).expect("loads"));
        assert_eq!(
            recorded.lease.as_ref().map(|(holder, _)| holder),
            Some(&worker),
            "under the claim's lease"
        );
        let mut lease = claim.lease.clone();
        journal.renew(&mut lease, 2_500).expect("its run's lease");
    }
    assert_ne!(claimed[0].lease.token(), claimed[1].lease.token());

    // One run's lease taken by another process: the others commit, then the claim.
    let runs = created_with(journal.as_mut(), &["mixed-a", "mixed-b"], &steps);
    journal
        .preempt(&run_id("mixed-b"), &elsewhere(), 0)
        .expect("preempted");
    let GroupAndClaim {
        committed, claimed, ..
    } = journal.append_steps_of_runs_and_claim(&runs, &worker, 2_000, 1);
    assert!(committed[0].is_ok(), "{committed:?}");
    assert!(
        matches!(committed[1], Err(JournalError::LeaseLost { .. })),
        "{committed:?}"
    );
    let claimed = claimed.expect("claimed");
    assert!(
        claimed
            .iter()
            .map(|claim| claim.lease.run())
            .eq([&run_id("waiting-3")])
    );

    // Nothing to claim: the group alone.
    let runs = created_with(journal.as_mut(), &["alone"], &steps);
    let GroupAndClaim {
        committed, claimed, ..
    } = journal.append_steps_of_runs_and_claim(&runs, &worker, 2_000, 0);
    assert!(committed.iter().all(Result::is_ok), "{committed:?}");
    assert!(claimed.expect("nothing claimed").is_empty());
    assert_eq!(
        journal
            .summary(&run_id("waiting-4"))
            .expect("summary")
            .lease,
        None
    );
}

/// A submitted run is recorded in one write, leased to no one: any worker claims it at once,
/// and on PostgreSQL a waiter for runs to drive hears of it, and its row was written once
/// (no lease taken and given up).
fn a_submitted_run_is_leased_to_no_one(store: &Store) {
    let location = match store {
        Store::Sqlite(path) => Location::Sqlite(path.clone()),
        Store::Postgres(url) => Location::Postgres(url.clone()),
    };
    let mut journal = store.open();
    let mut runnable = Wakeups::new(&location, News::Runnable).expect("a waiter");
    runnable.wait(Duration::from_millis(10)).expect("listens");
    let id = run_id("submitted");
    journal
        .submit_run(&id, &header(), &holder(), 0)
        .expect("submitted");
    let summary = journal.summary(&id).expect("summary");
    assert_eq!(summary.status, RunStatus::Running);
    assert_eq!((summary.steps, summary.lease), (0, None));
    assert!(matches!(
        journal.submit_run(&id, &header(), &holder(), 0),
        Err(JournalError::RunExists { .. })
    ));
    if let Store::Postgres(url) = store {
        let heard = runnable.wait(Duration::from_secs(5)).expect("waits");
        assert_eq!(heard, vec![id.clone()]);
        let mut client = postgres::Client::connect(url, postgres::NoTls).expect("raw");
        let place: String = client
            .query_one(
                "SELECT ctid::text FROM converge.runs WHERE id = 'submitted'",
                &[],
            )
            .and_then(|row| row.try_get(0))
            .expect("read");
        assert_eq!(place, "(0,1)", "inserted once, never updated");
    }
    let mut theirs = store.open();
    let claimed = theirs.claim_loaded(&elsewhere(), 0, 5).expect("claims");
    assert!(claimed.iter().map(|claim| claim.lease.run()).eq([&id]));
    let recorded = claimed[0].recorded.as_ref().expect("loaded");
    assert_eq!(recorded.header, header());
}

fn concurrent_writers(store: &Store) {
    let threads: Vec<_> = (0..4)
        .map(|index| {
            let mut journal = store.open();
            std::thread::spawn(move || {
                let id = run_id(&format!("parallel-{index}"));
                let (recording, outcome) = record(journal.as_mut(), &id);
                outcome.expect("recorded");
                (id, recording.result.expect("finished").root_hash)
            })
        })
        .collect();
    let journal = store.open();
    let mut roots = Vec::new();
    for thread in threads {
        let (id, root) = thread.join().expect("a writer");
        assert_eq!(intact(journal.as_ref(), &id).1, root);
        roots.push(root);
    }
    assert!(
        roots.windows(2).all(|pair| pair[0] == pair[1]),
        "one job, one root"
    );
    assert_eq!(journal.runs().expect("lists").len(), 4);
}

fn racing_takeovers(store: &Store) {
    let mut journal = store.open();
    let id = run_id("raced");
    let lease = journal
        .create_run(&id, &header(), &holder(), 0)
        .expect("created");
    journal.release(&lease).expect("released");
    let barrier = Arc::new(Barrier::new(4));
    let threads: Vec<_> = (0..4u32)
        .map(|index| {
            let mut journal = store.open();
            let barrier = barrier.clone();
            let id = id.clone();
            std::thread::spawn(move || {
                let contender = Holder {
                    pid: 5000 + index,
                    ..elsewhere()
                };
                barrier.wait();
                journal.acquire(&id, &contender, 1_000).is_ok()
            })
        })
        .collect();
    let won = threads
        .into_iter()
        .map(|thread| thread.join().expect("a contender"))
        .filter(|won| *won)
        .count();
    assert_eq!(won, 1, "exactly one takes the lease");
}

fn edits_are_named(store: &Store) {
    let zero = "0".repeat(64);
    let cases: [(String, Place); 3] = [
        (
            "UPDATE steps SET input = input || ' ' WHERE run = '{id}' AND step = 0".to_owned(),
            Place::Input { step: 0 },
        ),
        (
            "UPDATE runs SET header = replace(header, 'inventory', 'inventorY') WHERE id = '{id}'"
                .to_owned(),
            Place::Header,
        ),
        (
            format!("UPDATE runs SET root_hash = '{zero}' WHERE id = '{{id}}'"),
            Place::Run,
        ),
    ];
    for (index, (sql, place)) in cases.into_iter().enumerate() {
        let id = run_id(&format!("edited-{index}"));
        let mut journal = store.open();
        let (_, outcome) = record(journal.as_mut(), &id);
        outcome.expect("recorded");
        drop(journal);
        let sql = sql.replace("{id}", id.as_str());
        store.tamper(&sql);
        let journal = store.open();
        match journal.verify(&id).expect("verify reads") {
            Verification::Broken { at, .. } => assert_eq!(at, place, "{sql}"),
            Verification::Intact { .. } => panic!("{sql} went unnoticed"),
        }
        assert!(journal.load(&id).is_err(), "{sql}: load refuses");
    }
}

/// Submitted runs (created and released) are claimed by concurrent workers exactly once
/// each; a live lease, a run awaiting approval and a stopped run are never claimed; an
/// expired lease is.
fn claims_never_overlap(store: &Store) {
    let mut journal = store.open();
    for index in 0..20 {
        let id = run_id(&format!("queued-{index}"));
        let lease = journal
            .create_run(&id, &header(), &holder(), 0)
            .expect("created");
        journal.release(&lease).expect("released: submitted");
    }
    // Driven by a live process elsewhere: not claimable until its lease expires.
    let live = run_id("live");
    journal
        .create_run(&live, &header(), &elsewhere(), 1_000)
        .expect("created");
    // Stopped and awaiting approval: never claimable.
    let (_, outcome) = record(journal.as_mut(), &run_id("stopped"));
    outcome.expect("recorded");
    let parked = run_id("parked");
    let lease = journal
        .create_run(&parked, &header(), &holder(), 0)
        .expect("created");
    let engine = gated_engine();
    let mut run = engine.start(Context::new()).expect("valid");
    journal
        .append(
            &lease,
            0,
            &StepInput::Start { header: header() },
            &run.take_events(),
        )
        .expect("start");
    let mut next = 1;
    drive(&mut run, &mut |input, events| {
        journal.append(&lease, next, &input, &events)?;
        next += 1;
        Ok(())
    })
    .expect("driven to its approval");
    journal.release(&lease).expect("released");
    assert_eq!(
        journal.summary(&parked).expect("summary").status.name(),
        "awaiting_approval"
    );

    let barrier = Arc::new(Barrier::new(4));
    let workers: Vec<_> = (0..4u32)
        .map(|index| {
            let mut journal = store.open();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let worker = Holder {
                    pid: 6000 + index,
                    ..elsewhere()
                };
                barrier.wait();
                let mut claimed = Vec::new();
                loop {
                    let leases = journal.claim(&worker, 2_000, 3).expect("claims");
                    if leases.is_empty() {
                        return claimed;
                    }
                    claimed.extend(leases.iter().map(|lease| lease.run().clone()));
                }
            })
        })
        .collect();
    let mut claimed: Vec<RunId> = workers
        .into_iter()
        .flat_map(|worker| worker.join().expect("a worker"))
        .collect();
    claimed.sort();
    let mut expected: Vec<RunId> = (0..20)
        .map(|index| run_id(&format!("queued-{index}")))
        .collect();
    expected.sort();
    assert_eq!(claimed, expected, "each submitted run once, nothing else");

    // Once the live lease expires, its run is claimed (its driver is presumed dead).
    let late = journal
        .claim(&holder(), 1_000 + LEASE_TTL_MS, 10)
        .expect("claims");
    assert_eq!(
        late.iter()
            .map(|lease| lease.run().clone())
            .collect::<Vec<_>>(),
        vec![live]
    );
}

/// A claim that loads leases what `claim` would, oldest first, and gives each run as `load`
/// reads it under the new lease: a run partway through with its committed steps, a
/// submitted one with none. A run that cannot be read is claimed with its error, for the
/// claimer to release.
fn claims_load_what_they_lease(store: &Store) {
    let mut journal = store.open();
    let partway = run_id("partway");
    let lease = journal
        .create_run(&partway, &header(), &holder(), 0)
        .expect("created");
    let engine = gated_engine();
    let mut run = engine.start(Context::new()).expect("valid");
    let start = StepInput::Start { header: header() };
    journal
        .append(&lease, 0, &start, &run.take_events())
        .expect("start");
    journal.release(&lease).expect("released");
    for id in ["submitted", "altered"] {
        let lease = journal
            .create_run(&run_id(id), &header(), &holder(), 0)
            .expect("created");
        journal.release(&lease).expect("released: submitted");
    }
    store.tamper(
        "UPDATE runs SET header = replace(header, 'inventory', 'inventorY') \
         WHERE id = 'altered'",
    );

    let worker = elsewhere();
    let claimed = journal
        .claim_loaded(&worker, 2_000, 2)
        .expect("claims and loads");
    let runs: Vec<&RunId> = claimed.iter().map(|claim| claim.lease.run()).collect();
    assert_eq!(
        runs,
        [&partway, &run_id("submitted")],
        "oldest first, at most 2"
    );
    for claim in &claimed {
        let recorded = claim.recorded.as_ref().expect("loaded");
        let loaded = journal.load(claim.lease.run()).expect("loads");
        assert_eq!(recorded, &loaded, "as load reads it");
        assert_eq!(
            recorded.lease.as_ref().map(|(holder, _)| holder),
            Some(&worker),
            "under the claim's lease"
        );
    }
    let steps: Vec<usize> = claimed
        .iter()
        .map(|claim| claim.recorded.as_ref().map_or(0, |run| run.steps.len()))
        .collect();
    assert_eq!(steps, [1, 0]);
    // Each lease has a token of its own, and it is its run's: each renews.
    assert_ne!(claimed[0].lease.token(), claimed[1].lease.token());
    for claim in &claimed {
        let mut lease = claim.lease.clone();
        journal
            .renew(&mut lease, 2_500)
            .expect("the lease is its run's");
    }
    // The leases are the runs' own: a step commits under one.
    let mut run = engine.start(Context::new()).expect("valid");
    journal
        .append(&claimed[1].lease, 0, &start, &run.take_events())
        .expect("a step under the claimed lease");

    let rest = journal
        .claim_loaded(&worker, 2_000, 10)
        .expect("claims the rest");
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].lease.run(), &run_id("altered"));
    match &rest[0].recorded {
        Err(JournalError::Broken { at, .. }) => assert_eq!(*at, Place::Header),
        other => panic!("expected the altered header named, got {other:?}"),
    }
    journal
        .release(&rest[0].lease)
        .expect("its lease is held, and released");
    assert!(
        journal
            .claim_loaded(&worker, 2_000, 10)
            .expect("claims")
            .iter()
            .map(|claim| claim.lease.run())
            .eq([&run_id("altered")]),
        "released, it is claimable again"
    );
}

/// A waiter for runnable runs hears of a submission at once on PostgreSQL (and looks again
/// within its poll on SQLite); a waiter for events hears of the creation.
fn news_wakes_a_waiter(store: &Store) {
    let location = match store {
        Store::Sqlite(path) => Location::Sqlite(path.clone()),
        Store::Postgres(url) => Location::Postgres(url.clone()),
    };
    let mut journal = store.open();
    drop(journal.runs());
    let mut runnable = Wakeups::new(&location, News::Runnable).expect("a waiter");
    let mut events = Wakeups::new(&location, News::Events).expect("a waiter");
    // Connect and listen before the news is made.
    runnable.wait(Duration::from_millis(10)).expect("waits");
    events.wait(Duration::from_millis(10)).expect("waits");
    let id = run_id("submitted");
    let lease = journal
        .create_run(&id, &header(), &holder(), 0)
        .expect("created");
    journal.release(&lease).expect("released");
    let started = Instant::now();
    let heard = runnable.wait(Duration::from_secs(5)).expect("waits");
    match store {
        Store::Postgres(_) => {
            assert_eq!(heard, vec![id.clone()]);
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "woken, not timed out"
            );
            let heard = events.wait(Duration::from_secs(5)).expect("waits");
            assert!(heard.contains(&id), "the creation is news: {heard:?}");
        }
        Store::Sqlite(_) => {
            assert!(heard.is_empty());
            assert!(started.elapsed() <= SQLITE_POLL + Duration::from_millis(50));
        }
    }
}

/// On PostgreSQL a step commits without notifying anyone (every commit that notifies queues
/// on one lock of the whole database), yet a follower of events hears of it within its look;
/// a running run let go by its driver is news for workers and followers alike. On SQLite a
/// follower looks again within its poll.
fn followers_hear_of_steps_without_notifications(store: &Store) {
    let location = match store {
        Store::Sqlite(path) => Location::Sqlite(path.clone()),
        Store::Postgres(url) => Location::Postgres(url.clone()),
    };
    let mut journal = store.open();
    drop(journal.runs());
    let mut follower = Wakeups::new(&location, News::Events).expect("a waiter");
    // Connect, listen and take note of the runs being driven before the news is made.
    follower.wait(Duration::from_millis(10)).expect("waits");
    let Store::Postgres(url) = store else {
        let started = Instant::now();
        assert!(
            follower
                .wait(Duration::from_secs(5))
                .expect("waits")
                .is_empty()
        );
        assert!(started.elapsed() <= SQLITE_POLL + Duration::from_millis(50));
        return;
    };
    let mut raw = postgres::Client::connect(url, postgres::NoTls).expect("raw");
    raw.batch_execute("LISTEN converge_events; LISTEN converge_runnable")
        .expect("listens");
    let id = run_id("followed");
    let lease = journal
        .create_run(&id, &header(), &holder(), wall_clock_ms())
        .expect("created");
    let heard = follower.wait(Duration::from_secs(5)).expect("waits");
    assert!(heard.contains(&id), "the creation is news: {heard:?}");
    assert_eq!(
        notified(&mut raw),
        vec![("converge_events".to_owned(), "followed".to_owned())]
    );

    let engine = engine();
    let mut run = engine.start(Context::new()).expect("valid agents");
    journal
        .append(
            &lease,
            0,
            &StepInput::Start { header: header() },
            &run.take_events(),
        )
        .expect("appended");
    let started = Instant::now();
    let heard = follower.wait(Duration::from_secs(5)).expect("waits");
    assert_eq!(heard, vec![id.clone()], "the step is heard of by looking");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "heard within a look, not at the timeout: {:?}",
        started.elapsed()
    );
    assert_eq!(notified(&mut raw), Vec::new(), "a step notifies no one");

    journal.release(&lease).expect("released");
    let mut heard = notified(&mut raw);
    heard.sort();
    assert_eq!(
        heard,
        vec![
            ("converge_events".to_owned(), "followed".to_owned()),
            ("converge_runnable".to_owned(), "followed".to_owned()),
        ],
        "a running run let go is news on both channels"
    );
}

/// The notifications a raw listener received within 300 ms, as (channel, payload).
fn notified(client: &mut postgres::Client) -> Vec<(String, String)> {
    use postgres::fallible_iterator::FallibleIterator;
    let mut heard = Vec::new();
    let mut notifications = client.notifications();
    let mut waiting = notifications.timeout_iter(Duration::from_millis(300));
    while let Some(note) = waiting.next().expect("notifications") {
        heard.push((note.channel().to_owned(), note.payload().to_owned()));
    }
    heard
}

/// Opening a journal for writing drops the trigger earlier builds created to notify on every
/// change of a run's row (its commits queued on PostgreSQL's notification lock); nothing else
/// changes. SQLite has no such trigger.
fn the_old_notify_trigger_is_dropped(store: &Store) {
    let Store::Postgres(url) = store else {
        return;
    };
    drop(store.open());
    let mut raw = postgres::Client::connect(url, postgres::NoTls).expect("raw");
    let count = |raw: &mut postgres::Client| -> i64 {
        raw.query_one(
            "SELECT count(*) FROM pg_trigger WHERE tgname = 'runs_notify'",
            &[],
        )
        .and_then(|row| row.try_get(0))
        .expect("counted")
    };
    assert_eq!(count(&mut raw), 0, "a new journal has no notify trigger");
    raw.batch_execute(
        "CREATE FUNCTION converge.notify() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM pg_notify('converge_events', NEW.id); RETURN NULL; END $$;
         CREATE TRIGGER runs_notify AFTER INSERT OR UPDATE ON converge.runs
             FOR EACH ROW EXECUTE FUNCTION converge.notify();",
    )
    .expect("an earlier build's trigger");
    assert_eq!(count(&mut raw), 1);
    drop(PostgresJournal::open_read_only(url).expect("opens"));
    assert_eq!(count(&mut raw), 1, "a reader changes nothing");
    let mut journal = store.open();
    assert_eq!(count(&mut raw), 0, "a writer drops it");
    let (_, outcome) = record(journal.as_mut(), &run_id("run-1"));
    outcome.expect("recorded");
}

/// A run whose driver died on this host is claimed at once, not after its lease expires; one
/// whose driver lives is not.
fn a_dead_drivers_run_is_claimed_at_once(store: &Store) {
    let mut journal = store.open();
    let mut child = std::process::Command::new("true")
        .spawn()
        .expect("a process");
    let dead = child.id();
    child.wait().expect("reaped");
    let gone = Holder {
        pid: dead,
        ..holder()
    };
    let orphan = run_id("orphan");
    journal
        .create_run(&orphan, &header(), &gone, 1_000)
        .expect("created");
    let driven = run_id("driven");
    journal
        .create_run(&driven, &header(), &holder(), 1_000)
        .expect("created");
    let claimer = Holder {
        pid: 7000,
        ..elsewhere()
    };
    let claimed = journal.claim(&claimer, 2_000, 10).expect("claims");
    assert_eq!(
        claimed
            .iter()
            .map(|lease| lease.run().clone())
            .collect::<Vec<_>>(),
        vec![orphan]
    );
}

/// A store whose schema is newer than this build's is refused untouched.
fn a_newer_schema_is_refused_untouched(store: &Store) {
    let mut journal = store.open();
    let (_, outcome) = record(journal.as_mut(), &run_id("run-1"));
    outcome.expect("recorded");
    drop(journal);
    let newer = "UPDATE meta SET value = '3' WHERE key = 'schema_version';";
    match store {
        Store::Sqlite(_) => store.tamper(&format!("{newer} PRAGMA user_version = 3;")),
        Store::Postgres(_) => store.tamper(newer),
    }
    let refused = match store {
        Store::Sqlite(path) => SqliteJournal::open(path).map(drop),
        Store::Postgres(url) => PostgresJournal::open(url).map(drop),
    };
    match refused {
        Err(JournalError::NewerSchema {
            found: 3,
            supported: 2,
            ..
        }) => {}
        other => panic!("expected a newer schema refused, got {other:?}"),
    }
    store.tamper("UPDATE meta SET value = '2' WHERE key = 'schema_version'; SELECT 1;");
    if let Store::Sqlite(_) = store {
        store.tamper("PRAGMA user_version = 2;");
    }
    intact(store.open().as_ref(), &run_id("run-1"));
}

/// A file's runs copied to PostgreSQL and back keep their hashes and verify; a run the
/// destination has is refused, and so is a run another live process drives.
fn copies_keep_every_byte(stores: &Stores) {
    let file = stores.fresh("sqlite", "copy_from");
    let database = stores.fresh("postgres", "copy_to");
    let back = stores.fresh("sqlite", "copy_back");
    let location = |store: &Store| match store {
        Store::Sqlite(path) => Location::Sqlite(path.clone()),
        Store::Postgres(url) => Location::Postgres(url.clone()),
    };
    let mut journal = file.open();
    for index in 0..3 {
        let (_, outcome) = record(journal.as_mut(), &run_id(&format!("run-{index}")));
        outcome.expect("recorded");
    }
    // One left mid-way by a process that died: copied, and free to continue.
    let lease = journal
        .create_run(&run_id("cut-short"), &header(), &elsewhere(), 0)
        .expect("created");
    let engine = gated_engine();
    let mut run = engine.start(Context::new()).expect("valid");
    journal
        .append(
            &lease,
            0,
            &StepInput::Start { header: header() },
            &run.take_events(),
        )
        .expect("start");
    let source = journal.runs().expect("lists");
    drop(journal);

    let mut heard = Vec::new();
    let copied = converge_journal::copy(&location(&file), &location(&database), &[], &mut |done| {
        heard.push(done.run.clone());
    })
    .expect("copied");
    assert_eq!(copied.len(), 4);
    assert_eq!(heard.len(), 4);
    let target = database.open();
    let copies = target.runs().expect("lists");
    for (original, copy) in source.iter().zip(&copies) {
        assert_eq!(original.id, copy.id);
        assert_eq!(original.root_hash, copy.root_hash);
        assert_eq!(original.record_hash, copy.record_hash);
        assert_eq!(original.status, copy.status);
        assert_eq!(copy.lease, None, "leases are not copied");
        assert_eq!(
            target.load(&copy.id).expect("loads").steps.len() as u64,
            original.steps
        );
    }
    converge_journal::copy(&location(&database), &location(&back), &[], &mut |_| {})
        .expect("copied back");
    let again = back.open().runs().expect("lists");
    assert_eq!(
        again.iter().map(|run| run.record_hash).collect::<Vec<_>>(),
        source.iter().map(|run| run.record_hash).collect::<Vec<_>>()
    );

    // Already there: refused.
    let twice = converge_journal::copy(
        &location(&file),
        &location(&database),
        &[run_id("run-0")],
        &mut |_| {},
    );
    assert!(
        matches!(twice, Err(JournalError::RunExists { .. })),
        "{twice:?}"
    );
    // Driven by a live process: refused.
    let mut journal = file.open();
    journal
        .create_run(&run_id("live"), &header(), &elsewhere(), wall_clock_ms())
        .expect("created");
    let live = converge_journal::copy(
        &location(&file),
        &location(&database),
        &[run_id("live")],
        &mut |_| {},
    );
    assert!(matches!(live, Err(JournalError::Leased { .. })), "{live:?}");
}

// ---------------------------------------------------------------------------------------------
// The harness
// ---------------------------------------------------------------------------------------------

type Case = (&'static str, fn(&Store));

const CASES: &[Case] = &[
    ("round_trip", round_trip),
    ("many_events_span_chunks", many_events_span_chunks),
    ("packed_while_running", packed_while_running),
    ("refusals_write_nothing", refusals_write_nothing),
    (
        "a_stopped_run_takes_only_a_retry",
        a_stopped_run_takes_only_a_retry,
    ),
    ("leases", leases),
    ("a_live_lease_is_preempted", a_live_lease_is_preempted),
    ("outcomes_ahead_of_their_step", outcomes_ahead_of_their_step),
    ("outcomes_ahead_in_a_group", outcomes_ahead_in_a_group),
    ("injected_failures", injected_failures),
    ("steps_commit_together", steps_commit_together),
    ("runs_commit_together", runs_commit_together),
    ("runs_end_and_begin_together", runs_end_and_begin_together),
    (
        "a_submitted_run_is_leased_to_no_one",
        a_submitted_run_is_leased_to_no_one,
    ),
    ("concurrent_writers", concurrent_writers),
    ("racing_takeovers", racing_takeovers),
    ("edits_are_named", edits_are_named),
    (
        "a_newer_schema_is_refused_untouched",
        a_newer_schema_is_refused_untouched,
    ),
    ("claims_never_overlap", claims_never_overlap),
    ("claims_load_what_they_lease", claims_load_what_they_lease),
    (
        "a_dead_drivers_run_is_claimed_at_once",
        a_dead_drivers_run_is_claimed_at_once,
    ),
    ("news_wakes_a_waiter", news_wakes_a_waiter),
    (
        "followers_hear_of_steps_without_notifications",
        followers_hear_of_steps_without_notifications,
    ),
    (
        "the_old_notify_trigger_is_dropped",
        the_old_notify_trigger_is_dropped,
    ),
];

fn main() {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .collect();
    let cluster = match Cluster::start() {
        Ok(cluster) => cluster,
        Err(error) => {
            eprintln!("conformance: cannot start PostgreSQL: {error}");
            std::process::exit(1);
        }
    };
    let stores = Stores {
        dir: tempfile::tempdir().expect("a temporary directory"),
        cluster,
    };
    let mut failed = Vec::new();
    let mut passed = 0;
    for backend in ["sqlite", "postgres"] {
        for (name, case) in CASES {
            let full = format!("{backend}::{name}");
            if !filter.is_empty() && !filter.iter().any(|wanted| full.contains(wanted.as_str())) {
                continue;
            }
            let store = stores.fresh(backend, name);
            let outcome = catch_unwind(AssertUnwindSafe(|| case(&store)));
            match outcome {
                Ok(()) => {
                    passed += 1;
                    println!("test {full} ... ok");
                }
                Err(_) => {
                    println!("test {full} ... FAILED ({})", store.name());
                    failed.push(full);
                }
            }
        }
    }
    // The same run in both stores: one format, the same hashes.
    if filter.is_empty() {
        let mut heads = Vec::new();
        for backend in ["sqlite", "postgres"] {
            let store = stores.fresh(backend, "same_format");
            let mut journal = store.open();
            let (_, outcome) = record(journal.as_mut(), &run_id("run-1"));
            outcome.expect("recorded");
            let summary = journal.summary(&run_id("run-1")).expect("summary");
            heads.push((summary.root_hash, summary.record_hash));
        }
        if heads[0] == heads[1] {
            passed += 1;
            println!("test both::one_format_the_same_hashes ... ok");
        } else {
            println!("test both::one_format_the_same_hashes ... FAILED {heads:?}");
            failed.push("both::one_format_the_same_hashes".to_owned());
        }
    }
    if filter.is_empty()
        || filter
            .iter()
            .any(|wanted| "both::copy".contains(wanted.as_str()))
    {
        let outcome = catch_unwind(AssertUnwindSafe(|| copies_keep_every_byte(&stores)));
        if outcome.is_ok() {
            passed += 1;
            println!("test both::copies_keep_every_byte ... ok");
        } else {
            println!("test both::copies_keep_every_byte ... FAILED");
            failed.push("both::copies_keep_every_byte".to_owned());
        }
    }
    drop(stores);
    println!(
        "conformance: {passed} passed, {} failed{}",
        failed.len(),
        if failed.is_empty() {
            String::new()
        } else {
            format!(": {}", failed.join(", "))
        }
    );
    if !failed.is_empty() {
        std::process::exit(1);
    }
}
