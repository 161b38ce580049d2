//! The journal against real SQLite files: round trips, durability, the record chain, the
//! status committed with each step, leases, outcomes committed ahead of their cycle, replay
//! from recorded inputs, tamper detection, refusals that write nothing, foreign and
//! first-edition files left untouched, and injected write failures that still leave a
//! verifiable journal. (`tests/tamper.rs` edits every stored column; this file keeps the
//! structural cases and the reads from a position.)
//!
//! Every event stream here comes from a real `converge_core::Engine` driven through its
//! sans-I/O API; nothing is mocked. This file deliberately does not test the async driver.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use converge_core::agents::{ReactOnceAgent, SeedAgent};
use converge_core::{
    Actor, ActorKind, Agent, AgentEffect, AgentOutcome, AuthorityScope, Context, ContextKey,
    ConvergeResult, Decision, Digest, Engine, EventBatch, EventRecord, KeyRef, Observation,
    Proposal, Run, Step, StopReason, TokenUsage, ValidationPolicy, execute_isolated,
};
use converge_runtime::{
    BreakReason, DecisionRecord, EffectRecord, FailingJournal, Holder, Journal, JournalError,
    LEASE_TTL_MS, Lease, ObservationRecord, OutcomeRecord, Place, RecordError, ReplayabilityRecord,
    RunHeader, RunId, RunStatus, SqliteJournal, StepInput, Verification,
};
use proptest::prelude::*;
use rusqlite::Connection;
use serde_json::{Value, json};
use tempfile::TempDir;

// ---------------------------------------------------------------------------------------------
// A real scenario: seeds, a reacting agent, an agent with observations and a rejected draft,
// an agent whose execution fails, and a key that needs a human's approval.
// ---------------------------------------------------------------------------------------------

/// Observes an external model and proposes an evaluation citing it, plus a draft the gate
/// refuses (a raw invalid key and a NaN confidence).
struct Scorer {
    executions: Arc<AtomicUsize>,
}

impl Agent for Scorer {
    fn name(&self) -> &str {
        "scorer"
    }

    fn dependencies(&self) -> &[ContextKey] {
        &[ContextKey::Hypotheses]
    }

    fn requested_scope(&self) -> AuthorityScope {
        AuthorityScope::keys([ContextKey::Evaluations])
    }

    fn accepts(&self, ctx: &Context) -> bool {
        ctx.has(ContextKey::Hypotheses) && !ctx.contains(ContextKey::Evaluations, "score-1")
    }

    fn execute(&self, _ctx: &Context) -> AgentEffect {
        self.executions.fetch_add(1, Ordering::SeqCst);
        let mut effect = AgentEffect::empty().with_usage(TokenUsage {
            input: 120,
            output: 30,
        });
        let answer = effect.observe(Observation::remote(
            "llm.chat",
            "test:model",
            "req-42",
            json!({"text": "seasonal", "logprob": -0.125, "tokens": [1, 2, 3]}),
        ));
        effect.observe(Observation::local("score", json!({"score": 0.25})));
        effect.observe(
            Observation::remote("tool.call", "test:search", "q-7", json!(null)).audit_only(),
        );
        effect.propose(
            Proposal::new(
                ContextKey::Evaluations,
                "score-1",
                json!({"score": 0.25, "why": ["a", {"deep": [1.5, null, true]}]}),
            )
            .with_confidence(0.75)
            .derived_from(ContextKey::Hypotheses, "hyp-1")
            .citing(answer),
        );
        effect.propose(
            Proposal::new(KeyRef::Name("Not A Key".into()), "odd id!", json!("x"))
                .with_confidence(f64::NAN),
        );
        effect
    }
}

/// Proposes a strategy (which needs approval) once an evaluation exists.
struct Planner {
    executions: Arc<AtomicUsize>,
}

impl Agent for Planner {
    fn name(&self) -> &str {
        "planner"
    }

    fn dependencies(&self) -> &[ContextKey] {
        &[ContextKey::Evaluations]
    }

    fn requested_scope(&self) -> AuthorityScope {
        AuthorityScope::keys([ContextKey::Strategies])
    }

    fn accepts(&self, ctx: &Context) -> bool {
        ctx.has(ContextKey::Evaluations) && !ctx.has(ContextKey::Strategies)
    }

    fn execute(&self, _ctx: &Context) -> AgentEffect {
        self.executions.fetch_add(1, Ordering::SeqCst);
        AgentEffect::empty().with_proposal(
            Proposal::new(ContextKey::Strategies, "plan-1", json!({"do": "stock up"}))
                .with_confidence(0.5)
                .derived_from(ContextKey::Evaluations, "score-1"),
        )
    }
}

/// Woken by seeds; the driver reports it as timed out (its execution never counts).
struct Flaky;

impl Agent for Flaky {
    fn name(&self) -> &str {
        "flaky"
    }

    fn dependencies(&self) -> &[ContextKey] {
        &[ContextKey::Seeds]
    }

    fn requested_scope(&self) -> AuthorityScope {
        AuthorityScope::none()
    }

    fn accepts(&self, ctx: &Context) -> bool {
        ctx.has(ContextKey::Seeds)
    }

    fn execute(&self, _ctx: &Context) -> AgentEffect {
        AgentEffect::empty()
    }
}

const AGENTS: [&str; 6] = ["seed-1", "seed-2", "hyp-1", "scorer", "planner", "flaky"];

struct Scenario {
    engine: Engine,
    executions: Arc<AtomicUsize>,
}

fn scenario() -> Scenario {
    let executions = Arc::new(AtomicUsize::new(0));
    let mut engine = Engine::new();
    engine.register(SeedAgent::new("seed-1", json!({"sales": [3, 5, 8]})));
    engine.register(SeedAgent::new("seed-2", "second seed"));
    engine.register(ReactOnceAgent::new("hyp-1", "demand is seasonal"));
    engine.register(Scorer {
        executions: executions.clone(),
    });
    engine.register(Planner {
        executions: executions.clone(),
    });
    engine.register(Flaky);
    engine.set_policy(
        ContextKey::Strategies,
        ValidationPolicy::new().requiring_approval(),
    );
    Scenario { engine, executions }
}

fn header() -> RunHeader {
    RunHeader {
        agents: AGENTS.iter().map(|name| (*name).to_owned()).collect(),
        created_by: "tests/journal.rs".to_owned(),
        intent: Some(json!({"objective": "plan inventory"})),
        job: None,
    }
}

fn drain(run: &mut Run<'_>) -> EventBatch {
    run.take_events()
}

/// A batch with no event (of a run of no agent, after its start was taken).
fn empty_batch() -> EventBatch {
    let engine = Engine::new();
    let mut run = engine.start(Context::new()).expect("no agents");
    drain(&mut run);
    drain(&mut run)
}

/// What a recording produced: the steps as appended, the run's stored status after each,
/// and how the run ended.
struct Recording {
    steps: Vec<(StepInput, EventBatch)>,
    statuses: Vec<RunStatus>,
    result: Option<ConvergeResult>,
}

impl Recording {
    /// The chain head after the first `count` steps.
    fn head_after(&self, count: usize) -> Digest {
        self.steps[..count]
            .last()
            .map_or(Digest::zero(), |(_, events)| events.head())
    }

    fn events_in(&self, count: usize) -> u64 {
        self.steps[..count]
            .iter()
            .map(|(_, events)| events.len() as u64)
            .sum()
    }

    /// The record chain's head after the first `count` steps of run `id`, computed here from
    /// the construction `docs/journal.md` specifies, not by the journal: the header link, then
    /// for each step its input link (over the stored input text, without a cycle's outcomes,
    /// and the digest of its outcomes) and its closing link (over its event range and the
    /// event chain's head after it).
    fn record_hash_after(&self, id: &RunId, count: usize) -> Digest {
        let header_text = serde_json::to_string(&header()).unwrap();
        let mut link = Digest::of_parts(&[
            b"converge-journal-2",
            id.as_str().as_bytes(),
            header_text.as_bytes(),
        ]);
        let (mut first_seq, mut head) = (0u64, Digest::zero());
        for (step, (input, events)) in self.steps[..count].iter().enumerate() {
            let (text, outcomes) = stored_input(input);
            let encoded: Vec<Vec<u8>> = outcomes
                .iter()
                .flat_map(|(agent, outcome)| {
                    [
                        agent.to_le_bytes().to_vec(),
                        serde_json::to_vec(outcome).unwrap(),
                    ]
                })
                .collect();
            let parts: Vec<&[u8]> = encoded.iter().map(Vec::as_slice).collect();
            let input_link = Digest::of_parts(&[
                link.as_bytes(),
                b"input",
                &(step as u64).to_le_bytes(),
                input.kind().as_bytes(),
                text.as_bytes(),
                Digest::of_parts(&parts).as_bytes(),
            ]);
            if !events.is_empty() {
                head = events.head();
            }
            link = Digest::of_parts(&[
                input_link.as_bytes(),
                b"events",
                &first_seq.to_le_bytes(),
                &(events.len() as u64).to_le_bytes(),
                head.as_bytes(),
            ]);
            first_seq += events.len() as u64;
        }
        link
    }
}

/// A step's input as its row stores it (a cycle's without its outcomes) and its outcomes.
fn stored_input(input: &StepInput) -> (String, Vec<(u32, OutcomeRecord)>) {
    match input {
        StepInput::Cycle {
            cycle,
            batch,
            outcomes,
        } => {
            let text = serde_json::to_string(&StepInput::Cycle {
                cycle: *cycle,
                batch: batch.clone(),
                outcomes: Vec::new(),
            })
            .unwrap();
            (text, outcomes.clone())
        }
        other => (serde_json::to_string(other).unwrap(), Vec::new()),
    }
}

/// A sequential driver that journals every step; it stops at the first journal error.
struct Recorder<'j, J: Journal> {
    journal: &'j mut J,
    lease: Lease,
    next: u64,
    recording: Recording,
}

impl<J: Journal> Recorder<'_, J> {
    fn commit(&mut self, input: StepInput, events: EventBatch) -> Result<(), JournalError> {
        self.journal
            .append(&self.lease, self.next, &input, &events)?;
        self.next += 1;
        self.recording.steps.push((input, events));
        let status = self.journal.summary(self.lease.run())?.status;
        self.recording.statuses.push(status);
        Ok(())
    }

    fn drive(&mut self, run: &mut Run<'_>) -> Result<(), JournalError> {
        loop {
            match run.next_step() {
                Step::Execute(batch) => {
                    let outcomes: Vec<_> = batch
                        .agents()
                        .iter()
                        .map(|&agent| {
                            let outcome = if run.agent_name(agent) == Some("flaky") {
                                AgentOutcome::Failed("timed out after 5000 ms".to_owned())
                            } else {
                                execute_isolated(run.agent(agent), run.context())
                            };
                            (agent, outcome)
                        })
                        .collect();
                    let input = StepInput::cycle(&batch, &outcomes);
                    run.submit(outcomes).expect("a complete batch");
                    let events = drain(run);
                    self.commit(input, events)?;
                }
                Step::Stopped => {
                    let events = drain(run);
                    if !events.is_empty() {
                        self.commit(StepInput::Stop, events)?;
                    }
                    return Ok(());
                }
            }
        }
    }
}

