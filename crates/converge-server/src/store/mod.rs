//! What the server keeps beside the journal, in the same database: API tokens (hashed),
//! which tenant and person submitted each run, and every decision attempt.
//!
//! The journal's own tables are the runtime's and are never touched here; these tables are
//! named `server_…`, in the SQLite file or in the PostgreSQL journal's schema. The rules are
//! written once over [`sql::Sql`]; `sqlite.rs` and `postgres.rs` only run statements.
//! Opening a store opens (and if need be creates) the journal first, so a store is always a
//! valid journal too.

mod postgres;
mod sql;
mod sqlite;

use std::time::{SystemTime, UNIX_EPOCH};

use converge_runtime::{JournalError, Location, RunId};
use serde::Serialize;

use crate::auth::{Role, TokenSecret};
use sql::{Row, Sql, Value};

/// Why the store refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The journal could not be opened or created.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The database refused a statement.
    #[error("{place}: {source}")]
    Database {
        /// The file, or the database's URL without its password.
        place: String,
        /// What the database said.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A row with the same key exists (two replicas raced).
    #[error("{0}")]
    Conflict(String),
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
/// let mut tokens = Tokens::open(dir.path().join("journal.db")).unwrap();
/// let issued = tokens.create("acme", "alice", Role::Approver).unwrap();
/// assert!(issued.secret.starts_with("cvg_"));
/// let listed = tokens.list().unwrap();
/// assert_eq!(listed[0].name, "alice");
/// tokens.revoke(&issued.info.id).unwrap();
/// assert!(tokens.list().unwrap()[0].revoked_ms.is_some());
/// ```
pub struct Tokens {
    store: Store,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("place", &self.store.sql.place())
            .finish_non_exhaustive()
    }
}

impl Tokens {
    /// Opens the journal at `location` (creating it if missing) and its token table: a
    /// SQLite file, or a PostgreSQL database that every server replica shares.
    pub fn open(location: impl Into<Location>) -> Result<Tokens, StoreError> {
        Ok(Tokens {
            store: Store::open(&location.into())?,
        })
    }

    /// Makes a token for `name` in `tenant` with `role`.
    pub fn create(
        &mut self,
        tenant: &str,
        name: &str,
        role: Role,
    ) -> Result<IssuedToken, StoreError> {
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
        self.store.sql.execute(
            "INSERT INTO server_tokens (id, hash, tenant, name, role, created_ms) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                Value::Text(&info.id),
                Value::Bytes(&hash[..]),
                Value::Text(&info.tenant),
                Value::Text(&info.name),
                Value::Text(info.role.as_str()),
                Value::Int(info.created_ms as i64),
            ],
        )?;
        Ok(IssuedToken {
            info,
            secret: secret.expose().to_owned(),
        })
    }

    /// Every token, oldest first.
    pub fn list(&mut self) -> Result<Vec<TokenInfo>, StoreError> {
        self.store
            .sql
            .query(
                "SELECT id, tenant, name, role, created_ms, revoked_ms FROM server_tokens \
                 ORDER BY created_ms, id",
                &[],
            )?
            .iter()
            .map(token_row)
            .collect()
    }

    /// Revokes a token: requests bearing it are refused from now on (by server replicas on
    /// PostgreSQL, which keep live tokens in memory, as soon as they hear of it: the
    /// revocation is announced in the transaction that commits it).
    pub fn revoke(&mut self, id: &str) -> Result<(), StoreError> {
        let changed = self.store.sql.execute_announced(
            "UPDATE server_tokens SET revoked_ms = $2 WHERE id = $1 AND revoked_ms IS NULL",
            &[Value::Text(id), Value::Int(now_ms() as i64)],
            crate::token_cache::REVOKED_CHANNEL,
        )?;
        if changed == 0 {
            let known = self.store.sql.query(
                "SELECT id FROM server_tokens WHERE id = $1",
                &[Value::Text(id)],
            )?;
            if known.is_empty() {
                return Err(StoreError::UnknownToken(id.to_owned()));
            }
        }
        Ok(())
    }
}

/// Runs made outside the server (`converge run --tenant`, `converge submit --tenant`)
/// recorded as a tenant's, so the server lists and serves them like its own submissions.
///
/// ```
/// use converge_server::Owners;
/// use converge_runtime::RunId;
///
/// let dir = tempfile::tempdir().unwrap();
/// let mut owners = Owners::open(dir.path().join("journal.db")).unwrap();
/// let run = RunId::new("acme-release-approval-1").unwrap();
/// owners.record("acme", &run, "sam").unwrap();
/// assert!(owners.record("acme", &run, "sam").is_err()); // once
/// assert!(owners.record("other", &run, "sam").is_err()); // not the tenant's prefix
/// owners.forget(&run).unwrap();
/// ```
pub struct Owners {
    store: Store,
}

impl std::fmt::Debug for Owners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Owners")
            .field("place", &self.store.sql.place())
            .finish_non_exhaustive()
    }
}

