//! Benchmark scenarios for the Converge engine: builders, expected outcomes and measurement.
//!
//! Each [`Scenario`] registers its agents on a fresh [`Engine`] with cycle and fact budgets 10
//! above what a correct run needs. [`measure`] times only the run (not the setup), then checks that the
//! run converged with exactly the expected cycles and facts, so a broken engine can never
//! report a fast time. The binary (`src/main.rs`) parses arguments and prints
//! [`Measurement::json_line`].
//!
//! The scenarios, defined exactly so they can be compared with a reference implementation:
//!
//! - `chain-id N`: agent 0 has no dependencies and proposes `c0` into
//!   [`ContextKey::Hypotheses`] while it is absent; agent `i ≥ 1` depends on `Hypotheses`
//!   and proposes `c{i}` when `c{i-1}` is present and `c{i}` absent. N facts, N cycles.
//! - `chain-count N`: the same chain, but agent `i` accepts when `Hypotheses` holds exactly
//!   `i` facts. N facts, N cycles.
//! - `fanout N`: N seed agents without dependencies, each proposing its own `f{i}` into
//!   [`ContextKey::Seeds`] while it is absent. N facts, 1 cycle.
//!
//! - `latency N`: 8 layers of N async agents driven by the concurrent runtime driver; each
//!   agent waits 50 ms of simulated I/O (a timer), then proposes one signal; layer `l` waits for
//!   `l × N` signals. 8N facts, 8 cycles; the ideal wall time is 400 ms.
//!
//! - `journal N`: `fanout N` with every step committed to a SQLite journal (WAL,
//!   `synchronous=FULL`), then resumed from the journal; reports `facts_per_s`, `resume_ms`
//!   and the journal's size (`journal_bytes`, `bytes_per_fact`).
//! - `latency-journal N`: `latency N` durably, each agent's outcome committed as it finishes
//!   (group commit) and each cycle after its batch; ideal 400 ms.
//!
//! - `pg-journal N`: `journal N` on a PostgreSQL journal with default durability
//!   (`synchronous_commit=on`, `fsync` on); `journal_bytes` is the database's growth, and
//!   `wal_bytes` the WAL the run wrote.
//! - `pg-runs N`: N small runs (five rule agents in a chain) submitted to a PostgreSQL journal,
//!   then driven by 1, 2 and 4 in-process workers ([`converge_runtime::Worker`]); one line per
//!   worker count with `runs_per_s` and what the server and the machine did per run.
//! - `pg-serve N`: a `converge serve` replica on PostgreSQL (the built `converge` binary, as
//!   a child process) with two `converge worker`s, N runs submitted over HTTP at 50 a second
//!   while reads arrive at 1,000 a second in an open loop (`GET /v1/runs/{run}`, the runs
//!   list, a run's facts); one line per endpoint with latency percentiles measured from each
//!   request's scheduled send time.
//!
//! The `pg-` scenarios use the server `CONVERGE_BENCH_POSTGRES` names (a role that may create
//! databases), or else start a throwaway cluster (which takes a few seconds, not timed). They
//! are not in `all`: with the cluster they take well over a minute together.
//!
//! Every proposal's content is the agent's index as a JSON number.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

mod journal;
mod latency;
mod open_loop;
mod pg_journal;
mod pg_runs;
mod pg_serve;
mod postgres;

pub use pg_runs::{RunsMeasurement, SLOTS, SPEC, WORKER_COUNTS};

use converge_core::agents::SeedAgent;
use converge_core::{
    Agent, AgentEffect, AuthorityScope, Budget, Context, ContextKey, ConvergeResult, CycleBudget,
    Engine, EngineError, FactBudget, Proposal,
};

/// The largest `N` accepted: the budgets (`N + 10`) must fit the core's counters, and larger
/// runs are almost certainly a typo.
pub const N_MAX: usize = 10_000_000;

/// The runs of `all`, in order.
pub const DEFAULT_SET: [(Scenario, usize); 8] = [
    (Scenario::ChainId, 1000),
    (Scenario::ChainId, 2000),
    (Scenario::ChainCount, 4000),
    (Scenario::Fanout, 10_000),
    (Scenario::Fanout, 100_000),
    (Scenario::Latency, 16),
    (Scenario::LatencyJournal, 16),
    (Scenario::Journal, 100_000),
];

