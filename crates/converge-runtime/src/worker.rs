//! A worker: drives the runs no one drives, any number of workers on one journal.
//!
//! A [`Worker`] runs [`WorkerConfig::concurrency`] slots, each a thread with a journal
//! connection of its own. A slot claims one run and reads it in the same transaction
//! ([`Journal::claim_loaded`]: submitted, released by its driver, or whose driver's lease
//! expired; on PostgreSQL `FOR UPDATE SKIP LOCKED`, so no two slots of any workers get one
//! run), rebuilds its runtime with the [`Build`] callback,
//! drives it to its next stop under the claim's lease with [`Runtime::resume_claimed`] —
//! re-deriving what was committed, executing only what was not, every commit fenced by the
//! lease — reports how it stands and claims the next.
//!
//! A slot with nothing to claim waits at the worker's doorbell, at most [`LISTENED_LOOK`]
//! while the worker's listener runs and [`IDLE_LOOK`] while it does not. One
//! thread per worker waits for news ([`Wakeups`]: LISTEN/NOTIFY on PostgreSQL, a look every
//! `SQLITE_POLL` on SQLite) and rings it: news of k runs wakes at most k idle slots, not all
//! of them, and a wait that ends with no news (always on SQLite; on PostgreSQL after
//! [`IDLE_LOOK`] without any, since a dead worker's runs are free once their leases expire,
//! which no notification announces) wakes one idle slot to look. A woken slot that claims a
//! run rings once more before driving it, so that when more runs are runnable than were
//! announced the claims go on one slot at a time; one that finds nothing waits again. So a
//! worker holds one listening connection whatever its number of slots, and a run submitted
//! to idle slots wakes one of them, and the one that claims it one more.
//!
//! The slots commit their steps through one committer (`group_commit.rs`): runs that
//! several slots finish at about the same time are committed in one transaction, each still
//! under its own lease, and each slot goes on only once its steps are committed. A slot whose
//! drive ends gets its next run claimed in that same transaction, when there is one, and
//! drives it without a claim of its own; a slot drained with such a run in hand lets it go.
//!
//! A run a slot cannot build (its spec no longer builds here: a missing program, provider or
//! key) or cannot read (its stored record altered, or past a reader's limits) keeps the
//! slot's lease until it expires, so the slot moves on to other runs and any worker tries it
//! again later; each attempt is reported. Let go at once, it would be claimed again at once,
//! by every slot in turn, ahead of every run submitted after it.
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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use converge_core::StopReason;
use converge_journal::{
    ClaimedRun, Holder, Journal, Location, News, RunHeader, RunId, Wakeups, wall_clock_ms,
};
use tokio::sync::watch;

use crate::group_commit::{CommitHandle, Committer, Grouped};
use crate::{DurableError, Runtime};

/// How long an idle slot waits for news before it looks for runs anyway, when no listener
/// rings for it; and how often a worker's listener has one idle slot look when no news came.
pub const IDLE_LOOK: Duration = Duration::from_secs(2);

/// How long an idle slot waits while the worker's listener runs: the listener has one idle
/// slot look every [`IDLE_LOOK`], so the slots' own looks are a last resort, and a worker
/// with many idle slots costs the database one look every [`IDLE_LOOK`], not one per slot.
/// A listener that stops wakes every waiting slot, which then looks every [`IDLE_LOOK`].
pub const LISTENED_LOOK: Duration = Duration::from_secs(30);

/// How long a slot waits before trying again after the journal failed.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The longest a worker's listener waits for news at a time before it looks whether the
/// worker drains: how long a drained worker may take to end when it is idle.
const NEWS_TURN: Duration = Duration::from_millis(200);

/// The stack a thread that drives runs is given (each worker slot's, and the command line's
/// runtime threads): room for a job's expression evaluations on the thread's own stack,
/// beside the drive, so that none maps a segment of its own. Reserved, not touched: only the
/// pages a thread uses are ever backed.
pub const DRIVER_STACK_BYTES: usize = 2 * crate::spec::EVAL_STACK_BYTES;

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
    /// Slots: runs driven at once, each with a journal connection (the worker has one
    /// listening connection besides, for all its slots).
    pub concurrency: u16,
    /// Whether a slot ends when it finds nothing to claim, instead of waiting for news.
    pub until_idle: bool,
}

