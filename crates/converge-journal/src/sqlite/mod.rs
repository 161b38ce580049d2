//! The embedded journal: one SQLite file, WAL mode, `synchronous=FULL`, one transaction per
//! step (and per group of outcomes committed ahead of their step).
//!
//! `docs/journal.md` describes the on-disk schema, what is written when, and why a crash at
//! any instant leaves a journal that loads and verifies. This module deliberately never
//! updates or deletes a step or an event (triggers refuse it), never retries a failed write,
//! never creates anything in a file that is not already a Converge journal or an empty
//! database, and never migrates a schema it does not know.

mod checkpoint;
mod schema;

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::JournalError;
use crate::check::{StepRow, StepSpan};
use crate::lease::Lease;
use crate::store::{
    Backend, ChunkHead, ChunkRow, NewHead, NewPart, NewStep, PartRow, RUN_COLUMNS, RunRow,
    SUMMARY_COLUMNS, Tx, Writes, unsigned,
};
use checkpoint::Checkpointer;
use schema::storage;

/// A journal in one SQLite file.
///
/// [`SqliteJournal::open`] creates the file if it does not exist, or opens an existing
/// journal after checking, without writing, that it is one and that its schema is not newer
/// than this build's. Every [`Journal::append`](crate::Journal::append) is one `IMMEDIATE` transaction committed with
/// a full fsync of the write-ahead log.
///
/// ```
/// use converge_core::agents::SeedAgent;
/// use converge_core::{Context, Engine, Step, execute_isolated};
/// use converge_journal::{
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
    /// Declared before `conn`: dropped (its thread joined) first, so `conn` closes last.
    checkpointer: Option<Checkpointer>,
    conn: Connection,
    path: PathBuf,
    /// Whether it may write ([`SqliteJournal::open_read_only`], or poisoned by a failure).
    writes: Writes,
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
        let mut conn = schema::open(&path)?;
        let checkpointer = Checkpointer::install(&mut conn, &path)
            .map_err(storage("installing the checkpointer"))?;
        Ok(SqliteJournal {
            checkpointer: Some(checkpointer),
            conn,
            path,
            writes: Writes::default(),
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
            checkpointer: None,
            conn,
            writes: Writes::read_only(&path),
            path,
        })
    }

    /// The journal's file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Backend for SqliteJournal {
    /// One `IMMEDIATE` transaction, committed with a full fsync of the write-ahead log. Any
    /// storage failure poisons the handle; a refusal (out of order, unknown run…) does not.
    fn write<T: Send + 'static>(
        &mut self,
        op: impl FnOnce(&mut dyn Tx) -> Result<T, JournalError> + Send + 'static,
    ) -> Result<T, JournalError> {
        self.writes.admit()?;
        let outcome = (|| {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(storage("beginning a write transaction"))?;
            let value = op(&mut SqliteTx { conn: &tx })?;
            tx.commit().map_err(storage("committing"))?;
            Ok(value)
        })();
        if let Some(checkpointer) = &mut self.checkpointer {
            checkpointer.committed(&self.conn);
        }
        self.writes.settle(outcome)
    }

    /// One deferred transaction: every row comes from the same snapshot even while another
    /// connection appends.
    fn read<T: Send + 'static>(
        &self,
        op: impl FnOnce(&mut dyn Tx) -> Result<T, JournalError> + Send + 'static,
    ) -> Result<T, JournalError> {
        let tx = self
            .conn
            .unchecked_transaction()
            .map_err(storage("beginning a read"))?;
        op(&mut SqliteTx { conn: &tx })
    }
}

/// The row operations on one SQLite connection inside a transaction.
struct SqliteTx<'c> {
    conn: &'c Connection,
}

impl SqliteTx<'_> {
    /// Runs a cached statement that changes rows.
    fn execute(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        context: &'static str,
    ) -> Result<(), JournalError> {
        self.conn
            .prepare_cached(sql)
            .and_then(|mut statement| statement.execute(params))
            .map(drop)
            .map_err(storage(context))
    }
}

