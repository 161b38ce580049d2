//! The `pg-serve` scenario: read latency of a `converge serve` replica on PostgreSQL while
//! workers drive runs submitted through it.
//!
//! Everything is the real thing, as `docs/deploy.md` sets it up: a throwaway cluster (or the
//! server `CONVERGE_BENCH_POSTGRES` names), the built `converge` binary as child processes —
//! one `converge serve --db postgresql://…` (workers drive its runs) and [`WORKERS`]
//! `converge worker`s on the same database — and tokens made in the database. Over loopback
//! HTTP, runs of [`SPEC`] are submitted at [`SUBMIT_RATE`] a second while reads arrive at
//! [`READ_RATE`] a second: half `GET /v1/runs/{run}` of a recently submitted run (a client
//! polling its run), a quarter `GET /v1/runs` (the list, default page), a quarter
//! `GET /v1/runs/{run}/facts`.
//!
//! The load is an open loop: each request has a scheduled send time, fixed in advance by the
//! rate, and its latency is measured from that time, so a stall of the server delays every
//! request scheduled behind it and shows in the percentiles (no coordinated omission). The
//! client keeps [`CONNECTIONS`] keep-alive connections per load; a request whose connection
//! is busy waits, and that wait is counted.
//!
//! `CONVERGE_BENCH_READ_RATE` and `CONVERGE_BENCH_SUBMIT_RATE` change the rates, and
//! `CONVERGE_BENCH_READS` the mix (a comma-separated cycle of `run`, `list` and `facts`;
//! default `run,list,run,facts`), to find what a latency comes from.
//!
//! The binary is found in `CONVERGE_BIN`, else beside `converge-bench` (build both with
//! `cargo build --release -p converge-cli -p converge-bench`). Every child is killed and
//! waited for, and the cluster stopped, whatever happens, before the scenario returns.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use converge_server::{Role, Tokens};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::BenchError;
use crate::pg_runs::SPEC;
use crate::postgres::{Server, connect, number};

/// Reads a second, all endpoints together (`CONVERGE_BENCH_READ_RATE` changes it).
pub(crate) const READ_RATE: f64 = 1000.0;

/// Runs submitted a second (`CONVERGE_BENCH_SUBMIT_RATE` changes it).
pub(crate) const SUBMIT_RATE: f64 = 50.0;

/// The cycle of endpoints reads go to (`CONVERGE_BENCH_READS` changes it): half one run, a
/// quarter the list, a quarter facts.
const MIX: &str = "run,list,run,facts";

/// `converge worker` processes, each with its default four slots.
pub(crate) const WORKERS: usize = 2;

/// Keep-alive connections each load (reads, submissions) sends on.
pub(crate) const CONNECTIONS: usize = 32;

/// Load sent before the measurement starts, not counted: connections open, caches fill.
const WARM_UP: Duration = Duration::from_secs(2);

/// How long requests still in flight at the end may take before they count as errors.
const DRAIN_MAX: Duration = Duration::from_secs(30);

/// How long the server may take to answer its health check after it starts.
const START_MAX: Duration = Duration::from_secs(60);

/// Recently submitted runs a reader picks from.
const RECENT_RUNS: usize = 16;

/// The endpoints read, in the order of the lines printed.
const ENDPOINTS: [&str; 3] = [
    "GET /v1/runs/{run}",
    "GET /v1/runs",
    "GET /v1/runs/{run}/facts",
];

/// What the environment sets: the rates and the mix, each with its default.
struct Settings {
    read_rate: f64,
    submit_rate: f64,
    /// Indexes into [`ENDPOINTS`], one per read of the cycle.
    mix: Vec<usize>,
}

impl Settings {
    fn from_env() -> Result<Settings, BenchError> {
        let rate = |name: &str, default: f64| -> Result<f64, BenchError> {
            match std::env::var(name) {
                Ok(text) => text
                    .parse::<f64>()
                    .ok()
                    .filter(|rate| *rate > 0.0 && *rate <= 100_000.0)
                    .ok_or_else(|| {
                        durable(format!("{name}: not a rate from 0 to 100000: {text:?}"))
                    }),
                Err(_) => Ok(default),
            }
        };
        let mix = std::env::var("CONVERGE_BENCH_READS").unwrap_or_else(|_| MIX.to_owned());
        let mix = mix
            .split(',')
            .map(|name| match name.trim() {
                "run" => Ok(0),
                "list" => Ok(1),
                "facts" => Ok(2),
                other => Err(durable(format!(
                    "CONVERGE_BENCH_READS: {other:?} is not run, list or facts"
                ))),
            })
            .collect::<Result<Vec<usize>, _>>()?;
        Ok(Settings {
            read_rate: rate("CONVERGE_BENCH_READ_RATE", READ_RATE)?,
            submit_rate: rate("CONVERGE_BENCH_SUBMIT_RATE", SUBMIT_RATE)?,
            mix,
        })
    }