/// The holder every recording's lease names.
fn holder() -> Holder {
    Holder::this_process("tests/journal.rs")
}

/// Records the whole scenario: start, cycles until awaiting approval, a human approves,
/// cycles until converged. The run is created leased to [`holder`], and every step is
/// appended under that lease. On a journal error, returns it with what was recorded so far.
fn record<J: Journal>(journal: &mut J, id: &RunId) -> (Recording, Result<(), JournalError>) {
    let Scenario { engine, .. } = scenario();
    let recording = Recording {
        steps: Vec::new(),
        statuses: Vec::new(),
        result: None,
    };
    let lease = match journal.create_run(id, &header(), &holder(), 0) {
        Ok(lease) => lease,
        Err(error) => return (recording, Err(error)),
    };
    let mut recorder = Recorder {
        journal,
        lease,
        next: 0,
        recording,
    };
    let outcome = (|| {
        let mut run = engine.start(Context::new()).expect("valid agents");
        let events = drain(&mut run);
        recorder.commit(StepInput::Start { header: header() }, events)?;
        recorder.drive(&mut run)?;
        let paused = run.finish().ok().expect("stopped");
        let StopReason::AwaitingApproval { pending } = &paused.stop_reason else {
            panic!("expected to await approval, got {:?}", paused.stop_reason);
        };
        let alice = Actor::human("alice").expect("valid actor");
        let decisions: Vec<Decision> = pending
            .iter()
            .map(|pending| Decision::approve(pending.proposal, pending.hash, alice.clone()))
            .collect();
        let mut run = engine
            .resume_run(paused, decisions.clone())
            .expect("resumable");
        let events = drain(&mut run);
        recorder.commit(StepInput::decisions(&decisions), events)?;
        recorder.drive(&mut run)?;
        recorder.recording.result = Some(run.finish().ok().expect("stopped"));
        Ok(())
    })();
    (recorder.recording, outcome)
}

fn run_id(id: &str) -> RunId {
    RunId::new(id).expect("valid run id")
}

fn journal_in(dir: &TempDir) -> (PathBuf, SqliteJournal) {
    let path = dir.path().join("runs.journal");
    let journal = SqliteJournal::open(&path).expect("journal opens");
    (path, journal)
}

/// A journal holding one complete run.
fn recorded(dir: &TempDir) -> (PathBuf, SqliteJournal, RunId, Recording) {
    let (path, mut journal) = journal_in(dir);
    let id = run_id("run-1");
    let (recording, outcome) = record(&mut journal, &id);
    outcome.expect("recorded");
    (path, journal, id, recording)
}

/// The step whose events include `seq`, per the recording.
fn step_of(recording: &Recording, seq: u64) -> u64 {
    let mut first = 0;
    for (step, (_, events)) in recording.steps.iter().enumerate() {
        if seq < first + events.len() as u64 {
            return step as u64;
        }
        first += events.len() as u64;
    }
    panic!("seq {seq} is beyond the recording");
}

/// A raw connection with the append-only triggers and foreign keys off: what a tamperer does.
fn tamperer(path: &Path) -> Connection {
    let conn = Connection::open(path).expect("raw open");
    conn.execute_batch(
        "PRAGMA foreign_keys = OFF;
         DROP TRIGGER events_append_only_update; DROP TRIGGER events_append_only_delete;
         DROP TRIGGER steps_append_only_update; DROP TRIGGER steps_append_only_delete;
         DROP TRIGGER outcomes_append_only_update; DROP TRIGGER outcomes_append_only_delete;",
    )
    .expect("drop triggers");
    conn
}

/// Inflates a stored group's bodies (zlib), exactly as many bytes as stored.
fn inflate(compressed: &[u8]) -> Vec<u8> {
    let mut bodies = Vec::new();
    flate2::read::ZlibDecoder::new(compressed)
        .read_to_end(&mut bodies)
        .expect("stored bodies inflate");
    bodies
}

/// Compresses edited bodies the way the journal stores them.
fn deflate(bodies: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bodies).unwrap();
    encoder.finish().unwrap()
}

fn row_counts(path: &Path) -> (i64, i64, i64) {
    let conn = Connection::open(path).expect("raw open");
    let count = |table: &str| {
        conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |row| {
            row.get(0)
        })
        .expect("count")
    };
    (count("steps"), count("events"), count("outcomes"))
}

// ---------------------------------------------------------------------------------------------
// Round trips and durability
// ---------------------------------------------------------------------------------------------

#[test]
fn load_gives_back_the_exact_inputs_and_hashes_and_events_the_exact_bytes() {
    let dir = TempDir::new().unwrap();
    let (_, journal, id, recording) = recorded(&dir);
    let result = recording.result.as_ref().unwrap();
    assert!(result.converged, "{:?}", result.stop_reason);

    let loaded = journal.load(&id).unwrap();
    assert_eq!(loaded.id, id);
    assert_eq!(loaded.header, header());
    assert_eq!(journal.header(&id).unwrap(), header());
    assert_eq!(loaded.root_hash, result.root_hash);
    assert!(
        matches!(&loaded.status, RunStatus::Stopped { reason } if reason["stop"] == "converged")
    );
    assert_eq!(loaded.steps.len(), recording.steps.len());
    for (number, (stored, (input, events))) in loaded.steps.iter().zip(&recording.steps).enumerate()
    {
        assert_eq!(stored.step, number as u64);
        assert_eq!(&stored.input, input, "step {number}");
        assert_eq!(stored.first_seq, events.first_seq(), "step {number}");
        assert_eq!(stored.hashes.len(), events.len(), "step {number}");
        for event in events.records() {
            assert!(stored.recorded(event), "step {number}, seq {}", event.seq);
        }
    }
    let stored = journal.events(&id, 0).unwrap();
    let emitted: Vec<_> = recording
        .steps
        .iter()
        .enumerate()
        .flat_map(|(step, (_, events))| events.iter().map(move |event| (step as u64, event)))
        .collect();
    assert_eq!(stored.len(), emitted.len());
    for (stored, (step, (record, bytes))) in stored.iter().zip(&emitted) {
        assert_eq!(
            (stored.seq, stored.step, stored.hash),
            (record.seq, *step, record.hash)
        );
        assert_eq!(stored.body, bytes.to_vec());
        assert_eq!(stored.body, EventRecord::encode(&record.event));
    }
    let tail = journal.events(&id, 5).unwrap();
    assert_eq!(tail.first().map(|event| event.seq), Some(5));
    assert_eq!(tail.len(), stored.len() - 5);
    let kinds: Vec<_> = loaded.steps.iter().map(|step| step.input.kind()).collect();
    assert_eq!(kinds.first(), Some(&"start"));
    assert!(kinds.contains(&"cycle") && kinds.contains(&"decisions") && kinds.contains(&"stop"));

    let events = recording.events_in(recording.steps.len());
    let record_hash = recording.record_hash_after(&id, recording.steps.len());
    assert_eq!(loaded.record_hash, record_hash);
    assert_eq!(loaded.open, None);
    // The recorder took the lease at time 0 and never released it.
    assert_eq!(loaded.lease, Some((holder(), LEASE_TTL_MS)));
    assert_eq!(
        journal.verify(&id).unwrap(),
        Verification::Intact {
            steps: recording.steps.len() as u64,
            events,
            root_hash: result.root_hash,
            record_hash,
        }
    );
}

#[test]
fn a_reopened_journal_holds_every_committed_step() {
    let dir = TempDir::new().unwrap();
    let (path, journal, id, recording) = recorded(&dir);
    let before = journal.load(&id).unwrap();
    drop(journal);

    let reopened = SqliteJournal::open(&path).unwrap();
    assert_eq!(reopened.load(&id).unwrap(), before);
    let runs = reopened.runs().unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].id, id);
    assert_eq!(runs[0].steps, recording.steps.len() as u64);
    assert_eq!(
        runs[0].root_hash,
        recording.result.as_ref().unwrap().root_hash
    );
    assert!(matches!(
        reopened.verify(&id).unwrap(),
        Verification::Intact { .. }
    ));
}

#[test]
fn replaying_the_recorded_inputs_reproduces_every_event_without_executing_agents() {
    let dir = TempDir::new().unwrap();
    let (_, journal, id, _) = recorded(&dir);
    let loaded = journal.load(&id).unwrap();
    let Scenario { engine, executions } = scenario();

    let mut steps = loaded.steps.iter();
    let start = steps.next().unwrap();
    assert!(matches!(&start.input, StepInput::Start { header: h } if *h == loaded.header));
    let mut run = engine.start(Context::new()).unwrap();
    let compare = |run: &mut Run<'_>, stored: &converge_runtime::RecordedStep| {
        let replayed = drain(run);
        assert_eq!(replayed.len(), stored.hashes.len());
        for event in replayed.records() {
            assert!(
                stored.recorded(event),
                "replay diverged at seq {}",
                event.seq
            );
        }
    };
    compare(&mut run, start);
    for step in steps {
        match &step.input {
            StepInput::Cycle { .. } => {
                let Step::Execute(batch) = run.next_step() else {
                    panic!("replay stopped early at step {}", step.step);
                };
                run.submit(step.input.outcomes_for(&batch).unwrap())
                    .unwrap();
            }
            StepInput::Decisions { .. } => {
                let paused = run.finish().ok().expect("stopped before decisions");
                run = engine
                    .resume_run(paused, step.input.decisions_into_core())
                    .unwrap();
            }
            StepInput::Stop => assert_eq!(run.next_step(), Step::Stopped),
            other => panic!("unexpected step {other:?}"),
        }
        compare(&mut run, step);
    }
    let result = run.finish().ok().expect("stopped");
    assert_eq!(result.root_hash, loaded.root_hash);
    assert_eq!(
        executions.load(Ordering::SeqCst),
        0,
        "replay executed an agent"
    );
}

#[test]
fn several_runs_are_listed_in_creation_order() {
    let dir = TempDir::new().unwrap();
    let (_, mut journal) = journal_in(&dir);
    for id in ["b-run", "a-run", "c-run"] {
        record(&mut journal, &run_id(id)).1.unwrap();
    }
    let ids: Vec<_> = journal
        .runs()
        .unwrap()
        .into_iter()
        .map(|run| run.id.to_string())
        .collect();
    assert_eq!(ids, ["b-run", "a-run", "c-run"]);
    // Same agents, same inputs: the same root hash for every run; the record chain binds the
    // run id, so each run's record hash is its own.
    let runs = journal.runs().unwrap();
    assert!(
        runs.windows(2)
            .all(|pair| pair[0].root_hash == pair[1].root_hash)
    );
    assert!(
        runs.windows(2)
            .all(|pair| pair[0].record_hash != pair[1].record_hash)
    );
}

