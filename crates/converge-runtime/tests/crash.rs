//! Crash test with real processes: a child runs a durable multi-cycle job against a real
//! SQLite journal and is SIGKILLed at a pseudo-random moment; the parent resumes the run and
//! checks it ends with the root hash of an uninterrupted run and that every fact the child
//! acknowledged before it died is in the journal.
//!
//! This file is its own test harness (`harness = false`): run as `crash --child PATH` it is
//! the child; otherwise it is the parent. `CONVERGE_CRASH_POINTS` sets the number of kill
//! points (50 by default).

use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use converge_core::{
    Agent, AgentEffect, AuthorityScope, Context, ContextKey, Digest, Engine, Event, EventRecord,
    Observer, Proposal,
};
use converge_runtime::{
    DurableError, Journal, JournalError, RunId, Runtime, SqliteJournal, Verification,
};

const CYCLES: usize = 16;
const EXECUTE_MS: u64 = 4;

/// Uninterrupted runs timed before the kills.
const TIMING_RUNS: usize = 3;

/// Agent `i` proposes `signals/s{i}` once `i` signals exist, after a short pause that stands
/// in for real work, so a kill can land while a cycle is in flight.
struct Step {
    name: String,
    index: usize,
}

impl Agent for Step {
    fn name(&self) -> &str {
        &self.name
    }

    fn dependencies(&self) -> &[ContextKey] {
        &[ContextKey::Signals]
    }

    fn requested_scope(&self) -> AuthorityScope {
        AuthorityScope::keys([ContextKey::Signals, ContextKey::Evaluations])
    }

    fn accepts(&self, ctx: &Context) -> bool {
        ctx.count(ContextKey::Signals) == self.index
    }

    fn execute(&self, _ctx: &Context) -> AgentEffect {
        std::thread::sleep(Duration::from_millis(EXECUTE_MS));
        AgentEffect::empty()
            .with_proposal(Proposal::new(
                ContextKey::Signals,
                format!("s{}", self.index),
                self.index,
            ))
            .with_proposal(Proposal::new(
                ContextKey::Evaluations,
                format!("e{}", self.index),
                "checked",
            ))
    }
}

fn job() -> Runtime {
    let mut engine = Engine::new();
    for index in 0..CYCLES {
        engine.register(Step {
            name: format!("step-{index}"),
            index,
        });
    }
    Runtime::new(engine)
}

fn run_id() -> RunId {
    RunId::new("crash-job").expect("valid run id")
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime")
        .block_on(future)
}

/// Prints every committed fact: the child's acknowledgements.
struct Acknowledge;

impl Observer for Acknowledge {
    fn on_event(&mut self, record: &EventRecord) {
        if let Event::FactPromoted { fact, .. } = &record.event {
            println!("ack {}/{}", fact.key, fact.id);
        }
    }
}

fn child(path: &str) -> ExitCode {
    let Ok(mut journal) = SqliteJournal::open(path) else {
        return ExitCode::from(3);
    };
    let mut runtime = job();
    runtime.observe(Acknowledge);
    match block_on(runtime.run_durable(&mut journal, &run_id())) {
        Ok(_) => ExitCode::SUCCESS,
        Err(_) => ExitCode::from(4),
    }
}

/// A small deterministic generator, so a failing kill point can be reproduced.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Runs the child and kills it after `delay`; returns the facts it acknowledged.
fn kill_child_after(path: &Path, delay: Duration) -> BTreeSet<String> {
    let mut child = Command::new(std::env::current_exe().expect("test binary path"))
        .arg("--child")
        .arg(path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let deadline = Instant::now() + delay;
    while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let _ = child.kill(); // SIGKILL, unless the child already finished
    let _ = child.wait();
    let mut output = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = stdout.read_to_string(&mut output);
    }
    output
        .lines()
        .filter_map(|line| line.strip_prefix("ack "))
        .map(str::to_owned)
        .collect()
}

/// Facts promoted according to the journal's stored events.
fn journaled_facts(journal: &SqliteJournal) -> BTreeSet<String> {
    let Ok(events) = journal.events(&run_id(), 0) else {
        return BTreeSet::new();
    };
    events
        .iter()
        .filter_map(|stored| serde_json::from_slice::<serde_json::Value>(&stored.body).ok())
        .filter(|event| event["event"] == "fact_promoted")
        .map(|event| {
            format!(
                "{}/{}",
                event["fact"]["key"].as_str().unwrap_or(""),
                event["fact"]["id"].as_str().unwrap_or("")
            )
        })
        .collect()
}

