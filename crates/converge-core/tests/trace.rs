//! Snapshot of the Quick Start's event trace: one JSON line per event, then the root hash.
//!
//! Any change to what the engine emits, in what order, or how it is encoded and hashed shows
//! up here. Update with `UPDATE_EXPECT=1 cargo test -p converge-core --test trace` after
//! checking the difference is intended.

use std::sync::{Arc, Mutex};

use converge_core::agents::{ReactOnceAgent, SeedAgent};
use converge_core::{Context, Engine, EventRecord, Observer};
use expect_test::expect;

struct Shared(Arc<Mutex<Vec<EventRecord>>>);

impl Observer for Shared {
    fn on_event(&mut self, record: &EventRecord) {
        self.0.lock().unwrap().push(record.clone());
    }
}

fn quickstart_trace() -> String {
    let events = Arc::new(Mutex::new(Vec::new()));
    let mut engine = Engine::new();
    engine.observe(Shared(events.clone()));
    engine.register(SeedAgent::new("seed-1", "initial data"));
    engine.register(ReactOnceAgent::new("hyp-1", "derived insight"));
    let result = engine.run(Context::new()).unwrap();
    let events = events.lock().unwrap();
    let mut trace: String = events
        .iter()
        .map(|record| {
            format!(
                "{} {}\n",
                record.seq,
                serde_json::to_string(&record.event).unwrap()
            )
        })
        .collect();
    trace.push_str(&format!("root {}\n", result.root_hash));
    assert_eq!(
        events.last().map(|record| record.hash),
        Some(result.root_hash)
    );
    trace
}

#[test]
fn quickstart_event_trace() {
    expect![[r#"
        0 {"event":"run_started","agents":[{"id":0,"name":"seed-1","dependencies":[],"grant":["seeds"]},{"id":1,"name":"hyp-1","dependencies":["seeds"],"grant":["hypotheses"]}],"initial_facts":0,"budget":{"cycles":100,"facts":10000,"tokens":null}}
        1 {"event":"cycle_started","cycle":1,"agents":[0]}
        2 {"event":"agent_executed","cycle":1,"agent":0,"proposals":1,"observations":0,"usage":{"input":0,"output":0}}
        3 {"event":"fact_promoted","cycle":1,"fact":{"key":"seeds","id":"seed-1"},"version":0,"content_hash":"829619ad1018bd410c8375396f6f322d9b624980d00718aa9272b0207a80f3c7","proposal":"c1.a0.p0","approver":null}
        4 {"event":"cycle_finished","cycle":1,"promoted":1,"rejected":0,"parked":0}
        5 {"event":"cycle_started","cycle":2,"agents":[1]}
        6 {"event":"agent_executed","cycle":2,"agent":1,"proposals":1,"observations":0,"usage":{"input":0,"output":0}}
        7 {"event":"fact_promoted","cycle":2,"fact":{"key":"hypotheses","id":"hyp-1"},"version":0,"content_hash":"b2ce53b27222c670b0ffa8b2398deb67a942b4ffbf8d12d17ff0d25189bf0545","proposal":"c2.a1.p0","approver":null}
        8 {"event":"cycle_finished","cycle":2,"promoted":1,"rejected":0,"parked":0}
        9 {"event":"run_stopped","cycles":2,"facts":2,"reason":{"stop":"converged"}}
        root 9b5cc9ee88918e3076bc4518a7e1cf71bab3b9d4195b7d39d7171607f16b0cdf
    "#]].assert_eq(&quickstart_trace());
}

#[test]
fn the_trace_is_identical_across_runs() {
    assert_eq!(quickstart_trace(), quickstart_trace());
}

/// Drives the Quick Start by hand, taking events in batches (kept encodings or not, mixed
/// with single polls), and returns every record with the bytes it was taken with.
fn taken(keep: bool) -> (Vec<(EventRecord, Vec<u8>)>, converge_core::Digest) {
    use converge_core::{Digest, Step, execute_isolated};
    let mut engine = Engine::new();
    engine.register(SeedAgent::new("seed-1", "initial data"));
    engine.register(ReactOnceAgent::new("hyp-1", "derived insight"));
    let mut run = engine.start(Context::new()).unwrap();
    if keep {
        run.keep_encoded_events();
    }
    let mut taken = Vec::new();
    let take = |run: &mut converge_core::Run<'_>, taken: &mut Vec<(EventRecord, Vec<u8>)>| {
        let head = taken
            .last()
            .map_or(Digest::zero(), |(record, _)| record.hash);
        let batch = run.take_events();
        assert_eq!(
            batch.previous(),
            head,
            "a batch chains from the last taken event"
        );
        assert_eq!(batch.first_seq(), taken.len() as u64);
        let mut previous = batch.previous();
        for (record, bytes) in batch.iter() {
            assert_eq!(bytes, EventRecord::encode(&record.event).as_slice());
            assert_eq!(
                record.hash,
                EventRecord::link_hash(previous, record.seq, bytes)
            );
            previous = record.hash;
            taken.push((record.clone(), bytes.to_vec()));
        }
        assert_eq!(batch.head(), previous);
    };
    take(&mut run, &mut taken);
    while let Step::Execute(batch) = run.next_step() {
        let outcomes: Vec<_> = batch
            .agents()
            .iter()
            .map(|&agent| (agent, execute_isolated(run.agent(agent), run.context())))
            .collect();
        run.submit(outcomes).unwrap();
        // One event taken on its own, the rest as a batch.
        let single = run.poll_event().unwrap();
        let bytes = EventRecord::encode(&single.event);
        taken.push((single, bytes));
        take(&mut run, &mut taken);
    }
    take(&mut run, &mut taken);
    assert!(run.take_events().is_empty());
    let result = run.finish().ok().unwrap();
    (taken, result.root_hash)
}

#[test]
fn taken_batches_carry_the_bytes_the_chain_hashed_whether_kept_or_not() {
    let (kept, kept_root) = taken(true);
    let (encoded, encoded_root) = taken(false);
    assert_eq!(kept, encoded);
    assert_eq!(kept_root, encoded_root);
    let mut engine = Engine::new();
    engine.register(SeedAgent::new("seed-1", "initial data"));
    engine.register(ReactOnceAgent::new("hyp-1", "derived insight"));
    let result = engine.run(Context::new()).unwrap();
    assert_eq!(
        kept_root, result.root_hash,
        "taking batches changes no hash"
    );
    assert_eq!(kept.last().unwrap().0.hash, result.root_hash);
}
