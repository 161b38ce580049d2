//! Servers and workers on any number of processes, sharing one PostgreSQL database: two
//! `converge serve` replicas take submissions and decisions and drive nothing; three
//! `converge worker` processes drive every run, SIGKILLed again and again.
//!
//! - 200 runs submitted through both replicas finish with the root hash of the same job run
//!   by one `converge run`, verify, replay, and no agent ran more than a kill can explain;
//! - approvals of one parked proposal raced from both replicas: exactly one wins, and the
//!   run goes on in a worker;
//! - an event stream opened on one replica follows a run submitted through the other and
//!   driven by a worker started after the stream opened, each event within milliseconds of
//!   its commit;
//! - PostgreSQL restarted (`pg_ctl restart -m fast`) while workers drive: servers and
//!   workers reconnect, every run finishes, and nothing committed is lost.
//!
//! Its own harness (`harness = false`) so the cluster, servers and workers are always stopped.

#[path = "../../converge-journal/tests/support/cluster.rs"]
mod cluster;
mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use common::{converge, text};
use converge_runtime::{Journal, PostgresJournal, RunId, RunStatus, Verification};
use serde_json::{Value, json};

use cluster::Cluster;

/// Runs submitted in the kill test.
const RUNS: usize = 200;
/// Worker processes.
const WORKERS: usize = 3;
/// Slots of each worker.
const SLOTS: usize = 4;
/// Kills at least.
const KILLS_MIN: usize = 30;

/// A three-cycle job whose two command agents each note their execution in `log` and sleep
/// `$CONVERGE_TEST_PAUSE` seconds (unset: none), so the same spec text runs slowly under the
/// workers and quickly in the one-process reference.
fn job(log: &Path) -> String {
    let log = log.display();
    let agent = |name: &str, reads: &str, writes: &str, id: &str, content: u32| {
        format!(
            r#"  - name: {name}
    kind: command
    reads: [{reads}]
    writes: [{writes}]
    pass_env: [CONVERGE_TEST_PAUSE]
    command: [sh, -c, "sleep ${{CONVERGE_TEST_PAUSE:-0}}; echo {name} >> {log}; cat > /dev/null; echo '{{\"proposals\":[{{\"key\":\"{writes}\",\"id\":\"{id}\",\"content\":{content}}}]}}'"]
    timeout_ms: 60000
"#
        )
    };
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
{}{}"#,
        agent("second", "signals", "hypotheses", "two", 2),
        agent("third", "hypotheses", "strategies", "three", 3)
    )
}

/// Children killed and reaped when the case ends, however it ends.
#[derive(Default)]
struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            kill(child);
        }
    }
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A `converge` process on `url` with its stderr in `log`.
fn spawn(url: &str, args: &[&str], log: &Path, pause: Option<&str>) -> Child {
    let stderr = std::fs::File::create(log).expect("a log file");
    let mut command = Command::new(env!("CARGO_BIN_EXE_converge"));
    command
        .args(["--db", url])
        .args(args)
        .env_remove("CONVERGE_DB")
        .env_remove("CONVERGE_TEST_PAUSE")
        .stdout(Stdio::null())
        .stderr(stderr);
    if let Some(pause) = pause {
        command.env("CONVERGE_TEST_PAUSE", pause);
    }
    command.spawn().expect("converge starts")
}

/// A worker whose agents pause `pause` seconds.
fn worker(url: &str, log: &Path, pause: &str) -> Child {
    spawn(
        url,
        &["worker", "--concurrency", &SLOTS.to_string()],
        log,
        Some(pause),
    )
}

