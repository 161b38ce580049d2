//! What is committed can be read back, at the limits.
//!
//! Property: any effect the driver admits (`converge_runtime::limits`) — values nested up to
//! `VALUE_DEPTH_MAX` levels, objects and arrays at every level, any strings and numbers —
//! round-trips through a real journal: the run is appended, loaded, re-derived (replay) with
//! identical hashes, and verifies. One level deeper is the agent's recorded failure, and the
//! run stays readable.

use std::sync::Mutex;

use converge_core::{AgentEffect, AuthorityScope, Context, ContextKey, Observation, Proposal};
use converge_runtime::limits::{VALUE_DEPTH_MAX, check_effect};
use converge_runtime::{
    AgentFuture, AsyncAgent, Journal, ReplayReport, RunId, Runtime, SqliteJournal, Verification,
};
use proptest::prelude::*;
use serde_json::{Map, Value};

/// An agent returning one prepared effect.
struct Answer {
    effect: Mutex<Option<AgentEffect>>,
}

impl AsyncAgent for Answer {
    fn name(&self) -> &str {
        "answer"
    }

    fn dependencies(&self) -> &[ContextKey] {
        &[]
    }

    fn requested_scope(&self) -> AuthorityScope {
        AuthorityScope::keys([ContextKey::Hypotheses])
    }

    fn accepts(&self, ctx: &Context) -> bool {
        !ctx.has(ContextKey::Hypotheses)
            && self
                .effect
                .lock()
                .map(|effect| effect.is_some())
                .unwrap_or(false)
    }

    fn execute<'a>(&'a self, _ctx: &'a Context) -> AgentFuture<'a> {
        let effect = self
            .effect
            .lock()
            .ok()
            .and_then(|mut effect| effect.take())
            .unwrap_or_else(AgentEffect::empty);
        Box::pin(async move { effect })
    }
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime")
        .block_on(future)
}

fn runtime(effect: AgentEffect) -> Runtime {
    let mut runtime = Runtime::new(converge_core::Engine::new());
    runtime.register_async(Answer {
        effect: Mutex::new(Some(effect)),
    });
    runtime
}

/// A value nested exactly `depth` levels, each level an array or an object chosen by `shape`,
/// with `leaf` at the bottom.
fn nested(depth: usize, shape: &[bool], leaf: Value) -> Value {
    (1..depth).fold(leaf, |inner, level| {
        if shape
            .get(level % shape.len().max(1))
            .copied()
            .unwrap_or(false)
        {
            let mut object = Map::new();
            object.insert(format!("level-{level}"), inner);
            Value::Object(object)
        } else {
            Value::Array(vec![inner, Value::from(level)])
        }
    })
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| f.is_finite().then(|| Value::from(f))),
        any::<String>().prop_map(Value::String),
    ]
}

/// Journals a run whose one agent answers `effect`; returns the journal's verdicts.
fn journal_round_trip(effect: AgentEffect) -> (ReplayReport, Verification, usize) {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let mut journal = SqliteJournal::open(dir.path().join("journal.db")).expect("journal");
    let run = RunId::new("limits").expect("run id");
    let result = block_on(runtime(effect).run_durable(&mut journal, &run)).expect("run");
    drop(journal);
    // Another handle, as another process would open it.
    let journal = SqliteJournal::open(dir.path().join("journal.db")).expect("journal");
    let loaded = journal.load(&run).expect("what was committed loads");
    assert!(!loaded.steps.is_empty());
    let replay = runtime(AgentEffect::empty())
        .replay(&journal, &run)
        .expect("replay");
    let verify = journal.verify(&run).expect("verify");
    (replay, verify, result.failures.len())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn effects_at_the_limits_round_trip_through_the_journal(
        shape in prop::collection::vec(any::<bool>(), 1..8),
        depth in (VALUE_DEPTH_MAX - 2)..=VALUE_DEPTH_MAX,
        content_leaf in leaf(),
        payload_leaf in leaf(),
    ) {
        let content = nested(depth, &shape, content_leaf);
        let payload = nested(VALUE_DEPTH_MAX, &shape, payload_leaf);
        let mut effect = AgentEffect::empty();
        let cited = effect.observe(Observation::local("deep.payload", payload));
        effect.propose(Proposal::new(ContextKey::Hypotheses, "h-deep", content).citing(cited));
        prop_assert!(check_effect(&effect).is_ok());
        let (replay, verify, failures) = journal_round_trip(effect);
        prop_assert!(matches!(replay, ReplayReport::Identical { .. }), "{replay:?}");
        prop_assert!(matches!(verify, Verification::Intact { .. }), "{verify:?}");
        prop_assert_eq!(failures, 0);
    }
}

#[test]
fn one_level_deeper_is_the_agents_failure_and_the_run_stays_readable() {
    for deeper in [
        nested(VALUE_DEPTH_MAX + 1, &[false], Value::Null),
        nested(VALUE_DEPTH_MAX + 1, &[true], Value::Null),
        nested(200, &[true, false], Value::from("deep")),
    ] {
        let effect =
            AgentEffect::empty().with_proposal(Proposal::new(ContextKey::Hypotheses, "h", deeper));
        assert!(check_effect(&effect).is_err());
        let (replay, verify, failures) = journal_round_trip(effect);
        assert!(
            matches!(replay, ReplayReport::Identical { .. }),
            "{replay:?}"
        );
        assert!(matches!(verify, Verification::Intact { .. }), "{verify:?}");
        assert_eq!(failures, 1, "the over-deep answer is a recorded failure");
    }
}
