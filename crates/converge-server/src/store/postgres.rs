//! The server's tables in the PostgreSQL journal's database, in its schema `converge`, so
//! every replica of a server sees the same tokens, tenants, runs and decisions.
//!
//! The synchronous client blocks on a runtime of its own, so a connection is only ever used
//! from a blocking thread (the service runs every store call on one). Each statement is
//! prepared once per connection and kept: a read is then one round trip to the database,
//! not two (prepare, then execute), which is most of its cost.

use std::collections::HashMap;

use postgres::error::SqlState;
use postgres::types::{ToSql, Type};
use postgres::{Client, NoTls, Statement};

use converge_runtime::PostgresJournal;

use super::StoreError;
use super::sql::{Cell, Row, Sql, Value};

/// Created once per database, under an advisory lock so that replicas starting together
/// do not race (PostgreSQL's `IF NOT EXISTS` alone does not make concurrent creation safe).
const SCHEMA: &str = "
SELECT pg_advisory_xact_lock(7158296051);
CREATE TABLE IF NOT EXISTS converge.server_tokens (
    id         TEXT PRIMARY KEY,
    hash       BYTEA NOT NULL UNIQUE,
    tenant     TEXT NOT NULL,
    name       TEXT NOT NULL,
    role       TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    revoked_ms BIGINT
);
CREATE TABLE IF NOT EXISTS converge.server_runs (
    run          TEXT PRIMARY KEY,
    tenant       TEXT NOT NULL,
    id           TEXT NOT NULL,
    submitted_by TEXT NOT NULL,
    submitted_ms BIGINT NOT NULL,
    UNIQUE (tenant, id)
);
CREATE INDEX IF NOT EXISTS server_runs_by_tenant ON converge.server_runs (tenant, submitted_ms);
CREATE TABLE IF NOT EXISTS converge.server_decisions (
    seq      BIGSERIAL PRIMARY KEY,
    run      TEXT NOT NULL,
    proposal TEXT NOT NULL,
    hash     TEXT NOT NULL,
    actor    TEXT NOT NULL,
    verdict  TEXT NOT NULL,
    reason   TEXT,
    outcome  TEXT NOT NULL,
    refusal  TEXT,
    at_ms    BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS server_decisions_by_run ON converge.server_decisions (run, seq);
";

/// One connection to the server's tables in a PostgreSQL database; opened again when the
/// database restarted.
pub(crate) struct PostgresTables {
    config: postgres::Config,
    client: Option<Client>,
    /// The statements prepared on `client`, by their text (a handful: the store's own).
    statements: HashMap<String, Statement>,
    place: String,
}

impl PostgresTables {
    /// Opens the journal (creating its schema if the database has none), then the server's
    /// tables in it.
    pub(crate) fn open(url: &str) -> Result<PostgresTables, StoreError> {
        let journal = PostgresJournal::open(url)?;
        let place = journal.place().to_owned();
        drop(journal);
        let mut tables = PostgresTables::connect(url)?;
        tables.place = place;
        let place = tables.place.clone();
        let client = tables.client()?;
        let created = client.transaction().and_then(|mut tx| {
            tx.batch_execute(SCHEMA)?;
            tx.commit()
        });
        created.map_err(|source| database(&place, source))?;
        Ok(tables)
    }

    /// Another connection to a database [`PostgresTables::open`] has set up (connected on
    /// first use).
    pub(crate) fn connect(url: &str) -> Result<PostgresTables, StoreError> {
        let mut config = converge_runtime::postgres_client_config(url)?;
        // The server's tables are in the journal's schema.
        let options = match config.get_options() {
            Some(given) => format!("{given} -c search_path=converge"),
            None => "-c search_path=converge".to_owned(),
        };
        config.options(&options);
        let place = converge_runtime::Location::Postgres(url.to_owned()).to_string();
        Ok(PostgresTables {
            config,
            client: None,
            statements: HashMap::new(),
            place,
        })
    }

    fn client(&mut self) -> Result<&mut Client, StoreError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            self.statements.clear();
            let client = self
                .config
                .connect(NoTls)
                .map_err(|source| database(&self.place, source))?;
            self.client = Some(client);
        }
        self.client
            .as_mut()
            .ok_or_else(|| StoreError::Invalid(format!("the connection to {} is gone", self.place)))
    }

    fn run<T>(
        &mut self,
        sql: &str,
        params: &[Value<'_>],
        op: impl Fn(&mut Client, &Statement, &[&(dyn ToSql + Sync)]) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        let owned: Vec<Param<'_>> = params.iter().map(|value| Param(*value)).collect();
        let refs: Vec<&(dyn ToSql + Sync)> = owned
            .iter()
            .map(|param| param as &(dyn ToSql + Sync))
            .collect();
        let first = self.attempt(sql, &refs, &op)?;
        match first {
            Ok(value) => Ok(value),
            // A read on a connection the database closed (it restarted) is tried once more
            // on a new one; a write is not, since it may have committed.
            Err(error) if self.client.as_ref().is_some_and(Client::is_closed) && reads(sql) => {
                drop(error);
                self.attempt(sql, &refs, &op)?
                    .map_err(|source| database(&self.place, source))
            }
            Err(source) => Err(database(&self.place, source)),
        }
    }

    /// Runs `op` with `sql`'s statement, prepared on this connection the first time.
    fn attempt<T>(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        op: &impl Fn(&mut Client, &Statement, &[&(dyn ToSql + Sync)]) -> Result<T, postgres::Error>,
    ) -> Result<Result<T, postgres::Error>, StoreError> {
        self.client()?;
        let PostgresTables {
            client,
            statements,
            place,
            ..
        } = self;
        let client = client
            .as_mut()
            .ok_or_else(|| StoreError::Invalid(format!("the connection to {place} is gone")))?;
        let statement = match statements.get(sql) {
            Some(statement) => statement.clone(),
            None => match client.prepare(sql) {
                Ok(statement) => {
                    statements.insert(sql.to_owned(), statement.clone());
                    statement
                }
                Err(error) => return Ok(Err(error)),
            },
        };
        Ok(op(client, &statement, params))
    }
}

