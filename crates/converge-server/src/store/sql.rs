//! The few SQL operations the server's tables need, with values that both databases take:
//! the store's rules are written once over [`Sql`], and each database only runs statements.
//!
//! Statements are written with PostgreSQL's numbered parameters (`$1`); SQLite reads the
//! same numbers as `?1`. Both understand `ON CONFLICT DO NOTHING` and `RETURNING`.

use crate::store::StoreError;

/// A parameter of a statement.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Value<'a> {
    Int(i64),
    Text(&'a str),
    Bytes(&'a [u8]),
    /// A nullable text column.
    OptText(Option<&'a str>),
}

/// One column of a row read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cell {
    Null,
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
}

/// A row read back: its cells in the order the statement selected them.
#[derive(Debug)]
pub(crate) struct Row(pub(crate) Vec<Cell>);

impl Row {
    fn cell(&self, column: usize) -> Result<&Cell, StoreError> {
        self.0
            .get(column)
            .ok_or_else(|| StoreError::Invalid(format!("a row has no column {column}")))
    }

    /// A text column.
    pub(crate) fn text(&self, column: usize) -> Result<String, StoreError> {
        match self.cell(column)? {
            Cell::Text(text) => Ok(text.clone()),
            other => Err(unexpected(column, "text", other)),
        }
    }

    /// A nullable text column.
    pub(crate) fn opt_text(&self, column: usize) -> Result<Option<String>, StoreError> {
        match self.cell(column)? {
            Cell::Null => Ok(None),
            _ => self.text(column).map(Some),
        }
    }

    /// An integer column.
    pub(crate) fn int(&self, column: usize) -> Result<i64, StoreError> {
        match self.cell(column)? {
            Cell::Int(value) => Ok(*value),
            other => Err(unexpected(column, "an integer", other)),
        }
    }

    /// A nullable integer column.
    pub(crate) fn opt_int(&self, column: usize) -> Result<Option<i64>, StoreError> {
        match self.cell(column)? {
            Cell::Null => Ok(None),
            _ => self.int(column).map(Some),
        }
    }
}

fn unexpected(column: usize, wanted: &str, found: &Cell) -> StoreError {
    let found = match found {
        Cell::Null => "null",
        Cell::Int(_) => "an integer",
        Cell::Text(_) => "text",
        Cell::Bytes(_) => "bytes",
    };
    StoreError::Invalid(format!(
        "column {column} of a server table holds {found}, not {wanted}"
    ))
}

/// A connection that runs one statement at a time, each its own transaction.
pub(crate) trait Sql: Send {
    /// Runs a statement; how many rows it changed.
    fn execute(&mut self, sql: &str, params: &[Value<'_>]) -> Result<u64, StoreError>;
    /// Runs a statement that returns rows.
    fn query(&mut self, sql: &str, params: &[Value<'_>]) -> Result<Vec<Row>, StoreError>;
    /// The database, for messages (a file path, or a URL without its password).
    fn place(&self) -> &str;
    /// Runs a statement and, when it changed rows, notifies the database's listeners on
    /// `channel` in the same transaction, where the database has listeners (PostgreSQL):
    /// the change and its announcement commit together or not at all. Elsewhere it is
    /// [`Sql::execute`].
    fn execute_announced(
        &mut self,
        sql: &str,
        params: &[Value<'_>],
        channel: &str,
    ) -> Result<u64, StoreError>;
}