    /// The endpoint of the `i`th read.
    fn endpoint_of(&self, i: u64) -> usize {
        self.mix[(i % self.mix.len() as u64) as usize]
    }

    /// The rate `endpoint` is read at.
    fn rate_of(&self, endpoint: usize) -> f64 {
        let share = self.mix.iter().filter(|e| **e == endpoint).count();
        self.read_rate * share as f64 / self.mix.len() as f64
    }
}

/// Measures reads beside `n` runs submitted at [`SUBMIT_RATE`]: one JSON line per endpoint,
/// one for all reads, one for the submissions.
pub(crate) fn measure(n: usize) -> Result<Vec<String>, BenchError> {
    let settings = Arc::new(Settings::from_env()?);
    let converge = binary()?;
    let server = Server::start()?;
    let url = server.database("serve")?;
    let mut tokens = Tokens::open(url.as_str()).map_err(|error| durable(error.to_string()))?;
    let submitter = tokens
        .create("bench", "loader", Role::Submitter)
        .map_err(|error| durable(error.to_string()))?
        .secret;
    let viewer = tokens
        .create("bench", "reader", Role::Viewer)
        .map_err(|error| durable(error.to_string()))?
        .secret;
    drop(tokens);
    // Declared after the cluster, so dropped (killed) before it is stopped.
    let mut children = Children::default();
    let address = free_address()?;
    children.spawn(
        Command::new(&converge)
            .args(["serve", "--db", &url, "--listen", &address.to_string()])
            .env("CONVERGE_LOG", "warn"),
    )?;
    for _ in 0..WORKERS {
        // Quiet: a worker reports every run it drives.
        children.spawn(
            Command::new(&converge)
                .args(["worker", "--db", &url])
                .stderr(Stdio::null()),
        )?;
    }
    let window = Duration::from_secs_f64(n as f64 / settings.submit_rate);
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| durable(format!("cannot start the load's runtime: {error}")))?;
    tokio.block_on(wait_healthy(address, &mut children))?;
    let mut figures = connect(&url)?;
    let plan = Plan {
        address,
        submitter,
        viewer,
        window,
        settings: settings.clone(),
    };
    let cpu_before = busy_ticks();
    let loads = tokio.block_on(run_loads(&plan))?;
    let cpu = busy_ticks().map(|after| after.since(cpu_before.unwrap_or_default()));
    let finished = number(
        &mut figures,
        "SELECT count(*) FROM converge.runs WHERE status <> 'running'",
    )?;
    children.check_alive()?;
    let beside = serde_json::json!({
        "submit_rps": settings.submit_rate,
        "workers": WORKERS,
        "runs_finished": finished,
        "cpu_busy_pct": cpu.map(|cpu| round(cpu.busy_pct(), 1)),
    });
    let mut lines = Vec::new();
    for (index, endpoint) in ENDPOINTS.iter().enumerate() {
        let rate = settings.rate_of(index);
        if rate > 0.0 {
            let latencies = loads.reads.only(index);
            lines.push(latencies.json_line(endpoint, rate, window, &beside));
        }
    }
    let (reads, submits) = (settings.read_rate, settings.submit_rate);
    lines.push(
        loads
            .reads
            .json_line("GET (all reads)", reads, window, &beside),
    );
    lines.push(
        loads
            .submits
            .json_line("POST /v1/runs", submits, window, &beside),
    );
    Ok(lines)
}

fn durable(message: String) -> BenchError {
    BenchError::Durable(message)
}

fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

