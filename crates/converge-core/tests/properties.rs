//! Property tests of the convergence engine over random agent graphs.
//!
//! A `GraphSpec` describes a small engine: a handful of data-driven `GraphAgent`s that
//! depend on random keys (well-known and custom), accept under random deterministic conditions
//! and propose one to three facts each — conflicting ones, duplicates, proposals into keys they
//! were not granted, invalid keys, ids, confidences and contents, derivations and citations
//! that do not resolve, corrections, and "never stops" agents whose fresh ids only a budget can
//! end. Some graphs add a validator, an approval policy (the run is then resumed with random
//! decisions, some of them refused), structural, semantic or acceptance invariants, a token
//! budget, a tiny per-effect proposal limit or content limit, and agents that panic.
//!
//! Over those graphs the tests check:
//!
//! 1. termination within the budgets, ending with a `run_stopped` event naming the stop reason;
//! 2. determinism: two fresh engines give byte-identical event streams and root hashes;
//! 3. driver independence: a driver that executes and submits in shuffled order (and probes the
//!    protocol with bad submissions) matches `Engine::run` event for event;
//! 4. append-only context: after every submit the history only grows, matches the
//!    `fact_promoted` events, and the current view is the latest version of every fact;
//! 5. hash chain integrity: every record's hash recomputes from `Digest::zero()` and the head
//!    is the root hash;
//! 6. nothing dropped: every proposal is accounted for, in the statistics and in the events,
//!    and (6b) a parked proposal nobody decided is still in the result when the run stops.
//!
//! Each property runs 128 cases (`PROPTEST_CASES=n` for a deeper run). No regression file is
//! written; a minimal case that exposed an engine bug is pinned as a plain `#[test]` at the end.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, Once};

use converge_core::{
    Actor, ActorKind, Agent, AgentEffect, AgentOutcome, AuthorityScope, Budget, Context,
    ContextKey, ConvergeResult, CycleBudget, Decision, Digest, Engine, EngineConfig, Event,
    EventRecord, Exhausted, FactBudget, FactId, FailurePolicy, FnInvariant, InvariantClass, KeyRef,
    Observation, Observer, PendingApproval, Proposal, ProposalId, Step, StopReason, SubmitError,
    TokenBudget, TokenUsage, ValidationPolicy, execute_isolated,
};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{Value, json};

/// Marks panics the agents raise on purpose; the panic hook keeps them off stderr.
const DELIBERATE: &str = "deliberate graph-agent panic";

/// How many keys the graphs use: three well-known, two custom.
const KEY_COUNT: usize = 5;

fn key(index: usize) -> ContextKey {
    match index % KEY_COUNT {
        0 => ContextKey::Seeds,
        1 => ContextKey::Hypotheses,
        2 => ContextKey::Signals,
        3 => ContextKey::custom("alpha").expect("valid custom key"),
        _ => ContextKey::custom("beta").expect("valid custom key"),
    }
}

// ---------------------------------------------------------------------------------------------
// The data-driven agent
// ---------------------------------------------------------------------------------------------

/// A deterministic condition over the context; an agent accepts when all of its hold.
#[derive(Debug, Clone)]
enum Condition {
    /// `ctx.count(key) >= n`.
    CountAtLeast(ContextKey, usize),
    /// Fact `id` exists in `key`.
    Has(ContextKey, String),
    /// Fact `id` does not exist in `key` (used for "absence of its own output").
    Lacks(ContextKey, String),
}

impl Condition {
    fn holds(&self, ctx: &Context) -> bool {
        match self {
            Condition::CountAtLeast(key, n) => ctx.count(*key) >= *n,
            Condition::Has(key, id) => ctx.contains(*key, id),
            Condition::Lacks(key, id) => !ctx.contains(*key, id),
        }
    }

    fn key(&self) -> ContextKey {
        match self {
            Condition::CountAtLeast(key, _) | Condition::Has(key, _) | Condition::Lacks(key, _) => {
                *key
            }
        }
    }
}

/// The key of a proposal: typed, or a raw name the gate must parse (possibly invalid).
#[derive(Debug, Clone)]
enum KeyChoice {
    Typed(ContextKey),
    Named(String),
}

/// The fact id of a proposal.
#[derive(Debug, Clone)]
enum IdChoice {
    /// One of a small pool, so agents collide (duplicates and conflicts).
    Fixed(String),
    /// `"{prefix}-{ctx.count(counted)}"`: fresh whenever `counted` grew — never stops.
    Fresh { prefix: String, counted: ContextKey },
    /// An id the gate refuses.
    Invalid(String),
}

/// The content of a proposal.
#[derive(Debug, Clone)]
enum ContentChoice {
    Literal(Value),
    /// `{"count": ctx.count(key)}`.
    CountOf(ContextKey),
    /// `ctx.history().len()`: differs after every promotion (endless corrections).
    HistoryLen,
    /// Null, blank or empty: refused by the gate.
    Empty(Value),
    /// 200 bytes of text: refused when the engine's content limit is small.
    Large,
}

/// One proposal an agent makes each time it executes.
#[derive(Debug, Clone)]
struct Output {
    key: KeyChoice,
    id: IdChoice,
    content: ContentChoice,
    confidence: f64,
    derived_from: Option<(ContextKey, String)>,
    cites: Option<u32>,
    correcting: bool,
}

impl Output {
    fn draft(&self, ctx: &Context) -> Proposal<converge_core::Draft> {
        let key = match &self.key {
            KeyChoice::Typed(key) => KeyRef::Key(*key),
            KeyChoice::Named(name) => KeyRef::Name(name.clone()),
        };
        let id = match &self.id {
            IdChoice::Fixed(id) | IdChoice::Invalid(id) => id.clone(),
            IdChoice::Fresh { prefix, counted } => format!("{prefix}-{}", ctx.count(*counted)),
        };
        let content = match &self.content {
            ContentChoice::Literal(value) | ContentChoice::Empty(value) => value.clone(),
            ContentChoice::CountOf(key) => json!({ "count": ctx.count(*key) }),
            ContentChoice::HistoryLen => json!(ctx.history().len()),
            ContentChoice::Large => json!("x".repeat(200)),
        };
        let mut proposal = Proposal::new(key, id, content).with_confidence(self.confidence);
        if let Some((key, id)) = &self.derived_from {
            proposal = proposal.derived_from(*key, id.clone());
        }
        if let Some(index) = self.cites {
            proposal = proposal.citing(index);
        }
        if self.correcting {
            proposal = proposal.correcting("revised by a graph agent");
        }
        proposal
    }

