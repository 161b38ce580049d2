//! The shared journal: runs in one PostgreSQL database, for any number of processes on any
//! number of machines.
//!
//! The same format as a SQLite journal (the same four tables, the same bytes, the same record
//! chain) and the same rules (`store.rs`); only transactions differ. A write is one
//! transaction that first locks the run's row (`SELECT … FOR UPDATE`), so writes of one run
//! are serialized across processes while runs proceed in parallel, and it commits with the
//! server's durability (`synchronous_commit`, on by default: a commit has reached the WAL on
//! disk). A read is one `REPEATABLE READ READ ONLY` transaction: one snapshot, however many
//! writers commit meanwhile. Every write also checks the run's lease token in the row it
//! locked, so a process that lost its lease can never commit into a run another now drives.
//!
//! The client is the synchronous `postgres` crate, whose calls block on a runtime of their
//! own and so may not run on a thread that drives asynchronous tasks (the runtime's driver
//! calls the journal from one). Each [`PostgresJournal`] therefore owns one connection on a
//! thread of its own and hands it each operation; the caller waits for the answer, as it
//! waits for SQLite's `fsync`. A connection that broke (the server restarted) is opened again
//! for the next operation; a write that failed in storage poisons the handle, as in SQLite,
//! because its commit may or may not have happened: reopen and load to know.

mod listen;
mod schema;

pub(crate) use listen::Listener;

use std::collections::HashMap;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use postgres::config::Host;
use postgres::error::SqlState;
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::ToSql;
use postgres::{Client, Config, IsolationLevel, NoTls, Statement};

use crate::JournalError;
use crate::check::{StepRow, StepSpan};
use crate::lease::Lease;
use crate::store::{
    Backend, ChunkHead, ChunkRow, NewHead, NewStep, PartRow, RUN_COLUMNS, RunRow, Tx, Writes,
    signed, unsigned,
};
use schema::storage;

/// How long the server lets a journal connection sit idle inside a transaction before it
/// ends the transaction (and its locks) by closing the connection.
const IDLE_IN_TRANSACTION_MS: u64 = 5_000;

/// How long opening a connection may take when the URL does not say.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A journal in a PostgreSQL database.
///
/// [`PostgresJournal::open`] connects to the database a `postgresql://` URL names and
/// creates the journal's schema (`converge`) if the database has none, or checks, without
/// writing, that its version is this build's.
pub struct PostgresJournal {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    /// The database's URL without its password, for messages.
    place: String,
    /// Whether it may write ([`PostgresJournal::open_read_only`], or poisoned by a failure).
    writes: Writes,
}

/// One operation for the connection's thread.
type Job = Box<dyn FnOnce(&mut Session) + Send>;

/// The connection's thread's state: the client (opened again when it broke) and the
/// statements prepared on it.
struct Session {
    config: Config,
    client: Option<Client>,
    statements: HashMap<String, Statement>,
}

impl Session {
    fn client(&mut self) -> Result<(&mut Client, &mut HashMap<String, Statement>), JournalError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.statements.clear();
            self.client = None;
            let client = self.config.connect(NoTls).map_err(|source| {
                schema::storage_while(format!("connecting to {}", describe(&self.config)), source)
            })?;
            self.client = Some(client);
        }
        match self.client.as_mut() {
            Some(client) => Ok((client, &mut self.statements)),
            None => Err(JournalError::Unsupported {
                detail: "the database connection is gone".to_owned(),
            }),
        }
    }
}

impl std::fmt::Debug for PostgresJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresJournal")
            .field("place", &self.place)
            .field("writes", &self.writes)
            .finish_non_exhaustive()
    }
}

impl PostgresJournal {
    /// Opens the journal in the database `url` names (`postgresql://user@host:port/db`,
    /// or any form libpq accepts), creating its schema if the database has none. A database
    /// whose journal schema is newer or older than this build's is refused untouched.
    pub fn open(url: &str) -> Result<PostgresJournal, JournalError> {
        PostgresJournal::connect(url, false)
    }

    /// Opens an existing journal for reading only: listing, loading, reading events and
    /// verifying work; every write is refused ([`JournalError::ReadOnly`]). A database
    /// without a journal is an error, not a new journal: nothing is created.
    pub fn open_read_only(url: &str) -> Result<PostgresJournal, JournalError> {
        PostgresJournal::connect(url, true)
    }

