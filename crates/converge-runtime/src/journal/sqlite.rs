//! The embedded journal: one SQLite file, WAL mode, `synchronous=FULL`, one transaction per
//! step.
//!
//! `docs/journal.md` describes the on-disk schema, what is written when, and why a crash at
//! any instant leaves a journal that loads and verifies. This module deliberately never
//! updates or deletes a step or an event (triggers refuse it), never retries a failed write,
//! never creates anything in a file that is not already a Converge journal or an empty
//! database, and never migrates a schema it does not know.

use std::path::{Path, PathBuf};

use converge_core::{Digest, EventBatch};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde_json::Value;

use super::check::{
    Break, ChainWalk, Entry, Head, StepRow, StepSpan, check_steps, check_tail_steps, split_chunk,
};
use super::schema::{self, storage};
use super::{
    BreakReason, Journal, JournalError, RecordedRun, RecordedStep, RunId, RunStatus, RunSummary,
    StoredEvent, Verification,
};
use crate::record::{RunHeader, StepInput};

/// A journal in one SQLite file.
///
/// [`SqliteJournal::open`] creates the file if it does not exist, or opens an existing
/// journal after checking, without writing, that it is one and that its schema is not newer
/// than this build's. Every [`Journal::append`] is one `IMMEDIATE` transaction committed with
/// a full fsync of the write-ahead log.
///
/// ```
/// use converge_core::agents::SeedAgent;
/// use converge_core::{Context, Engine, Step, execute_isolated};
/// use converge_runtime::{Journal, RunHeader, RunId, SqliteJournal, StepInput, Verification};
///
/// let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos();
/// let path = std::env::temp_dir().join(format!("converge-doc-{}-{nanos}.journal", std::process::id()));
/// let mut journal = SqliteJournal::open(&path)?;
///
/// let mut engine = Engine::new();
/// engine.register(SeedAgent::new("seed-1", "hello"));
/// let header = RunHeader {
///     agents: vec!["seed-1".into()], created_by: "doc".into(), intent: None, job: None,
/// };
/// let id = RunId::new("doc-run")?;
/// journal.create_run(&id, &header)?;
///
/// let mut run = engine.start(Context::new())?;
/// journal.append(&id, 0, &StepInput::Start { header }, &run.take_events())?;
/// let mut step = 1;
/// while let Step::Execute(batch) = run.next_step() {
///     let outcomes: Vec<_> = batch.agents().iter()
///         .map(|&agent| (agent, execute_isolated(run.agent(agent), run.context())))
///         .collect();
///     let input = StepInput::cycle(&batch, &outcomes);
///     run.submit(outcomes)?;
///     journal.append(&id, step, &input, &run.take_events())?;
///     step += 1;
/// }
/// journal.append(&id, step, &StepInput::Stop, &run.take_events())?;
/// let result = run.finish().ok().expect("stopped");
///
/// assert!(matches!(journal.verify(&id)?,
///     Verification::Intact { root_hash, .. } if root_hash == result.root_hash));
///
/// drop(journal);
/// for suffix in ["", "-wal", "-shm"] {
///     let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct SqliteJournal {
    conn: Connection,
    path: PathBuf,
    /// Set when a write failed in storage: the handle then refuses writes.
    poisoned: Option<String>,
}

impl SqliteJournal {
    /// Opens the journal at `path`, creating it if the file does not exist (or is an empty
    /// database, as a crash during creation leaves it).
    ///
    /// A file that is not an SQLite database, an SQLite database of another application, or a
    /// journal with a newer schema version is refused with a clear error, and left untouched:
    /// it is first inspected through a read-only connection.
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteJournal, JournalError> {
        let path = path.as_ref().to_path_buf();
        let conn = schema::open(&path)?;
        Ok(SqliteJournal {
            conn,
            path,
            poisoned: None,
        })
    }

    /// The journal's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `write` in one `IMMEDIATE` transaction and commits it. Any storage failure
    /// poisons the handle; a refusal (out of order, unknown run…) does not.
    fn write<T>(
        &mut self,
        write: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, JournalError>,
    ) -> Result<T, JournalError> {
        if let Some(detail) = &self.poisoned {
            return Err(JournalError::Poisoned {
                detail: detail.clone(),
            });
        }
        let outcome = (|| {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(storage("beginning a write transaction"))?;
            let value = write(&tx)?;
            tx.commit().map_err(storage("committing"))?;
            Ok(value)
        })();
        if let Err(error @ JournalError::Storage { .. }) = &outcome {
            self.poisoned = Some(error.to_string());
        }
        outcome
    }