    /// The key this output asks to write, if it names a valid one.
    fn requested_key(&self) -> Option<ContextKey> {
        match &self.key {
            KeyChoice::Typed(key) => Some(*key),
            KeyChoice::Named(name) => name.parse().ok(),
        }
    }
}

/// Which scope the operator grants.
#[derive(Debug, Clone)]
enum Grant {
    /// `Engine::register`: exactly what the agent requests.
    AsRequested,
    /// `register_with_scope` with the requested keys filtered by a mask (narrower).
    Narrowed(Vec<bool>),
    /// `register_with_scope` with one key, requested or not.
    Only(ContextKey),
}

/// Where an agent panics on purpose, once the history holds at least `after` facts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    InExecute { after: usize },
    InAccepts { after: usize },
}

#[derive(Debug, Clone)]
struct AgentSpec {
    deps: Vec<ContextKey>,
    conditions: Vec<Condition>,
    outputs: Vec<Output>,
    grant: Grant,
    observations: u8,
    tokens: u64,
    fault: Fault,
}

impl AgentSpec {
    fn requested_keys(&self) -> Vec<ContextKey> {
        let keys: BTreeSet<ContextKey> = self
            .outputs
            .iter()
            .filter_map(Output::requested_key)
            .collect();
        keys.into_iter().collect()
    }
}

/// A small data-driven agent: everything it does is decided by its [`AgentSpec`].
#[derive(Debug, Clone)]
struct GraphAgent {
    name: String,
    spec: AgentSpec,
}

impl Agent for GraphAgent {
    fn name(&self) -> &str {
        &self.name
    }

    fn dependencies(&self) -> &[ContextKey] {
        &self.spec.deps
    }

    fn requested_scope(&self) -> AuthorityScope {
        AuthorityScope::keys(self.spec.requested_keys())
    }

    fn accepts(&self, ctx: &Context) -> bool {
        if let Fault::InAccepts { after } = self.spec.fault
            && ctx.history().len() >= after
        {
            panic!("{DELIBERATE}: {} cannot decide", self.name);
        }
        self.spec
            .conditions
            .iter()
            .all(|condition| condition.holds(ctx))
    }

    fn execute(&self, ctx: &Context) -> AgentEffect {
        if let Fault::InExecute { after } = self.spec.fault
            && ctx.history().len() >= after
        {
            panic!("{DELIBERATE}: {} fell over", self.name);
        }
        let usage = TokenUsage {
            input: self.spec.tokens,
            output: self.spec.tokens / 2,
        };
        let mut effect = AgentEffect::empty().with_usage(usage);
        for n in 0..self.spec.observations {
            let payload = json!({ "agent": self.name, "n": n, "seen": ctx.history().len() });
            effect.observe(Observation::local("probe", payload));
        }
        for output in &self.spec.outputs {
            effect.propose(output.draft(ctx));
        }
        effect
    }
}

// ---------------------------------------------------------------------------------------------
// The graph: agents, policies, invariants, budgets, and the decisions of a resume
// ---------------------------------------------------------------------------------------------

/// What a human does with one parked proposal when the run is resumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DecisionKind {
    Approve,
    Reject,
    /// Names a hash the approver never saw: refused.
    StaleHash,
    /// Decided by an agent actor: refused.
    NotHuman,
    /// Approved twice: the second is refused.
    Twice,
    /// Names a proposal that does not exist: refused.
    Unknown,
    /// No decision yet.
    Skip,
}

#[derive(Debug, Clone)]
struct GraphSpec {
    agents: Vec<AgentSpec>,
    cycles: u32,
    facts: u64,
    tokens: Option<u64>,
    proposals_per_effect_max: usize,
    content_bytes_max: usize,
    failure_policy: FailurePolicy,
    approval: Option<ContextKey>,
    veto: Option<(ContextKey, Value)>,
    structural_cap: Option<(ContextKey, usize)>,
    semantic_cap: Option<(ContextKey, usize)>,
    acceptance_min: Option<(ContextKey, usize)>,
    decisions: Vec<DecisionKind>,
    resumes: u8,
}

fn build(spec: &GraphSpec) -> Engine {
    let mut engine = Engine::with_config(EngineConfig {
        content_bytes_max: spec.content_bytes_max,
        proposals_per_effect_max: spec.proposals_per_effect_max,
        failure_policy: spec.failure_policy,
    });
    let mut budget = Budget::default()
        .with_cycles(CycleBudget::new(spec.cycles).expect("cycle budget >= 1"))
        .with_facts(FactBudget::new(spec.facts).expect("fact budget >= 1"));
    if let Some(tokens) = spec.tokens {
        budget = budget.with_tokens(TokenBudget::new(tokens).expect("token budget >= 1"));
    }
    engine.set_budget(budget);

    let policy_keys: BTreeSet<ContextKey> = spec
        .approval
        .iter()
        .copied()
        .chain(spec.veto.iter().map(|(key, _)| *key))
        .collect();
    for policy_key in policy_keys {
        let mut policy = ValidationPolicy::new().with_version(3);
        if let Some((veto_key, vetoed)) = &spec.veto
            && *veto_key == policy_key
        {
            let vetoed = vetoed.clone();
            policy = policy.with_check("veto", move |candidate| {
                if *candidate.content == vetoed {
                    Err(format!("{vetoed} is vetoed"))
                } else {
                    Ok(())
                }
            });
        }
        if spec.approval == Some(policy_key) {
            policy = policy.requiring_approval();
        }
        engine.set_policy(policy_key, policy);
    }

    if let Some((cap_key, cap)) = spec.structural_cap {
        engine.add_invariant(FnInvariant::new(
            "structural-cap",
            InvariantClass::Structural,
            move |ctx: &Context| {
                if ctx.count(cap_key) <= cap {
                    Ok(())
                } else {
                    Err(format!("{cap_key} holds more than {cap} facts"))
                }
            },
        ));
    }
    if let Some((cap_key, cap)) = spec.semantic_cap {
        engine.add_invariant(FnInvariant::new(
            "semantic-cap",
            InvariantClass::Semantic,
            move |ctx: &Context| {
                if ctx.count(cap_key) <= cap {
                    Ok(())
                } else {
                    Err(format!("{cap_key} holds more than {cap} facts"))
                }
            },
        ));
    }
    if let Some((min_key, min)) = spec.acceptance_min {
        engine.add_invariant(FnInvariant::new(
            "acceptance-min",
            InvariantClass::Acceptance,
            move |ctx: &Context| {
                if ctx.count(min_key) >= min {
                    Ok(())
                } else {
                    Err(format!("{min_key} holds fewer than {min} facts"))
                }
            },
        ));
    }

    for (index, agent_spec) in spec.agents.iter().enumerate() {
        let agent = GraphAgent {
            name: format!("agent-{index}"),
            spec: agent_spec.clone(),
        };
        match &agent_spec.grant {
            Grant::AsRequested => {
                engine.register(agent);
            }
            Grant::Narrowed(mask) => {
                let requested = agent_spec.requested_keys();
                let kept = requested
                    .iter()
                    .enumerate()
                    .filter(|(position, _)| mask[position % mask.len()])
                    .map(|(_, key)| *key);
                engine.register_with_scope(agent, AuthorityScope::keys(kept));
            }
            Grant::Only(only) => {
                engine.register_with_scope(agent, AuthorityScope::keys([*only]));
            }
        }
    }
    engine
}