impl Owners {
    /// Opens the journal at `location` (creating it if missing) and the server's tables.
    pub fn open(location: impl Into<Location>) -> Result<Owners, StoreError> {
        Ok(Owners {
            store: Store::open(&location.into())?,
        })
    }

    /// Records that `by` made run `run` for `tenant`. The run's id must start with the
    /// tenant's prefix (`acme-…`), as the server's own runs do.
    pub fn record(&mut self, tenant: &str, run: &RunId, by: &str) -> Result<(), StoreError> {
        check_tenant(tenant)?;
        let id = within(tenant, run.as_str());
        if id == run.as_str() {
            return Err(StoreError::Invalid(format!(
                "run {run} is not tenant {tenant}'s: its id must start with `{tenant}-`"
            )));
        }
        self.store.claim(&Ownership {
            run: run.clone(),
            tenant: tenant.to_owned(),
            id: id.to_owned(),
            submitted_by: by.to_owned(),
            submitted_ms: now_ms(),
        })
    }

    /// Forgets a run recorded by [`Owners::record`] that was never created.
    pub fn forget(&mut self, run: &RunId) -> Result<(), StoreError> {
        self.store.unclaim(run)
    }
}

fn token_row(row: &Row) -> Result<TokenInfo, StoreError> {
    Ok(TokenInfo {
        id: row.text(0)?,
        tenant: row.text(1)?,
        name: row.text(2)?,
        role: Role::parse(&row.text(3)?).unwrap_or(Role::Viewer),
        created_ms: row.int(4)? as u64,
        revoked_ms: row.opt_int(5)?.map(|ms| ms as u64),
    })
}

const OWNERSHIP: &str = "SELECT run, tenant, id, submitted_by, submitted_ms FROM server_runs";

/// One connection to the server's tables.
pub(crate) struct Store {
    sql: Box<dyn Sql>,
}

impl Store {
    /// Opens the journal (creating it if missing), then the server's tables in it.
    pub(crate) fn open(location: &Location) -> Result<Store, StoreError> {
        let sql: Box<dyn Sql> = match location {
            Location::Sqlite(path) => Box::new(sqlite::SqliteTables::open(path)?),
            Location::Postgres(url) => Box::new(postgres::PostgresTables::open(url)?),
        };
        Ok(Store { sql })
    }

    /// Another connection to a store [`Store::open`] has set up: no schema work, so opening
    /// one never waits for a writer.
    pub(crate) fn connect(location: &Location) -> Result<Store, StoreError> {
        let sql: Box<dyn Sql> = match location {
            Location::Sqlite(path) => Box::new(sqlite::SqliteTables::connect(path)?),
            Location::Postgres(url) => Box::new(postgres::PostgresTables::connect(url)?),
        };
        Ok(Store { sql })
    }

    /// Whether the database answers a read (for health checks; constant time).
    pub(crate) fn ping(&mut self) -> Result<(), StoreError> {
        self.sql
            .query("SELECT run FROM server_runs LIMIT 1", &[])
            .map(drop)
    }

    /// The live token whose secret hashes to `hash`.
    pub(crate) fn token(&mut self, hash: &[u8; 32]) -> Result<Option<TokenInfo>, StoreError> {
        self.sql
            .query(
                "SELECT id, tenant, name, role, created_ms, revoked_ms FROM server_tokens \
                 WHERE hash = $1 AND revoked_ms IS NULL",
                &[Value::Bytes(&hash[..])],
            )?
            .first()
            .map(token_row)
            .transpose()
    }

