//! The journal's schema in PostgreSQL: created by `converge` itself, in its own schema
//! (`converge`), under an advisory lock so that processes opening one database at once
//! create it once; a newer or older version is refused untouched.

use postgres::Client;

use crate::JournalError;

/// The schema version this build writes and reads: the journal's second edition, the same
/// format as a SQLite journal's (`docs/journal.md`).
pub(crate) const SCHEMA_VERSION: i64 = 2;

/// The advisory lock key serializing schema creation: `"Cnvg"` in ASCII.
const SCHEMA_LOCK: i64 = 0x436E_7667;

/// The tables, the same four as SQLite's with PostgreSQL's types, and triggers that keep
/// steps, events and outcomes append-only and runs undeletable. (Notifications are sent by
/// the journal after its commits, not by a trigger: `postgres/mod.rs`, "News".)
const SCHEMA: &str = r"
CREATE SCHEMA IF NOT EXISTS converge;

CREATE TABLE converge.meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE converge.runs (
    id               TEXT PRIMARY KEY,
    created          BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    header           TEXT NOT NULL,
    header_link      TEXT NOT NULL CHECK (length(header_link) = 64),
    status           TEXT NOT NULL CHECK (status IN ('running', 'awaiting_approval', 'stopped')),
    stop_reason      TEXT CHECK ((status = 'stopped') = (stop_reason IS NOT NULL)),
    steps            BIGINT NOT NULL CHECK (steps >= 0),
    events           BIGINT NOT NULL CHECK (events >= 0),
    root_hash        TEXT NOT NULL CHECK (length(root_hash) = 64),
    record_hash      TEXT NOT NULL CHECK (length(record_hash) = 64),
    lease_token      TEXT,
    lease_holder     TEXT,
    lease_host       TEXT,
    lease_pid        BIGINT,
    lease_expires_ms BIGINT
) WITH (fillfactor = 50);

CREATE TABLE converge.steps (
    run        TEXT NOT NULL REFERENCES converge.runs (id),
    step       BIGINT NOT NULL CHECK (step >= 0),
    kind       TEXT NOT NULL CHECK (kind IN ('start', 'cycle', 'decisions', 'halt', 'stop')),
    input      TEXT NOT NULL,
    first_seq  BIGINT NOT NULL CHECK (first_seq >= 0),
    events     BIGINT NOT NULL CHECK (events >= 0),
    input_link BYTEA NOT NULL CHECK (length(input_link) = 32),
    link       BYTEA NOT NULL CHECK (length(link) = 32),
    PRIMARY KEY (run, step)
);

CREATE TABLE converge.outcomes (
    run    TEXT NOT NULL REFERENCES converge.runs (id),
    step   BIGINT NOT NULL CHECK (step >= 0),
    part   BIGINT NOT NULL CHECK (part >= 0),
    cycle  BIGINT NOT NULL CHECK (cycle > 0),
    agents BYTEA NOT NULL,
    ends   BYTEA NOT NULL,
    bodies BYTEA NOT NULL,
    PRIMARY KEY (run, step, part)
);

CREATE TABLE converge.events (
    run       TEXT NOT NULL,
    first_seq BIGINT NOT NULL CHECK (first_seq >= 0),
    step      BIGINT NOT NULL,
    count     BIGINT NOT NULL CHECK (count > 0),
    hashes    BYTEA NOT NULL,
    ends      BYTEA NOT NULL,
    bodies    BYTEA NOT NULL,
    PRIMARY KEY (run, first_seq),
    FOREIGN KEY (run, step) REFERENCES converge.steps (run, step)
);
-- What workers claim: running runs, oldest first.
CREATE INDEX runs_runnable ON converge.runs (created) WHERE status = 'running';
-- Event bodies are compressed by the journal already.
ALTER TABLE converge.events ALTER COLUMN bodies SET STORAGE EXTERNAL;
ALTER TABLE converge.outcomes ALTER COLUMN bodies SET STORAGE EXTERNAL;

CREATE FUNCTION converge.refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'converge journal: % is append-only', TG_TABLE_NAME;
END $$;
CREATE TRIGGER runs_keep BEFORE DELETE ON converge.runs
    FOR EACH ROW EXECUTE FUNCTION converge.refuse();
CREATE TRIGGER steps_append_only BEFORE UPDATE OR DELETE ON converge.steps
    FOR EACH ROW EXECUTE FUNCTION converge.refuse();
CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON converge.events
    FOR EACH ROW EXECUTE FUNCTION converge.refuse();
CREATE TRIGGER outcomes_append_only BEFORE UPDATE OR DELETE ON converge.outcomes
    FOR EACH ROW EXECUTE FUNCTION converge.refuse();
";