/// The decisions of resume number `round` for the pending proposals.
fn decisions_for(spec: &GraphSpec, round: usize, pending: &[PendingApproval]) -> Vec<Decision> {
    let human = Actor::human("alice").expect("valid actor");
    let mut decisions = Vec::new();
    for (index, parked) in pending.iter().enumerate() {
        let kind = spec.decisions[(index + round) % spec.decisions.len()];
        let approve = Decision::approve(parked.proposal, parked.hash, human.clone());
        match kind {
            DecisionKind::Approve => decisions.push(approve),
            DecisionKind::Reject => decisions.push(Decision::reject(
                parked.proposal,
                parked.hash,
                human.clone(),
                "not convinced",
            )),
            DecisionKind::StaleHash => decisions.push(Decision::approve(
                parked.proposal,
                parked.content_hash,
                human.clone(),
            )),
            DecisionKind::NotHuman => decisions.push(Decision::approve(
                parked.proposal,
                parked.hash,
                Actor::new("robot", ActorKind::Agent).expect("valid actor"),
            )),
            DecisionKind::Twice => {
                decisions.push(approve.clone());
                decisions.push(approve);
            }
            DecisionKind::Unknown => {
                let unknown: ProposalId = "c9999.a0.p7".parse().expect("valid proposal id");
                decisions.push(Decision::approve(unknown, parked.hash, human.clone()));
            }
            DecisionKind::Skip => {}
        }
    }
    decisions
}

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

fn key_strategy() -> impl Strategy<Value = ContextKey> {
    (0..KEY_COUNT).prop_map(key)
}

fn fixed_id() -> impl Strategy<Value = String> {
    (0..4u8).prop_map(|n| format!("f{n}"))
}

fn literal() -> impl Strategy<Value = Value> {
    prop::sample::select(vec![
        json!("a"),
        json!("b"),
        json!({ "x": 1 }),
        json!([1, 2]),
        json!(true),
    ])
}

fn key_choice() -> impl Strategy<Value = KeyChoice> {
    prop_oneof![
        10 => key_strategy().prop_map(KeyChoice::Typed),
        1 => prop::sample::select(vec!["signals", "alpha", "gamma", "Not A Key", ""])
            .prop_map(|name| KeyChoice::Named(name.to_owned())),
    ]
}

fn id_choice() -> impl Strategy<Value = IdChoice> {
    prop_oneof![
        7 => fixed_id().prop_map(IdChoice::Fixed),
        2 => (prop::sample::select(vec!["n", "m"]), key_strategy()).prop_map(
            |(prefix, counted)| IdChoice::Fresh { prefix: prefix.to_owned(), counted }
        ),
        1 => prop::sample::select(vec!["has space".to_owned(), String::new(), "x".repeat(129)])
            .prop_map(IdChoice::Invalid),
    ]
}

fn content_choice() -> impl Strategy<Value = ContentChoice> {
    prop_oneof![
        8 => literal().prop_map(ContentChoice::Literal),
        2 => key_strategy().prop_map(ContentChoice::CountOf),
        1 => Just(ContentChoice::HistoryLen),
        1 => prop::sample::select(vec![Value::Null, json!(""), json!("  "), json!([]), json!({})])
            .prop_map(ContentChoice::Empty),
        1 => Just(ContentChoice::Large),
    ]
}

fn confidence() -> impl Strategy<Value = f64> {
    prop_oneof![
        10 => prop::sample::select(vec![1.0, 0.5, 0.0, -0.0]),
        1 => prop::sample::select(vec![f64::NAN, f64::INFINITY, 1.5, -0.25]),
    ]
}

fn output() -> impl Strategy<Value = Output> {
    (
        key_choice(),
        id_choice(),
        content_choice(),
        confidence(),
        prop::option::weighted(0.15, (key_strategy(), fixed_id())),
        prop::option::weighted(0.1, 0..3u32),
        prop::bool::weighted(0.15),
    )
        .prop_map(
            |(key, id, content, confidence, derived_from, cites, correcting)| Output {
                key,
                id,
                content,
                confidence,
                derived_from,
                cites,
                correcting,
            },
        )
}

fn condition() -> impl Strategy<Value = Condition> {
    prop_oneof![
        3 => (key_strategy(), 0..4usize).prop_map(|(key, n)| Condition::CountAtLeast(key, n)),
        2 => (key_strategy(), fixed_id()).prop_map(|(key, id)| Condition::Has(key, id)),
        2 => (key_strategy(), fixed_id()).prop_map(|(key, id)| Condition::Lacks(key, id)),
    ]
}

fn grant() -> impl Strategy<Value = Grant> {
    prop_oneof![
        6 => Just(Grant::AsRequested),
        3 => prop::collection::vec(any::<bool>(), 3).prop_map(Grant::Narrowed),
        1 => key_strategy().prop_map(Grant::Only),
    ]
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        24 => Just(Fault::None),
        1 => (0..4usize).prop_map(|after| Fault::InExecute { after }),
        1 => (0..4usize).prop_map(|after| Fault::InAccepts { after }),
    ]
}

