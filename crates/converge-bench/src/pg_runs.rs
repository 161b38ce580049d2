//! The `pg-runs` scenario: end-to-end throughput of small runs on PostgreSQL, driven by 1, 2
//! and 4 in-process [`Worker`]s.
//!
//! For each worker count, a fresh database gets `N` runs of [`SPEC`] (five rule agents in a
//! chain: five cycles, five facts, no external process, nothing to approve) submitted with
//! [`Runtime::submit_durable`], exactly as `converge submit` records them. Then the workers
//! start (each with [`SLOTS`] slots, as `converge worker` does by default, and `until_idle`)
//! and drive every run; the drive is timed from their start until the last slot found nothing
//! left. Every run must converge with five facts, or the measurement is an error.
//!
//! Beside the time it reports what the server did per run (commits, WAL bytes, WAL flushes,
//! database growth), the machine's CPU use over the drive, and what PostgreSQL's active
//! sessions were doing, sampled every [`SAMPLE_EVERY`] from `pg_stat_activity`: running
//! (`CPU`), waiting for a WAL flush (`IO:WALSync`), for a lock, or for the client — the
//! worker — inside a transaction.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use converge_core::StopReason;
use converge_runtime::{
    Holder, JobRecord, Location, PostgresJournal, Report, RunId, Worker, WorkerConfig,
};
use converge_server::job::{self, Calls};

use crate::BenchError;
use crate::postgres::{Load, Server, connect};

/// The job every run executes: five rule agents, each waking on the previous one's fact.
pub const SPEC: &str = r#"version: 1
intent:
  objective: Count to five
  budgets: {cycles: 10}
agents:
  - {name: one, kind: rule, writes: [signals], when: "true", propose: {key: signals, id: one, content: 1}}
  - {name: two, kind: rule, reads: [signals], writes: [hypotheses], when: "true", propose: {key: hypotheses, id: two, content: 2}}
  - {name: three, kind: rule, reads: [hypotheses], writes: [strategies], when: "true", propose: {key: strategies, id: three, content: 3}}
  - {name: four, kind: rule, reads: [strategies], writes: [evaluations], when: "true", propose: {key: evaluations, id: four, content: 4}}
  - {name: five, kind: rule, reads: [evaluations], writes: [constraints], when: "true", propose: {key: constraints, id: five, content: 5}}
"#;

/// Facts a run of [`SPEC`] converges with: the five agents' and the intent's objective.
const FACTS: usize = 6;

/// The worker counts measured.
pub const WORKER_COUNTS: [u16; 3] = [1, 2, 4];

/// Slots per worker: `converge worker`'s default `--concurrency`.
pub const SLOTS: u16 = 4;

/// How often the sessions' states are sampled.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_millis(10);

/// What driving `runs` runs with `workers` workers measured.
#[derive(Debug, Clone)]
pub struct RunsMeasurement {
    /// Workers.
    pub workers: u16,
    /// Runs driven.
    pub runs: usize,
    /// Wall time of submitting them, in milliseconds.
    pub submit_ms: f64,
    /// Wall time of driving them all, in milliseconds.
    pub ms: f64,
    /// Transactions committed per run while driving.
    pub commits_per_run: f64,
    /// WAL written per run while driving.
    pub wal_bytes_per_run: f64,
    /// WAL flushes per run while driving (fewer than commits when commits share a flush).
    pub wal_syncs_per_run: f64,
    /// Database growth per run, submission included.
    pub bytes_per_run: f64,
    /// The machine's CPU busy over the drive, in percent of all cores (other processes
    /// included).
    pub cpu_busy_pct: f64,
    /// CPU of this process (the workers) per run, in milliseconds.
    pub worker_cpu_ms_per_run: f64,
    /// CPU of the PostgreSQL server per run, in milliseconds, when it runs on this machine
    /// (its processes read from `/proc`); `None` otherwise.
    pub server_cpu_ms_per_run: Option<f64>,
    /// Share of sampled non-idle sessions in each state, in percent, largest first.
    pub sessions: Vec<(String, f64)>,
}