/// What a slot has to say.
#[derive(Debug)]
#[non_exhaustive]
pub enum Report {
    /// A slot, or the worker's listener for news, met trouble: it tries again after
    /// [`RETRY_AFTER`] if `retrying`, or else it has ended (a listener that ended leaves
    /// the idle slots looking every [`IDLE_LOOK`]).
    Trouble {
        /// The slot's index; `None` for the worker's listener for news.
        slot: Option<u16>,
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
                match slot {
                    Some(slot) => write!(f, "slot {slot}: {problem}")?,
                    None => write!(f, "news of runs to drive: {problem}")?,
                }
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
    /// A slot's thread, or the worker's listener's, could not be started.
    #[error("cannot start a worker's thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Drains or stops a running [`Worker`] from any thread.
#[derive(Clone)]
pub struct Control {
    draining: Arc<AtomicBool>,
    stop_now: Arc<watch::Sender<bool>>,
    doorbell: Arc<Doorbell>,
}

impl Control {
    /// No slot claims again; the runs in flight go on to their next stop.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        // The idle slots and the listener end now, not at their next look.
        self.doorbell.close();
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
    /// Waits for news and rings the doorbell; none with [`WorkerConfig::until_idle`], whose
    /// slots never wait.
    listener: Option<JoinHandle<()>>,
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
            doorbell: Arc::new(Doorbell::new(usize::from(config.concurrency))),
        };
        let committer =
            Committer::start(&config.location, &config.holder).map_err(WorkerError::Thread)?;
        let listener = if config.until_idle {
            None
        } else {
            let listener = Listener {
                location: config.location.clone(),
                doorbell: control.doorbell.clone(),
                report: report.clone(),
            };
            let spawned = std::thread::Builder::new()
                .name("converge-worker-news".to_owned())
                .spawn(move || listener.run());
            match spawned {
                Ok(handle) => Some(handle),
                Err(error) => {
                    committer.finish();
                    return Err(WorkerError::Thread(error));
                }
            }
        };
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
                doorbell: control.doorbell.clone(),
            };
            let spawned = std::thread::Builder::new()
                .name(format!("converge-worker-{index}"))
                .stack_size(DRIVER_STACK_BYTES)
                .spawn(move || slot.run());
            match spawned {
                Ok(handle) => slots.push(handle),
                Err(error) => {
                    // The slots already started must not outlive a worker that failed.
                    control.stop_now();
                    slots.into_iter().for_each(|slot| drop(slot.join()));
                    if let Some(listener) = listener {
                        drop(listener.join());
                    }
                    committer.finish();
                    return Err(WorkerError::Thread(error));
                }
            }
        }
        Ok(Worker {
            slots,
            listener,
            committer,
            control,
        })
    }

    /// A handle to drain or stop the worker.
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// Waits for every slot to end, then ends the listener.
    pub fn join(self) {
        for slot in self.slots {
            let _ = slot.join();
        }
        // No slot waits any more (drained, stopped, or out of runs): the listener goes too.
        self.control.doorbell.close();
        if let Some(listener) = self.listener {
            let _ = listener.join();
        }
        self.committer.finish();
    }
}

/// How a wait at the [`Doorbell`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waited {
    /// A ring: look for runs.
    Rung,
    /// No ring within the wait's timeout: look anyway.
    TimedOut,
    /// The worker drains, stops or ends: look no more.
    Closed,
}

/// Where a worker's idle slots wait to be told to look for runs, one slot per ring.
///
/// A ring left while no slot waits (a slot between a claim that found nothing and its wait,
/// or every slot busy) is kept as a token for the next waiter, so no ring is lost; tokens
/// are capped at [`Doorbell::tokens_max`] (the number of slots), so rings heard while every
/// slot is busy cost at most one look per slot later. A waiter waits at most its timeout,
/// token or not, and closing the doorbell wakes every waiter at once.
struct Doorbell {
    state: Mutex<Bell>,
    rung: Condvar,
    /// The most tokens kept: the number of slots.
    tokens_max: usize,
}

