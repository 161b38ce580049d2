//! A worker: drives the runs no one drives, any number of workers on one journal.
//!
//! A [`Worker`] runs [`WorkerConfig::concurrency`] slots, each a thread with a journal
//! connection of its own. A slot claims one run and reads it in the same transaction
//! ([`Journal::claim_loaded`]: submitted, released by its driver, or whose driver's lease
//! expired; on PostgreSQL `FOR UPDATE SKIP LOCKED`, so no two slots of any workers get one
//! run), rebuilds its runtime with the [`Build`] callback,
//! drives it to its next stop under the claim's lease with [`Runtime::resume_claimed`] —
//! re-deriving what was committed, executing only what was not, every commit fenced by the
//! lease — reports how it stands and claims the next. With nothing to claim it waits for
//! news ([`Wakeups`]: LISTEN/NOTIFY on PostgreSQL) or [`IDLE_LOOK`], whichever comes first:
//! a dead worker's runs are free once their leases expire, which no notification announces.
//!
//! The slots commit their steps through one committer (`group_commit.rs`): runs that
//! several slots finish at about the same time are committed in one transaction, each still
//! under its own lease, and each slot goes on only once its steps are committed. A slot whose
//! drive ends gets its next run claimed in that same transaction, when there is one, and
//! drives it without a claim of its own; a slot drained with such a run in hand lets it go.
//!
//! A run a slot cannot build (its spec no longer builds here: a missing program, provider or
//! key) keeps the slot's lease until it expires, so the slot moves on to other runs and any
//! worker tries it again later; each attempt is reported.
//!
//! [`Control::drain`] stops claiming: the runs in flight go on to their next stop.
//! [`Control::stop_now`] drops the drives at once (killing their agents' processes); their
//! committed steps are kept, and their runs are taken over by another worker once their
//! leases expire.
//!
//! What this module does not do: build runtimes from job specs (that lives with the spec's
//! models, in `converge-server`, and arrives here as a callback), read signals or print
//! anything (the caller turns each [`Report`] into words).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use converge_core::StopReason;
use converge_journal::{
    ClaimedRun, Holder, Journal, Location, News, RunHeader, RunId, Wakeups, wall_clock_ms,
};
use tokio::sync::watch;

use crate::group_commit::{CommitHandle, Committer, Grouped};
use crate::{DurableError, Runtime};

/// How long an idle slot waits for news before it looks for runs anyway.
pub const IDLE_LOOK: Duration = Duration::from_secs(2);

/// How long a slot waits before trying again after the journal failed.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Rebuilds the runtime of a claimed run from its journal header (the spec it keeps); the
/// error is a sentence for people.
pub type Build = Arc<dyn Fn(&RunHeader, &RunId) -> Result<Runtime, String> + Send + Sync>;

/// Receives what the slots have to say, from their threads.
pub type Reporter = Arc<dyn Fn(Report) + Send + Sync>;

/// What a worker does.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The journal.
    pub location: Location,
    /// Who holds the leases of the runs it drives.
    pub holder: Holder,
    /// Slots: runs driven at once, each with a journal connection and a listening one.
    pub concurrency: u16,
    /// Whether a slot ends when it finds nothing to claim, instead of waiting for news.
    pub until_idle: bool,
}

/// What a slot has to say.
#[derive(Debug)]
#[non_exhaustive]
pub enum Report {
    /// A slot met trouble: it tries again after [`RETRY_AFTER`] if `retrying`, or else it
    /// has ended.
    Trouble {
        /// The slot's index.
        slot: u16,
        /// What went wrong.
        problem: String,
        /// Whether the slot tries again.
        retrying: bool,
    },
    /// A claimed run's runtime cannot be built here; its lease is kept until it expires.
    Unbuildable {
        /// The run.
        run: RunId,
        /// Why.
        error: String,
    },
    /// A run was driven to its next stop.
    Reached {
        /// The run.
        run: RunId,
        /// Where it stopped.
        stop_reason: StopReason,
        /// Facts in its context.
        facts: usize,
        /// The run's agents by name, in registration order (what the stop reason's agent
        /// indexes name).
        agents: Vec<String>,
    },
    /// Driving a run failed.
    Failed {
        /// The run.
        run: RunId,
        /// Why.
        error: DurableError,
    },
    /// A drive was dropped by [`Control::stop_now`]; its committed steps are kept.
    Interrupted {
        /// The run.
        run: RunId,
    },
}

