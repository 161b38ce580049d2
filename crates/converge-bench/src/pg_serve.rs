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
//! The load is an open loop ([`crate::open_loop`]): each request has a scheduled send time, fixed in advance by the
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

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use converge_server::{Role, Tokens};

use crate::BenchError;
use crate::open_loop::{Connection, Latencies, Load, Request};
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
pub(crate) const DRAIN_MAX: Duration = Duration::from_secs(30);

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

pub(crate) fn durable(message: String) -> BenchError {
    BenchError::Durable(message)
}

pub(crate) fn round(value: f64, decimals: i32) -> f64 {
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