    /// Checks the whole run. With `bodies`, every event's hash is recomputed from its stored
    /// bytes; without, bodies are not read. `keep` receives each intact event with its step,
    /// in seq order.
    fn scan(
        &self,
        run: &RunId,
        keep_inputs: bool,
        bodies: bool,
        keep: impl FnMut(u64, &Entry<'_>),
    ) -> Result<Scanned, JournalError> {
        // One read transaction: steps and events come from the same snapshot even while
        // another connection appends.
        let tx = self
            .conn
            .unchecked_transaction()
            .map_err(storage("beginning a read"))?;
        let row = read_run(&tx, run)?;
        let head = row.head()?;
        let header = row.header()?;
        let mut statement = tx
            .prepare_cached(
                "SELECT step, kind, input, first_seq, events FROM steps \
                 WHERE run = ?1 ORDER BY step",
            )
            .map_err(storage("reading steps"))?;
        let rows = statement
            .query_map([run.as_str()], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, i64>(3)?,
                    row.get::<_, i64>(4)?,
                ))
            })
            .map_err(storage("reading steps"))?;
        let mut step_rows = Vec::new();
        for row in rows {
            let (step, kind, input, first_seq, events) = row.map_err(storage("reading steps"))?;
            step_rows.push(StepRow {
                step: unsigned(step, "step number")?,
                kind,
                input,
                first_seq: unsigned(first_seq, "first seq")?,
                events: unsigned(events, "event count")?,
            });
        }
        let mut steps = check_steps(step_rows, &head, &header, keep_inputs);
        let inputs = std::mem::take(&mut steps.inputs);
        let mut walk = ChainWalk::new(&steps, head);
        // Bodies come last in a row, so a read without them leaves their pages untouched.
        let query = if bodies {
            "SELECT first_seq, step, count, hashes, ends, bodies FROM events \
             WHERE run = ?1 ORDER BY first_seq"
        } else {
            "SELECT first_seq, step, count, hashes FROM events WHERE run = ?1 ORDER BY first_seq"
        };
        let mut statement = tx
            .prepare_cached(query)
            .map_err(storage("reading events"))?;
        let mut rows = statement
            .query([run.as_str()])
            .map_err(storage("reading events"))?;
        let checked = walk_chunks(&mut rows, &mut walk, bodies, 0, keep)?;
        let checked = checked.and_then(|()| walk.finish());
        Ok(Scanned {
            row,
            inputs,
            checked,
        })
    }

    /// The stored events from seq `from` on, at most `limit` of them, checked without
    /// reading the run before them.
    ///
    /// Reads the run row, the chunk holding `from` (its `step` column names the step to start
    /// from), the step rows from the one holding `from` to the one holding the last event
    /// returned (their ranges only, or to the run's last step when the read reaches the
    /// head), the stored hash of event `from - 1`, and the chunks from the one holding `from`
    /// to the one holding the last event returned. Each event returned is checked as
    /// [`Journal::verify`] checks it: no gap, nothing beyond the head, filed under the step
    /// whose range holds it, its hash recomputed over its stored bytes chained from the stored
    /// hash before it; a read that reaches the head also checks the last steps and the root
    /// hash. Events before `from` are not checked.
    fn tail(&self, run: &RunId, from: u64, limit: usize) -> Result<Vec<StoredEvent>, JournalError> {
        // One read transaction: every row comes from the same snapshot even while another
        // connection appends.
        let tx = self
            .conn
            .unchecked_transaction()
            .map_err(storage("beginning a read"))?;
        let row = read_run(&tx, run)?;
        let head = row.head()?;
        let limit = u64::try_from(limit).unwrap_or(u64::MAX);
        let end = head.events.min(from.saturating_add(limit));
        if from >= end {
            return Ok(Vec::new());
        }
        let from_sql = signed(from)?;
        // The chunk holding `from` (the last one starting at or before it) and the step it
        // is filed under.
        let hint: Option<(i64, i64, i64)> = tx
            .prepare_cached(
                "SELECT first_seq, step, count FROM events WHERE run = ?1 AND first_seq <= ?2 \
                 ORDER BY first_seq DESC LIMIT 1",
            )
            .and_then(|mut statement| {
                statement
                    .query_row(params![run.as_str(), from_sql], |row| {
                        Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                    })
                    .optional()
            })
            .map_err(storage("reading events"))?;
        let (chunk_start, filed, count) = hint.unwrap_or((from_sql, i64::MAX, 0));
        // Where the stored events before `from` end, when they end before it: not even
        // event 0 is stored without a chunk at or before `from`.
        let gap = match hint {
            None => Some(0),
            Some(_) => {
                let chunk_end =
                    unsigned(chunk_start, "seq")?.saturating_add(unsigned(count, "event count")?);
                (chunk_end <= from).then_some(chunk_end)
            }
        };

        // The step holding `from`: the last step at or before the one the chunk is filed
        // under that starts at or before `from` (the filed step itself, unless misfiled).
        let first_step: Option<i64> = tx
            .prepare_cached(
                "SELECT step FROM steps WHERE run = ?1 AND step <= ?2 AND first_seq <= ?3 \
                 ORDER BY step DESC LIMIT 1",
            )
            .and_then(|mut statement| {
                statement
                    .query_row(params![run.as_str(), filed, from_sql], |row| row.get(0))
                    .optional()
            })
            .map_err(storage("reading steps"))?;
        let mut spans = Vec::new();
        if let Some(first_step) = first_step {
            let mut statement = tx
                .prepare_cached(
                    "SELECT step, first_seq, events FROM steps WHERE run = ?1 AND step >= ?2 \
                     ORDER BY step",
                )
                .map_err(storage("reading steps"))?;
            let mut rows = statement
                .query(params![run.as_str(), first_step])
                .map_err(storage("reading steps"))?;
            let read = storage("reading steps");
            while let Some(row) = rows.next().map_err(&read)? {
                let span = StepSpan {
                    step: unsigned(row.get(0).map_err(&read)?, "step number")?,
                    first_seq: unsigned(row.get(1).map_err(&read)?, "first seq")?,
                    events: unsigned(row.get(2).map_err(&read)?, "event count")?,
                };
                let covers_end = span.first_seq.saturating_add(span.events) >= end;
                spans.push(span);
                if covers_end && end < head.events {
                    break;
                }
            }
        }
        let steps = check_tail_steps(spans, &head, from, end);
        if let Some(seq) = gap {
            return Err(SqliteJournal::broken(
                run,
                Break {
                    seq,
                    step: steps.step_of(seq),
                    reason: BreakReason::Missing,
                },
            ));
        }

        // The stored hash the first event chains from: in the chunk holding `from` when it
        // starts earlier (the walk picks it up), otherwise in the chunk before.
        let previous = if from == 0 || chunk_start < from_sql {
            Digest::zero()
        } else {
            stored_hash(&tx, run, from - 1)?.map_err(|broken| SqliteJournal::broken(run, broken))?
        };
        let mut walk = ChainWalk::tail(&steps, head, from, previous, end);
        let mut statement = tx
            .prepare_cached(
                "SELECT first_seq, step, count, hashes, ends, bodies FROM events \
                 WHERE run = ?1 AND first_seq >= ?2 ORDER BY first_seq",
            )
            .map_err(storage("reading events"))?;
        let mut rows = statement
            .query(params![run.as_str(), chunk_start])
            .map_err(storage("reading events"))?;
        let mut events = Vec::new();
        let checked = walk_chunks(&mut rows, &mut walk, true, from, |step, entry| {
            if let Some(body) = entry.body {
                events.push(StoredEvent {
                    seq: entry.seq,
                    step,
                    hash: entry.hash,
                    body: body.to_vec(),
                });
            }
        })?;
        checked
            .and_then(|()| walk.finish())
            .map_err(|broken| SqliteJournal::broken(run, broken))?;
        Ok(events)
    }

    fn broken(run: &RunId, broken: Break) -> JournalError {
        JournalError::Broken {
            run: run.clone(),
            first_bad_seq: broken.seq,
            step: broken.step,
            reason: broken.reason,
        }
    }
}

