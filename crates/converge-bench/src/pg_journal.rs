//! The `pg-journal` scenario: `fanout` with every step committed to a PostgreSQL journal.
//!
//! The journal is a fresh database on the server of [`crate::postgres`], opened with its
//! production settings (`synchronous_commit=on`, `fsync` on). The run is timed, then the
//! finished run is resumed from the journal by a fresh connection — loading every step and
//! re-driving it through the core — and that is timed too. The size is the database's growth
//! over the run (tables, indexes and TOAST, with their free space), measured after the schema
//! was created; the WAL is the server's WAL written over the run.

use std::time::Instant;

use converge_core::Engine;
use converge_runtime::{DurableError, PostgresJournal, RunId, Runtime};

use crate::BenchError;
use crate::journal::Journaled;
use crate::postgres::{Load, Server, connect};

/// Runs `engine` durably on PostgreSQL, then resumes the finished run.
pub(crate) fn run(engine: Engine) -> Result<Journaled, BenchError> {
    let server = Server::start()?;
    let url = server.database("journal")?;
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(BenchError::Runtime)?;
    let run_id = RunId::new("fanout").map_err(|error| BenchError::Durable(error.to_string()))?;
    let journal_error =
        |error: converge_runtime::JournalError| BenchError::Durable(error.to_string());
    let durable = |error: DurableError| BenchError::Durable(error.to_string());
    let mut journal = PostgresJournal::open(&url).map_err(journal_error)?;
    let mut figures = connect(&url)?;
    let before = Load::now(&mut figures)?;
    let mut runtime = Runtime::new(engine);
    let start = Instant::now();
    let result = tokio
        .block_on(runtime.run_durable(&mut journal, &run_id))
        .map_err(durable)?;
    let elapsed = start.elapsed();
    drop(journal);
    let grown = before.until(Load::now(&mut figures)?);

    let mut journal = PostgresJournal::open(&url).map_err(journal_error)?;
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
    let resume = start.elapsed();
    Ok(Journaled {
        result,
        elapsed,
        resume,
        bytes: u64::try_from(grown.database_bytes).unwrap_or(0),
        wal_bytes: u64::try_from(grown.wal_bytes).ok(),
    })
}
