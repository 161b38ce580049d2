//! What the server keeps beside the journal, in the same SQLite file: API tokens (hashed),
//! which tenant and person submitted each run, and every decision attempt.
//!
//! The journal's own tables are the runtime's and are never touched here; these tables are
//! prefixed `server_`. Opening a store opens (and if need be creates) the journal first, so a
//! store is always a valid journal file too.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use converge_runtime::{JournalError, RunId, SqliteJournal};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use crate::auth::{Role, TokenSecret};

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

/// Why the store refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The journal file could not be opened or created.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// SQLite refused a statement.
    #[error("{path}: {source}")]
    Sqlite {
        /// The file.
        path: PathBuf,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// A tenant or name that cannot be used.
    #[error("{0}")]
    Invalid(String),
    /// No token has this id.
    #[error("no token has the id {0:?}")]
    UnknownToken(String),
    /// The run id is taken in this tenant.
    #[error("run {0} already exists")]
    RunExists(String),
}

/// An API token as listed (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenInfo {
    /// Its public id (to revoke it).
    pub id: String,
    /// The tenant it belongs to.
    pub tenant: String,
    /// The person or system it names; recorded as the actor of its decisions.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// When it was made (milliseconds since the Unix epoch).
    pub created_ms: u64,
    /// When it was revoked, if it was.
    pub revoked_ms: Option<u64>,
}

/// A token just made: its secret is shown once and never stored.
#[derive(Debug)]
pub struct IssuedToken {
    /// What the store keeps.
    pub info: TokenInfo,
    /// The bearer secret (`cvg_…`).
    pub secret: String,
}

/// Who submitted a run, in which tenant, under which id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ownership {
    /// The journal's run id.
    pub(crate) run: RunId,
    pub(crate) tenant: String,
    /// The id the tenant knows the run by.
    pub(crate) id: String,
    pub(crate) submitted_by: String,
    pub(crate) submitted_ms: u64,
}

/// One decision attempt, accepted or refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct DecisionAttempt {
    /// Its position among the server's decision attempts.
    pub seq: u64,
    /// The proposal it named.
    pub proposal: String,
    /// The hash it named.
    pub hash: String,
    /// Who sent it (the token's name).
    pub actor: String,
    /// `approve` or `reject`.
    #[schema(value_type = crate::schema::DecisionVerdict)]
    pub verdict: String,
    /// The rejection's reason.
    pub reason: Option<String>,
    /// `accepted` or `refused`.
    #[schema(value_type = crate::schema::DecisionOutcome)]
    pub outcome: String,
    /// Why it was refused: `not_pending`, `hash_mismatch`, `not_awaiting_approval`,
    /// `self_approval`, or the code of the error that stopped it being applied (`run_busy`,
    /// `server_busy`, …).
    #[schema(value_type = Option<crate::schema::DecisionRefusal>)]
    pub refusal: Option<String>,
    /// When (milliseconds since the Unix epoch).
    pub at_ms: u64,
}

/// The token store: made, listed and revoked by `converge token`, read by the server.
///
/// ```
/// use converge_server::{Role, Tokens};
///
/// let dir = tempfile::tempdir().unwrap();
/// let tokens = Tokens::open(dir.path().join("journal.db")).unwrap();
/// let issued = tokens.create("acme", "alice", Role::Approver).unwrap();
/// assert!(issued.secret.starts_with("cvg_"));
/// let listed = tokens.list().unwrap();
/// assert_eq!(listed[0].name, "alice");
/// tokens.revoke(&issued.info.id).unwrap();
/// assert!(tokens.list().unwrap()[0].revoked_ms.is_some());
/// ```
#[derive(Debug)]
pub struct Tokens {
    store: Store,
}

impl Tokens {
    /// Opens the journal at `path` (creating it if missing) and its token table.
    pub fn open(path: impl AsRef<Path>) -> Result<Tokens, StoreError> {
        Ok(Tokens {
            store: Store::open(path.as_ref())?,
        })
    }

