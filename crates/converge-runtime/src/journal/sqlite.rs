//! The embedded journal: one SQLite file, WAL mode, `synchronous=FULL`, one transaction per
//! step (and per group of outcomes committed ahead of their step).
//!
//! `docs/journal.md` describes the on-disk schema, what is written when, and why a crash at
//! any instant leaves a journal that loads and verifies. This module deliberately never
//! updates or deletes a step or an event (triggers refuse it), never retries a failed write,
//! never creates anything in a file that is not already a Converge journal or an empty
//! database, and never migrates a schema it does not know.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use converge_core::{Digest, Event, EventBatch};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde_json::Value;

use super::check::{
    Break, ChainWalk, Entry, Head, RecordHeads, StepOutcomes, StepRow, StepSpan, check_links,
    check_outcomes, check_steps, check_tail_steps, split_chunk,
};
use super::lease::{Holder, LEASE_TTL_MS, Lease};
use super::link::{header_link, input_link, outcomes_digest, step_link};
use super::pack::{Group, Unpacked};
use super::schema::{self, storage};
use super::{
    BreakReason, Journal, JournalError, OpenCycle, Place, RecordedRun, RecordedStep, RunId,
    RunStatus, RunSummary, StoredEvent, Verification,
};
use crate::record::{OutcomeRecord, RunHeader, StepInput};

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
/// use converge_runtime::{
///     Holder, Journal, RunHeader, RunId, SqliteJournal, StepInput, Verification,
/// };
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
/// let holder = Holder::this_process("doc");
/// let lease = journal.create_run(&id, &header, &holder, 0)?;
///
/// let mut run = engine.start(Context::new())?;
/// journal.append(&lease, 0, &StepInput::Start { header }, &run.take_events())?;
/// let mut step = 1;
/// while let Step::Execute(batch) = run.next_step() {
///     let outcomes: Vec<_> = batch.agents().iter()
///         .map(|&agent| (agent, execute_isolated(run.agent(agent), run.context())))
///         .collect();
///     let input = StepInput::cycle(&batch, &outcomes);
///     run.submit(outcomes)?;
///     journal.append(&lease, step, &input, &run.take_events())?;
///     step += 1;
/// }
/// journal.append(&lease, step, &StepInput::Stop, &run.take_events())?;
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
    /// Opened with [`SqliteJournal::open_read_only`]: every write is refused.
    read_only: bool,
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
            read_only: false,
        })
    }

    /// Opens an existing journal for reading only: listing, loading, reading events and
    /// verifying work; every write is refused ([`JournalError::ReadOnly`]). Nothing of the
    /// journal is written, so this works on a read-only file in a read-only directory. A
    /// missing file is an error, not a new journal.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<SqliteJournal, JournalError> {
        let path = path.as_ref().to_path_buf();
        let conn = schema::open_read_only(&path)?;
        Ok(SqliteJournal {
            conn,
            path,
            poisoned: None,
            read_only: true,
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
        if self.read_only {
            return Err(JournalError::ReadOnly {
                path: self.path.clone(),
            });
        }
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

    /// Checks the whole run: the header link, every step row, every stored event hash (with
    /// `bodies`, recomputed from the stored bytes), the outcomes of each cycle against its
    /// batch, and the record chain's links over all of them. `keep` receives each intact
    /// event with its step, in seq order. The first bad place, in record order, is
    /// `checked`'s error.
    fn scan(
        &self,
        run: &RunId,
        bodies: bool,
        mut keep: impl FnMut(u64, &Entry<'_>),
    ) -> Result<Scanned, JournalError> {
        // One read transaction: steps, outcomes and events come from the same snapshot even
        // while another connection appends.
        let tx = self
            .conn
            .unchecked_transaction()
            .map_err(storage("beginning a read"))?;
        let row = read_run(&tx, run)?;
        let head = row.head()?;
        let header = row.header()?;
        let step_rows = read_steps(&tx, run)?;
        let mut steps = check_steps(&step_rows, &head, &header, true);
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
        let mut last_hashes: BTreeMap<u64, Digest> = BTreeMap::new();
        let events_checked = walk_chunks(&mut rows, &mut walk, bodies, 0, |step, entry| {
            last_hashes.insert(step, entry.hash);
            keep(step, entry);
        })?;
        let events_checked = events_checked.and_then(|()| walk.finish());
        let mut breaks: Vec<(Place, BreakReason)> = Vec::new();
        if let Err(broken) = events_checked {
            breaks.push(place_of(broken));
        }

        let stored = read_outcomes(&tx, run)?;
        let FiledOutcomes {
            by_step: outcomes,
            open,
            broken,
        } = sort_outcomes(stored, &inputs, head.steps);
        breaks.extend(broken);
        let mut heads = Vec::with_capacity(inputs.len());
        let mut event_head = Digest::zero();
        for step in 0..inputs.len() as u64 {
            if let Some(hash) = last_hashes.get(&step) {
                event_head = *hash;
            }
            heads.push(event_head);
        }
        let record_heads = RecordHeads {
            run: run.as_str(),
            header: &row.header,
            header_link: row.digest(&row.header_link, "header link")?,
            record_hash: row.digest(&row.record_hash, "record hash")?,
        };
        let all_valid = steps.broken.is_none() && inputs.len() == step_rows.len();
        let valid = if all_valid {
            step_rows.len()
        } else {
            inputs.len()
        };
        if let Some(broken) = check_links(&record_heads, &step_rows, valid, &outcomes, &heads) {
            breaks.push(broken);
        }
        let inputs = match attach_outcomes(inputs, &outcomes) {
            Ok(inputs) => inputs,
            Err((inputs, broken)) => {
                breaks.push(broken);
                inputs
            }
        };
        let checked = match breaks.into_iter().min_by_key(|(place, _)| place.order()) {
            Some(broken) => Err(broken),
            None => Ok(()),
        };
        Ok(Scanned {
            row,
            inputs,
            open,
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
        let (at, reason) = place_of(broken);
        JournalError::Broken {
            run: run.clone(),
            at,
            reason,
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
        let inflated = if bodies {
            let ends = chunk
                .get_ref(4)
                .map_err(&read)?
                .as_blob()
                .map_err(&read_blob)?;
            let compressed = chunk
                .get_ref(5)
                .map_err(&read)?
                .as_blob()
                .map_err(&read_blob)?;
            let count = usize::try_from(count).unwrap_or(usize::MAX);
            match Unpacked::new(count, ends, compressed) {
                Ok(unpacked) => Some((ends, unpacked)),
                Err(detail) => return Ok(Err(walk.malformed(first_seq, detail))),
            }
        } else {
            None
        };
        let parts = inflated
            .as_ref()
            .map(|(ends, unpacked)| (*ends, unpacked.bytes()));
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

/// Splits a batch into the chunks it is stored as: runs of consecutive events bounded like
/// every stored group ([`Group::fits`]), each with at least one event. `Err(seq)` names an
/// event too large for a chunk's 32-bit offsets (over 4 GiB).
fn chunks(events: &EventBatch) -> Result<Vec<Chunk>, u64> {
    let mut chunks: Vec<Chunk> = Vec::new();
    for (record, body) in events.iter() {
        if !chunks
            .last()
            .is_some_and(|chunk| chunk.group.fits(body.len()))
        {
            chunks.push(Chunk {
                first_seq: record.seq,
                count: 0,
                hashes: Vec::new(),
                group: Group::default(),
            });
        }
        if let Some(chunk) = chunks.last_mut() {
            chunk.count += 1;
            chunk.hashes.extend_from_slice(record.hash.as_bytes());
            chunk.group.push(body).map_err(|()| record.seq)?;
        }
    }
    Ok(chunks)
}

/// Consecutive events as one `events` row.
struct Chunk {
    first_seq: u64,
    count: usize,
    hashes: Vec<u8>,
    group: Group,
}

fn read_blob(error: rusqlite::types::FromSqlError) -> JournalError {
    JournalError::Corrupt {
        detail: format!("a stored event chunk is not a blob: {error}"),
    }
}

impl Journal for SqliteJournal {
    fn create_run(
        &mut self,
        run: &RunId,
        header: &RunHeader,
        holder: &Holder,
        now_ms: u64,
    ) -> Result<Lease, JournalError> {
        let header = to_json(header)?;
        let link = header_link(run.as_str(), &header).to_string();
        let lease = Lease::new(run, holder, now_ms);
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
                "INSERT INTO runs (id, header, header_link, status, stop_reason, steps, events, \
                 root_hash, record_hash) VALUES (?1, ?2, ?3, 'running', NULL, 0, 0, ?4, ?3)",
                params![run.as_str(), header, link, Digest::zero().to_string()],
            )
            .map_err(storage("creating the run"))?;
            store_lease(tx, &lease)
        })?;
        Ok(lease)
    }

    fn acquire(
        &mut self,
        run: &RunId,
        holder: &Holder,
        now_ms: u64,
    ) -> Result<Lease, JournalError> {
        let lease = Lease::new(run, holder, now_ms);
        self.write(|tx| {
            if let Some(leased) = read_run(tx, run)?.summary()?.driven_by(holder, now_ms) {
                return Err(leased);
            }
            store_lease(tx, &lease)
        })?;
        Ok(lease)
    }

    fn renew(&mut self, lease: &mut Lease, now_ms: u64) -> Result<(), JournalError> {
        let expires_ms = now_ms.saturating_add(LEASE_TTL_MS);
        self.write(|tx| {
            check_lease(tx, lease)?;
            tx.execute(
                "UPDATE runs SET lease_expires_ms = ?2 WHERE id = ?1",
                params![lease.run.as_str(), signed(expires_ms)?],
            )
            .map_err(storage("renewing the lease"))?;
            Ok(())
        })?;
        lease.expires_ms = expires_ms;
        Ok(())
    }

    fn release(&mut self, lease: &Lease) -> Result<(), JournalError> {
        self.write(|tx| {
            tx.execute(
                "UPDATE runs SET lease_token = NULL, lease_holder = NULL, lease_host = NULL, \
                 lease_pid = NULL, lease_expires_ms = NULL WHERE id = ?1 AND lease_token = ?2",
                params![lease.run.as_str(), lease.token],
            )
            .map_err(storage("releasing the lease"))?;
            Ok(())
        })
    }

    fn commit_outcomes(
        &mut self,
        lease: &Lease,
        step: u64,
        cycle: u32,
        outcomes: &[(u32, OutcomeRecord)],
    ) -> Result<(), JournalError> {
        let run = &lease.run;
        let encoded = encode_outcomes(outcomes)?;
        self.write(|tx| {
            let row = read_run(tx, run)?;
            check_lease(tx, lease)?;
            let head = row.head()?;
            if row.status()? != RunStatus::Running {
                return Err(JournalError::InvalidStep {
                    run: run.clone(),
                    step,
                    detail: "outcomes are committed only while a run is running",
                });
            }
            if step != head.steps {
                return Err(JournalError::OutOfOrder {
                    run: run.clone(),
                    expected: head.steps,
                    got: step,
                });
            }
            let committed = committed_agents(tx, run, step, Some(cycle))?;
            let fresh = encoded
                .iter()
                .filter(|(agent, _)| !committed.agents.contains(agent));
            insert_outcomes(tx, run, step, cycle, committed.next_part, fresh)
        })
    }

    fn append(
        &mut self,
        lease: &Lease,
        step: u64,
        input: &StepInput,
        events: &EventBatch,
    ) -> Result<(), JournalError> {
        let run = &lease.run;
        // Everything that needs no storage is prepared before the transaction begins.
        let (stored_input, outcomes, cycle) = split_outcomes(input)?;
        let encoded = encode_outcomes(outcomes)?;
        let digest = outcomes_digest(
            encoded
                .iter()
                .map(|(agent, body)| (*agent, body.as_slice())),
        );
        let chunks = chunks(events).map_err(|seq| JournalError::ChainMismatch {
            run: run.clone(),
            seq,
            detail: "the event is larger than the 4 GiB a journal stores".to_owned(),
        })?;
        let status = status_after(events);
        let stop_reason = match &status {
            Some(RunStatus::Stopped { reason }) => Some(to_json(reason)?),
            _ => None,
        };
        let status_name = status.as_ref().map_or("running", RunStatus::name);
        self.write(|tx| {
            let row = read_run(tx, run)?;
            check_lease(tx, lease)?;
            let head = row.head()?;
            check_append(run, &row, &head, step, input, events)?;
            let previous = if step == 0 {
                row.digest(&row.header_link, "header link")?
            } else {
                row.digest(&row.record_hash, "record hash")?
            };
            let input_link = input_link(previous, step, input.kind(), &stored_input, digest);
            let next_seq = head.events + events.len() as u64;
            let link = step_link(input_link, head.events, events.len() as u64, events.head());
            if let Some(cycle) = cycle {
                let committed = committed_agents(tx, run, step, Some(cycle))?;
                let fresh = encoded
                    .iter()
                    .filter(|(agent, _)| !committed.agents.contains(agent));
                insert_outcomes(tx, run, step, cycle, committed.next_part, fresh)?;
            } else if !committed_agents(tx, run, step, None)?.agents.is_empty() {
                return Err(JournalError::InvalidStep {
                    run: run.clone(),
                    step,
                    detail: "outcomes were committed for this step, but it is not a cycle",
                });
            }
            tx.execute(
                "INSERT INTO steps (run, step, kind, input, first_seq, events, input_link, link) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    run.as_str(),
                    signed(step)?,
                    input.kind(),
                    stored_input,
                    signed(head.events)?,
                    signed(events.len() as u64)?,
                    input_link.as_bytes().as_slice(),
                    link.as_bytes().as_slice(),
                ],
            )
            .map_err(storage("writing the step"))?;
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO events (run, first_seq, step, count, hashes, ends, bodies) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(storage("writing events"))?;
            for chunk in chunks {
                let (ends, bodies) = chunk.group.seal();
                insert
                    .execute(params![
                        run.as_str(),
                        signed(chunk.first_seq)?,
                        signed(step)?,
                        signed(chunk.count as u64)?,
                        chunk.hashes,
                        ends,
                        bodies,
                    ])
                    .map_err(storage("writing events"))?;
            }
            tx.execute(
                "UPDATE runs SET steps = ?2, events = ?3, root_hash = ?4, record_hash = ?5, \
                 status = ?6, stop_reason = ?7 WHERE id = ?1",
                params![
                    run.as_str(),
                    signed(step + 1)?,
                    signed(next_seq)?,
                    events.head().to_string(),
                    link.to_string(),
                    status_name,
                    stop_reason,
                ],
            )
            .map_err(storage("advancing the run's head"))?;
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
            open,
            checked,
        } = self.scan(run, false, |step, entry| {
            let index = usize::try_from(step).unwrap_or(usize::MAX);
            if hashes.len() <= index {
                hashes.resize_with(index.saturating_add(1), Vec::new);
            }
            if let Some(slot) = hashes.get_mut(index) {
                slot.push(entry.hash);
            }
        })?;
        checked.map_err(|(at, reason)| JournalError::Broken {
            run: run.clone(),
            at,
            reason,
        })?;
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
            record_hash: summary.record_hash,
            steps,
            open,
            lease: summary.lease,
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
        // The status check needs the last event only when it stops the run: keep that one
        // body (events are encoded with their kind first), not a copy of every body.
        let mut last_stop: Option<Vec<u8>> = None;
        let Scanned { row, checked, .. } = self.scan(run, true, |_, entry| {
            last_stop = entry
                .body
                .filter(|body| body.starts_with(br#"{"event":"run_stopped""#))
                .map(<[u8]>::to_vec);
        })?;
        let head = row.head()?;
        let checked = checked.and_then(|()| {
            check_status(&row, last_stop.as_deref(), head.events)
                .map_err(|detail| (Place::Run, BreakReason::StatusMismatch { detail }))
        });
        Ok(match checked {
            Ok(()) => Verification::Intact {
                steps: head.steps,
                events: head.events,
                root_hash: head.root,
                record_hash: row.digest(&row.record_hash, "record hash")?,
            },
            Err((at, reason)) => Verification::Broken { at, reason },
        })
    }
}

/// Checks everything about a step that does not depend on storage beyond the run's row: the
/// run is not stopped, the step is its next one, a start is step 0 with the run's header,
/// and the events continue its chain.
fn check_append(
    run: &RunId,
    row: &RunRow,
    head: &Head,
    step: u64,
    input: &StepInput,
    events: &EventBatch,
) -> Result<(), JournalError> {
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
    Ok(())
}

/// The status a run has after a step that emitted `events`: set by a `run_stopped` event,
/// `None` (running) otherwise.
fn status_after(events: &EventBatch) -> Option<RunStatus> {
    events
        .records()
        .iter()
        .rev()
        .find_map(|record| match &record.event {
            Event::RunStopped { reason, .. } => Some(RunStatus::after(reason)),
            _ => None,
        })
}

/// Checks the stored status against the run's last stored event (`last`: its body when it is
/// a `run_stopped` event): `stopped` with its reason after a `run_stopped` event for good,
/// `awaiting_approval` after one awaiting approval, `running` otherwise.
fn check_status(row: &RunRow, last: Option<&[u8]>, events: u64) -> Result<(), String> {
    let stopped_by: Option<Value> = last
        .filter(|_| events > 0)
        .and_then(|body| serde_json::from_slice::<Value>(body).ok())
        .filter(|event| event.get("event").and_then(Value::as_str) == Some("run_stopped"))
        .and_then(|event| event.get("reason").cloned());
    let expected = match &stopped_by {
        None => RunStatus::Running,
        Some(reason) if reason.get("stop").and_then(Value::as_str) == Some("awaiting_approval") => {
            RunStatus::AwaitingApproval
        }
        Some(reason) => RunStatus::Stopped {
            reason: reason.clone(),
        },
    };
    let stored = row.status().map_err(|error| error.to_string())?;
    if stored == expected {
        Ok(())
    } else {
        let describe = |status: &RunStatus| match status {
            RunStatus::Stopped { reason } => format!("stopped ({reason})"),
            other => other.name().to_owned(),
        };
        Err(format!(
            "it is stored as {}, but the last event says {}",
            describe(&stored),
            describe(&expected)
        ))
    }
}

/// A step's input as stored: the text of its row, its outcomes, its cycle number.
type SplitInput<'i> = (String, &'i [(u32, OutcomeRecord)], Option<u32>);

/// Splits a step's input into the text stored in its row (a cycle's without its outcomes),
/// its outcomes, and its cycle number when it is a cycle.
fn split_outcomes(input: &StepInput) -> Result<SplitInput<'_>, JournalError> {
    match input {
        StepInput::Cycle {
            cycle,
            batch,
            outcomes,
        } => {
            // The stored text is the input's without its outcomes: written by hand rather
            // than by copying the input, whose outcomes can be megabytes.
            #[derive(serde::Serialize)]
            #[serde(rename_all = "snake_case")]
            enum Stored<'a> {
                Cycle { cycle: u32, batch: &'a [u32] },
            }
            let stored = to_json(&Stored::Cycle {
                cycle: *cycle,
                batch,
            })?;
            Ok((stored, outcomes.as_slice(), Some(*cycle)))
        }
        other => Ok((to_json(other)?, &[], None)),
    }
}

/// Each outcome's stored bytes, by agent index, in increasing index order.
fn encode_outcomes(outcomes: &[(u32, OutcomeRecord)]) -> Result<Vec<(u32, Vec<u8>)>, JournalError> {
    let mut encoded = outcomes
        .iter()
        .map(|(agent, outcome)| {
            serde_json::to_vec(outcome)
                .map(|body| (*agent, body))
                .map_err(|error| JournalError::Corrupt {
                    detail: format!("cannot encode an outcome as JSON: {error}"),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    encoded.sort_by_key(|(agent, _)| *agent);
    Ok(encoded)
}

/// The agents whose outcomes are already committed for a step, and the next part number.
struct Committed {
    agents: BTreeSet<u32>,
    next_part: i64,
}

/// Reads which agents have outcomes committed for `step`; with `cycle`, refuses parts
/// recorded for another cycle.
fn committed_agents(
    tx: &rusqlite::Transaction<'_>,
    run: &RunId,
    step: u64,
    cycle: Option<u32>,
) -> Result<Committed, JournalError> {
    let read = storage("reading outcomes");
    let mut statement = tx
        .prepare_cached("SELECT part, cycle, agents FROM outcomes WHERE run = ?1 AND step = ?2")
        .map_err(&read)?;
    let mut rows = statement
        .query(params![run.as_str(), signed(step)?])
        .map_err(&read)?;
    let mut committed = Committed {
        agents: BTreeSet::new(),
        next_part: 0,
    };
    while let Some(row) = rows.next().map_err(&read)? {
        let part: i64 = row.get(0).map_err(&read)?;
        let stored_cycle: i64 = row.get(1).map_err(&read)?;
        let agents: Vec<u8> = row.get(2).map_err(&read)?;
        if cycle.is_some_and(|cycle| i64::from(cycle) != stored_cycle) {
            return Err(JournalError::InvalidStep {
                run: run.clone(),
                step,
                detail: "outcomes committed for this step belong to another cycle",
            });
        }
        committed.next_part = committed.next_part.max(part.saturating_add(1));
        committed.agents.extend(
            agents
                .chunks_exact(4)
                .map(|agent| u32::from_le_bytes([agent[0], agent[1], agent[2], agent[3]])),
        );
    }
    Ok(committed)
}

/// Inserts outcomes as parts of at most [`super::pack::GROUP_RECORDS_MAX`] records and
/// [`super::pack::GROUP_BYTES_MAX`] bytes, numbered from `first_part`.
fn insert_outcomes<'o>(
    tx: &rusqlite::Transaction<'_>,
    run: &RunId,
    step: u64,
    cycle: u32,
    first_part: i64,
    outcomes: impl Iterator<Item = &'o (u32, Vec<u8>)>,
) -> Result<(), JournalError> {
    let mut parts: Vec<(Vec<u8>, Group)> = Vec::new();
    for (agent, body) in outcomes {
        if !parts
            .last()
            .is_some_and(|(_, group)| group.fits(body.len()))
        {
            parts.push((Vec::new(), Group::default()));
        }
        if let Some((agents, group)) = parts.last_mut() {
            agents.extend_from_slice(&agent.to_le_bytes());
            group.push(body).map_err(|()| JournalError::Corrupt {
                detail: format!("agent {agent}'s outcome is larger than the journal stores"),
            })?;
        }
    }
    let mut insert = tx
        .prepare_cached(
            "INSERT INTO outcomes (run, step, part, cycle, agents, ends, bodies) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .map_err(storage("writing outcomes"))?;
    for (index, (agents, group)) in parts.into_iter().enumerate() {
        let (ends, bodies) = group.seal();
        insert
            .execute(params![
                run.as_str(),
                signed(step)?,
                first_part.saturating_add(index as i64),
                i64::from(cycle),
                agents,
                ends,
                bodies,
            ])
            .map_err(storage("writing outcomes"))?;
    }
    Ok(())
}

/// One stored part of outcomes, unpacked.
struct StoredPart {
    step: u64,
    cycle: u32,
    outcomes: StepOutcomes,
}

/// Every stored outcome part of a run, unpacked; a part that cannot be read is reported at
/// the step it is filed under.
fn read_outcomes(
    tx: &rusqlite::Transaction<'_>,
    run: &RunId,
) -> Result<Result<Vec<StoredPart>, (Place, BreakReason)>, JournalError> {
    let read = storage("reading outcomes");
    let mut statement = tx
        .prepare_cached(
            "SELECT step, cycle, agents, ends, bodies FROM outcomes WHERE run = ?1 \
             ORDER BY step, part",
        )
        .map_err(&read)?;
    let mut rows = statement.query([run.as_str()]).map_err(&read)?;
    let mut parts = Vec::new();
    while let Some(row) = rows.next().map_err(&read)? {
        let step = unsigned(row.get(0).map_err(&read)?, "step number")?;
        let cycle: i64 = row.get(1).map_err(&read)?;
        let agents: Vec<u8> = row.get(2).map_err(&read)?;
        let ends: Vec<u8> = row.get(3).map_err(&read)?;
        let bodies: Vec<u8> = row.get(4).map_err(&read)?;
        let unreadable = |detail: String| {
            Err((
                Place::Input { step },
                BreakReason::Outcomes {
                    detail: format!("a stored part cannot be read: {detail}"),
                },
            ))
        };
        if !agents.len().is_multiple_of(4) {
            return Ok(unreadable("its agent list is cut short".to_owned()));
        }
        let count = agents.len() / 4;
        let unpacked = match Unpacked::new(count, &ends, &bodies) {
            Ok(unpacked) => unpacked,
            Err(detail) => return Ok(unreadable(detail)),
        };
        let outcomes = agents
            .chunks_exact(4)
            .map(|agent| u32::from_le_bytes([agent[0], agent[1], agent[2], agent[3]]))
            .zip(unpacked.iter().map(<[u8]>::to_vec))
            .collect();
        parts.push(StoredPart {
            step,
            cycle: u32::try_from(cycle).unwrap_or(0),
            outcomes,
        });
    }
    Ok(Ok(parts))
}

/// What the stored outcome parts of a run hold, filed by step.
struct FiledOutcomes {
    /// The outcomes of each step below the run's next one, as stored, in agent order:
    /// what the record chain's links cover.
    by_step: BTreeMap<u64, StepOutcomes>,
    /// The outcomes committed ahead of the run's next step.
    open: Option<OpenCycle>,
    /// The first place where the stored outcomes do not fit their steps.
    broken: Option<(Place, BreakReason)>,
}

/// Files stored outcome parts by step (in agent order), the next step's as the open cycle,
/// and checks each committed cycle's against its batch. A bad step does not hide the others:
/// the record chain is still checked over every step's outcomes as stored.
fn sort_outcomes(
    parts: Result<Vec<StoredPart>, (Place, BreakReason)>,
    inputs: &[StepInput],
    next_step: u64,
) -> FiledOutcomes {
    let mut filed = FiledOutcomes {
        by_step: BTreeMap::new(),
        open: None,
        broken: None,
    };
    let parts = match parts {
        Ok(parts) => parts,
        Err(broken) => {
            filed.broken = Some(broken);
            return filed;
        }
    };
    let mut cycles: BTreeMap<u64, (u32, bool)> = BTreeMap::new();
    for part in parts {
        let entry = cycles.entry(part.step).or_insert((part.cycle, true));
        entry.1 &= entry.0 == part.cycle;
        filed
            .by_step
            .entry(part.step)
            .or_default()
            .extend(part.outcomes);
    }
    let mut breaks: Vec<(Place, BreakReason)> = Vec::new();
    let outcomes_break =
        |step, detail: String| (Place::Input { step }, BreakReason::Outcomes { detail });
    for (step, outcomes) in &mut filed.by_step {
        outcomes.sort_by_key(|(agent, _)| *agent);
        let (cycle, one_cycle) = cycles.get(step).copied().unwrap_or((0, false));
        if !one_cycle {
            breaks.push(outcomes_break(
                *step,
                "its parts name different cycles".to_owned(),
            ));
            continue;
        }
        let input = usize::try_from(*step)
            .ok()
            .and_then(|index| inputs.get(index));
        match input {
            Some(StepInput::Cycle {
                cycle: recorded,
                batch,
                ..
            }) if *recorded == cycle => {
                if let Err(detail) = check_outcomes(batch, outcomes) {
                    breaks.push(outcomes_break(*step, detail));
                }
            }
            // A step the step checks did not accept: that break comes first.
            None if *step < next_step => {}
            _ if *step == next_step => {}
            _ => breaks.push(outcomes_break(
                *step,
                format!("outcomes of cycle {cycle} are filed under this step"),
            )),
        }
    }
    if let Some(outcomes) = filed.by_step.remove(&next_step) {
        let cycle = cycles.get(&next_step).map_or(0, |(cycle, _)| *cycle);
        match open_cycle(next_step, cycle, outcomes) {
            Ok(open) => filed.open = Some(open),
            Err(detail) => breaks.push(outcomes_break(next_step, detail)),
        }
    }
    filed.broken = breaks.into_iter().min_by_key(|(place, _)| place.order());
    filed
}

/// Reads the outcomes committed ahead of the step that will hold them.
fn open_cycle(step: u64, cycle: u32, outcomes: StepOutcomes) -> Result<OpenCycle, String> {
    let mut records = Vec::with_capacity(outcomes.len());
    let mut previous = None;
    for (agent, body) in outcomes {
        if previous == Some(agent) {
            return Err(format!("agent {agent}'s outcome is stored twice"));
        }
        previous = Some(agent);
        let record: OutcomeRecord = serde_json::from_slice(&body)
            .map_err(|error| format!("agent {agent}'s outcome cannot be read: {error}"))?;
        records.push((agent, record));
    }
    Ok(OpenCycle {
        step,
        cycle,
        outcomes: records,
    })
}

/// Puts each committed cycle's stored outcomes back into its input. An outcome that cannot
/// be read breaks the record at its step's input; the inputs before it are returned with the
/// break.
#[allow(clippy::type_complexity)]
fn attach_outcomes(
    inputs: Vec<StepInput>,
    outcomes: &BTreeMap<u64, StepOutcomes>,
) -> Result<Vec<StepInput>, (Vec<StepInput>, (Place, BreakReason))> {
    let mut attached = Vec::with_capacity(inputs.len());
    for (step, input) in (0u64..).zip(inputs) {
        let StepInput::Cycle { cycle, batch, .. } = input else {
            attached.push(input);
            continue;
        };
        let stored = outcomes.get(&step).map(Vec::as_slice).unwrap_or(&[]);
        let mut records = Vec::with_capacity(stored.len());
        for (agent, body) in stored {
            match serde_json::from_slice::<OutcomeRecord>(body) {
                Ok(record) => records.push((*agent, record)),
                Err(error) => {
                    let detail = format!("agent {agent}'s outcome cannot be read: {error}");
                    let at = (Place::Input { step }, BreakReason::Outcomes { detail });
                    return Err((attached, at));
                }
            }
        }
        attached.push(StepInput::Cycle {
            cycle,
            batch,
            outcomes: records,
        });
    }
    Ok(attached)
}

/// Where an event-level break lies in the record: an unreadable input at its step's input,
/// a chain that does not end at the stored root hash at the run's heads, anything else at
/// the event.
fn place_of(broken: Break) -> (Place, BreakReason) {
    let place = match (&broken.reason, broken.step) {
        (BreakReason::StepUnreadable { .. }, Some(step)) => Place::Input { step },
        (BreakReason::RootMismatch, _) => Place::Run,
        _ => Place::Event {
            step: broken.step,
            seq: broken.seq,
        },
    };
    (place, broken.reason)
}

/// Records `lease` as the run's.
fn store_lease(tx: &rusqlite::Transaction<'_>, lease: &Lease) -> Result<(), JournalError> {
    tx.execute(
        "UPDATE runs SET lease_token = ?2, lease_holder = ?3, lease_host = ?4, lease_pid = ?5, \
         lease_expires_ms = ?6 WHERE id = ?1",
        params![
            lease.run.as_str(),
            lease.token,
            lease.holder.name,
            lease.holder.host,
            i64::from(lease.holder.pid),
            signed(lease.expires_ms)?,
        ],
    )
    .map_err(storage("recording the lease"))?;
    Ok(())
}

/// Refuses a write under a lease that is no longer the run's.
fn check_lease(tx: &rusqlite::Transaction<'_>, lease: &Lease) -> Result<(), JournalError> {
    let token: Option<String> = tx
        .query_row(
            "SELECT lease_token FROM runs WHERE id = ?1",
            [lease.run.as_str()],
            |row| row.get(0),
        )
        .optional()
        .map_err(storage("reading the lease"))?
        .flatten();
    if token.as_deref() == Some(lease.token.as_str()) {
        Ok(())
    } else {
        Err(JournalError::LeaseLost {
            run: lease.run.clone(),
        })
    }
}

/// The step rows of a run, in step order.
fn read_steps(tx: &rusqlite::Transaction<'_>, run: &RunId) -> Result<Vec<StepRow>, JournalError> {
    let read = storage("reading steps");
    let mut statement = tx
        .prepare_cached(
            "SELECT step, kind, input, first_seq, events, input_link, link FROM steps \
             WHERE run = ?1 ORDER BY step",
        )
        .map_err(&read)?;
    let mut rows = statement.query([run.as_str()]).map_err(&read)?;
    let mut steps = Vec::new();
    while let Some(row) = rows.next().map_err(&read)? {
        let link = |index| -> Result<Digest, JournalError> {
            let bytes: Vec<u8> = row.get(index).map_err(&read)?;
            <[u8; 32]>::try_from(bytes.as_slice())
                .map(Digest::from_bytes)
                .map_err(|_| JournalError::Corrupt {
                    detail: format!("a stored link of run {run} is not 32 bytes"),
                })
        };
        steps.push(StepRow {
            step: unsigned(row.get(0).map_err(&read)?, "step number")?,
            kind: row.get(1).map_err(&read)?,
            input: row.get(2).map_err(&read)?,
            first_seq: unsigned(row.get(3).map_err(&read)?, "first seq")?,
            events: unsigned(row.get(4).map_err(&read)?, "event count")?,
            input_link: link(5)?,
            link: link(6)?,
        });
    }
    Ok(steps)
}

/// What [`SqliteJournal::scan`] found.
struct Scanned {
    row: RunRow,
    /// The inputs of the intact steps, cycles with their outcomes.
    inputs: Vec<StepInput>,
    /// Outcomes committed ahead of the next step.
    open: Option<OpenCycle>,
    /// The first bad place, if any.
    checked: Result<(), (Place, BreakReason)>,
}

const RUN_COLUMNS: &str = "id, header, header_link, status, stop_reason, steps, events, \
                           root_hash, record_hash, lease_holder, lease_host, lease_pid, \
                           lease_expires_ms";

/// A `runs` row as stored.
struct RunRow {
    id: String,
    header: String,
    header_link: String,
    status: String,
    stop_reason: Option<String>,
    steps: i64,
    events: i64,
    root_hash: String,
    record_hash: String,
    lease_holder: Option<String>,
    lease_host: Option<String>,
    lease_pid: Option<i64>,
    lease_expires_ms: Option<i64>,
}

impl RunRow {
    fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RunRow> {
        Ok(RunRow {
            id: row.get(0)?,
            header: row.get(1)?,
            header_link: row.get(2)?,
            status: row.get(3)?,
            stop_reason: row.get(4)?,
            steps: row.get(5)?,
            events: row.get(6)?,
            root_hash: row.get(7)?,
            record_hash: row.get(8)?,
            lease_holder: row.get(9)?,
            lease_host: row.get(10)?,
            lease_pid: row.get(11)?,
            lease_expires_ms: row.get(12)?,
        })
    }

    fn digest(&self, text: &str, what: &str) -> Result<Digest, JournalError> {
        text.parse().map_err(|_| JournalError::Corrupt {
            detail: format!("run {} has a {what} that is not 64 hex digits", self.id),
        })
    }

    fn head(&self) -> Result<Head, JournalError> {
        Ok(Head {
            steps: unsigned(self.steps, "step count")?,
            events: unsigned(self.events, "event count")?,
            root: self.digest(&self.root_hash, "root hash")?,
        })
    }

    fn header(&self) -> Result<RunHeader, JournalError> {
        serde_json::from_str(&self.header).map_err(|error| JournalError::Corrupt {
            detail: format!("run {} has an unreadable header: {error}", self.id),
        })
    }

    fn status(&self) -> Result<RunStatus, JournalError> {
        let corrupt = || JournalError::Corrupt {
            detail: format!(
                "run {} has status \"{}\" with an unreadable or misplaced stop reason",
                self.id, self.status
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

    /// The lease's holder and expiry, when the run is leased.
    fn lease(&self) -> Result<Option<(Holder, u64)>, JournalError> {
        let (Some(name), Some(host), Some(pid), Some(expires_ms)) = (
            &self.lease_holder,
            &self.lease_host,
            self.lease_pid,
            self.lease_expires_ms,
        ) else {
            return Ok(None);
        };
        let holder = Holder {
            name: name.clone(),
            host: host.clone(),
            pid: u32::try_from(pid).map_err(|_| JournalError::Corrupt {
                detail: format!("run {} has lease pid {pid}", self.id),
            })?,
        };
        Ok(Some((holder, unsigned(expires_ms, "lease expiry")?)))
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
            record_hash: self.digest(&self.record_hash, "record hash")?,
            lease: self.lease()?,
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