/// A benchmark scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// A chain where each agent waits for its predecessor's fact by id.
    ChainId,
    /// A chain where each agent waits for `Hypotheses` to hold exactly its index of facts.
    ChainCount,
    /// Independent seed agents that all fire in the first cycle.
    Fanout,
    /// Layers of I/O-bound async agents under the concurrent driver.
    Latency,
    /// `latency` with every step, and every agent's outcome as it finishes, committed to a
    /// SQLite journal.
    LatencyJournal,
    /// `fanout` with every step committed to a SQLite journal, then resumed from it.
    Journal,
    /// `journal` on PostgreSQL.
    PgJournal,
    /// Small runs submitted to PostgreSQL and driven by 1, 2 and 4 workers.
    PgRuns,
    /// Reads of a server replica on PostgreSQL while workers drive runs submitted to it.
    PgServe,
}

impl Scenario {
    /// Every scenario, in the order usage lists them.
    pub const ALL: [Scenario; 9] = [
        Scenario::ChainId,
        Scenario::ChainCount,
        Scenario::Fanout,
        Scenario::Latency,
        Scenario::LatencyJournal,
        Scenario::Journal,
        Scenario::PgJournal,
        Scenario::PgRuns,
        Scenario::PgServe,
    ];

    /// The scenarios that need nothing outside this process.
    pub const IN_PROCESS: [Scenario; 6] = [
        Scenario::ChainId,
        Scenario::ChainCount,
        Scenario::Fanout,
        Scenario::Latency,
        Scenario::LatencyJournal,
        Scenario::Journal,
    ];

    /// The scenario's name on the command line and in the JSON output.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::ChainId => "chain-id",
            Scenario::ChainCount => "chain-count",
            Scenario::Fanout => "fanout",
            Scenario::Latency => "latency",
            Scenario::LatencyJournal => "latency-journal",
            Scenario::Journal => "journal",
            Scenario::PgJournal => "pg-journal",
            Scenario::PgRuns => "pg-runs",
            Scenario::PgServe => "pg-serve",
        }
    }

    /// The cycles and facts a correct engine ends with for `n` agents.
    pub fn expected(self, n: usize) -> Expected {
        match self {
            Scenario::ChainId | Scenario::ChainCount => Expected {
                cycles: n,
                facts: n,
            },
            Scenario::Fanout | Scenario::Journal | Scenario::PgJournal => Expected {
                cycles: usize::from(n > 0),
                facts: n,
            },
            Scenario::Latency | Scenario::LatencyJournal => Expected {
                cycles: latency::LAYERS,
                facts: latency::LAYERS * n,
            },
            // Per run; the runs are checked by the scenario itself.
            Scenario::PgRuns | Scenario::PgServe => Expected {
                cycles: 5,
                facts: 5,
            },
        }
    }

    /// An engine with this scenario's `n` agents registered and its budget set.
    pub fn build(self, n: usize) -> Result<Engine, BenchError> {
        check_n(n)?;
        let mut engine = Engine::new();
        let expected = self.expected(n);
        let limit = expected.cycles.max(expected.facts) + 10;
        let cycles = u32::try_from(limit)
            .ok()
            .and_then(|limit| CycleBudget::new(limit).ok());
        let facts = FactBudget::new(limit as u64).ok();
        let (Some(cycles), Some(facts)) = (cycles, facts) else {
            return Err(BenchError::BadN { n });
        };
        engine.set_budget(Budget::default().with_cycles(cycles).with_facts(facts));
        match self {
            Scenario::ChainId => (0..n).for_each(|i| {
                engine.register(ChainIdAgent::new(i));
            }),
            Scenario::ChainCount => (0..n).for_each(|i| {
                engine.register(ChainCountAgent::new(i));
            }),
            Scenario::Fanout | Scenario::Journal | Scenario::PgJournal => (0..n).for_each(|i| {
                // The core's seed agent is exactly a fanout agent: no dependencies, one fact, once.
                engine.register(SeedAgent::new(format!("f{i}"), i));
            }),
            // Async agents live in the runtime, not in the engine; see `run_scenario`.
            Scenario::Latency | Scenario::LatencyJournal => {}
            // Its runs are built from a job spec by the workers.
            Scenario::PgRuns | Scenario::PgServe => {}
        }
        Ok(engine)
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scenario {
    type Err = BenchError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Scenario::ALL
            .into_iter()
            .find(|scenario| scenario.name() == name)
            .ok_or_else(|| BenchError::UnknownScenario {
                name: name.to_owned(),
            })
    }
}

