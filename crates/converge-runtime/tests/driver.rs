//! The async driver against the sequential one: concurrency within a cycle, identical events
//! whatever the timing, isolation of panics and timeouts, and the wall-clock budget.
//!
//! Time is tokio's paused clock (sleeps advance it instantly and deterministically) or a
//! `ManualClock`, so nothing here depends on how busy the machine is.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use converge_core::{
    Agent, AgentEffect, AuthorityScope, Budget, Context, ContextKey, CycleBudget, Engine,
    EventRecord, Exhausted, Observer, Proposal, StopReason,
};
use converge_runtime::{
    ActivityObserver, AgentFuture, AsyncAgent, DriverConfig, ManualClock, Runtime,
};
use proptest::prelude::*;

/// Agent `j` of layer `layer`: waits until `Signals` holds `layer * width` facts, then after
/// `latency_ms` proposes its own signal.
#[derive(Clone)]
struct Layered {
    name: String,
    id: String,
    layer: usize,
    width: usize,
    latency_ms: u64,
    deps: Vec<ContextKey>,
}

impl Layered {
    fn new(layer: usize, j: usize, width: usize, latency_ms: u64) -> Layered {
        let deps = if layer == 0 {
            Vec::new()
        } else {
            vec![ContextKey::Signals]
        };
        Layered {
            name: format!("l{layer}-{j}"),
            id: format!("s{layer}-{j}"),
            layer,
            width,
            latency_ms,
            deps,
        }
    }

    fn ready(&self, ctx: &Context) -> bool {
        ctx.count(ContextKey::Signals) >= self.layer * self.width
            && !ctx.contains(ContextKey::Signals, &self.id)
    }

    fn effect(&self) -> AgentEffect {
        AgentEffect::empty().with_proposal(Proposal::new(
            ContextKey::Signals,
            self.id.clone(),
            self.layer,
        ))
    }
}

impl AsyncAgent for Layered {
    fn name(&self) -> &str {
        &self.name
    }

    fn dependencies(&self) -> &[ContextKey] {
        &self.deps
    }

    fn requested_scope(&self) -> AuthorityScope {
        AuthorityScope::keys([ContextKey::Signals])
    }

    fn accepts(&self, ctx: &Context) -> bool {
        self.ready(ctx)
    }

    fn execute<'a>(&'a self, _ctx: &'a Context) -> AgentFuture<'a> {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(self.latency_ms)).await;
            self.effect()
        })
    }
}

/// The same agent, synchronous, for the sequential driver.
struct SyncLayered(Layered);

impl Agent for SyncLayered {
    fn name(&self) -> &str {
        &self.0.name
    }

    fn dependencies(&self) -> &[ContextKey] {
        &self.0.deps
    }

    fn requested_scope(&self) -> AuthorityScope {
        AuthorityScope::keys([ContextKey::Signals])
    }

    fn accepts(&self, ctx: &Context) -> bool {
        self.0.ready(ctx)
    }

    fn execute(&self, _ctx: &Context) -> AgentEffect {
        self.0.effect()
    }
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<EventRecord>>>);

impl Observer for Recorder {
    fn on_event(&mut self, record: &EventRecord) {
        self.0.lock().unwrap().push(record.clone());
    }
}

fn layers(count: usize, width: usize, latency: impl Fn(usize, usize) -> u64) -> Vec<Layered> {
    (0..count)
        .flat_map(|layer| (0..width).map(move |j| (layer, j)))
        .map(|(layer, j)| Layered::new(layer, j, width, latency(layer, j)))
        .collect()
}

fn async_runtime(agents: &[Layered], config: DriverConfig) -> (Runtime, Recorder) {
    let mut runtime = Runtime::new(Engine::new()).with_config(config);
    for agent in agents {
        runtime.register_async(agent.clone());
    }
    let recorder = Recorder::default();
    runtime.observe(recorder.clone());
    (runtime, recorder)
}

#[tokio::test(start_paused = true)]
async fn a_cycle_takes_as_long_as_its_slowest_agent() {
    let agents = layers(8, 16, |_, _| 50);
    let (mut runtime, _) = async_runtime(&agents, DriverConfig::default());
    let started = tokio::time::Instant::now();
    let result = runtime.run(Context::new()).await.unwrap();
    assert!(result.converged, "{:?}", result.stop_reason);
    assert_eq!(
        (result.cycles, result.context.count(ContextKey::Signals)),
        (8, 128)
    );
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(400),
        "8 cycles of 16 concurrent 50 ms agents"
    );
}

