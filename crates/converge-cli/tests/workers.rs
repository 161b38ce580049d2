//! Workers on one PostgreSQL journal, SIGKILLed again and again: 200 runs submitted, three
//! `converge worker` processes driving them, one of them killed every quarter second (at
//! least 30 kills) and started again. Every run finishes with the root hash of the same job
//! run by one `converge run`, every run verifies, a sample replays identically, and the
//! agents executed at most once more than needed per run a kill cut short. Then a worker
//! stopped with SIGSTOP past its lease, and continued after another worker took its run
//! over, has its next commit refused.
//!
//! Its own harness (`harness = false`) so the cluster and the workers are always stopped.

#[path = "../../converge-journal/tests/support/cluster.rs"]
mod cluster;
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{converge, text};
use converge_runtime::{Journal, LEASE_TTL_MS, PostgresJournal, RunId, Verification};
use serde_json::Value;

use cluster::Cluster;

/// Runs submitted in the kill test.
const RUNS: usize = 200;
/// Worker processes in the kill test.
const WORKERS: usize = 3;
/// Slots of each worker.
const SLOTS: usize = 4;
/// Kills at least.
const KILLS_MIN: usize = 30;

/// A three-cycle job whose two command agents each note their execution in `log` and take
/// `pause` seconds.
fn job(log: &Path, pause: &str) -> String {
    let log = log.display();
    format!(
        r#"version: 1
intent:
  objective: Count slowly
  budgets: {{cycles: 10}}
agents:
  - name: first
    kind: rule
    writes: [signals]
    when: "true"
    propose: {{key: signals, id: one, content: 1}}
  - name: second
    kind: command
    reads: [signals]
    writes: [hypotheses]
    command: [sh, -c, "sleep {pause}; echo second >> {log}; cat > /dev/null; echo '{{\"proposals\":[{{\"key\":\"hypotheses\",\"id\":\"two\",\"content\":2}}]}}'"]
    timeout_ms: 60000
  - name: third
    kind: command
    reads: [hypotheses]
    writes: [strategies]
    command: [sh, -c, "sleep {pause}; echo third >> {log}; cat > /dev/null; echo '{{\"proposals\":[{{\"key\":\"strategies\",\"id\":\"three\",\"content\":3}}]}}'"]
    timeout_ms: 60000
"#
    )
}

fn code(output: &std::process::Output) -> i32 {
    output.status.code().expect("exited, not killed")
}

fn runs(db: &Path) -> Vec<Value> {
    let output = converge(db, &["runs", "--json"]);
    assert_eq!(code(&output), 0, "{}", text(&output.stderr));
    serde_json::from_slice::<Value>(&output.stdout)
        .ok()
        .and_then(|runs| runs.as_array().cloned())
        .unwrap_or_default()
}

fn executions(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .map(|text| text.lines().count())
        .unwrap_or(0)
}

/// A `converge worker` whose stderr goes to `log`.
fn worker(url: &str, slots: usize, log: &Path) -> Child {
    let stderr = std::fs::File::create(log).expect("a log file");
    Command::new(env!("CARGO_BIN_EXE_converge"))
        .args(["--db", url, "worker", "--concurrency", &slots.to_string()])
        .env_remove("CONVERGE_DB")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("a worker starts")
}

/// Kills and reaps a process, whatever state it is in.
fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// The root hash of `spec` run by one process into a file.
fn reference_root(dir: &Path, spec: &Path) -> Value {
    let file = dir.join("reference.db");
    let run = converge(
        &file,
        &["run", &spec.to_string_lossy(), "--id", "reference"],
    );
    assert_eq!(code(&run), 0, "{}{}", text(&run.stdout), text(&run.stderr));
    runs(&file)[0]["root_hash"].clone()
}

/// A deterministic stream of numbers (a linear congruential generator), so a failure can be
/// reproduced.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, sides: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % sides
    }
}