/// What a correct run of a scenario ends with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    /// Cycles executed.
    pub cycles: usize,
    /// Current facts in the final context.
    pub facts: usize,
}

/// Why a scenario could not be built or measured.
#[derive(Debug)]
pub enum BenchError {
    /// The scenario name is not known.
    UnknownScenario {
        /// The name given.
        name: String,
    },
    /// `N` is out of range.
    BadN {
        /// The value given.
        n: usize,
    },
    /// The engine refused to start.
    Engine(EngineError),
    /// The async runtime could not be built.
    Runtime(std::io::Error),
    /// The durable run or its journal failed.
    Durable(String),
    /// The PostgreSQL server could not be started or asked.
    Postgres(String),
    /// The scenario measures several configurations: use [`lines`].
    Several {
        /// The scenario.
        scenario: Scenario,
    },
    /// The run ended differently from what a correct engine produces.
    Mismatch {
        /// The scenario.
        scenario: Scenario,
        /// Its size.
        n: usize,
        /// What was expected.
        expected: Expected,
        /// Whether the run converged.
        converged: bool,
        /// The stop reason, as debug text.
        stop_reason: String,
        /// Cycles executed.
        cycles: usize,
        /// Facts in the final context.
        facts: usize,
    },
}

impl BenchError {
    /// Whether the error comes from the user's arguments (rather than from the engine).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            BenchError::UnknownScenario { .. } | BenchError::BadN { .. }
        )
    }
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BenchError::UnknownScenario { name } => {
                let known: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
                write!(
                    f,
                    "unknown scenario {name:?}; expected one of: {}",
                    known.join(", ")
                )
            }
            BenchError::BadN { n } => write!(f, "N must be between 1 and {N_MAX}, got {n}"),
            BenchError::Engine(error) => write!(f, "the engine refused to run: {error}"),
            BenchError::Runtime(error) => write!(f, "the async runtime could not start: {error}"),
            BenchError::Durable(error) => write!(f, "the durable run failed: {error}"),
            BenchError::Postgres(error) => write!(f, "PostgreSQL: {error}"),
            BenchError::Several { scenario } => write!(
                f,
                "{scenario} measures several configurations, one JSON line each"
            ),
            BenchError::Mismatch {
                scenario,
                n,
                expected,
                converged,
                stop_reason,
                cycles,
                facts,
            } => write!(
                f,
                "{scenario} {n}: expected a converged run with {} cycles and {} facts, got \
                 converged={converged}, cycles={cycles}, facts={facts}, stop={stop_reason}",
                expected.cycles, expected.facts
            ),
        }
    }
}

impl std::error::Error for BenchError {}

impl From<EngineError> for BenchError {
    fn from(error: EngineError) -> Self {
        BenchError::Engine(error)
    }
}

/// One verified, timed run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measurement {
    /// The scenario.
    pub scenario: Scenario,
    /// Its size.
    pub n: usize,
    /// Cycles executed.
    pub cycles: usize,
    /// Facts in the final context.
    pub facts: usize,
    /// Wall time of the run, in milliseconds.
    pub ms: f64,
    /// For `journal`: wall time of resuming the finished run from its journal (load and
    /// re-drive every step), in milliseconds.
    pub resume_ms: Option<f64>,
    /// For the journaled scenarios: the size of the journal file once closed (for
    /// PostgreSQL, the database's growth), in bytes.
    pub journal_bytes: Option<u64>,
    /// For `pg-journal`: the WAL the run wrote, in bytes.
    pub wal_bytes: Option<u64>,
}