#[tokio::test(start_paused = true)]
async fn the_concurrency_limit_bounds_agents_in_flight() {
    let agents = layers(1, 16, |_, _| 50);
    let config = DriverConfig {
        concurrency_max: 4,
        ..DriverConfig::default()
    };
    let (mut runtime, _) = async_runtime(&agents, config);
    let started = tokio::time::Instant::now();
    let result = runtime.run(Context::new()).await.unwrap();
    assert_eq!(result.context.count(ContextKey::Signals), 16);
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(200),
        "16 agents, 4 at a time, 50 ms each"
    );
}

/// What an activity observer saw, in order: `started <agent>`, `finished <agent>`, and
/// `event <kind>` for each committed event.
#[derive(Clone, Default)]
struct Activity(Arc<Mutex<Vec<String>>>);

impl Observer for Activity {
    fn on_event(&mut self, record: &EventRecord) {
        let kind = serde_json::to_value(&record.event).unwrap()["event"]
            .as_str()
            .unwrap_or("event")
            .to_owned();
        self.0.lock().unwrap().push(format!("event {kind}"));
    }
}

impl ActivityObserver for Activity {
    fn agent_started(&mut self, _cycle: u32, agent: &str) {
        self.0.lock().unwrap().push(format!("started {agent}"));
    }

    fn agent_finished(&mut self, _cycle: u32, agent: &str) {
        self.0.lock().unwrap().push(format!("finished {agent}"));
    }
}

#[tokio::test(start_paused = true)]
async fn an_activity_observer_is_told_each_agent_start_and_finish_before_the_cycle_events() {
    let agents = layers(1, 8, |_, j| 10 + 10 * j as u64);
    let config = DriverConfig {
        concurrency_max: 3,
        ..DriverConfig::default()
    };
    let mut runtime = Runtime::new(Engine::new()).with_config(config);
    for agent in &agents {
        runtime.register_async(agent.clone());
    }
    let seen = Activity::default();
    runtime.observe_activity(seen.clone());
    let result = runtime.run(Context::new()).await.unwrap();
    assert_eq!(result.context.count(ContextKey::Signals), 8);

    let seen = seen.0.lock().unwrap().clone();
    let (mut running, mut most) = (0usize, 0usize);
    for line in &seen {
        if line.starts_with("started ") {
            running += 1;
            most = most.max(running);
        } else if line.starts_with("finished ") {
            running -= 1;
        }
    }
    assert_eq!(
        (running, most),
        (0, 3),
        "at most 3 at once, none left: {seen:?}"
    );
    for agent in &agents {
        let name = agent.name.as_str();
        let started = seen
            .iter()
            .filter(|line| **line == format!("started {name}"));
        let finished = seen
            .iter()
            .filter(|line| **line == format!("finished {name}"));
        assert_eq!(
            (started.count(), finished.count()),
            (1, 1),
            "{name}: {seen:?}"
        );
    }
    // The in-memory driver delivers a cycle's events once its batch is done.
    let last_finish = seen
        .iter()
        .rposition(|line| line.starts_with("finished "))
        .unwrap();
    let cycle_finished = seen
        .iter()
        .position(|line| line == "event cycle_finished")
        .unwrap();
    assert!(last_finish < cycle_finished, "{seen:?}");
}

fn sequential_events(agents: &[Layered]) -> (Vec<EventRecord>, converge_core::Digest) {
    let mut engine = Engine::new();
    for agent in agents {
        engine.register(SyncLayered(agent.clone()));
    }
    let recorder = Recorder::default();
    engine.observe(recorder.clone());
    let result = engine.run(Context::new()).unwrap();
    let events = recorder.0.lock().unwrap().clone();
    (events, result.root_hash)
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random latencies change the order agents finish in, never the events.
    #[test]
    fn concurrent_and_sequential_drivers_agree(
        count in 1usize..5,
        width in 1usize..7,
        latencies in proptest::collection::vec(0u64..40, 36),
        concurrency_max in 1usize..8,
    ) {
        let agents = layers(count, width, |layer, j| latencies[(layer * width + j) % latencies.len()]);
        let (expected, expected_root) = sequential_events(&agents);
        let config = DriverConfig { concurrency_max, ..DriverConfig::default() };
        let (mut runtime, recorder) = async_runtime(&agents, config);
        let result = paused_runtime().block_on(runtime.run(Context::new())).unwrap();
        let events = recorder.0.lock().unwrap().clone();
        prop_assert_eq!(result.root_hash, expected_root);
        prop_assert_eq!(events, expected);
    }
}