// ---------------------------------------------------------------------------------------------
// Tampering
// ---------------------------------------------------------------------------------------------

/// The `first_seq` of the stored chunk that holds event `seq`.
fn chunk_of(conn: &Connection, id: &RunId, seq: u64) -> i64 {
    conn.query_row(
        "SELECT first_seq FROM events WHERE run = ?1 AND first_seq <= ?2 \
         ORDER BY first_seq DESC LIMIT 1",
        rusqlite::params![id.as_str(), seq as i64],
        |row| row.get(0),
    )
    .expect("a chunk holds the event")
}

/// Flips one bit of event `seq`'s stored body (`hash == false`) or stored hash.
fn flip(conn: &Connection, id: &RunId, seq: u64, hash: bool) {
    let first = chunk_of(conn, id, seq);
    let index = (seq as i64 - first) as usize;
    let (mut hashes, ends, mut bodies): (Vec<u8>, Vec<u8>, Vec<u8>) = conn
        .query_row(
            "SELECT hashes, ends, bodies FROM events WHERE run = ?1 AND first_seq = ?2",
            rusqlite::params![id.as_str(), first],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .unwrap();
    if hash {
        hashes[index * 32 + 7] ^= 0x01;
    } else {
        let end =
            |i: usize| u32::from_le_bytes(ends[i * 4..i * 4 + 4].try_into().unwrap()) as usize;
        let start = if index == 0 { 0 } else { end(index - 1) };
        let mut inflated = inflate(&bodies);
        inflated[(start + end(index)) / 2] ^= 0x01;
        bodies = deflate(&inflated);
    }
    conn.execute(
        "UPDATE events SET hashes = ?3, bodies = ?4 WHERE run = ?1 AND first_seq = ?2",
        rusqlite::params![id.as_str(), first, hashes, bodies],
    )
    .unwrap();
}

#[test]
fn a_flipped_byte_in_an_event_body_or_hash_is_named_by_seq_and_step() {
    let dir = TempDir::new().unwrap();
    let (path, journal, id, recording) = recorded(&dir);
    drop(journal);
    let last = recording.events_in(recording.steps.len()) - 1;
    for seq in [0, 1, 2, last / 2, last] {
        for hash in [false, true] {
            let copy = dir.path().join(format!("flip-{seq}-{hash}.journal"));
            std::fs::copy(&path, &copy).unwrap();
            let conn = tamperer(&copy);
            flip(&conn, &id, seq, hash);
            drop(conn);

            let journal = SqliteJournal::open(&copy).unwrap();
            let step = step_of(&recording, seq);
            let at = Place::Event {
                step: Some(step),
                seq,
            };
            assert_eq!(
                journal.verify(&id).unwrap(),
                Verification::Broken {
                    at,
                    reason: BreakReason::HashMismatch,
                },
                "seq {seq}, hash {hash}"
            );
            assert!(matches!(
                journal.events(&id, 0),
                Err(JournalError::Broken { at: found, .. }) if found == at
            ));
            // `load` reads no body: an altered body leaves the inputs and hashes it returns
            // intact, and an altered hash no longer matches what re-deriving the run emits
            // (the durable tests show resume and replay naming it). The altered last hash of
            // a step (the run's last included) is the event head its closing link binds.
            let loaded = journal.load(&id);
            let last_of_step = seq == last || step_starts(&recording).contains(&(seq + 1));
            if hash && last_of_step {
                assert!(
                    matches!(
                        loaded,
                        Err(JournalError::Broken {
                            at: Place::Step { step: found },
                            reason: BreakReason::LinkMismatch,
                            ..
                        }) if found == step
                    ),
                    "seq {seq}: {loaded:?}"
                );
            } else {
                let loaded = loaded.unwrap();
                let stored = loaded.steps[step_of(&recording, seq) as usize]
                    .hashes
                    .iter()
                    .any(|stored| {
                        !recording.steps.iter().any(|(_, events)| {
                            events.records().iter().any(|record| record.hash == *stored)
                        })
                    });
                assert_eq!(
                    stored, hash,
                    "seq {seq}: an altered hash is loaded as stored"
                );
            }
        }
    }
}

#[test]
fn a_deleted_event_row_is_named_by_seq_and_step() {
    let dir = TempDir::new().unwrap();
    let (path, journal, id, recording) = recorded(&dir);
    drop(journal);
    let last = recording.events_in(recording.steps.len()) - 1;
    for seq in [0, last / 2, last] {
        let copy = dir.path().join(format!("delete-{seq}.journal"));
        std::fs::copy(&path, &copy).unwrap();
        let conn = tamperer(&copy);
        let first = chunk_of(&conn, &id, seq);
        let deleted = conn
            .execute(
                "DELETE FROM events WHERE run = ?1 AND first_seq = ?2",
                rusqlite::params![id.as_str(), first],
            )
            .unwrap();
        assert_eq!(deleted, 1);
        drop(conn);

        let journal = SqliteJournal::open(&copy).unwrap();
        let at = Place::Event {
            step: Some(step_of(&recording, first as u64)),
            seq: first as u64,
        };
        let expected = Verification::Broken {
            at,
            reason: BreakReason::Missing,
        };
        assert_eq!(journal.verify(&id).unwrap(), expected, "seq {seq}");
        assert!(matches!(
            journal.load(&id),
            Err(JournalError::Broken { at: found, reason: BreakReason::Missing, .. })
                if found == at
        ));
    }
}

/// The first seq of each recorded step.
fn step_starts(recording: &Recording) -> Vec<u64> {
    (0..recording.steps.len())
        .map(|step| recording.events_in(step))
        .collect()
}

#[test]
fn events_from_any_position_are_the_tail_of_the_run_and_pages_cut_it() {
    let dir = TempDir::new().unwrap();
    let (_, journal, id, recording) = recorded(&dir);
    let total = recording.events_in(recording.steps.len());
    let all = journal.events(&id, 0).unwrap();
    assert_eq!(all.len() as u64, total);
    // Every position: at a step's first event (its chunk starts there, so the hash before
    // it comes from the previous chunk), inside a step, at and beyond the head.
    for from in 0..=total + 2 {
        let tail = journal.events(&id, from).unwrap();
        let start = (from.min(total)) as usize;
        assert_eq!(tail, all[start..], "from {from}");
        for limit in [0, 1, 2, 5, 1000] {
            let page = journal.events_page(&id, from, limit).unwrap();
            let expected: Vec<_> = all[start..].iter().take(limit).cloned().collect();
            assert_eq!(page, expected, "from {from}, limit {limit}");
        }
    }
    assert!(
        step_starts(&recording)
            .iter()
            .any(|&first| first > 0 && first < total)
    );
    let ghost = run_id("ghost");
    for result in [journal.events(&ghost, 0), journal.events_page(&ghost, 3, 0)] {
        assert!(matches!(result, Err(JournalError::UnknownRun { .. })));
    }
}

#[test]
fn an_altered_event_at_or_after_from_is_refused_by_events() {
    let dir = TempDir::new().unwrap();
    let (path, journal, id, recording) = recorded(&dir);
    drop(journal);
    let total = recording.events_in(recording.steps.len());
    let starts = step_starts(&recording);
    // A step's first event, one inside a step, and the last event.
    let inside = (1..total - 1)
        .find(|seq| !starts.contains(seq) && !starts.contains(&(seq + 1)))
        .expect("a step with three events");
    let first_of_step = starts[2];
    for seq in [first_of_step, inside, total - 1] {
        for hash in [false, true] {
            let copy = dir.path().join(format!("after-{seq}-{hash}.journal"));
            std::fs::copy(&path, &copy).unwrap();
            let conn = tamperer(&copy);
            flip(&conn, &id, seq, hash);
            drop(conn);
            let journal = SqliteJournal::open(&copy).unwrap();
            let at = Place::Event {
                step: Some(step_of(&recording, seq)),
                seq,
            };
            // From the altered event itself, from just before it, and from its step's start.
            for from in [seq, seq - 1, starts[step_of(&recording, seq) as usize]] {
                let refused = journal.events(&id, from);
                assert!(
                    matches!(
                        &refused,
                        Err(JournalError::Broken { at: found, reason: BreakReason::HashMismatch, .. })
                            if *found == at
                    ),
                    "seq {seq}, hash {hash}, from {from}: {refused:?}"
                );
                let page = journal.events_page(&id, from, (seq - from + 1) as usize);
                assert!(
                    matches!(page, Err(JournalError::Broken { at: found, .. }) if found == at),
                    "a page holding the altered event is refused (seq {seq}, from {from})"
                );
                if seq > from {
                    // A page that ends before it never reads it.
                    let before = journal
                        .events_page(&id, from, (seq - from) as usize)
                        .unwrap();
                    assert_eq!(before.last().map(|event| event.seq), Some(seq - 1));
                }
            }
        }
    }
}

#[test]
fn an_altered_event_before_from_is_left_to_verify() {
    let dir = TempDir::new().unwrap();
    let (path, journal, id, recording) = recorded(&dir);
    let original = journal.events(&id, 0).unwrap();
    drop(journal);
    let total = recording.events_in(recording.steps.len());
    for seq in [0, total / 2] {
        let copy = dir.path().join(format!("before-{seq}.journal"));
        std::fs::copy(&path, &copy).unwrap();
        let conn = tamperer(&copy);
        flip(&conn, &id, seq, false);
        drop(conn);
        let journal = SqliteJournal::open(&copy).unwrap();
        // The next event chains from the altered one's stored hash, which is intact; its
        // body is not read.
        let tail = journal.events(&id, seq + 1).unwrap();
        assert_eq!(tail, original[seq as usize + 1..], "seq {seq}");
        let at = Place::Event {
            step: Some(step_of(&recording, seq)),
            seq,
        };
        assert!(matches!(
            journal.events(&id, seq),
            Err(JournalError::Broken { at: found, .. }) if found == at
        ));
        assert_eq!(
            journal.verify(&id).unwrap(),
            Verification::Broken {
                at,
                reason: BreakReason::HashMismatch,
            }
        );
    }

    // An earlier step's input is not read either: verify names it, events from a later step
    // do not see it.
    let copy = dir.path().join("input.journal");
    std::fs::copy(&path, &copy).unwrap();
    let conn = tamperer(&copy);
    conn.execute(
        "UPDATE steps SET input = 'not json' WHERE run = ?1 AND step = 1",
        rusqlite::params![id.as_str()],
    )
    .unwrap();
    drop(conn);
    let journal = SqliteJournal::open(&copy).unwrap();
    let from = recording.events_in(3);
    assert_eq!(
        journal.events(&id, from).unwrap(),
        original[from as usize..]
    );
    assert!(matches!(
        journal.verify(&id).unwrap(),
        Verification::Broken {
            at: Place::Input { step: 1 },
            reason: BreakReason::StepUnreadable { .. },
        }
    ));
}

#[test]
fn missing_and_misplaced_entries_after_from_are_refused_by_events() {
    let dir = TempDir::new().unwrap();
    let (path, journal, id, recording) = recorded(&dir);
    drop(journal);
    let total = recording.events_in(recording.steps.len());
    let starts = step_starts(&recording);
    let target_step = recording.steps.len() - 2;
    let target = starts[target_step];
    let from = starts[1] + 1;

    // A deleted chunk after `from`.
    let copy = dir.path().join("deleted.journal");
    std::fs::copy(&path, &copy).unwrap();
    let conn = tamperer(&copy);
    conn.execute(
        "DELETE FROM events WHERE run = ?1 AND first_seq = ?2",
        rusqlite::params![id.as_str(), target as i64],
    )
    .unwrap();
    drop(conn);
    let journal = SqliteJournal::open(&copy).unwrap();
    assert!(matches!(
        journal.events(&id, from),
        Err(JournalError::Broken { at, reason: BreakReason::Missing, .. })
            if at.seq() == Some(target)
    ));
    // The event before `from` lost: there is no hash to chain from.
    assert!(matches!(
        journal.events(&id, target + 1),
        Err(JournalError::Broken { at, reason: BreakReason::Missing, .. })
            if at.seq() == Some(target)
    ));

    // A chunk filed under another step.
    let copy = dir.path().join("misfiled.journal");
    std::fs::copy(&path, &copy).unwrap();
    let conn = tamperer(&copy);
    conn.execute(
        "UPDATE events SET step = step - 1 WHERE run = ?1 AND first_seq = ?2",
        rusqlite::params![id.as_str(), target as i64],
    )
    .unwrap();
    drop(conn);
    let journal = SqliteJournal::open(&copy).unwrap();
    for start in [from, target] {
        let refused = journal.events(&id, start);
        assert!(
            matches!(
                &refused,
                Err(JournalError::Broken { at, reason: BreakReason::WrongStep { filed_under }, .. })
                    if at.seq() == Some(target) && *filed_under == target_step as u64 - 1
            ),
            "from {start}: {refused:?}"
        );
    }

    // A step row after `from` deleted, or its range moved.
    for (name, sql, reason) in [
        (
            "step-deleted",
            "DELETE FROM steps WHERE run = ?1 AND step = ?2",
            BreakReason::StepMissing,
        ),
        (
            "step-moved",
            "UPDATE steps SET first_seq = first_seq + 1 WHERE run = ?1 AND step = ?2",
            BreakReason::StepRange,
        ),
    ] {
        let copy = dir.path().join(format!("{name}.journal"));
        std::fs::copy(&path, &copy).unwrap();
        let conn = tamperer(&copy);
        conn.execute(sql, rusqlite::params![id.as_str(), target_step as i64])
            .unwrap();
        drop(conn);
        let journal = SqliteJournal::open(&copy).unwrap();
        let refused = journal.events(&id, from);
        assert!(
            matches!(
                &refused,
                Err(JournalError::Broken { at, reason: found, .. })
                    if *at == Place::Event { step: Some(target_step as u64), seq: target }
                        && *found == reason
            ),
            "{name}: {refused:?}"
        );
        // A page that ends before the step does not read it.
        let page = journal
            .events_page(&id, from, (target - from) as usize)
            .unwrap();
        assert_eq!(page.len() as u64, target - from, "{name}");
    }

    // The run's root hash altered: only a read that reaches the head sees it.
    let copy = dir.path().join("root.journal");
    std::fs::copy(&path, &copy).unwrap();
    Connection::open(&copy)
        .unwrap()
        .execute(
            "UPDATE runs SET root_hash = ?2 WHERE id = ?1",
            rusqlite::params![id.as_str(), Digest::of_bytes(b"forged").to_string()],
        )
        .unwrap();
    let journal = SqliteJournal::open(&copy).unwrap();
    assert!(matches!(
        journal.events(&id, from),
        Err(JournalError::Broken {
            reason: BreakReason::RootMismatch,
            ..
        })
    ));
    assert_eq!(journal.events_page(&id, from, 2).unwrap().len(), 2);
    assert!(total > from + 2);
}

#[test]
fn an_altered_root_hash_or_a_dropped_last_step_is_detected() {
    let dir = TempDir::new().unwrap();
    let (path, journal, id, recording) = recorded(&dir);
    drop(journal);
    let events = recording.events_in(recording.steps.len());

    let copy = dir.path().join("root.journal");
    std::fs::copy(&path, &copy).unwrap();
    Connection::open(&copy)
        .unwrap()
        .execute(
            "UPDATE runs SET root_hash = ?2 WHERE id = ?1",
            rusqlite::params![id.as_str(), Digest::of_bytes(b"forged").to_string()],
        )
        .unwrap();
    let journal = SqliteJournal::open(&copy).unwrap();
    // Where it is named (the run's heads) is `tests/tamper.rs`'s concern.
    assert!(matches!(
        journal.verify(&id).unwrap(),
        Verification::Broken {
            reason: BreakReason::RootMismatch,
            ..
        }
    ));
    assert!(events > 0);

    // Remove the whole last step and rewind the run's head consistently: only the heads
    // recorded in the run row are left to tell.
    let copy = dir.path().join("truncated.journal");
    std::fs::copy(&path, &copy).unwrap();
    let conn = tamperer(&copy);
    let last_step = recording.steps.len() as i64 - 1;
    let last_events = recording.steps.last().unwrap().1.len() as i64;
    conn.execute_batch(&format!(
        "DELETE FROM events WHERE step = {last_step}; DELETE FROM steps WHERE step = {last_step};"
    ))
    .unwrap();
    conn.execute(
        "UPDATE runs SET steps = steps - 1, events = events - ?2 WHERE id = ?1",
        rusqlite::params![id.as_str(), last_events],
    )
    .unwrap();
    drop(conn);
    let journal = SqliteJournal::open(&copy).unwrap();
    assert!(matches!(
        journal.verify(&id).unwrap(),
        Verification::Broken {
            reason: BreakReason::RootMismatch,
            ..
        }
    ));
}

#[test]
fn misfiled_extra_unreadable_and_missing_entries_are_named() {
    let dir = TempDir::new().unwrap();
    let (path, journal, id, recording) = recorded(&dir);
    drop(journal);
    let events = recording.events_in(recording.steps.len());
    let last_step = recording.steps.len() as u64 - 1;
    let first_of = |step: usize| recording.events_in(step);
    let cases: Vec<(&str, String, Verification)> = vec![
        (
            "misfiled",
            format!(
                "UPDATE events SET step = 0 WHERE first_seq = {}",
                first_of(1)
            ),
            Verification::Broken {
                at: Place::Event {
                    step: Some(1),
                    seq: first_of(1),
                },
                reason: BreakReason::WrongStep { filed_under: 0 },
            },
        ),
        (
            "extra",
            format!(
                "INSERT INTO events (run, first_seq, step, count, hashes, ends, bodies) \
                 SELECT run, {events}, step, 1, substr(hashes, 1, 32), ends, bodies \
                 FROM events WHERE first_seq = 0",
            ),
            Verification::Broken {
                at: Place::Event {
                    step: None,
                    seq: events,
                },
                reason: BreakReason::Unexpected,
            },
        ),
        (
            "malformed",
            format!(
                "UPDATE events SET hashes = substr(hashes, 1, 31) WHERE first_seq = {}",
                first_of(2)
            ),
            Verification::Broken {
                at: Place::Event {
                    step: Some(2),
                    seq: first_of(2),
                },
                reason: BreakReason::Malformed {
                    detail: format!(
                        "it claims {} events but stores 31 bytes of hashes",
                        recording.steps[2].1.len()
                    ),
                },
            },
        ),
        (
            "unreadable",
            "UPDATE steps SET input = '{\"cycle\":{}}' WHERE step = 2".to_owned(),
            Verification::Broken {
                at: Place::Input { step: 2 },
                reason: BreakReason::StepUnreadable {
                    detail: "missing field `cycle` at line 1 column 11".to_owned(),
                },
            },
        ),
        (
            "step-missing",
            format!("DELETE FROM steps WHERE step = {last_step}"),
            Verification::Broken {
                at: Place::Event {
                    step: Some(last_step),
                    seq: first_of(last_step as usize),
                },
                reason: BreakReason::StepMissing,
            },
        ),
    ];
    for (name, sql, expected) in cases {
        let copy = dir.path().join(format!("{name}.journal"));
        std::fs::copy(&path, &copy).unwrap();
        let conn = tamperer(&copy);
        conn.execute_batch(&sql).unwrap();
        drop(conn);
        let journal = SqliteJournal::open(&copy).unwrap();
        assert_eq!(journal.verify(&id).unwrap(), expected, "{name}");
        assert!(
            matches!(journal.load(&id), Err(JournalError::Broken { .. })),
            "{name}"
        );
    }
}

#[test]
fn the_schema_refuses_updates_and_deletes_of_steps_outcomes_and_events() {
    let dir = TempDir::new().unwrap();
    let (path, journal, id, _) = recorded(&dir);
    drop(journal);
    let conn = Connection::open(&path).unwrap();
    for sql in [
        "UPDATE events SET bodies = x'00' WHERE first_seq = 0",
        "DELETE FROM events WHERE first_seq = 0",
        "UPDATE steps SET input = '{}' WHERE step = 0",
        "DELETE FROM steps WHERE step = 0",
        "UPDATE outcomes SET bodies = x'00'",
        "UPDATE outcomes SET agents = x'00000000'",
        "DELETE FROM outcomes",
        "DELETE FROM runs",
    ] {
        let error = conn.execute(sql, []).unwrap_err();
        assert!(
            error.to_string().contains("converge journal"),
            "{sql}: {error}"
        );
    }
    drop(conn);
    let journal = SqliteJournal::open(&path).unwrap();
    assert!(matches!(
        journal.verify(&id).unwrap(),
        Verification::Intact { .. }
    ));
}

// ---------------------------------------------------------------------------------------------
// Refusals write nothing
// ---------------------------------------------------------------------------------------------

#[test]
fn out_of_order_steps_and_broken_chains_are_refused_with_nothing_written() {
    let dir = TempDir::new().unwrap();
    let (path, mut journal) = journal_in(&dir);
    let id = run_id("partial");
    let lease = journal.create_run(&id, &header(), &holder(), 0).unwrap();
    let Scenario { engine, .. } = scenario();
    let mut run = engine.start(Context::new()).unwrap();
    let start_events = drain(&mut run);
    let start = StepInput::Start { header: header() };
    journal.append(&lease, 0, &start, &start_events).unwrap();
    let Step::Execute(batch) = run.next_step() else {
        panic!("expected a batch")
    };
    let outcomes: Vec<_> = batch
        .agents()
        .iter()
        .map(|&agent| (agent, execute_isolated(run.agent(agent), run.context())))
        .collect();
    let cycle = StepInput::cycle(&batch, &outcomes);
    run.submit(outcomes).unwrap();
    let events = drain(&mut run);
    assert!(events.len() > 2);

    let before = (journal.summary(&id).unwrap(), row_counts(&path));
    let check_unchanged = |journal: &SqliteJournal| {
        assert_eq!((journal.summary(&id).unwrap(), row_counts(&path)), before);
        assert!(matches!(
            journal.verify(&id).unwrap(),
            Verification::Intact { steps: 1, .. }
        ));
    };

    let error = journal.append(&lease, 2, &cycle, &events).unwrap_err();
    assert!(
        matches!(
            error,
            JournalError::OutOfOrder {
                expected: 1,
                got: 2,
                ..
            }
        ),
        "{error}"
    );
    check_unchanged(&journal);
    let error = journal
        .append(&lease, 0, &start, &start_events)
        .unwrap_err();
    assert!(
        matches!(
            error,
            JournalError::OutOfOrder {
                expected: 1,
                got: 0,
                ..
            }
        ),
        "{error}"
    );
    check_unchanged(&journal);

    // A batch that does not start at the next seq: the start of another run.
    let mut again = engine.start(Context::new()).unwrap();
    let restart = drain(&mut again);
    let error = journal.append(&lease, 1, &cycle, &restart).unwrap_err();
    assert!(
        matches!(error, JournalError::ChainMismatch { seq: 0, .. }),
        "{error}"
    );
    check_unchanged(&journal);
    // A batch at the right seq that chains from another head: another run's first cycle.
    let mut other = Engine::new();
    other.register(SeedAgent::new("other", 1));
    let mut foreign = other.start(Context::new()).unwrap();
    drain(&mut foreign);
    let Step::Execute(other_batch) = foreign.next_step() else {
        panic!("expected a batch")
    };
    let outcomes: Vec<_> = other_batch
        .agents()
        .iter()
        .map(|&agent| {
            (
                agent,
                execute_isolated(foreign.agent(agent), foreign.context()),
            )
        })
        .collect();
    foreign.submit(outcomes).unwrap();
    let foreign_events = drain(&mut foreign);
    assert_eq!(foreign_events.first_seq(), events.first_seq());
    let error = journal
        .append(&lease, 1, &cycle, &foreign_events)
        .unwrap_err();
    assert!(
        matches!(error, JournalError::ChainMismatch { seq: 1, .. }),
        "{error}"
    );
    check_unchanged(&journal);
    // A second start.
    let error = journal.append(&lease, 1, &start, &events).unwrap_err();
    assert!(
        matches!(error, JournalError::InvalidStep { step: 1, .. }),
        "{error}"
    );
    check_unchanged(&journal);

    // Refusals do not poison the handle: the right step still goes in.
    journal.append(&lease, 1, &cycle, &events).unwrap();
    assert!(matches!(
        journal.verify(&id).unwrap(),
        Verification::Intact { steps: 2, root_hash, .. } if root_hash == events.head()
    ));
}

#[test]
fn step_zero_must_be_the_runs_start() {
    let dir = TempDir::new().unwrap();
    let (_, mut journal) = journal_in(&dir);
    let id = run_id("start");
    let lease = journal.create_run(&id, &header(), &holder(), 0).unwrap();
    let error = journal
        .append(&lease, 0, &StepInput::Stop, &empty_batch())
        .unwrap_err();
    assert!(
        matches!(error, JournalError::InvalidStep { step: 0, .. }),
        "{error}"
    );
    let mut other = header();
    other.created_by = "someone else".into();
    let error = journal
        .append(
            &lease,
            0,
            &StepInput::Start { header: other },
            &empty_batch(),
        )
        .unwrap_err();
    assert!(
        matches!(error, JournalError::InvalidStep { step: 0, .. }),
        "{error}"
    );
    assert_eq!(journal.summary(&id).unwrap().steps, 0);
}

#[test]
fn unknown_runs_and_existing_ids_are_refused() {
    let dir = TempDir::new().unwrap();
    let (_, mut journal, id, _) = recorded(&dir);
    let ghost = run_id("ghost");
    let unknown =
        |error: JournalError| matches!(error, JournalError::UnknownRun { run } if run == ghost);
    assert!(unknown(journal.load(&ghost).unwrap_err()));
    assert!(unknown(journal.verify(&ghost).unwrap_err()));
    assert!(unknown(journal.summary(&ghost).unwrap_err()));
    assert!(unknown(journal.header(&ghost).unwrap_err()));
    assert!(unknown(journal.acquire(&ghost, &holder(), 0).unwrap_err()));
    let error = journal
        .create_run(&id, &header(), &holder(), 0)
        .unwrap_err();
    assert!(matches!(error, JournalError::RunExists { .. }), "{error}");
    assert_eq!(journal.runs().unwrap().len(), 1);
}

#[test]
fn the_status_committed_with_each_step_is_the_one_its_events_say() {
    let dir = TempDir::new().unwrap();
    let (_, mut journal, id, recording) = recorded(&dir);
    let kinds: Vec<&str> = recording
        .steps
        .iter()
        .map(|(input, _)| input.kind())
        .collect();
    let decisions = kinds.iter().position(|kind| *kind == "decisions").unwrap();
    let parked = decisions - 1;
    assert_eq!(
        kinds[parked], "stop",
        "the step that parks carries run_stopped"
    );
    for (step, status) in recording.statuses.iter().enumerate() {
        let expected = if step == parked {
            "awaiting_approval"
        } else if step == recording.steps.len() - 1 {
            "stopped"
        } else {
            "running"
        };
        assert_eq!(
            status.name(),
            expected,
            "after step {step} ({})",
            kinds[step]
        );
    }
    let RunStatus::Stopped { reason } = journal.summary(&id).unwrap().status else {
        panic!("the run stopped for good");
    };
    let result = recording.result.as_ref().unwrap();
    assert_eq!(reason, serde_json::to_value(&result.stop_reason).unwrap());
    assert_eq!(reason["stop"], "converged");
    assert!(matches!(
        journal.verify(&id).unwrap(),
        Verification::Intact { .. }
    ));

    // A stopped run's journal is closed, even to the holder of its lease.
    let lease = journal.acquire(&id, &holder(), 1).unwrap();
    let next = recording.steps.len() as u64;
    let before = journal.load(&id).unwrap();
    let error = journal
        .append(&lease, next, &StepInput::Stop, &empty_batch())
        .unwrap_err();
    assert!(matches!(error, JournalError::RunStopped { .. }), "{error}");
    let error = journal.commit_outcomes(&lease, next, 9, &[]).unwrap_err();
    assert!(matches!(error, JournalError::InvalidStep { .. }), "{error}");
    assert_eq!(journal.load(&id).unwrap().steps, before.steps);
}

// ---------------------------------------------------------------------------------------------
// Leases
// ---------------------------------------------------------------------------------------------

/// A live process of this host other than this one, holding a lease: a child that sleeps.
struct OtherProcess {
    child: std::process::Child,
}

impl OtherProcess {
    fn start() -> OtherProcess {
        let child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .expect("sleep runs");
        OtherProcess { child }
    }

    fn holder(&self) -> Holder {
        Holder {
            pid: self.child.id(),
            ..Holder::this_process("another converge")
        }
    }

    /// Kills it and reaps it, as a SIGKILLed driver ends.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for OtherProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A holder on another host: never known to be gone, so its lease is free only once expired.
fn elsewhere() -> Holder {
    let here = holder();
    Holder {
        host: format!("{}-elsewhere", here.host),
        ..here
    }
}

/// A created run whose start step is committed, under the returned lease.
fn started(journal: &mut SqliteJournal, id: &RunId, by: &Holder) -> Lease {
    let lease = journal.create_run(id, &header(), by, 0).unwrap();
    let Scenario { engine, .. } = scenario();
    let mut run = engine.start(Context::new()).unwrap();
    let events = drain(&mut run);
    journal
        .append(&lease, 0, &StepInput::Start { header: header() }, &events)
        .unwrap();
    lease
}

#[test]
fn a_live_holder_keeps_its_run_and_the_refusal_names_it() {
    let dir = TempDir::new().unwrap();
    let (_, mut journal) = journal_in(&dir);
    let other = OtherProcess::start();
    let id = run_id("leased");
    let lease = started(&mut journal, &id, &other.holder());
    assert_eq!(lease.holder(), &other.holder());
    assert_eq!(lease.expires_ms(), LEASE_TTL_MS);
    let error = journal.acquire(&id, &holder(), 1_000).unwrap_err();
    let JournalError::Leased {
        run,
        holder: named,
        expires_in_ms,
    } = &error
    else {
        panic!("expected Leased, got {error}");
    };
    assert_eq!((run, named), (&id, &other.holder()));
    assert_eq!(*expires_in_ms, LEASE_TTL_MS - 1_000);
    assert!(error.to_string().contains("another converge"), "{error}");
    assert_eq!(
        journal.summary(&id).unwrap().lease,
        Some((other.holder(), LEASE_TTL_MS)),
        "the refusal changed nothing"
    );
}

#[test]
fn a_killed_holders_lease_is_taken_over_at_once() {
    let dir = TempDir::new().unwrap();
    let (_, mut journal) = journal_in(&dir);
    let other = OtherProcess::start();
    let gone = other.holder();
    let id = run_id("orphan");
    let old = started(&mut journal, &id, &gone);
    other.kill();
    // Long before the lease would expire.
    let lease = journal.acquire(&id, &holder(), 1).unwrap();
    assert_eq!(lease.holder(), &holder());
    assert_ne!(lease.token(), old.token());
    assert_eq!(
        journal.summary(&id).unwrap().lease,
        Some((holder(), 1 + LEASE_TTL_MS))
    );
}

#[test]
fn an_expired_lease_is_taken_over_and_a_renewed_one_is_not() {
    let dir = TempDir::new().unwrap();
    let (_, mut journal) = journal_in(&dir);
    let id = run_id("expiring");
    let mut away = started(&mut journal, &id, &elsewhere());
    let refused = journal.acquire(&id, &holder(), LEASE_TTL_MS - 1);
    assert!(
        matches!(
            refused,
            Err(JournalError::Leased {
                expires_in_ms: 1,
                ..
            })
        ),
        "{refused:?}"
    );
    journal.renew(&mut away, LEASE_TTL_MS - 1).unwrap();
    assert_eq!(away.expires_ms(), 2 * LEASE_TTL_MS - 1);
    assert!(matches!(
        journal.acquire(&id, &holder(), LEASE_TTL_MS + 1),
        Err(JournalError::Leased { .. })
    ));
    let lease = journal.acquire(&id, &holder(), 2 * LEASE_TTL_MS).unwrap();
    assert_eq!(lease.expires_ms(), 3 * LEASE_TTL_MS);
}

#[test]
fn a_write_under_a_lost_lease_is_refused_and_writes_nothing() {
    let dir = TempDir::new().unwrap();
    let (path, mut journal) = journal_in(&dir);
    let id = run_id("fenced");
    let mut stale = started(&mut journal, &id, &elsewhere());
    let current = journal.acquire(&id, &holder(), LEASE_TTL_MS).unwrap();

    // The stale holder carries on with the next cycle as if it still drove the run.
    let Scenario { engine, .. } = scenario();
    let mut run = engine.start(Context::new()).unwrap();
    drain(&mut run);
    let Step::Execute(batch) = run.next_step() else {
        panic!("expected a batch")
    };
    let outcomes: Vec<_> = batch
        .agents()
        .iter()
        .map(|&agent| (agent, execute_isolated(run.agent(agent), run.context())))
        .collect();
    let cycle = StepInput::cycle(&batch, &outcomes);
    let StepInput::Cycle {
        cycle: number,
        outcomes: records,
        ..
    } = &cycle
    else {
        unreachable!()
    };
    run.submit(outcomes).unwrap();
    let events = drain(&mut run);

    let before = (journal.load(&id).unwrap(), row_counts(&path));
    let lost = |result: Result<(), JournalError>| matches!(result, Err(JournalError::LeaseLost { run }) if run == id);
    assert!(lost(journal.append(&stale, 1, &cycle, &events)));
    assert!(lost(journal.commit_outcomes(&stale, 1, *number, records)));
    assert!(lost(journal.renew(&mut stale, LEASE_TTL_MS)));
    assert_eq!((journal.load(&id).unwrap(), row_counts(&path)), before);
    // Releasing a lost lease is harmless and leaves the current holder's lease alone.
    journal.release(&stale).unwrap();
    assert_eq!(
        journal.summary(&id).unwrap().lease,
        Some((holder(), 2 * LEASE_TTL_MS))
    );
    // The current holder writes the very same step.
    journal.append(&current, 1, &cycle, &events).unwrap();
    assert!(matches!(
        journal.verify(&id).unwrap(),
        Verification::Intact { steps: 2, .. }
    ));
}

#[test]
fn a_released_lease_is_free_at_once() {
    let dir = TempDir::new().unwrap();
    let (_, mut journal) = journal_in(&dir);
    let id = run_id("released");
    let first = started(&mut journal, &id, &elsewhere());
    journal.release(&first).unwrap();
    assert_eq!(journal.summary(&id).unwrap().lease, None);
    assert!(matches!(
        journal.acquire(&id, &holder(), 1),
        Ok(lease) if lease.holder() == &holder()
    ));
    // The released lease no longer writes.
    let result = journal.append(&first, 1, &StepInput::Stop, &empty_batch());
    assert!(
        matches!(result, Err(JournalError::LeaseLost { .. })),
        "{result:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Outcomes committed ahead of their cycle
// ---------------------------------------------------------------------------------------------

/// A started run and the input of its first cycle, executed but not committed.
fn first_cycle(journal: &mut SqliteJournal, id: &RunId) -> (Lease, StepInput, EventBatch) {
    let lease = journal.create_run(id, &header(), &holder(), 0).unwrap();
    let Scenario { engine, .. } = scenario();
    let mut run = engine.start(Context::new()).unwrap();
    journal
        .append(
            &lease,
            0,
            &StepInput::Start { header: header() },
            &drain(&mut run),
        )
        .unwrap();
    let Step::Execute(batch) = run.next_step() else {
        panic!("expected a batch")
    };
    let outcomes: Vec<_> = batch
        .agents()
        .iter()
        .map(|&agent| (agent, execute_isolated(run.agent(agent), run.context())))
        .collect();
    let input = StepInput::cycle(&batch, &outcomes);
    run.submit(outcomes).unwrap();
    (lease, input, drain(&mut run))
}

fn cycle_parts(input: &StepInput) -> (u32, Vec<(u32, OutcomeRecord)>) {
    let StepInput::Cycle {
        cycle, outcomes, ..
    } = input
    else {
        panic!("not a cycle: {input:?}")
    };
    (*cycle, outcomes.clone())
}

/// How many agent outcomes are stored for `step`, over all its parts.
fn stored_outcomes(path: &Path, step: u64) -> i64 {
    Connection::open(path)
        .unwrap()
        .query_row(
            "SELECT coalesce(sum(length(agents) / 4), 0) FROM outcomes WHERE step = ?1",
            [step as i64],
            |row| row.get(0),
        )
        .unwrap()
}

#[test]
fn outcomes_committed_ahead_are_open_until_their_cycle_commits() {
    let dir = TempDir::new().unwrap();
    let (path, mut journal) = journal_in(&dir);
    let id = run_id("ahead");
    let (lease, input, events) = first_cycle(&mut journal, &id);
    let (cycle, outcomes) = cycle_parts(&input);
    assert!(outcomes.len() >= 2, "the first cycle runs both seeds");
    let intact = journal.verify(&id).unwrap();

    // The last agent finishes first, then the first one.
    let last = outcomes.len() - 1;
    journal
        .commit_outcomes(&lease, 1, cycle, &outcomes[last..])
        .unwrap();
    journal
        .commit_outcomes(&lease, 1, cycle, &outcomes[..1])
        .unwrap();
    let loaded = journal.load(&id).unwrap();
    assert_eq!(loaded.steps.len(), 1);
    let open = loaded.open.expect("outcomes committed ahead are open");
    assert_eq!((open.step, open.cycle), (1, cycle));
    let expected = vec![outcomes[0].clone(), outcomes[last].clone()];
    assert_eq!(open.outcomes, expected, "in agent order");
    // Not yet under the chain: the record verifies as it did.
    assert_eq!(journal.verify(&id).unwrap(), intact);

    // Committed again (a retried group), with the rest: each agent is stored once.
    journal
        .commit_outcomes(&lease, 1, cycle, &outcomes)
        .unwrap();
    assert_eq!(stored_outcomes(&path, 1), outcomes.len() as i64);
    assert_eq!(journal.load(&id).unwrap().open.unwrap().outcomes, outcomes);

    // The cycle's step commits them; whatever was not committed ahead comes with it.
    journal.append(&lease, 1, &input, &events).unwrap();
    assert_eq!(stored_outcomes(&path, 1), outcomes.len() as i64);
    let loaded = journal.load(&id).unwrap();
    assert_eq!(loaded.open, None);
    assert_eq!(loaded.steps[1].input, input);
    assert!(matches!(
        journal.verify(&id).unwrap(),
        Verification::Intact { steps: 2, .. }
    ));
    // Its step is taken: outcomes for it are out of order now.
    assert!(matches!(
        journal.commit_outcomes(&lease, 1, cycle, &outcomes),
        Err(JournalError::OutOfOrder {
            expected: 2,
            got: 1,
            ..
        })
    ));
}

#[test]
fn a_cycle_step_completes_outcomes_committed_ahead_for_part_of_its_batch() {
    let dir = TempDir::new().unwrap();
    let (path, mut journal) = journal_in(&dir);
    let id = run_id("partial-ahead");
    let (lease, input, events) = first_cycle(&mut journal, &id);
    let (cycle, outcomes) = cycle_parts(&input);
    journal
        .commit_outcomes(&lease, 1, cycle, &outcomes[..1])
        .unwrap();
    journal.append(&lease, 1, &input, &events).unwrap();
    assert_eq!(stored_outcomes(&path, 1), outcomes.len() as i64);
    assert_eq!(journal.load(&id).unwrap().steps[1].input, input);
}

#[test]
fn outcomes_for_a_step_that_is_not_a_cycle_are_refused() {
    let dir = TempDir::new().unwrap();
    let (path, mut journal) = journal_in(&dir);
    let id = run_id("not-a-cycle");
    let (lease, input, events) = first_cycle(&mut journal, &id);
    let (cycle, outcomes) = cycle_parts(&input);
    // Committed ahead for step 1, which then turns out to be a halt (with events that continue
    // the chain, so that only the outcomes are wrong with it).
    journal
        .commit_outcomes(&lease, 1, cycle, &outcomes)
        .unwrap();
    let before = (journal.summary(&id).unwrap(), row_counts(&path));
    let halt = StepInput::Halt {
        reason: json!({"stop": "halted", "reason": "test"}),
    };
    let error = journal.append(&lease, 1, &halt, &events).unwrap_err();
    assert!(
        matches!(error, JournalError::InvalidStep { step: 1, .. }),
        "{error}"
    );
    assert_eq!((journal.summary(&id).unwrap(), row_counts(&path)), before);
    // Outcomes for another step than the next are refused outright.
    for step in [0, 2] {
        let error = journal
            .commit_outcomes(&lease, step, cycle, &outcomes)
            .unwrap_err();
        assert!(
            matches!(error, JournalError::OutOfOrder { expected: 1, got, .. } if got == step),
            "{error}"
        );
    }
    // And outcomes of another cycle for the same step.
    let error = journal
        .commit_outcomes(&lease, 1, cycle + 1, &outcomes)
        .unwrap_err();
    assert!(matches!(error, JournalError::InvalidStep { .. }), "{error}");
    assert_eq!((journal.summary(&id).unwrap(), row_counts(&path)), before);
}

#[test]
fn outcomes_under_a_stale_lease_are_refused() {
    let dir = TempDir::new().unwrap();
    let (path, mut journal) = journal_in(&dir);
    let id = run_id("stale-outcomes");
    let (stale, input, _) = first_cycle(&mut journal, &id);
    let (cycle, outcomes) = cycle_parts(&input);
    // A process on another host takes the run over once the lease lapsed.
    journal
        .acquire(&id, &elsewhere(), LEASE_TTL_MS + 1)
        .unwrap();
    let error = journal
        .commit_outcomes(&stale, 1, cycle, &outcomes)
        .unwrap_err();
    assert!(matches!(error, JournalError::LeaseLost { .. }), "{error}");
    assert_eq!(stored_outcomes(&path, 1), 0);
    assert_eq!(journal.load(&id).unwrap().open, None);
}

// ---------------------------------------------------------------------------------------------
// Opening files that are not (current) journals
// ---------------------------------------------------------------------------------------------

fn sidecars(path: &Path) -> Vec<bool> {
    ["-wal", "-shm", "-journal"]
        .iter()
        .map(|suffix| PathBuf::from(format!("{}{suffix}", path.display())).exists())
        .collect()
}

/// Opens `path`, expects a refusal, and checks the file's bytes did not change (nor, if
/// asked, that any file appeared next to it).
fn refused(path: &Path, no_new_files: bool) -> JournalError {
    let before = std::fs::read(path).unwrap();
    let sidecars_before = sidecars(path);
    let error = SqliteJournal::open(path).unwrap_err();
    assert_eq!(
        std::fs::read(path).unwrap(),
        before,
        "the file was modified"
    );
    if no_new_files {
        assert_eq!(sidecars(path), sidecars_before, "files appeared next to it");
    }
    error
}

#[test]
fn a_text_file_is_not_a_journal_and_is_left_untouched() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, "these are my notes, not a database\n".repeat(200)).unwrap();
    let error = refused(&path, true);
    assert!(matches!(error, JournalError::NotAJournal { .. }), "{error}");
    assert!(
        error.to_string().contains("not an SQLite database"),
        "{error}"
    );
}

#[test]
fn another_applications_database_is_not_a_journal_and_is_left_untouched() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("other.db");
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "CREATE TABLE contacts (name TEXT); INSERT INTO contacts VALUES ('ada'), ('grace');",
    )
    .unwrap();
    drop(conn);
    let error = refused(&path, true);
    assert!(matches!(error, JournalError::NotAJournal { .. }), "{error}");

    let path = dir.path().join("tagged.db");
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch("PRAGMA application_id = 42; CREATE TABLE t (x);")
        .unwrap();
    drop(conn);
    let error = refused(&path, true);
    assert!(error.to_string().contains("0x0000002a"), "{error}");
}