impl Measurement {
    /// The JSON line the binary prints (no trailing newline), times with 3 decimals. The
    /// `journal` scenario adds `facts_per_s` and `resume_ms`; the journaled ones add
    /// `journal_bytes` and `bytes_per_fact`.
    pub fn json_line(&self) -> String {
        let scenario = serde_json::Value::from(self.scenario.name());
        let mut line = format!(
            "{{\"scenario\":{scenario},\"n\":{},\"cycles\":{},\"facts\":{},\"ms\":{:.3}",
            self.n, self.cycles, self.facts, self.ms
        );
        if let Some(resume_ms) = self.resume_ms {
            let facts_per_s = self.facts as f64 / (self.ms / 1000.0).max(f64::MIN_POSITIVE);
            line.push_str(&format!(
                ",\"facts_per_s\":{facts_per_s:.0},\"resume_ms\":{resume_ms:.3}"
            ));
        }
        if let Some(bytes) = self.journal_bytes {
            let per_fact = bytes as f64 / self.facts.max(1) as f64;
            line.push_str(&format!(
                ",\"journal_bytes\":{bytes},\"bytes_per_fact\":{per_fact:.1}"
            ));
        }
        if let Some(wal) = self.wal_bytes {
            let per_fact = wal as f64 / self.facts.max(1) as f64;
            line.push_str(&format!(
                ",\"wal_bytes\":{wal},\"wal_bytes_per_fact\":{per_fact:.1}"
            ));
        }
        line.push('}');
        line
    }
}

/// Builds and runs a scenario without timing or checking it; tests assert on the result.
/// `pg-runs`, which ends with many results, is refused ([`BenchError::Several`]).
pub fn execute(scenario: Scenario, n: usize) -> Result<ConvergeResult, BenchError> {
    run_scenario(scenario, n).map(|ran| ran.result)
}

/// What running a scenario gave: its result, the run's wall time, and for journaled
/// scenarios what the journal measured.
struct Ran {
    result: ConvergeResult,
    elapsed: Duration,
    resume: Option<Duration>,
    journal_bytes: Option<u64>,
    wal_bytes: Option<u64>,
}

/// Builds a scenario and runs it, timing the run alone (not the setup).
fn run_scenario(scenario: Scenario, n: usize) -> Result<Ran, BenchError> {
    let engine = scenario.build(n)?;
    let ran = |result, elapsed| Ran {
        result,
        elapsed,
        resume: None,
        journal_bytes: None,
        wal_bytes: None,
    };
    match scenario {
        Scenario::Latency => latency::run(engine, n).map(|(result, elapsed)| ran(result, elapsed)),
        Scenario::LatencyJournal => latency::run_journaled(engine, n).map(|run| Ran {
            journal_bytes: Some(run.bytes),
            ..ran(run.result, run.elapsed)
        }),
        Scenario::Journal | Scenario::PgJournal => {
            let run = if scenario == Scenario::Journal {
                journal::run(engine)?
            } else {
                pg_journal::run(engine)?
            };
            Ok(Ran {
                resume: Some(run.resume),
                journal_bytes: Some(run.bytes),
                wal_bytes: run.wal_bytes,
                ..ran(run.result, run.elapsed)
            })
        }
        Scenario::PgRuns | Scenario::PgServe => Err(BenchError::Several { scenario }),
        _ => {
            let mut engine = engine;
            let start = Instant::now();
            let result = engine.run(Context::new());
            let elapsed = start.elapsed();
            Ok(ran(result?, elapsed))
        }
    }
}

/// Builds a scenario, times the run alone, and verifies the outcome.
pub fn measure(scenario: Scenario, n: usize) -> Result<Measurement, BenchError> {
    let Ran {
        result,
        elapsed,
        resume,
        journal_bytes,
        wal_bytes,
    } = run_scenario(scenario, n)?;
    let (cycles, facts) = (result.cycles as usize, result.context.len());
    let expected = scenario.expected(n);
    if !result.converged || cycles != expected.cycles || facts != expected.facts {
        return Err(BenchError::Mismatch {
            scenario,
            n,
            expected,
            converged: result.converged,
            stop_reason: format!("{:?}", result.stop_reason),
            cycles,
            facts,
        });
    }
    Ok(Measurement {
        scenario,
        n,
        cycles,
        facts,
        ms: elapsed.as_secs_f64() * 1000.0,
        resume_ms: resume.map(|resume| resume.as_secs_f64() * 1000.0),
        journal_bytes,
        wal_bytes,
    })
}