    /// Records that `tenant`'s `submitted_by` submits run `id` (journal run `run`).
    pub(crate) fn claim(&mut self, owner: &Ownership) -> Result<(), StoreError> {
        let inserted = self.sql.execute(
            "INSERT INTO server_runs (run, tenant, id, submitted_by, submitted_ms) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            &[
                Value::Text(owner.run.as_str()),
                Value::Text(&owner.tenant),
                Value::Text(&owner.id),
                Value::Text(&owner.submitted_by),
                Value::Int(owner.submitted_ms as i64),
            ],
        );
        match inserted {
            Ok(0) | Err(StoreError::Conflict(_)) => {
                Err(StoreError::RunExists(owner.run.to_string()))
            }
            Ok(_) => Ok(()),
            Err(other) => Err(other),
        }
    }

    /// Forgets a claim whose run was never created.
    pub(crate) fn unclaim(&mut self, run: &RunId) -> Result<(), StoreError> {
        self.sql.execute(
            "DELETE FROM server_runs WHERE run = $1",
            &[Value::Text(run.as_str())],
        )?;
        Ok(())
    }

    /// The run `tenant` knows as `id`.
    pub(crate) fn owned(
        &mut self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<Ownership>, StoreError> {
        let rows = self.sql.query(
            &format!("{OWNERSHIP} WHERE tenant = $1 AND id = $2"),
            &[Value::Text(tenant), Value::Text(id)],
        )?;
        Ok(ownerships(&rows)?.into_iter().next())
    }

    /// The tenant's runs, newest first, at most `limit`.
    pub(crate) fn runs_of(
        &mut self,
        tenant: &str,
        limit: usize,
        after: Option<(i64, String)>,
    ) -> Result<Vec<Ownership>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = match &after {
            None => self.sql.query(
                &format!(
                    "{OWNERSHIP} WHERE tenant = $1 ORDER BY submitted_ms DESC, id DESC LIMIT $2"
                ),
                &[Value::Text(tenant), Value::Int(limit)],
            )?,
            // The runs after the cursor in the listing's order (newest first).
            Some((ms, id)) => self.sql.query(
                &format!(
                    "{OWNERSHIP} WHERE tenant = $1 AND (submitted_ms < $3 OR \
                     (submitted_ms = $3 AND id < $4)) \
                     ORDER BY submitted_ms DESC, id DESC LIMIT $2"
                ),
                &[
                    Value::Text(tenant),
                    Value::Int(limit),
                    Value::Int(*ms),
                    Value::Text(id),
                ],
            )?,
        };
        ownerships(&rows)
    }

    /// Every run submitted here, oldest first.
    pub(crate) fn all_runs(&mut self) -> Result<Vec<Ownership>, StoreError> {
        let rows = self
            .sql
            .query(&format!("{OWNERSHIP} ORDER BY submitted_ms, run"), &[])?;
        ownerships(&rows)
    }

    /// How many runs the tenant has (to number the next one).
    pub(crate) fn count_of(&mut self, tenant: &str) -> Result<u64, StoreError> {
        let rows = self.sql.query(
            "SELECT count(*) FROM server_runs WHERE tenant = $1",
            &[Value::Text(tenant)],
        )?;
        match rows.first() {
            Some(row) => Ok(row.int(0)? as u64),
            None => Ok(0),
        }
    }

    /// Records one decision attempt; its seq.
    pub(crate) fn record_decision(
        &mut self,
        run: &RunId,
        attempt: &DecisionAttempt,
    ) -> Result<u64, StoreError> {
        let rows = self.sql.query(
            "INSERT INTO server_decisions \
             (run, proposal, hash, actor, verdict, reason, outcome, refusal, at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING seq",
            &[
                Value::Text(run.as_str()),
                Value::Text(&attempt.proposal),
                Value::Text(&attempt.hash),
                Value::Text(&attempt.actor),
                Value::Text(&attempt.verdict),
                Value::OptText(attempt.reason.as_deref()),
                Value::Text(&attempt.outcome),
                Value::OptText(attempt.refusal.as_deref()),
                Value::Int(attempt.at_ms as i64),
            ],
        )?;
        match rows.first() {
            Some(row) => Ok(row.int(0)? as u64),
            None => Err(StoreError::Invalid(
                "recording a decision returned no seq".to_owned(),
            )),
        }
    }

    /// Every decision attempt on a run, in order.
    pub(crate) fn decisions(&mut self, run: &RunId) -> Result<Vec<DecisionAttempt>, StoreError> {
        self.sql
            .query(
                "SELECT seq, proposal, hash, actor, verdict, reason, outcome, refusal, at_ms \
                 FROM server_decisions WHERE run = $1 ORDER BY seq",
                &[Value::Text(run.as_str())],
            )?
            .iter()
            .map(|row| {
                Ok(DecisionAttempt {
                    seq: row.int(0)? as u64,
                    proposal: row.text(1)?,
                    hash: row.text(2)?,
                    actor: row.text(3)?,
                    verdict: row.text(4)?,
                    reason: row.opt_text(5)?,
                    outcome: row.text(6)?,
                    refusal: row.opt_text(7)?,
                    at_ms: row.int(8)? as u64,
                })
            })
            .collect()
    }
}

/// The ownerships of `rows`; a row whose run id no longer parses is not served (it cannot
/// be read anyway).
fn ownerships(rows: &[Row]) -> Result<Vec<Ownership>, StoreError> {
    let mut owned = Vec::with_capacity(rows.len());
    for row in rows {
        let Ok(run) = RunId::new(&row.text(0)?) else {
            continue;
        };
        owned.push(Ownership {
            run,
            tenant: row.text(1)?,
            id: row.text(2)?,
            submitted_by: row.text(3)?,
            submitted_ms: row.int(4)? as u64,
        });
    }
    Ok(owned)
}

/// The part of a run's id after `tenant`'s prefix: `acme-release-1` and `release-1` are both
/// `release-1` to tenant `acme` (whose runs are `acme-…` in the journal).
pub(crate) fn within<'a>(tenant: &str, id: &'a str) -> &'a str {
    id.strip_prefix(tenant)
        .and_then(|rest| rest.strip_prefix('-'))
        .filter(|rest| !rest.is_empty())
        .unwrap_or(id)
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