/// An agent with random dependencies, conditions and outputs.
fn ordinary_agent() -> impl Strategy<Value = AgentSpec> {
    (
        prop::collection::vec(key_strategy(), 0..3),
        prop::collection::vec(condition(), 0..3),
        prop::collection::vec(output(), 1..=3),
        any::<bool>(),
        grant(),
        0..3u8,
        0..40u64,
        fault(),
    )
        .prop_map(
            |(
                deps,
                mut conditions,
                outputs,
                lacks_own_output,
                grant,
                observations,
                tokens,
                fault,
            )| {
                if lacks_own_output
                    && let Some(Output {
                        key: KeyChoice::Typed(key),
                        id: IdChoice::Fixed(id),
                        ..
                    }) = outputs.first()
                {
                    conditions.push(Condition::Lacks(*key, id.clone()));
                }
                // `accepts` may only read declared dependencies (or the agent declares none).
                let mut deps = deps;
                if !deps.is_empty() {
                    deps.extend(conditions.iter().map(Condition::key));
                }
                deps.sort();
                deps.dedup();
                AgentSpec {
                    deps,
                    conditions,
                    outputs,
                    grant,
                    observations,
                    tokens,
                    fault,
                }
            },
        )
}

/// An agent only a budget stops: a fresh id every time its key grows, or an endless
/// correction of one fact.
fn never_stopping_agent() -> impl Strategy<Value = AgentSpec> {
    (
        key_strategy(),
        any::<bool>(),
        prop::sample::select(vec!["n", "m"]),
        any::<bool>(),
        grant(),
    )
        .prop_map(|(key, self_dependent, prefix, corrects, grant)| {
            let plain = |id: IdChoice, content: ContentChoice, correcting: bool| Output {
                key: KeyChoice::Typed(key),
                id,
                content,
                confidence: 1.0,
                derived_from: None,
                cites: None,
                correcting,
            };
            let outputs = if corrects {
                vec![
                    plain(
                        IdChoice::Fixed("f0".to_owned()),
                        ContentChoice::Literal(json!("a")),
                        false,
                    ),
                    plain(
                        IdChoice::Fixed("f0".to_owned()),
                        ContentChoice::HistoryLen,
                        true,
                    ),
                ]
            } else {
                vec![plain(
                    IdChoice::Fresh {
                        prefix: prefix.to_owned(),
                        counted: key,
                    },
                    ContentChoice::Literal(json!("a")),
                    false,
                )]
            };
            AgentSpec {
                deps: if self_dependent {
                    vec![key]
                } else {
                    Vec::new()
                },
                conditions: Vec::new(),
                outputs,
                grant,
                observations: 0,
                tokens: 1,
                fault: Fault::None,
            }
        })
}

fn decision_kind() -> impl Strategy<Value = DecisionKind> {
    prop_oneof![
        4 => Just(DecisionKind::Approve),
        2 => Just(DecisionKind::Reject),
        1 => Just(DecisionKind::StaleHash),
        1 => Just(DecisionKind::NotHuman),
        1 => Just(DecisionKind::Twice),
        1 => Just(DecisionKind::Unknown),
        1 => Just(DecisionKind::Skip),
    ]
}

fn graph() -> impl Strategy<Value = GraphSpec> {
    let agents = prop::collection::vec(
        prop_oneof![4 => ordinary_agent(), 1 => never_stopping_agent()],
        1..=6,
    );
    let budgets = (
        1..20u32,
        // Mostly small, so the fact budget often ends the run mid-cycle.
        prop_oneof![1 => 1..8u64, 1 => 8..200u64],
        prop::option::weighted(0.15, 1..200u64),
        prop_oneof![3 => Just(1024usize), 1 => 1..4usize],
        prop_oneof![3 => Just(64 * 1024usize), 1 => Just(100usize)],
        prop_oneof![3 => Just(FailurePolicy::Quarantine), 1 => Just(FailurePolicy::StopRun)],
    );
    let rules = (
        prop::option::weighted(0.35, key_strategy()),
        prop::option::weighted(0.3, (key_strategy(), literal())),
        prop::option::weighted(0.2, (key_strategy(), 0..4usize)),
        prop::option::weighted(0.15, (key_strategy(), 0..4usize)),
        prop::option::weighted(0.15, (key_strategy(), 1..4usize)),
        prop::collection::vec(decision_kind(), 1..6),
        0..4u8,
    );
    (agents, budgets, rules).prop_map(
        |(
            agents,
            (cycles, facts, tokens, proposals_per_effect_max, content_bytes_max, failure_policy),
            (approval, veto, structural_cap, semantic_cap, acceptance_min, decisions, resumes),
        )| GraphSpec {
            agents,
            cycles,
            facts,
            tokens,
            proposals_per_effect_max,
            content_bytes_max,
            failure_policy,
            approval,
            veto,
            structural_cap,
            semantic_cap,
            acceptance_min,
            decisions,
            resumes,
        },
    )
}

// ---------------------------------------------------------------------------------------------
// Drivers
// ---------------------------------------------------------------------------------------------

/// Keeps the agents' deliberate panics off stderr; every other panic is reported as usual.
fn quiet_deliberate_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let message = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or_default();
            if !message.starts_with(DELIBERATE) {
                default(info);
            }
        }));
    });
}

/// Pushes every event of the engine's runs into a shared vector.
struct Recorder(Arc<Mutex<Vec<EventRecord>>>);

impl Observer for Recorder {
    fn on_event(&mut self, record: &EventRecord) {
        self.0.lock().expect("recorder lock").push(record.clone());
    }
}

/// A finished run (and its resumes) with every event it emitted.
struct Observed {
    result: ConvergeResult,
    events: Vec<EventRecord>,
}