/// Feeds stored chunks, in seq order, to `walk` until it is past its limit or breaks; `keep`
/// receives each intact event with the step it is filed under. Events before `from` are
/// skipped (the one just before gives the walk its starting hash). Returns the first break.
fn walk_chunks(
    rows: &mut rusqlite::Rows<'_>,
    walk: &mut ChainWalk<'_>,
    bodies: bool,
    from: u64,
    mut keep: impl FnMut(u64, &Entry<'_>),
) -> Result<Result<(), Break>, JournalError> {
    let read = storage("reading events");
    while let Some(chunk) = rows.next().map_err(&read)? {
        if walk.past_limit() {
            break;
        }
        let first_seq = unsigned(chunk.get(0).map_err(&read)?, "seq")?;
        let filed = unsigned(chunk.get(1).map_err(&read)?, "step")?;
        let count = unsigned(chunk.get(2).map_err(&read)?, "event count")?;
        let hashes = chunk
            .get_ref(3)
            .map_err(&read)?
            .as_blob()
            .map_err(&read_blob)?;
        let parts = if bodies {
            let ends = chunk
                .get_ref(4)
                .map_err(&read)?
                .as_blob()
                .map_err(&read_blob)?;
            let bodies = chunk
                .get_ref(5)
                .map_err(&read)?
                .as_blob()
                .map_err(&read_blob)?;
            Some((ends, bodies))
        } else {
            None
        };
        let entries = match split_chunk(first_seq, count, hashes, parts) {
            Ok(entries) => entries,
            Err(detail) => return Ok(Err(walk.malformed(first_seq, detail))),
        };
        for entry in &entries {
            if entry.seq < from {
                walk.skip(entry);
                continue;
            }
            match walk.feed(filed, entry) {
                Ok(true) => keep(filed, entry),
                Ok(false) => return Ok(Ok(())),
                Err(broken) => return Ok(Err(broken)),
            }
        }
    }
    Ok(Ok(()))
}

/// The stored hash of event `seq`, read from the chunk holding it without its bodies.
fn stored_hash(
    tx: &rusqlite::Transaction<'_>,
    run: &RunId,
    seq: u64,
) -> Result<Result<Digest, Break>, JournalError> {
    let read = storage("reading events");
    let seq_sql = signed(seq)?;
    let chunk: Option<(i64, i64, Vec<u8>)> = tx
        .prepare_cached(
            "SELECT first_seq, count, hashes FROM events WHERE run = ?1 AND first_seq <= ?2 \
             ORDER BY first_seq DESC LIMIT 1",
        )
        .and_then(|mut statement| {
            statement
                .query_row(params![run.as_str(), seq_sql], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })
                .optional()
        })
        .map_err(&read)?;
    let missing = |at| Break {
        seq: at,
        step: None,
        reason: BreakReason::Missing,
    };
    // Without a chunk starting at or before `seq`, not even event 0 is stored.
    let Some((first_seq, count, hashes)) = chunk else {
        return Ok(Err(missing(0)));
    };
    let first_seq = unsigned(first_seq, "seq")?;
    let count = unsigned(count, "event count")?;
    let entries = match split_chunk(first_seq, count, &hashes, None) {
        Ok(entries) => entries,
        Err(detail) => {
            return Ok(Err(Break {
                seq: first_seq,
                step: None,
                reason: BreakReason::Malformed { detail },
            }));
        }
    };
    Ok(entries
        .iter()
        .find(|entry| entry.seq == seq)
        .map(|entry| entry.hash)
        .ok_or_else(|| missing(first_seq.saturating_add(count))))
}