fn workers_killed_again_and_again_lose_nothing(cluster: &Cluster) {
    let dir = tempfile::tempdir().expect("a directory");
    let log = dir.path().join("executions.log");
    let spec = dir.path().join("count.yaml");
    std::fs::write(&spec, job(&log, "0.8")).expect("spec written");
    let reference = reference_root(dir.path(), &spec);
    std::fs::remove_file(&log).expect("the reference's executions forgotten");

    let url = cluster.database("workers").expect("a database");
    let db = Path::new(&url);
    for index in 0..RUNS {
        let id = format!("count-{index}");
        let submit = converge(db, &["submit", &spec.to_string_lossy(), "--id", &id]);
        assert_eq!(code(&submit), 0, "{}", text(&submit.stderr));
    }

    let logs: Vec<PathBuf> = (0..WORKERS)
        .map(|index| dir.path().join(format!("worker-{index}.log")))
        .collect();
    let journal = PostgresJournal::open_read_only(&url).expect("the journal opens");
    let mut workers: Vec<Child> = logs.iter().map(|log| worker(&url, SLOTS, log)).collect();
    let mut dice = Dice(0x5eed);
    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    let finished = loop {
        std::thread::sleep(Duration::from_millis(250));
        let stopped = journal
            .runs()
            .expect("runs listed")
            .iter()
            .filter(|run| run.status.name() == "stopped")
            .count();
        if stopped == RUNS {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        if kills < KILLS_MIN {
            let victim = usize::try_from(dice.roll(WORKERS as u64)).expect("small");
            kill(&mut workers[victim]);
            kills += 1;
            workers[victim] = worker(&url, SLOTS, &logs[victim]);
        }
    };
    for worker in &mut workers {
        kill(worker);
    }
    assert!(finished, "the runs did not all finish in time");
    assert!(
        kills >= KILLS_MIN,
        "only {kills} kills: the runs finished first"
    );

    let rows = runs(db);
    assert_eq!(rows.len(), RUNS);
    for row in &rows {
        assert_eq!(row["root_hash"], reference, "run {} differs", row["run"]);
        let id = RunId::new(row["run"].as_str().expect("an id")).expect("valid");
        match journal.verify(&id).expect("verify reads") {
            Verification::Intact { .. } => {}
            Verification::Broken { at, reason } => panic!("run {id}: broken at {at}: {reason}"),
        }
    }
    for index in (0..RUNS).step_by(40) {
        let replay = converge(db, &["replay", &format!("count-{index}"), "--json"]);
        assert_eq!(code(&replay), 0, "{}", text(&replay.stdout));
    }
    // Each kill cuts short at most the agents its worker's slots were running.
    let needed = 2 * RUNS;
    let executed = executions(&log);
    assert!(
        executed >= needed && executed <= needed + kills * SLOTS,
        "{executed} executions for {needed} needed and {kills} kills"
    );
}

fn a_worker_paused_past_its_lease_cannot_commit(cluster: &Cluster) {
    let dir = tempfile::tempdir().expect("a directory");
    let log = dir.path().join("executions.log");
    let spec = dir.path().join("slow.yaml");
    let pause_s = LEASE_TTL_MS / 1000 / 3;
    std::fs::write(&spec, job(&log, &pause_s.to_string())).expect("spec written");
    let url = cluster.database("paused").expect("a database");
    let db = Path::new(&url);
    let submit = converge(db, &["submit", &spec.to_string_lossy(), "--id", "slow-1"]);
    assert_eq!(code(&submit), 0, "{}", text(&submit.stderr));

    let first_log = dir.path().join("first.log");
    let mut first = worker(&url, 1, &first_log);
    let deadline = Instant::now() + Duration::from_secs(60);
    while runs(db)[0]["steps"].as_u64().unwrap_or(0) < 2 {
        assert!(
            Instant::now() < deadline,
            "the first worker never started the run"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Paused while its agent works: its lease is no longer renewed.
    let pid = first.id().to_string();
    let stop = Command::new("kill").args(["-STOP", &pid]).status();
    assert!(stop.is_ok_and(|status| status.success()));
    std::thread::sleep(Duration::from_millis(LEASE_TTL_MS + 1_000));

    let second_log = dir.path().join("second.log");
    let mut second = worker(&url, 1, &second_log);
    let deadline = Instant::now() + Duration::from_secs(120);
    while runs(db)[0]["status"]["status"] != "stopped" {
        assert!(
            Instant::now() < deadline,
            "the second worker never finished the run: {:?}\nfirst: {}\nsecond: {}",
            runs(db)[0],
            std::fs::read_to_string(&first_log).unwrap_or_default(),
            std::fs::read_to_string(&second_log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let resume = Command::new("kill").args(["-CONT", &pid]).status();
    assert!(resume.is_ok_and(|status| status.success()));
    // The first worker's agent ends, and its commit is refused.
    let deadline = Instant::now() + Duration::from_secs(60);
    let said = loop {
        let said = std::fs::read_to_string(&first_log).unwrap_or_default();
        if said.contains("run slow-1:") || Instant::now() > deadline {
            break said;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    kill(&mut first);
    kill(&mut second);
    assert!(
        said.contains("no longer holds its lease"),
        "the paused worker was not refused: {said}"
    );
    let journal = PostgresJournal::open_read_only(&url).expect("the journal opens");
    let id = RunId::new("slow-1").expect("valid");
    assert!(matches!(
        journal.verify(&id).expect("verify reads"),
        Verification::Intact { .. }
    ));
}

const CASES: &[cluster::Case] = &[
    (
        "workers_killed_again_and_again_lose_nothing",
        workers_killed_again_and_again_lose_nothing,
    ),
    (
        "a_worker_paused_past_its_lease_cannot_commit",
        a_worker_paused_past_its_lease_cannot_commit,
    ),
];

fn main() {
    cluster::run_cases("workers", CASES);
}