/// `Engine::run`, then `Engine::resume` with the graph's decisions while it awaits approval.
fn run_engine(spec: &GraphSpec) -> Observed {
    quiet_deliberate_panics();
    let mut engine = build(spec);
    let log = Arc::new(Mutex::new(Vec::new()));
    engine.observe(Recorder(Arc::clone(&log)));
    let mut result = engine.run(Context::new()).expect("the engine starts");
    for round in 0..usize::from(spec.resumes) {
        let StopReason::AwaitingApproval { pending } = &result.stop_reason else {
            break;
        };
        let decisions = decisions_for(spec, round, pending);
        result = engine.resume(result, decisions).expect("the run resumes");
    }
    let events = std::mem::take(&mut *log.lock().expect("recorder lock"));
    Observed { result, events }
}

/// A tiny xorshift generator seeded by proptest, for shuffling.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        XorShift((seed ^ 0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

type Check<'a> = &'a mut dyn FnMut(&Context, &[EventRecord]) -> Result<(), TestCaseError>;

/// The sans-I/O driver: executes each batch in a shuffled order, submits the outcomes in
/// another shuffled order, probes the protocol with bad submissions and repeated `next_step`
/// calls, and calls `check` after every change of the context. Resumes like [`run_engine`].
fn run_shuffled(spec: &GraphSpec, seed: u64, check: Check<'_>) -> Result<Observed, TestCaseError> {
    quiet_deliberate_panics();
    let engine = build(spec);
    let mut rng = XorShift::new(seed);
    let mut events = Vec::new();
    let mut run = engine.start(Context::new()).expect("the run starts");
    let mut round = 0;
    loop {
        drain(&mut run, &mut events);
        check(run.context(), &events)?;
        loop {
            let step = run.next_step();
            drain(&mut run, &mut events);
            if rng.coin() {
                prop_assert_eq!(&run.next_step(), &step, "next_step is not idempotent");
                prop_assert!(run.poll_event().is_none(), "a repeated next_step emitted");
            }
            let Step::Execute(batch) = step else { break };
            let mut order = batch.agents().to_vec();
            rng.shuffle(&mut order);
            let mut outcomes: Vec<_> = order
                .iter()
                .map(|&agent| (agent, execute_isolated(run.agent(agent), run.context())))
                .collect();
            rng.shuffle(&mut outcomes);
            probe_bad_submissions(&mut run, &outcomes, &mut rng)?;
            run.submit(outcomes).expect("a complete batch is accepted");
            drain(&mut run, &mut events);
            check(run.context(), &events)?;
        }
        drain(&mut run, &mut events);
        let Some(result) = run.finish().ok() else {
            return Err(TestCaseError::fail(
                "next_step said Stopped but finish refused",
            ));
        };
        let pending = match &result.stop_reason {
            StopReason::AwaitingApproval { pending } if round < usize::from(spec.resumes) => {
                pending.clone()
            }
            _ => return Ok(Observed { result, events }),
        };
        let decisions = decisions_for(spec, round, &pending);
        round += 1;
        run = engine
            .resume_run(result, decisions)
            .expect("the run resumes");
    }
}

/// Submissions a driver could get wrong: each must be refused and change nothing.
fn probe_bad_submissions(
    run: &mut converge_core::Run<'_>,
    outcomes: &[(converge_core::AgentId, AgentOutcome)],
    rng: &mut XorShift,
) -> Result<(), TestCaseError> {
    if !rng.coin() {
        return Ok(());
    }
    let mut missing = outcomes.to_vec();
    let dropped = missing.remove(rng.below(outcomes.len()));
    prop_assert_eq!(
        run.submit(missing),
        Err(SubmitError::Missing { agent: dropped.0 })
    );
    let mut repeated = outcomes.to_vec();
    repeated.push(outcomes[rng.below(outcomes.len())].clone());
    let refused = run.submit(repeated);
    prop_assert!(
        matches!(refused, Err(SubmitError::Unexpected { .. })),
        "a repeated outcome was not refused: {:?}",
        refused
    );
    prop_assert_eq!(
        run.halt(StopReason::Halted {
            reason: "probe".to_owned()
        }),
        Err(SubmitError::BatchOutstanding)
    );
    prop_assert!(run.poll_event().is_none(), "a refused submission emitted");
    Ok(())
}

fn drain(run: &mut converge_core::Run<'_>, events: &mut Vec<EventRecord>) {
    while let Some(record) = run.poll_event() {
        events.push(record);
    }
}

fn no_check(_: &Context, _: &[EventRecord]) -> Result<(), TestCaseError> {
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Comparisons
// ---------------------------------------------------------------------------------------------

fn to_json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).expect("serializable")
}

/// Everything observable about a run, as JSON where the types hold floats (NaN != NaN).
#[derive(Debug, PartialEq)]
struct Fingerprint {
    root_hash: Digest,
    converged: bool,
    cycles: u32,
    stop_reason: String,
    stats: String,
    rejections: String,
    failures: String,
    context: String,
    history: String,
    context_digest: Digest,
    resumable: bool,
}

fn fingerprint(result: &ConvergeResult) -> Fingerprint {
    Fingerprint {
        root_hash: result.root_hash,
        converged: result.converged,
        cycles: result.cycles,
        stop_reason: to_json(&result.stop_reason),
        stats: to_json(&result.stats),
        rejections: to_json(&result.rejections),
        failures: to_json(&result.failures),
        context: to_json(&result.context),
        history: to_json(&result.context.history()),
        context_digest: result.context.digest(),
        resumable: result.is_resumable(),
    }
}

/// Byte-identical event streams and results; on a difference, shows the first diverging event.
fn assert_same_run(left: &Observed, right: &Observed) -> Result<(), TestCaseError> {
    let encode = |records: &[EventRecord]| -> Vec<Vec<u8>> {
        records
            .iter()
            .map(|record| serde_json::to_vec(record).expect("serializable"))
            .collect()
    };
    let (a, b) = (encode(&left.events), encode(&right.events));
    if let Some(index) = (0..a.len().min(b.len())).find(|&index| a[index] != b[index]) {
        return Err(TestCaseError::fail(format!(
            "event streams diverge at record {index}:\n  left:  {}\n  right: {}",
            String::from_utf8_lossy(&a[index]),
            String::from_utf8_lossy(&b[index]),
        )));
    }
    prop_assert_eq!(a.len(), b.len(), "event streams differ in length");
    prop_assert_eq!(fingerprint(&left.result), fingerprint(&right.result));
    Ok(())
}

