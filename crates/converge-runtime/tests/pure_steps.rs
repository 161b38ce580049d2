//! Steps of pure agents held back and committed together, under real SIGKILLs at every
//! journal write.
//!
//! The job is a chain of six agents: `p0` and `p1` are pure (declared with
//! [`Runtime::declare_pure`]), `act` acts outside the run (an async agent, not declared), and
//! `q0`, `q1`, `q2` are pure again. A durable drive commits it in three writes: the start and
//! the cycles of `p0` and `p1` together, before `act` runs; `act`'s cycle alone, as soon as it
//! has its outcome; and the cycles of `q0`, `q1`, `q2` with the stop and the lease given up.
//!
//! A child process drives the job and sends itself SIGKILL just before, or just after, one
//! chosen write. For each kill point the parent checks that what the journal holds is a whole
//! prefix of the run's steps (none, three, four or all eight), then resumes the run
//! in-process and checks that:
//! - exactly the agents whose cycles were not committed executed again — in particular `act`
//!   never executes twice once its cycle is committed;
//! - the run ends with the root hash of an uninterrupted run, the journal verifies, and a
//!   replay re-derives every event without executing anything.
//!
//! This file is its own test harness (`harness = false`): run as `pure_steps --child PATH K
//! MODE` it is the child; otherwise it is the parent.

use std::collections::BTreeSet;
use std::process::{Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use converge_core::{
    Agent, AgentEffect, AuthorityScope, Context, ContextKey, Digest, Engine, Proposal,
};
use converge_runtime::{
    AgentFuture, AsyncAgent, DurableError, Journal, RecordedRun, ReplayReport, RunId, Runtime,
    SqliteJournal, StepInput,
};

#[path = "support/kill_at.rs"]
mod kill_at;

use converge_runtime::Verification;
use kill_at::{KillAt, Mode, block_on};

/// The agents, in chain order, and whether each is pure.
const AGENTS: [(&str, bool); 6] = [
    ("p0", true),
    ("p1", true),
    ("act", false),
    ("q0", true),
    ("q1", true),
    ("q2", true),
];

/// Steps of the whole run: the start, one cycle per agent, the stop.
const STEPS: u64 = 8;

/// What a crash may leave: whole groups of steps, never part of one.
const PREFIXES: [u64; 4] = [0, 3, 4, STEPS];

/// Kill points checked at once.
const PARALLEL_MAX: usize = 4;

type Executed = Arc<Mutex<Vec<String>>>;

/// A link of the chain: proposes its own signal once the links before it have theirs.
struct Link {
    name: &'static str,
    position: usize,
    executed: Executed,
}

impl Link {
    fn effect(&self) -> AgentEffect {
        if let Ok(mut executed) = self.executed.lock() {
            executed.push(self.name.to_owned());
        }
        AgentEffect::empty().with_proposal(Proposal::new(
            ContextKey::Signals,
            self.name,
            self.position,
        ))
    }

    fn accepts(&self, ctx: &Context) -> bool {
        ctx.count(ContextKey::Signals) == self.position
    }
}

impl Agent for Link {
    fn name(&self) -> &str {
        self.name
    }

    fn dependencies(&self) -> &[ContextKey] {
        &[ContextKey::Signals]
    }

    fn requested_scope(&self) -> AuthorityScope {
        AuthorityScope::keys([ContextKey::Signals])
    }

    fn accepts(&self, ctx: &Context) -> bool {
        Link::accepts(self, ctx)
    }

    fn execute(&self, _ctx: &Context) -> AgentEffect {
        self.effect()
    }
}

/// The link that acts outside the run (it stands for a command or a model call).
struct Acting(Link);

impl AsyncAgent for Acting {
    fn name(&self) -> &str {
        self.0.name
    }

    fn dependencies(&self) -> &[ContextKey] {
        &[ContextKey::Signals]
    }

    fn requested_scope(&self) -> AuthorityScope {
        AuthorityScope::keys([ContextKey::Signals])
    }

    fn accepts(&self, ctx: &Context) -> bool {
        self.0.accepts(ctx)
    }

    fn execute<'a>(&'a self, _ctx: &'a Context) -> AgentFuture<'a> {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(2)).await;
            self.0.effect()
        })
    }
}

