//! Converge as a service: `converge serve`.
//!
//! An HTTP API (axum) over the same journal the command line uses (a SQLite file, or a
//! PostgreSQL database shared by any number of replicas and `converge worker`s): submit job
//! specs, list runs, read facts with provenance and rejections, approve or reject parked
//! proposals, cancel and resume runs, stream a run's events as server-sent events (resumable
//! with `Last-Event-ID`), and pull its audit proof. Bearer tokens (stored hashed) carry a role
//! and a tenant; another tenant's run answers 404. A web run viewer is served at `/`, the
//! OpenAPI document at `/openapi.json`, health at `/healthz` and Prometheus metrics at
//! `/metrics`. See `docs/http-api.md`.

mod api;
mod auth;
mod body;
mod error;
pub mod job;
mod metrics;
pub mod openapi;
mod schema;
mod server;
mod service;
mod slots;
mod store;
mod token_cache;
pub mod view;
mod viewer;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use converge_runtime::Location;

pub use auth::Role;
pub use server::{Server, ServerError};
pub use store::{DecisionAttempt, IssuedToken, Owners, StoreError, TokenInfo, Tokens};

/// How a server runs. [`ServerConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// The journal (created if missing): a SQLite file, or a PostgreSQL database. The
    /// server's tables live in it too.
    pub db: Location,
    /// Who drives the runs this server accepts: this process, or `converge worker`s.
    pub drivers: Drivers,
    /// Where to listen (default `127.0.0.1:0` here; `converge serve` uses port 7700).
    pub listen: SocketAddr,
    /// The largest request body accepted on any route, in bytes (default 1 MiB).
    pub max_body: usize,
    /// How long a client may take to send a request's headers, and how long an idle
    /// keep-alive connection is kept (default 10 s).
    pub header_timeout: Duration,
    /// How long a client may take to send a request's body (default 30 s).
    pub body_timeout: Duration,
    /// Whether job specs with `command` agents are accepted (they run programs here).
    pub allow_commands: bool,
    /// Whether whoever submitted a run may also decide on its proposals.
    pub allow_self_approval: bool,
    /// The provider file for `llm` agents (default: the per-user one, if any).
    pub providers: Option<PathBuf>,
    /// The directory submitted specs are placed in: relative command programs resolve here.
    pub jobs_dir: PathBuf,
}

impl ServerConfig {
    /// The defaults, with the journal at `db`: runs in a SQLite file are driven by the
    /// server itself, runs in a PostgreSQL database by workers.
    ///
    /// ```
    /// use converge_server::{Drivers, ServerConfig};
    ///
    /// let config = ServerConfig::new("journal.db");
    /// assert!(config.listen.ip().is_loopback());
    /// assert_eq!(config.max_body, 1 << 20);
    /// assert!(!config.allow_commands && !config.allow_self_approval);
    /// assert_eq!(config.drivers, Drivers::Server);
    /// let shared = ServerConfig::new("postgresql://converge@db.internal/runs");
    /// assert_eq!(shared.drivers, Drivers::Workers);
    /// ```
    pub fn new(db: impl Into<Location>) -> ServerConfig {
        let db = db.into();
        let drivers = match db {
            Location::Sqlite(_) => Drivers::Server,
            Location::Postgres(_) => Drivers::Workers,
        };
        ServerConfig {
            db,
            drivers,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            max_body: 1 << 20,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            allow_commands: false,
            allow_self_approval: false,
            providers: None,
            jobs_dir: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
        }
    }
}

/// Who drives the runs a server accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drivers {
    /// The server drives every run it accepts, on its own threads: one process, one
    /// machine (the default on a SQLite file).
    Server,
    /// The server records submissions and decisions and drives nothing: `converge worker`
    /// processes sharing the database claim the runs (the default on PostgreSQL). Any
    /// number of server replicas can answer for the same runs.
    Workers,
}
