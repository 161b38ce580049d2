//! Opening a journal file: telling a journal from anything else, the pragmas a journal relies
//! on, and the schema of a new journal.
//!
//! Nothing here writes to a file before it is known to be a Converge journal of a supported
//! version or an empty database; nothing here migrates a schema (there is one version).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior, params};

use crate::JournalError;

/// `PRAGMA application_id` of a Converge journal: `"Cnvg"` in ASCII.
const APPLICATION_ID: i32 = 0x436E_7667;

/// The schema version this build writes, and the only one it reads: the second edition, whose
/// record chain covers the run header, every step input and every outcome (`docs/journal.md`).
pub(crate) const SCHEMA_VERSION: i64 = 2;

/// How long a write waits for another connection's write lock before failing.
/// Page size of a new journal, in bytes. Most of a journal's bytes are compressed groups of
/// events and outcomes of tens to hundreds of kilobytes, stored in chains of overflow pages:
/// 16 KB pages write a wide cycle with a quarter of the page writes of SQLite's default 4 KB
/// (`journal 100000` measured 10–15% faster), while a small commit still touches only a few
/// pages. Existing journals keep the size they were created with.
const PAGE_SIZE: i64 = 16384;

pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = r"
CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TABLE runs (
    id               TEXT PRIMARY KEY NOT NULL,
    header           TEXT NOT NULL,
    header_link      TEXT NOT NULL CHECK (length(header_link) = 64),
    status           TEXT NOT NULL CHECK (status IN ('running', 'awaiting_approval', 'stopped')),
    stop_reason      TEXT CHECK ((status = 'stopped') = (stop_reason IS NOT NULL)),
    steps            INTEGER NOT NULL CHECK (steps >= 0),
    events           INTEGER NOT NULL CHECK (events >= 0),
    root_hash        TEXT NOT NULL CHECK (length(root_hash) = 64),
    record_hash      TEXT NOT NULL CHECK (length(record_hash) = 64),
    lease_token      TEXT,
    lease_holder     TEXT,
    lease_host       TEXT,
    lease_pid        INTEGER,
    lease_expires_ms INTEGER
) STRICT;

CREATE TABLE steps (
    run        TEXT NOT NULL REFERENCES runs (id),
    step       INTEGER NOT NULL CHECK (step >= 0),
    kind       TEXT NOT NULL CHECK (kind IN ('start', 'cycle', 'decisions', 'halt', 'stop')),
    input      TEXT NOT NULL,
    first_seq  INTEGER NOT NULL CHECK (first_seq >= 0),
    events     INTEGER NOT NULL CHECK (events >= 0),
    input_link BLOB NOT NULL CHECK (length(input_link) = 32),
    link       BLOB NOT NULL CHECK (length(link) = 32),
    PRIMARY KEY (run, step)
) STRICT;

CREATE TABLE outcomes (
    run    TEXT NOT NULL REFERENCES runs (id),
    step   INTEGER NOT NULL CHECK (step >= 0),
    part   INTEGER NOT NULL CHECK (part >= 0),
    cycle  INTEGER NOT NULL CHECK (cycle > 0),
    agents BLOB NOT NULL,
    ends   BLOB NOT NULL,
    bodies BLOB NOT NULL,
    PRIMARY KEY (run, step, part)
) STRICT;

CREATE TABLE events (
    run       TEXT NOT NULL,
    first_seq INTEGER NOT NULL CHECK (first_seq >= 0),
    step      INTEGER NOT NULL,
    count     INTEGER NOT NULL CHECK (count > 0),
    hashes    BLOB NOT NULL,
    ends      BLOB NOT NULL,
    bodies    BLOB NOT NULL,
    PRIMARY KEY (run, first_seq),
    FOREIGN KEY (run, step) REFERENCES steps (run, step)
) STRICT;

CREATE TRIGGER runs_keep BEFORE DELETE ON runs
BEGIN SELECT RAISE(ABORT, 'converge journal: runs are never deleted'); END;
CREATE TRIGGER steps_append_only_update BEFORE UPDATE ON steps
BEGIN SELECT RAISE(ABORT, 'converge journal: steps are append-only'); END;
CREATE TRIGGER steps_append_only_delete BEFORE DELETE ON steps
BEGIN SELECT RAISE(ABORT, 'converge journal: steps are append-only'); END;
CREATE TRIGGER events_append_only_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'converge journal: events are append-only'); END;
CREATE TRIGGER events_append_only_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'converge journal: events are append-only'); END;
CREATE TRIGGER outcomes_append_only_update BEFORE UPDATE ON outcomes
BEGIN SELECT RAISE(ABORT, 'converge journal: outcomes are append-only'); END;
CREATE TRIGGER outcomes_append_only_delete BEFORE DELETE ON outcomes
BEGIN SELECT RAISE(ABORT, 'converge journal: outcomes are append-only'); END;
";