impl fmt::Display for Report {
    /// One line for people; a reached stop is shown by its reason's debug form (callers
    /// usually word it themselves).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Report::Trouble {
                slot,
                problem,
                retrying,
            } => {
                write!(f, "slot {slot}: {problem}")?;
                if *retrying {
                    f.write_str("; trying again")?;
                }
                Ok(())
            }
            Report::Unbuildable { run, error } => write!(
                f,
                "run {run}: cannot be driven here ({error}); another attempt once its lease \
                 expires"
            ),
            Report::Reached {
                run,
                stop_reason,
                facts,
                ..
            } => {
                // The stop's kind as the journal names it (`agent_failed`), in words.
                let kind = serde_json::to_value(stop_reason)
                    .ok()
                    .and_then(|value| {
                        value
                            .get("stop")?
                            .as_str()
                            .map(|kind| kind.replace('_', " "))
                    })
                    .unwrap_or_else(|| "stopped".to_owned());
                write!(f, "run {run}: {kind} with {facts} facts")
            }
            Report::Failed { run, error } => write!(f, "run {run}: {error}"),
            Report::Interrupted { run } => write!(
                f,
                "run {run}: stopped with the worker; its committed steps are kept"
            ),
        }
    }
}

/// Why a worker could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// A slot's thread could not be started.
    #[error("cannot start a worker slot: {0}")]
    Thread(#[source] std::io::Error),
}

/// Drains or stops a running [`Worker`] from any thread.
#[derive(Clone)]
pub struct Control {
    draining: Arc<AtomicBool>,
    stop_now: Arc<watch::Sender<bool>>,
}

impl Control {
    /// No slot claims again; the runs in flight go on to their next stop.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Drains, and drops the drives in flight at once.
    pub fn stop_now(&self) {
        self.drain();
        let _ = self.stop_now.send(true);
    }
}

/// Slots driving runs of one journal, until drained, stopped, or (with
/// [`WorkerConfig::until_idle`]) out of runs.
pub struct Worker {
    slots: Vec<JoinHandle<()>>,
    /// Commits the slots' steps, several runs in one transaction when they come together.
    committer: Committer,
    control: Control,
}

impl Worker {
    /// Starts the slots.
    pub fn start(
        config: &WorkerConfig,
        build: Build,
        report: Reporter,
    ) -> Result<Worker, WorkerError> {
        let control = Control {
            draining: Arc::new(AtomicBool::new(false)),
            stop_now: Arc::new(watch::channel(false).0),
        };
        let committer =
            Committer::start(&config.location, &config.holder).map_err(WorkerError::Thread)?;
        let mut slots = Vec::with_capacity(usize::from(config.concurrency));
        for index in 0..config.concurrency {
            let Some(commits) = committer.handle() else {
                break;
            };
            let slot = Slot {
                index,
                config: config.clone(),
                commits,
                build: build.clone(),
                report: report.clone(),
                draining: control.draining.clone(),
                stopped: control.stop_now.subscribe(),
            };
            let spawned = std::thread::Builder::new()
                .name(format!("converge-worker-{index}"))
                .spawn(move || slot.run());
            match spawned {
                Ok(handle) => slots.push(handle),
                Err(error) => {
                    // The slots already started must not outlive a worker that failed.
                    control.stop_now();
                    slots.into_iter().for_each(|slot| drop(slot.join()));
                    committer.finish();
                    return Err(WorkerError::Thread(error));
                }
            }
        }
        Ok(Worker {
            slots,
            committer,
            control,
        })
    }

    /// A handle to drain or stop the worker.
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// Waits for every slot to end.
    pub fn join(self) {
        for slot in self.slots {
            let _ = slot.join();
        }
        self.committer.finish();
    }
}

/// One slot: claims and drives one run at a time.
struct Slot {
    index: u16,
    config: WorkerConfig,
    commits: CommitHandle,
    build: Build,
    report: Reporter,
    draining: Arc<AtomicBool>,
    stopped: watch::Receiver<bool>,
}

impl Slot {
    fn trouble(&self, problem: impl fmt::Display, retrying: bool) {
        (self.report)(Report::Trouble {
            slot: self.index,
            problem: problem.to_string(),
            retrying,
        });
    }

