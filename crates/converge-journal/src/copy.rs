//! Copying runs between journals, byte for byte: the path from a SQLite file to a shared
//! PostgreSQL database (or back).
//!
//! A run is copied as stored — its header, every step row, every outcome part and every
//! chunk of events, with their links and hashes — read in one snapshot of the source and
//! written in one transaction of the destination; nothing is re-encoded, so the copy has the
//! same root and record hashes. Each run is verified in the source before it is copied and
//! in the destination after, and the two record hashes must match. A run another live
//! process drives is refused (it would go on in the source), as is a run whose id the
//! destination already has. Leases are not copied: a copied run that was still running
//! (its process died) is free for a worker of the destination to continue.

use crate::check::StepRow;
use crate::postgres::PostgresJournal;
use crate::sqlite::SqliteJournal;
use crate::store::{Backend, ChunkRow, NewHead, NewPart, NewStep, PartRow, RunRow, Tx, signed};
use crate::{Holder, Journal, JournalError, Location, RunId, Verification, wall_clock_ms};

/// One copied run.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Copied {
    /// The run.
    pub run: RunId,
    /// Its committed steps.
    pub steps: u64,
    /// Its events.
    pub events: u64,
    /// Its record hash, the same in both journals.
    pub record_hash: converge_core::Digest,
}

/// Copies runs from the journal at `from` to the one at `to` (created if need be): every
/// run when `runs` is empty, else those named, in the source's order. Stops at the first
/// run that cannot be copied; the runs copied before it stay copied.
///
/// ```
/// use converge_journal::{Location, copy};
///
/// let dir = std::env::temp_dir().join(format!("converge-copy-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let from = Location::Sqlite(dir.join("a.journal"));
/// let to = Location::Sqlite(dir.join("b.journal"));
/// drop(from.open()?); // an empty journal
/// assert!(copy(&from, &to, &[], &mut |_| {})?.is_empty());
/// std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn copy(
    from: &Location,
    to: &Location,
    runs: &[RunId],
    progress: &mut dyn FnMut(&Copied),
) -> Result<Vec<Copied>, JournalError> {
    if from == to {
        return Err(JournalError::Unsupported {
            detail: format!("{from} cannot be copied onto itself"),
        });
    }
    let source = Opened::read_only(from)?;
    let mut destination = Opened::writable(to)?;
    let wanted: Vec<RunId> = if runs.is_empty() {
        source
            .journal()
            .runs()?
            .into_iter()
            .map(|summary| summary.id)
            .collect()
    } else {
        runs.to_vec()
    };
    let me = Holder::this_process("converge journal copy");
    let mut copied = Vec::with_capacity(wanted.len());
    for run in wanted {
        let summary = source.journal().summary(&run)?;
        if let Some(leased) = summary.driven_by(&me, wall_clock_ms()) {
            return Err(leased);
        }
        let record_hash = intact(source.journal(), &run, from)?;
        let stored = source.read_run(&run)?;
        destination.write_run(stored)?;
        let copy_hash = intact(destination.journal(), &run, to)?;
        if copy_hash != record_hash {
            return Err(JournalError::Corrupt {
                detail: format!(
                    "the copy of run {run} in {to} has record hash {copy_hash}, not {record_hash}"
                ),
            });
        }
        let done = Copied {
            run,
            steps: summary.steps,
            events: summary.events,
            record_hash,
        };
        progress(&done);
        copied.push(done);
    }
    Ok(copied)
}

/// The run's record hash if it verifies, else an error naming where it is broken.
fn intact(
    journal: &dyn Journal,
    run: &RunId,
    place: &Location,
) -> Result<converge_core::Digest, JournalError> {
    match journal.verify(run)? {
        Verification::Intact { record_hash, .. } => Ok(record_hash),
        Verification::Broken { at, reason } => Err(JournalError::Corrupt {
            detail: format!("run {run} in {place} is broken at {at}: {reason}; it is not copied"),
        }),
    }
}

/// A run's stored rows.
struct StoredRun {
    row: RunRow,
    steps: Vec<StepRow>,
    parts: Vec<PartRow>,
    chunks: Vec<OwnedChunk>,
}

struct OwnedChunk {
    first_seq: i64,
    step: i64,
    count: i64,
    hashes: Vec<u8>,
    ends: Vec<u8>,
    bodies: Vec<u8>,
}

