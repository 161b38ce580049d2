//! A server that stays up: the whole hostile spec set of `converge-runtime/tests/hostile/`
//! (CEL comprehension bombs, template bombs) is submitted over HTTP, several copies of each at
//! once, to a server in its own process, while ordinary requests keep being timed.
//!
//! Every submission must be answered (no 5xx, nothing hanging past the client timeout), every
//! accepted run must stop with a clear message, the server's peak resident size must stay
//! bounded, ordinary requests must keep answering within a bound of their quiet latency, and
//! the server must still answer afterwards and stop cleanly on SIGTERM, leaving no process
//! behind.
//!
//! The server runs in a child process so that its memory can be read from
//! `/proc/<pid>/status` apart from the client's. The `converge` binary belongs to another
//! package (`converge-cli`), so its path is not known to this one's tests; the child is this
//! test executable started again with [`SERVE_ENV`] set, and it serves exactly as
//! `converge serve --allow-commands` does: [`Server::bind`] then [`Server::serve`] until
//! SIGTERM, on a two-worker multi-threaded runtime. This file does not test the command
//! line's own parsing or logging (`converge-cli/tests/cli.rs` does).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use converge_server::{Role, Server, ServerConfig, Tokens};
use serde_json::Value;

/// Set in the child process: the journal it serves.
const SERVE_ENV: &str = "CONVERGE_HOSTILE_TEST_SERVE";

/// What the child prints before its address, once it listens (after the harness's words).
const SERVING: &str = "hostile test server: serving ";

/// This test's name, to start the child on it alone.
const TEST_NAME: &str = "the_server_stays_up_under_the_hostile_set";

/// The server's provider file: the default provider on a closed loopback port, with a key.
const PROVIDERS: &str =
    "[providers.openai]\nbase_url = \"http://127.0.0.1:9/v1\"\napi_key = \"not-a-key\"\n";

/// How many runs of each hostile spec are submitted at once.
const COPIES: usize = 3;

/// The longest any request may go unanswered before it counts as a hang. This includes a
/// submission: its answer must not wait for other submitters' runs (the server answers once
/// the run's first step is journaled, and drives only a few runs at once).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long every run may take to stop, from the start of the storm. The server drives at
/// most as many runs at once as it has cores and queues the rest; each CEL bomb uses one to
/// three seconds of CPU to reach its cost limit in a debug build, so the storm's 15 of them
/// need some 15 to 35 s on two cores. Well past that, a run still going is a hang.
const RUN_DURATION_MAX: Duration = Duration::from_secs(50);

/// How often a submitter asks whether its run stopped.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// The most memory the server may hold at once, in KiB.
const PEAK_RSS_KIB_MAX: u64 = 256 * 1024;

/// Ordinary requests timed before the storm.
const BASELINE_REQUESTS: usize = 200;

/// Ordinary requests the storm must at least see answered (else it measured nothing).
const STORM_REQUESTS_MIN: usize = 20;

/// The pause between two ordinary requests during the storm.
const PING_INTERVAL: Duration = Duration::from_millis(20);

/// How long the server may take to stop after SIGTERM.
const SHUTDOWN_DURATION_MAX: Duration = Duration::from_secs(10);

/// What a user-facing message must never contain: Rust debug formatting.
const DEBUG_MARKS: [&str; 5] = ["{ ", "Some(", "None", "Ok(", "Err("];

/// The floor of the storm's p99 latency bound, in milliseconds (see [`latency_bound_ms`]).
const STORM_P99_FLOOR_MS: u128 = 500;

/// How many times the quiet p99 the storm's p99 may be (see [`latency_bound_ms`]).
const STORM_P99_FACTOR: u128 = 10;

