//! The server's tables in the SQLite journal file, beside the journal's own.

use std::path::Path;
use std::time::Duration;

use converge_runtime::SqliteJournal;
use rusqlite::Connection;
use rusqlite::types::{Value as SqliteValue, ValueRef};

use super::StoreError;
use super::sql::{Cell, Row, Sql, Value};

/// How long a connection waits for another one's write before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS server_tokens (
    id         TEXT PRIMARY KEY,
    hash       BLOB NOT NULL UNIQUE,
    tenant     TEXT NOT NULL,
    name       TEXT NOT NULL,
    role       TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    revoked_ms INTEGER
) STRICT;
CREATE TABLE IF NOT EXISTS server_runs (
    run          TEXT PRIMARY KEY,
    tenant       TEXT NOT NULL,
    id           TEXT NOT NULL,
    submitted_by TEXT NOT NULL,
    submitted_ms INTEGER NOT NULL,
    UNIQUE (tenant, id)
) STRICT;
CREATE INDEX IF NOT EXISTS server_runs_by_tenant ON server_runs (tenant, submitted_ms);
CREATE TABLE IF NOT EXISTS server_decisions (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    run      TEXT NOT NULL,
    proposal TEXT NOT NULL,
    hash     TEXT NOT NULL,
    actor    TEXT NOT NULL,
    verdict  TEXT NOT NULL,
    reason   TEXT,
    outcome  TEXT NOT NULL,
    refusal  TEXT,
    at_ms    INTEGER NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS server_decisions_by_run ON server_decisions (run, seq);
";

/// One connection to the server's tables in a journal file.
pub(crate) struct SqliteTables {
    conn: Connection,
    place: String,
}

impl SqliteTables {
    /// Opens the journal (creating it if missing), then the server's tables in it.
    pub(crate) fn open(path: &Path) -> Result<SqliteTables, StoreError> {
        drop(SqliteJournal::open(path)?);
        let tables = SqliteTables::connect(path)?;
        tables
            .conn
            .execute_batch(SCHEMA)
            .map_err(|source| tables.error(source))?;
        Ok(tables)
    }

    /// Another connection to a file [`SqliteTables::open`] has set up: no schema work, so
    /// opening one never waits for a writer.
    pub(crate) fn connect(path: &Path) -> Result<SqliteTables, StoreError> {
        let place = path.display().to_string();
        let error = |source: rusqlite::Error| StoreError::Database {
            place: place.clone(),
            source: Box::new(source),
        };
        let conn = Connection::open(path).map_err(error)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(error)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(error)?;
        Ok(SqliteTables { conn, place })
    }

    fn error(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Database {
            place: self.place.clone(),
            source: Box::new(source),
        }
    }
}

/// `$1` → `?1`: SQLite's spelling of a numbered parameter.
fn sqlite_text(sql: &str) -> String {
    sql.replace('$', "?")
}

fn values(params: &[Value<'_>]) -> Vec<SqliteValue> {
    params
        .iter()
        .map(|value| match *value {
            Value::Int(int) => SqliteValue::Integer(int),
            Value::Text(text) => SqliteValue::Text(text.to_owned()),
            Value::Bytes(bytes) => SqliteValue::Blob(bytes.to_vec()),
            Value::OptText(text) => {
                text.map_or(SqliteValue::Null, |text| SqliteValue::Text(text.to_owned()))
            }
        })
        .collect()
}

impl Sql for SqliteTables {
    fn execute(&mut self, sql: &str, params: &[Value<'_>]) -> Result<u64, StoreError> {
        self.conn
            .prepare_cached(&sqlite_text(sql))
            .and_then(|mut statement| statement.execute(rusqlite::params_from_iter(values(params))))
            .map(|changed| changed as u64)
            .map_err(|source| self.error(source))
    }

    fn query(&mut self, sql: &str, params: &[Value<'_>]) -> Result<Vec<Row>, StoreError> {
        self.conn
            .prepare_cached(&sqlite_text(sql))
            .and_then(|mut statement| {
                let columns = statement.column_count();
                let rows =
                    statement.query_map(rusqlite::params_from_iter(values(params)), |row| {
                        (0..columns)
                            .map(|column| {
                                Ok(match row.get_ref(column)? {
                                    ValueRef::Null => Cell::Null,
                                    ValueRef::Integer(int) => Cell::Int(int),
                                    ValueRef::Real(real) => Cell::Text(real.to_string()),
                                    ValueRef::Text(text) => {
                                        Cell::Text(String::from_utf8_lossy(text).into_owned())
                                    }
                                    ValueRef::Blob(bytes) => Cell::Bytes(bytes.to_vec()),
                                })
                            })
                            .collect::<rusqlite::Result<Vec<Cell>>>()
                            .map(Row)
                    })?;
                rows.collect()
            })
            .map_err(|source| self.error(source))
    }

    fn place(&self) -> &str {
        &self.place
    }

    fn execute_announced(
        &mut self,
        sql: &str,
        params: &[Value<'_>],
        _channel: &str,
    ) -> Result<u64, StoreError> {
        // A file has no listeners: servers on it read tokens on every request.
        self.execute(sql, params)
    }
}