/// An async agent that misbehaves in a chosen way.
struct Faulty {
    name: &'static str,
    fault: Fault,
}

enum Fault {
    Panic,
    Hang,
}

impl AsyncAgent for Faulty {
    fn name(&self) -> &str {
        self.name
    }

    fn dependencies(&self) -> &[ContextKey] {
        &[]
    }

    fn requested_scope(&self) -> AuthorityScope {
        AuthorityScope::keys([ContextKey::Signals])
    }

    fn accepts(&self, _ctx: &Context) -> bool {
        true
    }

    fn execute<'a>(&'a self, _ctx: &'a Context) -> AgentFuture<'a> {
        Box::pin(async move {
            match self.fault {
                Fault::Panic => panic!("provider returned garbage"),
                Fault::Hang => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    AgentEffect::empty()
                }
            }
        })
    }
}

#[tokio::test(start_paused = true)]
async fn panics_and_timeouts_are_isolated_recorded_and_quarantined() {
    let config = DriverConfig {
        agent_timeout_ms: Some(1_000),
        ..DriverConfig::default()
    };
    let mut runtime = Runtime::new(Engine::new()).with_config(config);
    runtime.register_async(Faulty {
        name: "panics",
        fault: Fault::Panic,
    });
    runtime.register_async(Faulty {
        name: "hangs",
        fault: Fault::Hang,
    });
    runtime.register_async(Layered::new(0, 0, 1, 10));
    let started = tokio::time::Instant::now();
    let result = runtime.run(Context::new()).await.unwrap();
    assert!(result.converged, "{:?}", result.stop_reason);
    assert!(
        result.context.contains(ContextKey::Signals, "s0-0"),
        "the healthy agent's work is kept"
    );
    let failures: Vec<&str> = result
        .failures
        .iter()
        .map(|failure| failure.message.as_str())
        .collect();
    assert_eq!(
        failures,
        vec![
            "panicked in execute: provider returned garbage",
            "timed out after 1000 ms"
        ]
    );
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(1_000),
        "the hung agent cost exactly its timeout"
    );
}

/// Advances a manual clock by a fixed step each time it runs, and proposes a fresh signal.
struct Ticking {
    clock: ManualClock,
}

impl Agent for Ticking {
    fn name(&self) -> &str {
        "ticking"
    }

    fn dependencies(&self) -> &[ContextKey] {
        &[ContextKey::Signals]
    }

    fn requested_scope(&self) -> AuthorityScope {
        AuthorityScope::keys([ContextKey::Signals])
    }

    fn accepts(&self, _ctx: &Context) -> bool {
        true
    }

    fn execute(&self, ctx: &Context) -> AgentEffect {
        self.clock.advance_ms(100);
        let id = format!("t{}", ctx.count(ContextKey::Signals));
        AgentEffect::empty().with_proposal(Proposal::new(ContextKey::Signals, id, "tick"))
    }
}

#[tokio::test]
async fn the_time_budget_stops_the_run_between_cycles_with_its_partial_context() {
    let clock = ManualClock::new();
    let mut engine = Engine::new();
    engine.set_budget(Budget::default().with_cycles(CycleBudget::new(50).unwrap()));
    engine.register(Ticking {
        clock: clock.clone(),
    });
    let config = DriverConfig {
        time_budget_ms: Some(250),
        ..DriverConfig::default()
    };
    let mut runtime = Runtime::new(engine)
        .with_config(config)
        .with_clock(Arc::new(clock));
    let result = runtime.run(Context::new()).await.unwrap();
    assert_eq!(
        result.stop_reason,
        StopReason::BudgetExhausted {
            exhausted: Exhausted::Time {
                limit_ms: 250,
                elapsed_ms: 300
            }
        }
    );
    assert_eq!(
        (result.cycles, result.context.count(ContextKey::Signals)),
        (3, 3)
    );
}

#[test]
fn the_sequential_driver_reports_an_async_agent_it_cannot_run() {
    let mut runtime = Runtime::new(Engine::new());
    runtime.register_async(Layered::new(0, 0, 1, 0));
    let result = runtime.engine_mut().run(Context::new()).unwrap();
    assert_eq!(result.failures.len(), 1);
    assert!(
        result.failures[0]
            .message
            .contains("can only be executed by the async driver"),
        "{:?}",
        result.failures
    );
}