fn job(executed: &Executed) -> Runtime {
    let mut runtime = Runtime::new(Engine::new());
    for (position, (name, pure)) in AGENTS.into_iter().enumerate() {
        let link = Link {
            name,
            position,
            executed: executed.clone(),
        };
        if pure {
            let id = runtime.engine_mut().register(link);
            runtime.declare_pure(id);
        } else {
            runtime.register_async(Acting(link));
        }
    }
    runtime
}

fn run_id() -> RunId {
    RunId::new("pure-steps").expect("valid run id")
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

/// The agents whose cycles the journal holds.
fn committed_agents(recorded: &RecordedRun) -> BTreeSet<String> {
    recorded
        .steps
        .iter()
        .filter_map(|step| match &step.input {
            StepInput::Cycle { outcomes, .. } => Some(outcomes.as_slice()),
            _ => None,
        })
        .flatten()
        .map(|(agent, _)| AGENTS[*agent as usize].0.to_owned())
        .collect()
}

/// One kill point: kill the child there, then check what it left, resume and check again.
/// Says whether the child was killed.
fn check_kill_point(at: u64, mode: Mode, reference: Digest) -> Result<bool, String> {
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
    let steps = recorded.steps.len() as u64;
    if !PREFIXES.contains(&steps) {
        return Err(format!(
            "the journal holds {steps} steps, not a whole group of them ({PREFIXES:?})"
        ));
    }
    let committed = committed_agents(&recorded);

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
    match resumer.replay(&journal, &run_id()) {
        Ok(ReplayReport::Identical { root_hash, .. }) if root_hash == reference => {}
        other => return Err(format!("the replay differs: {other:?}")),
    }
    let executed: Vec<String> = executed.lock().map_err(|e| e.to_string())?.clone();
    let again: BTreeSet<String> = executed.iter().cloned().collect();
    if again.len() != executed.len() {
        return Err(format!(
            "an agent executed twice during resume: {executed:?}"
        ));
    }
    let expected: BTreeSet<String> = AGENTS
        .iter()
        .map(|(name, _)| (*name).to_owned())
        .filter(|name| !committed.contains(name))
        .collect();
    if again != expected {
        return Err(format!(
            "resume executed {again:?}, but the agents without committed cycles are \
             {expected:?}"
        ));
    }
    Ok(killed)
}

fn parent() -> Result<String, String> {
    // The uninterrupted run: its root hash, and how many writes it makes.
    let dir = tempfile::TempDir::new().map_err(|e| e.to_string())?;
    let inner = SqliteJournal::open(dir.path().join("journal.db")).map_err(|e| e.to_string())?;
    let mut counting = KillAt {
        inner,
        at: None,
        writes: 0,
    };
    let executed = Arc::new(Mutex::new(Vec::new()));
    let reference = block_on(job(&executed).run_durable(&mut counting, &run_id()))
        .map_err(|e| e.to_string())?;
    if !reference.converged || reference.context.len() != AGENTS.len() {
        return Err(format!(
            "the reference run is wrong: {:?}",
            reference.stop_reason
        ));
    }
    let summary = counting.summary(&run_id()).map_err(|e| e.to_string())?;
    if summary.steps != STEPS || summary.lease.is_some() {
        return Err(format!(
            "the reference run left {} steps and lease {:?}",
            summary.steps, summary.lease
        ));
    }
    // The pure steps before `act`, `act`'s cycle, the pure steps after it with the stop.
    let writes = counting.writes;
    if writes != 3 {
        return Err(format!(
            "{writes} writes for {STEPS} steps; the pure steps were not committed together"
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
                    let root = reference.root_hash;
                    scope.spawn(move || (at, mode, check_kill_point(at, mode, root)))
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
    let mut failures = Vec::new();
    for (at, mode, result) in results {
        match result {
            Ok(killed) => kills += usize::from(killed),
            Err(error) => failures.push(format!("kill at write {at} ({mode:?}): {error}")),
        }
    }
    if !failures.is_empty() {
        return Err(failures.join("\n"));
    }
    if kills != points.len() {
        return Err(format!(
            "only {kills} of {} kill points landed",
            points.len()
        ));
    }
    Ok(format!(
        "pure steps: {kills} SIGKILLs over {writes} writes for {STEPS} steps; every crash left \
         whole groups of steps, and resume executed exactly the agents of uncommitted cycles"
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
        println!("pure_steps: test");
        return ExitCode::SUCCESS;
    }
    match parent() {
        Ok(summary) => {
            println!("test pure_steps ... ok\n{summary}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            println!("test pure_steps ... FAILED\n{error}");
            ExitCode::FAILURE
        }
    }
}