    fn connect(url: &str, read_only: bool) -> Result<PostgresJournal, JournalError> {
        let config = config(url)?;
        let place = describe(&config);
        let (jobs, queue) = mpsc::channel::<Job>();
        let session = Session {
            config,
            client: None,
            statements: HashMap::new(),
        };
        let thread = std::thread::Builder::new()
            .name("converge-postgres".to_owned())
            .spawn(move || {
                let mut session = session;
                for job in queue {
                    job(&mut session);
                }
            })
            .map_err(|error| JournalError::Unsupported {
                detail: format!("cannot start the database connection's thread: {error}"),
            })?;
        let writes = if read_only {
            Writes::read_only(&place)
        } else {
            Writes::default()
        };
        let journal = PostgresJournal {
            jobs: Some(jobs),
            thread: Some(thread),
            place,
            writes,
        };
        let place = journal.place.clone();
        journal.call(move |session| {
            let (client, _) = session.client()?;
            if read_only {
                schema::check_existing(client, &place)
            } else {
                schema::prepare(client, &place)
            }
        })?;
        Ok(journal)
    }

    /// The database, as its URL without a password.
    pub fn place(&self) -> &str {
        &self.place
    }

    /// Runs `job` on the connection's thread and waits for its answer.
    fn call<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Session) -> Result<T, JournalError> + Send + 'static,
    ) -> Result<T, JournalError> {
        let gone = || JournalError::Unsupported {
            detail: "the database connection's thread stopped".to_owned(),
        };
        let (reply, answer) = mpsc::sync_channel(1);
        let jobs = self.jobs.as_ref().ok_or_else(gone)?;
        jobs.send(Box::new(move |session: &mut Session| {
            // The caller waits for this answer; if it is gone there is no one to tell.
            let _ = reply.send(job(session));
        }))
        .map_err(|_| gone())?;
        answer.recv().map_err(|_| gone())?
    }
}

impl Drop for PostgresJournal {
    fn drop(&mut self) {
        // Closing the queue ends the thread once its last job is done.
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Backend for PostgresJournal {
    /// One transaction at the server's default isolation (`READ COMMITTED`) whose first read
    /// locks the run's row. Any storage failure poisons the handle; a refusal does not.
    fn write<T: Send + 'static>(
        &mut self,
        op: impl FnOnce(&mut dyn Tx) -> Result<T, JournalError> + Send + 'static,
    ) -> Result<T, JournalError> {
        self.writes.admit()?;
        let outcome = self.call(move |session| {
            let (client, statements) = session.client()?;
            let mut tx = client
                .transaction()
                .map_err(storage("beginning a write transaction"))?;
            let value = op(&mut PgTx {
                tx: &mut tx,
                statements,
                write: true,
            })?;
            tx.commit().map_err(storage("committing"))?;
            Ok(value)
        });
        self.writes.settle(outcome)
    }

    /// One `REPEATABLE READ READ ONLY` transaction: one snapshot for every row it reads.
    fn read<T: Send + 'static>(
        &self,
        op: impl FnOnce(&mut dyn Tx) -> Result<T, JournalError> + Send + 'static,
    ) -> Result<T, JournalError> {
        self.call(move |session| {
            let (client, statements) = session.client()?;
            let mut tx = client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .map_err(storage("beginning a read"))?;
            op(&mut PgTx {
                tx: &mut tx,
                statements,
                write: false,
            })
        })
    }
}

crate::store::journal_through_backend!(PostgresJournal);

/// A database URL read as a connection configuration, with the journal's defaults: a
/// connect timeout, `application_name=converge`, and transactions left idle ended after 5 s.
/// Other tables kept in the journal's database (a server's tokens) connect with it too.
///
/// ```
/// let config = converge_journal::postgres_client_config("postgresql://converge@db:5432/runs")
///     .unwrap();
/// assert_eq!(config.get_dbname(), Some("runs"));
/// assert!(converge_journal::postgres_client_config("postgresql://host:port-is-no-number/db").is_err());
/// ```
pub fn client_config(url: &str) -> Result<Config, JournalError> {
    config(url)
}

/// A database URL read as a connection configuration, with this crate's defaults.
pub(crate) fn config(url: &str) -> Result<Config, JournalError> {
    let mut config: Config = url.parse().map_err(|error| JournalError::Unsupported {
        detail: format!("cannot read the database URL: {error}"),
    })?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("converge");
    }
    // A process paused inside a transaction (SIGSTOP, a partition) must not keep its run's
    // row locked: claims skip locked rows, so its run could never be taken over. The
    // journal's transactions never wait on anything but the database between statements.
    let idle = format!("-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}");
    let options = match config.get_options() {
        Some(given) => format!("{given} {idle}"),
        None => idle,
    };
    config.options(&options);
    Ok(config)
}