impl RunsMeasurement {
    /// The JSON line the binary prints.
    pub fn json_line(&self) -> String {
        let sessions: serde_json::Map<String, serde_json::Value> = self
            .sessions
            .iter()
            .map(|(state, pct)| (state.clone(), serde_json::json!(round(*pct, 1))))
            .collect();
        serde_json::json!({
            "scenario": "pg-runs",
            "n": self.runs,
            "workers": self.workers,
            "slots": self.workers * SLOTS,
            "ms": round(self.ms, 3),
            "runs_per_s": round(self.runs as f64 / (self.ms / 1000.0).max(f64::MIN_POSITIVE), 0),
            "submit_ms": round(self.submit_ms, 3),
            "commits_per_run": round(self.commits_per_run, 1),
            "wal_bytes_per_run": round(self.wal_bytes_per_run, 0),
            "wal_syncs_per_run": round(self.wal_syncs_per_run, 2),
            "bytes_per_run": round(self.bytes_per_run, 0),
            "cpu_busy_pct": round(self.cpu_busy_pct, 1),
            "worker_cpu_ms_per_run": round(self.worker_cpu_ms_per_run, 2),
            "server_cpu_ms_per_run": self.server_cpu_ms_per_run.map(|ms| round(ms, 2)),
            "sessions_pct": sessions,
        })
        .to_string()
    }
}

fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

/// Measures `n` runs with each of [`WORKER_COUNTS`].
pub(crate) fn measure(n: usize) -> Result<Vec<RunsMeasurement>, BenchError> {
    let server = Server::start()?;
    WORKER_COUNTS
        .iter()
        .map(|&workers| measure_with(&server, n, workers))
        .collect()
}

fn measure_with(server: &Server, n: usize, workers: u16) -> Result<RunsMeasurement, BenchError> {
    let url = server.database("runs")?;
    let location = Location::parse(&url);
    let mut figures = connect(&url)?;
    let submit = submit(&url, n, &mut figures)?;
    let cpu_before = Cpu::now();
    let postmaster = postmaster_of(&mut figures);
    let server_before = postmaster.and_then(server_cpu_ms);
    let before = Load::now(&mut figures)?;
    let sampler = Sampler::start(&url)?;
    let start = Instant::now();
    let counts = drive(&location, workers)?;
    let elapsed = start.elapsed();
    let sessions = sampler.stop();
    let cpu = cpu_before.until(Cpu::now());
    // The workers' sessions flush their statistics as they end.
    std::thread::sleep(Duration::from_millis(1200));
    let drove = before.until(Load::now(&mut figures)?);
    let server_ms = match (server_before, postmaster.and_then(server_cpu_ms)) {
        (Some(before), Some(after)) => Some(after - before),
        _ => None,
    };
    let converged = counts.converged.load(Ordering::SeqCst);
    if converged != n {
        return Err(BenchError::Durable(format!(
            "pg-runs {n} with {workers} workers: {converged} runs converged with {FACTS} facts, \
             {} failed, {} ended otherwise",
            counts.failed.load(Ordering::SeqCst),
            counts.other.load(Ordering::SeqCst)
        )));
    }
    let per_run = |value: i64| value as f64 / n as f64;
    Ok(RunsMeasurement {
        workers,
        runs: n,
        submit_ms: submit.elapsed.as_secs_f64() * 1000.0,
        ms: elapsed.as_secs_f64() * 1000.0,
        commits_per_run: per_run(drove.commits),
        wal_bytes_per_run: per_run(drove.wal_bytes),
        wal_syncs_per_run: per_run(drove.wal_syncs),
        bytes_per_run: per_run(submit.before.until(Load::now(&mut figures)?).database_bytes),
        cpu_busy_pct: cpu.busy_pct(),
        worker_cpu_ms_per_run: cpu.process_ms / n as f64,
        server_cpu_ms_per_run: server_ms.map(|ms| ms / n as f64),
        sessions,
    })
}

