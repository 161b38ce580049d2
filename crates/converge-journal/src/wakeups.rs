//! Waiting for news of a journal's runs: a worker waits for runs to drive, a follower for
//! events committed by another process.
//!
//! On PostgreSQL the journal notifies listeners after a commit that makes news — a run
//! submitted or let go by its driver ([`News::Runnable`]), a run created or its status
//! changed ([`News::Events`]) — so a waiter wakes within milliseconds and otherwise sleeps.
//! Committed steps are not notified (every notifying commit queues on one lock of the whole
//! database): a waiter for events also looks at the event counts of the runs being driven
//! every [`EVENTS_LOOK`], so it hears of any step committed by any process within that.
//! A SQLite file has no notifications: a waiter looks again every [`SQLITE_POLL`]. Either
//! way a waiter also looks after its timeout, since some news is made by time alone (a dead
//! driver's lease expiring).

use std::time::Duration;

use crate::{JournalError, Location, RunId};

/// How often a waiter on a SQLite journal looks again.
pub const SQLITE_POLL: Duration = Duration::from_millis(100);

/// How often a waiter for events on a PostgreSQL journal looks at the runs being driven:
/// it hears of a step committed by any process within this (plus the look's own time).
pub const EVENTS_LOOK: Duration = Duration::from_millis(50);

/// What to wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum News {
    /// A running run has no driver: submitted, or released by its driver.
    Runnable,
    /// A run's events or status changed (on PostgreSQL, steps are heard of within
    /// [`EVENTS_LOOK`]).
    Events,
}

impl News {
    fn channel(self) -> &'static str {
        match self {
            News::Runnable => crate::postgres::RUNNABLE_CHANNEL,
            News::Events => crate::postgres::EVENTS_CHANNEL,
        }
    }
}

/// A waiter for news of one journal. It blocks its thread: use it from a thread of its own,
/// not from an asynchronous task.
pub struct Wakeups {
    listener: Option<crate::postgres::Listener>,
}

impl Wakeups {
    /// A waiter for `news` of the journal at `location` (a connection of its own on
    /// PostgreSQL, opened lazily).
    pub fn new(location: &Location, news: News) -> Result<Wakeups, JournalError> {
        let listener = match location {
            Location::Sqlite(_) => None,
            Location::Postgres(url) => Some(crate::postgres::Listener::new(
                crate::postgres::config(url)?,
                news.channel(),
                news == News::Events,
            )),
        };
        Ok(Wakeups { listener })
    }

    /// Waits at most `timeout` for news and returns the runs it names, each once, in order
    /// (several when news came together). A run named may have no news after all (a
    /// follower of events hears of every run that started being driven): look, and wait
    /// again. Empty when the time ran out, and always on SQLite, which
    /// sleeps at most [`SQLITE_POLL`]: look anyway.
    pub fn wait(&mut self, timeout: Duration) -> Result<Vec<RunId>, JournalError> {
        let Some(listener) = self.listener.as_mut() else {
            std::thread::sleep(timeout.min(SQLITE_POLL));
            return Ok(Vec::new());
        };
        let mut runs: Vec<RunId> = listener
            .wait(timeout)?
            .iter()
            .filter_map(|run| RunId::new(run).ok())
            .collect();
        runs.sort();
        runs.dedup();
        Ok(runs)
    }
}