/// A database URL without its password, for messages; a URL that cannot be read is shown
/// as `postgresql://…` only.
pub(crate) fn redact(url: &str) -> String {
    url.parse::<Config>()
        .map(|config| describe(&config))
        .unwrap_or_else(|_| "postgresql://… (an unreadable URL)".to_owned())
}

/// The database a configuration names, without its password: `postgresql://user@host:port/db`.
fn describe(config: &Config) -> String {
    let user = config.get_user().unwrap_or_default();
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(host)) => host.clone(),
        Some(Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let database = config.get_dbname().unwrap_or(user);
    let at = if user.is_empty() { "" } else { "@" };
    format!("postgresql://{user}{at}{host}:{port}/{database}")
}

/// The row operations inside one PostgreSQL transaction, with statements prepared once per
/// connection.
struct PgTx<'t, 'c> {
    tx: &'t mut postgres::Transaction<'c>,
    statements: &'t mut HashMap<String, Statement>,
    /// A write transaction: reading a run locks its row.
    write: bool,
}

impl PgTx<'_, '_> {
    fn statement(&mut self, sql: &str, context: &'static str) -> Result<Statement, JournalError> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.tx.prepare(sql).map_err(storage(context))?;
        self.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    fn execute(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        context: &'static str,
    ) -> Result<(), JournalError> {
        let statement = self.statement(sql, context)?;
        self.tx
            .execute(&statement, params)
            .map(drop)
            .map_err(storage(context))
    }

    fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        context: &'static str,
    ) -> Result<Vec<postgres::Row>, JournalError> {
        let statement = self.statement(sql, context)?;
        self.tx.query(&statement, params).map_err(storage(context))
    }
}

/// Reads column `index` of a row, mapping a type mismatch to a corrupt-journal error.
fn get<'r, T: postgres::types::FromSql<'r>>(
    row: &'r postgres::Row,
    index: usize,
) -> Result<T, JournalError> {
    row.try_get(index).map_err(|error| JournalError::Corrupt {
        detail: format!("a stored column cannot be read: {error}"),
    })
}

fn run_row(row: &postgres::Row) -> Result<RunRow, JournalError> {
    Ok(RunRow {
        id: get(row, 0)?,
        header: get(row, 1)?,
        header_link: get(row, 2)?,
        status: get(row, 3)?,
        stop_reason: get(row, 4)?,
        steps: get(row, 5)?,
        events: get(row, 6)?,
        root_hash: get(row, 7)?,
        record_hash: get(row, 8)?,
        lease_token: get(row, 9)?,
        lease_holder: get(row, 10)?,
        lease_host: get(row, 11)?,
        lease_pid: get(row, 12)?,
        lease_expires_ms: get(row, 13)?,
    })
}

impl Tx for PgTx<'_, '_> {
    fn run(&mut self, run: &str) -> Result<Option<RunRow>, JournalError> {
        let lock = if self.write { " FOR UPDATE" } else { "" };
        let sql = format!("SELECT {RUN_COLUMNS} FROM converge.runs WHERE id = $1{lock}");
        let rows = self.query(&sql, &[&run], "reading the run")?;
        rows.first().map(run_row).transpose()
    }