/// The `converge` binary: `CONVERGE_BIN`, else beside this one.
fn binary() -> Result<PathBuf, BenchError> {
    let path = match std::env::var_os("CONVERGE_BIN") {
        Some(path) => PathBuf::from(path),
        None => std::env::current_exe()
            .map_err(|error| durable(format!("cannot find this binary: {error}")))?
            .with_file_name("converge"),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(durable(format!(
            "pg-serve runs the `converge` binary, and {} is not one: build it with \
             `cargo build --release -p converge-cli`, or set CONVERGE_BIN",
            path.display()
        )))
    }
}

fn free_address() -> Result<SocketAddr, BenchError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map_err(|error| durable(format!("no free port: {error}")))
}

/// Child processes, killed and waited for when dropped.
#[derive(Default)]
struct Children(Vec<Child>);

impl Children {
    fn spawn(&mut self, command: &mut Command) -> Result<(), BenchError> {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|error| durable(format!("cannot start {command:?}: {error}")))?;
        self.0.push(child);
        Ok(())
    }

    /// An error naming the first child that exited.
    fn check_alive(&mut self) -> Result<(), BenchError> {
        for child in &mut self.0 {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(durable(format!(
                    "a `converge` process ({}) exited during the benchmark: {status}",
                    child.id()
                )));
            }
        }
        Ok(())
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
        }
        for child in &mut self.0 {
            let _ = child.wait();
        }
    }
}