#[test]
fn another_applications_one_page_database_is_not_a_journal_and_is_left_untouched() {
    let dir = TempDir::new().unwrap();
    // One page, no table: a user version set, or a view (which needs no page of its own).
    for (name, sql) in [
        ("versioned.db", "PRAGMA user_version = 7;"),
        ("view.db", "CREATE VIEW answer AS SELECT 42;"),
    ] {
        let path = dir.path().join(name);
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(sql).unwrap();
        drop(conn);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            4096,
            "{name} is one page"
        );
        let error = refused(&path, true);
        assert!(
            matches!(error, JournalError::NotAJournal { .. }),
            "{name}: {error}"
        );
        assert!(
            matches!(
                SqliteJournal::open_read_only(&path),
                Err(JournalError::NotAJournal { .. })
            ),
            "{name}"
        );
    }
}

#[test]
fn a_journal_opened_read_only_reads_everything_and_writes_nothing() {
    let dir = TempDir::new().unwrap();
    let (path, writer, id, recording) = recorded(&dir);
    let holder = Holder::this_process("tests/journal.rs");
    let check = |reader: &mut SqliteJournal| {
        assert_eq!(reader.runs().unwrap().len(), 1);
        assert_eq!(reader.load(&id).unwrap().steps.len(), recording.steps.len());
        assert!(matches!(
            reader.verify(&id).unwrap(),
            Verification::Intact { .. }
        ));
        assert!(matches!(
            reader.acquire(&id, &holder, 0),
            Err(JournalError::ReadOnly { .. })
        ));
        assert!(matches!(
            reader.create_run(&run_id("other"), &header(), &holder, 0),
            Err(JournalError::ReadOnly { .. })
        ));
    };
    // Beside a writer that has it open...
    check(&mut SqliteJournal::open_read_only(&path).unwrap());
    // ...and alone, once the writer closed it (checkpointing its log into the file).
    drop(writer);
    let before = Digest::of_bytes(&std::fs::read(&path).unwrap());
    check(&mut SqliteJournal::open_read_only(&path).unwrap());
    assert_eq!(
        Digest::of_bytes(&std::fs::read(&path).unwrap()),
        before,
        "nothing was written"
    );
    // A missing file is not created.
    let missing = dir.path().join("missing.journal");
    assert!(matches!(
        SqliteJournal::open_read_only(&missing),
        Err(JournalError::Io { .. })
    ));
    assert!(!missing.exists());
}