/// `cases` per property, unless `PROPTEST_CASES` asks for more (or fewer) for a deep run.
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        // Minimal failing cases are reported in the failure message (and pinned below as
        // plain tests when they expose an engine bug); no regression file is written.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(128))]

    /// 1. Every graph stops, within its budgets, and says why in its last event.
    #[test]
    fn every_graph_terminates_within_its_budgets(spec in graph()) {
        check_termination(&spec, &run_engine(&spec))?;
    }

    /// 2. Two fresh engines over the same graph emit byte-identical events and root hashes.
    #[test]
    fn the_same_graph_gives_the_same_run(spec in graph()) {
        let first = run_engine(&spec);
        let second = run_engine(&spec);
        assert_same_run(&first, &second)?;
    }

    /// 3. Shuffled execution and submission (and refused bad submissions) change nothing:
    ///    the sans-I/O driver matches `Engine::run` event for event.
    #[test]
    fn any_driver_order_gives_the_same_run(spec in graph(), seed in any::<u64>()) {
        let sequential = run_engine(&spec);
        let shuffled = run_shuffled(&spec, seed, &mut no_check)?;
        assert_same_run(&sequential, &shuffled)?;
    }

    /// 4. Facts are never changed or removed: after every submit (and resume) the history only
    ///    grows, exactly as the `fact_promoted` events say, and the current view holds the
    ///    latest version of every fact.
    #[test]
    fn the_context_is_append_only(spec in graph(), seed in any::<u64>()) {
        let mut checker = AppendOnly::default();
        let observed = run_shuffled(&spec, seed, &mut |ctx, events| checker.check(ctx, events))?;
        checker.check(&observed.result.context, &observed.events)?;
    }

    /// 5. Every record's hash recomputes from the zero digest; the head is the root hash.
    #[test]
    fn the_event_chain_verifies(spec in graph()) {
        check_chain(&run_engine(&spec))?;
    }

    /// 6. Every proposal is promoted, rejected or parked — in the statistics, in the result and
    ///    in the events, with one disposition per proposal id.
    #[test]
    fn no_proposal_is_dropped(spec in graph()) {
        check_nothing_dropped(&run_engine(&spec))?;
    }

    /// 6b. A parked proposal that no decision resolved is still in the result when the run
    ///     stops: named by `StopReason::AwaitingApproval` or retrievable with
    ///     `ConvergeResult::pending_proposal` — not only in the event stream.
    #[test]
    fn no_parked_proposal_is_lost(spec in graph()) {
        check_parked_kept(&run_engine(&spec))?;
    }
}

fn check_termination(spec: &GraphSpec, observed: &Observed) -> Result<(), TestCaseError> {
    let Observed { result, events } = observed;
    let stats = result.stats;
    prop_assert!(
        result.cycles <= spec.cycles,
        "{} cycles > budget {}",
        result.cycles,
        spec.cycles
    );
    prop_assert_eq!(result.cycles, stats.cycles);
    prop_assert!(stats.facts_promoted <= spec.facts);
    prop_assert_eq!(stats.facts_promoted, result.context.history().len() as u64);

    let Some(EventRecord {
        event:
            Event::RunStopped {
                cycles,
                facts,
                reason,
            },
        ..
    }) = events.last()
    else {
        return Err(TestCaseError::fail(format!(
            "the last event is not run_stopped: {:?}",
            events.last()
        )));
    };
    prop_assert_eq!(reason, &result.stop_reason);
    prop_assert_eq!(*cycles, result.cycles);
    prop_assert_eq!(*facts, result.context.len());

    // Each segment (the start and every resume) ends with exactly one run_stopped, and every
    // cycle started is finished.
    let count = |matches: fn(&Event) -> bool| {
        events
            .iter()
            .filter(|record| matches(&record.event))
            .count()
    };
    prop_assert_eq!(
        count(|event| matches!(event, Event::RunStarted { .. } | Event::RunResumed { .. })),
        count(|event| matches!(event, Event::RunStopped { .. }))
    );
    prop_assert_eq!(
        count(|event| matches!(event, Event::CycleStarted { .. })) as u32,
        result.cycles
    );
    prop_assert_eq!(
        count(|event| matches!(event, Event::CycleFinished { .. })) as u32,
        result.cycles
    );

    prop_assert_eq!(
        result.converged,
        result.stop_reason == StopReason::Converged
    );
    prop_assert_eq!(
        result.is_resumable(),
        matches!(result.stop_reason, StopReason::AwaitingApproval { .. })
    );
    match &result.stop_reason {
        StopReason::Converged => {}
        StopReason::BudgetExhausted {
            exhausted: Exhausted::Cycles { limit },
        } => {
            prop_assert_eq!(*limit, spec.cycles);
            prop_assert_eq!(result.cycles, spec.cycles);
        }
        StopReason::BudgetExhausted {
            exhausted: Exhausted::Facts { limit },
        } => {
            prop_assert_eq!(*limit, spec.facts);
            prop_assert_eq!(stats.facts_promoted, spec.facts);
        }
        StopReason::BudgetExhausted {
            exhausted: Exhausted::Tokens { limit, used },
        } => {
            prop_assert_eq!(Some(*limit), spec.tokens);
            prop_assert!(used > limit);
            prop_assert_eq!(*used, stats.tokens.total());
        }
        StopReason::AwaitingApproval { pending } => {
            prop_assert!(spec.approval.is_some());
            prop_assert!(!pending.is_empty());
            prop_assert_eq!(
                pending.len() as u64,
                stats.approvals_requested - stats.decisions
            );
        }
        StopReason::AgentFailed { .. } => {
            prop_assert_eq!(spec.failure_policy, FailurePolicy::StopRun);
        }
        StopReason::InvariantViolated {
            invariant, class, ..
        } => {
            let expected = match class {
                InvariantClass::Semantic => {
                    spec.semantic_cap.is_some() && invariant == "semantic-cap"
                }
                InvariantClass::Acceptance => {
                    spec.acceptance_min.is_some() && invariant == "acceptance-min"
                }
                // The initial context is empty: no structural cap can fail on it.
                InvariantClass::Structural => false,
            };
            prop_assert!(
                expected,
                "unexpected invariant stop {:?}",
                result.stop_reason
            );
        }
        other => {
            return Err(TestCaseError::fail(format!(
                "unexpected stop reason {other:?}"
            )));
        }
    }
    Ok(())
}