    fn runs(&mut self) -> Result<Vec<RunRow>, JournalError> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM converge.runs ORDER BY created");
        let rows = self.query(&sql, &[], "listing runs")?;
        rows.iter().map(run_row).collect()
    }

    fn insert_run(
        &mut self,
        run: &str,
        header: &str,
        header_link: &str,
    ) -> Result<(), JournalError> {
        let zero = converge_core::Digest::zero().to_string();
        let sql = "INSERT INTO converge.runs (id, header, header_link, status, stop_reason, \
                   steps, events, root_hash, record_hash) \
                   VALUES ($1, $2, $3, 'running', NULL, 0, 0, $4, $3)";
        let statement = self.statement(sql, "creating the run")?;
        match self
            .tx
            .execute(&statement, &[&run, &header, &header_link, &zero])
        {
            Ok(_) => Ok(()),
            // Another process created it since this transaction looked.
            Err(error) if error.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                Err(JournalError::RunExists {
                    run: crate::RunId::new(run).map_err(|error| JournalError::Corrupt {
                        detail: error.to_string(),
                    })?,
                })
            }
            Err(error) => Err(storage("creating the run")(error)),
        }
    }

    fn store_lease(&mut self, lease: &Lease) -> Result<(), JournalError> {
        self.execute(
            "UPDATE converge.runs SET lease_token = $2, lease_holder = $3, lease_host = $4, \
             lease_pid = $5, lease_expires_ms = $6 WHERE id = $1",
            &[
                &lease.run.as_str(),
                &lease.token,
                &lease.holder.name,
                &lease.holder.host,
                &i64::from(lease.holder.pid),
                &signed(lease.expires_ms)?,
            ],
            "recording the lease",
        )
    }

    fn runnable(&mut self, now_ms: i64, limit: i64) -> Result<Vec<String>, JournalError> {
        let rows = self.query(
            "SELECT id FROM converge.runs WHERE status = 'running' \
             AND (lease_expires_ms IS NULL OR lease_expires_ms <= $1) \
             ORDER BY created LIMIT $2 FOR UPDATE SKIP LOCKED",
            &[&now_ms, &limit],
            "looking for runs to drive",
        )?;
        rows.iter().map(|row| get(row, 0)).collect()
    }

    fn leased_on(
        &mut self,
        host: &str,
        now_ms: i64,
        limit: i64,
    ) -> Result<Vec<(String, i64, String)>, JournalError> {
        let rows = self.query(
            "SELECT id, lease_pid, lease_token FROM converge.runs \
             WHERE status = 'running' AND lease_host = $1 AND lease_expires_ms > $2 \
             ORDER BY created LIMIT $3",
            &[&host, &now_ms, &limit],
            "looking for runs whose driver died",
        )?;
        rows.iter()
            .map(|row| Ok((get(row, 0)?, get(row, 1)?, get(row, 2)?)))
            .collect()
    }

    fn renew_lease(&mut self, run: &str, expires_ms: i64) -> Result<(), JournalError> {
        self.execute(
            "UPDATE converge.runs SET lease_expires_ms = $2 WHERE id = $1",
            &[&run, &expires_ms],
            "renewing the lease",
        )
    }

    fn clear_lease(&mut self, run: &str, token: &str) -> Result<(), JournalError> {
        self.execute(
            "UPDATE converge.runs SET lease_token = NULL, lease_holder = NULL, \
             lease_host = NULL, lease_pid = NULL, lease_expires_ms = NULL \
             WHERE id = $1 AND lease_token = $2",
            &[&run, &token],
            "releasing the lease",
        )
    }

    fn steps(&mut self, run: &str) -> Result<Vec<StepRow>, JournalError> {
        let rows = self.query(
            "SELECT step, kind, input, first_seq, events, input_link, link \
             FROM converge.steps WHERE run = $1 ORDER BY step",
            &[&run],
            "reading steps",
        )?;
        rows.iter()
            .map(|row| {
                StepRow::read(
                    run,
                    get(row, 0)?,
                    get(row, 1)?,
                    get(row, 2)?,
                    get(row, 3)?,
                    get(row, 4)?,
                    get(row, 5)?,
                    get(row, 6)?,
                )
            })
            .collect()
    }

    fn step_spans(
        &mut self,
        run: &str,
        from: i64,
        each: &mut dyn FnMut(StepSpan) -> bool,
    ) -> Result<(), JournalError> {
        let context = "reading steps";
        let statement = self.statement(
            "SELECT step, first_seq, events FROM converge.steps \
             WHERE run = $1 AND step >= $2 ORDER BY step",
            context,
        )?;
        let params: [&dyn ToSql; 2] = [&run, &from];
        let mut rows = self
            .tx
            .query_raw(&statement, params)
            .map_err(storage(context))?;
        while let Some(row) = rows.next().map_err(storage(context))? {
            let span = StepSpan {
                step: unsigned(get(&row, 0)?, "step number")?,
                first_seq: unsigned(get(&row, 1)?, "first seq")?,
                events: unsigned(get(&row, 2)?, "event count")?,
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
        let rows = self.query(
            "SELECT step FROM converge.steps WHERE run = $1 AND step <= $2 \
             AND first_seq <= $3 ORDER BY step DESC LIMIT 1",
            &[&run, &at_most, &seq],
            "reading steps",
        )?;
        rows.first().map(|row| get(row, 0)).transpose()
    }

    fn chunk_at(
        &mut self,
        run: &str,
        seq: i64,
        hashes: bool,
    ) -> Result<Option<ChunkHead>, JournalError> {
        let sql = if hashes {
            "SELECT first_seq, step, count, hashes FROM converge.events \
             WHERE run = $1 AND first_seq <= $2 ORDER BY first_seq DESC LIMIT 1"
        } else {
            "SELECT first_seq, step, count, ''::bytea FROM converge.events \
             WHERE run = $1 AND first_seq <= $2 ORDER BY first_seq DESC LIMIT 1"
        };
        let rows = self.query(sql, &[&run, &seq], "reading events")?;
        rows.first()
            .map(|row| {
                Ok(ChunkHead {
                    first_seq: get(row, 0)?,
                    step: get(row, 1)?,
                    count: get(row, 2)?,
                    hashes: get(row, 3)?,
                })
            })
            .transpose()
    }

    fn chunks(
        &mut self,
        run: &str,
        from: i64,
        bodies: bool,
        each: &mut dyn FnMut(ChunkRow<'_>) -> Result<bool, JournalError>,
    ) -> Result<(), JournalError> {
        let context = "reading events";
        let sql = if bodies {
            "SELECT first_seq, step, count, hashes, ends, bodies FROM converge.events \
             WHERE run = $1 AND first_seq >= $2 ORDER BY first_seq"
        } else {
            "SELECT first_seq, step, count, hashes FROM converge.events \
             WHERE run = $1 AND first_seq >= $2 ORDER BY first_seq"
        };
        let statement = self.statement(sql, context)?;
        let params: [&dyn ToSql; 2] = [&run, &from];
        let mut rows = self
            .tx
            .query_raw(&statement, params)
            .map_err(storage(context))?;
        while let Some(row) = rows.next().map_err(storage(context))? {
            let chunk = ChunkRow {
                first_seq: get(&row, 0)?,
                step: get(&row, 1)?,
                count: get(&row, 2)?,
                hashes: get(&row, 3)?,
                ends: if bodies { Some(get(&row, 4)?) } else { None },
                bodies: if bodies { Some(get(&row, 5)?) } else { None },
            };
            if !each(chunk)? {
                break;
            }
        }
        Ok(())
    }

    fn parts(&mut self, run: &str) -> Result<Vec<PartRow>, JournalError> {
        let rows = self.query(
            "SELECT step, part, cycle, agents, ends, bodies FROM converge.outcomes \
             WHERE run = $1 ORDER BY step, part",
            &[&run],
            "reading outcomes",
        )?;
        rows.iter()
            .map(|row| {
                Ok(PartRow {
                    step: get(row, 0)?,
                    part: get(row, 1)?,
                    cycle: get(row, 2)?,
                    agents: get(row, 3)?,
                    ends: get(row, 4)?,
                    bodies: get(row, 5)?,
                })
            })
            .collect()
    }

    fn committed(&mut self, run: &str, step: i64) -> Result<Vec<PartRow>, JournalError> {
        let rows = self.query(
            "SELECT part, cycle, agents FROM converge.outcomes WHERE run = $1 AND step = $2",
            &[&run, &step],
            "reading outcomes",
        )?;
        rows.iter()
            .map(|row| {
                Ok(PartRow {
                    step,
                    part: get(row, 0)?,
                    cycle: get(row, 1)?,
                    agents: get(row, 2)?,
                    ends: Vec::new(),
                    bodies: Vec::new(),
                })
            })
            .collect()
    }

    fn insert_part(&mut self, run: &str, part: &PartRow) -> Result<(), JournalError> {
        self.execute(
            "INSERT INTO converge.outcomes (run, step, part, cycle, agents, ends, bodies) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &run,
                &part.step,
                &part.part,
                &part.cycle,
                &part.agents,
                &part.ends,
                &part.bodies,
            ],
            "writing outcomes",
        )
    }

    fn insert_step(&mut self, run: &str, step: &NewStep<'_>) -> Result<(), JournalError> {
        self.execute(
            "INSERT INTO converge.steps \
             (run, step, kind, input, first_seq, events, input_link, link) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                &run,
                &step.step,
                &step.kind,
                &step.input,
                &step.first_seq,
                &step.events,
                &step.input_link.as_bytes().as_slice(),
                &step.link.as_bytes().as_slice(),
            ],
            "writing the step",
        )
    }

    fn insert_chunk(&mut self, run: &str, chunk: &ChunkRow<'_>) -> Result<(), JournalError> {
        self.execute(
            "INSERT INTO converge.events (run, first_seq, step, count, hashes, ends, bodies) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &run,
                &chunk.first_seq,
                &chunk.step,
                &chunk.count,
                &chunk.hashes,
                &chunk.ends.unwrap_or_default(),
                &chunk.bodies.unwrap_or_default(),
            ],
            "writing events",
        )
    }

    fn advance(&mut self, run: &str, head: &NewHead<'_>) -> Result<(), JournalError> {
        self.execute(
            "UPDATE converge.runs SET steps = $2, events = $3, root_hash = $4, \
             record_hash = $5, status = $6, stop_reason = $7 WHERE id = $1",
            &[
                &run,
                &head.steps,
                &head.events,
                &head.root_hash,
                &head.record_hash,
                &head.status,
                &head.stop_reason,
            ],
            "advancing the run's head",
        )
    }
}