#[test]
fn a_journal_with_a_newer_schema_is_refused_and_left_untouched() {
    let dir = TempDir::new().unwrap();
    let (path, journal, _, _) = recorded(&dir);
    drop(journal);
    // What a newer Converge writes: the version in the meta table and, mirrored, in the
    // file header. Refused from the header alone: SQLite never opens the file.
    let newer = dir.path().join("newer.journal");
    std::fs::copy(&path, &newer).unwrap();
    Connection::open(&newer)
        .unwrap()
        .execute_batch(
            "UPDATE meta SET value = '3' WHERE key = 'schema_version'; PRAGMA user_version = 3;",
        )
        .unwrap();
    let error = refused(&newer, true);
    assert!(
        matches!(
            error,
            JournalError::NewerSchema {
                found: 3,
                supported: 2,
                ..
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("newer Converge"), "{error}");

    // Only the meta table says so: the read-only SQLite check refuses it.
    let meta_only = dir.path().join("meta-only.journal");
    std::fs::copy(&path, &meta_only).unwrap();
    Connection::open(&meta_only)
        .unwrap()
        .execute(
            "UPDATE meta SET value = '4' WHERE key = 'schema_version'",
            [],
        )
        .unwrap();
    let error = refused(&meta_only, false);
    assert!(
        matches!(error, JournalError::NewerSchema { found: 4, .. }),
        "{error}"
    );
}

/// A first-edition journal as that edition created it: Converge's application id, schema
/// version 1 in the file header and the meta table, and one run.
fn first_edition(path: &Path, user_version: i64) {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL;
         PRAGMA application_id = {};
         PRAGMA user_version = {user_version};
         CREATE TABLE meta (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL);
         INSERT INTO meta VALUES ('schema_version', '1'), ('created_by', 'converge-runtime 0.1.0');
         CREATE TABLE runs (id TEXT PRIMARY KEY NOT NULL, header TEXT NOT NULL,
             status TEXT NOT NULL, stop_reason TEXT, steps INTEGER NOT NULL,
             events INTEGER NOT NULL, root_hash TEXT NOT NULL);
         INSERT INTO runs VALUES ('old-run', '{{}}', 'running', NULL, 0, 0, '{}');",
        0x436E_7667,
        "0".repeat(64)
    ))
    .unwrap();
    // Checkpointed and closed, as a first-edition journal at rest is.
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); PRAGMA journal_mode = DELETE;")
        .unwrap();
}

