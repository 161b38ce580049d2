//! Waking up on news from the database: `LISTEN` on a connection of its own, woken by the
//! notifications the journal's trigger sends when a step commits or a run becomes free to
//! drive (`NOTIFY` is transactional: a listener hears of a commit only once it is visible).

use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, Config, NoTls};

use super::schema::storage;
use crate::JournalError;

/// A listening connection to one channel.
pub(crate) struct Listener {
    config: Config,
    channel: &'static str,
    client: Option<Client>,
}

impl Listener {
    pub(crate) fn new(config: Config, channel: &'static str) -> Listener {
        Listener {
            config,
            channel,
            client: None,
        }
    }

    /// Waits up to `timeout` for a notification; returns the runs named by those received
    /// (empty on timeout). A broken connection is opened again on the next call; a run's
    /// news missed meanwhile is found by the caller's periodic look.
    pub(crate) fn wait(&mut self, timeout: Duration) -> Result<Vec<String>, JournalError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            let mut client = self
                .config
                .connect(NoTls)
                .map_err(storage("connecting to listen for news"))?;
            client
                .batch_execute(&format!("LISTEN {}", self.channel))
                .map_err(storage("listening for news"))?;
            self.client = Some(client);
        }
        let Some(client) = self.client.as_mut() else {
            return Ok(Vec::new());
        };
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
}