/// Reads a run's rows in one snapshot.
fn read(tx: &mut dyn Tx, run: &RunId) -> Result<StoredRun, JournalError> {
    let row = tx
        .run(run.as_str())?
        .ok_or_else(|| JournalError::UnknownRun { run: run.clone() })?;
    let steps = tx.steps(run.as_str())?;
    let parts = tx.parts(run.as_str())?;
    let mut chunks = Vec::new();
    tx.chunks(run.as_str(), 0, true, &mut |chunk| {
        chunks.push(OwnedChunk {
            first_seq: chunk.first_seq,
            step: chunk.step,
            count: chunk.count,
            hashes: chunk.hashes.to_vec(),
            ends: chunk.ends.unwrap_or_default().to_vec(),
            bodies: chunk.bodies.unwrap_or_default().to_vec(),
        });
        Ok(true)
    })?;
    Ok(StoredRun {
        row,
        steps,
        parts,
        chunks,
    })
}

/// Writes a run's rows as they were read, in one transaction.
fn write(tx: &mut dyn Tx, stored: &StoredRun) -> Result<(), JournalError> {
    let row = &stored.row;
    if tx.run(&row.id)?.is_some() {
        return Err(JournalError::RunExists {
            run: RunId::new(&row.id).map_err(|error| JournalError::Corrupt {
                detail: error.to_string(),
            })?,
        });
    }
    tx.insert_run(&row.id, &row.header, &row.header_link)?;
    for step in &stored.steps {
        tx.insert_step(
            &row.id,
            &NewStep {
                step: signed(step.step)?,
                kind: &step.kind,
                input: &step.input,
                first_seq: signed(step.first_seq)?,
                events: signed(step.events)?,
                input_link: step.input_link,
                link: step.link,
            },
        )?;
    }
    for part in &stored.parts {
        let new = NewPart {
            step: part.step,
            part: part.part,
            cycle: part.cycle,
            agents: &part.agents,
            ends: &part.ends,
            bodies: &part.bodies,
        };
        tx.insert_part(&row.id, &new)?;
    }
    for chunk in &stored.chunks {
        tx.insert_chunk(
            &row.id,
            &ChunkRow {
                first_seq: chunk.first_seq,
                step: chunk.step,
                count: chunk.count,
                hashes: &chunk.hashes,
                ends: Some(&chunk.ends),
                bodies: Some(&chunk.bodies),
            },
        )?;
    }
    tx.advance(
        &row.id,
        &NewHead {
            steps: row.steps,
            events: row.events,
            root_hash: row.root_hash.clone(),
            record_hash: row.record_hash.clone(),
            status: &row.status,
            stop_reason: row.stop_reason.as_deref(),
            release: None,
        },
    )
}

/// A journal opened as its backend, for reading and writing rows.
enum Opened {
    Sqlite(SqliteJournal),
    Postgres(PostgresJournal),
}

impl Opened {
    fn read_only(location: &Location) -> Result<Opened, JournalError> {
        Ok(match location {
            Location::Sqlite(path) => Opened::Sqlite(SqliteJournal::open_read_only(path)?),
            Location::Postgres(url) => Opened::Postgres(PostgresJournal::open_read_only(url)?),
        })
    }

    fn writable(location: &Location) -> Result<Opened, JournalError> {
        Ok(match location {
            Location::Sqlite(path) => Opened::Sqlite(SqliteJournal::open(path)?),
            Location::Postgres(url) => Opened::Postgres(PostgresJournal::open(url)?),
        })
    }

    fn journal(&self) -> &dyn Journal {
        match self {
            Opened::Sqlite(journal) => journal,
            Opened::Postgres(journal) => journal,
        }
    }

    fn read_run(&self, run: &RunId) -> Result<StoredRun, JournalError> {
        let run = run.clone();
        match self {
            Opened::Sqlite(journal) => journal.read(move |tx| read(tx, &run)),
            Opened::Postgres(journal) => journal.read(move |tx| read(tx, &run)),
        }
    }

    fn write_run(&mut self, stored: StoredRun) -> Result<(), JournalError> {
        match self {
            Opened::Sqlite(journal) => journal.write(move |tx| write(tx, &stored)),
            Opened::Postgres(journal) => journal.write(move |tx| write(tx, &stored)),
        }
    }
}