#[derive(Debug, Default)]
struct Bell {
    /// Rings not yet answered, at most [`Doorbell::tokens_max`].
    tokens: usize,
    /// Slots waiting now.
    waiting: usize,
    closed: bool,
    /// Whether the worker's listener runs: it has one idle slot look every [`IDLE_LOOK`].
    listening: bool,
}

impl Doorbell {
    fn new(tokens_max: usize) -> Doorbell {
        Doorbell {
            state: Mutex::new(Bell::default()),
            rung: Condvar::new(),
            tokens_max: tokens_max.max(1),
        }
    }

    fn bell(&self) -> MutexGuard<'_, Bell> {
        // A waiter that panicked holding the lock left the counts whole: go on with them.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Rings `times`: wakes as many waiting slots, and keeps a token for each ring no slot
    /// waits for (up to the cap).
    fn ring(&self, times: usize) {
        let mut bell = self.bell();
        let added = times.min(self.tokens_max - bell.tokens);
        bell.tokens += added;
        drop(bell);
        for _ in 0..added {
            self.rung.notify_one();
        }
    }

    /// Wakes one waiting slot to look, if one waits and no ring is on its way to it: a look
    /// nobody is idle for is not kept (a slot that goes idle looks before it waits).
    fn ring_idle(&self) {
        let mut bell = self.bell();
        if bell.waiting > bell.tokens {
            bell.tokens += 1;
            drop(bell);
            self.rung.notify_one();
        }
    }

    /// Waits for a ring (taking its token) at most `timeout`.
    #[cfg(test)]
    fn wait(&self, timeout: Duration) -> Waited {
        let bell = self.bell();
        self.wait_locked(bell, timeout)
    }

    /// An idle slot's wait: at most [`LISTENED_LOOK`] while the listener runs, else at most
    /// [`IDLE_LOOK`]; cut short when the listener stops.
    fn wait_idle(&self) -> Waited {
        let bell = self.bell();
        let timeout = if bell.listening {
            LISTENED_LOOK
        } else {
            IDLE_LOOK
        };
        self.wait_locked(bell, timeout)
    }

    fn wait_locked(&self, mut bell: MutexGuard<'_, Bell>, timeout: Duration) -> Waited {
        let listening = bell.listening;
        bell.waiting += 1;
        let (mut bell, _) = self
            .rung
            .wait_timeout_while(bell, timeout, |bell| {
                bell.tokens == 0 && !bell.closed && (bell.listening || !listening)
            })
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        bell.waiting -= 1;
        if bell.closed {
            Waited::Closed
        } else if bell.tokens > 0 {
            bell.tokens -= 1;
            Waited::Rung
        } else {
            Waited::TimedOut
        }
    }

    /// Records whether the listener runs; when it stops, every waiting slot wakes to look,
    /// and idle slots wait [`IDLE_LOOK`] at most from then on.
    fn set_listening(&self, listening: bool) {
        self.bell().listening = listening;
        if !listening {
            self.rung.notify_all();
        }
    }

    /// Wakes every waiter, now and from now on: the worker drains, stops or ends.
    fn close(&self) {
        self.bell().closed = true;
        self.rung.notify_all();
    }

    fn is_closed(&self) -> bool {
        self.bell().closed
    }

    /// Whether the doorbell was closed, waiting for that at most `timeout`.
    fn closed_within(&self, timeout: Duration) -> bool {
        let bell = self.bell();
        let (bell, _) = self
            .rung
            .wait_timeout_while(bell, timeout, |bell| !bell.closed)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        bell.closed
    }
}

/// A worker's one waiter for news of runs to drive: it rings the [`Doorbell`] for the idle
/// slots, until the worker drains, stops or ends.
struct Listener {
    location: Location,
    doorbell: Arc<Doorbell>,
    report: Reporter,
}

impl Listener {
    fn trouble(&self, problem: impl fmt::Display, retrying: bool) {
        (self.report)(Report::Trouble {
            slot: None,
            problem: problem.to_string(),
            retrying,
        });
    }