#[test]
fn the_server_stays_up_under_the_hostile_set() {
    if let Some(db) = std::env::var_os(SERVE_ENV) {
        serve_here(PathBuf::from(db));
        return;
    }
    let cases = cases();
    assert!(cases.len() >= 10, "the hostile set is missing");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("journal.db");
    let token = Tokens::open(db.clone())
        .unwrap()
        .create("acme", "sam", Role::Submitter)
        .unwrap()
        .secret;
    let mut server = ServerProcess::start(dir.path(), &db);
    let (addr, pid) = (server.addr, server.pid());

    // A quiet baseline, on the same machine in the same build.
    let quiet: Vec<Duration> = (0..BASELINE_REQUESTS)
        .map(|index| ping(addr, &token, index))
        .collect();
    let quiet_p99_ms = p99_ms(&quiet);

    // The storm: every case COPIES times at once, while ordinary requests are timed.
    let storming = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let barrier = Arc::new(Barrier::new(cases.len() * COPIES));
    let submitters: Vec<_> = cases
        .iter()
        .flat_map(|case| (0..COPIES).map(move |copy| (case.clone(), copy)))
        .map(|(case, copy)| {
            let (token, barrier) = (token.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                submit_and_follow(addr, &token, &case, copy)
            })
        })
        .collect();
    let watcher = {
        let stop = stop.clone();
        std::thread::spawn(move || watch(pid, &stop))
    };
    let mut storm = Vec::new();
    while !submitters.iter().all(|submitter| submitter.is_finished()) {
        storm.push(ping(addr, &token, storm.len()));
        std::thread::sleep(PING_INTERVAL);
    }
    let outcomes: Vec<Outcome> = submitters
        .into_iter()
        .map(|submitter| submitter.join().unwrap())
        .collect();
    // Runs whose submission went unanswered were created all the same: wait for them too.
    let mut runs = list(addr, &token);
    while runs.iter().any(|run| run["status"] == "running") && storming.elapsed() < RUN_DURATION_MAX
    {
        storm.push(ping(addr, &token, storm.len()));
        std::thread::sleep(POLL_INTERVAL);
        runs = list(addr, &token);
    }
    let storm_duration = storming.elapsed();
    stop.store(true, Ordering::SeqCst);
    let (rss_samples_kib, descendants) = watcher.join().unwrap();
    let peak_rss_kib = status_kib(pid, "VmHWM:").expect("the server's VmHWM");

    // After the storm the server still answers, as quickly as before.
    let after: Vec<Duration> = (0..BASELINE_REQUESTS)
        .map(|index| ping(addr, &token, index))
        .collect();

    let accepted = outcomes
        .iter()
        .filter(|outcome| outcome.run.is_some())
        .count();
    let storm_p99_ms = p99_ms(&storm);
    let after_p99_ms = p99_ms(&after);
    let bound_ms = latency_bound_ms(quiet_p99_ms);
    let mut report = format!(
        "{} submissions ({accepted} accepted) in {storm_duration:?}; slowest answer {:?}, \
         slowest run {:?}; ordinary requests p99: quiet {quiet_p99_ms} ms, storm \
         {storm_p99_ms} ms over {} requests (max {:?}), after {after_p99_ms} ms, bound \
         {bound_ms} ms; peak RSS {peak_rss_kib} KiB (highest sample {} KiB); descendants seen: \
         {descendants:?}",
        outcomes.len(),
        outcomes.iter().map(|outcome| outcome.answered).max(),
        outcomes.iter().filter_map(|outcome| outcome.stopped).max(),
        storm.len(),
        storm.iter().max(),
        rss_samples_kib.iter().max().copied().unwrap_or(0),
    );
    for outcome in &outcomes {
        report.push_str(&format!("\n  {outcome}"));
    }
    eprintln!("{report}");

    let mut problems: Vec<String> = outcomes.iter().flat_map(Outcome::problems).collect();
    // A run's id is its tenant's prefix and the name it was submitted under.
    let stopped = |id: &str| {
        runs.iter().any(|run| {
            run["id"]
                .as_str()
                .is_some_and(|listed| listed == id || listed.ends_with(&format!("-{id}")))
                && run["status"] != "running"
        })
    };
    for outcome in &outcomes {
        let id = outcome.run.as_deref().unwrap_or(&outcome.name);
        if (outcome.run.is_some() || outcome.status == 0) && !stopped(id) {
            problems.push(format!(
                "{id}: not stopped (or not listed) {RUN_DURATION_MAX:?} after the storm began"
            ));
        }
    }
    if peak_rss_kib >= PEAK_RSS_KIB_MAX {
        problems.push(format!(
            "the server's peak RSS is {peak_rss_kib} KiB, over {PEAK_RSS_KIB_MAX} KiB"
        ));
    }
    if storm.len() < STORM_REQUESTS_MIN {
        problems.push(format!(
            "only {} ordinary requests were answered during the storm",
            storm.len()
        ));
    }
    if storm_p99_ms >= bound_ms {
        problems.push(format!(
            "ordinary requests slowed down during the storm: p99 {storm_p99_ms} ms"
        ));
    }
    if after_p99_ms >= bound_ms {
        problems.push(format!(
            "ordinary requests stayed slow after the storm: p99 {after_p99_ms} ms"
        ));
    }

    // SIGTERM: the server stops on its own, and nothing it started outlives it.
    let status = server.terminate();
    if !status.success() {
        problems.push(format!("the server exited with {status} on SIGTERM"));
    }
    let left: Vec<u32> = descendants
        .iter()
        .copied()
        .chain(in_group(pid))
        .filter(|pid| alive(*pid))
        .collect();
    if !left.is_empty() {
        problems.push(format!("processes left behind: {left:?}"));
    }
    assert!(
        problems.is_empty(),
        "{} problems:\n{}\n\n{report}",
        problems.len(),
        problems.join("\n")
    );
}