/// Most events a stored chunk holds.
const CHUNK_EVENTS: usize = 4096;

/// Most body bytes a stored chunk holds (a larger event is a chunk of its own).
const CHUNK_BYTES: usize = 1 << 20;

/// Splits a batch into the chunks it is stored as: runs of consecutive events bounded by
/// [`CHUNK_EVENTS`] and [`CHUNK_BYTES`], each with at least one event. `Err(seq)` names an
/// event too large for a chunk's 32-bit offsets (over 4 GiB).
fn chunks(events: &EventBatch) -> Result<Vec<Chunk>, u64> {
    let mut chunks: Vec<Chunk> = Vec::new();
    for (record, body) in events.iter() {
        let fits = chunks.last().is_some_and(|chunk| {
            chunk.count < CHUNK_EVENTS && chunk.bodies.len() + body.len() <= CHUNK_BYTES
        });
        if !fits {
            chunks.push(Chunk {
                first_seq: record.seq,
                count: 0,
                hashes: Vec::new(),
                ends: Vec::new(),
                bodies: Vec::new(),
            });
        }
        if let Some(chunk) = chunks.last_mut() {
            chunk.count += 1;
            chunk.hashes.extend_from_slice(record.hash.as_bytes());
            chunk.bodies.extend_from_slice(body);
            let end = u32::try_from(chunk.bodies.len()).map_err(|_| record.seq)?;
            chunk.ends.extend_from_slice(&end.to_le_bytes());
        }
    }
    Ok(chunks)
}