/// Resumes (or starts, if nothing was committed) and returns the run's final root hash.
fn recover(path: &Path) -> Result<Digest, String> {
    let mut journal = SqliteJournal::open(path).map_err(|e| e.to_string())?;
    let outcome = match block_on(job().resume_durable(&mut journal, &run_id())) {
        Err(DurableError::Journal(JournalError::UnknownRun { .. })) => {
            block_on(job().run_durable(&mut journal, &run_id())).map(|result| result.root_hash)
        }
        Err(DurableError::Finished { .. }) => Ok(journal
            .summary(&run_id())
            .map_err(|e| e.to_string())?
            .root_hash),
        other => other.map(|result| result.root_hash),
    };
    let root = outcome.map_err(|e| e.to_string())?;
    match journal.verify(&run_id()).map_err(|e| e.to_string())? {
        Verification::Intact { root_hash, .. } if root_hash == root => Ok(root),
        other => Err(format!("journal does not verify after recovery: {other:?}")),
    }
}

fn parent() -> Result<String, String> {
    let points: u64 = std::env::var("CONVERGE_CRASH_POINTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(50);
    let expected = block_on(job().run(Context::new())).map_err(|e| e.to_string())?;
    if !expected.converged || expected.context.len() != 2 * CYCLES {
        return Err(format!(
            "the reference run is wrong: {:?}",
            expected.stop_reason
        ));
    }
    // Kill points are spread over the fastest of a few uninterrupted runs: one slowed down
    // by a busy machine would put many of them after the run has ended.
    let mut full_ms = u64::MAX;
    for _ in 0..TIMING_RUNS {
        let timing = tempfile::TempDir::new().map_err(|e| e.to_string())?;
        let started = Instant::now();
        let full = kill_child_after(&timing.path().join("journal.db"), Duration::from_secs(30));
        full_ms = full_ms.min(started.elapsed().as_millis() as u64);
        if full.len() != 2 * CYCLES {
            return Err(format!(
                "an uninterrupted child acknowledged {} facts",
                full.len()
            ));
        }
    }
    let (mut state, mut interrupted, mut midway, mut failures) =
        (0x9E37_79B9_7F4A_7C15_u64, 0, 0, Vec::new());
    for point in 0..points {
        let delay = Duration::from_millis(xorshift(&mut state) % full_ms.max(1));
        let dir = tempfile::TempDir::new().map_err(|e| e.to_string())?;
        let path = dir.path().join("journal.db");
        let acknowledged = kill_child_after(&path, delay);
        interrupted += usize::from(acknowledged.len() < 2 * CYCLES);
        midway += usize::from(!acknowledged.is_empty() && acknowledged.len() < 2 * CYCLES);
        let check = recover(&path).and_then(|root| {
            if root != expected.root_hash {
                return Err(format!(
                    "root {root} differs from the uninterrupted {}",
                    expected.root_hash
                ));
            }
            let journal = SqliteJournal::open(&path).map_err(|e| e.to_string())?;
            let journaled = journaled_facts(&journal);
            let lost: Vec<&String> = acknowledged.difference(&journaled).collect();
            if lost.is_empty() {
                Ok(())
            } else {
                Err(format!("acknowledged facts lost: {lost:?}"))
            }
        });
        if let Err(error) = check {
            failures.push(format!(
                "kill point {point} ({} ms, {} acknowledged): {error}",
                delay.as_millis(),
                acknowledged.len()
            ));
        }
    }
    let enough =
        interrupted >= (points as usize).div_ceil(2) && midway >= (points as usize).div_ceil(4);
    if !enough {
        failures.push(format!(
            "only {interrupted} of {points} kills interrupted the run, {midway} after some facts \
             were acknowledged; the test would prove nothing"
        ));
    }
    if failures.is_empty() {
        Ok(format!(
            "crash: {points} kill points ({interrupted} interrupted a run of {full_ms} ms, {midway} \
             after some facts were acknowledged)\n{points} passed, 0 failed"
        ))
    } else {
        Err(failures.join("\n"))
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let Some(index) = args.iter().position(|arg| arg == "--child") {
        return args
            .get(index + 1)
            .map_or(ExitCode::from(2), |path| child(path));
    }
    if args.iter().any(|arg| arg == "--list") {
        return ExitCode::SUCCESS;
    }
    match parent() {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(failures) => {
            eprintln!("crash test failed:\n{failures}");
            ExitCode::FAILURE
        }
    }
}
