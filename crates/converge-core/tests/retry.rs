//! Retrying failed agents: what a retry re-executes, what it refuses, and that the same
//! inputs give the same events. Each test drives a real engine with a small flaky agent whose
//! "server" is a flag the test turns on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use converge_core::agents::{ReactOnceAgent, SeedAgent};
use converge_core::{
    Actor, ActorKind, Agent, AgentEffect, AuthorityScope, Budget, Context, ContextKey,
    ConvergeResult, CycleBudget, Engine, EngineConfig, EngineError, Event, FailurePolicy,
    FnInvariant, InvariantClass, Proposal, Retry, RetryRefusal, Run, Step, StopReason,
    ValidationPolicy, execute_isolated,
};

/// Proposes `hypotheses/<name>` once; fails while its server is down.
struct Flaky {
    name: String,
    up: Arc<AtomicBool>,
    runs: Arc<AtomicUsize>,
}

impl Flaky {
    fn new(name: &str) -> Flaky {
        Flaky {
            name: name.to_owned(),
            up: Arc::new(AtomicBool::new(false)),
            runs: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl Agent for Flaky {
    fn name(&self) -> &str {
        &self.name
    }

    fn dependencies(&self) -> &[ContextKey] {
        &[]
    }

    fn requested_scope(&self) -> AuthorityScope {
        AuthorityScope::keys([ContextKey::Hypotheses])
    }

    fn accepts(&self, ctx: &Context) -> bool {
        !ctx.contains(ContextKey::Hypotheses, &self.name)
    }

    fn execute(&self, _: &Context) -> AgentEffect {
        self.runs.fetch_add(1, Ordering::SeqCst);
        if !self.up.load(Ordering::SeqCst) {
            return AgentEffect::failed("connection refused");
        }
        AgentEffect::empty().with_proposal(Proposal::new(
            ContextKey::Hypotheses,
            self.name.clone(),
            "up",
        ))
    }
}

struct Cast {
    engine: Engine,
    up: Vec<Arc<AtomicBool>>,
    runs: Vec<Arc<AtomicUsize>>,
}

/// A seed and the flaky agents `names`, under `config`.
fn cast(names: &[&str], config: EngineConfig) -> Cast {
    let mut engine = Engine::with_config(config);
    engine.register(SeedAgent::new("seed", "start"));
    let (mut up, mut runs) = (Vec::new(), Vec::new());
    for name in names {
        let agent = Flaky::new(name);
        up.push(agent.up.clone());
        runs.push(agent.runs.clone());
        engine.register(agent);
    }
    Cast { engine, up, runs }
}

fn alice() -> Actor {
    Actor::human("alice").unwrap()
}

/// Drives `run` to its stop sequentially, returning the result and every event emitted.
fn drive(mut run: Run<'_>) -> (ConvergeResult, Vec<Event>) {
    let mut events = Vec::new();
    loop {
        while let Some(record) = run.poll_event() {
            events.push(record.event);
        }
        let Step::Execute(batch) = run.next_step() else {
            break;
        };
        let outcomes = batch
            .agents()
            .iter()
            .map(|&agent| (agent, execute_isolated(run.agent(agent), run.context())))
            .collect();
        run.submit(outcomes).unwrap();
    }
    while let Some(record) = run.poll_event() {
        events.push(record.event);
    }
    (run.finish().ok().unwrap(), events)
}

fn names(engine: &Engine, agents: &[converge_core::AgentId]) -> Vec<String> {
    let all: Vec<&str> = engine.agent_names().collect();
    agents
        .iter()
        .map(|agent| all[agent.index()].to_owned())
        .collect()
}

fn refusal(engine: &Engine, stopped: ConvergeResult, retry: &Retry) -> RetryRefusal {
    match engine.retry_run(stopped, retry) {
        Err(EngineError::NotRetryable { refusal, result }) => {
            assert!(!result.failed_agents().is_empty() || refusal_is_final(&refusal));
            refusal
        }
        Err(other) => panic!("expected a refusal, got {other}"),
        Ok(_) => panic!("expected a refusal, the retry was accepted"),
    }
}

fn refusal_is_final(refusal: &RetryRefusal) -> bool {
    matches!(
        refusal,
        RetryRefusal::FinalStop { .. } | RetryRefusal::NothingFailed
    )
}

#[test]
fn a_retry_re_executes_only_the_named_failed_agents_and_the_run_goes_on() {
    let cast = cast(&["fetch", "score"], EngineConfig::default());
    let (stopped, _) = drive(cast.engine.start(Context::new()).unwrap());
    assert_eq!(stopped.stop_reason, StopReason::Converged);
    assert_eq!(
        names(&cast.engine, stopped.failed_agents()),
        ["fetch", "score"]
    );

    cast.up[0].store(true, Ordering::SeqCst);
    cast.up[1].store(true, Ordering::SeqCst);
    let retry = Retry::new(alice(), ["fetch"], "the server is back");
    let (result, events) = drive(cast.engine.retry_run(stopped, &retry).unwrap());

    assert_eq!(cast.runs[0].load(Ordering::SeqCst), 2, "fetch ran again");
    assert_eq!(
        cast.runs[1].load(Ordering::SeqCst),
        1,
        "score stays quarantined"
    );
    assert!(result.context.contains(ContextKey::Hypotheses, "fetch"));
    assert!(!result.context.contains(ContextKey::Hypotheses, "score"));
    assert_eq!(names(&cast.engine, result.failed_agents()), ["score"]);
    let Event::RunRetried {
        cycle,
        actor,
        agents,
        reason,
    } = &events[0]
    else {
        panic!("the first event is run_retried: {:?}", events[0]);
    };
    assert_eq!((*cycle, actor.to_string()), (1, "alice".to_owned()));
    assert_eq!(names(&cast.engine, agents), ["fetch"]);
    assert_eq!(reason, "the server is back");
    assert!(matches!(&events[1], Event::CycleStarted { cycle: 2, .. }));
}

#[test]
fn the_same_retry_gives_the_same_events_and_root_hash() {
    let run_once = || {
        let cast = cast(&["fetch"], EngineConfig::default());
        let (stopped, _) = drive(cast.engine.start(Context::new()).unwrap());
        cast.up[0].store(true, Ordering::SeqCst);
        let retry = Retry::new(alice(), ["fetch"], "back");
        let (result, events) = drive(cast.engine.retry_run(stopped, &retry).unwrap());
        (result.root_hash, events, result.converged)
    };
    let (first, second) = (run_once(), run_once());
    assert_eq!(first, second);
    assert!(first.2, "the retried run converged");
}

#[test]
fn a_run_stopped_by_a_failure_under_the_stop_policy_can_be_retried() {
    let config = EngineConfig {
        failure_policy: FailurePolicy::StopRun,
        ..EngineConfig::default()
    };
    let cast = cast(&["fetch"], config);
    let (stopped, _) = drive(cast.engine.start(Context::new()).unwrap());
    assert!(matches!(
        stopped.stop_reason,
        StopReason::AgentFailed { .. }
    ));
    cast.up[0].store(true, Ordering::SeqCst);
    let retry = Retry::new(alice(), ["fetch"], "back");
    let (result, _) = drive(cast.engine.retry_run(stopped, &retry).unwrap());
    assert!(result.converged, "{:?}", result.stop_reason);
    assert!(result.failed_agents().is_empty());
}

#[test]
fn an_acceptance_invariant_that_failed_for_want_of_a_failed_agent_can_be_retried() {
    let mut cast = cast(&["fetch"], EngineConfig::default());
    cast.engine.add_invariant(FnInvariant::new(
        "has-fetch",
        InvariantClass::Acceptance,
        |ctx: &Context| match ctx.contains(ContextKey::Hypotheses, "fetch") {
            true => Ok(()),
            false => Err("fetch is missing".to_owned()),
        },
    ));
    let (stopped, _) = drive(cast.engine.start(Context::new()).unwrap());
    assert!(matches!(
        stopped.stop_reason,
        StopReason::InvariantViolated { .. }
    ));
    cast.up[0].store(true, Ordering::SeqCst);
    let retry = Retry::new(alice(), ["fetch"], "back");
    let (result, _) = drive(cast.engine.retry_run(stopped, &retry).unwrap());
    assert!(result.converged, "{:?}", result.stop_reason);
}

#[test]
fn a_retry_while_awaiting_approval_keeps_the_pending_proposals() {
    let mut cast = cast(&["fetch"], EngineConfig::default());
    cast.engine.set_policy(
        ContextKey::Seeds,
        ValidationPolicy::new().requiring_approval(),
    );
    let (stopped, _) = drive(cast.engine.start(Context::new()).unwrap());
    assert!(matches!(
        stopped.stop_reason,
        StopReason::AwaitingApproval { .. }
    ));
    cast.up[0].store(true, Ordering::SeqCst);
    let retry = Retry::new(alice(), ["fetch"], "back");
    let (result, _) = drive(cast.engine.retry_run(stopped, &retry).unwrap());
    let StopReason::AwaitingApproval { pending } = &result.stop_reason else {
        panic!("still awaiting approval: {:?}", result.stop_reason);
    };
    assert_eq!(pending.len(), 1);
    assert!(result.context.contains(ContextKey::Hypotheses, "fetch"));
}

#[test]
fn refusals_name_the_cause_and_the_agents_that_did_fail() {
    let check = |agents: &[&str], actor: Actor, expected: &str| {
        let cast = cast(&["fetch", "score"], EngineConfig::default());
        cast.up[1].store(true, Ordering::SeqCst);
        let (stopped, _) = drive(cast.engine.start(Context::new()).unwrap());
        let retry = Retry::new(actor, agents.iter().copied(), "why not");
        let refusal = refusal(&cast.engine, stopped, &retry);
        assert_eq!(refusal.to_string(), expected);
        assert_eq!(cast.runs[0].load(Ordering::SeqCst), 1, "nothing ran again");
    };
    check(
        &["score"],
        alice(),
        "agent \"score\" has not failed (failed: fetch)",
    );
    check(
        &["fetch", "nope"],
        alice(),
        "the run has no agent named \"nope\" (failed: fetch)",
    );
    check(
        &[],
        alice(),
        "name at least one agent to retry (failed: fetch)",
    );
    check(
        &["fetch"],
        Actor::new("ci-bot", ActorKind::System).unwrap(),
        "only a human may retry agents; ci-bot is not one",
    );
}

#[test]
fn final_stops_and_runs_without_failures_are_not_retryable() {
    let check = |budget: Option<Budget>, up: bool, expected: &str| {
        let mut cast = cast(&["fetch"], EngineConfig::default());
        // Wants a second cycle, which a one-cycle budget does not allow.
        cast.engine.register(ReactOnceAgent::new("react", "later"));
        if let Some(budget) = budget {
            cast.engine.set_budget(budget);
        }
        cast.up[0].store(up, Ordering::SeqCst);
        let (stopped, _) = drive(cast.engine.start(Context::new()).unwrap());
        assert!(!stopped.is_retryable());
        assert_eq!(stopped.failed_agents().is_empty(), up);
        let retry = Retry::new(alice(), ["fetch"], "again");
        assert_eq!(refusal(&cast.engine, stopped, &retry).to_string(), expected);
    };
    check(
        None,
        true,
        "no agent of the run failed; there is nothing to retry",
    );
    let one_cycle = Budget {
        cycles: CycleBudget::new(1).unwrap(),
        ..Budget::default()
    };
    check(
        Some(one_cycle),
        false,
        "the run stopped because its cycle budget ran out; retrying failed agents cannot \
         change that",
    );
}

#[test]
fn a_halted_run_is_not_retryable() {
    let cast = cast(&["fetch"], EngineConfig::default());
    let mut run = cast.engine.start(Context::new()).unwrap();
    let Step::Execute(batch) = run.next_step() else {
        panic!("the first cycle runs");
    };
    let outcomes = batch
        .agents()
        .iter()
        .map(|&agent| (agent, execute_isolated(run.agent(agent), run.context())))
        .collect();
    run.submit(outcomes).unwrap();
    run.halt(StopReason::Halted {
        reason: "cancelled by bob: wrong input".to_owned(),
    })
    .unwrap();
    let stopped = run.finish().ok().unwrap();
    let retry = Retry::new(alice(), ["fetch"], "again");
    assert_eq!(
        refusal(&cast.engine, stopped, &retry).to_string(),
        "the run was halted (cancelled by bob: wrong input); retrying failed agents cannot \
         change that"
    );
}

#[test]
fn a_retried_agent_that_fails_again_can_be_retried_again() {
    let cast = cast(&["fetch"], EngineConfig::default());
    let (stopped, _) = drive(cast.engine.start(Context::new()).unwrap());
    let retry = Retry::new(alice(), ["fetch"], "maybe now");
    let (again, _) = drive(cast.engine.retry_run(stopped, &retry).unwrap());
    assert_eq!(again.failures.len(), 2);
    assert_eq!(names(&cast.engine, again.failed_agents()), ["fetch"]);
    cast.up[0].store(true, Ordering::SeqCst);
    let (result, _) = drive(cast.engine.retry_run(again, &retry).unwrap());
    assert!(result.converged && result.failed_agents().is_empty());
    assert_eq!(cast.runs[0].load(Ordering::SeqCst), 3);
}

#[test]
fn decisions_cannot_resume_a_run_that_only_a_retry_can_continue() {
    let cast = cast(&["fetch"], EngineConfig::default());
    let (stopped, _) = drive(cast.engine.start(Context::new()).unwrap());
    assert!(!stopped.is_resumable() && stopped.is_retryable());
    assert!(matches!(
        cast.engine.resume_run(stopped, Vec::new()),
        Err(EngineError::NotResumable { .. })
    ));
}