/// Consecutive events as one `events` row.
struct Chunk {
    first_seq: u64,
    count: usize,
    hashes: Vec<u8>,
    ends: Vec<u8>,
    bodies: Vec<u8>,
}

fn read_blob(error: rusqlite::types::FromSqlError) -> JournalError {
    JournalError::Corrupt {
        detail: format!("a stored event chunk is not a blob: {error}"),
    }
}

impl Journal for SqliteJournal {
    fn create_run(&mut self, run: &RunId, header: &RunHeader) -> Result<(), JournalError> {
        let header = to_json(header)?;
        self.write(|tx| {
            let exists = tx
                .query_row("SELECT 1 FROM runs WHERE id = ?1", [run.as_str()], |_| {
                    Ok(())
                })
                .optional()
                .map_err(storage("looking up the run"))?;
            if exists.is_some() {
                return Err(JournalError::RunExists { run: run.clone() });
            }
            tx.execute(
                "INSERT INTO runs (id, header, status, stop_reason, steps, events, root_hash) \
                 VALUES (?1, ?2, 'running', NULL, 0, 0, ?3)",
                params![run.as_str(), header, Digest::zero().to_string()],
            )
            .map_err(storage("creating the run"))?;
            Ok(())
        })
    }

    fn append(
        &mut self,
        run: &RunId,
        step: u64,
        input: &StepInput,
        events: &EventBatch,
    ) -> Result<(), JournalError> {
        // Everything that needs no storage is prepared before the transaction begins.
        let input_json = to_json(input)?;
        let chunks = chunks(events).map_err(|seq| JournalError::ChainMismatch {
            run: run.clone(),
            seq,
            detail: "the event is larger than the 4 GiB a journal stores".to_owned(),
        })?;
        self.write(|tx| {
            let row = read_run(tx, run)?;
            let head = row.head()?;
            if row.status == "stopped" {
                return Err(JournalError::RunStopped { run: run.clone() });
            }
            if step != head.steps {
                return Err(JournalError::OutOfOrder {
                    run: run.clone(),
                    expected: head.steps,
                    got: step,
                });
            }
            let invalid = |detail| JournalError::InvalidStep {
                run: run.clone(),
                step,
                detail,
            };
            match (step, input) {
                (0, StepInput::Start { header }) if *header != row.header()? => {
                    return Err(invalid("the start's header differs from the run's"));
                }
                (0, StepInput::Start { .. }) => {}
                (0, _) => return Err(invalid("step 0 must be the run's start")),
                (_, StepInput::Start { .. }) => return Err(invalid("only step 0 may be a start")),
                _ => {}
            }
            if events.first_seq() != head.events {
                return Err(JournalError::ChainMismatch {
                    run: run.clone(),
                    seq: events.first_seq(),
                    detail: format!("the next seq is {}", head.events),
                });
            }
            if events.previous() != head.root {
                return Err(JournalError::ChainMismatch {
                    run: run.clone(),
                    seq: events.first_seq(),
                    detail: format!(
                        "it chains from {}, not from the stored head {}",
                        events.previous(),
                        head.root
                    ),
                });
            }
            let next_seq = head.events + events.len() as u64;
            tx.execute(
                "INSERT INTO steps (run, step, kind, input, first_seq, events) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    run.as_str(),
                    signed(step)?,
                    input.kind(),
                    input_json,
                    signed(head.events)?,
                    signed(events.len() as u64)?,
                ],
            )
            .map_err(storage("writing the step"))?;
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO events (run, first_seq, step, count, hashes, ends, bodies) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(storage("writing events"))?;
            for chunk in &chunks {
                insert
                    .execute(params![
                        run.as_str(),
                        signed(chunk.first_seq)?,
                        signed(step)?,
                        signed(chunk.count as u64)?,
                        chunk.hashes,
                        chunk.ends,
                        chunk.bodies,
                    ])
                    .map_err(storage("writing events"))?;
            }
            tx.execute(
                "UPDATE runs SET steps = ?2, events = ?3, root_hash = ?4 WHERE id = ?1",
                params![
                    run.as_str(),
                    signed(step + 1)?,
                    signed(next_seq)?,
                    events.head().to_string()
                ],
            )
            .map_err(storage("advancing the run's head"))?;
            Ok(())
        })
    }

    fn set_status(
        &mut self,
        run: &RunId,
        status: RunStatus,
        root_hash: Digest,
    ) -> Result<(), JournalError> {
        let reason = match &status {
            RunStatus::Stopped { reason } => Some(to_json(reason)?),
            _ => None,
        };
        self.write(|tx| {
            let row = read_run(tx, run)?;
            let head = row.head()?;
            if head.root != root_hash {
                return Err(JournalError::HeadMismatch {
                    run: run.clone(),
                    stored: head.root,
                    given: root_hash,
                });
            }
            let current = row.status()?;
            if current == status {
                return Ok(());
            }
            if let RunStatus::Stopped { .. } = current {
                return Err(JournalError::RunStopped { run: run.clone() });
            }
            tx.execute(
                "UPDATE runs SET status = ?2, stop_reason = ?3 WHERE id = ?1",
                params![run.as_str(), status.name(), reason],
            )
            .map_err(storage("setting the run's status"))?;
            Ok(())
        })
    }

    fn runs(&self) -> Result<Vec<RunSummary>, JournalError> {
        let mut statement = self
            .conn
            .prepare_cached(&format!("SELECT {RUN_COLUMNS} FROM runs ORDER BY rowid"))
            .map_err(storage("listing runs"))?;
        let rows = statement
            .query_map([], RunRow::from_row)
            .map_err(storage("listing runs"))?;
        let mut runs = Vec::new();
        for row in rows {
            runs.push(row.map_err(storage("listing runs"))?.summary()?);
        }
        Ok(runs)
    }

    fn summary(&self, run: &RunId) -> Result<RunSummary, JournalError> {
        read_run(&self.conn, run)?.summary()
    }

    fn header(&self, run: &RunId) -> Result<RunHeader, JournalError> {
        read_run(&self.conn, run)?.header()
    }

    fn load(&self, run: &RunId) -> Result<RecordedRun, JournalError> {
        let mut hashes: Vec<Vec<Digest>> = Vec::new();
        let Scanned {
            row,
            inputs,
            checked,
        } = self.scan(run, true, false, |step, entry| {
            let index = usize::try_from(step).unwrap_or(usize::MAX);
            if hashes.len() <= index {
                hashes.resize_with(index.saturating_add(1), Vec::new);
            }
            if let Some(slot) = hashes.get_mut(index) {
                slot.push(entry.hash);
            }
        })?;
        checked.map_err(|broken| SqliteJournal::broken(run, broken))?;
        hashes.resize_with(inputs.len(), Vec::new);
        let mut first_seq = 0;
        let steps = inputs
            .into_iter()
            .zip(hashes)
            .enumerate()
            .map(|(step, (input, hashes))| {
                let recorded = RecordedStep {
                    step: step as u64,
                    input,
                    first_seq,
                    hashes,
                };
                first_seq += recorded.hashes.len() as u64;
                recorded
            })
            .collect();
        let summary = row.summary()?;
        Ok(RecordedRun {
            id: summary.id,
            header: row.header()?,
            status: summary.status,
            root_hash: summary.root_hash,
            steps,
        })
    }

    fn events(&self, run: &RunId, from: u64) -> Result<Vec<StoredEvent>, JournalError> {
        self.tail(run, from, usize::MAX)
    }

    fn events_page(
        &self,
        run: &RunId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, JournalError> {
        self.tail(run, from, limit)
    }

    fn verify(&self, run: &RunId) -> Result<Verification, JournalError> {
        let Scanned { row, checked, .. } = self.scan(run, false, true, |_, _| {})?;
        Ok(match checked {
            Ok(()) => {
                let head = row.head()?;
                Verification::Intact {
                    steps: head.steps,
                    events: head.events,
                    root_hash: head.root,
                }
            }
            Err(broken) => Verification::Broken {
                first_bad_seq: broken.seq,
                step: broken.step,
                reason: broken.reason,
            },
        })
    }
}

