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

/// Executes every agent of `batch` in turn and submits their outcomes.
fn execute(run: &mut converge_core::Run<'_>, batch: &converge_core::Batch) {
    let outcomes: Vec<_> = batch
        .agents()
        .iter()
        .map(|&agent| {
            let outcome = converge_core::execute_isolated(run.agent(agent), run.context());
            (agent, outcome)
        })
        .collect();
    run.submit(outcomes).unwrap();
}

/// Drives the Quick Start by hand, taking events in batches (kept encodings or not, mixed
/// with single polls), and returns every record with the bytes it was taken with.
fn taken(keep: bool) -> (Vec<(EventRecord, Vec<u8>)>, converge_core::Digest) {
    use converge_core::{Digest, Step};
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
        execute(&mut run, &batch);
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

/// A sink that takes groups of at most `count_max` encodings and `bytes_max` bytes (a
/// larger encoding alone), and keeps them.
struct Limited {
    count_max: usize,
    bytes_max: usize,
    groups: Arc<Mutex<Vec<converge_core::Encodings>>>,
}

impl converge_core::EncodingSink for Limited {
    fn fits(&self, count: usize, bytes: usize, len: usize) -> bool {
        count < self.count_max && bytes + len <= self.bytes_max
    }

    fn take(&mut self, group: converge_core::Encodings) -> Vec<u8> {
        self.groups.lock().unwrap().push(group);
        Vec::with_capacity(64)
    }
}

/// Runs `agents` seeds and a reaction to them, taking each step's events in one batch, with
/// encodings handed to a [`Limited`] sink when `limits` are given; returns every event's
/// encoding as taken (from the groups, then the batch), each batch's handed count, and the
/// root hash.
fn handed(agents: usize, limits: Option<(usize, usize)>) -> (Vec<Vec<u8>>, Vec<usize>, String) {
    use converge_core::Step;
    let mut engine = Engine::new();
    for seed in 0..agents {
        engine.register(SeedAgent::new(format!("seed-{seed}"), "x".repeat(seed % 7)));
    }
    engine.register(ReactOnceAgent::new("hyp-1", "derived insight"));
    let mut run = engine.start(Context::new()).unwrap();
    let groups = Arc::new(Mutex::new(Vec::new()));
    match limits {
        Some((count_max, bytes_max)) => run.hand_encoded_events_to(Box::new(Limited {
            count_max,
            bytes_max,
            groups: groups.clone(),
        })),
        None => run.keep_encoded_events(),
    }
    let mut encodings = Vec::new();
    let mut handed_counts = Vec::new();
    let mut take = |run: &mut converge_core::Run<'_>| {
        let batch = run.take_events();
        let groups: Vec<_> = std::mem::take(&mut *groups.lock().unwrap());
        let mut seq = batch.first_seq();
        for group in &groups {
            assert_eq!(group.first_seq(), seq, "groups follow each other");
            let (count_max, bytes_max) = limits.unwrap();
            assert!(group.len() <= count_max);
            assert!(group.len() == 1 || group.bytes().len() <= bytes_max);
            let mut start = 0;
            for &end in group.ends() {
                encodings.push(group.bytes()[start..end].to_vec());
                start = end;
            }
            seq += group.len() as u64;
        }
        assert_eq!(seq - batch.first_seq(), batch.handed() as u64);
        assert_eq!(batch.iter().len(), batch.len() - batch.handed());
        encodings.extend(batch.iter().map(|(_, bytes)| bytes.to_vec()));
        for (index, record) in batch.records().iter().enumerate() {
            let at = encodings.len() - batch.len() + index;
            assert_eq!(encodings[at], EventRecord::encode(&record.event));
        }
        handed_counts.push(batch.handed());
    };
    while let Step::Execute(batch) = run.next_step() {
        take(&mut run);
        execute(&mut run, &batch);
    }
    take(&mut run);
    let root = run.finish().ok().unwrap().root_hash.to_string();
    (encodings, handed_counts, root)
}

#[test]
fn encodings_handed_in_groups_are_the_ones_the_chain_hashed_and_change_no_hash() {
    for agents in [1, 2, 3, 17, 200] {
        let (plain, none_handed, root) = handed(agents, None);
        assert!(none_handed.iter().all(|&handed| handed == 0));
        for limits in [(1, 1), (2, 10_000), (5, 300), (64, 2_000), (4096, 1 << 20)] {
            let (encodings, handed_counts, with_sink) = handed(agents, Some(limits));
            assert_eq!(with_sink, root, "{agents} agents, limits {limits:?}");
            assert_eq!(encodings, plain, "{agents} agents, limits {limits:?}");
            if agents >= 17 && limits.0 < 64 {
                assert!(
                    handed_counts.iter().any(|&handed| handed > 0),
                    "a wide cycle hands groups over ({agents} agents, limits {limits:?})"
                );
            }
        }
    }
}
