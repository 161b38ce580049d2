//! Per-agent durability under real SIGKILLs, at every journal write.
//!
//! A child process drives a durable job of [`LAYERS`] cycles, each with three async agents
//! that finish at different times (`a` fast, `b` slower, `c` slow), so each cycle commits
//! `a`'s outcome, then `b`'s, then the cycle with `c`'s. The child wraps its journal so that
//! it sends itself SIGKILL at one chosen write — just before it, or just after it committed —
//! which makes every write of the run a kill point, including those between an agent's commit
//! and its cycle's. For each kill point the parent reads what the journal committed, resumes
//! the run in-process with agents that record their executions, and checks that:
//! - exactly the agents whose outcomes were not committed executed again, and no other;
//! - the run ends with the root hash of an uninterrupted run, and the journal verifies;
//! - in particular, killed while `c` of the first cycle runs (after `a` and `b` committed),
//!   resuming executes only `c` of that cycle.
//!
//! This file is its own test harness (`harness = false`): run as `kill_points --child PATH K
//! MODE` it is the child; otherwise it is the parent.

use std::collections::BTreeSet;
use std::process::{Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use converge_core::{AgentEffect, AuthorityScope, Context, ContextKey, Digest, Proposal};
use converge_runtime::{
    AgentFuture, AsyncAgent, DriverConfig, DurableError, Journal, RecordedRun, RunId, Runtime,
    SqliteJournal, StepInput,
};

#[path = "support/kill_at.rs"]
mod kill_at;

use converge_runtime::Verification;
use kill_at::{KillAt, Mode, block_on};

/// Cycles of the job.
const LAYERS: usize = 9;

/// Each agent's letter and how long it works.
const AGENTS: [(&str, u64); 3] = [("a", 2), ("b", 20), ("c", 50)];

/// Kill points checked at once (each is mostly waiting on its agents).
const PARALLEL_MAX: usize = 4;

/// One agent: proposes its own signal once the previous layers' signals exist.
struct Worker {
    name: String,
    layer: usize,
    work_ms: u64,
    executed: Arc<Mutex<Vec<String>>>,
}

impl AsyncAgent for Worker {
    fn name(&self) -> &str {
        &self.name
    }

    fn dependencies(&self) -> &[ContextKey] {
        &[ContextKey::Signals]
    }

    fn requested_scope(&self) -> AuthorityScope {
        AuthorityScope::keys([ContextKey::Signals])
    }

    fn accepts(&self, ctx: &Context) -> bool {
        ctx.count(ContextKey::Signals) == self.layer * AGENTS.len()
            && !ctx.contains(ContextKey::Signals, &self.name)
    }

    fn execute<'a>(&'a self, _ctx: &'a Context) -> AgentFuture<'a> {
        Box::pin(async move {
            if let Ok(mut executed) = self.executed.lock() {
                executed.push(self.name.clone());
            }
            tokio::time::sleep(Duration::from_millis(self.work_ms)).await;
            AgentEffect::empty().with_proposal(Proposal::new(
                ContextKey::Signals,
                self.name.clone(),
                self.layer,
            ))
        })
    }
}

fn job(executed: &Arc<Mutex<Vec<String>>>) -> Runtime {
    let mut runtime = Runtime::new(converge_core::Engine::new()).with_config(DriverConfig {
        concurrency_max: AGENTS.len(),
        ..DriverConfig::default()
    });
    for layer in 0..LAYERS {
        for (letter, work_ms) in AGENTS {
            runtime.register_async(Worker {
                name: format!("{letter}{layer}"),
                layer,
                work_ms,
                executed: executed.clone(),
            });
        }
    }
    runtime
}

fn run_id() -> RunId {
    RunId::new("kill-points").expect("valid run id")
}

fn child(path: &str, at: u64, mode: Mode) -> ExitCode {
    let Ok(inner) = SqliteJournal::open(path) else {
        return ExitCode::from(3);
    };
    let mut journal = KillAt {
        inner,
        at: Some((at, mode)),
        writes: 0,
    };
    let executed = Arc::new(Mutex::new(Vec::new()));
    match block_on(job(&executed).run_durable(&mut journal, &run_id())) {
        Ok(_) => ExitCode::SUCCESS,
        Err(_) => ExitCode::from(4),
    }
}

/// The agents whose outcomes the journal holds: in committed cycles, or committed ahead of
/// the cycle the run was in.
fn committed_agents(recorded: &RecordedRun, names: &[String]) -> BTreeSet<String> {
    let cycles = recorded.steps.iter().filter_map(|step| match &step.input {
        StepInput::Cycle { outcomes, .. } => Some(outcomes.as_slice()),
        _ => None,
    });
    let open = recorded.open.iter().map(|open| open.outcomes.as_slice());
    cycles
        .chain(open)
        .flatten()
        .map(|(agent, _)| names[*agent as usize].clone())
        .collect()
}

/// One kill point: kill the child there, then resume and check.
fn check_kill_point(
    at: u64,
    mode: Mode,
    names: &[String],
    reference: Digest,
) -> Result<Option<BTreeSet<String>>, String> {
    let dir = tempfile::TempDir::new().map_err(|e| e.to_string())?;
    let path = dir.path().join("journal.db");
    let status = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
        .arg("--child")
        .arg(&path)
        .arg(at.to_string())
        .arg(format!("{mode:?}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| e.to_string())?;
    let killed = std::os::unix::process::ExitStatusExt::signal(&status) == Some(9);
    if !killed && !status.success() {
        return Err(format!("the child failed: {status}"));
    }
    let mut journal = SqliteJournal::open(&path).map_err(|e| e.to_string())?;
    let recorded = journal.load(&run_id()).map_err(|e| e.to_string())?;
    let committed = committed_agents(&recorded, names);
    let open: BTreeSet<String> = recorded
        .open
        .iter()
        .flat_map(|open| open.outcomes.iter())
        .map(|(agent, _)| names[*agent as usize].clone())
        .collect();

    let executed = Arc::new(Mutex::new(Vec::new()));
    let mut resumer = job(&executed);
    let root = match block_on(resumer.resume_durable(&mut journal, &run_id())) {
        Ok(result) => result.root_hash,
        Err(DurableError::Finished { .. }) => {
            journal
                .summary(&run_id())
                .map_err(|e| e.to_string())?
                .root_hash
        }
        Err(error) => return Err(format!("resume failed: {error}")),
    };
    if root != reference {
        return Err(format!(
            "resumed to root {root}, not the uninterrupted {reference}"
        ));
    }
    match journal.verify(&run_id()).map_err(|e| e.to_string())? {
        Verification::Intact { root_hash, .. } if root_hash == reference => {}
        other => return Err(format!("the journal does not verify: {other:?}")),
    }
    let executed: Vec<String> = executed.lock().map_err(|e| e.to_string())?.clone();
    let again: BTreeSet<String> = executed.iter().cloned().collect();
    if again.len() != executed.len() {
        return Err(format!(
            "an agent executed twice during resume: {executed:?}"
        ));
    }
    let expected: BTreeSet<String> = names
        .iter()
        .filter(|name| !committed.contains(*name))
        .cloned()
        .collect();
    if again != expected {
        return Err(format!(
            "resume executed {again:?}, but the agents without committed outcomes are \
             {expected:?}"
        ));
    }
    Ok(killed.then_some(open))
}

fn parent() -> Result<String, String> {
    let executed = Arc::new(Mutex::new(Vec::new()));
    let names: Vec<String> = (0..LAYERS)
        .flat_map(|layer| {
            AGENTS
                .iter()
                .map(move |(letter, _)| format!("{letter}{layer}"))
        })
        .collect();

    // The uninterrupted run: its root hash, and how many writes it makes.
    let dir = tempfile::TempDir::new().map_err(|e| e.to_string())?;
    let inner = SqliteJournal::open(dir.path().join("journal.db")).map_err(|e| e.to_string())?;
    let mut counting = KillAt {
        inner,
        at: None,
        writes: 0,
    };
    let reference = block_on(job(&executed).run_durable(&mut counting, &run_id()))
        .map_err(|e| e.to_string())?;
    if !reference.converged || reference.context.len() != names.len() {
        return Err(format!(
            "the reference run is wrong: {:?}",
            reference.stop_reason
        ));
    }
    let writes = counting.writes;
    // start + per cycle (a's outcome, b's outcome, the cycle with c's) + stop, unless a stall
    // of this machine let a and b finish in one poll (they are then committed together).
    if writes <= (2 + LAYERS) as u64 {
        return Err(format!(
            "no outcome was committed ahead of its cycle: {writes} writes for {LAYERS} cycles"
        ));
    }
    let points: Vec<(u64, Mode)> = (0..writes)
        .flat_map(|at| [(at, Mode::Before), (at, Mode::After)])
        .collect();
    let mut results = Vec::with_capacity(points.len());
    for group in points.chunks(PARALLEL_MAX) {
        std::thread::scope(|scope| {
            let handles: Vec<_> = group
                .iter()
                .map(|&(at, mode)| {
                    let names = &names;
                    let root = reference.root_hash;
                    scope.spawn(move || (at, mode, check_kill_point(at, mode, names, root)))
                })
                .collect();
            for handle in handles {
                if let Ok(result) = handle.join() {
                    results.push(result);
                }
            }
        });
    }
    if results.len() != points.len() {
        return Err("a kill point's check panicked".to_owned());
    }
    let mut kills = 0;
    let mut between = 0;
    let mut only_c = false;
    let mut failures = Vec::new();
    for (at, mode, result) in results {
        match result {
            Ok(Some(open)) => {
                kills += 1;
                if !open.is_empty() {
                    between += 1;
                }
                if open == BTreeSet::from(["a0".to_owned(), "b0".to_owned()]) {
                    only_c = true;
                }
            }
            Ok(None) => {}
            Err(error) => failures.push(format!("kill at write {at} ({mode:?}): {error}")),
        }
    }
    if !failures.is_empty() {
        return Err(failures.join("\n"));
    }
    if kills < 50 {
        return Err(format!(
            "only {kills} kill points landed; at least 50 are required"
        ));
    }
    if between == 0 || !only_c {
        return Err(format!(
            "no kill landed between an agent's commit and its cycle's ({between}), or none \
             while c0 ran after a0 and b0 committed ({only_c})"
        ));
    }
    Ok(format!(
        "kill points: {kills} SIGKILLs over {writes} writes, {between} between an agent's commit \
         and its cycle's; resume executed exactly the uncommitted agents every time"
    ))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        let (Some(path), Some(at), Some(mode)) = (args.get(2), args.get(3), args.get(4)) else {
            return ExitCode::from(2);
        };
        let mode = if mode == "After" {
            Mode::After
        } else {
            Mode::Before
        };
        return child(path, at.parse().unwrap_or(u64::MAX), mode);
    }
    // `cargo test` passes harness flags (and filters); run unless listing.
    if args.iter().any(|arg| arg == "--list") {
        println!("kill_points: test");
        return ExitCode::SUCCESS;
    }
    match parent() {
        Ok(summary) => {
            println!("{summary}\n1 passed, 0 failed");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("kill points FAILED:\n{error}");
            ExitCode::FAILURE
        }
    }
}