fn check_chain(observed: &Observed) -> Result<(), TestCaseError> {
    let Observed { result, events } = observed;
    prop_assert!(!events.is_empty());
    let mut previous = Digest::zero();
    for (position, record) in events.iter().enumerate() {
        prop_assert_eq!(
            record.seq,
            position as u64,
            "seq numbers are not contiguous"
        );
        let hash = EventRecord::chain_hash(previous, record.seq, &record.event);
        prop_assert_eq!(record.hash, hash, "record {} does not verify", position);
        previous = hash;
    }
    prop_assert_eq!(previous, result.root_hash);
    Ok(())
}

fn check_nothing_dropped(observed: &Observed) -> Result<(), TestCaseError> {
    let Observed { result, events } = observed;
    let stats = result.stats;
    let (made, dispositions) = dispositions(events)?;
    prop_assert_eq!(made.len() as u64, stats.proposals);

    // Each proposal is promoted, rejected or parked; a parked one is counted again when it is
    // finally promoted or rejected. Without approvals this is
    // `proposals == promoted + rejections`.
    let resolved_after_parking = dispositions
        .values()
        .filter(|disposition| disposition.len() == 2)
        .count() as u64;
    prop_assert_eq!(
        stats.proposals + resolved_after_parking,
        stats.facts_promoted + stats.rejections + stats.approvals_requested,
        "stats: {:?}",
        stats
    );
    if stats.approvals_requested == 0 {
        prop_assert_eq!(stats.proposals, stats.facts_promoted + stats.rejections);
    }

    let count = |matches: fn(&Event) -> bool| {
        events
            .iter()
            .filter(|record| matches(&record.event))
            .count()
    };
    let rejected = count(|event| matches!(event, Event::ProposalRejected { .. }));
    prop_assert_eq!(rejected, result.rejections.len());
    prop_assert_eq!(rejected as u64, stats.rejections);
    prop_assert_eq!(
        count(|event| matches!(event, Event::FactPromoted { .. })) as u64,
        stats.facts_promoted
    );
    prop_assert_eq!(
        count(|event| matches!(event, Event::ApprovalRequested { .. })) as u64,
        stats.approvals_requested
    );
    prop_assert_eq!(
        count(|event| matches!(event, Event::ApprovalDecided { .. })) as u64,
        stats.decisions
    );
    prop_assert_eq!(
        count(|event| matches!(event, Event::AgentFailed { .. })),
        result.failures.len()
    );

    // The rejection events and the result's rejections agree, in order.
    let from_events: Vec<(ProposalId, String, String, String)> = events
        .iter()
        .filter_map(|record| match &record.event {
            Event::ProposalRejected {
                proposal,
                key,
                id,
                rejection,
                ..
            } => Some((*proposal, key.clone(), id.clone(), to_json(rejection))),
            _ => None,
        })
        .collect();
    let from_result: Vec<(ProposalId, String, String, String)> = result
        .rejections
        .iter()
        .map(|rejected| {
            let rejection = to_json(&rejected.rejection);
            (
                rejected.proposal,
                rejected.key.clone(),
                rejected.id.clone(),
                rejection,
            )
        })
        .collect();
    prop_assert_eq!(from_events, from_result);

    // One disposition per proposal: promoted, rejected, or parked and then at most one of
    // promoted or rejected. Every accepted decision resolved a parked proposal.
    let pending = pending_at_stop(result);
    for id in &made {
        match dispositions.get(id).map(Vec::as_slice).unwrap_or_default() {
            ["promoted"] | ["rejected"] | ["parked", "promoted"] | ["parked", "rejected"] => {
                prop_assert!(!pending.contains(id), "{} is decided yet still pending", id);
            }
            ["parked"] => {}
            other => {
                return Err(TestCaseError::fail(format!(
                    "proposal {id} has dispositions {other:?}"
                )));
            }
        }
    }
    let unknown: Vec<&ProposalId> = dispositions
        .keys()
        .filter(|id| !made.contains(id))
        .collect();
    prop_assert!(
        unknown.is_empty(),
        "dispositions of proposals never made: {:?}",
        unknown
    );
    for record in events {
        if let Event::ApprovalDecided { proposal, .. } = &record.event {
            let disposition = dispositions.get(proposal).map(Vec::as_slice);
            prop_assert!(
                matches!(disposition, Some(["parked", _])),
                "decision on {} resolved nothing: {:?}",
                proposal,
                disposition
            );
        }
    }
    Ok(())
}

fn check_parked_kept(observed: &Observed) -> Result<(), TestCaseError> {
    let Observed { result, events } = observed;
    let (_, dispositions) = dispositions(events)?;
    let pending = pending_at_stop(result);
    for (id, disposition) in &dispositions {
        if disposition.as_slice() == ["parked"] {
            prop_assert!(
                pending.contains(id) || result.pending_proposal(*id).is_some(),
                "{} was parked and never decided, but the result does not hold it \
                 (not pending, not rejected, not resumable); stop: {:?}",
                id,
                result.stop_reason
            );
        }
    }
    Ok(())
}

type Dispositions = BTreeMap<ProposalId, Vec<&'static str>>;

/// The proposals the events say were made, and what became of each.
fn dispositions(
    events: &[EventRecord],
) -> Result<(BTreeSet<ProposalId>, Dispositions), TestCaseError> {
    let mut made = BTreeSet::new();
    let mut dispositions = Dispositions::new();
    for record in events {
        match &record.event {
            Event::AgentExecuted {
                cycle,
                agent,
                proposals,
                ..
            } => {
                for seq in 0..*proposals {
                    let id: ProposalId = format!("c{cycle}.{agent}.p{seq}")
                        .parse()
                        .expect("positional id");
                    prop_assert!(made.insert(id), "proposal id {} issued twice", id);
                }
            }
            Event::FactPromoted { proposal, .. } => {
                dispositions.entry(*proposal).or_default().push("promoted");
            }
            Event::ProposalRejected { proposal, .. } => {
                dispositions.entry(*proposal).or_default().push("rejected");
            }
            Event::ApprovalRequested { proposal, .. } => {
                dispositions.entry(*proposal).or_default().push("parked");
            }
            _ => {}
        }
    }
    Ok((made, dispositions))
}