async fn wait_healthy(address: SocketAddr, children: &mut Children) -> Result<(), BenchError> {
    let start = Instant::now();
    while start.elapsed() < START_MAX {
        children.check_alive()?;
        if let Ok(mut connection) = Connection::open(address).await
            && let Ok(200) = connection.send("GET", "/healthz", None, None).await
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(durable(format!(
        "converge serve did not answer on {address} within {START_MAX:?}"
    )))
}

/// What the loads need to know.
struct Plan {
    address: SocketAddr,
    submitter: String,
    viewer: String,
    window: Duration,
    settings: Arc<Settings>,
}

/// The latencies measured, per load.
struct Loads {
    reads: Latencies,
    submits: Latencies,
}

/// Runs both loads: warm-up, then the measured window.
async fn run_loads(plan: &Plan) -> Result<Loads, BenchError> {
    let recent = Arc::new(Mutex::new(Vec::<String>::new()));
    let start = Instant::now() + Duration::from_millis(10);
    let measured_from = start + WARM_UP;
    let end = measured_from + plan.window;
    // A first run, so that readers have one from their first request on.
    let mut first = Connection::open(plan.address).await.map_err(io)?;
    let status = first
        .send(
            "POST",
            "/v1/runs?id=first&job=pg-serve.yaml",
            Some(&plan.submitter),
            Some(SPEC.as_bytes()),
        )
        .await
        .map_err(io)?;
    if status != 201 {
        return Err(durable(format!("submitting a run answered {status}")));
    }
    recent
        .lock()
        .map_err(|_| durable("a load panicked".to_owned()))?
        .push("first".to_owned());
    let submits = {
        let recent = recent.clone();
        let token = plan.submitter.clone();
        let rate = plan.settings.submit_rate;
        Load::new(plan.address, rate, start, measured_from, end).run(move |i| {
            let id = format!("r{i}");
            Request {
                method: "POST",
                path: format!("/v1/runs?id={id}&job=pg-serve.yaml"),
                token: token.clone(),
                body: Some(SPEC.as_bytes()),
                endpoint: 0,
                submitted: Some((recent.clone(), id)),
            }
        })
    };
    let reads = {
        let token = plan.viewer.clone();
        let settings = plan.settings.clone();
        let rate = settings.read_rate;
        Load::new(plan.address, rate, start, measured_from, end).run(move |i| {
            let endpoint = settings.endpoint_of(i);
            let run = {
                let recent = recent.lock().unwrap_or_else(|e| e.into_inner());
                let back = (i as usize / settings.mix.len()) % recent.len().clamp(1, RECENT_RUNS);
                recent
                    .len()
                    .checked_sub(1 + back)
                    .and_then(|at| recent.get(at))
                    .cloned()
                    .unwrap_or_else(|| "first".to_owned())
            };
            let path = match endpoint {
                0 => format!("/v1/runs/{run}"),
                1 => "/v1/runs".to_owned(),
                _ => format!("/v1/runs/{run}/facts"),
            };
            Request {
                method: "GET",
                path,
                token: token.clone(),
                body: None,
                endpoint,
                submitted: None,
            }
        })
    };
    let (reads, submits) = tokio::join!(reads, submits);
    Ok(Loads {
        reads: reads?,
        submits: submits?,
    })
}

fn io(error: std::io::Error) -> BenchError {
    durable(format!("HTTP: {error}"))
}

/// One request of a load.
struct Request {
    method: &'static str,
    path: String,
    token: String,
    body: Option<&'static [u8]>,
    endpoint: usize,
    /// For a submission: where to record the run once accepted.
    submitted: Option<(Arc<Mutex<Vec<String>>>, String)>,
}

/// An open-loop load: requests scheduled at a fixed rate, sent on a fixed set of keep-alive
/// connections, each timed from its scheduled send time.
struct Load {
    address: SocketAddr,
    rate: f64,
    start: Instant,
    measured_from: Instant,
    end: Instant,
}

impl Load {
    fn new(
        address: SocketAddr,
        rate: f64,
        start: Instant,
        measured_from: Instant,
        end: Instant,
    ) -> Load {
        Load {
            address,
            rate,
            start,
            measured_from,
            end,
        }
    }

    async fn run(
        self,
        request: impl Fn(u64) -> Request + Send + 'static,
    ) -> Result<Latencies, BenchError> {
        let (schedule, queue) = mpsc::unbounded_channel::<(Instant, Request)>();
        let queue = Arc::new(tokio::sync::Mutex::new(queue));
        let latencies = Arc::new(Mutex::new(Latencies::default()));
        let senders: Vec<_> = (0..CONNECTIONS)
            .map(|_| {
                let queue = queue.clone();
                let latencies = latencies.clone();
                let (address, measured_from) = (self.address, self.measured_from);
                tokio::spawn(async move {
                    let mut connection: Option<Connection> = None;
                    loop {
                        let next = queue.lock().await.recv().await;
                        let Some((at, request)) = next else {
                            return;
                        };
                        let ok = send(&mut connection, address, &request).await;
                        if at >= measured_from {
                            let elapsed = at.elapsed();
                            let mut latencies = latencies.lock().unwrap_or_else(|e| e.into_inner());
                            latencies.record(request.endpoint, elapsed, ok);
                        }
                    }
                })
            })
            .collect();
        let period = Duration::from_secs_f64(1.0 / self.rate);
        let mut scheduled = 0u64;
        for i in 0u64.. {
            let at = self.start + period.mul_f64(i as f64);
            if at >= self.end {
                break;
            }
            tokio::time::sleep_until(at.into()).await;
            if at >= self.measured_from {
                scheduled += 1;
            }
            if schedule.send((at, request(i))).is_err() {
                return Err(durable("the load's senders stopped".to_owned()));
            }
        }
        drop(schedule);
        let drained = tokio::time::timeout(DRAIN_MAX, futures_join(senders)).await;
        let mut latencies = latencies.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if drained.is_err() {
            // Requests never answered are errors, as many as are missing.
            let missing = scheduled.saturating_sub(latencies.count() as u64);
            latencies.unanswered += missing;
        }
        latencies.scheduled = scheduled;
        latencies.last_done = Some(Instant::now().saturating_duration_since(self.measured_from));
        Ok(latencies)
    }
}

async fn futures_join(handles: Vec<tokio::task::JoinHandle<()>>) {
    for handle in handles {
        let _ = handle.await;
    }
}

/// Sends `request` on the connection, opening one if there is none; whether it answered
/// 2xx. A connection that failed is dropped, and the next request opens another.
async fn send(connection: &mut Option<Connection>, address: SocketAddr, request: &Request) -> bool {
    if connection.is_none() {
        *connection = Connection::open(address).await.ok();
    }
    let Some(open) = connection.as_mut() else {
        return false;
    };
    match open
        .send(
            request.method,
            &request.path,
            Some(&request.token),
            request.body,
        )
        .await
    {
        Ok(status) => {
            let ok = (200..300).contains(&status);
            if ok && let Some((recent, id)) = &request.submitted {
                recent
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(id.clone());
            }
            ok
        }
        Err(_) => {
            *connection = None;
            false
        }
    }
}

/// An HTTP/1.1 keep-alive connection: a request, then its whole response, at a time. The
/// server answers with `Content-Length`; anything else is an error here.
struct Connection {
    stream: BufReader<TcpStream>,
    body: Vec<u8>,
}

impl Connection {
    async fn open(address: SocketAddr) -> std::io::Result<Connection> {
        let stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream: BufReader::new(stream),
            body: Vec::new(),
        })
    }

    /// Sends a request and reads its response; the response's status.
    async fn send(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&[u8]>,
    ) -> std::io::Result<u16> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: bench\r\n");
        if let Some(token) = token {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        if let Some(body) = body {
            head.push_str(&format!(
                "Content-Type: application/yaml\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        let stream = self.stream.get_mut();
        stream.write_all(head.as_bytes()).await?;
        if let Some(body) = body {
            stream.write_all(body).await?;
        }
        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| bad(&format!("not an HTTP status line: {line:?}")))?;
        let mut length = None;
        loop {
            line.clear();
            if self.stream.read_line(&mut line).await? == 0 {
                return Err(bad("the connection closed in the headers"));
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse::<usize>().ok();
            }
        }
        let length = length.ok_or_else(|| bad("a response without Content-Length"))?;
        self.body.resize(length, 0);
        self.stream.read_exact(&mut self.body).await?;
        Ok(status)
    }
}

fn bad(message: &str) -> std::io::Error {
    std::io::Error::new(ErrorKind::InvalidData, message.to_owned())
}

/// Latencies of one load, per endpoint, in microseconds.
#[derive(Debug, Clone, Default)]
struct Latencies {
    /// `(endpoint, latency_us, answered 2xx)`.
    samples: Vec<(usize, u64, bool)>,
    /// Requests scheduled in the measured window.
    scheduled: u64,
    /// Requests not answered before the drain ended.
    unanswered: u64,
    /// From the window's start until the last answer.
    last_done: Option<Duration>,
}

impl Latencies {
    fn record(&mut self, endpoint: usize, latency: Duration, ok: bool) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.samples.push((endpoint, us, ok));
    }

    fn count(&self) -> usize {
        self.samples.len()
    }

    /// The samples of one endpoint.
    fn only(&self, endpoint: usize) -> Latencies {
        Latencies {
            samples: self
                .samples
                .iter()
                .filter(|sample| sample.0 == endpoint)
                .copied()
                .collect(),
            scheduled: 0,
            unanswered: 0,
            last_done: self.last_done,
        }
    }

    fn json_line(
        &self,
        endpoint: &str,
        target_rps: f64,
        window: Duration,
        beside: &serde_json::Value,
    ) -> String {
        let mut sorted: Vec<u64> = self.samples.iter().map(|sample| sample.1).collect();
        sorted.sort_unstable();
        let at = |quantile: f64| -> f64 {
            if sorted.is_empty() {
                return 0.0;
            }
            let index = ((sorted.len() as f64 * quantile).ceil() as usize).clamp(1, sorted.len());
            round(sorted[index - 1] as f64 / 1000.0, 2)
        };
        let errors =
            self.samples.iter().filter(|sample| !sample.2).count() as u64 + self.unanswered;
        let elapsed = self.last_done.unwrap_or(window).max(window);
        let mut line = serde_json::json!({
            "scenario": "pg-serve",
            "endpoint": endpoint,
            "target_rps": target_rps,
            "rps": round(self.samples.len() as f64 / elapsed.as_secs_f64(), 1),
            "requests": self.samples.len(),
            "errors": errors,
            "p50_ms": at(0.50),
            "p90_ms": at(0.90),
            "p99_ms": at(0.99),
            "max_ms": at(1.0),
            "window_s": round(window.as_secs_f64(), 1),
        });
        if let (Some(line), Some(beside)) = (line.as_object_mut(), beside.as_object()) {
            line.extend(beside.clone());
        }
        line.to_string()
    }
}

/// The machine's CPU ticks from `/proc/stat`: busy and in all.
#[derive(Debug, Clone, Copy, Default)]
struct Ticks {
    busy: f64,
    total: f64,
}

impl Ticks {
    fn since(self, before: Ticks) -> Ticks {
        Ticks {
            busy: self.busy - before.busy,
            total: self.total - before.total,
        }
    }

    fn busy_pct(self) -> f64 {
        100.0 * self.busy / self.total.max(1.0)
    }
}

fn busy_ticks() -> Option<Ticks> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<f64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|field| field.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal …
    let total: f64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3).copied().unwrap_or(0.0) + ticks.get(4).copied().unwrap_or(0.0);
    Some(Ticks {
        busy: total - idle,
        total,
    })
}