/// What an existing file holds.
enum Identity {
    /// An SQLite database with no application id and no schema: nothing to lose.
    Empty,
    /// A Converge journal of a supported schema version.
    Journal,
}

/// Opens (or creates) the journal at `path` and returns a configured read-write connection.
///
/// An existing file is first checked from its header bytes, then through a read-only
/// connection, then once more on the read-write connection before anything is written.
pub(crate) fn open(path: &Path) -> Result<Connection, JournalError> {
    let exists = match std::fs::metadata(path) {
        Ok(metadata) if metadata.is_dir() => {
            return Err(JournalError::NotAJournal {
                path: path.to_path_buf(),
                detail: "it is a directory".to_owned(),
            });
        }
        Ok(_) => true,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => false,
        Err(source) => {
            return Err(JournalError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    if exists {
        precheck(path)?;
        let probe = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| open_error(path, source))?;
        match identify(&probe, path) {
            // A process killed while creating the journal left a hot rollback journal, which
            // only a writer can roll back: the read-write connection below does, and
            // identifies the file again before writing anything.
            Err(JournalError::Storage { source, .. })
                if source.downcast_ref().is_some_and(is_hot_journal) => {}
            identified => {
                identified?;
            }
        }
        drop(probe);
    }
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if !exists {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let mut conn =
        Connection::open_with_flags(path, flags).map_err(|source| open_error(path, source))?;
    // Checked again on the connection that will write, before anything is written.
    let identity = identify(&conn, path)?;
    if let Identity::Empty = identity {
        // Only an empty database takes a page size; it must be set before WAL mode is.
        conn.pragma_update(None, "page_size", PAGE_SIZE)
            .map_err(storage("setting the page size"))?;
    }
    configure(&conn)?;
    if let Identity::Empty = identity {
        initialize(&mut conn, path)?;
    }
    Ok(conn)
}

/// Refuses, from the file's first 100 bytes alone, what is certainly not a journal this build
/// can open, so that SQLite never touches such a file (not even to create the `-wal` and
/// `-shm` files a read-only connection to a WAL database creates). Whatever passes is then
/// identified through a read-only SQLite connection, which also reads the write-ahead log.
fn precheck(path: &Path) -> Result<(), JournalError> {
    let io = |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut header = Vec::with_capacity(100);
    let file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    file.take(100).read_to_end(&mut header).map_err(io)?;
    if len == 0 {
        // SQLite reads an empty file as an empty database.
        return Ok(());
    }
    let not_a_journal = |detail: String| JournalError::NotAJournal {
        path: path.to_path_buf(),
        detail,
    };
    if header.len() < 100 || !header.starts_with(b"SQLite format 3\0") {
        return Err(not_a_journal("it is not an SQLite database".to_owned()));
    }
    let field = |at: usize| {
        i32::from_be_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let (user_version, application_id) = (field(60), field(68));
    let page_size = match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65_536,
        size => u64::from(size),
    };
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    match application_id {
        APPLICATION_ID if i64::from(user_version) > SCHEMA_VERSION => {
            Err(JournalError::NewerSchema {
                path: path.to_path_buf(),
                found: i64::from(user_version),
                supported: SCHEMA_VERSION,
            })
        }
        APPLICATION_ID if user_version == 1 => Err(JournalError::OlderSchema {
            path: path.to_path_buf(),
            found: 1,
            supported: SCHEMA_VERSION,
        }),
        APPLICATION_ID => Ok(()),
        // More than one page means tables; with a write-ahead log present, the log may hold
        // a newer first page, so SQLite decides.
        0 if len > page_size && !wal.exists() => Err(not_a_journal(FOREIGN.to_owned())),
        // A user version is something another application set, even on a single page.
        0 if user_version != 0 && !wal.exists() => Err(not_a_journal(format!(
            "it is an SQLite database of another application (user version {user_version})"
        ))),
        0 => Ok(()),
        other => Err(not_a_journal(foreign_id(other))),
    }
}

const FOREIGN: &str =
    "it is an SQLite database of another application (no Converge application id)";

fn foreign_id(application_id: i32) -> String {
    format!(
        "its SQLite application id is {application_id:#010x}, not Converge's {APPLICATION_ID:#010x}"
    )
}

/// Says what an SQLite file holds, reading only.
fn identify(conn: &Connection, path: &Path) -> Result<Identity, JournalError> {
    let not_a_journal = |detail: String| JournalError::NotAJournal {
        path: path.to_path_buf(),
        detail,
    };
    // One statement reads one snapshot: another process creating the journal commits its
    // tables and its application id together, and both are seen or neither.
    let (application_id, objects, user_version): (i32, i64, i64) = conn
        .query_row(
            "SELECT (SELECT application_id FROM pragma_application_id()), \
                    (SELECT count(*) FROM sqlite_schema), \
                    (SELECT user_version FROM pragma_user_version())",
            [],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .map_err(|source| open_error(path, source))?;
    if application_id == 0 {
        if objects == 0 && user_version == 0 {
            return Ok(Identity::Empty);
        }
        return Err(not_a_journal(FOREIGN.to_owned()));
    }
    if application_id != APPLICATION_ID {
        return Err(not_a_journal(foreign_id(application_id)));
    }
    let version: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |row| row.get(0),
        )
        .optional()
        .map_err(|source| JournalError::Corrupt {
            detail: format!("{} has no readable meta table: {source}", path.display()),
        })?;
    let version = version
        .as_deref()
        .and_then(|version| version.parse::<i64>().ok())
        .ok_or_else(|| JournalError::Corrupt {
            detail: format!("{} has no readable schema version", path.display()),
        })?;
    if version > SCHEMA_VERSION {
        return Err(JournalError::NewerSchema {
            path: path.to_path_buf(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    if version == 1 {
        return Err(JournalError::OlderSchema {
            path: path.to_path_buf(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    if version < SCHEMA_VERSION {
        return Err(JournalError::Corrupt {
            detail: format!(
                "{} claims schema version {version}, which never existed",
                path.display()
            ),
        });
    }
    Ok(Identity::Journal)
}

/// Opens an existing journal for reading only: nothing of the journal is written, so a
/// journal that is read-only, on read-only media or in a directory the user may not write can
/// still be listed, inspected and verified. (Where the directory can be written, SQLite keeps
/// its usual `-wal` and `-shm` side files, shared with any writer.)
///
/// The file is checked as [`open`] checks it. When SQLite cannot read a WAL-mode file without
/// creating its shared-memory file (a directory it may not write), the file is opened as
/// immutable: no writer can be using it then (a writer would need those files too), and no
/// log is pending, since a journal's last connection checkpoints and removes it on close; a
/// `-wal` file left by a crash needs a writer to recover (it is refused, saying so).
pub(crate) fn open_read_only(path: &Path) -> Result<Connection, JournalError> {
    match std::fs::metadata(path) {
        Ok(metadata) if metadata.is_dir() => {
            return Err(JournalError::NotAJournal {
                path: path.to_path_buf(),
                detail: "it is a directory".to_owned(),
            });
        }
        Ok(_) => {}
        Err(source) => {
            return Err(JournalError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    }
    precheck(path)?;
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn =
        Connection::open_with_flags(path, flags).map_err(|source| open_error(path, source))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(storage("setting the busy timeout"))?;
    let identified = match identify(&conn, path) {
        Err(JournalError::Storage { source, .. })
            if source.downcast_ref().is_some_and(needs_shared_memory) =>
        {
            drop(conn);
            return open_immutable(path);
        }
        identified => identified?,
    };
    match identified {
        Identity::Journal => Ok(conn),
        Identity::Empty => Err(JournalError::NotAJournal {
            path: path.to_path_buf(),
            detail: "it is an empty database: no journal was created in it yet".to_owned(),
        }),
    }
}

/// Opens a journal file as immutable, for reading where SQLite may create nothing.
fn open_immutable(path: &Path) -> Result<Connection, JournalError> {
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    if wal.exists() {
        return Err(JournalError::Unsupported {
            detail: format!(
                "{} has a write-ahead log left by a process that did not close it, and its \
                 directory cannot be written: open it once where it can be written, so that \
                 the log is recovered",
                path.display()
            ),
        });
    }
    let uri = format!("file:{}?immutable=1", uri_path(path));
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn =
        Connection::open_with_flags(&uri, flags).map_err(|source| open_error(path, source))?;
    match identify(&conn, path)? {
        Identity::Journal => Ok(conn),
        Identity::Empty => Err(JournalError::NotAJournal {
            path: path.to_path_buf(),
            detail: "it is an empty database: no journal was created in it yet".to_owned(),
        }),
    }
}

/// A path as a `file:` URI path: percent-encodes what a URI would read otherwise.
fn uri_path(path: &Path) -> String {
    let mut encoded = String::new();
    for byte in path.to_string_lossy().bytes() {
        match byte {
            b'?' | b'#' | b'%' | b' ' => encoded.push_str(&format!("%{byte:02X}")),
            _ => encoded.push(char::from(byte)),
        }
    }
    encoded
}

/// Whether a read failed because SQLite would have to create the shared-memory file of a
/// WAL-mode database where it may not.
fn needs_shared_memory(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(ErrorCode::CannotOpen | ErrorCode::ReadOnly)
    )
}

/// How every connection that writes a journal, or checkpoints one, syncs: `synchronous=FULL`
/// (the log is synced at each commit, the file at each checkpoint) and `fullfsync`.
pub(crate) const DURABILITY: [(&str, &str); 2] = [("synchronous", "FULL"), ("fullfsync", "ON")];

/// Sets the per-connection pragmas a journal relies on and checks they took effect.
fn configure(conn: &Connection) -> Result<(), JournalError> {
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(storage("setting the busy timeout"))?;
    let mode = switch_to_wal(conn)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(JournalError::Unsupported {
            detail: format!("the file stays in journal mode {mode:?}; WAL is required"),
        });
    }
    let [(synchronous, full), (fullfsync, on)] = DURABILITY;
    for (pragma, value, expected) in [
        (synchronous, full, 2),
        ("foreign_keys", "ON", 1),
        (fullfsync, on, 1),
    ] {
        conn.pragma_update(None, pragma, value)
            .map_err(storage("setting a pragma"))?;
        let actual: i64 = conn
            .pragma_query_value(None, pragma, |row| row.get(0))
            .map_err(storage("reading a pragma"))?;
        if actual != expected {
            return Err(JournalError::Unsupported {
                detail: format!("PRAGMA {pragma} = {value} did not take effect"),
            });
        }
    }
    Ok(())
}

/// Puts the file in WAL mode (it stays there) and returns the mode SQLite reports.
///
/// A file already in WAL mode is left alone. Switching needs an exclusive lock that SQLite's
/// busy handler does not wait for, so while another process is creating the same journal
/// the switch is attempted again until [`BUSY_TIMEOUT`], as the busy handler would; it
/// changes nothing but the mode, so trying again is safe.
fn switch_to_wal(conn: &Connection) -> Result<String, JournalError> {
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |row| row.get(0))
        .map_err(storage("reading the journal mode"))?;
    if mode.eq_ignore_ascii_case("wal") {
        return Ok(mode);
    }
    let deadline = Instant::now() + BUSY_TIMEOUT;
    loop {
        match conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0)) {
            Err(error)
                if matches!(
                    error.sqlite_error_code(),
                    Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
                ) && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            outcome => return outcome.map_err(storage("switching to WAL mode")),
        }
    }
}

/// Creates the schema in an empty database, in one transaction.
fn initialize(conn: &mut Connection, path: &Path) -> Result<(), JournalError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(storage("beginning the schema creation"))?;
    // Another process may have created the journal since the check.
    if let Identity::Journal = identify(&tx, path)? {
        return Ok(());
    }
    tx.execute_batch(SCHEMA)
        .map_err(storage("creating the schema"))?;
    tx.pragma_update(None, "application_id", APPLICATION_ID)
        .map_err(storage("setting the application id"))?;
    // Mirrors the schema version in the file header, where `precheck` reads it.
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(storage("setting the user version"))?;
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('schema_version', ?1), ('created_by', ?2)",
        params![
            SCHEMA_VERSION.to_string(),
            concat!("converge-runtime ", env!("CARGO_PKG_VERSION"))
        ],
    )
    .map_err(storage("writing the schema version"))?;
    tx.commit().map_err(storage("committing the schema"))
}

/// Whether a read failed only because a hot rollback journal needs a writer to roll it back.
fn is_hot_journal(error: &rusqlite::Error) -> bool {
    matches!(
        error,
        rusqlite::Error::SqliteFailure(failure, _)
            if failure.extended_code == rusqlite::ffi::SQLITE_READONLY_ROLLBACK
    )
}

fn open_error(path: &Path, source: rusqlite::Error) -> JournalError {
    match source.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) => JournalError::NotAJournal {
            path: path.to_path_buf(),
            detail: "it is not an SQLite database".to_owned(),
        },
        _ => JournalError::Storage {
            context: format!("opening {}", path.display()),
            source: Box::new(source),
        },
    }
}

pub(crate) fn storage(context: &'static str) -> impl Fn(rusqlite::Error) -> JournalError {
    move |source| JournalError::Storage {
        context: context.to_owned(),
        source: Box::new(source),
    }
}
