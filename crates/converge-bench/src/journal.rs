//! The `journal` scenario: `fanout` with every step committed to a SQLite journal.
//!
//! The journal is a real file in a fresh temporary directory, opened with its production
//! settings (WAL, `synchronous=FULL`). The run is timed, then the finished run is resumed from
//! the journal by a fresh runtime — loading every step and re-driving it through the core — and
//! that is timed too. The directory is removed afterwards.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use converge_core::{ConvergeResult, Engine};
use converge_runtime::{DurableError, JournalError, Location, RunId, Runtime};

use crate::BenchError;

/// What the journaled fanout measured.
pub(crate) struct Journaled {
    pub(crate) result: ConvergeResult,
    pub(crate) elapsed: Duration,
    pub(crate) resume: Duration,
    /// The journal's size once closed (for SQLite, its write-ahead log checkpointed into it).
    pub(crate) bytes: u64,
    /// The write-ahead log written by the run, where the database tells it (PostgreSQL).
    pub(crate) wal_bytes: Option<u64>,
}

/// Runs `engine` durably, then resumes the finished run; returns the result, both times and
/// the journal's size.
pub(crate) fn run(engine: Engine) -> Result<Journaled, BenchError> {
    let dir = fresh_dir("journal")?;
    let outcome = run_in(&dir, engine);
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

fn run_in(dir: &std::path::Path, engine: Engine) -> Result<Journaled, BenchError> {
    let path = dir.join("journal.db");
    let (result, elapsed, resume, bytes) =
        drive_then_resume(engine, &Location::Sqlite(path.clone()), || {
            Ok(file_bytes(&path))
        })?;
    Ok(Journaled {
        result,
        elapsed,
        resume,
        bytes,
        wal_bytes: None,
    })
}

/// Runs `engine` durably in the journal at `location` (timed), calls `stored` once the run's
/// handle is closed, then resumes the finished run from a fresh handle (timed): the result,
/// both times and what `stored` measured.
pub(crate) fn drive_then_resume<T>(
    engine: Engine,
    location: &Location,
    stored: impl FnOnce() -> Result<T, BenchError>,
) -> Result<(ConvergeResult, Duration, Duration, T), BenchError> {
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(BenchError::Runtime)?;
    let run_id = RunId::new("fanout").map_err(|error| BenchError::Durable(error.to_string()))?;
    let journal_error = |error: JournalError| BenchError::Durable(error.to_string());
    let durable = |error: DurableError| BenchError::Durable(error.to_string());
    let mut journal = location.open().map_err(journal_error)?;
    let mut runtime = Runtime::new(engine);
    let start = Instant::now();
    let result = tokio
        .block_on(runtime.run_durable(&mut journal, &run_id))
        .map_err(durable)?;
    let elapsed = start.elapsed();
    drop(journal);
    let measured = stored()?;

    let mut journal = location.open().map_err(journal_error)?;
    let start = Instant::now();
    match tokio.block_on(runtime.resume_durable(&mut journal, &run_id)) {
        Err(DurableError::Finished { .. }) => {}
        Ok(_) => {
            return Err(BenchError::Durable(
                "a finished run resumed as unfinished".to_owned(),
            ));
        }
        Err(error) => return Err(durable(error)),
    }
    Ok((result, elapsed, start.elapsed(), measured))
}

/// The bytes of a journal file and its write-ahead log, if one is left.
pub(crate) fn file_bytes(path: &std::path::Path) -> u64 {
    let size = |path: &std::path::Path| std::fs::metadata(path).map_or(0, |meta| meta.len());
    size(path) + size(&std::path::PathBuf::from(format!("{}-wal", path.display())))
}

/// A fresh directory for one journaled run, removed by the caller.
pub(crate) fn fresh_dir(scenario: &str) -> Result<std::path::PathBuf, BenchError> {
    static RUNS: AtomicU64 = AtomicU64::new(0);
    let unique = RUNS.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "converge-bench-{scenario}-{}-{unique}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).map_err(BenchError::Runtime)?;
    Ok(dir)
}