    /// Makes a token for `name` in `tenant` with `role`.
    pub fn create(&self, tenant: &str, name: &str, role: Role) -> Result<IssuedToken, StoreError> {
        check_tenant(tenant)?;
        check_name(name)?;
        let secret = TokenSecret::generate().map_err(StoreError::Invalid)?;
        let hash = secret.hash();
        let info = TokenInfo {
            id: hex::encode(&hash[..6]),
            tenant: tenant.to_owned(),
            name: name.to_owned(),
            role,
            created_ms: now_ms(),
            revoked_ms: None,
        };
        self.store
            .conn
            .execute(
                "INSERT INTO server_tokens (id, hash, tenant, name, role, created_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    info.id,
                    &hash[..],
                    info.tenant,
                    info.name,
                    info.role.as_str(),
                    info.created_ms as i64
                ],
            )
            .map_err(|source| self.store.error(source))?;
        Ok(IssuedToken {
            info,
            secret: secret.expose().to_owned(),
        })
    }

    /// Every token, oldest first.
    pub fn list(&self) -> Result<Vec<TokenInfo>, StoreError> {
        let mut statement = self
            .store
            .conn
            .prepare(
                "SELECT id, tenant, name, role, created_ms, revoked_ms FROM server_tokens \
                 ORDER BY created_ms, id",
            )
            .map_err(|source| self.store.error(source))?;
        let rows = statement
            .query_map([], token_row)
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(|source| self.store.error(source))?;
        Ok(rows)
    }

    /// Revokes a token: requests bearing it are refused from now on.
    pub fn revoke(&self, id: &str) -> Result<(), StoreError> {
        let changed = self
            .store
            .conn
            .execute(
                "UPDATE server_tokens SET revoked_ms = ?2 WHERE id = ?1 AND revoked_ms IS NULL",
                params![id, now_ms() as i64],
            )
            .map_err(|source| self.store.error(source))?;
        if changed == 0 {
            let known: bool = self
                .store
                .conn
                .query_row("SELECT 1 FROM server_tokens WHERE id = ?1", [id], |_| {
                    Ok(true)
                })
                .optional()
                .map_err(|source| self.store.error(source))?
                .unwrap_or(false);
            if !known {
                return Err(StoreError::UnknownToken(id.to_owned()));
            }
        }
        Ok(())
    }
}

fn token_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<TokenInfo> {
    let role: String = row.get(3)?;
    Ok(TokenInfo {
        id: row.get(0)?,
        tenant: row.get(1)?,
        name: row.get(2)?,
        role: Role::parse(&role).unwrap_or(Role::Viewer),
        created_ms: row.get::<_, i64>(4)? as u64,
        revoked_ms: row.get::<_, Option<i64>>(5)?.map(|ms| ms as u64),
    })
}

/// One connection to the server's tables.
#[derive(Debug)]
pub(crate) struct Store {
    conn: Connection,
    path: PathBuf,
}

impl Store {
    /// Opens the journal (creating it if missing), then the server's tables in it.
    pub(crate) fn open(path: &Path) -> Result<Store, StoreError> {
        drop(SqliteJournal::open(path)?);
        let store = Store::connect(path)?;
        store
            .conn
            .execute_batch(SCHEMA)
            .map_err(|source| store.error(source))?;
        Ok(store)
    }

    /// Another connection to a store [`Store::open`] has set up: no schema work, so opening
    /// one never waits for a writer.
    pub(crate) fn connect(path: &Path) -> Result<Store, StoreError> {
        let error = |source| StoreError::Sqlite {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(error)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(error)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(error)?;
        Ok(Store {
            conn,
            path: path.to_path_buf(),
        })
    }

    fn error(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Whether the file answers a read (for health checks; constant time).
    pub(crate) fn ping(&self) -> Result<(), StoreError> {
        self.conn
            .query_row(
                "SELECT count(*) FROM (SELECT 1 FROM server_runs LIMIT 1)",
                [],
                |_| Ok(()),
            )
            .map_err(|source| self.error(source))
    }

    /// The live token whose secret hashes to `hash`.
    pub(crate) fn token(&self, hash: &[u8; 32]) -> Result<Option<TokenInfo>, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT id, tenant, name, role, created_ms, revoked_ms FROM server_tokens \
                 WHERE hash = ?1 AND revoked_ms IS NULL",
            )
            .and_then(|mut statement| statement.query_row([&hash[..]], token_row).optional())
            .map_err(|source| self.error(source))
    }

