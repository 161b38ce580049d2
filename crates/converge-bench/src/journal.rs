//! The `journal` scenario: `fanout` with every step committed to a SQLite journal.
//!
//! The journal is a real file in a fresh temporary directory, opened with its production
//! settings (WAL, `synchronous=FULL`). The run is timed, then the finished run is resumed from
//! the journal by a fresh runtime — loading every step and re-driving it through the core — and
//! that is timed too. The directory is removed afterwards.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use converge_core::{ConvergeResult, Engine};
use converge_runtime::{DurableError, RunId, Runtime, SqliteJournal};

use crate::BenchError;

/// Runs `engine` durably, then resumes the finished run; returns the result and both times.
pub(crate) fn run(
    engine: Engine,
) -> Result<(ConvergeResult, Duration, Option<Duration>), BenchError> {
    static RUNS: AtomicU64 = AtomicU64::new(0);
    let unique = RUNS.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "converge-bench-journal-{}-{unique}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).map_err(BenchError::Runtime)?;
    let outcome = run_in(&dir, engine);
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

fn run_in(
    dir: &std::path::Path,
    engine: Engine,
) -> Result<(ConvergeResult, Duration, Option<Duration>), BenchError> {
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(BenchError::Runtime)?;
    let path = dir.join("journal.db");
    let run_id = RunId::new("fanout").map_err(|error| BenchError::Durable(error.to_string()))?;
    let durable = |error: DurableError| BenchError::Durable(error.to_string());
    let mut journal =
        SqliteJournal::open(&path).map_err(|error| BenchError::Durable(error.to_string()))?;
    let mut runtime = Runtime::new(engine);
    let start = Instant::now();
    let result = tokio
        .block_on(runtime.run_durable(&mut journal, &run_id))
        .map_err(durable)?;
    let elapsed = start.elapsed();
    drop(journal);

    let mut journal =
        SqliteJournal::open(&path).map_err(|error| BenchError::Durable(error.to_string()))?;
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
    let resumed = start.elapsed();
    Ok((result, elapsed, Some(resumed)))
}
