//! Waking up on news from the database: `LISTEN` on a connection of its own, woken by the
//! notifications the journal sends after a commit that makes news (`postgres/mod.rs`, "News"),
//! and, for followers of events, a look every [`EVENTS_LOOK`] at the event counts of the runs
//! being driven: steps commit without notifying anyone, so that commits never queue on
//! PostgreSQL's notification lock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, Config, NoTls};

use super::schema::storage;
use crate::JournalError;
use crate::wakeups::EVENTS_LOOK;

/// How many runs being driven one look reads; past it, a run's steps are heard of only
/// when its status changes or its driver lets it go.
pub(crate) const EVENTS_LOOK_RUNS_MAX: i64 = 10_000;

/// The runs being driven (running and leased), with their committed event counts.
const DRIVEN: &str = "SELECT id, events FROM converge.runs \
                      WHERE status = 'running' AND lease_token IS NOT NULL \
                      ORDER BY created LIMIT $1";

/// A listening connection to one channel.
pub(crate) struct Listener {
    config: Config,
    channel: &'static str,
    client: Option<Client>,
    /// For a follower of events: the event counts of the runs being driven at the last look
    /// (`None` before the first).
    driven: Option<HashMap<String, i64>>,
    looks: bool,
}

impl Listener {
    /// A listener to `channel`; with `looks`, it also looks at the runs being driven every
    /// [`EVENTS_LOOK`] and reports those whose event count changed.
    pub(crate) fn new(config: Config, channel: &'static str, looks: bool) -> Listener {
        Listener {
            config,
            channel,
            client: None,
            driven: None,
            looks,
        }
    }

    /// Waits up to `timeout` for news; returns the runs it names (empty on timeout). A broken
    /// connection is opened again on the next call; a run's news missed meanwhile is found by
    /// the caller's periodic look.
    pub(crate) fn wait(&mut self, timeout: Duration) -> Result<Vec<String>, JournalError> {
        let deadline = Instant::now() + timeout;
        loop {
            let now = Instant::now();
            let slice = if self.looks {
                deadline.saturating_duration_since(now).min(EVENTS_LOOK)
            } else {
                deadline.saturating_duration_since(now)
            };
            let mut runs = self.notified(slice)?;
            if self.looks {
                runs.extend(self.look()?);
            }
            if !runs.is_empty() || Instant::now() >= deadline {
                return Ok(runs);
            }
        }
    }

    fn client(&mut self) -> Result<&mut Client, JournalError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            self.driven = None;
            let mut client = self
                .config
                .connect(NoTls)
                .map_err(storage("connecting to listen for news"))?;
            client
                .batch_execute(&format!("LISTEN {}", self.channel))
                .map_err(storage("listening for news"))?;
            self.client = Some(client);
        }
        self.client
            .as_mut()
            .ok_or_else(|| JournalError::Unsupported {
                detail: "the listening connection is gone".to_owned(),
            })
    }

    /// The runs named by notifications received within `timeout`.
    fn notified(&mut self, timeout: Duration) -> Result<Vec<String>, JournalError> {
        let client = self.client()?;
        let mut notifications = client.notifications();
        let mut runs = Vec::new();
        let first = notifications
            .timeout_iter(timeout)
            .next()
            .map_err(storage("waiting for news"))?;
        if let Some(first) = first {
            runs.push(first.payload().to_owned());
            // Whatever else arrived meanwhile, without waiting again.
            let mut pending = notifications.iter();
            while let Some(more) = pending.next().map_err(storage("reading news"))? {
                runs.push(more.payload().to_owned());
            }
        }
        Ok(runs)
    }

    /// The runs being driven whose event count changed since the last look, and those
    /// driven now that were not then. The first look only takes note.
    fn look(&mut self) -> Result<Vec<String>, JournalError> {
        let client = self.client()?;
        let rows = client
            .query(DRIVEN, &[&EVENTS_LOOK_RUNS_MAX])
            .map_err(storage("looking at the runs being driven"))?;
        let mut now = HashMap::with_capacity(rows.len());
        for row in &rows {
            let id: String = row.try_get(0).map_err(storage("reading a run"))?;
            let events: i64 = row.try_get(1).map_err(storage("reading a run"))?;
            now.insert(id, events);
        }
        let changed = match &self.driven {
            None => Vec::new(),
            Some(before) => now
                .iter()
                .filter(|(id, events)| before.get(*id) != Some(*events))
                .map(|(id, _)| id.clone())
                .collect(),
        };
        self.driven = Some(now);
        Ok(changed)
    }
}
