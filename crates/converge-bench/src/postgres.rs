//! The PostgreSQL server the `pg-` scenarios measure against, and what it tells of its load.
//!
//! `CONVERGE_BENCH_POSTGRES` names a server (the URL of a role that may create databases);
//! without it a throwaway cluster is started (the tests' `cluster.rs`: `initdb` in a temporary
//! directory, a free port on 127.0.0.1, `fsync` on, stopped when dropped). Either way each
//! measurement gets a fresh database with PostgreSQL's default durability
//! (`synchronous_commit=on`).
//!
//! Nothing here is used outside the benchmarks.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::BenchError;

#[allow(dead_code, unreachable_pub)] // restarts (`pg_ctl`) are for the tests, not the benchmarks
#[path = "../../converge-journal/tests/support/cluster.rs"]
mod cluster;

/// A server to measure against.
pub(crate) enum Server {
    /// Named by `CONVERGE_BENCH_POSTGRES`.
    Given {
        admin_url: String,
        databases: AtomicUsize,
    },
    /// Started here, stopped on drop.
    Started(cluster::Cluster),
}

impl Server {
    /// The server `CONVERGE_BENCH_POSTGRES` names, or a throwaway cluster.
    pub(crate) fn start() -> Result<Server, BenchError> {
        match std::env::var("CONVERGE_BENCH_POSTGRES") {
            Ok(url) if !url.is_empty() => Ok(Server::Given {
                admin_url: url,
                databases: AtomicUsize::new(0),
            }),
            _ => cluster::Cluster::start()
                .map(Server::Started)
                .map_err(BenchError::Postgres),
        }
    }

    /// A new, empty database, and its URL.
    pub(crate) fn database(&self, purpose: &str) -> Result<String, BenchError> {
        match self {
            Server::Started(cluster) => cluster.database(purpose).map_err(BenchError::Postgres),
            Server::Given {
                admin_url,
                databases,
            } => {
                let index = databases.fetch_add(1, Ordering::Relaxed);
                let name = format!("converge_bench_{purpose}_{}_{index}", std::process::id());
                connect(admin_url)?
                    .batch_execute(&format!("CREATE DATABASE {name}"))
                    .map_err(|error| problem(&format!("cannot create database {name}"), error))?;
                let base = admin_url
                    .rsplit_once('/')
                    .map_or(admin_url.as_str(), |(base, _)| base);
                Ok(format!("{base}/{name}"))
            }
        }
    }
}

/// A plain connection, for the figures below.
pub(crate) fn connect(url: &str) -> Result<postgres::Client, BenchError> {
    postgres::Client::connect(url, postgres::NoTls)
        .map_err(|error| problem("cannot connect to PostgreSQL", error))
}

fn problem(what: &str, error: postgres::Error) -> BenchError {
    BenchError::Postgres(format!("{what}: {error}"))
}

/// One number from a query returning one `int8` (or `numeric` cast to it).
pub(crate) fn number(client: &mut postgres::Client, query: &str) -> Result<i64, BenchError> {
    client
        .query_one(query, &[])
        .and_then(|row| row.try_get::<_, i64>(0))
        .map_err(|error| problem(&format!("cannot read {query:?}"), error))
}

/// What the server has done so far, for differences over a measurement.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Load {
    /// The database's size on disk.
    pub(crate) database_bytes: i64,
    /// WAL written by the whole server.
    pub(crate) wal_bytes: i64,
    /// WAL flushes to disk by the whole server (`pg_stat_wal.wal_sync`).
    pub(crate) wal_syncs: i64,
    /// Transactions committed in the database.
    pub(crate) commits: i64,
}

impl Load {
    /// The figures now, as seen from `client`'s database.
    pub(crate) fn now(client: &mut postgres::Client) -> Result<Load, BenchError> {
        Ok(Load {
            database_bytes: number(client, "SELECT pg_database_size(current_database())")?,
            wal_bytes: number(
                client,
                "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8",
            )?,
            wal_syncs: number(client, "SELECT wal_sync FROM pg_stat_wal")?,
            commits: number(
                client,
                "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
            )?,
        })
    }

    /// What happened between `self` and `later`.
    pub(crate) fn until(self, later: Load) -> Load {
        Load {
            database_bytes: later.database_bytes - self.database_bytes,
            wal_bytes: later.wal_bytes - self.wal_bytes,
            wal_syncs: later.wal_syncs - self.wal_syncs,
            commits: later.commits - self.commits,
        }
    }
}