    fn run(self) {
        let mut wakeups = match Wakeups::new(&self.location, News::Runnable) {
            Ok(wakeups) => wakeups,
            // The idle slots still look every IDLE_LOOK.
            Err(error) => return self.trouble(error, false),
        };
        // However the loop ends, a panic included, the idle slots look on their own again.
        let _listening = Listening::start(&self.doorbell);
        // SQLite has no news: every wait ends empty after a short sleep, and is a look.
        let polls = matches!(self.location, Location::Sqlite(_));
        let mut last_look = Instant::now();
        while !self.doorbell.is_closed() {
            let turn = IDLE_LOOK.saturating_sub(last_look.elapsed()).min(NEWS_TURN);
            match wakeups.wait(turn) {
                Ok(runs) if !runs.is_empty() => {
                    last_look = Instant::now();
                    self.doorbell.ring(runs.len());
                }
                Ok(_) => {
                    if polls || last_look.elapsed() >= IDLE_LOOK {
                        last_look = Instant::now();
                        self.doorbell.ring_idle();
                    }
                }
                Err(error) => {
                    self.trouble(error, true);
                    // Claims go on by polling meanwhile.
                    self.doorbell.ring_idle();
                    if self.doorbell.closed_within(RETRY_AFTER) {
                        return;
                    }
                    last_look = Instant::now();
                }
            }
        }
    }
}

/// Marks a doorbell listened to while it lives.
struct Listening<'d>(&'d Doorbell);