    /// Records that `tenant`'s `submitted_by` submits run `id` (journal run `run`).
    pub(crate) fn claim(&self, owner: &Ownership) -> Result<(), StoreError> {
        let inserted = self
            .conn
            .execute(
                "INSERT OR IGNORE INTO server_runs (run, tenant, id, submitted_by, submitted_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    owner.run.as_str(),
                    owner.tenant,
                    owner.id,
                    owner.submitted_by,
                    owner.submitted_ms as i64
                ],
            )
            .map_err(|source| self.error(source))?;
        if inserted == 0 {
            return Err(StoreError::RunExists(owner.id.clone()));
        }
        Ok(())
    }

    /// Forgets a claim whose run was never created.
    pub(crate) fn unclaim(&self, run: &RunId) -> Result<(), StoreError> {
        self.conn
            .execute("DELETE FROM server_runs WHERE run = ?1", [run.as_str()])
            .map_err(|source| self.error(source))?;
        Ok(())
    }

    /// The run `tenant` knows as `id`.
    pub(crate) fn owned(&self, tenant: &str, id: &str) -> Result<Option<Ownership>, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT run, tenant, id, submitted_by, submitted_ms FROM server_runs \
                 WHERE tenant = ?1 AND id = ?2",
            )
            .and_then(|mut statement| {
                statement
                    .query_row(params![tenant, id], ownership_row)
                    .optional()
            })
            .map_err(|source| self.error(source))
            .map(Option::flatten)
    }

    /// The tenant's runs, newest first, at most `limit`.
    pub(crate) fn runs_of(
        &self,
        tenant: &str,
        limit: usize,
        after: Option<(i64, String)>,
    ) -> Result<Vec<Ownership>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        match after {
            None => self.ownerships(
                "SELECT run, tenant, id, submitted_by, submitted_ms FROM server_runs \
                 WHERE tenant = ?1 ORDER BY submitted_ms DESC, id DESC LIMIT ?2",
                params![tenant, limit],
            ),
            // The runs after the cursor in the listing's order (newest first).
            Some((ms, id)) => self.ownerships(
                "SELECT run, tenant, id, submitted_by, submitted_ms FROM server_runs \
                 WHERE tenant = ?1 AND (submitted_ms < ?3 OR (submitted_ms = ?3 AND id < ?4)) \
                 ORDER BY submitted_ms DESC, id DESC LIMIT ?2",
                params![tenant, limit, ms, id],
            ),
        }
    }

    /// Every run submitted here, oldest first.
    pub(crate) fn all_runs(&self) -> Result<Vec<Ownership>, StoreError> {
        self.ownerships(
            "SELECT run, tenant, id, submitted_by, submitted_ms FROM server_runs \
             ORDER BY submitted_ms, run",
            params![],
        )
    }

    fn ownerships(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<Ownership>, StoreError> {
        self.conn
            .prepare_cached(sql)
            .and_then(|mut statement| {
                statement
                    .query_map(params, ownership_row)?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map(|rows| rows.into_iter().flatten().collect())
            .map_err(|source| self.error(source))
    }

    /// How many runs the tenant has (to number the next one).
    pub(crate) fn count_of(&self, tenant: &str) -> Result<u64, StoreError> {
        self.conn
            .query_row(
                "SELECT count(*) FROM server_runs WHERE tenant = ?1",
                [tenant],
                |row| row.get::<_, i64>(0),
            )
            .map(|count| count as u64)
            .map_err(|source| self.error(source))
    }

    /// Records one decision attempt; its seq.
    pub(crate) fn record_decision(
        &self,
        run: &RunId,
        attempt: &DecisionAttempt,
    ) -> Result<u64, StoreError> {
        self.conn
            .execute(
                "INSERT INTO server_decisions \
                 (run, proposal, hash, actor, verdict, reason, outcome, refusal, at_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    run.as_str(),
                    attempt.proposal,
                    attempt.hash,
                    attempt.actor,
                    attempt.verdict,
                    attempt.reason,
                    attempt.outcome,
                    attempt.refusal,
                    attempt.at_ms as i64
                ],
            )
            .map_err(|source| self.error(source))?;
        Ok(self.conn.last_insert_rowid() as u64)
    }

    /// Every decision attempt on a run, in order.
    pub(crate) fn decisions(&self, run: &RunId) -> Result<Vec<DecisionAttempt>, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT seq, proposal, hash, actor, verdict, reason, outcome, refusal, at_ms \
                 FROM server_decisions WHERE run = ?1 ORDER BY seq",
            )
            .and_then(|mut statement| {
                statement
                    .query_map([run.as_str()], |row| {
                        Ok(DecisionAttempt {
                            seq: row.get::<_, i64>(0)? as u64,
                            proposal: row.get(1)?,
                            hash: row.get(2)?,
                            actor: row.get(3)?,
                            verdict: row.get(4)?,
                            reason: row.get(5)?,
                            outcome: row.get(6)?,
                            refusal: row.get(7)?,
                            at_ms: row.get::<_, i64>(8)? as u64,
                        })
                    })?
                    .collect()
            })
            .map_err(|source| self.error(source))
    }
}

fn ownership_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Option<Ownership>> {
    let run: String = row.get(0)?;
    // A row whose run id no longer parses is not served (it cannot be read anyway).
    let Ok(run) = RunId::new(&run) else {
        return Ok(None);
    };
    Ok(Some(Ownership {
        run,
        tenant: row.get(1)?,
        id: row.get(2)?,
        submitted_by: row.get(3)?,
        submitted_ms: row.get::<_, i64>(4)? as u64,
    }))
}

/// A tenant: 1 to 32 lowercase letters, digits or `_` (no `-`, so that `TENANT-ID` journal
/// run ids never collide across tenants).
pub(crate) fn check_tenant(tenant: &str) -> Result<(), StoreError> {
    let valid = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
    if tenant.is_empty() || tenant.len() > 32 || !tenant.chars().all(valid) {
        return Err(StoreError::Invalid(format!(
            "tenant {tenant:?} must be 1 to 32 lowercase letters, digits or `_`"
        )));
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), StoreError> {
    converge_core::Actor::human(name)
        .map(drop)
        .map_err(|error| StoreError::Invalid(format!("token name: {error}")))
}

/// Milliseconds since the Unix epoch (for records only: nothing a run derives reads it).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}