/// The tenant's runs (`GET /v1/runs`).
fn list(addr: SocketAddr, token: &str) -> Vec<Value> {
    let (status, body) = http(addr, "GET", "/v1/runs", token, None);
    assert_eq!(status, 200, "GET /v1/runs: {body}");
    body["runs"].as_array().cloned().unwrap_or_default()
}

/// The bound on ordinary requests' p99 latency during and after the storm, in milliseconds.
///
/// The storm is CPU-bound: dozens of drives evaluate bounded bombs on their own threads, and
/// on a small machine (two cores in CI, a debug build) they compete with the request
/// handlers for the CPU, so ordinary requests do get slower; what must not happen is that
/// they queue behind the bombs (seconds, or the client timeout). A quiet p99 is a few
/// milliseconds, so ten times it is too tight to be robust against scheduling noise on
/// its own: the floor of half a second is what "keeps answering" means to a person or a
/// health checker, and still two orders of magnitude below a hang or a bomb's own duration.
fn latency_bound_ms(quiet_p99_ms: u128) -> u128 {
    (STORM_P99_FACTOR * quiet_p99_ms).max(STORM_P99_FLOOR_MS)
}

/// What became of one submission.
struct Outcome {
    /// The case and copy, for messages.
    name: String,
    /// What the case's first line says its message must contain.
    expected: String,
    /// The submission's status.
    status: u16,
    /// How long the submission took to answer.
    answered: Duration,
    /// The run's id, when it was accepted.
    run: Option<String>,
    /// How long after its submission the run stopped, if it did in time.
    stopped: Option<Duration>,
    /// The run's status when it stopped or was given up on.
    run_status: String,
    /// Every user-facing message: a refusal's, or the run's failures, rejections and stop.
    messages: Vec<String>,
}

impl Outcome {
    /// What is wrong with it, in words.
    fn problems(&self) -> Vec<String> {
        let name = &self.name;
        let mut problems = Vec::new();
        if self.status == 0 {
            problems.push(format!(
                "{name}: no answer to the submission within {REQUEST_TIMEOUT:?}: {:?}",
                self.messages
            ));
        } else if !(self.status == 201 || (400..500).contains(&self.status)) {
            problems.push(format!(
                "{name}: the submission answered {}: {:?}",
                self.status, self.messages
            ));
        } else if self.run.is_none() {
            if self
                .messages
                .iter()
                .all(|message| message.trim().is_empty())
            {
                problems.push(format!(
                    "{name}: refused ({}) without a message",
                    self.status
                ));
            }
        } else if self.stopped.is_none() {
            problems.push(format!(
                "{name}: the run is still {} {RUN_DURATION_MAX:?} after its submission",
                self.run_status
            ));
        } else if !self
            .messages
            .iter()
            .any(|message| message.contains(&self.expected))
        {
            problems.push(format!(
                "{name}: no message contains {:?}: {:?}",
                self.expected, self.messages
            ));
        }
        for message in &self.messages {
            if let Some(mark) = DEBUG_MARKS.iter().find(|mark| message.contains(*mark)) {
                problems.push(format!("{name}: {mark:?} in the message {message:?}"));
            }
        }
        problems
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: ", self.name)?;
        match (self.status, &self.run) {
            (0, _) => write!(f, "no answer in {:?}", self.answered),
            (_, Some(_)) => match self.stopped {
                Some(stopped) => write!(
                    f,
                    "{} in {:?}, stopped after {stopped:?}",
                    self.status, self.answered
                ),
                None => write!(
                    f,
                    "{} in {:?}, still {}",
                    self.status, self.answered, self.run_status
                ),
            },
            (status, None) => write!(
                f,
                "refused {status} in {:?}: {}",
                self.answered,
                self.messages.join("; ")
            ),
        }
    }
}