/// Measures a scenario and returns its JSON lines: one for most, one per worker count for
/// `pg-runs`.
pub fn lines(scenario: Scenario, n: usize) -> Result<Vec<String>, BenchError> {
    if scenario == Scenario::PgRuns {
        check_n(n)?;
        return Ok(pg_runs::measure(n)?
            .iter()
            .map(RunsMeasurement::json_line)
            .collect());
    }
    if scenario == Scenario::PgServe {
        check_n(n)?;
        return pg_serve::measure(n);
    }
    measure(scenario, n).map(|measurement| vec![measurement.json_line()])
}

fn check_n(n: usize) -> Result<(), BenchError> {
    if (1..=N_MAX).contains(&n) {
        Ok(())
    } else {
        Err(BenchError::BadN { n })
    }
}

const HYPOTHESES: &[ContextKey] = &[ContextKey::Hypotheses];

/// The dependencies of chain agent `index`: none for the head, `Hypotheses` for the rest.
fn chain_dependencies(index: usize) -> &'static [ContextKey] {
    if index == 0 { &[] } else { HYPOTHESES }
}

/// Agent `i` of `chain-id`.
struct ChainIdAgent {
    name: String,
    index: usize,
    dependencies: &'static [ContextKey],
    /// `c{i-1}`; `None` for agent 0.
    previous: Option<String>,
    /// `c{i}`.
    id: String,
}

impl ChainIdAgent {
    fn new(index: usize) -> ChainIdAgent {
        ChainIdAgent {
            name: format!("chain-{index}"),
            index,
            dependencies: chain_dependencies(index),
            previous: index.checked_sub(1).map(|previous| format!("c{previous}")),
            id: format!("c{index}"),
        }
    }
}

impl Agent for ChainIdAgent {
    fn name(&self) -> &str {
        &self.name
    }

    fn dependencies(&self) -> &[ContextKey] {
        self.dependencies
    }

    fn requested_scope(&self) -> AuthorityScope {
        AuthorityScope::keys([ContextKey::Hypotheses])
    }

    fn accepts(&self, ctx: &Context) -> bool {
        let ready = self
            .previous
            .as_deref()
            .is_none_or(|previous| ctx.contains(ContextKey::Hypotheses, previous));
        ready && !ctx.contains(ContextKey::Hypotheses, &self.id)
    }

    fn execute(&self, _ctx: &Context) -> AgentEffect {
        AgentEffect::empty().with_proposal(Proposal::new(
            ContextKey::Hypotheses,
            self.id.clone(),
            self.index,
        ))
    }
}

/// Agent `i` of `chain-count`.
struct ChainCountAgent {
    name: String,
    index: usize,
    dependencies: &'static [ContextKey],
    /// `c{i}`.
    id: String,
}

impl ChainCountAgent {
    fn new(index: usize) -> ChainCountAgent {
        ChainCountAgent {
            name: format!("chain-{index}"),
            index,
            dependencies: chain_dependencies(index),
            id: format!("c{index}"),
        }
    }
}

impl Agent for ChainCountAgent {
    fn name(&self) -> &str {
        &self.name
    }

    fn dependencies(&self) -> &[ContextKey] {
        self.dependencies
    }

    fn requested_scope(&self) -> AuthorityScope {
        AuthorityScope::keys([ContextKey::Hypotheses])
    }

    fn accepts(&self, ctx: &Context) -> bool {
        ctx.count(ContextKey::Hypotheses) == self.index
    }

    fn execute(&self, _ctx: &Context) -> AgentEffect {
        AgentEffect::empty().with_proposal(Proposal::new(
            ContextKey::Hypotheses,
            self.id.clone(),
            self.index,
        ))
    }
}
