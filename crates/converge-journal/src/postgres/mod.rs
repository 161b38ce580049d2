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
//!
//! News: a write that makes news for listeners (a run created, its status changed, a running
//! run let go by its driver) sends its notifications after its commit, in a transaction of
//! their own that carries no data and so waits for no WAL flush (`synchronous_commit` off
//! for it alone). PostgreSQL serializes every committing transaction that notifies, from
//! its notification until its commit is flushed; a write that notified itself would hold
//! that lock through its own flush and no two such writes could share one. Steps make no
//! news: followers of events look at the runs being driven instead (`listen.rs`). A process
//! that dies between a commit and its news leaves waiters to their periodic looks.

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
use postgres::{Client, Config, GenericClient, IsolationLevel, NoTls, Statement};

use crate::JournalError;
use crate::check::{StepRow, StepSpan};
use crate::lease::{Holder, Lease};
use crate::store::{
    Backend, ChunkHead, ChunkRow, NewHead, NewPart, NewStep, PartRow, RUN_COLUMNS, RunRow,
    SUMMARY_COLUMNS, Tx, Writes, signed, unsigned,
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
            let mut news = News::default();
            let mut rows = PgTx {
                tx: &mut tx,
                statements,
                write: true,
                news: &mut news,
                pending: Pending::default(),
                ahead: Ahead::default(),
            };
            let value = op(&mut rows)?;
            rows.send(None)?;
            tx.commit().map_err(storage("committing"))?;
            news.announce(client, statements);
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
                news: &mut News::default(),
                pending: Pending::default(),
                ahead: Ahead::default(),
            })
        })
    }

    /// The statement alone, outside any transaction: PostgreSQL gives one statement one
    /// snapshot, and a read of one row costs one round trip instead of three (`BEGIN`, the
    /// row, `ROLLBACK`).
    fn read_one<T: Send + 'static>(
        &self,
        op: impl FnOnce(&mut dyn Tx) -> Result<T, JournalError> + Send + 'static,
    ) -> Result<T, JournalError> {
        self.call(move |session| {
            let (client, statements) = session.client()?;
            op(&mut PgTx {
                tx: client,
                statements,
                write: false,
                news: &mut News::default(),
                pending: Pending::default(),
                ahead: Ahead::default(),
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

/// The channel followers of events listen on: a run was created, its status changed, or its
/// driver let it go while it runs.
pub(crate) const EVENTS_CHANNEL: &str = "converge_events";

/// The channel idle workers listen on: a running run has no driver (submitted, or let go).
pub(crate) const RUNNABLE_CHANNEL: &str = "converge_runnable";

/// The notifications a write transaction sends once it committed: each run once per
/// channel, the status it last read for each run it locked.
#[derive(Default)]
struct News {
    sent: Vec<(&'static str, String)>,
    statuses: HashMap<String, String>,
}

impl News {
    fn add(&mut self, channel: &'static str, run: &str) {
        if !self.sent.iter().any(|(c, r)| *c == channel && r == run) {
            self.sent.push((channel, run.to_owned()));
        }
    }

    /// Sends the notifications in a transaction of their own, without waiting for a WAL flush
    /// (it stores nothing), in one prepared statement. A failure is dropped: the data is
    /// committed, and waiters look again on their own.
    fn announce(&self, client: &mut Client, statements: &mut HashMap<String, Statement>) {
        if self.sent.is_empty() {
            return;
        }
        let channels: Vec<&str> = self.sent.iter().map(|(channel, _)| *channel).collect();
        let runs: Vec<&str> = self.sent.iter().map(|(_, run)| run.as_str()).collect();
        let statement = match statements.get(ANNOUNCE) {
            Some(statement) => statement.clone(),
            None => match client.prepare(ANNOUNCE) {
                Ok(statement) => {
                    statements.insert(ANNOUNCE.to_owned(), statement.clone());
                    statement
                }
                Err(_) => return,
            },
        };
        // Alone, the statement is its own transaction: nothing is left open if it fails.
        let _ = client.execute(&statement, &[&channels, &runs]);
    }
}

/// Sends notifications (`$1` the channels, `$2` the runs) as a transaction of its own that
/// commits without waiting for a WAL flush: `synchronous_commit` is set for this transaction
/// alone, and read when it commits.
const ANNOUNCE: &str = "SELECT set_config('synchronous_commit', 'off', true), \
     pg_notify(channel, run) FROM unnest($1::text[], $2::text[]) AS news(channel, run)";

/// The row operations inside one PostgreSQL transaction, with statements prepared once per
/// connection.
struct PgTx<'t> {
    tx: &'t mut dyn Statements,
    statements: &'t mut HashMap<String, Statement>,
    /// A write transaction: reading a run locks its row.
    write: bool,
    /// What the transaction will announce once committed.
    news: &'t mut News,
    /// Rows inserted but not sent yet.
    pending: Pending,
    /// A run's rows read ahead ([`Tx::read_ahead`]), not handed out yet.
    ahead: Ahead,
}

/// A run's rows read ahead in one statement ([`READ_AHEAD`]), each kind handed out once.
#[derive(Default)]
struct Ahead {
    run: String,
    steps: Option<Vec<postgres::Row>>,
    chunks: Option<Vec<postgres::Row>>,
    parts: Option<Vec<postgres::Row>>,
}

/// A run's step rows, its chunks' hashes and its outcome parts, in one result: the first
/// column says which (0, 1, 2), the next columns are as [`Tx::steps`], [`Tx::chunks`]
/// (without bodies) and [`Tx::parts`] read them, in their order.
const READ_AHEAD: &str = "SELECT 0 AS what, step AS a, first_seq AS b, events AS c, \
     kind AS d, input AS e, input_link AS f, link AS g, NULL::bytea AS h \
     FROM converge.steps WHERE run = $1 \
     UNION ALL SELECT 1, first_seq, step, count, NULL, NULL, hashes, NULL, NULL \
     FROM converge.events WHERE run = $1 \
     UNION ALL SELECT 2, step, part, cycle, NULL, NULL, agents, ends, bodies \
     FROM converge.outcomes WHERE run = $1 \
     ORDER BY 1, 2, 3";

/// Rows a write transaction inserts, held back and sent in one statement with the run's new
/// head ([`Tx::advance`]), or before anything else the transaction does: a step's outcomes,
/// its row and its events cost one round trip instead of one per row.
#[derive(Default)]
struct Pending {
    run: String,
    /// The bytes of the rows held (their blobs and texts).
    bytes: usize,
    parts: Vec<PartRow>,
    steps: Vec<OwnedStep>,
    chunks: Vec<OwnedChunk>,
}

struct OwnedStep {
    step: i64,
    kind: String,
    input: String,
    first_seq: i64,
    events: i64,
    input_link: Vec<u8>,
    link: Vec<u8>,
}

struct OwnedChunk {
    first_seq: i64,
    step: i64,
    count: i64,
    hashes: Vec<u8>,
    ends: Vec<u8>,
    bodies: Vec<u8>,
}

/// How many bytes of rows a transaction holds back before it sends them: small steps go in
/// one statement with their head, a large one's chunks in statements of about this size (a
/// statement's arrays are copied more than once on the server, which costs more than a round
/// trip past this size).
const PENDING_BYTES_MAX: usize = 64 * 1024;

impl Ahead {
    /// The rows of `run` of one kind, if they were read ahead and not handed out yet.
    fn take(
        &mut self,
        run: &str,
        kind: impl FnOnce(&mut Ahead) -> &mut Option<Vec<postgres::Row>>,
    ) -> Option<Vec<postgres::Row>> {
        if self.run != run {
            return None;
        }
        kind(self).take()
    }
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.parts.is_empty() && self.steps.is_empty() && self.chunks.is_empty()
    }
}

/// Inserts the pending rows: outcome parts, steps and event chunks, each as arrays, one
/// element per row. The statement it begins ends with [`SEND_ROWS`] alone or with
/// [`SEND_ROWS_AND_HEAD`]; the foreign keys are checked once the whole statement is done.
const INSERT_ROWS: &str = "WITH parts AS (\
     INSERT INTO converge.outcomes (run, step, part, cycle, agents, ends, bodies) \
     SELECT $1::text, * FROM unnest($2::int8[], $3::int8[], $4::int8[], \
     $5::bytea[], $6::bytea[], $7::bytea[])), \
     steps AS (\
     INSERT INTO converge.steps (run, step, kind, input, first_seq, events, input_link, link) \
     SELECT $1::text, * FROM unnest($8::int8[], $9::text[], $10::text[], $11::int8[], \
     $12::int8[], $13::bytea[], $14::bytea[])), \
     chunks AS (\
     INSERT INTO converge.events (run, first_seq, step, count, hashes, ends, bodies) \
     SELECT $1::text, * FROM unnest($15::int8[], $16::int8[], $17::int8[], \
     $18::bytea[], $19::bytea[], $20::bytea[])) ";

/// Ends [`INSERT_ROWS`] when the rows go alone.
const SEND_ROWS: &str = "SELECT 1";

/// Ends [`INSERT_ROWS`] with the run's new head.
/// With `$27`, the lease is given up with the head (its token was checked under the row's
/// lock earlier in the transaction).
const SEND_ROWS_AND_HEAD: &str = "UPDATE converge.runs SET steps = $21, events = $22, \
     root_hash = $23, record_hash = $24, status = $25, stop_reason = $26, \
     lease_token = CASE WHEN $27 THEN NULL ELSE lease_token END, \
     lease_holder = CASE WHEN $27 THEN NULL ELSE lease_holder END, \
     lease_host = CASE WHEN $27 THEN NULL ELSE lease_host END, \
     lease_pid = CASE WHEN $27 THEN NULL ELSE lease_pid END, \
     lease_expires_ms = CASE WHEN $27 THEN NULL ELSE lease_expires_ms END \
     WHERE id = $1";

impl PgTx<'_> {
    /// Sends the pending rows (with `head`, the run's new head), in one statement.
    fn send(&mut self, head: Option<&NewHead<'_>>) -> Result<(), JournalError> {
        if self.pending.is_empty() && head.is_none() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        let parts = &pending.parts;
        let steps = &pending.steps;
        let chunks = &pending.chunks;
        let part_step: Vec<i64> = parts.iter().map(|row| row.step).collect();
        let part_part: Vec<i64> = parts.iter().map(|row| row.part).collect();
        let part_cycle: Vec<i64> = parts.iter().map(|row| row.cycle).collect();
        let part_agents: Vec<&[u8]> = parts.iter().map(|p| p.agents.as_slice()).collect();
        let part_ends: Vec<&[u8]> = parts.iter().map(|p| p.ends.as_slice()).collect();
        let part_bodies: Vec<&[u8]> = parts.iter().map(|p| p.bodies.as_slice()).collect();
        let step_step: Vec<i64> = steps.iter().map(|row| row.step).collect();
        let step_kind: Vec<&str> = steps.iter().map(|s| s.kind.as_str()).collect();
        let step_input: Vec<&str> = steps.iter().map(|s| s.input.as_str()).collect();
        let step_first: Vec<i64> = steps.iter().map(|row| row.first_seq).collect();
        let step_events: Vec<i64> = steps.iter().map(|row| row.events).collect();
        let step_input_link: Vec<&[u8]> = steps.iter().map(|s| s.input_link.as_slice()).collect();
        let step_link: Vec<&[u8]> = steps.iter().map(|s| s.link.as_slice()).collect();
        let chunk_first: Vec<i64> = chunks.iter().map(|row| row.first_seq).collect();
        let chunk_step: Vec<i64> = chunks.iter().map(|row| row.step).collect();
        let chunk_count: Vec<i64> = chunks.iter().map(|row| row.count).collect();
        let chunk_hashes: Vec<&[u8]> = chunks.iter().map(|c| c.hashes.as_slice()).collect();
        let chunk_ends: Vec<&[u8]> = chunks.iter().map(|c| c.ends.as_slice()).collect();
        let chunk_bodies: Vec<&[u8]> = chunks.iter().map(|c| c.bodies.as_slice()).collect();
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![
            &pending.run,
            &part_step,
            &part_part,
            &part_cycle,
            &part_agents,
            &part_ends,
            &part_bodies,
            &step_step,
            &step_kind,
            &step_input,
            &step_first,
            &step_events,
            &step_input_link,
            &step_link,
            &chunk_first,
            &chunk_step,
            &chunk_count,
            &chunk_hashes,
            &chunk_ends,
            &chunk_bodies,
        ];
        let release = head.is_some_and(|head| head.release.is_some());
        let sql = match head {
            Some(head) => {
                params.extend_from_slice(&[
                    &head.steps,
                    &head.events,
                    &head.root_hash,
                    &head.record_hash,
                    &head.status,
                    &head.stop_reason,
                    &release,
                ]);
                format!("{INSERT_ROWS}{SEND_ROWS_AND_HEAD}")
            }
            None => format!("{INSERT_ROWS}{SEND_ROWS}"),
        };
        self.execute(&sql, &params, "writing the step")
    }

    /// Room in the pending rows for `bytes` more of `run`'s: those held are sent first when
    /// they are another run's or the new row would take them past [`PENDING_BYTES_MAX`].
    fn pending_for(&mut self, run: &str, bytes: usize) -> Result<&mut Pending, JournalError> {
        // What was read ahead is no longer all there is.
        self.ahead = Ahead::default();
        let full = self.pending.bytes.saturating_add(bytes) > PENDING_BYTES_MAX;
        if self.pending.run != run || (full && !self.pending.is_empty()) {
            self.send(None)?;
            self.pending.run = run.to_owned();
        }
        self.pending.bytes = self.pending.bytes.saturating_add(bytes);
        Ok(&mut self.pending)
    }

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
        self.send(None)?;
        self.ahead = Ahead::default();
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
        self.send(None)?;
        let statement = self.statement(sql, context)?;
        self.tx.query(&statement, params).map_err(storage(context))
    }
}

/// What [`PgTx`] needs of a connection: a transaction, or the client itself for a read of
/// one statement ([`Backend::read_one`]).
trait Statements {
    fn prepare(&mut self, sql: &str) -> Result<Statement, postgres::Error>;
    fn execute(
        &mut self,
        statement: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, postgres::Error>;
    fn query(
        &mut self,
        statement: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<postgres::Row>, postgres::Error>;
    fn query_raw(
        &mut self,
        statement: &Statement,
        params: &[&dyn ToSql],
    ) -> Result<postgres::RowIter<'_>, postgres::Error>;
}

impl<C: GenericClient> Statements for C {
    fn prepare(&mut self, sql: &str) -> Result<Statement, postgres::Error> {
        GenericClient::prepare(self, sql)
    }

    fn execute(
        &mut self,
        statement: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, postgres::Error> {
        GenericClient::execute(self, statement, params)
    }

    fn query(
        &mut self,
        statement: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<postgres::Row>, postgres::Error> {
        GenericClient::query(self, statement, params)
    }

    fn query_raw(
        &mut self,
        statement: &Statement,
        params: &[&dyn ToSql],
    ) -> Result<postgres::RowIter<'_>, postgres::Error> {
        GenericClient::query_raw(self, statement, params.iter().copied())
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

impl Tx for PgTx<'_> {
    fn run(&mut self, run: &str) -> Result<Option<RunRow>, JournalError> {
        let lock = if self.write { " FOR UPDATE" } else { "" };
        let sql = format!("SELECT {RUN_COLUMNS} FROM converge.runs WHERE id = $1{lock}");
        let rows = self.query(&sql, &[&run], "reading the run")?;
        let row = rows.first().map(run_row).transpose()?;
        if let Some(row) = &row {
            self.news
                .statuses
                .insert(row.id.clone(), row.status.clone());
        }
        Ok(row)
    }

    fn runs_named(&mut self, runs: &[&str]) -> Result<Vec<RunRow>, JournalError> {
        let lock = if self.write { " FOR UPDATE" } else { "" };
        // In the ids' order: two writers locking several rows each never wait in a cycle.
        let sql =
            format!("SELECT {RUN_COLUMNS} FROM converge.runs WHERE id = ANY($1) ORDER BY id{lock}");
        let rows = self.query(&sql, &[&runs], "reading runs")?;
        let rows = rows.iter().map(run_row).collect::<Result<Vec<_>, _>>()?;
        for row in &rows {
            self.news
                .statuses
                .insert(row.id.clone(), row.status.clone());
        }
        Ok(rows)
    }

    fn summaries_named(&mut self, runs: &[&str]) -> Result<Vec<RunRow>, JournalError> {
        // One run by equality: a plan prepared while the table was small may scan it whole
        // for `= ANY`, never for the key's equality.
        let rows = match runs {
            [run] => {
                let sql = format!("SELECT {SUMMARY_COLUMNS} FROM converge.runs WHERE id = $1");
                self.query(&sql, &[run], "reading the run")?
            }
            _ => {
                let sql = format!("SELECT {SUMMARY_COLUMNS} FROM converge.runs WHERE id = ANY($1)");
                self.query(&sql, &[&runs], "reading runs")?
            }
        };
        rows.iter().map(run_row).collect()
    }

    fn runs_named_committed(
        &mut self,
        runs: &[&str],
    ) -> Result<Vec<(RunRow, Vec<PartRow>)>, JournalError> {
        if !self.write {
            let rows = self.runs_named(runs)?;
            let mut read = Vec::with_capacity(rows.len());
            for row in rows {
                let parts = self.committed(&row.id, row.steps)?;
                read.push((row, parts));
            }
            return Ok(read);
        }
        // The parts are read in the statement's snapshot, taken before it waited for a lock
        // (`Tx::runs_named_committed` says why that is enough).
        let sql = format!(
            "SELECT {RUN_COLUMNS}, o.parts, o.cycles, o.agents FROM converge.runs AS r \
             LEFT JOIN LATERAL (SELECT array_agg(part ORDER BY part) AS parts, \
             array_agg(cycle ORDER BY part) AS cycles, array_agg(agents ORDER BY part) AS agents \
             FROM converge.outcomes WHERE run = r.id AND step = r.steps) AS o ON true \
             WHERE r.id = ANY($1) ORDER BY r.id FOR UPDATE OF r"
        );
        let rows = self.query(&sql, &[&runs], "reading runs")?;
        let mut read = Vec::with_capacity(rows.len());
        for row in &rows {
            let run = run_row(row)?;
            let parts: Option<Vec<i64>> = get(row, 14)?;
            let cycles: Option<Vec<i64>> = get(row, 15)?;
            let agents: Option<Vec<Vec<u8>>> = get(row, 16)?;
            let parts = parts.unwrap_or_default();
            let cycles = cycles.unwrap_or_default();
            let agents = agents.unwrap_or_default();
            if parts.len() != cycles.len() || parts.len() != agents.len() {
                return Err(JournalError::Corrupt {
                    detail: format!("the outcome parts of run {} do not line up", run.id),
                });
            }
            let committed = parts
                .into_iter()
                .zip(cycles)
                .zip(agents)
                .map(|((part, cycle), agents)| PartRow {
                    step: run.steps,
                    part,
                    cycle,
                    agents,
                    ends: Vec::new(),
                    bodies: Vec::new(),
                })
                .collect();
            self.news
                .statuses
                .insert(run.id.clone(), run.status.clone());
            read.push((run, committed));
        }
        Ok(read)
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
        self.send(None)?;
        self.ahead = Ahead::default();
        match self
            .tx
            .execute(&statement, &[&run, &header, &header_link, &zero])
        {
            Ok(_) => {
                self.news.add(EVENTS_CHANNEL, run);
                Ok(())
            }
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

    fn lease_runnable(
        &mut self,
        now_ms: i64,
        holder: &Holder,
        expires_ms: u64,
        tokens: &[String],
    ) -> Result<Vec<RunRow>, JournalError> {
        let limit = i64::try_from(tokens.len()).unwrap_or(i64::MAX);
        let sql = format!(
            "WITH picked AS (SELECT id AS picked, created FROM converge.runs \
             WHERE status = 'running' AND (lease_expires_ms IS NULL OR lease_expires_ms <= $1) \
             ORDER BY created LIMIT $2 FOR UPDATE SKIP LOCKED), \
             numbered AS (SELECT picked, row_number() OVER (ORDER BY created) AS taken \
             FROM picked) \
             UPDATE converge.runs SET lease_token = ($3::text[])[taken], lease_holder = $4, \
             lease_host = $5, lease_pid = $6, lease_expires_ms = $7 \
             FROM numbered WHERE id = picked RETURNING {RUN_COLUMNS}, taken"
        );
        let rows = self.query(
            &sql,
            &[
                &now_ms,
                &limit,
                &tokens,
                &holder.name,
                &holder.host,
                &i64::from(holder.pid),
                &signed(expires_ms)?,
            ],
            "claiming runs",
        )?;
        let mut taken = rows
            .iter()
            .map(|row| Ok((get::<i64>(row, 14)?, run_row(row)?)))
            .collect::<Result<Vec<_>, JournalError>>()?;
        taken.sort_unstable_by_key(|(index, _)| *index);
        let rows: Vec<RunRow> = taken.into_iter().map(|(_, row)| row).collect();
        for row in &rows {
            self.news
                .statuses
                .insert(row.id.clone(), row.status.clone());
        }
        Ok(rows)
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
        let rows = self.query(
            "UPDATE converge.runs SET lease_token = NULL, lease_holder = NULL, \
             lease_host = NULL, lease_pid = NULL, lease_expires_ms = NULL \
             WHERE id = $1 AND lease_token = $2 RETURNING status",
            &[&run, &token],
            "releasing the lease",
        )?;
        // A running run let go is free to claim, and its last steps are news to followers
        // who look only at the runs being driven.
        if let Some(row) = rows.first()
            && get::<String>(row, 0)? == "running"
        {
            self.news.add(RUNNABLE_CHANNEL, run);
            self.news.add(EVENTS_CHANNEL, run);
        }
        Ok(())
    }

    fn submitted(&mut self, run: &str) {
        // As a running run let go (`clear_lease`): free to claim, and news to followers.
        self.news.add(RUNNABLE_CHANNEL, run);
        self.news.add(EVENTS_CHANNEL, run);
    }

    fn read_ahead(&mut self, run: &str) -> Result<(), JournalError> {
        let rows = self.query(READ_AHEAD, &[&run], "reading the run")?;
        let mut ahead = Ahead {
            run: run.to_owned(),
            steps: Some(Vec::new()),
            chunks: Some(Vec::new()),
            parts: Some(Vec::new()),
        };
        for row in rows {
            let kind = match get::<i32>(&row, 0)? {
                0 => &mut ahead.steps,
                1 => &mut ahead.chunks,
                _ => &mut ahead.parts,
            };
            kind.get_or_insert_with(Vec::new).push(row);
        }
        self.ahead = ahead;
        Ok(())
    }

    fn steps(&mut self, run: &str) -> Result<Vec<StepRow>, JournalError> {
        if let Some(rows) = self.ahead.take(run, |ahead| &mut ahead.steps) {
            return rows
                .iter()
                .map(|row| {
                    StepRow::read(
                        run,
                        get(row, 1)?,
                        get(row, 4)?,
                        get(row, 5)?,
                        get(row, 2)?,
                        get(row, 3)?,
                        get(row, 6)?,
                        get(row, 7)?,
                    )
                })
                .collect();
        }
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
        self.send(None)?;
        let mut rows = self
            .tx
            .query_raw(&statement, &params)
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
        if from == 0
            && !bodies
            && let Some(rows) = self.ahead.take(run, |ahead| &mut ahead.chunks)
        {
            for row in &rows {
                let chunk = ChunkRow {
                    first_seq: get(row, 1)?,
                    step: get(row, 2)?,
                    count: get(row, 3)?,
                    hashes: get(row, 6)?,
                    ends: None,
                    bodies: None,
                };
                if !each(chunk)? {
                    break;
                }
            }
            return Ok(());
        }
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
        self.send(None)?;
        let mut rows = self
            .tx
            .query_raw(&statement, &params)
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
        if let Some(rows) = self.ahead.take(run, |ahead| &mut ahead.parts) {
            return rows
                .iter()
                .map(|row| {
                    Ok(PartRow {
                        step: get(row, 1)?,
                        part: get(row, 2)?,
                        cycle: get(row, 3)?,
                        agents: get(row, 6)?,
                        ends: get(row, 7)?,
                        bodies: get(row, 8)?,
                    })
                })
                .collect();
        }
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

    fn insert_part(&mut self, run: &str, part: &NewPart<'_>) -> Result<(), JournalError> {
        let bytes = part.agents.len() + part.ends.len() + part.bodies.len();
        self.pending_for(run, bytes)?.parts.push(PartRow {
            step: part.step,
            part: part.part,
            cycle: part.cycle,
            agents: part.agents.to_vec(),
            ends: part.ends.to_vec(),
            bodies: part.bodies.to_vec(),
        });
        Ok(())
    }

    fn insert_step(&mut self, run: &str, step: &NewStep<'_>) -> Result<(), JournalError> {
        let bytes = step.kind.len() + step.input.len() + 64;
        self.pending_for(run, bytes)?.steps.push(OwnedStep {
            step: step.step,
            kind: step.kind.to_owned(),
            input: step.input.to_owned(),
            first_seq: step.first_seq,
            events: step.events,
            input_link: step.input_link.as_bytes().to_vec(),
            link: step.link.as_bytes().to_vec(),
        });
        Ok(())
    }

    fn insert_chunk(&mut self, run: &str, chunk: &ChunkRow<'_>) -> Result<(), JournalError> {
        let bytes = chunk.hashes.len()
            + chunk.ends.map_or(0, <[u8]>::len)
            + chunk.bodies.map_or(0, <[u8]>::len);
        self.pending_for(run, bytes)?.chunks.push(OwnedChunk {
            first_seq: chunk.first_seq,
            step: chunk.step,
            count: chunk.count,
            hashes: chunk.hashes.to_vec(),
            ends: chunk.ends.unwrap_or_default().to_vec(),
            bodies: chunk.bodies.unwrap_or_default().to_vec(),
        });
        Ok(())
    }

    fn advance(&mut self, run: &str, head: &NewHead<'_>) -> Result<(), JournalError> {
        if self.news.statuses.get(run).map(String::as_str) != Some(head.status) {
            self.news.add(EVENTS_CHANNEL, run);
        }
        // A running run let go is free to claim, and news to followers (as `clear_lease`).
        if head.release.is_some() && head.status == "running" {
            self.news.add(RUNNABLE_CHANNEL, run);
            self.news.add(EVENTS_CHANNEL, run);
        }
        // The run's (last) rows go with its new head, in one statement.
        self.pending_for(run, 0)?;
        self.send(Some(head))
    }
}
