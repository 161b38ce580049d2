//! The `pg-journal` scenario: `fanout` with every step committed to a PostgreSQL journal.
//!
//! The journal is a fresh database on the server of [`crate::postgres`], opened with its
//! production settings (`synchronous_commit=on`, `fsync` on). The run is timed, then the
//! finished run is resumed from the journal by a fresh connection — loading every step and
//! re-driving it through the core — and that is timed too. The size is the database's growth
//! over the run (tables, indexes and TOAST, with their free space), measured after the schema
//! was created; the WAL is the server's WAL written over the run.

use converge_core::Engine;
use converge_runtime::{Location, PostgresJournal};

use crate::BenchError;
use crate::journal::{Journaled, drive_then_resume};
use crate::postgres::{Load, Server, connect};

/// Runs `engine` durably on PostgreSQL, then resumes the finished run.
pub(crate) fn run(engine: Engine) -> Result<Journaled, BenchError> {
    let server = Server::start()?;
    let url = server.database("journal")?;
    // The schema is created first, so the growth measured is the run's alone.
    drop(PostgresJournal::open(&url).map_err(|error| BenchError::Durable(error.to_string()))?);
    let mut figures = connect(&url)?;
    let before = Load::now(&mut figures)?;
    let (result, elapsed, resume, grown) =
        drive_then_resume(engine, &Location::Postgres(url.clone()), || {
            Ok(before.until(Load::now(&mut figures)?))
        })?;
    Ok(Journaled {
        result,
        elapsed,
        resume,
        bytes: u64::try_from(grown.database_bytes).unwrap_or(0),
        wal_bytes: u64::try_from(grown.wal_bytes).ok(),
    })
}