/// Submits `case` as run `<case>-<copy>`, then follows the run until it stops.
fn submit_and_follow(addr: SocketAddr, token: &str, case: &Path, copy: usize) -> Outcome {
    let stem = case.file_stem().unwrap().to_string_lossy();
    let name = format!("{stem}-{copy}");
    let spec = std::fs::read_to_string(case).unwrap();
    let submitted = Instant::now();
    let path = format!("/v1/runs?id={name}");
    let answer = try_http(addr, "POST", &path, token, Some(&spec));
    let answered = submitted.elapsed();
    let (status, answer) = answer.unwrap_or_else(|error| (0, Value::String(error)));
    let mut outcome = Outcome {
        name: name.clone(),
        expected: expected(&spec, case),
        status,
        answered,
        run: None,
        stopped: None,
        run_status: String::new(),
        messages: Vec::new(),
    };
    if status != 201 {
        outcome.messages.push(
            answer["error"]["message"]
                .as_str()
                .or(answer.as_str())
                .unwrap_or_default()
                .to_owned(),
        );
        return outcome;
    }
    outcome.run = Some(answer["id"].as_str().unwrap_or(&name).to_owned());
    let mut run = answer;
    while run["status"] == "running" && submitted.elapsed() < RUN_DURATION_MAX {
        std::thread::sleep(POLL_INTERVAL);
        let (status, seen) = http(addr, "GET", &format!("/v1/runs/{name}"), token, None);
        assert_eq!(status, 200, "{name}: {seen}");
        run = seen;
    }
    outcome.run_status = run["status"].as_str().unwrap_or_default().to_owned();
    if outcome.run_status != "running" {
        outcome.stopped = Some(submitted.elapsed());
    }
    for field in ["detail", "message", "reason"] {
        if let Some(text) = run["stop_reason"][field].as_str() {
            outcome.messages.push(text.to_owned());
        }
    }
    let path = format!("/v1/runs/{name}/rejections");
    let (status, seen) = http(addr, "GET", &path, token, None);
    assert_eq!(status, 200, "{name}: {seen}");
    for failure in seen["failures"].as_array().into_iter().flatten() {
        outcome
            .messages
            .push(failure["message"].as_str().unwrap_or_default().to_owned());
    }
    for rejection in seen["rejections"].as_array().into_iter().flatten() {
        strings(&rejection["rejection"], &mut outcome.messages);
    }
    outcome
}

/// Every string in `value`.
fn strings(value: &Value, into: &mut Vec<String>) {
    match value {
        Value::String(text) => into.push(text.clone()),
        Value::Array(items) => items.iter().for_each(|item| strings(item, into)),
        Value::Object(fields) => fields.values().for_each(|item| strings(item, into)),
        _ => {}
    }
}

/// One ordinary request, alternating health and the run list: how long it took to answer.
fn ping(addr: SocketAddr, token: &str, index: usize) -> Duration {
    let path = if index.is_multiple_of(2) {
        "/healthz"
    } else {
        "/v1/runs"
    };
    let started = Instant::now();
    let (status, body) = http(addr, "GET", path, token, None);
    let took = started.elapsed();
    assert_eq!(status, 200, "GET {path}: {body}");
    took
}

/// The 99th percentile of `latencies`, in whole milliseconds rounded up.
fn p99_ms(latencies: &[Duration]) -> u128 {
    let mut sorted = latencies.to_vec();
    sorted.sort();
    let rank = (sorted.len() * 99).div_ceil(100).max(1);
    sorted
        .get(rank - 1)
        .map_or(0, |latency| latency.as_micros().div_ceil(1000))
}