/// What [`SqliteJournal::scan`] found.
struct Scanned {
    row: RunRow,
    /// The inputs of the intact steps, when asked for.
    inputs: Vec<StepInput>,
    /// The first break, if any.
    checked: Result<(), Break>,
}

const RUN_COLUMNS: &str = "id, header, status, stop_reason, steps, events, root_hash";

/// A `runs` row as stored.
struct RunRow {
    id: String,
    header: String,
    status: String,
    stop_reason: Option<String>,
    steps: i64,
    events: i64,
    root_hash: String,
}

impl RunRow {
    fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RunRow> {
        Ok(RunRow {
            id: row.get(0)?,
            header: row.get(1)?,
            status: row.get(2)?,
            stop_reason: row.get(3)?,
            steps: row.get(4)?,
            events: row.get(5)?,
            root_hash: row.get(6)?,
        })
    }

    fn head(&self) -> Result<Head, JournalError> {
        Ok(Head {
            steps: unsigned(self.steps, "step count")?,
            events: unsigned(self.events, "event count")?,
            root: self.root_hash.parse().map_err(|_| JournalError::Corrupt {
                detail: format!("run {:?} has root hash {:?}", self.id, self.root_hash),
            })?,
        })
    }

    fn header(&self) -> Result<RunHeader, JournalError> {
        serde_json::from_str(&self.header).map_err(|error| JournalError::Corrupt {
            detail: format!("run {:?} has an unreadable header: {error}", self.id),
        })
    }