/// Checks the database's journal schema, creating it in a database that has none; `place`
/// names the database in errors (its URL without a password).
pub(crate) fn prepare(client: &mut Client, place: &str) -> Result<(), JournalError> {
    if let Some(found) = version(client)? {
        check(found, place)?;
        drop_notify_trigger(client)?;
        return leave_room_in_runs(client);
    }
    let mut tx = client
        .transaction()
        .map_err(storage("beginning the schema creation"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
        .map_err(storage("locking the schema creation"))?;
    // Another process may have created the schema while this one waited for the lock.
    if let Some(found) = version_in(&mut tx)? {
        return check(found, place);
    }
    tx.batch_execute(SCHEMA)
        .map_err(storage("creating the schema"))?;
    tx.execute(
        "INSERT INTO converge.meta (key, value) VALUES ('schema_version', $1), ('created_by', $2)",
        &[
            &SCHEMA_VERSION.to_string(),
            &concat!("converge-journal ", env!("CARGO_PKG_VERSION")),
        ],
    )
    .map_err(storage("writing the schema version"))?;
    tx.commit().map_err(storage("committing the schema"))
}

/// Whether the journal still has the trigger earlier builds created to notify listeners on
/// every change of a run's row.
const HAS_NOTIFY_TRIGGER: &str = "SELECT EXISTS (SELECT 1 FROM pg_trigger \
     WHERE tgname = 'runs_notify' AND tgrelid = 'converge.runs'::regclass)";

/// Removes the notification trigger of earlier builds of this schema version, once: it
/// notified on every step, and every commit that notifies queues on one lock for the whole
/// database. The tables and their bytes are unchanged; this build notifies by itself.
fn drop_notify_trigger(client: &mut Client) -> Result<(), JournalError> {
    let present = |client: &mut Client| {
        client
            .query_one(HAS_NOTIFY_TRIGGER, &[])
            .and_then(|row| row.try_get::<_, bool>(0))
            .map_err(storage("looking for the notification trigger"))
    };
    if !present(client)? {
        return Ok(());
    }
    let mut tx = client
        .transaction()
        .map_err(storage("beginning the trigger's removal"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
        .map_err(storage("locking the schema"))?;
    tx.batch_execute(
        "DROP TRIGGER IF EXISTS runs_notify ON converge.runs; \
         DROP FUNCTION IF EXISTS converge.notify()",
    )
    .map_err(storage("removing the notification trigger"))?;
    tx.commit()
        .map_err(storage("committing the trigger's removal"))
}

/// Whether the `runs` table leaves room in its pages for its rows' new versions.
const RUNS_HAVE_ROOM: &str = "SELECT coalesce('fillfactor=50' = ANY(reloptions), false) \
     FROM pg_class WHERE oid = 'converge.runs'::regclass";

/// Leaves half of each page of `runs` free, as this build creates it, in a journal an earlier
/// build created full. A run's row (its header inline) is updated when it is claimed, and a
/// new version that fits in its page is a HOT update: no new index entries, and only the
/// changed bytes in the WAL. In full pages of runs submitted and never updated, each claim
/// moved the row to another page. Only pages filled from now on are affected; no byte of
/// any row changes.
fn leave_room_in_runs(client: &mut Client) -> Result<(), JournalError> {
    let roomy = client
        .query_one(RUNS_HAVE_ROOM, &[])
        .and_then(|row| row.try_get::<_, bool>(0))
        .map_err(storage("reading the runs table's fill factor"))?;
    if roomy {
        return Ok(());
    }
    let mut tx = client
        .transaction()
        .map_err(storage("beginning the fill factor's change"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
        .map_err(storage("locking the schema"))?;
    tx.batch_execute("ALTER TABLE converge.runs SET (fillfactor = 50)")
        .map_err(storage("changing the runs table's fill factor"))?;
    tx.commit()
        .map_err(storage("committing the fill factor's change"))
}

/// Checks that the database holds a journal of this build's version, creating nothing.
pub(crate) fn check_existing(client: &mut Client, place: &str) -> Result<(), JournalError> {
    match version(client)? {
        Some(found) => check(found, place),
        None => Err(JournalError::NotAJournal {
            path: place.into(),
            detail: "the database holds no Converge journal (no schema `converge`); \
                     nothing has run there yet"
                .to_owned(),
        }),
    }
}

fn check(found: i64, place: &str) -> Result<(), JournalError> {
    let path = place.into();
    match found {
        SCHEMA_VERSION => Ok(()),
        newer if newer > SCHEMA_VERSION => Err(JournalError::NewerSchema {
            path,
            found,
            supported: SCHEMA_VERSION,
        }),
        _ => Err(JournalError::OlderSchema {
            path,
            found,
            supported: SCHEMA_VERSION,
        }),
    }
}

/// The stored schema version, or `None` when the database has no journal schema.
fn version(client: &mut Client) -> Result<Option<i64>, JournalError> {
    let mut tx = client
        .transaction()
        .map_err(storage("reading the schema version"))?;
    version_in(&mut tx)
}

fn version_in(tx: &mut postgres::Transaction<'_>) -> Result<Option<i64>, JournalError> {
    let exists: bool = tx
        .query_one("SELECT to_regclass('converge.meta') IS NOT NULL", &[])
        .and_then(|row| row.try_get(0))
        .map_err(storage("looking for the journal schema"))?;
    if !exists {
        return Ok(None);
    }
    let value: Option<String> = tx
        .query_opt(
            "SELECT value FROM converge.meta WHERE key = 'schema_version'",
            &[],
        )
        .and_then(|row| row.map(|row| row.try_get(0)).transpose())
        .map_err(storage("reading the schema version"))?;
    let value = value.ok_or_else(|| JournalError::Corrupt {
        detail: "the converge schema has no schema version".to_owned(),
    })?;
    value.parse().map(Some).map_err(|_| JournalError::Corrupt {
        detail: format!("the stored schema version \"{value}\" is not a number"),
    })
}

/// Maps a client error to [`JournalError::Storage`] with what the journal was doing.
pub(crate) fn storage(context: &'static str) -> impl Fn(postgres::Error) -> JournalError {
    move |source| storage_while(context.to_owned(), source)
}

/// [`JournalError::Storage`] for `source`, whose message names its cause too: the client's
/// own says "error connecting to server" and keeps why (connection refused, a bad password)
/// in its source.
pub(crate) fn storage_while(context: String, source: postgres::Error) -> JournalError {
    let mut message = source.to_string();
    let mut cause = std::error::Error::source(&source);
    while let Some(error) = cause {
        let said = error.to_string();
        if !message.contains(&said) {
            message = format!("{message}: {said}");
        }
        cause = error.source();
    }
    JournalError::Storage {
        context,
        source: message.into(),
    }
}