/// One HTTP/1.1 request on a fresh loopback connection: (status, body as JSON, else Null),
/// or why there was no answer within [`REQUEST_TIMEOUT`].
fn try_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&str>,
) -> Result<(u16, Value), String> {
    let failed = |what: &str, error: std::io::Error| format!("{method} {path}: {what}: {error}");
    let mut stream = TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT)
        .map_err(|error| failed("cannot connect", error))?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(REQUEST_TIMEOUT)).unwrap();
    let body = body.unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/yaml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|error| failed("cannot send", error))?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .map_err(|error| failed("no answer", error))?;
    let answer = String::from_utf8_lossy(&answer);
    let status = answer
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("{method} {path}: not an HTTP answer: {answer:?}"))?;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Err(format!(
            "{method} {path}: a chunked answer, which this client does not read"
        ));
    }
    Ok((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

/// [`try_http`], panicking when there is no answer.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&str>,
) -> (u16, Value) {
    try_http(addr, method, path, token, body).unwrap_or_else(|error| panic!("{error}"))
}

/// Samples the server's resident size and collects its descendants until `stop`:
/// (RSS samples in KiB, every descendant's pid).
fn watch(pid: u32, stop: &AtomicBool) -> (Vec<u64>, BTreeSet<u32>) {
    let (mut samples, mut seen) = (Vec::new(), BTreeSet::new());
    while !stop.load(Ordering::SeqCst) {
        samples.extend(status_kib(pid, "VmRSS:"));
        seen.extend(descendants(pid));
        std::thread::sleep(Duration::from_millis(50));
    }
    (samples, seen)
}

/// A `kB` field of `/proc/<pid>/status`.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Every process: (pid, parent pid, process group).
fn processes() -> Vec<(u32, u32, u32)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The command name is in parentheses and may hold anything: fields follow the last.
            let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(1);
            let parent = fields.next()?.parse().ok()?;
            let group = fields.next()?.parse().ok()?;
            Some((pid, parent, group))
        })
        .collect()
}

/// The processes below `root`.
fn descendants(root: u32) -> BTreeSet<u32> {
    let all = processes();
    let mut found = BTreeSet::from([root]);
    loop {
        let before = found.len();
        for (pid, parent, _) in &all {
            if found.contains(parent) {
                found.insert(*pid);
            }
        }
        if found.len() == before {
            break;
        }
    }
    found.remove(&root);
    found
}

/// The processes in process group `group`.
fn in_group(group: u32) -> Vec<u32> {
    processes()
        .into_iter()
        .filter(|(_, _, of)| *of == group)
        .map(|(pid, _, _)| pid)
        .collect()
}

/// Whether `pid` is a live process (not gone, not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| Some(stat.rsplit_once(')')?.1.split_whitespace().next()? != "Z"))
        .unwrap_or(false)
}

fn cases() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../converge-runtime/tests/hostile");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("{}: {error}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    cases.sort();
    cases
}

/// What the spec's first line (`# expect: …`) says its message must contain.
fn expected(spec: &str, path: &Path) -> String {
    spec.lines()
        .next()
        .and_then(|line| line.strip_prefix("# expect: "))
        .unwrap_or_else(|| panic!("{} has no `# expect:` line", path.display()))
        .to_owned()
}

/// The server in its own process, in its own process group; killed if the test fails.
struct ServerProcess {
    child: Option<Child>,
    addr: SocketAddr,
}

impl ServerProcess {
    fn start(dir: &Path, db: &Path) -> ServerProcess {
        use std::os::unix::process::CommandExt;
        let log = std::fs::File::create(dir.join("server.log")).unwrap();
        // The model agent's prompt must be rendered (and refused) rather than the spec refused
        // for want of a key; should a prompt ever render, its call goes nowhere.
        let providers = dir.join("providers.toml");
        std::fs::write(&providers, PROVIDERS).unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
            // Only what a server needs: no provider keys, no per-user provider file.
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", dir)
            .env("XDG_CONFIG_HOME", dir)
            .env("CONVERGE_PROVIDERS", &providers)
            .env(SERVE_ENV, db)
            .current_dir(dir)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut server = ServerProcess {
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let addr = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|line| line.split_once(SERVING)?.1.trim().parse().ok())
            .unwrap_or_else(|| {
                let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
                panic!("the server did not start: {log}")
            });
        server.addr = addr;
        // Keep draining what the harness prints so it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        server
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server runs").id()
    }

    /// Sends SIGTERM and waits for the server to stop: its exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("the server runs");
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -TERM failed");
        let asked = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if asked.elapsed() > SHUTDOWN_DURATION_MAX {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the server did not stop within {SHUTDOWN_DURATION_MAX:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The child process: serves the journal at `db` as `converge serve --allow-commands` does,
/// until SIGTERM.
fn serve_here(db: PathBuf) {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let mut config = ServerConfig::new(db.clone());
        config.allow_commands = true;
        config.jobs_dir = db.parent().unwrap().to_path_buf();
        let server = Server::bind(config).await.unwrap();
        println!("{SERVING}{}", server.local_addr());
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        server
            .serve(async move {
                terminate.recv().await;
            })
            .await
            .unwrap();
    });
}