    fn run(self) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(error) => return self.trouble(format_args!("no async runtime: {error}"), false),
        };
        let mut wakeups = match Wakeups::new(&self.config.location, News::Runnable) {
            Ok(wakeups) => wakeups,
            Err(error) => return self.trouble(error, false),
        };
        let mut journal: Option<Box<dyn Journal + Send>> = None;
        // A run claimed with the commit that ended the previous drive.
        let mut next: Option<ClaimedRun> = None;
        while !self.draining.load(Ordering::SeqCst) && !*self.stopped.borrow() {
            let open = match journal.as_mut() {
                Some(open) => open,
                None => match self.config.location.open() {
                    Ok(opened) => journal.insert(opened),
                    Err(error) => {
                        self.trouble(error, true);
                        std::thread::sleep(RETRY_AFTER);
                        continue;
                    }
                },
            };
            if let Some(claim) = next.take() {
                next = self.drive(open, &runtime, claim);
                continue;
            }
            match open.claim_loaded(&self.config.holder, wall_clock_ms(), 1) {
                Ok(claimed) if claimed.is_empty() => {
                    if self.config.until_idle {
                        return;
                    }
                    if let Err(error) = wakeups.wait(IDLE_LOOK) {
                        self.trouble(error, true);
                        std::thread::sleep(RETRY_AFTER);
                    }
                }
                Ok(claimed) => {
                    for claim in claimed {
                        next = self.drive(open, &runtime, claim);
                    }
                }
                Err(error) => {
                    // A failed write poisons the handle: open the journal again.
                    self.trouble(error, true);
                    journal = None;
                    std::thread::sleep(RETRY_AFTER);
                }
            }
        }
        // Drained with a run in hand: free for others now, not once its lease expires.
        if let (Some(claim), Some(open)) = (next, journal.as_mut()) {
            let _ = open.release(&claim.lease);
        }
    }

    /// Drives one claimed run to its next stop and reports how it stands; returns the next
    /// run, when one was claimed with the commit that ended the drive.
    fn drive(
        &self,
        journal: &mut Box<dyn Journal + Send>,
        runtime: &tokio::runtime::Runtime,
        claim: ClaimedRun,
    ) -> Option<ClaimedRun> {
        let ClaimedRun { lease, recorded } = claim;
        let lease = &lease;
        let run: RunId = lease.run().clone();
        // Read with the claim, in its transaction: its header to build from, its steps to
        // re-derive.
        let recorded = match recorded {
            Ok(recorded) => recorded,
            Err(error) => {
                // Let it go at once: another slot, or this one, tries again.
                let _ = journal.release(lease);
                let error = DurableError::Journal(error);
                (self.report)(Report::Failed { run, error });
                return None;
            }
        };
        let driver = match (self.build)(&recorded.header, &run) {
            Ok(driver) => driver,
            Err(error) => {
                // Keep the claim until it expires: other runs go first, and any worker tries
                // this one again later.
                (self.report)(Report::Unbuildable { run, error });
                return None;
            }
        };
        let mut driver = driver.with_holder(self.config.holder.clone());
        let mut stopped = self.stopped.clone();
        let mut grouped = Grouped {
            journal,
            committer: &self.commits,
            draining: &self.draining,
            next: None,
        };
        let outcome = runtime.block_on(async {
            tokio::select! {
                outcome = driver.resume_claimed(&mut grouped, lease, recorded) => Some(outcome),
                _ = stopped.wait_for(|stop| *stop) => None,
            }
        });
        (self.report)(match outcome {
            Some(Ok(result)) => Report::Reached {
                run,
                facts: result.context.len(),
                stop_reason: result.stop_reason,
                agents: driver.engine().agent_names().map(str::to_owned).collect(),
            },
            Some(Err(error)) => Report::Failed { run, error },
            None => Report::Interrupted { run },
        });
        grouped.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reached_report_reads_as_words() {
        let report = Report::Reached {
            run: RunId::new("acme-score").expect("valid"),
            stop_reason: StopReason::Halted {
                reason: "cancelled by sam: no longer needed".to_owned(),
            },
            facts: 2,
            agents: vec!["score".to_owned()],
        };
        assert_eq!(report.to_string(), "run acme-score: halted with 2 facts");
    }
}