/// A server replica, kept in `processes`; its base URL once it listens.
fn server(processes: &mut Processes, url: &str, log: &Path, jobs: &Path) -> String {
    let jobs = jobs.to_string_lossy();
    processes.0.push(spawn(
        url,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--allow-commands",
            "--jobs-dir",
            &jobs,
        ],
        log,
        None,
    ));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let said = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(rest) = said.split("serving http://").nth(1) {
            let address = rest.split_whitespace().next().unwrap_or_default();
            return format!("http://{address}");
        }
        assert!(
            Instant::now() < deadline,
            "the server did not start: {said}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One database with server replicas on it, and tokens of tenant `acme` for sam (a
/// submitter) and alice (an approver), in a directory of its own.
struct Deployment {
    dir: tempfile::TempDir,
    /// Where the servers place submitted specs.
    jobs: PathBuf,
    url: String,
    sam: String,
    alice: String,
    /// The servers first, then whatever the case starts.
    processes: Processes,
    /// Each replica's base URL.
    bases: Vec<String>,
}

fn deploy(cluster: &Cluster, purpose: &str, replicas: usize) -> Deployment {
    let dir = tempfile::tempdir().expect("a directory");
    let jobs = dir.path().join("jobs");
    std::fs::create_dir(&jobs).expect("a jobs directory");
    let url = cluster.database(purpose).expect("a database");
    let sam = token(&url, "sam", "submitter");
    let alice = token(&url, "alice", "approver");
    let mut processes = Processes::default();
    let bases = (0..replicas)
        .map(|replica| {
            let log = dir.path().join(format!("server-{replica}.log"));
            server(&mut processes, &url, &log, &jobs)
        })
        .collect();
    Deployment {
        dir,
        jobs,
        url,
        sam,
        alice,
        processes,
        bases,
    }
}

/// A token made with `converge token create` on the shared database.
fn token(url: &str, name: &str, role: &str) -> String {
    let output = converge(
        Path::new(url),
        &[
            "token", "create", "--tenant", "acme", "--name", name, "--role", role, "--json",
        ],
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let made: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    made["token"].as_str().expect("a token").to_owned()
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("an HTTP client")
}

/// Submits `spec` as run `id` through `base`, trying again while the server cannot answer
/// (a database restarting): the status it finally answered.
fn submit(base: &str, secret: &str, id: &str, spec: &str) -> u16 {
    const TRIES: usize = 60;
    for tries in 1.. {
        let answer = client()
            .post(format!("{base}/v1/runs?id={id}"))
            .bearer_auth(secret)
            .header("content-type", "application/yaml")
            .body(spec.to_owned())
            .send();
        match answer {
            Ok(answer) if answer.status().as_u16() < 500 || tries >= TRIES => {
                return answer.status().as_u16();
            }
            Err(error) if tries >= TRIES => panic!("submitting {id}: {error}"),
            _ => std::thread::sleep(Duration::from_millis(500)),
        }
    }
    unreachable!("the loop returns")
}

fn get(base: &str, secret: &str, path: &str) -> (u16, Value) {
    let answer = client()
        .get(format!("{base}{path}"))
        .bearer_auth(secret)
        .send()
        .expect("the server answers");
    let status = answer.status().as_u16();
    (status, answer.json().unwrap_or(Value::Null))
}

/// Waits until every run in the journal has stopped for good (or `deadline`), killing a
/// random worker every quarter second until `kills` reach `kills_min`; true when they did.
fn drive_to_the_end(
    journal: &PostgresJournal,
    expected: usize,
    workers: &mut [Child],
    restart: &mut dyn FnMut(usize) -> Child,
    kills_min: usize,
    kills: &mut usize,
) -> bool {
    let mut dice = Dice(0x5eed);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let stopped = journal.runs().map_or(0, |runs| {
            runs.iter()
                .filter(|run| matches!(run.status, RunStatus::Stopped { .. }))
                .count()
        });
        if stopped == expected {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        if *kills < kills_min {
            let victim = usize::try_from(dice.roll(workers.len() as u64)).expect("small");
            kill(&mut workers[victim]);
            *kills += 1;
            workers[victim] = restart(victim);
        }
    }
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

/// Every run in the journal verifies.
fn all_verify(journal: &PostgresJournal) {
    for run in journal.runs().expect("runs listed") {
        match journal.verify(&run.id).expect("verify reads") {
            Verification::Intact { .. } => {}
            Verification::Broken { at, reason } => {
                panic!("run {}: broken at {at}: {reason}", run.id)
            }
        }
    }
}

fn two_servers_and_three_workers_killed_again_and_again_lose_nothing(cluster: &Cluster) {
    let Deployment {
        dir,
        jobs,
        url,
        sam,
        mut processes,
        bases,
        ..
    } = deploy(cluster, "scale", 2);
    let log = dir.path().join("executions.log");
    let spec = job(&log);
    for index in 0..RUNS {
        let base = &bases[index % 2];
        let status = submit(base, &sam, &format!("count-{index}"), &spec);
        assert_eq!(status, 201, "submitting count-{index} through {base}");
    }
    // Nothing ran yet: submissions are left to the workers.
    assert_eq!(std::fs::read_to_string(&log).unwrap_or_default(), "");

    let logs: Vec<PathBuf> = (0..WORKERS)
        .map(|index| dir.path().join(format!("worker-{index}.log")))
        .collect();
    let mut workers: Vec<Child> = logs.iter().map(|log| worker(&url, log, "0.8")).collect();
    let journal = PostgresJournal::open_read_only(&url).expect("the journal opens");
    let mut kills = 0;
    let finished = drive_to_the_end(
        &journal,
        RUNS,
        &mut workers,
        &mut |victim| worker(&url, &logs[victim], "0.8"),
        KILLS_MIN,
        &mut kills,
    );
    processes.0.extend(workers);
    assert!(finished, "the runs did not all finish in time");
    assert!(
        kills >= KILLS_MIN,
        "only {kills} kills: the runs finished first"
    );
    let executed = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .count();

    // The same job, run by one process with the same id and spec file, has the same root.
    let reference = dir.path().join("reference.db");
    let (status, listed) = get(&bases[1], &sam, "/v1/runs?limit=200");
    assert_eq!(status, 200);
    assert_eq!(listed["runs"].as_array().map(Vec::len), Some(RUNS));
    for index in 0..RUNS {
        let id = format!("count-{index}");
        let file = jobs.join(format!("{id}.yaml"));
        std::fs::write(&file, &spec).expect("the spec written");
        let run = converge(
            &reference,
            &[
                "run",
                &file.to_string_lossy(),
                "--id",
                &format!("acme-{id}"),
            ],
        );
        assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
        let (status, shared) = get(&bases[index % 2], &sam, &format!("/v1/runs/{id}"));
        assert_eq!(status, 200);
        let one = journal
            .summary(&RunId::new(&format!("acme-{id}")).expect("valid"))
            .expect("the run");
        let alone = converge_runtime::SqliteJournal::open_read_only(&reference)
            .and_then(|reference| {
                reference.summary(&RunId::new(&format!("acme-{id}")).expect("valid"))
            })
            .expect("the reference run");
        assert_eq!(one.root_hash, alone.root_hash, "run {id} differs");
        assert_eq!(shared["root_hash"], json!(one.root_hash.to_string()));
        assert_eq!(shared["status"], "stopped");
    }
    all_verify(&journal);
    for index in (0..RUNS).step_by(40) {
        let replay = converge(
            Path::new(&url),
            &["replay", &format!("acme-count-{index}"), "--json"],
        );
        assert_eq!(replay.status.code(), Some(0), "{}", text(&replay.stdout));
    }
    // Each kill cuts short at most the agents its worker's slots were running.
    let needed = 2 * RUNS;
    assert!(
        executed >= needed && executed <= needed + kills * SLOTS,
        "{executed} executions for {needed} needed and {kills} kills"
    );
}

fn approvals_raced_from_both_replicas_one_wins(cluster: &Cluster) {
    let Deployment {
        dir,
        url,
        sam,
        alice,
        mut processes,
        bases,
        ..
    } = deploy(cluster, "race", 2);
    let spec = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/release-approval.yaml"),
    )
    .expect("the example");
    const RACES: usize = 8;
    for index in 0..RACES {
        assert_eq!(
            submit(&bases[index % 2], &sam, &format!("release-{index}"), &spec),
            201
        );
    }
    processes
        .0
        .push(worker(&url, &dir.path().join("worker.log"), "0"));
    let journal = PostgresJournal::open_read_only(&url).expect("the journal opens");
    let parked = |journal: &PostgresJournal| {
        journal.runs().map_or(0, |runs| {
            runs.iter()
                .filter(|run| run.status == RunStatus::AwaitingApproval)
                .count()
        })
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while parked(&journal) < RACES {
        assert!(Instant::now() < deadline, "the runs never parked");
        std::thread::sleep(Duration::from_millis(100));
    }
    for index in 0..RACES {
        let id = format!("release-{index}");
        let (status, pending) = get(&bases[0], &alice, &format!("/v1/runs/{id}/approvals"));
        assert_eq!(status, 200, "{pending}");
        let parked = &pending["pending"][0];
        let proposal = parked["proposal"].as_str().expect("a proposal").to_owned();
        let hash = parked["hash"].as_str().expect("a hash").to_owned();
        let start = Arc::new(Barrier::new(2));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let racers: Vec<_> = bases
            .iter()
            .map(|base| {
                let (base, alice, id) = (base.clone(), alice.clone(), id.clone());
                let (proposal, hash) = (proposal.clone(), hash.clone());
                let (start, answers) = (start.clone(), answers.clone());
                std::thread::spawn(move || {
                    let request = client()
                        .post(format!("{base}/v1/runs/{id}/approvals/{proposal}/approve"))
                        .bearer_auth(&alice)
                        .json(&json!({ "hash": hash }));
                    start.wait();
                    let answer = request.send().expect("the server answers");
                    answers
                        .lock()
                        .expect("answers")
                        .push(answer.status().as_u16());
                })
            })
            .collect();
        for racer in racers {
            racer.join().expect("the racer ran");
        }
        let mut answers = answers.lock().expect("answers").clone();
        answers.sort_unstable();
        assert_eq!(answers, vec![200, 409], "run {id}: one approval wins");
        let (_, decisions) = get(&bases[1], &alice, &format!("/v1/runs/{id}/decisions"));
        let outcomes: Vec<&str> = decisions["decisions"]
            .as_array()
            .expect("decisions")
            .iter()
            .filter_map(|decision| decision["outcome"].as_str())
            .collect();
        assert_eq!(outcomes.iter().filter(|o| **o == "accepted").count(), 1);
        assert_eq!(outcomes.len(), 2, "both attempts recorded: {decisions}");
    }
    // The workers take the approved runs to their end, each release approved once.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let stopped = journal
            .runs()
            .expect("runs")
            .iter()
            .all(|run| matches!(&run.status, RunStatus::Stopped { .. }));
        if stopped {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the approved runs did not finish: {:?}",
            journal.runs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for index in 0..RACES {
        let id = format!("release-{index}");
        let (status, facts) = get(&bases[index % 2], &alice, &format!("/v1/runs/{id}/facts"));
        assert_eq!(status, 200);
        let releases = facts["facts"]
            .as_array()
            .expect("facts")
            .iter()
            .filter(|fact| fact["key"] == "releases")
            .count();
        assert_eq!(releases, 1, "run {id}: {facts}");
    }
    all_verify(&journal);
}

fn a_stream_on_one_replica_follows_a_worker_started_after_it(cluster: &Cluster) {
    let Deployment {
        dir,
        url,
        sam,
        mut processes,
        bases,
        ..
    } = deploy(cluster, "stream", 2);
    let (base_a, base_b) = (&bases[0], &bases[1]);
    let spec = job(&dir.path().join("executions.log"));
    assert_eq!(submit(base_b, &sam, "followed", &spec), 201);

    let stream = client()
        .get(format!("{base_a}/v1/runs/followed/events"))
        .bearer_auth(&sam)
        .header("accept", "text/event-stream")
        .send()
        .expect("the stream opens");
    assert_eq!(stream.status().as_u16(), 200);

    // When each event was first seen committed, looking at the journal every few ms.
    let journal = PostgresJournal::open_read_only(&url).expect("the journal opens");
    let run = RunId::new("acme-followed").expect("valid");
    let committed_at: Arc<Mutex<Vec<Instant>>> = Arc::new(Mutex::new(Vec::new()));
    let watcher = {
        let committed_at = committed_at.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            while Instant::now() < deadline {
                if let Ok(summary) = journal.summary(&run) {
                    let mut seen = committed_at.lock().expect("times");
                    while (seen.len() as u64) < summary.events {
                        seen.push(Instant::now());
                    }
                    if matches!(summary.status, RunStatus::Stopped { .. }) {
                        return;
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    // The worker starts after the stream opened.
    std::thread::sleep(Duration::from_millis(300));
    processes
        .0
        .push(worker(&url, &dir.path().join("worker.log"), "0.3"));

    let mut received: Vec<(u64, Instant)> = Vec::new();
    let mut ended = false;
    for line in BufReader::new(stream).lines() {
        let line = line.expect("the stream reads");
        if let Some(id) = line.strip_prefix("id: ") {
            received.push((id.parse().expect("a seq"), Instant::now()));
        }
        if line == "event: end" {
            ended = true;
            break;
        }
    }
    watcher.join().expect("the watcher ran");
    assert!(ended, "the stream ended without `end`");
    let committed_at = committed_at.lock().expect("times").clone();
    assert_eq!(
        received.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
        (0..committed_at.len() as u64).collect::<Vec<_>>(),
        "every committed event, in order"
    );
    // How long after its commit each event reached the stream (the watcher's own look
    // costs a few ms of that).
    let mut lags: Vec<Duration> = received
        .iter()
        .map(|(seq, at)| at.saturating_duration_since(committed_at[*seq as usize]))
        .collect();
    lags.sort_unstable();
    let median = lags[lags.len() / 2];
    assert!(
        median < Duration::from_millis(100),
        "events reached the stream {median:?} after their commit (median; all: {lags:?})"
    );
}

fn a_cancel_on_a_replica_stops_a_run_a_worker_drives(cluster: &Cluster) {
    let Deployment {
        dir,
        url,
        sam,
        mut processes,
        bases,
        ..
    } = deploy(cluster, "cancel", 1);
    let base = &bases[0];
    let log = dir.path().join("executions.log");
    assert_eq!(submit(base, &sam, "long", &job(&log)), 201);
    let worker_log = dir.path().join("worker.log");
    processes.0.push(worker(&url, &worker_log, "4"));
    let journal = PostgresJournal::open_read_only(&url).expect("the journal opens");
    let run = RunId::new("acme-long").expect("valid");
    // The worker is inside the second cycle: its agent sleeps.
    let deadline = Instant::now() + Duration::from_secs(60);
    while journal.summary(&run).expect("the run").steps < 2 {
        assert!(Instant::now() < deadline, "the worker never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let answer = client()
        .post(format!("{base}/v1/runs/long/cancel"))
        .bearer_auth(&sam)
        .json(&json!({"reason": "no longer needed"}))
        .send()
        .expect("the server answers");
    assert_eq!(answer.status().as_u16(), 202);
    let summary = journal.summary(&run).expect("the run");
    assert_eq!(
        summary.status,
        RunStatus::Stopped {
            reason: json!({"stop": "halted", "reason": "cancelled by sam: no longer needed"})
        },
        "{summary:?}"
    );
    // The worker finds its lease gone and commits nothing more; the last agent never runs.
    let deadline = Instant::now() + Duration::from_secs(60);
    let said = loop {
        let said = std::fs::read_to_string(&worker_log).unwrap_or_default();
        if said.contains("run acme-long:") || Instant::now() > deadline {
            break said;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(said.contains("no longer holds its lease"), "{said}");
    assert_eq!(journal.summary(&run).expect("the run").steps, summary.steps);
    let executed = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!executed.contains("third"), "{executed}");
    all_verify(&journal);
}

fn a_retry_on_a_replica_is_driven_by_a_worker(cluster: &Cluster) {
    let Deployment {
        dir,
        url,
        alice,
        sam,
        mut processes,
        bases,
        ..
    } = deploy(cluster, "retry", 1);
    let base = &bases[0];
    let ready = dir.path().join("ready");
    let calls = dir.path().join("score.calls");
    let script = dir.path().join("score.sh");
    std::fs::write(
        &script,
        format!(
            "cut -d' ' -f4 /proc/$PPID/stat >> {calls}\ncat > /dev/null\n[ -f {ready} ] || {{ echo 'the feed is not ready' >&2; exit 3; }}\necho '{{\"proposals\":[{{\"key\":\"evaluations\",\"id\":\"p2\",\"content\":\"P2\"}}]}}'\n",
            calls = calls.display(),
            ready = ready.display()
        ),
    )
    .expect("the script written");
    let spec = format!(
        "version: 1\nintent:\n  objective: Score once the feed is ready\nagents:\n  - name: score\n    kind: command\n    writes: [evaluations]\n    command: [sh, {}]\n    timeout_ms: 10000\n",
        script.display()
    );
    assert_eq!(submit(base, &sam, "score", &spec), 201);
    processes
        .0
        .push(worker(&url, &dir.path().join("worker.log"), "0"));
    let journal = PostgresJournal::open_read_only(&url).expect("the journal opens");
    let run = RunId::new("acme-score").expect("valid");
    let stopped = |journal: &PostgresJournal| {
        matches!(
            journal.summary(&run).map(|summary| summary.status),
            Ok(RunStatus::Stopped { .. })
        )
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stopped(&journal) {
        assert!(Instant::now() < deadline, "the run never stopped");
        std::thread::sleep(Duration::from_millis(50));
    }
    let steps = journal.summary(&run).expect("the run").steps;
    std::fs::write(&ready, "").expect("the feed is ready");
    let answer = client()
        .post(format!("{base}/v1/runs/score/retry"))
        .bearer_auth(&alice)
        .json(&json!({"agents": ["score"], "reason": "the feed is back"}))
        .send()
        .expect("the server answers");
    let status = answer.status().as_u16();
    let body: Value = answer.json().unwrap_or(Value::Null);
    assert_eq!(status, 202, "{body}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let summary = journal.summary(&run).expect("the run");
        if summary.steps > steps + 1 && matches!(summary.status, RunStatus::Stopped { .. }) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the retried run did not finish: {summary:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, facts) = get(base, &alice, "/v1/runs/score/facts");
    assert!(facts.to_string().contains("\"p2\""), "{facts}");
    // Both executions were the worker's: the server only recorded the retry. (Each agent
    // runs under a launcher, whose parent is the process driving the run.)
    let drivers: Vec<String> = std::fs::read_to_string(&calls)
        .expect("calls")
        .lines()
        .map(str::to_owned)
        .collect();
    let worker_pid = processes.0[1].id().to_string();
    assert_eq!(
        drivers,
        [worker_pid.clone(), worker_pid],
        "who executed the agent"
    );
    all_verify(&journal);
}

fn postgres_restarted_mid_load_loses_nothing(cluster: &Cluster) {
    let Deployment {
        dir,
        url,
        sam,
        mut processes,
        bases,
        ..
    } = deploy(cluster, "restart", 2);
    let log = dir.path().join("executions.log");
    let spec = job(&log);
    const BEFORE: usize = 40;
    const AFTER: usize = 20;
    for index in 0..BEFORE {
        assert_eq!(
            submit(&bases[index % 2], &sam, &format!("before-{index}"), &spec),
            201
        );
    }
    for index in 0..WORKERS {
        processes.0.push(worker(
            &url,
            &dir.path().join(format!("worker-{index}.log")),
            "0.3",
        ));
    }
    let journal = PostgresJournal::open_read_only(&url).expect("the journal opens");
    // Restart once some runs are under way and others not yet.
    let deadline = Instant::now() + Duration::from_secs(120);
    let committed_before = loop {
        let runs = journal.runs().expect("runs");
        let started = runs.iter().filter(|run| run.steps >= 2).count();
        if started >= 8 {
            break runs;
        }
        assert!(Instant::now() < deadline, "the workers never started");
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(journal);
    cluster.restart().expect("PostgreSQL restarts");
    for index in 0..AFTER {
        assert_eq!(
            submit(&bases[index % 2], &sam, &format!("after-{index}"), &spec),
            201,
            "a submission after the restart"
        );
    }
    let journal = PostgresJournal::open_read_only(&url).expect("the journal opens again");
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let runs = journal.runs().expect("runs");
        let stopped = runs
            .iter()
            .filter(|run| matches!(run.status, RunStatus::Stopped { .. }))
            .count();
        if stopped == BEFORE + AFTER {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{stopped} of {} runs finished after the restart",
            BEFORE + AFTER
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // Nothing committed before the restart was lost: every run has at least the steps it had.
    for before in committed_before {
        let now = journal.summary(&before.id).expect("the run");
        assert!(now.steps >= before.steps, "run {} lost steps", before.id);
    }
    all_verify(&journal);
    for base in &bases {
        let (status, listed) = get(base, &sam, "/v1/runs?limit=100");
        assert_eq!(status, 200, "the replica answers after the restart");
        assert_eq!(
            listed["runs"].as_array().map(Vec::len),
            Some(BEFORE + AFTER)
        );
    }
}

const CASES: &[cluster::Case] = &[
    (
        "two_servers_and_three_workers_killed_again_and_again_lose_nothing",
        two_servers_and_three_workers_killed_again_and_again_lose_nothing,
    ),
    (
        "approvals_raced_from_both_replicas_one_wins",
        approvals_raced_from_both_replicas_one_wins,
    ),
    (
        "a_stream_on_one_replica_follows_a_worker_started_after_it",
        a_stream_on_one_replica_follows_a_worker_started_after_it,
    ),
    (
        "a_cancel_on_a_replica_stops_a_run_a_worker_drives",
        a_cancel_on_a_replica_stops_a_run_a_worker_drives,
    ),
    (
        "a_retry_on_a_replica_is_driven_by_a_worker",
        a_retry_on_a_replica_is_driven_by_a_worker,
    ),
    (
        "postgres_restarted_mid_load_loses_nothing",
        postgres_restarted_mid_load_loses_nothing,
    ),
    (
        "a_revoked_token_is_refused_by_every_replica_at_once",
        a_revoked_token_is_refused_by_every_replica_at_once,
    ),
];

/// Replicas keep live tokens in memory; a revocation committed in the database reaches
/// every one of them within moments (its notification), not after a kept token expires.
fn a_revoked_token_is_refused_by_every_replica_at_once(cluster: &Cluster) {
    // Bound, not dropped: the servers run as long as their processes are held.
    let Deployment {
        dir: _dir,
        url,
        processes: _processes,
        bases,
        ..
    } = deploy(cluster, "revoke", 2);
    let output = converge(
        Path::new(&url),
        &[
            "token", "create", "--tenant", "acme", "--name", "carol", "--role", "viewer", "--json",
        ],
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let made: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let secret = made["token"].as_str().expect("a token");
    let id = made["id"].as_str().expect("an id");
    // Used on both replicas, so both keep it.
    for _ in 0..3 {
        for base in &bases {
            assert_eq!(get(base, secret, "/v1/runs").0, 200);
        }
    }
    let output = converge(Path::new(&url), &["token", "revoke", id]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let revoked = Instant::now();
    for base in &bases {
        loop {
            let (status, _) = get(base, secret, "/v1/runs");
            if status == 401 {
                break;
            }
            assert_eq!(status, 200);
            // Far less than the time a kept token lives when no revocation is heard (5 s).
            assert!(
                revoked.elapsed() < Duration::from_secs(2),
                "{base} still accepts the revoked token"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn main() {
    cluster::run_cases("scale_out", CASES);
}
