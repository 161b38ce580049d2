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