#[test]
fn a_first_edition_journal_is_refused_naming_both_versions_and_left_untouched() {
    let dir = TempDir::new().unwrap();
    // Refused from the file header alone, and, where only the meta table says so, by the
    // read-only check.
    for (name, user_version, no_new_files) in
        [("v1.journal", 1, true), ("meta-v1.journal", 0, false)]
    {
        let path = dir.path().join(name);
        first_edition(&path, user_version);
        let error = refused(&path, no_new_files);
        assert!(
            matches!(
                error,
                JournalError::OlderSchema {
                    found: 1,
                    supported: 2,
                    ..
                }
            ),
            "{name}: {error}"
        );
        let message = error.to_string();
        assert!(
            message.contains("schema version 1") && message.contains("version 2"),
            "{name}: {message}"
        );
    }
}

#[test]
fn a_missing_or_empty_file_becomes_a_journal() {
    let dir = TempDir::new().unwrap();
    let empty = dir.path().join("empty.journal");
    std::fs::write(&empty, b"").unwrap();
    for path in [dir.path().join("fresh.journal"), empty] {
        let mut journal = SqliteJournal::open(&path).unwrap();
        assert!(journal.runs().unwrap().is_empty());
        record(&mut journal, &run_id("r")).1.unwrap();
        drop(journal);
        assert_eq!(SqliteJournal::open(&path).unwrap().runs().unwrap().len(), 1);
        let mode: String = Connection::open(&path)
            .unwrap()
            .query_row("PRAGMA journal_mode", [], |row| row.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }
}

#[test]
fn a_directory_is_not_a_journal() {
    let dir = TempDir::new().unwrap();
    let error = SqliteJournal::open(dir.path()).unwrap_err();
    assert!(matches!(error, JournalError::NotAJournal { .. }), "{error}");
}

// ---------------------------------------------------------------------------------------------
// Injected failures
// ---------------------------------------------------------------------------------------------

/// Drivers hold a journal across `.await` points on multi-threaded runtimes.
#[test]
fn journals_can_move_between_threads() {
    fn send<T: Send>() {}
    send::<SqliteJournal>();
    send::<FailingJournal<SqliteJournal>>();
    send::<Box<dyn Journal + Send>>();
    fn error<T: std::error::Error + Send + Sync + 'static>() {}
    error::<JournalError>();
    error::<RecordError>();
}

#[test]
fn a_failed_append_at_any_step_leaves_a_journal_that_verifies() {
    let dir = TempDir::new().unwrap();
    let (_, _, _, complete) = recorded(&dir);
    let appends = complete.steps.len();
    for k in 0..appends {
        for write_first in [false, true] {
            let path = dir.path().join(format!("fail-{k}-{write_first}.journal"));
            let inner = SqliteJournal::open(&path).unwrap();
            let mut journal = match write_first {
                false => FailingJournal::new(inner, k as u64),
                true => FailingJournal::after_write(inner, k as u64),
            };
            let id = run_id("interrupted");
            let (recording, outcome) = record(&mut journal, &id);
            assert!(
                matches!(outcome, Err(JournalError::Injected { call }) if call == k as u64),
                "k={k}: {outcome:?}"
            );
            assert_eq!(recording.steps.len(), k, "the driver stops at the failure");
            let committed = if write_first { k + 1 } else { k };
            assert_eq!(
                journal.writes(),
                k as u64 + 1,
                "the driver stops at the failure"
            );
            let verification = journal.verify(&id).unwrap();
            assert_eq!(
                verification,
                Verification::Intact {
                    steps: committed as u64,
                    events: complete.events_in(committed),
                    root_hash: complete.head_after(committed),
                    record_hash: complete.record_hash_after(&id, committed),
                },
                "k={k}, write_first={write_first}"
            );
            drop(journal);
            // Durable as it stands: a fresh handle loads exactly the committed prefix.
            let reopened = SqliteJournal::open(&path).unwrap();
            let loaded = reopened.load(&id).unwrap();
            let inputs: Vec<_> = loaded.steps.iter().map(|step| step.input.clone()).collect();
            let expected: Vec<_> = complete.steps[..committed]
                .iter()
                .map(|(input, _)| input.clone())
                .collect();
            assert_eq!(inputs, expected);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Records
// ---------------------------------------------------------------------------------------------

#[test]
fn run_ids_are_validated() {
    assert!(RunId::new("a").is_ok());
    assert!(RunId::new(&"x".repeat(64)).is_ok());
    for bad in ["", "has space", "slash/", "dot.", "é", &"x".repeat(65)] {
        assert!(RunId::new(bad).is_err(), "{bad:?}");
    }
    assert!(serde_json::from_str::<RunId>("\"no good\"").is_err());
    assert_eq!(
        serde_json::from_str::<RunId>("\"ok-1\"").unwrap(),
        run_id("ok-1")
    );
}

#[test]
fn decisions_and_failures_round_trip() {
    let id = "c3.a1.p0".parse().unwrap();
    let hash = Digest::of_bytes(b"proposal");
    for decision in [
        Decision::approve(id, hash, Actor::human("alice").unwrap()),
        Decision::reject(id, hash, Actor::new("bot", ActorKind::Agent).unwrap(), "no"),
    ] {
        let text = serde_json::to_string(&DecisionRecord::from_core(&decision)).unwrap();
        let back: DecisionRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(back.into_core(), decision);
    }
    let failed = AgentOutcome::Failed("timed out".into());
    let text = serde_json::to_string(&OutcomeRecord::from_core(&failed)).unwrap();
    let back: OutcomeRecord = serde_json::from_str(&text).unwrap();
    assert_eq!(back.into_core().unwrap(), failed);
    // Actors are validated when read.
    let forged = r#"{"proposal":"c1.a0.p0","hash":"HASH","actor":{"name":" ","kind":"human"},"verdict":"approve"}"#
        .replace("HASH", &hash.to_string());
    assert!(serde_json::from_str::<DecisionRecord>(&forged).is_err());
}

#[test]
fn records_that_no_core_value_matches_are_refused() {
    let observation = |remote: bool, replayability, payload| ObservationRecord {
        kind: "k".into(),
        remote: remote.then(|| converge_runtime::RemoteRecord {
            system: "s".into(),
            reference: "r".into(),
        }),
        replayability,
        payload,
    };
    for (record, detail) in [
        (
            observation(false, ReplayabilityRecord::Recorded, json!(1)),
            "local",
        ),
        (
            observation(true, ReplayabilityRecord::Deterministic, json!(1)),
            "remote",
        ),
        (
            observation(true, ReplayabilityRecord::AuditOnly, json!(1)),
            "audit-only",
        ),
    ] {
        let effect = EffectRecord {
            proposals: vec![],
            observations: vec![record],
            usage: TokenUsage::default(),
            failure: None,
        };
        let error = effect.into_core().unwrap_err();
        assert!(
            matches!(error, RecordError::Observation { observation: 0, .. }),
            "{error}"
        );
        assert!(error.to_string().contains(detail), "{error}");
    }
    let draft = AgentEffect::empty().with_proposal(Proposal::new(ContextKey::Seeds, "s", 1));
    let mut record = EffectRecord::from_core(&draft);
    record.proposals[0].confidence = "very".into();
    assert!(matches!(
        record.clone().into_core(),
        Err(RecordError::Confidence { proposal: 0, .. })
    ));
    record.proposals[0].confidence = "1".into();
    record.proposals[0].key = converge_runtime::KeyRecord::Typed("Not Valid".into());
    assert!(matches!(
        record.into_core(),
        Err(RecordError::Key { proposal: 0, .. })
    ));
    // Unknown fields are errors, not silently dropped.
    let text = serde_json::to_string(&EffectRecord::from_core(&draft)).unwrap();
    let extra = text.replacen('{', r#"{"facts":[],"#, 1);
    assert!(serde_json::from_str::<EffectRecord>(&extra).is_err());
}

#[test]
fn recorded_outcomes_must_match_the_replayed_batch() {
    let Scenario { engine, .. } = scenario();
    let mut run = engine.start(Context::new()).unwrap();
    let Step::Execute(batch) = run.next_step() else {
        panic!("expected a batch")
    };
    let outcomes: Vec<_> = batch
        .agents()
        .iter()
        .map(|&agent| (agent, AgentOutcome::Completed(AgentEffect::empty())))
        .collect();
    let input = StepInput::cycle(&batch, &outcomes);
    assert_eq!(input.outcomes_for(&batch).unwrap(), outcomes);
    let StepInput::Cycle {
        cycle,
        batch: agents,
        outcomes: recorded,
    } = input.clone()
    else {
        unreachable!()
    };
    let with = |cycle, agents: Vec<u32>, recorded| StepInput::Cycle {
        cycle,
        batch: agents,
        outcomes: recorded,
    };
    assert!(matches!(
        with(cycle + 1, agents.clone(), recorded.clone()).outcomes_for(&batch),
        Err(RecordError::CycleMismatch { .. })
    ));
    assert!(matches!(
        with(cycle, agents[1..].to_vec(), recorded.clone()).outcomes_for(&batch),
        Err(RecordError::BatchMismatch { .. })
    ));
    assert!(matches!(
        with(cycle, agents.clone(), recorded[1..].to_vec()).outcomes_for(&batch),
        Err(RecordError::Outcome { .. })
    ));
    assert!(matches!(
        StepInput::Stop.outcomes_for(&batch),
        Err(RecordError::NotACycle { kind: "stop" })
    ));
}

/// Content numbers that JSON text carries only with exact float parsing.
#[test]
fn content_floats_survive_the_journal_exactly() {
    let dir = TempDir::new().unwrap();
    let (_, mut journal) = journal_in(&dir);
    let id = run_id("floats");
    let lease = journal.create_run(&id, &header(), &holder(), 0).unwrap();
    let Scenario { engine, .. } = scenario();
    let mut run = engine.start(Context::new()).unwrap();
    let events = drain(&mut run);
    journal
        .append(&lease, 0, &StepInput::Start { header: header() }, &events)
        .unwrap();
    let Step::Execute(batch) = run.next_step() else {
        panic!("expected a batch")
    };
    let tricky = json!([
        1.0715660391465826e-75,
        -1.81996730402717e-179,
        0.1,
        1e300,
        -0.0
    ]);
    let outcomes: Vec<_> = batch
        .agents()
        .iter()
        .map(|&agent| {
            let effect = AgentEffect::empty().with_proposal(Proposal::new(
                ContextKey::Seeds,
                "f",
                tricky.clone(),
            ));
            (agent, AgentOutcome::Completed(effect))
        })
        .collect();
    let input = StepInput::cycle(&batch, &outcomes);
    run.submit(outcomes).unwrap();
    journal.append(&lease, 1, &input, &drain(&mut run)).unwrap();
    assert_eq!(journal.load(&id).unwrap().steps[1].input, input);
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| f.is_finite().then(|| Value::from(f))),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..4)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

fn context_key() -> impl Strategy<Value = ContextKey> {
    prop_oneof![
        prop::sample::select(ContextKey::well_known().collect::<Vec<_>>()),
        "[a-z][a-z0-9_-]{0,31}"
            .prop_filter_map("not reserved", |name| ContextKey::custom(&name).ok()),
    ]
}

fn key_ref() -> impl Strategy<Value = KeyRef> {
    prop_oneof![
        context_key().prop_map(KeyRef::Key),
        context_key().prop_map(|key| KeyRef::Name(key.name().to_owned())),
        any::<String>().prop_map(KeyRef::Name),
    ]
}

fn confidence() -> impl Strategy<Value = f64> {
    prop_oneof![
        0.0..=1.0f64,
        any::<f64>(),
        prop::sample::select(vec![
            f64::NAN,
            -f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -0.0,
            1.5,
            -1.0,
            f64::MIN_POSITIVE / 2.0
        ]),
    ]
}

fn draft() -> impl Strategy<Value = Proposal<converge_core::Draft>> {
    (
        key_ref(),
        any::<String>(),
        json_value(),
        confidence(),
        prop::collection::vec((context_key(), any::<String>()), 0..3),
        prop::collection::vec(any::<u32>(), 0..3),
        prop::option::of(any::<String>()),
    )
        .prop_map(
            |(key, id, content, confidence, derivations, citations, correction)| {
                let mut draft = Proposal::new(key, id, content).with_confidence(confidence);
                for (key, id) in derivations {
                    draft = draft.derived_from(key, id);
                }
                for citation in citations {
                    draft = draft.citing(citation);
                }
                if let Some(reason) = correction {
                    draft = draft.correcting(reason);
                }
                draft
            },
        )
}

fn observation() -> impl Strategy<Value = Observation> {
    (
        any::<String>(),
        prop::option::of((any::<String>(), any::<String>())),
        any::<bool>(),
        json_value(),
    )
        .prop_map(|(kind, remote, audit_only, payload)| {
            let observation = match remote {
                None => Observation::local(kind, payload),
                Some((system, reference)) => Observation::remote(kind, system, reference, payload),
            };
            if audit_only {
                observation.audit_only()
            } else {
                observation
            }
        })
}

fn effect() -> impl Strategy<Value = AgentEffect> {
    (
        prop::collection::vec(draft(), 0..4),
        prop::collection::vec(observation(), 0..3),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(|(drafts, observations, input, output)| {
            let mut effect = AgentEffect::empty().with_usage(TokenUsage { input, output });
            for observation in observations {
                effect.observe(observation);
            }
            for draft in drafts {
                effect.propose(draft);
            }
            effect
        })
}

/// Equality that also holds for NaN confidences (NaN is never `==` itself). Other floats must
/// be bit-identical.
fn same_effect(a: &AgentEffect, b: &AgentEffect) -> bool {
    let same_f64 = |x: f64, y: f64| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan());
    a.usage() == b.usage()
        && a.observations() == b.observations()
        && a.proposals().len() == b.proposals().len()
        && a.proposals().iter().zip(b.proposals()).all(|(x, y)| {
            x.key() == y.key()
                && x.id() == y.id()
                && x.content() == y.content()
                && same_f64(x.confidence(), y.confidence())
                && x.derivations().eq(y.derivations())
                && x.citations() == y.citations()
                && x.correction() == y.correction()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// core → record → JSON text → record → core gives back the very same effect.
    #[test]
    fn effects_round_trip_exactly_through_json(effect in effect()) {
        let text = serde_json::to_string(&OutcomeRecord::from_core(&AgentOutcome::Completed(effect.clone()))).unwrap();
        let record: OutcomeRecord = serde_json::from_str(&text).unwrap();
        let AgentOutcome::Completed(back) = record.into_core().unwrap() else {
            panic!("completed became failed");
        };
        prop_assert!(same_effect(&back, &effect), "{effect:?}\n!=\n{back:?}");
        if effect.proposals().iter().all(|draft| !draft.confidence().is_nan()) {
            prop_assert_eq!(back, effect);
        }
    }
}