    fn status(&self) -> Result<RunStatus, JournalError> {
        let corrupt = || JournalError::Corrupt {
            detail: format!(
                "run {:?} has status {:?} with stop reason {:?}",
                self.id, self.status, self.stop_reason
            ),
        };
        match (self.status.as_str(), &self.stop_reason) {
            ("running", None) => Ok(RunStatus::Running),
            ("awaiting_approval", None) => Ok(RunStatus::AwaitingApproval),
            ("stopped", Some(reason)) => {
                let reason: Value = serde_json::from_str(reason).map_err(|_| corrupt())?;
                Ok(RunStatus::Stopped { reason })
            }
            _ => Err(corrupt()),
        }
    }

    fn summary(&self) -> Result<RunSummary, JournalError> {
        let head = self.head()?;
        Ok(RunSummary {
            id: RunId::new(&self.id).map_err(|error| JournalError::Corrupt {
                detail: error.to_string(),
            })?,
            status: self.status()?,
            steps: head.steps,
            events: head.events,
            root_hash: head.root,
        })
    }
}

fn read_run(conn: &Connection, run: &RunId) -> Result<RunRow, JournalError> {
    conn.query_row(
        &format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"),
        [run.as_str()],
        RunRow::from_row,
    )
    .optional()
    .map_err(storage("reading the run"))?
    .ok_or_else(|| JournalError::UnknownRun { run: run.clone() })
}

fn to_json(value: &impl serde::Serialize) -> Result<String, JournalError> {
    serde_json::to_string(value).map_err(|error| JournalError::Corrupt {
        detail: format!("cannot encode a record as JSON: {error}"),
    })
}

fn signed(value: u64) -> Result<i64, JournalError> {
    i64::try_from(value).map_err(|_| JournalError::Corrupt {
        detail: format!("{value} is beyond what the journal stores"),
    })
}

fn unsigned(value: i64, what: &str) -> Result<u64, JournalError> {
    u64::try_from(value).map_err(|_| JournalError::Corrupt {
        detail: format!("stored {what} {value} is negative"),
    })
}