struct Submitted {
    elapsed: Duration,
    before: Load,
}

/// Records `n` runs of [`SPEC`] for workers to drive.
fn submit(url: &str, n: usize, figures: &mut postgres::Client) -> Result<Submitted, BenchError> {
    let durable = |error: String| BenchError::Durable(error);
    let mut journal = PostgresJournal::open(url).map_err(|error| durable(error.to_string()))?;
    let before = Load::now(figures)?;
    let record = JobRecord {
        path: "pg-runs.yaml".into(),
        source: SPEC.into(),
    };
    let runtime = job::build(&record, Calls::Offline)
        .map_err(|error| durable(error.to_string()))?
        .runtime
        .with_holder(Holder::this_process("converge-bench submit"));
    let start = Instant::now();
    for index in 0..n {
        let run =
            RunId::new(&format!("run-{index}")).map_err(|error| durable(error.to_string()))?;
        runtime
            .submit_durable(&mut journal, &run)
            .map_err(|error| durable(error.to_string()))?;
    }
    Ok(Submitted {
        elapsed: start.elapsed(),
        before,
    })
}

/// How the runs ended.
#[derive(Default)]
struct Counts {
    converged: AtomicUsize,
    failed: AtomicUsize,
    other: AtomicUsize,
}

/// Drives every submitted run with `workers` workers until none is left.
fn drive(location: &Location, workers: u16) -> Result<Arc<Counts>, BenchError> {
    let counts = Arc::new(Counts::default());
    let reporter = {
        let counts = counts.clone();
        Arc::new(move |report: Report| {
            let tally = match &report {
                Report::Reached {
                    stop_reason: StopReason::Converged,
                    facts: FACTS,
                    ..
                } => &counts.converged,
                Report::Failed { .. } => &counts.failed,
                _ => &counts.other,
            };
            tally.fetch_add(1, Ordering::SeqCst);
            let converged = matches!(
                report,
                Report::Reached {
                    stop_reason: StopReason::Converged,
                    facts: FACTS,
                    ..
                }
            );
            if !converged {
                eprintln!("converge-bench: pg-runs: {report}");
            }
        })
    };
    let build: converge_runtime::Build = Arc::new(|header, run| {
        job::runtime_of_header(header, run, Calls::Offline).map_err(|error| error.to_string())
    });
    let started: Vec<Worker> = (0..workers)
        .map(|index| {
            let config = WorkerConfig {
                location: location.clone(),
                holder: Holder::this_process(&format!("converge-bench worker {index}")),
                concurrency: SLOTS,
                until_idle: true,
            };
            Worker::start(&config, build.clone(), reporter.clone())
                .map_err(|error| BenchError::Durable(error.to_string()))
        })
        .collect::<Result<_, _>>()?;
    started.into_iter().for_each(Worker::join);
    Ok(counts)
}

/// CPU time from `/proc`: the machine's, and this process's.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    busy_ticks: f64,
    total_ticks: f64,
    process_ms: f64,
}