impl<'d> Listening<'d> {
    fn start(doorbell: &'d Doorbell) -> Listening<'d> {
        doorbell.set_listening(true);
        Listening(doorbell)
    }
}

impl Drop for Listening<'_> {
    fn drop(&mut self) {
        self.0.set_listening(false);
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
    doorbell: Arc<Doorbell>,
}

impl Slot {
    fn trouble(&self, problem: impl fmt::Display, retrying: bool) {
        (self.report)(Report::Trouble {
            slot: Some(self.index),
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
        let mut journal: Option<Box<dyn Journal + Send>> = None;
        // A run claimed with the commit that ended the previous drive.
        let mut next: Option<ClaimedRun> = None;
        // Whether the slot was idle at the doorbell before its next claim.
        let mut woken = false;
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
                    // Closed: the loop ends (the worker drains or stops).
                    woken = self.doorbell.wait_idle() != Waited::Closed;
                }
                Ok(claimed) => {
                    if std::mem::take(&mut woken) {
                        // There may be more runs than rings: the next idle slot looks too.
                        self.doorbell.ring(1);
                    }
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
                // A storage failure fails the claim itself; this run is unreadable (altered,
                // or past a reader's limits), which trying again at once cannot change. Keep
                // the claim until it expires, as for a run that does not build: other runs
                // go first, instead of every slot claiming this one again and again.
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

    /// `waiters` threads parked at `bell`, each sending how its wait ended.
    fn park(
        bell: &Arc<Doorbell>,
        waiters: usize,
        timeout: Duration,
    ) -> (std::sync::mpsc::Receiver<Waited>, Vec<JoinHandle<()>>) {
        let (tell, told) = std::sync::mpsc::channel();
        let threads = (0..waiters)
            .map(|_| {
                let (bell, tell) = (bell.clone(), tell.clone());
                std::thread::spawn(move || {
                    let _ = tell.send(bell.wait(timeout));
                })
            })
            .collect();
        let parked = Instant::now();
        while bell.bell().waiting < waiters {
            assert!(parked.elapsed() < Duration::from_secs(5), "waiters park");
            std::thread::sleep(Duration::from_millis(1));
        }
        (told, threads)
    }

    /// The waits that ended: the `expected` ones (each within 5 s), and any other that ends
    /// within a short while after them.
    fn ended(told: &std::sync::mpsc::Receiver<Waited>, expected: usize) -> Vec<Waited> {
        let mut ended: Vec<Waited> = (0..expected)
            .map_while(|_| told.recv_timeout(Duration::from_secs(5)).ok())
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        ended.extend(told.try_iter());
        ended
    }

    #[test]
    fn a_ring_wakes_one_waiter_and_k_rings_wake_k() {
        let bell = Arc::new(Doorbell::new(8));
        let (told, threads) = park(&bell, 5, Duration::from_secs(60));
        assert_eq!(ended(&told, 0), Vec::<Waited>::new(), "no ring, no waking");
        bell.ring(1);
        assert_eq!(ended(&told, 1), vec![Waited::Rung]);
        assert_eq!(bell.bell().waiting, 4, "the others still wait");
        bell.ring(3);
        assert_eq!(ended(&told, 3), vec![Waited::Rung; 3]);
        assert_eq!(bell.bell().waiting, 1);
        assert_eq!(bell.bell().tokens, 0, "every ring was answered");
        // More rings than waiters: the one left wakes, the rest are kept up to the cap.
        bell.ring(100);
        assert_eq!(ended(&told, 1), vec![Waited::Rung]);
        assert_eq!(bell.bell().tokens, 7, "the cap (8) less the ring answered");
        threads
            .into_iter()
            .for_each(|thread| thread.join().expect("waiter"));
    }

    #[test]
    fn idle_slots_wait_long_while_a_listener_rings_and_look_when_it_stops() {
        let bell = Arc::new(Doorbell::new(4));
        let listening = Listening::start(&bell);
        let (tell, told) = std::sync::mpsc::channel();
        let threads: Vec<JoinHandle<()>> = (0..3)
            .map(|_| {
                let (bell, tell) = (bell.clone(), tell.clone());
                std::thread::spawn(move || {
                    let _ = tell.send(bell.wait_idle());
                })
            })
            .collect();
        let parked = Instant::now();
        while bell.bell().waiting < 3 {
            assert!(parked.elapsed() < Duration::from_secs(5), "waiters park");
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(IDLE_LOOK + Duration::from_millis(500));
        assert!(
            told.try_recv().is_err(),
            "a listened slot waits past IDLE_LOOK: the listener has one look every IDLE_LOOK"
        );
        // The listener stops: every waiting slot looks at once.
        drop(listening);
        assert_eq!(ended(&told, 3), vec![Waited::TimedOut; 3]);
        threads
            .into_iter()
            .for_each(|thread| thread.join().expect("waiter"));
        // From then on an idle slot looks every IDLE_LOOK on its own.
        let waited = Instant::now();
        assert_eq!(bell.wait_idle(), Waited::TimedOut);
        let elapsed = waited.elapsed();
        assert!(elapsed >= IDLE_LOOK && elapsed < IDLE_LOOK + Duration::from_secs(2));
    }

    #[test]
    fn a_ring_with_no_waiter_is_kept_up_to_the_cap() {
        let bell = Doorbell::new(3);
        bell.ring(2);
        assert_eq!(bell.bell().tokens, 2);
        bell.ring(10);
        assert_eq!(bell.bell().tokens, 3, "capped at the number of slots");
        // A look rung while nobody waits is not kept.
        let idle = Doorbell::new(3);
        idle.ring_idle();
        assert_eq!(idle.bell().tokens, 0);
        // The kept rings are answered at once, then a waiter waits its timeout.
        for _ in 0..3 {
            assert_eq!(bell.wait(Duration::from_secs(60)), Waited::Rung);
        }
        let waited = Instant::now();
        assert_eq!(bell.wait(Duration::from_millis(50)), Waited::TimedOut);
        assert!(waited.elapsed() >= Duration::from_millis(50));
    }

    #[test]
    fn a_look_wakes_one_idle_waiter_and_closing_wakes_all() {
        let bell = Arc::new(Doorbell::new(4));
        let (told, threads) = park(&bell, 4, Duration::from_secs(60));
        bell.ring_idle();
        bell.ring_idle();
        assert_eq!(ended(&told, 2), vec![Waited::Rung; 2]);
        assert_eq!(bell.bell().waiting, 2);
        let closing = Instant::now();
        bell.close();
        assert_eq!(ended(&told, 2), vec![Waited::Closed; 2]);
        threads
            .into_iter()
            .for_each(|thread| thread.join().expect("waiter"));
        assert!(closing.elapsed() < Duration::from_secs(5));
        assert_eq!(bell.wait(Duration::from_secs(60)), Waited::Closed);
    }
}