impl Tx for SqliteTx<'_> {
    fn run(&mut self, run: &str) -> Result<Option<RunRow>, JournalError> {
        self.conn
            .prepare_cached(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"))
            .and_then(|mut statement| statement.query_row([run], run_row).optional())
            .map_err(storage("reading the run"))
    }

    fn runs_named(&mut self, runs: &[&str]) -> Result<Vec<RunRow>, JournalError> {
        // In-process: a statement per run costs no round trip.
        let mut rows = Vec::with_capacity(runs.len());
        for run in runs {
            rows.extend(self.run(run)?);
        }
        Ok(rows)
    }

    fn summaries_named(&mut self, runs: &[&str]) -> Result<Vec<RunRow>, JournalError> {
        let mut statement = self
            .conn
            .prepare_cached(&format!("SELECT {SUMMARY_COLUMNS} FROM runs WHERE id = ?1"))
            .map_err(storage("reading runs"))?;
        let mut rows = Vec::with_capacity(runs.len());
        for run in runs {
            let row = statement.query_row([run], run_row).optional();
            rows.extend(row.map_err(storage("reading runs"))?);
        }
        Ok(rows)
    }

    fn runs(&mut self) -> Result<Vec<RunRow>, JournalError> {
        let read = storage("listing runs");
        let mut statement = self
            .conn
            .prepare_cached(&format!("SELECT {RUN_COLUMNS} FROM runs ORDER BY rowid"))
            .map_err(&read)?;
        let rows = statement.query_map([], run_row).map_err(&read)?;
        rows.collect::<Result<_, _>>().map_err(&read)
    }

    fn insert_run(
        &mut self,
        run: &str,
        header: &str,
        header_link: &str,
    ) -> Result<(), JournalError> {
        self.execute(
            "INSERT INTO runs (id, header, header_link, status, stop_reason, steps, events, \
             root_hash, record_hash) VALUES (?1, ?2, ?3, 'running', NULL, 0, 0, ?4, ?3)",
            params![
                run,
                header,
                header_link,
                converge_core::Digest::zero().to_string()
            ],
            "creating the run",
        )
    }

    fn store_lease(&mut self, lease: &Lease) -> Result<(), JournalError> {
        self.execute(
            "UPDATE runs SET lease_token = ?2, lease_holder = ?3, lease_host = ?4, \
             lease_pid = ?5, lease_expires_ms = ?6 WHERE id = ?1",
            params![
                lease.run.as_str(),
                lease.token,
                lease.holder.name,
                lease.holder.host,
                i64::from(lease.holder.pid),
                crate::store::signed(lease.expires_ms)?,
            ],
            "recording the lease",
        )
    }

    fn runnable(&mut self, now_ms: i64, limit: i64) -> Result<Vec<String>, JournalError> {
        let read = storage("looking for runs to drive");
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT id FROM runs WHERE status = 'running' \
                 AND (lease_expires_ms IS NULL OR lease_expires_ms <= ?1) \
                 ORDER BY rowid LIMIT ?2",
            )
            .map_err(&read)?;
        let rows = statement
            .query_map(params![now_ms, limit], |row| row.get(0))
            .map_err(&read)?;
        rows.collect::<Result<_, _>>().map_err(&read)
    }

    fn leased_on(
        &mut self,
        host: &str,
        now_ms: i64,
        limit: i64,
    ) -> Result<Vec<(String, i64, String)>, JournalError> {
        let read = storage("looking for runs whose driver died");
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT id, lease_pid, lease_token FROM runs WHERE status = 'running' \
                 AND lease_host = ?1 AND lease_expires_ms > ?2 ORDER BY rowid LIMIT ?3",
            )
            .map_err(&read)?;
        let rows = statement
            .query_map(params![host, now_ms, limit], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })
            .map_err(&read)?;
        rows.collect::<Result<_, _>>().map_err(&read)
    }

    fn renew_lease(&mut self, run: &str, expires_ms: i64) -> Result<(), JournalError> {
        self.execute(
            "UPDATE runs SET lease_expires_ms = ?2 WHERE id = ?1",
            params![run, expires_ms],
            "renewing the lease",
        )
    }

    fn clear_lease(&mut self, run: &str, token: &str) -> Result<(), JournalError> {
        self.execute(
            "UPDATE runs SET lease_token = NULL, lease_holder = NULL, lease_host = NULL, \
             lease_pid = NULL, lease_expires_ms = NULL WHERE id = ?1 AND lease_token = ?2",
            params![run, token],
            "releasing the lease",
        )
    }

    fn steps(&mut self, run: &str) -> Result<Vec<StepRow>, JournalError> {
        let read = storage("reading steps");
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT step, kind, input, first_seq, events, input_link, link FROM steps \
                 WHERE run = ?1 ORDER BY step",
            )
            .map_err(&read)?;
        let mut rows = statement.query([run]).map_err(&read)?;
        let mut steps = Vec::new();
        while let Some(row) = rows.next().map_err(&read)? {
            steps.push(StepRow::read(
                run,
                row.get(0).map_err(&read)?,
                row.get(1).map_err(&read)?,
                row.get(2).map_err(&read)?,
                row.get(3).map_err(&read)?,
                row.get(4).map_err(&read)?,
                row.get_ref(5).map_err(&read)?.as_blob().unwrap_or_default(),
                row.get_ref(6).map_err(&read)?.as_blob().unwrap_or_default(),
            )?);
        }
        Ok(steps)
    }

    fn step_spans(
        &mut self,
        run: &str,
        from: i64,
        each: &mut dyn FnMut(StepSpan) -> bool,
    ) -> Result<(), JournalError> {
        let read = storage("reading steps");
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT step, first_seq, events FROM steps WHERE run = ?1 AND step >= ?2 \
                 ORDER BY step",
            )
            .map_err(&read)?;
        let mut rows = statement.query(params![run, from]).map_err(&read)?;
        while let Some(row) = rows.next().map_err(&read)? {
            let span = StepSpan {
                step: unsigned(row.get(0).map_err(&read)?, "step number")?,
                first_seq: unsigned(row.get(1).map_err(&read)?, "first seq")?,
                events: unsigned(row.get(2).map_err(&read)?, "event count")?,
            };
            if !each(span) {
                break;
            }
        }
        Ok(())
    }

    fn step_holding(
        &mut self,
        run: &str,
        at_most: i64,
        seq: i64,
    ) -> Result<Option<i64>, JournalError> {
        self.conn
            .prepare_cached(
                "SELECT step FROM steps WHERE run = ?1 AND step <= ?2 AND first_seq <= ?3 \
                 ORDER BY step DESC LIMIT 1",
            )
            .and_then(|mut statement| {
                statement
                    .query_row(params![run, at_most, seq], |row| row.get(0))
                    .optional()
            })
            .map_err(storage("reading steps"))
    }

    fn chunk_at(
        &mut self,
        run: &str,
        seq: i64,
        hashes: bool,
    ) -> Result<Option<ChunkHead>, JournalError> {
        let sql = if hashes {
            "SELECT first_seq, step, count, hashes FROM events WHERE run = ?1 \
             AND first_seq <= ?2 ORDER BY first_seq DESC LIMIT 1"
        } else {
            "SELECT first_seq, step, count, x'' FROM events WHERE run = ?1 \
             AND first_seq <= ?2 ORDER BY first_seq DESC LIMIT 1"
        };
        self.conn
            .prepare_cached(sql)
            .and_then(|mut statement| {
                statement
                    .query_row(params![run, seq], |row| {
                        Ok(ChunkHead {
                            first_seq: row.get(0)?,
                            step: row.get(1)?,
                            count: row.get(2)?,
                            hashes: row.get(3)?,
                        })
                    })
                    .optional()
            })
            .map_err(storage("reading events"))
    }

    fn chunks(
        &mut self,
        run: &str,
        from: i64,
        bodies: bool,
        each: &mut dyn FnMut(ChunkRow<'_>) -> Result<bool, JournalError>,
    ) -> Result<(), JournalError> {
        let read = storage("reading events");
        // Bodies come last in a row, so a read without them leaves their pages untouched.
        let sql = if bodies {
            "SELECT first_seq, step, count, hashes, ends, bodies FROM events \
             WHERE run = ?1 AND first_seq >= ?2 ORDER BY first_seq"
        } else {
            "SELECT first_seq, step, count, hashes FROM events \
             WHERE run = ?1 AND first_seq >= ?2 ORDER BY first_seq"
        };
        let mut statement = self.conn.prepare_cached(sql).map_err(&read)?;
        let mut rows = statement.query(params![run, from]).map_err(&read)?;
        while let Some(row) = rows.next().map_err(&read)? {
            let blob = |index| -> Result<&[u8], JournalError> {
                row.get_ref(index)
                    .map_err(&read)?
                    .as_blob()
                    .map_err(|error| JournalError::Corrupt {
                        detail: format!("a stored event chunk is not a blob: {error}"),
                    })
            };
            let chunk = ChunkRow {
                first_seq: row.get(0).map_err(&read)?,
                step: row.get(1).map_err(&read)?,
                count: row.get(2).map_err(&read)?,
                hashes: blob(3)?,
                ends: if bodies { Some(blob(4)?) } else { None },
                bodies: if bodies { Some(blob(5)?) } else { None },
            };
            if !each(chunk)? {
                break;
            }
        }
        Ok(())
    }

    fn parts(&mut self, run: &str) -> Result<Vec<PartRow>, JournalError> {
        let read = storage("reading outcomes");
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT step, part, cycle, agents, ends, bodies FROM outcomes WHERE run = ?1 \
                 ORDER BY step, part",
            )
            .map_err(&read)?;
        let rows = statement
            .query_map([run], |row| {
                Ok(PartRow {
                    step: row.get(0)?,
                    part: row.get(1)?,
                    cycle: row.get(2)?,
                    agents: row.get(3)?,
                    ends: row.get(4)?,
                    bodies: row.get(5)?,
                })
            })
            .map_err(&read)?;
        rows.collect::<Result<_, _>>().map_err(&read)
    }

    fn committed(&mut self, run: &str, step: i64) -> Result<Vec<PartRow>, JournalError> {
        let read = storage("reading outcomes");
        let mut statement = self
            .conn
            .prepare_cached("SELECT part, cycle, agents FROM outcomes WHERE run = ?1 AND step = ?2")
            .map_err(&read)?;
        let rows = statement
            .query_map(params![run, step], |row| {
                Ok(PartRow {
                    step,
                    part: row.get(0)?,
                    cycle: row.get(1)?,
                    agents: row.get(2)?,
                    ends: Vec::new(),
                    bodies: Vec::new(),
                })
            })
            .map_err(&read)?;
        rows.collect::<Result<_, _>>().map_err(&read)
    }

    fn insert_part(&mut self, run: &str, part: &NewPart<'_>) -> Result<(), JournalError> {
        self.execute(
            "INSERT INTO outcomes (run, step, part, cycle, agents, ends, bodies) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                run,
                part.step,
                part.part,
                part.cycle,
                part.agents,
                part.ends,
                part.bodies
            ],
            "writing outcomes",
        )
    }

    fn insert_step(&mut self, run: &str, step: &NewStep<'_>) -> Result<(), JournalError> {
        self.execute(
            "INSERT INTO steps (run, step, kind, input, first_seq, events, input_link, link) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                run,
                step.step,
                step.kind,
                step.input,
                step.first_seq,
                step.events,
                step.input_link.as_bytes().as_slice(),
                step.link.as_bytes().as_slice(),
            ],
            "writing the step",
        )
    }

    fn insert_chunk(&mut self, run: &str, chunk: &ChunkRow<'_>) -> Result<(), JournalError> {
        self.execute(
            "INSERT INTO events (run, first_seq, step, count, hashes, ends, bodies) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                run,
                chunk.first_seq,
                chunk.step,
                chunk.count,
                chunk.hashes,
                chunk.ends.unwrap_or_default(),
                chunk.bodies.unwrap_or_default(),
            ],
            "writing events",
        )
    }

    fn advance(&mut self, run: &str, head: &NewHead<'_>) -> Result<(), JournalError> {
        self.execute(
            "UPDATE runs SET steps = ?2, events = ?3, root_hash = ?4, record_hash = ?5, \
             status = ?6, stop_reason = ?7 WHERE id = ?1",
            params![
                run,
                head.steps,
                head.events,
                head.root_hash,
                head.record_hash,
                head.status,
                head.stop_reason,
            ],
            "advancing the run's head",
        )?;
        match head.release {
            Some(token) => self.clear_lease(run, token),
            None => Ok(()),
        }
    }
}

fn run_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RunRow> {
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
        lease_token: row.get(9)?,
        lease_holder: row.get(10)?,
        lease_host: row.get(11)?,
        lease_pid: row.get(12)?,
        lease_expires_ms: row.get(13)?,
    })
}

crate::store::journal_through_backend!(SqliteJournal);