fn reads(sql: &str) -> bool {
    sql.trim_start().starts_with("SELECT")
}

fn database(place: &str, source: postgres::Error) -> StoreError {
    if source.code() == Some(&SqlState::UNIQUE_VIOLATION) {
        return StoreError::Conflict(source.to_string());
    }
    // The client's own message ("error connecting to server") keeps why in its sources.
    let mut message = source.to_string();
    let mut cause = std::error::Error::source(&source);
    while let Some(error) = cause {
        message = format!("{message}: {error}");
        cause = error.source();
    }
    StoreError::Database {
        place: place.to_owned(),
        source: message.into(),
    }
}

/// A parameter as the client sends it: the column's own type decides how.
#[derive(Debug)]
struct Param<'a>(Value<'a>);

impl ToSql for Param<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self.0 {
            Value::Int(int) => int.to_sql(ty, out),
            Value::Text(text) => text.to_sql(ty, out),
            Value::Bytes(bytes) => bytes.to_sql(ty, out),
            Value::OptText(text) => text.to_sql(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        <i64 as ToSql>::accepts(ty) || <&str as ToSql>::accepts(ty) || <&[u8] as ToSql>::accepts(ty)
    }

    postgres::types::to_sql_checked!();
}

impl Sql for PostgresTables {
    fn execute(&mut self, sql: &str, params: &[Value<'_>]) -> Result<u64, StoreError> {
        self.run(sql, params, |client, statement, params| {
            client.execute(statement, params)
        })
    }

    fn query(&mut self, sql: &str, params: &[Value<'_>]) -> Result<Vec<Row>, StoreError> {
        let rows = self.run(sql, params, |client, statement, params| {
            client.query(statement, params)
        })?;
        rows.iter().map(|row| cells(row, &self.place)).collect()
    }

    fn place(&self) -> &str {
        &self.place
    }

    fn execute_announced(
        &mut self,
        sql: &str,
        params: &[Value<'_>],
        channel: &str,
    ) -> Result<u64, StoreError> {
        self.run(sql, params, |client, statement, params| {
            let mut tx = client.transaction()?;
            let changed = tx.execute(statement, params)?;
            if changed > 0 {
                tx.execute("SELECT pg_notify($1, '')", &[&channel])?;
            }
            tx.commit()?;
            Ok(changed)
        })
    }
}

fn cells(row: &postgres::Row, place: &str) -> Result<Row, StoreError> {
    let read = |source| database(place, source);
    (0..row.len())
        .map(|column| {
            let ty = row.columns()[column].type_();
            Ok(if *ty == Type::INT8 {
                row.try_get::<_, Option<i64>>(column)
                    .map_err(read)?
                    .map_or(Cell::Null, Cell::Int)
            } else if *ty == Type::INT4 {
                row.try_get::<_, Option<i32>>(column)
                    .map_err(read)?
                    .map_or(Cell::Null, |int| Cell::Int(int.into()))
            } else if *ty == Type::BYTEA {
                row.try_get::<_, Option<Vec<u8>>>(column)
                    .map_err(read)?
                    .map_or(Cell::Null, Cell::Bytes)
            } else {
                row.try_get::<_, Option<String>>(column)
                    .map_err(read)?
                    .map_or(Cell::Null, Cell::Text)
            })
        })
        .collect::<Result<Vec<Cell>, StoreError>>()
        .map(Row)
}