fn pending_at_stop(result: &ConvergeResult) -> BTreeSet<ProposalId> {
    match &result.stop_reason {
        StopReason::AwaitingApproval { pending } => {
            pending.iter().map(|parked| parked.proposal).collect()
        }
        _ => BTreeSet::new(),
    }
}

/// The append-only checker: remembers the history seen so far.
#[derive(Default)]
struct AppendOnly {
    seen: Vec<(ContextKey, FactId, u32, Digest)>,
}

impl AppendOnly {
    fn check(&mut self, ctx: &Context, events: &[EventRecord]) -> Result<(), TestCaseError> {
        let history: Vec<(ContextKey, FactId, u32, Digest)> = ctx
            .history()
            .iter()
            .map(|fact| {
                (
                    fact.key(),
                    fact.id().clone(),
                    fact.version(),
                    fact.content_hash(),
                )
            })
            .collect();
        prop_assert!(
            history.len() >= self.seen.len(),
            "the history shrank from {} to {}",
            self.seen.len(),
            history.len()
        );
        prop_assert_eq!(
            &history[..self.seen.len()],
            &self.seen[..],
            "an earlier history entry changed"
        );

        // The history is exactly what the events say was promoted (the run started empty).
        let promoted: Vec<(ContextKey, FactId, u32, Digest)> = events
            .iter()
            .filter_map(|record| match &record.event {
                Event::FactPromoted {
                    fact,
                    version,
                    content_hash,
                    ..
                } => Some((fact.key, fact.id.clone(), *version, *content_hash)),
                _ => None,
            })
            .collect();
        prop_assert_eq!(
            &promoted,
            &history,
            "fact_promoted events and history disagree"
        );

        // Versions count up from 0 per fact; the current view holds the latest of each.
        let mut latest: BTreeMap<(ContextKey, FactId), (u32, Digest)> = BTreeMap::new();
        let mut first_seen: BTreeMap<ContextKey, Vec<FactId>> = BTreeMap::new();
        for (key, id, version, hash) in &history {
            let expected = latest
                .get(&(*key, id.clone()))
                .map_or(0, |(version, _)| version + 1);
            prop_assert_eq!(
                *version,
                expected,
                "{}/{} has a version out of order",
                key,
                id
            );
            if *version == 0 {
                first_seen.entry(*key).or_default().push(id.clone());
            }
            latest.insert((*key, id.clone()), (*version, *hash));
        }
        let mut total = 0;
        for (key, ids) in &first_seen {
            let current: Vec<FactId> = ctx.get(*key).map(|fact| fact.id().clone()).collect();
            prop_assert_eq!(
                &current,
                ids,
                "the current view of {} lost or reordered a fact",
                key
            );
            prop_assert_eq!(ctx.count(*key), ids.len());
            total += ids.len();
            for fact in ctx.get(*key) {
                let (version, hash) = latest[&(*key, fact.id().clone())];
                prop_assert_eq!(
                    fact.version(),
                    version,
                    "{}/{} is not the latest version",
                    key,
                    fact.id()
                );
                prop_assert_eq!(fact.content_hash(), hash);
                let looked_up = ctx
                    .fact(*key, fact.id().as_str())
                    .map(|fact| (fact.version(), fact.content_hash()));
                prop_assert_eq!(looked_up, Some((version, hash)));
                let versions: Vec<u32> = ctx
                    .versions(*key, fact.id().as_str())
                    .map(|fact| fact.version())
                    .collect();
                let expected: Vec<u32> = (0..=version).rev().collect();
                prop_assert_eq!(versions, expected, "versions of {}/{}", key, fact.id());
            }
        }
        prop_assert_eq!(ctx.len(), total);
        prop_assert_eq!(
            ctx.keys().collect::<Vec<_>>(),
            first_seen.keys().copied().collect::<Vec<_>>()
        );
        self.seen = history;
        Ok(())
    }
}

/// The minimal case `no_parked_proposal_is_lost` shrinks to, pinned as a plain test.
///
/// Cycle 1: `agent-0` proposes `seeds/f0` (the `seeds` policy requires approval, so it is
/// parked) and `agent-1` promotes `hypotheses/f0`. The promotion wakes both agents again, so
/// the cycle budget of 1 stops the run with `BudgetExhausted`. The parked proposal is then
/// neither promoted, rejected, nor pending: only its `approval_requested` event remembers it,
/// and the result cannot be resumed.
#[test]
fn a_parked_proposal_survives_a_budget_stop() {
    let agent = |key: ContextKey| AgentSpec {
        deps: Vec::new(),
        conditions: Vec::new(),
        outputs: vec![Output {
            key: KeyChoice::Typed(key),
            id: IdChoice::Fixed("f0".to_owned()),
            content: ContentChoice::Literal(json!("a")),
            confidence: 1.0,
            derived_from: None,
            cites: None,
            correcting: false,
        }],
        grant: Grant::AsRequested,
        observations: 0,
        tokens: 0,
        fault: Fault::None,
    };
    let spec = GraphSpec {
        agents: vec![agent(ContextKey::Seeds), agent(ContextKey::Hypotheses)],
        cycles: 1,
        facts: 100,
        tokens: None,
        proposals_per_effect_max: 1024,
        content_bytes_max: 64 * 1024,
        failure_policy: FailurePolicy::Quarantine,
        approval: Some(ContextKey::Seeds),
        veto: None,
        structural_cap: None,
        semantic_cap: None,
        acceptance_min: None,
        decisions: vec![DecisionKind::Approve],
        resumes: 0,
    };
    let observed = run_engine(&spec);
    let result = &observed.result;
    assert_eq!(
        result.stop_reason,
        StopReason::BudgetExhausted {
            exhausted: Exhausted::Cycles { limit: 1 }
        }
    );
    assert_eq!(result.stats.approvals_requested, 1);
    assert_eq!(result.stats.facts_promoted, 1);
    let parked: ProposalId = "c1.a0.p0".parse().expect("positional id");
    let kept = result.pending_proposal(parked).is_some()
        || result
            .rejections
            .iter()
            .any(|rejected| rejected.proposal == parked);
    assert!(
        kept,
        "parked proposal {parked} vanished from the result: stop {:?}, rejections {:?}, \
         resumable {}",
        result.stop_reason,
        result.rejections,
        result.is_resumable()
    );
}