impl Cpu {
    /// Now; zeros where `/proc` cannot be read.
    fn now() -> Cpu {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let ticks: Vec<f64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .filter_map(|field| field.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal …
        let total_ticks: f64 = ticks.iter().take(8).sum();
        let idle = ticks.get(3).copied().unwrap_or(0.0) + ticks.get(4).copied().unwrap_or(0.0);
        let own = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        // After the command's closing parenthesis: utime and stime are fields 14 and 15.
        let fields: Vec<f64> = own
            .rsplit_once(')')
            .map(|(_, rest)| {
                rest.split_whitespace()
                    .filter_map(|f| f.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        let process_ticks =
            fields.get(10).copied().unwrap_or(0.0) + fields.get(11).copied().unwrap_or(0.0);
        // The kernel's USER_HZ is 100 on every Linux this runs on.
        Cpu {
            busy_ticks: total_ticks - idle,
            total_ticks,
            process_ms: process_ticks * 10.0,
        }
    }

    fn until(self, later: Cpu) -> Cpu {
        Cpu {
            busy_ticks: later.busy_ticks - self.busy_ticks,
            total_ticks: later.total_ticks - self.total_ticks,
            process_ms: later.process_ms - self.process_ms,
        }
    }

    fn busy_pct(self) -> f64 {
        100.0 * self.busy_ticks / self.total_ticks.max(1.0)
    }
}

/// The process id of the server `client` is connected to, when it runs on this machine: the
/// parent of the client's backend.
fn postmaster_of(client: &mut postgres::Client) -> Option<u32> {
    let backend: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .and_then(|row| row.try_get(0))
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{backend}/stat")).ok()?;
    // After the command's closing parenthesis: state, then the parent's pid.
    let parent = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?;
    parent.parse().ok()
}

/// CPU used so far by the server whose main process is `postmaster`, in milliseconds: its
/// own, its ended children's (backends that closed, counted by the kernel in the parent), and
/// its live children's. `None` when `/proc` does not show it.
fn server_cpu_ms(postmaster: u32) -> Option<f64> {
    let ticks = |pid: &str, with_children: bool| -> Option<(f64, u32)> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        // Fields 4, 14–17 of stat: ppid, utime, stime, cutime, cstime.
        let number = |index: usize| fields.get(index).and_then(|f| f.parse::<f64>().ok());
        let own = number(11)? + number(12)?;
        let children = if with_children {
            number(13)? + number(14)?
        } else {
            0.0
        };
        Some((own + children, number(1)? as u32))
    };
    let mut total = ticks(&postmaster.to_string(), true)?.0;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if let Some((used, parent)) = ticks(pid, false)
            && parent == postmaster
        {
            total += used;
        }
    }
    // The kernel's USER_HZ is 100 on every Linux this runs on.
    Some(total * 10.0)
}

/// Samples what the database's other sessions are doing, on a thread of its own.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<BTreeMap<String, u64>>,
}

const SESSIONS: &str = "\
SELECT CASE WHEN state = 'idle in transaction' THEN 'Client:in-transaction'
            WHEN wait_event_type IS NULL THEN 'CPU'
            ELSE wait_event_type || ':' || wait_event END,
       count(*)
  FROM pg_stat_activity
 WHERE datname = current_database() AND pid <> pg_backend_pid()
   AND backend_type = 'client backend' AND state <> 'idle'
 GROUP BY 1";

impl Sampler {
    fn start(url: &str) -> Result<Sampler, BenchError> {
        let mut client = connect(url)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen: BTreeMap<String, u64> = BTreeMap::new();
            while !stopped.load(Ordering::SeqCst) {
                for row in client.query(SESSIONS, &[]).unwrap_or_default() {
                    if let (Ok(state), Ok(count)) =
                        (row.try_get::<_, String>(0), row.try_get::<_, i64>(1))
                    {
                        *seen.entry(state).or_default() += u64::try_from(count).unwrap_or(0);
                    }
                }
                std::thread::sleep(SAMPLE_EVERY);
            }
            seen
        });
        Ok(Sampler { stop, thread })
    }

    /// Each state's share of the samples, in percent, largest first.
    fn stop(self) -> Vec<(String, f64)> {
        self.stop.store(true, Ordering::SeqCst);
        let seen = self.thread.join().unwrap_or_default();
        let total: u64 = seen.values().sum();
        let mut shares: Vec<(String, f64)> = seen
            .into_iter()
            .map(|(state, count)| (state, 100.0 * count as f64 / total.max(1) as f64))
            .collect();
        shares.sort_by(|a, b| b.1.total_cmp(&a.1));
        shares.truncate(6);
        shares
    }
}
